"""Reference tables the clinic portal reads: the standard prenatal checkup
schedule (妊婦健康診査の望ましい基準, 平成27年厚生労働省告示第226号) and the
JSOG 2021 weight-gain guidance.

Both are copies of ../shared/reference/data/ kept in phr/reference_data/
(each file names its sources in its header lines). Loaded once per process.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path

REFERENCE_DATA = Path(__file__).resolve().parent.parent / "phr" / "reference_data"
SCHEDULE_CSV = REFERENCE_DATA / "prenatal_schedule_jp.csv"
WEIGHT_GAIN_CSV = REFERENCE_DATA / "gestational_weight_gain_jp2021.csv"

# The 告示 starts its first band at "妊娠初期" without a week. Checkups
# funded by the municipality begin after the pregnancy is confirmed and
# notified, commonly around 8 weeks; with it, the three bands give the
# "about 14 visits" the 告示 names (8–20: 4, 24–34: 6, 36–40: 5).
FIRST_VISIT_WEEK = 8
# The last weekly visit counted is the one of the due date's week (40w).
LAST_VISIT_WEEK = 40


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        lines = [line for line in handle if not line.startswith("#")]
    return list(csv.DictReader(lines))


@dataclass(frozen=True)
class Band:
    """One visit-frequency band of the standard schedule: from week
    `start` to week `end` (inclusive), a visit every `interval` weeks."""

    start: int
    end: int
    interval: int
    label_ja: str
    label_en: str


@dataclass(frozen=True)
class Test:
    """A test the standard schedule asks for once within a window of weeks
    (`start`/`end` inclusive; None where the window is open)."""

    start: int | None
    end: int | None
    label_ja: str
    label_en: str


_INTERVAL = re.compile(r"(\d+)\s*週")


@cache
def schedule_bands() -> tuple[Band, ...]:
    """The visit-frequency rows, in order (open ends filled with
    FIRST_VISIT_WEEK and LAST_VISIT_WEEK)."""
    bands = []
    for row in _rows(SCHEDULE_CSV):
        if row["row_type"] != "visit_frequency":
            continue
        match = _INTERVAL.search(row["count_or_interval"])
        if match is None:
            raise ValueError(f"{SCHEDULE_CSV.name}: no interval in {row['count_or_interval']!r}")
        start = int(row["window_start_week"]) if row["window_start_week"] else FIRST_VISIT_WEEK
        end = int(row["window_end_week"]) if row["window_end_week"] else LAST_VISIT_WEEK
        bands.append(Band(start, end, int(match[1]), row["item_ja"], row["item_en"]))
    return tuple(sorted(bands, key=lambda b: b.start))


@cache
def schedule_tests() -> tuple[Test, ...]:
    tests = []
    for row in _rows(SCHEDULE_CSV):
        if row["row_type"] != "test":
            continue
        tests.append(
            Test(
                int(row["window_start_week"]) if row["window_start_week"] else None,
                int(row["window_end_week"]) if row["window_end_week"] else None,
                row["item_ja"],
                row["item_en"],
            )
        )
    return tuple(tests)


@dataclass(frozen=True)
class WeightGainBand:
    """The recommended total weight gain for a pre-pregnancy BMI range
    [bmi_min, bmi_max); None where open. `gain_min` None: no lower bound
    (obesity class 2: "up to 5 kg", individually)."""

    bmi_min: Decimal | None
    bmi_max: Decimal | None
    gain_min: Decimal | None
    gain_max: Decimal | None
    label_ja: str
    label_en: str

    def holds(self, bmi: Decimal) -> bool:
        return (self.bmi_min is None or bmi >= self.bmi_min) and (
            self.bmi_max is None or bmi < self.bmi_max
        )


def _decimal(text: str) -> Decimal | None:
    return Decimal(text) if text.strip() else None


@cache
def weight_gain_bands(version: str = "JSOG2021") -> tuple[WeightGainBand, ...]:
    """The guidance's bands of one version (JSOG2021 is current; the
    superseded MHLW 2006 rows are in the file for migration only)."""
    return tuple(
        WeightGainBand(
            _decimal(row["bmi_min_inclusive"]),
            _decimal(row["bmi_max_exclusive"]),
            _decimal(row["gain_min_kg"]),
            _decimal(row["gain_max_kg"]),
            row["category_ja"],
            row["category_en"],
        )
        for row in _rows(WEIGHT_GAIN_CSV)
        if row["version"] == version
    )
