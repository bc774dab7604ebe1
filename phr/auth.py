"""Re-authentication for sensitive actions (break-glass, consent changes,
exports, purges …): the person at the keyboard must have proved who they
are within the last ACCOUNT_REAUTHENTICATION_TIMEOUT seconds (300).

Built on allauth's reauthentication flow: when the last authentication is
too old, the view raises allauth's `ReauthenticationRequired`; allauth's
AccountMiddleware then sends the user to "Confirm access" (password, or
the authenticator code for MFA users), keeps a POST to replay it, and
brings the user back to the action.

Unlike allauth's own `reauthentication_required`, which only counts an
explicit re-authentication, a fresh login counts too: someone who typed
their password two minutes ago is not asked for it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from allauth.account.internal.flows.login import get_authentication_records
from allauth.core.exceptions import ReauthenticationRequired
from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse

View = TypeVar("View", bound=Callable[..., HttpResponse])


def last_authenticated_at(request: HttpRequest) -> float | None:
    """When this session last proved its user: a login (password, and the
    second factor for MFA users) or a re-authentication, as a Unix time."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    records = get_authentication_records(request, user)
    moments = [float(r["at"]) for r in records if isinstance(r, dict) and "at" in r]
    return max(moments, default=None)


def recently_authenticated(request: HttpRequest) -> bool:
    moment = last_authenticated_at(request)
    if moment is None:
        return False
    return time.time() - moment < settings.ACCOUNT_REAUTHENTICATION_TIMEOUT


def sensitive_action(view: View) -> View:
    """Run `view` only for a user who authenticated in the last few minutes;
    otherwise send them to re-authenticate and then back (a POST is kept
    and replayed by allauth). Anonymous users go to the login page.

    For class-based views use `method_decorator(sensitive_action,
    name="dispatch")`.
    """

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not recently_authenticated(request):
            raise ReauthenticationRequired()
        return view(request, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
