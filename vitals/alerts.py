"""Vitals alerts: rules over a patient's measurements, kept in the record
store as FHIR Flag resources, one Flag per episode
(docs/decisions/0021-alerts.md).

Rules (thresholds from ../shared/reference/standards.md §5–6):

- Blood pressure in pregnancy (JSOG/JSSHP 2018 HDP definition): a reading
  is high at systolic ≥140 and/or diastolic ≥90 mmHg, severe at ≥160
  and/or ≥110, counted from 20 weeks 0 days (gestational age from the
  pregnancy's due date, phr.selectors.PregnancySummary). High readings
  whose gaps are at most 7 days form one episode; the episode alerts when
  it holds two readings (two within 7 days) or one severe reading, and is
  over 7 days after its last high reading (period.end is that instant,
  written ahead, so every reader can tell an episode ran out even before
  the next evaluation marks it inactive). Severe ("contact your clinic at
  once") when any reading of it is severe, else "contact your clinic soon".
- Weight gain (JSOG 2021, gestational_weight_gain_jp2021.csv through
  clinics.reference / clinics.flags, the bands the clinic portal uses):
  a weight during the current pregnancy above the band's upper limit for
  the pre-pregnancy BMI, or below its lower limit from 37 weeks. Runs of
  such readings form one episode; it closes at a reading back inside the
  band that no reading outside follows within 7 days (so a weight hovering
  at the limit does not open and close an episode every day).
- A child's weight-for-age (WHO LMS z-score, vitals.growth): a weight whose
  z-score is more than 1.34 below that of a weight measured at least one
  calendar month before (crossing two major centile lines: the lines are
  0.67 SD apart). Episodes run and close as for weight gain.

Every rule is a pure function of readings (`bp_episodes`,
`weight_gain_episodes`, `growth_episodes`); `alerts_evaluate` reads the
readings, computes the episodes and reconciles them with the Flags in the
store. It reads as the person on whose behalf the system acts — the
patient herself, or for a child a guardian — through sharing.access, and
audits that read (action alert.evaluate, detail.by = "system").
"""

from __future__ import annotations

import calendar
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone, translation
from django.utils.translation import gettext_lazy as _

from clinics.flags import TERM_DAYS, band_for
from clinics.reference import WeightGainBand
from phr import store, terminology
from phr.indexing import fhir_local_date
from phr.models import Guardianship, Patient, Provenance, Resource
from phr.selectors import JAPAN, PregnancySummary, patient_resources, pregnancy_summary
from phr.services import provenance_create
from phr.terminology import CATEGORY_SYSTEM, LOINC, Category
from sharing.access import Purpose, audit_reveal, decide, visible_records
from vitals import growth

logger = logging.getLogger(__name__)

ALERT_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/vitals-alert"
# Source identifiers of the Flags (one per episode): "<patient>|<rule>|<first reading>".
ALERT_SOURCE = "urn:hagukumi:vitals-alert"
FLAG_DETAIL = "http://hl7.org/fhir/StructureDefinition/flag-detail"
FLAG_PRIORITY = "http://hl7.org/fhir/StructureDefinition/flag-priority"
FLAG_PRIORITY_SYSTEM = "http://hl7.org/fhir/flag-priority-code"
FLAG_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/flag-category"

BP_PANEL = "85354-9"
SYSTOLIC = "8480-6"
DIASTOLIC = "8462-4"
BODY_WEIGHT = "29463-7"
READING_TOKENS = [f"{LOINC}|{code}" for code in (BP_PANEL, SYSTOLIC, DIASTOLIC, BODY_WEIGHT)]
# The weight-gain inputs the clinic records (docs/dataset.md).
PRE_PREGNANCY_KEYS = ("pre_pregnancy_weight", "pre_pregnancy_bmi", "body_height")
# A child's gestational age at birth (for corrected age) is read too.
EXTRA_KEYS = (*PRE_PREGNANCY_KEYS, "gestational_age")

HIGH_BP = (Decimal(140), Decimal(90))
SEVERE_BP = (Decimal(160), Decimal(110))
HDP_FROM_DAYS = 20 * 7  # 20 weeks 0 days
EPISODE_GAP = timedelta(days=7)
CENTILE_DROP = Decimal("1.34")
# A pregnancy is looked at from its start, or this long before its due date.
LONGEST_PREGNANCY = timedelta(days=44 * 7)
VOID_STATUSES = frozenset({"cancelled", "entered-in-error"})

# What an evaluation reads: named in its audit row.
READ_CATEGORIES = (Category.VITALS, Category.PRENATAL_CHECKUPS, Category.PREGNANCY)


@dataclass(frozen=True)
class AlertKind:
    code: str
    rule: str  # the episode family: "bp", "weight_gain" or "growth"
    severity: str  # "severe", "soon" or "advice"
    priority: str  # flag-priority-code: PH, PM, PL
    en: str  # the coding's display (English, as codings are)
    label: Any  # gettext_lazy, Japanese first
    advice: Any


