"""Admin for sharing's control data: a municipality's research regime
(opt-in, the default, or opt-out with its public notice; docs/decisions/
0023-research-consent.md). The admin needs MFA like every staff route
(phr.middleware). No patient data is shown or edited here; each change of
a regime is audited, since it decides whose anonymized records may be
released."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils import timezone

from phr.audit import audit_write
from phr.models import Organization
from sharing.access import Purpose
from sharing.models import ResearchRegime

REGIME_AUDIT_ACTION = "research_regime.set"


@admin.register(ResearchRegime)
class ResearchRegimeAdmin(admin.ModelAdmin):
    list_display = ("municipality", "kind", "notice_published_on", "notice_url", "updated_at")
    list_filter = ("kind",)
    search_fields = ("municipality__name", "municipality__code")
    autocomplete_fields = ("municipality",)
    readonly_fields = ("updated_at",)
    fields = (
        "municipality",
        "kind",
        "notice_published_on",
        "notice_url",
        "legal_basis",
        "updated_at",
    )

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "municipality":
            kwargs["queryset"] = Organization.objects.filter(kind=Organization.Kind.MUNICIPALITY)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_dbfield(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "notice_url":
            kwargs["assume_scheme"] = "https"  # a public notice is an https page
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def save_model(
        self, request: HttpRequest, obj: ResearchRegime, form: Any, change: bool
    ) -> None:
        obj.updated_at = timezone.now()
        super().save_model(request, obj, form, change)
        audit_write(
            action=REGIME_AUDIT_ACTION,
            actor_id=request.user.pk,
            actor_role="admin",
            organization_id=obj.municipality_id,
            purpose=Purpose.RESEARCH,
            detail={
                "kind": obj.kind,
                "notice_published_on": (
                    obj.notice_published_on.isoformat() if obj.notice_published_on else None
                ),
                "changed": sorted(form.changed_data),
            },
        )

    def delete_model(self, request: HttpRequest, obj: ResearchRegime) -> None:
        municipality_id = obj.municipality_id
        super().delete_model(request, obj)
        audit_write(
            action=REGIME_AUDIT_ACTION,
            actor_id=request.user.pk,
            actor_role="admin",
            organization_id=municipality_id,
            purpose=Purpose.RESEARCH,
            detail={"kind": ResearchRegime.Kind.OPT_IN, "deleted": True},
        )

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        for obj in queryset:
            self.delete_model(request, obj)
