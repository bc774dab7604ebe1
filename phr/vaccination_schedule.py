"""The routine (定期) vaccination schedule as versioned rules, and the
engine that plans each child's next doses from the doses actually given.

Pure functions, no database: phr.schedules reads the records and calls
`plan_vaccinations`. Rules, age arithmetic, deduplication and catch-up
paths are documented in docs/decisions/0012-schedules.md; the facts are
../shared/reference/standards.md §4 and data/immunization_schedule_jp.csv
(cited per rule below as "CSV <vaccine> dose <n>"), the legal layers
予防接種法施行令 (eligible ages), 予防接種実施規則 (doses, intervals) and
定期接種実施要領 (standard ages).

Vaccine codes are those of municipal_data.formats.vaccination (our
VACCINE_SYSTEM); ages and intervals are counted by phr.legal_age.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from typing import Any

from django.utils.functional import Promise
from django.utils.translation import gettext, gettext_lazy, pgettext_lazy

from phr.legal_age import (
    after_interval_days,
    after_interval_months,
    days_after_birth,
    fiscal_year_start,
    months_reached_on,
    school_entry,
)

# The same system municipal_data.formats.common.VACCINE_SYSTEM names (phr,
# the ground floor, imports no other app; a test keeps the two equal).
VACCINE_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/vaccine"

# Reports of one vaccine this many days apart or closer are one dose (the
# shortest routine interval is 日本脳炎's 6日以上, i.e. 7 days apart, so two
# real doses are never this close).
DEDUP_DAYS = 3

# Which source's date wins when reports of one dose disagree: the
# municipal register (予防接種台帳) is the legal record, then the clinic that
# gave the dose, then the rest. Unknown origins rank last.
ORIGIN_RANK = ("municipality", "clinic", "pharmacy", "device", "self", "system")


class Status:
    COMPLETE = "complete"
    DUE = "due"
    OVERDUE = "overdue"
    UPCOMING = "upcoming"
    NO_LONGER_ELIGIBLE = "no_longer_eligible"
    NOT_APPLICABLE = "not_applicable"


# --------------------------------------------------------------------------
# Age points and intervals: the vocabulary of the rules
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Age:
    """A point in a child's life as the rules name it; `on(birth)` is the
    day it is reached (included in both 「から」 and 「まで」 windows).

    kind: "months" (生後N月 / N歳 = 12N月, phr.legal_age.months_reached_on),
    "days" (出生●週●日後 = birth + days), "fy_start" / "fy_end" (the first /
    last day of the 年度 in which the child reaches `n` years), "preschool_start"
    / "preschool_end" (the year before primary school, MR 第2期)."""

    kind: str
    n: int = 0

    def on(self, birth: date) -> date:
        if self.kind == "months":
            return months_reached_on(birth, self.n)
        if self.kind == "days":
            return days_after_birth(birth, days=self.n)
        if self.kind in ("fy_start", "fy_end"):
            start = fiscal_year_start(months_reached_on(birth, self.n * 12))
            if self.kind == "fy_start":
                return start
            return date(start.year + 1, 3, 31)
        entry = school_entry(birth)
        if self.kind == "preschool_start":
            return date(entry.year - 1, 4, 1)
        if self.kind == "preschool_end":
            return entry - timedelta(days=1)
        raise ValueError(self.kind)


def M(months: int) -> Age:
    return Age("months", months)


def Y(years: int) -> Age:
    return Age("months", years * 12)


def W(weeks: int, days: int = 0) -> Age:
    return Age("days", weeks * 7 + days)


@dataclass(frozen=True)
class Interval:
    """「N日/N月(半)以上の間隔をおいて」 counted from dose `after` of the path
    (1-based), or from the previous dose when None."""

    days: int = 0
    months: int = 0
    half: bool = False
    after: int | None = None

    def from_dose(self, given: date) -> date:
        if self.months:
            return after_interval_months(given, self.months, half=self.half)
        return after_interval_days(given, self.days)


def D(days: int, after: int | None = None) -> Interval:
    return Interval(days=days, after=after)


def MO(months: int, after: int | None = None, *, half: bool = False) -> Interval:
    return Interval(months=months, after=after, half=half)


@dataclass(frozen=True)
class DoseRule:
    """One dose of a path. `number` is the dose number in the vaccine's
    whole schedule (Immunization.protocolApplied.doseNumberPositiveInt)."""

    number: int
    phase: str  # the series label of the reference table ("1期初回", "第2期", "")
    eligible: tuple[Age, Age]  # 予防接種法施行令: the legal ages (inclusive)
    intervals: tuple[Interval, ...] = ()  # 実施規則: minimum intervals (all must hold)
    min_age: Age | None = None  # a further minimum age for this dose
    standard_age: tuple[Age, Age] | None = None  # 実施要領: standard ages
    standard_interval: tuple[Interval, Interval] | None = None  # standard spacing
    # The dose is left out (the path goes on) when it cannot be given by
    # this age, or when the previous dose was given after this age.
    skip_after: Age | None = None
    skip_if_previous_after: Age | None = None
    # When an earlier dose of the path was left out, these replace `intervals`
    # (Hib: the booster 27日以上 after a primary series cut short at 12m).
    intervals_after_skip: tuple[Interval, ...] | None = None
    source: str = ""


@dataclass(frozen=True)
class Path:
    """The doses a child gets on one way through a vaccine's schedule."""

    name: str  # e.g. "start 2-7m: 3+1"
    doses: tuple[DoseRule, ...]


