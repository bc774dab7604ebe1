"""Research, end to end in a real browser (issue 8): a researcher applies
for a project; a platform admin approves it with an expiry date; an export
is refused while only one person has approved (two-person rule); the
municipality's privacy officer approves too; the researcher runs the
export, watches it finish, reads the release report, creates a download
link and downloads the release — a zip of anonymized tables in which no
name of the synthetic population appears.

The population is the demo plus `seed_research_demo`: a synthetic infant
checkup file imported into the demo municipality through the real upload
pipeline, under the opt-out regime (sharing/research_demo.py)."""

from __future__ import annotations

import csv
import io
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.utils import timezone

from municipal_data.synthetic import CHILDREN, FAMILIES, MOTHERS
from sharing.models import ResearchExport, ResearchProject
from tests.e2e.test_parent_journey import SCREENSHOTS, serious_violations, watch_console
from tests.e2e.test_sharing_journey import log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

DESKTOP = {"width": 1280, "height": 900}
RESEARCHER = "researcher@demo.hagukumi.jp"
ADMIN = "admin@demo.hagukumi.jp"
OFFICER = "municipal@demo.hagukumi.jp"
PURPOSE = "出生体重と乳児健診時の体重の関係を調べ、低出生体重児の支援に生かす。"


def _approve(browser: Any, base: str, email: str, title: str, errors: list[str]) -> None:
    context = browser.new_context(viewport=DESKTOP, locale="ja-JP")
    page = context.new_page()
    errors.extend(watch_console(page))
    log_in(page, base, email, totp=True)
    page.goto(f"{base}/")
    page.click("a.staff-research-reviews")
    page.wait_for_url("**/research/reviews/")
    page.get_by_role("link", name=title).click()
    page.wait_for_url("**/research/reviews/*/")
    assert serious_violations(page) == []
    page.check('input[name="decision"][value="approve"]')
    expires = page.locator('input[name="expires_on"]')
    if expires.count():
        expires.fill((timezone.localdate() + timedelta(days=180)).isoformat())
    page.click("form.research-review-form button[type=submit]")
    page.wait_for_load_state()
    context.close()


def test_a_researcher_applies_two_people_approve_and_she_downloads_an_anonymous_release(
    live_server: Any, browser: Any, tmp_path: Path, settings: Any
) -> None:
    cache.clear()
    # One import process: forking beside the live server's thread would
    # share its database socket (the partitioned import has its own tests).
    settings.IMPORT_PARTITIONS = 1
    call_command("seed_research_demo", children=120, verbosity=0)
    base = live_server.url
    title = "乳児期の体重増加と出生体重の研究"

    context = browser.new_context(viewport=DESKTOP, locale="ja-JP", accept_downloads=True)
    page = context.new_page()
    errors = watch_console(page)
    log_in(page, base, RESEARCHER, totp=True)

    # --- apply ---------------------------------------------------------------
    page.goto(f"{base}/")
    page.click("a.staff-research")
    page.wait_for_url("**/research/")
    page.goto(f"{base}/research/apply/")
    assert serious_violations(page) == []
    page.fill("#id_title", title)
    page.fill("#id_ethics_approval_number", "GU-IRB-2026-0412")
    page.fill("#id_purpose", PURPOSE)
    page.check('input[name="categories"][value="infant_checkups"]')
    page.check('input[name="cohort_kind"][value="child"]')
    page.locator('input[name="municipalities"]').first.check()
    page.fill("#id_birth_year_from", "2019")
    page.fill("#id_birth_year_to", "2022")
    page.fill("#id_period_start", "2019-01-01")
    page.fill("#id_period_end", timezone.localdate().isoformat())
    page.click("form.research-apply button[type=submit]")
    page.wait_for_url("**/research/projects/*/")
    project = ResearchProject.objects.get(title=title)
    assert project.status == ResearchProject.Status.SUBMITTED
    page.screenshot(path=str(SCREENSHOTS / "hagukumi-research-project.png"), full_page=True)

    # --- the first approval: a platform admin ---------------------------------
    _approve(browser, base, ADMIN, title, errors)
    project.refresh_from_db()
    assert project.status == ResearchProject.Status.APPROVED
    assert project.expires_on is not None

    # --- one approval is not enough --------------------------------------------
    page.goto(f"{base}/research/projects/{project.pk}/")
    blocked = page.locator("#export-blocked")
    assert blocked.count() == 1
    assert "2" in blocked.inner_text() or "二" in blocked.inner_text()
    assert not ResearchExport.objects.filter(project=project).exists()

    # --- the second approval: the municipality's privacy officer --------------
    _approve(browser, base, OFFICER, title, errors)
    assert project.approvals.filter(decision="approve").count() == 2

    # --- the export ------------------------------------------------------------
    page.goto(f"{base}/research/projects/{project.pk}/export/")
    assert page.locator("#export-blocked").count() == 0
    assert serious_violations(page) == []
    page.click("form.research-export-form button[type=submit]")
    page.wait_for_url("**/research/exports/*/")
    page.wait_for_function(
        "() => !document.querySelector('#export-progress[hx-get]')", timeout=120_000
    )
    page.reload()
    export = ResearchExport.objects.get(project=project)
    assert export.status == ResearchExport.Status.DONE, export.reason
    report = page.locator("#release-report").inner_text()
    assert str(export.report["achieved_k"]) in report
    assert export.report["achieved_k"] >= project.k
    page.screenshot(path=str(SCREENSHOTS / "hagukumi-research-export.png"), full_page=True)
    assert serious_violations(page) == []

    # --- the download link, and the download ----------------------------------
    page.click("#download-links form button[type=submit]")
    page.wait_for_load_state()
    link = page.locator("#new-link-url").input_value()
    assert "/research/download/" in link
    with page.expect_download() as download_info:
        page.click("#new-link-open")
    target = tmp_path / "release.zip"
    download_info.value.save_as(target)
    with zipfile.ZipFile(target) as release:
        names = set(release.namelist())
        assert {"csv/persons.csv", "release_report.json", "fhir/manifest.json"} <= names
        persons = list(csv.DictReader(io.StringIO(release.read("csv/persons.csv").decode())))
        assert len(persons) >= project.k
        assert {row["kind"] for row in persons} == {"child"}
        everything = "".join(
            release.read(name).decode("utf-8", "replace") for name in sorted(names)
        )
    people = [*FAMILIES, *((given, kana) for given, kana, _sex in CHILDREN), *MOTHERS]
    for kanji, kana in people:
        assert kanji not in everything
        assert kana not in everything
    assert export.downloads.get().uses == 1

    assert errors == []
    context.close()
