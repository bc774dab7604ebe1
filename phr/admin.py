"""Admin for control data only. Clinical records are never edited here:
they are read through the FHIR API and pages, which go through
sharing/access.py and are audited."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
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


@admin.register(Guardianship)
class GuardianshipAdmin(admin.ModelAdmin):
    list_display = ("guardian", "child", "relationship", "valid_from", "valid_to")
    autocomplete_fields = ("guardian",)
    raw_id_fields = ("child",)


@admin.register(Residency)
class ResidencyAdmin(admin.ModelAdmin):
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
