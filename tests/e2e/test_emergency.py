"""Emergency access, end to end in a real browser, on a phone-sized screen:
the demo parent makes an emergency card (with a passcode) for her son and
someone opens it without logging in; the demo responder finds the mother
by her MCH handbook number, breaks the glass and reads her summary (due
date, gestational age); the town's privacy officer reviews the use.
Japanese, no serious accessibility problems, no CSP violations."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache
from django.core.management import call_command

from phr.demo import MOTHER_MCH_NUMBER
from sharing.models import BreakGlass, EmergencyCard
from tests.e2e.test_parent_journey import serious_violations, watch_console
from tests.e2e.test_sharing_journey import OFFICER_EMAIL, PARENT_EMAIL, log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

RESPONDER_EMAIL = "emergency@demo.hagukumi.jp"
SCREENSHOTS = Path(tempfile.gettempdir())
PHONE = {"width": 390, "height": 844}


def test_a_card_opens_the_summary_and_a_responder_breaks_the_glass(
    live_server: Any, browser: Any
) -> None:
    cache.clear()
    call_command("seed_demo", verbosity=0)
    base = live_server.url
    errors: list[str] = []

    # --- the parent makes a card for her son --------------------------------
    context = browser.new_context(viewport=PHONE, locale="ja-JP")
    parent = context.new_page()
    errors += watch_console(parent)
    log_in(parent, base, PARENT_EMAIL)
    parent.goto(f"{base}/emergency/card/")
    assert parent.locator("h1").inner_text() == "緊急カード"
    son = parent.locator("section.em-card-person").filter(has_text="陽翔")
    son.locator("summary").click()
    son.locator('input[type="password"]').fill("2468")
    son.locator('button[type="submit"]').click()
    parent.wait_for_load_state()
    assert parent.locator("img.em-qr").is_visible()
    link = parent.locator(".em-card-link a").get_attribute("href")
    assert link is not None
    assert "/emergency/c/" in link
    parent.screenshot(path=str(SCREENSHOTS / "hagukumi-emergency-card.png"), full_page=True)
    assert serious_violations(parent) == []
    context.close()

    # --- anyone with the card (no login) ------------------------------------
    context = browser.new_context(viewport=PHONE, locale="ja-JP")
    finder = context.new_page()
    errors += watch_console(finder)
    path = link[link.index("/emergency/c/") :]
    finder.goto(f"{base}{path}")
    assert "陽翔" not in finder.content()
    finder.fill('input[name="passcode"]', "2468")
    finder.click('main form button[type="submit"]')
    finder.wait_for_load_state()
    assert "陽翔" in finder.locator("h1").inner_text()
    assert finder.get_by_text("緊急カードで開いています").is_visible()
    finder.screenshot(path=str(SCREENSHOTS / "hagukumi-emergency-card-open.png"), full_page=True)
    assert serious_violations(finder) == []
    assert EmergencyCard.objects.get().last_opened_at is not None
    context.close()

    # --- the responder finds the mother and breaks the glass ----------------
    context = browser.new_context(viewport=PHONE, locale="ja-JP")
    responder = context.new_page()
    errors += watch_console(responder)
    log_in(responder, base, RESPONDER_EMAIL, totp=True)  # a fresh login counts as re-auth
    responder.goto(f"{base}/emergency/find/")
    assert serious_violations(responder) == []
    responder.fill("#id_handbook-handbook_number", MOTHER_MCH_NUMBER)
    responder.locator("section.em-search").nth(1).locator('button[type="submit"]').click()
    responder.wait_for_load_state()
    assert "1件一致" in responder.locator(".em-result").inner_text()
    assert "花子" not in responder.content()
    responder.check('input[name="reason"][value="obstetric"]')
    responder.fill('textarea[name="justification"]', "路上で腹痛と出血。本人は会話困難。")
    responder.screenshot(path=str(SCREENSHOTS / "hagukumi-emergency-find.png"), full_page=True)
    assert serious_violations(responder) == []
    responder.click("form.em-break-glass button[type='submit']")
    responder.wait_for_url("**/emergency/summary/**")
    assert "花子" in responder.locator("h1").inner_text()
    assert responder.get_by_text("緊急時アクセス（ブレイクグラス）中").is_visible()
    assert responder.locator(".em-gestation").inner_text().endswith("日")
    assert (
        responder.locator(".em-pregnancy").get_by_text("はぐくみレディースクリニック").is_visible()
    )
    responder.screenshot(path=str(SCREENSHOTS / "hagukumi-emergency-summary.png"), full_page=True)
    assert serious_violations(responder) == []
    context.close()

    # --- the privacy officer reviews it -------------------------------------
    context = browser.new_context(viewport=PHONE, locale="ja-JP")
    officer = context.new_page()
    errors += watch_console(officer)
    log_in(officer, base, OFFICER_EMAIL, totp=True)
    officer.goto(f"{base}/emergency/reviews/")
    review = officer.locator("article.em-review").first
    assert "路上で腹痛と出血" in review.inner_text()
    assert serious_violations(officer) == []
    review.locator('input[value="appropriate"]').check()
    review.locator('button[type="submit"]').click()
    officer.wait_for_load_state()
    assert officer.get_by_text("審査結果を保存しました").is_visible()
    assert BreakGlass.objects.get().review == "appropriate"
    context.close()

    assert errors == []
