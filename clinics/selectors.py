"""Reads behind the clinic portal (/clinic/): which clinics a user acts
for, the patients who share with the clinic, and a patient's pregnancy as
a clinic reads it — the flowsheet of prenatal visits, the series the
charts draw, the standard schedule with visits done and due, and the risk
flags.

Health records are read only through sharing.access (visible_records /
decide / access_patient with purpose "care"); these functions shape what
the policy point lets through and never decide access themselves. The
views audit what they reveal.

The shapes read are those phr/demo.py writes (pregnancy_items) and the
clinic's visit entry writes: a prenatal checkup is an Encounter of data
category prenatal_checkups (meta.tag), its measurements Observations of
that category pointing at it (Observation.encounter), coded per
docs/dataset.md; a blood pressure is a panel (85354-9) with systolic and
diastolic components, or the two as separate Observations. Observations of
the category without an encounter join the visit of their day (or make
one), so a clinic system that sends bare Observations still gets a
flowsheet.
"""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.paginator import Page, Paginator
from django.db.models import F, Func, Q, QuerySet, UUIDField
from django.http import Http404
from django.utils import timezone
from django.utils.translation import get_language, gettext, pgettext_lazy

from clinics.flags import HYPERTENSION, RiskFlag, VisitMeasures, dipstick_grade, risk_flags
from clinics.reference import schedule_bands, schedule_tests
from phr import terminology
from phr.indexing import fhir_local_date
from phr.models import Organization, Patient, Resource, Role
from phr.roles import has_mfa, organizations_for
from phr.selectors import (
    JAPAN,
    UNIT_DISPLAY,
    PregnancySummary,
    age_text,
    birth_date_of,
    kana_name,
    patient_resources,
    person_name,
    pregnancy_summaries,
)
from phr.tabular import FieldError, normalize, parse_date
from phr.terminology import Category
from sharing.access import Purpose, access_patient, audit_denied, decide, visible_records
from sharing.emergency import concept_text, gestation_text
from sharing.models import Consent, ConsentPurpose
from sharing.selectors import category_labels, last_day

PATIENTS_PAGE_SIZE = 50
SEARCH_MAX = 100

# The rows of the flowsheet: the every-visit items of the 告示
# (standards.md §3, prenatal_schedule_jp.csv) and the fetal items, by
# dictionary key ("bp" is the blood pressure, systolic/diastolic). An item
# the dictionary does not (yet) have is left out.
FLOWSHEET_ROWS = (
    "bp",
    "body_weight",
    "urine_protein",
    "urine_glucose",
    "fundal_height",
    "abdominal_circumference",
    "edema",
    "fetal_heart_rate",
    "estimated_fetal_weight",
)
# Items whose value is a test-strip grade: a cell at 2+ or more is marked.
GRADED = ("urine_protein", "urine_glucose", "edema")
# Optional inputs of the weight-gain flag, read when the dictionary has them.
PRE_PREGNANCY_WEIGHT = "pre_pregnancy_weight"
PRE_PREGNANCY_BMI = "pre_pregnancy_bmi"
# A pregnancy lasts at most this long before its due date (for visits,
# when the episode gives no start).
LONGEST_PREGNANCY = timedelta(days=44 * 7)

ENCOUNTER_NOT_HELD = frozenset({"cancelled", "entered-in-error", "planned"})
OBSERVATION_VOID = frozenset({"cancelled", "entered-in-error"})


def _language() -> str:
    return get_language() or "ja"


def _local_day(row: Resource) -> date | None:
    return timezone.localtime(row.date_start, JAPAN).date() if row.date_start else None


# --------------------------------------------------------------------------
# Who acts for which clinic
# --------------------------------------------------------------------------


def staff_clinics(user: Any) -> list[Organization]:
    """The clinics this user is active clinic staff of, when the user has
    MFA (staff without it hold no staff grant, as in sharing.access);
    sorted by name so "the first" is stable."""
    if not has_mfa(user):
        return []
    return sorted(organizations_for(user, Role.CLINIC_STAFF), key=lambda o: (o.name, o.pk))


