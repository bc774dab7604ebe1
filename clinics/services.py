"""Clinic writes: prenatal visits, deliveries, registering a pregnant
patient and inviting her to link her account (issue: clinics, parts 2–4).

Every write is authorised by the policy point (`sharing.access.may_write`:
an active care consent naming the clinic and covering the category, or a
patient the clinic registered who has not linked an account yet), goes
through the record store with a Provenance naming the clinic and the user,
and writes an audit row per patient. clinics/prenatal.py builds the FHIR.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import F
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _

from clinics import prenatal
from clinics.models import ClinicInvitation
from clinics.selectors import LONGEST_PREGNANCY
from municipal_data.linking import code_display, code_generate, code_hash, code_normalise
from phr import selectors as phr_selectors
from phr import services as phr_services
from phr import store
from phr.audit import AuditEntry, audit_write, audit_write_many
from phr.identity import patient_find_by_identifier, patient_merge, pregnancy_link_child
from phr.models import (
    Guardianship,
    Organization,
    Patient,
    Provenance,
    Resource,
    Role,
    User,
)
from phr.roles import has_mfa, organizations_for
from phr.terminology import LOINC, Category
from sharing.access import (
    Purpose,
    audit_denied,
    blocked_patients,
    forget_grants,
    may_write,
    visible_records,
)

# JP Core JP_Patient: a hospital's patient ID lives under
# urn:oid:1.2.392.100495.20.3.51. + "1" + the 10-digit 医療機関コード
# (jp_core_reference.csv; phr/demo.py CLINIC_PATIENT_SYSTEM).
CLINIC_PATIENT_SYSTEM = "urn:oid:1.2.392.100495.20.3.51.1{code}"
BODY_WEIGHT_TOKEN = f"{LOINC}|29463-7"
PRE_PREGNANCY_WEIGHT_TOKEN = f"{LOINC}|56077-1"
BODY_HEIGHT_TOKEN = f"{LOINC}|8302-2"


# --------------------------------------------------------------------------
# Who
# --------------------------------------------------------------------------


def staff_clinics(user: Any) -> list[Organization]:
    """The clinics this user works for: an active clinic staff membership,
    and MFA (as every staff grant in the policy point)."""
    if not has_mfa(user):
        return []
    return sorted(organizations_for(user, Role.CLINIC_STAFF), key=lambda o: (o.name, o.pk))


def clinic_ref(clinic: Organization) -> prenatal.ClinicRef:
    return prenatal.ClinicRef(code=clinic.code, name=clinic.name)


def writing_clinic(*, user: Any, patient: Patient, category: str, action: str) -> Organization:
    """The clinic `user` writes `category` records of `patient` for, or
    PermissionDenied (audited as a denied attempt)."""
    decision = may_write(user, patient, category=category)
    if not decision or decision.organization_id is None:
        audit_denied(user, patient.pk, action=action, rule=decision.rule)
        raise PermissionDenied
    return Organization.objects.get(pk=decision.organization_id)


def _provenance(*, user: User, clinic: Organization, source: str) -> Provenance:
    return phr_services.provenance_create(
        origin=Provenance.Origin.CLINIC, user=user, organization=clinic, source=source
    )


def _audit(
    *,
    user: User,
    clinic: Organization,
    patient_id: uuid.UUID,
    action: str,
    categories: list[str],
    detail: dict[str, Any],
) -> AuditEntry:
    decision = may_write(user, patient_id, category=categories[0])
    why: dict[str, Any] = {"rule": decision.rule or "clinic_write"}
    if decision.consent_id is not None:
        why["consent"] = str(decision.consent_id)
    return AuditEntry(
        action=action,
        actor_id=user.pk,
        actor_role=Role.CLINIC_STAFF,
        organization_id=clinic.pk,
        patient_id=patient_id,
        categories=sorted(set(categories)),
        purpose=Purpose.CARE,
        detail={**why, **detail},
    )


# --------------------------------------------------------------------------
# What the clinic knows of a pregnancy
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class PregnancyFacts:
    """The active pregnancy the user may see, its due date, the latest
    prenatal body weight before a day (for the weight-change warning), and
    the pre-pregnancy weight of this pregnancy and the latest height
    recorded (shown on the visit form; they give the pre-pregnancy BMI)."""

    episode_id: uuid.UUID | None
    due_date: date | None
    previous_weight: tuple[date, Decimal] | None
    pre_pregnancy_weight: tuple[date, Decimal] | None = None
    height: tuple[date, Decimal] | None = None


def _latest_quantity(
    user: Any,
    patient: Patient,
    token: str,
    unit: str,
    *,
    category: str | None = None,
    since: date | None = None,
    before: date | None = None,
) -> tuple[date, Decimal] | None:
    """(day, value) of the latest visible Observation of `patient` with
    this code and unit, optionally of a category and within days."""
    rows = Resource.objects.filter(
        visible_records(user, Purpose.CARE),
        resource_type="Observation",
        compartments__overlap=[patient.pk],
        tokens__contains=[token],
        quantity_code=unit,
        deleted=False,
    )
    if category is not None:
        rows = rows.filter(category=category)
    if since is not None:
        rows = rows.filter(date_start__gte=_day_start(since))
    if before is not None:
        rows = rows.filter(date_start__lt=_day_start(before))
    row = (
        rows.order_by(F("date_start").desc(nulls_last=True))
        .values_list("date_start", "quantity_value")
        .first()
    )
    if row is None or row[0] is None or row[1] is None:
        return None
    return timezone.localtime(row[0], phr_selectors.JAPAN).date(), Decimal(row[1])


def pregnancy_facts(*, user: Any, patient: Patient, before: date | None = None) -> PregnancyFacts:
    summary = phr_selectors.pregnancy_summary(user=user, patient=patient)
    previous = None
    if before is not None:
        previous = _latest_quantity(
            user,
            patient,
            BODY_WEIGHT_TOKEN,
            "kg",
            category=Category.PRENATAL_CHECKUPS,
            before=before,
        )
    # A pre-pregnancy weight belongs to one pregnancy: one recorded before
    # this pregnancy began was about an earlier one (the portal's rule,
    # clinics.selectors.pregnancy_facts).
    started = summary.started if summary else None
    if started is None and summary is not None and summary.due_date is not None:
        started = summary.due_date - LONGEST_PREGNANCY
    return PregnancyFacts(
        episode_id=summary.episode_id if summary else None,
        due_date=summary.due_date if summary else None,
        previous_weight=previous,
        pre_pregnancy_weight=_latest_quantity(
            user, patient, PRE_PREGNANCY_WEIGHT_TOKEN, "kg", since=started
        ),
        height=_latest_quantity(user, patient, BODY_HEIGHT_TOKEN, "cm"),
    )


def _day_start(day: date) -> datetime:
    """The instant a Japanese calendar day starts (how the index stores
    date-only values)."""
    return datetime(day.year, day.month, day.day, tzinfo=phr_selectors.JAPAN)


# --------------------------------------------------------------------------
# Prenatal visits
# --------------------------------------------------------------------------


@dataclass
class VisitResult:
    encounter_id: uuid.UUID
    episode_id: uuid.UUID | None
    written: int
    removed: int
    clinic: Organization


def _write_items(items: list[prenatal.Item], provenance: Provenance) -> store.WriteResult:
    staged = [store.stage(resource, source=source) for resource, source in items]
    # A few dozen rows: the VALUES path, not COPY (as phr/demo.py writes).
    return store.write_staged(staged, provenance=provenance, copy=False)


def _remove_missing(ids: dict[str, uuid.UUID], kept: set[uuid.UUID], provenance: Provenance) -> int:
    """Tombstone the records a corrected submission no longer states."""
    missing = [i for i in ids.values() if i not in kept]
    gone = list(Resource.objects.filter(pk__in=missing, deleted=False).values_list("pk", flat=True))
    for rid in gone:
        store.record_delete(resource_type="Observation", resource_id=rid, provenance=provenance)
    return len(gone)


def _ensure_episode(
    *,
    patient: Patient,
    episode_id: uuid.UUID | None,
    due_date: date,
    clinic: Organization,
    provenance: Provenance,
) -> uuid.UUID:
    if episode_id is not None:
        return episode_id
    resource = prenatal.pregnancy_episode(
        patient_id=patient.pk, due_date=due_date, clinic=clinic_ref(clinic)
    )
    source = store.Source(
        prenatal.prenatal_system(clinic.code), prenatal.episode_source_value(patient.pk, due_date)
    )
    new_id, _version, _changed = store.record_write(resource, provenance=provenance, source=source)
    return new_id


def prenatal_visit_record(*, user: User, patient: Patient, data: prenatal.Visit) -> VisitResult:
    """Record one prenatal checkup for `patient` (or correct it: the same
    clinic, patient and day is the same visit). Impossible values raise
    ValidationError; nothing is written for a user the policy point does
    not let write (PermissionDenied)."""
    # Decided before the transaction, so that a refusal's audit row stays.
    clinic = writing_clinic(
        user=user,
        patient=patient,
        category=Category.PRENATAL_CHECKUPS,
        action="clinic.prenatal_visit",
    )
    errors = prenatal.visit_refusals(data)
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        facts = pregnancy_facts(user=user, patient=patient)
        provenance = _provenance(user=user, clinic=clinic, source="clinic:prenatal-visit")
        episode_id = facts.episode_id
        categories = [Category.PRENATAL_CHECKUPS]
        written = 0
        # The pregnancy itself (its episode and due date) is the pregnancy
        # category: written only when the clinic may write that too.
        if data.due_date is not None and may_write(user, patient, category=Category.PREGNANCY):
            episode_id = _ensure_episode(
                patient=patient,
                episode_id=episode_id,
                due_date=data.due_date,
                clinic=clinic,
                provenance=provenance,
            )
            if data.due_date != facts.due_date:
                store.record_write(
                    prenatal.due_date_observation(
                        patient_id=patient.pk, due_date=data.due_date, recorded_on=data.visit_date
                    ),
                    provenance=provenance,
                    source=store.Source(
                        prenatal.prenatal_system(clinic.code),
                        prenatal.due_date_source_value(episode_id),
                    ),
                )
                written += 1
            categories.append(Category.PREGNANCY)
        items = prenatal.visit_resources(
            visit=data, patient_id=patient.pk, clinic=clinic_ref(clinic), episode_id=episode_id
        )
        result = _write_items(items, provenance)
        kept = {store.source_resource_id(r["resourceType"], s) for r, s in items}
        removed = _remove_missing(
            prenatal.visit_item_ids(
                clinic_code=clinic.code, patient_id=patient.pk, visit_date=data.visit_date
            ),
            kept,
            provenance,
        )
        encounter_id = store.source_resource_id("Encounter", items[0][1])
        written += result.written
        audit_write_many(
            [
                _audit(
                    user=user,
                    clinic=clinic,
                    patient_id=patient.pk,
                    action="clinic.prenatal_visit",
                    categories=categories,
                    detail={
                        "encounter": str(encounter_id),
                        "written": written,
                        "removed": removed,
                    },
                )
            ]
        )
    return VisitResult(encounter_id, episode_id, written, removed, clinic)


# --------------------------------------------------------------------------
# Delivery
# --------------------------------------------------------------------------


@dataclass
class BabyOutcome:
    child: Patient
    created: bool  # a new Patient, else an existing record (municipal or the family's)
    merged: int = 0  # duplicates folded into it (the family's own record of the child)
    guardian_added: bool = False


@dataclass
class DeliveryResult:
    encounter_id: uuid.UUID
    episode_id: uuid.UUID
    clinic: Organization
    babies: list[BabyOutcome] = field(default_factory=list)


def _survivor(patient: Patient) -> Patient:
    while patient.merged_into_id is not None:
        patient = patient.merged_into  # type: ignore[assignment]
    return patient


def _register_children(mother: Patient) -> set[uuid.UUID]:
    """The children the municipal register names for this mother.

    The register is municipal_data's control data (MotherChild), read here
    and never written; municipal_data has no selector for "children of a
    mother" yet (docs/decisions/0008-clinics.md)."""
    from municipal_data.models import MotherChild

    mothers = {mother.pk, *mother.merged_from.values_list("pk", flat=True)}
    return set(MotherChild.objects.filter(mother_id__in=mothers).values_list("child_id", flat=True))


