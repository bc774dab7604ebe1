"""Emergency access: the emergency summary, break-glass, emergency cards.

Three ways an emergency summary is read, each audited:

- a responder whose access the policy point already allows for
  purpose="emergency" (the family's prior emergency consent, its standing
  EmergencyPreference, or an open break-glass window);
- the family itself (the adult patient, a child's guardian: purpose
  "personal"), to see what a responder would see;
- an emergency card: a link with an unguessable token (and an optional
  passcode) that opens the summary without a login.

Break-glass (`break_glass_search` → `break_glass_open` → reads →
`break_glass_review`) follows reference/security.md §A4: an exact-match
search that reveals only "one match" or "no match", re-authentication, a
reason and a justification, a time window, the emergency dataset only,
every read flagged in the audit, an immediate email to the guardians (never
to a DV-blocked one) and a review by the privacy officer of the patient's
municipality, who must be a second person.

Records are read only through sharing.access: `visible_records(user,
"emergency")` (or "personal" for the family), always narrowed to
`emergency_scope()`; a card, having no user, applies `emergency_scope()` to
its patient's compartment directly.
"""

from __future__ import annotations

import hashlib
import html
import re
import secrets
import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.hashers import check_password, make_password
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import F, QuerySet
from django.utils import timezone
from django.utils.translation import get_language, gettext, pgettext

from phr import terminology
from phr.audit import audit_write
from phr.fhir import fhir_instant, to_fhir
from phr.identifiers import MEDICAL_INSTITUTION_SYSTEM, municipality_check_digit
from phr.indexing import fhir_local_date
from phr.medications import current_medication_rows
from phr.models import (
    AuditEvent,
    Guardianship,
    Organization,
    Patient,
    Residency,
    Resource,
    Role,
    User,
)
from phr.roles import active_memberships, has_mfa, organizations_for
from phr.selectors import JAPAN, age_text, person_name
from phr.services import MCH_HANDBOOK_SYSTEM
from sharing.access import (
    EMERGENCY_CATEGORIES,
    Purpose,
    blocked_patients,
    decide,
    emergency_scope,
    forget_grants,
    visible_records,
)
from sharing.models import BreakGlass, DvBlock, EmergencyCard, EmergencyPreference

# --------------------------------------------------------------------------
# Codes
# --------------------------------------------------------------------------

LOINC = terminology.LOINC
UCUM = terminology.UCUM
EDD_TOKEN = f"{LOINC}|11778-8"
GESTATIONAL_AGE_LOINC = "49051-6"
# ABO and Rh group, ABO group, Rh type.
BLOOD_TYPE_CODES = ("882-1", "883-9", "10331-7")
PREGNANCY_DAYS = 280
# IPS (International Patient Summary) document and section codes (LOINC).
IPS_DOCUMENT = ("60591-5", "Patient summary Document")
SECTION_ALLERGIES = ("48765-2", "Allergies and adverse reactions Document")
SECTION_MEDICATIONS = ("10160-0", "History of Medication use Narrative")
SECTION_PROBLEMS = ("11450-4", "Problem list - Reported")
SECTION_PREGNANCY = ("10162-6", "History of pregnancies Narrative")
SECTION_ALERTS = ("104605-1", "Alert")
SECTION_RESULTS = ("30954-2", "Relevant diagnostic tests/laboratory data Narrative")
# The guardian contact has no IPS section: our own code.
SECTION_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/emergency-summary-section"
CONTACT_RELATIONSHIP_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0131"
LIST_EMPTY_REASON = "http://terminology.hl7.org/CodeSystem/list-empty-reason"
FLAG_DETAIL = "http://hl7.org/fhir/StructureDefinition/flag-detail"
# DICOM audit codes for a break-glass start (FHIR example
# auditevent-example-breakglass-start) and the v3 purpose of use.
DCM = "http://dicom.nema.org/resources/ontology/DCM"
BREAK_GLASS_AUDIT_CODES = {
    "type": {"system": DCM, "code": "110113", "display": "Security Alert"},
    "subtype": {"system": DCM, "code": "110127", "display": "Emergency Override Started"},
    "purposeOfEvent": {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
        "code": "BTG",
        "display": "break the glass",
    },
}

# Conditions that count as risk flags of a pregnancy or a child even when no
# Flag names them: ICD-10 chapter O prefixes for hypertensive disorders
# (O10–O16), diabetes in pregnancy (O24), placenta praevia (O44), placental
# abruption (O45) and preterm labour (O60).
RISK_ICD10_PREFIXES = ("O10", "O11", "O12", "O13", "O14", "O15", "O16", "O24", "O44", "O45", "O60")
RISK_CATEGORY_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/risk-flag"

CARD_DAYS_DEFAULT = 365
CARD_DAYS_MAX = 3650
SEARCH_HANDLE_SECONDS = 15 * 60
JUSTIFICATION_MAX = 2000
REVIEW_NOTE_MAX = 2000


def _bilingual(ja: str, en: str) -> str:
    return f"{ja} / {en}"


def break_glass_hours() -> int:
    return int(getattr(settings, "BREAK_GLASS_HOURS", 4))


# --------------------------------------------------------------------------
# Who may read a summary
# --------------------------------------------------------------------------


def summary_purpose(user: Any, patient: Patient) -> str | None:
    """The purpose under which `user` may read `patient`'s emergency summary:
    "emergency" (prior consent, the family's preference, an open
    break-glass window), "personal" (the patient herself, a child's
    guardian), or None."""
    if decide(user, patient, purpose=Purpose.EMERGENCY):
        return Purpose.EMERGENCY
    if decide(user, patient, purpose=Purpose.PERSONAL):
        return Purpose.PERSONAL
    return None


def _records(user: Any, patient: Patient, purpose: str) -> QuerySet[Resource]:
    # The family sees the same dataset a responder would: the emergency
    # scope, whatever else it may read.
    reach = visible_records(user, purpose)
    if purpose != Purpose.EMERGENCY:
        reach &= emergency_scope()
    return Resource.objects.filter(reach, compartments__overlap=[patient.pk])


def _card_records(patient: Patient) -> QuerySet[Resource]:
    return Resource.objects.filter(
        emergency_scope(), compartments__overlap=[patient.pk], deleted=False
    )


# --------------------------------------------------------------------------
# The facts of a summary
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Contact:
    name: str
    email: str
    relationship: str  # a Guardianship.Relationship value

    @property
    def relationship_label(self) -> str:
        return _relationship_label(self.relationship)


@dataclass(frozen=True)
class ClinicRef:
    name: str
    code: str = ""
    on_episode: bool = True  # named by the pregnancy, not found on a checkup


