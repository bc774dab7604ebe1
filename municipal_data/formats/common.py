"""What the municipal formats share: the person columns, their parsers,
the row-level checks every format makes, and the FHIR building blocks.

Every format's file has the same person part (docs/formats/README.md):
the change flag (異動区分), the municipality code (市町村コード) and the
resident number (宛名番号) that identify the row's person, the person's
names, kana, birth date and sex, optionally the mother, and optionally
where the family lived before moving in. A format adds its own columns,
then calls `check_common` and `person` from its `to_record`.

The FHIR resources are built the way phr/demo.py builds the demo family's
checkups and vaccinations (the family timeline and the emergency summary
read exactly these shapes): a data-category tag in meta.tag, the
dictionary's coding (docs/dataset.md) first, UCUM quantities, and a
reference "Patient/<id>" in subject / patient.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from django.utils import timezone

from municipal_data.records import Change, Person
from phr import terminology
from phr.identifiers import (
    MEDICAL_INSTITUTION_SYSTEM,
    MUNICIPALITY_CODE_SYSTEM,
    luhn_valid,
    municipality_check_digit,
)
from phr.tabular import Column, FieldError, Row, change_flag, date_between, header_key, sex
from phr.terminology import CATEGORY_SYSTEM, UCUM

# --------------------------------------------------------------------------
# Code systems (documented in docs/formats/codesystems.md). The first four
# are the ones phr/demo.py writes; tests check they stay the same.
# --------------------------------------------------------------------------

CHECKUP_TYPE_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/infant-checkup"
JUDGEMENT_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/checkup-judgement"
VACCINE_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/vaccine"
EPISODE_TYPE_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/episode-type"
URINE_DIPSTICK_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/urine-dipstick"
SCHOOL_CHECKUP_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/school-checkup"
SCHOOL_GRADE_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/school-grade"
VISION_CLASS_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/school-vision"

OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
# JP Core body measurement codes (MEDIS 看護実践用語標準マスター), verified in
# ../shared/reference/data/jp_core_reference.csv; added beside LOINC, which
# the dictionary indexes (as phr/demo.py does).
JP_BODY_MEASUREMENT = "http://jpfhir.jp/fhir/core/CodeSystem/JP_ObservationBodyMeasurementCode_CS"
JP_BODY_CODES = {
    "body_weight": ("31000296", "体重(kg)"),
    "body_height": ("31000298", "身長"),
    "body_length": ("31000298", "身長"),
    "chest_circumference": ("31000299", "胸囲"),
    "head_circumference": ("31006116", "頭囲"),
    "birth_weight": ("31002900", "出生体重"),
}

EARLIEST = date(1900, 1, 1)
# A date that cannot lie in the future (a birth, a checkup, a dose), in Japan.
past_date = date_between(EARLIEST, timezone.localdate)


def today() -> date:
    return timezone.localdate()


# --------------------------------------------------------------------------
# Parsers of the person columns
# --------------------------------------------------------------------------


def municipality_code(value: str) -> str:
    """全国地方公共団体コード: 6 digits, the last a check digit (phr.identifiers)."""
    if not re.fullmatch(r"\d{6}", value):
        raise FieldError(
            "municipality_code",
            f"市町村コード「{value}」は6桁の数字ではありません"
            "（全国地方公共団体コード、例: 102016）",
            f"municipality code {value!r} is not 6 digits (the local government code, e.g. 102016)",
        )
    if not 1 <= int(value[:2]) <= 47:
        raise FieldError(
            "municipality_code",
            f"市町村コード「{value}」の先頭2桁が都道府県番号（01〜47）ではありません",
            f"municipality code {value}: the first two digits are not a prefecture (01–47)",
        )
    expected = municipality_check_digit(value[:5])
    if value[5] != expected:
        raise FieldError(
            "check_digit",
            f"市町村コード「{value}」の検査数字が違います（{value[:5]}の検査数字は{expected}）",
            f"municipality code {value}: wrong check digit (it is {expected} for {value[:5]})",
        )
    return value


def resident_number(value: str) -> str:
    """宛名番号: the municipality's own number of a resident. Kept as written
    (leading zeros count), letters upper-cased."""
    if not re.fullmatch(r"[0-9A-Za-z-]{1,20}", value):
        raise FieldError(
            "resident_number",
            f"宛名番号「{value}」には英数字とハイフン（20文字まで）だけが使えます",
            f"resident number {value!r}: only letters, digits and hyphens (at most 20)",
        )
    return value.upper()


def handbook_number(value: str) -> str:
    """母子健康手帳番号: each municipality numbers its own handbooks
    (e.g. 102016-2025-00187); letters, digits and hyphens."""
    if not re.fullmatch(r"[0-9A-Za-z][0-9A-Za-z-]{0,29}", value):
        raise FieldError(
            "handbook_number",
            f"母子健康手帳番号「{value}」には英数字とハイフン（30文字まで）だけが使えます",
            f"MCH handbook number {value!r}: only letters, digits and hyphens (at most 30)",
        )
    return value.upper()


def medical_institution_code(value: str) -> str:
    """医療機関コード (10 digits; phr.identifiers.validate_medical_institution_code)."""
    if not re.fullmatch(r"\d{10}", value):
        raise FieldError(
            "institution_code",
            f"医療機関コード「{value}」は10桁の数字ではありません"
            "（都道府県2桁＋点数表1桁＋医療機関コード7桁）",
            f"medical institution code {value!r} is not 10 digits "
            "(prefecture 2 + fee table 1 + institution code 7)",
        )
    if not 1 <= int(value[:2]) <= 47:
        raise FieldError(
            "institution_code",
            f"医療機関コード「{value}」の先頭2桁が都道府県番号（01〜47）ではありません",
            f"medical institution code {value}: the first two digits are not a prefecture",
        )
    if value[2] not in "12346":
        raise FieldError(
            "institution_code",
            f"医療機関コード「{value}」の3桁目が点数表番号（1・2・3・4・6）ではありません",
            f"medical institution code {value}: the third digit is not a fee table "
            "(1, 2, 3, 4 or 6)",
        )
    if not luhn_valid(value):
        raise FieldError(
            "check_digit",
            f"医療機関コード「{value}」の検証番号（最後の桁）が違います",
            f"medical institution code {value}: wrong check digit (the last digit)",
        )
    return value


def person_name(value: str) -> str:
    if len(value) > 50:
        raise FieldError("too_long", "氏名が50文字を超えています", "a name over 50 characters")
    if re.search(r"[0-9<>{}\[\]=;@#$%^*|\\]", value):
        raise FieldError(
            "name",
            f"氏名「{value}」に数字や記号が入っています",
            f"the name {value!r} contains digits or symbols",
        )
    return value


_HIRAGANA = re.compile("[ぁ-ゖ]")
_KANA = re.compile(r"[ァ-ヺー・ ]+")


def kana(value: str) -> str:
    """カナ氏名: katakana (hiragana is accepted and turned into katakana;
    half-width katakana were made full-width when the cell was read)."""
    value = _HIRAGANA.sub(lambda m: chr(ord(m.group()) + 0x60), value)
    if len(value) > 50 or not _KANA.fullmatch(value):
        raise FieldError(
            "kana",
            f"カナ氏名「{value}」はカタカナで書いてください",
            f"the kana name {value!r} must be written in katakana",
        )
    return value


# --------------------------------------------------------------------------
# Coded values shared by several formats
# --------------------------------------------------------------------------

# 所見なし / 所見あり: the MHLW standard records each finding this way
# (standards.md §2, 2024-02-02 proposal; Aichi manual: 1 所見なし, 2 所見あり).
FINDING_CODES = {
    "no-findings": ("所見なし", "No findings"),
    "findings": ("所見あり", "Findings"),
}
_FINDING_SPELLINGS = {
    "no-findings": ("1", "所見なし", "異常なし", "なし", "無", "正常", "問題なし", "-", "no"),
    "findings": ("2", "所見あり", "異常あり", "あり", "有", "要精検", "+", "yes"),
}


def _lookup(spellings: dict[str, Sequence[str]]) -> dict[str, str]:
    """Spellings compared as header_key() compares headers; a spelling that
    header_key() would empty ("-") is kept as written."""
    table: dict[str, str] = {}
    for code, words in spellings.items():
        for word in (code, *words):
            table[header_key(word) or word] = code
    return table


_FINDING_LOOKUP = _lookup(_FINDING_SPELLINGS)


def finding(value: str) -> str:
    code = _FINDING_LOOKUP.get(header_key(value) or value)
    if code is None:
        raise FieldError(
            "choice",
            f"「{value}」は所見として使えません（1 所見なし、2 所見あり）",
            f"{value!r} is not a finding (1 no findings, 2 findings)",
        )
    return code


# Urine test strip: −, ±, 1+ … (standards.md §2: 検尿(蛋白・糖・潜血: −/±/+…)).
DIPSTICK_CODES = {
    "negative": ("−", "Negative"),
    "trace": ("±", "Trace"),
    "1+": ("1+", "1+"),
    "2+": ("2+", "2+"),
    "3+": ("3+", "3+"),
    "4+": ("4+", "4+"),
}
_DIPSTICK_SPELLINGS = {
    "negative": ("-", "−", "ー", "(-)", "(−)", "陰性", "マイナス", "neg", "negative", "0"),
    "trace": ("±", "+-", "(±)", "擬陽性", "偽陽性", "trace", "tr"),
    "1+": ("+", "1+", "(+)", "+1", "陽性"),
    "2+": ("++", "2+", "(2+)", "+2"),
    "3+": ("+++", "3+", "(3+)", "+3"),
    "4+": ("++++", "4+", "(4+)", "+4"),
}
_DIPSTICK_LOOKUP = {
    re.sub(r"\s", "", word): code
    for code, words in _DIPSTICK_SPELLINGS.items()
    for word in (code, *words)
}


def dipstick(value: str) -> str:
    code = _DIPSTICK_LOOKUP.get(re.sub(r"\s", "", value).replace("－", "-"))
    if code is None:
        raise FieldError(
            "dipstick",
            f"「{value}」は尿検査の結果として読めません（−、±、1+、2+、3+、4+）",
            f"{value!r} is not a urine test strip result (−, ±, 1+, 2+, 3+, 4+)",
        )
    return code


def coded(system: str, code: str, table: dict[str, tuple[str, str]]) -> dict[str, Any]:
    display = table[code][0]
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


# --------------------------------------------------------------------------
# The person columns
# --------------------------------------------------------------------------


CHILD_EXAMPLE = ("前橋", "陽翔", "マエバシ", "ハルト")
MOTHER_EXAMPLE = ("前橋", "花子", "マエバシ", "ハナコ")


def name_columns(
    prefix: str, who_ja: str, who_en: str, example: tuple[str, str, str, str]
) -> tuple[Column, ...]:
    """The name columns of a person: family and given name, or one full
    name; the same in katakana. `prefix` "mother_" for the mother's."""
    p = prefix
    ja = who_ja
    alt = ("母", "母親") if prefix else ("",)
    family, given, family_kana, given_kana = example
    return (
        Column(
            f"{p}family_name",
            f"{ja}氏名（姓）",
            person_name,
            name=True,
            aliases=tuple(f"{a}{s}" for a in alt for s in ("姓", "氏", "氏名姓")),
            en=f"{who_en}family name",
            example=family,
        ),
        Column(
            f"{p}given_name",
            f"{ja}氏名（名）",
            person_name,
            name=True,
            aliases=tuple(f"{a}{s}" for a in alt for s in ("名", "氏名名")),
            en=f"{who_en}given name",
            example=given,
        ),
        Column(
            f"{p}name",
            f"{ja}氏名",
            person_name,
            name=True,
            aliases=tuple(f"{a}{s}" for a in alt for s in ("氏名", "名前")) if prefix else (),
            en=f"{who_en}full name, family and given name separated by a space "
            "(instead of the two name columns)",
            example=f"{family} {given}",
        ),
        Column(
            f"{p}family_kana",
            f"{ja}カナ氏名（姓）",
            kana,
            aliases=tuple(
                f"{a}{s}"
                for a in alt
                for s in ("カナ姓", "フリガナ姓", "氏名カナ姓", "セイ", "ふりがな姓")
            ),
            en=f"{who_en}family name in katakana",
            example=family_kana,
        ),
        Column(
            f"{p}given_kana",
            f"{ja}カナ氏名（名）",
            kana,
            aliases=tuple(
                f"{a}{s}"
                for a in alt
                for s in ("カナ名", "フリガナ名", "氏名カナ名", "メイ", "ふりがな名")
            ),
            en=f"{who_en}given name in katakana",
            example=given_kana,
        ),
        Column(
            f"{p}kana",
            f"{ja}カナ氏名",
            kana,
            aliases=tuple(
                f"{a}{s}" for a in alt for s in ("フリガナ", "氏名カナ", "カナ", "ふりがな")
            ),
            en=f"{who_en}full name in katakana, separated by a space "
            "(instead of the two kana columns)",
            example=f"{family_kana} {given_kana}",
        ),
    )


