"""Chart data and SVG geometry for the family's vitals charts: a child's
growth (weight, length/height, head circumference against the Japanese 2023
bands or the WHO LMS percentiles), and the mother's pregnancy weight gain
(JSOG 2021 band for her pre-pregnancy BMI) and blood pressure (140/90 and
160/110 lines).

Reads go through `sharing.access.visible_records(user, PERSONAL)`: the
views authorize and audit with `access_patient`; this module only shapes
what the policy point lets through, in one query for the measurements
(plus the Patient resource, and the pregnancy for a mother).

Measurements count whatever their source — the municipality's checkups,
clinics, school checkups, the parents' entries, devices — each row of the
data table names it. The drawing primitives (Scale, Line, Rule, Tick) are
the clinic portal's (clinics/charts.py); a chart here adds shaded reference
bands, vertical marks, the reference's name and the data table.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import F, Func, Q, TextField, Value
from django.db.models.fields.json import KT
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import get_language, gettext, pgettext

from clinics.charts import Chart, Line, Point, Rule, Scale, Tick, _ticks
from clinics.flags import HYPERTENSION, SEVERE_HYPERTENSION, band_for
from clinics.reference import WeightGainBand
from phr import selectors, terminology
from phr.models import Patient, Provenance, Resource
from phr.selectors import JAPAN, SOURCE_LABELS
from sharing.access import Purpose, visible_records
from vitals import growth

PURPOSE = Purpose.PERSONAL
OBSERVATION_VOID = ("cancelled", "entered-in-error")

WEIGHT_KEYS = ("body_weight",)
LENGTH_KEYS = ("body_length", "body_height")
HEAD_KEYS = ("head_circumference",)
BIRTH_WEIGHT = "birth_weight"
GESTATIONAL_AGE = "gestational_age"
BP_PANEL, SYSTOLIC, DIASTOLIC = "bp_panel", "bp_systolic", "bp_diastolic"
PRE_WEIGHT, PRE_BMI, HEIGHT = "pre_pregnancy_weight", "pre_pregnancy_bmi", "body_height"

# Kilograms per unit, and centimetres per unit (UCUM codes and what people type).
KG = {"kg": 1.0, "g": 0.001, "[lb_av]": 0.45359237, "lb": 0.45359237}
CM = {"cm": 1.0, "mm": 0.1, "m": 100.0, "[in_i]": 2.54, "in": 2.54}

REFERENCE_JP = "jp"
REFERENCE_WHO = "who"
PERIODS = {"30": 30, "90": 90, "365": 365, "all": None}
DEFAULT_PERIOD = "90"
MARKERS_UP_TO = 200  # more readings than this: the line alone, the table has them all


def _tokens(*keys: str) -> list[str]:
    out: list[str] = []
    for key in keys:
        item = terminology.items().get(key)
        if item is not None:
            out += item.tokens
    return out


def _key_by_token() -> dict[str, str]:
    return {token: key for key, item in terminology.items().items() for token in item.tokens}


# --------------------------------------------------------------------------
# Reading records
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """One measurement, in the chart's unit."""

    at: datetime
    value: float
    origin: str
    second: float | None = None  # the diastolic of a blood pressure

    @property
    def day(self) -> date:
        return timezone.localtime(self.at, JAPAN).date()

    @property
    def systolic(self) -> float | None:
        """The value, or None where a blood pressure had no systolic."""
        return None if math.isnan(self.value) else self.value

    @property
    def source(self) -> str:
        return str(SOURCE_LABELS.get(self.origin, SOURCE_LABELS[Provenance.Origin.SYSTEM]))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _quantity(content: dict[str, Any], units: dict[str, float]) -> float | None:
    """A valueQuantity in the chart's unit, or None when its unit is not one
    we can convert (never guessed)."""
    quantity = content.get("valueQuantity")
    if not isinstance(quantity, dict):
        return None
    value = _number(quantity.get("value"))
    unit = str(quantity.get("code") or quantity.get("unit") or "")
    factor = units.get(unit)
    if value is None or factor is None:
        return None
    return value * factor


def _component(content: dict[str, Any], key: str, by_token: dict[str, str]) -> float | None:
    for component in content.get("component") or []:
        if not isinstance(component, dict):
            continue
        for coding in (component.get("code") or {}).get("coding") or []:
            if (
                isinstance(coding, dict)
                and by_token.get(f"{coding.get('system')}|{coding.get('code')}") == key
            ):
                return _number((component.get("valueQuantity") or {}).get("value"))
    return None