KINDS: dict[str, AlertKind] = {
    k.code: k
    for k in (
        AlertKind(
            "bp-severe",
            "bp",
            "severe",
            "PH",
            "Severe-range blood pressure in pregnancy (home reading >=160/110 mmHg)",
            _("Very high blood pressure (160/110 or more)"),
            _(
                "Your blood pressure reached 160/110 mmHg or more. Contact your clinic at "
                "once, also at night or on a holiday, and tell them the readings below. If "
                "you have a headache, blurred vision, pain in the upper abdomen or feel "
                "very unwell, call the clinic or an ambulance (119) now."
            ),
        ),
        AlertKind(
            "bp-high",
            "bp",
            "soon",
            "PM",
            "Hypertension in pregnancy (two readings >=140/90 mmHg within 7 days)",
            _("High blood pressure (140/90 or more, twice within 7 days)"),
            _(
                "Your blood pressure was 140/90 mmHg or more on two readings within 7 "
                "days. Contact your clinic soon (today or tomorrow) and tell them the "
                "readings below. If it reaches 160/110, or you have a headache, blurred "
                "vision or pain in the upper abdomen, contact them at once."
            ),
        ),
        AlertKind(
            "weight-gain-high",
            "weight_gain",
            "advice",
            "PL",
            "Gestational weight gain above the JSOG 2021 range for pre-pregnancy BMI",
            _("Weight gain above the recommended range"),
            _(
                "Your weight gain since before pregnancy is above the range the Japan "
                "Society of Obstetrics and Gynecology suggests for your pre-pregnancy BMI. "
                "The range is a guide, not a rule: talk it over with your midwife or "
                "doctor at your next checkup, and ask about meals and activity."
            ),
        ),
        AlertKind(
            "weight-gain-low",
            "weight_gain",
            "advice",
            "PL",
            "Gestational weight gain below the JSOG 2021 range at term",
            _("Weight gain below the recommended range"),
            _(
                "At term your weight gain since before pregnancy is below the range the "
                "Japan Society of Obstetrics and Gynecology suggests for your "
                "pre-pregnancy BMI. Talk it over with your midwife or doctor at your next "
                "checkup."
            ),
        ),
        AlertKind(
            "growth-falter",
            "growth",
            "advice",
            "PL",
            "Weight-for-age z-score fell by more than 1.34 (two major centile lines)",
            _("Weight for age has dropped across two centile lines"),
            _(
                "Your child's weight for age has fallen across more than two major "
                "centile lines (a WHO z-score drop of more than 1.34) between "
                "measurements at least a month apart. This is often harmless, but please "
                "consult your pediatrician or the municipal health center about feeding "
                "and growth."
            ),
        ),
    )
}
RULE_KINDS = {
    rule: [k for k in KINDS.values() if k.rule == rule] for rule in ("bp", "weight_gain", "growth")
}
ALERT_TOKENS = [f"{ALERT_SYSTEM}|{code}" for code in KINDS]
PRIORITY_DISPLAY = {"PH": "High priority", "PM": "Medium priority", "PL": "Low priority"}


# --------------------------------------------------------------------------
# Readings
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class BpReading:
    at: datetime
    systolic: Decimal | None
    diastolic: Decimal | None
    refs: tuple[str, ...]  # the Observation(s) it was read from

    def at_or_above(self, limits: tuple[Decimal, Decimal]) -> bool:
        return (self.systolic is not None and self.systolic >= limits[0]) or (
            self.diastolic is not None and self.diastolic >= limits[1]
        )

    @property
    def high(self) -> bool:
        return self.at_or_above(HIGH_BP)

    @property
    def severe(self) -> bool:
        return self.at_or_above(SEVERE_BP)


@dataclass(frozen=True)
class WeightReading:
    at: datetime
    kg: Decimal
    refs: tuple[str, ...]


@dataclass(frozen=True)
class Episode:
    kind: str  # a KINDS code
    start: datetime  # the first qualifying reading
    end: datetime | None  # when it closed (or, for blood pressure, will close)
    active: bool
    readings: tuple[str, ...]  # references, in time order
    # The readings that qualified (a growth episode also lists the earlier
    # weight it fell from, which another episode may list too): what ties
    # an episode to its Flag.
    qualifying: tuple[str, ...] = ()

    @property
    def own_readings(self) -> tuple[str, ...]:
        return self.qualifying or self.readings

    @property
    def rule(self) -> str:
        return KINDS[self.kind].rule


def _codes(concept: Any) -> set[str]:
    found = set()
    for coding in (concept or {}).get("coding") or []:
        if isinstance(coding, dict) and coding.get("system") == LOINC and coding.get("code"):
            found.add(str(coding["code"]))
    return found


def _number(quantity: Any) -> Decimal | None:
    if not isinstance(quantity, dict) or quantity.get("value") is None:
        return None
    try:
        return Decimal(str(quantity["value"]))
    except (InvalidOperation, ValueError):
        return None


# UCUM codes (and the units devices write) of a weight, in kilograms.
_KG_PER = {
    "kg": Decimal(1),
    "g": Decimal("0.001"),
    "[lb_av]": Decimal("0.45359237"),
    "lb": Decimal("0.45359237"),
    "lbs": Decimal("0.45359237"),
}