@dataclass
class SummaryFacts:
    """What an emergency summary shows, read once; rendered as a FHIR
    document Bundle (`summary_bundle`) or a page (`summary_page`)."""

    patient: Patient
    patient_resource: dict[str, Any] | None
    today: date
    generated_at: datetime
    allergies: list[Resource] = field(default_factory=list)
    medications: list[Resource] = field(default_factory=list)
    conditions: list[Resource] = field(default_factory=list)
    flags: list[Resource] = field(default_factory=list)
    risk_condition_ids: set[uuid.UUID] = field(default_factory=set)
    pregnancy: Resource | None = None
    due_date_record: Resource | None = None
    due_date: date | None = None
    blood_types: list[Resource] = field(default_factory=list)
    clinic: ClinicRef | None = None
    contacts: list[Contact] = field(default_factory=list)
    contact_note: str = ""

    @property
    def gestation_days(self) -> int | None:
        """Gestational age today from the due date: 280 − (due − today)
        days; None without a due date or outside a plausible pregnancy."""
        if self.pregnancy is None or self.due_date is None:
            return None
        days = PREGNANCY_DAYS - (self.due_date - self.today).days
        return days if 0 <= days <= 45 * 7 else None


def _codings(concept: Any) -> list[dict[str, Any]]:
    if not isinstance(concept, dict):
        return []
    return [c for c in concept.get("coding") or [] if isinstance(c, dict)]


def _status_code(content: dict[str, Any], element: str) -> str:
    for coding in _codings(content.get(element)):
        if coding.get("code"):
            return str(coding["code"])
    return ""


def _date_of(value: Any) -> date | None:
    return fhir_local_date(value)


def _is_active_allergy(content: dict[str, Any]) -> bool:
    clinical = _status_code(content, "clinicalStatus")
    verification = _status_code(content, "verificationStatus")
    return clinical not in ("inactive", "resolved") and verification not in (
        "refuted",
        "entered-in-error",
    )


def _is_active_condition(content: dict[str, Any]) -> bool:
    clinical = _status_code(content, "clinicalStatus")
    verification = _status_code(content, "verificationStatus")
    return clinical in ("", "active", "recurrence", "relapse") and verification not in (
        "refuted",
        "entered-in-error",
    )


def _is_active_flag(row: Resource, today: date) -> bool:
    if row.status != "active":
        return False
    end = _date_of((row.content.get("period") or {}).get("end"))
    return end is None or end >= today


def _flagged_condition_ids(flags: list[Resource]) -> set[str]:
    """Conditions a Flag points at (the flag-detail extension)."""
    found = set()
    for flag in flags:
        for extension in flag.content.get("extension") or []:
            if isinstance(extension, dict) and extension.get("url") == FLAG_DETAIL:
                reference = (extension.get("valueReference") or {}).get("reference", "")
                if isinstance(reference, str) and reference.startswith("Condition/"):
                    found.add(reference.removeprefix("Condition/"))
    return found


def _is_risk_condition(content: dict[str, Any]) -> bool:
    for category in content.get("category") or []:
        if any(c.get("system") == RISK_CATEGORY_SYSTEM for c in _codings(category)):
            return True
    for coding in _codings(content.get("code")):
        system = str(coding.get("system", "")).lower().replace("-", "")
        code = str(coding.get("code", "")).upper()
        if "icd10" in system and code.startswith(RISK_ICD10_PREFIXES):
            return True
    return False


def _clinic_from_reference(reference: Any) -> ClinicRef | None:
    """The organization a logical reference names (by 医療機関コード, or by
    its display), with our own name for it when we know the clinic."""
    if not isinstance(reference, dict):
        return None
    identifier = reference.get("identifier") or {}
    code = ""
    if isinstance(identifier, dict) and identifier.get("system") == MEDICAL_INSTITUTION_SYSTEM:
        code = str(identifier.get("value") or "")
    name = str(reference.get("display") or "")
    if code:
        org = Organization.objects.filter(kind=Organization.Kind.CLINIC, code=code).first()
        if org is not None:
            language = get_language() or "ja"
            name = org.name_en if (org.name_en and not language.startswith("ja")) else org.name
    if not (name or code):
        return None
    return ClinicRef(name=name or code, code=code)


def reachable_guardians(patient: Patient) -> list[Guardianship]:
    """The active guardians of a child who may be told of, or named in, its
    emergency: never a guardian DV-blocked from the child, nor one blocked
    from another guardian of the child (whose whereabouts an alert or a
    contact list would reveal: the child usually is where she is)."""
    if patient.kind != Patient.Kind.CHILD:
        return []
    guardianships = list(
        Guardianship.objects.active()
        .filter(child=patient, guardian__is_active=True)
        .select_related("guardian", "guardian__own_patient")
        .order_by("valid_from", "pk")
    )
    protected = {patient.pk}
    for g in guardianships:
        own = getattr(g.guardian, "own_patient", None)
        if own is not None:
            protected.add(own.pk)
    blocked_users = set(
        DvBlock.objects.active()
        .filter(patient_id__in=list(protected))
        .values_list("blocked_user_id", flat=True)
    )
    seen: set[int] = set()
    reachable = []
    for g in guardianships:
        if g.guardian_id in blocked_users or g.guardian_id in seen:
            continue
        seen.add(g.guardian_id)
        reachable.append(g)
    return reachable


def _contacts(patient: Patient, viewer: Any) -> list[Contact]:
    hidden = set(blocked_patients(viewer)) if viewer is not None else set()
    contacts = []
    for g in reachable_guardians(patient):
        own = getattr(g.guardian, "own_patient", None)
        if own is not None and own.pk in hidden:
            continue  # the viewer must learn nothing of this guardian
        contacts.append(Contact(g.guardian.display_name, g.guardian.email, g.relationship))
    return contacts


