"""Worked cases of the routine vaccination schedule (phr.vaccination_schedule).

Each case names its source: a row of ../shared/reference/data/
immunization_schedule_jp.csv ("CSV <vaccine> dose <n>", with the URL the
row cites), standards.md §4, a law article, or the MHLW reading as
municipalities restate it (Kobe, Natori, Higashikurume, Shizuoka:
docs/decisions/0012-schedules.md lists them). Expected dates are worked
out by hand from those rules, not read back from the code.
"""

from __future__ import annotations

from datetime import date, timedelta

from django.utils import translation
from hypothesis import assume, given
from hypothesis import strategies as st

from phr.legal_age import months_reached_on
from phr.vaccination_schedule import (
    DEDUP_DAYS,
    SERIES_OF,
    Child,
    GivenDose,
    SeriesPlan,
    Status,
    deduplicate,
    plan_vaccinations,
    ruleset_on,
)


def plans(
    birth: date,
    doses: list[tuple[str, date]] | tuple[tuple[str, date], ...] = (),
    today: date = date(2026, 11, 26),
    sex: str | None = None,
) -> dict[str, SeriesPlan]:
    child = Child(birth=birth, sex=sex, given=[GivenDose(code, day) for code, day in doses])
    return {p.series: p for p in plan_vaccinations(child, today)}


def nxt(plan: SeriesPlan) -> tuple[int, date, str]:
    assert plan.next_dose is not None, plan
    return plan.next_dose.number, plan.next_dose.earliest, plan.status


# --------------------------------------------------------------------------
# 5種混合 / 4種混合 + Hib
# --------------------------------------------------------------------------


def test_5in1_first_dose_from_the_day_before_the_two_month_birthday() -> None:
    # CSV 5種混合 dose 1: 生後2月～ (ikoma); Kobe: 「生後2月から」 = the day before
    # the 2-month monthly birthday: born 4/15 → 6/14. Standard start 2～7m.
    p = plans(date(2026, 4, 15), today=date(2026, 6, 1))["dtap-ipv-hib"]
    assert nxt(p) == (1, date(2026, 6, 14), Status.UPCOMING)
    assert p.next_dose is not None
    assert p.next_dose.window_until == date(2026, 11, 14)  # 生後7月に至るまで
    assert p.rules_version == "2024-10"


def test_5in1_primary_doses_20_days_apart_standard_up_to_56() -> None:
    # CSV 5種混合 doses 2-3: 20日以上 (std 20～56日); 実施規則「20日以上の間隔」 =
    # both dose days left out (Minamikyushu): 7/10 + 21 = 7/31; 7/10 + 57 = 9/5.
    p = plans(
        date(2026, 4, 15),
        [("dtap-ipv-hib", date(2026, 6, 14)), ("dtap-ipv-hib", date(2026, 7, 10))],
        today=date(2026, 8, 1),
    )["dtap-ipv-hib"]
    assert nxt(p) == (3, date(2026, 7, 31), Status.DUE)
    assert p.next_dose is not None
    assert p.next_dose.window_until == date(2026, 9, 5)


def test_5in1_booster_six_to_eighteen_months_after_the_third() -> None:
    # CSV 5種混合 dose 4: 初回終了後 6月以上 (std 6～18月): 8/5 → 2027-02-05 … 2028-02-05.
    doses = [
        ("dtap-ipv-hib", date(2026, 6, 14)),
        ("dtap-ipv-hib", date(2026, 7, 10)),
        ("dtap-ipv-hib", date(2026, 8, 5)),
    ]
    p = plans(date(2026, 4, 15), doses, today=date(2026, 12, 1))["dtap-ipv-hib"]
    assert nxt(p) == (4, date(2027, 2, 5), Status.UPCOMING)
    assert p.next_dose is not None
    assert p.next_dose.window_until == date(2028, 2, 5)


def test_5in1_no_longer_eligible_after_90_months() -> None:
    # CSV 5種混合: 生後90月に至るまで. Born 2018-01-10 reaches 90 months on 2025-07-09.
    p = plans(date(2018, 1, 10))["dtap-ipv-hib"]
    assert p.status == Status.NO_LONGER_ELIGIBLE
    assert p.next_dose is None
    assert p.missed == ("1", "2", "3", "4")


