"""Bearer API tokens for systems (clinic EHRs, gateways, municipal systems).

The token's secret is shown once; only its SHA-256 is stored. A revoked or
expired token fails like an unknown one.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from phr.models import ApiToken

TOKEN_PREFIX = "hgk_"  # noqa: S105 (a public prefix, not a secret)


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def api_token_create(*, user: Any, name: str, organization: Any = None) -> tuple[ApiToken, str]:
    """Create a token and return it with its secret (shown once)."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user,
        organization=organization,
        name=name,
        prefix=secret[: len(TOKEN_PREFIX) + 6],
        token_hash=hash_token(secret),
    )
    return token, secret


def api_token_revoke(*, token: ApiToken) -> ApiToken:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token


class ApiTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, ApiToken] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header.startswith(self.keyword + " "):
            return None
        secret = header[len(self.keyword) + 1 :].strip()
        token = (
            ApiToken.objects.usable()
            .select_related("user")
            .filter(token_hash=hash_token(secret))
            .first()
        )
        if token is None or not token.user.is_active:
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        now = timezone.now()
        # Record use at most once a minute, so a busy system does not turn
        # every read into a write.
        if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class ApiTokenScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    """Describes bearer tokens in the OpenAPI schema (drf-spectacular)."""

    target_class = "phr.authentication.ApiTokenAuthentication"
    name = "ApiToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer"}
