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
from phr.roles import active_memberships, has_mfa, is_staff_user, organizations_for
from phr.terminology import Category, Sensitivity

__all__ = [
    "Category",
    "Decision",
    "Explanation",
    "Purpose",
    "access_patient",
    "audit_denied",
    "audit_reveal",
    "decide",
    "explain",
    "redact_for",
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
    consent_id: uuid.UUID | None = None
    break_glass_id: int | None = None
    categories: tuple[str, ...] | None = None
    until: Any = None

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True)
class Explanation:
    """The answer to "why can (or can't) they see this?"."""

    decision: Decision
    granted_by: list[Decision]


DENY = Decision(False, "default_deny", str(_("No rule or consent allows this.")))
NO_MFA = Decision(
    False, "staff_without_mfa", str(_("Staff must set up two-factor authentication."))
)
DV_BLOCKED = Decision(False, "dv_block", str(_("Access is blocked for this person.")))
CONSENT_REVOKED = Decision(False, "consent_revoked", str(_("The family revoked the consent.")))
CONSENT_EXPIRED = Decision(False, "consent_expired", str(_("The consent has expired.")))
CATEGORY_NOT_GRANTED = Decision(
    False, "category_not_granted", str(_("The consent does not include these records."))
)


# What an emergency grant (prior consent or break-glass) reaches: the
# IPS-like emergency dataset only.
EMERGENCY_CATEGORIES = (
    Category.PREGNANCY,
    Category.ALLERGIES_CONDITIONS,
    Category.MEDICATIONS,
)
# Blood type is a prenatal lab result but belongs to the emergency summary.
BLOOD_TYPE_TOKENS = ["http://loinc.org|882-1", "http://loinc.org|883-9", "http://loinc.org|10331-7"]


def emergency_scope() -> Q:
    return (
        Q(category__in=EMERGENCY_CATEGORIES)
        | Q(resource_type__in=("Patient", "Flag"))
        | Q(tokens__overlap=BLOOD_TYPE_TOKENS)
    )


@dataclass
class _Grant:
    """One rule's reach: patients (by compartment) and/or submitting
    organizations, limited to some categories and scope, minus excluded
    sensitivities and DV-blocked patients."""

    rule: str
    purpose: str
    role: str
    organization_id: int | None = None
    patient_ids: list[uuid.UUID] = field(default_factory=list)
    submitter_org_ids: list[int] = field(default_factory=list)
    everything: bool = False
    exclude_sensitivity: tuple[str, ...] = ()
    # None: every category; else only these (the patient resource itself is
    # always visible to a grant that reaches the patient).
    categories: tuple[str, ...] | None = None
    scope: Q | None = None
    blocked: tuple[uuid.UUID, ...] = ()
    # consent grants: which consent (and its end) covers each patient
    consent_by_patient: dict[uuid.UUID, tuple[uuid.UUID, Any]] = field(default_factory=dict)
    break_glass_id: int | None = None
    ends_at: Any = None
    # Emergency grants do not list patients: they serve one found patient's
    # emergency summary (purpose="emergency" asked explicitly).
    listable: bool = True

    def q(self) -> Q:
        if self.everything:
            # Not Q(): Django drops an empty Q when OR-ing it onto another.
            reach = Q(pk__isnull=False)
        else:
            reach = Q(pk__in=[])
            if self.patient_ids:
                reach |= Q(compartments__overlap=self.patient_ids)
            if self.submitter_org_ids:
                reach |= Q(provenance__agent_org_id__in=self.submitter_org_ids)
        if self.categories is not None:
            reach &= Q(category__in=self.categories) | Q(resource_type="Patient")
        if self.scope is not None:
            reach &= self.scope
        if self.exclude_sensitivity:
            reach &= ~Q(sensitivity__in=self.exclude_sensitivity)
        if self.blocked:
            reach &= ~Q(compartments__overlap=list(self.blocked))
        return reach

    def allows(self, category: str | None, sensitivity: str) -> bool:
        if sensitivity in self.exclude_sensitivity:
            return False
        return category is None or self.categories is None or category in self.categories


