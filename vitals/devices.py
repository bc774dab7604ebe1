"""Devices a family registers to send vitals, and their tokens.

- `device_register` makes a device for one patient and returns it with its
  token's secret, shown once; only the SHA-256 is kept (as
  phr.authentication does for API tokens).
- `device_revoke` cuts it off at once; its token then fails like an
  unknown one (401).
- `DeviceTokenAuthentication` is used by the device endpoints only
  (vitals/device_api.py). A device token is not an ApiToken, so the FHIR
  API and every other endpoint refuse it: a device writes vitals for its
  own patient and reaches nothing else.

Who may register or revoke is decided by the policy point
(sharing.access.may_write for the family's own vitals); the views check it
before calling these services.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.http import Http404
from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from phr.audit import audit_write
from phr.models import Patient
from phr.terminology import Category
from sharing.access import Purpose
from vitals.models import Device

TOKEN_PREFIX = "hgkd_"  # noqa: S105 (a public prefix, not a secret)
NAME_MAX = 100
# Record use at most once a minute, so a device sending every few seconds
# does not turn each request into an extra write (as API tokens do).
LAST_USED_GRANULARITY_S = 60


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def family_role(user: Any, patient: Patient) -> str:
    """The audit role of a family member acting for `patient`."""
    return "patient" if patient.account_id == user.pk else "guardian"


def devices_of(patient: Patient) -> QuerySet[Device]:
    """The patient's devices, newest first, revoked ones too (so the family
    sees what was registered and when it was last used)."""
    return (
        Device.objects.filter(patient=patient)
        .select_related("registered_by")
        .order_by("-created_at", "pk")
    )


def device_of(patient: Patient, device_id: Any) -> Device:
    """One of the patient's devices, or Http404 (another person's and a
    missing one alike)."""
    try:
        pk = uuid.UUID(str(device_id))
    except ValueError:
        raise Http404 from None
    device = Device.objects.filter(pk=pk, patient=patient).first()
    if device is None:
        raise Http404
    return device


@transaction.atomic
def device_register(*, patient: Patient, by: Any, name: str, kind: str) -> tuple[Device, str]:
    """A new device sending `patient`'s vitals; returns it with its token's
    secret (shown once). The caller has checked that `by` may write the
    patient's vitals (herself, or a guardian of the child)."""
    name = name.strip()
    if not name or len(name) > NAME_MAX:
        raise ValidationError(
            "機器の名前を100文字以内で入力してください / Give the device a name "
            "(up to 100 characters)."
        )
    if kind not in Device.Kind.values:
        raise ValidationError("機器の種類を選んでください / Choose the kind of device.")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    device = Device.objects.create(
        patient=patient,
        registered_by=by,
        name=name,
        kind=kind,
        token_prefix=secret[: len(TOKEN_PREFIX) + 6],
        token_hash=hash_token(secret),
    )
    audit_write(
        action="vitals.device.register",
        actor_id=by.pk,
        actor_role=family_role(by, patient),
        patient_id=patient.pk,
        categories=[Category.VITALS],
        purpose=Purpose.PERSONAL,
        detail={"device": str(device.pk), "prefix": device.token_prefix, "kind": kind},
    )
    return device, secret


@transaction.atomic
def device_revoke(*, device: Device, by: Any) -> Device:
    """Revoke at once; revoking twice changes nothing (and is not audited
    again)."""
    updated = Device.objects.filter(pk=device.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now(), revoked_by=by
    )
    device.refresh_from_db(fields=["revoked_at", "revoked_by"])
    if updated:
        audit_write(
            action="vitals.device.revoke",
            actor_id=by.pk,
            actor_role=family_role(by, device.patient),
            patient_id=device.patient_id,
            categories=[Category.VITALS],
            purpose=Purpose.PERSONAL,
            detail={"device": str(device.pk), "prefix": device.token_prefix},
        )
    return device


# --------------------------------------------------------------------------
# Authentication of the device endpoints
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class DevicePrincipal:
    """request.user on a device endpoint: the device, not a person. It has
    no pk, so nothing that looks up a person's grants finds any."""

    device: Device

    is_authenticated = True
    is_active = True
    is_anonymous = False
    pk = None
    id = None

    def __str__(self) -> str:
        return f"device {self.device.pk}"


class DeviceTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[DevicePrincipal, Device] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header.startswith(self.keyword + " "):
            return None
        secret = header[len(self.keyword) + 1 :].strip()
        device = (
            Device.objects.active()
            .filter(token_hash=hash_token(secret), patient__merged_into__isnull=True)
            .select_related("patient")
            .first()
        )
        if device is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked device token.")
        now = timezone.now()
        if (
            device.last_used_at is None
            or (now - device.last_used_at).total_seconds() > LAST_USED_GRANULARITY_S
        ):
            Device.objects.filter(pk=device.pk).update(last_used_at=now)
            device.last_used_at = now
        return DevicePrincipal(device), device

    def authenticate_header(self, request: Request) -> str:
        return self.keyword
