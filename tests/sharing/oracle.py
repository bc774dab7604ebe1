"""A second, deliberately simple statement of the access rules.

The access matrix and the hypothesis tests compare sharing/access.py with
this module. It reads the control and record rows as plain values (no
queryset helpers, nothing from sharing.access) and applies the rules of
ARCHITECTURE.md ("Access: one policy point") and the sharing issue with
loops and sets, so that a mistake would have to be made twice, in two
different ways, to go unnoticed.

The rules, as written here:

- self: an adult sees every record in her own compartment.
- guardian: an active guardian sees every record in the child's compartment.
- consent (purpose care): a clinic's staff (active membership, MFA) under
  an active consent naming their clinic, or the person the consent names,
  see the patient's records of the granted categories, and the patient's
  Patient resource. Research consents give nobody identified access.
- municipal: municipal staff (MFA) see their current residents' records
  and the records their municipality submitted, never `clinic_only` ones.
- clinic_submitted: clinic staff (MFA) see the records their clinic submitted.
- platform_admin: a platform administrator with MFA sees everything.
- emergency (prior emergency consent, the family's emergency preference,
  an open break-glass window): only the emergency dataset, and never in
  lists — only when the emergency purpose is asked for explicitly.
- a DV block cuts the blocked user off the patient, through every rule.
- staff (a membership, a platform admin or a superuser) without MFA get no
  staff rule; a consent naming them as a person still counts.
- an inactive user sees nothing; tombstones are never listed.

KNOWN_DEVIATIONS names where sharing/access.py answers differently today
(each pinned by an xfail(strict=True) test in test_access_properties.py).
`listable(..., mimic=KNOWN_DEVIATIONS)` reproduces them, so the property
tests stay green on everything else; when the lead fixes one, its strict
xfail test starts passing and fails the run, and the deviation is then
removed from this list.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from django.utils import timezone

CLINIC_STAFF = "clinic_staff"
MUNICIPAL_STAFF = "municipal_staff"
EMERGENCY_RESPONDER = "emergency_responder"

CARE = "care"
EMERGENCY = "emergency"
RESEARCH = "research"

CLINIC_ONLY = "clinic_only"

# The emergency summary (issue 3, part 4a): blood type, allergies and
# conditions, medicines, pregnancy status, risk flags — and who the person is.
EMERGENCY_CATEGORIES = frozenset({"pregnancy", "allergies_conditions", "medications"})
EMERGENCY_TYPES = frozenset({"Patient", "Flag"})
BLOOD_TYPE_TOKENS = frozenset(
    {"http://loinc.org|882-1", "http://loinc.org|883-9", "http://loinc.org|10331-7"}
)

# Where sharing/access.py differs from the rules above today (see the module doc).
# - municipal_ignores_dv_block: the municipal rule lists a blocked resident's
#   records to a blocked user who is municipal staff (decide() denies).
# - research_consent_to_person: a research-purpose consent naming a person
#   gives that person identified, listable access to the granted categories.
# - decide_no_mfa_denies_person_consent: decide() refuses a staff member
#   without MFA the patient a consent names them for as a person, although
#   visible_records() lists those records.
# - platform_admin_lists_nothing: the platform admin's "everything" grant
#   adds nothing to visible_records() (its filter is an empty Q(), which
#   Django drops when OR-ing it onto Q(pk__in=[])), so lists, searches and
#   reads show a platform admin nothing while decide() says yes.
# - consent_read_emergency_to_person: sharing/fhir.py lets the person an
#   emergency consent names read it as a FHIR Consent while it is in force;
#   its docstring (and this oracle) says emergency and research consents are
#   never listed to their grantees.
# - decide_submitter_ignores_category: decide(category=c) says yes for a
#   patient the user's organization submitted *any* record about, even when
#   none of them is of category c.
KNOWN_DEVIATIONS: frozenset[str] = frozenset()  # all fixed in sharing/access.py


@dataclass(frozen=True)
class Rec:
    id: uuid.UUID
    resource_type: str
    compartments: frozenset[uuid.UUID]
    category: str
    sensitivity: str
    deleted: bool
    agent_org_id: int | None
    tokens: frozenset[str]


@dataclass
class World:
    """The rows the rules read, as plain values."""

    now: datetime
    today: date
    users: dict[int, dict[str, Any]] = field(default_factory=dict)
    mfa: set[int] = field(default_factory=set)
    own_patient: dict[int, uuid.UUID] = field(default_factory=dict)  # account → patient
    patients: set[uuid.UUID] = field(default_factory=set)
    children: set[uuid.UUID] = field(default_factory=set)  # patients of kind "child"
    guardianships: list[dict[str, Any]] = field(default_factory=list)
    residencies: list[dict[str, Any]] = field(default_factory=list)
    memberships: list[dict[str, Any]] = field(default_factory=list)
    consents: list[dict[str, Any]] = field(default_factory=list)
    blocks: set[tuple[int, uuid.UUID]] = field(default_factory=set)  # (user, patient)
    break_glass: list[dict[str, Any]] = field(default_factory=list)
    emergency_opt_in: set[uuid.UUID] = field(default_factory=set)
    records: list[Rec] = field(default_factory=list)


def load_world() -> World:
    """Read every row the rules depend on (small test worlds only)."""
    from allauth.mfa.models import Authenticator

    from phr.models import (
        Guardianship,
        Membership,
        Patient,
        Provenance,
        Residency,
        Resource,
        User,
    )
    from sharing.models import BreakGlass, Consent, DvBlock, EmergencyPreference

    world = World(now=timezone.now(), today=timezone.localdate())
    for user in User.objects.values(
        "id", "is_active", "is_platform_admin", "is_superuser", "is_staff"
    ):
        world.users[user["id"]] = user
    world.mfa = set(Authenticator.objects.filter(type="totp").values_list("user_id", flat=True))
    for pid, account, kind in Patient.objects.values_list("id", "account_id", "kind"):
        world.patients.add(pid)
        if kind == "child":
            world.children.add(pid)
        if account is not None:
            world.own_patient[account] = pid
    world.guardianships = list(
        Guardianship.objects.values("guardian_id", "child_id", "valid_from", "valid_to")
    )
    world.residencies = list(
        Residency.objects.values("patient_id", "municipality_id", "valid_from", "valid_to")
    )
    world.memberships = list(
        Membership.objects.values("user_id", "organization_id", "role", "valid_from", "valid_to")
    )
    world.consents = list(
        Consent.objects.values(
            "id",
            "patient_id",
            "grantee_org_id",
            "grantee_user_id",
            "purpose",
            "categories",
            "starts_at",
            "ends_at",
            "revoked_at",
        )
    )
    world.blocks = {
        (b["blocked_user_id"], b["patient_id"])
        for b in DvBlock.objects.values("blocked_user_id", "patient_id", "lifted_at")
        if b["lifted_at"] is None
    }
    world.break_glass = list(
        BreakGlass.objects.values("responder_id", "patient_id", "starts_at", "ends_at")
    )
    world.emergency_opt_in = set(
        EmergencyPreference.objects.filter(share_summary=True).values_list("patient_id", flat=True)
    )
    agent_org = dict(Provenance.objects.values_list("id", "agent_org_id"))
    for row in Resource.objects.values(
        "id",
        "resource_type",
        "compartments",
        "category",
        "sensitivity",
        "deleted",
        "provenance_id",
        "tokens",
    ):
        world.records.append(
            Rec(
                id=row["id"],
                resource_type=row["resource_type"],
                compartments=frozenset(row["compartments"]),
                category=row["category"],
                sensitivity=row["sensitivity"],
                deleted=row["deleted"],
                agent_org_id=agent_org.get(row["provenance_id"]),
                tokens=frozenset(row["tokens"]),
            )
        )
    return world


# --------------------------------------------------------------------------
# Facts about a user
# --------------------------------------------------------------------------


def _in_period(today: date, valid_from: date, valid_to: date | None) -> bool:
    return valid_from <= today and (valid_to is None or valid_to >= today)


def _active_consent(world: World, consent: dict[str, Any]) -> bool:
    return (
        consent["revoked_at"] is None
        and consent["starts_at"] <= world.now
        and (consent["ends_at"] is None or consent["ends_at"] > world.now)
    )


def _is_active(world: World, user_id: int) -> bool:
    user = world.users.get(user_id)
    return bool(user and user["is_active"])


def _roles(world: World, user_id: int) -> list[tuple[int, str]]:
    """(organization, role) of the user's memberships in force today."""
    return [
        (m["organization_id"], m["role"])
        for m in world.memberships
        if m["user_id"] == user_id and _in_period(world.today, m["valid_from"], m["valid_to"])
    ]


