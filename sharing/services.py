"""Sharing services: grant and revoke consent, emergency preferences, DV
blocks, access reports. Every write goes through here (STYLE.md)."""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from phr.audit import audit_write
from phr.models import Guardianship, Organization, Patient, Residency, Role, User
from phr.terminology import Category
from sharing.models import (
    AccessReport,
    Consent,
    ConsentPurpose,
    DvBlock,
    EmergencyPreference,
)

GRANTEE_KINDS = {
    ConsentPurpose.CARE: (Organization.Kind.CLINIC,),
    ConsentPurpose.EMERGENCY: (Organization.Kind.EMERGENCY,),
    ConsentPurpose.RESEARCH: (Organization.Kind.RESEARCH,),
}


def may_decide_for(user: Any, patient: Patient) -> bool:
    """The adult patient herself, or an active guardian of a child (and
    not DV-blocked from that child), decides who sees the records."""
    if patient.account_id is not None and patient.account_id == getattr(user, "pk", None):
        return True
    if patient.kind != Patient.Kind.CHILD:
        return False
    if DvBlock.objects.active().filter(patient=patient, blocked_user=user).exists():
        return False
    return Guardianship.objects.active().filter(guardian=user, child=patient).exists()


def _bilingual(ja: str, en: str) -> str:
    return f"{ja} / {en}"


def consent_grant(
    *,
    patient: Patient,
    by: User,
    purpose: str,
    categories: list[str],
    grantee_org: Organization | None = None,
    grantee_user: User | None = None,
    starts_at: datetime | None = None,
    ends_at: datetime | None = None,
) -> Consent:
    """Let one organization or person see some categories of a patient's
    records for a purpose and period. Refused (ValidationError, nothing
    written) for no categories, an end before the start, an unknown or
    wrong kind of grantee, or a DV-blocked person."""
    if not may_decide_for(by, patient):
        raise PermissionDenied
    errors: dict[str, str] = {}
    if purpose not in ConsentPurpose.values:
        errors["purpose"] = _bilingual("目的が正しくありません。", "Unknown purpose.")
    if not categories:
        errors["categories"] = _bilingual(
            "共有する記録の種類を1つ以上選んでください。", "Choose at least one kind of record."
        )
    elif unknown := sorted(set(categories) - set(Category.values)):
        errors["categories"] = _bilingual(
            f"不明な種類です: {', '.join(unknown)}", f"Unknown categories: {', '.join(unknown)}"
        )
    start = starts_at or timezone.now()
    if ends_at is not None and ends_at <= start:
        errors["ends_at"] = _bilingual(
            "終了日は開始日より後にしてください。", "The end must be after the start."
        )
    if (grantee_org is None) == (grantee_user is None):
        errors["grantee"] = _bilingual(
            "共有先を1つ選んでください。", "Choose exactly one organization or person."
        )
    elif grantee_org is not None and grantee_org.kind not in GRANTEE_KINDS.get(
        ConsentPurpose(purpose) if purpose in ConsentPurpose.values else ConsentPurpose.CARE, ()
    ):
        errors["grantee"] = _bilingual(
            "この目的ではこの共有先を選べません。",
            "This organization cannot be chosen for this purpose.",
        )
    elif grantee_user is not None:
        if purpose != ConsentPurpose.CARE:
            errors["grantee"] = _bilingual(
                "個人とは診療・見守りの目的でのみ共有できます。",
                "Records are shared with a person for care only.",
            )
        elif grantee_user.pk == by.pk and patient.account_id == by.pk:
            errors["grantee"] = _bilingual(
                "自分自身とは共有できません。", "You cannot share with yourself."
            )
        elif DvBlock.objects.active().filter(patient=patient, blocked_user=grantee_user).exists():
            # Refused without saying why to the grantee; the audit keeps it.
            audit_write(
                action="consent.refused_dv_block",
                outcome="denied",
                actor_id=by.pk,
                patient_id=patient.pk,
                purpose=purpose,
                detail={"grantee_user": grantee_user.pk},
            )
            errors["grantee"] = _bilingual(
                "この方とは共有できません。", "Records cannot be shared with this person."
            )
    if errors:
        # Validation happens before any transaction, so the audit row of a
        # refused share to a DV-blocked person stays written.
        raise ValidationError(errors)
    with transaction.atomic():
        return _consent_create(
            patient=patient,
            by=by,
            purpose=purpose,
            categories=categories,
            grantee_org=grantee_org,
            grantee_user=grantee_user,
            starts_at=start,
            ends_at=ends_at,
        )


