"""The medication notebook (お薬手帳): JAHIS data → FHIR, manual entries,
and the "current medicines" of a person.

- `medications_import` writes what phr.jahis read: each medicine of a
  dispensing → MedicationDispense, OTC medicines (record 3) →
  MedicationStatement, allergy and side-effect notes (record 2 kinds 1/2)
  → AllergyIntolerance, past history (kind 3) → Condition. Ids come from
  a hash of each record's identity (person, dispensing date, pharmacy,
  prescribing institution, RP, medicine), so importing the same data
  twice adds nothing, and a corrected document (another dose, usage or
  number of days for the same medicine) updates the record it corrects.
- Split documents (record 911) are collected across submissions in a
  small JSON-able dict the caller keeps (the session): `pending_merge`.
- `statement_save` is the family's own entry of a medicine.
- `current_medicines` / `current_medication_rows` decide, from rows the
  caller was allowed to read, what the person takes now; the notebook
  page and the emergency summary (sharing/emergency.py) both use them.

Authorization is the caller's (phr/medication_views.py asks the policy
point): this module is on the ground floor and never imports sharing.
"""

from __future__ import annotations

import hashlib
import unicodedata
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from phr import jahis, store
from phr.audit import audit_write
from phr.identifiers import MEDICAL_INSTITUTION_SYSTEM
from phr.indexing import LOCAL_TZ as JAPAN
from phr.indexing import fhir_local_date
from phr.models import Patient, Provenance, Resource, ResourceHistory, User
from phr.services import provenance_create
from phr.terminology import CATEGORY_SYSTEM, UCUM, Category

# --------------------------------------------------------------------------
# Code and identifier systems
# --------------------------------------------------------------------------

# JP Core (../shared/reference/data/jp_core_reference.csv).
YJ_SYSTEM = "http://capstandard.jp/iyaku.info/CodeSystem/YJ-code"
HOT_SYSTEMS = {
    7: "http://medis.or.jp/CodeSystem/master-HOT7",
    9: "http://medis.or.jp/CodeSystem/master-HOT9",
    13: "http://medis.or.jp/CodeSystem/master-HOT13",
}
GENERIC_SYSTEM = "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationGeneralOrderCode"
JAMI_USAGE_SYSTEM = "http://jami.jp/CodeSystem/MedicationUsage"
MEDICAL_ORGANIZATION_7_SYSTEM = "http://jpfhir.jp/fhir/core/mhlw/IdSystem/MedicalOrganizationID"
# JP Core's RP番号 and RP内の順序を示す連番 (the JP Core URL map, guide-urlmap.md).
RP_SYSTEM = "http://jpfhir.jp/fhir/core/mhlw/IdSystem/Medication-RPGroupNumber"
RP_INDEX_SYSTEM = "http://jpfhir.jp/fhir/core/mhlw/IdSystem/MedicationAdministrationIndex"
# Neither the reference nor JP Core's URL map names a system for the
# レセプト電算処理システム用コード (9 digits) or the 厚生労働省コード
# (薬価基準収載医薬品コード) of record 201, nor for JAN codes: ours, until
# one is published (docs/formats/jahis.md).
RECEIPT_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/receipt-drug-code"
MHLW_DRUG_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/mhlw-drug-price-code"
JAN_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/jan-code"
# Our identifiers of imported records (value: a hash of the record's identity).
ID_SYSTEM = "https://hagukumi.jp/fhir/NamingSystem/jahis"

ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
ALLERGY_VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"

CATEGORY_TAG = {"system": CATEGORY_SYSTEM, "code": Category.MEDICATIONS}
ALLERGY_TAG = {"system": CATEGORY_SYSTEM, "code": Category.ALLERGIES_CONDITIONS}

# A medicine dispensed without a number of days (外用, 屯服 …) counts as
# current this long after it was handed over.
NO_DAYS_SUPPLY_CURRENT_DAYS = 30
STATEMENT_CURRENT_STATUSES = ("active", "intended")
DISPENSE_NOT_TAKEN = ("cancelled", "entered-in-error", "declined", "stopped")

NOTE_LABELS = {
    "281": "薬品補足",
    "291": "服用注意",
    "311": "用法補足",
    "391": "服用注意",
    "401": "服用注意",
    "411": "医療機関等からの情報",
    "421": "残薬確認",
    "501": "備考",
}


def _normal(text: str) -> str:
    """A name as compared for identity: NFKC, no spaces, case folded."""
    return "".join(unicodedata.normalize("NFKC", text).split()).casefold()


def _digest(*parts: object) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:32]


def _source(resource_type: str, patient_id: uuid.UUID, *parts: object) -> store.Source:
    # The person is part of the identity: the same pharmacy data imported for
    # two people are two records.
    return store.Source(f"{ID_SYSTEM}/{resource_type}", _digest(patient_id, *parts))


def _number(value: Decimal) -> int | float:
    """A JSON number for a Decimal (an int when whole)."""
    return int(value) if value == value.to_integral_value() else float(value)


# --------------------------------------------------------------------------
# Mapping a document to FHIR (pure)
# --------------------------------------------------------------------------


