"""Admin for the clinic side's control data: the questions left by matching
a clinic system's Patient (clinics/matching.py), for a platform admin to
decide with the merge service (phr.identity.patient_merge)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from clinics.models import PatientMatchReview
from phr.admin import PatientControlAdmin


@admin.register(PatientMatchReview)
class PatientMatchReviewAdmin(PatientControlAdmin):
    """Read only: the row is a note; the answer is a merge (or nothing).
    Each page that shows one writes its audit row (PatientControlAdmin)."""

    patient_field = "registered_id"
    list_display = ("registered", "clinic", "source", "created_at")
    list_filter = ("clinic",)
    readonly_fields = ("clinic", "registered", "candidates", "identifiers", "source", "created_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