def test_a_child_who_started_4in1_and_hib_finishes_with_them() -> None:
    # CSV 5種混合 note: children who already started 4種混合+Hib finish with those.
    # 4種: 20日以上 → 3/1 + 21 = 3/22 (std to 3/1 + 57 = 4/27); Hib: 27日以上 → 3/29.
    doses = [
        ("dtap-ipv", date(2024, 2, 1)), ("dtap-ipv", date(2024, 3, 1)),
        ("hib", date(2024, 2, 1)), ("hib", date(2024, 3, 1)),
    ]  # fmt: skip
    p = plans(date(2023, 12, 1), doses, today=date(2024, 4, 10))
    assert "dtap-ipv-hib" not in p
    assert nxt(p["dtap-ipv"]) == (3, date(2024, 3, 22), Status.DUE)
    assert nxt(p["hib"]) == (3, date(2024, 3, 29), Status.DUE)
    assert p["hib"].path.startswith("start 2-7m")


def test_4in1_booster_standard_is_one_year_to_eighteen_months() -> None:
    # 4種混合 has no CSV row: 5種混合's rules, but its booster standard is 1年～1年6か月
    # after the primary (Kamigori: 第1期追加 6か月以上, 標準的には1年～1年6か月).
    doses = [("dtap-ipv", date(2024, m, 1)) for m in (2, 3, 4)]
    p = plans(date(2023, 12, 1), doses, today=date(2024, 12, 1))["dtap-ipv"]
    assert nxt(p) == (4, date(2024, 10, 1), Status.UPCOMING)
    assert p.next_dose is not None
    assert (p.next_dose.due_from, p.next_dose.due_until) == (date(2025, 4, 1), date(2025, 10, 1))


def test_a_4in1_dose_after_starting_5in1_is_shown_not_planned() -> None:
    # CSV 5種混合 note: only children who *started* with 4種混合+Hib stay on them.
    doses = [("dtap-ipv-hib", date(2026, 6, 14)), ("dtap-ipv", date(2026, 7, 14))]
    p = plans(date(2026, 4, 15), doses)
    assert p["dtap-ipv-hib"].next_dose is not None
    assert p["dtap-ipv"].status == Status.NOT_APPLICABLE
    assert p["dtap-ipv"].doses[0].notes == ("not_in_schedule",)
    assert "hib" not in p


def test_hib_primary_cut_short_at_one_year_booster_27_days_after() -> None:
    # CSV Hib: 初回 …1歳未満に; 実施要領 (Higashikurume, Ikeda): 初回2回目・3回目 are
    # not given after 生後12月; the booster then 27日以上 after the last primary
    # dose (not 7 months). Born 2023-12-01 reaches 12 months on 2024-11-30.
    doses = [
        ("dtap-ipv", date(2024, 2, 1)), ("dtap-ipv", date(2024, 3, 1)),
        ("hib", date(2024, 2, 1)), ("hib", date(2024, 3, 1)),
    ]  # fmt: skip
    hib = plans(date(2023, 12, 1), doses, today=date(2026, 11, 26))["hib"]
    assert nxt(hib) == (4, date(2024, 3, 29), Status.OVERDUE)
    assert hib.next_dose is not None
    assert hib.next_dose.last_day == date(2028, 11, 30)  # 生後60月に至るまで


def test_hib_started_after_one_year_is_one_dose() -> None:
    # CSV Hib dose 1 note: start 1-5y = 1 dose.
    doses = [("dtap-ipv", date(2022, 12, 1)), ("hib", date(2023, 12, 5))]
    hib = plans(date(2022, 10, 1), doses)["hib"]
    assert hib.status == Status.COMPLETE
    assert hib.path.startswith("start 12-60m")


# --------------------------------------------------------------------------
# 小児用肺炎球菌 by starting age
# --------------------------------------------------------------------------