def drug_codings(drug: jahis.Drug) -> list[dict[str, str]]:
    codings: list[dict[str, str]] = []
    code = drug.code
    if drug.code_kind == "yj" and code:
        codings.append({"system": YJ_SYSTEM, "code": code, "display": drug.name})
    elif drug.code_kind == "hot" and len(code) in HOT_SYSTEMS:
        codings.append({"system": HOT_SYSTEMS[len(code)], "code": code, "display": drug.name})
    elif drug.code_kind == "receipt" and code:
        codings.append({"system": RECEIPT_SYSTEM, "code": code, "display": drug.name})
    elif drug.code_kind == "mhlw" and code:
        codings.append({"system": MHLW_DRUG_SYSTEM, "code": code, "display": drug.name})
    if drug.generic_code:
        codings.append(
            {
                "system": GENERIC_SYSTEM,
                "code": drug.generic_code,
                "display": drug.generic_name or drug.name,
            }
        )
    return codings


def _organization(key: str, institution: jahis.Institution) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Organization", "id": key, "name": institution.name}
    identifiers = []
    if institution.code10:
        identifiers.append({"system": MEDICAL_INSTITUTION_SYSTEM, "value": institution.code10})
    if institution.code:
        identifiers.append({"system": MEDICAL_ORGANIZATION_7_SYSTEM, "value": institution.code})
    if identifiers:
        resource["identifier"] = identifiers
    if institution.phone:
        resource["telecom"] = [{"system": "phone", "value": institution.phone}]
    if institution.address or institution.postal_code:
        address: dict[str, Any] = {"country": "JP"}
        if institution.address:
            address["text"] = institution.address
        if institution.postal_code:
            address["postalCode"] = institution.postal_code
        resource["address"] = [address]
    return resource


def _org_reference(key: str, institution: jahis.Institution) -> dict[str, Any]:
    """A reference to a contained organization that also names it by its
    医療機関コード (as the rest of the codebase names clinics)."""
    reference: dict[str, Any] = {"reference": f"#{key}", "display": institution.name}
    if institution.code10:
        reference["identifier"] = {
            "system": MEDICAL_INSTITUTION_SYSTEM,
            "value": institution.code10,
        }
    return reference


def _institution_key(institution: jahis.Institution | None) -> str:
    if institution is None:
        return "-"
    return institution.code10 or institution.code or "n:" + _normal(institution.name)


def _dosage(drug: jahis.Drug, prescription: jahis.Prescription) -> dict[str, Any] | None:
    usage = prescription.usage
    parts = [usage.text] if usage and usage.text else []
    dosage: dict[str, Any] = {"sequence": prescription.rp}
    if usage is not None:
        extra = [*usage.supplements, *prescription.cautions]
        if extra:
            dosage["additionalInstruction"] = [{"text": text} for text in extra]
        if usage.usage_code:
            dosage["timing"] = {
                "code": {"coding": [{"system": JAMI_USAGE_SYSTEM, "code": usage.usage_code}]}
            }
    if drug.dose is not None:
        amount = (
            {"value": _number(drug.dose), "unit": drug.unit}
            if drug.unit
            else {"value": _number(drug.dose)}
        )
        form = usage.form if usage else ""
        if form in ("1", "2"):
            # 内服・内滴: the dose is a day's dose (1日量).
            dosage["doseAndRate"] = [
                {
                    "rateRatio": {
                        "numerator": amount,
                        "denominator": {"value": 1, "unit": "日", "system": UCUM, "code": "d"},
                    }
                }
            ]
            parts.append(f"1日{drug.dose_text}{drug.unit}")
        elif form == "3":
            # 屯服: the dose is one dose (1回量).
            dosage["doseAndRate"] = [{"doseQuantity": amount}]
            parts.append(f"1回{drug.dose_text}{drug.unit}")
        elif drug.dose_text:
            parts.append(f"{drug.dose_text}{drug.unit}")
    elif drug.dose_text:
        parts.append(f"{drug.dose_text}{drug.unit}")
    if usage is not None and usage.quantity is not None and usage.quantity_unit:
        parts.append(f"{usage.quantity}{usage.quantity_unit}")
    if parts:
        dosage["text"] = " ".join(parts)
    return dosage if len(dosage) > 1 else None


def _quantity(drug: jahis.Drug, prescription: jahis.Prescription) -> dict[str, Any] | None:
    """The amount handed over: a day's dose × days (内服, 日分), one dose ×
    times (屯服, 回分), else the dose as written (外用: the whole amount)."""
    if drug.dose is None:
        return None
    total = drug.dose
    usage = prescription.usage
    if usage is not None and usage.quantity and usage.quantity_unit in ("日分", "回分"):
        total = drug.dose * usage.quantity
    quantity: dict[str, Any] = {"value": _number(total)}
    if drug.unit:
        quantity["unit"] = drug.unit
    return quantity


def _days_supply(prescription: jahis.Prescription) -> int | None:
    usage = prescription.usage
    if usage is not None and usage.quantity and usage.quantity_unit == "日分":
        return usage.quantity
    return None