def _kilograms(quantity: Any) -> Decimal | None:
    value = _number(quantity)
    if value is None:
        return None
    unit = str(quantity.get("code") or quantity.get("unit") or "kg")
    factor = _KG_PER.get(unit, _KG_PER.get(unit.lower()))
    return None if factor is None else value * factor


@dataclass(frozen=True)
class Row:
    """What the rules read of one stored Observation."""

    id: uuid.UUID
    content: dict[str, Any]
    at: datetime | None
    status: str = ""

    @property
    def ref(self) -> str:
        return f"Observation/{self.id}"


def rows_of(resources: Iterable[Resource]) -> list[Row]:
    return [Row(r.id, r.content, r.date_start, r.status) for r in resources]


def bp_readings(rows: Iterable[Row]) -> list[BpReading]:
    """Blood pressure readings: a panel (85354-9) with systolic and diastolic
    components, or separate systolic/diastolic Observations of the same
    instant (as some clinic systems send them), paired. The same values at
    the same minute from two sources (typed in and imported from a device)
    are one reading."""
    panels: list[BpReading] = []
    loose: dict[tuple[datetime, str], dict[str, Any]] = {}
    for row in rows:
        if row.at is None or row.status in VOID_STATUSES:
            continue
        codes = _codes(row.content.get("code"))
        if BP_PANEL in codes or row.content.get("component"):
            values: dict[str, Decimal | None] = {SYSTOLIC: None, DIASTOLIC: None}
            for component in row.content.get("component") or []:
                for code in _codes(component.get("code")) & values.keys():
                    values[code] = _number(component.get("valueQuantity"))
            if values[SYSTOLIC] is not None or values[DIASTOLIC] is not None:
                panels.append(BpReading(row.at, values[SYSTOLIC], values[DIASTOLIC], (row.ref,)))
            continue
        for code in codes & {SYSTOLIC, DIASTOLIC}:
            value = _number(row.content.get("valueQuantity"))
            if value is None:
                continue
            encounter = str((row.content.get("encounter") or {}).get("reference") or "")
            slot = loose.setdefault((row.at, encounter), {"refs": []})
            slot[code] = value
            slot["refs"].append(row.ref)
    for (at, _encounter), slot in loose.items():
        panels.append(BpReading(at, slot.get(SYSTOLIC), slot.get(DIASTOLIC), tuple(slot["refs"])))
    return _merge_duplicates(panels, key=lambda r: (r.systolic, r.diastolic))


def weight_readings(rows: Iterable[Row]) -> list[WeightReading]:
    found = []
    for row in rows:
        if row.at is None or row.status in VOID_STATUSES:
            continue
        if BODY_WEIGHT not in _codes(row.content.get("code")):
            continue
        kg = _kilograms(row.content.get("valueQuantity"))
        if kg is not None and kg > 0:
            found.append(WeightReading(row.at, kg, (row.ref,)))
    return _merge_duplicates(found, key=lambda r: (r.kg.normalize(),))


def _merge_duplicates(readings: list[Any], *, key: Callable[[Any], tuple[Any, ...]]) -> list[Any]:
    """One reading per (minute, values), with the references of all its
    copies; in time order."""
    merged: dict[tuple[Any, ...], Any] = {}
    for reading in sorted(readings, key=lambda r: (r.at, r.refs)):
        slot = (reading.at.replace(second=0, microsecond=0), *key(reading))
        if slot in merged:
            first = merged[slot]
            merged[slot] = type(first)(**{**first.__dict__, "refs": first.refs + reading.refs})
        else:
            merged[slot] = reading
    return sorted(merged.values(), key=lambda r: (r.at, r.refs))


def _local_day(moment: datetime) -> date:
    return timezone.localtime(moment, JAPAN).date()


def _refs(readings: Iterable[Any]) -> tuple[str, ...]:
    return tuple(ref for reading in readings for ref in reading.refs)


# --------------------------------------------------------------------------
# Rules (pure)
# --------------------------------------------------------------------------


def bp_episodes(
    readings: Sequence[BpReading],
    *,
    gestation_days: Callable[[date], int | None],
    now: datetime,
) -> list[Episode]:
    """Blood-pressure episodes of a pregnancy: high readings from 20 weeks,
    grouped while each follows the previous within 7 days; a group alerts
    with two readings or one severe one, and ends 7 days after its last."""
    high = []
    for reading in sorted(readings, key=lambda r: r.at):
        days = gestation_days(_local_day(reading.at))
        if days is not None and days >= HDP_FROM_DAYS and reading.high:
            high.append(reading)
    groups: list[list[BpReading]] = []
    for reading in high:
        if groups and reading.at - groups[-1][-1].at <= EPISODE_GAP:
            groups[-1].append(reading)
        else:
            groups.append([reading])
    episodes = []
    for group in groups:
        severe = any(r.severe for r in group)
        if len(group) < 2 and not severe:
            continue
        end = group[-1].at + EPISODE_GAP
        episodes.append(
            Episode(
                kind="bp-severe" if severe else "bp-high",
                start=group[0].at,
                end=end,
                active=now < end,
                readings=_refs(group),
            )
        )
    return episodes


