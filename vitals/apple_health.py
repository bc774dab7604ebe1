"""Apple Health exports: a streaming reader of export.xml (or the
export.zip holding it) and its import into the record store.

The file a phone's Health app exports ("Export All Health Data") is one XML
document, `apple_health_export/export.xml` inside `export.zip`, that can
reach gigabytes. Its schema is the DTD Apple writes at the top of the file
(HealthKit Export Version 11–14; docs/decisions/0019-apple-health.md):
`HealthData` (locale) holds `ExportDate`, `Me`, then `Record`,
`Correlation`, `Workout`, `ActivitySummary`, `ClinicalRecord` … elements.
A `Record` has type, sourceName, sourceVersion, device, unit,
creationDate, startDate, endDate and value attributes and `MetadataEntry`
children; a blood-pressure reading is a `Correlation` of type
HKCorrelationTypeIdentifierBloodPressure holding its systolic and
diastolic `Record`s — which, as the DTD says, also appear as top-level
records.

Reading (`read_export`) is a pyexpat parse fed 1 MB blocks: handlers turn
the top-level elements into small tuples, nothing keeps an element tree,
so memory stays flat in file size (bench/bench_apple_health.py measures
it). A zip is read through zipfile's streaming decompressor. Entity
declarations are refused (a DTD with entities could expand without
bound); malformed or truncated XML raises ExportError with its line and
column.

Importing (`apple_health_import`, the job "vitals.apple_health") reads the
file twice: a first pass checks the whole file and adds up the day's steps
(nothing is written), a second writes the records chunk by chunk through
vitals.records. A file that is malformed anywhere, even in its last byte,
is refused by the first pass before any record is written; see the
decision record for why this and not one transaction.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import IO, Any
from xml.parsers import expat

from phr.selectors import JAPAN

BLOCK = 1 << 20

# The HealthKit types we map, and how.
BODY_MASS = "HKQuantityTypeIdentifierBodyMass"
HEART_RATE = "HKQuantityTypeIdentifierHeartRate"
BODY_TEMPERATURE = "HKQuantityTypeIdentifierBodyTemperature"
BLOOD_GLUCOSE = "HKQuantityTypeIdentifierBloodGlucose"
STEP_COUNT = "HKQuantityTypeIdentifierStepCount"
SYSTOLIC = "HKQuantityTypeIdentifierBloodPressureSystolic"
DIASTOLIC = "HKQuantityTypeIdentifierBloodPressureDiastolic"
BLOOD_PRESSURE = "HKCorrelationTypeIdentifierBloodPressure"

SINGLE_TYPES = (BODY_MASS, HEART_RATE, BODY_TEMPERATURE, BLOOD_GLUCOSE)
# Units as HealthKit writes them (HKUnit unitString) → UCUM. A unit not
# listed is an error on that record (its value cannot be read safely).
UNITS: dict[str, dict[str, str]] = {
    BODY_MASS: {"kg": "kg", "g": "g", "lb": "[lb_av]"},
    HEART_RATE: {"count/min": "/min"},
    BODY_TEMPERATURE: {"degC": "Cel", "degF": "[degF]"},
    # HealthKit writes mmol/L of glucose with its molar mass (g/mol).
    BLOOD_GLUCOSE: {"mg/dL": "mg/dL", "mmol<180.1558800000541>/L": "mmol/L"},
    SYSTOLIC: {"mmHg": "mm[Hg]"},
    DIASTOLIC: {"mmHg": "mm[Hg]"},
    STEP_COUNT: {"count": "{steps}"},
}

APPLE_HEALTH = "Apple Health"
MAX_REPORTED_ERRORS = 1000


class ExportError(Exception):
    """The file as a whole cannot be read: not XML, malformed, truncated,
    not an Apple Health export, a damaged zip. Nothing is imported."""

    def __init__(
        self, code: str, ja: str, en: str, *, line: int | None = None, column: int | None = None
    ) -> None:
        where_en = f" (line {line}, column {column})" if line is not None else ""
        where_ja = f"（{line}行目、{column}文字目）" if line is not None else ""
        super().__init__(en + where_en)
        self.code = code
        self.ja = ja + where_ja
        self.en = en + where_en
        self.line = line
        self.column = column

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "ja": self.ja, "en": self.en, "line": self.line,
                "column": self.column}


# --------------------------------------------------------------------------
# Opening: export.xml, or export.zip holding apple_health_export/export.xml
# --------------------------------------------------------------------------


def _xml_member(archive: zipfile.ZipFile) -> zipfile.ZipInfo:
    names = {info.filename: info for info in archive.infolist()}
    if "apple_health_export/export.xml" in names:
        return names["apple_health_export/export.xml"]
    # Renamed folders ("apple_health_export 2/", an unzip-and-rezip): the
    # one export.xml (never export_cda.xml, the clinical document).
    found = [info for name, info in names.items() if name.rsplit("/", 1)[-1] == "export.xml"]
    if len(found) != 1:
        raise ExportError(
            "no_export_xml",
            "zipファイルの中に apple_health_export/export.xml がありません。",
            "The zip file holds no apple_health_export/export.xml.",
        )
    return found[0]


@contextmanager
def open_export(path: Path | str) -> Iterator[IO[bytes]]:
    """The export's XML as a byte stream, from export.xml or from the zip
    (decompressed as it is read, never extracted whole)."""
    with open(path, "rb") as raw:
        magic = raw.read(4)
        raw.seek(0)
        if magic != b"PK\x03\x04":
            yield raw
            return
        try:
            archive = zipfile.ZipFile(raw)
        except (zipfile.BadZipFile, OSError) as exc:
            raise ExportError(
                "bad_zip",
                "zipファイルが壊れているか、途中で切れています。",
                f"The zip file is damaged or incomplete ({exc}).",
            ) from None
        with archive, archive.open(_xml_member(archive)) as member:
            yield member


# --------------------------------------------------------------------------
# Parsing: top-level elements as small tuples, in constant memory
# --------------------------------------------------------------------------

# What the parser hands on, one per top-level element of HealthData:
#   ("R", attrs, metadata, line, column)          a Record
#   ("C", attrs, metadata, members, line, column)  a Correlation, members being
#                                                  (attrs, metadata, line, column)
#   ("X", tag, None, line, column)                 anything else (counted)
#   ("H", tag, attrs, line, column)                ExportDate / Me
Event = tuple[Any, ...]


class _Handlers:
    """pyexpat callbacks collecting the events of one fed block."""

    __slots__ = ("corr", "depth", "events", "meta", "parser", "record", "root_seen", "skip")

    def __init__(self, parser: Any) -> None:
        self.parser = parser
        self.events: list[Event] = []
        self.depth = 0
        self.root_seen = False
        self.record: list[Any] | None = None  # [attrs, metadata, line, column]
        self.corr: list[Any] | None = None  # [attrs, metadata, members, line, column]
        self.meta: dict[str, str] | None = None
        self.skip = False

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        self.depth += 1
        depth = self.depth
        if depth == 2:
            parser = self.parser
            if tag == "Record":
                self.record = [attrs, {}, parser.CurrentLineNumber,
                               parser.CurrentColumnNumber + 1]
                self.meta = self.record[1]
            elif tag == "Correlation":
                self.corr = [attrs, {}, [], parser.CurrentLineNumber,
                             parser.CurrentColumnNumber + 1]
                self.meta = self.corr[1]
            elif tag in ("ExportDate", "Me"):
                self.events.append(("H", tag, attrs, parser.CurrentLineNumber,
                                    parser.CurrentColumnNumber + 1))
                self.skip = True
            else:
                self.events.append(("X", tag, None, parser.CurrentLineNumber,
                                    parser.CurrentColumnNumber + 1))
                self.skip = True
        elif depth == 1:
            if tag != "HealthData":
                raise ExportError(
                    "not_apple_health",
                    f"Apple Health の書き出しファイルではありません（最初の要素が {tag} です）。",
                    f"This is not an Apple Health export (its root element is {tag}, "
                    "not HealthData).",
                    line=self.parser.CurrentLineNumber,
                    column=self.parser.CurrentColumnNumber + 1,
                )
            self.root_seen = True
        elif self.skip:
            return
        elif tag == "MetadataEntry":
            if depth == 3 and self.meta is not None:
                key = attrs.get("key")
                if key is not None:
                    self.meta[key] = attrs.get("value", "")
        elif tag == "Record" and depth == 3 and self.corr is not None:
            parser = self.parser
            self.corr[2].append(
                (attrs, {}, parser.CurrentLineNumber, parser.CurrentColumnNumber + 1)
            )

    def end(self, tag: str) -> None:
        if self.depth == 2:
            if self.record is not None:
                attrs, meta, line, column = self.record
                self.events.append(("R", attrs, meta, line, column))
                self.record = None
            elif self.corr is not None:
                attrs, meta, members, line, column = self.corr
                self.events.append(("C", attrs, meta, members, line, column))
                self.corr = None
            self.meta = None
            self.skip = False
        self.depth -= 1

    def entity(self, *args: Any) -> None:
        raise ExportError(
            "entity",
            "XMLの実体（ENTITY）宣言は受け付けません。",
            "The file declares XML entities, which an Apple Health export never does.",
            line=self.parser.CurrentLineNumber,
            column=self.parser.CurrentColumnNumber + 1,
        )


def _expat_error(exc: expat.ExpatError) -> ExportError:
    reason = expat.ErrorString(exc.code) if exc.code else str(exc)
    truncated = exc.code in (
        expat.errors.codes[expat.errors.XML_ERROR_NO_ELEMENTS],
        expat.errors.codes[expat.errors.XML_ERROR_UNCLOSED_TOKEN],
        expat.errors.codes[expat.errors.XML_ERROR_UNCLOSED_CDATA_SECTION],
    )
    if truncated:
        return ExportError(
            "truncated",
            "ファイルが途中で切れています（書き出しやダウンロードが最後まで終わっていません）。",
            f"The file ends too early: the export or its download did not finish ({reason}).",
            line=exc.lineno,
            column=exc.offset + 1,
        )
    return ExportError(
        "malformed",
        f"XMLとして読めません（{reason}）。",
        f"The file is not well-formed XML ({reason}).",
        line=exc.lineno,
        column=exc.offset + 1,
    )


def parse_events(stream: IO[bytes], *, block: int = BLOCK) -> Iterator[Event]:
    """The top-level elements of an export, as they are parsed."""
    parser = expat.ParserCreate()
    handlers = _Handlers(parser)
    parser.StartElementHandler = handlers.start
    parser.EndElementHandler = handlers.end
    parser.EntityDeclHandler = handlers.entity
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.buffer_text = True
    events = handlers.events
    try:
        while True:
            try:
                data = stream.read(block)
            except (zipfile.BadZipFile, EOFError, OSError) as exc:
                raise ExportError(
                    "bad_zip",
                    "zipファイルが壊れているか、途中で切れています。",
                    f"The zip file is damaged or incomplete ({exc}).",
                ) from None
            parser.Parse(data, not data)
            if events:
                yield from events
                events.clear()
            if not data:
                break
    except expat.ExpatError as exc:
        raise _expat_error(exc) from None
    if not handlers.root_seen:
        raise ExportError("empty", "ファイルが空です。", "The file is empty.")


# --------------------------------------------------------------------------
# Samples: what a Record or Correlation says, checked
# --------------------------------------------------------------------------

_DEVICE_POINTER = re.compile(r"^<<HKDevice: 0x[0-9a-f]+>,\s*")
_DEVICE_FIELD = re.compile(r",\s*(?=[A-Za-z]+:)")


def device_label(raw: str) -> str:
    """The device attribute without the object address HealthKit prints
    ("<<HKDevice: 0x283a0c780>, name:Apple Watch, … >"): the address
    changes from one export to the next, the device does not."""
    if not raw:
        return ""
    text = _DEVICE_POINTER.sub("", raw).rstrip(">").strip()
    # Keep what names the device, not the software version it ran.
    # "hardware:Watch6,2" holds a comma: split only before the next "key:".
    parts = [p.strip() for p in _DEVICE_FIELD.split(text)]
    kept = [p for p in parts if p.split(":", 1)[0] in ("name", "manufacturer", "model",
                                                          "hardware", "localIdentifier")]
    return ", ".join(kept) if kept else text


def parse_date(text: str) -> datetime:
    """HealthKit's "2024-01-05 08:30:00 +0900" (local time with its offset)."""
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError("no UTC offset")
    return value


