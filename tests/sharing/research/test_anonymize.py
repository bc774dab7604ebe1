"""sharing.anonymize: every function of the release's anonymization on
its own (docs/decisions/0022-research.md, rules 2–6)."""

from __future__ import annotations

import uuid
from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sharing import anonymize as an

# --------------------------------------------------------------------------
# Pseudonyms
# --------------------------------------------------------------------------


def test_pseudonym_links_within_a_project_and_not_across() -> None:
    patient = uuid.uuid4()
    one = an.project_key(secret=b"environment", salt=b"project one salt")
    two = an.project_key(secret=b"environment", salt=b"project two salt")
    assert an.pseudonym(one, patient) == an.pseudonym(one, str(patient))
    assert an.pseudonym(one, patient) != an.pseudonym(two, patient)
    assert len(an.pseudonym(one, patient)) == an.PSEUDONYM_HEX
    assert str(patient).replace("-", "")[:8] not in an.pseudonym(one, patient)


def test_pseudonym_needs_the_environment_secret() -> None:
    patient = uuid.uuid4()
    salt = b"the same project"
    assert an.pseudonym(an.project_key(secret=b"a", salt=salt), patient) != an.pseudonym(
        an.project_key(secret=b"b", salt=salt), patient
    )
    with pytest.raises(ValueError, match="secret is empty"):
        an.project_key(secret=b"", salt=salt)
    with pytest.raises(ValueError, match="no pseudonym salt"):
        an.project_key(secret=b"a", salt=b"")


def test_pseudonyms_of_many_patients_are_distinct() -> None:
    key = an.project_key(secret=b"s", salt=b"t")
    pids = {an.pseudonym(key, uuid.uuid4()) for _ in range(5000)}
    assert len(pids) == 5000


# --------------------------------------------------------------------------
# Dates
# --------------------------------------------------------------------------


def test_weeks_and_gestation() -> None:
    assert an.completed_weeks(date(2024, 1, 1), date(2024, 1, 7)) == 0
    assert an.completed_weeks(date(2024, 1, 1), date(2024, 1, 8)) == 1
    due = date(2024, 10, 7)
    assert an.gestational_days(due, due) == 280
    assert an.gestational_days(due, due - timedelta(days=7 * 12 + 3)) == 280 - 87
    assert an.last_menstrual_period(due) == due - timedelta(days=280)


@pytest.mark.parametrize(
    ("level", "text", "first", "last"),
    [
        (0, "2023-05", date(2023, 5, 1), date(2023, 5, 31)),
        (1, "2023-Q2", date(2023, 4, 1), date(2023, 6, 30)),
        (2, "2023-H1", date(2023, 1, 1), date(2023, 6, 30)),
        (3, "2023", date(2023, 1, 1), date(2023, 12, 31)),
    ],
)
def test_birth_period(level: int, text: str, first: date, last: date) -> None:
    assert an.birth_period(date(2023, 5, 17), level) == text
    assert an.birth_period_interval(date(2023, 5, 17), level) == (first, last)


def test_event_interval_holds_the_true_start() -> None:
    birth = date(2023, 12, 28)
    event = date(2024, 1, 3)
    lo, hi = an.event_interval(an.completed_weeks(birth, event), event.year)
    assert lo <= birth <= hi


def test_new_year_event_is_blanked() -> None:
    """Born in December, seen in week 0 in January: the year would pin the
    birth to a few days, so it is blanked; week 20 is harmless."""
    start = an.birth_period_interval(date(2023, 12, 28), 0)
    blanked, left = an.date_floor(start=start, events=[(0, 2024), (20, 2024)], floor_days=14)
    assert blanked == {(0, 2024)}
    assert an.interval_days(left) >= 14


def test_two_events_that_together_narrow_too_much() -> None:
    """A pregnancy seen at week 10 in one year and week 11 in the next:
    each alone leaves a year of last-period dates, together about a week."""
    blanked, left = an.date_floor(start=None, events=[(10, 2023), (11, 2024)], floor_days=14)
    assert blanked == {(11, 2024)}
    assert an.interval_days(left) >= 14