def _runs(
    readings: Sequence[Any],
    state_of: Callable[[Any], str | None],
    *,
    extra: Callable[[Any], tuple[str, ...]] | None = None,
) -> list[Episode]:
    """Episodes from readings each in a state (a kind code) or None: a run of
    readings in one state is an episode; it closes at a reading in no state
    that no reading in that state follows within 7 days (end = that
    reading), or at a reading in another state. A run still going at the
    last reading is active."""
    episodes: list[Episode] = []
    current: list[Any] = []
    kind: str | None = None
    calm: Any = None  # the first reading back to normal in the current run

    def close(end: datetime | None) -> None:
        nonlocal current, kind, calm
        if current and kind is not None:
            own = _refs(current)
            refs = tuple(dict.fromkeys((*extra(current[0]), *own))) if extra else own
            episodes.append(Episode(kind, current[0].at, end, end is None, refs, own))
        current, kind, calm = [], None, None

    for reading in sorted(readings, key=lambda r: r.at):
        state = state_of(reading)
        if kind is not None and calm is not None and reading.at - calm.at > EPISODE_GAP:
            close(calm.at)
        if state is None:
            if kind is not None and calm is None:
                calm = reading
            continue
        if kind is not None and state != kind:
            close(reading.at)
        if kind is None:
            kind = state
        calm = None
        current.append(reading)
    close(calm.at if calm is not None else None)
    return episodes


def weight_gain_episodes(
    readings: Sequence[WeightReading],
    *,
    pre_weight: Decimal | None,
    pre_bmi: Decimal | None,
    gestation_days: Callable[[date], int | None],
    bands: Sequence[WeightGainBand] | None = None,
) -> list[Episode]:
    """Weight-gain episodes of a pregnancy (JSOG 2021 band for the
    pre-pregnancy BMI): above the upper limit at any time, below the lower
    one from 37 weeks. Nothing without a pre-pregnancy weight and BMI."""
    if pre_weight is None or pre_bmi is None:
        return []
    band = band_for(pre_bmi, bands)
    if band is None:
        return []

    def state(reading: WeightReading) -> str | None:
        gain = reading.kg - pre_weight
        if band.gain_max is not None and gain > band.gain_max:
            return "weight-gain-high"
        days = gestation_days(_local_day(reading.at))
        at_term = days is not None and days >= TERM_DAYS
        if at_term and band.gain_min is not None and gain < band.gain_min:
            return "weight-gain-low"
        return None

    return _runs(readings, state)


def add_months(day: date, months: int) -> date:
    """The same day `months` calendar months later (the month's last day
    when it has no such day: 31 January + 1 month = 28/29 February)."""
    month = day.month - 1 + months
    year, month = day.year + month // 12, month % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def growth_episodes(
    readings: Sequence[WeightReading],
    *,
    zscore: Callable[[date, Decimal], float | None],
) -> list[Episode]:
    """Weight-for-age episodes of a child: a weight whose z-score
    (`zscore(day, kg)`, None outside the reference's ages) is more than
    1.34 below the highest z-score of a weight at least one calendar month
    earlier. The episode lists that earlier weight first."""
    scored: list[tuple[WeightReading, date, Decimal]] = []
    for reading in sorted(readings, key=lambda r: r.at):
        day = _local_day(reading.at)
        z = zscore(day, reading.kg)
        if z is not None:
            scored.append((reading, day, Decimal(str(z))))
    # One pass: `top` is the highest z-score among the weights at least a
    # calendar month before the current one (they only ever join, in order).
    states: dict[int, str | None] = {}
    reference: dict[int, WeightReading] = {}
    top: tuple[WeightReading, Decimal] | None = None
    earlier = 0
    for reading, day, z in scored:
        while earlier < len(scored) and add_months(scored[earlier][1], 1) <= day:
            candidate, _, candidate_z = scored[earlier]
            if top is None or candidate_z > top[1]:
                top = (candidate, candidate_z)
            earlier += 1
        if top is not None and top[1] - z > CENTILE_DROP:
            states[id(reading)] = "growth-falter"
            reference[id(reading)] = top[0]
        else:
            states[id(reading)] = None
    return _runs(
        [r for r, _, _ in scored],
        lambda r: states[id(r)],
        extra=lambda first: reference[id(first)].refs,
    )


# --------------------------------------------------------------------------
# The Flag of an episode
# --------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return timezone.localtime(moment, JAPAN).isoformat(timespec="seconds")