def _collect(
    patient: Patient, rows: QuerySet[Resource], *, viewer: Any, now: datetime | None = None
) -> SummaryFacts:
    moment = now or timezone.now()
    today = timezone.localtime(moment, JAPAN).date()
    facts = SummaryFacts(patient=patient, patient_resource=None, today=today, generated_at=moment)
    records = list(
        rows.filter(deleted=False).order_by(F("date_start").desc(nulls_last=True), "-last_updated")
    )
    episodes = []
    edd_records = []
    medication_rows = []
    for row in records:
        kind = row.resource_type
        if kind == "Patient":
            if row.pk == patient.pk:
                facts.patient_resource = to_fhir(row)
        elif kind == "AllergyIntolerance":
            if _is_active_allergy(row.content):
                facts.allergies.append(row)
        elif kind in ("MedicationStatement", "MedicationDispense"):
            medication_rows.append(row)
        elif kind == "Condition":
            if _is_active_condition(row.content):
                facts.conditions.append(row)
        elif kind == "Flag":
            if _is_active_flag(row, today):
                facts.flags.append(row)
        elif kind == "EpisodeOfCare":
            if row.status == "active":
                episodes.append(row)
        elif kind == "Observation":
            if row.status in ("entered-in-error", "cancelled"):
                continue
            if EDD_TOKEN in row.tokens:
                edd_records.append(row)
            elif any(f"{LOINC}|{code}" in row.tokens for code in BLOOD_TYPE_CODES):
                facts.blood_types.append(row)
    # The medicines taken now: the medication notebook's own rule (within
    # the days of supply, or a statement still active), one per medicine.
    facts.medications = current_medication_rows(medication_rows, today=today)
    flagged = _flagged_condition_ids(facts.flags)
    facts.risk_condition_ids = {
        c.pk for c in facts.conditions if str(c.pk) in flagged or _is_risk_condition(c.content)
    }
    # The newest result of each blood-type code.
    seen_codes: set[str] = set()
    newest = []
    for row in facts.blood_types:
        code = next((c for c in BLOOD_TYPE_CODES if f"{LOINC}|{c}" in row.tokens), "")
        if code not in seen_codes:
            seen_codes.add(code)
            newest.append(row)
    facts.blood_types = newest
    if episodes:
        episode = episodes[0]
        facts.pregnancy = episode
        started = episode.date_start
        for row in edd_records:
            # An estimated delivery date recorded during this pregnancy.
            if started is None or row.date_start is None or row.date_start >= started:
                due = _date_of(row.content.get("valueDateTime"))
                if due is not None:
                    facts.due_date_record, facts.due_date = row, due
                    break
        facts.clinic = _clinic_from_reference(episode.content.get("managingOrganization"))
        if facts.clinic is None:
            encounter = (
                rows.filter(
                    resource_type="Encounter",
                    category=terminology.Category.PRENATAL_CHECKUPS,
                    deleted=False,
                )
                .order_by(F("date_start").desc(nulls_last=True))
                .first()
            )
            if encounter is not None:
                found = _clinic_from_reference(encounter.content.get("serviceProvider"))
                if found is not None:
                    facts.clinic = ClinicRef(found.name, found.code, on_episode=False)
    facts.contacts = _contacts(patient, viewer)
    preference = EmergencyPreference.objects.filter(patient=patient).first()
    facts.contact_note = preference.contact_note if preference else ""
    return facts


def summary_facts(
    *, user: Any, patient: Patient, purpose: str | None = None, now: datetime | None = None
) -> SummaryFacts:
    """The emergency summary facts `user` may read of `patient`
    (PermissionDenied when no rule allows it). The caller audits."""
    purpose = purpose or summary_purpose(user, patient)
    if purpose not in (Purpose.EMERGENCY, Purpose.PERSONAL) or not decide(
        user, patient, purpose=purpose
    ):
        raise PermissionDenied
    return _collect(patient, _records(user, patient, purpose), viewer=user, now=now)


def emergency_summary(
    *, user: Any, patient: Patient, now: datetime | None = None
) -> dict[str, Any]:
    """The IPS-like emergency summary of `patient` as `user` may read it: a
    FHIR R4 document Bundle. PermissionDenied when no rule allows it."""
    return summary_bundle(summary_facts(user=user, patient=patient, now=now))


# --------------------------------------------------------------------------
# Words
# --------------------------------------------------------------------------


def _language() -> str:
    return get_language() or "ja"


def concept_text(concept: Any) -> str:
    """A CodeableConcept in words: our dictionary's label in the active
    language first, then the sender's text, then a coding's display, then
    its code."""
    codings = _codings(concept)
    for coding in codings:
        item = terminology.item_for_coding(coding.get("system"), coding.get("code"))
        if item is not None:
            return item.label(_language())
    if isinstance(concept, dict) and concept.get("text"):
        return str(concept["text"])
    for coding in codings:
        if coding.get("display"):
            return str(coding["display"])
    for coding in codings:
        if coding.get("code"):
            return str(coding["code"])
    return ""


def _observation_value(content: dict[str, Any]) -> str:
    if "valueCodeableConcept" in content:
        return concept_text(content["valueCodeableConcept"])
    if "valueString" in content:
        return str(content["valueString"])
    quantity = content.get("valueQuantity")
    if isinstance(quantity, dict) and "value" in quantity:
        return f"{quantity['value']} {quantity.get('unit') or ''}".strip()
    return ""


def _record_label(row: Resource) -> str:
    content = row.content
    for key in ("code", "medicationCodeableConcept"):
        label = concept_text(content.get(key))
        if label:
            return label
    reference = content.get("medicationReference")
    if isinstance(reference, dict) and reference.get("display"):
        return str(reference["display"])
    return gettext("(not named)")


def _allergy_detail(content: dict[str, Any]) -> str:
    parts = []
    if content.get("criticality") == "high":
        parts.append(gettext("high risk"))
    manifestations = []
    for reaction in content.get("reaction") or []:
        for manifestation in reaction.get("manifestation") or []:
            text = concept_text(manifestation)
            if text and text not in manifestations:
                manifestations.append(text)
    if manifestations:
        parts.append(gettext("reaction: %(reactions)s") % {"reactions": "、".join(manifestations)})
    return " / ".join(parts)


def _medication_detail(content: dict[str, Any]) -> str:
    for dosage in content.get("dosage") or content.get("dosageInstruction") or []:
        if isinstance(dosage, dict) and dosage.get("text"):
            return str(dosage["text"])
    return ""


def _flag_detail(content: dict[str, Any]) -> str:
    categories = content.get("category") or []
    return concept_text(categories[0]) if categories else ""


def _relationship_label(relationship: str) -> str:
    return str(Guardianship.Relationship(relationship).label) if relationship else ""


def gestation_text(days: int | None) -> str:
    if days is None:
        return ""
    weeks, rest = divmod(days, 7)
    return gettext("%(weeks)d weeks %(days)d days") % {"weeks": weeks, "days": rest}


def _narrative(lines: list[str]) -> dict[str, str]:
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return {
        "status": "generated",
        "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><ul>{items}</ul></div>',
    }


# --------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    label: str
    detail: str = ""
    since: date | None = None
    risk: bool = False


@dataclass
class SummaryPage:
    name: str
    kana: str
    birth_date: date | None
    age: str
    sex: str
    is_child: bool
    blood_type: list[Line]
    allergies: list[Line]
    medications: list[Line]
    conditions: list[Line]
    alerts: list[Line]
    pregnant: bool
    due_date: date | None
    gestation: str
    clinic: str
    contacts: list[Contact]
    contact_note: str
    generated_at: datetime


def _kana_name(resource: dict[str, Any] | None) -> str:
    for name in (resource or {}).get("name") or []:
        for extension in name.get("extension") or []:
            if extension.get("valueCode") == "SYL":
                given = " ".join(str(g) for g in name.get("given") or [])
                return " ".join(p for p in (str(name.get("family") or ""), given) if p)
    return ""


def _since(row: Resource) -> date | None:
    return timezone.localtime(row.date_start, JAPAN).date() if row.date_start else None


