"""Apple Health exports we generate: a small realistic sample for tests and
the demo, and exports of any size, streamed, for the benchmark.

They follow the real schema — the DTD a phone writes at the top of
export.xml (HealthKit Export Version 11; the declarations below are the
ones for the elements we write): `HealthData locale=…` holding
`ExportDate`, `Me`, the `Record`s grouped by type in time order, then the
`Correlation`s (blood pressure, whose systolic and diastolic `Record`s
also appear at the top level, as the DTD's note says), `Workout`s and
`ActivitySummary`s. Dates are local time with the offset ("2024-01-05
08:30:00 +0900"), `device` is HealthKit's description with an object
address that changes from one export to the next, and units are the ones
the person chose in the Health app (kg / lb / g, degC / degF, mg/dL /
mmol<180.1558800000541>/L). See docs/decisions/0019-apple-health.md.
"""

from __future__ import annotations

import io
import random
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO
from xml.sax.saxutils import quoteattr

JST = timezone(timedelta(hours=9))

DTD = """<!DOCTYPE HealthData [
<!-- HealthKit Export Version: 11 -->
<!ELEMENT HealthData (ExportDate,Me,(Record|Correlation|Workout|ActivitySummary|ClinicalRecord)*)>
<!ATTLIST HealthData
  locale CDATA #REQUIRED
>
<!ELEMENT ExportDate EMPTY>
<!ATTLIST ExportDate
  value CDATA #REQUIRED
>
<!ELEMENT Me EMPTY>
<!ATTLIST Me
  HKCharacteristicTypeIdentifierDateOfBirth         CDATA #REQUIRED
  HKCharacteristicTypeIdentifierBiologicalSex       CDATA #REQUIRED
  HKCharacteristicTypeIdentifierBloodType           CDATA #REQUIRED
  HKCharacteristicTypeIdentifierFitzpatrickSkinType CDATA #REQUIRED
>
<!ELEMENT Record ((MetadataEntry|HeartRateVariabilityMetadataList)*)>
<!ATTLIST Record
  type          CDATA #REQUIRED
  unit          CDATA #IMPLIED
  value         CDATA #IMPLIED
  sourceName    CDATA #REQUIRED
  sourceVersion CDATA #IMPLIED
  device        CDATA #IMPLIED
  creationDate  CDATA #IMPLIED
  startDate     CDATA #REQUIRED
  endDate       CDATA #REQUIRED
>
<!-- Note: Any Records that appear as children of a correlation also appear
     as top-level records in this document. -->
<!ELEMENT Correlation ((MetadataEntry|Record)*)>
<!ATTLIST Correlation
  type          CDATA #REQUIRED
  sourceName    CDATA #REQUIRED
  sourceVersion CDATA #IMPLIED
  device        CDATA #IMPLIED
  creationDate  CDATA #IMPLIED
  startDate     CDATA #REQUIRED
  endDate       CDATA #REQUIRED
>
<!ELEMENT Workout ((MetadataEntry|WorkoutEvent|WorkoutRoute)*)>
<!ATTLIST Workout
  workoutActivityType   CDATA #REQUIRED
  duration              CDATA #IMPLIED
  durationUnit          CDATA #IMPLIED
  totalDistance         CDATA #IMPLIED
  totalDistanceUnit     CDATA #IMPLIED
  totalEnergyBurned     CDATA #IMPLIED
  totalEnergyBurnedUnit CDATA #IMPLIED
  sourceName            CDATA #REQUIRED
  sourceVersion         CDATA #IMPLIED
  device                CDATA #IMPLIED
  creationDate          CDATA #IMPLIED
  startDate             CDATA #REQUIRED
  endDate               CDATA #REQUIRED
>
<!ELEMENT ActivitySummary EMPTY>
<!ATTLIST ActivitySummary
  dateComponents           CDATA #IMPLIED
  activeEnergyBurned       CDATA #IMPLIED
  activeEnergyBurnedGoal   CDATA #IMPLIED
  activeEnergyBurnedUnit   CDATA #IMPLIED
  appleExerciseTime        CDATA #IMPLIED
  appleExerciseTimeGoal    CDATA #IMPLIED
  appleStandHours          CDATA #IMPLIED
  appleStandHoursGoal      CDATA #IMPLIED
>
<!ELEMENT MetadataEntry EMPTY>
<!ATTLIST MetadataEntry
  key   CDATA #REQUIRED
  value CDATA #REQUIRED
>
]>
"""

