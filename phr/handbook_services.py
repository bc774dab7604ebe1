"""What the family writes into the handbook itself: school checkup results
the school's system did not send (学校健診), birth data missing from the
records, vaccinations given elsewhere (a parent's report, shaped like the
municipal register's) and notes (保護者の記録 / 妊婦の記録).

Each write is the family's own (Provenance origin SELF, the user as agent)
and is authorized by the caller with `sharing.access.may_write(...,
purpose=Purpose.PERSONAL)` (docs/decisions/0014-handbook.md). The school
checkup records have exactly the codes and shape of the school feed
(municipal_data/formats/school_checkup.py, docs/formats/school_checkup.md),
so the handbook and the growth charts show them as any other measurement;
only the provenance tells them apart.

Writes are idempotent by source identifier: entering the same school
checkup day again, or the birth data again, corrects the earlier entry
(items left empty the second time are removed), never duplicates it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from municipal_data.formats import common
from municipal_data.formats import school_checkup as school
from municipal_data.formats import vaccination as vaccine_formats
from phr import store
from phr.audit import AuditEntry, audit_write_many
from phr.handbook import HANDBOOK_SYSTEM, NOTE_CODE
from phr.models import Patient, Provenance, Resource, User
from phr.selectors import JAPAN
from phr.services import provenance_create
from phr.terminology import Category


def _provenance(user: User) -> Provenance:
    return provenance_create(origin=Provenance.Origin.SELF, user=user, source="handbook")


def _audit(user: User, patient: Patient, action: str, category: str, **detail: Any) -> None:
    audit_write_many(
        [
            AuditEntry(
                action=action,
                outcome="success",
                actor_id=user.pk,
                # The family's own roles, as the policy point names them.
                actor_role="patient" if patient.account_id == user.pk else "guardian",
                patient_id=patient.pk,
                categories=[category],
                purpose="personal",
                detail=detail,
            )
        ]
    )


def _remove_missing(
    system: str, keep: set[str], all_values: list[tuple[str, str]], provenance: Provenance
) -> None:
    """Tombstone the items of an earlier entry that the new one left empty."""
    for value, resource_type in all_values:
        if value in keep:
            continue
        rid = store.source_resource_id(resource_type, store.Source(system, value))
        store.record_delete(resource_type=resource_type, resource_id=rid, provenance=provenance)


# --------------------------------------------------------------------------
# School checkups (学校健診)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SchoolCheckup:
    """One school checkup as the parent enters it (already validated by
    phr/handbook_forms.SchoolCheckupForm)."""

    day: date
    grade_code: str  # e1…e6, j1…j3, h1…h4
    school_name: str = ""
    body_height: Decimal | None = None
    body_weight: Decimal | None = None
    vision: dict[str, tuple[str, str]] | None = None  # column key → (class, acuity)
    hearing: dict[str, str] | None = None  # column key → finding code
    teeth: dict[str, int] | None = None  # column key → count
    urine: dict[str, str] | None = None  # column key → dipstick code


def school_system(patient: Patient) -> str:
    return f"urn:hagukumi:self:{patient.pk}:school_checkup"


def _school_items() -> list[tuple[str, str]]:
    """Every (item, resource type) a school checkup entry can hold."""
    names = ["body-height", "body-weight"]
    names += [item for _k, item, *_rest in school.VISION]
    names += [item for _k, item, *_rest in school.HEARING]
    names += [item for _k, item, *_rest in school.TEETH]
    names += [item for _k, item, *_rest in school.URINE]
    return [("encounter", "Encounter"), *((n, "Observation") for n in names)]


def school_checkup_resources(
    entry: SchoolCheckup, *, patient: Patient
) -> list[tuple[str, dict[str, Any]]]:
    """The Encounter and Observations of an entry, built like the school
    feed's (school_checkup.resources), named by item."""
    system = school_system(patient)
    key = entry.day.isoformat()
    encounter_id = str(
        store.source_resource_id("Encounter", store.Source(system, f"{key}#encounter"))
    )
    subject = str(patient.pk)
    title = f"学校健診（{school.grade_display(entry.grade_code)}）"
    items: list[tuple[str, dict[str, Any]]] = [
        (
            "encounter",
            common.encounter(
                subject=subject,
                when=entry.day,
                category=Category.SCHOOL_CHECKUPS,
                types=[
                    {
                        "coding": [
                            {
                                "system": common.SCHOOL_CHECKUP_SYSTEM,
                                "code": "periodic",
                                "display": "学校の定期健康診断",
                            }
                        ],
                        "text": title,
                    },
                    {
                        "coding": [
                            {
                                "system": common.SCHOOL_GRADE_SYSTEM,
                                "code": entry.grade_code,
                                "display": school.grade_display(entry.grade_code),
                            }
                        ],
                        "text": school.grade_display(entry.grade_code),
                    },
                ],
                provider={"display": entry.school_name} if entry.school_name else None,
            ),
        )
    ]

    def add(item: str, item_key: str, obs_category: str, **value: Any) -> None:
        items.append(
            (
                item,
                common.observation(
                    item_key,
                    subject=subject,
                    when=entry.day,
                    category=Category.SCHOOL_CHECKUPS,
                    obs_category=obs_category,
                    encounter=encounter_id,
                    **value,
                ),
            )
        )

    if entry.body_height is not None:
        add("body-height", "body_height", "vital-signs",
            valueQuantity=common.quantity(entry.body_height, "cm"))  # fmt: skip
    if entry.body_weight is not None:
        add("body-weight", "body_weight", "vital-signs",
            valueQuantity=common.quantity(entry.body_weight, "kg"))  # fmt: skip
    for key, item, *_rest in school.VISION:
        if entry.vision and key in entry.vision:
            letter, acuity = entry.vision[key]
            concept = common.coded(common.VISION_CLASS_SYSTEM, letter, school.VISION_CODES)
            if acuity:
                concept["text"] = f"{acuity}（{letter}）"
            add(item, key, "exam", valueCodeableConcept=concept)
    for key, item, *_rest in school.HEARING:
        if entry.hearing and key in entry.hearing:
            concept = common.coded(
                common.JUDGEMENT_SYSTEM, entry.hearing[key], common.FINDING_CODES
            )
            add(item, key, "exam", valueCodeableConcept=concept)
    for key, item, *_rest in school.TEETH:
        if entry.teeth and key in entry.teeth:
            add(item, key, "exam", valueInteger=entry.teeth[key])
    for key, item, *_rest in school.URINE:
        if entry.urine and key in entry.urine:
            concept = common.coded(
                common.URINE_DIPSTICK_SYSTEM, entry.urine[key], common.DIPSTICK_CODES
            )
            add(item, key, "laboratory", valueCodeableConcept=concept)
    return items