def _rows(user: Any, patient: Patient, keys: Sequence[str], since: datetime | None = None
          ) -> list[tuple[Any, ...]]:  # fmt: skip
    """(date_start, tokens, content, origin) of the patient's visible
    Observations of these items, oldest first: one query."""
    wanted = Q(
        visible_records(user, PURPOSE),
        resource_type="Observation",
        compartments__overlap=[patient.pk],
        tokens__overlap=_tokens(*keys),
        deleted=False,
        date_start__isnull=False,
    )
    queryset = Resource.objects.filter(wanted).exclude(status__in=OBSERVATION_VOID)
    if since is not None:
        queryset = queryset.filter(date_start__gte=since)
    return list(
        queryset.order_by("date_start", "last_updated").values_list(
            "date_start", "tokens", "content", "provenance__origin"
        )
    )


def _key_of(content: dict[str, Any], by_token: dict[str, str], keys: Sequence[str]) -> str:
    """The item of a record's own code (its tokens also hold the codes of
    its components: a blood pressure panel holds systolic and diastolic)."""
    for coding in (content.get("code") or {}).get("coding") or []:
        if isinstance(coding, dict):
            key = by_token.get(f"{coding.get('system')}|{coding.get('code')}")
            if key in keys:
                return key
    return ""


_IN_WOMB = re.compile(r"(\d+)\s*週\s*(\d+)\s*日")


def gestational_days(content: dict[str, Any], by_token: dict[str, str]) -> int | None:
    """A gestational-age Observation in days: completed weeks plus the days
    component (or the 在胎39週2日 note the infant checkup format keeps)."""
    quantity = content.get("valueQuantity") or {}
    weeks = _number(quantity.get("value"))
    if weeks is None:
        return None
    days = _component(content, "gestational_age_days", by_token)
    if days is None:
        for note in content.get("note") or []:
            match = _IN_WOMB.search(str((note or {}).get("text") or ""))
            if match and int(match[1]) == int(weeks):
                days = float(match[2])
    if quantity.get("code") == "d":
        return int(weeks)
    return round(weeks * 7 + (days or 0))


# --------------------------------------------------------------------------
# A child's growth
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class GrowthPoint:
    day: date
    age: growth.Age
    value: float
    origin: str
    z: float | None = None
    percentile: float | None = None
    jp: str | None = None  # below / within / above the survey's p3–p97

    @property
    def source(self) -> str:
        return str(SOURCE_LABELS.get(self.origin, SOURCE_LABELS[Provenance.Origin.SYSTEM]))

    @property
    def age_text(self) -> str:
        return _age_text(self.age.days)

    @property
    def corrected_text(self) -> str:
        return _age_text(self.age.chart_days) if self.age.corrected else ""


def _age_text(days: int) -> str:
    if days < 0:
        return gettext("%(weeks)d weeks before term") % {"weeks": math.ceil(-days / 7)}
    months = int(growth.months_of(days))
    years, rest = divmod(months, 12)
    if years == 0:
        return gettext("%(months)d months") % {"months": rest}
    return gettext("%(years)d years %(months)d months") % {"years": years, "months": rest}


@dataclass
class ChildGrowth:
    patient_id: uuid.UUID
    name: str
    sex: str  # "M", "F" or "" (no reference without it)
    birth: date | None
    gestational_days: int | None
    series: dict[str, list[GrowthPoint]] = field(default_factory=dict)

    @property
    def preterm(self) -> bool:
        return growth.prematurity_days(self.gestational_days) > 0

    @property
    def corrected_used(self) -> bool:
        return any(p.age.corrected for points in self.series.values() for p in points)


def _sex_of(content: dict[str, Any] | None) -> str:
    gender = str((content or {}).get("gender") or "")
    return {"male": "M", "female": "F"}.get(gender, "")