GLUCOSE_MMOL = "mmol<180.1558800000541>/L"


def hk_date(moment: datetime) -> str:
    """HealthKit's date format: local time and offset, "2024-01-05 08:30:00 +0900"."""
    return moment.strftime("%Y-%m-%d %H:%M:%S %z")


@dataclass
class Source:
    name: str
    version: str
    device: str = ""  # HealthKit's device description, "{pointer}" replaced per record


IPHONE = Source(
    "花子のiPhone",
    "17.1.2",
    "<<HKDevice: {pointer}>, name:iPhone, manufacturer:Apple Inc., model:iPhone, "
    "hardware:iPhone14,5, software:17.1.2>",
)
WATCH = Source(
    "花子のApple Watch",
    "10.1.1",
    "<<HKDevice: {pointer}>, name:Apple Watch, manufacturer:Apple Inc., model:Watch, "
    "hardware:Watch6,2, software:10.1.1>",
)
OMRON = Source("OMRON connect", "7.12.0")
SCALE = Source("Health Planet", "4.6.1")
HEALTH_APP = Source("ヘルスケア", "17.1.2")  # entered by hand in the Health app


@dataclass
class Element:
    """One top-level element to write (a Record, a Correlation, …)."""

    tag: str
    attrs: list[tuple[str, str]]
    metadata: list[tuple[str, str]] = field(default_factory=list)
    children: list[Element] = field(default_factory=list)


