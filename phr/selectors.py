"""Reads for the family's own pages: the family overview and a person's
timeline.

Every query here is filtered by `sharing.access.visible_records(user)`:
these functions never decide who may see what, they only shape what the
policy point lets through. Callers audit what they reveal (the person page
through `access_patient`, the family page through `audit_reveal`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from django.db.models import Case, F, IntegerField, Value, When
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.translation import get_language, gettext, gettext_lazy, pgettext_lazy

from phr import terminology
from phr.indexing import fhir_local_date
from phr.models import Guardianship, Patient, Provenance, Resource
from sharing.access import blocked_patients, visible_records

# Dates are shown as Japanese calendar days, whatever the server's zone.
JAPAN = ZoneInfo("Asia/Tokyo")
TIMELINE_PAGE_SIZE = 200
EDD_LOINC = "11778-8"
EDD_TOKEN = f"{terminology.LOINC}|{EDD_LOINC}"

# The source badge of a record, from its Provenance origin.
SOURCE_LABELS = {
    Provenance.Origin.MUNICIPALITY: pgettext_lazy("record source", "Municipality"),
    Provenance.Origin.CLINIC: pgettext_lazy("record source", "Clinic"),
    Provenance.Origin.PHARMACY: pgettext_lazy("record source", "Pharmacy"),
    Provenance.Origin.DEVICE: pgettext_lazy("record source", "Device"),
    Provenance.Origin.SELF: pgettext_lazy("record source", "Self / family"),
    Provenance.Origin.SYSTEM: pgettext_lazy("record source", "System"),
}

# What to call a record when its code names nothing we know.
TYPE_LABELS = {
    "Observation": gettext_lazy("Observation"),
    "Encounter": gettext_lazy("Checkup or visit"),
    "EpisodeOfCare": gettext_lazy("Pregnancy"),
    "Immunization": gettext_lazy("Vaccination"),
    "MedicationDispense": gettext_lazy("Medicine dispensed"),
    "MedicationStatement": gettext_lazy("Medicine taken"),
    "AllergyIntolerance": gettext_lazy("Allergy"),
    "Condition": gettext_lazy("Condition"),
    "Flag": gettext_lazy("Alert"),
}

# UCUM codes as people write them.
UNIT_DISPLAY = {
    "Cel": "℃",
    "mm[Hg]": "mmHg",
    "kg/m2": "kg/m²",
    "/min": gettext_lazy("/min"),
    "wk": gettext_lazy("weeks"),
    "min": gettext_lazy("min"),
    "d": gettext_lazy("days"),
}


# --------------------------------------------------------------------------
# Names and people
# --------------------------------------------------------------------------


def person_name(content: dict[str, Any] | None) -> str:
    """ "family given" from the first name of a FHIR Patient (kanji first,
    as JP Core orders them), or "" when there is none."""
    names = (content or {}).get("name") or []
    if not names or not isinstance(names[0], dict):
        return ""
    first = names[0]
    if first.get("text"):
        return str(first["text"])
    given = " ".join(str(g) for g in first.get("given") or [])
    return " ".join(part for part in (str(first.get("family") or ""), given) if part)


def _birth_date(content: dict[str, Any] | None) -> date | None:
    text = (content or {}).get("birthDate")
    if not isinstance(text, str) or len(text) != 10:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def age_in_months(birth: date, today: date) -> int:
    months = (today.year - birth.year) * 12 + today.month - birth.month
    if today.day < birth.day:
        months -= 1
    return max(months, 0)


def age_text(birth: date | None, today: date | None = None) -> str:
    """A child's age as parents say it: "1歳2か月" / "1 y 2 m"."""
    if birth is None:
        return ""
    months = age_in_months(birth, today or timezone.localdate(timezone=JAPAN))
    years, rest = divmod(months, 12)
    if years == 0:
        return gettext("%(months)d months") % {"months": rest}
    return gettext("%(years)d years %(months)d months") % {"years": years, "months": rest}