def child_growth(*, user: Any, patient: Patient) -> ChildGrowth:
    """The child's weight, length/height and head circumference with her
    age (corrected while it applies), WHO z-score and percentile, and her
    place against the Japanese 2023 p3–p97, oldest first."""
    content = selectors.patient_resources(user=user, patient_ids=[patient.pk], purpose=PURPOSE)
    person = content.get(patient.pk)
    birth = selectors.birth_date_of(person)
    sex = _sex_of(person)
    by_token = _key_by_token()
    keys = (*WEIGHT_KEYS, *LENGTH_KEYS, *HEAD_KEYS, BIRTH_WEIGHT, GESTATIONAL_AGE)
    gestation: int | None = None
    raw: dict[str, list[Reading]] = {growth.WEIGHT: [], growth.LENGTH: [], growth.HEAD: []}
    for at, _tokens, body, origin in _rows(user, patient, keys):
        key = _key_of(body, by_token, keys)
        if key == GESTATIONAL_AGE:
            # the latest record of the gestational age at birth decides
            gestation = gestational_days(body, by_token) if birth else gestation
            continue
        if key in WEIGHT_KEYS or key == BIRTH_WEIGHT:
            indicator, value = growth.WEIGHT, _quantity(body, KG)
        elif key in LENGTH_KEYS:
            indicator, value = growth.LENGTH, _quantity(body, CM)
        else:
            indicator, value = growth.HEAD, _quantity(body, CM)
        if value is not None and value > 0:
            raw[indicator].append(Reading(at, value, origin or ""))
    result = ChildGrowth(patient.pk, selectors.person_name(person), sex, birth, gestation)
    for indicator, readings in raw.items():
        points = []
        for reading in readings:
            if birth is None or reading.day < birth:
                continue
            age = growth.age_on(birth, reading.day, gestational_days_at_birth=gestation)
            score = jp = None
            if sex:
                score = growth.who_score(indicator, sex, age.chart_months, reading.value)
                jp = growth.jp_position(indicator, sex, age.chart_months, reading.value)
            points.append(
                GrowthPoint(
                    reading.day,
                    age,
                    reading.value,
                    reading.origin,
                    score.z if score else None,
                    score.percentile if score else None,
                    jp,
                )
            )
        result.series[indicator] = points
    return result