def blocked_patients(user: Any) -> tuple[uuid.UUID, ...]:
    """Patients this user must learn nothing of (DV等支援措置)."""
    from sharing.models import DvBlock

    if not getattr(user, "is_authenticated", False):
        return ()
    cached = getattr(user, "_hagukumi_blocked", None)
    if cached is None:
        cached = tuple(
            DvBlock.objects.active().filter(blocked_user=user).values_list("patient_id", flat=True)
        )
        user._hagukumi_blocked = cached
    return cached


def _consent_grants(user: Any, blocked: tuple[uuid.UUID, ...]) -> list[_Grant]:
    from sharing.models import Consent, ConsentPurpose

    grants: list[_Grant] = []
    merged: dict[tuple[Any, ...], _Grant] = {}
    orgs = {m.organization_id: m for m in active_memberships(user)} if has_mfa(user) else {}
    consents = Consent.objects.active().filter(
        Q(grantee_user=user) | Q(grantee_org_id__in=list(orgs))
    )
    for consent in consents:
        if consent.patient_id in blocked:
            continue
        if consent.grantee_user_id == user.pk:
            if consent.purpose != ConsentPurpose.CARE:
                continue  # a person is only ever a care grantee
            rule, role, org_id = "consent_person", "person", None
        else:
            membership = orgs[consent.grantee_org_id]
            rule, role, org_id = "consent", membership.role, consent.grantee_org_id
            expected = {
                ConsentPurpose.CARE: Role.CLINIC_STAFF,
                ConsentPurpose.EMERGENCY: Role.EMERGENCY_RESPONDER,
            }.get(ConsentPurpose(consent.purpose))
            if expected is None or membership.role != expected:
                continue  # research consents give no identified access
        emergency = consent.purpose == ConsentPurpose.EMERGENCY
        categories = tuple(sorted(consent.categories))
        # Consents alike but for their patient become one grant (one
        # compartment-overlap branch with an array of patients), so a
        # clinic holding hundreds of consents does not make a query with
        # hundreds of branches.
        key = (rule, role, org_id, categories, emergency)
        grant = merged.get(key)
        if grant is None:
            grant = merged[key] = _Grant(
                rule,
                Purpose.EMERGENCY if emergency else Purpose.CARE,
                role,
                organization_id=org_id,
                categories=categories,
                scope=emergency_scope() if emergency else None,
                listable=not emergency,
            )
        if consent.patient_id not in grant.consent_by_patient:
            grant.patient_ids.append(consent.patient_id)
            grant.consent_by_patient[consent.patient_id] = (consent.pk, consent.ends_at)
    grants.extend(merged.values())
    return grants


def _emergency_grants(user: Any, blocked: tuple[uuid.UUID, ...]) -> list[_Grant]:
    from sharing.models import BreakGlass, EmergencyPreference

    grants = []
    responder_orgs = organizations_for(user, Role.EMERGENCY_RESPONDER)
    if not responder_orgs:
        return grants
    for window in BreakGlass.objects.open().filter(responder=user):
        if window.patient_id in blocked:
            continue
        grants.append(
            _Grant(
                "break_glass",
                Purpose.EMERGENCY,
                Role.EMERGENCY_RESPONDER,
                organization_id=window.organization_id,
                patient_ids=[window.patient_id],
                scope=emergency_scope(),
                break_glass_id=window.pk,
                ends_at=window.ends_at,
                listable=False,
            )
        )
    opted_in = list(
        EmergencyPreference.objects.filter(share_summary=True).values_list("patient_id", flat=True)
    )
    if opted_in:
        grants.append(
            _Grant(
                "emergency_preference",
                Purpose.EMERGENCY,
                Role.EMERGENCY_RESPONDER,
                organization_id=responder_orgs[0].pk,
                patient_ids=[p for p in opted_in if p not in blocked],
                scope=emergency_scope(),
                listable=False,
            )
        )
    return grants


