"""The infant and child health checkup (乳幼児健診) schedule: pure functions,
no database (phr.schedules reads the Encounters).

Checkups and their ages are those of ../shared/reference/data/infant_checkups_jp.csv;
the kinds are coded as the municipal format codes them
(municipal_data.formats.infant_checkup: Encounter.type in
CHECKUP_TYPE_SYSTEM, codes 1m, 3-4m, 6-7m, 9-10m, 18m, 3y, 5y).
Ages are counted by phr.legal_age (docs/decisions/0012-schedules.md).

1歳6か月 and 3歳 are mandated (母子保健法12条: 「満1歳6か月を超え満2歳に
達しない幼児」, 「満3歳を超え満4歳に達しない幼児」); the others are
offered by municipalities (母子保健法13条) at the ages the table gives.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta

from django.utils.functional import Promise
from django.utils.translation import gettext_lazy

from phr.legal_age import days_after_birth, months_reached_on

# The same system municipal_data.formats.common.CHECKUP_TYPE_SYSTEM names.
CHECKUP_TYPE_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/infant-checkup"


class Status:
    DONE = "done"
    DUE = "due"
    OVERDUE = "overdue"
    UPCOMING = "upcoming"
    MISSED = "missed"


def _after_months(birth: date, months: int) -> date:
    """The first day a child is *older* than `months` months (「満N月を超え」):
    the day after the one on which it reaches them."""
    return months_reached_on(birth, months) + timedelta(days=1)


@dataclass(frozen=True)
class Checkup:
    code: str  # in CHECKUP_TYPE_SYSTEM
    label: Promise
    mandated: bool  # 母子保健法12条
    # (birth) -> the recommended window and the last day it is still offered
    window_months: tuple[int, int]  # older than / not yet reached, in months
    last_months: int  # offered until the child reaches this many months
    source: str

    def window(self, birth: date) -> tuple[date, date]:
        if self.code == "1m":
            # 生後1か月頃: the 1-month checkup subsidy's 「生後27日を超え生後6週に
            # 達しない」, birth day = day 0: day 28 to day 41 (三島市: born 3/4 →
            # 4/1～4/14, https://www.city.mishima.shizuoka.jp/site/kosodate/3325.html).
            return days_after_birth(birth, days=28), days_after_birth(birth, weeks=6) - timedelta(
                days=1
            )
        lo, hi = self.window_months
        return _after_months(birth, lo), months_reached_on(birth, hi)

    def last_day(self, birth: date) -> date:
        return months_reached_on(birth, self.last_months)


_CSV = "infant_checkups_jp.csv"
CHECKUPS = (
    Checkup("1m", gettext_lazy("1-month checkup"), False, (0, 0), 2,
            f"{_CSV} 1か月児健診: 生後1か月頃"),
    Checkup("3-4m", gettext_lazy("3–4-month checkup"), False, (3, 5), 6,
            f"{_CSV} 3～4か月児健診: 3～6か月頃"),
    Checkup("6-7m", gettext_lazy("6–7-month checkup"), False, (6, 8), 9,
            f"{_CSV} 6～7か月児健診: 6～7か月頃"),
    Checkup("9-10m", gettext_lazy("9–10-month checkup"), False, (9, 11), 12,
            f"{_CSV} 9～10か月児健診: 9～11か月頃"),
    Checkup("18m", gettext_lazy("18-month checkup"), True, (18, 24), 24,
            f"{_CSV} 1歳6か月児健診: 満1歳6か月を超え満2歳に達しない (母子保健法12条)"),
    Checkup("3y", gettext_lazy("3-year checkup"), True, (36, 48), 48,
            f"{_CSV} 3歳児健診: 満3歳を超え満4歳に達しない (母子保健法12条)"),
    Checkup("5y", gettext_lazy("5-year checkup"), False, (60, 72), 72,
            f"{_CSV} 5歳児健診: 5歳頃 [window ours]"),
)  # fmt: skip
BY_CODE = {c.code: c for c in CHECKUPS}


@dataclass(frozen=True)
class CheckupVisit:
    """A checkup Encounter of one kind: its day and where it came from."""

    code: str
    on: date | None
    source: object = None


@dataclass(frozen=True)
class CheckupPlan:
    code: str  # key "checkup:<code>"
    label: str  # in the active language
    mandated: bool
    status: str  # Status.*
    window_from: date
    window_until: date
    last_day: date
    visits: tuple[CheckupVisit, ...]  # done when not empty
    source: str

    @property
    def due_from(self) -> date:
        return self.window_from

    @property
    def due_until(self) -> date:
        return self.last_day if self.status == Status.OVERDUE else self.window_until


def plan_checkups(birth: date, visits: Iterable[CheckupVisit], today: date) -> list[CheckupPlan]:
    """Each checkup on `today`: done when an Encounter of its kind exists;
    else upcoming before its window, due in it, overdue after it while
    still offered, missed after that."""
    by_code: dict[str, list[CheckupVisit]] = {}
    for visit in visits:
        if visit.code in BY_CODE:
            by_code.setdefault(visit.code, []).append(visit)
    plans = []
    for checkup in CHECKUPS:
        lo, hi = checkup.window(birth)
        last = max(checkup.last_day(birth), hi)
        done = tuple(sorted(by_code.get(checkup.code, []), key=lambda v: v.on or date.min))
        if done:
            status = Status.DONE
        elif today < lo:
            status = Status.UPCOMING
        elif today <= hi:
            status = Status.DUE
        elif today <= last:
            status = Status.OVERDUE
        else:
            status = Status.MISSED
        plans.append(
            CheckupPlan(
                checkup.code, str(checkup.label), checkup.mandated, status, lo, hi, last, done,
                checkup.source,
            )
        )  # fmt: skip
    return plans