class _Pointers:
    """HealthKit prints each device object's address: a different one in
    every export (and often per record)."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)  # noqa: S311 (test data, not secrets)

    def __call__(self) -> str:
        return f"0x{self.random.getrandbits(36):09x}"


def record(
    hk_type: str,
    source: Source,
    unit: str,
    value: str,
    start: datetime,
    end: datetime | None = None,
    *,
    pointer: str = "0x283a0c780",
    metadata: Iterable[tuple[str, str]] = (),
) -> Element:
    end = end or start
    attrs = [("type", hk_type), ("sourceName", source.name), ("sourceVersion", source.version)]
    if source.device:
        attrs.append(("device", source.device.format(pointer=pointer)))
    attrs += [
        ("unit", unit),
        ("creationDate", hk_date(end + timedelta(seconds=42))),
        ("startDate", hk_date(start)),
        ("endDate", hk_date(end)),
        ("value", value),
    ]
    return Element("Record", attrs, list(metadata))


def blood_pressure(
    source: Source, systolic: int, diastolic: int, at: datetime, *, pointer: str = "0x2836"
) -> list[Element]:
    """A reading as an export holds it: the two top-level Records and the
    Correlation holding them again."""
    sync = [("HKMetadataKeySyncIdentifier", f"omron-{at:%Y%m%d%H%M%S}"),
            ("HKMetadataKeySyncVersion", "1")]
    halves = [
        record("HKQuantityTypeIdentifierBloodPressureDiastolic", source, "mmHg", str(diastolic),
               at, pointer=pointer, metadata=sync),
        record("HKQuantityTypeIdentifierBloodPressureSystolic", source, "mmHg", str(systolic),
               at, pointer=pointer, metadata=sync),
    ]
    attrs = [("type", "HKCorrelationTypeIdentifierBloodPressure"), ("sourceName", source.name),
             ("sourceVersion", source.version)]
    if source.device:
        attrs.append(("device", source.device.format(pointer=pointer)))
    attrs += [("creationDate", hk_date(at + timedelta(seconds=42))),
              ("startDate", hk_date(at)), ("endDate", hk_date(at))]
    correlation = Element("Correlation", attrs, sync, halves)
    return [*halves, correlation]


def _attrs(attrs: list[tuple[str, str]]) -> str:
    return " ".join(f"{k}={quoteattr(v)}" for k, v in attrs)


def render(element: Element, indent: str = " ") -> str:
    inner = [f'{indent} <MetadataEntry key={quoteattr(k)} value={quoteattr(v)}/>\n'
             for k, v in element.metadata]
    inner += [render(child, indent + " ") for child in element.children]
    if not inner:
        return f"{indent}<{element.tag} {_attrs(element.attrs)}/>\n"
    return (f"{indent}<{element.tag} {_attrs(element.attrs)}>\n" + "".join(inner)
            + f"{indent}</{element.tag}>\n")


def header(export_date: datetime, *, locale: str = "ja_JP") -> str:
    me = [
        ("HKCharacteristicTypeIdentifierDateOfBirth", "1994-04-12"),
        ("HKCharacteristicTypeIdentifierBiologicalSex", "HKBiologicalSexFemale"),
        ("HKCharacteristicTypeIdentifierBloodType", "HKBloodTypeAPositive"),
        ("HKCharacteristicTypeIdentifierFitzpatrickSkinType", "HKFitzpatrickSkinTypeNotSet"),
    ]
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n' + DTD
        + f"<HealthData locale={quoteattr(locale)}>\n"
        + f" <ExportDate value={quoteattr(hk_date(export_date))}/>\n"
        + f" <Me {_attrs(me)}/>\n"
    )


FOOTER = "</HealthData>\n"


# --------------------------------------------------------------------------
# The small sample: every mapped type, every unit, known values
# --------------------------------------------------------------------------


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


# (start, unit, value as written) of body mass, from three sources and units.
SAMPLE_BODY_MASS = [
    ("2024-01-05 07:10:00 +0900", "kg", "55.2", SCALE),
    ("2024-01-12 07:05:00 +0900", "lb", "121.9", HEALTH_APP),  # 55.29 kg
    ("2024-01-19 07:12:00 +0900", "g", "55600", SCALE),  # 55.6 kg
]
SAMPLE_TEMPERATURE = [
    ("2024-01-05 06:50:00 +0900", "degC", "36.6", HEALTH_APP),
    ("2024-01-06 06:55:00 +0900", "degF", "98.6", HEALTH_APP),  # 37.0 °C
]
SAMPLE_GLUCOSE = [
    ("2024-01-05 08:00:00 +0900", "mg/dL", "92", HEALTH_APP),
    ("2024-01-06 08:00:00 +0900", GLUCOSE_MMOL, "5.2", HEALTH_APP),  # 93.7 mg/dL
]
SAMPLE_HEART_RATE = [
    ("2024-01-05 08:30:00 +0900", "count/min", "72", WATCH),
    ("2024-01-05 12:31:00 +0900", "count/min", "88", WATCH),
    ("2024-01-06 09:02:00 +0900", "count/min", "64", WATCH),
]
SAMPLE_BLOOD_PRESSURE = [
    ("2024-01-05 07:30:00 +0900", 118, 76),
    ("2024-01-06 07:28:00 +0900", 142, 91),
]
# Steps: (start, end, count, source). Japan days: Jan 5 and Jan 6 from the
# iPhone, Jan 5 from the Watch; one sample written in UTC (23:30 Z on Jan 5
# is 08:30 on Jan 6 in Japan); one across Japan midnight, shared 50/50.
SAMPLE_STEPS = [
    ("2024-01-05 08:00:00 +0900", "2024-01-05 08:10:00 +0900", "1200", IPHONE),
    ("2024-01-05 12:00:00 +0900", "2024-01-05 12:20:00 +0900", "2300", IPHONE),
    ("2024-01-05 23:50:00 +0900", "2024-01-06 00:10:00 +0900", "400", IPHONE),
    ("2024-01-05 23:30:00 +0000", "2024-01-05 23:40:00 +0000", "900", IPHONE),
    ("2024-01-05 09:00:00 +0900", "2024-01-05 09:30:00 +0900", "3100", WATCH),
]
# Expected per (Japan day, source name): what the import must write.
SAMPLE_STEP_TOTALS = {
    ("2024-01-05", IPHONE.name): 1200 + 2300 + 200,
    ("2024-01-06", IPHONE.name): 200 + 900,
    ("2024-01-05", WATCH.name): 3100,
}
# Types we do not map: they are counted, never an error.
SAMPLE_OTHER = [
    ("HKQuantityTypeIdentifierActiveEnergyBurned", "kcal", "12.5", WATCH),
    ("HKQuantityTypeIdentifierDistanceWalkingRunning", "km", "0.82", IPHONE),
    ("HKQuantityTypeIdentifierHeight", "cm", "158", HEALTH_APP),
]


def sample_elements(*, pointer_seed: int = 1) -> list[Element]:
    """The sample's elements in export order (Records by type, then the
    Correlations, a Workout and an ActivitySummary)."""
    pointer = _Pointers(pointer_seed)
    records: list[Element] = []
    correlations: list[Element] = []
    for start, unit, value, source in SAMPLE_BODY_MASS:
        records.append(record("HKQuantityTypeIdentifierBodyMass", source, unit, value, _at(start),
                              pointer=pointer(),
                              metadata=[("HKWasUserEntered", "1")] if source is HEALTH_APP
                              else []))
    for start, unit, value, source in SAMPLE_TEMPERATURE:
        records.append(record("HKQuantityTypeIdentifierBodyTemperature", source, unit, value,
                              _at(start), pointer=pointer(),
                              metadata=[("HKWasUserEntered", "1")]))
    for start, unit, value, source in SAMPLE_GLUCOSE:
        records.append(record("HKQuantityTypeIdentifierBloodGlucose", source, unit, value,
                              _at(start), pointer=pointer(),
                              metadata=[("HKBloodGlucoseMealTime", "1"),
                                        ("HKWasUserEntered", "1")]))
    for start, unit, value, source in SAMPLE_HEART_RATE:
        records.append(record("HKQuantityTypeIdentifierHeartRate", source, unit, value,
                              _at(start), pointer=pointer(),
                              metadata=[("HKMetadataKeyHeartRateMotionContext", "0")]))
    for start, end, value, source in SAMPLE_STEPS:
        records.append(record("HKQuantityTypeIdentifierStepCount", source, "count", value,
                              _at(start), _at(end), pointer=pointer()))
    for hk_type, unit, value, source in SAMPLE_OTHER:
        records.append(record(hk_type, source, unit, value, _at("2024-01-05 10:00:00 +0900"),
                              pointer=pointer()))
    for start, systolic, diastolic in SAMPLE_BLOOD_PRESSURE:
        *halves, correlation = blood_pressure(OMRON, systolic, diastolic, _at(start),
                                              pointer=pointer())
        records += halves
        correlations.append(correlation)
    workout = Element(
        "Workout",
        [("workoutActivityType", "HKWorkoutActivityTypeWalking"), ("duration", "31.5"),
         ("durationUnit", "min"), ("sourceName", WATCH.name), ("sourceVersion", WATCH.version),
         ("creationDate", "2024-01-05 18:40:00 +0900"), ("startDate", "2024-01-05 18:05:00 +0900"),
         ("endDate", "2024-01-05 18:36:30 +0900")],
        [("HKIndoorWorkout", "0")],
    )
    summary = Element(
        "ActivitySummary",
        [("dateComponents", "2024-01-05"), ("activeEnergyBurned", "312.4"),
         ("activeEnergyBurnedGoal", "400"), ("activeEnergyBurnedUnit", "kcal")],
    )
    # An export groups Records by type, in time order within each.
    records.sort(key=lambda e: dict(e.attrs)["type"])
    return [*records, *correlations, workout, summary]


def sample_export(*, pointer_seed: int = 1) -> bytes:
    """The small sample export.xml (UTF-8 bytes)."""
    text = header(_at("2024-01-20 21:15:03 +0900"))
    text += "".join(render(e) for e in sample_elements(pointer_seed=pointer_seed))
    return (text + FOOTER).encode()


def zipped(xml: bytes, *, folder: str = "apple_health_export") -> bytes:
    """export.zip as the Health app shares it: the folder with export.xml
    (and the clinical document beside it)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{folder}/export.xml", xml)
        archive.writestr(f"{folder}/export_cda.xml", b'<?xml version="1.0"?><ClinicalDocument/>')
    return buffer.getvalue()


