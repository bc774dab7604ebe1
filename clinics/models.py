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

PatientAlias and PatientMatchReview: a Patient a clinic's system sends
(POST /fhir Bundles, clinic feed pulls) is matched by identifier to a person
known here (clinics/matching.py, docs/decisions/0011-fhir-bundles.md,
"Matching a clinic's Patient").
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
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


class PatientAlias(models.Model):
    """The id a clinic system's own id for a patient would give (a feed's
    uuid5 of server base and `Patient/123`), standing for the person known
    here it was matched to, so that the server's references to her resolve
    to her on every later page. Scoped to the clinic: another clinic's
    references never go through it."""

    organization = models.ForeignKey("phr.Organization", models.PROTECT, related_name="+")
    alias = models.UUIDField()
    patient = models.ForeignKey("phr.Patient", models.CASCADE, related_name="+")
    # The source as the clinic named her (server base, "Patient/123").
    source_system = models.CharField(max_length=300)
    source_value = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            # one meaning per id and clinic; a page read twice adds nothing
            models.UniqueConstraint(
                fields=["organization", "alias"], name="clinics_patientalias_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.source_value} @ {self.organization_id} → {self.patient_id}"


class PatientMatchReview(models.Model):
    """A Patient a clinic's system sent whose identifiers named more than one
    person the clinic may know: nothing was guessed, she was registered
    anew (`registered`), and this row waits for someone to decide whether
    she is one of `candidates` (phr.identity.patient_merge joins them)."""

    clinic = models.ForeignKey("phr.Organization", models.PROTECT, related_name="+")
    registered = models.OneToOneField("phr.Patient", models.CASCADE, related_name="+")
    candidates = ArrayField(models.UUIDField())
    # The identifiers (system|value) that named the candidates.
    identifiers = ArrayField(models.CharField(max_length=500))
    # What sent her: "fhir-bundle:transaction", "feed:<source>:<run>".
    source = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            # serves the review list: a clinic's questions, newest first
            models.Index(fields=["clinic", "-created_at"], name="clinics_matchreview_clinic"),
        ]

    def __str__(self) -> str:
        return f"{self.registered_id}: {len(self.candidates)} candidates"