@dataclass(frozen=True)
class Person:
    patient_id: uuid.UUID
    kind: str
    name: str
    birth_date: date | None
    relationship: str = ""

    @property
    def age(self) -> str:
        return age_text(self.birth_date)


PREGNANCY_DAYS = 280  # from the first day of the last period to the due date


@dataclass(frozen=True)
class PregnancySummary:
    episode_id: uuid.UUID
    started: date | None
    due_date: date | None

    def gestation_days(self, on: date) -> int | None:
        """Gestational age on `on` in days, counted back from the due date
        (280 − days to go); None without a due date or outside a plausible
        pregnancy (0–45 weeks)."""
        if self.due_date is None:
            return None
        days = PREGNANCY_DAYS - (self.due_date - on).days
        return days if 0 <= days <= 45 * 7 else None


@dataclass
class Family:
    me: Person | None = None
    pregnancy: PregnancySummary | None = None
    children: list[Person] = field(default_factory=list)

    @property
    def patient_ids(self) -> list[uuid.UUID]:
        ids = [self.me.patient_id] if self.me else []
        return ids + [c.patient_id for c in self.children]

    @property
    def is_empty(self) -> bool:
        return not self.patient_ids


def _patient_resources(
    user: Any, ids: Iterable[uuid.UUID], purpose: str | None = None
) -> dict[uuid.UUID, dict[str, Any]]:
    rows = Resource.objects.filter(
        visible_records(user, purpose), resource_type="Patient", id__in=list(ids)
    ).values_list("id", "content")
    return dict(rows)


def patient_resources(
    *, user: Any, patient_ids: Iterable[uuid.UUID], purpose: str | None = None
) -> dict[uuid.UUID, dict[str, Any]]:
    """The FHIR Patient resources of these patients that `user` may see (for
    `purpose`), by patient id; a patient whose resource is withheld is
    absent."""
    return _patient_resources(user, patient_ids, purpose)


def kana_name(content: dict[str, Any] | None) -> str:
    """ "family given" in kana: the name marked with the SYL representation
    (JP Core JP_Patient), or "" when there is none."""
    for name in (content or {}).get("name") or []:
        if not isinstance(name, dict):
            continue
        for extension in name.get("extension") or []:
            if isinstance(extension, dict) and extension.get("valueCode") == "SYL":
                given = " ".join(str(g) for g in name.get("given") or [])
                return " ".join(p for p in (str(name.get("family") or ""), given) if p)
    return ""


def birth_date_of(content: dict[str, Any] | None) -> date | None:
    """A Patient resource's birthDate, when it is a full date."""
    return _birth_date(content)


def _date_of(value: Any) -> date | None:
    return fhir_local_date(value)


def _due_date_in_extensions(content: dict[str, Any]) -> date | None:
    """A due date carried on the EpisodeOfCare itself, as an extension whose
    url names it (there is no standard element for it in R4)."""
    for extension in content.get("extension") or []:
        url = str(extension.get("url", "")).lower()
        if not any(word in url for word in ("due", "edd", "delivery-date", "deliverydate")):
            continue
        for key in ("valueDate", "valueDateTime"):
            found = _date_of(extension.get(key))
            if found:
                return found
    return None


def pregnancy_summary(
    *, user: Any, patient: Patient, purpose: str | None = None
) -> PregnancySummary | None:
    """The patient's active pregnancy (EpisodeOfCare), with its due date when
    one is recorded: on the episode, or as an estimated delivery date
    Observation (LOINC 11778-8, valueDateTime), the latest one. Only what
    `user` may see (for `purpose`) counts."""
    return pregnancy_summaries(user=user, patient_ids=[patient.pk], purpose=purpose).get(patient.pk)


