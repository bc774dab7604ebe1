"""JAHIS 電子版お薬手帳データフォーマット (the e-medication notebook): a parser.

Pure: text (or bytes) in, a structured reading out, with every problem
reported by line — nothing here touches the database. phr/medications.py
maps what is read to FHIR and writes it.

The format (../shared/reference/standards.md §1, data/jahis_tc_records.csv,
docs/formats/jahis.md):

- a version line ``JAHISTCnn,出力区分`` (nn 01–08), then one record per
  line, fields separated by commas, the first field the record number;
- Shift_JIS (CP932 in practice) or UTF-8, CR+LF or LF;
- dates 西暦 ``YYYYMMDD`` or 和暦 ``GYYMMDD`` with era letters M/T/S/H/R;
- a document too large for one QR code is split on record boundaries: every
  part starts with the version line and ends with a 911 record
  ``911,データ固有ID(14桁),分割数,データ連番``; the parts are joined in
  their sequence order without the repeated version lines and 911 records.

A line that cannot be read is skipped and reported (line number, record,
field, value, reason in Japanese and English); the rest of the document is
still read. Nothing is guessed: a field that fails its check is either
dropped with a warning (the record is still useful without it) or the
record is skipped with an error.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation

# --------------------------------------------------------------------------
# The record layout (Ver.2.6 表3-9 … 表3-32, as in data/jahis_tc_records.csv)
# --------------------------------------------------------------------------

BOTH = "both"  # required in every document
TO_PATIENT = "to_patient"  # required when 出力区分 = 1 (pharmacy → patient)
CONDITIONAL = "conditional"
OPTIONAL = ""


@dataclass(frozen=True)
class FieldSpec:
    name: str  # our key
    label: str  # the spec's name, as the report shows it
    type: str  # 9 numeric, X alphanumeric (and . -), N any text
    max_bytes: int  # Shift_JIS bytes
    required: str = OPTIONAL


@dataclass(frozen=True)
class RecordSpec:
    number: str
    name_ja: str
    name_en: str
    fields: tuple[FieldSpec, ...]


def _f(name: str, label: str, type_: str, max_bytes: int, required: str = OPTIONAL) -> FieldSpec:
    return FieldSpec(name, label, type_, max_bytes, required)


_CREATOR = _f("creator", "レコード作成者", "9", 1, BOTH)

RECORDS: dict[str, RecordSpec] = {
    spec.number: spec
    for spec in (
        RecordSpec(
            "1",
            "患者情報レコード",
            "patient",
            (
                _f("name", "患者氏名", "N", 40, BOTH),
                _f("sex", "患者性別", "9", 1, BOTH),
                _f("birth_date", "患者生年月日", "X", 8, BOTH),
                _f("postal_code", "患者郵便番号", "X", 8),
                _f("address", "患者住所", "N", 800),
                _f("phone", "患者電話番号", "X", 13),
                _f("emergency_contact", "緊急連絡先", "N", 800),
                _f("blood_type", "血液型", "N", 20),
                _f("weight", "体重", "X", 7),
                _f("name_kana", "患者氏名カナ", "N", 40),
            ),
        ),
        RecordSpec(
            "2",
            "患者特記レコード",
            "patient notes",
            (
                _f("kind", "患者特記種別", "9", 1, BOTH),
                _f("content", "患者特記内容", "N", 120, BOTH),
                _CREATOR,
            ),
        ),
        RecordSpec(
            "3",
            "要指導医薬品・一般用医薬品服用レコード",
            "OTC medicine",
            (
                _f("name", "薬品名称", "N", 120, BOTH),
                _f("start", "服用開始年月日", "X", 8),
                _f("end", "服用終了年月日", "X", 8),
                _CREATOR,
                _f("serial", "要指導医薬品・一般用医薬品レコード通番", "9", 3),
                _f("jan", "JANコード", "9", 13),
            ),
        ),
        RecordSpec(
            "31",
            "要指導医薬品・一般用医薬品成分レコード",
            "OTC ingredient",
            (
                _f("serial", "要指導医薬品・一般用医薬品レコード通番", "9", 3, BOTH),
                _f("name", "成分名", "N", 256, BOTH),
                _f("code_kind", "コード種別", "9", 1, BOTH),
                _f("code", "成分コード", "X", 20, CONDITIONAL),
                _CREATOR,
            ),
        ),
        RecordSpec(
            "4",
            "手帳メモレコード",
            "notebook memo",
            (
                _f("memo", "手帳メモ情報", "N", 400, BOTH),
                _f("date", "メモ入力年月日", "X", 8),
                _CREATOR,
            ),
        ),
        RecordSpec(
            "5",
            "調剤等年月日レコード",
            "dispensing date",
            (_f("date", "調剤等年月日", "X", 8, BOTH), _CREATOR),
        ),
        RecordSpec(
            "11",
            "調剤－医療機関等レコード",
            "dispensing institution",
            (
                _f("name", "医療機関等名称", "N", 120, BOTH),
                _f("prefecture", "医療機関等都道府県", "X", 2, TO_PATIENT),
                _f("fee_table", "医療機関等点数表", "X", 1, TO_PATIENT),
                _f("code", "医療機関等コード", "X", 7, TO_PATIENT),
                _f("postal_code", "医療機関等郵便番号", "X", 8),
                _f("address", "医療機関等住所", "N", 800),
                _f("phone", "医療機関等電話番号", "X", 13),
                _CREATOR,
            ),
        ),
        RecordSpec(
            "15",
            "調剤－医師・薬剤師レコード",
            "dispensing pharmacist or doctor",
            (
                _f("name", "医師・薬剤師氏名", "N", 40, BOTH),
                _f("contact", "医師・薬剤師連絡先", "N", 800),
                _CREATOR,
            ),
        ),
        RecordSpec(
            "51",
            "処方－医療機関レコード",
            "prescribing institution",
            (
                _f("name", "医療機関名称", "N", 120, BOTH),
                _f("prefecture", "医療機関都道府県", "X", 2, TO_PATIENT),
                _f("fee_table", "医療機関点数表", "X", 1, TO_PATIENT),
                _f("code", "医療機関コード", "X", 7, TO_PATIENT),
                _CREATOR,
            ),
        ),
        RecordSpec(
            "55",
            "処方－医師レコード",
            "prescribing doctor",
            (
                _f("name", "医師氏名", "N", 40, BOTH),
                _f("department", "診療科名", "N", 80),
                _CREATOR,
            ),
        ),
        RecordSpec(
            "201",
            "薬品レコード",
            "medicine",
            (
                _f("rp", "RP番号", "9", 3, BOTH),
                _f("name", "薬品名称", "N", 120, BOTH),
                _f("dose", "用量", "X", 12, TO_PATIENT),
                _f("unit", "単位名", "N", 12, TO_PATIENT),
                _f("code_kind", "薬品コード種別", "9", 1, TO_PATIENT),
                _f("code", "薬品コード", "X", 13, CONDITIONAL),
                _CREATOR,
                _f("generic_name", "一般名", "N", 120),
                _f("generic_code_kind", "一般名コード種別", "9", 1),
                _f("generic_code", "一般名コード", "X", 12, CONDITIONAL),
            ),
        ),
        RecordSpec(
            "281",
            "薬品補足レコード",
            "medicine supplement",
            (
                _f("rp", "RP番号", "9", 3, BOTH),
                _f("text", "薬品補足情報", "N", 100, BOTH),
                _CREATOR,
            ),
        ),
        RecordSpec(
            "291",
            "薬品服用注意レコード",
            "medicine caution",
            (_f("rp", "RP番号", "9", 3, BOTH), _f("text", "内容", "N", 400, BOTH), _CREATOR),
        ),
        RecordSpec(
            "301",
            "用法レコード",
            "usage",
            (
                _f("rp", "RP番号", "9", 3, BOTH),
                _f("usage", "用法名称", "N", 100, CONDITIONAL),
                _f("quantity", "調剤数量", "9", 3, TO_PATIENT),
                _f("quantity_unit", "調剤単位", "N", 100, TO_PATIENT),
                _f("form", "剤形コード", "X", 2, TO_PATIENT),
                _f("usage_code_kind", "用法コード種別", "9", 1, TO_PATIENT),
                _f("usage_code", "用法コード", "X", 16, CONDITIONAL),
                _CREATOR,
            ),
        ),
        RecordSpec(
            "311",
            "用法補足レコード",
            "usage supplement",
            (
                _f("rp", "RP番号", "9", 3, BOTH),
                _f("text", "用法補足情報", "N", 100, BOTH),
                _CREATOR,
            ),
        ),
        RecordSpec(
            "391",
            "処方服用注意レコード",
            "prescription caution",
            (_f("rp", "RP番号", "9", 3, BOTH), _f("text", "内容", "N", 400, BOTH), _CREATOR),
        ),
        RecordSpec(
            "401",
            "服用注意レコード",
            "caution",
            (_f("text", "内容", "N", 400, BOTH), _CREATOR),
        ),
        RecordSpec(
            "411",
            "医療機関等提供情報レコード",
            "information from the institution",
            (
                _f("text", "内容", "N", 400, BOTH),
                _f("kind", "提供情報種別", "9", 2, BOTH),
                _CREATOR,
            ),
        ),
        RecordSpec(
            "421",
            "残薬確認レコード",
            "leftover medicine check",
            (_f("text", "残薬内容", "N", 400, BOTH), _CREATOR),
        ),
        RecordSpec(
            "501",
            "備考レコード",
            "remarks",
            (_f("text", "備考情報", "N", 400, BOTH), _CREATOR),
        ),
        RecordSpec(
            "601",
            "患者等記入レコード",
            "patient entry",
            (_f("text", "患者等記入情報", "N", 400, BOTH), _f("date", "入力年月日", "X", 8)),
        ),
        RecordSpec(
            "701",
            "かかりつけ薬剤師レコード",
            "family pharmacist",
            (
                _f("name", "かかりつけ薬剤師氏名", "N", 40, BOTH),
                _f("pharmacy", "勤務先薬局名称", "N", 120, BOTH),
                _f("contact", "連絡先", "N", 800, BOTH),
                _f("start", "担当開始日", "X", 8),
                _f("end", "担当終了日", "X", 8),
                _CREATOR,
            ),
        ),
        RecordSpec(
            "911",
            "分割制御レコード",
            "split control",
            (
                _f("data_id", "データ固有ID", "9", 14, BOTH),
                _f("total", "分割数", "9", 3, BOTH),
                _f("seq", "データ連番", "9", 3, BOTH),
            ),
        ),
    )
}

# Records of one dispensing (調剤情報): they follow its 5 record.
DISPENSING_RECORDS = frozenset(
    {"11", "15", "51", "55", "201", "281", "291", "301", "311", "391", "401", "411", "421", "501"}
)
# Fields read as dates.
DATE_FIELDS = frozenset({"birth_date", "start", "end", "date"})

VERSIONS = tuple(f"JAHISTC{n:02d}" for n in range(1, 9))
_HEADER = re.compile(r"^JAHISTC(\d\d)$")
SPLIT_RECORD = "911"

# 薬品コード種別 (record 201): 1 none, 2 レセプト電算処理システム用コード,
# 3 厚生労働省コード (薬価基準収載医薬品コード), 4 YJ, 6 HOT.
DRUG_CODE_KINDS = {"1": "", "2": "receipt", "3": "mhlw", "4": "yj", "6": "hot"}
HOT_LENGTHS = (7, 9, 13)  # HOT7, HOT9, HOT13
# 剤形コード (record 301).
FORMS = {
    "1": "内服",
    "2": "内滴",
    "3": "屯服",
    "4": "注射",
    "5": "外用",
    "6": "浸煎",
    "7": "湯",
    "9": "材料",
    "10": "その他",
}
# 患者特記種別 (record 2).
NOTE_KINDS = {"1": "allergy", "2": "side_effect", "3": "history", "9": "other"}

# Limits that keep one submission small (a QR code holds ~2.3 kB; a whole
# notebook file a few tens of kB).
MAX_LINES = 20000
MAX_LINE_CHARS = 4000

# --------------------------------------------------------------------------
# Issues: what the person is told about a line
# --------------------------------------------------------------------------

ERROR = "error"  # the line (or the whole document) was not imported
WARNING = "warning"  # the line was imported, a value was dropped or is odd
INFO = "info"  # read but, by design, not imported


@dataclass(frozen=True)
class Issue:
    line: int  # 1-based within its part (0: the document as a whole)
    code: str
    ja: str
    en: str
    severity: str = ERROR
    record: str = ""
    field: str = ""
    value: str = ""
    part: int | None = None  # the split part (データ連番) the line came from

    def as_dict(self) -> dict[str, object]:
        return {
            "line": self.line,
            "code": self.code,
            "ja": self.ja,
            "en": self.en,
            "severity": self.severity,
            "record": self.record,
            "field": self.field,
            "value": self.value,
            "part": self.part,
        }


def shown(value: str, limit: int = 60) -> str:
    """A value as a report shows it: one line, cut at `limit` characters."""
    value = "".join(c if c.isprintable() else "�" for c in value)
    return value if len(value) <= limit else value[: limit - 1] + "…"


# --------------------------------------------------------------------------
# Bytes, lines, fields
# --------------------------------------------------------------------------


def decode(raw: bytes) -> tuple[str, str]:
    """Bytes as text and the encoding found: UTF-8 (a BOM dropped) when the
    bytes are valid UTF-8, else CP932 (the Windows superset of Shift_JIS
    pharmacies write). Bytes CP932 cannot read become U+FFFD, and the lines
    holding them are reported by the parser."""
    if raw.startswith(codecs.BOM_UTF8):
        return raw[len(codecs.BOM_UTF8) :].decode("utf-8", errors="replace"), "utf-8"
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return raw.decode("cp932", errors="replace"), "cp932"


def sjis_length(value: str) -> int:
    try:
        return len(value.encode("cp932"))
    except UnicodeEncodeError:
        # Characters outside Shift_JIS (外字 are not allowed): count them as
        # two bytes, as a full-width character would be.
        return sum(len(c.encode("cp932", errors="ignore")) or 2 for c in value)


def normalize_code(value: str) -> str:
    """Digits and letters as ASCII (全角 → 半角) for numeric and code fields."""
    return unicodedata.normalize("NFKC", value).strip()


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

# 和暦 era letters (別表1) with the first and last day of each era.
ERAS: dict[str, tuple[date, date | None]] = {
    "M": (date(1868, 1, 25), date(1912, 7, 29)),
    "T": (date(1912, 7, 30), date(1926, 12, 24)),
    "S": (date(1926, 12, 25), date(1989, 1, 7)),
    "H": (date(1989, 1, 8), date(2019, 4, 30)),
    "R": (date(2019, 5, 1), None),
}
# The first year of each era, as its year 1 (元年).
ERA_BASE = {"M": 1868, "T": 1912, "S": 1926, "H": 1989, "R": 2019}


class DateError(ValueError):
    def __init__(self, code: str, ja: str, en: str) -> None:
        super().__init__(en)
        self.code, self.ja, self.en = code, ja, en


def parse_date(value: str) -> date:
    """西暦 YYYYMMDD or 和暦 GYYMMDD (e.g. R020410 = 2020-04-10, S330303 =
    1958-03-03); DateError otherwise, also for a 和暦 date outside its era."""
    text = normalize_code(value).upper()
    if re.fullmatch(r"\d{8}", text):
        try:
            return date(int(text[:4]), int(text[4:6]), int(text[6:]))
        except ValueError:
            raise DateError(
                "date_invalid", f"{text} は存在しない日付です", f"{text} is not a real date"
            ) from None
    match = re.fullmatch(r"([MTSHR])(\d{2})(\d{2})(\d{2})", text)
    if match is None:
        raise DateError(
            "date_format",
            "日付は西暦8桁（YYYYMMDD）か和暦7桁（GYYMMDD、元号はM/T/S/H/R）で書いてください",
            "a date is YYYYMMDD, or GYYMMDD with an era letter M/T/S/H/R",
        )
    era, yy, mm, dd = match.group(1), int(match.group(2)), int(match.group(3)), int(match.group(4))
    if yy == 0:
        raise DateError("date_invalid", f"{text}: 年は01以上です", f"{text}: the year starts at 01")
    try:
        day = date(ERA_BASE[era] + yy - 1, mm, dd)
    except ValueError:
        raise DateError(
            "date_invalid", f"{text} は存在しない日付です", f"{text} is not a real date"
        ) from None
    first, last = ERAS[era]
    if day < first or (last is not None and day > last):
        raise DateError(
            "date_era",
            f"{text} はその元号の期間外です（{day.isoformat()}）",
            f"{text} ({day.isoformat()}) is outside that era",
        )
    return day


def parse_decimal(value: str) -> Decimal | None:
    try:
        number = Decimal(normalize_code(value))
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() and 0 <= number < Decimal(10) ** 9 else None


# --------------------------------------------------------------------------
# What is read
# --------------------------------------------------------------------------


@dataclass
class Record:
    number: str
    line: int
    values: dict[str, str]
    part: int | None = None


@dataclass
class Drug:
    rp: int
    index: int  # 1-based position within its RP
    name: str
    dose: Decimal | None
    dose_text: str
    unit: str
    code_kind: str  # a DRUG_CODE_KINDS value
    code: str
    generic_name: str
    generic_code: str
    line: int
    supplements: list[str] = field(default_factory=list)  # 281
    cautions: list[str] = field(default_factory=list)  # 291
    part: int | None = None


@dataclass
class Usage:
    rp: int
    text: str
    quantity: int | None
    quantity_unit: str
    form: str  # 剤形コード
    usage_code: str  # JAMI 用法コード when its kind is 2
    supplements: list[str] = field(default_factory=list)  # 311


@dataclass
class Prescription:
    """One RP (a group of medicines taken the same way)."""

    rp: int
    doctor: str = ""
    department: str = ""
    drugs: list[Drug] = field(default_factory=list)
    usage: Usage | None = None
    cautions: list[str] = field(default_factory=list)  # 391


@dataclass
class Institution:
    name: str
    prefecture: str = ""
    fee_table: str = ""
    code: str = ""  # 7 digits
    postal_code: str = ""
    address: str = ""
    phone: str = ""

    @property
    def code10(self) -> str:
        """The 10-digit 医療機関コード (prefecture + 点数表 + 7 digits), when
        all three parts are there."""
        if len(self.prefecture) == 2 and len(self.fee_table) == 1 and len(self.code) == 7:
            return self.prefecture + self.fee_table + self.code
        return ""


@dataclass
class Dispensing:
    """One 調剤情報: a 5 record and what follows it."""

    date: date
    line: int
    part: int | None = None
    institution: Institution | None = None  # 11
    dispenser: str = ""  # 15 (the pharmacist, or the doctor who dispensed)
    dispenser_contact: str = ""
    prescriber_org: Institution | None = None  # 51
    prescriptions: list[Prescription] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (record, text)

    def prescription(self, rp: int) -> Prescription | None:
        for prescription in self.prescriptions:
            if prescription.rp == rp:
                return prescription
        return None

    @property
    def drugs(self) -> list[Drug]:
        return [drug for p in self.prescriptions for drug in p.drugs]


@dataclass
class PatientNote:
    kind: str  # a NOTE_KINDS value
    content: str
    creator: str
    line: int
    part: int | None = None


@dataclass
class OtcMedicine:
    name: str
    start: date | None
    end: date | None
    serial: str
    jan: str
    line: int
    part: int | None = None
    ingredients: list[str] = field(default_factory=list)


@dataclass
class PatientInfo:
    name: str
    sex: str
    birth_date: date | None
    name_kana: str = ""


@dataclass
class Document:
    """One JAHIS document, as read."""

    version: str = ""
    output_kind: str = ""
    patient: PatientInfo | None = None
    notes: list[PatientNote] = field(default_factory=list)
    otc: list[OtcMedicine] = field(default_factory=list)
    dispensings: list[Dispensing] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    # How many lines of each record number were read (the version line is
    # "JAHISTC"), and the lines skipped.
    counts: dict[str, int] = field(default_factory=dict)
    skipped_lines: int = 0
    data_id: str = ""  # when assembled from split parts

    @property
    def has_content(self) -> bool:
        return bool(self.dispensings or self.otc or self.notes)


@dataclass
class SplitPart:
    """One part of a split document, as received (its own text, so it can
    be kept until the other parts arrive)."""

    data_id: str
    total: int
    seq: int
    text: str


@dataclass
class Reading:
    """What one submission held: whole documents, parts of split ones, and
    the issues found outside any document."""

    documents: list[Document] = field(default_factory=list)
    parts: list[SplitPart] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    encoding: str = ""


# --------------------------------------------------------------------------
# Splitting a submission into documents and parts
# --------------------------------------------------------------------------


def _lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _is_header(line: str) -> bool:
    head = line.split(",", 1)[0].strip().lstrip("\ufeff")
    return head.upper().startswith("JAHISTC")


def read(text: str, *, encoding: str = "") -> Reading:
    """Cut a submission into documents at each version line. A document
    whose last record is a 911 is a split part, returned whole in
    `parts`; the others are parsed. Lines before the first version line
    are reported."""
    reading = Reading(encoding=encoding)
    lines = _lines(text.lstrip("\ufeff"))
    if len(lines) > MAX_LINES:
        reading.issues.append(
            Issue(
                0,
                "too_long",
                f"行数が多すぎます（{len(lines)}行、上限{MAX_LINES}行）",
                f"too many lines ({len(lines)}, at most {MAX_LINES})",
            )
        )
        return reading
    chunks: list[tuple[int, list[str]]] = []  # (first line number, lines)
    stray: list[int] = []
    for number, line in enumerate(lines, start=1):
        if _is_header(line):
            chunks.append((number, [line]))
        elif chunks:
            chunks[-1][1].append(line)
        elif line.strip():
            stray.append(number)
    if stray:
        reading.issues.append(
            Issue(
                stray[0],
                "before_header",
                f"バージョンレコード（JAHISTCnn）より前の行は読めません（{len(stray)}行）",
                f"lines before the version record (JAHISTCnn) cannot be read ({len(stray)})",
                value=shown(lines[stray[0] - 1]),
            )
        )
    if not chunks:
        reading.issues.append(
            Issue(
                0,
                "no_header",
                "お薬手帳のデータではありません"
                "（1行目に JAHISTC01〜08 のバージョンレコードがありません）",
                "this is not e-medication notebook data "
                "(no JAHISTC01–08 version record at the start)",
            )
        )
        return reading
    for first, chunk in chunks:
        while chunk and not chunk[-1].strip():
            chunk.pop()
        split = _split_control(chunk)
        if split is not None:
            data_id, total, seq = split
            reading.parts.append(SplitPart(data_id, total, seq, "\n".join(chunk)))
            continue
        document = parse_document(chunk, first_line=first)
        reading.documents.append(document)
    return reading


def _split_control(lines: list[str]) -> tuple[str, int, int] | None:
    """(データ固有ID, 分割数, データ連番) of a part whose last line is a
    well-formed 911 record; None otherwise (a broken 911 is reported by
    the document parser)."""
    if not lines:
        return None
    cells = [normalize_code(c) for c in lines[-1].split(",")]
    if len(cells) < 4 or cells[0] != SPLIT_RECORD:
        return None
    data_id, total, seq = cells[1], cells[2], cells[3]
    if not (re.fullmatch(r"\d{1,14}", data_id) and total.isdigit() and seq.isdigit()):
        return None
    total_n, seq_n = int(total), int(seq)
    if not (1 <= total_n <= 999 and 1 <= seq_n <= total_n):
        return None
    return data_id, total_n, seq_n


def missing_parts(parts: Iterable[SplitPart]) -> tuple[int, list[int]]:
    """(分割数, the データ連番 not yet received) of one document's parts."""
    parts = list(parts)
    total = max((p.total for p in parts), default=0)
    have = {p.seq for p in parts}
    return total, [n for n in range(1, total + 1) if n not in have]


