"""Anonymization for research releases: pure functions.

docs/decisions/0022-research.md is the contract. Here are its rules as
functions the release builder (sharing/research_export.py) calls and the
tests exercise on their own:

- pseudonyms: a keyed HMAC per project (rule 2);
- dates: birth date to year-month, events to completed weeks of age or of
  gestation, and the date floor that blanks the calendar years which would
  narrow a birth date (or a last menstrual period) below
  RESEARCH_MIN_DATE_CANDIDATES days (rule 3);
- top/bottom coding and the generalization hierarchies (rule 4);
- k-anonymity by global recoding over a lattice of one level per
  quasi-identifier, then suppression of the few persons left in classes
  smaller than k (rule 5);
- small cells shown as "<10" (rule 6).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

# --------------------------------------------------------------------------
# Pseudonyms (rule 2)
# --------------------------------------------------------------------------

# 20 hex characters = 80 bits. For a release of n persons the chance that
# two share a pseudonym is about n² / 2⁸¹: 4 × 10⁻¹³ for a million persons.
PSEUDONYM_HEX = 20


def project_key(*, secret: bytes, salt: bytes) -> bytes:
    """The project's pseudonym key: HMAC-SHA256(environment secret,
    project salt). Without the environment's secret a database copy
    cannot recompute it; another project's salt gives another key."""
    if not secret:
        raise ValueError("the pseudonym secret is empty")
    if not salt:
        raise ValueError("the project has no pseudonym salt")
    return hmac.new(secret, bytes(salt), hashlib.sha256).digest()


def pseudonym(key: bytes, patient_id: uuid.UUID | str) -> str:
    """pid = the first PSEUDONYM_HEX hex digits of HMAC-SHA256(key, id)."""
    text = str(uuid.UUID(str(patient_id)))
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]


# --------------------------------------------------------------------------
# Dates (rule 3)
# --------------------------------------------------------------------------

FULL_TERM_DAYS = 280

BIRTH_YM_LEVELS = ("month", "quarter", "half", "year")


def completed_weeks(start: date, day: date) -> int:
    """Age (or time since the last menstrual period) in completed weeks."""
    return (day - start).days // 7


def gestational_days(due_date: date, day: date) -> int:
    """Gestational age in days on `day`, from the due date (GA = 280 − (due − day))."""
    return FULL_TERM_DAYS - (due_date - day).days


def last_menstrual_period(due_date: date) -> date:
    return due_date - timedelta(days=FULL_TERM_DAYS)


def _month_span(year: int, first_month: int, months: int) -> tuple[date, date]:
    start = date(year, first_month, 1)
    end_month = first_month + months
    end = date(year + 1, 1, 1) if end_month > 12 else date(year, end_month, 1)
    return start, end - timedelta(days=1)


def birth_period(birth: date, level: int) -> str:
    """The birth date as released: YYYY-MM, YYYY-Qn, YYYY-Hn or YYYY."""
    if level == 0:
        return f"{birth.year:04d}-{birth.month:02d}"
    if level == 1:
        return f"{birth.year:04d}-Q{(birth.month - 1) // 3 + 1}"
    if level == 2:
        return f"{birth.year:04d}-H{(birth.month - 1) // 6 + 1}"
    if level == 3:
        return f"{birth.year:04d}"
    raise ValueError(f"birth_ym has no level {level}")


def birth_period_interval(birth: date, level: int) -> tuple[date, date]:
    """The first and last day of the released birth period."""
    months = (1, 3, 6, 12)[level]
    first = (birth.month - 1) // months * months + 1
    return _month_span(birth.year, first, months)


def event_interval(weeks: int, year: int) -> tuple[date, date]:
    """The start dates (birth, or last menstrual period) consistent with an
    event at `weeks` completed weeks in calendar year `year`: the event is
    between 1 Jan and 31 Dec, and 7·weeks ≤ event − start ≤ 7·weeks + 6."""
    return (
        date(year, 1, 1) - timedelta(days=7 * weeks + 6),
        date(year, 12, 31) - timedelta(days=7 * weeks),
    )