# --------------------------------------------------------------------------
# The rules
# --------------------------------------------------------------------------

_DTP_SRC = "CSV 5種混合 doses 1-4 (https://www.city.ikoma.lg.jp/0000034863.html)"


def _dtp_path(name: str, booster_standard: int, source: str) -> Path:
    # 5種混合 / 4種混合: 生後2月～90月に至るまで; 初回 3 doses 20日以上 (std 20～56日),
    # started 2～7m; 追加 6月以上 after the 3rd (std 6～18月 for 5種混合; 12～18月
    # for 4種混合, which has no row in the CSV).
    window = (M(2), M(90))
    return Path(
        name,
        (
            DoseRule(1, "1期初回", window, standard_age=(M(2), M(7)), source=source),
            DoseRule(
                2, "1期初回", window, (D(20),), standard_interval=(D(20), D(56)), source=source
            ),
            DoseRule(
                3, "1期初回", window, (D(20),), standard_interval=(D(20), D(56)), source=source
            ),
            DoseRule(
                4,
                "1期追加",
                window,
                (MO(6),),
                standard_interval=(MO(booster_standard), MO(18)),
                source=source,
            ),
        ),
    )


DTAP_IPV_HIB = _dtp_path("DTaP-IPV-Hib 3+1", 6, _DTP_SRC)
DTAP_IPV = _dtp_path(
    "DTaP-IPV 3+1 (started before 2024-04-01)",
    12,
    "4種混合: no CSV row; 5種混合's rows, booster std 1年～1年6か月 "
    "(https://kamigori-town.city-hc.jp/open_announcement/knowledge/aseUyrx6KCmGSVLn)",
)

_PCV_SRC = "CSV 小児用肺炎球菌 notes (start-age paths), doses 1-4; standards.md §4"
_PCV = (M(2), M(60))
PCV_PATHS = {
    # start 2～7m: 初回3 (27日以上, by 24m; the 3rd left out when the 2nd was
    # after 12m), 追加 60日以上 after and at 12m or older (std 12～15m).
    "2-7m": Path(
        "start 2-7m: 3+1",
        (
            DoseRule(1, "初回", _PCV, standard_age=(M(2), M(7)), source=_PCV_SRC),
            DoseRule(
                2, "初回", _PCV, (D(27),), standard_age=(M(2), M(12)),
                skip_after=M(24), source=_PCV_SRC,
            ),
            DoseRule(
                3, "初回", _PCV, (D(27),), standard_age=(M(2), M(12)),
                skip_after=M(24), skip_if_previous_after=M(12), source=_PCV_SRC,
            ),
            DoseRule(
                4, "追加", _PCV, (D(60),), min_age=M(12), standard_age=(M(12), M(15)),
                source=_PCV_SRC,
            ),
        ),
    ),
    # start 7～12m: 初回2 (27日以上) + 追加 (60日以上, 12m or older).
    "7-12m": Path(
        "start 7-12m: 2+1",
        (
            DoseRule(1, "初回", _PCV, source=_PCV_SRC),
            DoseRule(2, "初回", _PCV, (D(27),), skip_after=M(24), source=_PCV_SRC),
            DoseRule(
                3, "追加", _PCV, (D(60),), min_age=M(12), standard_age=(M(12), M(15)),
                source=_PCV_SRC,
            ),
        ),
    ),
    # start 12～24m: 2 doses 60日以上 apart.
    "12-24m": Path(
        "start 12-24m: 2",
        (
            DoseRule(1, "", _PCV, source=_PCV_SRC),
            DoseRule(2, "", _PCV, (D(60),), source=_PCV_SRC),
        ),
    ),
    # start 24～60m: 1 dose.
    "24-60m": Path("start 24-60m: 1", (DoseRule(1, "", _PCV, source=_PCV_SRC),)),
}  # fmt: skip

_HIB_SRC = "CSV Hib(単独) notes (start-age paths), doses 1-4 (https://www.town.otsuchi.iwate.jp/gyosei/docs/433632.html)"
_HIB = (M(2), M(60))
HIB_PATHS = {
    # start 2～7m: 初回3 (27日以上, by 12m, else left out), 追加 7月以上 after (std 7～13月).
    "2-7m": Path(
        "start 2-7m: 3+1",
        (
            DoseRule(1, "初回", _HIB, standard_age=(M(2), M(7)), source=_HIB_SRC),
            DoseRule(
                2, "初回", _HIB, (D(27),), standard_interval=(D(27), D(56)),
                skip_after=M(12), source=_HIB_SRC,
            ),
            DoseRule(
                3, "初回", _HIB, (D(27),), standard_interval=(D(27), D(56)),
                skip_after=M(12), source=_HIB_SRC,
            ),
            DoseRule(
                4, "追加", _HIB, (MO(7),), standard_interval=(MO(7), MO(13)),
                intervals_after_skip=(D(27),), source=_HIB_SRC,
            ),
        ),
    ),
    # start 7～12m: 初回2 (27日以上, by 12m) + 追加 7月以上 after.
    "7-12m": Path(
        "start 7-12m: 2+1",
        (
            DoseRule(1, "初回", _HIB, source=_HIB_SRC),
            DoseRule(
                2, "初回", _HIB, (D(27),), standard_interval=(D(27), D(56)),
                skip_after=M(12), source=_HIB_SRC,
            ),
            DoseRule(
                3, "追加", _HIB, (MO(7),), standard_interval=(MO(7), MO(13)),
                intervals_after_skip=(D(27),), source=_HIB_SRC,
            ),
        ),
    ),
    # start 1～5y: 1 dose.
    "12-60m": Path("start 12-60m: 1", (DoseRule(1, "", _HIB, source=_HIB_SRC),)),
}  # fmt: skip