def test_pcv_started_at_2_months_booster_at_12_months_and_60_days() -> None:
    # CSV PCV dose 4: 60日以上 かつ 1歳以上 (std 生後12～15月). 8/9 + 61 = 10/9, but
    # 12 months are reached only on 2027-04-14.
    doses = [
        ("pcv20", date(2026, 6, 14)),
        ("pcv20", date(2026, 7, 12)),
        ("pcv20", date(2026, 8, 9)),
    ]
    p = plans(date(2026, 4, 15), doses)["pcv"]
    assert nxt(p) == (4, date(2027, 4, 14), Status.UPCOMING)
    assert p.next_dose is not None
    assert p.next_dose.window_until == date(2027, 7, 14)
    assert p.next_dose.product == "pcv20"
    with translation.override("ja"):
        ja = plans(date(2026, 4, 15), doses)["pcv"]
    assert ja.next_dose is not None
    assert ja.next_dose.label == "小児用肺炎球菌(20価) 追加"


def test_pcv_started_at_7_to_12_months_is_two_plus_one() -> None:
    # CSV PCV notes: start 7-12m = 3 (2 primary + booster). Born 2025-01-10 reaches
    # 7 months on 2025-08-09; the booster 60 days after 10/1 and at 12 months (2026-01-09).
    doses = [("pcv15", date(2025, 9, 1)), ("pcv15", date(2025, 10, 1))]
    p = plans(date(2025, 1, 10), doses, today=date(2026, 2, 1))["pcv"]
    assert p.path.startswith("start 7-12m")
    assert nxt(p) == (3, date(2026, 1, 9), Status.DUE)
    # A PCV15 starter stays on PCV15 (CSV PCV note).
    assert p.next_dose is not None
    assert p.next_dose.product == "pcv15"


def test_pcv_started_at_12_to_24_months_is_two_doses_60_days_apart() -> None:
    # CSV PCV notes: 12-24m = 2 (>=60 days apart): 8/1 + 61 = 10/1.
    p = plans(date(2024, 6, 20), [("pcv20", date(2025, 8, 1))], today=date(2025, 9, 15))["pcv"]
    assert p.path.startswith("start 12-24m")
    assert nxt(p) == (2, date(2025, 10, 1), Status.UPCOMING)


def test_pcv_started_after_24_months_is_one_dose() -> None:
    # CSV PCV notes: 24-60m = 1.
    p = plans(date(2022, 3, 3), [("pcv15", date(2024, 6, 1))])["pcv"]
    assert p.status == Status.COMPLETE
    assert p.next_dose is None


def test_pcv_third_primary_left_out_when_the_second_was_after_one_year() -> None:
    # CSV PCV dose 2 note: "If the 2nd primary dose is after 12 months, the 3rd is
    # skipped" (Shizuoka: 2回目の接種が1歳を超えた場合、3回目は行わない; 追加は可能).
    # Booster: 60日以上 after 2026-01-20 → 2026-03-22.
    doses = [("pcv20", date(2025, 3, 15)), ("pcv20", date(2026, 1, 20))]
    p = plans(date(2025, 1, 10), doses, today=date(2026, 3, 1))["pcv"]
    assert nxt(p) == (4, date(2026, 3, 22), Status.UPCOMING)


def test_pcv_primary_left_out_after_two_years_booster_still_given() -> None:
    # Shizuoka/Kakuda: 2回目及び3回目は2歳に至るまで, それを超えたら行わない (追加は可能).
    # One dose at 3 months, nothing after: at 26 months the booster is due,
    # 60 days after the only dose and at 12 months or older.
    p = plans(date(2024, 1, 10), [("pcv15", date(2024, 4, 10))], today=date(2026, 3, 15))["pcv"]
    assert p.next_dose is not None
    assert p.next_dose.number == 4
    assert p.next_dose.earliest == months_reached_on(date(2024, 1, 10), 12)
    assert p.status == Status.OVERDUE  # its standard 12～15 months are past
    assert p.next_dose.last_day == date(2029, 1, 9)


def test_pcv_no_longer_eligible_at_five() -> None:
    # CSV PCV: 生後60月に至るまで.
    p = plans(date(2020, 1, 1))["pcv"]
    assert p.status == Status.NO_LONGER_ELIGIBLE


