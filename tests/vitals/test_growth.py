"""WHO LMS z-scores and percentiles, the Japanese 2023 bands, and
corrected age (vitals/growth.py).

Published values: WHO Child Growth Standards, weight-for-age BOYS,
z-score table (https://www.who.int/tools/child-growth-standards/standards/
weight-for-age, "wfa_boys_0-to-5-years_zscores"): the -3..+3 SD weights,
rounded to 0.1 kg as WHO prints them, and L/M/S of those rows. Length-
for-age boys at birth (-2 SD 46.1, median 49.9, +2 SD 53.7 cm) and height-
for-age boys at 60 months (-2 SD 100.7, +2 SD 119.2 cm); weight-for-age
girls at 12 months (median 8.9, -2 SD 7.0, +2 SD 11.5 kg).
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from vitals import growth

# month: (L, M, S, [-3, -2, -1, 0, +1, +2, +3 SD] in kg), WHO wfa boys
WHO_WFA_BOYS = {
    0: (0.3487, 3.3464, 0.14602, [2.1, 2.5, 2.9, 3.3, 3.9, 4.4, 5.0]),
    6: (0.1257, 7.9340, 0.10958, [5.7, 6.4, 7.1, 7.9, 8.8, 9.8, 10.9]),
    12: (0.0644, 9.6479, 0.10925, [6.9, 7.7, 8.6, 9.6, 10.8, 12.0, 13.3]),
    24: (-0.0137, 12.1515, 0.11426, [8.6, 9.7, 10.8, 12.2, 13.6, 15.3, 17.1]),
    60: (-0.1506, 18.3366, 0.13517, [12.4, 14.1, 16.0, 18.3, 21.0, 24.2, 27.9]),
}


@pytest.mark.parametrize("month", sorted(WHO_WFA_BOYS))
def test_the_lms_rows_are_whos(month: int) -> None:
    L, M, S, _ = WHO_WFA_BOYS[month]
    lms = growth.who_lms(growth.WEIGHT, "male", month)
    assert lms is not None
    assert pytest.approx((L, M, S), abs=1e-4) == (lms.L, lms.M, lms.S)


@pytest.mark.parametrize("month", sorted(WHO_WFA_BOYS))
def test_sd_lines_match_whos_published_weights(month: int) -> None:
    lms = growth.who_lms(growth.WEIGHT, "M", month)
    assert lms is not None
    published = WHO_WFA_BOYS[month][3]
    assert [round(lms.value_at(z), 1) for z in (-3, -2, -1, 0, 1, 2, 3)] == published


@pytest.mark.parametrize("month", sorted(WHO_WFA_BOYS))
def test_z_of_the_published_weights_is_their_sd_line(month: int) -> None:
    published = WHO_WFA_BOYS[month][3]
    for sd, weight in zip((-3, -2, -1, 0, 1, 2, 3), published, strict=True):
        score = growth.who_score(growth.WEIGHT, "M", month, weight)
        assert score is not None
        # the published weights are rounded to 0.1 kg: within 0.1 kg of the line
        assert score.z == pytest.approx(sd, abs=0.2), (month, weight)
    median = growth.who_score(growth.WEIGHT, "M", month, WHO_WFA_BOYS[month][1])
    assert median is not None
    assert median.z == pytest.approx(0, abs=1e-9)
    assert median.percentile == pytest.approx(50)


def test_weight_beyond_3_sd_uses_whos_restricted_tail() -> None:
    L, M, S, _ = WHO_WFA_BOYS[0]

    def at(z: float) -> float:
        return M * (1 + L * S * z) ** (1 / L)

    sd3, sd2, sd3neg, sd2neg = at(3), at(2), at(-3), at(-2)
    high = growth.who_score(growth.WEIGHT, "M", 0, 5.6)
    low = growth.who_score(growth.WEIGHT, "M", 0, 1.8)
    assert high is not None
    assert low is not None
    assert high.z == pytest.approx(3 + (5.6 - sd3) / (sd3 - sd2), abs=1e-9)
    assert low.z == pytest.approx(-3 + (1.8 - sd3neg) / (sd2neg - sd3neg), abs=1e-9)
    # the plain LMS formula would give other numbers out there
    plain = growth.LMS(L, M, S).z_of(5.6)
    assert abs(plain - high.z) > 0.05
    # inside ±3 SD the restricted and the plain formula agree
    assert growth.LMS(L, M, S).z_of(4.0, restricted=True) == growth.LMS(L, M, S).z_of(4.0)


def test_length_and_height_for_age_use_lms_as_is() -> None:
    birth = growth.who_lms(growth.LENGTH, "M", 0)
    at_five = growth.who_lms(growth.LENGTH, "M", 60)
    assert birth is not None
    assert at_five is not None
    assert [round(birth.value_at(z), 1) for z in (-2, 0, 2)] == [46.1, 49.9, 53.7]
    assert [round(at_five.value_at(z), 1) for z in (-2, 2)] == [100.7, 119.2]
    score = growth.who_score(growth.LENGTH, "M", 0, 40.0)
    assert score is not None
    assert score.z == pytest.approx((40.0 / birth.M - 1) / birth.S, abs=1e-6)  # L = 1


def test_girls_have_their_own_table() -> None:
    lms = growth.who_lms(growth.WEIGHT, "female", 12)
    assert lms is not None
    assert [round(lms.value_at(z), 1) for z in (-2, 0, 2)] == [7.0, 8.9, 11.5]


def test_between_months_the_lms_is_interpolated() -> None:
    six, seven = growth.who_lms(growth.WEIGHT, "M", 6), growth.who_lms(growth.WEIGHT, "M", 7)
    half = growth.who_lms(growth.WEIGHT, "M", 6.5)
    assert six
    assert seven
    assert half
    assert pytest.approx((six.M + seven.M) / 2) == half.M


def test_no_who_score_beyond_60_months_or_for_head() -> None:
    assert growth.who_score(growth.WEIGHT, "M", 61, 19.0) is None
    assert growth.who_score(growth.HEAD, "M", 6, 43.0) is None
    with pytest.raises(ValueError, match="no reference for sex"):
        growth.who_score(growth.WEIGHT, "", 6, 8.0)


@pytest.mark.parametrize(
    ("percentile", "z"),
    [(3, -1.8808), (10, -1.2816), (25, -0.6745), (50, 0.0), (75, 0.6745), (90, 1.2816),
     (97, 1.8808)],
)  # fmt: skip
def test_percentile_and_z_convert_both_ways(percentile: float, z: float) -> None:
    assert growth.z_from_percentile(percentile) == pytest.approx(z, abs=1e-4)
    assert growth.percentile_from_z(z) == pytest.approx(percentile, abs=1e-3)


def test_the_who_p3_and_p97_columns_are_the_lms_curves() -> None:
    # the file's computed p3/p97 (boys, 6 months: 6.44, 9.72)
    p3, p97 = (dict(growth.who_curve(growth.WEIGHT, "M", p))[6.0] for p in (3, 97))
    assert round(p3, 2) == 6.44
    assert round(p97, 2) == 9.72


def test_japanese_bands_place_a_measurement() -> None:
    bands = growth.jp_bands(growth.WEIGHT, "M")
    assert (bands[0].start, bands[0].width, bands[0].p3, bands[0].p97) == (0, 0, 2.3, 3.8)
    assert bands[1].at == 1.5  # 1～2月未満, drawn at its middle
    assert growth.jp_position(growth.WEIGHT, "M", 0, 2.0) == "below"
    assert growth.jp_position(growth.WEIGHT, "M", 0, 3.1) == "within"
    assert growth.jp_position(growth.WEIGHT, "M", 0, 4.2) == "above"
    assert growth.jp_position(growth.HEAD, "M", 0, 33.0) is None
    assert growth.jp_bands(growth.HEAD, "M") == []


# --------------------------------------------------------------------------
# Corrected age
# --------------------------------------------------------------------------

BIRTH = date(2026, 1, 10)


def test_born_at_32_weeks_is_corrected_by_8_weeks() -> None:
    on = BIRTH + timedelta(days=120)
    age = growth.age_on(BIRTH, on, gestational_days_at_birth=32 * 7)
    assert age.corrected
    assert age.days == 120
    assert age.chart_days == 120 - 56  # 40 weeks − 32 weeks = 8 weeks


def test_born_at_28_weeks_3_days() -> None:
    age = growth.age_on(BIRTH, BIRTH + timedelta(days=60), gestational_days_at_birth=28 * 7 + 3)
    assert age.chart_days == 60 - (280 - 199)  # 81 days early
    assert age.chart_days < 0  # before term: plotted left of 0


def test_born_at_or_after_37_weeks_is_not_corrected() -> None:
    for weeks in (37, 39, 41):
        age = growth.age_on(BIRTH, BIRTH + timedelta(days=90), gestational_days_at_birth=weeks * 7)
        assert not age.corrected
        assert age.chart_days == 90
    just_preterm = growth.age_on(BIRTH, BIRTH + timedelta(days=90),
                                 gestational_days_at_birth=36 * 7 + 6)  # fmt: skip
    assert just_preterm.corrected
    assert just_preterm.chart_days == 90 - 22


def test_unknown_gestation_is_not_corrected() -> None:
    age = growth.age_on(BIRTH, BIRTH + timedelta(days=90), gestational_days_at_birth=None)
    assert not age.corrected


def test_correction_stops_at_24_months() -> None:
    two_years = round(24 * growth.DAYS_PER_MONTH)
    before = growth.age_on(BIRTH, BIRTH + timedelta(days=two_years - 2),
                           gestational_days_at_birth=30 * 7)  # fmt: skip
    after = growth.age_on(BIRTH, BIRTH + timedelta(days=two_years + 1),
                          gestational_days_at_birth=30 * 7)  # fmt: skip
    assert before.corrected
    assert before.chart_days == two_years - 2 - 70
    assert not after.corrected
    assert after.chart_days == two_years + 1


def test_months_are_average_months() -> None:
    assert growth.months_of(365.25) == pytest.approx(12)
