"""Control data of the clinic side.

ClinicInvitation: a clinic registered a pregnant patient who has no account
yet and gives her a code (on paper, or by email) so that she can link her
account to the record the clinic keeps (clinics/services.py,
docs/decisions/0008-clinics.md). The municipal family link codes
(municipal_data.LinkCode) are a municipality's letters to families in its
register; a clinic's invitation names one patient and the clinic, so it is
its own small table built from the same primitives (the code alphabet,
normalising, SHA-256 at rest, single use, expiry, a lock after wrong
attempts).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class ClinicInvitation(models.Model):
    """One code for one patient the clinic registered. Only the SHA-256 of
    the normalised code is stored. Status is derived, never stored."""

    class Status(models.TextChoices):
        ACTIVE = "active", _("valid")
        USED = "used", _("used")
        REVOKED = "revoked", _("revoked")
        EXPIRED = "expired", _("expired")
        LOCKED = "locked", _("locked")

    # Wrong attempts (a wrong birth date) before the code stops working.
    MAX_FAILURES = 5

    clinic = models.ForeignKey("phr.Organization", models.PROTECT, related_name="+")
    patient = models.ForeignKey("phr.Patient", models.CASCADE, related_name="+")
    code_hash = models.CharField(max_length=64, unique=True)
    # The first group of the code, so staff can find the invitation a
    # patient asks about.
    prefix = models.CharField(max_length=8)
    # Where the code was sent, if it was emailed (blank: handed over on paper).
    email = models.EmailField(blank=True)
    issued_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, related_name="+"
    )
    issued_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    used_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)
    failed_attempts = models.PositiveSmallIntegerField(default=0)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(expires_at__gt=F("issued_at")),
                name="clinics_invitation_expires_after_issue",
            ),
        ]
        indexes = [
            # serves staff lookups: a clinic's invitations, newest first
            models.Index(fields=["clinic", "-issued_at"], name="clinics_invitation_clinic"),
        ]

    def __str__(self) -> str:
        return f"invitation {self.prefix}… ({self.clinic_id} → {self.patient_id})"

    def status_at(self, at: Any = None) -> str:
        moment = at or timezone.now()
        if self.used_at is not None:
            return self.Status.USED
        if self.revoked_at is not None:
            return self.Status.REVOKED
        if self.failed_attempts >= self.MAX_FAILURES:
            return self.Status.LOCKED
        if self.expires_at <= moment:
            return self.Status.EXPIRED
        return self.Status.ACTIVE

    @property
    def status(self) -> str:
        return self.status_at()
