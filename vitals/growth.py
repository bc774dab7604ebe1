"""Growth references and the arithmetic of a child's growth chart: WHO LMS
z-scores and percentiles, the Japanese 2023 survey's p3/p50/p97 bands, and
corrected age for children born preterm.

Pure functions over the reference tables in phr/reference_data/ (copies of
../shared/reference/data/, each naming its source in its header line):

- who_growth_lms_0_60m.csv: WHO Child Growth Standards 2006, monthly L, M, S
  for weight-for-age and length/height-for-age, 0–60 months, both sexes.
- growth_percentiles_jp2023_p3_p50_p97.csv: こども家庭庁 令和5年乳幼児身体発育調査,
  p3/p50/p97 of weight and height, 0–72 months (age bands).

Neither table covers head circumference: a head chart shows the child's
measurements without a reference (docs/decisions/0020-charts.md).

z from a value X (Cole 1990; WHO 2006): z = ((X/M)^L − 1)/(L·S), or
ln(X/M)/S when L = 0. For weight-for-age WHO restricts the LMS curve beyond
±3 SD ("restricted application of the LMS method", WHO 2006 technical
report, ch. 7; anthro's SD23 rule): above +3 SD, z = 3 + (X − SD3)/(SD3 −
SD2), below −3 SD, z = −3 + (X − SD3neg)/(SD2neg − SD3neg). Length/height
for age uses the LMS formula as is (its L is 1).
"""

from __future__ import annotations

import csv
import itertools
import math
from dataclasses import dataclass
from datetime import date
from functools import cache
from pathlib import Path

REFERENCE_DATA = Path(__file__).resolve().parent.parent / "phr" / "reference_data"
WHO_CSV = REFERENCE_DATA / "who_growth_lms_0_60m.csv"
JP_CSV = REFERENCE_DATA / "growth_percentiles_jp2023_p3_p50_p97.csv"

WEIGHT = "weight"
LENGTH = "length"  # length/height for age
HEAD = "head"
INDICATORS = (WEIGHT, LENGTH, HEAD)
_WHO_INDICATOR = {WEIGHT: "weight_for_age_kg", LENGTH: "length_height_for_age_cm"}
# Indicators whose z-scores use WHO's restricted LMS tail beyond ±3 SD.
RESTRICTED = frozenset({WEIGHT})

# An average month: 365.25 / 12 days (WHO Anthro converts days to months so).
DAYS_PER_MONTH = 30.4375
TERM_DAYS = 280  # 40 weeks
PRETERM_DAYS = 37 * 7  # born before 37 weeks: corrected age applies
CORRECT_UNTIL_MONTHS = 24  # of chronological age

# z of the percentiles the charts draw (standards.md §5).
PERCENTILES = (3, 10, 25, 50, 75, 90, 97)


# --------------------------------------------------------------------------
# Normal distribution: percentile <-> z
# --------------------------------------------------------------------------


def percentile_from_z(z: float) -> float:
    """The percentile (0–100) of a z-score, from the standard normal CDF."""
    return 50.0 * (1.0 + math.erf(z / math.sqrt(2.0)))


def z_from_percentile(percentile: float) -> float:
    """The z-score of a percentile (0 < p < 100), by bisection on the CDF
    (exact to 1e-9: no table lookups)."""
    if not 0.0 < percentile < 100.0:
        raise ValueError(f"percentile must be between 0 and 100, not {percentile}")
    low, high = -10.0, 10.0
    while high - low > 1e-10:
        middle = (low + high) / 2
        if percentile_from_z(middle) < percentile:
            low = middle
        else:
            high = middle
    return (low + high) / 2