def _candidate_children(mother: Patient, born: date, sex: str) -> list[tuple[Patient, bool]]:
    """Existing records that may be this baby: the mother's children in the
    municipal register and the children her account is guardian of, born
    on `born`, not of another sex. (patient, in the register)."""
    register = _register_children(mother)
    ids = set(register)
    if mother.account_id is not None:
        ids |= set(
            Guardianship.objects.active()
            .filter(guardian_id=mother.account_id)
            .values_list("child_id", flat=True)
        )
    people: dict[uuid.UUID, tuple[Patient, bool]] = {}
    for patient in Patient.objects.filter(pk__in=ids, kind=Patient.Kind.CHILD):
        survivor = _survivor(patient)
        in_register = patient.pk in register or survivor.pk in register
        known = people.get(survivor.pk)
        people[survivor.pk] = (survivor, in_register or (known[1] if known else False))
    contents = dict(
        Resource.objects.filter(
            resource_type="Patient", pk__in=list(people), deleted=False
        ).values_list("pk", "content")
    )
    found = []
    for pid, (patient, in_register) in people.items():
        content = contents.get(pid) or {}
        if content.get("birthDate") != born.isoformat():
            continue
        gender = content.get("gender")
        if sex not in ("", "unknown") and gender not in (None, "", "unknown", sex):
            continue
        found.append((patient, in_register))
    return sorted(found, key=lambda pair: (not pair[1], str(pair[0].pk)))