@dataclass(slots=True)
class Sample:
    """One measurement as the file states it (value in the file's unit)."""

    hk_type: str
    value: float
    unit: str  # UCUM, from the file's HealthKit unit
    start: datetime
    end: datetime
    source_name: str
    device: str
    line: int


@dataclass(slots=True)
class Pressure:
    systolic: Sample
    diastolic: Sample


@dataclass
class RowError:
    line: int
    column: int
    field: str
    value: str
    en: str
    ja: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "column": self.column, "field": self.field,
                "value": self.value[:100], "en": self.en, "ja": self.ja}


@dataclass
class Tally:
    """What a pass over the file found."""

    export_date: str = ""
    read: dict[str, int] = field(default_factory=dict)  # mapped, by HealthKit type
    skipped: dict[str, int] = field(default_factory=dict)  # other types, by type
    in_correlation: int = 0  # top-level BP halves, read from their correlation
    error_count: int = 0
    errors: list[RowError] = field(default_factory=list)
    elements: int = 0  # top-level Record and Correlation elements

    def error(self, err: RowError) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(err)

    def as_dict(self) -> dict[str, Any]:
        return {
            "export_date": self.export_date,
            "read": dict(sorted(self.read.items())),
            "skipped": dict(sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0]))),
            "in_correlation": self.in_correlation,
            "error_count": self.error_count,
            "errors": [e.as_dict() for e in self.errors],
            "elements": self.elements,
        }