def assemble(parts: Iterable[SplitPart]) -> Document:
    """Join the parts of one split document in データ連番 order (whatever
    order they arrived in) and parse the whole. Line numbers in issues are
    those of each part, with the part's number."""
    ordered = sorted({p.seq: p for p in parts}.values(), key=lambda p: p.seq)
    lines: list[tuple[int, int | None, str]] = []
    totals = {p.total for p in ordered}
    for part in ordered:
        part_lines = _lines(part.text)
        for number, line in enumerate(part_lines, start=1):
            if number == 1 and part.seq != ordered[0].seq and _is_header(line):
                continue  # every part repeats the version line
            if number == len(part_lines) and line.split(",", 1)[0].strip() == SPLIT_RECORD:
                continue  # the 911 control record is not data
            lines.append((number, part.seq, line))
    document = _parse(lines)
    document.data_id = ordered[0].data_id if ordered else ""
    if len(totals) > 1:
        document.issues.append(
            Issue(
                0,
                "split_total",
                "分割データの分割数が部分ごとに違います",
                "the parts of the split data disagree on the number of parts",
                field="分割数",
                value=",".join(str(t) for t in sorted(totals)),
            )
        )
    return document


def parse_document(lines: list[str], *, first_line: int = 1) -> Document:
    numbered = [(first_line + i, None, line) for i, line in enumerate(lines)]
    return _parse(numbered)