def _existing_child(
    *, mother: Patient, born: date, baby: prenatal.Baby, taken: set[uuid.UUID], user: User
) -> tuple[Patient, int] | None:
    """The one existing record of this baby, or None. When the register's
    record and the family's own record of the same child both exist, the
    family's is folded into the register's (phr.identity.patient_merge),
    as a family link code would; when it stays ambiguous (twins of one
    sex, two register records) nothing is guessed: None."""
    found = [(p, r) for p, r in _candidate_children(mother, born, baby.sex) if p.pk not in taken]
    if not found:
        return None
    registered = [p for p, in_register in found if in_register]
    own = [p for p, in_register in found if not in_register]
    if len(registered) == 1:
        merged = 0
        if len(own) == 1:  # the family's own record of the same child
            patient_merge(
                survivor=registered[0],
                merged=own[0],
                by=user,
                reason="delivery: the family's record of the child registered by the municipality",
            )
            merged = 1
        return registered[0], merged
    if not registered and len(own) == 1:
        return own[0], 0
    return None


def _child_from_earlier_submission(
    *, clinic: Organization, base: str, index: int
) -> Patient | None:
    """The child a previous submission of this delivery wrote the n-th
    baby's birth weight to (created or linked)."""
    row = (
        Resource.objects.filter(
            pk=prenatal.birth_weight_id(clinic_code=clinic.code, base=base, index=index)
        )
        .values_list("content", flat=True)
        .first()
    )
    reference = str(((row or {}).get("subject") or {}).get("reference", ""))
    if not reference.startswith("Patient/"):
        return None
    patient = Patient.objects.filter(pk=reference.removeprefix("Patient/")).first()
    return _survivor(patient) if patient is not None else None