# --------------------------------------------------------------------------
# Exports of any size, streamed (the benchmark)
# --------------------------------------------------------------------------

# Share of top-level elements per type in a year of a watch wearer's export:
# heart rate and steps dominate; a BP reading is three elements (two
# Records and the Correlation).
MIX = (
    ("HKQuantityTypeIdentifierHeartRate", 0.50),
    ("HKQuantityTypeIdentifierStepCount", 0.25),
    ("HKQuantityTypeIdentifierActiveEnergyBurned", 0.15),
    ("HKQuantityTypeIdentifierBodyMass", 0.02),
    ("HKQuantityTypeIdentifierBodyTemperature", 0.02),
    ("HKQuantityTypeIdentifierBloodGlucose", 0.02),
    ("bp", 0.04),
)


def _generated(hk_type: str, index: int, count: int, start: datetime, span: timedelta,
               rng: random.Random, pointer: _Pointers) -> list[Element]:
    # Spread evenly over the span, in time order, jittered by under a step.
    step = span / max(count, 1)
    at = start + step * index + timedelta(seconds=rng.randrange(max(int(step.total_seconds()), 1)))
    at = at.replace(microsecond=0)
    if hk_type == "HKQuantityTypeIdentifierHeartRate":
        return [record(hk_type, WATCH, "count/min", str(rng.randint(58, 110)), at,
                       pointer=pointer(),
                       metadata=[("HKMetadataKeyHeartRateMotionContext", "0")])]
    if hk_type == "HKQuantityTypeIdentifierStepCount":
        source = IPHONE if index % 3 else WATCH
        return [record(hk_type, source, "count", str(rng.randint(5, 900)), at,
                       at + timedelta(minutes=rng.randint(1, 10)), pointer=pointer())]
    if hk_type == "HKQuantityTypeIdentifierActiveEnergyBurned":
        return [record(hk_type, WATCH, "kcal", f"{rng.uniform(0.1, 9):.3f}", at,
                       at + timedelta(minutes=1), pointer=pointer())]
    if hk_type == "HKQuantityTypeIdentifierBodyMass":
        unit, value = (("lb", f"{rng.uniform(110, 150):.1f}") if index % 4 == 0
                       else ("kg", f"{rng.uniform(48, 68):.1f}"))
        return [record(hk_type, SCALE, unit, value, at)]
    if hk_type == "HKQuantityTypeIdentifierBodyTemperature":
        unit, value = (("degF", f"{rng.uniform(97.0, 99.5):.1f}") if index % 5 == 0
                       else ("degC", f"{rng.uniform(36.0, 37.4):.1f}"))
        return [record(hk_type, HEALTH_APP, unit, value, at,
                       metadata=[("HKWasUserEntered", "1")])]
    if hk_type == "HKQuantityTypeIdentifierBloodGlucose":
        unit, value = ((GLUCOSE_MMOL, f"{rng.uniform(4.0, 7.5):.1f}") if index % 2
                       else ("mg/dL", str(rng.randint(75, 140))))
        return [record(hk_type, HEALTH_APP, unit, value, at,
                       metadata=[("HKWasUserEntered", "1")])]
    raise ValueError(hk_type)