SEX_LABELS = {
    "male": lambda: pgettext("sex", "male"),
    "female": lambda: pgettext("sex", "female"),
    "other": lambda: pgettext("sex", "other"),
    "unknown": lambda: pgettext("sex", "unknown"),
}


def summary_page(facts: SummaryFacts) -> SummaryPage:
    """The summary as a page shows it, in the active language."""
    resource = facts.patient_resource
    birth = _date_of((resource or {}).get("birthDate"))
    is_child = facts.patient.kind == Patient.Kind.CHILD
    if birth is None:
        age = ""
    elif is_child:
        age = age_text(birth, facts.today)
    else:
        years = (
            facts.today.year
            - birth.year
            - ((facts.today.month, facts.today.day) < (birth.month, birth.day))
        )
        age = gettext("%(years)d years old") % {"years": years}
    gender = (resource or {}).get("gender", "")
    alerts = [Line(_record_label(f), _flag_detail(f.content), _since(f)) for f in facts.flags]
    alerts += [
        Line(_record_label(c), gettext("condition"), _since(c), risk=True)
        for c in facts.conditions
        if c.pk in facts.risk_condition_ids
    ]
    return SummaryPage(
        name=person_name(resource),
        kana=_kana_name(resource),
        birth_date=birth,
        age=age,
        sex=SEX_LABELS[gender]() if gender in SEX_LABELS else "",
        is_child=is_child,
        blood_type=[
            Line(_record_label(b), _observation_value(b.content), _since(b))
            for b in facts.blood_types
        ],
        allergies=[
            Line(_record_label(a), _allergy_detail(a.content), _since(a)) for a in facts.allergies
        ],
        medications=[
            Line(_record_label(m), _medication_detail(m.content), _since(m))
            for m in facts.medications
        ],
        conditions=[
            Line(_record_label(c), "", _since(c), risk=c.pk in facts.risk_condition_ids)
            for c in facts.conditions
        ],
        alerts=alerts,
        pregnant=facts.pregnancy is not None,
        due_date=facts.due_date,
        gestation=gestation_text(facts.gestation_days),
        clinic=facts.clinic.name if facts.clinic else "",
        contacts=facts.contacts,
        contact_note=facts.contact_note,
        generated_at=facts.generated_at,
    )


# --------------------------------------------------------------------------
# The FHIR document Bundle
# --------------------------------------------------------------------------

_REFERENCE = re.compile(r"^([A-Za-z]+)/([0-9a-fA-F-]{36})$")


def _rewrite_references(node: Any, urls: dict[str, str]) -> Any:
    """A copy of `node` whose references point at the Bundle's entries
    (urn:uuid:…). A reference to a record not in the summary keeps only
    its display or identifier (the summary names nothing it leaves out)."""
    if isinstance(node, list):
        return [_rewrite_references(item, urls) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _rewrite_references(value, urls) for key, value in node.items()}
    reference = node.get("reference")
    if isinstance(reference, str) and not reference.startswith(("urn:", "#")):
        if reference in urls:
            out["reference"] = urls[reference]
        else:
            del out["reference"]
            if "display" not in out and "identifier" not in out:
                match = _REFERENCE.match(reference)
                out["display"] = match.group(1) if match else "—"
    return out


def _patient_for_summary(resource: dict[str, Any], contacts: list[Contact]) -> dict[str, Any]:
    """The Patient as the summary shows it: no address (never), no photo,
    no links to other records; identifiers only the MCH handbook number;
    contacts are the reachable guardians, from the control tables."""
    out = {
        key: value
        for key, value in resource.items()
        if key not in ("address", "photo", "link", "contact", "identifier")
    }
    handbook = [
        i
        for i in resource.get("identifier") or []
        if isinstance(i, dict) and str(i.get("system", "")).startswith("urn:hagukumi:mch-handbook:")
    ]
    if handbook:
        out["identifier"] = handbook
    if contacts:
        out["contact"] = [
            {
                "relationship": [
                    {
                        "coding": [
                            {
                                "system": CONTACT_RELATIONSHIP_SYSTEM,
                                "code": "C",
                                "display": "Emergency Contact",
                            }
                        ],
                        "text": _relationship_label(c.relationship),
                    }
                ],
                **({"name": {"text": c.name}} if c.name else {}),
                "telecom": [{"system": "email", "value": c.email, "use": "home"}],
            }
            for c in contacts
        ]
    return out


def _organization_resource(clinic: ClinicRef) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Organization", "name": clinic.name}
    if clinic.code:
        resource["identifier"] = [{"system": MEDICAL_INSTITUTION_SYSTEM, "value": clinic.code}]
    return resource


def _section(
    title: str,
    code: tuple[str, str] | str,
    lines: list[str],
    entries: list[str],
) -> dict[str, Any]:
    if isinstance(code, tuple):
        coding = {"system": LOINC, "code": code[0], "display": code[1]}
    else:
        coding = {"system": SECTION_SYSTEM, "code": code}
    section: dict[str, Any] = {"title": title, "code": {"coding": [coding]}}
    if lines:
        section["text"] = _narrative(lines)
    else:
        # No record is not "none": the summary says it does not know.
        section["text"] = _narrative([gettext("No records")])
    if entries:
        section["entry"] = [{"reference": url} for url in entries]
    elif not lines:
        section["emptyReason"] = {"coding": [{"system": LIST_EMPTY_REASON, "code": "unavailable"}]}
    return section


def _gestation_observation(
    days: int, facts: SummaryFacts, patient_url: str, edd_url: str
) -> dict[str, Any]:
    """Gestational age today, derived from the estimated delivery date."""
    weeks, rest = divmod(days, 7)
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {
            "coding": [
                {
                    "system": LOINC,
                    "code": GESTATIONAL_AGE_LOINC,
                    "display": "Gestational age in weeks",
                }
            ],
            "text": gettext("Gestational age"),
        },
        "subject": {"reference": patient_url},
        "effectiveDateTime": facts.today.isoformat(),
        "valueQuantity": {"value": round(days / 7, 2), "unit": "wk", "system": UCUM, "code": "wk"},
        "derivedFrom": [{"reference": edd_url}],
        "note": [{"text": f"{weeks}w{rest}d = 280 days - (estimated delivery date - today)"}],
    }