def interval_days(interval: tuple[date, date] | None) -> int | None:
    """How many start dates an interval leaves (None: unbounded)."""
    if interval is None:
        return None
    return max((interval[1] - interval[0]).days + 1, 0)


def intersect(a: tuple[date, date] | None, b: tuple[date, date]) -> tuple[date, date]:
    if a is None:
        return b
    return max(a[0], b[0]), min(a[1], b[1])


def date_floor(
    *,
    start: tuple[date, date] | None,
    events: Iterable[tuple[int, int]],
    floor_days: int,
) -> tuple[set[tuple[int, int]], tuple[date, date] | None]:
    """Which (weeks, calendar year) pairs must have their year blanked so
    that the start dates consistent with everything released (the start
    interval, e.g. the birth period, and each event kept with its year)
    stay at least `floor_days` days.

    Events are taken in (year, weeks) order; one that would narrow the
    interval below the floor is blanked and constrains nothing. Returns the
    blanked pairs and the interval left."""
    if floor_days < 1:
        raise ValueError("the date floor is at least one day")
    current = start
    blanked: set[tuple[int, int]] = set()
    for weeks, year in sorted(set(events), key=lambda e: (e[1], e[0])):
        narrowed = intersect(current, event_interval(weeks, year))
        if interval_days(narrowed) is not None and interval_days(narrowed) >= floor_days:
            current = narrowed
        else:
            blanked.add((weeks, year))
    return blanked, current


# --------------------------------------------------------------------------
# Top/bottom coding and generalization hierarchies (rules 4 and 5)
# --------------------------------------------------------------------------

WEIGHT_LEVELS = ("100g", "500g", "clinical")
GESTATION_LEVELS = ("week", "clinical", "term")
AREA_LEVELS = ("municipality", "prefecture", "suppressed")
BABIES_LEVELS = ("count", "single_multiple")

# clinical birth-weight bands: ELBW, VLBW, LBW, normal, heavy
_WEIGHT_CLINICAL = ((1000, "<1000"), (1500, "1000-1499"), (2500, "1500-2499"), (4000, "2500-3999"))


def weight_band(grams: float | int | None, level: int) -> str:
    """Birth weight in grams as released: bottom-coded <1000, top-coded
    >=4500 at every level; 100 g, 500 g or clinical bands between."""
    if grams is None:
        return ""
    g = int(grams)
    if g < 1000:
        return "<1000"
    if level == 2:
        for limit, label in _WEIGHT_CLINICAL:
            if g < limit:
                return label
        return ">=4000"
    if g >= 4500:
        return ">=4500"
    width = (100, 500)[level]
    low = g // width * width
    return f"{low}-{low + width - 1}"


def gestation_band(weeks: int | None, level: int) -> str:
    """Completed gestational weeks as released: <28 and >=42 always;
    the week, clinical bands (28-31, 32-36, 37-41) or preterm/term/post-term."""
    if weeks is None:
        return ""
    w = int(weeks)
    if level == 2:
        if w < 37:
            return "<37"
        return "37-41" if w < 42 else ">=42"
    if w < 28:
        return "<28"
    if w >= 42:
        return ">=42"
    if level == 0:
        return str(w)
    if w < 32:
        return "28-31"
    if w < 37:
        return "32-36"
    return "37-41"


def babies_band(count: int | None, level: int) -> str:
    """Number of babies of one birth: 1, 2, 3+ or single/multiple."""
    if count is None:
        return ""
    n = int(count)
    if level == 1:
        return "single" if n <= 1 else "multiple"
    return "3+" if n >= 3 else str(n)