_HEPB_SRC = "CSV B型肝炎 doses 1-3 (http://miyaguchi-kodomo.com/posts/news.html)"
_HEPB = (M(0), M(12))
HEPB = Path(
    "3 doses before 1 year",
    (
        DoseRule(1, "", _HEPB, standard_age=(M(2), M(3)), source=_HEPB_SRC),
        DoseRule(2, "", _HEPB, (D(27),), standard_age=(M(3), M(4)), source=_HEPB_SRC),
        # The 3rd counts from the 1st dose, not the 2nd (CSV: 1回目から139日以上),
        # and comes 6日以上 after the 2nd (向日市: 「1回目の接種から139日以上、かつ、
        # 2回目の接種から6日以上」, https://www.city.muko.kyoto.jp/kurashi/kosodate/yobo/1471325625164.html).
        DoseRule(
            3, "", _HEPB, (D(139, after=1), D(6)), standard_age=(M(7), M(9)), source=_HEPB_SRC
        ),
    ),
)

_RV_SRC = "CSV ロタウイルス 1価/5価 (http://nobeoka.city-hc.jp/open_announcement/knowledge/i6fhP6gwBN8nDNFx)"


def _rotavirus_path(name: str, doses: int, upper: Age) -> Path:
    # 出生6週0日後～24週0日後 (1価) / 32週0日後 (5価), 27日以上; the 1st dose
    # ideally 生後2月 to 出生14週6日後 (実施要領).
    window = (W(6), upper)
    rules = [DoseRule(1, "", window, standard_age=(M(2), W(14, 6)), source=_RV_SRC)]
    rules += [DoseRule(n, "", window, (D(27),), source=_RV_SRC) for n in range(2, doses + 1)]
    return Path(name, tuple(rules))


ROTAVIRUS = {
    "rv1": _rotavirus_path("monovalent (Rotarix): 2 doses by 24w0d", 2, W(24)),
    "rv5": _rotavirus_path("pentavalent (RotaTeq): 3 doses by 32w0d", 3, W(32)),
}

_BCG_SRC = "CSV BCG (http://t-sakura.city-hc.jp/open_announcement/knowledge/aqrhreovANZGA3Lg)"
BCG = Path(
    "1 dose before 1 year",
    (DoseRule(1, "", (M(0), M(12)), standard_age=(M(5), M(8)), source=_BCG_SRC),),
)

_MR_SRC = (
    "CSV 麻しん風しん (http://tsushima.city-hc.jp/open_announcement/knowledge/ar34lY7fVuLH1cL5)"
)
MR = Path(
    "第1期 + 第2期",
    (
        # 第1期: 生後12月～24月に至るまで, 1歳になったら早めに.
        DoseRule(1, "第1期", (M(12), M(24)), standard_age=(M(12), M(15)), source=_MR_SRC),
        # 第2期: 5歳以上7歳未満で小学校就学前の1年間 (4/1～3/31).
        DoseRule(2, "第2期", (Age("preschool_start"), Age("preschool_end")), source=_MR_SRC),
    ),
)

_VZV_SRC = "CSV 水痘 (https://manno-town.city-hc.jp/open_announcement/knowledge/aueL0s8ui1wsK6GQ)"
VARICELLA = Path(
    "2 doses, 12-36 months",
    (
        DoseRule(1, "", (M(12), M(36)), standard_age=(M(12), M(15)), source=_VZV_SRC),
        DoseRule(
            2, "", (M(12), M(36)), (MO(3),), standard_interval=(MO(6), MO(12)), source=_VZV_SRC
        ),
    ),
)

_JE_SRC = "CSV 日本脳炎 (http://t-sakura.city-hc.jp/open_announcement/knowledge/aW3qqC3P6JSYUFHF)"
JE = Path(
    "第1期初回 2 + 第1期追加 + 第2期",
    (
        DoseRule(1, "第1期初回", (M(6), M(90)), standard_age=(Y(3), Y(4)), source=_JE_SRC),
        DoseRule(
            2, "第1期初回", (M(6), M(90)), (D(6),), standard_interval=(D(6), D(28)),
            source=_JE_SRC,
        ),
        # 追加: 6月以上 after 初回, std おおむね1年後 (4歳).
        DoseRule(
            3, "第1期追加", (M(6), M(90)), (MO(6),), standard_interval=(MO(12), MO(13)),
            source=_JE_SRC,
        ),
        DoseRule(4, "第2期", (Y(9), Y(13)), standard_age=(Y(9), Y(10)), source=_JE_SRC),
    ),
)  # fmt: skip

DT = Path(
    "第2期",
    (
        DoseRule(
            1, "第2期", (Y(11), Y(13)), standard_age=(Y(11), Y(12)),
            source="CSV 二種混合 (http://takatsunaika.jp/teikiyobousessyu.htm)",
        ),
    ),
)  # fmt: skip