CHANGE = Column(
    "change",
    "異動区分",
    change_flag,
    aliases=("更新区分", "処理区分", "change_flag"),
    en="1 add / 2 update / 3 delete (empty = add)",
    example="1",
)
MUNICIPALITY = Column(
    "municipality_code",
    "市町村コード",
    municipality_code,
    required=True,
    required_header=True,
    aliases=("全国地方公共団体コード", "地方公共団体コード", "自治体コード", "団体コード"),
    en="local government code of the municipality that holds the record (6 digits)",
    example="102016",
)
RESIDENT = Column(
    "resident_number",
    "宛名番号",
    resident_number,
    required=True,
    required_header=True,
    aliases=("宛名コード", "住民コード", "個人宛名番号"),
    en="the person's resident number at that municipality",
    example="0001234575",
)
BIRTH_DATE = Column(
    "birth_date",
    "生年月日",
    past_date,
    aliases=("生年月日西暦", "birthdate"),
    en="birth date",
    example="2024-03-05",
)
SEX = Column("sex", "性別", sex, en="1 male / 2 female (男, 女, M, F)", example="1")
CHILD_HANDBOOK = Column(
    "mch_handbook_number",
    "母子健康手帳番号",
    handbook_number,
    aliases=("母子手帳番号", "母子健康手帳交付番号"),
    en="number of the child's MCH handbook (the one issued for this pregnancy)",
    example="102016-2023-00451",
)

