"""The digital MCH handbook, end to end in a real browser (issue 6): the
demo parent finds the reminder of her son's MR vaccination among her
notifications, opens his handbook from the family page and sees that dose
due, as the schedule engine computes it; she imports the pharmacy's
medication QR text (the JAHIS specification's sample) into her own
medication notebook and finds the medicines there; she downloads
everything as a FHIR Bundle, which holds his vaccinations and her new
dispensings — in Japanese, with no serious accessibility problems and no
CSP violations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache
from django.core.management import call_command

from phr.models import Patient, Resource, User
from tests.e2e.test_parent_journey import SCREENSHOTS, serious_violations, watch_console
from tests.e2e.test_sharing_journey import PARENT_EMAIL, log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PHONE = {"width": 390, "height": 844}
JAHIS_SAMPLE = (
    Path(__file__).resolve().parents[2] / "phr" / "reference_data" / "jahis_tc_sample_utf8.txt"
)


def test_a_parent_reads_the_handbook_imports_her_medicines_and_takes_her_data(
    live_server: Any, browser: Any, tmp_path: Path
) -> None:
    cache.clear()
    call_command("seed_demo", verbosity=0)
    base = live_server.url
    mother = Patient.objects.get(account=User.objects.get(email=PARENT_EMAIL))

    context = browser.new_context(viewport=PHONE, locale="ja-JP", accept_downloads=True)
    page = context.new_page()
    errors = watch_console(page)
    log_in(page, base, PARENT_EMAIL)

    # --- the reminder the daily job made (seed_demo ran it once) -------------
    page.click("header a.nav-notifications")
    page.wait_for_url("**/notifications/")
    assert "MR" in page.locator("main").inner_text()
    assert serious_violations(page) == []
    page.goto(f"{base}/")

    # --- the son's handbook, from the family page ---------------------------
    page.locator("#children-heading ~ ul a.handbook-link").first.click()
    page.wait_for_url("**/handbook/**")
    assert "陽翔" in page.locator("h1").inner_text()
    upcoming = page.locator("#next-vaccinations li.hb-due-item")
    assert upcoming.count() > 0
    first = upcoming.first
    # A real next dose with its window, from the rules (not a fixed list).
    assert first.locator(".hb-next-label").inner_text().strip() != ""
    # The demo leaves MR 第1期 (生後12～24月) undone at 14 months: due now.
    assert first.get_attribute("data-status") == "due"
    assert "MR" in first.locator(".hb-next-label").inner_text()
    assert first.locator("time.hb-earliest").get_attribute("datetime")
    assert page.locator("#checkup-schedule").is_visible()
    page.screenshot(path=str(SCREENSHOTS / "hagukumi-handbook.png"), full_page=True)
    assert serious_violations(page) == []

    # --- her medication notebook: paste the pharmacy's QR text ---------------
    page.goto(f"{base}/medications/{mother.pk}/")
    page.click("#medication-import-link")
    page.wait_for_url("**/import/")
    page.fill("#id_text", JAHIS_SAMPLE.read_text(encoding="utf-8"))
    page.click("#medication-import-submit")
    page.wait_for_load_state()
    summary = page.locator("#import-summary").inner_text()
    assert "件を追加しました" in summary
    assert "コリオパンカプセル5mg" in page.locator("#import-items").inner_text()
    assert serious_violations(page) == []
    page.click("#medication-notebook-link")
    page.wait_for_url(f"**/medications/{mother.pk}/")
    assert "コリオパンカプセル5mg" in page.locator("#dispensings").inner_text()
    page.screenshot(path=str(SCREENSHOTS / "hagukumi-medications.png"), full_page=True)
    assert serious_violations(page) == []
    dispensed = Resource.objects.filter(
        resource_type="MedicationDispense", compartments__contains=[mother.pk]
    ).count()
    assert dispensed >= 3

    # --- download everything -------------------------------------------------
    page.goto(f"{base}/family/export/")
    assert serious_violations(page) == []
    with page.expect_download() as download_info:
        page.click("a#download-bundle")
    target = tmp_path / "bundle.json"
    download_info.value.save_as(target)
    bundle = json.loads(target.read_text(encoding="utf-8"))
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "collection"
    types = [entry["resource"]["resourceType"] for entry in bundle["entry"]]
    assert types.count("MedicationDispense") == dispensed
    assert "Immunization" in types
    assert types.count("Patient") == 2  # the mother and her son

    assert errors == []
    context.close()
