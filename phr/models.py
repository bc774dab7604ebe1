"""The ground floor: identities and control data, and the FHIR record store.

Two kinds of data live here (docs/decisions/0001-two-kinds-of-data.md):

- control data (who may do what): users, organizations, memberships,
  patients as identities, guardianship, residency, API tokens, jobs — plain
  relational tables with constraints;
- clinical data: FHIR R4 resources stored whole as JSONB in `Resource`, each
  version kept in `ResourceHistory`, each write described by a `Provenance`,
  and the search columns derived from the JSON by phr.indexing only.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any, ClassVar

from django.conf import settings
from django.contrib.auth.models import AbstractUser, BaseUserManager
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from phr.identifiers import validate_medical_institution_code, validate_municipality_code

# --------------------------------------------------------------------------
# Users and organizations
# --------------------------------------------------------------------------


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def _create(self, email: str, password: str | None, **extra: Any) -> User:
        if not email:
            raise ValueError("An email address is required")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **extra: Any) -> User:
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create(email, password, **extra)

    def create_superuser(self, email: str, password: str | None = None, **extra: Any) -> User:
        extra.update(is_staff=True, is_superuser=True, is_platform_admin=True)
        return self._create(email, password, **extra)


class User(AbstractUser):
    """A person who logs in. Email is the login; there is no username."""

    class Language(models.TextChoices):
        JA = "ja", _("Japanese")
        EN = "en", _("English")

    username = None  # type: ignore[assignment]
    first_name = None  # type: ignore[assignment]
    last_name = None  # type: ignore[assignment]
    email = models.EmailField(_("email address"), unique=True)
    display_name = models.CharField(_("display name"), max_length=100, blank=True)
    language = models.CharField(
        _("language"), max_length=8, choices=Language.choices, default=Language.JA
    )
    # Platform administrators operate the service (support, lawful purge).
    # They are staff for the MFA rule and their reads are audited like anyone's.
    is_platform_admin = models.BooleanField(_("platform administrator"), default=False)

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    objects = UserManager()

    class Meta:
        constraints = [
            models.UniqueConstraint(Lower("email"), name="phr_user_email_ci_unique"),
        ]

    def __str__(self) -> str:
        return self.display_name or self.email

    def get_full_name(self) -> str:
        return self.display_name or self.email

    def get_short_name(self) -> str:
        return self.display_name or self.email


class Organization(models.Model):
    """A municipality, clinic, emergency service or research institution,
    identified by its real national code where one exists."""

    class Kind(models.TextChoices):
        MUNICIPALITY = "municipality", _("municipality")
        CLINIC = "clinic", _("clinic")
        EMERGENCY = "emergency", _("emergency service")
        RESEARCH = "research", _("research institution")

    kind = models.CharField(_("kind"), max_length=16, choices=Kind.choices)
    # 全国地方公共団体コード for municipalities, 10-digit 医療機関コード for
    # clinics; the service's own identifier for the other kinds.
    code = models.CharField(_("code"), max_length=16)
    name = models.CharField(_("name"), max_length=200)
    name_en = models.CharField(_("name (English)"), max_length=200, blank=True)
    prefecture = models.CharField(_("prefecture code"), max_length=2, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["kind", "code"], name="phr_org_kind_code_unique"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.kind == self.Kind.MUNICIPALITY:
            validate_municipality_code(self.code)
        elif self.kind == self.Kind.CLINIC:
            validate_medical_institution_code(self.code)
        if self.kind in (self.Kind.MUNICIPALITY, self.Kind.CLINIC) and len(self.code) >= 2:
            self.prefecture = self.code[:2]


class Role(models.TextChoices):
    CLINIC_STAFF = "clinic_staff", _("clinic staff")
    MUNICIPAL_STAFF = "municipal_staff", _("municipal staff")
    EMERGENCY_RESPONDER = "emergency_responder", _("emergency responder")
    RESEARCHER = "researcher", _("researcher")


ROLE_ORGANIZATION_KIND = {
    Role.CLINIC_STAFF: Organization.Kind.CLINIC,
    Role.MUNICIPAL_STAFF: Organization.Kind.MUNICIPALITY,
    Role.EMERGENCY_RESPONDER: Organization.Kind.EMERGENCY,
    Role.RESEARCHER: Organization.Kind.RESEARCH,
}


class MembershipQuerySet(models.QuerySet["Membership"]):
    def active(self, at: Any = None) -> MembershipQuerySet:
        today = timezone.localdate(at) if at else timezone.localdate()
        return self.filter(Q(valid_to__isnull=True) | Q(valid_to__gte=today), valid_from__lte=today)


class Membership(models.Model):
    """A user's role at one organization, for a period."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="memberships")
    organization = models.ForeignKey(Organization, models.PROTECT, related_name="memberships")
    role = models.CharField(_("role"), max_length=24, choices=Role.choices)
    # Municipal privacy officers receive "suspicious access" reports and
    # approve research releases.
    is_privacy_officer = models.BooleanField(_("privacy officer"), default=False)
    valid_from = models.DateField(default=timezone.localdate)
    valid_to = models.DateField(null=True, blank=True)

    objects = MembershipQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "organization", "role"], name="phr_membership_unique"
            ),
            models.CheckConstraint(
                condition=Q(valid_to__isnull=True) | Q(valid_to__gte=models.F("valid_from")),
                name="phr_membership_period",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} — {self.get_role_display()} @ {self.organization}"

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        if self.role not in Role.values:
            return  # the form reports the missing or unknown role itself
        expected = ROLE_ORGANIZATION_KIND[Role(self.role)]
        if self.organization_id and self.organization.kind != expected:
            raise ValidationError(
                {
                    "organization": _("This role needs an organization of kind %(kind)s.")
                    % {"kind": expected.label}
                }
            )