MOVE_COLUMNS = (
    Column(
        "previous_municipality_code",
        "転入前市町村コード",
        municipality_code,
        aliases=("前住所地市町村コード", "転出元市町村コード", "転入元市町村コード"),
        en="for a family that moved in: the previous municipality's code",
        example="102024",
    ),
    Column(
        "previous_resident_number",
        "転入前宛名番号",
        resident_number,
        aliases=("前住所地宛名番号", "転出元宛名番号", "転入元宛名番号"),
        en="the resident number at the previous municipality",
        example="2000456",
    ),
    Column(
        "moved_in",
        "転入日",
        past_date,
        aliases=("転入年月日",),
        en="the day the family moved in",
        example="2024-09-01",
    ),
)

CHILD_COLUMNS = (
    CHANGE,
    MUNICIPALITY,
    RESIDENT,
    *name_columns("", "", "", CHILD_EXAMPLE),
    BIRTH_DATE,
    SEX,
)

MOTHER_COLUMNS = (
    Column(
        "mother_resident_number",
        "母の宛名番号",
        resident_number,
        aliases=("母宛名番号", "母親宛名番号", "母親の宛名番号"),
        en="the mother's resident number (at the same municipality)",
        example="0001234567",
    ),
    *name_columns("mother_", "母の", "the mother's ", MOTHER_EXAMPLE),
    Column(
        "mother_birth_date",
        "母の生年月日",
        past_date,
        aliases=("母生年月日", "母親生年月日", "母親の生年月日"),
        en="the mother's birth date",
        example="1992-06-12",
    ),
)