# --------------------------------------------------------------------------
# A mother's pregnancy weight gain and blood pressure
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class GainPoint:
    day: date
    week: float
    weight: float
    gain: float
    origin: str

    @property
    def source(self) -> str:
        return str(SOURCE_LABELS.get(self.origin, SOURCE_LABELS[Provenance.Origin.SYSTEM]))

    @property
    def gestation(self) -> str:
        days = round(self.week * 7)
        return gettext("%(weeks)d weeks %(days)d days") % {"weeks": days // 7, "days": days % 7}


@dataclass
class MotherVitals:
    patient_id: uuid.UUID
    name: str
    pregnancy: selectors.PregnancySummary | None
    pre_weight: float | None = None
    height: float | None = None
    bmi: Decimal | None = None
    band: WeightGainBand | None = None
    gain: list[GainPoint] = field(default_factory=list)
    blood_pressure: list[Reading] = field(default_factory=list)
    weights: list[Reading] = field(default_factory=list)
    period: str = DEFAULT_PERIOD


def mother_vitals(*, user: Any, patient: Patient, period: str = DEFAULT_PERIOD,
                  today: date | None = None) -> MotherVitals:  # fmt: skip
    """Her blood pressure and weight over `period` (days, or "all"), and
    in her current pregnancy the weight gain since her pre-pregnancy
    weight with the JSOG 2021 band of her pre-pregnancy BMI."""
    today = today or timezone.localdate(timezone=JAPAN)
    days = PERIODS.get(period, PERIODS[DEFAULT_PERIOD])
    period = period if period in PERIODS else DEFAULT_PERIOD
    since = None
    if days is not None:
        start = today - timedelta(days=days - 1)
        since = datetime(start.year, start.month, start.day, tzinfo=JAPAN)
    pregnancy = selectors.pregnancy_summary(user=user, patient=patient, purpose=PURPOSE)
    person = selectors.patient_resources(user=user, patient_ids=[patient.pk], purpose=PURPOSE)
    result = MotherVitals(
        patient.pk, selectors.person_name(person.get(patient.pk)), pregnancy, period=period
    )
    keys = (*WEIGHT_KEYS, BP_PANEL, SYSTOLIC, DIASTOLIC, PRE_WEIGHT, PRE_BMI, HEIGHT)
    started = _pregnancy_start(pregnancy)
    # One query: the period's readings, and for the pregnancy every weight
    # since it began and the pre-pregnancy values (a height is a height).
    earliest = since
    if started is not None and since is not None:
        earliest = min(since, datetime(started.year, started.month, started.day, tzinfo=JAPAN))
    pre_bmi: float | None = None
    pregnancy_weights: list[Reading] = []
    split: dict[datetime, dict[str, float]] = {}
    order = _keys_by_priority(keys)
    for at, tokens, origin, value_text, unit, high_text, low_text in _rows_for_mother(
        user, patient, keys, earliest
    ):
        key = _key_of_tokens(tokens, order)
        day = timezone.localtime(at, JAPAN).date()
        in_period = since is None or at >= since
        value = _number(value_text)
        if key in WEIGHT_KEYS:
            kg = _in_unit(value, unit, KG)
            if kg is None:
                continue
            reading = Reading(at, kg, origin or "")
            if in_period:
                result.weights.append(reading)
            if started is not None and day >= started:
                pregnancy_weights.append(reading)
        elif key == PRE_WEIGHT:
            if started is None or day >= started:
                result.pre_weight = _in_unit(value, unit, KG) or result.pre_weight
        elif key == PRE_BMI:
            if started is None or day >= started:
                pre_bmi = value or pre_bmi
        elif key == HEIGHT:
            result.height = _in_unit(value, unit, CM) or result.height
        elif key == BP_PANEL and in_period:
            high, low = _number(high_text), _number(low_text)
            if high is not None or low is not None:
                result.blood_pressure.append(
                    Reading(at, high if high is not None else math.nan, origin or "", low)
                )
        elif key in (SYSTOLIC, DIASTOLIC) and in_period and value is not None:
            # Systolic and diastolic sent as two Observations of one moment.
            split.setdefault(at, {"origin": origin or ""})[key] = value  # type: ignore[assignment]
    for at, values in split.items():
        result.blood_pressure.append(
            Reading(at, values.get(SYSTOLIC, math.nan), str(values["origin"]),
                    values.get(DIASTOLIC))
        )  # fmt: skip
    result.blood_pressure.sort(key=lambda r: r.at)
    if pre_bmi is not None:
        result.bmi = Decimal(str(pre_bmi)).quantize(Decimal("0.1"))
    elif result.pre_weight and result.height:
        result.bmi = Decimal(str(result.pre_weight / (result.height / 100) ** 2)).quantize(
            Decimal("0.1")
        )
    if result.bmi is not None:
        result.band = band_for(result.bmi)
    if pregnancy is not None and result.pre_weight is not None:
        for reading in pregnancy_weights:
            gestation = pregnancy.gestation_days(reading.day)
            if gestation is None:
                continue
            result.gain.append(
                GainPoint(reading.day, gestation / 7, reading.value,
                          reading.value - result.pre_weight, reading.origin)
            )  # fmt: skip
    return result


def _pregnancy_start(pregnancy: selectors.PregnancySummary | None) -> date | None:
    if pregnancy is None:
        return None
    if pregnancy.due_date is not None:
        return pregnancy.due_date - timedelta(days=selectors.PREGNANCY_DAYS)
    return pregnancy.started


def _in_unit(value: float | None, unit: str | None, units: dict[str, float]) -> float | None:
    factor = units.get(unit or "")
    if value is None or factor is None:
        return None
    return value * factor


def _keys_by_priority(keys: Sequence[str]) -> list[tuple[str, frozenset[str]]]:
    """The items in `keys` with their tokens, a panel before its components
    (a blood pressure panel's tokens hold its components' codes too)."""
    return [(key, frozenset(_tokens(key))) for key in keys]


def _key_of_tokens(tokens: Iterable[str], order: list[tuple[str, frozenset[str]]]) -> str:
    present = set(tokens)
    for key, wanted in order:
        if present & wanted:
            return key
    return ""


class _ComponentValue(Func):
    """The value of the component with a code, as text:
    jsonb_path_query_first(content, '$.component[*] ? (…code == "8480-6")
    .valueQuantity.value'); the path is a parameter."""

    template = "jsonb_path_query_first(%(expressions)s::jsonpath) #>> '{}'"
    output_field = TextField()

    def __init__(self, code: str) -> None:
        path = f'$.component[*] ? (@.code.coding[*].code == "{code}").valueQuantity.value'
        super().__init__(F("content"), Value(path))


def _rows_for_mother(user: Any, patient: Patient, keys: Sequence[str],
                     since: datetime | None) -> list[tuple[Any, ...]]:  # fmt: skip
    """(date_start, tokens, origin, value, unit, systolic, diastolic) of her
    readings since `since`, plus her pre-pregnancy values and heights
    whenever recorded: one query."""
    wanted = Q(
        visible_records(user, PURPOSE),
        resource_type="Observation",
        compartments__overlap=[patient.pk],
        deleted=False,
        date_start__isnull=False,
    )
    recent = Q(tokens__overlap=_tokens(*keys))
    if since is not None:
        recent &= Q(date_start__gte=since)
    wanted &= recent | Q(tokens__overlap=_tokens(PRE_WEIGHT, PRE_BMI, HEIGHT))
    systolic = terminology.item(SYSTOLIC).loinc
    diastolic = terminology.item(DIASTOLIC).loinc
    return list(
        Resource.objects.filter(wanted)
        .exclude(status__in=OBSERVATION_VOID)
        .annotate(
            # The numbers read in SQL: decoding 3,650 records' JSON in
            # Python costs ~0.4 s (bench/bench_charts.py).
            v=KT("content__valueQuantity__value"),
            u=Coalesce(KT("content__valueQuantity__code"), KT("content__valueQuantity__unit")),
            high=_ComponentValue(systolic),
            low=_ComponentValue(diastolic),
        )
        .order_by("date_start", "last_updated")
        .values_list("date_start", "tokens", "provenance__origin", "v", "u", "high", "low")
    )


# --------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Area:
    """A shaded reference band: the polygon between two curves."""

    css: str
    label: str
    path: str


@dataclass(frozen=True)
class Mark:
    """A vertical line at x (e.g. where corrected age ends, 20 weeks)."""

    x: float
    label: str
    css: str


@dataclass
class Figure(Chart):
    areas: list[Area] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    reference_lines: list[Line] = field(default_factory=list)
    source: str = ""
    notes: list[str] = field(default_factory=list)
    markers: bool = True
    hollow: list[bool] = field(default_factory=list)  # per point of the first line

    @property
    def first_points(self) -> list[tuple[Point, bool]]:
        points = self.lines[0].points if self.lines else []
        flags = self.hollow or [False] * len(points)
        return list(zip(points, flags, strict=True))

    @property
    def legend(self) -> list[tuple[str, str]]:
        items = [(line.css, line.label) for line in self.lines]
        items += [(area.css, area.label) for area in self.areas]
        items += [(line.css, line.label) for line in self.reference_lines if line.label]
        return items


def _path(points: Sequence[tuple[float, float]]) -> str:
    return " ".join(f"{'M' if i == 0 else 'L'}{x:.1f},{y:.1f}" for i, (x, y) in enumerate(points))


def _area_path(upper: Sequence[tuple[float, float]], lower: Sequence[tuple[float, float]]) -> str:
    ring = list(upper) + list(reversed(lower))
    return _path(ring) + " Z"


def _fmt(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}"


INDICATOR_TEXT = {
    growth.WEIGHT: (
        lambda: gettext("Weight for age"),
        "kg",
    ),
    growth.LENGTH: (lambda: gettext("Length/height for age"), "cm"),
    growth.HEAD: (lambda: gettext("Head circumference for age"), "cm"),
}


def growth_chart(data: ChildGrowth, indicator: str, reference: str) -> Figure:
    """One growth chart: the reference (JP 2023 p3–p97 band and p50, or
    the WHO percentile lines) and the child's points at their chart age."""
    title_of, unit = INDICATOR_TEXT[indicator]
    points = data.series.get(indicator, [])
    figure = Figure(
        id=f"chart-{indicator}",
        title=title_of(),
        description="",
        x_label=gettext("Age (months)"),
        y_label=unit,
    )
    ages = [p.age.chart_months for p in points]
    values = [p.value for p in points]
    x_low = min([0.0, *ages])
    x_low = math.floor(x_low) if x_low < 0 else 0.0
    x_high = float(max(12, math.ceil(max(ages, default=0) + 2)))
    reference_points: list[list[tuple[float, float]]] = []
    if data.sex and reference == REFERENCE_WHO and indicator != growth.HEAD:
        until = int(min(x_high, growth.WHO_MAX_MONTHS))
        for pct in growth.PERCENTILES:
            reference_points.append(growth.who_curve(indicator, data.sex, pct, until=until))
        figure.source = gettext(
            "Reference: WHO Child Growth Standards (2006), percentiles 3, 10, 25, 50, 75, 90 "
            "and 97 from the LMS tables; z-scores computed from L, M and S (weight with "
            "WHO's restricted tails beyond ±3 SD)."
        )
    elif data.sex and indicator != growth.HEAD:
        bands = [b for b in growth.jp_bands(indicator, data.sex) if b.at <= x_high + 6]
        reference_points = [
            [(b.at, b.p3) for b in bands],
            [(b.at, b.p50) for b in bands],
            [(b.at, b.p97) for b in bands],
        ]
        figure.source = gettext(
            "Reference: Children and Families Agency, 2023 National Growth Survey on "
            "Preschool Children (令和5年乳幼児身体発育調査): 3rd, 50th and 97th percentiles, "
            "plotted at the middle of each age band."
        )
    elif indicator == growth.HEAD:
        figure.source = gettext(
            "No reference is shown: the reference tables this service holds (Japanese 2023 "
            "survey, WHO weight and length/height for age) do not cover head circumference."
        )
    else:
        figure.source = gettext(
            "No reference is shown: the child's sex is not recorded, and the references "
            "differ for boys and girls."
        )
    ref_values = [v for curve in reference_points for x, v in curve if x <= x_high]
    every = values + ref_values
    if every:
        spread = max(every) - min(every)
        y_low = max(0.0, math.floor(min(every) - spread * 0.05))
        y_high = math.ceil(max(every) + spread * 0.05 + 0.5)
    else:
        y_low, y_high = (0.0, 20.0) if indicator == growth.WEIGHT else (30.0, 110.0)
    x = Scale(x_low, x_high, figure.left, figure.right)
    y = Scale(y_low, y_high, figure.bottom, figure.top)
    figure.x_ticks = [Tick(x(v), f"{v:g}") for v in _ticks(x_low, x_high, 10)]
    figure.y_ticks = [Tick(y(v), f"{v:g}") for v in _ticks(y_low, y_high, 6)]
    figure.rules += [Rule(t.at, "", "grid") for t in figure.y_ticks]

    def clip(curve: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(x(a), y(v)) for a, v in curve if x_low <= a <= x_high]

    if reference == REFERENCE_WHO and reference_points:
        for pct, curve in zip(growth.PERCENTILES, reference_points, strict=True):
            css = "ref-line ref-median" if pct == 50 else "ref-line"
            figure.reference_lines.append(Line(css, "", [Point(a, b, f"P{pct}") for a, b in
                                                         clip(curve)]))  # fmt: skip
        figure.reference_lines[0] = Line(
            "ref-line", gettext("WHO percentiles 3–97"), figure.reference_lines[0].points
        )
    elif reference_points:
        low, median, high = (clip(c) for c in reference_points)
        figure.areas.append(Area("ref-band", gettext("3rd–97th percentile (Japan 2023)"),
                                 _area_path(high, low)))  # fmt: skip
        figure.reference_lines.append(
            Line("ref-line ref-median", gettext("50th percentile (Japan 2023)"),
                 [Point(a, b, "P50") for a, b in median])
        )  # fmt: skip
    if data.corrected_used and x_low < 0:
        figure.marks.append(Mark(x(0), gettext("term (40 weeks)"), "mark"))
    if data.preterm and data.corrected_used:
        shift = growth.prematurity_days(data.gestational_days)
        ends = growth.months_of(growth.CORRECT_UNTIL_MONTHS * growth.DAYS_PER_MONTH - shift)
        if x_low <= ends <= x_high:
            figure.marks.append(Mark(x(ends), gettext("corrected age ends (24 months)"),
                                     "mark mark-corrected"))  # fmt: skip
        figure.notes.append(
            gettext(
                "Born at %(weeks)d weeks %(days)d days: until 24 months of age the points are "
                "plotted at corrected age (age minus the %(early)d days born before 40 weeks), "
                "drawn as hollow markers."
            )
            % {
                "weeks": (data.gestational_days or 0) // 7,
                "days": (data.gestational_days or 0) % 7,
                "early": shift,
            }
        )
    child_line: list[Point] = []
    for point in points:
        label = f"{point.day:%Y-%m-%d} ({point.age_text}): {_fmt(point.value, 2)} {unit}"
        child_line.append(Point(x(point.age.chart_months), y(point.value), label))
    figure.lines.append(Line("series series-child", data.name or gettext("Child"), child_line))
    figure.hollow = [p.age.corrected for p in points]
    figure.description = gettext(
        "%(title)s: %(count)d measurements of the child against the reference; the table "
        "below lists the same numbers."
    ) % {"title": figure.title, "count": len(points)}
    return figure


def weight_gain_chart(data: MotherVitals) -> Figure:
    figure = Figure(
        id="chart-weight-gain",
        title=gettext("Weight gain in pregnancy"),
        description=gettext(
            "Weight gained since before the pregnancy, by week of pregnancy, against the "
            "JSOG 2021 recommended total gain for the pre-pregnancy BMI."
        ),
        x_label=gettext("Weeks of pregnancy"),
        y_label="kg",
    )
    gains = [p.gain for p in data.gain]
    band = data.band
    top = float(band.gain_max) if band and band.gain_max is not None else 0.0
    y_low = math.floor(min([-2.0, *gains]))
    y_high = math.ceil(max([top + 2, 6.0, *gains]) + 1)
    x = Scale(0, 42, figure.left, figure.right)
    y = Scale(y_low, y_high, figure.bottom, figure.top)
    figure.x_ticks = [Tick(x(v), f"{v:g}") for v in _ticks(0, 42, 8)]
    figure.y_ticks = [Tick(y(v), f"{v:g}") for v in _ticks(y_low, y_high, 6)]
    figure.rules += [Rule(t.at, "", "grid") for t in figure.y_ticks]
    if band is not None:
        low = float(band.gain_min) if band.gain_min is not None else 0.0
        high = float(band.gain_max) if band.gain_max is not None else low
        figure.areas.append(
            Area(
                "ref-band",
                gettext("Recommended gain by 40 weeks: %(range)s (%(category)s)")
                % {"range": gain_range_text(band), "category": band_label(band)},
                _area_path([(x(0), y(0)), (x(40), y(high))], [(x(0), y(0)), (x(40), y(low))]),
            )
        )
        figure.source = gettext(
            "Reference: JSOG 2021, 妊娠中の体重増加指導の目安 (total gain by pre-pregnancy BMI). "
            "The guidance gives the total only: the band is drawn as a straight line from "
            "0 kg to the total at 40 weeks, and it asks for individual, lenient guidance."
        )
    else:
        figure.source = gettext(
            "No band is shown: the pre-pregnancy weight and height (or BMI) are not recorded."
        )
    figure.marks.append(Mark(x(40), gettext("40 weeks"), "mark"))
    figure.lines.append(
        Line(
            "series series-weight",
            gettext("Weight gain"),
            [
                Point(x(p.week), y(p.gain), f"{p.day:%Y-%m-%d} ({p.gestation}): {p.gain:+.1f} kg")
                for p in data.gain
            ],
        )
    )
    figure.markers = len(data.gain) <= MARKERS_UP_TO
    return figure


def blood_pressure_chart(data: MotherVitals, today: date) -> Figure:
    readings = data.blood_pressure
    figure = Figure(
        id="chart-bp",
        title=gettext("Blood pressure"),
        description=gettext(
            "Systolic and diastolic blood pressure readings by date, with the lines of "
            "hypertension (140/90 mmHg) and severe hypertension (160/110 mmHg)."
        ),
        x_label=gettext("Date"),
        y_label="mmHg",
    )
    days = PERIODS.get(data.period)
    first = readings[0].day if readings else today
    origin = today - timedelta(days=days - 1) if days else first
    values = [v for r in readings for v in (r.value, r.second) if v is not None and v == v]
    y_low = min([50.0, *values]) // 10 * 10
    y_high = math.ceil(max([170.0, *values]) / 10) * 10
    span = max((today - origin).days, 1)
    x = Scale(0, span, figure.left, figure.right)
    y = Scale(y_low, y_high, figure.bottom, figure.top)

    def at(reading: Reading) -> float:
        local = timezone.localtime(reading.at, JAPAN)
        return (local.date() - origin).days + local.hour / 24 + local.minute / 1440

    figure.x_ticks = [
        Tick(x(v), f"{origin + timedelta(days=int(v)):%m/%d}" if span < 400
             else f"{origin + timedelta(days=int(v)):%Y/%m}")
        for v in _ticks(0, span, 6)
    ]  # fmt: skip
    figure.y_ticks = [Tick(y(v), f"{v:g}") for v in _ticks(y_low, y_high, 6)]
    figure.rules += [Rule(t.at, "", "grid") for t in figure.y_ticks]
    for limit, css, label in (
        (SEVERE_HYPERTENSION[0], "threshold severe", "160"),
        (HYPERTENSION[0], "threshold", "140"),
        (SEVERE_HYPERTENSION[1], "threshold severe", "110"),
        (HYPERTENSION[1], "threshold", "90"),
    ):
        figure.rules.append(Rule(y(float(limit)), label, css))
    for css, label, pick in (
        ("series series-systolic", pgettext("blood pressure", "Systolic"), lambda r: r.value),
        ("series series-diastolic", pgettext("blood pressure", "Diastolic"), lambda r: r.second),
    ):
        points = []
        for reading in readings:
            value = pick(reading)
            if value is None or value != value:
                continue
            points.append(
                Point(x(at(reading)), y(value),
                      f"{timezone.localtime(reading.at, JAPAN):%Y-%m-%d %H:%M}: {value:g}")
            )  # fmt: skip
        figure.lines.append(Line(css, label, points))
    figure.markers = len(readings) <= MARKERS_UP_TO
    figure.source = gettext(
        "Lines: hypertension in pregnancy at 140/90 mmHg and severe at 160/110 mmHg "
        "(JSOG/JSSHP 2018 definition)."
    )
    return figure


def band_label(band: WeightGainBand) -> str:
    language = get_language() or "ja"
    return band.label_ja if language.startswith("ja") else band.label_en


def gain_range_text(band: WeightGainBand) -> str:
    if band.gain_min is None and band.gain_max is not None:
        return gettext("up to %(max)s kg (individually)") % {"max": f"{band.gain_max:f}"}
    return f"{band.gain_min:f}–{band.gain_max:f} kg"


# --------------------------------------------------------------------------
# JSON (the chart-data endpoint)
# --------------------------------------------------------------------------


def growth_json(data: ChildGrowth) -> dict[str, Any]:
    return {
        "patient": str(data.patient_id),
        "sex": data.sex or None,
        "birthDate": data.birth.isoformat() if data.birth else None,
        "gestationalAgeAtBirthDays": data.gestational_days,
        "correctedAgeUsed": data.corrected_used,
        "series": {
            indicator: [
                {
                    "date": p.day.isoformat(),
                    "ageDays": p.age.days,
                    "chartAgeDays": p.age.chart_days,
                    "corrected": p.age.corrected,
                    "value": round(p.value, 3),
                    "unit": "kg" if indicator == growth.WEIGHT else "cm",
                    "whoZ": round(p.z, 2) if p.z is not None else None,
                    "whoPercentile": round(p.percentile, 1) if p.percentile is not None else None,
                    "jp2023": p.jp,
                    "source": p.origin,
                }
                for p in points
            ]
            for indicator, points in data.series.items()
        },
    }


def mother_json(data: MotherVitals) -> dict[str, Any]:
    def nan_none(value: float | None) -> float | None:
        return None if value is None or value != value else value

    band = data.band
    return {
        "patient": str(data.patient_id),
        "period": data.period,
        "preWeightKg": data.pre_weight,
        "preBmi": float(data.bmi) if data.bmi is not None else None,
        "band": {
            "category": band.label_en,
            "gainMinKg": float(band.gain_min) if band.gain_min is not None else None,
            "gainMaxKg": float(band.gain_max) if band.gain_max is not None else None,
        }
        if band
        else None,
        "weightGain": [
            {
                "date": p.day.isoformat(),
                "week": round(p.week, 2),
                "weightKg": p.weight,
                "gainKg": round(p.gain, 2),
                "source": p.origin,
            }
            for p in data.gain
        ],
        "bloodPressure": [
            {
                "at": r.at.isoformat(),
                "systolic": nan_none(r.value),
                "diastolic": r.second,
                "source": r.origin,
            }
            for r in data.blood_pressure
        ],
        "weight": [
            {"at": r.at.isoformat(), "kg": r.value, "source": r.origin} for r in data.weights
        ],
    }


def period_label(key: str) -> str:
    return {
        "30": gettext("30 days"),
        "90": gettext("90 days"),
        "365": gettext("1 year"),
        "all": gettext("All"),
    }[key]
