"""Control data for sharing: consent, emergency access, DV blocks, reports.

These tables decide access on every request (sharing/access.py reads them);
they are plain relational rows with named constraints. The FHIR API serves
Consent as a projection of `Consent` (sharing/fhir.py).
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import F, Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from phr.terminology import Category


class ConsentPurpose(models.TextChoices):
    CARE = "care", _("care")
    EMERGENCY = "emergency", _("emergency")
    RESEARCH = "research", _("research")


class ConsentQuerySet(models.QuerySet["Consent"]):
    def active(self, at: Any = None) -> ConsentQuerySet:
        """In force at `at` (now): started, not ended, not revoked."""
        moment = at or timezone.now()
        return self.filter(
            Q(ends_at__isnull=True) | Q(ends_at__gt=moment),
            starts_at__lte=moment,
            revoked_at__isnull=True,
        )


class Consent(models.Model):
    """A patient's (or a child's guardian's) permission for one
    organization or person to see some categories of that patient's
    records, for one purpose, for a period."""

    class Status(models.TextChoices):
        ACTIVE = "active", _("active")
        REVOKED = "revoked", _("revoked")
        EXPIRED = "expired", _("expired")
        PENDING = "pending", _("not yet started")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    patient = models.ForeignKey("phr.Patient", models.CASCADE, related_name="consents")
    granted_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.PROTECT, related_name="+")
    grantee_org = models.ForeignKey(
        "phr.Organization", models.PROTECT, null=True, blank=True, related_name="consents"
    )
    grantee_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        models.PROTECT,
        null=True,
        blank=True,
        related_name="consents_received",
    )
    purpose = models.CharField(_("purpose"), max_length=16, choices=ConsentPurpose.choices)
    categories = ArrayField(models.CharField(max_length=32, choices=Category.choices))
    starts_at = models.DateTimeField(_("from"), default=timezone.now)
    ends_at = models.DateTimeField(_("until"), null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    objects = ConsentQuerySet.as_manager()

    class Meta:
        constraints = [
            # exactly one grantee: an organization or a person
            models.CheckConstraint(
                condition=Q(grantee_org__isnull=False) ^ Q(grantee_user__isnull=False),
                name="sharing_consent_one_grantee",
            ),
            models.CheckConstraint(
                condition=Q(ends_at__isnull=True) | Q(ends_at__gt=F("starts_at")),
                name="sharing_consent_ends_after_start",
            ),
            models.CheckConstraint(
                condition=~Q(categories=[]), name="sharing_consent_some_categories"
            ),
        ]
        indexes = [
            # serves access: the consents naming one organization / person
            models.Index(fields=["grantee_org", "revoked_at"], name="sharing_consent_org"),
            models.Index(fields=["grantee_user", "revoked_at"], name="sharing_consent_user"),
            # serves the Sharing page: a patient's consents
            models.Index(fields=["patient", "revoked_at"], name="sharing_consent_patient"),
        ]

    def __str__(self) -> str:
        grantee = self.grantee_org or self.grantee_user
        return f"{self.patient_id} → {grantee} ({self.purpose})"

    def status_at(self, at: Any = None) -> str:
        moment = at or timezone.now()
        if self.revoked_at is not None:
            return self.Status.REVOKED
        if self.ends_at is not None and self.ends_at <= moment:
            return self.Status.EXPIRED
        if self.starts_at > moment:
            return self.Status.PENDING
        return self.Status.ACTIVE

    @property
    def status(self) -> str:
        return self.status_at()


class EmergencyPreference(models.Model):
    """A guardian's (or the adult patient's) standing choice that emergency
    services may open the emergency summary without break-glass."""

    patient = models.OneToOneField(
        "phr.Patient", models.CASCADE, related_name="emergency_preference"
    )
    share_summary = models.BooleanField(_("emergency services may see the summary"), default=False)
    contact_note = models.CharField(_("contact note"), max_length=200, blank=True)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.PROTECT, related_name="+")
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.patient_id}: share={self.share_summary}"


class BreakGlassQuerySet(models.QuerySet["BreakGlass"]):
    def open(self, at: Any = None) -> BreakGlassQuerySet:
        moment = at or timezone.now()
        return self.filter(starts_at__lte=moment, ends_at__gt=moment)

    def awaiting_review(self) -> BreakGlassQuerySet:
        return self.filter(reviewed_at__isnull=True)


class BreakGlass(models.Model):
    """An emergency responder's audited access without prior consent: a
    reason, a time window, the emergency summary only, reviewed afterwards
    by a second person (the municipality's privacy officer)."""

    class Reason(models.TextChoices):
        UNCONSCIOUS = "unconscious", _("patient cannot communicate")
        OBSTETRIC = "obstetric", _("obstetric emergency")
        CHILD = "child", _("child emergency without a guardian present")
        OTHER = "other", _("other")

    class Review(models.TextChoices):
        APPROPRIATE = "appropriate", _("appropriate")
        INAPPROPRIATE = "inappropriate", _("not appropriate")

    responder = models.ForeignKey(settings.AUTH_USER_MODEL, models.PROTECT, related_name="+")
    organization = models.ForeignKey("phr.Organization", models.PROTECT, related_name="+")
    patient = models.ForeignKey("phr.Patient", models.CASCADE, related_name="break_glasses")
    reason = models.CharField(_("reason"), max_length=16, choices=Reason.choices)
    justification = models.TextField(_("justification"))
    starts_at = models.DateTimeField(default=timezone.now)
    ends_at = models.DateTimeField()
    # the municipality whose privacy officer reviews it (the patient's, at the time)
    review_municipality = models.ForeignKey(
        "phr.Organization", models.PROTECT, null=True, blank=True, related_name="+"
    )
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.PROTECT, null=True, blank=True, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    review = models.CharField(max_length=16, choices=Review.choices, blank=True)
    review_note = models.TextField(blank=True)

    objects = BreakGlassQuerySet.as_manager()

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(ends_at__gt=F("starts_at")), name="sharing_breakglass_window"
            ),
            models.CheckConstraint(
                condition=~Q(justification=""), name="sharing_breakglass_justified"
            ),
        ]
        indexes = [
            # serves access: a responder's open windows
            models.Index(fields=["responder", "ends_at"], name="sharing_breakglass_open"),
        ]

    def __str__(self) -> str:
        return f"break-glass {self.responder_id} → {self.patient_id}"


