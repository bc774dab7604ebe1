"""Organization codes are validated with their check digits."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from hypothesis import given
from hypothesis import strategies as st

from phr.identifiers import (
    luhn_valid,
    municipality_check_digit,
    validate_medical_institution_code,
    validate_municipality_code,
    with_luhn_digit,
)


@pytest.mark.parametrize(
    "code",
    [
        "102016",  # 前橋市
        "131016",  # 千代田区
        "011002",  # 札幌市
        "271004",  # 大阪市
    ],
)
def test_it_accepts_real_local_government_codes(code: str) -> None:
    validate_municipality_code(code)


@pytest.mark.parametrize("code", ["102017", "10201", "1020166", "ABCDEF", "４０２０１６", "992016"])
def test_it_rejects_wrong_local_government_codes(code: str) -> None:
    with pytest.raises(ValidationError):
        validate_municipality_code(code)


def test_it_accepts_a_medical_institution_code_from_a_prescription() -> None:
    # 0110113719: the example printed in references on 処方箋 codes.
    validate_medical_institution_code("0110113719")


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("0110113718", "check_digit"),
        ("4810113719", "pref"),
        ("0150113719", "table"),
        ("011011371", "format"),
    ],
)
def test_it_rejects_wrong_medical_institution_codes(code: str, reason: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_medical_institution_code(code)
    assert info.value.code == reason


@given(st.from_regex(r"\A[0-9]{5}\Z"))
def test_every_prefix_has_exactly_one_valid_check_digit(first_five: str) -> None:
    valid = [d for d in "0123456789" if municipality_check_digit(first_five) == d]
    assert len(valid) == 1


@given(st.from_regex(r"\A[0-9]{9}\Z"), st.integers(min_value=1, max_value=9))
def test_a_single_digit_error_breaks_the_luhn_check(prefix: str, delta: int) -> None:
    code = with_luhn_digit(prefix)
    assert luhn_valid(code)
    broken = code[:4] + str((int(code[4]) + delta) % 10) + code[5:]
    assert not luhn_valid(broken)
