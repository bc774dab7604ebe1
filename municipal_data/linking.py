"""Family link codes: municipal staff issue a code per family (a printed
letter with a QR code, handed out e.g. with the MCH handbook); a parent
enters it with a child's birth date and her account is linked to the
mother's and the children's records, which the municipality uploaded
before any account existed (issue: municipal data, part 5).

- A code is 16 characters from a 32-symbol alphabet without 0/O/1/I
  (5 bits each: 80 bits from `secrets`), printed in four groups
  (XXXX-XXXX-XXXX-XXXX). Only the SHA-256 of the normalised code is
  stored; the code exists on the letter only. What people type is
  normalised first (NFKC, so full-width characters count; upper case; no
  spaces or dashes of any kind).
- The family is the mother and her children in the municipal register
  (MotherChild), or one child alone when the mother is unknown. The
  second factor is a child's birth date; a family with no child yet (a
  pregnancy) answers with the mother's birth date instead.
- Redeeming as the mother links the account to the mother's record (a
  record the user made herself is merged into it with
  phr.identity.patient_merge) and makes her the guardian of each child.
  Redeeming as another guardian (a father, a partner) gives the
  children only: an adult's records are hers.
- Self-made records of the same child (same birth date, no residency)
  are merged into the municipal one, so the family has one record each.
- A code is single-use, expires (LINK_CODE_DAYS), and locks after
  LinkCode.MAX_FAILURES wrong attempts; the view rate-limits attempts per
  account and per address. Every attempt is audited.
- Against enumeration a person learns only "the code or the birth date is
  not right" or "this code can no longer be used": a missing code, a
  wrong birth date and a DV-blocked guardian (DV等支援措置) look alike.
"""

from __future__ import annotations

import hashlib
import secrets
import unicodedata
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import F
from django.http import Http404
from django.utils import timezone
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _

from municipal_data.models import LinkCode, MotherChild
from phr.audit import AuditEntry, audit_write, audit_write_many
from phr.identity import patient_merge
from phr.models import (
    Guardianship,
    Organization,
    Patient,
    PatientLink,
    Residency,
    Resource,
    Role,
    User,
)
from phr.roles import has_mfa, organizations_for
from phr.selectors import person_name
from phr.services import guardianship_add
from sharing.access import Purpose, blocked_patients, forget_grants, visible_records

# 32 symbols (5 bits each), none that reads like another: no 0/O, no 1/I.
ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
CODE_LENGTH = 16  # 80 bits
GROUP_LENGTH = 4
# What people type between groups: spaces, and every dash a Japanese
# keyboard makes (NFKC turns the full-width ones into these).
_SEPARATORS = str.maketrans(dict.fromkeys(" \t\r\n-‐‑‒–—―−ー─_.・", ""))

ROLE_MOTHER = "mother"
ROLE_GUARDIAN = "guardian"
ROLES = (ROLE_MOTHER, ROLE_GUARDIAN)

# What a person is told. A guesser learns no more than these two: a
# missing code, a wrong birth date and a DV-blocked guardian all read
# WRONG; used, revoked, expired and locked codes all read UNUSABLE.
WRONG = _("The code or the birth date is not right. Check the letter and try again.")
UNUSABLE = _(
    "This code can no longer be used: it has expired, was already used or was locked "
    "after too many attempts. Ask your municipality for a new code."
)
# These come only after the code and the birth date were both right.
TAKEN = _(
    "The mother's records are already linked to another account. If that is not your "
    "account, contact your municipality."
)
CONFLICT = _(
    "Your account already has a health record of its own that does not match the "
    "municipality's record (for example another birth date). Contact your municipality "
    "to have the two records checked."
)
NO_CHILD = _(
    "There is no child's record to link with this code yet: during the pregnancy only "
    "the mother can use it."
)


class LinkCodeError(Exception):
    """A redemption was refused; `message` is what the person may read."""

    def __init__(self, message: Promise | str) -> None:
        super().__init__(str(message))
        self.message = message


# --------------------------------------------------------------------------
# Codes
# --------------------------------------------------------------------------


def code_generate() -> str:
    """A new code, normalised (no separators)."""
    return "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))


def code_normalise(text: str) -> str:
    """A code as typed → as generated: NFKC (full-width letters and digits
    become ASCII), no spaces or dashes, upper case."""
    folded = unicodedata.normalize("NFKC", text or "")
    return folded.translate(_SEPARATORS).upper()