# --------------------------------------------------------------------------
# Row checks
# --------------------------------------------------------------------------


def columns_by_key(columns: Iterable[Column]) -> dict[str, Column]:
    return {c.key: c for c in columns}


def has_error(row: Row, key: str) -> bool:
    header = row.header_of(key)
    return any(e.column == header for e in row.errors)


def label(columns: dict[str, Column], key: str) -> tuple[str, str]:
    """A column's name for messages: its Japanese header and its English
    key in words ("birth_date" → "birth date")."""
    column = columns.get(key)
    english = key.replace("_", " ")
    return (column.ja, english) if column else (key, english)


def require(
    row: Row, columns: dict[str, Column], keys: Iterable[str], why_ja: str, why_en: str
) -> None:
    """Each of `keys` must be filled (unless its cell already has an error)."""
    for key in keys:
        if row.values.get(key) is None and not has_error(row, key):
            ja, en = label(columns, key)
            row.error(
                key,
                "required",
                f"「{ja}」が空です（{why_ja}）",
                f"{en} is empty ({why_en})",
            )


ADD_REQUIRED_JA = "新規・変更の行では必須です"
ADD_REQUIRED_EN = "required on an add or update row"


def change_of(row: Row) -> Change:
    change = row.values.get("change")
    return change if change in ("add", "update", "delete") else "add"