def summary_bundle(facts: SummaryFacts) -> dict[str, Any]:
    """The facts as an IPS-like FHIR document Bundle: the Composition first,
    then the Patient and every record it cites, all as urn:uuid entries."""
    urls: dict[str, str] = {}
    resources: list[tuple[str, dict[str, Any]]] = []

    def add(row: Resource) -> str:
        key = f"{row.resource_type}/{row.pk}"
        if key not in urls:
            urls[key] = f"urn:uuid:{row.pk}"
            resources.append((urls[key], to_fhir(row)))
        return urls[key]

    patient_url = f"urn:uuid:{facts.patient.pk}"
    urls[f"Patient/{facts.patient.pk}"] = patient_url
    if facts.patient_resource is not None:
        patient_resource = _patient_for_summary(facts.patient_resource, facts.contacts)
    else:
        patient_resource = {"resourceType": "Patient", "id": str(facts.patient.pk)}

    allergy_urls = [add(r) for r in facts.allergies]
    medication_urls = [add(r) for r in facts.medications]
    condition_urls = [add(r) for r in facts.conditions]
    flag_urls = [add(r) for r in facts.flags]
    blood_urls = [add(r) for r in facts.blood_types]
    pregnancy_urls: list[str] = []
    pregnancy_lines: list[str] = []
    extra: list[tuple[str, dict[str, Any]]] = []
    clinic_url = ""
    if facts.pregnancy is not None:
        pregnancy_urls.append(add(facts.pregnancy))
        pregnancy_lines.append(gettext("Pregnant"))
        if facts.clinic is not None:
            # The store keeps the clinic as a logical reference (identifier
            # and name): the document carries it as an Organization entry.
            clinic_key = facts.clinic.code or facts.clinic.name
            clinic_url = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'clinic:{clinic_key}')}"
            extra.append((clinic_url, _organization_resource(facts.clinic)))
            pregnancy_urls.append(clinic_url)
            pregnancy_lines.append(
                gettext("Delivery clinic: %(clinic)s") % {"clinic": facts.clinic.name}
            )
        if facts.due_date_record is not None and facts.due_date is not None:
            edd_url = add(facts.due_date_record)
            pregnancy_urls.append(edd_url)
            pregnancy_lines.append(
                gettext("Due date: %(date)s") % {"date": facts.due_date.isoformat()}
            )
            days = facts.gestation_days
            if days is not None:
                gestation_url = f"urn:uuid:{uuid.uuid4()}"
                extra.append(
                    (gestation_url, _gestation_observation(days, facts, patient_url, edd_url))
                )
                pregnancy_urls.append(gestation_url)
                pregnancy_lines.append(
                    gettext("Gestational age today: %(age)s") % {"age": gestation_text(days)}
                )

    page = summary_page(facts)
    guardian_lines = [
        f"{_relationship_label(c.relationship)} {c.name} <{c.email}>".strip()
        for c in facts.contacts
    ]
    if facts.contact_note:
        guardian_lines.append(facts.contact_note)
    sections = [
        _section(
            gettext("Allergies and intolerances"),
            SECTION_ALLERGIES,
            [f"{line.label} {line.detail}".strip() for line in page.allergies],
            allergy_urls,
        ),
        _section(
            gettext("Current medicines"),
            SECTION_MEDICATIONS,
            [f"{line.label} {line.detail}".strip() for line in page.medications],
            medication_urls,
        ),
        _section(
            gettext("Conditions"),
            SECTION_PROBLEMS,
            [line.label for line in page.conditions],
            condition_urls,
        ),
        _section(gettext("Pregnancy"), SECTION_PREGNANCY, pregnancy_lines, pregnancy_urls),
        _section(
            gettext("Alerts and risk flags"),
            SECTION_ALERTS,
            [line.label for line in page.alerts],
            flag_urls + [urls[f"Condition/{c}"] for c in sorted(facts.risk_condition_ids, key=str)],
        ),
        _section(
            gettext("Blood type"),
            SECTION_RESULTS,
            [f"{line.label}: {line.detail}" for line in page.blood_type],
            blood_urls,
        ),
        _section(gettext("Guardian contact"), "guardian-contact", guardian_lines, []),
    ]
    composition_id = uuid.uuid4()
    composition = {
        "resourceType": "Composition",
        "id": str(composition_id),
        "status": "final",
        "type": {
            "coding": [{"system": LOINC, "code": IPS_DOCUMENT[0], "display": IPS_DOCUMENT[1]}]
        },
        "subject": {"reference": patient_url},
        "date": fhir_instant(facts.generated_at),
        "author": [{"display": gettext("Hagukumi PHR")}],
        "title": gettext("Emergency summary"),
        "confidentiality": "R",
        "section": sections,
    }
    entries = [{"fullUrl": f"urn:uuid:{composition_id}", "resource": composition}]
    entries.append(
        {"fullUrl": patient_url, "resource": _rewrite_references(patient_resource, urls)}
    )
    for url, resource in resources + extra:
        resource = _rewrite_references(resource, urls)
        clinic = facts.clinic
        if (
            clinic_url
            and clinic
            and clinic.on_episode
            and resource["resourceType"] == "EpisodeOfCare"
        ):
            resource["managingOrganization"] = {"reference": clinic_url, "display": clinic.name}
        entries.append({"fullUrl": url, "resource": resource})
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid.uuid4()}"},
        "type": "document",
        "timestamp": fhir_instant(facts.generated_at),
        "entry": entries,
    }


# --------------------------------------------------------------------------
# Break-glass: who may, the search, the window, the alerts, the review
# --------------------------------------------------------------------------


def responder_organization(user: Any) -> Organization | None:
    """The emergency service a responder acts for, when the user is a
    responder with MFA; else None."""
    if not has_mfa(user):
        return None
    orgs = organizations_for(user, Role.EMERGENCY_RESPONDER)
    return orgs[0] if orgs else None


_HIRAGANA = {code: code + 0x60 for code in range(0x3041, 0x3097)}
_DASHES = str.maketrans(dict.fromkeys("‐‑‒–—―−－ー─", "-"))


def normalise_name(text: str) -> str:
    """A name as typed, for an exact comparison: NFKC (full-width and
    half-width forms alike), no spaces, hiragana as katakana (kana names
    are stored in katakana), case-folded."""
    folded = unicodedata.normalize("NFKC", text or "")
    folded = "".join(folded.split()).translate(_HIRAGANA)
    return folded.casefold()


def normalise_identifier(text: str) -> str:
    folded = unicodedata.normalize("NFKC", text or "")
    return "".join(folded.split()).translate(_DASHES)


def normalise_municipality_code(text: str) -> str:
    """A 6-digit local government code; 5 digits get their check digit."""
    code = normalise_identifier(text)
    if len(code) == 5 and code.isascii() and code.isdigit():
        return code + municipality_check_digit(code)
    return code


def _names_match(resource: dict[str, Any], family: str, given: str) -> bool:
    for name in resource.get("name") or []:
        if not isinstance(name, dict):
            continue
        stored_given = "".join(str(g) for g in name.get("given") or [])
        if normalise_name(str(name.get("family") or "")) == family and (
            normalise_name(stored_given) == given
        ):
            return True
    return False


def _survivor(patient_id: uuid.UUID) -> Patient | None:
    patient = Patient.objects.filter(pk=patient_id).first()
    while patient is not None and patient.merged_into_id is not None:
        patient = patient.merged_into
    return patient