def dispense_resources(
    document: jahis.Document, *, patient_id: uuid.UUID
) -> list[tuple[dict[str, Any], store.Source]]:
    """One MedicationDispense per medicine of each dispensing."""
    out: list[tuple[dict[str, Any], store.Source]] = []
    subject = {"reference": f"Patient/{patient_id}"}
    for dispensing in document.dispensings:
        day = dispensing.date.isoformat()
        pharmacy_key = _institution_key(dispensing.institution)
        prescriber_key = _institution_key(dispensing.prescriber_org)
        visit_notes = [f"{NOTE_LABELS[number]}: {text}" for number, text in dispensing.notes]
        for prescription in dispensing.prescriptions:
            seen: dict[str, int] = {}
            for drug in prescription.drugs:
                drug_key = (
                    f"{drug.code_kind}:{drug.code}" if drug.code else "n:" + _normal(drug.name)
                )
                seen[drug_key] = seen.get(drug_key, 0) + 1
                source = _source(
                    "MedicationDispense",
                    patient_id,
                    "D",
                    day,
                    pharmacy_key,
                    prescriber_key,
                    prescription.rp,
                    drug_key,
                    seen[drug_key],
                )
                concept: dict[str, Any] = {"text": drug.name}
                codings = drug_codings(drug)
                if codings:
                    concept["coding"] = codings
                contained: list[dict[str, Any]] = []
                performers: list[dict[str, Any]] = []
                if dispensing.institution is not None:
                    contained.append(_organization("pharmacy", dispensing.institution))
                    performers.append({"actor": _org_reference("pharmacy", dispensing.institution)})
                if dispensing.dispenser:
                    contained.append(
                        {
                            "resourceType": "Practitioner",
                            "id": "dispenser",
                            "name": [{"text": dispensing.dispenser}],
                        }
                    )
                    performers.append(
                        {"actor": {"reference": "#dispenser", "display": dispensing.dispenser}}
                    )
                resource: dict[str, Any] = {
                    "resourceType": "MedicationDispense",
                    "meta": {"tag": [CATEGORY_TAG]},
                    "identifier": [
                        {"system": source.system, "value": source.value},
                        {"system": RP_SYSTEM, "value": str(prescription.rp)},
                        {"system": RP_INDEX_SYSTEM, "value": str(drug.index)},
                    ],
                    "status": "completed",
                    "medicationCodeableConcept": concept,
                    "subject": subject,
                    "whenPrepared": day,
                    "whenHandedOver": day,
                }
                request = _request(dispensing, prescription, concept, subject)
                if request is not None:
                    contained.extend(request)
                    resource["authorizingPrescription"] = [{"reference": "#prescription"}]
                if contained:
                    resource["contained"] = contained
                if performers:
                    resource["performer"] = performers
                quantity = _quantity(drug, prescription)
                if quantity is not None:
                    resource["quantity"] = quantity
                days = _days_supply(prescription)
                if days is not None:
                    resource["daysSupply"] = {
                        "value": days,
                        "unit": "日",
                        "system": UCUM,
                        "code": "d",
                    }
                dosage = _dosage(drug, prescription)
                if dosage is not None:
                    resource["dosageInstruction"] = [dosage]
                notes = [f"{NOTE_LABELS['281']}: {t}" for t in drug.supplements]
                notes += [f"{NOTE_LABELS['291']}: {t}" for t in drug.cautions]
                notes += visit_notes
                if notes:
                    resource["note"] = [{"text": text} for text in notes]
                out.append((resource, source))
    return out


def _request(
    dispensing: jahis.Dispensing,
    prescription: jahis.Prescription,
    concept: dict[str, Any],
    subject: dict[str, Any],
) -> list[dict[str, Any]] | None:
    """The prescription the medicine was dispensed on, as contained
    resources: a MedicationRequest whose requester is the doctor's role at
    the prescribing institution (records 51 and 55)."""
    org = dispensing.prescriber_org
    if org is None and not prescription.doctor:
        return None
    contained: list[dict[str, Any]] = []
    role: dict[str, Any] = {"resourceType": "PractitionerRole", "id": "prescriber-role"}
    if prescription.doctor:
        contained.append(
            {
                "resourceType": "Practitioner",
                "id": "prescriber",
                "name": [{"text": prescription.doctor}],
            }
        )
        role["practitioner"] = {"reference": "#prescriber", "display": prescription.doctor}
    if org is not None:
        contained.append(_organization("prescriber-org", org))
        role["organization"] = _org_reference("prescriber-org", org)
    if prescription.department:
        role["specialty"] = [{"text": prescription.department}]
    contained.append(role)
    display = " ".join(p for p in (org.name if org else "", prescription.doctor) if p)
    contained.append(
        {
            "resourceType": "MedicationRequest",
            "id": "prescription",
            "status": "completed",
            "intent": "order",
            "medicationCodeableConcept": concept,
            "subject": subject,
            "authoredOn": dispensing.date.isoformat(),
            "requester": {"reference": "#prescriber-role", "display": display},
        }
    )
    return contained


