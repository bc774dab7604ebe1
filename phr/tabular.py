"""Reading the CSV files municipalities and schools really send.

A file is read as a stream (never whole): the encoding is detected from
its first bytes (UTF-8 with or without a BOM, else Shift_JIS/CP932) or
chosen by the uploader; the header may use the documented Japanese names
or the English keys; every cell is normalised (full-width digits, letters
and spaces become ASCII, half-width katakana become full-width) and
parsed by its column's parser. A bad cell never stops the file: it
becomes a CellError (line, column, value, reason in Japanese and English)
on its row, and the next row is read.

Formats (municipal_data.formats, clinics, ...) declare their columns with
`Column` and the parsers below; phr.pipeline drives the reading.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import unicodedata
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import IO, Any

ENCODINGS = {"auto", "utf-8", "cp932"}
SNIFF_BYTES = 64 * 1024
MAX_FIELD = 10_000  # characters in one cell; longer cells are refused, not read whole
MAX_VALUE_SHOWN = 100  # characters of a bad value kept in an error report

csv.field_size_limit(MAX_FIELD * 4)


class FieldError(Exception):
    """A cell that cannot be used, with the reason in Japanese and English."""

    def __init__(self, code: str, ja: str, en: str) -> None:
        super().__init__(en)
        self.code = code
        self.ja = ja
        self.en = en


class FileError(Exception):
    """The file as a whole cannot be read (no header, a required column
    missing, an unknown encoding)."""

    def __init__(self, code: str, ja: str, en: str) -> None:
        super().__init__(en)
        self.code = code
        self.ja = ja
        self.en = en


@dataclass(frozen=True)
class CellError:
    line: int
    column: str  # the header as written in the file ("" for a whole-row problem)
    value: str
    code: str
    ja: str
    en: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "column": self.column,
            "value": self.value,
            "code": self.code,
            "ja": self.ja,
            "en": self.en,
        }


Parser = Callable[[str], Any]


@dataclass(frozen=True)
class Column:
    """One documented column: its English key, its Japanese header, other
    accepted header spellings, and the parser for a non-empty cell."""

    key: str
    ja: str
    parse: Parser
    required: bool = False  # the cell must be filled (a column is always allowed to be absent
    #                         unless `required_header`)
    required_header: bool = False  # the file must have this column
    aliases: tuple[str, ...] = ()
    name: bool = False  # a person's name: keep CJK compatibility ideographs as written
    en: str = ""  # a description for the docs
    example: str = ""

    def headers(self) -> set[str]:
        return {header_key(h) for h in (self.key, self.ja, *self.aliases)}


@dataclass
class Row:
    """One data record of the file: its first physical line, the parsed
    values by column key (None for an empty cell), the cells as written,
    and its errors."""

    line: int
    values: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, str] = field(default_factory=dict)
    errors: list[CellError] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)  # key -> header as written
    record: Any = None  # what a format made of the row (e.g. a MunicipalRecord)

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, column: str, code: str, ja: str, en: str) -> None:
        """Add an error about a column (its key; the report shows the header
        as the file wrote it)."""
        self.errors.append(
            CellError(
                self.line, self.header_of(column), shown(self.raw.get(column, "")), code, ja, en
            )
        )

    def header_of(self, column: str) -> str:
        return self.headers.get(column, column)


def shown(value: str) -> str:
    value = value.replace("\x00", "")
    return value if len(value) <= MAX_VALUE_SHOWN else value[:MAX_VALUE_SHOWN] + "…"


# --------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------

_SPACES = re.compile(r"[\s\u3000]+")


def normalize(value: str) -> str:
    """NFKC (full-width digits, letters, spaces and symbols to ASCII;
    half-width katakana to full-width), runs of spaces to one, trimmed."""
    if value.isascii() and value.isprintable() and "  " not in value:
        return value.strip()  # nothing for NFKC to do
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", value)).strip()


def _is_halfwidth_kana(char: str) -> bool:
    return "\uff61" <= char <= "\uff9f"


def normalize_name(value: str) -> str:
    """A name keeps its ideographs exactly as written (NFKC would turn
    compatibility ideographs such as 﨑 variants into other characters);
    only half-width katakana, full-width ASCII and spaces are normalised."""
    out = []
    for char in value:
        if _is_halfwidth_kana(char) or "\uff01" <= char <= "\uff5e":
            out.append(unicodedata.normalize("NFKC", char))
        else:
            out.append(char)
    # Half-width kana with a separate (han)dakuten compose after NFKC.
    return _SPACES.sub(" ", unicodedata.normalize("NFC", "".join(out))).strip()


def header_key(value: str) -> str:
    """Header cells compare after NFKC, without spaces and case."""
    return re.sub(r"[\s_\-・()（）]", "", unicodedata.normalize("NFKC", value)).lower()


# --------------------------------------------------------------------------
# Parsers (each receives a normalised, non-empty cell)
# --------------------------------------------------------------------------

# Era name, its Latin initial, the first day and the year before its 1st year.
ERAS = (
    ("令和", "R", date(2019, 5, 1), 2018),
    ("平成", "H", date(1989, 1, 8), 1988),
    ("昭和", "S", date(1926, 12, 25), 1925),
    ("大正", "T", date(1912, 7, 30), 1911),
    ("明治", "M", date(1868, 1, 25), 1867),
)
_ERA_BY_NAME = {e[0]: e for e in ERAS} | {e[1]: e for e in ERAS} | {e[1].lower(): e for e in ERAS}
_ERA_DATE = re.compile(
    r"^(令和|平成|昭和|大正|明治|[RHSTMrhstm])\s*(元|\d{1,2})\s*[年./-]\s*(\d{1,2})\s*[月./-]\s*"
    r"(\d{1,2})\s*日?$"
)
_ISO_DATE = re.compile(r"^(\d{4})[-/.年](\d{1,2})[-/.月](\d{1,2})日?$")
_COMPACT_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")

DATE_HELP_JA = "YYYY-MM-DD、YYYYMMDD、YYYY/MM/DD、和暦（R6.4.1、令和6年4月1日）"
DATE_HELP_EN = "YYYY-MM-DD, YYYYMMDD, YYYY/MM/DD or a Japanese era date (R6.4.1, 令和6年4月1日)"


def _bad_date(value: str) -> FieldError:
    return FieldError(
        "date",
        f"日付として読めません（{DATE_HELP_JA}）",
        f"not a date ({DATE_HELP_EN})",
    )


def parse_date(value: str) -> date:
    """ISO, YYYYMMDD, YYYY/MM/DD, YYYY年M月D日, or a Japanese era date
    (R6.4.1, 令和6年4月1日, H30.12.01, 令和元年5月1日)."""
    era_match = _ERA_DATE.match(value)
    if era_match:
        name, year_text, month, day = era_match.groups()
        era = _ERA_BY_NAME[name]
        year = 1 if year_text == "元" else int(year_text)
        if year < 1:
            raise _bad_date(value)
        try:
            result = date(era[3] + year, int(month), int(day))
        except ValueError:
            raise FieldError("date", "存在しない日付です", "no such date") from None
        later = [e for e in ERAS if e[2] > era[2]]
        ends = min((e[2] for e in later), default=None)
        if result < era[2] or (ends is not None and result >= ends):
            raise FieldError(
                "date_era",
                f"{era[0]}の期間外の日付です",
                f"the date is outside the {era[0]} era",
            )
        return result
    match = _ISO_DATE.match(value) or _COMPACT_DATE.match(value)
    if not match:
        raise _bad_date(value)
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        raise FieldError("date", "存在しない日付です", "no such date") from None


def date_between(earliest: date, latest: Callable[[], date] | None = None) -> Parser:
    """A date no earlier than `earliest` and not after `latest()` (e.g. today)."""

    def parse(value: str) -> date:
        result = parse_date(value)
        if result < earliest:
            raise FieldError(
                "date_range",
                f"{earliest.isoformat()} より前の日付です",
                f"the date is before {earliest.isoformat()}",
            )
        if latest is not None and result > latest():
            raise FieldError("date_future", "未来の日付です", "the date is in the future")
        return result

    return parse


def integer(minimum: int | None = None, maximum: int | None = None) -> Parser:
    def parse(value: str) -> int:
        text = value.replace(",", "")
        if not re.fullmatch(r"[+-]?\d{1,12}", text):
            raise FieldError("integer", "整数ではありません", "not a whole number")
        number = int(text)
        _check_range(number, minimum, maximum)
        return number

    return parse


def decimal(minimum: float | None = None, maximum: float | None = None, places: int = 2) -> Parser:
    def parse(value: str) -> Decimal:
        text = value.replace(",", "")
        if not re.fullmatch(r"[+-]?(\d{1,9}(\.\d*)?|\.\d+)", text):
            raise FieldError("number", "数値ではありません", "not a number")
        try:
            number = Decimal(text)
        except InvalidOperation:
            raise FieldError("number", "数値ではありません", "not a number") from None
        if -number.as_tuple().exponent > places:  # type: ignore[operator]
            raise FieldError(
                "number_places",
                f"小数点以下は{places}桁までです",
                f"at most {places} decimal places",
            )
        _check_range(number, minimum, maximum)
        return number

    return parse


def _check_range(number: Any, minimum: Any, maximum: Any) -> None:
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise FieldError(
            "range",
            f"{minimum}〜{maximum}の範囲外です",
            f"outside the plausible range {minimum}–{maximum}",
        )


def text(max_length: int = 100, pattern: str | None = None, pattern_help: str = "") -> Parser:
    compiled = re.compile(pattern) if pattern else None

    def parse(value: str) -> str:
        if len(value) > max_length:
            raise FieldError(
                "too_long",
                f"{max_length}文字を超えています",
                f"longer than {max_length} characters",
            )
        if compiled and not compiled.fullmatch(value):
            raise FieldError(
                "pattern", f"形式が違います（{pattern_help}）", f"wrong form ({pattern_help})"
            )
        return value

    return parse


def choice(options: dict[str, Sequence[str]], label_ja: str = "", label_en: str = "") -> Parser:
    """One of a set of codes; each code lists the spellings accepted for
    it (Japanese, English, numbers), compared after header_key()."""
    lookup = {header_key(code): code for code in options}
    for code, spellings in options.items():
        for spelling in spellings:
            lookup[header_key(spelling)] = code
    accepted = "、".join(
        f"{code}" if not spellings else f"{spellings[0]}" for code, spellings in options.items()
    )

    def parse(value: str) -> str:
        code = lookup.get(header_key(value))
        if code is None:
            raise FieldError(
                "choice",
                f"{label_ja or '値'}として使えない値です（{accepted}）",
                f"not a valid {label_en or 'value'} (one of: {', '.join(options)})",
            )
        return code

    return parse


# The national PMH interface marks each row as an addition, a change or a
# deletion; we accept its codes (1, 2, 3), Japanese and English words.
CHANGE_FLAGS = {
    "add": ("1", "新規", "追加", "A", "new", "insert"),
    "update": ("2", "変更", "修正", "訂正", "U", "change", "modify"),
    "delete": ("3", "削除", "取消", "D", "remove", "withdraw"),
}
change_flag = choice(CHANGE_FLAGS, "異動区分", "change flag")

SEX = {
    "male": ("1", "男", "男性", "男子", "M"),
    "female": ("2", "女", "女性", "女子", "F"),
}
sex = choice(SEX, "性別", "sex")


# --------------------------------------------------------------------------
# Encodings and the stream of rows
# --------------------------------------------------------------------------


def detect_encoding(head: bytes) -> str:
    """UTF-8 (with or without BOM) when the first bytes decode as UTF-8,
    else CP932 (the Windows superset of Shift_JIS municipal systems write)."""
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    try:
        head.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as error:
        # A multi-byte character cut at the end of the sample is still UTF-8.
        if error.start >= len(head) - 3 and error.reason == "unexpected end of data":
            return "utf-8"
        return "cp932"


def open_text(raw: IO[bytes], encoding: str = "auto") -> tuple[IO[str], str]:
    """Wrap a binary stream as text. Undecodable bytes are kept as
    surrogates so that the row holding them is reported, not the file."""
    if encoding not in ENCODINGS:
        raise FileError(
            "encoding",
            f"文字コード {encoding} には対応していません（UTF-8 または Shift_JIS）",
            f"unsupported encoding {encoding} (UTF-8 or Shift_JIS)",
        )
    buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw)  # type: ignore[arg-type]
    if encoding == "auto":
        encoding = detect_encoding(buffered.peek(SNIFF_BYTES)[:SNIFF_BYTES])
    elif encoding == "utf-8" and buffered.peek(3)[:3] == codecs.BOM_UTF8:
        encoding = "utf-8-sig"
    return io.TextIOWrapper(buffered, encoding=encoding, errors="surrogateescape", newline=""), (
        "cp932" if encoding == "cp932" else "utf-8"
    )


_SURROGATES = re.compile("[\udc80-\udcff]")


def _undecodable(value: str) -> bool:
    return bool(_SURROGATES.search(value))


@dataclass
class Header:
    """Which column of the file holds which key."""

    positions: dict[str, int]
    written: dict[str, str]  # key -> header as written
    ignored: list[str]
    width: int


def read_header(cells: list[str], columns: Sequence[Column]) -> Header:
    by_header: dict[str, Column] = {}
    for column in columns:
        for header in column.headers():
            by_header[header] = column
    positions: dict[str, int] = {}
    written: dict[str, str] = {}
    ignored: list[str] = []
    for index, cell in enumerate(cells):
        cell_text = cell.lstrip("\ufeff")
        column = by_header.get(header_key(cell_text))
        if column is None:
            if cell_text.strip():
                ignored.append(cell_text.strip())
            continue
        if column.key in positions:
            raise FileError(
                "duplicate_column",
                f"列「{cell_text}」が2回あります",
                f"the column {cell_text!r} appears twice",
            )
        positions[column.key] = index
        written[column.key] = cell_text.strip()
    missing = [c for c in columns if c.required_header and c.key not in positions]
    if missing:
        raise FileError(
            "missing_columns",
            "必須の列がありません: " + "、".join(f"{c.ja}（{c.key}）" for c in missing),
            "required columns are missing: " + ", ".join(f"{c.key} ({c.ja})" for c in missing),
        )
    return Header(positions, written, ignored, len(cells))


# A row's partition is decided by its person: the first of these columns
# that has a value (a child's rows and a mother's own rows by their
# resident number; a row without one by the mother's).
PARTITION_COLUMNS = ("resident_number", "mother_resident_number")


def partition_of(cells: list[str], header: Header, count: int) -> int:
    """Which of `count` partitions a record belongs to, from its raw cells
    before it is parsed: a stable hash (CRC-32, the same in every process
    and on every run) of the person's resident number normalised as the
    importer does (NFKC, upper case), so all rows of one person fall in one
    partition. A record with no number goes to partition 0."""
    for key in PARTITION_COLUMNS:
        position = header.positions.get(key)
        if position is None or position >= len(cells):
            continue
        value = normalize(cells[position]).upper()
        if value:
            return zlib.crc32(value.encode("utf-8", "surrogatepass")) % count
    return 0


def rows(
    stream: IO[str],
    columns: Sequence[Column],
    *,
    skip: int = 0,
    partition: tuple[int, int] | None = None,
) -> Iterator[Row]:
    """Yield each data record of a CSV text stream as a Row (the header is
    read first; `skip` data records are passed over without parsing, to
    resume a job after its last committed chunk). With `partition=(n,
    count)` only the records of partition n are parsed and yielded (and
    counted by `skip`); the others are passed over after the CSV split. A
    record the CSV reader cannot read belongs to partition 0."""
    reader = csv.reader(stream, strict=False)
    header: Header | None = None
    line_before = 0
    seen = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            line = line_before + 1
            line_before = reader.line_num
            if header is None:
                raise FileError(
                    "csv", f"見出し行が読めません: {error}", f"unreadable header: {error}"
                ) from None
            # The reader cannot tell where the broken record ends: a line
            # it resumed at could be the middle of a row. Stop here rather
            # than read shifted cells as rows (a resumed job stops here too).
            if partition is not None and partition[0] != 0:
                break
            seen += 1
            if seen > skip:
                yield Row(
                    line=line,
                    errors=[
                        CellError(
                            line,
                            "",
                            "",
                            "csv",
                            "CSVとして読めない行です（引用符の閉じ忘れ、または長すぎる値）。"
                            "この行より後は読み込んでいません",
                            f"the line is not valid CSV (an unclosed quote or a value over "
                            f"{MAX_FIELD} characters): {error}; nothing after it was read",
                        )
                    ],
                )
            break
        line = line_before + 1
        line_before = reader.line_num
        if header is None:
            if not any(c.strip() for c in cells):
                continue
            header = read_header(cells, columns)
            continue
        if not any(c.strip() for c in cells):
            continue  # blank lines are not records
        if partition is not None and partition_of(cells, header, partition[1]) != partition[0]:
            continue
        seen += 1
        if seen <= skip:
            continue
        yield parse_row(line, cells, header, columns)
    if header is None:
        raise FileError("empty", "ファイルに見出し行がありません", "the file has no header line")


def parse_row(line: int, cells: list[str], header: Header, columns: Sequence[Column]) -> Row:
    row = Row(line=line, headers=header.written)
    if len(cells) < header.width or any(c.strip() for c in cells[header.width :]):
        row.errors.append(
            CellError(
                line,
                "",
                "",
                "width",
                f"列の数が見出しと違います（見出し{header.width}列、この行{len(cells)}列）",
                f"the row has {len(cells)} columns, the header {header.width}",
            )
        )
        return row
    values = row.values
    raw = row.raw
    for column in columns:
        key = column.key
        position = header.positions.get(key)
        cell = cells[position] if position is not None else ""
        raw[key] = cell
        if not cell or cell.isspace():  # most cells of a wide file are empty
            values[key] = None
            if column.required:
                row.error(key, "required", "必須の項目が空です", "a required value is empty")
            continue
        if _undecodable(cell):
            row.error(
                key,
                "encoding",
                "文字コードが正しくない文字があります（UTF-8 か Shift_JIS で保存してください）",
                "the value has bytes that are not valid in the file's encoding",
            )
            values[key] = None
            continue
        if len(cell) > MAX_FIELD:
            row.error(key, "too_long", "値が長すぎます", "the value is too long")
            values[key] = None
            continue
        value = normalize_name(cell) if column.name else normalize(cell)
        if not value:
            values[key] = None
            if column.required:
                row.error(key, "required", "必須の項目が空です", "a required value is empty")
            continue
        try:
            values[key] = column.parse(value)
        except FieldError as error:
            values[key] = None
            row.error(key, error.code, error.ja, error.en)
    return row