def area_code(municipality_code: str | None, level: int) -> str:
    """A 6-digit 全国地方公共団体コード, its 2-digit prefecture, or *."""
    if not municipality_code:
        return "*"
    if level == 0:
        return municipality_code
    if level == 1:
        return municipality_code[:2]
    return "*"


# --------------------------------------------------------------------------
# k-anonymity (rule 5)
# --------------------------------------------------------------------------

# The quasi-identifiers generalized, in lattice order, with their levels.
QI_HIERARCHIES: dict[str, tuple[str, ...]] = {
    "birth_ym": BIRTH_YM_LEVELS,
    "area": AREA_LEVELS,
    "birth_weight_band": WEIGHT_LEVELS,
    "gestational_weeks": GESTATION_LEVELS,
    "babies": BABIES_LEVELS,
}
# All the quasi-identifiers of the k-anonymity check (kind and sex are
# released as they are; the pregnancies of a mother are the multiset of
# (gestational weeks at delivery, babies) of her released pregnancies).
QUASI_IDENTIFIERS = (
    "kind",
    "sex",
    "birth_ym",
    "area",
    "birth_weight_band",
    "gestational_weeks_at_birth",
    "babies",
    "pregnancies",
)
MAX_SUPPRESSION = 0.05


@dataclass(frozen=True)
class QiRecord:
    """What the k-anonymity check knows of one person (raw, before coding)."""

    key: object
    kind: str
    sex: str
    birth_date: date
    municipality: str
    birth_weight: int | None = None
    gestational_weeks: int | None = None
    babies: int | None = None
    # (gestational weeks at delivery, babies) of each released pregnancy
    pregnancies: tuple[tuple[int | None, int | None], ...] = ()


Node = tuple[int, int, int, int, int]


def qi_vector(record: QiRecord, node: Node) -> tuple[object, ...]:
    birth, area, weight, gestation, babies = node
    return (
        record.kind,
        record.sex,
        birth_period(record.birth_date, birth),
        area_code(record.municipality, area),
        weight_band(record.birth_weight, weight),
        gestation_band(record.gestational_weeks, gestation),
        babies_band(record.babies, babies),
        tuple(
            sorted(
                (gestation_band(w, gestation), babies_band(b, babies))
                for w, b in record.pregnancies
            )
        ),
    )


def information_loss(node: Node) -> float:
    """The lattice's precision loss: the mean of level / height over the
    generalized quasi-identifiers (0 = as recorded, 1 = fully generalized)."""
    heights = [len(levels) - 1 for levels in QI_HIERARCHIES.values()]
    return sum(level / height for level, height in zip(node, heights, strict=True)) / len(node)


def lattice() -> list[Node]:
    """Every node, least information loss first."""
    ranges = [range(len(levels)) for levels in QI_HIERARCHIES.values()]
    nodes = [tuple(n) for n in itertools.product(*ranges)]
    return sorted(nodes, key=lambda n: (information_loss(n), n))  # type: ignore[arg-type]


@dataclass
class Anonymized:
    node: Node
    suppressed: set[object]
    achieved_k: int
    classes: int
    generalizations: dict[str, str] = field(default_factory=dict)


class KNotReachable(Exception):
    def __init__(self, *, persons: int, k: int, best_suppressed: int | None) -> None:
        self.persons = persons
        self.k = k
        self.best_suppressed = best_suppressed
        super().__init__(f"k={k} cannot be reached for {persons} persons")


def evaluate(records: Sequence[QiRecord], node: Node, k: int) -> tuple[set[object], int, int]:
    """The persons in classes smaller than k at this node, the smallest
    class left and the number of classes left."""
    vectors = [qi_vector(r, node) for r in records]
    sizes = Counter(vectors)
    suppressed = {r.key for r, v in zip(records, vectors, strict=True) if sizes[v] < k}
    kept = [n for n in sizes.values() if n >= k]
    return suppressed, (min(kept) if kept else 0), len(kept)


