"""Control data of the vitals app: the devices a family registered.

A device (a blood pressure monitor, a scale, a phone app, a home gateway)
writes vitals for ONE patient — the person it was registered for — with a
bearer token of its own. Only the SHA-256 of the token is stored (as for
phr.ApiToken); the secret is shown once, when the device is registered.
The token is not an ApiToken on purpose: an ApiToken acts as its user
across the whole FHIR API, while a device token reaches nothing but the
device endpoints of its own patient (docs/decisions/0018-vital-devices.md).
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class DeviceQuerySet(models.QuerySet["Device"]):
    def active(self) -> DeviceQuerySet:
        return self.filter(revoked_at__isnull=True)


class Device(models.Model):
    """A device, phone app or gateway registered by a guardian (or a mother
    for herself) to send one patient's vitals."""

    class Kind(models.TextChoices):
        DEVICE = "device", _("measuring device")
        APP = "app", _("phone app")
        GATEWAY = "gateway", _("home gateway")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    patient = models.ForeignKey("phr.Patient", models.CASCADE, related_name="vital_devices")
    # SET_NULL, so a guardian leaving (docs/decisions/0016) is never blocked
    # by a device she once registered.
    registered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, related_name="+"
    )
    kind = models.CharField(_("kind"), max_length=16, choices=Kind.choices)
    name = models.CharField(_("name"), max_length=100)
    token_prefix = models.CharField(max_length=16)
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    last_used_at = models.DateTimeField(null=True, blank=True)

    objects = DeviceQuerySet.as_manager()

    class Meta:
        indexes = [
            # Serves the guardian's device list of one person, newest first.
            models.Index(fields=["patient", "-created_at"], name="vitals_device_patient"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.token_prefix}…)"

    @property
    def provenance_source(self) -> str:
        """How a Provenance names this device ("device:<uuid>")."""
        return f"device:{self.pk}"