_HPV_SRC = "CSV HPV rows (http://kunitachi.city-hc.jp/open_announcement/knowledge/a9MKN5nrSiboSj6M)"
# 小学6年～高校1年相当: the 年度 the girl reaches 12 to the 年度 she reaches 16;
# standard 中学1年 (the 年度 she reaches 13).
_HPV = (Age("fy_start", 12), Age("fy_end", 16))
_HPV_STD = (Age("fy_start", 13), Age("fy_end", 13))
HPV_PATHS = {
    "hpv9-2": Path(
        "9-valent, started before 15: 2 doses",
        (
            DoseRule(1, "", _HPV, standard_age=_HPV_STD, source=_HPV_SRC),
            DoseRule(2, "", _HPV, (MO(5),), standard_interval=(MO(6), MO(12)), source=_HPV_SRC),
        ),
    ),
    "hpv9-3": Path(
        "9-valent, started at 15 or later (or 2nd dose sooner than 5 months): 3 doses",
        (
            DoseRule(1, "", _HPV, standard_age=_HPV_STD, source=_HPV_SRC),
            DoseRule(2, "", _HPV, (MO(1),), standard_interval=(MO(2), MO(3)), source=_HPV_SRC),
            DoseRule(
                3, "", _HPV, (MO(3),), standard_interval=(MO(6, after=1), MO(7, after=1)),
                source=_HPV_SRC,
            ),
        ),
    ),
    "hpv2": Path(
        "bivalent: 3 doses",
        (
            DoseRule(1, "", _HPV, standard_age=_HPV_STD, source=_HPV_SRC),
            DoseRule(2, "", _HPV, (MO(1),), standard_interval=(MO(1), MO(2)), source=_HPV_SRC),
            DoseRule(
                3, "", _HPV, (MO(5, after=1), MO(2, half=True)),
                standard_interval=(MO(6, after=1), MO(7, after=1)), source=_HPV_SRC,
            ),
        ),
    ),
    "hpv4": Path(
        "quadrivalent: 3 doses",
        (
            DoseRule(1, "", _HPV, standard_age=_HPV_STD, source=_HPV_SRC),
            DoseRule(2, "", _HPV, (MO(1),), standard_interval=(MO(2), MO(3)), source=_HPV_SRC),
            DoseRule(
                3, "", _HPV, (MO(3),), standard_interval=(MO(6, after=1), MO(7, after=1)),
                source=_HPV_SRC,
            ),
        ),
    ),
}  # fmt: skip


# --------------------------------------------------------------------------
# Versions: which products a child starts with, by the date of the first
# dose (or the day of the assessment when none was given)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleSet:
    version: str
    effective_from: date
    dtp_products: tuple[str, ...]  # what a child who has not started gets
    pcv_product: str  # the PCV a child who has not started gets
    pcv_products: frozenset[str]  # the PCVs in the routine schedule
    source: str


RULESETS = (
    RuleSet(
        "2023-04", date(2023, 4, 1), ("dtap-ipv", "hib"), "pcv13", frozenset({"pcv13"}),
        "4種混合 from 生後2月 from 2023-04-01 (standards.md §4 [U])",
    ),
    RuleSet(
        "2024-04", date(2024, 4, 1), ("dtap-ipv-hib",), "pcv15", frozenset({"pcv13", "pcv15"}),
        "5種混合 routine from 2024-04-01; PCV15 from 2024-04 (CSV 5種混合, 小児用肺炎球菌)",
    ),
    RuleSet(
        "2024-10", date(2024, 10, 1), ("dtap-ipv-hib",), "pcv20", frozenset({"pcv15", "pcv20"}),
        "PCV20 from 2024-10-01, PCV13 removed; PCV15 starters finish with PCV15"
        " (CSV 小児用肺炎球菌)",
    ),
)  # fmt: skip


def ruleset_on(day: date) -> RuleSet:
    """The rules in force on `day` (the earliest set for days before it)."""
    current = RULESETS[0]
    for ruleset in RULESETS:
        if ruleset.effective_from <= day:
            current = ruleset
    return current


# Routine only for children born on or after these days (not in the
# reference table): B型肝炎 routine from 2016-10-01 for births from 2016-04-01
# (CSV B型肝炎's source, http://miyaguchi-kodomo.com/posts/news.html); ロタ from
# 2020-10-01 for births from 2020-08-01 (MHLW ロタウイルスワクチンQ&A 問2,
# mirrored at https://h-crisis.niph.go.jp/?p=154539). Doses before the
# programme began count as given (the Q&A: 定期接種を受けていたものとみなす).
BORN_FROM = {"hepb": date(2016, 4, 1), "rotavirus": date(2020, 8, 1)}


# --------------------------------------------------------------------------
# Vaccines → series, labels
# --------------------------------------------------------------------------

SERIES_OF = {
    "dtap-ipv-hib": "dtap-ipv-hib",
    "dtap-ipv": "dtap-ipv",
    "hib": "hib",
    "pcv": "pcv", "pcv13": "pcv", "pcv15": "pcv", "pcv20": "pcv",
    "hepb": "hepb",
    "rv": "rotavirus", "rv1": "rotavirus", "rv5": "rotavirus",
    "bcg": "bcg",
    "mr": "mr",
    "varicella": "varicella",
    "je": "je",
    "dt": "dt",
    "hpv": "hpv", "hpv2": "hpv", "hpv4": "hpv", "hpv9": "hpv",
}  # fmt: skip
# Product codes that name no product (municipal rows may say only "ロタ").
GENERIC = frozenset({"pcv", "rv", "hpv"})