@transaction.atomic
def school_checkup_record(*, user: User, patient: Patient, entry: SchoolCheckup) -> uuid.UUID:
    """Write a parent-entered school checkup; return its Encounter id. The
    same day again corrects the earlier entry."""
    provenance = _provenance(user)
    system = school_system(patient)
    key = entry.day.isoformat()
    items = school_checkup_resources(entry, patient=patient)
    store.records_write_bulk(
        ((resource, store.Source(system, f"{key}#{item}")) for item, resource in items),
        provenance=provenance,
    )
    written = {f"{key}#{item}" for item, _resource in items}
    _remove_missing(
        system, written, [(f"{key}#{item}", kind) for item, kind in _school_items()], provenance
    )
    _audit(user, patient, "handbook.school_checkup", Category.SCHOOL_CHECKUPS, day=key)
    return store.source_resource_id("Encounter", store.Source(system, f"{key}#encounter"))


# --------------------------------------------------------------------------
# Birth data
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class BirthData:
    gestation_weeks: int | None = None
    gestation_days: int | None = None
    birth_weight_g: int | None = None
    length_cm: Decimal | None = None
    head_cm: Decimal | None = None


def birth_system(patient: Patient) -> str:
    return f"urn:hagukumi:self:{patient.pk}:birth"


BIRTH_KEYS = ("gestational_age", "birth_weight", "body_length", "head_circumference")


