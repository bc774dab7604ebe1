"""allauth adapter: sign-up is for parents only; staff accounts are created
by administrators and get memberships there."""

from __future__ import annotations

from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from django.conf import settings
from django.http import HttpRequest
from django.shortcuts import resolve_url
from django.utils.translation import get_language

from phr.auth import recently_authenticated
from phr.roles import has_mfa, is_staff_user


class AccountAdapter(DefaultAccountAdapter):
    def save_user(self, request: HttpRequest, user: Any, form: Any, commit: bool = True) -> Any:
        """A self-registered account is a parent's: never staff, never an
        administrator, whatever the form carried. It keeps the language the
        person signed up in."""
        user = super().save_user(request, user, form, commit=False)
        user.is_staff = False
        user.is_superuser = False
        user.is_platform_admin = False
        language = (get_language() or "").split("-")[0]
        if language in dict(settings.LANGUAGES):
            user.language = language
        if commit:
            user.save()
        return user

    def get_login_redirect_url(self, request: HttpRequest) -> str:
        """Staff without an authenticator app go straight to setting one
        up (StaffMfaSetupMiddleware would send them there anyway)."""
        if is_staff_user(request.user) and not has_mfa(request.user):
            return resolve_url("mfa_activate_totp")
        return super().get_login_redirect_url(request)

    def is_reauthentication_required(self, *, app: str, **kwargs: Any) -> bool:
        """allauth's own sensitive pages (activating TOTP, recovery codes)
        follow phr.auth's rule: a login in the last few minutes counts, so
        staff sent to set up TOTP right after logging in are not asked for
        their password a second time."""
        required = bool(super().is_reauthentication_required(app=app, **kwargs))
        if required and self.request is not None and recently_authenticated(self.request):
            return False
        return required