def test_pcv_product_by_version() -> None:
    # CSV PCV: PCV15 from 2024-04, PCV20 from 2024-10-01, PCV13 removed then.
    assert ruleset_on(date(2024, 9, 30)).version == "2024-04"
    assert ruleset_on(date(2024, 10, 1)).version == "2024-10"
    never = plans(date(2024, 5, 1), today=date(2024, 6, 1))["pcv"]
    assert never.next_dose is not None
    assert never.next_dose.product == "pcv15"
    # A PCV13 starter continues with today's product, PCV13 being gone.
    p13 = plans(date(2024, 5, 1), [("pcv13", date(2024, 7, 1))], today=date(2024, 10, 5))["pcv"]
    assert p13.next_dose is not None
    assert p13.next_dose.product == "pcv20"


# --------------------------------------------------------------------------
# B型肝炎, ロタウイルス, BCG
# --------------------------------------------------------------------------


def test_hepb_third_dose_counts_from_the_first() -> None:
    # CSV B型肝炎 dose 3: 1回目から139日以上 (not from dose 2): 6/14 + 140 = 11/1;
    # standard 生後7～8月 from 11/14.
    doses = [("hepb", date(2026, 6, 14)), ("hepb", date(2026, 7, 14))]
    p = plans(date(2026, 4, 15), doses)["hepb"]
    assert nxt(p) == (3, date(2026, 11, 1), Status.DUE)
    assert p.next_dose is not None
    assert p.next_dose.due_from == date(2026, 11, 14)


def test_hepb_third_dose_also_six_days_after_the_second() -> None:
    # 向日市: 3回目 1回目から139日以上、かつ、2回目から6日以上. 2nd late on 10/30:
    # 139 days from 6/14 give 11/1, 6 days from 10/30 give 11/6.
    doses = [("hepb", date(2026, 6, 14)), ("hepb", date(2026, 10, 30))]
    p = plans(date(2026, 4, 15), doses, today=date(2026, 11, 2))["hepb"]
    assert nxt(p) == (3, date(2026, 11, 6), Status.UPCOMING)


def test_hepb_no_longer_eligible_after_one_year() -> None:
    # CSV B型肝炎: 1歳に至るまで (2026-01-09 for a 2025-01-10 birth).
    p = plans(date(2025, 1, 10), [("hepb", date(2025, 3, 10))], today=date(2026, 2, 1))["hepb"]
    assert p.status == Status.NO_LONGER_ELIGIBLE
    assert p.missed == ("2", "3")


def test_rotavirus_monovalent_second_dose_by_24_weeks() -> None:
    # CSV ロタ 1価: 出生6週0日後～24週0日後, 27日以上. Born 2026-01-01: 24w0d = 6/18.
    p = plans(date(2026, 1, 1), [("rv1", date(2026, 3, 10))], today=date(2026, 4, 10))["rotavirus"]
    assert nxt(p) == (2, date(2026, 4, 7), Status.DUE)
    assert p.next_dose is not None
    assert p.next_dose.last_day == date(2026, 6, 18)


def test_rotavirus_dates_of_the_mhlw_q_and_a() -> None:
    # MHLW ロタウイルスワクチンQ&A 問4 (h-crisis.niph.go.jp/?p=154539): born 2020-08-01 →
    # 出生6週0日後 9/12, 生後2月 9/30, 出生14週6日後 11/13 (the standard first-dose window).
    p = plans(date(2020, 8, 1), today=date(2020, 9, 1))["rotavirus"]
    assert p.next_dose is not None
    assert p.next_dose.earliest == date(2020, 9, 12)
    assert (p.next_dose.window_from, p.next_dose.window_until) == (
        date(2020, 9, 30),
        date(2020, 11, 13),
    )


def test_rotavirus_monovalent_started_too_late_cannot_finish() -> None:
    # CSV ロタ 1価: 5/30 + 28 = 6/27 is after 24w0d (6/18): no longer eligible.
    p = plans(date(2026, 1, 1), [("rv1", date(2026, 5, 30))], today=date(2026, 6, 1))["rotavirus"]
    assert p.status == Status.NO_LONGER_ELIGIBLE
    assert p.missed == ("2",)


def test_rotavirus_pentavalent_three_doses_by_32_weeks() -> None:
    # CSV ロタ 5価: 3 doses, 出生32週0日後 (2026-08-13 for a 2026-01-01 birth).
    doses = [("rv5", date(2026, 2, 20)), ("rv5", date(2026, 3, 20))]
    p = plans(date(2026, 1, 1), doses, today=date(2026, 4, 10))["rotavirus"]
    assert nxt(p) == (3, date(2026, 4, 17), Status.UPCOMING)
    assert p.next_dose is not None
    assert p.next_dose.last_day == date(2026, 8, 13)


