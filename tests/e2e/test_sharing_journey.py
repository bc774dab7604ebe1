"""Sharing, end to end in a real browser: the demo parent shares her son's
vaccinations (only) with the demo clinic on the Sharing page; the clinic
logs in with its authenticator code, finds him under "shared with me" and
sees vaccinations but no checkups; the parent stops sharing; the clinic
sees nothing; the parent's access history lists the clinic's reads, and a
read she reports reaches the town's privacy officer."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import cache
from django.core.management import call_command

from phr.models import User
from sharing.models import Consent
from tests.e2e.test_parent_journey import serious_violations, watch_console
from tests.totp import code_for_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PARENT_EMAIL = "parent@demo.hagukumi.jp"
CLINIC_EMAIL = "clinic@demo.hagukumi.jp"
OFFICER_EMAIL = "municipal@demo.hagukumi.jp"  # 前橋市's privacy officer
CLINIC_NAME = "はぐくみレディースクリニック"
CHILD_NAME = "陽翔"
SCREENSHOTS = Path(tempfile.gettempdir())


def totp_code(email: str) -> str:
    """The authenticator app's current code, from the secret allauth keeps."""
    return code_for_user(User.objects.get(email=email))


def log_in(page: Any, base: str, email: str, *, totp: bool = False) -> None:
    page.goto(f"{base}/accounts/login/")
    page.fill('input[name="login"]', email)
    page.fill('input[name="password"]', settings.DEMO_PASSWORD)
    page.click('main form[action="/accounts/login/"] button[type="submit"]')
    if totp:
        page.wait_for_url("**/accounts/2fa/authenticate/")
        page.fill('input[name="code"]', totp_code(email))
        page.click('main form button[type="submit"]')
    page.wait_for_url(f"{base}/")


def child_section(page: Any) -> Any:
    return page.locator("section.sharing-person").filter(
        has=page.locator("h2", has_text=CHILD_NAME)
    )