class EmergencyCard(models.Model):
    """A printable / phone card: a QR code with an unguessable, expiring,
    revocable link to the emergency summary. Only a hash of the token is
    stored."""

    patient = models.ForeignKey("phr.Patient", models.CASCADE, related_name="emergency_cards")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.PROTECT, related_name="+")
    token_hash = models.CharField(max_length=64, unique=True)
    passcode_hash = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_opened_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"emergency card {self.pk} for {self.patient_id}"


class DvBlockQuerySet(models.QuerySet["DvBlock"]):
    def active(self) -> DvBlockQuerySet:
        return self.filter(lifted_at__isnull=True)


class DvBlock(models.Model):
    """DV等支援措置: a named user must learn nothing of a person, through any
    channel. Set and lifted by municipal staff."""

    patient = models.ForeignKey("phr.Patient", models.CASCADE, related_name="dv_blocks")
    blocked_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.CASCADE, related_name="dv_blocks"
    )
    municipality = models.ForeignKey("phr.Organization", models.PROTECT, related_name="+")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    lifted_at = models.DateTimeField(null=True, blank=True)
    lifted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.PROTECT, null=True, blank=True, related_name="+"
    )

    objects = DvBlockQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["patient", "blocked_user"],
                condition=Q(lifted_at__isnull=True),
                name="sharing_dvblock_one_active",
            ),
        ]
        indexes = [
            # serves access: is this user blocked from anyone?
            models.Index(fields=["blocked_user", "lifted_at"], name="sharing_dvblock_user"),
        ]

    def __str__(self) -> str:
        return f"DV block {self.blocked_user_id} ✕ {self.patient_id}"


class AccessReport(models.Model):
    """A family's report that an access looked wrong; it lands in the
    municipal privacy officer's queue."""

    class Status(models.TextChoices):
        OPEN = "open", _("open")
        CLOSED = "closed", _("closed")

    audit_event_id = models.BigIntegerField()
    patient = models.ForeignKey("phr.Patient", models.CASCADE, related_name="access_reports")
    reported_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.PROTECT, related_name="+")
    municipality = models.ForeignKey(
        "phr.Organization", models.PROTECT, null=True, blank=True, related_name="+"
    )
    note = models.TextField(_("what looks wrong"), blank=True)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.OPEN)
    created_at = models.DateTimeField(default=timezone.now)
    handled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.PROTECT, null=True, blank=True, related_name="+"
    )
    handled_at = models.DateTimeField(null=True, blank=True)
    resolution = models.TextField(blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["audit_event_id", "reported_by"], name="sharing_report_once"
            ),
        ]

    def __str__(self) -> str:
        return f"report on audit {self.audit_event_id} ({self.status})"


class GuardianInvitation(models.Model):
    """A guardian's invitation to a second guardian, by email, for one or
    more of her children (phr/family.py). Accepting it — signed in with an
    account whose verified email is the invited one — makes the invitee a
    guardian of those children; never of the inviter herself (an adult's
    records are hers).

    Only the SHA-256 of the token in the emailed link is stored. Single
    use, expiring, revocable by the inviter; status is derived, never
    stored."""

    class Status(models.TextChoices):
        ACTIVE = "active", _("waiting for an answer")
        ACCEPTED = "accepted", _("accepted")
        REVOKED = "revoked", _("withdrawn")
        EXPIRED = "expired", _("expired")

    class Relationship(models.TextChoices):
        # The invitee's relationship to the children (phr.Guardianship).
        MOTHER = "mother", _("mother")
        FATHER = "father", _("father")
        OTHER = "other", _("other guardian")

    inviter = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.CASCADE, related_name="guardian_invitations_sent"
    )
    children = models.ManyToManyField("phr.Patient", related_name="+")
    email = models.EmailField(_("email address"))
    relationship = models.CharField(
        _("relationship"), max_length=8, choices=Relationship.choices
    )
    # The language of the email (the inviter's choice).
    language = models.CharField(max_length=8, default="ja")
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(expires_at__gt=F("created_at")),
                name="sharing_guardianinv_expires_after_creation",
            ),
        ]
        indexes = [
            # serves the family page: an inviter's invitations, newest first
            models.Index(fields=["inviter", "-created_at"], name="sharing_guardianinv_inviter"),
        ]

    def __str__(self) -> str:
        return f"guardian invitation {self.pk} ({self.inviter_id})"

    def status_at(self, at: Any = None) -> str:
        moment = at or timezone.now()
        if self.accepted_at is not None:
            return self.Status.ACCEPTED
        if self.revoked_at is not None:
            return self.Status.REVOKED
        if self.expires_at <= moment:
            return self.Status.EXPIRED
        return self.Status.ACTIVE

    @property
    def status(self) -> str:
        return self.status_at()
