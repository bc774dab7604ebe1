"""The FHIR R4 Consent projection of a `sharing.Consent` row.

Consent is control data (docs/decisions/0001): the relational row decides
access on every request; the FHIR API serves this projection of it, built
on the fly, valid by construction (tests/sharing/test_consent_fhir.py
validates it with fhir.resources R4B).

Who may read a Consent (GET /fhir/Consent/{id}, GET /fhir/Consent?patient=):
- whoever may decide for the patient (`sharing.services.may_decide_for`:
  the adult patient herself, an active guardian of a child who is not
  DV-blocked), in every status, so a family's own systems can show history;
- the grantee while the consent is in force: the person it names, or the
  members of the clinic it names (clinic staff with MFA). A revoked or
  expired consent disappears for the grantee, like the records it shared.
  Emergency and research consents are never listed to their grantees:
  emergency grants are not listable (0006) and researchers never see
  identified data.
Everyone else gets 404, as for any record (missing and withheld alike).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.db.models import Q, QuerySet

from phr.fhir import fhir_instant
from phr.identifiers import MEDICAL_INSTITUTION_SYSTEM, MUNICIPALITY_CODE_SYSTEM
from phr.models import Organization, Residency, Role, User
from phr.roles import active_memberships, has_mfa
from phr.terminology import CATEGORY_SYSTEM, Category
from sharing.access import blocked_patients
from sharing.models import Consent, ConsentPurpose
from sharing.selectors import decidable_patients

LOINC = "http://loinc.org"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
CONSENT_CATEGORY = "http://terminology.hl7.org/CodeSystem/consentcategorycodes"
CONSENT_ACTION = "http://terminology.hl7.org/CodeSystem/consentaction"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
# Our accounts have no national identifier: a person is named by the
# service's own account number.
ACCOUNT_SYSTEM = "https://hagukumi.jp/fhir/NamingSystem/account"
# Emergency services and research institutions have no national code
# either; their `Organization.code` is the service's own.
ORGANIZATION_SYSTEM = "https://hagukumi.jp/fhir/NamingSystem/organization"

# Consent.status (R4 consent-state-codes) from our derived status: a
# consent that starts later is already agreed and enforced from its
# period's start, so it is active too; revoked and expired are inactive
# ("terminated or replaced").
FHIR_STATUS = {
    Consent.Status.ACTIVE: "active",
    Consent.Status.PENDING: "active",
    Consent.Status.REVOKED: "inactive",
    Consent.Status.EXPIRED: "inactive",
}

PURPOSE_OF_USE = {
    ConsentPurpose.CARE: ("TREAT", "treatment"),
    ConsentPurpose.EMERGENCY: ("ETREAT", "Emergency Treatment"),
    ConsentPurpose.RESEARCH: ("HRESCH", "healthcare research"),
}

# Categories beside LOINC 59284-0 (Patient Consent), from the R4
# consentcategorycodes: emergency-only access, research.
EXTRA_CATEGORY = {
    ConsentPurpose.EMERGENCY: ("emrgonly", "Emergency Only"),
    ConsentPurpose.RESEARCH: ("research", "Research Information Access"),
}


def organization_identifier(organization: Organization) -> dict[str, str]:
    if organization.kind == Organization.Kind.CLINIC:
        system = MEDICAL_INSTITUTION_SYSTEM
    elif organization.kind == Organization.Kind.MUNICIPALITY:
        system = MUNICIPALITY_CODE_SYSTEM
    else:
        system = ORGANIZATION_SYSTEM
    return {"system": system, "value": organization.code}


def organization_reference(organization: Organization) -> dict[str, Any]:
    """A logical reference by the organization's identifier (the API serves
    no Organization resources yet)."""
    return {
        "type": "Organization",
        "identifier": organization_identifier(organization),
        "display": organization.name,
    }


def person_reference(user: User, *, resource_type: str = "RelatedPerson") -> dict[str, Any]:
    return {
        "type": resource_type,
        "identifier": {"system": ACCOUNT_SYSTEM, "value": str(user.pk)},
        "display": user.display_name or user.email,
    }


def _granted_by(consent: Consent) -> dict[str, Any]:
    """The adult patient herself (a Patient reference), or the child's
    guardian who granted it (a RelatedPerson, by account)."""
    if consent.patient.account_id is not None and consent.patient.account_id == (
        consent.granted_by_id
    ):
        return {"reference": f"Patient/{consent.patient_id}"}
    return person_reference(consent.granted_by)


def _custodian(consent: Consent) -> Organization | None:
    """The municipality the patient lives in: it runs the PHR for its
    residents and its privacy officer handles reports about this consent."""
    residency = (
        Residency.objects.current()
        .filter(patient_id=consent.patient_id)
        .select_related("municipality")
        .first()
    )
    return residency.municipality if residency else None


def _period(consent: Consent) -> dict[str, str]:
    period = {"start": fhir_instant(consent.starts_at)}
    if consent.ends_at is not None:
        period["end"] = fhir_instant(consent.ends_at)
    return period


def consent_resource(consent: Consent, *, at: datetime | None = None) -> dict[str, Any]:
    """The FHIR R4 Consent for one row: who agreed, for whom, to whom,
    which data categories, for which purpose and period, and whether it is
    in force."""
    status = consent.status_at(at)
    changed = max(filter(None, (consent.created_at, consent.revoked_at)))
    purpose = ConsentPurpose(consent.purpose)
    categories = [{"coding": [{"system": LOINC, "code": "59284-0", "display": "Patient Consent"}]}]
    if purpose in EXTRA_CATEGORY:
        code, display = EXTRA_CATEGORY[purpose]
        categories.append(
            {"coding": [{"system": CONSENT_CATEGORY, "code": code, "display": display}]}
        )
    if consent.grantee_org_id is not None:
        actor_reference = organization_reference(consent.grantee_org)
    else:
        actor_reference = person_reference(consent.grantee_user)
    purpose_code, purpose_display = PURPOSE_OF_USE[purpose]
    scope_code, scope_display = (
        ("research", "Research")
        if purpose == ConsentPurpose.RESEARCH
        else ("patient-privacy", "Privacy Consent")
    )
    resource: dict[str, Any] = {
        "resourceType": "Consent",
        "id": str(consent.pk),
        "meta": {"lastUpdated": fhir_instant(changed)},
        "status": FHIR_STATUS[status],
        "scope": {
            "coding": [{"system": CONSENT_SCOPE, "code": scope_code, "display": scope_display}]
        },
        "category": categories,
        "patient": {"reference": f"Patient/{consent.patient_id}"},
        "dateTime": fhir_instant(consent.created_at),
        "performer": [_granted_by(consent)],
    }
    custodian = _custodian(consent)
    if custodian is not None:
        resource["organization"] = [organization_reference(custodian)]
    # Deny by default; this consent opts in (ppc-1: a policy or a rule).
    resource["policyRule"] = {
        "coding": [{"system": ACT_CODE, "code": "OPTIN", "display": "opt-in"}]
    }
    resource["provision"] = {
        "type": "permit",
        "period": _period(consent),
        "actor": [
            {
                "role": {
                    "coding": [
                        {
                            "system": PARTICIPATION_TYPE,
                            "code": "IRCP",
                            "display": "information recipient",
                        }
                    ]
                },
                "reference": actor_reference,
            }
        ],
        "action": [{"coding": [{"system": CONSENT_ACTION, "code": "access", "display": "Access"}]}],
        "purpose": [{"system": ACT_REASON, "code": purpose_code, "display": purpose_display}],
        "class": [
            {"system": CATEGORY_SYSTEM, "code": code, "display": str(Category(code).label)}
            for code in consent.categories
        ],
    }
    return resource


# --------------------------------------------------------------------------
# Who may read which Consent
# --------------------------------------------------------------------------


def visible_consents(user: Any) -> QuerySet[Consent]:
    """The consents `user` may read through the API (see the module doc)."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return Consent.objects.none()
    deciding = [p.pk for p in decidable_patients(user)]
    clinics = (
        [m.organization_id for m in active_memberships(user) if m.role == Role.CLINIC_STAFF]
        if has_mfa(user)
        else []
    )
    as_grantee = Q(grantee_user=user, purpose=ConsentPurpose.CARE) | Q(
        grantee_org_id__in=clinics, purpose=ConsentPurpose.CARE
    )
    # Only while in force, and never research consents (no identified data).
    as_grantee &= Q(pk__in=Consent.objects.active().values("pk")) & ~Q(
        purpose=ConsentPurpose.RESEARCH
    )
    return (
        Consent.objects.filter(Q(patient_id__in=deciding) | as_grantee)
        .exclude(patient_id__in=list(blocked_patients(user)))
        .select_related("patient", "granted_by", "grantee_org", "grantee_user")
    )


def consent_for(user: Any, consent_id: str) -> Consent | None:
    """The consent if `user` may read it; None when it is missing or
    withheld — on purpose the same."""
    try:
        pk = uuid.UUID(str(consent_id))
    except ValueError:
        return None
    return visible_consents(user).filter(pk=pk).first()


def patient_filter(value: str) -> Q:
    """patient=<id>, Patient/<id> or …/Patient/<id>; anything else matches
    nothing (as for record searches)."""
    parts = value.rstrip("/").split("/")
    if len(parts) >= 2:
        if parts[-2] != "Patient":
            return Q(pk__in=[])
        value = parts[-1]
    try:
        return Q(patient_id=uuid.UUID(value))
    except ValueError:
        return Q(pk__in=[])