VACCINE_LABELS: dict[str, Promise] = {
    "dtap-ipv-hib": gettext_lazy("DTaP-IPV-Hib (5-in-1)"),
    "dtap-ipv": gettext_lazy("DTaP-IPV (4-in-1)"),
    "hib": gettext_lazy("Hib"),
    "pcv": gettext_lazy("Pneumococcal conjugate (PCV)"),
    "pcv13": gettext_lazy("Pneumococcal conjugate (PCV13)"),
    "pcv15": gettext_lazy("Pneumococcal conjugate (PCV15)"),
    "pcv20": gettext_lazy("Pneumococcal conjugate (PCV20)"),
    "hepb": gettext_lazy("Hepatitis B"),
    "rotavirus": gettext_lazy("Rotavirus"),
    "rv": gettext_lazy("Rotavirus"),
    "rv1": gettext_lazy("Rotavirus, monovalent (Rotarix)"),
    "rv5": gettext_lazy("Rotavirus, pentavalent (RotaTeq)"),
    "bcg": gettext_lazy("BCG"),
    "mr": gettext_lazy("Measles-rubella (MR)"),
    "varicella": gettext_lazy("Varicella"),
    "je": gettext_lazy("Japanese encephalitis"),
    "dt": gettext_lazy("Diphtheria-tetanus (DT)"),
    "hpv": gettext_lazy("HPV"),
    "hpv2": gettext_lazy("HPV, bivalent (Cervarix)"),
    "hpv4": gettext_lazy("HPV, quadrivalent (Gardasil)"),
    "hpv9": gettext_lazy("HPV, 9-valent (Silgard 9)"),
}

PHASE_LABELS: dict[str, Promise] = {
    "1期初回": pgettext_lazy("vaccination series", "phase 1 primary"),
    "1期追加": pgettext_lazy("vaccination series", "phase 1 booster"),
    "第1期初回": pgettext_lazy("vaccination series", "phase 1 primary"),
    "第1期追加": pgettext_lazy("vaccination series", "phase 1 booster"),
    "初回": pgettext_lazy("vaccination series", "primary"),
    "追加": pgettext_lazy("vaccination series", "booster"),
    "第1期": pgettext_lazy("vaccination series", "phase 1"),
    "第2期": pgettext_lazy("vaccination series", "phase 2"),
}


# What the notes on a dose or a plan mean, for the pages that show them.
NOTE_LABELS: dict[str, Promise] = {
    "early": gettext_lazy("given before the minimum interval or age"),
    "outside_ages": gettext_lazy("given outside the routine ages"),
    "not_in_schedule": gettext_lazy("not part of this child's routine schedule"),
    "rotavirus_product_unknown": gettext_lazy(
        "the rotavirus vaccine product is not recorded: a 3rd dose is needed only for RotaTeq"
    ),
    "hpv_sex_not_female": gettext_lazy("HPV is a routine vaccination for girls"),
}


def note_label(note: str) -> str:
    return str(NOTE_LABELS.get(note, note))


def vaccine_label(code: str) -> str:
    return str(VACCINE_LABELS.get(code, code))


# One-dose phases people call by name ("MR 第2期", "ヒブ 追加").
NAMED_PHASES = frozenset({"第1期", "第2期", "1期追加", "第1期追加", "追加"})


def dose_label(product: str, rule: DoseRule, phase_size: int) -> str:
    """ "Hib 2回目" / "Hib dose 2"; a one-dose phase by its name: "MR 第2期"."""
    name = vaccine_label(product)
    if phase_size == 1 and rule.phase in NAMED_PHASES:
        return gettext("%(vaccine)s %(phase)s") % {
            "vaccine": name,
            "phase": str(PHASE_LABELS[rule.phase]),
        }
    return gettext("%(vaccine)s dose %(number)d") % {"vaccine": name, "number": rule.number}


# --------------------------------------------------------------------------
# Doses given, deduplicated
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class GivenDose:
    """One report of a dose: from the municipality, a clinic or a parent.
    `source` is kept as it is (phr.schedules passes a DoseSource)."""

    vaccine: str  # a code in VACCINE_SYSTEM
    on: date
    origin: str = "system"  # a phr.models.Provenance.Origin value
    dose_number: int | None = None  # as reported (not trusted for counting)
    source: Any = None


@dataclass(frozen=True)
class Dose:
    """A dose as the schedule counts it: all reports of it kept."""

    series: str
    product: str  # the most specific code reported ("pcv20" over "pcv")
    on: date
    reports: tuple[GivenDose, ...]
    number: int | None = None  # its place in the plan (set by the planner)
    phase: str = ""
    notes: tuple[str, ...] = ()  # "early", "outside_ages": not valid as routine

    @property
    def sources(self) -> tuple[Any, ...]:
        return tuple(r.source for r in self.reports if r.source is not None)


def _rank(origin: str) -> int:
    return ORIGIN_RANK.index(origin) if origin in ORIGIN_RANK else len(ORIGIN_RANK)