def check_municipality(row: Row, uploading: str) -> None:
    code = row.values.get("municipality_code")
    if code is not None and code != uploading:
        row.error(
            "municipality_code",
            "other_municipality",
            f"市町村コード {code} の行です。"
            f"アップロードした市町村（{uploading}）の行ではありません",
            f"a row of municipality {code}, not of the uploading municipality ({uploading})",
        )


def check_not_before_birth(
    row: Row, columns: dict[str, Column], key: str, birth: date | None
) -> None:
    day = row.values.get(key)
    if birth is not None and day is not None and day < birth:
        ja, en = label(columns, key)
        row.error(
            key,
            "before_birth",
            f"{ja} {day.isoformat()} が生年月日 {birth.isoformat()} より前です",
            f"{en} {day.isoformat()} is before the birth date {birth.isoformat()}",
        )


@dataclass(frozen=True)
class Names:
    family: str
    given: str


def names(row: Row, columns: dict[str, Column], prefix: str, *, required: bool) -> Names | None:
    """The person's family and given name, from the two name columns or the
    full-name column (split at its first space); errors when `required` and
    missing. The same for kana (never required)."""
    family = row.values.get(f"{prefix}family_name")
    given = row.values.get(f"{prefix}given_name")
    full = row.values.get(f"{prefix}name")
    if family is None and given is None and full is not None:
        parts = full.split(" ", 1)
        if len(parts) != 2:
            row.error(
                f"{prefix}name",
                "name_split",
                f"氏名「{full}」の姓と名の間に空白を入れてください",
                f"put a space between the family and the given name in {full!r}",
            )
            return None
        family, given = parts
    if required:
        if family is None and given is None and full is None:
            missing = [f"{prefix}family_name", f"{prefix}given_name"]
            if any(has_error(row, k) for k in (*missing, f"{prefix}name")):
                return None
            ja, _ = label(columns, f"{prefix}name")
            # Reported on the name column the file has (the one-cell name, or the family name).
            one_cell = f"{prefix}name" in row.headers and missing[0] not in row.headers
            row.error(
                f"{prefix}name" if one_cell else missing[0],
                "required",
                f"「{ja}」が空です（{ADD_REQUIRED_JA}）",
                f"the {prefix.replace('_', ' ')}name is empty ({ADD_REQUIRED_EN})",
            )
            return None
        require(
            row,
            columns,
            [
                k
                for k, v in ((f"{prefix}family_name", family), (f"{prefix}given_name", given))
                if v is None
            ],
            ADD_REQUIRED_JA,
            ADD_REQUIRED_EN,
        )
    if family is None or given is None:
        return None
    return Names(family, given)