def _consent_create(
    *,
    patient: Patient,
    by: User,
    purpose: str,
    categories: list[str],
    grantee_org: Organization | None,
    grantee_user: User | None,
    starts_at: datetime,
    ends_at: datetime | None,
) -> Consent:
    consent = Consent.objects.create(
        patient=patient,
        granted_by=by,
        grantee_org=grantee_org,
        grantee_user=grantee_user,
        purpose=purpose,
        categories=sorted(set(categories)),
        starts_at=starts_at,
        ends_at=ends_at,
    )
    audit_write(
        action="consent.grant",
        actor_id=by.pk,
        patient_id=patient.pk,
        categories=consent.categories,
        purpose=purpose,
        detail={"consent": str(consent.pk)},
    )
    return consent


@transaction.atomic
def consent_revoke(*, consent: Consent, by: User) -> Consent:
    """Revoke at once (every later request, next-page links included, is
    decided without it) and tell the grantee by email."""
    if not may_decide_for(by, consent.patient):
        raise PermissionDenied
    if consent.revoked_at is not None:
        return consent  # revoking twice is not an error, and changes nothing
    consent.revoked_at = timezone.now()
    consent.revoked_by = by
    consent.save(update_fields=["revoked_at", "revoked_by"])
    audit_write(
        action="consent.revoke",
        actor_id=by.pk,
        patient_id=consent.patient_id,
        purpose=consent.purpose,
        detail={"consent": str(consent.pk)},
    )
    from sharing.tasks import notify_grantee_of_revocation

    transaction.on_commit(partial(notify_grantee_of_revocation.delay, str(consent.pk)))
    return consent


def grantee_emails(consent: Consent) -> list[str]:
    if consent.grantee_user_id is not None:
        return [consent.grantee_user.email]
    return sorted(
        {
            m.user.email
            for m in consent.grantee_org.memberships.active().select_related("user")
            if m.user.is_active
        }
    )


@transaction.atomic
def emergency_preference_set(
    *, patient: Patient, by: User, share_summary: bool, contact_note: str = ""
) -> EmergencyPreference:
    if not may_decide_for(by, patient):
        raise PermissionDenied
    preference, _created = EmergencyPreference.objects.update_or_create(
        patient=patient,
        defaults={
            "share_summary": share_summary,
            "contact_note": contact_note[:200],
            "updated_by": by,
            "updated_at": timezone.now(),
        },
    )
    audit_write(
        action="emergency.preference",
        actor_id=by.pk,
        patient_id=patient.pk,
        purpose="emergency",
        detail={"share_summary": share_summary},
    )
    return preference


def _municipal_staff_of(user: Any, patient: Patient) -> Organization:
    from phr.roles import has_mfa, organizations_for

    if not has_mfa(user):
        raise PermissionDenied
    mine = {o.pk: o for o in organizations_for(user, Role.MUNICIPAL_STAFF)}
    residency = (
        Residency.objects.current().filter(patient=patient, municipality_id__in=list(mine)).first()
    )
    if residency is None:
        raise PermissionDenied
    return mine[residency.municipality_id]


@transaction.atomic
def dv_block_set(*, patient: Patient, blocked_user: User, by: User) -> DvBlock:
    """Municipal staff of the patient's municipality cut a named user off
    from the patient through every channel: the guardianship stops giving
    access, consents to that user stop counting, and new ones are refused."""
    municipality = _municipal_staff_of(by, patient)
    block, created = DvBlock.objects.get_or_create(
        patient=patient,
        blocked_user=blocked_user,
        lifted_at=None,
        defaults={"municipality": municipality, "created_by": by},
    )
    if created:
        # Consents to the blocked person end now, so nothing lingers if the
        # block is lifted later.
        Consent.objects.active().filter(patient=patient, grantee_user=blocked_user).update(
            revoked_at=timezone.now(), revoked_by=by
        )
        audit_write(
            action="dv_block.set",
            actor_id=by.pk,
            actor_role=Role.MUNICIPAL_STAFF,
            organization_id=municipality.pk,
            patient_id=patient.pk,
            purpose="public_health",
            detail={"blocked_user": blocked_user.pk},
        )
    return block


@transaction.atomic
def dv_block_lift(*, block: DvBlock, by: User) -> DvBlock:
    _municipal_staff_of(by, block.patient)
    if block.lifted_at is None:
        block.lifted_at = timezone.now()
        block.lifted_by = by
        block.save(update_fields=["lifted_at", "lifted_by"])
        audit_write(
            action="dv_block.lift",
            actor_id=by.pk,
            patient_id=block.patient_id,
            purpose="public_health",
            detail={"blocked_user": block.blocked_user_id},
        )
    return block


def access_report_create(
    *, audit_event_id: int, patient: Patient, by: User, note: str = ""
) -> AccessReport:
    """A family reports an access as suspicious: it goes to the privacy
    officer of the patient's municipality."""
    if not may_decide_for(by, patient):
        raise PermissionDenied
    residency = Residency.objects.current().filter(patient=patient).first()
    report, _created = AccessReport.objects.get_or_create(
        audit_event_id=audit_event_id,
        reported_by=by,
        defaults={
            "patient": patient,
            "municipality": residency.municipality if residency else None,
            "note": note[:2000],
        },
    )
    return report