# --------------------------------------------------------------------------
# LMS
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class LMS:
    L: float
    M: float
    S: float

    def value_at(self, z: float) -> float:
        """The measurement at z-score `z` (the LMS curve itself)."""
        if abs(self.L) < 1e-12:
            return self.M * math.exp(self.S * z)
        return self.M * (1.0 + self.L * self.S * z) ** (1.0 / self.L)

    def z_of(self, value: float, *, restricted: bool = False) -> float:
        """The z-score of `value`; with `restricted`, WHO's linear tail
        beyond ±3 SD (weight-based indicators)."""
        if value <= 0:
            raise ValueError("a measurement must be positive")
        if abs(self.L) < 1e-12:
            z = math.log(value / self.M) / self.S
        else:
            z = ((value / self.M) ** self.L - 1.0) / (self.L * self.S)
        if restricted:
            if z > 3:
                sd3, sd2 = self.value_at(3), self.value_at(2)
                z = 3 + (value - sd3) / (sd3 - sd2)
            elif z < -3:
                sd3, sd2 = self.value_at(-3), self.value_at(-2)
                z = -3 + (value - sd3) / (sd2 - sd3)
        return z


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(line for line in handle if not line.startswith("#")))


def _sex(sex: str) -> str:
    value = (sex or "").strip().lower()
    if value in ("m", "male"):
        return "M"
    if value in ("f", "female"):
        return "F"
    raise ValueError(f"no reference for sex {sex!r}")


@cache
def _who() -> dict[tuple[str, str], list[LMS]]:
    table: dict[tuple[str, str], dict[int, LMS]] = {}
    for row in _rows(WHO_CSV):
        key = (row["indicator"], row["sex"])
        table.setdefault(key, {})[int(row["age_months"])] = LMS(
            float(row["L"]), float(row["M"]), float(row["S"])
        )
    out = {}
    for key, by_month in table.items():
        months = sorted(by_month)
        if months != list(range(len(months))):
            raise ValueError(f"{WHO_CSV.name}: months of {key} are not 0..n without gaps")
        out[key] = [by_month[m] for m in months]
    return out


WHO_MAX_MONTHS = 60


def who_lms(indicator: str, sex: str, age_months: float) -> LMS | None:
    """L, M, S at a (fractional) age in months, linearly interpolated
    between the monthly rows; None outside 0–60 months or without a WHO
    table for the indicator (head circumference)."""
    name = _WHO_INDICATOR.get(indicator)
    if name is None or age_months < 0 or age_months > WHO_MAX_MONTHS:
        return None
    rows = _who()[(name, _sex(sex))]
    below = min(math.floor(age_months), len(rows) - 1)
    above = min(below + 1, len(rows) - 1)
    share = age_months - below
    a, b = rows[below], rows[above]
    return LMS(a.L + (b.L - a.L) * share, a.M + (b.M - a.M) * share, a.S + (b.S - a.S) * share)


@dataclass(frozen=True)
class Score:
    z: float
    percentile: float


def who_score(indicator: str, sex: str, age_months: float, value: float) -> Score | None:
    """The WHO z-score and percentile of a measurement, or None where the
    WHO tables do not reach (beyond 60 months, head circumference)."""
    lms = who_lms(indicator, sex, age_months)
    if lms is None:
        return None
    z = lms.z_of(value, restricted=indicator in RESTRICTED)
    return Score(z, percentile_from_z(z))


def who_curve(indicator: str, sex: str, percentile: float, *, until: int = WHO_MAX_MONTHS
              ) -> list[tuple[float, float]]:  # fmt: skip
    """(month, value) of one WHO percentile line, monthly from 0."""
    z = z_from_percentile(percentile)
    out = []
    for month in range(0, min(until, WHO_MAX_MONTHS) + 1):
        lms = who_lms(indicator, sex, month)
        assert lms is not None
        out.append((float(month), lms.value_at(z)))
    return out


# --------------------------------------------------------------------------
# The Japanese 2023 survey (p3 / p50 / p97)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class JPBand:
    """One age band of the survey: from `start` months, `width` months wide
    (0 = at birth), and its p3/p50/p97. Plotted at the band's middle."""

    start: int
    width: int
    p3: float
    p50: float
    p97: float

    @property
    def at(self) -> float:
        return self.start + self.width / 2