def flag_resource(
    *, patient_id: uuid.UUID, episode: Episode, status: str | None = None
) -> dict[str, Any]:
    """The Flag of one episode, valid by construction (R4 Flag: status,
    category, code, subject, period; flag-priority and flag-detail
    extensions — one flag-detail per reading)."""
    kind = KINDS[episode.kind]
    with translation.override("ja"):
        label = str(kind.label)
        category_text = str(_("Vitals alert"))
    period = {"start": _iso(episode.start)}
    if episode.end is not None:
        period["end"] = _iso(episode.end)
    return {
        "resourceType": "Flag",
        "meta": {"tag": [{"system": CATEGORY_SYSTEM, "code": Category.VITALS}]},
        "extension": [
            {
                "url": FLAG_PRIORITY,
                "valueCodeableConcept": {
                    "coding": [
                        {
                            "system": FLAG_PRIORITY_SYSTEM,
                            "code": kind.priority,
                            "display": PRIORITY_DISPLAY[kind.priority],
                        }
                    ]
                },
            },
            *(
                {"url": FLAG_DETAIL, "valueReference": {"reference": ref}}
                for ref in episode.readings
            ),
        ],
        "status": status or ("active" if episode.active else "inactive"),
        "category": [
            {
                "coding": [
                    {"system": FLAG_CATEGORY_SYSTEM, "code": "clinical", "display": "Clinical"}
                ],
                "text": category_text,
            }
        ],
        "code": {
            "coding": [{"system": ALERT_SYSTEM, "code": kind.code, "display": kind.en}],
            "text": label,
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "period": period,
    }


def flag_kind(content: dict[str, Any]) -> AlertKind | None:
    for coding in (content.get("code") or {}).get("coding") or []:
        if isinstance(coding, dict) and coding.get("system") == ALERT_SYSTEM:
            return KINDS.get(str(coding.get("code")))
    return None


def flag_readings(content: dict[str, Any]) -> list[str]:
    return [
        str((e.get("valueReference") or {}).get("reference"))
        for e in content.get("extension") or []
        if isinstance(e, dict) and e.get("url") == FLAG_DETAIL
    ]


def flag_priority(content: dict[str, Any]) -> str:
    for extension in content.get("extension") or []:
        if isinstance(extension, dict) and extension.get("url") == FLAG_PRIORITY:
            for coding in (extension.get("valueCodeableConcept") or {}).get("coding") or []:
                return str(coding.get("code") or "")
    return ""


# --------------------------------------------------------------------------
# Evaluation: read on the patient's behalf, compute, reconcile, write
# --------------------------------------------------------------------------


@dataclass
class EvaluationResult:
    patient_id: uuid.UUID
    acted_as: int | None = None  # the user whose grant the read used
    episodes: list[Episode] = field(default_factory=list)
    created: list[uuid.UUID] = field(default_factory=list)
    updated: list[uuid.UUID] = field(default_factory=list)
    skipped: str = ""  # why nothing was evaluated


def acting_user(patient: Patient) -> Any:
    """The person on whose behalf the system reads: the adult herself (her
    account), or for a child the longest-standing guardian whose grant
    reaches the child today (an ended guardianship or a DV block does not).
    None when nobody can: a clinic-registered adult with no account yet."""
    if patient.kind == Patient.Kind.ADULT:
        account = patient.account
        if (
            account is not None
            and account.is_active
            and decide(account, patient, purpose=Purpose.PERSONAL)
        ):
            return account
        return None
    for guardianship in (
        Guardianship.objects.active()
        .filter(child=patient, guardian__is_active=True)
        .select_related("guardian")
        .order_by("valid_from", "id")
    ):
        if decide(guardianship.guardian, patient, purpose=Purpose.PERSONAL):
            return guardianship.guardian
    return None


def _pre_pregnancy(
    rows: Sequence[Resource], since: date | None
) -> tuple[Decimal | None, Decimal | None]:
    """The pre-pregnancy weight (kg) and BMI recorded for this pregnancy
    (the clinic's items, docs/dataset.md), the BMI from the weight and the
    latest height when it is not recorded — as the clinic portal computes
    them (clinics.selectors._pre_pregnancy)."""
    items = terminology.items()

    def latest(key: str, *, dated: bool) -> Decimal | None:
        item = items.get(key)
        if item is None:
            return None
        tokens = set(item.tokens)
        found = [
            r
            for r in rows
            if tokens.intersection(r.tokens)
            and r.status not in VOID_STATUSES
            and not (dated and since and r.date_start and _local_day(r.date_start) < since)
        ]
        found.sort(key=lambda r: (r.date_start is not None, r.date_start or 0, r.last_updated))
        for row in reversed(found):
            value = _number(row.content.get("valueQuantity"))
            if value is not None:
                return value
        return None

    weight = latest("pre_pregnancy_weight", dated=True)
    bmi = latest("pre_pregnancy_bmi", dated=True)
    height = latest("body_height", dated=False)
    if bmi is None and weight is not None and height:
        bmi = (weight / (height / 100) ** 2).quantize(Decimal("0.1"))
    return weight, bmi


def _gestation_at_birth(rows: Sequence[Resource]) -> int | None:
    """A child's gestational age at birth in days (the latest recorded), as
    the growth chart reads it (vitals.charts.gestational_days)."""
    from vitals.charts import gestational_days

    item = terminology.items().get("gestational_age")
    if item is None:
        return None
    tokens = set(item.tokens)
    found = sorted(
        (r for r in rows if tokens.intersection(r.tokens) and r.status not in VOID_STATUSES),
        key=lambda r: r.last_updated,
    )
    by_token = {t: key for key, i in terminology.items().items() for t in i.tokens}
    for row in reversed(found):
        days = gestational_days(row.content, by_token)
        if days is not None:
            return days
    return None


def _zscore_for(
    patient_content: dict[str, Any] | None, *, gestation_at_birth: int | None = None
) -> Callable[[date, Decimal], float | None] | None:
    """The child's WHO weight-for-age z-score on a day, at the age the growth
    chart uses (corrected for a child born before 37 weeks, until 24
    months: vitals.growth.age_on) — the numbers the chart shows. None
    without a birth date and a sex the WHO tables know."""
    content = patient_content or {}
    birth = fhir_local_date(content.get("birthDate"))
    sex = content.get("gender")
    if birth is None or sex not in ("male", "female"):
        return None

    def zscore(day: date, kg: Decimal) -> float | None:
        if day < birth:
            return None
        age = growth.age_on(birth, day, gestational_days_at_birth=gestation_at_birth)
        if age.chart_days < 0:
            return None
        score = growth.who_score(growth.WEIGHT, sex, age.chart_months, float(kg))
        return None if score is None else score.z

    return zscore


def _window_start(pregnancy: PregnancySummary | None) -> datetime | None:
    """Where the pregnancy rules start looking: the pregnancy's start, or
    LONGEST_PREGNANCY before its due date (None: no pregnancy to check)."""
    if pregnancy is None or pregnancy.due_date is None:
        return None
    since = pregnancy.started or (pregnancy.due_date - LONGEST_PREGNANCY)
    return datetime.combine(since, time.min, tzinfo=JAPAN)


def _rows(visible: Any, patient: Patient, pregnancy: PregnancySummary | None) -> list[Resource]:
    """The Observations the rules read: a child's weights of all time (and
    her gestational age at birth); a pregnant mother's readings since the
    pregnancy began (and the pre-pregnancy weight, height and BMI, of any
    date); nothing for an adult who is not pregnant."""
    extra: list[str] = []
    for key in EXTRA_KEYS:
        item = terminology.items().get(key)
        if item is not None:
            extra += item.tokens
    observations = visible.filter(resource_type="Observation")
    if patient.kind == Patient.Kind.CHILD:
        return list(observations.filter(tokens__overlap=READING_TOKENS + extra))
    start = _window_start(pregnancy)
    if start is None:
        return []
    wanted = Q(tokens__overlap=READING_TOKENS, date_start__gte=start) | Q(tokens__overlap=extra)
    return list(observations.filter(wanted))


def _lock(patient_id: uuid.UUID) -> None:
    """One evaluation per patient at a time (two writes committing together
    queue two tasks): a transaction-level advisory lock keyed by the
    patient."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"vitals-alerts:{patient_id}"]
        )


def compute_episodes(
    *,
    patient: Patient,
    rows: Sequence[Resource],
    pregnancy: PregnancySummary | None,
    patient_content: dict[str, Any] | None,
    now: datetime,
) -> tuple[dict[str, list[Episode]], dict[str, datetime | None]]:
    """The episodes of each rule that applies to this patient, and for each
    rule the start of the window its episodes were computed over (None: all
    time; a rule absent from the result did not apply)."""
    observations = rows_of(r for r in rows if r.resource_type == "Observation")
    episodes: dict[str, list[Episode]] = {}
    windows: dict[str, datetime | None] = {}
    if patient.kind == Patient.Kind.CHILD:
        zscore = _zscore_for(patient_content, gestation_at_birth=_gestation_at_birth(rows))
        if zscore is not None:
            episodes["growth"] = growth_episodes(weight_readings(observations), zscore=zscore)
            windows["growth"] = None
        return episodes, windows
    start = _window_start(pregnancy)
    if pregnancy is None or start is None:
        return episodes, windows
    since = start.date()
    during = [o for o in observations if o.at is not None and o.at >= start]
    episodes["bp"] = bp_episodes(
        bp_readings(during), gestation_days=pregnancy.gestation_days, now=now
    )
    pre_weight, pre_bmi = _pre_pregnancy(rows, since)
    episodes["weight_gain"] = weight_gain_episodes(
        weight_readings(during),
        pre_weight=pre_weight,
        pre_bmi=pre_bmi,
        gestation_days=pregnancy.gestation_days,
    )
    windows["bp"] = windows["weight_gain"] = start
    return episodes, windows


def alerts_evaluate(*, patient_id: uuid.UUID, now: datetime | None = None) -> EvaluationResult:
    """Evaluate every rule for one patient and bring her alert Flags in
    line: one Flag per episode, a new version only when the episode
    changed (a new reading, closing), nothing when nothing did. Safe to run
    twice, and at the same time (an advisory lock per patient)."""
    now = now or timezone.now()
    result = EvaluationResult(patient_id=patient_id)
    patient = (
        Patient.objects.filter(pk=patient_id, merged_into__isnull=True)
        .select_related("account")
        .first()
    )
    if patient is None:
        result.skipped = "no_patient"
        return result
    actor = acting_user(patient)
    if actor is None:
        result.skipped = "nobody_to_act_for"
        return result
    result.acted_as = actor.pk
    with transaction.atomic():
        _lock(patient.pk)
        visible = Resource.objects.filter(
            visible_records(actor, Purpose.PERSONAL),
            compartments__overlap=[patient.pk],
            deleted=False,
        )
        pregnancy = None
        if patient.kind == Patient.Kind.ADULT:
            pregnancy = pregnancy_summary(user=actor, patient=patient, purpose=Purpose.PERSONAL)
        rows = _rows(visible, patient, pregnancy)
        existing = list(
            visible.filter(resource_type="Flag", tokens__overlap=ALERT_TOKENS).order_by(
                "date_start", "id"
            )
        )
        content = patient_resources(
            user=actor, patient_ids=[patient.pk], purpose=Purpose.PERSONAL
        ).get(patient.pk)
        episodes, windows = compute_episodes(
            patient=patient, rows=rows, pregnancy=pregnancy, patient_content=content, now=now
        )
        audit_reveal(
            actor,
            [patient.pk],
            categories=READ_CATEGORIES,
            action="alert.evaluate",
            purpose=Purpose.PERSONAL,
            detail={"by": "system", "job": "alerts"},
        )
        wanted = _reconcile(patient.pk, episodes, windows, existing, now)
        for list_ in episodes.values():
            result.episodes += list_
        _write(wanted, existing, result)
    return result


def _reconcile(
    patient_id: uuid.UUID,
    episodes: dict[str, list[Episode]],
    windows: dict[str, datetime | None],
    existing: Sequence[Resource],
    now: datetime,
) -> list[tuple[uuid.UUID, dict[str, Any], store.Source | None]]:
    """The Flags as they should be: (id, resource, source for a new one).

    A computed episode keeps the Flag that already lists one of its
    readings (so a reading imported late, even one earlier than the
    episode's first, extends the episode instead of raising a second
    alert); otherwise it gets a new Flag whose id derives from the patient,
    the rule and its first reading. An existing Flag no episode claims:
    inside the rule's window, its readings no longer support it (deleted,
    corrected) — entered-in-error; outside it (an earlier pregnancy) it is
    history — closed if still active, else left alone."""
    wanted: list[tuple[uuid.UUID, dict[str, Any], store.Source | None]] = []
    claimed: set[uuid.UUID] = set()
    by_rule: dict[str, list[Resource]] = {}
    for row in existing:
        kind = flag_kind(row.content)
        if kind is not None and row.status != "entered-in-error":
            by_rule.setdefault(kind.rule, []).append(row)
    for rule, found in episodes.items():
        candidates = by_rule.get(rule, [])
        for episode in found:
            refs = set(episode.own_readings)
            match = next(
                (
                    r
                    for r in candidates
                    if r.id not in claimed and refs.intersection(flag_readings(r.content))
                ),
                None,
            )
            resource = flag_resource(patient_id=patient_id, episode=episode)
            if match is not None:
                claimed.add(match.id)
                wanted.append((match.id, resource, None))
            else:
                source = store.Source(
                    ALERT_SOURCE, f"{patient_id}|{rule}|{episode.own_readings[0]}"
                )
                wanted.append((store.source_resource_id("Flag", source), resource, source))
    new_ids = {rid for rid, _, source in wanted if source is not None}
    for rule, found in by_rule.items():
        for row in found:
            if row.id in claimed or row.id in new_ids:
                continue
            content = dict(row.content)
            if _inside(row, rule, windows):
                content["status"] = "entered-in-error"
            elif row.status == "active":
                content["status"] = "inactive"
                period = dict(content.get("period") or {})
                period.setdefault("end", _iso(now))
                content["period"] = period
            else:
                continue
            wanted.append((row.id, content, None))
    return wanted


def _inside(row: Resource, rule: str, windows: dict[str, datetime | None]) -> bool:
    """Did this evaluation look at the time of this Flag's episode?"""
    if rule not in windows:
        return False
    window = windows[rule]
    return window is None or (row.date_start is not None and row.date_start >= window)


