"""The one access-policy point: who may see which patient's records, and why.

Every read of patient data — pages, the FHIR API, exports, admin actions,
tasks acting for a user — asks this module:

- `visible_records(user, purpose=None)` → a Q filter for phr.Resource;
- `decide(user, patient, category=…, purpose=…)` → a Decision (yes/no, the
  rule, a reason a person can read);
- `access_patient(user, patient_id, …)` → the Patient or Http404, audited;
- `audit_reveal(user, patient_ids, …)` → one audit row per patient revealed.

Deny by default. "Does not exist" and "not allowed" look the same.

Rules in force (docs/decisions/0002-access.md):
- self: an adult sees her own records (all categories);
- guardian: a guardian sees the children under an active guardianship; an
  adult's records are hers alone — a partner sees them only by consent
  (sharing issue);
- municipal staff: their current residents' records and what their own
  municipality submitted, never clinic-only items;
- clinic staff: what their own clinic submitted (consent grants come with
  the sharing issue);
- platform admin: everything, for operations, audited;
- staff (any organization role or admin) without MFA: nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Q
from django.http import Http404
from django.utils.translation import gettext_lazy as _

from phr.audit import AuditEntry, audit_write_many
from phr.models import Guardianship, Patient, Residency, Resource, Role
from phr.roles import active_memberships, has_mfa, is_staff_user
from phr.terminology import Category, Sensitivity

__all__ = [
    "Category",
    "Decision",
    "Purpose",
    "access_patient",
    "audit_denied",
    "audit_reveal",
    "decide",
    "visible_records",
]


class Purpose:
    PERSONAL = "personal"  # self or guardian
    CARE = "care"
    EMERGENCY = "emergency"
    PUBLIC_HEALTH = "public_health"  # municipal duty
    RESEARCH = "research"
    OPERATIONS = "operations"  # platform administration

    ALL = (PERSONAL, CARE, EMERGENCY, PUBLIC_HEALTH, RESEARCH, OPERATIONS)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: str
    reason: str
    purpose: str = ""
    role: str = ""
    organization_id: int | None = None

    def __bool__(self) -> bool:
        return self.allowed


DENY = Decision(False, "default_deny", str(_("No rule or consent allows this.")))
NO_MFA = Decision(
    False, "staff_without_mfa", str(_("Staff must set up two-factor authentication."))
)


@dataclass
class _Grant:
    """One rule's reach: patients (by compartment) and/or submitting
    organizations, with the sensitivities it excludes."""

    rule: str
    purpose: str
    role: str
    organization_id: int | None = None
    patient_ids: list[uuid.UUID] = field(default_factory=list)
    submitter_org_ids: list[int] = field(default_factory=list)
    everything: bool = False
    exclude_sensitivity: tuple[str, ...] = ()

    def q(self) -> Q:
        if self.everything:
            reach = Q()
        else:
            reach = Q(pk__in=[])
            if self.patient_ids:
                reach |= Q(compartments__overlap=self.patient_ids)
            if self.submitter_org_ids:
                reach |= Q(provenance__agent_org_id__in=self.submitter_org_ids)
        if self.exclude_sensitivity:
            reach &= ~Q(sensitivity__in=self.exclude_sensitivity)
        return reach


def _grants(user: Any) -> list[_Grant]:
    """Every rule that gives this user some reach, computed once per request
    (cached on the user object)."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return []
    cached: list[_Grant] | None = getattr(user, "_hagukumi_grants", None)
    if cached is not None:
        return cached
    grants: list[_Grant] = []
    own = Patient.objects.filter(account=user).values_list("id", flat=True).first()
    if own is not None:
        grants.append(_Grant("self", Purpose.PERSONAL, "patient", patient_ids=[own]))
    children = list(
        Guardianship.objects.active().filter(guardian=user).values_list("child_id", flat=True)
    )
    if children:
        grants.append(_Grant("guardian", Purpose.PERSONAL, "guardian", patient_ids=children))
    if is_staff_user(user) and has_mfa(user):
        if user.is_platform_admin:
            grants.append(_Grant("platform_admin", Purpose.OPERATIONS, "admin", everything=True))
        for membership in active_memberships(user):
            org_id = membership.organization_id
            if membership.role == Role.MUNICIPAL_STAFF:
                residents = list(
                    Residency.objects.current()
                    .filter(municipality_id=org_id)
                    .values_list("patient_id", flat=True)
                )
                grants.append(
                    _Grant(
                        "municipal",
                        Purpose.PUBLIC_HEALTH,
                        Role.MUNICIPAL_STAFF,
                        organization_id=org_id,
                        patient_ids=residents,
                        submitter_org_ids=[org_id],
                        exclude_sensitivity=(Sensitivity.CLINIC_ONLY,),
                    )
                )
            elif membership.role == Role.CLINIC_STAFF:
                grants.append(
                    _Grant(
                        "clinic_submitted",
                        Purpose.CARE,
                        Role.CLINIC_STAFF,
                        organization_id=org_id,
                        submitter_org_ids=[org_id],
                    )
                )
    user._hagukumi_grants = grants
    return grants