def kana_names(row: Row, prefix: str) -> Names:
    family = row.values.get(f"{prefix}family_kana")
    given = row.values.get(f"{prefix}given_kana")
    full = row.values.get(f"{prefix}kana")
    if family is None and given is None and full is not None:
        parts = full.split(" ", 1)
        if len(parts) != 2:
            row.error(
                f"{prefix}kana",
                "name_split",
                f"カナ氏名「{full}」の姓と名の間に空白を入れてください",
                f"put a space between the family and the given name in {full!r}",
            )
            return Names("", "")
        family, given = parts
    return Names(family or "", given or "")


def check_move(row: Row, columns: dict[str, Column], uploading: str) -> None:
    previous = row.values.get("previous_municipality_code")
    number = row.values.get("previous_resident_number")
    if number is not None and previous is None and not has_error(row, "previous_municipality_code"):
        row.error(
            "previous_municipality_code",
            "required",
            "転入前宛名番号があるときは転入前市町村コードも必要です",
            "a previous resident number needs the previous municipality code",
        )
    if previous is not None and previous == uploading:
        row.error(
            "previous_municipality_code",
            "same_municipality",
            f"転入前市町村コード {previous} がアップロードした市町村と同じです",
            f"the previous municipality code {previous} is the uploading municipality itself",
        )
    check_not_before_birth(row, columns, "moved_in", row.values.get("birth_date"))


@dataclass(frozen=True)
class Common:
    """What check_common read from the person part of a row."""

    change: Change
    names: Names | None
    kana: Names
    mother_names: Names | None = None
    mother_kana: Names = Names("", "")


def check_common(
    row: Row,
    columns: dict[str, Column],
    uploading: str,
    *,
    child: bool,
    mother_columns: bool,
) -> Common:
    """The checks every format makes on the person part of a row: the
    municipality, the required identity cells of an add/update row, the
    mother, the move."""
    check_municipality(row, uploading)
    change = change_of(row)
    deleting = change == "delete"
    person_names = names(row, columns, "", required=not deleting)
    person_kana = kana_names(row, "")
    mother_names, mother_kana = None, Names("", "")
    if not deleting:
        require(
            row,
            columns,
            ["birth_date", "sex"] if child else ["birth_date"],
            ADD_REQUIRED_JA,
            ADD_REQUIRED_EN,
        )
        check_move(row, columns, uploading)
        if mother_columns:
            mother_names, mother_kana = check_mother(row, columns)
    return Common(change, person_names, person_kana, mother_names, mother_kana)


MOTHER_KEYS = tuple(c.key for c in MOTHER_COLUMNS)


def check_mother(row: Row, columns: dict[str, Column]) -> tuple[Names | None, Names]:
    given = [k for k in MOTHER_KEYS if row.values.get(k) is not None or has_error(row, k)]
    if not given:
        return None, Names("", "")
    if row.values.get("mother_resident_number") is None:
        if not has_error(row, "mother_resident_number"):
            row.error(
                "mother_resident_number",
                "required",
                "母の情報があるときは母の宛名番号が必要です",
                "the mother's resident number is needed when the row names the mother",
            )
        return None, Names("", "")
    mother_names = names(row, columns, "mother_", required=True)
    mother_kana = kana_names(row, "mother_")
    mother_birth = row.values.get("mother_birth_date")
    child_birth = row.values.get("birth_date")
    if mother_birth is not None and child_birth is not None:
        age = years_between(mother_birth, child_birth)
        if not 10 <= age <= 60:
            row.error(
                "mother_birth_date",
                "mother_age",
                f"母の生年月日 {mother_birth.isoformat()} では出産時{age}歳になります"
                "（10〜60歳の範囲外）",
                f"the mother's birth date {mother_birth.isoformat()} makes her {age} at the "
                "child's birth (outside 10–60)",
            )
    if row.values.get("mother_resident_number") == row.values.get("resident_number"):
        row.error(
            "mother_resident_number",
            "same_person",
            "母の宛名番号が本人の宛名番号と同じです",
            "the mother's resident number is the child's own",
        )
    return mother_names, mother_kana