# --------------------------------------------------------------------------
# Patients as identities, guardianship and residency
# --------------------------------------------------------------------------


class Patient(models.Model):
    """A person whose health is recorded: a mother or a child.

    The row is the identity the access rules reason about; what we know of
    the person (name, birth date, identifiers) is the FHIR Patient resource
    with the same id in the record store.
    """

    class Kind(models.TextChoices):
        ADULT = "adult", _("adult")
        CHILD = "child", _("child")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(_("kind"), max_length=8, choices=Kind.choices)
    # The adult who *is* this patient. An adult's records are hers alone
    # until she shares them.
    account = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        models.SET_NULL,
        null=True,
        blank=True,
        related_name="own_patient",
    )
    # Set when this record was merged into another (link/merge service).
    merged_into = models.ForeignKey(
        "self", models.PROTECT, null=True, blank=True, related_name="merged_from"
    )
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return str(self.id)


class GuardianshipQuerySet(models.QuerySet["Guardianship"]):
    def active(self, at: Any = None) -> GuardianshipQuerySet:
        today = timezone.localdate(at) if at else timezone.localdate()
        return self.filter(Q(valid_to__isnull=True) | Q(valid_to__gte=today), valid_from__lte=today)


class Guardianship(models.Model):
    """A user's parental responsibility for a child, dated."""

    class Relationship(models.TextChoices):
        MOTHER = "mother", _("mother")
        FATHER = "father", _("father")
        OTHER = "other", _("other guardian")

    guardian = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.CASCADE, related_name="guardianships"
    )
    child = models.ForeignKey(Patient, models.CASCADE, related_name="guardianships")
    relationship = models.CharField(max_length=8, choices=Relationship.choices)
    valid_from = models.DateField(default=timezone.localdate)
    valid_to = models.DateField(null=True, blank=True)

    objects = GuardianshipQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["guardian", "child", "valid_from"], name="phr_guardianship_unique"
            ),
            models.CheckConstraint(
                condition=Q(valid_to__isnull=True) | Q(valid_to__gte=models.F("valid_from")),
                name="phr_guardianship_period",
            ),
        ]
        indexes = [
            # serves access: the children a guardian may see today
            models.Index(fields=["guardian", "valid_to"], name="phr_guardianship_guardian"),
        ]

    def __str__(self) -> str:
        return f"{self.guardian} → {self.child_id}"