def otc_resources(
    document: jahis.Document, *, patient_id: uuid.UUID, today: date
) -> list[tuple[dict[str, Any], store.Source]]:
    out = []
    for medicine in document.otc:
        source = _source(
            "MedicationStatement",
            patient_id,
            "O",
            _normal(medicine.name),
            medicine.start or "",
            medicine.jan,
        )
        concept: dict[str, Any] = {"text": medicine.name}
        if medicine.jan:
            concept["coding"] = [{"system": JAN_SYSTEM, "code": medicine.jan}]
        resource: dict[str, Any] = {
            "resourceType": "MedicationStatement",
            "meta": {"tag": [CATEGORY_TAG]},
            "identifier": [{"system": source.system, "value": source.value}],
            "status": "completed" if medicine.end and medicine.end < today else "active",
            "medicationCodeableConcept": concept,
            "subject": {"reference": f"Patient/{patient_id}"},
            "note": [{"text": "要指導医薬品・一般用医薬品（お薬手帳）"}],
        }
        if medicine.start or medicine.end:
            period = {}
            if medicine.start:
                period["start"] = medicine.start.isoformat()
            if medicine.end:
                period["end"] = medicine.end.isoformat()
            resource["effectivePeriod"] = period
        if medicine.ingredients:
            resource["note"].append({"text": "成分: " + "、".join(medicine.ingredients)})
        out.append((resource, source))
    return out


def note_resources(
    document: jahis.Document, *, patient_id: uuid.UUID
) -> list[tuple[dict[str, Any], store.Source]]:
    """Allergies (kind 1) and side effects (kind 2) → AllergyIntolerance;
    past history (kind 3) → Condition. Kind 9 (other) is reported only."""
    out: list[tuple[dict[str, Any], store.Source]] = []
    subject = {"reference": f"Patient/{patient_id}"}
    for note in document.notes:
        confirmed = note.creator == "1"  # written by a health professional
        if note.kind in ("allergy", "side_effect"):
            source = _source(
                "AllergyIntolerance", patient_id, "A", note.kind, _normal(note.content)
            )
            resource: dict[str, Any] = {
                "resourceType": "AllergyIntolerance",
                "meta": {"tag": [ALLERGY_TAG]},
                "identifier": [{"system": source.system, "value": source.value}],
                "clinicalStatus": {"coding": [{"system": ALLERGY_CLINICAL, "code": "active"}]},
                "verificationStatus": {
                    "coding": [
                        {
                            "system": ALLERGY_VERIFICATION,
                            "code": "confirmed" if confirmed else "unconfirmed",
                        }
                    ]
                },
                "type": "allergy" if note.kind == "allergy" else "intolerance",
                "code": {"text": note.content},
                "patient": subject,
                "note": [
                    {
                        "text": "アレルギー歴（お薬手帳）"
                        if note.kind == "allergy"
                        else "副作用歴（お薬手帳）"
                    }
                ],
            }
            if note.kind == "side_effect":
                resource["category"] = ["medication"]
            out.append((resource, source))
        elif note.kind == "history":
            source = _source("Condition", patient_id, "C", _normal(note.content))
            out.append(
                (
                    {
                        "resourceType": "Condition",
                        "meta": {"tag": [ALLERGY_TAG]},
                        "identifier": [{"system": source.system, "value": source.value}],
                        "verificationStatus": {
                            "coding": [
                                {
                                    "system": CONDITION_VERIFICATION,
                                    "code": "confirmed" if confirmed else "unconfirmed",
                                }
                            ]
                        },
                        "code": {"text": note.content},
                        "subject": subject,
                        "note": [{"text": "既往歴（お薬手帳）"}],
                    },
                    source,
                )
            )
        else:
            document.issues.append(
                jahis.Issue(
                    note.line,
                    "not_imported",
                    "患者特記（その他）は読みましたが、記録には取り込みません",
                    "a patient note of kind 'other' was read but is not imported",
                    severity=jahis.INFO,
                    record="2",
                    part=note.part,
                )
            )
    return out


def document_resources(
    document: jahis.Document, *, patient_id: uuid.UUID, today: date
) -> list[tuple[dict[str, Any], store.Source]]:
    return [
        *dispense_resources(document, patient_id=patient_id),
        *otc_resources(document, patient_id=patient_id, today=today),
        *note_resources(document, patient_id=patient_id),
    ]


# --------------------------------------------------------------------------
# Split documents waiting for their other parts (kept by the caller)
# --------------------------------------------------------------------------

PENDING_HOURS = 24
COPY_FROM = 200
PENDING_MAX_DOCUMENTS = 10
PENDING_MAX_CHARS = 200_000


@dataclass(frozen=True)
class Waiting:
    data_id: str
    total: int
    received: tuple[int, ...]
    missing: tuple[int, ...]


def _parts_of(entry: dict[str, Any]) -> list[jahis.SplitPart]:
    return [
        jahis.SplitPart(entry["data_id"], int(entry["total"]), int(seq), text)
        for seq, text in entry["parts"].items()
    ]