def test_rotavirus_first_dose_after_14_weeks_6_days_is_overdue_not_excluded() -> None:
    # CSV ロタ: 初回は出生14週6日後までが望ましい (2026-04-15), legal up to 32w0d.
    p = plans(date(2026, 1, 1), today=date(2026, 5, 1))["rotavirus"]
    assert nxt(p) == (1, date(2026, 2, 12), Status.OVERDUE)
    assert p.next_dose is not None
    assert p.next_dose.window_until == date(2026, 4, 15)
    assert p.next_dose.due_until == date(2026, 8, 13)


def test_rotavirus_product_not_named_takes_the_larger_schedule_and_says_so() -> None:
    # vaccination.md: "ロタ" alone names no product; 3 doses (5価) are planned.
    doses = [("rv", date(2026, 2, 20)), ("rv", date(2026, 3, 20))]
    p = plans(date(2026, 1, 1), doses, today=date(2026, 4, 10))["rotavirus"]
    assert p.next_dose is not None
    assert p.next_dose.number == 3
    assert "rotavirus_product_unknown" in p.notes


def test_bcg_before_one_year() -> None:
    # CSV BCG: 1歳に至るまで, std 生後5～8月 (9/14 … 12/14 for a 4/15 birth).
    p = plans(date(2026, 4, 15))["bcg"]
    assert nxt(p) == (1, date(2026, 4, 15), Status.DUE)
    assert p.next_dose is not None
    assert (p.next_dose.window_from, p.next_dose.window_until) == (
        date(2026, 9, 14),
        date(2026, 12, 14),
    )
    assert p.next_dose.last_day == date(2027, 4, 14)
    assert plans(date(2026, 4, 15), today=date(2027, 4, 15))["bcg"].status == (
        Status.NO_LONGER_ELIGIBLE
    )


def test_programmes_apply_from_their_birth_cohorts() -> None:
    # B型肝炎 for births from 2016-04-01 (CSV B型肝炎 source, miyaguchi-kodomo.com);
    # ロタ from 2020-08-01 (MHLW ロタウイルスワクチンQ&A 問2, 問3).
    assert "hepb" not in plans(date(2016, 3, 31))
    assert "hepb" in plans(date(2016, 4, 1))
    assert "rotavirus" not in plans(date(2020, 7, 31))


# --------------------------------------------------------------------------
# MR, 水痘, 日本脳炎, 二種混合
# --------------------------------------------------------------------------


def test_mr_phase_1_then_phase_2_in_the_year_before_school() -> None:
    # CSV MR 第1期: 生後12月～24月に至るまで; 第2期: 小学校就学前の1年間 (4/1～3/31).
    # Born 2024-05-10 enters school 2031-04-01 (学校教育法17条).
    p = plans(date(2024, 5, 10), [("mr", date(2025, 5, 20))])["mr"]
    assert p.next_dose is not None
    assert (p.next_dose.number, p.next_dose.phase) == (2, "第2期")
    assert (p.next_dose.earliest, p.next_dose.last_day) == (date(2030, 4, 1), date(2031, 3, 31))
    assert p.status == Status.UPCOMING
    with translation.override("ja"):
        ja = plans(date(2024, 5, 10), [("mr", date(2025, 5, 20))])["mr"]
    assert ja.next_dose is not None
    assert ja.next_dose.label == "麻しん風しん(MR) 第2期"


def test_mr_phase_2_school_year_of_april_1_and_april_2_births() -> None:
    # CSV MR 第2期 (年長児相当): an April 1 birth is a school year ahead.
    first = plans(date(2020, 4, 1), [("mr", date(2021, 4, 10))])["mr"]
    second = plans(date(2020, 4, 2), [("mr", date(2021, 4, 10))])["mr"]
    assert first.status == Status.NO_LONGER_ELIGIBLE  # 2025-04-01 … 2026-03-31
    assert second.next_dose is not None
    assert (second.next_dose.earliest, second.next_dose.last_day) == (
        date(2026, 4, 1),
        date(2027, 3, 31),
    )
    assert second.status == Status.DUE


