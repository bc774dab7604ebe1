"""A clinic records a prenatal checkup and then the birth, in a real
browser, and the mother sees both in her handbook: the demo parent shares
her pregnancy and prenatal checkups with the demo clinic; the clinic's
staff member logs in with her authenticator code, enters the visit (the
page counts the gestational age from the due date), confirms it on the
confirmation page, and the parent finds it on her pregnancy timeline; then
the clinic records the delivery and the parent finds the newborn in her
family — in Japanese, with no serious accessibility problems and no CSP
violations."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.utils import timezone

from phr.models import Organization, Patient, User
from phr.terminology import Category
from sharing.models import ConsentPurpose
from sharing.services import consent_grant
from tests.e2e.test_parent_journey import serious_violations, watch_console
from tests.e2e.test_sharing_journey import log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PARENT_EMAIL = "parent@demo.hagukumi.jp"
CLINIC_EMAIL = "clinic@demo.hagukumi.jp"
SCREENSHOTS = Path(tempfile.gettempdir())


def _demo_family() -> tuple[User, Patient]:
    """The demo parent shares her pregnancy and prenatal checkups with the
    demo clinic (as she would on the Sharing page)."""
    call_command("seed_demo", verbosity=0)
    parent = User.objects.get(email=PARENT_EMAIL)
    mother = Patient.objects.get(account=parent)
    clinic = Organization.objects.get(kind=Organization.Kind.CLINIC)
    consent_grant(
        patient=mother,
        by=parent,
        purpose=ConsentPurpose.CARE,
        categories=[Category.PREGNANCY, Category.PRENATAL_CHECKUPS],
        grantee_org=clinic,
    )
    return parent, mother


def test_the_clinic_records_a_visit_and_the_mother_sees_it_in_her_handbook(
    live_server: Any, browser: Any
) -> None:
    cache.clear()  # allauth's login rate limits live in the cache
    _parent, mother = _demo_family()
    base = live_server.url

    clinic_context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="ja-JP")
    clinic = clinic_context.new_page()
    errors = watch_console(clinic)
    log_in(clinic, base, CLINIC_EMAIL, totp=True)

    # The visit form: the due date is known, so the gestational age is shown.
    clinic.goto(f"{base}/clinic/patients/{mother.pk}/visits/new/")
    assert clinic.locator("h1").inner_text() == "妊婦健診の記録"
    assert "週" in clinic.locator("#gestation").inner_text()
    assert clinic.input_value('input[name="visit_date"]') == timezone.localdate().isoformat()
    assert serious_violations(clinic) == []
    clinic.fill('input[name="systolic"]', "118")
    clinic.fill('input[name="diastolic"]', "72")
    clinic.fill('input[name="fundal_height"]', "27.5")
    clinic.select_option('select[name="urine_protein"]', "negative")
    clinic.select_option('select[name="urine_glucose"]', "negative")
    clinic.select_option('select[name="fetal_heartbeat"]', "present")
    clinic.fill('input[name="fetal_heart_rate"]', "142")
    clinic.fill('textarea[name="notes"]', "経過は順調です。")
    clinic.screenshot(path=str(SCREENSHOTS / "hagukumi-clinic-visit-form.png"), full_page=True)
    clinic.click("form.visit-form button[type=submit]")

    # The confirmation page lists what will be recorded; saving records it.
    clinic.wait_for_url("**/visits/new/")
    assert clinic.locator("h1").inner_text() == "妊婦健診の記録の確認"
    summary = clinic.locator("table.entry-summary").inner_text()
    assert "118" in summary
    assert "経過は順調です。" in summary
    assert serious_violations(clinic) == []
    clinic.screenshot(path=str(SCREENSHOTS / "hagukumi-clinic-visit-confirm.png"), full_page=True)
    clinic.click('form.entry-confirm button[value="confirm"]')
    clinic.wait_for_url(f"{base}/clinic/patients/{mother.pk}/")
    assert "妊婦健診を記録しました" in clinic.locator(".messages").inner_text()

    # The mother: her family page, then her pregnancy records.
    parent_context = browser.new_context(viewport={"width": 390, "height": 844}, locale="ja-JP")
    parent = parent_context.new_page()
    errors += watch_console(parent)
    log_in(parent, base, PARENT_EMAIL)
    assert parent.locator("h1").inner_text() == "わたしの家族"
    parent.click(".pregnancy-card a")
    parent.wait_for_url(f"**/people/{mother.pk}/")
    today = parent.locator(".timeline-day").first.inner_text()
    assert "妊婦健康診査" in today
    assert "118/72 mmHg" in today
    assert "経過は順調です。" in today
    parent.screenshot(path=str(SCREENSHOTS / "hagukumi-mother-visit.png"), full_page=False)
    assert serious_violations(parent) == []

    assert errors == []
    clinic_context.close()
    parent_context.close()


def test_the_clinic_records_the_birth_and_the_mother_finds_the_newborn(
    live_server: Any, browser: Any
) -> None:
    cache.clear()
    _parent, mother = _demo_family()
    base = live_server.url

    clinic_context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="ja-JP")
    clinic = clinic_context.new_page()
    errors = watch_console(clinic)
    log_in(clinic, base, CLINIC_EMAIL, totp=True)

    clinic.goto(f"{base}/clinic/patients/{mother.pk}/delivery/")
    assert clinic.locator("h1").inner_text() == "出産の記録"
    assert serious_violations(clinic) == []
    born = timezone.localtime() - timezone.timedelta(hours=3)
    clinic.fill('input[name="born_at"]', born.strftime("%Y-%m-%dT%H:%M"))
    clinic.fill('input[name="gestation_weeks"]', "39")
    clinic.fill('input[name="gestation_days"]', "2")
    clinic.select_option('select[name="mode"]', "spontaneous")
    clinic.fill('input[name="blood_loss_ml"]', "320")
    clinic.check('input[name="baby-0-sex"][value="female"]')
    clinic.fill('input[name="baby-0-weight_g"]', "3050")
    clinic.fill('input[name="baby-0-length_cm"]', "49.0")
    clinic.fill('input[name="baby-0-apgar_1"]', "8")
    clinic.fill('input[name="baby-0-apgar_5"]', "9")
    clinic.click("form.delivery-form button[type=submit]")
    clinic.wait_for_url("**/delivery/")
    assert clinic.locator("h1").inner_text() == "出産の記録の確認"
    assert "3050 g" in clinic.locator("main").inner_text()
    assert serious_violations(clinic) == []
    clinic.screenshot(path=str(SCREENSHOTS / "hagukumi-clinic-delivery.png"), full_page=True)
    clinic.click('form.entry-confirm button[value="confirm"]')
    clinic.wait_for_url(f"{base}/clinic/patients/{mother.pk}/")
    assert "出産を記録し" in clinic.locator(".messages").inner_text()

    parent_context = browser.new_context(viewport={"width": 390, "height": 844}, locale="ja-JP")
    parent = parent_context.new_page()
    errors += watch_console(parent)
    log_in(parent, base, PARENT_EMAIL)
    children = parent.locator("#children-heading ~ ul a.person-card")
    assert children.count() == 2
    newborn = children.filter(has_text="（未定）")
    assert newborn.count() == 1
    assert not parent.locator(".pregnancy-card").count()  # the pregnancy is over
    newborn.click()
    parent.wait_for_url("**/people/**")
    timeline = parent.locator("#timeline").inner_text()
    assert "出生体重" in timeline
    assert "3050 g" in timeline
    parent.screenshot(path=str(SCREENSHOTS / "hagukumi-newborn.png"), full_page=True)
    assert serious_violations(parent) == []

    assert errors == []
    clinic_context.close()
    parent_context.close()