class _Coded:
    """Every record's value of each generalized quasi-identifier at every
    level, computed once: a lattice node's vector is then a few tuple
    lookups per record instead of the coding functions (qi_vector stays
    the definition; the two agree by construction and by test)."""

    def __init__(self, records: Sequence[QiRecord]) -> None:
        self.fixed = [(r.kind, r.sex) for r in records]
        self.birth = [
            tuple(birth_period(r.birth_date, lv) for lv in range(len(BIRTH_YM_LEVELS)))
            for r in records
        ]
        self.area = [
            tuple(area_code(r.municipality, lv) for lv in range(len(AREA_LEVELS))) for r in records
        ]
        self.weight = [
            tuple(weight_band(r.birth_weight, lv) for lv in range(len(WEIGHT_LEVELS)))
            for r in records
        ]
        self.gestation_babies = [
            tuple(
                tuple(
                    (
                        gestation_band(r.gestational_weeks, g),
                        babies_band(r.babies, b),
                        tuple(
                            sorted(
                                (gestation_band(w, g), babies_band(n, b)) for w, n in r.pregnancies
                            )
                        ),
                    )
                    for b in range(len(BABIES_LEVELS))
                )
                for g in range(len(GESTATION_LEVELS))
            )
            for r in records
        ]

    def vectors(self, node: Node) -> list[tuple[object, ...]]:
        birth, area, weight, gestation, babies = node
        return [
            (
                fixed[0],
                fixed[1],
                b[birth],
                a[area],
                w[weight],
                gb[gestation][babies][0],
                gb[gestation][babies][1],
                gb[gestation][babies][2],
            )
            for fixed, b, a, w, gb in zip(
                self.fixed, self.birth, self.area, self.weight, self.gestation_babies, strict=True
            )
        ]


def _evaluate_coded(
    records: Sequence[QiRecord], coded: _Coded, node: Node, k: int
) -> tuple[set[object], int, int]:
    vectors = coded.vectors(node)
    sizes = Counter(vectors)
    suppressed = {r.key for r, v in zip(records, vectors, strict=True) if sizes[v] < k}
    kept = [n for n in sizes.values() if n >= k]
    return suppressed, (min(kept) if kept else 0), len(kept)


def k_anonymize(
    records: Sequence[QiRecord], *, k: int, max_suppression: float = MAX_SUPPRESSION
) -> Anonymized:
    """Global recoding: the node of least information loss whose
    suppression stays within max_suppression of the persons (fewest
    suppressed among equal loss); the persons of classes smaller than k
    are suppressed. Raises KNotReachable when no node gets there."""
    total = len(records)
    allowed = int(total * max_suppression)
    if total < k:
        raise KNotReachable(persons=total, k=k, best_suppressed=None)
    coded = _Coded(records)
    best: Anonymized | None = None
    best_loss: float | None = None
    fewest: int | None = None
    for node in lattice():
        loss = information_loss(node)
        if best is not None and best_loss is not None and loss > best_loss:
            break
        suppressed, smallest, classes = _evaluate_coded(records, coded, node, k)
        fewest = len(suppressed) if fewest is None else min(fewest, len(suppressed))
        if len(suppressed) > allowed or total - len(suppressed) < k:
            continue
        if best is None or len(suppressed) < len(best.suppressed):
            best = Anonymized(
                node=node, suppressed=suppressed, achieved_k=smallest, classes=classes
            )
            best_loss = loss
    if best is None:
        raise KNotReachable(persons=total, k=k, best_suppressed=fewest)
    best.generalizations = {
        name: levels[level]
        for (name, levels), level in zip(QI_HIERARCHIES.items(), best.node, strict=True)
    }
    return best


# --------------------------------------------------------------------------
# Small cells (rule 6)
# --------------------------------------------------------------------------

SMALL_CELL = 10


def small_cell(count: int) -> int | str:
    """A count of people as released: 1–9 shown as "<10"."""
    return "<10" if 0 < count < SMALL_CELL else count