class ResidencyQuerySet(models.QuerySet["Residency"]):
    def current(self, at: Any = None) -> ResidencyQuerySet:
        today = timezone.localdate(at) if at else timezone.localdate()
        return self.filter(Q(valid_to__isnull=True) | Q(valid_to__gte=today), valid_from__lte=today)


class Residency(models.Model):
    """A patient's registration as a resident of a municipality, dated."""

    patient = models.ForeignKey(Patient, models.CASCADE, related_name="residencies")
    municipality = models.ForeignKey(Organization, models.PROTECT, related_name="residents")
    # 宛名番号: the municipality's own number for the resident.
    resident_number = models.CharField(max_length=32, blank=True)
    valid_from = models.DateField(default=timezone.localdate)
    valid_to = models.DateField(null=True, blank=True)

    objects = ResidencyQuerySet.as_manager()

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(valid_to__isnull=True) | Q(valid_to__gte=models.F("valid_from")),
                name="phr_residency_period",
            ),
        ]
        indexes = [
            # serves access: a municipality's current residents
            models.Index(fields=["municipality", "valid_to"], name="phr_residency_municipality"),
            # serves imports: matching a municipality's resident numbers
            models.Index(
                fields=["municipality", "resident_number"],
                name="phr_residency_number",
                condition=~Q(resident_number=""),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.patient_id} @ {self.municipality}"


class PatientLink(models.Model):
    """Two Patient records found to be one person: `merged` was folded into
    `survivor`. Reversible: `moved` lists the resources re-pointed."""

    survivor = models.ForeignKey(Patient, models.PROTECT, related_name="links_kept")
    merged = models.ForeignKey(Patient, models.PROTECT, related_name="links_merged")
    moved = ArrayField(models.UUIDField(), default=list)
    reason = models.CharField(max_length=200)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    undone_at = models.DateTimeField(null=True, blank=True)
    undone_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.PROTECT, null=True, blank=True, related_name="+"
    )

    def __str__(self) -> str:
        return f"{self.merged_id} → {self.survivor_id}"


# --------------------------------------------------------------------------
# API tokens
# --------------------------------------------------------------------------


class ApiTokenQuerySet(models.QuerySet["ApiToken"]):
    def usable(self) -> ApiTokenQuerySet:
        now = timezone.now()
        return self.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now), revoked_at=None)


