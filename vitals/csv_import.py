"""The generic vitals CSV (timestamp, type, value, unit), parsed whole
before anything is written: a file imports entirely, or not at all and its
every bad row is reported (row, column, value, reason in Japanese and
English). The format is documented in docs/formats/vitals_csv.md.

Encoding: UTF-8 with or without a byte order mark, or Shift_JIS (read as
cp932, Windows' superset, which Excel in Japan writes).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from phr.selectors import JAPAN
from vitals import records
from vitals.device_formats import PayloadError, Problem, parse_number

MAX_BYTES = 5 * 1024 * 1024
MAX_ROWS = 20_000
COLUMNS = ("timestamp", "type", "value", "unit")
# Japanese headers a person may type instead.
HEADER_ALIASES = {"日時": "timestamp", "種類": "type", "値": "value", "単位": "unit"}

# CSV type → catalog kind: every kind's own key (vitals.records.KINDS), and
# a few words people write instead, English and Japanese.
TYPE_ALIASES = {
    "pulse": records.HEART_RATE,
    "脈拍": records.HEART_RATE,
    "心拍数": records.HEART_RATE,
    "血圧": records.BLOOD_PRESSURE,
    "weight": records.BODY_WEIGHT,
    "体重": records.BODY_WEIGHT,
    "temperature": records.BODY_TEMPERATURE,
    "体温": records.BODY_TEMPERATURE,
    "glucose": records.BLOOD_GLUCOSE,
    "血糖": records.BLOOD_GLUCOSE,
    "血糖値": records.BLOOD_GLUCOSE,
    "height": records.BODY_HEIGHT,
    "身長": records.BODY_HEIGHT,
    "length": records.BODY_LENGTH,
    "頭囲": records.HEAD_CIRCUMFERENCE,
    "steps": records.STEP_COUNT,
    "歩数": records.STEP_COUNT,
}
TYPES = {**{key: key for key in records.KINDS}, **TYPE_ALIASES}
# Unit spellings → the UCUM code handed to the catalog's conversions.
UNITS = {
    "mmhg": "mm[Hg]",
    "mm[hg]": "mm[Hg]",
    "bpm": "/min",
    "/min": "/min",
    "beats/min": "/min",
    "回/分": "/min",
    "kg": "kg",
    "g": "g",
    "lb": "[lb_av]",
    "lbs": "[lb_av]",
    "[lb_av]": "[lb_av]",
    "cel": "Cel",
    "c": "Cel",
    "°c": "Cel",
    "℃": "Cel",
    "degf": "[degF]",
    "f": "[degF]",
    "°f": "[degF]",
    "[degf]": "[degF]",
    "mg/dl": "mg/dL",
    "mmol/l": "mmol/L",
    "cm": "cm",
    "mm": "mm",
    "min": "min",
    "分": "min",
    "s": "s",
    "秒": "s",
    "h": "h",
    "時間": "h",
    "steps": "/d",
    "歩": "/d",
    "/d": "/d",
}
_BP = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*$")
_WITH_ZONE = re.compile(r"(Z|[+-]\d{2}:?\d{2})$")
_LOCAL_FORMATS = (
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y/%m/%d %H:%M:%S",
    "%Y/%m/%d %H:%M",
)


@dataclass(frozen=True)
class RowProblem:
    row: int  # the line in the file, counting the header as 1
    field: str
    value: str
    reason_ja: str
    reason_en: str


@dataclass(frozen=True)
class CsvRow:
    line: int
    reading: records.Reading


def column_of(field: str) -> str:
    """The CSV column a records.VitalError's field is about."""
    if field in ("taken_at", "until"):
        return "timestamp"
    if field in ("unit", "kind"):
        return "type" if field == "kind" else "unit"
    return "value"


class CsvError(Exception):
    def __init__(self, problems: list[RowProblem]) -> None:
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s)")