def person(
    row: Row,
    kind: str,
    uploading: str,
    common: Common,
    *,
    handbook: str = "",
    sex_default: str | None = None,
) -> Person:
    person_names, person_kana = common.names, common.kana
    return Person(
        kind=kind,  # type: ignore[arg-type]
        municipality_code=uploading,
        resident_number=row.values["resident_number"],
        family=person_names.family if person_names else "",
        given=person_names.given if person_names else "",
        family_kana=person_kana.family,
        given_kana=person_kana.given,
        birth_date=row.values.get("birth_date"),
        sex=row.values.get("sex") or sex_default,
        mch_handbook_number=handbook,
        previous_municipality_code=row.values.get("previous_municipality_code") or "",
        previous_resident_number=row.values.get("previous_resident_number") or "",
        moved_in=row.values.get("moved_in"),
    )


def mother(row: Row, uploading: str, common: Common) -> Person | None:
    number = row.values.get("mother_resident_number")
    if number is None or common.change == "delete":
        return None
    mother_names = common.mother_names
    return Person(
        kind="mother",
        municipality_code=uploading,
        resident_number=number,
        family=mother_names.family if mother_names else "",
        given=mother_names.given if mother_names else "",
        family_kana=common.mother_kana.family,
        given_kana=common.mother_kana.given,
        birth_date=row.values.get("mother_birth_date"),
        sex="female",
    )


# --------------------------------------------------------------------------
# Dates and ages
# --------------------------------------------------------------------------


def months_between(birth: date, day: date) -> int:
    """Completed months of age on `day` (満月齢): a month is complete on the
    day of the month of the birth (or the month's last day)."""
    months = (day.year - birth.year) * 12 + day.month - birth.month
    if day.day < birth.day and not _last_day_of_month(day):
        months -= 1
    return months


def years_between(birth: date, day: date) -> int:
    return months_between(birth, day) // 12


def _last_day_of_month(day: date) -> bool:
    return (day + timedelta(days=1)).month != day.month


def fiscal_year(day: date) -> int:
    """The Japanese school and fiscal year (April–March) a day belongs to."""
    return day.year if day.month >= 4 else day.year - 1


# --------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------


def measurement(
    label_ja: str, label_en: str, unit: str, minimum: str, maximum: str, places: int = 1
) -> Any:
    """A number in `unit` inside the dictionary's range (docs/dataset.md),
    with a message that names the value and the unit."""
    low, high = Decimal(minimum), Decimal(maximum)

    def parse(value: str) -> Decimal:
        text = re.sub(r"\s*(kg|cm|g|週|w)$", "", value.replace(",", ""), flags=re.IGNORECASE)
        if not re.fullmatch(r"\d{1,6}(\.\d+)?|\.\d+", text):
            raise FieldError(
                "number",
                f"{label_ja}「{value}」は数値ではありません（単位 {unit}）",
                f"{label_en} {value!r} is not a number (in {unit})",
            )
        number = Decimal(text)
        if -number.as_tuple().exponent > places:  # type: ignore[operator]
            if places == 0:
                raise FieldError(
                    "number_places",
                    f"{label_ja}「{text}」は{unit}単位の整数で書いてください",
                    f"{label_en} {text}: write a whole number of {unit}",
                )
            raise FieldError(
                "number_places",
                f"{label_ja} {text} {unit}: 小数点以下は{places}桁までです",
                f"{label_en} {text} {unit}: at most {places} decimal places",
            )
        if not low <= number <= high:
            raise FieldError(
                "range",
                f"{label_ja} {text} {unit} はありえない値です（{low}〜{high} {unit}）",
                f"{label_en} {text} {unit} is impossible (accepted {low}–{high} {unit})",
            )
        return number

    return parse


