"""Admin for control data only. Clinical records are never edited here:
they are read through the FHIR API and pages, which go through
sharing/access.py and are audited."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.http import HttpRequest, HttpResponse
from django.utils.translation import gettext_lazy as _

from phr.models import (
    ApiToken,
    Guardianship,
    Job,
    Membership,
    Organization,
    Residency,
    User,
)


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    ordering = ("email",)
    list_display = ("email", "display_name", "is_platform_admin", "is_active")
    search_fields = ("email", "display_name")
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        (_("Profile"), {"fields": ("display_name", "language")}),
        (
            _("Permissions"),
            {"fields": ("is_active", "is_platform_admin", "is_staff", "is_superuser")},
        ),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)
    filter_horizontal = ()
    list_filter = ("is_platform_admin", "is_active")


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ("user",)


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "code", "prefecture")
    list_filter = ("kind",)
    search_fields = ("name", "code")
    inlines = (MembershipInline,)


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("user", "organization", "role", "is_privacy_officer", "valid_to")
    list_filter = ("role",)
    autocomplete_fields = ("user", "organization")


class PatientControlAdmin(admin.ModelAdmin):
    """Control rows about a patient (guardianship, residency) reveal who a
    patient is and where she lives: each page that shows them writes one
    audit row per patient, through the policy point like any other read."""

    patient_field = "patient_id"

    def _audit(self, request: HttpRequest, patient_ids: list[Any], action: str) -> None:
        from sharing.access import audit_reveal

        audit_reveal(request.user, patient_ids, action=action, detail={"admin": True})

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        response = super().change_view(request, object_id, form_url, extra_context)
        obj = self.get_object(request, object_id)
        if obj is not None and response.status_code == 200:
            self._audit(request, [getattr(obj, self.patient_field)], "admin.view")
        return response

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if changelist is not None:
            ids = [getattr(row, self.patient_field) for row in changelist.result_list]
            if ids:
                self._audit(request, ids, "admin.list")
        return response


@admin.register(Guardianship)
class GuardianshipAdmin(PatientControlAdmin):
    patient_field = "child_id"
    list_display = ("guardian", "child", "relationship", "valid_from", "valid_to")
    autocomplete_fields = ("guardian",)
    raw_id_fields = ("child",)


@admin.register(Residency)
class ResidencyAdmin(PatientControlAdmin):
    list_display = ("patient", "municipality", "valid_from", "valid_to")
    raw_id_fields = ("patient",)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "user", "organization", "last_used_at", "revoked_at")
    readonly_fields = ("prefix", "token_hash", "last_used_at", "created_at")
    exclude = ()


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("pk", "kind", "status", "progress_done", "progress_total", "attempts")
    list_filter = ("status", "kind")
    readonly_fields = [f.name for f in Job._meta.fields]
