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


# --------------------------------------------------------------------------
# Research (docs/decisions/0022-research.md): projects, their approvals,
# the families' research choices, exports and their download links.
# --------------------------------------------------------------------------


class CohortKind(models.TextChoices):
    PREGNANCY = "pregnancy", _("pregnancies (mothers)")
    CHILD = "child", _("children")
    BOTH = "both", _("pregnancies and children")


class ResearchProject(models.Model):
    """A research institution's application for anonymized data.

    The researcher applies; a platform admin or a municipal privacy
    officer approves (setting the expiry) or rejects; a second, different
    approver must approve before the first export (two-person rule). What
    an export may contain is bounded by what was approved here."""

    class Status(models.TextChoices):
        SUBMITTED = "submitted", _("under review")
        APPROVED = "approved", _("approved")
        REJECTED = "rejected", _("rejected")
        WITHDRAWN = "withdrawn", _("withdrawn")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(
        "phr.Organization", models.PROTECT, related_name="research_projects"
    )
    applicant = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.PROTECT, related_name="research_projects"
    )
    title = models.CharField(_("title"), max_length=200)
    ethics_approval_number = models.CharField(_("ethics approval number"), max_length=100)
    purpose = models.TextField(_("purpose"))
    categories = ArrayField(models.CharField(max_length=32, choices=Category.choices))
    cohort_kind = models.CharField(
        _("cohort"), max_length=16, choices=CohortKind.choices, default=CohortKind.BOTH
    )
    # the municipalities whose residents the project may receive
    municipalities = models.ManyToManyField(
        "phr.Organization", related_name="research_projects_covering"
    )
    birth_year_from = models.PositiveSmallIntegerField(_("birth year from"))
    birth_year_to = models.PositiveSmallIntegerField(_("birth year to"))
    # the period of the data (events) the project may receive
    period_start = models.DateField(_("data from"))
    period_end = models.DateField(_("data until"))
    # k of k-anonymity: 5 under a data-use agreement, 10 when published
    publish = models.BooleanField(_("results will be published as data"), default=False)
    k = models.PositiveSmallIntegerField(default=5)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.SUBMITTED
    )
    # set by the first approval; exports after this day are refused
    expires_on = models.DateField(_("approval expires on"), null=True, blank=True)
    # per-project salt of the pseudonym key (sharing/research_export.py):
    # random, never shown, never reused by another project
    pseudonym_salt = models.BinaryField(editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(birth_year_to__gte=F("birth_year_from")),
                name="sharing_research_birth_years",
            ),
            models.CheckConstraint(
                condition=Q(period_end__gte=F("period_start")),
                name="sharing_research_period",
            ),
            models.CheckConstraint(
                condition=~Q(categories=[]), name="sharing_research_some_categories"
            ),
            models.CheckConstraint(condition=Q(k__gte=2), name="sharing_research_k"),
        ]
        indexes = [
            models.Index(fields=["organization", "-created_at"], name="sharing_research_org"),
            models.Index(fields=["status", "-created_at"], name="sharing_research_status"),
        ]

    def __str__(self) -> str:
        return self.title