def test_a_parent_shares_vaccinations_with_the_clinic_and_takes_it_back(
    live_server: Any, browser: Any
) -> None:
    cache.clear()  # allauth's login rate limits live in the cache
    call_command("seed_demo", verbosity=0)
    base = live_server.url

    parent_context = browser.new_context(viewport={"width": 390, "height": 844}, locale="ja-JP")
    parent = parent_context.new_page()
    errors = watch_console(parent)
    log_in(parent, base, PARENT_EMAIL)

    # The Sharing page, from the header link.
    parent.click("header a.nav-sharing")
    parent.wait_for_url(f"{base}/sharing/")
    assert parent.locator("h1").inner_text() == "共有の設定"
    son = child_section(parent)
    assert "いまは医療機関や家族と共有していません。" in son.inner_text()
    assert "前橋市" in son.inner_text()  # the standing rules: the municipality
    assert serious_violations(parent) == []

    # Share his vaccinations, and nothing else, with the demo clinic: find
    # it by name (htmx lists matches with their codes), pick it, tick one box.
    form = son.locator("details.sharing-form").filter(
        has=parent.locator("summary", has_text="医療機関と共有する")
    )
    form.locator("summary").click()
    form.locator('input[name="clinic"]').fill("はぐくみ")
    choice = form.locator(".clinic-results label", has_text=CLINIC_NAME)
    choice.wait_for()
    assert "医療機関コード" in choice.inner_text()
    choice.locator('input[type="radio"]').check()
    form.locator('input[name="categories"][value="vaccinations"]').check()
    assert serious_violations(parent) == []
    parent.screenshot(path=str(SCREENSHOTS / "hagukumi-sharing-form.png"), full_page=True)
    form.locator("button[type=submit]").click()
    parent.wait_for_url(f"{base}/sharing/#person-*")
    assert "と共有しました" in parent.locator(".messages").inner_text()
    son = child_section(parent)
    card = son.locator(".consent-card", has_text=CLINIC_NAME)
    assert card.locator(".chip").all_inner_texts() == ["予防接種"]
    consent = Consent.objects.get()
    assert consent.categories == ["vaccinations"]
    parent.screenshot(path=str(SCREENSHOTS / "hagukumi-sharing.png"), full_page=True)
    assert serious_violations(parent) == []

    # Why can they see this? Vaccinations yes, checkups no.
    card.locator("a", has_text="なぜ見られるの？").click()
    parent.wait_for_url("**/sharing/why/**")
    vaccinations = parent.locator("tr", has=parent.locator("th", has_text="予防接種"))
    assert "はい" in vaccinations.inner_text()
    checkups = parent.locator("tr", has=parent.locator("th", has_text="乳幼児健診"))
    assert "いいえ" in checkups.inner_text()
    parent.screenshot(path=str(SCREENSHOTS / "hagukumi-why.png"), full_page=True)
    assert serious_violations(parent) == []

    # The clinic logs in with its authenticator code and finds the boy
    # under "shared with me".
    clinic_context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="ja-JP")
    clinic = clinic_context.new_page()
    errors += watch_console(clinic)
    log_in(clinic, base, CLINIC_EMAIL, totp=True)
    clinic.goto(f"{base}/sharing/with-me/")
    shared = clinic.locator("ul.shared-with-me a.person-card")
    assert shared.count() == 1
    assert CHILD_NAME in shared.inner_text()
    assert "予防接種" in shared.inner_text()
    assert serious_violations(clinic) == []
    shared.click()
    clinic.wait_for_url("**/people/**")
    child_url = clinic.url
    assert CHILD_NAME in clinic.locator("h1").inner_text()
    assert clinic.locator(".entry-immunization").count() > 0
    assert clinic.locator(".entry-encounter, .entry-observation").count() == 0
    assert "健診" not in clinic.locator("#timeline").inner_text()
    clinic.screenshot(path=str(SCREENSHOTS / "hagukumi-clinic-child.png"), full_page=False)

    # The parent stops sharing: one click.
    parent.goto(f"{base}/sharing/")
    child_section(parent).locator("button", has_text=f"{CLINIC_NAME} との共有をやめる").click()
    parent.wait_for_url(f"{base}/sharing/#person-*")
    assert "との共有をやめました" in parent.locator(".messages").inner_text()
    assert CLINIC_NAME not in child_section(parent).locator(".consents").all_inner_texts()

    # The clinic sees nothing: the child's page is a 404, the list empty.
    response = clinic.goto(child_url)
    assert response is not None
    assert response.status == 404
    clinic.goto(f"{base}/sharing/with-me/")
    assert clinic.locator("ul.shared-with-me a.person-card").count() == 0
    assert "いまは、あなたに記録を共有している方はいません。" in clinic.locator("main").inner_text()

    # The parent's access history lists the clinic's reads: by clinic name
    # and role (not the staff member's email), with the consent as reason.
    parent.click("nav.sub-nav a[href='/sharing/history/']")
    parent.wait_for_url(f"{base}/sharing/history/")
    rows = parent.locator("li.access-row", has_text=CLINIC_NAME)
    assert rows.count() >= 2  # "shared with me" and the child's page
    history = parent.locator("main").inner_text()
    assert f"{CLINIC_NAME}（医療機関の職員）" in history
    assert "家族の同意" in history
    assert "記録のページ: 予防接種" in history
    assert CLINIC_EMAIL not in history
    assert PARENT_EMAIL not in history
    parent.screenshot(path=str(SCREENSHOTS / "hagukumi-access-history.png"), full_page=True)
    assert serious_violations(parent) == []

    # Report one as suspicious: it lands in the privacy officer's queue.
    rows.first.locator("summary", has_text="不審なアクセスとして報告する").click()
    rows.first.locator("textarea").fill("心当たりがありません")
    rows.first.locator("button", has_text="報告を送る").click()
    parent.wait_for_url(f"{base}/sharing/history/**")
    assert "個人情報保護の担当者" in parent.locator(".messages").inner_text()

    # The town's privacy officer finds it in the queue and closes it.
    officer_context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="ja-JP")
    officer = officer_context.new_page()
    errors += watch_console(officer)
    log_in(officer, base, OFFICER_EMAIL, totp=True)
    officer.goto(f"{base}/sharing/reports/")
    report = officer.locator("li.report-card", has_text="心当たりがありません")
    assert CLINIC_NAME in report.inner_text()
    assert CHILD_NAME in report.inner_text()
    officer.screenshot(path=str(SCREENSHOTS / "hagukumi-reports.png"), full_page=True)
    assert serious_violations(officer) == []
    report.locator("textarea").fill("同意に基づく閲覧でした。ご家族に説明しました。")
    report.locator("button", has_text="対応済みにする").click()
    officer.wait_for_url(f"{base}/sharing/reports/")
    assert "未対応の報告はありません。" in officer.locator("main").inner_text()

    assert errors == []
    parent_context.close()
    clinic_context.close()
    officer_context.close()
