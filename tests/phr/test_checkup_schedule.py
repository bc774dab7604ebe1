"""The infant checkup schedule (phr.checkup_schedule): windows from
../shared/reference/data/infant_checkups_jp.csv, the two mandated ones
from 母子保健法12条, ages by phr.legal_age."""

from __future__ import annotations

from datetime import date, timedelta

from django.utils import translation
from hypothesis import given
from hypothesis import strategies as st

from phr.checkup_schedule import CHECKUPS, CheckupPlan, CheckupVisit, Status, plan_checkups

BIRTH = date(2026, 4, 15)


def plans(
    visits: tuple[CheckupVisit, ...] = (), today: date = date(2026, 11, 26)
) -> dict[str, CheckupPlan]:
    return {p.code: p for p in plan_checkups(BIRTH, visits, today)}


def test_the_seven_checkups_in_order() -> None:
    # infant_checkups_jp.csv rows, and the kinds of municipal_data.formats.infant_checkup.
    assert [c.code for c in CHECKUPS] == ["1m", "3-4m", "6-7m", "9-10m", "18m", "3y", "5y"]
    # 母子保健法12条: only 1歳6か月 and 3歳 are mandated.
    assert {c.code for c in CHECKUPS if c.mandated} == {"18m", "3y"}


def test_the_18_month_checkup_window_is_the_law_s() -> None:
    # CSV 1歳6か月児健診: 満1歳6か月を超え満2歳に達しない (母子保健法12条1項1号):
    # from the 18-month monthly birthday to the day before the 2nd birthday.
    p = plans()["18m"]
    assert (p.window_from, p.window_until) == (date(2027, 10, 15), date(2028, 4, 14))
    assert p.last_day == date(2028, 4, 14)
    assert p.status == Status.UPCOMING


def test_the_3_year_checkup_window() -> None:
    # CSV 3歳児健診: 満3歳を超え満4歳に達しない (母子保健法12条1項2号).
    p = plans()["3y"]
    assert (p.window_from, p.window_until) == (date(2029, 4, 15), date(2030, 4, 14))


def test_3_to_4_month_checkup_due_overdue_missed() -> None:
    # CSV 3～4か月児健診 (3～6か月頃 nationally): recommended at 3 and 4 months
    # (7/15 … 9/14), still offered until 6 months (10/14), missed after.
    assert plans(today=date(2026, 7, 14))["3-4m"].status == Status.UPCOMING
    due = plans(today=date(2026, 8, 1))["3-4m"]
    assert due.status == Status.DUE
    assert (due.window_from, due.window_until) == (date(2026, 7, 15), date(2026, 9, 14))
    overdue = plans(today=date(2026, 10, 1))["3-4m"]
    assert overdue.status == Status.OVERDUE
    assert overdue.due_until == date(2026, 10, 14)
    assert plans(today=date(2026, 10, 15))["3-4m"].status == Status.MISSED


def test_one_month_checkup_window() -> None:
    # CSV 1か月児健診: 生後1か月頃; the subsidy's 生後27日を超え6週に達しない [U].
    p = plans(today=date(2026, 5, 20))["1m"]
    assert (p.window_from, p.window_until) == (date(2026, 5, 13), date(2026, 5, 26))
    assert p.status == Status.DUE


def test_done_when_an_encounter_of_the_kind_exists_whatever_its_day() -> None:
    # A checkup held late (or early) still counts: the Encounter of that kind exists.
    visit = CheckupVisit("6-7m", date(2027, 1, 20))
    p = plans((visit,))
    assert p["6-7m"].status == Status.DONE
    assert p["6-7m"].visits == (visit,)
    assert p["9-10m"].status == Status.UPCOMING


def test_labels_in_japanese() -> None:
    with translation.override("ja"):
        labels = {p.code: p.label for p in plan_checkups(BIRTH, (), date(2026, 11, 26))}
    assert labels["18m"] == "1歳6か月児健診"
    assert labels["3-4m"] == "3～4か月児健診"


@given(
    birth=st.dates(min_value=date(2015, 1, 1), max_value=date(2030, 1, 1)),
    offset=st.integers(min_value=0, max_value=8 * 366),
)
def test_windows_are_ordered_and_statuses_follow_them(birth: date, offset: int) -> None:
    today = birth + timedelta(days=offset)
    for p in plan_checkups(birth, (), today):
        assert birth < p.window_from <= p.window_until <= p.last_day
        expected = (
            Status.UPCOMING if today < p.window_from
            else Status.DUE if today <= p.window_until
            else Status.OVERDUE if today <= p.last_day
            else Status.MISSED
        )  # fmt: skip
        assert p.status == expected