class ResearchApproval(models.Model):
    """One reviewer's decision on a project. Two approvals by two different
    people (neither the applicant) are needed before an export."""

    class Decision(models.TextChoices):
        APPROVE = "approve", _("approve")
        REJECT = "reject", _("reject")

    project = models.ForeignKey(ResearchProject, models.CASCADE, related_name="approvals")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, models.PROTECT, related_name="+")
    # "admin" or "privacy_officer", with the municipality for the latter
    reviewer_role = models.CharField(max_length=24)
    organization = models.ForeignKey(
        "phr.Organization", models.PROTECT, null=True, blank=True, related_name="+"
    )
    decision = models.CharField(max_length=8, choices=Decision.choices)
    expires_on = models.DateField(null=True, blank=True)
    note = models.TextField(_("note"), blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["project", "reviewer"], name="sharing_research_approval_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.project_id}: {self.decision} by {self.reviewer_id}"


class ResearchRegime(models.Model):
    """How a municipality's residents take part in research: opt-in (the
    default when no row exists) or opt-out (a published notice and the
    right to refuse; docs/decisions/0022-research.md gives the legal
    basis)."""

    class Kind(models.TextChoices):
        OPT_IN = "opt_in", _("opt-in (consent needed)")
        OPT_OUT = "opt_out", _("opt-out (notice and the right to refuse)")

    municipality = models.OneToOneField(
        "phr.Organization", models.CASCADE, related_name="research_regime"
    )
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.OPT_IN)
    legal_basis = models.TextField(_("legal basis"), blank=True)
    notice_url = models.URLField(_("public notice"), blank=True)
    # opt-out applies only from the day the notice was published
    notice_published_on = models.DateField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = _("research regime")
        verbose_name_plural = _("research regimes")

    def __str__(self) -> str:
        return f"{self.municipality_id}: {self.kind}"


class ResearchChoice(models.Model):
    """A family's research choice for one patient and one category: to
    take part or to refuse. Rows are never updated: the newest per
    (patient, category) is in force, and the older ones are the history.
    Without any row the municipality's regime decides."""

    class Choice(models.TextChoices):
        CONSENT = "consent", _("take part")
        REFUSE = "refuse", _("do not take part")

    patient = models.ForeignKey("phr.Patient", models.CASCADE, related_name="research_choices")
    category = models.CharField(max_length=32, choices=Category.choices)
    choice = models.CharField(max_length=8, choices=Choice.choices)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.PROTECT, related_name="+")
    decided_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(
                fields=["patient", "category", "-decided_at"], name="sharing_research_choice"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.patient_id} {self.category}: {self.choice}"


class ResearchExport(models.Model):
    """One export run of an approved project: its filters (within the
    approval), the job that builds it, the files and the release report."""

    class Status(models.TextChoices):
        QUEUED = "queued", _("queued")
        RUNNING = "running", _("running")
        DONE = "done", _("ready")
        REFUSED = "refused", _("refused")
        FAILED = "failed", _("failed")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey(ResearchProject, models.PROTECT, related_name="exports")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.PROTECT, related_name="+")
    job = models.ForeignKey("phr.Job", models.SET_NULL, null=True, blank=True, related_name="+")
    # {"birth_year_from", "birth_year_to", "municipalities": [org ids],
    #  "cohort_kind", "categories": [...], "formats": ["csv", "ndjson"]}
    filters = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    # why it was refused or failed, for the researcher (ja and en)
    reason = models.TextField(blank=True)
    # the release report (cohort size, k, suppression, files and SHA-256)
    report = models.JSONField(default=dict)
    # folder under MEDIA_ROOT/research/ holding the files
    directory = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["project", "-created_at"], name="sharing_research_export"),
        ]

    def __str__(self) -> str:
        return f"export {self.pk} of {self.project_id} ({self.status})"


class ResearchDownload(models.Model):
    """A download link for one export: only the project's researchers may
    use it, it expires (7 days by default) and has a number of uses.
    Only the SHA-256 of the link's token is stored."""

    export = models.ForeignKey(ResearchExport, models.CASCADE, related_name="downloads")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.PROTECT, related_name="+")
    token_hash = models.CharField(max_length=64, unique=True)
    expires_at = models.DateTimeField()
    max_uses = models.PositiveSmallIntegerField(default=3)
    uses = models.PositiveSmallIntegerField(default=0)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(uses__lte=F("max_uses")), name="sharing_research_download_uses"
            ),
            models.CheckConstraint(
                condition=Q(expires_at__gt=F("created_at")),
                name="sharing_research_download_expiry",
            ),
        ]

    def __str__(self) -> str:
        return f"download {self.pk} of {self.export_id}"