def _match_by_name(
    family: str, given: str, birth_date: date, municipality_code: str
) -> list[uuid.UUID]:
    residents = Residency.objects.current().filter(
        municipality__kind=Organization.Kind.MUNICIPALITY, municipality__code=municipality_code
    )
    candidates = Resource.objects.filter(
        resource_type="Patient",
        deleted=False,
        content__birthDate=birth_date.isoformat(),
        id__in=residents.values("patient_id"),
    ).values_list("id", "content")
    wanted_family, wanted_given = normalise_name(family), normalise_name(given)
    return [
        pid for pid, content in candidates if _names_match(content, wanted_family, wanted_given)
    ]


def _match_by_handbook(number: str, municipality_code: str) -> list[uuid.UUID]:
    system = MCH_HANDBOOK_SYSTEM.format(municipality_code=municipality_code)
    return list(
        Resource.objects.filter(
            resource_type="Patient",
            deleted=False,
            tokens__contains=[f"{system}|{normalise_identifier(number)}"],
        ).values_list("id", flat=True)[:2]
    )


def card_token_from_link(link: str) -> str:
    """The token of an emergency card link (the whole URL, its path, or the
    token alone)."""
    text = (link or "").strip()
    path = urlsplit(text).path if "/" in text else text
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[-2] == "c":
        return parts[-1]
    return parts[-1] if parts else ""


@dataclass(frozen=True)
class SearchQuery:
    method: str  # "name", "handbook" or "card"
    family: str = ""
    given: str = ""
    birth_date: date | None = None
    municipality_code: str = ""
    handbook_number: str = ""
    card_link: str = ""


def _validate_search(query: SearchQuery) -> SearchQuery:
    errors: dict[str, str] = {}
    code = normalise_municipality_code(query.municipality_code)
    if query.method == "name":
        if not normalise_name(query.family):
            errors["family"] = _bilingual("姓を入力してください。", "Enter the family name.")
        if not normalise_name(query.given):
            errors["given"] = _bilingual("名を入力してください。", "Enter the given name.")
        if query.birth_date is None:
            errors["birth_date"] = _bilingual(
                "生年月日を入力してください。", "Enter the birth date."
            )
        if not re.fullmatch(r"\d{6}", code):
            errors["municipality_code"] = _bilingual(
                "市区町村コード(6桁)を入力してください。", "Enter the 6-digit municipality code."
            )
    elif query.method == "handbook":
        number = normalise_identifier(query.handbook_number)
        if not number:
            errors["handbook_number"] = _bilingual(
                "母子健康手帳の番号を入力してください。", "Enter the MCH handbook number."
            )
        if not code and re.match(r"^\d{6}-", number):
            code = number[:6]  # the number begins with the issuing municipality's code
        if not re.fullmatch(r"\d{6}", code):
            errors["municipality_code"] = _bilingual(
                "市区町村コード(6桁)を入力してください。", "Enter the 6-digit municipality code."
            )
    elif query.method == "card":
        if not card_token_from_link(query.card_link):
            errors["card_link"] = _bilingual(
                "緊急カードのリンクを入力してください。", "Enter the emergency card link."
            )
    else:
        errors["method"] = _bilingual("検索方法を選んでください。", "Choose how to search.")
    if errors:
        raise ValidationError(errors)
    return SearchQuery(
        method=query.method,
        family=query.family,
        given=query.given,
        birth_date=query.birth_date,
        municipality_code=code,
        handbook_number=query.handbook_number,
        card_link=query.card_link,
    )


def break_glass_search(*, user: Any, query: SearchQuery) -> Patient | None:
    """Find one person by an exact match (name in kanji or kana + birth date
    + municipality; MCH handbook number; emergency card link). The answer is
    the patient only when exactly one matches and the responder is not
    DV-blocked from them; the caller shows nothing but "one match" or "no
    match". Audited either way (emergency.search)."""
    organization = responder_organization(user)
    if organization is None:
        raise PermissionDenied
    query = _validate_search(query)
    ids: list[uuid.UUID]
    if query.method == "name":
        assert query.birth_date is not None
        ids = _match_by_name(query.family, query.given, query.birth_date, query.municipality_code)
    elif query.method == "handbook":
        ids = _match_by_handbook(query.handbook_number, query.municipality_code)
    else:
        card = card_find(token=card_token_from_link(query.card_link))
        ids = [card.patient_id] if card is not None else []
    survivors = {p.pk: p for p in (_survivor(i) for i in ids) if p is not None}
    found = next(iter(survivors.values())) if len(survivors) == 1 else None
    entry: dict[str, Any] = {
        "action": "emergency.search",
        "actor_id": user.pk,
        "actor_role": Role.EMERGENCY_RESPONDER,
        "organization_id": organization.pk,
        "purpose": Purpose.EMERGENCY,
    }
    if found is not None and found.pk in blocked_patients(user):
        # DV等支援措置: the blocked user learns nothing, not even a match.
        audit_write(
            **entry,
            outcome="denied",
            patient_id=found.pk,
            detail={"method": query.method, "result": "blocked", "rule": "dv_block"},
        )
        return None
    if found is None:
        result = "ambiguous" if len(survivors) > 1 else "none"
        audit_write(**entry, outcome="denied", detail={"method": query.method, "result": result})
        return None
    audit_write(
        **entry,
        outcome="success",
        patient_id=found.pk,
        detail={"method": query.method, "result": "one"},
    )
    return found


def review_municipality_for(patient: Patient) -> Organization | None:
    residency = (
        Residency.objects.current()
        .filter(patient=patient)
        .select_related("municipality")
        .order_by("-valid_from", "-pk")
        .first()
    )
    return residency.municipality if residency else None


@transaction.atomic
def break_glass_open(
    *, responder: Any, patient: Patient, reason: str, justification: str
) -> BreakGlass:
    """Open a break-glass window: the responder may read the patient's
    emergency summary for BREAK_GLASS_HOURS, every read flagged in the
    audit. Refused (ValidationError, nothing written) without a reason or a
    justification. The caller must have re-authenticated the responder
    (phr.auth.sensitive_action). Alerts the guardians once committed."""
    organization = responder_organization(responder)
    if organization is None or patient.pk in blocked_patients(responder):
        raise PermissionDenied
    errors: dict[str, str] = {}
    if reason not in BreakGlass.Reason.values:
        errors["reason"] = _bilingual("理由を選んでください。", "Choose a reason.")
    text = (justification or "").strip()
    if not text:
        errors["justification"] = _bilingual(
            "状況の説明を入力してください。", "Describe the situation (justification)."
        )
    elif len(text) > JUSTIFICATION_MAX:
        errors["justification"] = _bilingual(
            f"{JUSTIFICATION_MAX}文字以内で入力してください。",
            f"Use at most {JUSTIFICATION_MAX} characters.",
        )
    if errors:
        raise ValidationError(errors)
    now = timezone.now()
    window = BreakGlass.objects.create(
        responder=responder,
        organization=organization,
        patient=patient,
        reason=reason,
        justification=text,
        starts_at=now,
        ends_at=now + timedelta(hours=break_glass_hours()),
        review_municipality=review_municipality_for(patient),
    )
    audit_write(
        action="break_glass.start",
        actor_id=responder.pk,
        actor_role=Role.EMERGENCY_RESPONDER,
        organization_id=organization.pk,
        patient_id=patient.pk,
        categories=sorted(str(c) for c in EMERGENCY_CATEGORIES),
        purpose=Purpose.EMERGENCY,
        break_glass=True,
        detail={
            "break_glass": window.pk,
            "reason": reason,
            "ends_at": fhir_instant(window.ends_at),
            **BREAK_GLASS_AUDIT_CODES,
        },
    )
    from sharing.tasks_emergency import send_break_glass_alert

    transaction.on_commit(partial(send_break_glass_alert.delay, window.pk))
    forget_grants(responder)
    return window


