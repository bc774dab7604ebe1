"""A parent's first visit, in a real browser: log in through the form, see
the family, open the child's page and read the timeline — in Japanese,
with no serious accessibility problems and no CSP violations."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import cache
from django.core.management import call_command

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PARENT_EMAIL = "parent@demo.hagukumi.jp"
# Screenshots to look at after a run (/tmp/hagukumi-*.png).
SCREENSHOTS = Path(tempfile.gettempdir())


def serious_violations(page: Any) -> list[str]:
    """axe-core's violations of impact serious or critical, readable."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    problems = []
    for violation in results.response["violations"]:
        if violation.get("impact") in ("serious", "critical"):
            targets = [node["target"] for node in violation["nodes"]][:5]
            problems.append(f"{violation['id']} ({violation['impact']}): {targets}")
    return problems


def watch_console(page: Any) -> list[str]:
    """Collect console errors (a CSP refusal shows up there)."""
    errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


def test_it_takes_a_parent_from_login_to_the_childs_timeline(
    live_server: Any, browser: Any
) -> None:
    cache.clear()  # allauth's login rate limits live in the cache
    call_command("seed_demo", verbosity=0)

    context = browser.new_context(viewport={"width": 390, "height": 844}, locale="ja-JP")
    page = context.new_page()
    errors = watch_console(page)

    # Not logged in: the family page sends us to the login form, in Japanese.
    page.goto(f"{live_server.url}/")
    assert "/accounts/login/" in page.url
    assert page.locator("html").get_attribute("lang") == "ja"
    assert serious_violations(page) == []

    page.fill('input[name="login"]', PARENT_EMAIL)
    page.fill('input[name="password"]', settings.DEMO_PASSWORD)
    page.click('main form[action="/accounts/login/"] button[type="submit"]')
    page.wait_for_url(f"{live_server.url}/")

    # わたしの家族: the mother, her pregnancy and her son.
    assert page.locator("h1").inner_text() == "わたしの家族"
    assert page.get_by_text("出産予定日").is_visible()
    child_link = page.locator("#children-heading ~ ul a.person-card").first
    assert "陽翔" in child_link.inner_text()
    assert PARENT_EMAIL in page.locator("header").inner_text()
    page.screenshot(path=str(SCREENSHOTS / "hagukumi-family.png"), full_page=True)
    assert serious_violations(page) == []

    # The child's page: checkups and vaccinations, newest first, with sources.
    child_link.click()
    page.wait_for_url("**/people/**")
    assert "陽翔" in page.locator("h1").inner_text()
    timeline = page.locator("#timeline").inner_text()
    assert "健診" in timeline
    assert page.locator(".entry-immunization").count() > 0
    assert page.locator(".badge-municipality").count() > 0
    page.screenshot(path=str(SCREENSHOTS / "hagukumi-child.png"), full_page=False)
    assert serious_violations(page) == []

    # A wide screen lays the same page out in rows.
    page.set_viewport_size({"width": 1280, "height": 900})
    page.screenshot(path=str(SCREENSHOTS / "hagukumi-child-wide.png"), full_page=True)

    # The language switch works without JavaScript tricks: a plain form post.
    page.select_option("#language-select", "en")
    page.click('form.language-switch button[type="submit"]')
    page.wait_for_load_state()
    assert page.locator("html").get_attribute("lang") == "en"
    assert page.get_by_role("heading", name="Records").is_visible()
    assert serious_violations(page) == []

    assert errors == []
    context.close()


def test_it_keeps_the_account_pages_accessible(live_server: Any, browser: Any) -> None:
    """allauth's pages in our layout: sign-up, password reset, the
    authenticator-code step of a staff login, and TOTP set-up."""
    cache.clear()
    call_command("seed_demo", verbosity=0)
    context = browser.new_context(viewport={"width": 390, "height": 844}, locale="ja-JP")
    page = context.new_page()
    errors = watch_console(page)

    for path in ("/accounts/signup/", "/accounts/password/reset/"):
        page.goto(f"{live_server.url}{path}")
        assert page.locator("main form").count() >= 1, path
        assert serious_violations(page) == [], path
    page.goto(f"{live_server.url}/accounts/signup/")
    page.screenshot(path=str(SCREENSHOTS / "hagukumi-signup.png"), full_page=True)

    # Staff log in with a password, then the authenticator code.
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill('input[name="login"]', "clinic@demo.hagukumi.jp")
    page.fill('input[name="password"]', settings.DEMO_PASSWORD)
    page.click('main form[action="/accounts/login/"] button[type="submit"]')
    page.wait_for_url("**/accounts/2fa/authenticate/")
    assert page.locator('input[name="code"]').is_visible()
    page.screenshot(path=str(SCREENSHOTS / "hagukumi-2fa.png"), full_page=True)
    assert serious_violations(page) == []
    context.close()

    # A parent sets up an authenticator app (optional for parents).
    context = browser.new_context(viewport={"width": 390, "height": 844}, locale="ja-JP")
    page = context.new_page()
    errors += watch_console(page)
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill('input[name="login"]', PARENT_EMAIL)
    page.fill('input[name="password"]', settings.DEMO_PASSWORD)
    page.click('main form[action="/accounts/login/"] button[type="submit"]')
    page.wait_for_url(f"{live_server.url}/")
    page.goto(f"{live_server.url}/accounts/2fa/")
    assert serious_violations(page) == []
    page.goto(f"{live_server.url}/accounts/2fa/totp/activate/")
    assert page.locator("img[src^='data:image/svg+xml']").is_visible()  # the QR code
    page.screenshot(path=str(SCREENSHOTS / "hagukumi-totp.png"), full_page=True)
    assert serious_violations(page) == []

    assert errors == []
    context.close()