def _sample(
    hk_type: str, attrs: dict[str, str], line: int, column: int, tally: Tally,
    *, source_name: str | None = None, device: str | None = None,
) -> Sample | None:
    unit_text = attrs.get("unit", "")
    unit = UNITS[hk_type].get(unit_text)
    if unit is None:
        tally.error(RowError(line, column, "unit", unit_text,
                             f"unit {unit_text!r} is not one we can read for {hk_type}",
                             f"{hk_type} の単位「{unit_text}」は読み取れません"))
        return None
    raw_value = attrs.get("value", "")
    try:
        value = float(raw_value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError
    except ValueError:
        tally.error(RowError(line, column, "value", raw_value, "the value is not a number",
                             "値が数値ではありません"))
        return None
    try:
        start = parse_date(attrs["startDate"])
        end = parse_date(attrs.get("endDate") or attrs["startDate"])
    except (KeyError, ValueError):
        bad = attrs.get("startDate", "")
        tally.error(RowError(line, column, "startDate", bad,
                             "the date is not like 2024-01-05 08:30:00 +0900",
                             "日時が「2024-01-05 08:30:00 +0900」の形ではありません"))
        return None
    return Sample(
        hk_type=hk_type,
        value=value,
        unit=unit,
        start=start,
        end=end,
        source_name=source_name if source_name is not None else attrs.get("sourceName", ""),
        device=device if device is not None else device_label(attrs.get("device", "")),
        line=line,
    )


def _pressure(event: Event, tally: Tally) -> Pressure | None:
    _, attrs, _meta, members, line, column = event
    source = attrs.get("sourceName", "")
    device = device_label(attrs.get("device", ""))
    halves: dict[str, Sample] = {}
    for m_attrs, _m_meta, m_line, m_column in members:
        hk_type = m_attrs.get("type")
        if hk_type in (SYSTOLIC, DIASTOLIC):
            # The reading's identity is the correlation's: its source and time.
            sample = _sample(hk_type, m_attrs, m_line, m_column, tally,
                             source_name=source, device=device)
            if sample is None:
                return None
            halves[hk_type] = sample
    if len(halves) != 2:
        tally.error(RowError(line, column, "Correlation", BLOOD_PRESSURE,
                             "the blood pressure reading lacks its systolic or diastolic value",
                             "血圧の記録に収縮期または拡張期の値がありません"))
        return None
    systolic, diastolic = halves[SYSTOLIC], halves[DIASTOLIC]
    try:
        start = parse_date(attrs["startDate"])
        systolic.start = diastolic.start = start
        systolic.end = diastolic.end = parse_date(attrs.get("endDate") or attrs["startDate"])
    except (KeyError, ValueError):
        tally.error(RowError(line, column, "startDate", attrs.get("startDate", ""),
                             "the date is not like 2024-01-05 08:30:00 +0900",
                             "日時が「2024-01-05 08:30:00 +0900」の形ではありません"))
        return None
    return Pressure(systolic, diastolic)


StepKey = tuple[str, str, str]  # (local day ISO, sourceName, device)


def _add_steps(steps: dict[StepKey, float], sample: Sample) -> None:
    """Add a step sample to its Japan day(s); a sample across midnight is
    shared between the two days in proportion to its time in each."""
    start = sample.start.astimezone(JAPAN)
    end = max(sample.end.astimezone(JAPAN), start)
    key_tail = (sample.source_name, sample.device)
    day = start.date()
    if end.date() == day:
        key = (day.isoformat(), *key_tail)
        steps[key] = steps.get(key, 0.0) + sample.value
        return
    span = (end - start).total_seconds()
    cursor = start
    while cursor < end:
        midnight = datetime.combine(cursor.date() + timedelta(days=1), datetime.min.time(),
                                    tzinfo=JAPAN)
        part_end = min(midnight, end)
        share = sample.value * (part_end - cursor).total_seconds() / span
        key = (cursor.date().isoformat(), *key_tail)
        steps[key] = steps.get(key, 0.0) + share
        cursor = part_end


@dataclass(slots=True)
class DaySteps:
    day: date
    steps: int
    source_name: str
    device: str


def read_export(
    stream: IO[bytes],
    tally: Tally,
    *,
    steps: dict[StepKey, float] | None = None,
    block: int = BLOCK,
) -> Iterator[Sample | Pressure]:
    """The mapped measurements of an export, in file order (Sample for a
    weight, pulse, temperature or glucose; Pressure for a blood-pressure
    correlation). Step samples are not yielded: they are added to `steps`
    (per Japan day, source and device) when given. Unmapped types are
    counted in `tally.skipped`; bad records in `tally.errors`. Raises
    ExportError when the file cannot be read as a whole."""
    read = tally.read
    skipped = tally.skipped
    for event in parse_events(stream, block=block):
        kind = event[0]
        if kind == "R":
            tally.elements += 1
            attrs = event[1]
            hk_type = attrs.get("type", "")
            if hk_type in SINGLE_TYPES:
                sample = _sample(hk_type, attrs, event[3], event[4], tally)
                if sample is not None:
                    read[hk_type] = read.get(hk_type, 0) + 1
                    yield sample
            elif hk_type == STEP_COUNT:
                sample = _sample(hk_type, attrs, event[3], event[4], tally)
                if sample is not None:
                    read[hk_type] = read.get(hk_type, 0) + 1
                    if steps is not None:
                        _add_steps(steps, sample)
            elif hk_type in (SYSTOLIC, DIASTOLIC):
                # The DTD: "Any Records that appear as children of a
                # correlation also appear as top-level records": these
                # are read from their correlation, not twice.
                tally.in_correlation += 1
            else:
                skipped[hk_type or "Record"] = skipped.get(hk_type or "Record", 0) + 1
        elif kind == "C":
            tally.elements += 1
            hk_type = event[1].get("type", "")
            if hk_type == BLOOD_PRESSURE:
                pressure = _pressure(event, tally)
                if pressure is not None:
                    read[hk_type] = read.get(hk_type, 0) + 1
                    yield pressure
            else:
                skipped[hk_type or "Correlation"] = skipped.get(hk_type or "Correlation", 0) + 1
        elif kind == "X":
            skipped[event[1]] = skipped.get(event[1], 0) + 1
        elif kind == "H" and event[1] == "ExportDate":
            tally.export_date = event[2].get("value", "")


def day_steps(steps: dict[StepKey, float]) -> list[DaySteps]:
    return [
        DaySteps(day=date.fromisoformat(day), steps=round(total), source_name=source,
                 device=device)
        for (day, source, device), total in sorted(steps.items())
    ]


# --------------------------------------------------------------------------
# Importing: the job "vitals.apple_health"
# --------------------------------------------------------------------------

JOB_KIND = "vitals.apple_health"
CHUNK = 5000
# Pass one reports its progress (and renews its lease) every this many bytes.
PROGRESS_BYTES = 8 << 20
MAX_CURSOR_ERRORS = 100

# The kind each HealthKit type becomes (vitals.records' catalog keys).
KIND_OF = {
    BODY_MASS: "body_weight",
    HEART_RATE: "heart_rate",
    BODY_TEMPERATURE: "body_temperature",
    BLOOD_GLUCOSE: "blood_glucose",
    BLOOD_PRESSURE: "blood_pressure",
    STEP_COUNT: "step_count",
}
IMPORTED_KINDS = frozenset(KIND_OF.values())


class _Counting(io.RawIOBase):
    """Counts the bytes read through it (pass one's progress)."""

    def __init__(self, inner: IO[bytes]) -> None:
        self.inner = inner
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.count += len(data)
        return data


def xml_size(path: Path | str) -> int:
    """The size of the XML the import reads (inside the zip: its size
    uncompressed)."""
    with open(path, "rb") as raw:
        if raw.read(4) != b"PK\x03\x04":
            return Path(path).stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            return _xml_member(archive).file_size
    except zipfile.BadZipFile:
        return Path(path).stat().st_size


def export_source(source_name: str, device: str) -> Any:
    """The DeviceRef of what recorded a sample: "Apple Health" + the app
    or device that wrote it (sourceName) + the device. The id is a digest,
    so a long device description stays within the store's identifier."""
    from vitals.records import DeviceRef

    digest = hashlib.sha256(f"{source_name}\x1f{device}".encode()).hexdigest()[:20]
    display = f"{APPLE_HEALTH}: {source_name}"
    name = next((p[5:] for p in device.split(", ") if p.startswith("name:")), "")
    if name and name not in source_name:
        display += f" ({name})"
    return DeviceRef(id=f"apple-health:{digest}", display=display[:200])


def _reading(item: Sample | Pressure) -> Any:
    from vitals.records import Reading

    if isinstance(item, Pressure):
        s = item.systolic
        return s, Reading(kind="blood_pressure", values=(s.value, item.diastolic.value),
                          taken_at=s.start, unit=s.unit)
    return item, Reading(kind=KIND_OF[item.hk_type], values=(item.value,), taken_at=item.start,
                         unit=item.unit)


def _check(item: Sample | Pressure, tally: Tally) -> tuple[Sample, Any] | None:
    """The checked Reading (vitals.records.reading_check: the catalog's unit
    conversions and plausible ranges), or None with the error noted."""
    from vitals.records import VitalError, reading_check

    sample, reading = _reading(item)
    try:
        return sample, reading_check(reading)
    except VitalError as exc:
        tally.error(RowError(sample.line, 0, str(exc.field), str(exc.value), exc.en, exc.ja))
        return None


def _steps_readings(steps: dict[StepKey, float], tally: Tally) -> list[tuple[DaySteps, Any]]:
    from vitals.records import Reading, VitalError, reading_check

    out = []
    for day in day_steps(steps):
        start = datetime.combine(day.day, datetime.min.time(), tzinfo=JAPAN)
        reading = Reading(kind="step_count", values=(day.steps,), taken_at=start,
                          until=start + timedelta(days=1), unit="/d")
        try:
            out.append((day, reading_check(reading)))
        except VitalError as exc:
            if exc.field == "until":  # today: the day is not over yet
                try:
                    out.append((day, reading_check(Reading(
                        kind="step_count", values=(day.steps,), taken_at=start,
                        until=None, unit="/d"))))
                    continue
                except VitalError as again:
                    exc = again
            tally.error(RowError(0, 0, "StepCount", f"{day.day} {day.source_name}", exc.en, exc.ja))
    return out


def import_enqueue(*, patient: Any, user: Any, path: str, filename: str, size: int) -> Any:
    """Queue the import of a stored export (path under MEDIA_ROOT) for a
    person; the caller authorized the user (vitals.records.authorize)."""
    from phr.jobs import job_enqueue

    return job_enqueue(
        kind=JOB_KIND,
        payload={"patient_id": str(patient.pk), "user_id": user.pk, "path": path,
                 "filename": filename, "size": size},
        created_by=user,
        progress_total=None,
    )


def _audit_import(user: Any, patient_id: Any, job_id: int, counts: dict[str, int]) -> None:
    from phr.audit import AuditEntry, audit_write_many
    from phr.models import Patient
    from phr.terminology import Category

    own = Patient.objects.filter(pk=patient_id, account_id=user.pk).exists()
    audit_write_many([AuditEntry(
        action="vitals.import.apple_health",
        actor_id=user.pk,
        actor_role="patient" if own else "guardian",
        patient_id=patient_id,
        categories=[Category.VITALS],
        purpose="personal",
        detail={"job": job_id, **counts},
    )])


def _write_chunk(ctx: Any, batch: list[Any], *, user: Any, cursor: dict[str, Any],
                 progress_done: int, progress_total: int | None, label: str) -> Any:
    """One chunk in one transaction with its checkpoint (a lost lease
    rolls the chunk back)."""
    from django.db import transaction

    from vitals.records import DeviceRef, vitals_provenance, vitals_write_staged

    with transaction.atomic():
        provenance = vitals_provenance(
            user=user, device=DeviceRef(id="apple-health", display=APPLE_HEALTH),
            source=f"apple-health:job/{ctx.job.pk} {label}"[:200], job_id=ctx.job.pk,
        )
        # The alert rules run once, at the end of the import (below).
        result = vitals_write_staged(batch, provenance=provenance, copy=True,
                                     sender=apple_health_import, notify=False)
        counts = cursor["counts"]
        counts["created"] += len(result.created)
        counts["updated"] += len(result.updated)
        counts["unchanged"] += len(result.unchanged)
        ctx.checkpoint(cursor=cursor, progress_done=progress_done,
                       progress_total=progress_total)
    return result


def apple_health_import(ctx: Any) -> dict[str, Any]:
    """The job: pass one checks the whole file and adds up the steps
    (nothing written); then the day totals and, chunk by chunk, every
    reading go through vitals.records' bulk path, each chunk committed with
    its checkpoint. A worker that dies resumes after its last chunk; ids
    come from the readings' identities, so nothing is written twice."""
    from django.conf import settings

    from phr.models import Job, Patient, User
    from vitals.records import authorize, vital_staged

    payload = ctx.payload
    patient = Patient.objects.get(pk=payload["patient_id"])
    user = User.objects.get(pk=payload["user_id"])
    # Still hers, or still the child's guardian (PermissionDenied fails the job).
    authorize(user, patient)
    path = Path(settings.MEDIA_ROOT) / payload["path"]
    cursor = dict(ctx.cursor)
    pause = float(payload.get("pause_per_chunk", 0))  # the crash tests' hook

    if cursor.get("phase") != "write":
        size = xml_size(path)
        tally = Tally()
        steps: dict[StepKey, float] = {}
        items = 0
        next_report = PROGRESS_BYTES
        try:
            with open_export(path) as stream:
                counted = _Counting(stream)
                for _item in read_export(counted, tally, steps=steps):
                    items += 1
                    if counted.count >= next_report:
                        next_report = counted.count + PROGRESS_BYTES
                        ctx.checkpoint(cursor={"phase": "check"}, progress_done=counted.count,
                                       progress_total=size)
        except ExportError as exc:
            # Kept in both languages for the import's page; the job fails.
            ctx.checkpoint(cursor={"phase": "check", "file_error": exc.as_dict()})
            raise
        day_readings = _steps_readings(steps, tally)
        cursor = {
            "phase": "write",
            "done": 0,
            "items": items,
            "tally": {k: v for k, v in tally.as_dict().items() if k != "errors"},
            "errors": [e.as_dict() for e in tally.errors[:MAX_CURSOR_ERRORS]],
            "error_count": tally.error_count,
            "counts": {"created": 0, "updated": 0, "unchanged": 0, "days": len(day_readings)},
        }
        batch = [
            vital_staged(patient_id=patient.pk, reading=reading,
                         source=export_source(day.source_name, day.device).source,
                         device=export_source(day.source_name, day.device))
            for day, reading in day_readings
        ]
        # The day totals commit with the switch to pass two: a resumed job
        # never adds them twice, and never writes them without the rest.
        _write_chunk(ctx, batch, user=user, cursor=cursor, progress_done=0,
                     progress_total=items, label="steps per day")

    done = int(cursor["done"])
    total = int(cursor["items"])
    tally = Tally()
    batch = []
    position = 0
    sources: dict[tuple[str, str], Any] = {}
    with open_export(path) as stream:
        for item in read_export(stream, tally):
            position += 1
            if position <= done:
                continue  # committed before a restart
            checked = _check(item, tally)
            if checked is not None:
                sample, reading = checked
                key = (sample.source_name, sample.device)
                ref = sources.get(key)
                if ref is None:
                    ref = sources[key] = export_source(*key)
                batch.append(vital_staged(patient_id=patient.pk, reading=reading,
                                          source=ref.source, device=ref))
            if position % CHUNK == 0:
                cursor["done"] = position
                _merge_errors(cursor, tally)
                _write_chunk(ctx, batch, user=user, cursor=cursor, progress_done=position,
                             progress_total=total, label=f"items {position - CHUNK + 1}-{position}")
                batch = []
                if pause:
                    time.sleep(pause)
    cursor["done"] = position
    _merge_errors(cursor, tally)
    _write_chunk(ctx, batch, user=user, cursor=cursor, progress_done=position,
                 progress_total=total, label=f"items to {position}")
    _audit_import(user, patient.pk, ctx.job.pk, cursor["counts"])
    counts = cursor["counts"]
    if counts["created"] or counts["updated"]:
        # One vitals_written for the whole import (the chunks sent none): the
        # kinds it may have written, whatever chunk a resumed job began at.
        from vitals import signals

        signals.send_on_commit(apple_health_import, {patient.pk: IMPORTED_KINDS})
    Job.objects.filter(pk=ctx.job.pk).update(progress_done=total, progress_total=total)
    return {
        **cursor["tally"],
        **cursor["counts"],
        "errors": cursor["errors"],
        "error_count": cursor["error_count"],
    }


def _merge_errors(cursor: dict[str, Any], tally: Tally) -> None:
    """Errors of pass two (values the catalog refuses) join pass one's."""
    if not tally.error_count:
        return
    cursor["error_count"] += tally.error_count
    room = MAX_CURSOR_ERRORS - len(cursor["errors"])
    cursor["errors"] += [e.as_dict() for e in tally.errors[:max(room, 0)]]
    tally.error_count = 0
    tally.errors.clear()


def _failed(job: Any) -> None:
    """A failed import leaves no file behind it (the records were never
    written: pass one refused the file)."""
    from django.conf import settings

    with contextlib.suppress(OSError, KeyError):
        (Path(settings.MEDIA_ROOT) / job.payload["path"]).unlink()


def _register() -> None:
    from phr.jobs import job_handler

    job_handler(JOB_KIND, on_failure=_failed)(apple_health_import)


_register()