class ApiToken(models.Model):
    """A bearer token for a system acting as `user`. Only a SHA-256 of the
    secret is stored; the secret is shown once, at creation."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="api_tokens")
    organization = models.ForeignKey(
        Organization, models.CASCADE, null=True, blank=True, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12)
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


# --------------------------------------------------------------------------
# Jobs: rows with leases (Celery only wakes workers)
# --------------------------------------------------------------------------


class Job(models.Model):
    """A unit of background work (an import, a feed run, an export).

    A worker claims it with a guarded UPDATE that sets a lease, renews the
    lease per chunk and records the last committed chunk in `cursor`; the
    beat sweeper re-queues a running job whose lease expired. See
    phr/jobs.py.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", _("queued")
        RUNNING = "running", _("running")
        DONE = "done", _("done")
        FAILED = "failed", _("failed")
        CANCELLED = "cancelled", _("cancelled")

    kind = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    payload = models.JSONField(default=dict)
    cursor = models.JSONField(default=dict)
    result = models.JSONField(default=dict)
    progress_done = models.BigIntegerField(default=0)
    progress_total = models.BigIntegerField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=5)
    lease_until = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    organization = models.ForeignKey(
        Organization, models.SET_NULL, null=True, blank=True, related_name="jobs"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            # serves the sweeper: running jobs whose lease ran out
            models.Index(
                fields=["lease_until"],
                name="phr_job_running_lease",
                condition=Q(status="running"),
            ),
            # serves "is one already queued or running?" (feed_busy): the
            # open jobs are few, the finished ones pile up
            models.Index(
                fields=["kind"],
                name="phr_job_open_kind",
                condition=Q(status__in=["queued", "running"]),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk} ({self.status})"


# --------------------------------------------------------------------------
# The record store
# --------------------------------------------------------------------------


class Provenance(models.Model):
    """What produced a version: an upload batch, a feed run, a clinic, a
    device or a person. One row per write operation (a bulk chunk shares
    one)."""

    class Origin(models.TextChoices):
        MUNICIPALITY = "municipality", _("municipality")
        CLINIC = "clinic", _("clinic")
        PHARMACY = "pharmacy", _("pharmacy")
        DEVICE = "device", _("device")
        SELF = "self", _("self-recorded")
        SYSTEM = "system", _("system")

    class Activity(models.TextChoices):
        WRITE = "write", _("write")
        DELETE = "delete", _("delete")
        MERGE = "merge", _("merge")
        UNMERGE = "unmerge", _("unmerge")
        PURGE = "purge", _("purge")

    recorded_at = models.DateTimeField(default=timezone.now)
    origin = models.CharField(max_length=16, choices=Origin.choices)
    activity = models.CharField(max_length=16, choices=Activity.choices, default=Activity.WRITE)
    agent_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    agent_org = models.ForeignKey(
        Organization, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    job = models.ForeignKey(Job, models.SET_NULL, null=True, blank=True, related_name="+")
    # e.g. "upload:batch/42 chunk 3", "device:token/7", "fhir-api"
    source = models.CharField(max_length=200, blank=True)

    def __str__(self) -> str:
        return f"{self.origin}:{self.source or self.pk}"


class Resource(models.Model):
    """The current version of one FHIR resource, with its search columns.

    `content` is the resource without id and meta.versionId/lastUpdated
    (those are the columns); the columns below `content_hash` are derived
    from it by phr.indexing and written by nothing else.
    """

    id = models.UUIDField(primary_key=True)
    resource_type = models.CharField(max_length=40)
    version = models.PositiveIntegerField()
    last_updated = models.DateTimeField()
    deleted = models.BooleanField(default=False)
    content = models.JSONField()
    # SHA-256 of the canonical JSON (sorted keys, no whitespace, no meta
    # version fields): equal hashes mean nothing changed.
    content_hash = models.CharField(max_length=64)
    source_system = models.CharField(max_length=200, blank=True)
    source_value = models.CharField(max_length=200, blank=True)
    provenance = models.ForeignKey(
        Provenance, models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    # --- derived search index (phr.indexing) ---
    compartments = ArrayField(models.UUIDField(), default=list)
    tokens = ArrayField(models.TextField(), default=list)
    refs = ArrayField(models.TextField(), default=list)
    status = models.CharField(max_length=32, blank=True)
    category = models.CharField(max_length=32, blank=True)
    sensitivity = models.CharField(max_length=16, default="normal")
    date_start = models.DateTimeField(null=True)
    date_end = models.DateTimeField(null=True)
    date_precision = models.CharField(max_length=8, blank=True)
    quantity_value = models.DecimalField(max_digits=18, decimal_places=6, null=True)
    quantity_code = models.CharField(max_length=32, blank=True)

    class Meta:
        indexes = [
            # serves every per-patient read: compartments && {patient ids}
            GinIndex(fields=["compartments"], name="phr_res_compartments"),
            # serves code= and identifier= searches and identity matching
            GinIndex(fields=["tokens"], name="phr_res_tokens"),
            # serves type + date searches and timelines
            models.Index(fields=["resource_type", "date_start"], name="phr_res_type_date"),
            # serves _lastUpdated searches and feeds
            models.Index(fields=["last_updated"], name="phr_res_last_updated"),
            # serves imports: a source row's records (system = and value LIKE 'key#%')
            models.Index(
                fields=["source_system", "source_value"],
                opclasses=["varchar_pattern_ops", "varchar_pattern_ops"],
                name="phr_res_source",
                condition=~Q(source_system=""),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.resource_type}/{self.id}"


class ResourceHistory(models.Model):
    """Every version of every resource, the current one included."""

    id = models.BigAutoField(primary_key=True)
    resource_id = models.UUIDField()
    resource_type = models.CharField(max_length=40)
    version = models.PositiveIntegerField()
    last_updated = models.DateTimeField()
    deleted = models.BooleanField(default=False)
    content = models.JSONField()
    content_hash = models.CharField(max_length=64)
    provenance = models.ForeignKey(
        Provenance, models.DO_NOTHING, db_constraint=False, related_name="+"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["resource_id", "version"], name="phr_history_resource_version"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.resource_type}/{self.resource_id}/_history/{self.version}"


# --------------------------------------------------------------------------
# Audit (the table itself is created by migration 0002: partitioned by month,
# INSERT-only; this model is unmanaged)
# --------------------------------------------------------------------------


class AuditEvent(models.Model):
    """One access or change: who, in which role and organization, which
    patient, which categories, why, and with what outcome. Never the data."""

    class Outcome(models.TextChoices):
        SUCCESS = "success", _("success")
        DENIED = "denied", _("denied")
        FAILURE = "failure", _("failure")

    id = models.BigIntegerField(primary_key=True)
    occurred_at = models.DateTimeField()
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        models.DO_NOTHING,
        db_constraint=False,
        null=True,
        related_name="+",
    )
    actor_role = models.CharField(max_length=32)
    organization = models.ForeignKey(
        Organization, models.DO_NOTHING, db_constraint=False, null=True, related_name="+"
    )
    patient = models.ForeignKey(
        Patient, models.DO_NOTHING, db_constraint=False, null=True, related_name="+"
    )
    action = models.CharField(max_length=64)
    categories = ArrayField(models.CharField(max_length=32), default=list)
    purpose = models.CharField(max_length=16)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    break_glass = models.BooleanField(default=False)
    request_id = models.CharField(max_length=64)
    detail = models.JSONField(default=dict)

    class Meta:
        managed = False
        db_table = "phr_auditevent"

    def __str__(self) -> str:
        return f"{self.occurred_at} {self.action} {self.outcome}"


class AuditSeal(models.Model):
    """A tamper-evidence seal over one interval of the audit log: the hash of
    the interval's rows chained to the previous seal."""

    period_start = models.DateTimeField()
    period_end = models.DateTimeField(unique=True)
    row_count = models.BigIntegerField()
    digest = models.CharField(max_length=64)
    previous_digest = models.CharField(max_length=64)
    sealed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["period_end"]

    def __str__(self) -> str:
        return f"seal {self.period_start}–{self.period_end}"


# --------------------------------------------------------------------------
# The ingest pipeline: batches (an uploaded file or a pulled feed page),
# their row errors, and feed sources with their runs. The formats and the
# screens live in the apps that bring them (municipal_data, clinics).
# --------------------------------------------------------------------------


class Batch(models.Model):
    """One file to import: stored as received, with its checksum, then
    validated (a report of every bad row and a summary of what an import
    would change), confirmed by a person (or a feed run), and imported.

    received → validating → validated → importing → imported
                          ↘ rejected (the file as a whole is unreadable)
    """

    class Status(models.TextChoices):
        RECEIVED = "received", _("received")
        VALIDATING = "validating", _("validating")
        VALIDATED = "validated", _("validated")
        IMPORTING = "importing", _("importing")
        IMPORTED = "imported", _("imported")
        REJECTED = "rejected", _("rejected")
        FAILED = "failed", _("failed")
        CANCELLED = "cancelled", _("cancelled")

    class Encoding(models.TextChoices):
        AUTO = "auto", _("detect")
        UTF8 = "utf-8", "UTF-8"
        CP932 = "cp932", "Shift_JIS (CP932)"

    organization = models.ForeignKey(Organization, models.PROTECT, related_name="batches")
    format = models.CharField(_("format"), max_length=64)
    filename = models.CharField(_("file name"), max_length=255)
    path = models.CharField(max_length=300)  # under MEDIA_ROOT
    sha256 = models.CharField(max_length=64)
    size = models.BigIntegerField()
    encoding = models.CharField(max_length=8, choices=Encoding.choices, default=Encoding.AUTO)
    detected_encoding = models.CharField(max_length=16, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RECEIVED)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    feed_run = models.ForeignKey(
        "FeedRun", models.SET_NULL, null=True, blank=True, related_name="batches"
    )
    # An earlier batch of this organization with the same bytes and format.
    same_as = models.ForeignKey("self", models.SET_NULL, null=True, blank=True, related_name="+")
    validate_job = models.ForeignKey(Job, models.SET_NULL, null=True, blank=True, related_name="+")
    import_job = models.ForeignKey(Job, models.SET_NULL, null=True, blank=True, related_name="+")
    # rows, valid, invalid, new_patients, created, updated, deleted, unchanged, review
    summary = models.JSONField(default=dict)
    result = models.JSONField(default=dict)
    file_error = models.JSONField(default=dict, blank=True)  # {code, ja, en} when rejected
    only_valid = models.BooleanField(default=False)
    confirmed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    confirmed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["organization", "-created_at"], name="phr_batch_org_recent"),
            models.Index(fields=["organization", "sha256"], name="phr_batch_org_sha"),
        ]

    def __str__(self) -> str:
        return f"{self.format} {self.filename} ({self.status})"


class BatchError(models.Model):
    """A bad row (or cell) of a batch, in the words a person reads: line,
    column as the file wrote it, the value, and why, in Japanese and
    English."""

    batch = models.ForeignKey(Batch, models.CASCADE, related_name="errors")
    line = models.PositiveIntegerField()
    column = models.CharField(max_length=100, blank=True)
    value = models.CharField(max_length=120, blank=True)
    code = models.CharField(max_length=32)
    message_ja = models.CharField(max_length=300)
    message_en = models.CharField(max_length=300)

    class Meta:
        ordering = ["line", "id"]
        indexes = [models.Index(fields=["batch", "line"], name="phr_batcherror_line")]

    def __str__(self) -> str:
        return f"line {self.line} {self.column}: {self.message_en}"


class FeedSource(models.Model):
    """An outside system we pull records from on a schedule (a municipal
    health system, a school-affairs system, a clinic EHR)."""

    class Format(models.TextChoices):
        CSV = "csv", "CSV"
        FHIR = "fhir", _("FHIR Bundle / NDJSON")

    organization = models.ForeignKey(Organization, models.PROTECT, related_name="feed_sources")
    name = models.CharField(_("name"), max_length=100)
    url = models.URLField(_("URL"), max_length=500)
    # Sent as the Authorization header; never shown again after saving.
    auth_header = models.CharField(_("authorization header"), max_length=500, blank=True)
    format = models.CharField(_("format"), max_length=64)  # a pipeline format key
    cursor_param = models.CharField(_("cursor parameter"), max_length=40, default="_since")
    cursor = models.CharField(_("cursor"), max_length=500, blank=True)
    enabled = models.BooleanField(_("enabled"), default=True)
    periodic_task = models.OneToOneField(
        "django_celery_beat.PeriodicTask", models.SET_NULL, null=True, blank=True, related_name="+"
    )
    consecutive_failures = models.PositiveIntegerField(default=0)
    alerted_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.name


class FeedRun(models.Model):
    """One pull of a feed source: how many items came, were imported, or
    were refused, how long it took, and the cursor it started from and
    committed."""

    class Status(models.TextChoices):
        RUNNING = "running", _("running")
        SUCCEEDED = "succeeded", _("succeeded")
        FAILED = "failed", _("failed")

    source = models.ForeignKey(FeedSource, models.CASCADE, related_name="runs")
    job = models.ForeignKey(Job, models.SET_NULL, null=True, blank=True, related_name="+")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    cursor_before = models.CharField(max_length=500, blank=True)
    cursor_after = models.CharField(max_length=500, blank=True)
    pages = models.PositiveIntegerField(default=0)
    items = models.PositiveIntegerField(default=0)
    imported = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["source", "-started_at"], name="phr_feedrun_recent")]

    def __str__(self) -> str:
        return f"{self.source} {self.started_at:%Y-%m-%d %H:%M} ({self.status})"

    @property
    def duration(self) -> timedelta | None:
        return self.finished_at - self.started_at if self.finished_at else None