def _mother_family_name(mother: Patient) -> str:
    content = (
        Resource.objects.filter(pk=mother.pk, resource_type="Patient")
        .values_list("content", flat=True)
        .first()
    ) or {}
    names = content.get("name") or []
    return str(names[0].get("family") or "") if names and isinstance(names[0], dict) else ""


def _episode_for_delivery(
    *,
    user: User,
    mother: Patient,
    delivery: prenatal.Delivery,
    clinic: Organization,
    encounter_id: uuid.UUID,
    provenance: Provenance,
) -> uuid.UUID:
    """The pregnancy this birth ends: the one a previous submission of the
    delivery named, the active one, or a new one (a birth the clinic saw
    without a recorded pregnancy), dated back from the gestational age."""
    earlier = Resource.objects.filter(pk=encounter_id).values_list("content", flat=True).first()
    for ref in (earlier or {}).get("episodeOfCare") or []:
        reference = str(ref.get("reference", ""))
        if reference.startswith("EpisodeOfCare/"):
            return uuid.UUID(reference.removeprefix("EpisodeOfCare/"))
    facts = pregnancy_facts(user=user, patient=mother)
    if facts.episode_id is not None:
        return facts.episode_id
    due = delivery.birth_date + timedelta(days=prenatal.PREGNANCY_DAYS - delivery.gestation_days)
    return _ensure_episode(
        patient=mother, episode_id=None, due_date=due, clinic=clinic, provenance=provenance
    )


