"""The privacy officer's side of "report as suspicious": closing a report
with a resolution. (Reports are created by sharing.services.access_report_create.)"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from phr.audit import audit_write
from phr.models import Role, User
from sharing.models import AccessReport
from sharing.selectors import privacy_officer_municipalities


@transaction.atomic
def access_report_close(*, report: AccessReport, by: User, resolution: str) -> AccessReport:
    """A privacy officer of the report's municipality closes it with a note
    saying what was found. Closing twice changes nothing. Refused
    (ValidationError) without a resolution; PermissionDenied for anyone
    but that municipality's privacy officers (with MFA)."""
    municipality_ids = {m.pk for m in privacy_officer_municipalities(by)}
    if report.municipality_id is None or report.municipality_id not in municipality_ids:
        raise PermissionDenied
    report = AccessReport.objects.select_for_update().get(pk=report.pk)
    if report.status == AccessReport.Status.CLOSED:
        return report
    text = (resolution or "").strip()
    if not text:
        raise ValidationError(
            {
                "resolution": "対応の内容を書いてください。 / "
                "Say what was found and done before closing the report."
            }
        )
    report.status = AccessReport.Status.CLOSED
    report.handled_by = by
    report.handled_at = timezone.now()
    report.resolution = text[:4000]
    report.save(update_fields=["status", "handled_by", "handled_at", "resolution"])
    audit_write(
        action="access_report.close",
        actor_id=by.pk,
        actor_role=Role.MUNICIPAL_STAFF,
        organization_id=report.municipality_id,
        patient_id=report.patient_id,
        purpose="public_health",
        detail={"report": report.pk, "audit_event": report.audit_event_id, "rule": "municipal"},
    )
    return report