def birth_resources(data: BirthData, *, patient: Patient, birth: date) -> list[tuple[str, Any]]:
    """The birth data as the delivering clinic writes them
    (clinics/prenatal.birth_resources): Observations tagged
    infant_checkups, dated on the birthday; the gestational age as
    completed weeks with the days as a component."""
    subject = str(patient.pk)
    items: list[tuple[str, Any]] = []

    def add(key: str, obs_category: str, **value: Any) -> None:
        items.append(
            (
                key,
                common.observation(
                    key,
                    subject=subject,
                    when=birth,
                    category=Category.INFANT_CHECKUPS,
                    obs_category=obs_category,
                    **value,
                ),
            )
        )

    if data.gestation_weeks is not None:
        from phr import terminology

        days_item = terminology.item("gestational_age_days")
        days = data.gestation_days or 0
        add(
            "gestational_age",
            "exam",
            valueQuantity=common.quantity(data.gestation_weeks, "wk"),
            component=[
                {
                    "code": {"coding": [days_item.coding], "text": days_item.ja},
                    "valueQuantity": common.quantity(days, "d"),
                }
            ],
            note=[{"text": f"{data.gestation_weeks}週{days}日"}],
        )
    if data.birth_weight_g is not None:
        add("birth_weight", "vital-signs", valueQuantity=common.quantity(data.birth_weight_g, "g"))
    if data.length_cm is not None:
        add("body_length", "vital-signs", valueQuantity=common.quantity(data.length_cm, "cm"))
    if data.head_cm is not None:
        add("head_circumference", "vital-signs",
            valueQuantity=common.quantity(data.head_cm, "cm"))  # fmt: skip
    return items


@transaction.atomic
def birth_data_record(*, user: User, patient: Patient, data: BirthData, birth: date) -> int:
    """Write the birth data the parent entered; return how many items."""
    provenance = _provenance(user)
    system = birth_system(patient)
    items = birth_resources(data, patient=patient, birth=birth)
    store.records_write_bulk(
        ((resource, store.Source(system, key)) for key, resource in items), provenance=provenance
    )
    _audit(user, patient, "handbook.birth_data", Category.INFANT_CHECKUPS,
           items=[key for key, _r in items])  # fmt: skip
    return len(items)


# --------------------------------------------------------------------------
# Notes (保護者の記録 / 妊婦の記録)
# --------------------------------------------------------------------------

NOTE_MAX = 2000


def note_category(patient: Patient) -> str:
    """A note about a child is part of the checkup pages (保護者の記録 sits
    beside each 健康診査 page of the paper handbook); a mother's note is a
    pregnancy record (妊婦自身の記録)."""
    return Category.INFANT_CHECKUPS if patient.kind == Patient.Kind.CHILD else Category.PREGNANCY


def note_resource(*, patient: Patient, day: date, text: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "meta": common.meta(note_category(patient)),
        "status": "final",
        "category": [{"coding": [{"system": common.OBSERVATION_CATEGORY, "code": "survey"}]}],
        "code": {
            "coding": [{"system": HANDBOOK_SYSTEM, "code": NOTE_CODE, "display": "Parent's note"}],
            "text": "保護者の記録",
        },
        "subject": common.patient_ref(str(patient.pk)),
        "effectiveDateTime": day.isoformat(),
        "valueString": text,
    }