def delivery_record(*, user: User, mother: Patient, data: prenatal.Delivery) -> DeliveryResult:
    """Record a birth, in one transaction: 出産の状態 on the mother's record,
    the pregnancy finished, each baby's record (an existing one — the
    municipality's or the family's — or a new one), the pregnancy linked to
    each child, the mother's account made guardian (unless a DV block says
    otherwise), and the birth data on each child's record. Sending the
    same delivery again updates it and creates no second child."""
    # Decided before the transaction, so that a refusal's audit row stays.
    clinic = writing_clinic(
        user=user, patient=mother, category=Category.PREGNANCY, action="clinic.delivery"
    )
    errors = prenatal.delivery_refusals(data)
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        provenance = _provenance(user=user, clinic=clinic, source="clinic:delivery")
        ref = clinic_ref(clinic)
        born = data.birth_date
        base = prenatal.delivery_source_value(mother.pk, born)
        system = prenatal.delivery_system(clinic.code)
        encounter_id = prenatal.source_id("Encounter", system, base)
        episode_id = _episode_for_delivery(
            user=user,
            mother=mother,
            delivery=data,
            clinic=clinic,
            encounter_id=encounter_id,
            provenance=provenance,
        )
        items = prenatal.delivery_resources(
            delivery=data, mother_id=mother.pk, clinic=ref, episode_id=episode_id
        )
        outcomes: list[BabyOutcome] = []
        taken: set[uuid.UUID] = set()
        family_name = _mother_family_name(mother)
        for index, baby in enumerate(data.babies):
            outcome = _baby_record(
                user=user,
                mother=mother,
                clinic=clinic,
                delivery=data,
                baby=baby,
                index=index,
                base=base,
                taken=taken,
                family_name=family_name,
                provenance=provenance,
            )
            taken.add(outcome.child.pk)
            outcomes.append(outcome)
            items += prenatal.birth_resources(
                delivery=data,
                baby=baby,
                index=index,
                child_id=outcome.child.pk,
                mother_id=mother.pk,
                clinic=ref,
            )
        result = _write_items(items, provenance)
        kept = {store.source_resource_id(r["resourceType"], s) for r, s in items}
        removed = 0
        for index in range(5):
            removed += _remove_missing(
                prenatal.baby_item_ids(clinic_code=clinic.code, base=base, index=index),
                kept,
                provenance,
            )
        episode = Resource.objects.get(pk=episode_id, resource_type="EpisodeOfCare")
        store.record_write(
            prenatal.finished_episode(episode.content, birth_date=born),
            provenance=provenance,
            resource_id=episode_id,
        )
        for outcome in outcomes:
            pregnancy_link_child(episode_id=episode_id, child=outcome.child, provenance=provenance)
        entries = [
            _audit(
                user=user,
                clinic=clinic,
                patient_id=mother.pk,
                action="clinic.delivery",
                categories=[Category.PREGNANCY],
                detail={
                    "encounter": str(encounter_id),
                    "episode": str(episode_id),
                    "babies": len(outcomes),
                    "written": result.written,
                    "removed": removed,
                },
            )
        ]
        entries += [
            AuditEntry(
                action="clinic.delivery.child",
                actor_id=user.pk,
                actor_role=Role.CLINIC_STAFF,
                organization_id=clinic.pk,
                patient_id=outcome.child.pk,
                categories=[Category.INFANT_CHECKUPS],
                purpose=Purpose.CARE,
                detail={
                    "rule": "delivery",
                    "mother": str(mother.pk),
                    "created": outcome.created,
                    "merged": outcome.merged,
                    "guardian_added": outcome.guardian_added,
                },
            )
            for outcome in outcomes
        ]
        audit_write_many(entries)
    return DeliveryResult(encounter_id, episode_id, clinic, outcomes)


