"""乳幼児健診 (infant and child health checkups): one row per child per
checkup, from the municipality's maternal and child health system.

The columns are the MHLW 「最低限電子化すべき情報」 (受診日, 受診時月齢,
出生時体重, 在胎週数, 身長, 体重, 頭囲, 胸囲, 診察所見の判定), the findings of
施行規則第2条 and the 3～4か月 / 3歳 standard record, and the 3-year urine
test (../shared/reference/standards.md §2, data/infant_checkups_jp.csv).
Documented in docs/formats/infant_checkup.md.

A row becomes an Encounter (the checkup) and one Observation per filled
item, all tagged infant_checkups, as phr/demo.py's checkup_items().
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from municipal_data.formats import common
from municipal_data.formats.common import (
    CHECKUP_TYPE_SYSTEM,
    CHILD_COLUMNS,
    CHILD_HANDBOOK,
    DIPSTICK_CODES,
    FINDING_CODES,
    JUDGEMENT_SYSTEM,
    MOTHER_COLUMNS,
    MOVE_COLUMNS,
    URINE_DIPSTICK_SYSTEM,
    coded,
    dipstick,
    finding,
    measurement,
    months_between,
    past_date,
)
from municipal_data.records import Items, MunicipalFormat, MunicipalRecord
from phr.tabular import Column, FieldError, Row, header_key
from phr.terminology import Category

KEY = "infant_checkup"
CATEGORY = Category.INFANT_CHECKUPS

# --------------------------------------------------------------------------
# Checkup kinds
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    code: str  # in CHECKUP_TYPE_SYSTEM (the codes phr/demo.py uses)
    name: str  # as in infant_checkups_jp.csv
    en: str
    ages: tuple[int, int]  # completed months of age accepted for this checkup
    # Impossible outside (kg, cm, cm, cm): generous bounds around the 2023
    # survey's p3–p97 over the ages above (growth_percentiles_jp2023_p3_p50_p97.csv:
    # about half the lowest p3 and 1.5 x the highest p97 of weight, 12 cm
    # beyond the height percentiles). Head and chest have no reference table:
    # their bounds are wide on purpose (docs/formats/infant_checkup.md).
    weight: tuple[str, str]
    height: tuple[str, str]
    head: tuple[str, str]
    chest: tuple[str, str]
    lying: bool  # length measured lying (乳児) or height standing (幼児)


KINDS = {
    k.code: k
    for k in (
        Kind(
            "1m", "1か月児健診", "1-month checkup", (0, 3),
            ("1.0", "10.0"), ("35", "72"), ("25", "48"), ("25", "50"), True,
        ),
        Kind(
            "3-4m", "3～4か月児健診", "3–4-month checkup", (2, 8),
            ("2.0", "14.0"), ("42", "85"), ("30", "52"), ("30", "55"), True,
        ),
        Kind(
            "6-7m", "6～7か月児健診", "6–7-month checkup", (5, 10),
            ("3.0", "15.0"), ("48", "88"), ("33", "55"), ("32", "58"), True,
        ),
        Kind(
            "9-10m", "9～10か月児健診", "9–10-month checkup", (8, 14),
            ("3.5", "17.0"), ("52", "94"), ("35", "57"), ("34", "62"), True,
        ),
        Kind(
            "18m", "1歳6か月児健診", "18-month checkup", (17, 36),
            ("4.5", "25.0"), ("62", "113"), ("38", "58"), ("38", "65"), True,
        ),
        Kind(
            "3y", "3歳児健診", "3-year checkup", (35, 60),
            ("6.0", "34.0"), ("74", "128"), ("42", "60"), ("40", "75"), False,
        ),
        Kind(
            "5y", "5歳児健診", "5-year checkup", (48, 84),
            ("6.5", "40.0"), ("80", "136"), ("44", "62"), ("44", "85"), False,
        ),
    )
}  # fmt: skip

# Spellings after canonical_age() below: "3～4か月児健診" → "3-4m", "1歳6か月" → "1y6m".
KIND_SPELLINGS = {
    "1m": ("1m",),
    "3-4m": ("3-4m", "3m", "4m", "3-6m"),
    "6-7m": ("6-7m", "6m", "7m"),
    "9-10m": ("9-10m", "9m", "10m", "9-11m"),
    "18m": ("18m", "1y6m", "1.5y"),
    "3y": ("3y",),
    "5y": ("5y",),
}
_KIND_LOOKUP = {spelling: code for code, words in KIND_SPELLINGS.items() for spelling in words}

_DROP = ("乳幼児", "健康診査", "健康診断", "健診", "検診", "乳児", "幼児", "児", "checkup")


def canonical_age(value: str) -> str:
    """An age written the many ways people write it, as "<y>y<m>m<d>d":
    3～4か月 → 3-4m, 1歳6ヶ月 → 1y6m, 1歳半 → 1y6m, 18 months → 18m."""
    text = unicodedata.normalize("NFKC", value).lower()
    text = re.sub(r"\s", "", text)
    for word in _DROP:
        text = text.replace(word, "")
    text = re.sub(r"[かカヵヶケ箇]月|ヶ月|months?|mo\b", "m", text)
    text = text.replace("月", "m")
    text = re.sub(r"歳|才|years?|yr?s?", "y", text)
    text = text.replace("半", "6m").replace("日", "d").replace("days", "d").replace("day", "d")
    text = re.sub(r"[~〜～ー－‐―−]|から", "-", text)
    return re.sub(r"^(\d+)m-(\d+)m$", r"\1-\2m", text)


def checkup_kind(value: str) -> str:
    code = _KIND_LOOKUP.get(canonical_age(value))
    if code is None:
        raise FieldError(
            "checkup_kind",
            f"健診区分「{value}」が分かりません（1か月、3～4か月、6～7か月、9～10か月、"
            "1歳6か月、3歳、5歳）",
            f"unknown checkup kind {value!r} (1m, 3-4m, 6-7m, 9-10m, 18m, 3y, 5y)",
        )
    return code


def age_months(value: str) -> int:
    """受診時月齢: 5, 5か月, 1歳6か月, 3歳2か月15日 (days are ignored)."""
    text = canonical_age(value)
    match = re.fullmatch(r"(?:(\d{1,2})y)?(?:(\d{1,3})m?)?(?:(\d{1,2})d)?", text)
    if not text or match is None or not (match[1] or match[2]):
        raise FieldError(
            "age_months",
            f"受診時月齢「{value}」が読めません（例: 4、4か月、1歳6か月）",
            f"the age at the checkup {value!r} is not readable (e.g. 4, 4か月, 1歳6か月)",
        )
    months = int(match[1] or 0) * 12 + int(match[2] or 0)
    if months > 96:
        raise FieldError(
            "range",
            f"受診時月齢 {months}か月 は乳幼児健診の年齢ではありません（0〜96か月）",
            f"an age of {months} months is not an infant checkup age (0–96)",
        )
    return months


def gestation(value: str) -> tuple[int, int]:
    """在胎週数: 39, 39週, 39週2日, 39w2d, 39+2 → (weeks, days)."""
    text = unicodedata.normalize("NFKC", value).lower().replace(" ", "")
    match = re.fullmatch(r"(\d{1,2})(?:週|w|wk|weeks?)?(?:(?:\+|と)?(\d)(?:日|d|days?)?)?", text)
    if match is None:
        raise FieldError(
            "gestation",
            f"在胎週数「{value}」が読めません（例: 39、39週2日、39+2）",
            f"the gestational age {value!r} is not readable (e.g. 39, 39週2日, 39+2)",
        )
    weeks, days = int(match[1]), int(match[2] or 0)
    if days > 6:
        raise FieldError(
            "gestation",
            f"在胎週数「{value}」の日数は0〜6日です",
            f"the days of the gestational age {value!r} must be 0–6",
        )
    if not 22 <= weeks <= 45:
        raise FieldError(
            "range",
            f"在胎週数 {weeks}週 はありえない値です（22〜45週）",
            f"a gestational age at birth of {weeks} weeks is impossible (22–45)",
        )
    return weeks, days


# 判定: the standard records 所見なし / 所見あり; municipalities' own forms
# grade the 所見あり further (standards.md §2; the Aichi manual's legacy
# classes 問題なし/要指導/要観察/要精検; 要治療/治療中 appear on municipal forms
# but are not in the reference — see docs/formats/infant_checkup.md).
JUDGEMENT_CODES = {
    "no-findings": ("所見なし", "No findings"),
    "findings": ("所見あり", "Findings"),
    "observation": ("要観察", "Follow-up observation"),
    "guidance": ("要指導", "Guidance needed"),
    "referral": ("要精密検査", "Referral for detailed examination"),
    "treatment": ("要治療", "Treatment needed"),
    "under-treatment": ("治療中", "Under treatment"),
}
_JUDGEMENT_SPELLINGS = {
    "no-findings": ("1", "所見なし", "異常なし", "問題なし", "健康", "正常", "なし"),
    "findings": ("2", "所見あり", "異常あり", "あり"),
    "observation": ("要観察", "経過観察", "要経過観察", "健康・要観察"),
    "guidance": ("要指導",),
    "referral": ("要精密検査", "要精検", "要精査", "精密検査"),
    "treatment": ("要治療", "要医療"),
    "under-treatment": ("治療中", "既医療", "医療中", "管理中"),
}
_JUDGEMENT_LOOKUP = {
    header_key(word): code
    for code, words in _JUDGEMENT_SPELLINGS.items()
    for word in (code, *words)
}


def judgement(value: str) -> str:
    code = _JUDGEMENT_LOOKUP.get(header_key(value))
    if code is None:
        raise FieldError(
            "judgement",
            f"判定「{value}」が分かりません（所見なし、所見あり、要観察、要指導、要精密検査、"
            "要治療、治療中）",
            f"unknown judgement {value!r} (所見なし, 所見あり, 要観察, 要指導, 要精密検査, "
            "要治療, 治療中)",
        )
    return code


# --------------------------------------------------------------------------
# Columns
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    key: str  # column key and docs/dataset.md item key
    ja: str
    en: str
    aliases: tuple[str, ...]

    @property
    def item(self) -> str:
        return self.key.replace("_", "-")


# 母子保健法施行規則第2条 (1歳6か月・3歳) and the 3～4か月 standard record
# (infant_checkups_jp.csv). 予防接種の実施状況 and 育児上問題となる事項 are not
# findings about the body and are left out (vaccinations have their format).
FINDINGS = (
    Finding("finding_nutrition", "栄養状態", "Nutritional status", ("栄養",)),
    Finding("finding_neck_control", "首のすわり", "Head control", ("頸定", "定頸", "首すわり")),
    Finding("finding_hip", "股関節開排制限", "Limited hip abduction", ("股関節", "開排制限")),
    Finding("finding_spine_chest", "脊柱・胸郭", "Spine and chest", ("脊柱及び胸郭",)),
    Finding("finding_skin", "皮膚", "Skin", ("皮膚の疾病",)),
    Finding("finding_teeth_mouth", "歯・口腔", "Teeth and mouth", ("歯及び口腔", "歯科")),
    Finding("finding_limbs", "四肢運動障害", "Limb motor disorder", ("四肢運動", "四肢")),
    Finding("finding_development", "精神発達", "Mental development", ("精神発達の状況", "発達")),
    Finding("finding_speech", "言語障害", "Speech disorder", ("言語",)),
    Finding("finding_eyes", "眼", "Eyes (vision)", ("眼の疾病及び異常", "目", "視覚")),
    Finding("finding_ears", "耳・鼻・咽頭", "Ears, nose, throat (hearing)", ("耳鼻咽頭", "聴覚")),
)

URINE = (
    ("urine_protein", "尿蛋白", "urine protein", ("尿たんぱく", "尿タンパク", "検尿蛋白")),
    ("urine_glucose", "尿糖", "urine glucose", ("検尿糖",)),
    ("urine_occult_blood", "尿潜血", "urine occult blood", ("検尿潜血", "尿潜血反応")),
)

COLUMNS: tuple[Column, ...] = (
    *CHILD_COLUMNS,
    CHILD_HANDBOOK,
    Column(
        "kind",
        "健診区分",
        checkup_kind,
        required=True,
        required_header=True,
        aliases=("健診名", "健診種別", "健診の種類", "checkup"),
        en="which checkup: 1か月, 3～4か月, 6～7か月, 9～10か月, 1歳6か月, 3歳, 5歳 "
        "(or 1m, 3-4m, 6-7m, 9-10m, 18m, 3y, 5y)",
        example="3～4か月",
    ),
    Column(
        "date",
        "受診日",
        past_date,
        required=True,
        required_header=True,
        aliases=("健診受診日", "健診日", "受診年月日", "健診年月日"),
        en="the day of the checkup",
        example="2024-06-20",
    ),
    Column(
        "age_months",
        "受診時月齢",
        age_months,
        aliases=("月齢", "受診月齢"),
        en="completed months of age on that day (checked against the birth date, ±1)",
        example="3",
    ),
    Column(
        "birth_weight",
        "出生時体重",
        measurement("出生時体重", "birth weight", "g", "200", "7000", places=0),
        aliases=("出生体重", "出生時体重g", "出生体重g"),
        en="birth weight in grams",
        example="3050",
    ),
    Column(
        "gestational_age",
        "在胎週数",
        gestation,
        aliases=("出生時在胎週数", "在胎期間"),
        en="gestational age at birth: weeks, or weeks and days (39, 39週2日, 39+2)",
        example="39週2日",
    ),
    Column(
        "body_height",
        "身長",
        measurement("身長", "height", "cm", "20", "220"),
        aliases=("身長cm", "身長(cm)"),
        en="length (lying, up to 1歳6か月) or height (standing, 3歳 and 5歳), cm",
        example="61.2",
    ),
    Column(
        "body_weight",
        "体重",
        measurement("体重", "weight", "kg", "0.3", "250", places=3),
        aliases=("体重kg", "体重(kg)"),
        en="weight in kg (up to 3 decimals)",
        example="6.35",
    ),
    Column(
        "body_weight_g",
        "体重（g）",
        measurement("体重", "weight", "g", "300", "250000", places=0),
        aliases=("体重g",),
        en="weight in grams, instead of kg",
        example="6350",
    ),
    Column(
        "head_circumference",
        "頭囲",
        measurement("頭囲", "head circumference", "cm", "20", "65"),
        aliases=("頭囲cm",),
        en="head circumference, cm",
        example="40.8",
    ),
    Column(
        "chest_circumference",
        "胸囲",
        measurement("胸囲", "chest circumference", "cm", "20", "120"),
        aliases=("胸囲cm",),
        en="chest circumference, cm (not measured at 3歳)",
        example="41.0",
    ),
    Column(
        "judgement",
        "判定",
        judgement,
        aliases=("総合判定", "診察所見の判定", "判定区分", "判定結果"),
        en="the checkup's judgement: 所見なし, 所見あり, 要観察, 要指導, 要精密検査, 要治療, "
        "治療中 (1 = 所見なし, 2 = 所見あり)",
        example="所見なし",
    ),
    *(
        Column(
            f.key,
            f.ja,
            finding,
            aliases=f.aliases,
            en=f"finding: {f.en} — 1 所見なし / 2 所見あり",
            example="所見なし",
        )
        for f in FINDINGS
    ),
    *(
        Column(
            key,
            ja,
            dipstick,
            aliases=aliases,
            en=f"{en} by test strip (3歳): −, ±, 1+, 2+, 3+",
            example="−",
        )
        for key, ja, en, aliases in URINE
    ),
    *MOTHER_COLUMNS,
    *MOVE_COLUMNS,
)
_BY_KEY = common.columns_by_key(COLUMNS)
KEY_COLUMNS = ("municipality_code", "resident_number", "kind", "date")
# Cells an add or update row must fill (the name may be one 氏名 cell instead).
REQUIRED_ON_ADD = ("family_name", "given_name", "birth_date", "sex")


# --------------------------------------------------------------------------
# Row → record
# --------------------------------------------------------------------------


def to_record(row: Row, uploading: str) -> MunicipalRecord | None:
    if not row.values:  # the row could not be split into cells
        return None
    basics = common.check_common(row, _BY_KEY, uploading, child=True, mother_columns=True)
    values = dict(row.values)
    kind_code, day = values.get("kind"), values.get("date")
    if basics.change != "delete":
        _check_results(row, values)
    if row.errors or kind_code is None or day is None:
        return None
    key = f"{values['resident_number']}|{kind_code}|{day.isoformat()}"
    return MunicipalRecord(
        line=row.line,
        change=basics.change,
        key=key,
        subject=common.person(
            row, "child", uploading, basics, handbook=values.get("mch_handbook_number") or ""
        ),
        mother=common.mother(row, uploading, basics),
        values=values,
    )


def _check_results(row: Row, values: dict[str, Any]) -> None:
    kind = KINDS.get(values.get("kind") or "")
    day, birth = values.get("date"), values.get("birth_date")
    common.check_not_before_birth(row, _BY_KEY, "date", birth)
    if kind is not None and day is not None and birth is not None and day >= birth:
        months = months_between(birth, day)
        given = values.get("age_months")
        if given is not None and abs(given - months) > 1:
            row.error(
                "age_months",
                "age_months",
                f"受診時月齢 {given}か月 が生年月日 {birth.isoformat()} と受診日 "
                f"{day.isoformat()} から計算した月齢（{months}か月）と合いません",
                f"the age at the checkup, {given} months, does not match the {months} months "
                f"from the birth date {birth.isoformat()} to {day.isoformat()}",
            )
        low, high = kind.ages
        if not low <= months <= high:
            row.error(
                "kind",
                "kind_age",
                f"{kind.name}を月齢{months}か月で受診したことになります（受け付ける月齢 "
                f"{low}〜{high}か月）",
                f"a {kind.en} at {months} months of age (accepted {low}–{high} months)",
            )
    kilograms = values.get("body_weight")
    grams = values.get("body_weight_g")
    if grams is not None:
        from_grams = grams / Decimal(1000)
        if kilograms is not None and abs(kilograms - from_grams) > Decimal("0.01"):
            row.error(
                "body_weight_g",
                "conflict",
                f"体重が2つの列で違います（{kilograms} kg と {grams} g）",
                f"the two weight columns disagree ({kilograms} kg and {grams} g)",
            )
        elif kilograms is None:
            values["body_weight"] = from_grams
    if kind is None:
        return
    context_ja, context_en = kind.name, f"at a {kind.en}"
    if kilograms is not None:
        common.check_plausible(
            row, _BY_KEY, "body_weight", kilograms, kind.weight, "kg", context_ja, context_en
        )
    elif grams is not None:
        in_grams = (str(Decimal(kind.weight[0]) * 1000), str(Decimal(kind.weight[1]) * 1000))
        common.check_plausible(
            row, _BY_KEY, "body_weight_g", grams, in_grams, "g", context_ja, context_en
        )
    for key, bounds in (
        ("body_height", kind.height),
        ("head_circumference", kind.head),
        ("chest_circumference", kind.chest),
    ):
        common.check_plausible(
            row, _BY_KEY, key, values.get(key), bounds, "cm", context_ja, context_en
        )


# --------------------------------------------------------------------------
# Record → FHIR
# --------------------------------------------------------------------------


def resources(record: MunicipalRecord, subject: str, mother: str | None) -> Items:
    """The Encounter and Observations of an add/update row (nothing for a
    deletion: the importer deletes by the row's source identifiers)."""
    if record.change == "delete":
        return []
    values = record.values
    kind = KINDS[values["kind"]]
    day = values["date"]
    municipality = record.subject.municipality_code
    encounter_id = common.item_id(KEY, municipality, record.key, "encounter", "Encounter")
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
                            {"system": CHECKUP_TYPE_SYSTEM, "code": kind.code, "display": kind.name}
                        ],
                        "text": kind.name,
                    }
                ],
                provider=common.municipality_ref(municipality),
            ),
        )
    ]

    def add(item: str, item_key: str, obs_category: str, **value: Any) -> None:
        when = value.pop("when", day)
        items.append(
            (
                item,
                common.observation(
                    item_key,
                    subject=subject,
                    when=when,
                    category=CATEGORY,
                    obs_category=obs_category,
                    encounter=encounter_id,
                    **value,
                ),
            )
        )

    height_item = ("body-length", "body_length") if kind.lying else ("body-height", "body_height")
    for column, (item, item_key), obs_category, unit in (
        ("body_weight", ("body-weight", "body_weight"), "vital-signs", "kg"),
        ("body_height", height_item, "vital-signs", "cm"),
        ("head_circumference", ("head-circumference", "head_circumference"), "vital-signs", "cm"),
        ("chest_circumference", ("chest-circumference", "chest_circumference"), "exam", "cm"),
    ):
        if values.get(column) is not None:
            add(item, item_key, obs_category, valueQuantity=common.quantity(values[column], unit))
    # Birth data are dated on the birth day and linked to the checkup that reported them.
    birth = record.subject.birth_date
    if values.get("birth_weight") is not None:
        quantity = common.quantity(values["birth_weight"], "g")
        add("birth-weight", "birth_weight", "vital-signs", when=birth, valueQuantity=quantity)
    if values.get("gestational_age") is not None:
        weeks, days = values["gestational_age"]
        extra: dict[str, Any] = {"note": [{"text": f"在胎{weeks}週{days}日"}]} if days else {}
        quantity = common.quantity(weeks, "wk")
        add(
            "gestational-age-at-birth",
            "gestational_age",
            "exam",
            when=birth,
            valueQuantity=quantity,
            **extra,
        )
    if values.get("judgement") is not None:
        concept = coded(JUDGEMENT_SYSTEM, values["judgement"], JUDGEMENT_CODES)
        add("judgement", "checkup_judgement", "exam", valueCodeableConcept=concept)
    for f in FINDINGS:
        if values.get(f.key) is not None:
            concept = coded(JUDGEMENT_SYSTEM, values[f.key], FINDING_CODES)
            add(f.item, f.key, "exam", valueCodeableConcept=concept)
    for key, _ja, _en, _aliases in URINE:
        if values.get(key) is not None:
            concept = coded(URINE_DIPSTICK_SYSTEM, values[key], DIPSTICK_CODES)
            add(key.replace("_", "-"), key, "laboratory", valueCodeableConcept=concept)
    return items


FORMAT = MunicipalFormat(
    key=KEY,
    label_ja="乳幼児健診",
    label_en="Infant and child health checkups",
    category=CATEGORY,
    columns=COLUMNS,
    to_record=to_record,
    resources=resources,
)
