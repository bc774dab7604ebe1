"""A municipal upload, end to end in a real browser: the demo town's
officer logs in with her authenticator code, goes from the staff home page
to the municipal pages, uploads the documented infant-checkup sample with
one bad row, reads the report (the bad row, its reason in Japanese and
English), imports only the valid rows and sees what was imported."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import cache
from django.core.management import call_command

from phr.models import Batch
from tests.e2e.test_parent_journey import serious_violations, watch_console
from tests.e2e.test_sharing_journey import log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

OFFICER_EMAIL = "municipal@demo.hagukumi.jp"  # 前橋市 (102016)
SAMPLE = Path(settings.BASE_DIR) / "docs" / "formats" / "samples" / "infant_checkup.csv"
SCREENSHOTS = Path(tempfile.gettempdir())


def sample_with_one_bad_row(folder: Path) -> Path:
    """The documented sample, its first checkup dated on a 13th month."""
    text = SAMPLE.read_text(encoding="utf-8-sig")
    lines = text.splitlines()
    assert ",2024-04-08," in lines[1]
    lines[1] = lines[1].replace(",2024-04-08,", ",2024-13-08,")
    path = folder / "kenshin_2024.csv"
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    return path


def test_an_officer_uploads_checkups_reads_the_report_and_imports_the_valid_rows(
    live_server: Any, browser: Any, settings: Any, tmp_path: Path
) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"
    cache.clear()  # allauth's login rate limits live in the cache
    call_command("seed_demo", verbosity=0)
    base = live_server.url
    upload = sample_with_one_bad_row(tmp_path)
    rows = len(upload.read_text(encoding="utf-8").splitlines()) - 1

    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="ja-JP")
    page = context.new_page()
    errors = watch_console(page)
    log_in(page, base, OFFICER_EMAIL, totp=True)

    # From the staff home page to the dashboard, then the upload page.
    page.click('main a[href="/municipal/"]')
    page.wait_for_url(f"{base}/municipal/")
    assert "の母子保健データ" in page.locator("h1").inner_text()
    assert serious_violations(page) == []
    page.click('nav.municipal-nav a[href="/municipal/upload/"]')
    page.wait_for_url(f"{base}/municipal/upload/")
    assert page.locator("h1").inner_text() == "ファイルのアップロード"
    page.select_option('select[name="format"]', "infant_checkup")
    page.check('input[name="encoding"][value="auto"]')
    page.set_input_files('input[name="file"]', str(upload))
    assert serious_violations(page) == []
    page.click("form.upload-form button[type=submit]")

    # The report: validated (the job ran as the upload committed), one bad
    # row with its line, value and reason in both languages.
    page.wait_for_url(f"{base}/municipal/batches/*/")
    batch = Batch.objects.get()
    assert batch.status == Batch.Status.VALIDATED
    assert batch.summary["rows"] == rows
    assert batch.summary["invalid"] == 1
    assert "kenshin_2024.csv" in page.locator("h1").inner_text()
    assert "確認結果" in page.locator("main").inner_text()
    bad = page.locator("table.batch-errors tbody tr")
    assert bad.count() == 1
    assert bad.locator("td").nth(0).inner_text() == "2"
    assert bad.locator("td").nth(1).inner_text() == "受診日"
    assert bad.locator("td").nth(2).inner_text() == "2024-13-08"
    assert "存在しない日付です" in bad.inner_text() or "日付として読めません" in bad.inner_text()
    assert "date" in bad.locator("[lang=en]").inner_text()
    invalid = page.locator(".batch-count-invalid dd")
    assert invalid.inner_text() == "1"
    assert page.locator("button.import-all").count() == 0  # not everything: a row is bad
    assert serious_violations(page) == []
    page.screenshot(path=str(SCREENSHOTS / "hagukumi-municipal-report.png"), full_page=True)

    # Import only the valid rows.
    page.click("button.import-valid")
    page.wait_for_url(f"{base}/municipal/batches/{batch.pk}/")
    batch.refresh_from_db()
    assert batch.status == Batch.Status.IMPORTED
    assert batch.only_valid
    assert batch.result["created"] > 0
    assert "取り込みました。" in page.locator(".messages").inner_text()
    assert "取り込み済み" in page.locator("h1 .status").inner_text()
    created = page.locator("#result-heading + .batch-counts .batch-count-created dd")
    assert created.inner_text() == str(batch.result["created"])
    people = page.locator("#result-heading + .batch-counts .batch-count-new_patients dd")
    assert people.inner_text() == str(batch.result["new_patients"])
    assert page.locator("button.import-valid").count() == 0
    assert serious_violations(page) == []
    page.screenshot(path=str(SCREENSHOTS / "hagukumi-municipal-imported.png"), full_page=True)

    # The uploads list has it, with its counts.
    page.click('nav.municipal-nav a[href="/municipal/batches/"]')
    row = page.locator("table.batch-list tbody tr").first
    assert "kenshin_2024.csv" in row.inner_text()
    assert "取り込み済み" in row.inner_text()
    assert errors == []
    context.close()