def code_display(code: str) -> str:
    """XXXX-XXXX-XXXX-XXXX."""
    normalised = code_normalise(code)
    return "-".join(
        normalised[i : i + GROUP_LENGTH] for i in range(0, len(normalised), GROUP_LENGTH)
    )


def code_hash(code: str) -> str:
    return hashlib.sha256(code_normalise(code).encode("ascii", "replace")).hexdigest()


def _well_formed(normalised: str) -> bool:
    return len(normalised) == CODE_LENGTH and all(c in ALPHABET for c in normalised)


# --------------------------------------------------------------------------
# Families
# --------------------------------------------------------------------------


def _survivor(patient: Patient) -> Patient:
    """The record a merged patient was folded into (or the patient)."""
    while patient.merged_into_id is not None:
        patient = patient.merged_into  # type: ignore[assignment]
    return patient


@dataclass(frozen=True)
class CodeFamily:
    """Whom a code links: the mother (None when unknown) and the children."""

    mother: Patient | None
    children: tuple[Patient, ...]

    @property
    def patients(self) -> list[Patient]:
        return ([self.mother] if self.mother else []) + list(self.children)

    @property
    def ids(self) -> list[uuid.UUID]:
        return [p.pk for p in self.patients]


def link_code_family(link: LinkCode) -> CodeFamily:
    """The mother and her children in the register (any municipality: a
    family that moved keeps its children), plus the code's child."""
    mother = _survivor(link.mother) if link.mother is not None else None
    child_ids: list[uuid.UUID] = []
    if mother is not None:
        mothers = {link.mother_id, mother.pk}
        child_ids += MotherChild.objects.filter(mother_id__in=mothers).values_list(
            "child_id", flat=True
        )
    if link.child_id is not None:
        child_ids.append(link.child_id)
    children: dict[uuid.UUID, Patient] = {}
    for patient in Patient.objects.filter(pk__in=child_ids).order_by("created_at"):
        survivor = _survivor(patient)
        children.setdefault(survivor.pk, survivor)
    return CodeFamily(mother=mother, children=tuple(children.values()))