def deduplicate(given: Iterable[GivenDose]) -> dict[str, list[Dose]]:
    """Doses by series, oldest first. Reports of the same series within
    DEDUP_DAYS of the first report of a cluster are one dose, dated by the
    most authoritative report (municipality > clinic > …; then the
    earliest), with every report kept."""
    by_series: dict[str, list[GivenDose]] = {}
    for report in given:
        series = SERIES_OF.get(report.vaccine)
        if series is not None:
            by_series.setdefault(series, []).append(report)
    out: dict[str, list[Dose]] = {}
    for series, reports in by_series.items():
        reports.sort(key=lambda r: (r.on, _rank(r.origin)))
        clusters: list[list[GivenDose]] = []
        for report in reports:
            if clusters and (report.on - clusters[-1][0].on).days <= DEDUP_DAYS:
                clusters[-1].append(report)
            else:
                clusters.append([report])
        doses = []
        for cluster in clusters:
            best = min(cluster, key=lambda r: (_rank(r.origin), r.on))
            # The product named by the best source that names one ("pcv20" over "pcv").
            specific = [r for r in cluster if r.vaccine not in GENERIC]
            product = min(specific, key=lambda r: (_rank(r.origin), r.on)) if specific else best
            doses.append(Dose(series, product.vaccine, best.on, tuple(cluster)))
        out[series] = doses
    return out


# --------------------------------------------------------------------------
# Plans
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class NextDose:
    number: int  # dose number in the whole schedule (key "vaccine:<series>:<number>")
    phase: str
    product: str  # the product to give
    label: str  # in the active language
    eligible_from: date  # the first day of the legal ages (予防接種法施行令)
    earliest: date  # the first day it may be given as a routine dose (ages and intervals)
    last_day: date  # the last day it may be given as a routine dose
    window_from: date | None  # the standard (recommended) window
    window_until: date | None
    due_from: date  # max(earliest, window_from)
    due_until: date  # the window's end, or the last day once past it
    rule_source: str


@dataclass(frozen=True)
class SeriesPlan:
    series: str  # "dtap-ipv-hib", "pcv", "mr", …
    label: str  # the vaccine, in the active language
    status: str  # Status.*
    path: str  # the path's name ("start 7-12m: 2+1")
    rules_version: str
    doses: tuple[Dose, ...]  # given, deduplicated, oldest first
    next_dose: NextDose | None
    missed: tuple[str, ...] = ()  # phases/doses that can no longer be given
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Assigned:
    rule: DoseRule
    dose: Dose | None = None
    skipped: bool = False
    missed: bool = False


def _earliest(
    rule: DoseRule, birth: date, filled: Sequence[_Assigned], *, skipped: bool = False
) -> date:
    earliest = rule.eligible[0].on(birth)
    if rule.min_age is not None:
        earliest = max(earliest, rule.min_age.on(birth))
    intervals = rule.intervals
    if skipped and rule.intervals_after_skip is not None:
        intervals = rule.intervals_after_skip
    for interval in intervals:
        ref = _reference_dose(interval.after, filled)
        if ref is not None:
            earliest = max(earliest, interval.from_dose(ref))
    # Whatever the intervals count from, a dose follows the one before it
    # (B型肝炎's 3rd counts from the 1st, yet comes after the 2nd).
    previous = _reference_dose(None, filled)
    if previous is not None:
        earliest = max(earliest, previous + timedelta(days=1))
    return earliest


def _reference_dose(after: int | None, filled: Sequence[_Assigned]) -> date | None:
    given = [a for a in filled if a.dose is not None]
    if after is None:
        return given[-1].dose.on if given and given[-1].dose else None
    for a in given:
        if a.rule.number == after and a.dose is not None:
            return a.dose.on
    return None


def _window(rule: DoseRule, birth: date, filled: Sequence[_Assigned]) -> tuple[date, date] | None:
    lo: date | None = None
    hi: date | None = None
    if rule.standard_age is not None:
        lo, hi = rule.standard_age[0].on(birth), rule.standard_age[1].on(birth)
    if rule.standard_interval is not None:
        first, last = rule.standard_interval
        ref_first = _reference_dose(first.after, filled)
        ref_last = _reference_dose(last.after, filled)
        if ref_first is not None and ref_last is not None:
            i_lo, i_hi = first.from_dose(ref_first), last.from_dose(ref_last)
            lo, hi = (max(lo, i_lo), min(hi, i_hi)) if lo and hi else (i_lo, i_hi)
    if lo is None or hi is None:
        return None
    return lo, hi


def _last_day(rule: DoseRule, birth: date) -> date:
    last = rule.eligible[1].on(birth)
    if rule.skip_after is not None:
        last = min(last, rule.skip_after.on(birth))
    return last


def _phase_end(path: Path, index: int) -> int:
    """Index after the last rule of the phase (same eligibility) of rule `index`."""
    eligible = path.doses[index].eligible
    end = index
    while end < len(path.doses) and path.doses[end].eligible == eligible:
        end += 1
    return end