def _baby_record(
    *,
    user: User,
    mother: Patient,
    clinic: Organization,
    delivery: prenatal.Delivery,
    baby: prenatal.Baby,
    index: int,
    base: str,
    taken: set[uuid.UUID],
    family_name: str,
    provenance: Provenance,
) -> BabyOutcome:
    born = delivery.birth_date
    outcome: BabyOutcome
    child = _child_from_earlier_submission(clinic=clinic, base=base, index=index)
    if child is not None and child.pk not in taken:
        outcome = BabyOutcome(child, created=False)
    else:
        new_id = prenatal.child_patient_id(clinic_code=clinic.code, base=base, index=index)
        existing_new = Patient.objects.filter(pk=new_id).first()
        found = None
        if existing_new is None:
            found = _existing_child(mother=mother, born=born, baby=baby, taken=taken, user=user)
        if existing_new is not None:
            outcome = BabyOutcome(_survivor(existing_new), created=False)
        elif found is not None:
            outcome = BabyOutcome(found[0], created=False, merged=found[1])
        else:
            resource = prenatal.child_patient_resource(
                family=family_name,
                baby=baby,
                birth_date=born,
                index=index,
                of=len(delivery.babies),
            )
            child = phr_services.patient_create(
                kind=Patient.Kind.CHILD,
                resource=resource,
                provenance=provenance,
                patient_id=new_id,
            )
            outcome = BabyOutcome(child, created=True)
    account = mother.account
    if account is not None and outcome.child.pk not in blocked_patients(account):
        already = (
            Guardianship.objects.active().filter(guardian=account, child=outcome.child).exists()
        )
        if not already:
            phr_services.guardianship_add(
                guardian=account,
                child=outcome.child,
                relationship=Guardianship.Relationship.MOTHER,
                valid_from=min(born, timezone.localdate()),
            )
            outcome.guardian_added = True
            forget_grants(account)
    return outcome


# --------------------------------------------------------------------------
# Registering a pregnant patient, and her invitation
# --------------------------------------------------------------------------

WRONG = _("The code or the birth date is not right. Check the invitation and try again.")
UNUSABLE = _(
    "This code can no longer be used: it has expired, was already used, was replaced by a "
    "newer one or was locked after too many attempts. Ask the clinic for a new code."
)
TAKEN = _(
    "This record is already linked to another account. If that is not your account, "
    "contact the clinic."
)
CONFLICT = _(
    "Your account already has a health record that does not match the clinic's record (for "
    "example another birth date). Contact the clinic to have the two records checked."
)


@dataclass
class Registration:
    patient: Patient
    invitation: ClinicInvitation
    code: str  # shown once, never stored


def clinic_patient_system(clinic: Organization) -> str:
    return CLINIC_PATIENT_SYSTEM.format(code=clinic.code)


def patient_register(
    *,
    user: User,
    clinic: Organization,
    family: str,
    given: str,
    birth_date: date,
    family_kana: str = "",
    given_kana: str = "",
    clinic_patient_number: str = "",
    due_date: date | None = None,
    email: str = "",
) -> Registration:
    """A new pregnant patient the clinic registers before she has an
    account: her Patient (written by the clinic, so the clinic may write
    for her until she links an account: sharing.access.may_write), her
    pregnancy with its due date when known, and an invitation code for her
    to link her account (emailed when an address is given)."""
    if clinic.pk not in {c.pk for c in staff_clinics(user)}:
        raise PermissionDenied
    identifiers = []
    number = clinic_patient_number.strip()
    if number:
        system = clinic_patient_system(clinic)
        if patient_find_by_identifier(system=system, value=number) is not None:
            raise ValidationError(
                {
                    "clinic_patient_number": str(
                        _("A patient with this clinic patient number is already registered.")
                    )
                }
            )
        identifiers.append({"system": system, "value": number})
    if due_date is not None:
        days = prenatal.gestational_age(due_date, timezone.localdate()).days
        if not 0 <= days <= prenatal.MAX_GESTATION_DAYS:
            raise ValidationError(
                {"due_date": str(_("This due date does not fit a current pregnancy."))}
            )
    with transaction.atomic():
        provenance = _provenance(user=user, clinic=clinic, source="clinic:register")
        resource = phr_services.patient_resource(
            family=family,
            given=given,
            family_kana=family_kana,
            given_kana=given_kana,
            birth_date=birth_date,
            gender="female",
            identifiers=identifiers or None,
        )
        patient = phr_services.patient_create(
            kind=Patient.Kind.ADULT, resource=resource, provenance=provenance
        )
        if due_date is not None:
            episode_id = _ensure_episode(
                patient=patient,
                episode_id=None,
                due_date=due_date,
                clinic=clinic,
                provenance=provenance,
            )
            store.record_write(
                prenatal.due_date_observation(
                    patient_id=patient.pk, due_date=due_date, recorded_on=timezone.localdate()
                ),
                provenance=provenance,
                source=store.Source(
                    prenatal.prenatal_system(clinic.code),
                    prenatal.due_date_source_value(episode_id),
                ),
            )
        audit_write(
            action="clinic.patient_register",
            actor_id=user.pk,
            actor_role=Role.CLINIC_STAFF,
            organization_id=clinic.pk,
            patient_id=patient.pk,
            categories=[Category.PREGNANCY] if due_date else [],
            purpose=Purpose.CARE,
            detail={"rule": "clinic_registered"},
        )
        invitation, code = invitation_issue(user=user, clinic=clinic, patient=patient, email=email)
    return Registration(patient, invitation, code)


