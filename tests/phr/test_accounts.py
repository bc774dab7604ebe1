"""Accounts: allauth's pages in our layout, login throttling, sign-up for
parents only, the second factor, and re-authentication for sensitive
actions (phr.auth.sensitive_action)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import time_machine
from allauth.account.models import EmailAddress
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import SECRET_SESSION_KEY
from django.core import mail
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from phr.auth import sensitive_action
from phr.models import User
from tests import factories as f
from tests.totp import code_for_secret, code_for_user

pytestmark = pytest.mark.django_db


@sensitive_action
def sensitive_view(request: HttpRequest) -> HttpResponse:
    """A stand-in for break-glass, consent changes or exports."""
    return HttpResponse(f"done {request.method}")


@pytest.fixture(autouse=True)
def _fresh_rate_limits() -> Iterator[None]:
    # allauth counts attempts in the cache: every test starts from zero.
    cache.clear()
    yield
    cache.clear()


def verified(user: User) -> User:
    """allauth (mandatory verification) logs in only verified addresses."""
    EmailAddress.objects.update_or_create(
        user=user, email=user.email, defaults={"verified": True, "primary": True}
    )
    return user


def log_in(client: Client, email: str, password: str = f.PASSWORD) -> HttpResponse:
    return client.post(reverse("account_login"), {"login": email, "password": password})


def totp_code(user: User) -> str:
    return code_for_user(user)


def reauthenticate(client: Client, password: str = f.PASSWORD) -> HttpResponse:
    return client.post(reverse("account_reauthenticate"), {"password": password})


@pytest.fixture
def parent(db: None) -> User:
    return verified(f.UserFactory(email="parent@example.jp"))


# --------------------------------------------------------------------------
# allauth's pages render in our layout, in Japanese
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url_name", "expected"),
    [
        ("account_login", "ログイン"),
        ("account_signup", "ユーザー登録"),
        ("account_reset_password", "パスワード"),
        ("account_reset_password_done", "パスワード"),
        ("account_email_verification_sent", "メールアドレス"),
    ],
)
def test_it_renders_the_entrance_pages_in_our_layout_in_japanese(
    client: Client, url_name: str, expected: str
) -> None:
    response = client.get(reverse(url_name))
    assert response.status_code == 200
    html = response.content.decode()
    assert '<html lang="ja">' in html
    assert 'class="site-header"' in html  # our base layout
    assert expected in html
    if url_name in ("account_login", "account_signup", "account_reset_password"):
        assert "<form" in html
        assert 'name="csrfmiddlewaretoken"' in html


def test_it_says_sign_up_is_for_parents(client: Client) -> None:
    html = client.get(reverse("account_signup")).content.decode()
    assert "保護者の方のためのもの" in html
    assert 'name="email"' in html
    assert 'name="password1"' in html


def test_it_renders_the_password_reset_from_key_page_for_a_bad_key(client: Client) -> None:
    url = reverse("account_reset_password_from_key", kwargs={"uidb36": "zz", "key": "bad-key"})
    response = client.get(url)
    assert response.status_code == 200
    assert 'class="site-header"' in response.content.decode()


def test_it_renders_the_email_confirmation_page_for_an_unknown_key(client: Client) -> None:
    response = client.get(reverse("account_confirm_email", args=["unknown-key"]))
    assert response.status_code == 200
    assert 'class="site-header"' in response.content.decode()


def test_it_asks_before_logging_out(client: Client, parent: User) -> None:
    client.force_login(parent)
    response = client.get(reverse("account_logout"))
    assert response.status_code == 200
    assert "<form" in response.content.decode()
    response = client.post(reverse("account_logout"))
    assert response.status_code == 302
    assert "_auth_user_id" not in client.session


def test_it_shows_the_timeout_notice_on_the_login_page(client: Client) -> None:
    html = client.get(reverse("account_login") + "?timeout=1").content.decode()
    assert "しばらく操作がなかったため" in html


def test_it_renders_the_mfa_pages_after_reauthentication(client: Client, parent: User) -> None:
    client.force_login(parent)
    assert client.get(reverse("mfa_index")).status_code == 200

    # Activating an authenticator is itself a sensitive action in allauth.
    response = client.get(reverse("mfa_activate_totp"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_reauthenticate"))
    page = client.get(response["Location"])
    assert page.status_code == 200
    assert 'name="password"' in page.content.decode()

    assert reauthenticate(client).status_code == 302
    response = client.get(reverse("mfa_activate_totp"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "認証アプリ" in html
    assert 'name="code"' in html
    assert 'src="data:image/svg+xml' in html  # the QR code (CSP allows data: images)


def test_it_activates_totp_and_shows_recovery_codes(client: Client, parent: User) -> None:
    client.force_login(parent)
    reauthenticate(client)
    client.get(reverse("mfa_activate_totp"))
    # The secret shown as a QR code waits in the session until activation.
    secret = str(client.session[SECRET_SESSION_KEY])
    code = code_for_secret(secret)
    response = client.post(reverse("mfa_activate_totp"), {"code": code})
    assert response.status_code == 302
    assert Authenticator.objects.filter(user=parent, type=Authenticator.Type.TOTP).exists()

    response = client.get(reverse("mfa_view_recovery_codes"))
    assert response.status_code == 200
    assert "リカバリーコード" in response.content.decode()
    response = client.get(reverse("mfa_generate_recovery_codes"))
    assert response.status_code == 200
    assert "<form" in response.content.decode()


def test_it_asks_a_user_with_totp_for_the_second_factor_at_login(client: Client) -> None:
    user = verified(f.UserFactory(email="mfa-parent@example.jp"))
    f.enable_totp(user)

    response = log_in(client, user.email)
    assert response.status_code == 302
    assert response["Location"] == reverse("mfa_authenticate")
    page = client.get(reverse("mfa_authenticate"))
    assert page.status_code == 200
    html = page.content.decode()
    assert "多要素認証" in html
    assert 'name="code"' in html
    assert "_auth_user_id" not in client.session  # not logged in before the code

    response = client.post(reverse("mfa_authenticate"), {"code": totp_code(user)})
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(user.pk)


# --------------------------------------------------------------------------
# Login, sign-up, throttling
# --------------------------------------------------------------------------


def test_it_logs_a_parent_in_through_the_form_and_lands_on_the_family_page(
    client: Client, parent: User
) -> None:
    response = log_in(client, parent.email)
    assert response.status_code == 302
    assert response["Location"] == reverse("phr:home")
    assert client.session["_auth_user_id"] == str(parent.pk)


def test_it_sends_staff_without_mfa_to_totp_setup_after_login(
    client: Client, staff_without_mfa: User
) -> None:
    verified(staff_without_mfa)
    response = log_in(client, staff_without_mfa.email)
    assert response.status_code == 302
    assert response["Location"] == reverse("mfa_activate_totp")


def test_it_lets_staff_set_up_totp_right_after_login_without_asking_again(
    client: Client, staff_without_mfa: User
) -> None:
    # A login in the last five minutes counts as a recent authentication
    # for allauth's own sensitive pages too (phr.adapters).
    verified(staff_without_mfa)
    log_in(client, staff_without_mfa.email)
    response = client.get(reverse("mfa_activate_totp"))
    assert response.status_code == 200
    assert 'name="code"' in response.content.decode()


def test_it_throttles_repeated_wrong_passwords_for_one_account(
    client: Client, parent: User
) -> None:
    # ACCOUNT_RATE_LIMITS login_failed "…,5/5m/key": five failures per
    # account in five minutes, then even the right password is refused.
    for _ in range(5):
        response = log_in(client, parent.email, "wrong password 123")
        assert response.status_code == 200
        assert "_auth_user_id" not in client.session
    response = log_in(client, parent.email)
    assert response.status_code == 200
    assert "ログイン失敗が連続しています" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_it_lets_the_account_in_again_after_the_throttle_window(
    client: Client, parent: User
) -> None:
    with time_machine.travel(timezone.now(), tick=False) as clock:
        for _ in range(5):
            log_in(client, parent.email, "wrong password 123")
        clock.shift(timedelta(minutes=6))
        response = log_in(client, parent.email)
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(parent.pk)


def test_it_signs_up_a_parent_never_staff(client: Client) -> None:
    response = client.post(
        reverse("account_signup"),
        {
            "email": "new.parent@example.jp",
            "password1": "a long enough passphrase 2026",
            "password2": "a long enough passphrase 2026",
        },
    )
    assert response.status_code == 302
    user = User.objects.get(email="new.parent@example.jp")
    assert not user.is_staff
    assert not user.is_superuser
    assert not user.is_platform_admin
    assert not user.memberships.exists()
    assert user.language == "ja"
    # Mandatory verification: a confirmation mail goes out.
    assert len(mail.outbox) == 1


# --------------------------------------------------------------------------
# sensitive_action: re-authentication within ACCOUNT_REAUTHENTICATION_TIMEOUT
# --------------------------------------------------------------------------


@pytest.mark.urls("tests.phr.sensitive_urls")
def test_it_sends_a_stale_session_to_reauthenticate_and_back(client: Client, parent: User) -> None:
    with time_machine.travel(timezone.now(), tick=False) as clock:
        client.force_login(parent)  # no authentication recorded: stale
        response = client.get("/sensitive/")
        assert response.status_code == 302
        assert response["Location"] == f"{reverse('account_reauthenticate')}?next=%2Fsensitive%2F"

        response = client.post(response["Location"], {"password": f.PASSWORD})
        assert response.status_code == 302
        assert response["Location"] == "/sensitive/"
        assert client.get("/sensitive/").content == b"done GET"

        # Still fresh just under five minutes later …
        clock.shift(timedelta(seconds=299))
        assert client.get("/sensitive/").status_code == 200
        # … and stale after five minutes since the re-authentication.
        clock.shift(timedelta(seconds=2))
        response = client.get("/sensitive/")
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("account_reauthenticate"))


@pytest.mark.urls("tests.phr.sensitive_urls")
def test_it_counts_a_fresh_login_as_recent_authentication(client: Client, parent: User) -> None:
    with time_machine.travel(timezone.now(), tick=False) as clock:
        log_in(client, parent.email)
        assert client.get("/sensitive/").content == b"done GET"
        clock.shift(timedelta(seconds=301))
        assert client.get("/sensitive/").status_code == 302


@pytest.mark.urls("tests.phr.sensitive_urls")
def test_it_replays_a_post_after_reauthentication(client: Client, parent: User) -> None:
    client.force_login(parent)
    response = client.post("/sensitive/", {"reason": "emergency"})
    assert response.status_code == 302
    # allauth keeps the POST and runs it once the password is confirmed.
    response = client.post(response["Location"], {"password": f.PASSWORD})
    assert response.content == b"done POST"


@pytest.mark.urls("tests.phr.sensitive_urls")
def test_it_refuses_a_wrong_password_on_reauthentication(client: Client, parent: User) -> None:
    client.force_login(parent)
    response = reauthenticate(client, "not my password")
    assert response.status_code == 200
    assert client.get("/sensitive/").status_code == 302


@pytest.mark.urls("tests.phr.sensitive_urls")
def test_it_sends_anonymous_users_to_login_from_a_sensitive_action(client: Client) -> None:
    response = client.get("/sensitive/")
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))


@pytest.fixture
def mfa_user(db: None) -> User:
    user = verified(f.UserFactory(email="mfa-user@example.jp"))
    f.enable_totp(user)
    return user


@pytest.mark.urls("tests.phr.sensitive_urls")
def test_it_asks_an_mfa_user_for_the_authenticator_code_not_only_the_password(
    client: Client, mfa_user: User
) -> None:
    client.force_login(mfa_user)
    response = client.get("/sensitive/")
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("mfa_reauthenticate"))
    # A password alone does not make an MFA user's session fresh.
    reauthenticate(client)
    assert client.get("/sensitive/").status_code == 302

    response = client.post(
        f"{reverse('mfa_reauthenticate')}?next=/sensitive/", {"code": totp_code(mfa_user)}
    )
    assert response.status_code == 302
    assert response["Location"] == "/sensitive/"
    assert client.get("/sensitive/").content == b"done GET"


@pytest.mark.urls("tests.phr.sensitive_urls")
def test_it_counts_a_fresh_login_with_the_second_factor(client: Client, mfa_user: User) -> None:
    log_in(client, mfa_user.email)
    client.post(reverse("mfa_authenticate"), {"code": totp_code(mfa_user)})
    assert client.get("/sensitive/").content == b"done GET"


def test_it_hashes_passwords_with_argon2() -> None:
    from django.conf import settings

    assert "Argon2" in settings.PASSWORD_HASHERS[0]
    user = User(email="hash@example.jp")
    user.set_password("a long enough passphrase 2026")
    assert user.password.startswith("argon2")


@pytest.mark.parametrize(
    "password",
    [
        "short-2026",  # under 12 characters
        "password1234",  # a common password
        "123456789012",  # all digits
    ],
)
def test_it_refuses_weak_passwords(password: str) -> None:
    from django.contrib.auth.password_validation import validate_password
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        validate_password(password)