def export_chunks(
    elements: int,
    *,
    seed: int = 1,
    start: datetime = datetime(2024, 1, 1, tzinfo=JST),
    days: int = 365,
) -> Iterator[bytes]:
    """An export.xml of about `elements` top-level Record and Correlation
    elements, written as it is generated (~64 kB pieces): memory does not
    grow with its size."""
    rng = random.Random(seed)  # noqa: S311 (test data)
    pointer = _Pointers(seed + 1)
    span = timedelta(days=days)
    pending: list[str] = [header(start + span + timedelta(hours=3))]
    size = len(pending[0])
    bp_count = max(int(elements * dict(MIX)["bp"] / 3), 1)

    def emit(text: str) -> Iterator[bytes]:
        nonlocal size
        pending.append(text)
        size += len(text)
        if size >= 1 << 16:
            yield "".join(pending).encode()
            pending.clear()
            size = 0

    for hk_type, share in MIX:
        if hk_type == "bp":
            continue  # below: the top-level halves, then the correlations
        count = int(elements * share)
        for index in range(count):
            for element in _generated(hk_type, index, count, start, span, rng, pointer):
                yield from emit(render(element))
    # Blood pressure: the two halves at top level, then the correlations.
    bp_rng = random.Random(seed + 2)  # noqa: S311 (test data)
    for half in ("HKQuantityTypeIdentifierBloodPressureDiastolic",
                 "HKQuantityTypeIdentifierBloodPressureSystolic"):
        bp_rng.seed(seed + 2)
        for index in range(bp_count):
            at, systolic, diastolic = _bp_reading(index, bp_count, start, span, bp_rng)
            halves = blood_pressure(OMRON, systolic, diastolic, at)
            yield from emit(render(halves[0] if half.endswith("Diastolic") else halves[1]))
    bp_rng.seed(seed + 2)
    for index in range(bp_count):
        at, systolic, diastolic = _bp_reading(index, bp_count, start, span, bp_rng)
        yield from emit(render(blood_pressure(OMRON, systolic, diastolic, at)[2]))
    pending.append(FOOTER)
    yield "".join(pending).encode()