def break_glass_alert_recipients(window: BreakGlass) -> list[User]:
    """Who is told at once of a break-glass: the adult patient's own
    account, or a child's reachable guardians — never a DV-blocked one."""
    patient = window.patient
    if patient.kind == Patient.Kind.CHILD:
        users = [g.guardian for g in reachable_guardians(patient)]
    else:
        account = patient.account
        users = [account] if account is not None and account.is_active else []
    return [u for u in users if u.email]


def break_glass_send_alerts(*, break_glass_id: int) -> int:
    """Email each recipient, in their own language, that an emergency
    service opened the emergency summary. The mail names the service, the
    time, the reason and the window — no health data. Sending is recorded
    in the audit once (break_glass.alert), so a task run twice does not
    mail twice."""
    from django.core.mail import send_mail
    from django.utils import translation

    window = (
        BreakGlass.objects.select_related("organization", "patient", "patient__account")
        .filter(pk=break_glass_id)
        .first()
    )
    if window is None:
        return 0
    already = AuditEvent.objects.filter(
        patient_id=window.patient_id, action="break_glass.alert", detail__break_glass=window.pk
    ).exists()
    if already:
        return 0
    from django.urls import reverse

    history_url = settings.SITE_URL.rstrip("/") + reverse("sharing:history")
    sent = 0
    recipients = break_glass_alert_recipients(window)
    for user in recipients:
        with translation.override(user.language or "ja"):
            organization = window.organization
            org_name = (
                organization.name_en
                if organization.name_en and user.language == "en"
                else organization.name
            )
            subject = gettext("Emergency access to your family's records")
            body = gettext(
                "An emergency service opened the emergency summary of a member of your "
                "family without prior consent (break-glass).\n\n"
                "Service: %(organization)s\n"
                "Opened at: %(start)s\n"
                "Access ends: %(end)s\n"
                "Reason given: %(reason)s\n\n"
                "Only the emergency summary (allergies, medicines, conditions, pregnancy, "
                "blood type) can be seen, and every access is recorded and reviewed by the "
                "municipality's privacy officer. You can see the details in the access "
                "history of Hagukumi:\n%(url)s\n"
            ) % {
                "organization": org_name,
                "start": timezone.localtime(window.starts_at, JAPAN).strftime("%Y-%m-%d %H:%M"),
                "end": timezone.localtime(window.ends_at, JAPAN).strftime("%Y-%m-%d %H:%M"),
                "reason": BreakGlass.Reason(window.reason).label,
                "url": history_url,
            }
            sent += send_mail(subject, body, None, [user.email])
    audit_write(
        action="break_glass.alert",
        actor_role="system",
        patient_id=window.patient_id,
        purpose=Purpose.EMERGENCY,
        detail={"break_glass": window.pk, "recipients": len(recipients)},
    )
    return sent


def privacy_officer_municipalities(user: Any) -> list[Organization]:
    """The municipalities where `user` is privacy officer (with MFA)."""
    if not has_mfa(user):
        return []
    return [
        m.organization
        for m in active_memberships(user)
        if m.role == Role.MUNICIPAL_STAFF and m.is_privacy_officer
    ]


@dataclass
class ReviewItem:
    window: BreakGlass
    reads: list[AuditEvent]
    own: bool  # the reviewer opened it himself: he may not review it

    @property
    def is_open(self) -> bool:
        now = timezone.now()
        return self.window.starts_at <= now < self.window.ends_at


def break_glass_review_queue(*, user: Any) -> list[ReviewItem]:
    """Break-glass uses awaiting review by this privacy officer's
    municipalities, newest first, each with the audit rows of its window."""
    municipalities = [m.pk for m in privacy_officer_municipalities(user)]
    if not municipalities:
        raise PermissionDenied
    windows = list(
        BreakGlass.objects.awaiting_review()
        .filter(review_municipality_id__in=municipalities)
        .select_related("responder", "organization")
        .order_by("-starts_at")[:200]
    )
    items = []
    for window in windows:
        reads = list(
            AuditEvent.objects.filter(
                patient_id=window.patient_id,
                break_glass=True,
                detail__break_glass=window.pk,
            ).order_by("occurred_at")[:200]
        )
        items.append(ReviewItem(window, reads, own=window.responder_id == user.pk))
    return items


def break_glass_for_review(*, user: Any, break_glass_id: Any) -> BreakGlass:
    """The break-glass row this privacy officer may review (PermissionDenied
    for anyone else: the caller answers 404)."""
    municipalities = [m.pk for m in privacy_officer_municipalities(user)]
    try:
        pk = int(break_glass_id)
    except (TypeError, ValueError):
        raise PermissionDenied from None
    window = BreakGlass.objects.filter(pk=pk, review_municipality_id__in=municipalities).first()
    if window is None:
        raise PermissionDenied
    return window


@transaction.atomic
def break_glass_review(
    *, break_glass: BreakGlass, by: Any, review: str, note: str = ""
) -> BreakGlass:
    """A privacy officer of the review municipality marks a break-glass use
    appropriate or not. A second person: the responder may not review his
    own. A note is required when it was not appropriate."""
    municipalities = {m.pk for m in privacy_officer_municipalities(by)}
    if break_glass.review_municipality_id not in municipalities:
        raise PermissionDenied
    errors: dict[str, str] = {}
    if break_glass.responder_id == by.pk:
        errors["review"] = _bilingual(
            "自分の緊急アクセスは審査できません。別の担当者が審査します。",
            "You cannot review your own emergency access; another officer must.",
        )
    elif review not in BreakGlass.Review.values:
        errors["review"] = _bilingual("審査結果を選んでください。", "Choose a review result.")
    text = (note or "").strip()
    if review == BreakGlass.Review.INAPPROPRIATE and not text and not errors:
        errors["note"] = _bilingual(
            "不適切とする理由を記入してください。", "Say why it was not appropriate."
        )
    if len(text) > REVIEW_NOTE_MAX:
        errors["note"] = _bilingual(
            f"{REVIEW_NOTE_MAX}文字以内で入力してください。",
            f"Use at most {REVIEW_NOTE_MAX} characters.",
        )
    if errors:
        raise ValidationError(errors)
    now = timezone.now()
    # Guarded: of two officers reviewing at once, one wins.
    updated = BreakGlass.objects.filter(pk=break_glass.pk, reviewed_at__isnull=True).update(
        reviewed_by=by, reviewed_at=now, review=review, review_note=text
    )
    if not updated:
        raise ValidationError(
            {"review": _bilingual("すでに審査されています。", "This use was already reviewed.")}
        )
    break_glass.refresh_from_db()
    audit_write(
        action="break_glass.review",
        actor_id=by.pk,
        actor_role=Role.MUNICIPAL_STAFF,
        organization_id=break_glass.review_municipality_id,
        patient_id=break_glass.patient_id,
        purpose=Purpose.PUBLIC_HEALTH,
        detail={"break_glass": break_glass.pk, "review": review},
    )
    return break_glass


