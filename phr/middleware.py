"""Request id, idle session limits and no-store caching for patient data."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from contextvars import ContextVar

from django.conf import settings
from django.contrib.auth import logout
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils import timezone

request_id_var: ContextVar[str] = ContextVar("request_id", default="")
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")

Handler = Callable[[HttpRequest], HttpResponse]


def current_request_id() -> str:
    """The id of the request being served, or a fresh one outside requests
    (a Celery task, a management command)."""
    return request_id_var.get() or f"local-{uuid.uuid4()}"


class RequestIdMiddleware:
    """Give every request an id (or accept a well-formed X-Request-ID), so
    the audit rows of one response can be found together."""

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get("X-Request-ID", "")
        rid = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        request.request_id = rid  # type: ignore[attr-defined]
        token = request_id_var.set(rid)
        try:
            response = self.get_response(request)
        finally:
            request_id_var.reset(token)
        response["X-Request-ID"] = rid
        return response


class IdleTimeoutMiddleware:
    """Log a session out after it has been idle too long: 15 minutes for
    staff, 30 for parents (ASVS 3.3.2). The absolute limit is the session
    cookie age (12 hours)."""

    SESSION_KEY = "hagukumi_last_seen"

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            from phr.roles import is_staff_user

            now = timezone.now().timestamp()
            last_seen = request.session.get(self.SESSION_KEY)
            limit = (
                settings.SESSION_IDLE_TIMEOUT_STAFF
                if is_staff_user(user)
                else settings.SESSION_IDLE_TIMEOUT_PARENT
            )
            if last_seen is not None and now - float(last_seen) > limit.total_seconds():
                logout(request)
                if request.path.startswith(("/fhir/", "/api/")) or request.path == "/fhir":
                    return self.get_response(request)
                login_url = f"{reverse(settings.LOGIN_URL)}?timeout=1"
                if request.headers.get("HX-Request"):
                    # htmx would swap the login page into a fragment: ask it
                    # to navigate instead.
                    response = HttpResponse(status=204)
                    response["HX-Redirect"] = login_url
                    return response
                return redirect(login_url)
            request.session[self.SESSION_KEY] = now
        return self.get_response(request)


class NoStoreMiddleware:
    """Pages and API responses about people must not be cached by browsers
    or proxies (ASVS 8.2.1). Static files are served before this runs."""

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if not request.path.startswith(settings.STATIC_URL):
            response["Cache-Control"] = "no-store"
            response["Pragma"] = "no-cache"
        return response


class StaffMfaSetupMiddleware:
    """Send staff who have no authenticator app yet to set one up.

    Staff (organization members, platform admins) must use MFA; until they
    have TOTP, sharing/access.py shows them no patient data, and this sends
    every page they open to the TOTP activation page instead. Account pages
    (login, logout, re-authentication, the MFA pages themselves), static
    files and the language switch stay reachable, and so does the API,
    which answers with data or errors, never with a setup page.

    Goes after AccountMiddleware and IdleTimeoutMiddleware, so that an idle
    session is logged out before anything else happens.
    """

    EXEMPT_PREFIXES = ("/accounts/", "/i18n/", "/fhir/", "/api/", "/vitals/devices/api/")

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        if (
            user is not None
            and user.is_authenticated
            and not request.path.startswith((*self.EXEMPT_PREFIXES, settings.STATIC_URL))
            and request.path != "/fhir"  # the FHIR base URL (POST of a Bundle)
        ):
            from phr.roles import has_mfa, is_staff_user

            if is_staff_user(user) and not has_mfa(user):
                if request.headers.get("HX-Request") == "true":
                    # htmx would swap the setup page into a fragment: ask
                    # it to load the page instead.
                    response = HttpResponse(status=204)
                    response["HX-Redirect"] = reverse("mfa_activate_totp")
                    return response
                return redirect("mfa_activate_totp")
        return self.get_response(request)
