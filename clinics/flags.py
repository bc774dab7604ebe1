"""Risk flags of a pregnancy, computed from its prenatal visits.

A pure function of the visits' measurements (no database, no request):
the portal's list and patient page and the tests call it alike. Thresholds
are those of ../shared/reference/standards.md §6:

- Hypertension in pregnancy (JSOG/JSSHP 2018): systolic ≥140 and/or
  diastolic ≥90 mmHg. One reading can be the white coat or a hurried
  measurement, so the flag needs it at two visits; at the severe range
  (≥160 and/or ≥110) one visit is enough.
- Proteinuria by test strip: 2+ or more at one visit, or 1+ at two visits
  (a single 1+ is common and often a concentrated sample; ± counts as
  negative here).
- Weight gain (JSOG 2021 guidance, gestational_weight_gain_jp2021.csv):
  when the pre-pregnancy BMI is known, a gain already above the band's
  upper limit, or below its lower limit from 37 weeks (term), when the
  total is reached. The guidance itself asks to individualise; the flag is
  a prompt to look, not a diagnosis.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from django.utils.translation import gettext, gettext_lazy

from clinics.reference import WeightGainBand, weight_gain_bands

HYPERTENSION = (Decimal(140), Decimal(90))
SEVERE_HYPERTENSION = (Decimal(160), Decimal(110))
TERM_DAYS = 37 * 7


@dataclass(frozen=True)
class VisitMeasures:
    """What the flags read of one prenatal visit (None: not measured)."""

    day: date
    gestation_days: int | None = None
    systolic: Decimal | None = None
    diastolic: Decimal | None = None
    urine_protein: int | None = None  # dipstick grade: 0 (− or ±), 1 (1+) … 4 (4+)
    weight: Decimal | None = None  # kg


@dataclass(frozen=True)
class RiskFlag:
    code: str
    severity: str  # "danger" or "warning"
    days: tuple[date, ...]  # the visits that raised it
    detail: str = ""

    @property
    def label(self) -> str:
        return str(FLAG_LABELS[self.code])


FLAG_LABELS = {
    "hypertension_severe": gettext_lazy("Severe hypertension (≥160/110)"),
    "hypertension": gettext_lazy("Hypertension (≥140/90) at two visits"),
    "proteinuria": gettext_lazy("Proteinuria 2+ or more"),
    "proteinuria_repeated": gettext_lazy("Proteinuria 1+ at two visits"),
    "weight_gain_high": gettext_lazy("Weight gain above the recommended range"),
    "weight_gain_low": gettext_lazy("Weight gain below the recommended range"),
}

# Dipstick results as written on a strip, a form or a file (the
# urine-dipstick codes of docs/formats/codesystems.md first).
_DIPSTICK_GRADES = {
    "negative": 0,
    "trace": 0,
    "-": 0,
    "−": 0,
    "(-)": 0,
    "±": 0,
    "+-": 0,
    "(±)": 0,
    "陰性": 0,
    "1+": 1,
    "+": 1,
    "(+)": 1,
    "+1": 1,
    "陽性": 1,
    "2+": 2,
    "++": 2,
    "(2+)": 2,
    "+2": 2,
    "3+": 3,
    "+++": 3,
    "(3+)": 3,
    "+3": 3,
    "4+": 4,
    "++++": 4,
    "(4+)": 4,
    "+4": 4,
}


def dipstick_grade(value: str | None) -> int | None:
    """A test-strip result as a grade (0 for − and ±, 1–4 for 1+ … 4+), or
    None when it cannot be read."""
    if not value:
        return None
    key = re.sub(r"\s", "", unicodedata.normalize("NFKC", value)).lower()
    return _DIPSTICK_GRADES.get(key)


def _bp(visit: VisitMeasures) -> str:
    high = "" if visit.systolic is None else f"{visit.systolic:f}"
    low = "" if visit.diastolic is None else f"{visit.diastolic:f}"
    return f"{high}/{low}"


def _at_or_above(visit: VisitMeasures, limits: tuple[Decimal, Decimal]) -> bool:
    systolic, diastolic = limits
    return (visit.systolic is not None and visit.systolic >= systolic) or (
        visit.diastolic is not None and visit.diastolic >= diastolic
    )


def _readings(visits: Iterable[VisitMeasures]) -> str:
    return ", ".join(f"{_bp(v)} ({v.day:%Y-%m-%d})" for v in visits)


def blood_pressure_flags(visits: Sequence[VisitMeasures]) -> list[RiskFlag]:
    severe = [v for v in visits if _at_or_above(v, SEVERE_HYPERTENSION)]
    if severe:
        days = tuple(v.day for v in severe)
        return [RiskFlag("hypertension_severe", "danger", days, _readings(severe))]
    high = [v for v in visits if _at_or_above(v, HYPERTENSION)]
    if len(high) >= 2:
        return [RiskFlag("hypertension", "danger", tuple(v.day for v in high), _readings(high))]
    return []


def proteinuria_flags(visits: Sequence[VisitMeasures]) -> list[RiskFlag]:
    def grades(found: Iterable[VisitMeasures]) -> str:
        return ", ".join(f"{v.urine_protein}+ ({v.day:%Y-%m-%d})" for v in found)

    heavy = [v for v in visits if v.urine_protein is not None and v.urine_protein >= 2]
    if heavy:
        return [RiskFlag("proteinuria", "danger", tuple(v.day for v in heavy), grades(heavy))]
    light = [v for v in visits if v.urine_protein == 1]
    if len(light) >= 2:
        days = tuple(v.day for v in light)
        return [RiskFlag("proteinuria_repeated", "warning", days, grades(light))]
    return []


def band_for(bmi: Decimal, bands: Sequence[WeightGainBand] | None = None) -> WeightGainBand | None:
    return next((b for b in (bands or weight_gain_bands()) if b.holds(bmi)), None)


def weight_gain_flags(
    visits: Sequence[VisitMeasures],
    *,
    pre_pregnancy_weight: Decimal | None,
    pre_pregnancy_bmi: Decimal | None,
    bands: Sequence[WeightGainBand] | None = None,
) -> list[RiskFlag]:
    if pre_pregnancy_weight is None or pre_pregnancy_bmi is None:
        return []
    weighed = [v for v in visits if v.weight is not None]
    if not weighed:
        return []
    band = band_for(pre_pregnancy_bmi, bands)
    if band is None:
        return []
    latest = weighed[-1]
    assert latest.weight is not None
    gain = latest.weight - pre_pregnancy_weight
    guidance = gettext("%(gain)s kg gained; guidance for BMI %(bmi)s: %(range)s") % {
        "gain": f"{gain:+.1f}",
        "bmi": f"{pre_pregnancy_bmi:.1f}",
        "range": _range_text(band),
    }
    if band.gain_max is not None and gain > band.gain_max:
        return [RiskFlag("weight_gain_high", "warning", (latest.day,), guidance)]
    at_term = latest.gestation_days is not None and latest.gestation_days >= TERM_DAYS
    if at_term and band.gain_min is not None and gain < band.gain_min:
        return [RiskFlag("weight_gain_low", "warning", (latest.day,), guidance)]
    return []


def _range_text(band: WeightGainBand) -> str:
    if band.gain_min is None and band.gain_max is not None:
        return gettext("up to %(max)s kg") % {"max": f"{band.gain_max:f}"}
    low = f"{band.gain_min:f}" if band.gain_min is not None else "?"
    high = f"{band.gain_max:f}" if band.gain_max is not None else "?"
    return gettext("%(min)s–%(max)s kg") % {"min": low, "max": high}


def risk_flags(
    visits: Iterable[VisitMeasures],
    *,
    pre_pregnancy_weight: Decimal | None = None,
    pre_pregnancy_bmi: Decimal | None = None,
    bands: Sequence[WeightGainBand] | None = None,
) -> list[RiskFlag]:
    """The risk flags these visits raise, most serious first. Visits are
    taken in date order; each counts once however often it was measured."""
    ordered = sorted(visits, key=lambda v: v.day)
    flags = blood_pressure_flags(ordered) + proteinuria_flags(ordered)
    flags += weight_gain_flags(
        ordered,
        pre_pregnancy_weight=pre_pregnancy_weight,
        pre_pregnancy_bmi=pre_pregnancy_bmi,
        bands=bands,
    )
    return sorted(flags, key=lambda f: f.severity != "danger")