# --------------------------------------------------------------------------
# Emergency cards
# --------------------------------------------------------------------------


def card_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def card_find(*, token: str) -> EmergencyCard | None:
    """The card this token opens, if it is valid now (not expired, not
    revoked); None for anything else, alike."""
    if not token or len(token) > 200:
        return None
    return (
        EmergencyCard.objects.filter(
            token_hash=card_token_hash(token),
            revoked_at__isnull=True,
            expires_at__gt=timezone.now(),
        )
        .select_related("patient")
        .first()
    )


@transaction.atomic
def card_create(
    *, patient: Patient, by: Any, days: int = CARD_DAYS_DEFAULT, passcode: str = ""
) -> tuple[EmergencyCard, str]:
    """A new emergency card for `patient`: returns the card and its token,
    which is shown once and never stored (only its SHA-256)."""
    from sharing.services import may_decide_for

    if not may_decide_for(by, patient):
        raise PermissionDenied
    errors: dict[str, str] = {}
    if not isinstance(days, int) or not 1 <= days <= CARD_DAYS_MAX:
        errors["days"] = _bilingual(
            f"有効期間は1〜{CARD_DAYS_MAX}日で指定してください。",
            f"The card must be valid for 1 to {CARD_DAYS_MAX} days.",
        )
    if passcode and not 4 <= len(passcode) <= 32:
        errors["passcode"] = _bilingual(
            "パスコードは4〜32文字にしてください。", "A passcode has 4 to 32 characters."
        )
    if errors:
        raise ValidationError(errors)
    token = secrets.token_urlsafe(32)
    now = timezone.now()
    card = EmergencyCard.objects.create(
        patient=patient,
        created_by=by,
        token_hash=card_token_hash(token),
        passcode_hash=make_password(passcode) if passcode else "",
        created_at=now,
        expires_at=now + timedelta(days=days),
    )
    audit_write(
        action="emergency.card_create",
        actor_id=by.pk,
        patient_id=patient.pk,
        purpose=Purpose.PERSONAL,
        detail={"card": card.pk, "days": days, "passcode": bool(passcode)},
    )
    return card, token


@transaction.atomic
def card_revoke(*, card: EmergencyCard, by: Any) -> EmergencyCard:
    from sharing.services import may_decide_for

    if not may_decide_for(by, card.patient):
        raise PermissionDenied
    if card.revoked_at is not None:
        return card  # revoking twice changes nothing
    card.revoked_at = timezone.now()
    card.save(update_fields=["revoked_at"])
    audit_write(
        action="emergency.card_revoke",
        actor_id=by.pk,
        patient_id=card.patient_id,
        purpose=Purpose.PERSONAL,
        detail={"card": card.pk},
    )
    return card


class WrongPasscode(Exception):
    """The card has a passcode and this was not it."""


def card_open(*, card: EmergencyCard, passcode: str = "") -> SummaryFacts:
    """Open a valid card: check its passcode, build the summary of its
    patient over the emergency scope, note the opening and audit it (actor
    none, role "card") so the family sees it in its access history."""
    entry = {
        "action": "emergency.card_open",
        "actor_role": "card",
        "patient_id": card.patient_id,
        "purpose": Purpose.EMERGENCY,
    }
    if card.passcode_hash and not check_password(passcode or "", card.passcode_hash):
        audit_write(**entry, outcome="denied", detail={"card": card.pk, "rule": "passcode"})
        raise WrongPasscode
    facts = _collect(card.patient, _card_records(card.patient), viewer=None)
    EmergencyCard.objects.filter(pk=card.pk).update(last_opened_at=facts.generated_at)
    audit_write(
        **entry,
        outcome="success",
        categories=sorted(str(c) for c in EMERGENCY_CATEGORIES),
        detail={"card": card.pk},
    )
    return facts


@dataclass
class CardOwner:
    patient_id: uuid.UUID
    name: str
    cards: list[EmergencyCard]


def cards_for(*, user: Any) -> list[CardOwner]:
    """The people `user` may make cards for (herself, her children — not a
    child she is DV-blocked from), with their cards, newest first."""
    from phr.selectors import family
    from sharing.services import may_decide_for

    people = family(user=user)
    candidates = ([people.me] if people.me else []) + people.children
    owners = []
    patients = {p.pk: p for p in Patient.objects.filter(pk__in=[c.patient_id for c in candidates])}
    for person in candidates:
        patient = patients.get(person.patient_id)
        if patient is None or not may_decide_for(user, patient):
            continue
        owners.append(CardOwner(person.patient_id, person.name, []))
    cards = EmergencyCard.objects.filter(patient_id__in=[o.patient_id for o in owners]).order_by(
        "-created_at"
    )
    by_patient = {o.patient_id: o for o in owners}
    for card in cards:
        by_patient[card.patient_id].cards.append(card)
    return owners


def card_status(card: EmergencyCard, now: datetime | None = None) -> str:
    moment = now or timezone.now()
    if card.revoked_at is not None:
        return "revoked"
    if card.expires_at <= moment:
        return "expired"
    return "active"


# Re-exported for views and tests.
__all__ = [
    "CARD_DAYS_DEFAULT",
    "CARD_DAYS_MAX",
    "SEARCH_HANDLE_SECONDS",
    "CardOwner",
    "Contact",
    "ReviewItem",
    "SearchQuery",
    "SummaryFacts",
    "SummaryPage",
    "WrongPasscode",
    "break_glass_alert_recipients",
    "break_glass_for_review",
    "break_glass_hours",
    "break_glass_open",
    "break_glass_review",
    "break_glass_review_queue",
    "break_glass_search",
    "break_glass_send_alerts",
    "card_create",
    "card_find",
    "card_open",
    "card_revoke",
    "card_status",
    "cards_for",
    "emergency_summary",
    "privacy_officer_municipalities",
    "reachable_guardians",
    "responder_organization",
    "summary_bundle",
    "summary_facts",
    "summary_page",
    "summary_purpose",
]
