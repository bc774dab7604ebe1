"""The camera scanner of the medication notebook, in a real browser: the
vendored jsQR decodes pharmacy QR codes (Shift_JIS bytes, a document
split over two QR codes shown in reverse order) from images, the script
collects the parts and submits them like pasted text — under the
Content-Security-Policy, with no console error. (The camera itself is the
one thing not exercised: the frames come from images instead.)"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client

from phr.models import Patient, Resource
from tests import factories as f

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Copies of ../shared/reference/data/jahis_tc_* kept in the repository.
REFERENCE = Path(__file__).resolve().parents[2] / "phr" / "reference_data"
SAMPLE = (REFERENCE / "jahis_tc_sample_utf8.txt").read_text(encoding="utf-8")


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium fonts-noto-cjk)")
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


def serious_violations(page: Any) -> list[str]:
    """axe-core's violations of impact serious or critical, readable."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    return [
        f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:5]}"
        for v in results.response["violations"]
        if v.get("impact") in ("serious", "critical")
    ]


def qr_data_url(payload: bytes) -> str:
    pytest.importorskip("qrcode")
    import qrcode
    import qrcode.image.svg

    code = qrcode.QRCode(border=4)
    code.add_data(payload)
    code.make(fit=True)
    svg = code.make_image(image_factory=qrcode.image.svg.SvgImage).to_string()
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode()


# Draw one QR image on a canvas, decode it with the page's jsQR, and hand the
# bytes to the scanner exactly as a camera frame would.
SCAN_IMAGE = """
async (url) => {
  const image = new Image();
  image.src = url;
  await image.decode();
  const canvas = document.createElement("canvas");
  canvas.width = 480; canvas.height = 480;
  const context = canvas.getContext("2d");
  context.fillStyle = "#fff";
  context.fillRect(0, 0, 480, 480);
  context.drawImage(image, 0, 0, 480, 480);
  const data = context.getImageData(0, 0, 480, 480);
  const code = window.jsQR(data.data, 480, 480);
  if (!code) return null;
  document.querySelector("[data-scanner]").dispatchEvent(
    new CustomEvent("medication-scan:bytes", {detail: code.binaryData}));
  return code.binaryData.length;
}
"""


def test_split_shift_jis_qr_codes_are_scanned_in_any_order_and_imported(
    live_server: Any, browser: Any
) -> None:
    user = f.UserFactory(email="scan@example.jp")
    patient = f.make_patient(kind=Patient.Kind.ADULT, account=user, given="花子")
    header, *records = SAMPLE.splitlines()
    parts = [
        "\r\n".join([header, *records[:7], "911,20260310123000,2,1"]).encode("cp932"),
        "\r\n".join([header, *records[7:], "911,20260310123000,2,2"]).encode("cp932"),
    ]

    # Signed in through a session made by the test client (the login form
    # has tests of its own).
    client = Client()
    client.force_login(user)
    context = browser.new_context(locale="ja-JP")
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
    errors: list[str] = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{live_server.url}/medications/{patient.pk}/import/")
    assert page.evaluate("typeof window.jsQR") == "function"
    assert serious_violations(page) == []
    # The second QR code first: the scanner waits and says so.
    assert page.evaluate(SCAN_IMAGE, qr_data_url(parts[1])) == len(parts[1])
    assert "1" in page.locator("#scan-status").inner_text()
    assert page.locator("#scan-parts li").count() == 1
    assert page.locator("#scan-send").is_visible()
    # The first one completes the document: the form is submitted.
    with page.expect_navigation():
        page.evaluate(SCAN_IMAGE, qr_data_url(parts[0]))
    assert "3 件を追加しました。" in page.locator("#import-summary").inner_text()
    assert serious_violations(page) == []
    page.click("#medication-notebook-link")
    assert "コリオパンカプセル5mg" in page.locator("#dispensings").inner_text()
    assert serious_violations(page) == []
    names = {
        r.content["medicationCodeableConcept"]["text"]
        for r in Resource.objects.filter(
            resource_type="MedicationDispense", compartments__overlap=[patient.pk]
        )
    }
    assert names == {"コリオパンカプセル5mg", "フェロベリン配合錠", "モーラステープ２０ｍｇ"}
    assert errors == []