def chosen_clinic(user: Any, requested: Any = None) -> Organization:
    """The clinic a page is about: the one asked for (?clinic=<id>) when the
    user is its staff, else the first. Http404 for anyone who is no
    clinic's staff, and for a clinic not theirs."""
    mine = staff_clinics(user)
    if not mine:
        raise Http404
    if requested in (None, ""):
        return mine[0]
    for clinic in mine:
        if str(clinic.pk) == str(requested):
            return clinic
    raise Http404


# --------------------------------------------------------------------------
# The clinic's patients
# --------------------------------------------------------------------------


def _care_records(user: Any) -> QuerySet[Resource]:
    return Resource.objects.filter(visible_records(user, Purpose.CARE))


def _consents(clinic: Organization, patient_ids: Iterable[uuid.UUID] | None = None) -> Any:
    consents = Consent.objects.active().filter(purpose=ConsentPurpose.CARE, grantee_org=clinic)
    if patient_ids is not None:
        consents = consents.filter(patient_id__in=list(patient_ids))
    return consents


def _submitted_patient_ids(
    user: Any, clinic: Organization, among: Sequence[uuid.UUID] | None = None
) -> set[uuid.UUID]:
    """Patients in the compartments of records this clinic submitted that
    the policy point lets `user` read for care (the clinic_submitted rule,
    DV blocks applied)."""
    rows = _care_records(user).filter(provenance__agent_org_id=clinic.pk)
    if among is not None:
        rows = rows.filter(compartments__overlap=list(among))
    patients = rows.annotate(
        patient=Func(F("compartments"), function="unnest", output_field=UUIDField())
    )
    return set(patients.values_list("patient", flat=True).distinct())


def clinic_patient_ids(user: Any, clinic: Organization) -> set[uuid.UUID]:
    """The patients of the clinic's portal: those whose care consents in
    force name the clinic and whom the policy point lets `user` see, and
    those in records the clinic submitted that `user` may read (found
    through visible_records, so the policy point has decided them already).
    Merged-away records are left out."""
    consented = set(_consents(clinic).values_list("patient_id", flat=True))
    allowed = {pid for pid in consented if decide(user, pid, purpose=Purpose.CARE)}
    found = allowed | _submitted_patient_ids(user, clinic)
    return set(
        Patient.objects.filter(pk__in=list(found), merged_into__isnull=True).values_list(
            "pk", flat=True
        )
    )


def clinic_patient(user: Any, clinic: Organization, patient_id: Any) -> Patient:
    """The patient, when they share with this clinic (or the clinic
    submitted their records) and the policy point lets `user` see them for
    care; Http404 otherwise, a missing id alike. Audited either way."""
    try:
        pid = uuid.UUID(str(patient_id))
    except ValueError:
        raise Http404 from None
    ours = (
        _consents(clinic, [pid]).exists()
        or _care_records(user)
        .filter(provenance__agent_org_id=clinic.pk, compartments__overlap=[pid])
        .exists()
    )
    if not ours:
        if Patient.objects.filter(pk=pid).exists():
            audit_denied(user, pid, action="view.clinic_patient", rule="not_this_clinic")
        raise Http404
    return access_patient(user, pid, purpose=Purpose.CARE, action="view.clinic_patient")