def _bp_reading(index: int, count: int, start: datetime, span: timedelta,
                rng: random.Random) -> tuple[datetime, int, int]:
    at = (start + span / count * index + timedelta(minutes=rng.randrange(60))).replace(
        microsecond=0)
    return at, rng.randint(100, 150), rng.randint(60, 98)


class ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of byte chunks: lets the parser
    read a generated export that is never held whole in memory."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""
        self.produced = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            piece = next(self._chunks, None)
            if piece is None:
                break
            self.produced += len(piece)
            self._buffer += piece
        if size < 0:
            size = len(self._buffer)
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


def write_export(path: Path, elements: int, *, seed: int = 1, zip_it: bool = False) -> int:
    """Write a generated export to `path` (export.xml, or export.zip with
    apple_health_export/export.xml inside); return its XML size in bytes."""
    size = 0
    if zip_it:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, archive.open(
            "apple_health_export/export.xml", "w", force_zip64=True
        ) as member:
            for chunk in export_chunks(elements, seed=seed):
                member.write(chunk)
                size += len(chunk)
        return size
    with path.open("wb") as handle:
        size = _copy(export_chunks(elements, seed=seed), handle)
    return size


def _copy(chunks: Iterable[bytes], handle: IO[bytes]) -> int:
    size = 0
    for chunk in chunks:
        handle.write(chunk)
        size += len(chunk)
    return size