def _assign(path: Path, doses: Sequence[Dose], birth: date) -> list[_Assigned]:
    """Match the doses given to the path's rules, oldest first. A dose given
    in a later phase's ages while an earlier phase is unfinished and past
    belongs to the later phase (MR 第2期 after a missed 第1期)."""
    out: list[_Assigned] = []
    queue = list(doses)
    i = 0
    while i < len(path.doses):
        rule = path.doses[i]
        if rule.skip_if_previous_after is not None:
            prev = _reference_dose(None, out)
            if prev is not None and prev > rule.skip_if_previous_after.on(birth):
                out.append(_Assigned(rule, skipped=True))
                i += 1
                continue
        if not queue:
            break
        dose = queue[0]
        # Could the dose belong to a later phase whose ages hold it?
        end = _phase_end(path, i)
        if end < len(path.doses) and dose.on > rule.eligible[1].on(birth):
            later = path.doses[end]
            lo, hi = later.eligible[0].on(birth), later.eligible[1].on(birth)
            if lo <= dose.on <= hi:
                out.extend(_Assigned(r, missed=True) for r in path.doses[i:end])
                i = end
                continue
        if rule.skip_after is not None and dose.on > rule.skip_after.on(birth):
            out.append(_Assigned(rule, skipped=True))
            i += 1
            continue
        notes: list[str] = []
        if dose.on < _earliest(rule, birth, out, skipped=any(a.skipped for a in out)):
            notes.append("early")
        if dose.on > rule.eligible[1].on(birth):
            notes.append("outside_ages")
        queue.pop(0)
        out.append(
            _Assigned(rule, replace(dose, number=rule.number, phase=rule.phase, notes=tuple(notes)))
        )
        i += 1
    # Doses beyond the path (more than the schedule has) are kept, unnumbered.
    out.extend(_Assigned(DoseRule(0, "", path.doses[-1].eligible), d) for d in queue)
    return out


def plan_path(
    *,
    series: str,
    label: str,
    path: Path,
    product: str,
    doses: Sequence[Dose],
    birth: date,
    today: date,
    rules_version: str,
    notes: tuple[str, ...] = (),
) -> SeriesPlan:
    """Plan one series along `path`: which dose is next, from when, until
    when, and the status on `today`."""
    assigned = _assign(path, doses, birth)
    missed = [f"{a.rule.number}" for a in assigned if a.missed]
    done = {a.rule.number for a in assigned if a.dose is not None or a.skipped or a.missed}
    given = tuple(a.dose for a in assigned if a.dose is not None)
    skipped = any(a.skipped for a in assigned)
    i = 0
    while i < len(path.doses):
        rule = path.doses[i]
        if rule.number in done:
            i += 1
            continue
        filled = [a for a in assigned if a.dose is not None and a.rule.number]
        if rule.skip_if_previous_after is not None:
            prev = _reference_dose(None, filled)
            if prev is not None and prev > rule.skip_if_previous_after.on(birth):
                done.add(rule.number)
                skipped = True
                i += 1
                continue
        earliest = _earliest(rule, birth, filled, skipped=skipped)
        last = _last_day(rule, birth)
        if today > last or earliest > last:
            if rule.skip_after is not None and last < rule.eligible[1].on(birth):
                done.add(rule.number)  # left out; the path goes on
                skipped = True
                i += 1
                continue
            # This phase can no longer be finished; a later phase may still be.
            end = _phase_end(path, i)
            missed.extend(str(r.number) for r in path.doses[i:end])
            done.update(r.number for r in path.doses[i:end])
            i = end
            continue
        window = _window(rule, birth, filled)
        if window is not None:
            # The standard window ends with the legal ages at the latest; one
            # that would only begin after them does not apply.
            window = (window[0], min(window[1], last)) if window[0] <= last else None
        due_from = max(earliest, window[0]) if window else earliest
        late = window is not None and window[1] < due_from
        due_until = last if window is None or late else window[1]
        if today < due_from:
            status = Status.UPCOMING
        elif late or (window is not None and today > window[1]):
            status = Status.OVERDUE
            due_until = last
        else:
            status = Status.DUE
        phase_size = sum(1 for r in path.doses if r.phase == rule.phase)
        next_dose = NextDose(
            number=rule.number,
            phase=rule.phase,
            product=product,
            label=dose_label(product, rule, phase_size),
            eligible_from=rule.eligible[0].on(birth),
            earliest=earliest,
            last_day=last,
            window_from=window[0] if window else None,
            window_until=window[1] if window else None,
            due_from=due_from,
            due_until=due_until,
            rule_source=rule.source,
        )
        return SeriesPlan(
            series, label, status, path.name, rules_version, given, next_dose,
            tuple(missed), notes,
        )  # fmt: skip
    status = Status.NO_LONGER_ELIGIBLE if missed else Status.COMPLETE
    return SeriesPlan(
        series, label, status, path.name, rules_version, given, None, tuple(missed), notes
    )


def _not_planned(series: str, doses: Sequence[Dose], version: str) -> SeriesPlan:
    """Doses of a series outside this child's schedule (4種混合 or Hib after
    starting on 5種混合): listed, never due."""
    given = tuple(replace(d, notes=("not_in_schedule",)) for d in doses)
    return SeriesPlan(
        series, vaccine_label(series), Status.NOT_APPLICABLE, "", version, given, None
    )


def _start_day(doses: Sequence[Dose], birth: date, today: date, start: Age) -> date:
    """The day the series started, or would start if begun today."""
    return doses[0].on if doses else max(today, start.on(birth))


def _by_start_age(paths: dict[str, Path], start: date, birth: date) -> Path:
    keys = list(paths)
    bounds = [M(7), M(12), M(24)]
    for key, bound in zip(keys, bounds, strict=False):
        if start <= bound.on(birth):
            return paths[key]
    return paths[keys[-1]]


@dataclass
class Child:
    birth: date
    sex: str | None = None  # FHIR Patient.gender
    given: list[GivenDose] = field(default_factory=list)


