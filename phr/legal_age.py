"""Ages and intervals as Japanese law counts them, for the vaccination and
checkup schedules (docs/decisions/0012-schedules.md).

- 年齢計算ニ関スル法律 1項: age is counted from the day of birth (the
  birth day counts, unlike 民法140条); 2項 applies 民法143条.
- 民法143条: a period of months ends on the day *before* the day of the
  last month that corresponds to the starting day (応当日); when that
  month has no such day, at the end of the month's last day (2項但書).
  A child therefore reaches "N months" at the end (24時) of that day.

The MHLW reading for routine vaccination (厚生労働省事務連絡, as
municipalities restate it, e.g. 神戸市「定期予防接種における『対象者』と
『接種間隔』の考え方」 and 名取市「…の解釈について」):

- 「生後●月に至った日から」, 「●歳以上」: from the day before the
  month-/birthday (that day included);
- 「生後◎月に至るまで」, 「◎歳未満」, 「◎歳に達するまで」: up to and
  including the day before the ◎-month anniversary / birthday;
- when that month has no day with the birth day's number (born the
  29th–31st), the last day of that month;
- 「出生●週●日後」 (rotavirus): the birth day is 0週0日, so it is birth +
  7×weeks + days, included in both 「から」 and 「まで」;
- 「●日以上の間隔をおいて」: neither dose day counts — the next dose from
  the previous day + ● + 1 (27日 → 4 weeks later, the same weekday);
- 「●月以上の間隔をおいて」: from the same day ● months later; when that
  month has no such day, the interval is over at the end of that month and
  the next dose may be on the 1st of the following month (MHLW 予防接種
  基本方針部会 第52回 資料5 p20: 4/1 → 7/1; a dose on a 31st → 3か月 ends
  on 2/28, next from 3/1);
- 「●月半」: the ● months, then 14/15/15/16 more days when the month the ●
  months end in has 28/29/30/31 days (same source: 4/1 + 2月半 = 6/16).
"""

from __future__ import annotations

import calendar
from datetime import date, timedelta


def _month_shift(year: int, month: int, months: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + months
    return index // 12, index % 12 + 1


def _last_day(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def corresponding_day(start: date, months: int) -> date | None:
    """The day `months` months after `start` with the same day number
    (民法143条2項の「応当する日」), or None when that month is too short."""
    year, month = _month_shift(start.year, start.month, months)
    if start.day > _last_day(year, month):
        return None
    return date(year, month, start.day)


def months_reached_on(birth: date, months: int) -> date:
    """The day at whose end a child born on `birth` reaches `months` months
    of age: the day before the monthly birthday, or the last day of the
    month when it has no such day (born 1/31 → 1 month on 2/28 or 2/29).

    It is both the first day of 「生後N月に至った日から」 / 「N歳以上」 and
    the last day of 「N月に至るまで」 / 「N歳未満」."""
    if months < 0:
        raise ValueError(months)
    if months == 0:
        return birth
    same = corresponding_day(birth, months)
    if same is None:
        year, month = _month_shift(birth.year, birth.month, months)
        return date(year, month, _last_day(year, month))
    return same - timedelta(days=1)


def years_reached_on(birth: date, years: int) -> date:
    """The day at whose end a child reaches `years` years (the day before
    the birthday; a 2/29 birth reaches its age on 2/28 of common years)."""
    return months_reached_on(birth, years * 12)


def completed_months(birth: date, on: date) -> int:
    """Months of age completed by the end of `on` (満月齢)."""
    if on < birth:
        return 0
    # The month count is the calendar difference or one more (a child born
    # on the 1st reaches a month on the last day of the previous month).
    months = (on.year - birth.year) * 12 + on.month - birth.month + 1
    while months > 0 and months_reached_on(birth, months) > on:
        months -= 1
    return months


def days_after_birth(birth: date, *, weeks: int = 0, days: int = 0) -> date:
    """「出生●週●日後」: the birth day is 0週0日 (rotavirus rules)."""
    return birth + timedelta(days=weeks * 7 + days)


def after_interval_days(previous: date, days: int) -> date:
    """The first day allowed after 「`days`日以上の間隔をおいて」: neither
    dose day is part of the interval (6日 → a week later)."""
    return previous + timedelta(days=days + 1)


def after_interval_months(previous: date, months: int, *, half: bool = False) -> date:
    """The first day allowed after 「`months`月(半)以上の間隔をおいて」: the
    same day `months` months later; the 1st of the next month when that
    month has no such day; with `half`, 14–16 more days by the length of
    the month the whole months end in."""
    same = corresponding_day(previous, months)
    if same is None:
        year, month = _month_shift(previous.year, previous.month, months + 1)
        day = date(year, month, 1)
    else:
        day = same
    if half:
        # The half month is measured in the month the whole months end in
        # (MHLW: 4/1 + 2月 = 6/1, June has 30 days, + 15 = 6/16).
        ended = day if same is not None else day - timedelta(days=1)
        length = _last_day(ended.year, ended.month)
        day += timedelta(days={28: 14, 29: 15, 30: 15, 31: 16}[length])
    return day


def fiscal_year_start(day: date) -> date:
    """April 1 of the school/fiscal year (年度) `day` falls in."""
    return date(day.year if day.month >= 4 else day.year - 1, 4, 1)


def school_entry(birth: date) -> date:
    """The first school day of primary school (学校教育法17条1項: the first
    school year beginning after the day following the day the child reaches
    6): April 1 after the 6th birthday's eve — April 1 births enter a year
    earlier than April 2 births."""
    reached = years_reached_on(birth, 6) + timedelta(days=1)
    start = fiscal_year_start(reached)
    return start if start == reached else date(start.year + 1, 4, 1)