def _write(
    wanted: Sequence[tuple[uuid.UUID, dict[str, Any], store.Source | None]],
    existing: Sequence[Resource],
    result: EvaluationResult,
) -> None:
    """Write the Flags whose content differs from what is stored (one
    Provenance for the lot, none when nothing changed)."""
    stored = {row.id: row.content_hash for row in existing}
    changed = []
    for rid, resource, source in wanted:
        staged = store.stage(resource, source=source, resource_id=rid)
        if stored.get(rid) != staged.content_hash:
            changed.append((rid, resource, source))
    if not changed:
        return
    provenance = provenance_create(origin=Provenance.Origin.SYSTEM, source="vitals:alerts")
    for rid, resource, source in changed:
        _, version, did_change = store.record_write(
            resource, provenance=provenance, source=source, resource_id=rid
        )
        if did_change:
            (result.created if version == 1 else result.updated).append(rid)


def patients_with_lapsed_alerts(*, now: datetime | None = None) -> list[uuid.UUID]:
    """Patients with an alert Flag still active whose period has ended
    (a blood-pressure episode's 7 days ran out with no new reading): the
    daily sweep re-evaluates them so the Flag is marked inactive. Reads
    only ids of the system's own Flags, revealing nothing to anyone."""
    now = now or timezone.now()
    ids: set[uuid.UUID] = set()
    for compartments in Resource.objects.filter(
        Q(date_end__lt=now),
        resource_type="Flag",
        status="active",
        deleted=False,
        tokens__overlap=ALERT_TOKENS,
    ).values_list("compartments", flat=True):
        ids.update(compartments)
    return sorted(ids)


