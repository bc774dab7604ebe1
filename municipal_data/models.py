"""Control data of the municipal side: who is whose mother in the
municipal register, rows waiting for a person to decide a match, and the
link codes families use to reach their records."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class MotherChild(models.Model):
    """The municipal register says this resident is this child's mother.
    Kept before any account exists, so that a family link code can hand
    the mother's and the children's records to the parent who redeems it."""

    mother = models.ForeignKey("phr.Patient", models.CASCADE, related_name="children_links")
    child = models.ForeignKey("phr.Patient", models.CASCADE, related_name="mother_links")
    municipality = models.ForeignKey("phr.Organization", models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["mother", "child"], name="md_motherchild_unique")
        ]

    def __str__(self) -> str:
        return f"{self.mother_id} → {self.child_id}"


class MatchReview(models.Model):
    """A row whose resident number is known but whose person does not
    match (another birth date or sex): it waits here, out of the record,
    until municipal staff decide."""

    class Status(models.TextChoices):
        OPEN = "open", _("waiting for a decision")
        ACCEPTED = "accepted", _("imported into this person")
        REJECTED = "rejected", _("rejected")

    municipality = models.ForeignKey("phr.Organization", models.PROTECT, related_name="+")
    batch = models.ForeignKey("phr.Batch", models.SET_NULL, null=True, blank=True, related_name="+")
    format = models.CharField(max_length=64)
    line = models.PositiveIntegerField()
    row_key = models.CharField(max_length=200)
    row_hash = models.CharField(max_length=64)
    resident_number = models.CharField(max_length=32)
    patient = models.ForeignKey("phr.Patient", models.CASCADE, related_name="+")
    # The row's cells as the file wrote them (column key -> text).
    row = models.JSONField()
    differences = models.JSONField(default=list)  # [{field, file, record}]
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    note = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            # the same row uploaded again does not queue twice
            models.UniqueConstraint(
                fields=["municipality", "format", "row_key", "row_hash"],
                name="md_matchreview_once",
            )
        ]
        indexes = [
            models.Index(fields=["municipality", "status", "-created_at"], name="md_review_queue")
        ]

    def __str__(self) -> str:
        return f"{self.format} line {self.line} ({self.status})"


class LinkCode(models.Model):
    """A family link code, printed on a letter municipal staff hand out
    (e.g. with the MCH handbook): a parent who enters it with a child's
    birth date links her account to the mother's and the children's records
    (municipal_data/linking.py).

    The family is the mother and her children in the municipal register
    (MotherChild), or one child alone when the mother is unknown. Only the
    SHA-256 of the normalised code is stored; the code itself exists on the
    letter only. Status is derived, never stored: used, revoked, expired,
    or locked after MAX_FAILURES wrong attempts (staff issue a new one).
    """

    class Status(models.TextChoices):
        ACTIVE = "active", _("valid")
        USED = "used", _("used")
        REVOKED = "revoked", _("revoked")
        EXPIRED = "expired", _("expired")
        LOCKED = "locked", _("locked")

    # Wrong attempts (a wrong birth date, a blocked person) before the code
    # stops working.
    MAX_FAILURES = 5

    municipality = models.ForeignKey("phr.Organization", models.PROTECT, related_name="+")
    mother = models.ForeignKey(
        "phr.Patient", models.CASCADE, null=True, blank=True, related_name="+"
    )
    child = models.ForeignKey(
        "phr.Patient", models.CASCADE, null=True, blank=True, related_name="+"
    )
    code_hash = models.CharField(max_length=64, unique=True)
    # The first group of the code, so staff can find the letter a family
    # asks about ("the code starting with 7KQ2").
    prefix = models.CharField(max_length=8)
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
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    failed_attempts = models.PositiveSmallIntegerField(default=0)

    class Meta:
        constraints = [
            # a code is for a family: its mother, or a child whose mother is unknown
            models.CheckConstraint(
                condition=Q(mother__isnull=False) | Q(child__isnull=False),
                name="md_linkcode_has_family",
            ),
            models.CheckConstraint(
                condition=Q(expires_at__gt=F("issued_at")), name="md_linkcode_expires_after_issue"
            ),
        ]
        indexes = [
            # serves the staff list: a municipality's codes, newest first
            models.Index(fields=["municipality", "-issued_at"], name="md_linkcode_recent"),
            # serves the staff lookup by the prefix a family reads out
            models.Index(fields=["municipality", "prefix"], name="md_linkcode_prefix"),
        ]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.status})"

    def status_at(self, moment: Any = None) -> str:
        now = moment or timezone.now()
        if self.used_at is not None:
            return self.Status.USED
        if self.revoked_at is not None:
            return self.Status.REVOKED
        if self.failed_attempts >= self.MAX_FAILURES:
            return self.Status.LOCKED
        if self.expires_at <= now:
            return self.Status.EXPIRED
        return self.Status.ACTIVE

    @property
    def status(self) -> str:
        return self.status_at()