def test_mr_phase_1_missed_phase_2_given() -> None:
    # A dose in the 第2期 year counts for 第2期 even when 第1期 was missed.
    p = plans(date(2019, 6, 1), [("mr", date(2025, 9, 1))])["mr"]
    assert [d.number for d in p.doses] == [2]
    assert p.missed == ("1",)
    assert p.status == Status.NO_LONGER_ELIGIBLE
    assert p.next_dose is None


def test_varicella_second_dose_three_months_after() -> None:
    # CSV 水痘 dose 2: 3月以上 (std 6～12月), until 生後36月.
    p = plans(date(2025, 1, 10), [("varicella", date(2026, 1, 20))], today=date(2026, 5, 1))
    v = p["varicella"]
    assert nxt(v) == (2, date(2026, 4, 20), Status.UPCOMING)
    assert v.next_dose is not None
    assert (v.next_dose.due_from, v.next_dose.window_until) == (
        date(2026, 7, 20),
        date(2027, 1, 20),
    )
    assert v.next_dose.last_day == date(2028, 1, 9)


def test_japanese_encephalitis_phase_1() -> None:
    # CSV 日本脳炎: 第1期初回 6日以上 (std 6～28日); 第1期追加 6月以上 (std ~1 year).
    je = plans(date(2022, 5, 10), [("je", date(2025, 6, 1))], today=date(2025, 6, 2))["je"]
    assert nxt(je) == (2, date(2025, 6, 8), Status.UPCOMING)
    doses = [("je", date(2025, 6, 1)), ("je", date(2025, 6, 15))]
    je = plans(date(2022, 5, 10), doses)["je"]
    assert nxt(je) == (3, date(2025, 12, 15), Status.OVERDUE)
    assert je.next_dose is not None
    assert je.next_dose.last_day == date(2029, 11, 9)  # 生後90月に至るまで


def test_japanese_encephalitis_phase_2_after_a_missed_phase_1() -> None:
    # CSV 日本脳炎 第2期: 9歳以上13歳未満 (std 9歳), independent of 第1期.
    je = plans(date(2016, 5, 10))["je"]
    assert je.missed == ("1", "2", "3")
    assert nxt(je) == (4, date(2025, 5, 9), Status.OVERDUE)
    assert je.next_dose is not None
    assert je.next_dose.last_day == date(2029, 5, 9)


def test_dt_phase_2_at_eleven() -> None:
    # CSV 二種混合 第2期: 11歳以上13歳未満, std 11歳.
    dt = plans(date(2015, 7, 1))["dt"]
    assert nxt(dt) == (1, date(2026, 6, 30), Status.DUE)
    assert dt.next_dose is not None
    assert dt.next_dose.last_day == date(2028, 6, 30)


# --------------------------------------------------------------------------
# HPV
# --------------------------------------------------------------------------


def test_hpv_for_girls_from_grade_6_to_high_school_1() -> None:
    # CSV HPV: 小学6年～高校1年相当の女子 (12歳となる年度初日～16歳となる年度末日),
    # std 中学1年. Not in a boy's schedule.
    girl = plans(date(2013, 5, 10), sex="female")["hpv"]
    assert girl.next_dose is not None
    assert (girl.next_dose.earliest, girl.next_dose.last_day) == (
        date(2025, 4, 1),
        date(2030, 3, 31),
    )
    assert (girl.next_dose.window_from, girl.next_dose.window_until) == (
        date(2026, 4, 1),
        date(2027, 3, 31),
    )
    assert girl.status == Status.DUE
    assert "hpv" not in plans(date(2013, 5, 10), sex="male")


def test_hpv_grade_boundary_of_april_births() -> None:
    # 12歳となる日 (the day before the birthday, 年齢計算ニ関スル法律): an April 1
    # birth turns 12 on March 31, in the earlier 年度.
    early = plans(date(2014, 4, 1), sex="female", today=date(2025, 6, 1))["hpv"]
    late = plans(date(2014, 4, 2), sex="female", today=date(2025, 6, 1))["hpv"]
    assert early.next_dose is not None
    assert late.next_dose is not None
    assert early.next_dose.earliest == date(2025, 4, 1)
    assert late.next_dose.earliest == date(2026, 4, 1)