def pregnancy_summaries(
    *, user: Any, patient_ids: Iterable[uuid.UUID], purpose: str | None = None
) -> dict[uuid.UUID, PregnancySummary]:
    """pregnancy_summary for several patients in two queries (a list page):
    the patients with an active pregnancy `user` may see, by patient id."""
    ids = list(dict.fromkeys(patient_ids))
    if not ids:
        return {}
    visible = Resource.objects.filter(visible_records(user, purpose), compartments__overlap=ids)
    wanted = set(ids)
    episodes: dict[uuid.UUID, Resource] = {}
    for row in visible.filter(resource_type="EpisodeOfCare", status="active").order_by(
        F("date_start").desc(nulls_last=True), "id"
    ):
        for pid in wanted.intersection(row.compartments):
            episodes.setdefault(pid, row)
    if not episodes:
        return {}
    due_dates: dict[uuid.UUID, date] = {}
    for pid, episode in episodes.items():
        due = _due_date_in_extensions(episode.content)
        if due is not None:
            due_dates[pid] = due
    missing = [pid for pid in episodes if pid not in due_dates]
    if missing:
        edd_rows = (
            visible.filter(
                resource_type="Observation",
                tokens__contains=[EDD_TOKEN],
                compartments__overlap=missing,
            )
            .order_by(F("date_start").desc(nulls_last=True), "-last_updated", "id")
            .only("id", "content", "compartments")
        )
        seen: set[uuid.UUID] = set()
        for row in edd_rows:
            for pid in set(missing).intersection(row.compartments) - seen:
                # The latest estimated delivery date decides, even when it
                # cannot be read (as a single-patient read always did).
                seen.add(pid)
                due = _date_of(row.content.get("valueDateTime"))
                if due is not None:
                    due_dates[pid] = due
    return {
        pid: PregnancySummary(
            episode_id=episode.id,
            started=(
                timezone.localtime(episode.date_start, JAPAN).date() if episode.date_start else None
            ),
            due_date=due_dates.get(pid),
        )
        for pid, episode in episodes.items()
    }


def family(*, user: Any) -> Family:
    """The user's own patient record, her active pregnancy and the children
    she is guardian of today."""
    result = Family()
    own = Patient.objects.filter(account=user).first()
    blocked = blocked_patients(user)
    guardianships = [
        g
        for g in Guardianship.objects.active()
        .filter(guardian=user)
        .select_related("child")
        .order_by("child__created_at")
        if g.child_id not in blocked  # DV block: nothing of that child, anywhere
    ]
    ids = ([own.pk] if own else []) + [g.child_id for g in guardianships]
    contents = _patient_resources(user, ids)
    if own is not None:
        content = contents.get(own.pk)
        result.me = Person(own.pk, own.kind, person_name(content), _birth_date(content))
        result.pregnancy = pregnancy_summary(user=user, patient=own)
    seen: set[uuid.UUID] = set()
    for guardianship in guardianships:
        child = guardianship.child
        if child.pk in seen:
            continue
        seen.add(child.pk)
        content = contents.get(child.pk)
        result.children.append(
            Person(
                child.pk,
                child.kind,
                person_name(content),
                _birth_date(content),
                relationship=guardianship.relationship,
            )
        )
    return result


def person(*, user: Any, patient: Patient) -> Person:
    content = _patient_resources(user, [patient.pk]).get(patient.pk)
    return Person(patient.pk, patient.kind, person_name(content), _birth_date(content))


# --------------------------------------------------------------------------
# Timeline
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class TimelineEntry:
    id: uuid.UUID
    resource_type: str
    label: str
    value: str
    time: str  # "09:30" for records with a time of day, else ""
    source: str  # a Provenance.Origin value
    source_label: str
    organization: str
    category: str


@dataclass
class TimelineDay:
    day: date | None
    precision: str  # "day", "month", "year" or "" (date unknown)
    entries: list[TimelineEntry] = field(default_factory=list)


