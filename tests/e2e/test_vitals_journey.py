"""Home vitals, end to end in a real browser (issue 7): the demo mother,
past 20 weeks of her pregnancy, enters two high blood pressures on her
phone and is told to contact her clinic (an alert Flag the
rules wrote on commit); she enters her son's weight and his growth chart
shows it beside the municipality's checkup measurements, point for point
with the chart's data table — in Japanese, without serious accessibility
problems or CSP errors."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.utils import timezone

from phr.models import Guardianship, Patient, User
from phr.selectors import JAPAN
from tests.e2e.test_parent_journey import SCREENSHOTS, serious_violations, watch_console
from tests.e2e.test_sharing_journey import PARENT_EMAIL, log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PHONE = {"width": 390, "height": 844}


def enter_blood_pressure(page: Any, systolic: int, diastolic: int, when: Any) -> None:
    if not page.is_visible("#id_blood-pressure-systolic"):
        page.click("#enter-blood-pressure summary")
    page.fill("#id_blood-pressure-systolic", str(systolic))
    page.fill("#id_blood-pressure-diastolic", str(diastolic))
    page.fill("#id_blood-pressure-taken_at", when.strftime("%Y-%m-%dT%H:%M"))
    page.click("#enter-blood-pressure button.vt-save")
    page.wait_for_url("**#recent")


def test_a_mother_is_alerted_to_high_blood_pressure_and_sees_her_sons_growth(
    live_server: Any, browser: Any
) -> None:
    cache.clear()
    call_command("seed_demo", verbosity=0)
    base = live_server.url
    parent = User.objects.get(email=PARENT_EMAIL)
    mother = Patient.objects.get(account=parent)
    son = Guardianship.objects.active().get(guardian=parent).child

    context = browser.new_context(viewport=PHONE, locale="ja-JP")
    page = context.new_page()
    errors = watch_console(page)
    log_in(page, base, PARENT_EMAIL)

    # --- her home measurements, from her handbook ----------------------------
    page.goto(f"{base}/handbook/{mother.pk}/")
    page.click("a.vitals-link-entry")
    page.wait_for_url(f"**/vitals/{mother.pk}/")
    assert page.locator(".vitals-alert-banner").count() == 0
    # Two readings today: the demo pregnancy is at 20 weeks or later today
    # (phr/demo.py), maybe not yesterday.
    now = timezone.localtime(timezone.now(), JAPAN).replace(second=0, microsecond=0)
    first = max(now - timedelta(minutes=10), now.replace(hour=0, minute=0))
    enter_blood_pressure(page, 145, 95, first)
    assert page.locator(".vitals-alert-banner").count() == 0  # one reading: no alert
    enter_blood_pressure(page, 150, 96, now)
    recent = page.locator("#recent").inner_text()
    assert "145/95 mmHg" in recent
    assert "150/96 mmHg" in recent
    banner = page.locator(".vitals-alert-banner")
    assert banner.is_visible()
    page.screenshot(path=str(SCREENSHOTS / "hagukumi-vitals-alert.png"), full_page=True)
    assert serious_violations(page) == []

    # The alert with its readings and the advice.
    banner.locator("a").click()
    page.wait_for_url("**/vitals/alerts/")
    alerts = page.locator("main").inner_text()
    assert "早めに医療機関へ連絡" in alerts
    assert "150/96" in alerts
    assert serious_violations(page) == []

    # --- her son's growth chart ------------------------------------------------
    page.goto(f"{base}/handbook/{son.pk}/")
    page.click("a.vitals-link-charts")
    page.wait_for_url(f"**/vitals/charts/{son.pk}/")
    points = page.locator('#chart-weight circle[data-point="child"]')
    before = points.count()
    assert before > 0  # the municipality's checkups
    assert page.locator("#chart-weight-table tbody tr").count() == before

    page.goto(f"{base}/vitals/{son.pk}/")
    if not page.is_visible("#id_weight-value"):
        page.click("#enter-weight summary")
    page.fill("#id_weight-value", "9.9")
    page.click("#enter-weight button.vt-save")
    page.wait_for_url("**#recent")
    assert "9.9 kg" in page.locator("#recent").inner_text()

    page.goto(f"{base}/vitals/charts/{son.pk}/")
    assert points.count() == before + 1
    assert page.locator("#chart-weight-table tbody tr").count() == before + 1
    assert "9.9" in page.locator("#chart-weight-table").inner_text()
    page.screenshot(path=str(SCREENSHOTS / "hagukumi-growth-chart.png"), full_page=True)
    assert serious_violations(page) == []

    assert errors == []
    context.close()