def _is_staff(world: World, user_id: int) -> bool:
    user = world.users[user_id]
    return bool(
        user["is_platform_admin"]
        or user["is_superuser"]
        or user.get("is_staff")
        or _roles(world, user_id)
    )


def _staff_with_mfa(world: World, user_id: int) -> bool:
    return _is_staff(world, user_id) and user_id in world.mfa


def _orgs(world: World, user_id: int, role: str) -> set[int]:
    if not _staff_with_mfa(world, user_id):
        return set()
    return {org for org, r in _roles(world, user_id) if r == role}


def _blocked(world: World, user_id: int, patient_id: uuid.UUID) -> bool:
    return (user_id, patient_id) in world.blocks


def _children(world: World, user_id: int) -> set[uuid.UUID]:
    return {
        g["child_id"]
        for g in world.guardianships
        if g["guardian_id"] == user_id and _in_period(world.today, g["valid_from"], g["valid_to"])
    }


def _residents(world: World, municipality_id: int) -> set[uuid.UUID]:
    return {
        r["patient_id"]
        for r in world.residencies
        if r["municipality_id"] == municipality_id
        and _in_period(world.today, r["valid_from"], r["valid_to"])
    }


def _consents_for(world: World, user_id: int, purposes: Iterable[str]) -> list[dict[str, Any]]:
    """Active consents of these purposes naming the user as a person, or
    naming an organization where the user holds the role the purpose needs."""
    wanted = set(purposes)
    # The organizations whose consents reach this user, per purpose.
    reached_through = {
        CARE: _orgs(world, user_id, CLINIC_STAFF),
        EMERGENCY: _orgs(world, user_id, EMERGENCY_RESPONDER),
    }
    found = []
    for consent in world.consents:
        if consent["purpose"] not in wanted or not _active_consent(world, consent):
            continue
        named = consent["grantee_user_id"] == user_id
        through_org = consent["grantee_org_id"] in reached_through.get(consent["purpose"], set())
        if named or through_org:
            found.append(consent)
    return found


