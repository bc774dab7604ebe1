"""Clinic API tokens: what the clinic's own system (its EHR) uses to push
and pull FHIR. Created and revoked by the clinic's staff in the portal.

A token belongs to the clinic (ApiToken.organization) and acts as the
staff member who created it (ApiToken.user), so the FHIR API applies that
person's grants — a token never reaches further than its creator. Only
the SHA-256 of the secret is stored (phr.authentication); the secret is
shown once, right after creating. Creating and revoking are audited.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.http import Http404
from django.utils import timezone

from phr.audit import audit_write
from phr.authentication import api_token_create, api_token_revoke
from phr.models import ApiToken, Organization, Role
from sharing.access import Purpose

# Choices offered for a new token's lifetime, in days (0: until revoked).
LIFETIMES = (30, 90, 365, 0)
NAME_MAX = 100


def clinic_tokens(clinic: Organization) -> QuerySet[ApiToken]:
    """The clinic's tokens, newest first (revoked and expired ones too, so
    staff see what was and when it was last used)."""
    return (
        ApiToken.objects.filter(organization=clinic)
        .select_related("user")
        .order_by("-created_at", "-pk")
    )


def clinic_token(clinics: list[Organization], token_id: Any) -> ApiToken:
    """A token of one of these clinics (the user's), or Http404 (another
    clinic's and a missing one alike)."""
    try:
        pk = int(str(token_id))
    except ValueError:
        raise Http404 from None
    token = (
        ApiToken.objects.filter(pk=pk, organization__in=clinics)
        .select_related("organization")
        .first()
    )
    if token is None:
        raise Http404
    return token


@transaction.atomic
def clinic_token_create(
    *, clinic: Organization, by: Any, name: str, lifetime_days: int
) -> tuple[ApiToken, str]:
    """A new token of the clinic acting as `by`; returns it with its secret
    (shown once). The caller has checked that `by` is the clinic's staff
    and re-authenticated."""
    name = name.strip()
    if not name or len(name) > NAME_MAX:
        raise ValidationError("名前を入力してください / Give the token a name.")
    if lifetime_days not in LIFETIMES:
        raise ValidationError("有効期間を選んでください / Choose how long the token is valid.")
    token, secret = api_token_create(user=by, name=name, organization=clinic)
    if lifetime_days:
        token.expires_at = token.created_at + timedelta(days=lifetime_days)
        token.save(update_fields=["expires_at"])
    audit_write(
        action="api_token.create",
        actor_id=by.pk,
        actor_role=Role.CLINIC_STAFF,
        organization_id=clinic.pk,
        purpose=Purpose.CARE,
        detail={"api_token": token.pk, "prefix": token.prefix, "lifetime_days": lifetime_days},
    )
    return token, secret


@transaction.atomic
def clinic_token_revoke(*, token: ApiToken, by: Any) -> ApiToken:
    """Revoke at once; revoking twice changes nothing (and is not audited
    again)."""
    if token.revoked_at is not None:
        return token
    api_token_revoke(token=token)
    audit_write(
        action="api_token.revoke",
        actor_id=by.pk,
        actor_role=Role.CLINIC_STAFF,
        organization_id=token.organization_id,
        purpose=Purpose.CARE,
        detail={"api_token": token.pk, "prefix": token.prefix},
    )
    return token


def token_state(token: ApiToken) -> str:
    """active, expired or revoked."""
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= timezone.now():
        return "expired"
    return "active"