def check_plausible(
    row: Row,
    columns: dict[str, Column],
    key: str,
    value: Decimal | None,
    bounds: tuple[str, str] | None,
    unit: str,
    context_ja: str,
    context_en: str,
) -> None:
    if value is None or bounds is None:
        return
    low, high = Decimal(bounds[0]), Decimal(bounds[1])
    if not low <= value <= high:
        ja, en = label(columns, key)
        row.error(
            key,
            "implausible",
            f"{ja} {value} {unit} は{context_ja}として考えられない値です（{low}〜{high} {unit}）",
            f"{en} {value} {unit} is impossible {context_en} (accepted {low}–{high} {unit})",
        )


# --------------------------------------------------------------------------
# FHIR building blocks
# --------------------------------------------------------------------------


def meta(category: str) -> dict[str, Any]:
    return {"tag": [{"system": CATEGORY_SYSTEM, "code": category}]}


def number(value: Decimal | int) -> int | float:
    """A JSON number (the store serialises with orjson, which has no Decimal)."""
    if isinstance(value, int):
        return value
    return int(value) if value == value.to_integral_value() else float(value)


def quantity(value: Decimal | int, unit: str) -> dict[str, Any]:
    return {"value": number(value), "unit": unit, "system": UCUM, "code": unit}


def patient_ref(patient_id: str) -> dict[str, str]:
    return {"reference": f"Patient/{patient_id}"}


def municipality_ref(code: str) -> dict[str, Any]:
    return {"identifier": {"system": MUNICIPALITY_CODE_SYSTEM, "value": code}}


def institution_ref(code: str | None, name: str | None) -> dict[str, Any] | None:
    ref: dict[str, Any] = {}
    if code:
        ref["identifier"] = {"system": MEDICAL_INSTITUTION_SYSTEM, "value": code}
    if name:
        ref["display"] = name
    return ref or None


def item_id(format_key: str, municipality: str, key: str, item: str, resource_type: str) -> str:
    """The id the store gives the resource of `item` of the row `key`: the
    importer writes every item with the source identifier (format system,
    key + "#" + item) (municipal_data/records.py), so a resource of the row
    can reference another (an Observation its checkup Encounter)."""
    # Imported here so that the formats (and their docs generator) load
    # before Django's apps are ready; phr.store needs the models.
    from phr import store

    system = f"urn:hagukumi:municipality:{municipality}:{format_key}"
    return str(store.source_resource_id(resource_type, store.Source(system, f"{key}#{item}")))


def observation(
    item_key: str,
    *,
    subject: str,
    when: date,
    category: str,
    obs_category: str | None = None,
    encounter: str | None = None,
    **value: Any,
) -> dict[str, Any]:
    """An Observation of a dictionary item (LOINC or our local code, with
    the JP Core body-measurement code beside it where one exists)."""
    item = terminology.item(item_key)
    codings = [item.coding]
    if item_key in JP_BODY_CODES:
        code, display = JP_BODY_CODES[item_key]
        codings.append({"system": JP_BODY_MEASUREMENT, "code": code, "display": display})
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "meta": meta(category),
        "status": "final",
        "code": {"coding": codings, "text": item.ja},
        "subject": patient_ref(subject),
        "effectiveDateTime": when.isoformat(),
    }
    if obs_category:
        resource["category"] = [
            {"coding": [{"system": OBSERVATION_CATEGORY, "code": obs_category}]}
        ]
    if encounter is not None:
        resource["encounter"] = {"reference": f"Encounter/{encounter}"}
    resource.update(value)
    return resource


def encounter(
    *,
    subject: str,
    when: date,
    category: str,
    types: list[dict[str, Any]],
    provider: dict[str, Any] | None,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Encounter",
        "meta": meta(category),
        "status": "finished",
        "class": {"system": ACT_CODE, "code": "AMB", "display": "ambulatory"},
        "type": types,
        "subject": patient_ref(subject),
        "period": {"start": when.isoformat(), "end": when.isoformat()},
    }
    if provider:
        resource["serviceProvider"] = provider
    return resource