def _grants(user: Any) -> list[_Grant]:
    """Every rule that gives this user some reach, computed once per request
    (cached on the user object)."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return []
    cached: list[_Grant] | None = getattr(user, "_hagukumi_grants", None)
    if cached is not None:
        return cached
    blocked = blocked_patients(user)
    grants: list[_Grant] = []
    own = Patient.objects.filter(account=user).values_list("id", flat=True).first()
    if own is not None:
        grants.append(_Grant("self", Purpose.PERSONAL, "patient", patient_ids=[own]))
    children = [
        child
        for child in Guardianship.objects.active()
        .filter(guardian=user)
        .values_list("child_id", flat=True)
        if child not in blocked
    ]
    if children:
        grants.append(_Grant("guardian", Purpose.PERSONAL, "guardian", patient_ids=children))
    grants += _consent_grants(user, blocked)
    if is_staff_user(user) and has_mfa(user):
        if user.is_platform_admin:
            grants.append(
                _Grant(
                    "platform_admin",
                    Purpose.OPERATIONS,
                    "admin",
                    everything=True,
                    blocked=blocked,
                )
            )
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
                        patient_ids=[p for p in residents if p not in blocked],
                        submitter_org_ids=[org_id],
                        exclude_sensitivity=(Sensitivity.CLINIC_ONLY,),
                        blocked=blocked,
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
                        blocked=blocked,
                    )
                )
        grants += _emergency_grants(user, blocked)
    user._hagukumi_grants = grants
    return grants


def forget_grants(user: Any) -> None:
    """Drop the per-request cache (after a grant, revoke or block changes)."""
    for attribute in ("_hagukumi_grants", "_hagukumi_blocked"):
        if hasattr(user, attribute):
            delattr(user, attribute)


def visible_records(
    user: Any, purpose: str | None = None, *, include_deleted: bool = False
) -> Q:
    """Filter for phr.Resource: what this user may read (for `purpose`,
    or for any listable purpose they hold when None). Tombstones are
    excluded unless `include_deleted` (a FHIR read answers 410 Gone to those
    who could see the record, 404 to everyone else). Emergency grants only
    apply when purpose="emergency" is asked for explicitly."""
    q = Q(pk__in=[])
    for grant in _grants(user):
        if purpose is None and not grant.listable:
            continue
        if purpose is None or grant.purpose == purpose:
            q |= grant.q()
    return q if include_deleted else q & Q(deleted=False)


def _grant_reaches(grant: _Grant, patient_id: uuid.UUID, category: str | None = None) -> bool:
    if patient_id in grant.blocked:
        return False
    if grant.everything or patient_id in grant.patient_ids:
        return True
    if grant.submitter_org_ids:
        # Records this organization submitted about the patient (of the
        # category asked about, when one is).
        submitted = Resource.objects.filter(
            compartments__overlap=[patient_id],
            provenance__agent_org_id__in=grant.submitter_org_ids,
            deleted=False,
        ).exclude(sensitivity__in=grant.exclude_sensitivity)
        if category is not None:
            submitted = submitted.filter(category=category)
        return submitted.exists()
    return False


def _decision(grant: _Grant, patient_id: uuid.UUID | None = None) -> Decision:
    covering = grant.consent_by_patient.get(patient_id) if patient_id is not None else None
    consent_id, until = covering if covering is not None else (None, grant.ends_at)
    return Decision(
        True,
        grant.rule,
        str(RULE_REASONS.get(grant.rule, grant.rule)),
        purpose=grant.purpose,
        role=grant.role,
        organization_id=grant.organization_id,
        consent_id=consent_id,
        break_glass_id=grant.break_glass_id,
        categories=grant.categories,
        until=until,
    )


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
    if patient_id in blocked_patients(user):
        return DV_BLOCKED
    # Staff without MFA hold no staff grant (see _grants); what they hold as
    # a parent or a named person still applies.
    for grant in _grants(user):
        if purpose is None and not grant.listable:
            continue
        if purpose is not None and grant.purpose != purpose:
            continue
        if not grant.allows(category, sensitivity):
            continue
        if _grant_reaches(grant, patient_id, category):
            return _decision(grant, patient_id)
    if is_staff_user(user) and not has_mfa(user):
        return NO_MFA
    return DENY


def explain(user: Any, patient: Patient | uuid.UUID, *, category: str | None = None) -> Explanation:
    """Why `user` may or may not see `patient`'s `category` records: every
    rule or consent that grants it, or the reason for the denial (a DV
    block, missing MFA, a consent that expired or was revoked, or none)."""
    from sharing.models import Consent

    patient_id = patient.pk if isinstance(patient, Patient) else patient
    if patient_id in blocked_patients(user):
        return Explanation(DV_BLOCKED, [])
    granting = [
        _decision(g, patient_id)
        for g in _grants(user)
        if g.allows(category, Sensitivity.NORMAL) and _grant_reaches(g, patient_id, category)
    ]
    if granting:
        return Explanation(granting[0], granting)
    if is_staff_user(user) and not has_mfa(user):
        return Explanation(NO_MFA, [])
    orgs = [m.organization_id for m in active_memberships(user)]
    lapsed = (
        Consent.objects.filter(patient_id=patient_id)
        .filter(Q(grantee_user=user) | Q(grantee_org_id__in=orgs))
        .order_by("-created_at")
        .first()
    )
    if lapsed is not None:
        status = lapsed.status
        if status == Consent.Status.REVOKED:
            return Explanation(CONSENT_REVOKED, [])
        if status == Consent.Status.EXPIRED:
            return Explanation(CONSENT_EXPIRED, [])
        if category is not None and category not in lapsed.categories:
            return Explanation(CATEGORY_NOT_GRANTED, [])
    return Explanation(DENY, [])


def address_hidden_for(user: Any, patient_id: uuid.UUID) -> bool:
    """Under a DV block (DV等支援措置) a person's address is hidden from
    everyone but the municipal staff who hold it."""
    from sharing.models import DvBlock

    if not DvBlock.objects.active().filter(patient_id=patient_id).exists():
        return False
    return not any(g.rule == "municipal" and _grant_reaches(g, patient_id) for g in _grants(user))


def redact_for(user: Any, resource: dict[str, Any]) -> dict[str, Any]:
    """The resource as this user may see it: a Patient's address removed
    when it is hidden from them."""
    if resource.get("resourceType") != "Patient" or "address" not in resource:
        return resource
    try:
        patient_id = uuid.UUID(str(resource.get("id")))
    except ValueError:
        return resource
    if not address_hidden_for(user, patient_id):
        return resource
    return {k: v for k, v in resource.items() if k != "address"}


RULE_REASONS = {
    "self": _("These are your own records."),
    "guardian": _("You are this child's guardian."),
    "municipal": _("Municipal duty: a resident, or records the municipality submitted."),
    "clinic_submitted": _("Records this clinic submitted."),
    "platform_admin": _("Platform administration."),
    "consent": _("The family consented to share these records with this organization."),
    "consent_person": _("The family consented to share these records with this person."),
    "break_glass": _("Emergency access (break-glass), reviewed afterwards."),
    "emergency_preference": _("The family lets emergency services see the emergency summary."),
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
    audit_reveal(
        user, [pid], categories=[category] if category else [], action=action, purpose=purpose
    )
    return patient


def audit_reveal(
    user: Any,
    patient_ids: Iterable[uuid.UUID],
    *,
    categories: Iterable[str] = (),
    action: str = "read",
    detail: dict[str, Any] | None = None,
    purpose: str | None = None,
) -> int:
    """One audit row per patient revealed by a response, naming the rule
    (role, organization, purpose, consent or break-glass) that allowed it."""
    cats = sorted(set(categories))
    entries = []
    for pid in dict.fromkeys(patient_ids):
        decision = decide(user, pid, purpose=purpose)
        why: dict[str, Any] = {"rule": decision.rule}
        if decision.consent_id is not None:
            why["consent"] = str(decision.consent_id)
        if decision.break_glass_id is not None:
            why["break_glass"] = decision.break_glass_id
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
                break_glass=decision.break_glass_id is not None,
                detail={**why, **(detail or {})},
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