# --------------------------------------------------------------------------
# Parsing one document
# --------------------------------------------------------------------------


class _Parser:
    def __init__(self) -> None:
        self.doc = Document()
        self.current: Dispensing | None = None
        self.doctor = ("", "")
        self.otc_by_serial: dict[str, OtcMedicine] = {}
        # Lines not read because the version record could not be used.
        self.unread: list[int] = []
        self.unread_part: int | None = None

    # -- reporting --

    def issue(
        self,
        line: int,
        part: int | None,
        code: str,
        ja: str,
        en: str,
        *,
        severity: str = ERROR,
        record: str = "",
        field: str = "",
        value: str = "",
    ) -> None:
        self.doc.issues.append(
            Issue(line, code, ja, en, severity, record, field, shown(value), part)
        )
        if severity == ERROR and line:
            self.doc.skipped_lines += 1

    # -- fields --

    def fields(self, number: str, line: int, part: int | None, cells: list[str]) -> Record | None:
        """The record's fields checked against the layout; None (reported)
        when the record cannot be used."""
        spec = RECORDS[number]
        label = f"{number} {spec.name_ja}"
        if len(cells) > len(spec.fields):
            extra = [c for c in cells[len(spec.fields) :] if c.strip()]
            if extra:
                self.issue(
                    line,
                    part,
                    "extra_fields",
                    f"{label}: 項目が多すぎます（{len(spec.fields)}項目まで）。"
                    "余分な項目は無視しました",
                    f"record {number}: too many fields (at most {len(spec.fields)}); "
                    "the extra ones were ignored",
                    severity=WARNING,
                    record=number,
                    value=",".join(extra),
                )
        values: dict[str, str] = {}
        for position, spec_field in enumerate(spec.fields):
            raw = cells[position] if position < len(cells) else ""
            value = raw.strip()
            if spec_field.type in ("9", "X"):
                value = normalize_code(value)
            required = spec_field.required == BOTH or (
                spec_field.required == TO_PATIENT and self.doc.output_kind == "1"
            )
            if not value:
                if spec_field.required == BOTH and spec_field.name != "creator":
                    self.issue(
                        line,
                        part,
                        "required",
                        f"{label}: {spec_field.label}がありません",
                        f"record {number}: {spec_field.label} is missing",
                        record=number,
                        field=spec_field.label,
                    )
                    return None
                if required and spec_field.name != "creator":
                    self.issue(
                        line,
                        part,
                        "required",
                        f"{label}: {spec_field.label}がありません",
                        f"record {number}: {spec_field.label} is missing",
                        severity=WARNING,
                        record=number,
                        field=spec_field.label,
                    )
                values[spec_field.name] = ""
                continue
            if spec_field.type == "9" and not value.isdigit():
                problem = (
                    f"{label}: {spec_field.label}は数字で書きます",
                    f"record {number}: {spec_field.label} must be digits",
                )
                if spec_field.required == BOTH and spec_field.name != "creator":
                    self.issue(
                        line,
                        part,
                        "not_numeric",
                        *problem,
                        record=number,
                        field=spec_field.label,
                        value=value,
                    )
                    return None
                self.issue(
                    line,
                    part,
                    "not_numeric",
                    problem[0] + "（無視しました）",
                    problem[1] + " (ignored)",
                    severity=WARNING,
                    record=number,
                    field=spec_field.label,
                    value=value,
                )
                values[spec_field.name] = ""
                continue
            if sjis_length(value) > spec_field.max_bytes and spec_field.name not in DATE_FIELDS:
                self.issue(
                    line,
                    part,
                    "too_long",
                    f"{label}: {spec_field.label}が長すぎます（{spec_field.max_bytes}バイトまで）",
                    f"record {number}: {spec_field.label} is longer than "
                    f"{spec_field.max_bytes} bytes",
                    severity=WARNING,
                    record=number,
                    field=spec_field.label,
                    value=value,
                )
            values[spec_field.name] = value
        return Record(number, line, values, part)

    def date_of(
        self, record: Record, name: str, label: str, *, required: bool
    ) -> tuple[bool, date | None]:
        """(usable, the date): an unreadable required date makes the record
        unusable; an unreadable optional one is dropped with a warning."""
        value = record.values.get(name, "")
        if not value:
            return (not required), None
        try:
            return True, parse_date(value)
        except DateError as error:
            spec = RECORDS[record.number]
            self.issue(
                record.line,
                record.part,
                error.code,
                f"{record.number} {spec.name_ja}: {label}: {error.ja}"
                + ("" if required else "（無視しました）"),
                f"record {record.number}: {label}: {error.en}" + ("" if required else " (ignored)"),
                severity=ERROR if required else WARNING,
                record=record.number,
                field=label,
                value=value,
            )
            return (not required), None

    def rp_of(self, record: Record) -> int:
        return int(record.values["rp"])

    # -- records --

    def line(self, number: int, part: int | None, text: str) -> None:
        if not text.strip():
            return
        if len(text) > MAX_LINE_CHARS:
            self.issue(
                number,
                part,
                "line_too_long",
                f"行が長すぎます（{MAX_LINE_CHARS}文字まで）",
                f"the line is too long (at most {MAX_LINE_CHARS} characters)",
                value=text,
            )
            return
        if "\ufffd" in text or _CONTROL.search(text):
            self.issue(
                number,
                part,
                "unreadable",
                "読めない文字があります（文字コードが Shift_JIS でも UTF-8 でもないか、制御文字）",
                "the line holds characters that cannot be read "
                "(neither Shift_JIS nor UTF-8, or control characters)",
                value=text,
            )
            return
        cells = text.split(",")
        head = normalize_code(cells[0])
        if head.upper().startswith("JAHISTC"):
            self.header(number, part, cells)
            return
        if head not in RECORDS:
            self.issue(
                number,
                part,
                "unknown_record",
                f"レコード番号 {shown(head, 10)} はお薬手帳の仕様にありません",
                f"record number {shown(head, 10)} is not in the e-medication notebook format",
                record=shown(head, 10),
                value=text,
            )
            return
        if not self.doc.version:
            # One report for the whole document, not one per line.
            self.unread.append(number)
            self.unread_part = part
            self.doc.skipped_lines += 1
            return
        self.doc.counts[head] = self.doc.counts.get(head, 0) + 1
        if head == SPLIT_RECORD:
            self.issue(
                number,
                part,
                "split_misplaced",
                "分割制御レコード（911）は分割データの最終行にだけ書きます",
                "the split control record (911) belongs on the last line of a part only",
                record=head,
                value=text,
            )
            return
        record = self.fields(head, number, part, cells[1:])
        if record is None:
            return
        if head in DISPENSING_RECORDS and self.current is None:
            self.issue(
                number,
                part,
                "no_dispensing",
                f"{head} {RECORDS[head].name_ja}: 調剤等年月日レコード（5）の後に書きます",
                f"record {head} must follow a dispensing date record (5)",
                record=head,
                value=text,
            )
            return
        getattr(self, f"record_{head}")(record)

    def header(self, number: int, part: int | None, cells: list[str]) -> None:
        token = normalize_code(cells[0]).upper()
        if self.doc.version:
            self.issue(
                number,
                part,
                "header_repeated",
                "バージョンレコードが2つあります",
                "a second version record",
                record="JAHISTC",
                value=",".join(cells),
            )
            return
        match = _HEADER.match(token)
        if match is None or token not in VERSIONS:
            self.issue(
                number,
                part,
                "version",
                f"バージョン {shown(token, 12)} には対応していません（JAHISTC01〜JAHISTC08）",
                f"version {shown(token, 12)} is not supported (JAHISTC01–JAHISTC08)",
                record="JAHISTC",
                field="バージョン情報",
                value=token,
            )
            return
        kind = normalize_code(cells[1]) if len(cells) > 1 else ""
        if kind not in ("1", "2"):
            self.issue(
                number,
                part,
                "output_kind",
                "出力区分は 1（医療機関・薬局→患者等）か 2（患者等→医療機関・薬局）です",
                "the output kind is 1 (pharmacy to patient) or 2 (patient to pharmacy)",
                severity=WARNING,
                record="JAHISTC",
                field="出力区分",
                value=kind,
            )
        self.doc.version = token
        self.doc.output_kind = kind
        self.doc.counts["JAHISTC"] = 1

    def record_1(self, record: Record) -> None:
        _, birth = self.date_of(record, "birth_date", "患者生年月日", required=False)
        v = record.values
        self.doc.patient = PatientInfo(v["name"], v["sex"], birth, v.get("name_kana", ""))

    def record_2(self, record: Record) -> None:
        kind = NOTE_KINDS.get(record.values["kind"])
        if kind is None:
            self.issue(
                record.line,
                record.part,
                "note_kind",
                "患者特記種別は 1・2・3・9 のどれかです",
                "the note kind is 1, 2, 3 or 9",
                record="2",
                field="患者特記種別",
                value=record.values["kind"],
            )
            return
        self.doc.notes.append(
            PatientNote(
                kind, record.values["content"], record.values["creator"], record.line, record.part
            )
        )

    def record_3(self, record: Record) -> None:
        _, start = self.date_of(record, "start", "服用開始年月日", required=False)
        _, end = self.date_of(record, "end", "服用終了年月日", required=False)
        if start and end and end < start:
            self.issue(
                record.line,
                record.part,
                "date_order",
                "服用終了年月日が開始年月日より前です（終了日は無視しました）",
                "the end date is before the start date (the end date was ignored)",
                severity=WARNING,
                record="3",
                field="服用終了年月日",
                value=record.values["end"],
            )
            end = None
        medicine = OtcMedicine(
            record.values["name"],
            start,
            end,
            record.values["serial"],
            record.values["jan"],
            record.line,
            record.part,
        )
        self.doc.otc.append(medicine)
        if medicine.serial:
            self.otc_by_serial[medicine.serial] = medicine

    def record_31(self, record: Record) -> None:
        medicine = self.otc_by_serial.get(record.values["serial"])
        if medicine is None:
            self.issue(
                record.line,
                record.part,
                "no_otc",
                "この通番の要指導医薬品・一般用医薬品レコード（3）がありません",
                "no OTC medicine record (3) has this serial number",
                record="31",
                field="通番",
                value=record.values["serial"],
            )
            return
        medicine.ingredients.append(record.values["name"])

    def record_4(self, record: Record) -> None:
        self.read_only(record)

    def record_601(self, record: Record) -> None:
        self.read_only(record)

    def record_701(self, record: Record) -> None:
        self.read_only(record)

    def read_only(self, record: Record) -> None:
        spec = RECORDS[record.number]
        self.issue(
            record.line,
            record.part,
            "not_imported",
            f"{record.number} {spec.name_ja}は読みましたが、記録には取り込みません",
            f"record {record.number} ({spec.name_en}) was read but is not imported",
            severity=INFO,
            record=record.number,
        )

    def record_5(self, record: Record) -> None:
        ok, day = self.date_of(record, "date", "調剤等年月日", required=True)
        if not ok or day is None:
            # The records of this dispensing cannot be dated: each is
            # reported as following no dispensing date.
            self.current = None
            return
        self.current = Dispensing(date=day, line=record.line, part=record.part)
        self.doctor = ("", "")
        self.doc.dispensings.append(self.current)

    def _institution(self, record: Record) -> Institution:
        v = record.values
        institution = Institution(
            name=v["name"],
            prefecture=v.get("prefecture", ""),
            fee_table=v.get("fee_table", ""),
            code=v.get("code", ""),
            postal_code=v.get("postal_code", ""),
            address=v.get("address", ""),
            phone=v.get("phone", ""),
        )
        if institution.code and not re.fullmatch(r"\d{7}", institution.code):
            self.issue(
                record.line,
                record.part,
                "institution_code",
                "医療機関等コードは7桁の数字です（無視しました）",
                "the institution code has 7 digits (ignored)",
                severity=WARNING,
                record=record.number,
                field="医療機関等コード",
                value=institution.code,
            )
            institution.code = ""
        if institution.prefecture and not (
            institution.prefecture.isdigit() and 1 <= int(institution.prefecture) <= 47
        ):
            self.issue(
                record.line,
                record.part,
                "prefecture",
                "都道府県番号は01〜47です（無視しました）",
                "the prefecture number is 01–47 (ignored)",
                severity=WARNING,
                record=record.number,
                field="都道府県",
                value=institution.prefecture,
            )
            institution.prefecture = ""
        return institution

    def record_11(self, record: Record) -> None:
        assert self.current is not None
        self.current.institution = self._institution(record)

    def record_15(self, record: Record) -> None:
        assert self.current is not None
        self.current.dispenser = record.values["name"]
        self.current.dispenser_contact = record.values.get("contact", "")

    def record_51(self, record: Record) -> None:
        assert self.current is not None
        self.current.prescriber_org = self._institution(record)

    def record_55(self, record: Record) -> None:
        self.doctor = (record.values["name"], record.values.get("department", ""))

    def _prescription(self, rp: int) -> Prescription:
        assert self.current is not None
        found = self.current.prescription(rp)
        if found is None:
            found = Prescription(rp=rp, doctor=self.doctor[0], department=self.doctor[1])
            self.current.prescriptions.append(found)
        return found

    def record_201(self, record: Record) -> None:
        v = record.values
        rp = self.rp_of(record)
        prescription = self._prescription(rp)
        kind = DRUG_CODE_KINDS.get(v["code_kind"]) if v["code_kind"] else ""
        code = v["code"]
        if kind is None:
            self.issue(
                record.line,
                record.part,
                "code_kind",
                "薬品コード種別は 1・2・3・4・6 のどれかです（コードは無視しました）",
                "the medicine code kind is 1, 2, 3, 4 or 6 (the code was ignored)",
                severity=WARNING,
                record="201",
                field="薬品コード種別",
                value=v["code_kind"],
            )
            kind, code = "", ""
        elif kind and not re.fullmatch(r"[0-9A-Za-z]{1,13}", code):
            if code:
                self.issue(
                    record.line,
                    record.part,
                    "drug_code",
                    "薬品コードは英数字13桁までです（無視しました）",
                    "the medicine code is up to 13 letters and digits (ignored)",
                    severity=WARNING,
                    record="201",
                    field="薬品コード",
                    value=code,
                )
            kind, code = "", ""
        elif not kind:
            code = ""
        elif kind == "hot" and len(code) not in HOT_LENGTHS:
            self.issue(
                record.line,
                record.part,
                "drug_code",
                "HOTコードは7・9・13桁です（無視しました）",
                "a HOT code has 7, 9 or 13 digits (ignored)",
                severity=WARNING,
                record="201",
                field="薬品コード",
                value=code,
            )
            kind, code = "", ""
        dose = parse_decimal(v["dose"]) if v["dose"] else None
        if v["dose"] and dose is None:
            self.issue(
                record.line,
                record.part,
                "dose",
                "用量が数値ではありません（文字のまま残しました）",
                "the dose is not a number (kept as text)",
                severity=WARNING,
                record="201",
                field="用量",
                value=v["dose"],
            )
        generic_code = v.get("generic_code", "") if v.get("generic_code_kind") == "2" else ""
        prescription.drugs.append(
            Drug(
                rp=rp,
                index=len(prescription.drugs) + 1,
                name=v["name"],
                dose=dose,
                dose_text=v["dose"],
                unit=v["unit"],
                code_kind=kind,
                code=code,
                generic_name=v.get("generic_name", ""),
                generic_code=generic_code,
                line=record.line,
                part=record.part,
            )
        )

    def _last_drug(self, record: Record) -> Drug | None:
        assert self.current is not None
        prescription = self.current.prescription(self.rp_of(record))
        if prescription is None or not prescription.drugs:
            self.issue(
                record.line,
                record.part,
                "no_drug",
                f"{record.number} {RECORDS[record.number].name_ja}: "
                "このRP番号の薬品レコード（201）がありません",
                f"record {record.number}: no medicine record (201) has this RP number",
                record=record.number,
                field="RP番号",
                value=record.values["rp"],
            )
            return None
        return prescription.drugs[-1]

    def record_281(self, record: Record) -> None:
        drug = self._last_drug(record)
        if drug is not None:
            drug.supplements.append(record.values["text"])

    def record_291(self, record: Record) -> None:
        drug = self._last_drug(record)
        if drug is not None:
            drug.cautions.append(record.values["text"])

    def record_301(self, record: Record) -> None:
        v = record.values
        rp = self.rp_of(record)
        assert self.current is not None
        prescription = self.current.prescription(rp)
        if prescription is None:
            self.issue(
                record.line,
                record.part,
                "no_drug",
                "301 用法レコード: このRP番号の薬品レコード（201）がありません",
                "record 301: no medicine record (201) has this RP number",
                record="301",
                field="RP番号",
                value=v["rp"],
            )
            return
        if prescription.usage is not None:
            self.issue(
                record.line,
                record.part,
                "usage_repeated",
                "このRPの用法レコードは2つ目です（無視しました）",
                "a second usage record for this RP (ignored)",
                record="301",
                field="RP番号",
                value=v["rp"],
            )
            return
        form = v["form"]
        if form and form not in FORMS:
            self.issue(
                record.line,
                record.part,
                "form",
                "剤形コードが仕様にありません（無視しました）",
                "the dosage form code is not in the format (ignored)",
                severity=WARNING,
                record="301",
                field="剤形コード",
                value=form,
            )
            form = ""
        prescription.usage = Usage(
            rp=rp,
            text=v["usage"],
            quantity=int(v["quantity"]) if v["quantity"] else None,
            quantity_unit=v["quantity_unit"],
            form=form,
            usage_code=v["usage_code"] if v["usage_code_kind"] == "2" else "",
        )

    def _rp_usage(self, record: Record) -> Prescription | None:
        assert self.current is not None
        prescription = self.current.prescription(self.rp_of(record))
        if prescription is None:
            self.issue(
                record.line,
                record.part,
                "no_drug",
                f"{record.number} {RECORDS[record.number].name_ja}: "
                "このRP番号の薬品レコード（201）がありません",
                f"record {record.number}: no medicine record (201) has this RP number",
                record=record.number,
                field="RP番号",
                value=record.values["rp"],
            )
        return prescription

    def record_311(self, record: Record) -> None:
        prescription = self._rp_usage(record)
        if prescription is None:
            return
        if prescription.usage is None:
            self.issue(
                record.line,
                record.part,
                "no_usage",
                "311 用法補足レコード: このRPの用法レコード（301）がありません",
                "record 311: this RP has no usage record (301)",
                record="311",
                field="RP番号",
                value=record.values["rp"],
            )
            return
        prescription.usage.supplements.append(record.values["text"])

    def record_391(self, record: Record) -> None:
        prescription = self._rp_usage(record)
        if prescription is not None:
            prescription.cautions.append(record.values["text"])

    def _visit_note(self, record: Record) -> None:
        assert self.current is not None
        self.current.notes.append((record.number, record.values["text"]))

    record_401 = _visit_note
    record_411 = _visit_note
    record_421 = _visit_note
    record_501 = _visit_note

    def finish(self) -> Document:
        doc = self.doc
        if self.unread:
            self.issue(
                self.unread[0],
                self.unread_part,
                "not_read",
                f"バージョンレコードが使えないため、{len(self.unread)}行を読みませんでした",
                f"{len(self.unread)} lines were not read: the version record cannot be used",
            )
            doc.skipped_lines -= 1  # counted per line already
        for dispensing in doc.dispensings:
            if not dispensing.prescriptions:
                self.issue(
                    dispensing.line,
                    dispensing.part,
                    "empty_dispensing",
                    "この調剤等年月日には薬品レコード（201）がありません",
                    "this dispensing date has no medicine records (201)",
                    severity=WARNING,
                    record="5",
                )
            for prescription in dispensing.prescriptions:
                if prescription.usage is None and prescription.drugs:
                    first = prescription.drugs[0]
                    self.issue(
                        first.line,
                        first.part,
                        "no_usage",
                        f"RP{prescription.rp} に用法レコード（301）がありません"
                        "（用法・日数なしで取り込みました）",
                        f"RP {prescription.rp} has no usage record (301); "
                        "imported without usage and days",
                        severity=WARNING,
                        record="201",
                        field="RP番号",
                        value=str(prescription.rp),
                    )
        return doc


def _parse(lines: list[tuple[int, int | None, str]]) -> Document:
    parser = _Parser()
    for number, part, text in lines:
        parser.line(number, part, text)
    return parser.finish()