def pending_merge(
    pending: dict[str, Any], parts: Sequence[jahis.SplitPart], *, now: datetime
) -> tuple[list[list[jahis.SplitPart]], dict[str, Any], list[Waiting]]:
    """Add newly received split parts to those kept for one person.

    `pending` maps データ固有ID → {"data_id", "total", "parts": {seq: text},
    "at": ISO time of the last part}; it is not changed. Returns the
    documents now complete (their parts, in any order), the dict to keep,
    and the documents still waiting. Entries older than PENDING_HOURS are
    dropped; beyond PENDING_MAX_DOCUMENTS or PENDING_MAX_CHARS the oldest
    go first.
    """
    kept: dict[str, Any] = {}
    cutoff = now - timedelta(hours=PENDING_HOURS)
    for key, entry in pending.items():
        try:
            at = datetime.fromisoformat(entry["at"])
        except (KeyError, TypeError, ValueError):
            continue
        if at >= cutoff:
            kept[key] = {**entry, "parts": dict(entry["parts"])}
    for part in parts:
        entry = kept.setdefault(
            part.data_id, {"data_id": part.data_id, "total": part.total, "parts": {}}
        )
        entry["total"] = max(int(entry["total"]), part.total)
        entry["parts"][str(part.seq)] = part.text
        entry["at"] = now.isoformat()
    complete: list[list[jahis.SplitPart]] = []
    for key in list(kept):
        document_parts = _parts_of(kept[key])
        total, missing = jahis.missing_parts(document_parts)
        if not missing:
            complete.append(document_parts)
            del kept[key]
    # Bound what a session holds: the oldest documents go first.
    ordered = sorted(kept.items(), key=lambda item: item[1]["at"], reverse=True)
    bounded: dict[str, Any] = {}
    size = 0
    for key, entry in ordered:
        entry_size = sum(len(t) for t in entry["parts"].values())
        if len(bounded) >= PENDING_MAX_DOCUMENTS or size + entry_size > PENDING_MAX_CHARS:
            continue
        bounded[key] = entry
        size += entry_size
    waiting = []
    for entry in bounded.values():
        total, missing = jahis.missing_parts(_parts_of(entry))
        waiting.append(
            Waiting(
                entry["data_id"],
                total,
                tuple(sorted(int(s) for s in entry["parts"])),
                tuple(missing),
            )
        )
    return complete, bounded, waiting


# --------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportedItem:
    resource_type: str
    label: str
    day: date | None
    outcome: str  # created, updated, unchanged


@dataclass
class ImportReport:
    documents: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    items: list[ImportedItem] = field(default_factory=list)
    issues: list[jahis.Issue] = field(default_factory=list)
    waiting: list[Waiting] = field(default_factory=list)
    encoding: str = ""

    @property
    def errors(self) -> list[jahis.Issue]:
        return [i for i in self.issues if i.severity == jahis.ERROR]

    @property
    def warnings(self) -> list[jahis.Issue]:
        return [i for i in self.issues if i.severity == jahis.WARNING]

    @property
    def notices(self) -> list[jahis.Issue]:
        return [i for i in self.issues if i.severity == jahis.INFO]

    @property
    def written(self) -> int:
        return self.created + self.updated


def _label(resource: dict[str, Any]) -> str:
    concept = resource.get("medicationCodeableConcept") or resource.get("code") or {}
    return str(concept.get("text") or "")


def _day(resource: dict[str, Any]) -> date | None:
    for key in ("whenHandedOver",):
        if resource.get(key):
            return fhir_local_date(resource[key])
    period = resource.get("effectivePeriod") or {}
    return fhir_local_date(period.get("start"))


def _check_person(document: jahis.Document, birth_date: date | None) -> None:
    """A document for someone born on another day than the person it is
    imported for is imported (the family chose the person), with a warning."""
    info = document.patient
    if info is None or info.birth_date is None or birth_date is None:
        return
    if info.birth_date != birth_date:
        document.issues.append(
            jahis.Issue(
                0,
                "other_person",
                f"このデータは {info.birth_date.isoformat()} 生まれの方のものです"
                f"（取り込み先: {birth_date.isoformat()} 生まれ）。"
                "取り込み先が正しいか確かめてください",
                f"this data is for a person born {info.birth_date.isoformat()} "
                f"(imported for a person born {birth_date.isoformat()}); "
                "check that you chose the right person",
                severity=jahis.WARNING,
                record="1",
                field="患者生年月日",
            )
        )