def decode(data: bytes) -> str:
    """UTF-8 (a BOM is dropped) or Shift_JIS; anything else is refused."""
    if len(data) > MAX_BYTES:
        raise CsvError(
            [
                RowProblem(
                    0,
                    "file",
                    f"{len(data)} bytes",
                    "ファイルが大きすぎます(5 MB まで)",
                    "the file is too large (at most 5 MB)",
                )
            ]
        )
    for encoding in ("utf-8-sig", "cp932"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise CsvError(
        [
            RowProblem(
                0,
                "file",
                "",
                "文字コードは UTF-8 か Shift_JIS にしてください",
                "the file must be UTF-8 or Shift_JIS text",
            )
        ]
    )


def parse_timestamp(value: str, where: str) -> datetime:
    """ISO 8601 with an offset, or without one as Japan local time."""
    text = value.strip()
    if _WITH_ZONE.search(text) and "T" in text:
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            pass
    else:
        for fmt in _LOCAL_FORMATS:
            try:
                return datetime.strptime(text, fmt).replace(tzinfo=JAPAN)
            except ValueError:
                continue
    raise PayloadError(
        [
            Problem(
                where,
                value,
                "日時は 2026-11-26T07:30:00+09:00 か 2026-11-26 07:30(日本時間)"
                "の形式にしてください",
                "use 2026-11-26T07:30:00+09:00, or 2026-11-26 07:30 for Japan time",
            )
        ]
    )


def _reading(row: dict[str, str], line: int) -> CsvRow:
    problems: list[Problem] = []
    at: datetime | None = None
    try:
        at = parse_timestamp(row["timestamp"], "timestamp")
    except PayloadError as exc:
        problems.extend(exc.problems)
    kind = TYPES.get(row["type"].strip().lower()) or TYPES.get(row["type"].strip())
    if kind is None:
        problems.append(
            Problem(
                "type",
                row["type"],
                "種類が分かりません(表を参照)",
                "unknown type (see the table of types)",
            )
        )
    unit = UNITS.get(row["unit"].strip().lower())
    if unit is None:
        problems.append(
            Problem(
                "unit",
                row["unit"],
                "単位が分かりません(表を参照)",
                "unknown unit (see the table of units)",
            )
        )
    values: tuple[Decimal, ...] = ()
    if kind == records.BLOOD_PRESSURE:
        match = _BP.match(row["value"])
        if match is None:
            problems.append(
                Problem(
                    "value",
                    row["value"],
                    "血圧は 収縮期/拡張期(例 118/76)で書いてください",
                    "write blood pressure as systolic/diastolic (e.g. 118/76)",
                )
            )
        else:
            values = (Decimal(match.group(1)), Decimal(match.group(2)))
    elif kind is not None:
        try:
            values = (parse_number(row["value"], "value"),)
        except PayloadError as exc:
            problems.extend(exc.problems)
    if problems or at is None or kind is None or unit is None:
        raise PayloadError(problems)
    try:
        # Converted, rounded and range-checked now, so one reading of the
        # file reports every problem of every row at once.
        checked = records.reading_check(
            records.Reading(kind=kind, values=values, taken_at=at, unit=unit)
        )
    except records.VitalError as exc:
        raise PayloadError(
            [Problem(column_of(exc.field), str(exc.value), exc.ja, exc.en)]
        ) from None
    return CsvRow(line, checked)


def parse(data: bytes) -> list[CsvRow]:
    """Every row of the file as a (line, checked Reading), or CsvError listing every
    problem found (the whole file is read either way)."""
    text = decode(data)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise CsvError(
            [RowProblem(1, "file", "", "ファイルが空です", "the file is empty")]
        ) from None
    except csv.Error as exc:
        raise CsvError(
            [RowProblem(1, "file", "", "CSV として読めません", f"not CSV: {exc}")]
        ) from None
    names = [HEADER_ALIASES.get(h.strip(), h.strip().lower()) for h in header]
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise CsvError(
            [
                RowProblem(
                    1,
                    "header",
                    ",".join(header),
                    f"見出し行に {', '.join(missing)} の列がありません",
                    f"the header row lacks the column(s) {', '.join(missing)}",
                )
            ]
        )
    index = {c: names.index(c) for c in COLUMNS}
    readings: list[CsvRow] = []
    problems: list[RowProblem] = []
    line = 1
    try:
        for cells in reader:
            line = reader.line_num
            if not any(c.strip() for c in cells):
                continue  # blank lines (a trailing newline, Excel's padding)
            if len(readings) + len(problems) >= MAX_ROWS:
                problems.append(
                    RowProblem(
                        line, "file", "", f"{MAX_ROWS} 行までです", f"at most {MAX_ROWS} rows"
                    )
                )
                break
            if len(cells) < len(header):
                problems.append(
                    RowProblem(
                        line,
                        "row",
                        ",".join(cells),
                        f"列が足りません({len(cells)}/{len(header)})",
                        f"too few columns ({len(cells)} of {len(header)}); is the row cut off?",
                    )
                )
                continue
            row = {c: cells[i] for c, i in index.items()}
            try:
                readings.append(_reading(row, line))
            except PayloadError as exc:
                problems.extend(
                    RowProblem(line, p.field, p.value, p.reason_ja, p.reason_en)
                    for p in exc.problems
                )
    except csv.Error as exc:
        problems.append(
            RowProblem(
                line + 1,
                "row",
                "",
                "CSV として読めません(引用符が閉じていない等)",
                f"not CSV (an unclosed quote?): {exc}",
            )
        )
    if problems:
        raise CsvError(problems)
    if not readings:
        raise CsvError(
            [RowProblem(2, "file", "", "データ行がありません", "there are no data rows")]
        )
    return readings