@dataclass(frozen=True)
class TimelinePage:
    days: list[TimelineDay]
    count: int
    next_offset: int | None


def _concept_label(concept: dict[str, Any] | None, language: str) -> str:
    """A CodeableConcept in words: our dictionary's label in the active
    language first, then the sender's text, then a coding's display."""
    if not isinstance(concept, dict):
        return ""
    codings = [c for c in concept.get("coding") or [] if isinstance(c, dict)]
    for coding in codings:
        item = terminology.item_for_coding(coding.get("system"), coding.get("code"))
        if item is not None:
            return item.label(language)
    if concept.get("text"):
        return str(concept["text"])
    for coding in codings:
        if coding.get("display"):
            return str(coding["display"])
    return ""


def _number(value: Any) -> str:
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return str(value)
    return format(number.normalize(), "f")


def _quantity(quantity: Any) -> str:
    if not isinstance(quantity, dict) or "value" not in quantity:
        return ""
    unit = str(quantity.get("unit") or quantity.get("code") or "")
    unit = str(UNIT_DISPLAY.get(unit, unit))
    return f"{_number(quantity['value'])} {unit}".strip()


def _value(content: dict[str, Any], language: str) -> str:
    if "valueQuantity" in content:
        return _quantity(content["valueQuantity"])
    if "valueCodeableConcept" in content:
        return _concept_label(content["valueCodeableConcept"], language)
    if "valueString" in content:
        return str(content["valueString"])
    if "valueInteger" in content:
        return str(content["valueInteger"])
    if "valueBoolean" in content:
        return gettext("yes") if content["valueBoolean"] else gettext("no")
    if "valueDateTime" in content:
        found = _date_of(content["valueDateTime"])
        return date_format(found, "DATE_FORMAT") if found else str(content["valueDateTime"])
    return ""


def _components(content: dict[str, Any], language: str) -> str:
    """A panel's parts: "120/80 mmHg" for a blood pressure, otherwise
    "label value" pairs."""
    parts = [c for c in content.get("component") or [] if isinstance(c, dict)]
    if not parts:
        return ""
    by_code = {}
    for part in parts:
        for coding in (part.get("code") or {}).get("coding") or []:
            by_code[coding.get("code")] = part
    systolic, diastolic = by_code.get("8480-6"), by_code.get("8462-4")
    if systolic and diastolic:
        high = (systolic.get("valueQuantity") or {}).get("value")
        low = (diastolic.get("valueQuantity") or {}).get("value")
        if high is not None and low is not None:
            return f"{_number(high)}/{_number(low)} mmHg"
    shown = []
    for part in parts:
        label = _concept_label(part.get("code"), language)
        value = _value(part, language)
        if value:
            shown.append(f"{label} {value}".strip())
    return "、".join(shown) if language.startswith("ja") else ", ".join(shown)


def _label(resource_type: str, content: dict[str, Any], language: str) -> str:
    for key in ("code", "vaccineCode", "medicationCodeableConcept", "type"):
        concept = content.get(key)
        if isinstance(concept, list):  # Encounter.type is a list
            concept = concept[0] if concept else None
        label = _concept_label(concept, language)
        if label:
            return label
    return str(TYPE_LABELS.get(resource_type, resource_type))


def _gestational_age(content: dict[str, Any]) -> str:
    """ "25週3日" for a gestational age written as completed weeks with the
    days beyond them as a component (clinics/prenatal.py), else ""."""
    weeks = (content.get("valueQuantity") or {}).get("value")
    for part in content.get("component") or []:
        if not isinstance(part, dict) or not isinstance(weeks, int):
            continue
        for coding in (part.get("code") or {}).get("coding") or []:
            item = terminology.item_for_coding(coding.get("system"), coding.get("code"))
            days = (part.get("valueQuantity") or {}).get("value")
            if item is not None and item.key == "gestational_age_days" and isinstance(days, int):
                return gettext("%(weeks)d weeks %(days)d days") % {"weeks": weeks, "days": days}
    return ""