def visible_records(
    user: Any, purpose: str | None = None, *, include_deleted: bool = False
) -> Q:
    """Filter for phr.Resource: what this user may read (for `purpose`,
    or for any purpose they hold when None). Tombstones are excluded unless
    `include_deleted` (a FHIR read answers 410 Gone to those who could see
    the record, 404 to everyone else)."""
    q = Q(pk__in=[])
    for grant in _grants(user):
        if purpose is None or grant.purpose == purpose:
            q |= grant.q()
    return q if include_deleted else q & Q(deleted=False)


def _grant_reaches(grant: _Grant, patient_id: uuid.UUID) -> bool:
    if grant.everything or patient_id in grant.patient_ids:
        return True
    if grant.submitter_org_ids:
        # Records this organization submitted about the patient.
        return (
            Resource.objects.filter(
                compartments__overlap=[patient_id],
                provenance__agent_org_id__in=grant.submitter_org_ids,
                deleted=False,
            )
            .exclude(sensitivity__in=grant.exclude_sensitivity)
            .exists()
        )
    return False


def decide(
    user: Any,
    patient: Patient | uuid.UUID,
    *,
    category: str | None = None,
    purpose: str | None = None,
    sensitivity: str = Sensitivity.NORMAL,
) -> Decision:
    """May `user` see `patient`'s records of `category` (None: the patient
    at all) for `purpose`? The Decision names the rule that decided."""
    patient_id = patient.pk if isinstance(patient, Patient) else patient
    if is_staff_user(user) and not has_mfa(user) and not _personal_only(user, patient_id):
        return NO_MFA
    for grant in _grants(user):
        if purpose is not None and grant.purpose != purpose:
            continue
        if sensitivity in grant.exclude_sensitivity:
            continue
        if _grant_reaches(grant, patient_id):
            return Decision(
                True,
                grant.rule,
                str(RULE_REASONS.get(grant.rule, grant.rule)),
                purpose=grant.purpose,
                role=grant.role,
                organization_id=grant.organization_id,
            )
    return DENY


def _personal_only(user: Any, patient_id: uuid.UUID) -> bool:
    """A staff member is also a parent: her own family is reachable without
    MFA, like any parent's."""
    return any(
        g.purpose == Purpose.PERSONAL and patient_id in g.patient_ids for g in _grants(user)
    )


RULE_REASONS = {
    "self": _("These are your own records."),
    "guardian": _("You are this child's guardian."),
    "municipal": _("Municipal duty: a resident, or records the municipality submitted."),
    "clinic_submitted": _("Records this clinic submitted."),
    "platform_admin": _("Platform administration."),
}


def access_patient(
    user: Any,
    patient_id: uuid.UUID | str,
    *,
    category: str | None = None,
    purpose: str | None = None,
    action: str = "read",
) -> Patient:
    """Return the patient, or raise Http404, and write the audit row.

    "Doesn't exist" and "not yours" look the same on purpose, so nobody
    can probe which records exist.
    """
    try:
        pid = uuid.UUID(str(patient_id))
    except ValueError:
        raise Http404 from None
    patient = Patient.objects.filter(pk=pid).first()
    if patient is None:
        raise Http404
    decision = decide(user, patient, category=category, purpose=purpose)
    if not decision:
        audit_denied(user, pid, action=action, rule=decision.rule)
        raise Http404
    audit_reveal(user, [pid], categories=[category] if category else [], action=action)
    return patient


def audit_reveal(
    user: Any,
    patient_ids: Iterable[uuid.UUID],
    *,
    categories: Iterable[str] = (),
    action: str = "read",
    detail: dict[str, Any] | None = None,
) -> int:
    """One audit row per patient revealed by a response, naming the rule
    (role, organization, purpose) that allowed it."""
    cats = sorted(set(categories))
    entries = []
    for pid in dict.fromkeys(patient_ids):
        decision = decide(user, pid)
        entries.append(
            AuditEntry(
                action=action,
                outcome="success",
                actor_id=getattr(user, "pk", None),
                actor_role=decision.role,
                organization_id=decision.organization_id,
                patient_id=pid,
                categories=cats,
                purpose=decision.purpose,
                detail={"rule": decision.rule, **(detail or {})},
            )
        )
    return audit_write_many(entries)


def audit_denied(user: Any, patient_id: uuid.UUID | None, *, action: str, rule: str) -> None:
    """Failed authorizations are logged too (ASVS 7.2.2) — but never shown
    to families as an access, since nothing was revealed."""
    audit_write_many(
        [
            AuditEntry(
                action=action,
                outcome="denied",
                actor_id=getattr(user, "pk", None),
                patient_id=patient_id,
                detail={"rule": rule},
            )
        ]
    )