# --------------------------------------------------------------------------
# Reading alerts for a page (the family's alerts page, the banner)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadingLine:
    at: datetime | None
    text: str
    source: str  # who recorded it: self, device, clinic …


@dataclass
class AlertLine:
    id: uuid.UUID
    patient_id: uuid.UUID
    kind: AlertKind
    status: str
    start: datetime | None
    end: datetime | None
    current: bool
    readings: list[ReadingLine] = field(default_factory=list)

    @property
    def severity(self) -> str:
        return self.kind.severity

    @property
    def label(self) -> str:
        return str(self.kind.label)

    @property
    def advice(self) -> str:
        return str(self.kind.advice)


_SEVERITY_ORDER = {"severe": 0, "soon": 1, "advice": 2}


def _reading_text(row: Resource) -> str:
    """A reading's value as a line shows it: "142/92 mmHg", "62.3 kg"."""
    rows = [Row(row.id, row.content, row.date_start or timezone.now())]
    found = bp_readings(rows)
    if found:
        high = "" if found[0].systolic is None else f"{found[0].systolic.normalize():f}"
        low = "" if found[0].diastolic is None else f"{found[0].diastolic.normalize():f}"
        return f"{high}/{low} mmHg"
    weights = weight_readings(rows)
    if weights:
        return f"{weights[0].kg.quantize(Decimal('0.01')).normalize():f} kg"
    return ""