# --------------------------------------------------------------------------
# The answers
# --------------------------------------------------------------------------


def _org_consents_for(world: World, user_id: int, purposes: Iterable[str]) -> list[dict[str, Any]]:
    """Consents naming the user's organization: a person is only ever a
    care grantee, so emergency and research consents count through an
    organization alone."""
    return [c for c in _consents_for(world, user_id, purposes) if c["grantee_user_id"] != user_id]


def _listable_rule_hits(world: World, user_id: int, rec: Rec, mimic: frozenset[str]) -> bool:
    """May the user see this record in lists, by some listable rule?"""
    patients = rec.compartments
    unblocked = {p for p in patients if not _blocked(world, user_id, p)}
    # self
    own = world.own_patient.get(user_id)
    if own is not None and own in patients:
        return True
    # guardian
    if _children(world, user_id) & unblocked:
        return True
    # consent, care purpose (and, as a known deviation, research to a person)
    purposes = [CARE, RESEARCH] if "research_consent_to_person" in mimic else [CARE]
    for consent in _consents_for(world, user_id, purposes):
        if consent["purpose"] == RESEARCH and consent["grantee_user_id"] != user_id:
            continue
        if consent["patient_id"] not in unblocked:
            continue
        if rec.resource_type == "Patient" or rec.category in consent["categories"]:
            return True
    # municipal
    if rec.sensitivity != CLINIC_ONLY:
        ignore_blocks = "municipal_ignores_dv_block" in mimic
        reach = patients if ignore_blocks else unblocked
        for municipality in _orgs(world, user_id, MUNICIPAL_STAFF):
            if rec.agent_org_id == municipality and (ignore_blocks or patients == unblocked):
                return True
            if _residents(world, municipality) & reach:
                return True
    # clinic_submitted
    if rec.agent_org_id in _orgs(world, user_id, CLINIC_STAFF) and patients == unblocked:
        return True
    # platform_admin
    if "platform_admin_lists_nothing" in mimic:
        return False
    # platform_admin: everything, but a DV block cuts off an admin too
    user = world.users[user_id]
    return bool(
        user["is_platform_admin"] and _staff_with_mfa(world, user_id) and patients == unblocked
    )