def test_hpv9_two_doses_when_started_before_15() -> None:
    # CSV HPV 9価: dose 1 before the 15th birthday → 2 doses, 2nd >= 5 months.
    # 「15歳未満」 includes the day before the birthday (Kobe): born 2011-01-10 → 2026-01-09.
    p = plans(date(2011, 1, 10), [("hpv9", date(2026, 1, 9))], sex="female", today=date(2026, 2, 1))
    assert p["hpv"].path.startswith("9-valent, started before 15")
    assert nxt(p["hpv"]) == (2, date(2026, 6, 9), Status.UPCOMING)


def test_hpv9_three_doses_when_started_at_15() -> None:
    # CSV HPV 9価: otherwise 3 doses: 2nd >= 1 month.
    p = plans(
        date(2011, 1, 10), [("hpv9", date(2026, 1, 10))], sex="female", today=date(2026, 2, 1)
    )
    assert nxt(p["hpv"]) == (2, date(2026, 2, 10), Status.UPCOMING)
    assert p["hpv"].path.startswith("9-valent, started at 15")


def test_hpv9_second_dose_sooner_than_five_months_needs_a_third() -> None:
    # CSV HPV 9価 (kunitachi): the 2-dose schedule needs 5 months between; a 2nd
    # dose 2 months after is the 3-dose schedule: 3rd >= 3 months after the 2nd.
    # Standard: 6 months after the 1st (10/1 … 11/1).
    doses = [("hpv9", date(2026, 4, 1)), ("hpv9", date(2026, 6, 1))]
    p = plans(date(2013, 5, 10), doses, sex="female", today=date(2026, 9, 15))["hpv"]
    assert nxt(p) == (3, date(2026, 9, 1), Status.UPCOMING)
    assert p.next_dose is not None
    assert (p.next_dose.due_from, p.next_dose.due_until) == (date(2026, 10, 1), date(2026, 11, 1))


def test_hpv2_third_dose_five_months_after_first_and_two_and_a_half_after_second() -> None:
    # CSV HPV 2価: 3回目 1回目から5月以上 かつ 2回目から2月半以上: max(9/1, 7/17) = 9/1.
    doses = [("hpv2", date(2026, 4, 1)), ("hpv2", date(2026, 5, 1))]
    p = plans(date(2013, 5, 10), doses, sex="female", today=date(2026, 6, 1))["hpv"]
    assert nxt(p) == (3, date(2026, 9, 1), Status.UPCOMING)


def test_hpv_switched_from_bivalent_to_9_valent_finishes_on_9_valent_intervals() -> None:
    # CSV HPV source (kunitachi): after 1–2 doses of 2価/4価, 9価 may finish the
    # series: 1回目と2回目 1か月以上, 2回目と3回目 3か月以上 → 6/1 + 3 months = 9/1.
    doses = [("hpv2", date(2026, 4, 1)), ("hpv9", date(2026, 6, 1))]
    p = plans(date(2013, 5, 10), doses, sex="female", today=date(2026, 7, 1))["hpv"]
    assert nxt(p) == (3, date(2026, 9, 1), Status.UPCOMING)
    assert p.next_dose is not None
    assert p.next_dose.product == "hpv9"


# --------------------------------------------------------------------------
# Month-end birthdays
# --------------------------------------------------------------------------


def test_month_end_birthday_first_dose() -> None:
    # 民法143条2項但書 / Kobe 【注】: born 12/31, February has no 31st → 生後2月 on 2/28.
    p = plans(date(2025, 12, 31), today=date(2026, 2, 1))["dtap-ipv-hib"]
    assert nxt(p) == (1, date(2026, 2, 28), Status.UPCOMING)


def test_leap_day_birth_bcg_last_day() -> None:
    # 民法143条2項但書: born 2024-02-29 reaches 1 year on 2025-02-28 (「1歳に至るまで」).
    p = plans(date(2024, 2, 29), today=date(2024, 6, 1))["bcg"]
    assert p.next_dose is not None
    assert p.next_dose.last_day == date(2025, 2, 28)


# --------------------------------------------------------------------------
# Deduplication
# --------------------------------------------------------------------------