def _patient_contents(ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    rows = Resource.objects.filter(resource_type="Patient", id__in=ids, deleted=False)
    return dict(rows.values_list("id", "content"))


def _birth_date(content: dict[str, Any] | None) -> date | None:
    text = (content or {}).get("birthDate")
    if not isinstance(text, str) or len(text) != 10:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _birth_date_matches(
    family: CodeFamily, contents: dict[uuid.UUID, dict[str, Any]], answer: date
) -> bool:
    """A child's birth date; for a family with no child yet (a pregnancy),
    the mother's."""
    people = family.children or ((family.mother,) if family.mother else ())
    return any(_birth_date(contents.get(p.pk)) == answer for p in people)


# --------------------------------------------------------------------------
# Staff: issue and revoke
# --------------------------------------------------------------------------


def staff_municipalities(user: Any) -> list[Organization]:
    """The municipalities whose link codes this user manages: an active
    municipal staff membership, and MFA (like every staff grant)."""
    if not has_mfa(user):
        return []
    return sorted(organizations_for(user, Role.MUNICIPAL_STAFF), key=lambda o: (o.name, o.pk))


def _staff_of(user: Any, municipality: Organization) -> None:
    if municipality.pk not in {m.pk for m in staff_municipalities(user)}:
        raise PermissionDenied


def _is_resident(patient: Patient, municipality: Organization) -> bool:
    return Residency.objects.current().filter(patient=patient, municipality=municipality).exists()


def resident_find(*, municipality: Organization, resident_number: str) -> Patient | None:
    """The current resident with this 宛名番号 (as typed: full-width digits
    and spaces are fine), or None."""
    number = "".join(unicodedata.normalize("NFKC", resident_number or "").split())
    if not number:
        return None
    residency = (
        Residency.objects.current()
        .filter(municipality=municipality, resident_number=number)
        .select_related("patient")
        .first()
    )
    return _survivor(residency.patient) if residency is not None else None


def registered_mother(child: Patient) -> Patient | None:
    """The child's mother in the municipal register, if known."""
    link = MotherChild.objects.filter(child=child).select_related("mother").first()
    return _survivor(link.mother) if link is not None else None


@transaction.atomic
def link_code_issue(
    *,
    municipality: Organization,
    mother: Patient | None = None,
    child: Patient | None = None,
    by: User,
) -> tuple[LinkCode, str]:
    """A new code for a family of `municipality`'s residents: returns the
    row and the code (grouped for the letter), which is shown once and
    never stored. For a child whose mother the register knows (and who
    lives here too), the code is the whole family's."""
    _staff_of(by, municipality)
    if mother is None and child is None:
        raise ValidationError(_("Choose the mother or a child."))
    if child is not None:
        if child.kind != Patient.Kind.CHILD:
            raise ValidationError(_("This person is not registered as a child."))
        if mother is None:
            known = registered_mother(child)
            if known is not None and _is_resident(known, municipality):
                mother = known
    if mother is not None and mother.kind == Patient.Kind.CHILD:
        raise ValidationError(_("This person is registered as a child."))
    for person in (mother, child):
        if person is not None and not _is_resident(person, municipality):
            raise ValidationError(_("This person is not a current resident of the municipality."))
    code = code_generate()
    now = timezone.now()
    link = LinkCode.objects.create(
        municipality=municipality,
        mother=mother,
        child=child,
        code_hash=code_hash(code),
        prefix=code[:GROUP_LENGTH],
        issued_by=by,
        issued_at=now,
        expires_at=now + timedelta(days=settings.LINK_CODE_DAYS),
    )
    subject = mother or child
    assert subject is not None
    audit_write(
        action="link_code.issue",
        actor_id=by.pk,
        actor_role=Role.MUNICIPAL_STAFF,
        organization_id=municipality.pk,
        patient_id=subject.pk,
        purpose=Purpose.PUBLIC_HEALTH,
        detail={"link_code": link.pk},
    )
    return link, code_display(code)


@transaction.atomic
def link_code_revoke(*, link_code: LinkCode, by: User) -> LinkCode:
    """Staff withdraw a code (a lost letter, a family that asks). Revoking
    twice changes nothing."""
    _staff_of(by, link_code.municipality)
    if link_code.revoked_at is not None:
        return link_code
    link_code.revoked_at = timezone.now()
    link_code.revoked_by = by
    link_code.save(update_fields=["revoked_at", "revoked_by"])
    audit_write(
        action="link_code.revoke",
        actor_id=by.pk,
        actor_role=Role.MUNICIPAL_STAFF,
        organization_id=link_code.municipality_id,
        patient_id=link_code.mother_id or link_code.child_id,
        purpose=Purpose.PUBLIC_HEALTH,
        detail={"link_code": link_code.pk},
    )
    return link_code


# --------------------------------------------------------------------------
# Staff: reads
# --------------------------------------------------------------------------


def staff_link_code(*, user: Any, link_code_id: Any) -> LinkCode:
    """One code of the user's municipalities, or Http404 (missing and not
    theirs look the same)."""
    try:
        pk = int(str(link_code_id))
    except ValueError:
        raise Http404 from None
    municipalities = [m.pk for m in staff_municipalities(user)]
    link = (
        LinkCode.objects.filter(pk=pk, municipality_id__in=municipalities)
        .select_related("municipality")
        .first()
    )
    if link is None:
        raise Http404
    return link


@dataclass(frozen=True)
class FamilyMember:
    patient_id: uuid.UUID
    role: str  # "mother" or "child"
    name: str  # "" when staff may not see this person (moved away)
    resident_number: str


@dataclass
class StaffRow:
    link: LinkCode
    status: str
    members: list[FamilyMember] = field(default_factory=list)


def staff_link_codes(
    *, user: Any, municipality: Organization, prefix: str = "", limit: int = 200
) -> tuple[list[StaffRow], list[uuid.UUID]]:
    """The municipality's codes, newest first, with the family as far as the
    policy point lets the user see it (names from the records
    sharing.access makes visible: current residents). Returns the rows and
    the ids of the people named, for the caller's audit row."""
    _staff_of(user, municipality)
    municipalities = [municipality.pk]
    codes = LinkCode.objects.filter(municipality_id__in=municipalities).select_related(
        "mother", "child", "issued_by"
    )
    wanted = code_normalise(prefix)[:GROUP_LENGTH]
    if wanted:
        codes = codes.filter(prefix__startswith=wanted)
    links = list(codes.order_by("-issued_at", "-pk")[:limit])
    families = {link.pk: link_code_family(link) for link in links}
    ids = {pid for family in families.values() for pid in family.ids}
    visible = dict(
        Resource.objects.filter(
            visible_records(user), resource_type="Patient", id__in=list(ids)
        ).values_list("id", "content")
    )
    numbers: dict[tuple[uuid.UUID, int], str] = {}
    for patient_id, municipality_id, number in (
        Residency.objects.current()
        .filter(patient_id__in=list(visible), municipality_id__in=municipalities)
        .values_list("patient_id", "municipality_id", "resident_number")
    ):
        numbers[(patient_id, municipality_id)] = number
    now = timezone.now()
    rows = []
    named: list[uuid.UUID] = []
    for link in links:
        row = StaffRow(link=link, status=link.status_at(now))
        family = families[link.pk]
        for patient in family.patients:
            role = "mother" if patient is family.mother else "child"
            content = visible.get(patient.pk)
            if content is not None:
                named.append(patient.pk)
            row.members.append(
                FamilyMember(
                    patient_id=patient.pk,
                    role=role,
                    name=person_name(content) if content is not None else "",
                    resident_number=numbers.get((patient.pk, link.municipality_id), "")
                    if content is not None
                    else "",
                )
            )
        rows.append(row)
    return rows, list(dict.fromkeys(named))


def letter_family(*, user: Any, link: LinkCode) -> list[FamilyMember]:
    """The names on the letter: the family as staff may see it."""
    family = link_code_family(link)
    visible = dict(
        Resource.objects.filter(
            visible_records(user), resource_type="Patient", id__in=family.ids
        ).values_list("id", "content")
    )
    return [
        FamilyMember(
            patient_id=p.pk,
            role="mother" if p is family.mother else "child",
            name=person_name(visible[p.pk]),
            resident_number="",
        )
        for p in family.patients
        if p.pk in visible
    ]


# --------------------------------------------------------------------------
# Parents: redeem
# --------------------------------------------------------------------------


@dataclass
class LinkResult:
    link: LinkCode
    mother: Patient | None  # the user's own record now, when she redeemed as the mother
    children: list[Patient]
    merged: list[PatientLink]


class _Refusal(Exception):
    def __init__(
        self, reason: str, message: Promise, link: LinkCode | None, *, counts: bool = True
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.message = message
        self.link = link
        # A wrong guess counts towards the lock; a refusal that comes after
        # the code and the birth date were right (taken, conflict) does not.
        self.counts = counts


def _has_residency(patient: Patient) -> bool:
    return Residency.objects.filter(patient=patient).exists()


def _self_made(patient: Patient) -> bool:
    """A record a parent made by hand: no residency anywhere, not in the
    municipal register, not merged."""
    return (
        patient.merged_into_id is None
        and not _has_residency(patient)
        and not MotherChild.objects.filter(child=patient).exists()
        and not MotherChild.objects.filter(mother=patient).exists()
    )


def _differs(mine: dict[str, Any] | None, theirs: dict[str, Any] | None) -> bool:
    """Both records say something different about who the person is."""
    for key in ("birthDate", "gender"):
        a, b = (mine or {}).get(key), (theirs or {}).get(key)
        if a and b and a != b:
            return True
    return False


def _link_mother(user: User, mother: Patient, link: LinkCode) -> list[PatientLink]:
    """Make the municipal mother record the user's own, merging a record she
    made herself into it."""
    if mother.account_id not in (None, user.pk):
        raise _Refusal("taken", TAKEN, link, counts=False)
    own = Patient.objects.filter(account=user).first()
    merged = []
    if own is not None and own.pk != mother.pk:
        contents = _patient_contents([own.pk, mother.pk])
        if not _self_made(own) or _differs(contents.get(own.pk), contents.get(mother.pk)):
            raise _Refusal("conflict", CONFLICT, link, counts=False)
        merged.append(
            patient_merge(
                survivor=mother, merged=own, by=user, reason=f"link code {link.pk}: her own record"
            )
        )
        # One account, one own record (Patient.account is one-to-one).
        own.account = None
        own.save(update_fields=["account"])
    if mother.account_id is None:
        mother.account = user
        mother.save(update_fields=["account"])
    return merged


def _merge_own_children(
    user: User, family: CodeFamily, link: LinkCode, role: str
) -> list[PatientLink]:
    """Fold the children the user recorded by hand into the municipal
    records of the same children: one per birth date on both sides (twins
    stay apart), and only when sex does not disagree. Every guardian of the
    hand-made record follows it (_move_guardianships)."""
    children = family.children
    family_ids = {c.pk for c in children}
    own_children = [
        g.child
        for g in Guardianship.objects.active().filter(guardian=user).select_related("child")
        if g.child_id not in family_ids
        and g.child.kind == Patient.Kind.CHILD
        and _self_made(g.child)
    ]
    if not own_children:
        return []
    contents = _patient_contents([c.pk for c in own_children] + list(family_ids))
    mine: dict[date, list[Patient]] = defaultdict(list)
    theirs: dict[date, list[Patient]] = defaultdict(list)
    for child in dict.fromkeys(own_children):
        born = _birth_date(contents.get(child.pk))
        if born is not None:
            mine[born].append(child)
    for child in children:
        born = _birth_date(contents.get(child.pk))
        if born is not None:
            theirs[born].append(child)
    merged = []
    for born, own in mine.items():
        municipal = theirs.get(born, [])
        if len(own) != 1 or len(municipal) != 1:
            continue
        duplicate, survivor = own[0], municipal[0]
        if _differs(contents.get(duplicate.pk), contents.get(survivor.pk)):
            continue
        merged.append(
            patient_merge(
                survivor=survivor,
                merged=duplicate,
                by=user,
                reason=f"link code {link.pk}: the same child recorded by the family",
            )
        )
        _move_guardianships(user, family, link, role, duplicate=duplicate, survivor=survivor)
    return merged


def _move_guardianships(
    user: User,
    family: CodeFamily,
    link: LinkCode,
    role: str,
    *,
    duplicate: Patient,
    survivor: Patient,
) -> None:
    """The guardianships of a hand-made child move with its records to the
    municipal record. Each came from the family's own acts (adding the
    child, inviting a guardian), so every guardian follows — except one
    DV-blocked (DV等支援措置) from anyone of the code's family or from the
    child: the block hides the person through every channel, and a moved
    guardianship would open the municipal record the day it is lifted. That
    row stays on the merged record, whose records have all moved. A guardian
    who already has the municipal record keeps that row, and the other goes
    (one row per guardian and child). Audited like the redeemer's own
    linking, one row per guardian, by the person who redeemed."""
    protected = {*family.ids, duplicate.pk, survivor.pk}
    rows = list(
        Guardianship.objects.active()
        .filter(child=duplicate)
        .select_related("guardian")
        .order_by("pk")
    )
    entries = []
    for row in rows:
        guardian = row.guardian
        detail: dict[str, Any] = {
            "link_code": link.pk,
            "role": role,
            "guardian": guardian.pk,
            "merged": str(duplicate.pk),
        }
        if guardian.pk != user.pk and protected & set(blocked_patients(guardian)):
            # The redeemer herself was checked before anything was linked.
            entries.append(
                AuditEntry(
                    action="link_code.redeem",
                    outcome="denied",
                    actor_id=user.pk,
                    actor_role="guardian",
                    patient_id=survivor.pk,
                    purpose=Purpose.PERSONAL,
                    detail={**detail, "reason": "dv_block", "rule": "dv_block"},
                )
            )
            continue
        on_survivor = Guardianship.objects.filter(guardian=guardian, child=survivor)
        # Her row of the municipal record today, or else one that starts the
        # same day (ended since): the two rows become one, lasting as long
        # as the longer of them.
        existing = (
            on_survivor.active().order_by("valid_from", "pk").first()
            or on_survivor.filter(valid_from=row.valid_from).first()
        )
        if existing is not None:
            if existing.valid_to is not None and (
                row.valid_to is None or row.valid_to > existing.valid_to
            ):
                existing.valid_to = row.valid_to
                existing.save(update_fields=["valid_to"])
            row.delete()
            detail.update(guardianship=existing.pk, moved=False)
        else:
            row.child = survivor
            row.save(update_fields=["child"])
            detail.update(guardianship=row.pk, moved=True)
        entries.append(
            AuditEntry(
                action="link_code.redeem",
                actor_id=user.pk,
                actor_role="guardian",
                patient_id=survivor.pk,
                purpose=Purpose.PERSONAL,
                detail=detail,
            )
        )
    audit_write_many(entries)


def _refuse(user: User, refusal: _Refusal) -> None:
    """Count the failure on the code and audit it; runs after the redemption's
    transaction rolled back, so both stay."""
    link = refusal.link
    detail: dict[str, Any] = {"reason": refusal.reason}
    if refusal.reason == "dv_block":
        detail["rule"] = "dv_block"
    if link is not None:
        detail["link_code"] = link.pk
        if refusal.counts:
            LinkCode.objects.filter(pk=link.pk).update(failed_attempts=F("failed_attempts") + 1)
            attempts = LinkCode.objects.filter(pk=link.pk).values_list(
                "failed_attempts", flat=True
            )[0]
            detail["failed_attempts"] = attempts
            if attempts == LinkCode.MAX_FAILURES:
                detail["locked"] = True
    audit_write(
        action="link_code.redeem",
        outcome="denied",
        actor_id=user.pk,
        patient_id=(link.mother_id or link.child_id) if link is not None else None,
        purpose=Purpose.PERSONAL,
        detail=detail,
    )


def link_code_redeem(
    *,
    user: User,
    code: str,
    child_birth_date: date,
    role: str = ROLE_MOTHER,
    relationship: str = Guardianship.Relationship.OTHER,
) -> LinkResult:
    """Link `user` to the family of `code` (see the module doc), or raise
    LinkCodeError with what the person may read. A failure is counted on
    the code and audited even though the linking itself rolls back: call
    this outside a transaction of your own."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    if role == ROLE_MOTHER:
        relationship = Guardianship.Relationship.MOTHER
    elif relationship not in (Guardianship.Relationship.FATHER, Guardianship.Relationship.OTHER):
        # Only the mother's role makes a guardian "mother".
        raise ValueError("another guardian is the father or an other guardian")
    normalised = code_normalise(code)
    digest = code_hash(normalised)
    try:
        with transaction.atomic():
            link = (
                LinkCode.objects.select_for_update().filter(code_hash=digest).first()
                if _well_formed(normalised)
                else None
            )
            # The lookup is by hash; compare again in constant time anyway.
            if link is None or not secrets.compare_digest(link.code_hash, digest):
                raise _Refusal("not_found", WRONG, None)
            result = _redeem(user, link, child_birth_date, role, relationship)
    except _Refusal as refusal:
        _refuse(user, refusal)
        raise LinkCodeError(refusal.message) from None
    forget_grants(user)
    return result


def _redeem(user: User, link: LinkCode, answer: date, role: str, relationship: str) -> LinkResult:
    now = timezone.now()
    status = link.status_at(now)
    if status != LinkCode.Status.ACTIVE:
        raise _Refusal(status, UNUSABLE, link)
    family = link_code_family(link)
    # DV等支援措置: a blocked person learns nothing, not even that the code
    # and the birth date were right.
    if set(blocked_patients(user)) & set(family.ids):
        raise _Refusal("dv_block", WRONG, link)
    if not _birth_date_matches(family, _patient_contents(family.ids), answer):
        raise _Refusal("birth_date", WRONG, link)
    if role == ROLE_GUARDIAN and not family.children:
        raise _Refusal("no_child", NO_CHILD, link, counts=False)
    merged: list[PatientLink] = []
    mother = None
    if role == ROLE_MOTHER and family.mother is not None:
        merged += _link_mother(user, family.mother, link)
        mother = family.mother
    merged += _merge_own_children(user, family, link, role)
    current = Guardianship.objects.active().filter(guardian=user, child__in=family.children)
    if role == ROLE_MOTHER:
        # The code made her the mother of record: a row she wrote herself
        # as "other guardian" says so too now.
        current.exclude(relationship=relationship).update(relationship=relationship)
    already = set(current.values_list("child_id", flat=True))
    for child in family.children:
        # A guardian already (an earlier code, or her own record's
        # guardianship that moved with the merge): nothing to add.
        if child.pk not in already:
            guardianship_add(guardian=user, child=child, relationship=relationship)
    link.used_at = now
    link.used_by = user
    link.save(update_fields=["used_at", "used_by"])
    linked = ([mother] if mother else []) + list(family.children)
    audit_write_many(
        AuditEntry(
            action="link_code.redeem",
            actor_id=user.pk,
            actor_role="patient" if patient is mother else "guardian",
            patient_id=patient.pk,
            purpose=Purpose.PERSONAL,
            detail={"link_code": link.pk, "role": role, "merged": len(merged)},
        )
        for patient in linked
    )
    return LinkResult(link=link, mother=mother, children=list(family.children), merged=merged)
