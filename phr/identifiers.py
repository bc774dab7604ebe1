"""Japanese organization identifiers, validated with their check digits.

- 全国地方公共団体コード (local government code): 6 digits, the last a check
  digit: weights 6,5,4,3,2 on the first five digits, the sum modulo 11,
  and the last digit of (11 - remainder). 前橋市 10201 → 102016.
  (総務省「全国地方公共団体コード」仕様; see docs/dataset.md.)
- 医療機関コード (10 digits, JP Core IdSystem insurance-medical-institution-no):
  prefecture 2 (01–47) + 点数表番号 1 (1 医科, 2 非保険検診施設, 3 歯科,
  4 調剤, 6 訪問看護 — JP Core InsuranceOrganizationCategory)
  + the 7-digit code (郡市区 2 + number 4 + 検証番号 1). The check digit is
  computed over all ten digits with the Luhn rule (weights 2 and 1 from the
  right, digit sums of two-digit products), as on the 処方箋 form.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

MEDICAL_TABLE_NUMBERS = {"1", "2", "3", "4", "6"}

# JP Core names no identifier system for the 6-digit local government code
# (urn:oid:1.2.392.100495.20.3.21 is the 2-digit *prefecture* number), so
# we use our own URI until one is published.
MUNICIPALITY_CODE_SYSTEM = "https://hagukumi.jp/fhir/NamingSystem/local-government-code"
MEDICAL_INSTITUTION_SYSTEM = "http://jpfhir.jp/fhir/core/IdSystem/insurance-medical-institution-no"


def municipality_check_digit(first_five: str) -> str:
    total = sum(int(d) * w for d, w in zip(first_five, (6, 5, 4, 3, 2), strict=True))
    return str((11 - total % 11) % 10)


def validate_municipality_code(value: str) -> None:
    if len(value) != 6 or not value.isascii() or not value.isdigit():
        raise ValidationError(
            _("A local government code has 6 digits (e.g. 102016)."), code="format"
        )
    if not 1 <= int(value[:2]) <= 47:
        raise ValidationError(_("The first two digits must be a prefecture (01–47)."), code="pref")
    if municipality_check_digit(value[:5]) != value[5]:
        raise ValidationError(
            _("The check digit of local government code %(code)s is wrong."),
            code="check_digit",
            params={"code": value},
        )


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        number = int(char)
        if position % 2 == 1:
            number *= 2
            if number > 9:
                number -= 9
        total += number
    return total % 10 == 0


def validate_medical_institution_code(value: str) -> None:
    if len(value) != 10 or not value.isascii() or not value.isdigit():
        raise ValidationError(
            _("A medical institution code has 10 digits (e.g. 1011234567)."), code="format"
        )
    if not 1 <= int(value[:2]) <= 47:
        raise ValidationError(_("The first two digits must be a prefecture (01–47)."), code="pref")
    if value[2] not in MEDICAL_TABLE_NUMBERS:
        raise ValidationError(
            _("The third digit must be a fee-table number (1, 2, 3, 4 or 6)."), code="table"
        )
    if not luhn_valid(value):
        raise ValidationError(
            _("The check digit of medical institution code %(code)s is wrong."),
            code="check_digit",
            params={"code": value},
        )


def with_luhn_digit(first_nine: str) -> str:
    """Complete a 9-digit prefix with its check digit (used by demo data and tests)."""
    for digit in "0123456789":
        if luhn_valid(first_nine + digit):
            return first_nine + digit
    raise AssertionError("unreachable")  # pragma: no cover