def _entry_value(resource_type: str, content: dict[str, Any], language: str) -> str:
    if resource_type == "Observation":
        return (
            _gestational_age(content) or _value(content, language) or _components(content, language)
        )
    if resource_type == "Immunization":
        for protocol in content.get("protocolApplied") or []:
            dose = protocol.get("doseNumberPositiveInt") or protocol.get("doseNumberString")
            if dose:
                return gettext("dose %(number)s") % {"number": dose}
        return ""
    if resource_type in ("MedicationDispense", "MedicationStatement"):
        return _quantity(content.get("quantity"))
    return ""


def _source(provenance: Provenance | None, language: str) -> tuple[str, str, str]:
    origin = provenance.origin if provenance else Provenance.Origin.SYSTEM
    label = str(SOURCE_LABELS.get(origin, SOURCE_LABELS[Provenance.Origin.SYSTEM]))
    organization = ""
    if provenance is not None and provenance.agent_org is not None:
        org = provenance.agent_org
        organization = org.name_en if (org.name_en and not language.startswith("ja")) else org.name
    return origin, label, organization


def _entry(resource: Resource, language: str) -> TimelineEntry:
    content = resource.content or {}
    origin, source_label, organization = _source(resource.provenance, language)
    time = ""
    if resource.date_start and resource.date_precision == "instant":
        time = timezone.localtime(resource.date_start, JAPAN).strftime("%H:%M")
    return TimelineEntry(
        id=resource.id,
        resource_type=resource.resource_type,
        label=_label(resource.resource_type, content, language),
        value=_entry_value(resource.resource_type, content, language),
        time=time,
        source=origin,
        source_label=source_label,
        organization=organization,
        category=resource.category,
    )


def _day_key(resource: Resource) -> tuple[date | None, str]:
    if resource.date_start is None:
        return None, ""
    # Date-only values are stored as midnight in Japan, so the Japan date
    # is the date that was recorded; instants fall on their Japan day.
    day = timezone.localtime(resource.date_start, JAPAN).date()
    precision = resource.date_precision if resource.date_precision in ("month", "year") else "day"
    return day, precision


def timeline_queryset(*, user: Any, patient: Patient, purpose: str | None = None) -> Any:
    return (
        Resource.objects.filter(visible_records(user, purpose), compartments__overlap=[patient.pk])
        .exclude(resource_type="Patient")
        .select_related("provenance", "provenance__agent_org")
        # Within a day, the checkup or visit comes before what was found at
        # it, so the day reads like the handbook's page.
        .order_by(
            F("date_start").desc(nulls_last=True),
            Case(
                When(resource_type="Encounter", then=Value(0)),
                When(resource_type="EpisodeOfCare", then=Value(1)),
                default=Value(2),
                output_field=IntegerField(),
            ),
            "-last_updated",
            "id",
        )
    )


def timeline(
    *,
    user: Any,
    patient: Patient,
    offset: int = 0,
    limit: int = TIMELINE_PAGE_SIZE,
    purpose: str | None = None,
) -> TimelinePage:
    """The records of one person that `user` may see (for `purpose`, or any
    listable purpose), newest first, grouped by Japanese calendar day;
    `limit` entries from `offset`, and the offset of the next page when
    there is one."""
    offset = max(offset, 0)
    queryset = timeline_queryset(user=user, patient=patient, purpose=purpose)
    rows = list(queryset[offset : offset + limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    language = get_language() or "ja"
    days: list[TimelineDay] = []
    for resource in rows:
        day, precision = _day_key(resource)
        if not days or days[-1].day != day or days[-1].precision != precision:
            days.append(TimelineDay(day=day, precision=precision))
        days[-1].entries.append(_entry(resource, language))
    return TimelinePage(days=days, count=len(rows), next_offset=offset + limit if more else None)