def invitation_url(code: str) -> str:
    return f"{settings.SITE_URL.rstrip('/')}{reverse('clinics:join')}?code={code}"


def _send_invitation(email: str, clinic_name: str, code: str) -> None:
    # The mail names the clinic and carries the code; nothing clinical.
    # The code alone opens nothing: she also needs her birth date.
    send_mail(
        subject=f"{clinic_name}からの招待 / Invitation from {clinic_name}",
        message=(
            f"{clinic_name}があなたの記録を はぐくみ に登録しました。\n"
            f"次のページで招待コードとあなたの生年月日を入力すると、ご自分のアカウントで記録を"
            f"見られるようになります。\n\n"
            f"{invitation_url(code)}\n招待コード: {code}\n\n"
            f"{clinic_name} registered your record with Hagukumi. Enter the invitation code and "
            f"your birth date on the page above to see it with your own account.\n"
            f"Invitation code: {code}\n"
        ),
        from_email=None,
        recipient_list=[email],
    )


def invitation_issue(
    *, user: User, clinic: Organization, patient: Patient, email: str = ""
) -> tuple[ClinicInvitation, str]:
    """A code for a patient the clinic registered and who has no account
    yet (the code shown once, grouped XXXX-XXXX-XXXX-XXXX). An earlier
    code of hers from this clinic stops working."""
    if clinic.pk not in {c.pk for c in staff_clinics(user)}:
        raise PermissionDenied
    decision = may_write(user, patient, category=Category.PREGNANCY)
    if decision.rule != "clinic_registered" or decision.organization_id != clinic.pk:
        raise PermissionDenied
    now = timezone.now()
    code = code_generate()
    with transaction.atomic():
        ClinicInvitation.objects.filter(
            clinic=clinic, patient=patient, used_at=None, revoked_at=None
        ).update(revoked_at=now)
        invitation = ClinicInvitation.objects.create(
            clinic=clinic,
            patient=patient,
            code_hash=code_hash(code),
            prefix=code[:4],
            email=email,
            issued_by=user,
            issued_at=now,
            expires_at=now + timedelta(days=settings.LINK_CODE_DAYS),
        )
        audit_write(
            action="clinic.invitation_issue",
            actor_id=user.pk,
            actor_role=Role.CLINIC_STAFF,
            organization_id=clinic.pk,
            patient_id=patient.pk,
            purpose=Purpose.CARE,
            detail={"invitation": invitation.pk, "emailed": bool(email)},
        )
        if email:
            transaction.on_commit(partial(_send_invitation, email, clinic.name, code_display(code)))
    return invitation, code_display(code)


def invitation_revoke(*, user: User, invitation: ClinicInvitation) -> ClinicInvitation:
    """Stop an unused code at once (the clinic's staff, from the portal).
    Revoking twice, or a code already used, changes nothing and writes no
    audit row. The guarded UPDATE waits for a redemption holding the row
    (invitation_redeem locks it), so a code is never both used and revoked."""
    if invitation.clinic_id not in {c.pk for c in staff_clinics(user)}:
        raise PermissionDenied
    with transaction.atomic():
        revoked = ClinicInvitation.objects.filter(
            pk=invitation.pk, used_at=None, revoked_at=None
        ).update(revoked_at=timezone.now())
        if revoked:
            audit_write(
                action="clinic.invitation_revoke",
                actor_id=user.pk,
                actor_role=Role.CLINIC_STAFF,
                organization_id=invitation.clinic_id,
                patient_id=invitation.patient_id,
                purpose=Purpose.CARE,
                detail={"invitation": invitation.pk, "prefix": invitation.prefix},
            )
    invitation.refresh_from_db()
    return invitation


class InvitationError(Exception):
    """A redemption was refused; `message` is what the person may read."""

    def __init__(self, message: Promise | str) -> None:
        super().__init__(str(message))
        self.message = message


