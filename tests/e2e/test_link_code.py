"""A parent with the letter from the town hall, in a real browser: she
scans the QR code (opens /link/?code=…), signs in, enters her child's
birth date and finds the child on her family page — in Japanese, with no
serious accessibility problems and no CSP violations."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

import pytest
from allauth.account.models import EmailAddress
from django.core.cache import cache

from municipal_data import linking
from municipal_data.models import LinkCode, MotherChild
from phr import services
from phr.models import Patient, Provenance, Role
from tests import factories as f
from tests.e2e.test_parent_journey import SCREENSHOTS, serious_violations, watch_console

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_it_links_a_parent_to_her_child_from_the_letters_qr_code(
    live_server: Any, browser: Any
) -> None:
    cache.clear()  # allauth's rate limits live in the cache
    town = f.MunicipalityFactory(name="若葉町")
    officer = f.make_member(Role.MUNICIPAL_STAFF, town)
    mother = f.make_patient(
        kind=Patient.Kind.ADULT, family="若葉", given="咲良", birth_date=date(1994, 4, 2)
    )
    child = f.make_patient(family="若葉", given="湊斗", birth_date=date(2025, 9, 1))
    services.residency_add(patient=mother, municipality=town, resident_number="100001")
    services.residency_add(patient=child, municipality=town, resident_number="100002")
    MotherChild.objects.create(mother=mother, child=child, municipality=town)
    f.write_observation(child, origin=Provenance.Origin.MUNICIPALITY, organization=town)
    _link, code = linking.link_code_issue(municipality=town, mother=mother, by=officer)
    parent = f.UserFactory(email="sakura@example.jp")
    EmailAddress.objects.create(user=parent, email=parent.email, verified=True, primary=True)

    context = browser.new_context(viewport={"width": 390, "height": 844}, locale="ja-JP")
    page = context.new_page()
    errors = watch_console(page)

    # The QR code's address: not signed in yet, so the login form first.
    page.goto(f"{live_server.url}/link/?code={code}")
    assert "/accounts/login/" in page.url
    page.fill('input[name="login"]', parent.email)
    page.fill('input[name="password"]', f.PASSWORD)
    page.click('main form[action^="/accounts/login/"] button[type="submit"]')
    page.wait_for_url("**/link/?code=*")

    # The form comes filled in with the code from the letter.
    assert page.locator("h1").inner_text() == "ご家族の記録をつなぐ"
    assert page.input_value('input[name="code"]') == code
    assert serious_violations(page) == []
    page.fill('input[name="birth_date"]', "2025-09-01")
    page.check('input[name="who"][value="mother"]')
    page.screenshot(path=str(SCREENSHOTS / "hagukumi-link-form.png"), full_page=True)
    page.click('main form.link-redeem-form button[type="submit"]')
    page.wait_for_url("**/link/done/")
    assert "若葉 湊斗" in page.locator("main").inner_text()
    assert serious_violations(page) == []

    # The family page now shows her and her child.
    page.click('main a[href="/"]')
    page.wait_for_url(f"{live_server.url}/")
    assert page.locator("h1").inner_text() == "わたしの家族"
    child_link = page.locator("#children-heading ~ ul a.person-card").first
    assert "湊斗" in child_link.inner_text()
    assert "咲良" in page.locator("#me-heading ~ ul").inner_text()
    page.screenshot(path=str(SCREENSHOTS / "hagukumi-linked-family.png"), full_page=True)

    assert errors == []
    context.close()


def test_it_prints_the_letter_on_a4_without_the_site_around_it(
    live_server: Any, browser: Any
) -> None:
    """Staff issue a code and print its letter: the code in large type, the
    QR code, no site header in print, no CSP violation (no inline styles)."""
    from django.conf import settings
    from django.test import Client

    cache.clear()
    town = f.MunicipalityFactory(name="若葉町", name_en="Wakaba Town")
    officer = f.make_member(Role.MUNICIPAL_STAFF, town)
    mother = f.make_patient(kind=Patient.Kind.ADULT, family="若葉", given="咲良")
    services.residency_add(patient=mother, municipality=town, resident_number="100001")
    client = Client()
    client.force_login(officer)
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="ja-JP")
    context.add_cookies(
        [
            {
                "name": settings.SESSION_COOKIE_NAME,
                "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
                "url": live_server.url,
            }
        ]
    )
    page = context.new_page()
    errors = watch_console(page)

    page.goto(f"{live_server.url}/municipal/link-codes/issue/")
    page.fill('input[name="resident_number"]', "100001")
    page.click('main form button[type="submit"]')
    page.wait_for_url("**/letter/")
    code = page.locator(".link-letter[lang=ja] .letter-code").inner_text()
    assert linking.code_hash(code) == LinkCode.objects.get().code_hash
    assert page.locator(".link-letter[lang=ja] img.letter-qr").is_visible()
    assert "若葉 咲良 様" in page.locator(".link-letter[lang=ja]").inner_text()
    assert "Wakaba Town" in page.locator(".link-letter[lang=en]").inner_text()
    assert serious_violations(page) == []

    page.emulate_media(media="print")
    assert not page.locator(".site-header").is_visible()
    assert not page.locator(".link-once").is_visible()
    assert page.locator(".letter-code").first.is_visible()
    page.screenshot(path=str(SCREENSHOTS / "hagukumi-link-letter-print.png"), full_page=True)
    pdf = page.pdf(format="A4", path=str(SCREENSHOTS / "hagukumi-link-letter.pdf"))
    # One A4 page in Japanese, one in English.
    assert len(re.findall(rb"/Type\s*/Page\b", pdf)) == 2

    # A reload no longer shows the code.
    page.emulate_media(media="screen")
    page.reload()
    assert page.locator(".letter-code").count() == 0
    assert errors == []
    context.close()