@st.composite
def histories(draw: st.DrawFn) -> tuple[date, int, list[date]]:
    birth = draw(st.dates(min_value=date(2000, 1, 1), max_value=date(2030, 12, 31)))
    level = draw(st.integers(min_value=0, max_value=3))
    offsets = draw(st.lists(st.integers(min_value=0, max_value=3 * 365), max_size=25))
    return birth, level, [birth + timedelta(days=o) for o in offsets]


@given(histories(), st.integers(min_value=1, max_value=60))
def test_date_floor_always_holds(history: tuple[date, int, list[date]], floor: int) -> None:
    """Whatever the events, the birth dates consistent with the released
    birth period and every (weeks, year) kept number at least the floor
    (when the birth period alone allows it), and include the true one."""
    birth, level, days = history
    start = an.birth_period_interval(birth, level)
    events = [(an.completed_weeks(birth, d), d.year) for d in days]
    blanked, _ = an.date_floor(start=start, events=events, floor_days=floor)
    kept = [e for e in set(events) if e not in blanked]
    interval = start
    for weeks, year in kept:
        interval = an.intersect(interval, an.event_interval(weeks, year))
    assert interval[0] <= birth <= interval[1]
    if an.interval_days(start) >= floor:
        assert an.interval_days(interval) >= floor


# --------------------------------------------------------------------------
# Coding and hierarchies
# --------------------------------------------------------------------------


def test_top_and_bottom_coding_at_every_level() -> None:
    for level in range(3):
        assert an.weight_band(640, level) == "<1000"
        assert an.gestation_band(24, level) in ("<28", "<37")
        assert an.gestation_band(43, level) == ">=42"
    assert an.weight_band(4720, 0) == ">=4500"
    assert an.weight_band(4720, 1) == ">=4500"
    assert an.weight_band(4720, 2) == ">=4000"
    assert an.babies_band(3, 0) == "3+"
    assert an.babies_band(4, 0) == "3+"
    assert an.babies_band(2, 1) == "multiple"


def test_levels() -> None:
    assert an.weight_band(2757, 0) == "2700-2799"
    assert an.weight_band(2757, 1) == "2500-2999"
    assert an.weight_band(2757, 2) == "2500-3999"
    assert an.gestation_band(38, 0) == "38"
    assert an.gestation_band(38, 1) == "37-41"
    assert an.gestation_band(33, 2) == "<37"
    assert an.area_code("102016", 0) == "102016"
    assert an.area_code("102016", 1) == "10"
    assert an.area_code("102016", 2) == "*"
    assert an.weight_band(None, 0) == ""


def _monotone(band: object, values: st.SearchStrategy[int], levels: int) -> None:
    @given(values, values)
    def check(a: int, b: int) -> None:
        for level in range(levels - 1):
            if band(a, level) == band(b, level):  # type: ignore[operator]
                assert band(a, level + 1) == band(b, level + 1)  # type: ignore[operator]

    check()


def test_weight_generalization_is_monotone() -> None:
    _monotone(an.weight_band, st.integers(min_value=200, max_value=7000), 3)


def test_gestation_generalization_is_monotone() -> None:
    _monotone(an.gestation_band, st.integers(min_value=20, max_value=45), 3)


def test_babies_and_birth_period_generalization_is_monotone() -> None:
    _monotone(an.babies_band, st.integers(min_value=1, max_value=5), 2)

    @given(st.dates(), st.dates())
    def check(a: date, b: date) -> None:
        for level in range(3):
            if an.birth_period(a, level) == an.birth_period(b, level):
                assert an.birth_period(a, level + 1) == an.birth_period(b, level + 1)

    check()


# --------------------------------------------------------------------------
# k-anonymity
# --------------------------------------------------------------------------


def _child(n: int, birth: date, weight: int, weeks: int = 39, area: str = "102016") -> an.QiRecord:
    return an.QiRecord(
        key=n,
        kind="child",
        sex="female" if n % 2 else "male",
        birth_date=birth,
        municipality=area,
        birth_weight=weight,
        gestational_weeks=weeks,
        babies=1,
    )


