"""学校健診 (school health checkups): one row per pupil per checkup, from
an education board's school-affairs system (校務システム) — the link the
Maebashi model names for school checkups (../shared/reference/
000_6a909e808128a616.txt: 「校務システムと連携を行う方法」).

Documented in docs/formats/school_checkup.md. A row becomes an Encounter
(the checkup at the school) and one Observation per filled item, all
tagged school_checkups.
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal, InvalidOperation
from typing import Any

from municipal_data.formats import common
from municipal_data.formats.common import (
    ADD_REQUIRED_EN,
    ADD_REQUIRED_JA,
    CHILD_COLUMNS,
    DIPSTICK_CODES,
    FINDING_CODES,
    JUDGEMENT_SYSTEM,
    MOVE_COLUMNS,
    SCHOOL_CHECKUP_SYSTEM,
    SCHOOL_GRADE_SYSTEM,
    URINE_DIPSTICK_SYSTEM,
    VISION_CLASS_SYSTEM,
    coded,
    dipstick,
    finding,
    measurement,
    past_date,
)
from municipal_data.records import Items, MunicipalFormat, MunicipalRecord
from phr.tabular import Column, FieldError, Row, header_key, text
from phr.terminology import Category

KEY = "school_checkup"
CATEGORY = Category.SCHOOL_CHECKUPS

# School-age bounds (impossible outside) on top of the dictionary's ranges.
HEIGHT_BOUNDS = ("80", "200")
WEIGHT_BOUNDS = ("10", "150")

# --------------------------------------------------------------------------
# Grades
# --------------------------------------------------------------------------

LEVELS = {
    "e": ("小学", "elementary school", 6, 0),  # name, en, grades, years before grade 1
    "j": ("中学", "junior high school", 3, 6),
    "h": ("高校", "high school", 4, 9),  # 定時制 has a 4th year
}
_LEVEL_WORDS = {
    "e": ("小学校", "小学部", "小学", "小"),
    "j": ("中学校", "中学部", "中学", "中"),
    "h": ("高等学校", "高等部", "高校", "高"),
    "c": ("義務教育学校", "義務教育", "義務"),  # grades 1–9
}
_LEVEL_PATTERN = "|".join(
    sorted((w for words in _LEVEL_WORDS.values() for w in words), key=len, reverse=True)
)
_KANJI = str.maketrans("一二三四五六七八九", "123456789")


def _level_of(word: str) -> str:
    return next(level for level, words in _LEVEL_WORDS.items() if word in words)


def grade(value: str) -> tuple[str | None, int]:
    """学年: 小1, 小学2年, 中学校3年生, 高1, 1年(小) → (level, year); a bare
    1年 → (None, 1), completed from the school type or name."""
    text = unicodedata.normalize("NFKC", value).translate(_KANJI)
    text = re.sub(r"[\s()（）第]|生$", "", text)
    match = re.fullmatch(rf"(?:({_LEVEL_PATTERN}))?(\d{{1,2}})年?(?:({_LEVEL_PATTERN}))?", text)
    if match is None or (match[1] and match[3]):
        raise FieldError(
            "grade",
            f"学年「{value}」が読めません（例: 小1、小学2年、中3、高1）",
            f"the grade {value!r} is not readable (e.g. 小1, 小学2年, 中3, 高1)",
        )
    word = match[1] or match[3]
    return (_level_of(word) if word else None), int(match[2])


SCHOOL_TYPES = {
    "e": ("小学校", "特別支援学校小学部", "小学部"),
    "j": ("中学校", "特別支援学校中学部", "中学部"),
    "h": ("高等学校", "高校", "特別支援学校高等部", "高等部"),
    "c": ("義務教育学校",),
}


def school_type(value: str) -> str:
    key = header_key(value)
    for level, words in SCHOOL_TYPES.items():
        if key in {header_key(w) for w in words}:
            return level
    raise FieldError(
        "school_type",
        f"学校種別「{value}」が分かりません（小学校、中学校、高等学校、義務教育学校）",
        f"unknown school type {value!r} (小学校, 中学校, 高等学校, 義務教育学校)",
    )


def level_from_name(name: str) -> str | None:
    for suffix, level in (
        ("義務教育学校", "c"),
        ("小学校", "e"),
        ("中学校", "j"),
        ("高等学校", "h"),
        ("高校", "h"),
        ("小学部", "e"),
        ("中学部", "j"),
        ("高等部", "h"),
    ):
        if name.endswith(suffix):
            return level
    return None


def grade_code(level: str, year: int) -> str | None:
    """e1…e6, j1…j3, h1…h4; 義務教育学校 1–6 are elementary, 7–9 junior high."""
    if level == "c":
        level, year = ("e", year) if year <= 6 else ("j", year - 6)
    if level in LEVELS and 1 <= year <= LEVELS[level][2]:
        return f"{level}{year}"
    return None


def grade_display(code: str) -> str:
    return f"{LEVELS[code[0]][0]}{code[1:]}年"


def grade_index(code: str) -> int:
    """Years of school: 小1 = 1 … 中1 = 7 … 高1 = 10."""
    return LEVELS[code[0]][3] + int(code[1:])


def index_code(index: int) -> str:
    """The grade code of a year of school (1 → e1, 7 → j1, 10 → h1)."""
    if index <= 6:
        return f"e{index}"
    return f"j{index - 6}" if index <= 9 else f"h{index - 9}"


def expected_grade_index(birth: Any, day: Any) -> int:
    """The grade a child born on `birth` is in on `day`: a child starts
    小学1年 in the April after turning six; those born 1 April belong to the
    year before (学校教育法 第17条; 年齢計算ニ関スル法律)."""
    cohort = birth.year if (birth.month, birth.day) >= (4, 2) else birth.year - 1
    return common.fiscal_year(day) - cohort - 6


# --------------------------------------------------------------------------
# Vision, teeth
# --------------------------------------------------------------------------

# 370方式 (学校保健): A 1.0以上, B 0.9〜0.7, C 0.6〜0.3, D 0.3未満 — the
# 文部科学省 manual; not in ../shared/reference (see school_checkup.md).
VISION_CODES = {
    "A": ("A（1.0以上）", "A (1.0 or better)"),
    "B": ("B（0.9〜0.7）", "B (0.9–0.7)"),
    "C": ("C（0.6〜0.3）", "C (0.6–0.3)"),
    "D": ("D（0.3未満）", "D (below 0.3)"),
}


def vision(value: str) -> tuple[str, str]:
    """A–D, or a decimal acuity (1.2) → its class; (class, acuity as written)."""
    text = unicodedata.normalize("NFKC", value).upper().replace(" ", "")
    match = re.fullmatch(r"([ABCD])(?:\(.*\))?", text)
    if match:
        return match[1], ""
    try:
        acuity = Decimal(text) if re.fullmatch(r"\d(\.\d{1,2})?", text) else None
    except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
        acuity = None
    if acuity is None or not Decimal("0.01") <= acuity <= Decimal("2.0"):
        raise FieldError(
            "vision",
            f"視力「{value}」が読めません（A、B、C、D、または 1.0 などの視力）",
            f"the vision {value!r} is not A, B, C, D or an acuity such as 1.0",
        )
    if acuity >= 1:
        letter = "A"
    elif acuity >= Decimal("0.7"):
        letter = "B"
    elif acuity >= Decimal("0.3"):
        letter = "C"
    else:
        letter = "D"
    return letter, text


def teeth(value: str) -> int:
    text = re.sub(r"(本|歯)$", "", value)
    if not re.fullmatch(r"\d{1,2}", text) or int(text) > 32:
        raise FieldError(
            "teeth",
            f"歯の数「{value}」は0〜32の整数で書いてください",
            f"the number of teeth {value!r} must be a whole number 0–32",
        )
    return int(text)


# --------------------------------------------------------------------------
# Columns
# --------------------------------------------------------------------------

# (column key = docs/dataset.md item key, item name, 見出し, aliases, en)
VISION = (
    ("school_vision_right", "vision-right", "視力（右・裸眼）", ("右裸眼視力", "裸眼視力右"),
     "right eye, uncorrected"),
    ("school_vision_left", "vision-left", "視力（左・裸眼）", ("左裸眼視力", "裸眼視力左"),
     "left eye, uncorrected"),
    ("school_vision_right_corrected", "vision-right-corrected", "視力（右・矯正）",
     ("右矯正視力", "矯正視力右"), "right eye, with glasses or lenses"),
    ("school_vision_left_corrected", "vision-left-corrected", "視力（左・矯正）",
     ("左矯正視力", "矯正視力左"), "left eye, with glasses or lenses"),
)  # fmt: skip
HEARING = (
    ("hearing_right", "hearing-right", "聴力（右）", ("右聴力", "聴力右耳"), "right ear"),
    ("hearing_left", "hearing-left", "聴力（左）", ("左聴力", "聴力左耳"), "left ear"),
)
TEETH = (
    ("caries_untreated", "caries-untreated", "う歯数（未処置）",
     ("未処置歯数", "むし歯未処置", "未処置う歯数", "う歯未処置"),
     "decayed teeth not yet treated (primary and permanent)"),
    ("caries_treated", "caries-treated", "う歯数（処置済）",
     ("処置歯数", "処置完了歯数", "むし歯処置済", "処置済う歯数", "う歯処置済"),
     "decayed teeth treated (filled)"),
    ("missing_permanent_teeth", "missing-teeth", "喪失歯数（永久歯）",
     ("喪失歯数", "喪失永久歯数"), "permanent teeth lost to caries"),
)  # fmt: skip
URINE = (
    ("urine_protein", "urine-protein", "尿蛋白", ("尿たんぱく", "尿タンパク"), "urine protein"),
    ("urine_glucose", "urine-glucose", "尿糖", (), "urine glucose"),
    ("urine_occult_blood", "urine-occult-blood", "尿潜血", ("尿潜血反応",), "urine occult blood"),
)

COLUMNS: tuple[Column, ...] = (
    *CHILD_COLUMNS,
    Column(
        "school_name",
        "学校名",
        text(100),
        aliases=("学校",),
        en="the school",
        example="前橋市立はぐくみ小学校",
    ),
    Column(
        "school_type",
        "学校種別",
        school_type,
        aliases=("学校種", "校種"),
        en="小学校, 中学校, 高等学校, 義務教育学校 (needed only when the grade is a bare "
        "number and the school name does not end in one of them)",
        example="小学校",
    ),
    Column(
        "grade",
        "学年",
        grade,
        aliases=("年次",),
        en="the grade: 小1…小6, 中1…中3, 高1…高4 (or 1年 with the school type)",
        example="小1",
    ),
    Column(
        "date",
        "実施日",
        past_date,
        required=True,
        required_header=True,
        aliases=("健診日", "検査日", "健康診断実施日", "受診日", "実施年月日"),
        en="the day of the checkup",
        example="2025-05-14",
    ),
    Column(
        "body_height",
        "身長",
        measurement("身長", "height", "cm", "20", "220"),
        aliases=("身長cm",),
        en="height, cm",
        example="116.4",
    ),
    Column(
        "body_weight",
        "体重",
        measurement("体重", "weight", "kg", "0.3", "250"),
        aliases=("体重kg",),
        en="weight, kg",
        example="21.3",
    ),
    *(
        Column(
            key, ja, vision, aliases=aliases, en=f"vision, {en}: A, B, C, D (or 1.0)", example="A"
        )
        for key, _item, ja, aliases, en in VISION
    ),
    *(
        Column(
            key,
            ja,
            finding,
            aliases=aliases,
            en=f"hearing, {en}: 1 異常なし / 2 所見あり",
            example="異常なし",
        )
        for key, _item, ja, aliases, en in HEARING
    ),
    *(
        Column(key, ja, teeth, aliases=aliases, en=en, example="0")
        for key, _item, ja, aliases, en in TEETH
    ),
    *(
        Column(
            key,
            ja,
            dipstick,
            aliases=aliases,
            en=f"{en} by test strip: −, ±, 1+, 2+, 3+",
            example="−",
        )
        for key, _item, ja, aliases, en in URINE
    ),
    *MOVE_COLUMNS,
)
_BY_KEY = common.columns_by_key(COLUMNS)
KEY_COLUMNS = ("municipality_code", "resident_number", "date")
REQUIRED_ON_ADD = ("family_name", "given_name", "birth_date", "sex", "school_name", "grade")


# --------------------------------------------------------------------------
# Row → record
# --------------------------------------------------------------------------


def to_record(row: Row, uploading: str) -> MunicipalRecord | None:
    if not row.values:
        return None
    basics = common.check_common(row, _BY_KEY, uploading, child=True, mother_columns=False)
    values = dict(row.values)
    if basics.change != "delete":
        common.require(row, _BY_KEY, ["school_name", "grade"], ADD_REQUIRED_JA, ADD_REQUIRED_EN)
        common.check_not_before_birth(row, _BY_KEY, "date", values.get("birth_date"))
        _check_grade(row, values)
        _check_results(row, values)
    day = values.get("date")
    if row.errors or day is None:
        return None
    return MunicipalRecord(
        line=row.line,
        change=basics.change,
        key=f"{values['resident_number']}|{day.isoformat()}",
        subject=common.person(row, "child", uploading, basics),
        values=values,
    )


def _check_grade(row: Row, values: dict[str, Any]) -> None:
    parsed = values.get("grade")
    if parsed is None:
        return
    level, year = parsed
    if level is None:
        level = values.get("school_type") or level_from_name(values.get("school_name") or "")
        if level is None:
            if not common.has_error(row, "school_type"):
                row.error(
                    "grade",
                    "grade_level",
                    f"学年「{year}年」が小学校・中学校・高校のどれか分かりません"
                    "（小1・中1のように書くか、学校種別の列を入れてください）",
                    f"grade {year}: elementary, junior high or high school? (write 小1, 中1 "
                    "or add the school type column)",
                )
            return
    code = grade_code(level, year)
    if code is None:
        row.error(
            "grade",
            "grade",
            f"学年「{row.raw.get('grade', '')}」はありません（小1〜小6、中1〜中3、高1〜高4）",
            f"no such grade {row.raw.get('grade', '')!r} (小1–小6, 中1–中3, 高1–高4)",
        )
        return
    values["grade_code"] = code
    birth, day = values.get("birth_date"), values.get("date")
    if birth is not None and day is not None and day >= birth:
        expected = expected_grade_index(birth, day)
        if abs(grade_index(code) - expected) > 1:
            shown = grade_display(index_code(expected)) if 1 <= expected <= 13 else "就学年齢外"
            row.error(
                "grade",
                "grade_age",
                f"学年 {grade_display(code)} が生年月日 {birth.isoformat()} と合いません"
                f"（{day.isoformat()} には {shown} の年齢です）",
                f"grade {grade_display(code)} ({code}) does not fit the birth date "
                f"{birth.isoformat()} (on {day.isoformat()} the child is of school year "
                f"{expected})",
            )


def _check_results(row: Row, values: dict[str, Any]) -> None:
    for key, bounds, unit in (
        ("body_height", HEIGHT_BOUNDS, "cm"),
        ("body_weight", WEIGHT_BOUNDS, "kg"),
    ):
        common.check_plausible(
            row, _BY_KEY, key, values.get(key), bounds, unit, "学校健診", "at a school checkup"
        )
    total = sum(values.get(key) or 0 for key, *_ in TEETH)
    if total > 32:
        row.error(
            "caries_untreated",
            "teeth_total",
            f"未処置・処置済・喪失の歯の合計（{total}本）が32本を超えています",
            f"untreated, treated and lost teeth add up to {total}, more than 32",
        )


# --------------------------------------------------------------------------
# Record → FHIR
# --------------------------------------------------------------------------


def resources(record: MunicipalRecord, subject: str, mother: str | None) -> Items:
    """The Encounter and Observations of an add/update row (nothing for a
    deletion)."""
    if record.change == "delete":
        return []
    values = record.values
    day = values["date"]
    code = values["grade_code"]
    municipality = record.subject.municipality_code
    encounter_id = common.item_id(KEY, municipality, record.key, "encounter", "Encounter")
    title = f"学校健診（{grade_display(code)}）"
    items: Items = [
        (
            "encounter",
            common.encounter(
                subject=subject,
                when=day,
                category=CATEGORY,
                types=[
                    {
                        "coding": [
                            {
                                "system": SCHOOL_CHECKUP_SYSTEM,
                                "code": "periodic",
                                "display": "学校の定期健康診断",
                            }
                        ],
                        "text": title,
                    },
                    {
                        "coding": [
                            {
                                "system": SCHOOL_GRADE_SYSTEM,
                                "code": code,
                                "display": grade_display(code),
                            }
                        ],
                        "text": grade_display(code),
                    },
                ],
                provider={"display": values["school_name"]},
            ),
        )
    ]

    def add(item: str, item_key: str, obs_category: str, **value: Any) -> None:
        items.append(
            (
                item,
                common.observation(
                    item_key,
                    subject=subject,
                    when=day,
                    category=CATEGORY,
                    obs_category=obs_category,
                    encounter=encounter_id,
                    **value,
                ),
            )
        )

    for key, item, unit in (
        ("body_height", "body-height", "cm"),
        ("body_weight", "body-weight", "kg"),
    ):
        if values.get(key) is not None:
            add(item, key, "vital-signs", valueQuantity=common.quantity(values[key], unit))
    for key, item, _ja, _aliases, _en in VISION:
        if values.get(key) is not None:
            letter, acuity = values[key]
            concept = coded(VISION_CLASS_SYSTEM, letter, VISION_CODES)
            if acuity:
                concept["text"] = f"{acuity}（{letter}）"
            add(item, key, "exam", valueCodeableConcept=concept)
    for key, item, _ja, _aliases, _en in HEARING:
        if values.get(key) is not None:
            concept = coded(JUDGEMENT_SYSTEM, values[key], FINDING_CODES)
            add(item, key, "exam", valueCodeableConcept=concept)
    for key, item, _ja, _aliases, _en in TEETH:
        if values.get(key) is not None:
            add(item, key, "exam", valueInteger=values[key])
    for key, item, _ja, _aliases, _en in URINE:
        if values.get(key) is not None:
            concept = coded(URINE_DIPSTICK_SYSTEM, values[key], DIPSTICK_CODES)
            add(item, key, "laboratory", valueCodeableConcept=concept)
    return items


FORMAT = MunicipalFormat(
    key=KEY,
    label_ja="学校健診",
    label_en="School health checkups",
    category=CATEGORY,
    columns=COLUMNS,
    to_record=to_record,
    resources=resources,
)