def _fold(text: str) -> str:
    """For matching names: NFKC, no spaces, case-folded, hiragana as
    katakana (a search in ひらがな finds a name kept in カタカナ)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(
        chr(ord(c) + 0x60) if "\u3041" <= c <= "\u3096" else c for c in folded if not c.isspace()
    )


def _all_names(content: dict[str, Any] | None) -> list[str]:
    names = []
    for name in (content or {}).get("name") or []:
        if not isinstance(name, dict):
            continue
        given = "".join(str(g) for g in name.get("given") or [])
        names.append(f"{name.get('family') or ''}{given}")
        if name.get("text"):
            names.append(str(name["text"]))
    return names


def search_date(query: str) -> date | None:
    """The query as a birth date (ISO, YYYYMMDD, YYYY/MM/DD or an era date
    such as R6.4.1), or None when it is not one."""
    try:
        return parse_date(normalize(query))
    except FieldError:
        return None


def matches(query: str, content: dict[str, Any] | None) -> bool:
    """Does the patient's record match a search by name, kana or birth
    date? (Only a visible Patient resource can match.)"""
    if content is None:
        return False
    day = search_date(query)
    if day is not None:
        return birth_date_of(content) == day
    wanted = _fold(query)
    return bool(wanted) and any(wanted in _fold(name) for name in _all_names(content))


@dataclass(frozen=True)
class FlagLine:
    label: str
    detail: str = ""
    severity: str = "info"  # "danger", "warning" (computed) or "info" (a Flag record)


@dataclass(frozen=True)
class PatientRow:
    patient_id: uuid.UUID
    name: str  # "" when the Patient record is not shared with the clinic
    kana: str
    birth_date: date | None
    due_date: date | None
    gestation: str
    flags: list[FlagLine]
    consented: bool  # a consent names the clinic; else only its own submissions
    until: date | None  # the consent's last day (None: open-ended or none)


@dataclass
class PatientList:
    page: Page[tuple[uuid.UUID, dict[str, Any] | None]]
    rows: list[PatientRow]
    query: str
    total: int

    @property
    def patient_ids(self) -> list[uuid.UUID]:
        return [row.patient_id for row in self.rows]


def _sort_key(entry: tuple[uuid.UUID, dict[str, Any] | None]) -> tuple[bool, str, str]:
    pid, content = entry
    name = person_name(content)
    return (not name, _fold(kana_name(content) or name), str(pid))


def portal_patients(
    *, user: Any, clinic: Organization, query: str = "", page_number: Any = 1, today: date
) -> PatientList:
    """The clinic's patients (clinic_patient_ids), filtered by `query` (name,
    kana or birth date) over what the clinic may see, sorted by kana, one
    page of them with due date, gestational age today and flags."""
    query = query.strip()[:SEARCH_MAX]
    ids = clinic_patient_ids(user, clinic)
    contents = patient_resources(user=user, patient_ids=ids, purpose=Purpose.CARE)
    entries = [(pid, contents.get(pid)) for pid in ids]
    if query:
        entries = [entry for entry in entries if matches(query, entry[1])]
    entries.sort(key=_sort_key)
    page = Paginator(entries, PATIENTS_PAGE_SIZE).get_page(page_number)
    shown = list(page.object_list)
    page_ids = [pid for pid, _ in shown]
    pregnancies = pregnancy_summaries(user=user, patient_ids=page_ids, purpose=Purpose.CARE)
    records = _pregnancy_records(user, page_ids)
    consents: dict[uuid.UUID, list[Consent]] = {}
    for consent in _consents(clinic, page_ids):
        consents.setdefault(consent.patient_id, []).append(consent)
    rows = []
    for pid, content in shown:
        pregnancy = pregnancies.get(pid)
        mine = [r for r in records if pid in r.compartments]
        facts = pregnancy_facts(mine, pregnancy=pregnancy, today=today)
        ends = [c.ends_at for c in consents.get(pid, [])]
        rows.append(
            PatientRow(
                patient_id=pid,
                name=person_name(content),
                kana=kana_name(content),
                birth_date=birth_date_of(content),
                due_date=pregnancy.due_date if pregnancy else None,
                gestation=gestation_text(pregnancy.gestation_days(today)) if pregnancy else "",
                flags=facts.flag_lines,
                consented=bool(ends),
                until=last_day(max(e for e in ends if e)) if ends and None not in ends else None,
            )
        )
    return PatientList(page=page, rows=rows, query=query, total=len(entries))


# --------------------------------------------------------------------------
# What is shared, by category
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class CategoryAccess:
    code: str
    label: str
    shared: bool
    rule: str  # "consent", "clinic_submitted", … (sharing.access rules), or ""
    until: date | None


def category_access(user: Any, patient: Patient) -> list[CategoryAccess]:
    """Each data category, and whether the policy point lets `user` see it
    for care now (with the consent's last day). A category not shared says
    only that: nothing about whether records of it exist."""
    found = []
    for code in Category.values:
        decision = decide(user, patient, category=code, purpose=Purpose.CARE)
        until = decision.until if decision.rule in ("consent", "consent_person") else None
        found.append(
            CategoryAccess(
                code=code,
                label=category_labels([code])[0],
                shared=bool(decision),
                rule=decision.rule if decision else "",
                until=last_day(until) if until else None,
            )
        )
    return found


# --------------------------------------------------------------------------
# Prenatal visits
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    text: str
    number: Decimal | None = None
    grade: int | None = None  # a test-strip grade (clinics.flags.dipstick_grade)


@dataclass
class Visit:
    day: date
    encounter_id: uuid.UUID | None = None
    gestation_days: int | None = None
    recorded_gestation_days: int | None = None  # from a gestational-age Observation
    values: dict[str, Measured] = field(default_factory=dict)
    systolic: Decimal | None = None
    diastolic: Decimal | None = None

    @property
    def gestation(self) -> str:
        return gestation_text(self.gestation_days)

    @property
    def blood_pressure(self) -> str:
        if self.systolic is None and self.diastolic is None:
            return ""
        high = _number(self.systolic) if self.systolic is not None else "—"
        low = _number(self.diastolic) if self.diastolic is not None else "—"
        return f"{high}/{low}"

    def measures(self) -> VisitMeasures:
        protein = self.values.get("urine_protein")
        weight = self.values.get("body_weight")
        return VisitMeasures(
            day=self.day,
            gestation_days=self.gestation_days,
            systolic=self.systolic,
            diastolic=self.diastolic,
            urine_protein=protein.grade if protein else None,
            weight=weight.number if weight else None,
        )


def _number(value: Decimal | None) -> str:
    if value is None:
        return ""
    normalized = value.normalize()
    return format(normalized, "f")


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def _codings(concept: Any) -> list[dict[str, Any]]:
    if not isinstance(concept, dict):
        return []
    return [c for c in concept.get("coding") or [] if isinstance(c, dict)]


def _item_key(concept: Any) -> str:
    for coding in _codings(concept):
        item = terminology.item_for_coding(coding.get("system"), coding.get("code"))
        if item is not None:
            return item.key
    return ""


def _measured(content: dict[str, Any]) -> Measured | None:
    """An Observation's (or component's) value, as a flowsheet cell shows
    it (the unit is in the row's header) and as the flags read it."""
    if isinstance(content.get("valueQuantity"), dict):
        number = _decimal(content["valueQuantity"].get("value"))
        return Measured(_number(number), number) if number is not None else None
    if "valueCodeableConcept" in content:
        concept = content["valueCodeableConcept"]
        grade = None
        for candidate in [c.get("code") for c in _codings(concept)] + [(concept or {}).get("text")]:
            grade = dipstick_grade(str(candidate)) if candidate else None
            if grade is not None:
                break
        text = concept_text(concept)
        return Measured(text, grade=grade) if text else None
    if "valueInteger" in content:
        number = _decimal(content["valueInteger"])
        return Measured(_number(number), number) if number is not None else None
    if "valueString" in content:
        return Measured(str(content["valueString"]))
    if "valueBoolean" in content:
        return Measured(gettext("yes") if content["valueBoolean"] else gettext("no"))
    return None


def _encounter_id(content: dict[str, Any]) -> uuid.UUID | None:
    reference = (content.get("encounter") or {}).get("reference")
    if not isinstance(reference, str) or "Encounter/" not in reference:
        return None
    try:
        return uuid.UUID(reference.rsplit("Encounter/", 1)[1].split("/")[0])
    except ValueError:
        return None


def _recorded_gestation(content: dict[str, Any]) -> int | None:
    """A gestational-age Observation in days: completed weeks (value) plus
    the days component when there is one (24週3日)."""
    weeks = _decimal((content.get("valueQuantity") or {}).get("value"))
    if weeks is None:
        return None
    days = Decimal(0)
    for component in content.get("component") or []:
        if isinstance(component, dict) and _item_key(component.get("code")) == (
            "gestational_age_days"
        ):
            days = _decimal((component.get("valueQuantity") or {}).get("value")) or Decimal(0)
    return int((weeks * 7 + days).to_integral_value())


def prenatal_visits(
    rows: Iterable[Resource], *, since: date | None = None, due_date: date | None = None
) -> list[Visit]:
    """The prenatal visits in `rows` (visible records of one patient), from
    `since` on (the pregnancy's start: earlier visits belong to an earlier
    one), oldest first, each with its measurements (the latest of each
    item when one was measured twice) and its gestational age (from the due
    date when known, else as recorded at the visit)."""
    ordered = sorted(
        (r for r in rows if not r.deleted),
        key=lambda r: (r.date_start is None, r.date_start or timezone.now(), r.last_updated),
    )
    by_encounter: dict[uuid.UUID, Visit] = {}
    by_day: dict[date, Visit] = {}

    def in_pregnancy(day: date | None) -> bool:
        return day is not None and (since is None or day >= since)

    for row in ordered:
        if row.resource_type != "Encounter" or row.category != Category.PRENATAL_CHECKUPS:
            continue
        day = _local_day(row)
        if row.status in ENCOUNTER_NOT_HELD or day is None or not in_pregnancy(day):
            continue
        visit = Visit(day=day, encounter_id=row.id)
        by_encounter[row.id] = visit
        by_day.setdefault(day, visit)
    for row in ordered:
        if row.resource_type != "Observation" or row.status in OBSERVATION_VOID:
            continue
        content = row.content or {}
        visit = by_encounter.get(_encounter_id(content) or uuid.UUID(int=0))
        if visit is None:
            day = _local_day(row)
            if row.category != Category.PRENATAL_CHECKUPS or not in_pregnancy(day):
                continue
            assert day is not None
            visit = by_day.get(day)
            if visit is None:
                visit = by_day[day] = Visit(day=day)
        _add_observation(visit, content)
    visits = list({id(v): v for v in [*by_encounter.values(), *by_day.values()]}.values())
    visits.sort(key=lambda v: (v.day, str(v.encounter_id or "")))
    for visit in visits:
        if due_date is not None:
            days = 280 - (due_date - visit.day).days
            visit.gestation_days = days if 0 <= days <= 45 * 7 else None
        else:
            visit.gestation_days = visit.recorded_gestation_days
    return visits


def _add_observation(visit: Visit, content: dict[str, Any]) -> None:
    key = _item_key(content.get("code"))
    if key == "gestational_age":
        visit.recorded_gestation_days = _recorded_gestation(content)
        return
    if key in ("bp_panel", "bp_systolic", "bp_diastolic"):
        parts = content.get("component") if key == "bp_panel" else [content]
        for part in parts or []:
            if not isinstance(part, dict):
                continue
            part_key = _item_key(part.get("code")) if key == "bp_panel" else key
            value = _measured(part)
            if value is None or value.number is None:
                continue
            if part_key == "bp_systolic":
                visit.systolic = value.number
            elif part_key == "bp_diastolic":
                visit.diastolic = value.number
        return
    if key:
        value = _measured(content)
        if value is not None:
            visit.values[key] = value


# --------------------------------------------------------------------------
# The flowsheet
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    text: str
    alert: bool = False


@dataclass(frozen=True)
class FlowsheetRow:
    key: str
    label: str
    unit: str
    cells: list[Cell]


def _unit(code: str) -> str:
    if code in ("", "ordinal", "code", "text", "date", "boolean"):
        return ""
    if code == "mm[Hg]":
        return "mmHg"
    return str(UNIT_DISPLAY.get(code, code))


def _row_spec(key: str) -> tuple[str, str] | None:
    if key == "bp":
        return str(pgettext_lazy("flowsheet", "Blood pressure")), "mmHg"
    item = terminology.items().get(key)
    if item is None:
        return None
    return item.label(_language()), _unit(item.unit)


def flowsheet(visits: Sequence[Visit]) -> list[FlowsheetRow]:
    """Items as rows, visits as columns (the caller gives the visits'
    dates and gestational ages as the column heads)."""
    rows = []
    for key in FLOWSHEET_ROWS:
        spec = _row_spec(key)
        if spec is None:
            continue
        label, unit = spec
        cells = []
        for visit in visits:
            if key == "bp":
                high = visit.measures()
                alert = (high.systolic is not None and high.systolic >= HYPERTENSION[0]) or (
                    high.diastolic is not None and high.diastolic >= HYPERTENSION[1]
                )
                cells.append(Cell(visit.blood_pressure, alert))
                continue
            value = visit.values.get(key)
            if value is None:
                cells.append(Cell(""))
                continue
            alert = key in GRADED and value.grade is not None and value.grade >= 2
            cells.append(Cell(value.text, alert))
        rows.append(FlowsheetRow(key, label, unit, cells))
    return rows


# --------------------------------------------------------------------------
# The standard schedule
# --------------------------------------------------------------------------

DONE, MISSED, DUE, UPCOMING = "done", "missed", "due", "upcoming"
SLOT_STATUS_LABELS = {
    DONE: pgettext_lazy("checkup", "done"),
    MISSED: pgettext_lazy("checkup", "no visit recorded"),
    DUE: pgettext_lazy("checkup", "due now"),
    UPCOMING: pgettext_lazy("checkup", "upcoming"),
}


@dataclass(frozen=True)
class ScheduleSlot:
    first_week: int
    last_week: int
    starts_on: date
    ends_on: date
    status: str
    visit_days: tuple[date, ...]

    @property
    def status_label(self) -> str:
        return str(SLOT_STATUS_LABELS[self.status])

    @property
    def weeks(self) -> str:
        if self.first_week == self.last_week:
            return gettext("week %(week)d") % {"week": self.first_week}
        return gettext("weeks %(first)d–%(last)d") % {
            "first": self.first_week,
            "last": self.last_week,
        }


@dataclass(frozen=True)
class Schedule:
    slots: list[ScheduleSlot]
    gestation_days: int
    tests_now: list[str]

    @property
    def done(self) -> int:
        return sum(1 for s in self.slots if s.status == DONE)

    @property
    def next_slot(self) -> ScheduleSlot | None:
        return next((s for s in self.slots if s.status in (DUE, UPCOMING)), None)


def schedule(*, due_date: date, visits: Sequence[Visit], today: date) -> Schedule:
    """The standard schedule (prenatal_schedule_jp.csv: every 4 weeks to
    23 weeks, every 2 weeks 24–35, weekly from 36) as windows of weeks from
    the due date, each done (a visit in it), missed (past, no visit), due
    now or upcoming. Visits before the first window count for it, after
    the last for the last."""
    lmp = due_date - timedelta(days=280)
    windows: list[tuple[int, int]] = []
    for band in schedule_bands():
        for first in range(band.start, band.end + 1, band.interval):
            windows.append((first, min(first + band.interval - 1, band.end)))
    today_week = (today - lmp).days // 7
    slots = []
    for index, (first, last) in enumerate(windows):
        low = -1_000 if index == 0 else first
        high = 1_000 if index == len(windows) - 1 else last
        days = tuple(
            v.day
            for v in visits
            if v.gestation_days is not None and low <= v.gestation_days // 7 <= high
        )
        if days:
            status = DONE
        elif today_week > last:
            status = MISSED
        elif today_week >= first:
            status = DUE
        else:
            status = UPCOMING
        slots.append(
            ScheduleSlot(
                first_week=first,
                last_week=last,
                starts_on=lmp + timedelta(weeks=first),
                ends_on=lmp + timedelta(weeks=last + 1, days=-1),
                status=status,
                visit_days=days,
            )
        )
    japanese = _language().startswith("ja")
    tests_now = [
        test.label_ja if japanese else test.label_en
        for test in schedule_tests()
        if (test.start is None or test.start <= today_week)
        and (test.end is None or today_week <= test.end)
    ]
    return Schedule(slots=slots, gestation_days=(today - lmp).days, tests_now=tests_now)


# --------------------------------------------------------------------------
# A pregnancy as the clinic reads it
# --------------------------------------------------------------------------


def _extra_tokens() -> list[str]:
    """Tokens of the optional weight-gain inputs the dictionary has."""
    tokens: list[str] = []
    for key in (PRE_PREGNANCY_WEIGHT, PRE_PREGNANCY_BMI, "body_height"):
        item = terminology.items().get(key)
        if item is not None:
            tokens += item.tokens
    return tokens


def _pregnancy_records(user: Any, patient_ids: Sequence[uuid.UUID]) -> list[Resource]:
    """The records the pregnancy views read, of these patients, as the
    policy point lets `user` see them for care: prenatal checkups, Flags and
    the weight-gain inputs."""
    if not patient_ids:
        return []
    wanted = Q(category=Category.PRENATAL_CHECKUPS, resource_type__in=["Encounter", "Observation"])
    wanted |= Q(resource_type="Flag", status="active")
    extra = _extra_tokens()
    if extra:
        wanted |= Q(resource_type="Observation", tokens__overlap=extra)
    return list(
        _care_records(user)
        .filter(wanted, compartments__overlap=list(patient_ids), deleted=False)
        .only(
            "id",
            "resource_type",
            "content",
            "compartments",
            "category",
            "status",
            "date_start",
            "last_updated",
            "deleted",
            "tokens",
        )
    )


def _latest_value(
    rows: Iterable[Resource], key: str, *, since: date | None = None
) -> Decimal | None:
    item = terminology.items().get(key)
    if item is None:
        return None
    tokens = set(item.tokens)
    found = [
        r
        for r in rows
        if r.resource_type == "Observation"
        and r.status not in OBSERVATION_VOID
        and tokens.intersection(r.tokens)
        and (since is None or (_local_day(r) or since) >= since)
    ]
    found.sort(key=lambda r: (r.date_start is not None, r.date_start or 0, r.last_updated))
    for row in reversed(found):
        value = _decimal((row.content.get("valueQuantity") or {}).get("value"))
        if value is not None:
            return value
    return None


@dataclass(frozen=True)
class PrePregnancy:
    """What the weight-gain flag starts from: the pre-pregnancy weight (kg)
    of this pregnancy, the latest height (cm) and the BMI."""

    weight: Decimal | None = None
    height: Decimal | None = None
    bmi: Decimal | None = None


def _pre_pregnancy(rows: Sequence[Resource], *, since: date | None = None) -> PrePregnancy:
    """Pre-pregnancy weight (kg) and BMI, when recorded; the BMI from the
    weight and the latest height when it is not. A pre-pregnancy weight
    recorded before `since` (the pregnancy's start) was about an earlier
    pregnancy and is not used; a height is a height."""
    weight = _latest_value(rows, PRE_PREGNANCY_WEIGHT, since=since)
    bmi = _latest_value(rows, PRE_PREGNANCY_BMI, since=since)
    height = _latest_value(rows, "body_height")
    if bmi is None and weight is not None and height:
        bmi = (weight / (height / 100) ** 2).quantize(Decimal("0.1"))
    return PrePregnancy(weight=weight, height=height, bmi=bmi)


def _is_current_flag(row: Resource, today: date) -> bool:
    if row.resource_type != "Flag" or row.status != "active":
        return False
    end = fhir_local_date((row.content.get("period") or {}).get("end"))
    return end is None or end >= today


# A Flag's FHIR flag-priority extension (the vitals alerts write it:
# docs/decisions/0021-alerts.md) as the portal's flag severity.
FLAG_PRIORITY = "http://hl7.org/fhir/StructureDefinition/flag-priority"
_PRIORITY_SEVERITY = {"PH": "danger", "PM": "warning"}


def _flag_severity(row: Resource) -> str:
    for extension in row.content.get("extension") or []:
        if isinstance(extension, dict) and extension.get("url") == FLAG_PRIORITY:
            for coding in (extension.get("valueCodeableConcept") or {}).get("coding") or []:
                if isinstance(coding, dict):
                    return _PRIORITY_SEVERITY.get(str(coding.get("code")), "info")
    return "info"


@dataclass
class PregnancyFacts:
    visits: list[Visit]
    risk: list[RiskFlag]
    flag_records: list[FlagLine]
    pre_pregnancy: PrePregnancy = field(default_factory=PrePregnancy)

    @property
    def flag_lines(self) -> list[FlagLine]:
        computed = [FlagLine(f.label, f.detail, f.severity) for f in self.risk]
        return computed + self.flag_records


def pregnancy_facts(
    rows: Sequence[Resource], *, pregnancy: PregnancySummary | None, today: date
) -> PregnancyFacts:
    """Visits, computed risk flags and Flag records of one patient's
    current pregnancy, from their visible records."""
    due = pregnancy.due_date if pregnancy else None
    since = pregnancy.started if pregnancy else None
    if since is None and due is not None:
        since = due - LONGEST_PREGNANCY
    visits = prenatal_visits(rows, since=since, due_date=due)
    before = _pre_pregnancy(rows, since=since)
    risk = risk_flags(
        [v.measures() for v in visits],
        pre_pregnancy_weight=before.weight,
        pre_pregnancy_bmi=before.bmi,
    )
    flags = [
        FlagLine(concept_text(r.content.get("code")) or gettext("Alert"), "", _flag_severity(r))
        for r in sorted(rows, key=lambda r: r.last_updated, reverse=True)
        if _is_current_flag(r, today)
    ]
    return PregnancyFacts(visits=visits, risk=risk, flag_records=flags, pre_pregnancy=before)


@dataclass
class PatientPage:
    patient: Patient
    name: str
    kana: str
    birth_date: date | None
    age: str
    is_child: bool
    categories: list[CategoryAccess]
    pregnancy: PregnancySummary | None
    gestation_today: str
    facts: PregnancyFacts
    flowsheet: list[FlowsheetRow]
    schedule: Schedule | None

    @property
    def shows_pregnancy(self) -> bool:
        return self.pregnancy is not None or bool(self.facts.visits)


def patient_page(*, user: Any, patient: Patient, today: date) -> PatientPage:
    """What the patient page shows of `patient` (the caller has checked
    and audited the access: clinic_patient)."""
    content = patient_resources(user=user, patient_ids=[patient.pk], purpose=Purpose.CARE).get(
        patient.pk
    )
    pregnancy = pregnancy_summaries(user=user, patient_ids=[patient.pk], purpose=Purpose.CARE).get(
        patient.pk
    )
    records = _pregnancy_records(user, [patient.pk])
    facts = pregnancy_facts(records, pregnancy=pregnancy, today=today)
    birth = birth_date_of(content)
    is_child = patient.kind == Patient.Kind.CHILD
    due = pregnancy.due_date if pregnancy else None
    return PatientPage(
        patient=patient,
        name=person_name(content),
        kana=kana_name(content),
        birth_date=birth,
        age=_age(birth, today, is_child),
        is_child=is_child,
        categories=category_access(user, patient),
        pregnancy=pregnancy,
        gestation_today=gestation_text(pregnancy.gestation_days(today)) if pregnancy else "",
        facts=facts,
        flowsheet=flowsheet(facts.visits),
        schedule=schedule(due_date=due, visits=facts.visits, today=today) if due else None,
    )


def _age(birth: date | None, today: date, is_child: bool) -> str:
    if birth is None:
        return ""
    if is_child:
        return age_text(birth, today)
    years = today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))
    return gettext("%(years)d years old") % {"years": years}