# --------------------------------------------------------------------------
# Reminders (phr/reminders.py, docs/decisions/0015-reminders.md): a guardian's
# settings, and one row per (guardian, child, schedule item, stage) that is
# both the in-app notification and the record of its email.
# --------------------------------------------------------------------------


class NotificationSettings(models.Model):
    """What reminders a user wants, and where. No row means the defaults
    (everything on)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, models.CASCADE, related_name="notification_settings"
    )
    email_enabled = models.BooleanField(_("email reminders"), default=True)
    in_app_enabled = models.BooleanField(_("reminders in the notification list"), default=True)
    vaccinations = models.BooleanField(_("vaccinations"), default=True)
    checkups = models.BooleanField(_("checkups"), default=True)
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"notification settings of {self.user_id}"


class Reminder(models.Model):
    """One reminder: a schedule item of one child reaching one stage, for
    one guardian. The unique constraint is what makes the daily job
    idempotent — a second run (or a concurrent one) cannot create it again,
    so it is shown and mailed at most once.

    The email goes through pending → sending (claimed by a guarded UPDATE,
    committed before the SMTP call) → sent; or skipped (email off, or the
    item no longer due when it came to be sent), failed (the mail server
    refused it every time) or unknown (a worker died between claiming and
    recording: it may or may not have gone out, and is never re-sent).
    """

    class Stage(models.TextChoices):
        DUE_SOON = "due_soon", _("due soon")
        OVERDUE = "overdue", _("overdue")

    class Kind(models.TextChoices):
        VACCINATION = "vaccination", _("vaccination")
        CHECKUP = "checkup", _("checkup")

    class Email(models.TextChoices):
        PENDING = "pending", _("waiting to be sent")
        SENDING = "sending", _("being sent")
        SENT = "sent", _("sent")
        SKIPPED = "skipped", _("not sent")
        FAILED = "failed", _("failed")
        UNKNOWN = "unknown", _("unknown (interrupted while sending)")

    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="reminders")
    patient = models.ForeignKey(Patient, models.CASCADE, related_name="+")
    item_key = models.CharField(max_length=64)  # phr.schedules DueItem.key
    stage = models.CharField(max_length=16, choices=Stage.choices)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    # The item's label in the guardian's language when the reminder was made.
    label = models.CharField(max_length=200)
    due_from = models.DateField()
    due_until = models.DateField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    in_app = models.BooleanField(default=True)
    read_at = models.DateTimeField(null=True, blank=True)
    email_status = models.CharField(max_length=16, choices=Email.choices)
    email_claimed_at = models.DateTimeField(null=True, blank=True)
    email_sent_at = models.DateTimeField(null=True, blank=True)
    email_attempts = models.PositiveSmallIntegerField(default=0)
    email_error = models.CharField(max_length=200, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "patient", "item_key", "stage"], name="phr_reminder_once"
            ),
            models.CheckConstraint(
                condition=Q(email_status="sent") | Q(email_sent_at__isnull=True),
                name="phr_reminder_sent_at_only_when_sent",
            ),
        ]
        indexes = [
            # serves the notification list: a user's reminders, newest first
            models.Index(fields=["user", "-created_at"], name="phr_reminder_user_recent"),
            # serves the job: emails still to send, or claimed and never recorded
            models.Index(
                fields=["user", "email_status"],
                name="phr_reminder_email_open",
                condition=Q(email_status__in=["pending", "sending"]),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} {self.patient_id} {self.item_key} {self.stage}"