def listable(
    world: World,
    user_id: int | None,
    *,
    include_deleted: bool = False,
    mimic: frozenset[str] = frozenset(),
) -> set[uuid.UUID]:
    """The ids of the records the user may see in lists and searches (no
    emergency access). Tombstones only with include_deleted (a FHIR read
    answers 410 to those who could see the record)."""
    if user_id is None or not _is_active(world, user_id):
        return set()
    return {
        rec.id
        for rec in world.records
        if (include_deleted or not rec.deleted) and _listable_rule_hits(world, user_id, rec, mimic)
    }


def _in_emergency_scope(rec: Rec) -> bool:
    return (
        rec.category in EMERGENCY_CATEGORIES
        or rec.resource_type in EMERGENCY_TYPES
        or bool(rec.tokens & BLOOD_TYPE_TOKENS)
    )


def emergency_patients(world: World, user_id: int | None) -> set[uuid.UUID]:
    """Patients whose emergency summary the user may open for the emergency
    purpose: an open break-glass window of hers or the family's opt-in (a
    responder with MFA), or an emergency consent in force naming her or
    her emergency service; never a patient she is DV-blocked from."""
    if user_id is None or not _is_active(world, user_id):
        return set()
    found: set[uuid.UUID] = set()
    if _orgs(world, user_id, EMERGENCY_RESPONDER):
        for window in world.break_glass:
            if window["responder_id"] == user_id and (
                window["starts_at"] <= world.now < window["ends_at"]
            ):
                found.add(window["patient_id"])
        found |= world.emergency_opt_in
    found |= {c["patient_id"] for c in _org_consents_for(world, user_id, [EMERGENCY])}
    return {p for p in found if not _blocked(world, user_id, p)}


def emergency_summary_reach(
    world: World, user_id: int | None, patient_id: uuid.UUID
) -> set[uuid.UUID] | None:
    """The records an emergency summary of the patient may show the user:
    her emergency reach, or (the patient herself, a guardian) the emergency
    dataset of what she sees anyway; None when she may not open it."""
    if user_id is None:
        return None
    personal = world.own_patient.get(user_id) == patient_id or (
        patient_id in _children(world, user_id) and not _blocked(world, user_id, patient_id)
    )
    if patient_id in emergency_patients(world, user_id):
        reach = emergency_visible(world, user_id)
    elif personal and _is_active(world, user_id):
        listed = listable(world, user_id)
        reach = {r.id for r in world.records if r.id in listed and _in_emergency_scope(r)}
    else:
        return None
    return {r.id for r in world.records if r.id in reach and patient_id in r.compartments}


def emergency_visible(world: World, user_id: int) -> set[uuid.UUID]:
    """What the user may read for purpose "emergency": the emergency dataset
    of patients with an open break-glass window of theirs, of patients whose
    family opted in, and under emergency consents (granted categories)."""
    if not _is_active(world, user_id):
        return set()
    whole: set[uuid.UUID] = set()  # patients whose whole emergency dataset is open
    if _orgs(world, user_id, EMERGENCY_RESPONDER):
        for window in world.break_glass:
            if window["responder_id"] == user_id and (
                window["starts_at"] <= world.now < window["ends_at"]
            ):
                whole.add(window["patient_id"])
        whole |= world.emergency_opt_in
    by_consent: list[tuple[uuid.UUID, set[str]]] = [
        (c["patient_id"], set(c["categories"]))
        for c in _org_consents_for(world, user_id, [EMERGENCY])
    ]
    seen = set()
    for rec in world.records:
        if rec.deleted or not _in_emergency_scope(rec):
            continue
        patients = {p for p in rec.compartments if not _blocked(world, user_id, p)}
        if patients & whole:
            seen.add(rec.id)
            continue
        for patient, categories in by_consent:
            if patient in patients and (
                rec.resource_type == "Patient" or rec.category in categories
            ):
                seen.add(rec.id)
    return seen


