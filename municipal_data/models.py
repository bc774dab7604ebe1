"""Control data of the municipal side: who is whose mother in the
municipal register, rows waiting for a person to decide a match, and the
link codes families use to reach their records."""

from __future__ import annotations

from django.conf import settings
from django.db import models
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
