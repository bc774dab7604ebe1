"""Re-authentication for sensitive actions (break-glass, consent changes,
exports, purges …): the person at the keyboard must have proved who they
are within the last ACCOUNT_REAUTHENTICATION_TIMEOUT seconds (300).

Built on allauth's reauthentication flow: a stale request is suspended
(a POST is kept to be replayed), the user confirms access on allauth's
page, and allauth brings them back to the action.

What counts as recent:
- for a user with an authenticator app (all staff): the authenticator
  code, entered at login or on "Confirm access" — a password alone is not
  enough for them;
- for everyone else (parents without MFA): the password, at login or on
  "Confirm access".

Unlike allauth's own `reauthentication_required`, which counts only an
explicit re-authentication, a fresh login counts too: someone who logged
in two minutes ago is not asked again. phr.adapters applies the same rule
to allauth's own sensitive pages (activating TOTP, recovery codes).

This reads allauth's record of the session's authentications through
allauth.account.internal (no public API for it in 65.x); the tests in
tests/phr/test_accounts.py pin the behaviour down across upgrades.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from allauth.account.internal.flows.login import get_authentication_records
from allauth.account.internal.flows.reauthentication import suspend_request
from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.urls import reverse

from phr.roles import has_mfa

View = TypeVar("View", bound=Callable[..., HttpResponse])


def recently_authenticated(request: HttpRequest) -> bool:
    """Did this session prove its user within the re-authentication
    timeout, with the factor that user must use (see the module doc)?"""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return False
    now = time.time()
    limit = settings.ACCOUNT_REAUTHENTICATION_TIMEOUT
    needs_mfa = has_mfa(user)
    for record in get_authentication_records(request, user):
        if not isinstance(record, dict) or "at" not in record:
            continue
        if needs_mfa and record.get("method") != "mfa":
            continue
        if now - float(record["at"]) < limit:
            return True
    return False


def reauthentication_url(user: Any) -> str:
    return reverse("mfa_reauthenticate" if has_mfa(user) else "account_reauthenticate")


def sensitive_action(view: View) -> View:
    """Run `view` only for a user who authenticated in the last few minutes;
    otherwise send them to confirm access and then back (a POST is kept and
    replayed by allauth). Anonymous users go to the login page.

    For class-based views use `method_decorator(sensitive_action,
    name="dispatch")`.
    """

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not recently_authenticated(request):
            return suspend_request(request, reauthentication_url(request.user))
        return view(request, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
