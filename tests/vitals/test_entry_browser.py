"""Quick entry in a real browser on a phone-sized screen: the mother enters
a blood pressure with her pulse and times a fetal movement count with the
start/stop timer; both appear in her recent entries, in Japanese, with no
console (CSP) errors and no serious accessibility problems."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import cache
from django.test import Client

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.e2e.test_parent_journey import SCREENSHOTS, serious_violations, watch_console

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PHONE = {"width": 390, "height": 844}


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


def test_the_mother_enters_her_blood_pressure_and_times_fetal_movements(
    live_server: Any, browser: Any, mother: Any, mother_patient: Any
) -> None:
    cache.clear()
    base = live_server.url
    context = browser.new_context(viewport=PHONE, locale="ja-JP")
    page = context.new_page()
    errors = watch_console(page)
    # Logged in as the login tests do it (allauth is tested elsewhere).
    client = Client()
    client.force_login(mother)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": base}])
    page.clock.install()

    page.goto(f"{base}/vitals/{mother_patient.pk}/")
    assert "おうちでの記録" in page.locator("h1").inner_text()
    page.fill("#id_blood-pressure-systolic", "142")
    page.fill("#id_blood-pressure-diastolic", "91")
    page.fill("#id_blood-pressure-pulse", "78")
    page.click("#enter-blood-pressure button.vt-save")
    page.wait_for_url("**#recent")
    recent = page.locator("#recent").inner_text()
    assert "142/91 mmHg" in recent
    assert "78 /分" in recent
    assert "手入力" in recent

    page.click("#enter-fetal-movement summary")
    timer = page.locator("#enter-fetal-movement .vt-timer")
    assert timer.is_visible()
    timer.locator("[data-vt-timer-start]").click()
    page.clock.fast_forward("25:00")
    timer.locator("[data-vt-timer-stop]").click()
    assert page.input_value("#id_fetal-movement-value") == "25"
    page.click("#enter-fetal-movement button.vt-save")
    page.wait_for_url("**#recent")
    assert "25 分" in page.locator("#recent").inner_text()
    page.screenshot(path=str(SCREENSHOTS / "hagukumi-vitals-entry.png"), full_page=True)
    assert serious_violations(page) == []
    assert errors == []