def may_see(
    world: World,
    user_id: int | None,
    patient_id: uuid.UUID,
    *,
    category: str | None = None,
    mimic: frozenset[str] = frozenset(),
) -> bool:
    """decide(user, patient, category=…) with no purpose: may the user see
    this patient (category None) or this patient's records of `category`,
    by a listable rule?"""
    if user_id is None or not _is_active(world, user_id):
        return False
    if _blocked(world, user_id, patient_id):
        return False
    if world.own_patient.get(user_id) == patient_id:
        return True
    if patient_id in _children(world, user_id):
        return True
    staff_without_mfa = _is_staff(world, user_id) and user_id not in world.mfa
    person_consents_count = not (
        staff_without_mfa and "decide_no_mfa_denies_person_consent" in mimic
    )
    purposes = [CARE, RESEARCH] if "research_consent_to_person" in mimic else [CARE]
    for consent in _consents_for(world, user_id, purposes):
        if consent["purpose"] == RESEARCH and consent["grantee_user_id"] != user_id:
            continue
        if consent["grantee_user_id"] == user_id and not person_consents_count:
            continue
        if consent["patient_id"] == patient_id and (
            category is None or category in consent["categories"]
        ):
            return True
    municipalities = _orgs(world, user_id, MUNICIPAL_STAFF)
    if any(patient_id in _residents(world, m) for m in municipalities):
        return True
    # Records their own organization submitted: the patient is reachable
    # when there is such a record (of that category, when one is asked).
    submitters = municipalities | _orgs(world, user_id, CLINIC_STAFF)
    ignore_category = "decide_submitter_ignores_category" in mimic
    for rec in world.records:
        if rec.deleted or patient_id not in rec.compartments:
            continue
        if rec.agent_org_id not in submitters:
            continue
        if rec.sensitivity == CLINIC_ONLY and rec.agent_org_id in municipalities:
            continue
        if category is None or ignore_category or rec.category == category:
            return True
    user = world.users[user_id]
    return bool(user["is_platform_admin"] and _staff_with_mfa(world, user_id))


def decides_for(world: World, user_id: int | None) -> set[uuid.UUID]:
    """The patients whose sharing the user manages: her own record, and the
    children she is an active guardian of (unless DV-blocked from them)."""
    if user_id is None or not _is_active(world, user_id):
        return set()
    own = world.own_patient.get(user_id)
    children = {
        c
        for c in _children(world, user_id)
        if c in world.children and not _blocked(world, user_id, c)
    }
    return ({own} if own is not None else set()) | children


def readable_consents(
    world: World, user_id: int | None, *, mimic: frozenset[str] = frozenset()
) -> set[uuid.UUID]:
    """The Consent rows the user may read through the FHIR API: every
    consent of the people she decides for, in any status; and, while in
    force, the care consents naming her or her clinic (clinic staff with
    MFA) — never emergency or research consents, which give their grantees
    no listable access."""
    if user_id is None or not _is_active(world, user_id):
        return set()
    mine = decides_for(world, user_id)
    in_force_for_me = [c["id"] for c in _consents_for(world, user_id, [CARE])]
    if "consent_read_emergency_to_person" in mimic:
        in_force_for_me += [
            c["id"]
            for c in _org_consents_for(world, user_id, [EMERGENCY])
            if c["grantee_user_id"] == user_id
        ]
    return {
        c["id"]
        for c in world.consents
        if not _blocked(world, user_id, c["patient_id"])
        and (c["patient_id"] in mine or c["id"] in in_force_for_me)
    }


def consented_patients(world: World, user_id: int | None) -> set[uuid.UUID]:
    """Patients whose care consents in force name the user, or her clinic
    (clinic staff with MFA): "shared with me"."""
    if user_id is None or not _is_active(world, user_id):
        return set()
    return {
        c["patient_id"]
        for c in _consents_for(world, user_id, [CARE])
        if not _blocked(world, user_id, c["patient_id"])
    }