def test_same_dose_from_three_sources_is_one_dose_dated_by_the_register() -> None:
    # Issue 6: the same vaccine within a few days from municipality, clinic and
    # parent counts once, with all sources; the municipal register's date wins.
    reports = [
        GivenDose("pcv", date(2026, 6, 16), "self"),
        GivenDose("pcv20", date(2026, 6, 15), "clinic"),
        GivenDose("pcv20", date(2026, 6, 14), "municipality"),
    ]
    (dose,) = deduplicate(reports)["pcv"]
    assert dose.on == date(2026, 6, 14)
    assert dose.product == "pcv20"
    assert len(dose.reports) == 3


def test_two_real_je_doses_a_week_apart_stay_two() -> None:
    # CSV 日本脳炎 dose 2: 6日以上 → a week apart is the shortest real interval,
    # longer than DEDUP_DAYS.
    reports = [GivenDose("je", date(2025, 6, 1)), GivenDose("je", date(2025, 6, 8))]
    assert len(deduplicate(reports)["je"]) == 2
    assert DEDUP_DAYS < 6


def test_a_dose_given_too_early_is_kept_and_marked() -> None:
    # CSV 5種混合 dose 2: 20日以上; a dose 10 days after is not a valid routine dose.
    doses = [("dtap-ipv-hib", date(2026, 6, 14)), ("dtap-ipv-hib", date(2026, 6, 24))]
    p = plans(date(2026, 4, 15), doses)["dtap-ipv-hib"]
    assert p.doses[1].notes == ("early",)


# --------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------

CODES = sorted(SERIES_OF)
births = st.dates(min_value=date(2016, 4, 1), max_value=date(2026, 11, 1))


@st.composite
def children(draw: st.DrawFn) -> tuple[Child, date]:
    birth = draw(births)
    today = draw(st.dates(min_value=birth, max_value=birth + timedelta(days=17 * 366)))
    n = draw(st.integers(min_value=0, max_value=12))
    given_doses = [
        GivenDose(
            draw(st.sampled_from(CODES)),
            draw(st.dates(min_value=birth, max_value=today)),
            draw(st.sampled_from(["municipality", "clinic", "self"])),
        )
        for _ in range(n)
    ]
    sex = draw(st.sampled_from(["female", "male", None]))
    return Child(birth=birth, sex=sex, given=given_doses), today


@given(children())
def test_the_next_dose_is_never_before_eligibility_or_its_intervals(
    case: tuple[Child, date],
) -> None:
    child, today = case
    for plan in plan_vaccinations(child, today):
        if plan.next_dose is None:
            assert plan.status in (
                Status.COMPLETE,
                Status.NO_LONGER_ELIGIBLE,
                Status.NOT_APPLICABLE,
            )
            assert (plan.status == Status.NO_LONGER_ELIGIBLE) == bool(plan.missed)
            continue
        n = plan.next_dose
        assert plan.status in (Status.UPCOMING, Status.DUE, Status.OVERDUE)
        assert n.earliest >= child.birth
        assert n.earliest <= n.due_from <= n.due_until <= n.last_day
        assert today <= n.last_day
        # Never before the legal ages, nor before the last dose counted.
        assert n.earliest >= n.eligible_from
        counted = [d.on for d in plan.doses if d.number]
        if counted:
            assert n.earliest > max(counted) or n.phase != plan.doses[-1].phase
        if plan.status == Status.UPCOMING:
            assert today < n.due_from
        else:
            assert today >= n.due_from


@given(children(), st.sampled_from(CODES), st.integers(min_value=0, max_value=4000))
def test_a_later_dose_never_makes_a_complete_series_incomplete(
    case: tuple[Child, date], code: str, days_later: int
) -> None:
    child, today = case
    before = {p.series: p for p in plan_vaccinations(child, today)}
    last = max((g.on for g in child.given), default=child.birth)
    extra = last + timedelta(days=days_later)
    assume(extra <= today)
    more = Child(child.birth, child.sex, [*child.given, GivenDose(code, extra)])
    after = {p.series: p for p in plan_vaccinations(more, today)}
    for series, plan in before.items():
        if plan.status == Status.COMPLETE:
            assert after[series].status == Status.COMPLETE, (series, after[series])