def medications_import(
    *,
    patient: Patient,
    user: User,
    text: str,
    via: str,
    pending: dict[str, Any] | None = None,
    birth_date: date | None = None,
    encoding: str = "",
    now: datetime | None = None,
) -> tuple[ImportReport, dict[str, Any]]:
    """Import JAHIS text for `patient` (the caller checked that `user` may).

    Returns the report and the split parts to keep for the next
    submission. Everything readable is written in one transaction with one
    Provenance (origin pharmacy, the importing user as agent); what was
    skipped is in the report, so nothing is imported without a report.
    """
    moment = now or timezone.now()
    today = timezone.localtime(moment, JAPAN).date()
    reading = jahis.read(text, encoding=encoding)
    report = ImportReport(encoding=reading.encoding, issues=list(reading.issues))
    complete, kept, report.waiting = pending_merge(pending or {}, reading.parts, now=moment)
    documents = list(reading.documents) + [jahis.assemble(parts) for parts in complete]
    for waiting in report.waiting:
        report.issues.append(
            jahis.Issue(
                0,
                "split_waiting",
                f"分割データ（ID {waiting.data_id}）は{waiting.total}個のうち"
                f"{len(waiting.received)}個を受け取りました。残り: "
                + "、".join(str(n) for n in waiting.missing),
                f"split data (ID {waiting.data_id}): {len(waiting.received)} of "
                f"{waiting.total} parts received; missing: "
                + ", ".join(str(n) for n in waiting.missing),
                severity=jahis.INFO,
                record=jahis.SPLIT_RECORD,
                value=waiting.data_id,
            )
        )
    items: list[tuple[dict[str, Any], store.Source]] = []
    for document in documents:
        if not document.version:
            report.issues.extend(document.issues)
            continue
        report.documents += 1
        _check_person(document, birth_date)
        items.extend(document_resources(document, patient_id=patient.pk, today=today))
        report.issues.extend(document.issues)
        if not document.has_content:
            report.issues.append(
                jahis.Issue(
                    0,
                    "nothing",
                    "このデータには取り込める薬の記録がありません",
                    "this data holds no medicine records to import",
                    severity=jahis.WARNING,
                )
            )
    if not items:
        return report, kept
    with transaction.atomic():
        provenance = provenance_create(
            origin=Provenance.Origin.PHARMACY, user=user, source=f"jahis:{via}"[:200]
        )
        staged = [store.stage(resource, source=source) for resource, source in items]
        # A QR code's worth of records goes in one VALUES upsert; a whole
        # notebook file through the store's COPY path.
        result = store.write_staged(staged, provenance=provenance, copy=len(staged) > COPY_FROM)
        if not result.written:
            provenance.delete()  # nothing refers to it
        audit_write(
            action="medications.import",
            actor_id=user.pk,
            patient_id=patient.pk,
            categories=[Category.MEDICATIONS],
            detail={
                "via": via,
                "created": len(result.created),
                "updated": len(result.updated),
                "unchanged": len(result.unchanged),
                "skipped_lines": sum(1 for i in report.issues if i.severity == jahis.ERROR),
            },
        )
    created, updated = set(result.created), set(result.updated)
    report.created, report.updated = len(result.created), len(result.updated)
    report.unchanged = len(result.unchanged)
    seen: set[uuid.UUID] = set()
    for item in staged:
        if item.id in seen:
            continue
        seen.add(item.id)
        outcome = (
            "created" if item.id in created else "updated" if item.id in updated else ("unchanged")
        )
        report.items.append(
            ImportedItem(item.resource_type, _label(item.content), _day(item.content), outcome)
        )
    return report, kept


# --------------------------------------------------------------------------
# Manual entry
# --------------------------------------------------------------------------