def test_k_anonymize_generalizes_globally_and_suppresses_the_rest() -> None:
    records = [_child(n, date(2022, 1 + n % 12, 5), 2500 + (n * 37) % 1400) for n in range(400)]
    records.append(_child(999, date(2022, 3, 3), 650, weeks=24, area="132012"))
    result = an.k_anonymize(records, k=5)
    assert result.suppressed <= {r.key for r in records}
    assert len(result.suppressed) <= 0.05 * len(records)
    assert 999 in result.suppressed  # the one extreme, alone, in another prefecture
    vectors = [an.qi_vector(r, result.node) for r in records if r.key not in result.suppressed]
    sizes = {v: vectors.count(v) for v in set(vectors)}
    assert min(sizes.values()) >= 5
    assert result.achieved_k == min(sizes.values())
    assert set(result.generalizations) == set(an.QI_HIERARCHIES)


def test_k_anonymize_takes_the_least_loss() -> None:
    """Twenty identical children need no generalization at all."""
    records = [_child(n, date(2022, 6, 1), 3000) for n in range(20)]
    records = [
        an.QiRecord(**{**r.__dict__, "sex": "female"})  # type: ignore[arg-type]
        for r in records
    ]
    result = an.k_anonymize(records, k=5)
    assert result.node == (0, 0, 0, 0, 0)
    assert result.suppressed == set()
    assert result.achieved_k == 20


def test_k_not_reachable() -> None:
    with pytest.raises(an.KNotReachable):
        an.k_anonymize([_child(n, date(2022, 1, 1), 3000) for n in range(4)], k=5)
    spread = [_child(n, date(1990 + n, 1, 1), 3000) for n in range(30)]
    with pytest.raises(an.KNotReachable) as raised:
        an.k_anonymize(spread, k=5)
    assert raised.value.best_suppressed == 30


def test_mothers_pregnancies_are_part_of_the_vector() -> None:
    base = {
        "kind": "mother",
        "sex": "female",
        "birth_date": date(1990, 4, 1),
        "municipality": "102016",
    }
    one = an.QiRecord(key=1, pregnancies=((39, 1),), **base)  # type: ignore[arg-type]
    two = an.QiRecord(key=2, pregnancies=((39, 1), (35, 2)), **base)  # type: ignore[arg-type]
    node = (0, 0, 0, 0, 0)
    assert an.qi_vector(one, node) != an.qi_vector(two, node)


def test_small_cells() -> None:
    assert an.small_cell(0) == 0
    assert an.small_cell(1) == "<10"
    assert an.small_cell(9) == "<10"
    assert an.small_cell(10) == 10


def test_lattice_starts_at_the_bottom() -> None:
    nodes = an.lattice()
    assert nodes[0] == (0, 0, 0, 0, 0)
    assert nodes[-1] == tuple(len(v) - 1 for v in an.QI_HIERARCHIES.values())
    losses = [an.information_loss(n) for n in nodes]
    assert losses == sorted(losses)


@st.composite
def qi_records(draw: st.DrawFn) -> list[an.QiRecord]:
    optional_int = st.one_of(st.none(), st.integers(min_value=15, max_value=46))
    records = []
    for n in range(draw(st.integers(min_value=1, max_value=12))):
        records.append(
            an.QiRecord(
                key=n,
                kind=draw(st.sampled_from(["child", "mother"])),
                sex=draw(st.sampled_from(["male", "female", "unknown"])),
                birth_date=draw(st.dates(date(1980, 1, 1), date(2026, 12, 31))),
                municipality=draw(st.sampled_from(["102016", "132012", ""])),
                birth_weight=draw(st.one_of(st.none(), st.integers(300, 5500))),
                gestational_weeks=draw(optional_int),
                babies=draw(st.one_of(st.none(), st.integers(1, 4))),
                pregnancies=tuple(
                    draw(
                        st.lists(
                            st.tuples(optional_int, st.one_of(st.none(), st.integers(1, 4))),
                            max_size=3,
                        )
                    )
                ),
            )
        )
    return records


@given(qi_records())
def test_the_precomputed_codes_are_qi_vector_at_every_node(records: list[an.QiRecord]) -> None:
    """k_anonymize codes each record once per level (speed); the vectors
    it compares are exactly qi_vector's, at every node of the lattice."""
    coded = an._Coded(records)
    for node in an.lattice():
        assert coded.vectors(node) == [an.qi_vector(r, node) for r in records]