def plan_vaccinations(child: Child, today: date) -> list[SeriesPlan]:
    """Every routine series for this child on `today`, in schedule order."""
    birth = child.birth
    doses = deduplicate(child.given)
    plans: list[SeriesPlan] = []

    def plan(series: str, label: str, path: Path, product: str, version: str,
             notes: tuple[str, ...] = ()) -> None:  # fmt: skip
        plans.append(
            plan_path(
                series=series, label=label, path=path, product=product,
                doses=doses.get(series, []), birth=birth, today=today,
                rules_version=version, notes=notes,
            )
        )  # fmt: skip

    # 5種混合, or 4種混合 + Hib for a child who started with those (CSV 5種混合
    # note): decided by the first dose of the three, or by the rules of the
    # day the first dose would be given.
    hib_doses = doses.get("hib", [])
    dtp_family = sorted(
        [*doses.get("dtap-ipv", []), *hib_doses, *doses.get("dtap-ipv-hib", [])],
        key=lambda d: d.on,
    )
    dtp_start = _start_day(dtp_family, birth, today, M(2))
    rules = ruleset_on(dtp_start)
    if dtp_family:
        started_old = dtp_family[0].series != "dtap-ipv-hib"
    else:
        started_old = "dtap-ipv" in rules.dtp_products
    if started_old:
        plan("dtap-ipv", vaccine_label("dtap-ipv"), DTAP_IPV, "dtap-ipv", rules.version)
        hib_start = _start_day(hib_doses, birth, today, M(2))
        plan(
            "hib", vaccine_label("hib"), _by_start_age(HIB_PATHS, hib_start, birth), "hib",
            ruleset_on(hib_start).version,
        )  # fmt: skip
    else:
        plan("dtap-ipv-hib", vaccine_label("dtap-ipv-hib"), DTAP_IPV_HIB, "dtap-ipv-hib",
             rules.version)  # fmt: skip
        # 4種混合 or Hib given after starting on 5種混合: shown, not planned.
        for series in ("dtap-ipv", "hib"):
            if doses.get(series):
                plans.append(_not_planned(series, doses[series], rules.version))

    # 小児用肺炎球菌: the path by the age at the first dose; the product the
    # child started with when it is still routine, else today's.
    pcv_doses = doses.get("pcv", [])
    pcv_start = _start_day(pcv_doses, birth, today, M(2))
    now = ruleset_on(today)
    started = [d.product for d in pcv_doses if d.product not in GENERIC]
    product = started[-1] if started and started[-1] in now.pcv_products else now.pcv_product
    plan("pcv", vaccine_label("pcv"), _by_start_age(PCV_PATHS, pcv_start, birth), product,
         now.version)  # fmt: skip

    if birth >= BORN_FROM["hepb"]:
        plan("hepb", vaccine_label("hepb"), HEPB, "hepb", now.version)

    if birth >= BORN_FROM["rotavirus"]:
        rv = doses.get("rotavirus", [])
        notes: tuple[str, ...] = ()
        if not rv:
            # Not started: either product; the later upper age (5価) bounds it.
            path, product = ROTAVIRUS["rv5"], "rv"
        elif rv[0].product in ROTAVIRUS:
            # The product of the first dose (the same product throughout).
            path, product = ROTAVIRUS[rv[0].product], rv[0].product
        else:
            # Only "ロタ" reported: the larger schedule, said so (docs/0012).
            path, product, notes = ROTAVIRUS["rv5"], "rv", ("rotavirus_product_unknown",)
        plan("rotavirus", vaccine_label("rotavirus"), path, product, now.version, notes)

    plan("bcg", vaccine_label("bcg"), BCG, "bcg", now.version)
    plan("mr", vaccine_label("mr"), MR, "mr", now.version)
    plan("varicella", vaccine_label("varicella"), VARICELLA, "varicella", now.version)
    plan("je", vaccine_label("je"), JE, "je", now.version)
    plan("dt", vaccine_label("dt"), DT, "dt", now.version)

    hpv = doses.get("hpv", [])
    if child.sex == "female" or hpv:
        path, product = _hpv_path(hpv, birth, today)
        notes = () if child.sex == "female" else ("hpv_sex_not_female",)
        plan("hpv", vaccine_label("hpv"), path, product, now.version, notes)
    return plans


def _hpv_path(doses: Sequence[Dose], birth: date, today: date) -> tuple[Path, str]:
    """The product of the girl's first dose (9価 when none or not named); for
    9価, 2 doses when the 1st was given before 15 (「15歳未満」: up to the
    day before the 15th birthday) and the 2nd, if given, 5 months or more
    after it; else 3 (CSV HPV 9価 notes). A girl who began with 2価 or 4価
    and went on with 9価 finishes with 9価's 3-dose intervals (1月, then 3月
    after the 2nd: 国立市's page, from the MHLW rules)."""
    product = doses[0].product if doses and doses[0].product != "hpv" else "hpv9"
    if product != "hpv9":
        if any(d.product == "hpv9" for d in doses[1:]):
            return HPV_PATHS["hpv9-3"], "hpv9"
        return HPV_PATHS[product], product
    first = _start_day(doses, birth, today, Age("fy_start", 12))
    if first > months_reached_on(birth, 15 * 12):
        return HPV_PATHS["hpv9-3"], product
    if len(doses) >= 2 and doses[1].on < after_interval_months(doses[0].on, 5):
        return HPV_PATHS["hpv9-3"], product
    return HPV_PATHS["hpv9-2"], product