def statement_resource(
    *,
    patient_id: uuid.UUID,
    name: str,
    dosage: str = "",
    start: date | None = None,
    end: date | None = None,
    note: str = "",
    taking: bool = True,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "MedicationStatement",
        "meta": {"tag": [CATEGORY_TAG]},
        "status": "active" if taking else "completed",
        "medicationCodeableConcept": {"text": name},
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    if start or end:
        period = {}
        if start:
            period["start"] = start.isoformat()
        if end:
            period["end"] = end.isoformat()
        resource["effectivePeriod"] = period
    if dosage:
        resource["dosage"] = [{"text": dosage}]
    if note:
        resource["note"] = [{"text": note}]
    return resource


def statement_author_id(resource_id: uuid.UUID) -> int | None:
    """The user who first wrote a self-entered statement (None for records
    from elsewhere)."""
    return (
        ResourceHistory.objects.filter(
            resource_id=resource_id,
            resource_type="MedicationStatement",
            version=1,
            provenance__origin=Provenance.Origin.SELF,
        )
        .values_list("provenance__agent_user_id", flat=True)
        .first()
    )


def statement_authors(resource_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int | None]:
    """statement_author_id for several statements in one query."""
    return dict(
        ResourceHistory.objects.filter(
            resource_id__in=list(resource_ids),
            resource_type="MedicationStatement",
            version=1,
            provenance__origin=Provenance.Origin.SELF,
        ).values_list("resource_id", "provenance__agent_user_id")
    )


def statement_initial(content: dict[str, Any]) -> dict[str, Any]:
    """A statement as the entry form shows it again."""
    period = content.get("effectivePeriod") or {}
    return {
        "name": medicine_name(content),
        "dosage": medicine_detail(content),
        "start": fhir_local_date(period.get("start")),
        "end": fhir_local_date(period.get("end")),
        "taking": content.get("status") in STATEMENT_CURRENT_STATUSES,
        "note": "\n".join(note_texts(content)),
    }


def statement_save(
    *,
    patient: Patient,
    user: User,
    name: str,
    dosage: str = "",
    start: date | None = None,
    end: date | None = None,
    note: str = "",
    taking: bool = True,
    resource_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """Write (or, with `resource_id`, rewrite) a medicine the family enters
    itself. The caller checked that `user` may write for `patient` and, for
    an edit, that `user` wrote the statement (statement_author_id)."""
    resource = statement_resource(
        patient_id=patient.pk,
        name=name,
        dosage=dosage,
        start=start,
        end=end,
        note=note,
        taking=taking,
    )
    with transaction.atomic():
        provenance = provenance_create(
            origin=Provenance.Origin.SELF, user=user, source="medications:manual"
        )
        rid, _, _ = store.record_write(resource, provenance=provenance, resource_id=resource_id)
        audit_write(
            action="medications.edit" if resource_id else "medications.add",
            actor_id=user.pk,
            patient_id=patient.pk,
            categories=[Category.MEDICATIONS],
            detail={"resource": str(rid)},
        )
    return rid


# --------------------------------------------------------------------------
# Current medicines
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class CurrentMedicine:
    row: Resource
    name: str
    detail: str
    since: date | None
    until: date | None  # the last day it counts as current (None: open)
    origin: str  # a Provenance.Origin value ("" when unknown)


def _codings(concept: Any) -> list[dict[str, Any]]:
    if not isinstance(concept, dict):
        return []
    return [c for c in concept.get("coding") or [] if isinstance(c, dict)]


def medicine_name(content: dict[str, Any]) -> str:
    concept = content.get("medicationCodeableConcept")
    if isinstance(concept, dict):
        if concept.get("text"):
            return str(concept["text"])
        for coding in _codings(concept):
            if coding.get("display"):
                return str(coding["display"])
    reference = content.get("medicationReference")
    if isinstance(reference, dict) and reference.get("display"):
        return str(reference["display"])
    return ""


def note_texts(content: dict[str, Any]) -> list[str]:
    return [
        str(note["text"])
        for note in content.get("note") or []
        if isinstance(note, dict) and note.get("text")
    ]


def allergy_name(content: dict[str, Any]) -> str:
    code = content.get("code") or {}
    if isinstance(code, dict):
        if code.get("text"):
            return str(code["text"])
        for coding in _codings(code):
            if coding.get("display"):
                return str(coding["display"])
    return ""


def statement_period(content: dict[str, Any]) -> tuple[date | None, date | None]:
    period = content.get("effectivePeriod")
    if isinstance(period, dict):
        return fhir_local_date(period.get("start")), fhir_local_date(period.get("end"))
    return fhir_local_date(content.get("effectiveDateTime")), None


def medicine_detail(content: dict[str, Any]) -> str:
    for dosage in content.get("dosage") or content.get("dosageInstruction") or []:
        if isinstance(dosage, dict) and dosage.get("text"):
            return str(dosage["text"])
    return ""


def _local_day(row: Resource) -> date | None:
    if row.date_start is None:
        return None
    return timezone.localtime(row.date_start, JAPAN).date()


def _current_window(row: Resource, today: date) -> tuple[date | None, date | None] | None:
    """(since, until) when the row counts as a medicine taken on `today`."""
    content = row.content or {}
    if row.resource_type == "MedicationDispense":
        if row.status in DISPENSE_NOT_TAKEN:
            return None
        handed = _local_day(row)
        if handed is None or handed > today:
            return None
        days = (content.get("daysSupply") or {}).get("value")
        if isinstance(days, int | float) and not isinstance(days, bool) and days > 0:
            # Dispensed on day D with N days: current while D + N ≥ today.
            until = handed + timedelta(days=int(days))
        else:
            until = handed + timedelta(days=NO_DAYS_SUPPLY_CURRENT_DAYS)
        return (handed, until) if until >= today else None
    if row.resource_type == "MedicationStatement":
        if row.status not in STATEMENT_CURRENT_STATUSES:
            return None
        period = content.get("effectivePeriod") or {}
        end = fhir_local_date(period.get("end")) if isinstance(period, dict) else None
        if end is not None and end < today:
            return None
        start = _local_day(row)
        if start is not None and start > today and row.status == "active":
            return None  # not started yet
        return start, end
    return None


def _identity(content: dict[str, Any]) -> tuple[set[str], str]:
    codes = {
        f"{c.get('system')}|{c.get('code')}"
        for c in _codings(content.get("medicationCodeableConcept"))
        if c.get("code")
    }
    return codes, _normal(medicine_name(content))


def current_medicines(
    rows: Iterable[Resource], *, today: date, origins: dict[int, str] | None = None
) -> list[CurrentMedicine]:
    """The medicines taken on `today` among `rows` (MedicationDispense and
    MedicationStatement rows the caller may read): dispensed within their
    days of supply (dispensing date + days ≥ today; NO_DAYS_SUPPLY_CURRENT_DAYS
    for medicines without a number of days), or statements that are
    active without an end before today. One entry per medicine (same code,
    or same name), the most recent one; newest first."""
    candidates: list[tuple[Resource, date | None, date | None]] = []
    for row in rows:
        if row.deleted:
            continue
        window = _current_window(row, today)
        if window is not None:
            candidates.append((row, *window))
    candidates.sort(
        key=lambda c: (c[1] or date.min, c[0].last_updated or timezone.now()), reverse=True
    )
    kept: list[CurrentMedicine] = []
    seen_codes: set[str] = set()
    seen_names: set[str] = set()
    for row, since, until in candidates:
        codes, name = _identity(row.content or {})
        if (codes & seen_codes) or (name and name in seen_names):
            seen_codes |= codes
            continue
        seen_codes |= codes
        if name:
            seen_names.add(name)
        origin = ""
        if origins is not None:
            origin = origins.get(row.provenance_id, "")
        kept.append(
            CurrentMedicine(
                row=row,
                name=medicine_name(row.content or {}),
                detail=medicine_detail(row.content or {}),
                since=since,
                until=until,
                origin=origin,
            )
        )
    return kept


def current_medication_rows(rows: Iterable[Resource], *, today: date) -> list[Resource]:
    """current_medicines as the rows themselves (the emergency summary)."""
    return [medicine.row for medicine in current_medicines(rows, today=today)]


# --------------------------------------------------------------------------
# The notebook page: dispensings grouped by day and pharmacy
# --------------------------------------------------------------------------


@dataclass
class NotebookLine:
    row: Resource
    name: str
    amount: str
    days: int | None
    usage: str
    notes: list[str]


@dataclass
class NotebookVisit:
    day: date | None
    pharmacy: str
    pharmacy_code: str
    prescriber: str
    origin: str
    lines: list[NotebookLine] = field(default_factory=list)


def _contained(content: dict[str, Any], key: str) -> dict[str, Any]:
    for resource in content.get("contained") or []:
        if isinstance(resource, dict) and resource.get("id") == key:
            return resource
    return {}


def _pharmacy(content: dict[str, Any]) -> tuple[str, str]:
    for performer in content.get("performer") or []:
        actor = (performer or {}).get("actor") or {}
        reference = str(actor.get("reference") or "")
        target = _contained(content, reference[1:]) if reference.startswith("#") else {}
        if target.get("resourceType", "Organization") != "Organization" and not actor.get(
            "identifier"
        ):
            continue
        identifier = actor.get("identifier") or {}
        code = str(identifier.get("value") or "") if isinstance(identifier, dict) else ""
        name = str(actor.get("display") or target.get("name") or "")
        if name or code:
            return name, code
    return "", ""


def _prescriber(content: dict[str, Any]) -> str:
    for reference in content.get("authorizingPrescription") or []:
        if not isinstance(reference, dict):
            continue
        target = str(reference.get("reference") or "")
        request = _contained(content, target[1:]) if target.startswith("#") else {}
        requester = request.get("requester") or {}
        text = requester.get("display") or reference.get("display")
        if text:
            return str(text)
    return ""


def _amount(content: dict[str, Any]) -> str:
    quantity = content.get("quantity") or {}
    if not isinstance(quantity, dict) or "value" not in quantity:
        return ""
    value = quantity["value"]
    text = format(Decimal(str(value)).normalize(), "f") if value is not None else ""
    return f"{text}{quantity.get('unit') or ''}"


def _rp_order(content: dict[str, Any]) -> tuple[int, int]:
    found = {RP_SYSTEM: 0, RP_INDEX_SYSTEM: 0}
    for identifier in content.get("identifier") or []:
        if isinstance(identifier, dict) and identifier.get("system") in found:
            value = str(identifier.get("value") or "")
            found[identifier["system"]] = int(value) if value.isdigit() else 0
    return found[RP_SYSTEM], found[RP_INDEX_SYSTEM]


def notebook_visits(
    rows: Iterable[Resource], *, origins: dict[int, str] | None = None
) -> list[NotebookVisit]:
    """MedicationDispense rows as the notebook shows them: one visit per
    day and pharmacy (and source), newest first, medicines in RP order."""
    visits: dict[tuple[Any, ...], NotebookVisit] = {}
    for row in rows:
        if row.resource_type != "MedicationDispense" or row.deleted:
            continue
        content = row.content or {}
        day = _local_day(row)
        pharmacy, code = _pharmacy(content)
        origin = (origins or {}).get(row.provenance_id, "")
        key = (day, code or pharmacy, origin)
        visit = visits.get(key)
        if visit is None:
            visit = visits[key] = NotebookVisit(
                day=day,
                pharmacy=pharmacy,
                pharmacy_code=code,
                prescriber=_prescriber(content),
                origin=origin,
            )
        days = (content.get("daysSupply") or {}).get("value")
        dosage = next(
            (d for d in content.get("dosageInstruction") or [] if isinstance(d, dict)), {}
        )
        visit.lines.append(
            NotebookLine(
                row=row,
                name=medicine_name(content),
                amount=_amount(content),
                days=days if isinstance(days, int) else None,
                usage=str(dosage.get("text") or ""),
                notes=[
                    str(n.get("text"))
                    for n in content.get("note") or []
                    if isinstance(n, dict) and n.get("text")
                ],
            )
        )
    ordered = sorted(visits.values(), key=lambda v: (v.day or date.min, v.pharmacy), reverse=True)
    for visit in ordered:
        visit.lines.sort(key=lambda line: _rp_order(line.row.content))
    return ordered
