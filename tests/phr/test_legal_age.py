"""phr.legal_age: ages and intervals as Japanese law counts them.

Sources (docs/decisions/0012-schedules.md): 年齢計算ニ関スル法律, 民法143条,
学校教育法17条, and the MHLW reading restated by municipalities —
神戸市「定期予防接種における『対象者』と『接種間隔』の考え方」 (Kobe),
名取市「定期予防接種における『対象者』と『接種間隔』の解釈について」 (Natori),
登米市「予防接種における対象者(年齢)、接種間隔の解釈について」 (Tome),
南九州市「接種間隔について」 (Minamikyushu), and MHLW 予防接種基本方針部会
第52回 資料5 p20 (MHLW-52).
"""

from __future__ import annotations

from datetime import date, timedelta

from hypothesis import given
from hypothesis import strategies as st

from phr.legal_age import (
    after_interval_days,
    after_interval_months,
    completed_months,
    days_after_birth,
    fiscal_year_start,
    months_reached_on,
    school_entry,
    years_reached_on,
)


def test_two_months_are_reached_the_day_before_the_monthly_birthday() -> None:
    # Kobe: 「生後●月から」 = 「●月後の生まれた日と同日の前日から」: born 4/15 → 6/14.
    assert months_reached_on(date(2026, 4, 15), 2) == date(2026, 6, 14)


def test_one_year_is_reached_the_day_before_the_birthday() -> None:
    # Tome: born 令和2年4月1日 reaches 1歳 on 令和3年3月31日 (24時); that day is
    # the last of 「1歳に至るまで」 and the first of 「1歳以上」.
    assert years_reached_on(date(2020, 4, 1), 1) == date(2021, 3, 31)


def test_a_month_without_the_birth_day_ends_on_its_last_day() -> None:
    # 民法143条2項但書; Kobe 【注】「当該月に生まれた日と同日となる日が存在しない
    # 場合には、当該月の最後日まで」; Natori 「翌月の最後日まで」.
    assert months_reached_on(date(2026, 1, 31), 1) == date(2026, 2, 28)
    assert months_reached_on(date(2024, 1, 31), 1) == date(2024, 2, 29)  # leap year
    assert months_reached_on(date(2026, 3, 31), 1) == date(2026, 4, 30)
    assert months_reached_on(date(2025, 12, 30), 2) == date(2026, 2, 28)
    # The 29th in a leap February exists: the day before it.
    assert months_reached_on(date(2024, 1, 29), 1) == date(2024, 2, 28)
    # A 2/29 birth: its birthday in a common year does not exist → 2/28.
    assert years_reached_on(date(2024, 2, 29), 1) == date(2025, 2, 28)


def test_weeks_after_birth_count_the_birth_day_as_zero() -> None:
    # Kobe/Natori: 生まれた日を出生0週0日とし…「から」も「まで」も当該日を含む.
    assert days_after_birth(date(2026, 1, 1), weeks=6) == date(2026, 2, 12)
    assert days_after_birth(date(2026, 1, 1), weeks=24) == date(2026, 6, 18)
    assert days_after_birth(date(2026, 1, 1), weeks=14, days=6) == date(2026, 4, 15)


def test_day_intervals_leave_out_both_dose_days() -> None:
    # Minamikyushu: 4月1日(金) → 6日以上 4月8日, 20日以上 4月22日, 27日以上 4月29日.
    assert after_interval_days(date(2022, 4, 1), 6) == date(2022, 4, 8)
    assert after_interval_days(date(2022, 4, 1), 20) == date(2022, 4, 22)
    assert after_interval_days(date(2022, 4, 1), 27) == date(2022, 4, 29)


def test_month_intervals_end_on_the_same_day_or_the_next_month_start() -> None:
    # MHLW-52 p20: 4月1日 + 3か月 → 7月1日から; a dose whose day is missing in
    # the month → that month's end is the interval, the 1st after it allowed
    # (Natori: 「翌々月の初日から接種可能」).
    assert after_interval_months(date(2023, 4, 1), 3) == date(2023, 7, 1)
    assert after_interval_months(date(2025, 11, 30), 3) == date(2026, 3, 1)
    assert after_interval_months(date(2026, 1, 31), 1) == date(2026, 3, 1)


def test_half_months_depend_on_the_length_of_the_month() -> None:
    # MHLW-52 p20: 令和5年4月1日 + 2月半 = 6月1日 + 15日 (6月は30日) = 6月16日.
    assert after_interval_months(date(2023, 4, 1), 2, half=True) == date(2023, 6, 16)
    # July has 31 days: + 16.
    assert after_interval_months(date(2026, 5, 1), 2, half=True) == date(2026, 7, 17)


def test_school_entry_puts_april_first_births_a_year_ahead() -> None:
    # 学校教育法17条1項: 満6歳に達した日の翌日以後における最初の学年の初め.
    assert school_entry(date(2020, 4, 1)) == date(2026, 4, 1)
    assert school_entry(date(2020, 4, 2)) == date(2027, 4, 1)
    assert school_entry(date(2021, 3, 15)) == date(2027, 4, 1)
    assert fiscal_year_start(date(2027, 3, 31)) == date(2026, 4, 1)


def test_completed_months() -> None:
    # 満月齢 at the end of the day: born 4/15 has 2 months at the end of 6/14.
    assert completed_months(date(2026, 4, 15), date(2026, 6, 13)) == 1
    assert completed_months(date(2026, 4, 15), date(2026, 6, 14)) == 2
    assert completed_months(date(2026, 1, 31), date(2026, 2, 28)) == 1


births = st.dates(min_value=date(2000, 1, 1), max_value=date(2030, 12, 31))


@given(birth=births, months=st.integers(min_value=1, max_value=240))
def test_months_are_reached_in_order_and_within_the_month(birth: date, months: int) -> None:
    reached = months_reached_on(birth, months)
    assert months_reached_on(birth, months - 1) < reached
    # Reached in the calendar month `months` after the birth, or the day
    # before its first day (a birth on the 1st).
    index = birth.year * 12 + birth.month - 1 + months
    first = date(index // 12, index % 12 + 1, 1)
    assert first - timedelta(days=1) <= reached < first + timedelta(days=31)
    assert completed_months(birth, reached) == months
    assert completed_months(birth, reached - timedelta(days=1)) == months - 1


@given(previous=births, months=st.integers(min_value=1, max_value=18))
def test_a_month_interval_is_never_shorter_than_the_months(previous: date, months: int) -> None:
    allowed = after_interval_months(previous, months)
    # At least the months (28 days each), and at most one day past the
    # same-day rule (the 1st after a short month).
    assert (allowed - previous).days >= 28 * months
    assert completed_months(previous, allowed - timedelta(days=1)) >= months