def alert_lines(
    *,
    user: Any,
    patient_ids: Sequence[uuid.UUID] | None = None,
    current_only: bool = False,
    now: datetime | None = None,
) -> dict[uuid.UUID, list[AlertLine]]:
    """The alert Flags `user` may see as the family (self, guardian:
    Purpose.PERSONAL), by patient — current ones first, the most severe
    first, then the newest — each with its readings as `user` may see
    them. `patient_ids` None: every patient the family grants reach. The
    caller audits the patients it shows."""
    now = now or timezone.now()
    flags = Resource.objects.filter(
        visible_records(user, Purpose.PERSONAL),
        resource_type="Flag",
        tokens__overlap=ALERT_TOKENS,
        deleted=False,
        status__in=["active"] if current_only else ["active", "inactive"],
    )
    if patient_ids is not None:
        flags = flags.filter(compartments__overlap=list(patient_ids))
    lines: list[AlertLine] = []
    refs_of: dict[uuid.UUID, list[str]] = {}
    wanted: set[uuid.UUID] = set()
    for row in flags.only("id", "content", "compartments", "status", "date_start", "date_end"):
        kind = flag_kind(row.content)
        if kind is None or not row.compartments:
            continue
        current = row.status == "active" and (row.date_end is None or row.date_end > now)
        if current_only and not current:
            continue
        line = AlertLine(
            row.id, row.compartments[0], kind, row.status, row.date_start, row.date_end, current
        )
        refs_of[row.id] = flag_readings(row.content)
        for ref in refs_of[row.id]:
            if ref.startswith("Observation/"):
                try:
                    wanted.add(uuid.UUID(ref.removeprefix("Observation/")))
                except ValueError:
                    continue
        lines.append(line)
    readings: dict[str, ReadingLine] = {}
    if wanted and not current_only:
        for obs in Resource.objects.filter(
            visible_records(user, Purpose.PERSONAL),
            resource_type="Observation",
            id__in=wanted,
            deleted=False,
        ).select_related("provenance"):
            source = obs.provenance.get_origin_display() if obs.provenance else ""
            readings[f"Observation/{obs.id}"] = ReadingLine(
                obs.date_start, _reading_text(obs), str(source)
            )
    out: dict[uuid.UUID, list[AlertLine]] = {}
    for line in lines:
        line.readings = [readings[r] for r in refs_of[line.id] if r in readings]
        line.readings.sort(key=lambda r: (r.at is None, r.at or now))
        out.setdefault(line.patient_id, []).append(line)
    epoch = datetime.min.replace(tzinfo=UTC)
    for found in out.values():
        found.sort(key=lambda a: (a.start or epoch), reverse=True)
        found.sort(key=lambda a: (not a.current, _SEVERITY_ORDER[a.severity]))
    return out