@cache
def _jp() -> dict[tuple[str, str], list[JPBand]]:
    raw: dict[tuple[str, str], list[tuple[int, float, float, float]]] = {}
    for row in _rows(JP_CSV):
        for indicator, prefix in ((WEIGHT, "weight"), (LENGTH, "height")):
            unit = "kg" if indicator == WEIGHT else "cm"
            raw.setdefault((indicator, row["sex"]), []).append(
                (
                    int(row["age_months"]),
                    float(row[f"{prefix}_p3_{unit}"]),
                    float(row[f"{prefix}_p50_{unit}"]),
                    float(row[f"{prefix}_p97_{unit}"]),
                )
            )
    out: dict[tuple[str, str], list[JPBand]] = {}
    for key, rows in raw.items():
        rows.sort()
        bands = []
        for n, (start, p3, p50, p97) in enumerate(rows):
            if start == 0:
                width = 0  # 出生時: at birth
            elif n + 1 < len(rows):
                width = rows[n + 1][0] - start
            else:
                width = start - rows[n - 1][0]
            bands.append(JPBand(start, width, p3, p50, p97))
        out[key] = bands
    return out


def jp_bands(indicator: str, sex: str) -> list[JPBand]:
    """The survey's bands of an indicator (none for head circumference)."""
    if indicator not in (WEIGHT, LENGTH):
        return []
    return list(_jp()[(indicator, _sex(sex))])


JP_MAX_MONTHS = 78  # the last band is 6 years 0–6 months


def jp_position(indicator: str, sex: str, age_months: float, value: float) -> str | None:
    """Where a measurement lies against the survey's p3–p97 at its age
    (linearly interpolated between band middles): "below", "within",
    "above"; None outside the survey's ages."""
    bands = jp_bands(indicator, sex)
    if not bands or age_months < 0 or age_months > bands[-1].at:
        return None
    p3, p97 = _interpolate(bands, age_months)
    if value < p3:
        return "below"
    if value > p97:
        return "above"
    return "within"


def _interpolate(bands: list[JPBand], age: float) -> tuple[float, float]:
    for left, right in itertools.pairwise(bands):
        if left.at <= age <= right.at:
            share = (age - left.at) / (right.at - left.at) if right.at > left.at else 0.0
            return (
                left.p3 + (right.p3 - left.p3) * share,
                left.p97 + (right.p97 - left.p97) * share,
            )
    return bands[0].p3, bands[0].p97


# --------------------------------------------------------------------------
# Age
# --------------------------------------------------------------------------


def age_days(birth: date, on: date) -> int:
    return (on - birth).days


def months_of(days: float) -> float:
    """Days as (fractional) months of 30.4375 days."""
    return days / DAYS_PER_MONTH


@dataclass(frozen=True)
class Age:
    """A child's age on a day: chronological, and the age the chart uses
    (corrected when `corrected`)."""

    days: int  # chronological
    chart_days: int  # what the chart plots
    corrected: bool

    @property
    def months(self) -> float:
        return months_of(self.days)

    @property
    def chart_months(self) -> float:
        return months_of(self.chart_days)


def prematurity_days(gestational_days_at_birth: int | None) -> int:
    """Days to subtract for corrected age: 280 − gestational age at birth
    for a child born before 37 weeks; 0 otherwise (or when unknown)."""
    if gestational_days_at_birth is None or gestational_days_at_birth >= PRETERM_DAYS:
        return 0
    return TERM_DAYS - gestational_days_at_birth


def age_on(birth: date, on: date, *, gestational_days_at_birth: int | None = None) -> Age:
    """The child's age on `on`; corrected age (chronological age minus
    (40 weeks − gestational age at birth)) for a child born before 37
    weeks while her chronological age is under 24 months. A corrected age
    before term is negative: the chart shows it left of 0."""
    days = age_days(birth, on)
    shift = prematurity_days(gestational_days_at_birth)
    if shift and months_of(days) < CORRECT_UNTIL_MONTHS:
        return Age(days, days - shift, True)
    return Age(days, days, False)