class _Refusal(Exception):
    def __init__(
        self, reason: str, message: Promise, invitation: ClinicInvitation | None, *, counts: bool
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.message = message
        self.invitation = invitation
        self.counts = counts


@dataclass
class JoinResult:
    patient: Patient  # her own record now
    clinic: Organization
    merged: bool  # the clinic's record was folded into the record she had
    shared: bool


def _contents(ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    rows = Resource.objects.filter(resource_type="Patient", pk__in=ids, deleted=False)
    return dict(rows.values_list("pk", "content"))


def invitation_redeem(*, user: User, code: str, birth_date: date, share: bool) -> JoinResult:
    """Link `user`'s account to the record the clinic registered: it becomes
    her own record (merged into the record her account already has, when
    it has one that agrees), and — when she chooses to share — the clinic
    gets a care consent for her pregnancy and prenatal checkups, so it can
    go on recording her visits. Refusals count towards the code's lock and
    are audited; call this outside a transaction of your own."""
    normalised = code_normalise(code)
    digest = code_hash(normalised)
    try:
        with transaction.atomic():
            invitation = (
                ClinicInvitation.objects.select_for_update()
                .select_related("clinic", "patient")
                .filter(code_hash=digest)
                .first()
            )
            if invitation is None or not secrets.compare_digest(invitation.code_hash, digest):
                raise _Refusal("not_found", WRONG, None, counts=False)
            result = _redeem(user, invitation, birth_date, share)
    except _Refusal as refusal:
        _refuse(user, refusal)
        raise InvitationError(refusal.message) from None
    forget_grants(user)
    return result


def _redeem(user: User, invitation: ClinicInvitation, answer: date, share: bool) -> JoinResult:
    from sharing.models import ConsentPurpose
    from sharing.services import consent_grant

    status = invitation.status
    if status != ClinicInvitation.Status.ACTIVE:
        raise _Refusal(status, UNUSABLE, invitation, counts=True)
    patient = _survivor(invitation.patient)
    contents = _contents([patient.pk])
    if contents.get(patient.pk, {}).get("birthDate") != answer.isoformat():
        raise _Refusal("birth_date", WRONG, invitation, counts=True)
    if patient.account_id not in (None, user.pk):
        raise _Refusal("taken", TAKEN, invitation, counts=False)
    own = Patient.objects.filter(account=user).first()
    merged = False
    if own is not None and own.pk != patient.pk:
        mine = _contents([own.pk]).get(own.pk) or {}
        theirs = contents.get(patient.pk) or {}
        for key in ("birthDate", "gender"):
            if mine.get(key) and theirs.get(key) and mine[key] != theirs[key]:
                raise _Refusal("conflict", CONFLICT, invitation, counts=False)
        # Her account's record (the municipality's or her own) stays; the
        # clinic's few records move into it.
        patient_merge(
            survivor=own,
            merged=patient,
            by=user,
            reason=f"clinic invitation {invitation.pk}: the clinic's record of her",
        )
        patient = own
        merged = True
    elif patient.account_id is None:
        patient.account = user
        patient.save(update_fields=["account"])
    now = timezone.now()
    invitation.used_at = now
    invitation.used_by = user
    invitation.save(update_fields=["used_at", "used_by"])
    if share:
        consent_grant(
            patient=patient,
            by=user,
            purpose=ConsentPurpose.CARE,
            categories=[Category.PREGNANCY, Category.PRENATAL_CHECKUPS],
            grantee_org=invitation.clinic,
        )
    audit_write(
        action="clinic.invitation_redeem",
        actor_id=user.pk,
        actor_role="patient",
        patient_id=patient.pk,
        purpose=Purpose.PERSONAL,
        detail={"invitation": invitation.pk, "merged": merged, "shared": share},
    )
    return JoinResult(patient=patient, clinic=invitation.clinic, merged=merged, shared=share)


def _refuse(user: User, refusal: _Refusal) -> None:
    invitation = refusal.invitation
    detail: dict[str, Any] = {"reason": refusal.reason}
    if invitation is not None:
        detail["invitation"] = invitation.pk
        if refusal.counts:
            ClinicInvitation.objects.filter(pk=invitation.pk).update(
                failed_attempts=F("failed_attempts") + 1
            )
    audit_write(
        action="clinic.invitation_redeem",
        outcome="denied",
        actor_id=user.pk,
        patient_id=invitation.patient_id if invitation is not None else None,
        purpose=Purpose.PERSONAL,
        detail=detail,
    )
