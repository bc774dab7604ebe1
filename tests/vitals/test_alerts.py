"""Vitals alert rules as pure functions of readings (vitals.alerts): the
blood-pressure episodes of a pregnancy, the weight-gain advice by
pre-pregnancy BMI category, a child's weight-for-age z-score drop, and the
Flag an episode becomes. No database."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from fhir.resources.R4B.flag import Flag

from clinics.reference import weight_gain_bands
from vitals import alerts, growth
from vitals.alerts import BpReading, Row, WeightReading

DUE = date(2026, 9, 1)
LMP = DUE - timedelta(days=280)
T0 = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)  # 2026-06-01 09:00 in Japan: 26+6 weeks
NOW = T0 + timedelta(days=10)


def gestation(day: date) -> int | None:
    return (day - LMP).days


def bp(day: float, systolic: int, diastolic: int, ref: str | None = None) -> BpReading:
    return BpReading(
        T0 + timedelta(days=day),
        Decimal(systolic),
        Decimal(diastolic),
        (ref or f"Observation/bp-{day}-{systolic}",),
    )


def episodes(*readings: BpReading, now: datetime = NOW) -> list[alerts.Episode]:
    return alerts.bp_episodes(readings, gestation_days=gestation, now=now)


# --------------------------------------------------------------------------
# Blood pressure (JSOG/JSSHP: ≥140/90 high, ≥160/110 severe, from 20 weeks)
# --------------------------------------------------------------------------


def test_two_high_readings_six_days_apart_make_one_alert() -> None:
    found = episodes(bp(0, 142, 88), bp(6, 138, 92))
    assert [e.kind for e in found] == ["bp-high"]
    # The episode starts at the first qualifying reading and lists both.
    assert found[0].start == T0
    assert found[0].readings == ("Observation/bp-0-142", "Observation/bp-6-138")
    assert found[0].active


def test_two_high_readings_eight_days_apart_make_none() -> None:
    assert episodes(bp(0, 142, 88), bp(8, 145, 95), now=T0 + timedelta(days=9)) == []


def test_exactly_seven_days_apart_is_still_within_seven_days() -> None:
    assert len(episodes(bp(0, 140, 80), bp(7, 120, 90))) == 1


def test_one_reading_in_the_severe_range_is_severe_at_once() -> None:
    for systolic, diastolic in ((160, 90), (150, 110)):
        found = episodes(bp(0, systolic, diastolic))
        assert [e.kind for e in found] == ["bp-severe"]
        assert alerts.KINDS["bp-severe"].severity == "severe"
    # 159/109 is high, not severe, and alone raises nothing.
    assert episodes(bp(0, 159, 109)) == []


def test_normal_readings_raise_nothing() -> None:
    assert episodes(bp(0, 139, 89), bp(1, 139, 89), bp(2, 120, 80)) == []


def test_readings_before_20_weeks_raise_nothing() -> None:
    # 19 weeks 6 days: a hypertension found before 20 weeks is not HDP
    # (JSOG: 高血圧合併妊娠), the clinic's matter, not a home alert.
    before = T0 - timedelta(days=(T0.date() - LMP).days - (20 * 7 - 1))
    readings = (
        BpReading(before, Decimal(165), Decimal(112), ("Observation/a",)),
        BpReading(before - timedelta(days=2), Decimal(150), Decimal(95), ("Observation/b",)),
    )
    assert alerts.bp_episodes(readings, gestation_days=gestation, now=before) == []
    # From 20 weeks 0 days on, the same severe reading alerts.
    at_20 = BpReading(before + timedelta(days=1), Decimal(165), Decimal(112), ("Observation/c",))
    assert len(alerts.bp_episodes([*readings, at_20], gestation_days=gestation, now=at_20.at)) == 1


def test_no_due_date_means_no_gestational_age_and_no_alert() -> None:
    assert alerts.bp_episodes([bp(0, 170, 115)], gestation_days=lambda d: None, now=NOW) == []


def test_repeated_high_readings_stay_one_episode_and_push_its_end() -> None:
    readings = [bp(day, 145, 92) for day in (0, 3, 6, 10, 15)]
    found = episodes(*readings, now=T0 + timedelta(days=16))
    assert len(found) == 1
    assert len(found[0].readings) == 5
    assert found[0].end == T0 + timedelta(days=22)


def test_a_severe_reading_later_in_an_episode_makes_it_severe() -> None:
    found = episodes(bp(0, 142, 88), bp(2, 145, 90), bp(5, 162, 100))
    assert [e.kind for e in found] == ["bp-severe"]
    assert found[0].start == T0


def test_an_episode_closes_after_seven_days_without_a_high_reading_and_a_new_one_follows() -> None:
    first = [bp(0, 142, 88), bp(2, 141, 91), bp(4, 120, 78)]
    later = [bp(20, 150, 96), bp(21, 146, 94)]
    found = episodes(*first, *later, now=T0 + timedelta(days=22))
    assert len(found) == 2
    closed, current = found
    assert not closed.active
    assert closed.end == T0 + timedelta(days=9)
    assert current.active
    assert current.start == T0 + timedelta(days=20)
    # Only the high readings belong to an episode; the normal one closes nothing early.
    assert len(closed.readings) == 2


def test_the_same_reading_from_two_sources_is_one_reading() -> None:
    # A reading typed in and the same one imported from the device: one
    # reading, so it cannot pair with itself.
    moment = T0.isoformat()
    rows = [
        Row(uuid.uuid4(), panel(142, 92, moment), T0),
        Row(uuid.uuid4(), panel(142, 92, moment), T0 + timedelta(seconds=20)),
    ]
    readings = alerts.bp_readings(rows)
    assert len(readings) == 1
    assert len(readings[0].refs) == 2
    assert alerts.bp_episodes(readings, gestation_days=gestation, now=NOW) == []


def panel(systolic: int, diastolic: int, moment: str) -> dict[str, Any]:
    def component(code: str, value: int) -> dict[str, Any]:
        return {
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "valueQuantity": {"value": value, "unit": "mmHg", "code": "mm[Hg]"},
        }

    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "effectiveDateTime": moment,
        "component": [component("8480-6", systolic), component("8462-4", diastolic)],
    }


def single(code: str, value: int, moment: str, encounter: str = "") -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "effectiveDateTime": moment,
        "valueQuantity": {"value": value, "unit": "mmHg", "code": "mm[Hg]"},
    }
    if encounter:
        resource["encounter"] = {"reference": encounter}
    return resource


def test_separate_systolic_and_diastolic_observations_pair_into_one_reading() -> None:
    moment = T0.isoformat()
    ids = [uuid.uuid4() for _ in range(3)]
    rows = [
        Row(ids[0], single("8480-6", 150, moment, "Encounter/1"), T0),
        Row(ids[1], single("8462-4", 98, moment, "Encounter/1"), T0),
        # A panel, voided: not a reading.
        Row(
            ids[2],
            {**panel(170, 115, moment), "status": "entered-in-error"},
            T0,
            "entered-in-error",
        ),
    ]
    readings = alerts.bp_readings(rows)
    assert len(readings) == 1
    assert (readings[0].systolic, readings[0].diastolic) == (150, 98)
    assert set(readings[0].refs) == {f"Observation/{ids[0]}", f"Observation/{ids[1]}"}


# --------------------------------------------------------------------------
# Weight gain (JSOG 2021 bands by pre-pregnancy BMI)
# --------------------------------------------------------------------------


def kg(day: int, value: str) -> WeightReading:
    return WeightReading(T0 + timedelta(days=day), Decimal(value), (f"Observation/w{day}",))


def gain_episodes(readings: list[WeightReading], *, bmi: str, pre: str = "50") -> list[Any]:
    return alerts.weight_gain_episodes(
        readings, pre_weight=Decimal(pre), pre_bmi=Decimal(bmi), gestation_days=gestation
    )


def test_weight_gain_advice_follows_the_band_of_each_bmi_category() -> None:
    # JSOG 2021: <18.5 12–15 kg, 18.5–25 10–13 kg, 25–30 7–10 kg, ≥30 up to 5 kg.
    cases = [
        ("17.9", "65.5", "64.9"),
        ("21.0", "63.5", "62.9"),
        ("27.0", "60.5", "59.9"),
        ("31.0", "55.5", "54.9"),
    ]
    for bmi, above, within in cases:
        found = gain_episodes([kg(0, above)], bmi=bmi)
        assert [e.kind for e in found] == ["weight-gain-high"], bmi
        assert gain_episodes([kg(0, within)], bmi=bmi) == [], bmi
    # The bands come from the same table the clinic portal reads.
    assert len(weight_gain_bands()) == 4


def test_low_gain_counts_only_from_term() -> None:
    # 26 weeks with 3 kg gained: not (yet) below the range.
    assert gain_episodes([kg(0, "53")], bmi="21.0") == []
    term = (LMP + timedelta(days=37 * 7)) - T0.date()
    found = gain_episodes([kg(term.days, "57")], bmi="21.0")
    assert [e.kind for e in found] == ["weight-gain-low"]


def test_no_advice_without_a_pre_pregnancy_weight_or_bmi() -> None:
    assert (
        alerts.weight_gain_episodes(
            [kg(0, "90")], pre_weight=None, pre_bmi=Decimal("21"), gestation_days=gestation
        )
        == []
    )


def test_a_weight_gain_episode_closes_back_in_the_band_and_reopens_within_seven_days() -> None:
    # BMI 21: upper limit 13 kg over 50 kg. Daily home weights hovering at
    # the limit: one episode, not one per crossing.
    hovering = [kg(0, "63.2"), kg(1, "62.9"), kg(3, "63.1"), kg(5, "62.8")]
    found = gain_episodes(hovering, bmi="21.0")
    assert len(found) == 1
    assert not found[0].active
    assert found[0].end == T0 + timedelta(days=5)
    # Back above more than 7 days later: a new episode.
    found = gain_episodes([*hovering, kg(14, "63.5")], bmi="21.0")
    assert len(found) == 2
    assert found[1].active


# --------------------------------------------------------------------------
# A child's weight-for-age z-score (WHO LMS, vitals.growth)
# --------------------------------------------------------------------------

BIRTH = date(2026, 1, 1)


def who_z(day: date, value: Decimal) -> float | None:
    age = growth.age_on(BIRTH, day)
    score = growth.who_score(growth.WEIGHT, "female", age.chart_months, float(value))
    return None if score is None else score.z


def child_kg(day: date, value: str) -> WeightReading:
    return WeightReading(
        datetime(day.year, day.month, day.day, 1, tzinfo=UTC),
        Decimal(value),
        (f"Observation/{day}",),
    )


def weight_at_z(day: date, z: float) -> str:
    lms = growth.who_lms(growth.WEIGHT, "female", growth.age_on(BIRTH, day).chart_months)
    assert lms is not None
    return f"{lms.value_at(z):.3f}"


def test_a_drop_of_more_than_134_across_a_month_advises_a_consultation() -> None:
    first, second = date(2026, 4, 1), date(2026, 5, 1)
    readings = [
        child_kg(first, weight_at_z(first, 0.5)),
        child_kg(second, weight_at_z(second, -0.9)),
    ]
    found = alerts.growth_episodes(readings, zscore=who_z)
    assert [e.kind for e in found] == ["growth-falter"]
    # The episode starts at the low weight and lists the weight it fell from first.
    assert found[0].start == readings[1].at
    assert found[0].readings == (*readings[0].refs, *readings[1].refs)
    assert found[0].qualifying == readings[1].refs


def test_a_drop_of_134_or_less_or_within_a_month_is_no_alert() -> None:
    first, second = date(2026, 4, 1), date(2026, 5, 1)
    small = [child_kg(first, weight_at_z(first, 0.5)), child_kg(second, weight_at_z(second, -0.8))]
    assert alerts.growth_episodes(small, zscore=who_z) == []
    early = date(2026, 4, 30)  # 29 days: not a month apart
    quick = [child_kg(first, weight_at_z(first, 0.5)), child_kg(early, weight_at_z(early, -1.5))]
    assert alerts.growth_episodes(quick, zscore=who_z) == []


def test_the_growth_episode_closes_when_the_weight_recovers() -> None:
    days = [date(2026, 3, 1), date(2026, 4, 1), date(2026, 5, 1), date(2026, 6, 1)]
    zs = [0.6, -0.9, -1.0, 0.2]
    readings = [child_kg(d, weight_at_z(d, z)) for d, z in zip(days, zs, strict=True)]
    found = alerts.growth_episodes(readings, zscore=who_z)
    assert len(found) == 1
    assert found[0].end == readings[3].at
    assert not found[0].active
    assert found[0].qualifying == (*readings[1].refs, *readings[2].refs)


def test_calendar_months() -> None:
    assert alerts.add_months(date(2026, 1, 31), 1) == date(2026, 2, 28)
    assert alerts.add_months(date(2026, 12, 15), 1) == date(2027, 1, 15)


# --------------------------------------------------------------------------
# The Flag
# --------------------------------------------------------------------------


def test_the_flag_of_an_episode_is_valid_r4_and_lists_its_readings() -> None:
    patient = uuid.uuid4()
    episode = episodes(bp(0, 142, 88), bp(3, 165, 100), now=T0 + timedelta(days=4))[0]
    resource = alerts.flag_resource(patient_id=patient, episode=episode)
    Flag.model_validate(resource)
    assert resource["status"] == "active"
    assert resource["code"]["coding"][0]["code"] == "bp-severe"
    assert alerts.flag_priority(resource) == "PH"
    assert alerts.flag_readings(resource) == list(episode.readings)
    assert resource["period"]["start"].startswith("2026-06-01T09:00:00+09:00")
    assert resource["period"]["end"].startswith("2026-06-11T09:00:00+09:00")
    assert resource["subject"] == {"reference": f"Patient/{patient}"}
    assert alerts.flag_kind(resource) is alerts.KINDS["bp-severe"]
