"""予防接種 (routine immunizations): one row per dose, from the
municipality's immunization register (予防接種台帳).

The vaccines, their series (期) and dose counts are the routine schedule
of ../shared/reference/standards.md §4 and data/immunization_schedule_jp.csv.
Documented in docs/formats/vaccination.md.

A row becomes one Immunization, tagged vaccinations, shaped like
phr/demo.py's vaccination_items(): our vaccine code, the dose number in the
vaccine's whole schedule (protocolApplied.doseNumberPositiveInt) and the
schedule's series label (protocolApplied.series).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from municipal_data.formats import common
from municipal_data.formats.common import (
    ADD_REQUIRED_EN,
    ADD_REQUIRED_JA,
    CHILD_COLUMNS,
    CHILD_HANDBOOK,
    MOTHER_COLUMNS,
    MOVE_COLUMNS,
    VACCINE_SYSTEM,
    medical_institution_code,
    past_date,
)
from municipal_data.records import Items, MunicipalFormat, MunicipalRecord
from phr.tabular import Column, FieldError, Row, header_key, text
from phr.terminology import Category

KEY = "vaccination"
CATEGORY = Category.VACCINATIONS

# --------------------------------------------------------------------------
# Vaccines and their schedules
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    label: str  # dose_label in immunization_schedule_jp.csv ("" when the schedule has none)
    period: int | None  # 期: 1, 2 (None when the vaccine has no 期)
    part: str | None  # "初回" | "追加" | None
    count: int


@dataclass(frozen=True)
class Vaccine:
    code: str  # in VACCINE_SYSTEM (the codes phr/demo.py uses, and more)
    name: str  # shown to families
    en: str
    series: tuple[Series, ...]
    aliases: tuple[str, ...]
    note: str = ""

    @property
    def doses(self) -> int:
        return sum(s.count for s in self.series)

    def series_of(self, dose: int) -> Series:
        start = 1
        for series in self.series:
            if dose < start + series.count:
                return series
            start += series.count
        raise ValueError(dose)

    def starts(self) -> list[tuple[Series, int]]:
        out, start = [], 1
        for series in self.series:
            out.append((series, start))
            start += series.count
        return out


def _primary_booster(primary: str, booster: str, period: int | None) -> tuple[Series, ...]:
    return (Series(primary, period, "初回", 3), Series(booster, period, "追加", 1))


_ONE = (Series("", None, None, 1),)
_TWO = (Series("", None, None, 2),)
_THREE = (Series("", None, None, 3),)
_PCV = _primary_booster("初回", "追加", None)

VACCINES = {
    v.code: v
    for v in (
        Vaccine(
            "dtap-ipv-hib", "5種混合(DPT-IPV-Hib)", "DTaP-IPV-Hib",
            _primary_booster("1期初回", "1期追加", 1),
            ("五種混合", "5種混合", "5種", "DPT-IPV-Hib", "DTaP-IPV-Hib", "5種混合ワクチン"),
        ),
        Vaccine(
            "dtap-ipv", "4種混合(DPT-IPV)", "DTaP-IPV",
            _primary_booster("1期初回", "1期追加", 1),
            ("四種混合", "4種混合", "4種", "DPT-IPV", "DTaP-IPV", "4種混合ワクチン"),
            note="not in the reference table; the same 1期初回 3 + 1期追加 1 as 5種混合 [U]",
        ),
        Vaccine(
            "hib", "Hib", "Hib", _primary_booster("初回", "追加", None),
            ("ヒブ", "Hib", "ヒブワクチン", "インフルエンザ菌b型", "Hib単独"),
        ),
        Vaccine(
            "pcv", "小児用肺炎球菌", "Pneumococcal conjugate (product not given)", _PCV,
            ("小児用肺炎球菌", "小児肺炎球菌", "肺炎球菌", "PCV", "小児用肺炎球菌ワクチン"),
        ),
        Vaccine(
            "pcv13", "小児用肺炎球菌(PCV13)", "PCV13", _PCV,
            ("PCV13", "小児用肺炎球菌13価", "肺炎球菌13価", "13価肺炎球菌"),
            note="removed from the routine schedule on 2024-10-01 (standards.md §4)",
        ),
        Vaccine(
            "pcv15", "小児用肺炎球菌(PCV15)", "PCV15", _PCV,
            ("PCV15", "小児用肺炎球菌15価", "肺炎球菌15価", "15価肺炎球菌"),
        ),
        Vaccine(
            "pcv20", "小児用肺炎球菌(PCV20)", "PCV20", _PCV,
            ("PCV20", "小児用肺炎球菌20価", "肺炎球菌20価", "20価肺炎球菌"),
        ),
        Vaccine("hepb", "B型肝炎", "Hepatitis B", _THREE, ("B型肝炎", "B肝", "HBV", "HepB")),
        Vaccine(
            "rv", "ロタウイルス", "Rotavirus (product not given)", _THREE,
            ("ロタ", "ロタウイルス", "ロタワクチン", "ロタウイルスワクチン", "RV"),
            note="2 doses for Rotarix, 3 for RotaTeq: the larger count is accepted",
        ),
        Vaccine(
            "rv1", "ロタウイルス 1価(ロタリックス)", "Rotavirus monovalent (Rotarix)", _TWO,
            ("ロタリックス", "ロタウイルス1価", "1価ロタ", "ロタ1価", "RV1", "Rotarix"),
        ),
        Vaccine(
            "rv5", "ロタウイルス 5価(ロタテック)", "Rotavirus pentavalent (RotaTeq)", _THREE,
            ("ロタテック", "ロタウイルス5価", "5価ロタ", "ロタ5価", "RV5", "RotaTeq"),
        ),
        Vaccine("bcg", "BCG", "BCG", _ONE, ("BCG", "BCGワクチン")),
        Vaccine(
            "mr", "麻しん風しん(MR)", "Measles-rubella (MR)",
            (Series("第1期", 1, None, 1), Series("第2期", 2, None, 1)),
            ("MR", "麻しん風しん", "麻しん風しん混合", "麻疹風疹", "麻疹風疹混合", "MRワクチン"),
        ),
        Vaccine(
            "varicella", "水痘", "Varicella", _TWO,
            ("水痘", "水ぼうそう", "みずぼうそう", "Varicella", "VZV"),
        ),
        Vaccine(
            "je", "日本脳炎", "Japanese encephalitis",
            (
                Series("第1期初回", 1, "初回", 2),
                Series("第1期追加", 1, "追加", 1),
                Series("第2期", 2, None, 1),
            ),
            ("日本脳炎", "日脳", "JE"),
        ),
        Vaccine(
            "dt", "二種混合(DT)", "DT (diphtheria-tetanus)", (Series("第2期", 2, None, 1),),
            ("二種混合", "2種混合", "DT", "ジフテリア破傷風"),
        ),
        Vaccine(
            "hpv", "HPV", "HPV (product not given)", _THREE,
            ("HPV", "ヒトパピローマウイルス", "子宮頸がん予防", "子宮頸がん予防ワクチン"),
            note="2 or 3 doses by product and age: 3 are accepted",
        ),
        Vaccine(
            "hpv2", "HPV 2価(サーバリックス)", "HPV bivalent (Cervarix)", _THREE,
            ("サーバリックス", "HPV2価", "2価HPV", "Cervarix"),
        ),
        Vaccine(
            "hpv4", "HPV 4価(ガーダシル)", "HPV quadrivalent (Gardasil)", _THREE,
            ("ガーダシル", "HPV4価", "4価HPV", "Gardasil"),
        ),
        Vaccine(
            "hpv9", "HPV 9価(シルガード9)", "HPV 9-valent (Silgard 9)", _THREE,
            ("シルガード9", "シルガード", "HPV9価", "9価HPV", "Silgard9", "Gardasil9"),
            note="2 doses when started before 15, else 3: 3 are accepted",
        ),
    )
}  # fmt: skip


def _vaccine_key(value: str) -> str:
    text = header_key(value)
    text = re.sub(r"ワクチン$", "", text) if len(text) > 4 else text
    return text.replace("麻しん", "麻疹").replace("風しん", "風疹")


_VACCINE_LOOKUP: dict[str, str] = {}
for _vaccine in VACCINES.values():
    for _spelling in (_vaccine.code, _vaccine.name, *_vaccine.aliases):
        _VACCINE_LOOKUP[_vaccine_key(_spelling)] = _vaccine.code


def vaccine(value: str) -> str:
    code = _VACCINE_LOOKUP.get(_vaccine_key(value))
    if code is None:
        raise FieldError(
            "vaccine",
            f"ワクチン「{value}」は定期接種のワクチンとして登録されていません"
            "（例: 5種混合、小児用肺炎球菌、B型肝炎、ロタウイルス、BCG、MR、水痘、日本脳炎、HPV）",
            f"{value!r} is not a routine vaccine we know (e.g. 5種混合, 小児用肺炎球菌, "
            "B型肝炎, ロタウイルス, BCG, MR, 水痘, 日本脳炎, HPV)",
        )
    return code


# --------------------------------------------------------------------------
# Doses: "2", "2回目", "第1期初回2回目", "第1期追加", "2期" …
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class DoseSpec:
    period: int | None = None
    part: str | None = None
    number: int | None = None

    def describe(self) -> str:
        out = f"第{self.period}期" if self.period else ""
        out += self.part or ""
        if self.number:
            out += f"{self.number}回目"
        return out


_KANJI = str.maketrans("一二三四五六", "123456")
_DOSE = re.compile(
    r"(?:第?(?P<period>[12])期)?(?P<part>初回|追加)?"
    r"(?:第?(?P<number>\d{1,2})(?:回目|回)?)?"
)


def _dose_text(value: str) -> str:
    text = unicodedata.normalize("NFKC", value).lower().translate(_KANJI)
    return re.sub(r"[\s・()（）]|接種|目$", "", text).replace("ii期", "2期").replace("i期", "1期")


def dose(value: str) -> DoseSpec:
    text = _dose_text(value)
    match = _DOSE.fullmatch(text)
    if not text or match is None or not any(match.groupdict().values()):
        raise FieldError(
            "dose",
            f"接種回「{value}」が読めません（例: 1、2回目、第1期初回2回目、第1期追加、第2期）",
            f"the dose {value!r} is not readable (e.g. 1, 2回目, 第1期初回2回目, 第1期追加, 第2期)",
        )
    number = int(match["number"]) if match["number"] else None
    if number == 0:
        raise FieldError("dose", "接種回は1回目からです", "doses count from 1")
    period = int(match["period"]) if match["period"] else None
    return DoseSpec(period=period, part=match["part"], number=number)


def series_column(value: str) -> DoseSpec:
    spec = dose(value)
    if spec.number is not None and spec.period is None and spec.part is None:
        raise FieldError(
            "dose",
            f"期「{value}」が読めません（例: 第1期初回、第1期追加、第2期、初回、追加）",
            f"the series {value!r} is not readable (e.g. 第1期初回, 第1期追加, 第2期, 初回, 追加)",
        )
    return spec


class DoseProblem(Exception):
    def __init__(self, code: str, ja: str, en: str) -> None:
        super().__init__(en)
        self.code, self.ja, self.en = code, ja, en


def resolve(v: Vaccine, spec: DoseSpec) -> int:
    """The dose number in the vaccine's whole schedule (doseNumberPositiveInt).

    Without 期 or 初回/追加 the number is the dose in the whole schedule. With
    them, the number may be the dose within that series (第1期追加1回目) or in
    the whole schedule (5種混合 第1期追加 4回目): in our schedule a later
    series never starts at a number that could also be a dose within it, so
    the two readings never clash.
    """
    if spec.period is None and spec.part is None:
        assert spec.number is not None
        if spec.number > v.doses:
            raise DoseProblem(
                "dose_beyond_schedule",
                f"{v.name}の定期接種は{v.doses}回までです（{spec.number}回目とされています）",
                f"{v.en} has {v.doses} routine doses; this row says dose {spec.number}",
            )
        return spec.number
    candidates = [
        (series, start)
        for series, start in v.starts()
        if (
            spec.period is None
            or spec.period == series.period
            or (series.period is None and spec.period == 1)
        )
        and (spec.part is None or spec.part == series.part)
    ]
    if not candidates:
        labels = "、".join(s.label for s in v.series if s.label) or "期の区別なし"
        raise DoseProblem(
            "dose_series",
            f"{v.name}に「{spec.describe()}」はありません（{labels}）",
            f"{v.en} has no {spec.describe()!r} (its series: {labels})",
        )
    if spec.number is None:
        if len(candidates) == 1 and candidates[0][0].count == 1:
            return candidates[0][1]
        if len(candidates) > 1:
            raise DoseProblem(
                "dose_ambiguous",
                f"{v.name}の「{spec.describe()}」がどの接種か決められません"
                "（初回・追加や回数も書いてください）",
                f"cannot tell which dose of {v.en} {spec.describe()!r} is "
                "(give the series part and number)",
            )
        raise DoseProblem(
            "dose_number",
            f"{v.name}の「{spec.describe()}」は何回目か書いてください"
            f"（例: {spec.describe()}1回目）",
            f"say which dose of {v.en} {spec.describe()!r} this is (e.g. {spec.describe()}1回目)",
        )
    found: set[int] = set()
    for series, start in candidates:
        if 1 <= spec.number <= series.count:
            found.add(start + spec.number - 1)
        elif start <= spec.number < start + series.count:
            found.add(spec.number)
    if len(found) == 1:
        return found.pop()
    if not found:
        counts = "、".join(f"{s.label or v.name}は{s.count}回" for s, _ in candidates)
        raise DoseProblem(
            "dose_beyond_schedule",
            f"{v.name}の「{spec.describe()}」はありません（{counts}まで）",
            f"{v.en} has no {spec.describe()!r} in its routine schedule",
        )
    raise DoseProblem(
        "dose_ambiguous",
        f"{v.name}の「{spec.describe()}」がどの接種か決められません（期と回数を書いてください）",
        f"cannot tell which dose of {v.en} {spec.describe()!r} is (give the series and number)",
    )


# --------------------------------------------------------------------------
# Columns
# --------------------------------------------------------------------------

COLUMNS: tuple[Column, ...] = (
    *CHILD_COLUMNS,
    CHILD_HANDBOOK,
    Column(
        "vaccine",
        "ワクチン",
        vaccine,
        required=True,
        required_header=True,
        aliases=(
            "ワクチン名",
            "ワクチン種類",
            "ワクチンの種類",
            "予防接種の種類",
            "予防接種名",
            "接種種類",
        ),
        en="the vaccine: its Japanese name or our code (vaccination.md, vaccine list)",
        example="5種混合",
    ),
    Column(
        "dose",
        "接種回",
        dose,
        required=True,
        required_header=True,
        aliases=("接種回数", "回数", "回目", "接種回目"),
        en="which dose: 1, 2回目, or with its series: 第1期初回2回目, 第1期追加, 第2期",
        example="2",
    ),
    Column(
        "series",
        "期",
        series_column,
        aliases=("期別", "接種期", "接種区分"),
        en="the series when the dose column holds only a number: 第1期初回, 第1期追加, 第2期, "
        "初回, 追加",
        example="第1期初回",
    ),
    Column(
        "date",
        "接種日",
        past_date,
        aliases=("接種年月日", "実施日"),
        en="the day of the vaccination",
        example="2024-07-08",
    ),
    Column(
        "lot_number",
        "ロット番号",
        text(30, r"[0-9A-Za-z][0-9A-Za-z./-]*", "英数字"),
        aliases=("ロット", "ロットNo", "製造番号"),
        en="the vaccine lot",
        example="AB123C",
    ),
    Column(
        "clinic_code",
        "医療機関コード",
        medical_institution_code,
        aliases=("接種医療機関コード", "実施医療機関コード"),
        en="the clinic's 10-digit medical institution code",
        example="1010123451",
    ),
    Column(
        "clinic_name",
        "医療機関名",
        text(100),
        aliases=("接種医療機関", "接種医療機関名", "実施医療機関名", "接種場所"),
        en="the clinic's name",
        example="まえばし小児科クリニック",
    ),
    *MOTHER_COLUMNS,
    *MOVE_COLUMNS,
)
_BY_KEY = common.columns_by_key(COLUMNS)
KEY_COLUMNS = ("municipality_code", "resident_number", "vaccine", "dose")
REQUIRED_ON_ADD = ("family_name", "given_name", "birth_date", "sex", "date")


# --------------------------------------------------------------------------
# Row → record
# --------------------------------------------------------------------------


def to_record(row: Row, uploading: str) -> MunicipalRecord | None:
    if not row.values:
        return None
    basics = common.check_common(row, _BY_KEY, uploading, child=True, mother_columns=True)
    values = dict(row.values)
    code, spec = values.get("vaccine"), values.get("dose")
    number = None
    if code is not None and spec is not None:
        number = _dose_number(row, VACCINES[code], spec, values.get("series"))
    if basics.change != "delete":
        common.require(row, _BY_KEY, ["date"], ADD_REQUIRED_JA, ADD_REQUIRED_EN)
        common.check_not_before_birth(row, _BY_KEY, "date", values.get("birth_date"))
    if row.errors or code is None or number is None:
        return None
    values["dose_number"] = number
    values["series_label"] = VACCINES[code].series_of(number).label
    return MunicipalRecord(
        line=row.line,
        change=basics.change,
        key=f"{values['resident_number']}|{code}|{number}",
        subject=common.person(
            row, "child", uploading, basics, handbook=values.get("mch_handbook_number") or ""
        ),
        mother=common.mother(row, uploading, basics),
        values=values,
    )


def _dose_number(row: Row, v: Vaccine, spec: DoseSpec, series: DoseSpec | None) -> int | None:
    if series is not None:
        if (spec.period is not None and spec.period != series.period) or (
            spec.part is not None and series.part is not None and spec.part != series.part
        ):
            row.error(
                "series",
                "dose_series",
                f"期「{series.describe()}」と接種回「{spec.describe()}」が食い違っています",
                f"the series {series.describe()!r} and the dose {spec.describe()!r} disagree",
            )
            return None
        spec = DoseSpec(
            period=spec.period or series.period, part=spec.part or series.part, number=spec.number
        )
    try:
        return resolve(v, spec)
    except DoseProblem as problem:
        # A series the vaccine does not have came from the 期 cell when there is one.
        column = "series" if series is not None and problem.code == "dose_series" else "dose"
        row.error(column, problem.code, problem.ja, problem.en)
        return None


# --------------------------------------------------------------------------
# Record → FHIR
# --------------------------------------------------------------------------


def resources(record: MunicipalRecord, subject: str, mother: str | None) -> Items:
    """The Immunization of an add/update row (nothing for a deletion)."""
    if record.change == "delete":
        return []
    values = record.values
    v = VACCINES[values["vaccine"]]
    protocol: dict[str, Any] = {"doseNumberPositiveInt": values["dose_number"]}
    if values["series_label"]:
        protocol["series"] = values["series_label"]
    resource: dict[str, Any] = {
        "resourceType": "Immunization",
        "meta": common.meta(CATEGORY),
        "status": "completed",
        "vaccineCode": {
            "coding": [{"system": VACCINE_SYSTEM, "code": v.code, "display": v.name}],
            "text": v.name,
        },
        "patient": common.patient_ref(subject),
        "occurrenceDateTime": values["date"].isoformat(),
    }
    if values.get("lot_number"):
        resource["lotNumber"] = values["lot_number"]
    actor = common.institution_ref(values.get("clinic_code"), values.get("clinic_name"))
    if actor is not None:
        resource["performer"] = [{"actor": actor}]
    resource["protocolApplied"] = [protocol]
    return [("immunization", resource)]


FORMAT = MunicipalFormat(
    key=KEY,
    label_ja="予防接種",
    label_en="Immunizations",
    category=CATEGORY,
    columns=COLUMNS,
    to_record=to_record,
    resources=resources,
)