@transaction.atomic
def note_write(
    *,
    user: User,
    patient: Patient,
    day: date,
    text: str,
    note_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """Add a note (note_id None) or write a new version of one."""
    resource = note_resource(patient=patient, day=day, text=text)
    rid, _version, _changed = store.record_write(
        resource, provenance=_provenance(user), resource_id=note_id or uuid.uuid4()
    )
    _audit(user, patient, "handbook.note", note_category(patient), note=str(rid))
    return rid


def note_author_id(note: Resource) -> int | None:
    """The user who wrote this version of the note (only the family's own
    notes have one)."""
    provenance = note.provenance
    if provenance is None or provenance.origin != Provenance.Origin.SELF:
        return None
    return provenance.agent_user_id


@transaction.atomic
def note_delete(*, user: User, patient: Patient, note_id: uuid.UUID) -> None:
    store.record_delete(
        resource_type="Observation", resource_id=note_id, provenance=_provenance(user)
    )
    _audit(user, patient, "handbook.note_delete", note_category(patient), note=str(note_id))


# --------------------------------------------------------------------------
# Vaccinations given elsewhere (a parent's report)
# --------------------------------------------------------------------------

# FHIR R4 Immunization.reportOrigin (example binding, immunization-origin):
# a parent's report is never the primary source; she reads it off a written
# record (the paper 母子健康手帳, a 予防接種済証) or remembers it.
IMMUNIZATION_ORIGIN_SYSTEM = "http://terminology.hl7.org/CodeSystem/immunization-origin"
REPORT_ORIGINS = {"record": "Written Record", "recall": "Parent/Guardian/Patient Recall"}


@dataclass(frozen=True)
class ReportedDose:
    """One dose a parent reports (already validated by
    phr/handbook_forms.VaccinationForm)."""

    vaccine: str  # a code of municipal_data.formats.vaccination.VACCINES
    dose_number: int  # in the vaccine's whole schedule (doseNumberPositiveInt)
    day: date
    lot: str = ""
    clinic: str = ""
    report_origin: str = "record"  # a REPORT_ORIGINS code


def vaccination_system(patient: Patient) -> str:
    return f"urn:hagukumi:self:{patient.pk}:vaccination"


def vaccination_key(dose: ReportedDose) -> str:
    """One record per dose of a series, whatever the product named (PCV13
    or "小児用肺炎球菌" dose 1 are the same dose): entering it again corrects
    it, never adds a second record."""
    from phr.vaccination_schedule import SERIES_OF

    return f"{SERIES_OF.get(dose.vaccine, dose.vaccine)}#{dose.dose_number}"


def vaccination_resource(dose: ReportedDose, *, patient: Patient) -> dict[str, Any]:
    """The Immunization shaped exactly as the municipal register's
    (municipal_data/formats/vaccination.resources): our vaccine code, the
    dose number in the whole schedule and the series label — plus what says
    it is a parent's report (primarySource false, reportOrigin)."""
    v = vaccine_formats.VACCINES[dose.vaccine]
    protocol: dict[str, Any] = {"doseNumberPositiveInt": dose.dose_number}
    label = v.series_of(dose.dose_number).label
    if label:
        protocol["series"] = label
    resource: dict[str, Any] = {
        "resourceType": "Immunization",
        "meta": common.meta(Category.VACCINATIONS),
        "status": "completed",
        "vaccineCode": {
            "coding": [{"system": common.VACCINE_SYSTEM, "code": v.code, "display": v.name}],
            "text": v.name,
        },
        "patient": common.patient_ref(str(patient.pk)),
        "occurrenceDateTime": dose.day.isoformat(),
        "primarySource": False,
        "reportOrigin": {
            "coding": [
                {
                    "system": IMMUNIZATION_ORIGIN_SYSTEM,
                    "code": dose.report_origin,
                    "display": REPORT_ORIGINS[dose.report_origin],
                }
            ]
        },
    }
    if dose.lot:
        resource["lotNumber"] = dose.lot
    actor = common.institution_ref(None, dose.clinic)
    if actor is not None:
        resource["performer"] = [{"actor": actor}]
    resource["protocolApplied"] = [protocol]
    return resource


@transaction.atomic
def vaccination_record(*, user: User, patient: Patient, dose: ReportedDose) -> uuid.UUID:
    """Write a dose the parent reports; return the Immunization's id. The
    same dose (series and number) again corrects the earlier report."""
    source = store.Source(vaccination_system(patient), vaccination_key(dose))
    resource = vaccination_resource(dose, patient=patient)
    store.records_write_bulk([(resource, source)], provenance=_provenance(user))
    rid = store.source_resource_id("Immunization", source)
    _audit(user, patient, "handbook.vaccination", Category.VACCINATIONS, record=str(rid))
    return rid


def vaccination_author_id(record: Resource) -> int | None:
    """The user who reported this version of the dose (only the family's
    own reports have one; a municipal or clinic record has none)."""
    return note_author_id(record)


@transaction.atomic
def vaccination_delete(*, user: User, patient: Patient, record_id: uuid.UUID) -> None:
    store.record_delete(
        resource_type="Immunization", resource_id=record_id, provenance=_provenance(user)
    )
    _audit(user, patient, "handbook.vaccination_delete", Category.VACCINATIONS,
           record=str(record_id))  # fmt: skip


def today() -> date:
    """Today in Japan (the day a family means)."""
    return timezone.localdate(timezone=JAPAN)
