"""The vitals core: the one place that knows the vital kinds, their codes,
units, plausible ranges and conversions, builds their FHIR Observations,
and writes them (hand entry, device endpoints, file imports alike).

- KINDS: blood pressure, heart rate, body weight, body temperature, blood
  glucose, fetal movement count (胎動カウント), body height / length, head
  circumference and steps per day, each on an item of the data dictionary
  (docs/dataset.md, phr.terminology) — codes and plausible ranges are read
  from there, never repeated here.
- `reading_check` converts a reading to its kind's unit (g/kg, lb, °F,
  mmol/L glucose, …) and enforces the range, raising VitalError (field,
  value, reason in Japanese and English).
- `vital_observation` builds the Observation; `vital_identity` names it:
  (source, patient, kind, instant) → the store's source identifier, so the
  resource id is derived from it (uuid5) and the same reading imported
  twice is one record.
- Writes: `vitals_write` (a few readings, authorized, audited) and, for
  imports, `vital_staged` + `vitals_write_staged` (a chunk through the
  store's COPY path, in the caller's transaction). Edit (a new version) and
  delete (a tombstone) are for the author of a hand entry only.
- Every write sends vitals.signals.vitals_written on commit.

docs/decisions/0017-vitals.md explains the choices.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import cache
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from municipal_data.formats.common import JP_BODY_CODES, JP_BODY_MEASUREMENT
from phr import store, terminology
from phr.audit import AuditEntry, audit_write_many
from phr.models import Patient, Provenance, Resource, User
from phr.services import provenance_create
from phr.terminology import CATEGORY_SYSTEM, LOINC, UCUM, Category
from vitals import signals

OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
# The store's source identifier system of every vital reading; the value is
# "<source>|<patient>|<kind>|<instant>" (vital_identity).
VITALS_SOURCE_SYSTEM = "urn:hagukumi:vitals"
# Observation.device is a logical reference to a registered device or app.
DEVICE_SYSTEM = "urn:hagukumi:device"

# Readings may be dated a little ahead of the server clock (a phone's clock).
CLOCK_SKEW = timedelta(minutes=10)
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)

MOTHER = "mother"
CHILD = "child"


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class VitalError(ValueError):
    """A value we refuse, with the field, the value and the reason in
    Japanese and English (imports put them in their line reports, forms on
    the field)."""

    def __init__(self, field: str, value: Any, ja: str, en: str) -> None:
        super().__init__(f"{field}: {value}: {en}")
        self.field = field
        self.value = value
        self.ja = ja
        self.en = en

    def message(self, language: str) -> str:
        return self.ja if language.startswith("ja") else self.en


# --------------------------------------------------------------------------
# Kinds
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One measured number of a kind: its dictionary item, UCUM unit and
    the decimals we keep."""

    item_key: str
    unit: str
    places: int

    @property
    def item(self) -> terminology.Item:
        return terminology.item(self.item_key)


@dataclass(frozen=True)
class Kind:
    key: str
    label: Any  # lazy translation
    # The dictionary item of the Observation.code (the panel for BP).
    item_key: str
    # One part: valueQuantity. Two (BP): components.
    parts: tuple[Part, ...]
    obs_category: str
    persons: tuple[str, ...]  # who records it by hand: MOTHER, CHILD
    # Codes of the same concept accepted from outside (devices, files),
    # besides the dictionary's own, as (system, code).
    also_accepts: tuple[tuple[str, str], ...] = ()
    # Extra codings written beside the dictionary's.
    extra_codings: tuple[dict[str, str], ...] = ()

    @property
    def item(self) -> terminology.Item:
        return terminology.item(self.item_key)

    @property
    def unit(self) -> str:
        return self.parts[0].unit

    @property
    def is_panel(self) -> bool:
        return len(self.parts) > 1

    def codings(self) -> list[dict[str, str]]:
        codings = [self.item.coding]
        if self.item_key in JP_BODY_CODES:
            code, display = JP_BODY_CODES[self.item_key]
            codings.append({"system": JP_BODY_MEASUREMENT, "code": code, "display": display})
        codings.extend(dict(c) for c in self.extra_codings)
        return codings

    def tokens(self) -> list[str]:
        """Every system|code that names this kind (for searches by kind)."""
        out = list(self.item.tokens)
        out += [f"{c['system']}|{c['code']}" for c in self.extra_codings]
        return out


BLOOD_PRESSURE = "blood_pressure"
HEART_RATE = "heart_rate"
BODY_WEIGHT = "body_weight"
BODY_TEMPERATURE = "body_temperature"
BLOOD_GLUCOSE = "blood_glucose"
FETAL_MOVEMENT = "fetal_movement_count"
BODY_HEIGHT = "body_height"
BODY_LENGTH = "body_length"
HEAD_CIRCUMFERENCE = "head_circumference"
STEP_COUNT = "step_count"

# LOINC 2339-0 Glucose [Mass/volume] in Blood: written beside our local
# code (the dictionary's primary: LOINC depends on specimen and method);
# not in the reference's loinc_codes.csv — see docs/decisions/0017-vitals.md.
GLUCOSE_MASS_LOINC = "2339-0"
# Accepted from devices and files (converted to mg/dL): 15074-8 Glucose
# [Moles/volume] in Blood, 41653-7 Glucose [Mass/volume] in Capillary blood
# by Glucometer (both from memory, accepted on input only).
GLUCOSE_MOLES_LOINC = "15074-8"

KINDS: dict[str, Kind] = {
    kind.key: kind
    for kind in (
        Kind(
            BLOOD_PRESSURE,
            _("Blood pressure"),
            "bp_panel",
            (Part("bp_systolic", "mm[Hg]", 0), Part("bp_diastolic", "mm[Hg]", 0)),
            "vital-signs",
            (MOTHER,),
            also_accepts=((LOINC, "55284-4"),),  # BP systolic & diastolic (older panel)
        ),
        Kind(
            HEART_RATE,
            _("Pulse"),
            "heart_rate",
            (Part("heart_rate", "/min", 0),),
            "vital-signs",
            (MOTHER,),
        ),
        Kind(
            BODY_WEIGHT,
            _("Body weight"),
            "body_weight",
            (Part("body_weight", "kg", 3),),
            "vital-signs",
            (MOTHER, CHILD),
        ),
        Kind(
            BODY_TEMPERATURE,
            _("Body temperature"),
            "body_temperature",
            (Part("body_temperature", "Cel", 1),),
            "vital-signs",
            (MOTHER, CHILD),
        ),
        Kind(
            BLOOD_GLUCOSE,
            _("Blood glucose"),
            "blood_glucose",
            (Part("blood_glucose", "mg/dL", 0),),
            "laboratory",
            (MOTHER,),
            also_accepts=((LOINC, GLUCOSE_MOLES_LOINC), (LOINC, "41653-7")),
            extra_codings=(
                {
                    "system": LOINC,
                    "code": GLUCOSE_MASS_LOINC,
                    "display": "Glucose [Mass/volume] in Blood",
                },
            ),
        ),
        Kind(
            FETAL_MOVEMENT,
            _("Fetal movement count"),
            "fetal_movement_count",
            (Part("fetal_movement_count", "min", 0),),
            "exam",
            (MOTHER,),
        ),
        Kind(
            BODY_HEIGHT,
            _("Height (standing)"),
            "body_height",
            (Part("body_height", "cm", 1),),
            "vital-signs",
            (CHILD,),
        ),
        Kind(
            BODY_LENGTH,
            _("Length (lying)"),
            "body_length",
            (Part("body_length", "cm", 1),),
            "vital-signs",
            (CHILD,),
        ),
        Kind(
            HEAD_CIRCUMFERENCE,
            _("Head circumference"),
            "head_circumference",
            (Part("head_circumference", "cm", 1),),
            "vital-signs",
            (CHILD,),
        ),
        Kind(
            STEP_COUNT,
            _("Steps per day"),
            "step_count",
            (Part("step_count", "/d", 0),),
            "activity",
            (),
            # Number of steps in unspecified time Pedometer (from memory).
            also_accepts=((LOINC, "55423-8"),),
        ),
    )
}


def kind(key: str) -> Kind:
    try:
        return KINDS[key]
    except KeyError:
        raise VitalError(
            "kind", key, f"「{key}」はバイタルの種類ではありません", f"{key!r} is not a vital kind"
        ) from None


def kinds_for(patient: Patient) -> list[Kind]:
    """The kinds a person records by hand: the mother's, or a child's."""
    who = CHILD if patient.kind == Patient.Kind.CHILD else MOTHER
    return [k for k in KINDS.values() if who in k.persons]


def _code_map() -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = {}
    for k in KINDS.values():
        item = k.item
        if item.loinc:
            out[(LOINC, item.loinc)] = k.key
        if item.local:
            out[(terminology.LOCAL, item.local)] = k.key
        for coding in k.extra_codings:
            out[(coding["system"], coding["code"])] = k.key
        for pair in k.also_accepts:
            out[pair] = k.key
    return out


_BY_CODE: dict[tuple[str, str], str] | None = None


def kind_for_coding(system: str | None, code: str | None) -> Kind | None:
    """The kind a coding names (dictionary codes and the accepted
    alternatives), or None."""
    global _BY_CODE
    if _BY_CODE is None:
        _BY_CODE = _code_map()
    key = _BY_CODE.get((system or "", code or ""))
    return KINDS[key] if key else None


def kind_of(content: dict[str, Any]) -> Kind | None:
    """The kind of a stored or incoming Observation, by its codings."""
    for coding in (content.get("code") or {}).get("coding") or ():
        found = kind_for_coding(coding.get("system"), coding.get("code"))
        if found is not None:
            return found
    return None


def all_tokens() -> list[str]:
    """The tokens of every kind (the index's `tokens` column)."""
    return [t for k in KINDS.values() for t in k.tokens()]


# --------------------------------------------------------------------------
# Units
# --------------------------------------------------------------------------

LB_KG = Decimal("0.45359237")  # international avoirdupois pound, exact
OZ_KG = LB_KG / 16
IN_CM = Decimal("2.54")
# mg/dL per mmol/L of glucose (molar mass 180.16 g/mol / 10).
GLUCOSE_MGDL_PER_MMOL = Decimal("18.016")
KPA_MMHG = Decimal("7.50062")


def g_to_kg(grams: Decimal) -> Decimal:
    return Decimal(grams) / 1000


def kg_to_g(kilograms: Decimal) -> Decimal:
    return Decimal(kilograms) * 1000


def lb_to_kg(pounds: Decimal) -> Decimal:
    return Decimal(pounds) * LB_KG


def f_to_c(fahrenheit: Decimal) -> Decimal:
    return (Decimal(fahrenheit) - 32) * 5 / 9


def c_to_f(celsius: Decimal) -> Decimal:
    return Decimal(celsius) * 9 / 5 + 32


def mmol_to_mgdl(mmol_per_l: Decimal) -> Decimal:
    return Decimal(mmol_per_l) * GLUCOSE_MGDL_PER_MMOL


def mgdl_to_mmol(mg_per_dl: Decimal) -> Decimal:
    return Decimal(mg_per_dl) / GLUCOSE_MGDL_PER_MMOL


def _identity(x: Decimal) -> Decimal:
    return x


# Each canonical unit and the spellings (UCUM and common) we convert from.
_CONVERSIONS: dict[str, dict[str, Any]] = {
    "kg": {
        "kg": _identity,
        "g": g_to_kg,
        "[lb_av]": lb_to_kg,
        "lb": lb_to_kg,
        "lbs": lb_to_kg,
        "[oz_av]": lambda x: x * OZ_KG,
        "oz": lambda x: x * OZ_KG,
    },
    "Cel": {
        "Cel": _identity,
        "°C": _identity,
        "degC": _identity,
        "C": _identity,
        "[degF]": f_to_c,
        "°F": f_to_c,
        "degF": f_to_c,
        "F": f_to_c,
    },
    "mg/dL": {
        "mg/dL": _identity,
        "mg/dl": _identity,
        "mmol/L": mmol_to_mgdl,
        "mmol/l": mmol_to_mgdl,
    },
    "cm": {
        "cm": _identity,
        "mm": lambda x: x / 10,
        "m": lambda x: x * 100,
        "[in_i]": lambda x: x * IN_CM,
        "in": lambda x: x * IN_CM,
    },
    "mm[Hg]": {
        "mm[Hg]": _identity,
        "mmHg": _identity,
        "mmhg": _identity,
        "kPa": lambda x: x * KPA_MMHG,
    },
    "/min": {
        "/min": _identity,
        "{beats}/min": _identity,
        "bpm": _identity,
        "beats/min": _identity,
        "count/min": _identity,
        "1/min": _identity,
    },
    "min": {"min": _identity, "s": lambda x: x / 60, "h": lambda x: x * 60},
    "/d": {
        "/d": _identity,
        "{steps}/d": _identity,
        "{steps}": _identity,
        "steps": _identity,
        "count": _identity,
        "{count}": _identity,
        "1/d": _identity,
    },
}


def convert(value: Decimal | int | float | str, unit: str | None, *, to: str) -> Decimal:
    """`value` in `unit` (None: already in `to`) as a Decimal in `to`."""
    number = _decimal("value", value)
    if unit is None or unit == to:
        return number
    table = _CONVERSIONS.get(to, {})
    fn = table.get(unit.strip())
    if fn is None:
        raise VitalError(
            "unit",
            unit,
            f"単位「{unit}」は{to}に換算できません（使える単位: {', '.join(table) or to}）",
            f"unit {unit!r} cannot be converted to {to} (accepted: {', '.join(table) or to})",
        )
    return Decimal(fn(number))


def _decimal(field: str, value: Any) -> Decimal:
    if isinstance(value, Decimal):
        number = value
    else:
        try:
            number = Decimal(str(value).strip())
        except (InvalidOperation, ValueError):
            raise VitalError(
                field, value, f"「{value}」は数値ではありません", f"{value!r} is not a number"
            ) from None
    if not number.is_finite():
        raise VitalError(
            field, value, f"「{value}」は数値ではありません", f"{value!r} is not a number"
        )
    return number


# --------------------------------------------------------------------------
# Readings
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """One measurement, before or after `reading_check`.

    `values` holds one number per part of the kind (systolic, diastolic for
    blood pressure), in `unit` (None: the kind's unit). `taken_at` is an
    aware datetime; `until` the end of an aggregate (steps per day), which
    is then written as effectivePeriod.
    """

    kind: str
    values: tuple[Decimal, ...]
    taken_at: datetime
    unit: str | None = None
    until: datetime | None = None

    @property
    def value(self) -> Decimal:
        return self.values[0]


def reading(
    kind_key: str,
    value: Any = None,
    *,
    taken_at: datetime,
    unit: str | None = None,
    systolic: Any = None,
    diastolic: Any = None,
    until: datetime | None = None,
) -> Reading:
    """A checked Reading (convenience): `value`, or `systolic` and
    `diastolic` for blood pressure."""
    values = (systolic, diastolic) if kind_key == BLOOD_PRESSURE else (value,)
    return reading_check(
        Reading(kind=kind_key, values=tuple(values), taken_at=taken_at, unit=unit, until=until)
    )


def _label_pair(item: terminology.Item) -> tuple[str, str]:
    return item.ja, item.en.lower()


def _fmt(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return text


def check_instant(when: datetime, *, field: str = "taken_at") -> datetime:
    """An aware instant, not in the future (beyond CLOCK_SKEW), in UTC."""
    if not isinstance(when, datetime) or timezone.is_naive(when):
        raise VitalError(
            field,
            when,
            "測定日時にタイムゾーンがありません",
            "the time of measurement has no time zone",
        )
    utc = when.astimezone(UTC)
    if utc > timezone.now() + CLOCK_SKEW:
        raise VitalError(
            field,
            when.isoformat(),
            "測定日時が未来になっています",
            "the time of measurement is in the future",
        )
    if utc < EARLIEST:
        raise VitalError(
            field, when.isoformat(), "測定日時が古すぎます", "the time of measurement is too early"
        )
    return utc


def reading_check(value: Reading) -> Reading:
    """The reading in its kind's unit, rounded to the kind's places, with
    the time in UTC; VitalError for a value outside the dictionary's
    plausible range, an unknown unit, a time in the future, or a blood
    pressure whose diastolic is not below its systolic."""
    k = kind(value.kind)
    if len(value.values) != len(k.parts):
        raise VitalError(
            k.key, value.values, "値の数が違います", f"{k.key} takes {len(k.parts)} value(s)"
        )
    numbers: list[Decimal] = []
    for part, raw in zip(k.parts, value.values, strict=True):
        item = part.item
        ja, en = _label_pair(item)
        if raw is None or raw == "":
            raise VitalError(part.item_key, raw, f"{ja}を入力してください", f"enter the {en}")
        number = convert(raw, value.unit, to=part.unit)
        number = number.quantize(Decimal(1).scaleb(-part.places), rounding=ROUND_HALF_UP)
        if (item.min is not None and number < item.min) or (
            item.max is not None and number > item.max
        ):
            raise VitalError(
                part.item_key,
                _fmt(number),
                f"{ja} {_fmt(number)} {part.unit} は範囲外です"
                f"（{_fmt(item.min)}〜{_fmt(item.max)} {part.unit}）",
                f"{en} {_fmt(number)} {part.unit} is outside the plausible range "
                f"{_fmt(item.min)}–{_fmt(item.max)} {part.unit}",
            )
        numbers.append(number)
    if k.key == BLOOD_PRESSURE and numbers[1] >= numbers[0]:
        raise VitalError(
            "bp_diastolic",
            _fmt(numbers[1]),
            f"拡張期血圧（{_fmt(numbers[1])}）が収縮期血圧（{_fmt(numbers[0])}）以上です"
            "（上と下が逆ではありませんか）",
            f"the diastolic pressure ({_fmt(numbers[1])}) is not below the systolic "
            f"({_fmt(numbers[0])}): are they swapped?",
        )
    taken_at = check_instant(value.taken_at)
    until = None
    if value.until is not None:
        until = check_instant(value.until, field="until")
        if until < taken_at:
            raise VitalError(
                "until",
                value.until.isoformat(),
                "終了が開始より前です",
                "the end is before the start",
            )
    return Reading(kind=k.key, values=tuple(numbers), taken_at=taken_at, until=until)


# --------------------------------------------------------------------------
# Building the Observation
# --------------------------------------------------------------------------


def instant_text(when: datetime) -> str:
    """A UTC instant as FHIR dateTime text, exact to the microsecond given
    ("2026-11-26T06:20:00Z", "2026-11-26T06:20:00.250Z")."""
    utc = when.astimezone(UTC)
    if utc.microsecond:
        text = utc.isoformat(timespec="microseconds")
    else:
        text = utc.isoformat(timespec="seconds")
    return text.replace("+00:00", "Z")


def _number(value: Decimal) -> int | float:
    """A JSON number (orjson has no Decimal)."""
    return int(value) if value == value.to_integral_value() else float(value)


def _quantity(value: Decimal, unit: str) -> dict[str, Any]:
    return {"value": _number(value), "unit": unit, "system": UCUM, "code": unit}


@dataclass(frozen=True)
class DeviceRef:
    """The registered device, app or gateway a reading came from."""

    id: str
    display: str = ""

    @property
    def source(self) -> str:
        return f"device:{self.id}"


def manual_source(user: User | int) -> str:
    """The dedupe source of a hand entry: its author."""
    return f"manual:{getattr(user, 'pk', user)}"


def vital_identity(
    *, source: str, patient_id: uuid.UUID, kind_key: str, taken_at: datetime
) -> store.Source:
    """The store source identifier of a reading: the same device (or the
    same author), person, kind and instant are one record."""
    return store.Source(
        VITALS_SOURCE_SYSTEM, f"{source}|{patient_id}|{kind_key}|{instant_text(taken_at)}"
    )


def vital_id(*, source: str, patient_id: uuid.UUID, kind_key: str, taken_at: datetime) -> uuid.UUID:
    """The resource id that identity gives (store.source_resource_id)."""
    return store.source_resource_id(
        "Observation",
        vital_identity(source=source, patient_id=patient_id, kind_key=kind_key, taken_at=taken_at),
    )


@cache
def _fixed(kind_key: str) -> tuple[Any, Any, Any, tuple[Any, ...]]:
    """The parts of a kind's Observation that never change (meta, category,
    code, the components' codes), built once: an import builds a million.
    Shared between resources — the store serializes them at once; callers
    add keys to a resource but never change these nested values."""
    k = KINDS[kind_key]
    meta = {"tag": [{"system": CATEGORY_SYSTEM, "code": str(Category.VITALS.value)}]}
    category = [{"coding": [{"system": OBSERVATION_CATEGORY, "code": k.obs_category}]}]
    code = {"coding": k.codings(), "text": k.item.ja}
    parts = tuple({"coding": [p.item.coding], "text": p.item.ja} for p in k.parts)
    return meta, category, code, parts


def vital_observation(
    *,
    patient_id: uuid.UUID,
    reading: Reading,
    device: DeviceRef | None = None,
) -> dict[str, Any]:
    """The Observation of a checked reading (reading_check): the kind's
    codings, category (FHIR observation-category and our data category tag
    `vitals`), subject, effectiveDateTime (or effectivePeriod for an
    aggregate) in UTC, valueQuantity in UCUM or the BP components, and the
    device when it came from one. Valid R4 by construction (tests validate
    it with fhir.resources)."""
    k = KINDS[reading.kind]
    meta, category, code, part_codes = _fixed(k.key)
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "meta": meta,
        "status": "final",
        "category": category,
        "code": code,
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    if reading.until is not None:
        resource["effectivePeriod"] = {
            "start": instant_text(reading.taken_at),
            "end": instant_text(reading.until),
        }
    else:
        resource["effectiveDateTime"] = instant_text(reading.taken_at)
    if k.is_panel:
        resource["component"] = [
            {"code": part_code, "valueQuantity": _quantity(number, part.unit)}
            for part, part_code, number in zip(k.parts, part_codes, reading.values, strict=True)
        ]
    else:
        resource["valueQuantity"] = _quantity(reading.value, k.unit)
    if device is not None:
        ref: dict[str, Any] = {"identifier": {"system": DEVICE_SYSTEM, "value": device.id}}
        if device.display:
            ref["display"] = device.display
        resource["device"] = ref
    return resource


def vital_staged(
    *,
    patient_id: uuid.UUID,
    reading: Reading,
    source: str,
    device: DeviceRef | None = None,
) -> store.Staged:
    """A checked reading as a store-ready item (id from vital_identity),
    for vitals_write_staged. `source` is DeviceRef.source or manual_source."""
    return store.stage(
        vital_observation(patient_id=patient_id, reading=reading, device=device),
        source=vital_identity(
            source=source, patient_id=patient_id, kind_key=reading.kind, taken_at=reading.taken_at
        ),
    )


# --------------------------------------------------------------------------
# Reading back
# --------------------------------------------------------------------------


def _parse_instant(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if timezone.is_aware(when) else None


def reading_of(content: dict[str, Any]) -> Reading | None:
    """The Reading of a stored vitals Observation (ours, or one in the
    kind's unit), or None when it is not one we understand."""
    k = kind_of(content)
    if k is None:
        return None
    period = content.get("effectivePeriod") or {}
    taken_at = _parse_instant(content.get("effectiveDateTime") or period.get("start"))
    if taken_at is None:
        return None
    values: list[Decimal] = []
    if k.is_panel:
        by_token: dict[str, Any] = {}
        for component in content.get("component") or ():
            for coding in (component.get("code") or {}).get("coding") or ():
                by_token[f"{coding.get('system')}|{coding.get('code')}"] = component.get(
                    "valueQuantity"
                )
        for part in k.parts:
            quantity = next((by_token[t] for t in part.item.tokens if t in by_token), None)
            if not quantity or quantity.get("value") is None:
                return None
            values.append(Decimal(str(quantity["value"])))
    else:
        quantity = content.get("valueQuantity") or {}
        if quantity.get("value") is None:
            return None
        values.append(Decimal(str(quantity["value"])))
        if (quantity.get("code") or quantity.get("unit")) not in (None, k.unit):
            try:
                values[0] = convert(
                    values[0], quantity.get("code") or quantity.get("unit"), to=k.unit
                )
            except VitalError:
                return None
    return Reading(
        kind=k.key,
        values=tuple(values),
        taken_at=taken_at.astimezone(UTC),
        until=_parse_instant(period.get("end")),
    )


def author_id(row: Resource) -> int | None:
    """The user who hand-entered this version (None for a device or an
    import, or a record of a clinic or municipality)."""
    provenance = row.provenance
    if provenance is None or provenance.origin != Provenance.Origin.SELF:
        return None
    return provenance.agent_user_id


def vitals_queryset(
    *, user: Any, patient: Patient, kinds: Iterable[str] | None = None, purpose: str | None = None
) -> Any:
    """The person's current vitals Observations this user may read (through
    sharing.access.visible_records; the caller authorized and audited the
    reveal with access_patient), newest first, with their provenance.
    `kinds` limits them to those kinds (by the kinds' codes)."""
    from sharing.access import Purpose, visible_records

    rows = Resource.objects.filter(
        visible_records(user, purpose or Purpose.PERSONAL),
        resource_type="Observation",
        category=Category.VITALS,
        compartments__contains=[patient.pk],
        deleted=False,
    )
    if kinds is not None:
        rows = rows.filter(tokens__overlap=[t for key in kinds for t in kind(key).tokens()])
    return rows.select_related("provenance").order_by("-date_start", "-last_updated")


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


def vitals_provenance(
    *,
    user: User | None,
    device: DeviceRef | None = None,
    source: str = "",
    job_id: int | None = None,
    activity: str = Provenance.Activity.WRITE,
) -> Provenance:
    """Origin DEVICE for a device or import, SELF for hand entry."""
    return provenance_create(
        origin=Provenance.Origin.DEVICE if device is not None else Provenance.Origin.SELF,
        user=user,
        source=source or (device.source if device is not None else "vitals:entry"),
        job_id=job_id,
        activity=activity,
    )


def authorize(user: User, patient: Patient | uuid.UUID) -> None:
    """PermissionDenied unless the user may write this person's vitals
    (herself, or a guardian of the child: sharing.access.may_write)."""
    from sharing.access import Purpose, may_write

    if not may_write(user, patient, category=Category.VITALS, purpose=Purpose.PERSONAL):
        raise PermissionDenied


def _audit(user: User, patient_id: uuid.UUID, action: str, **detail: Any) -> None:
    own = Patient.objects.filter(pk=patient_id, account_id=user.pk).exists()
    audit_write_many(
        [
            AuditEntry(
                action=action,
                outcome="success",
                actor_id=user.pk,
                actor_role="patient" if own else "guardian",
                patient_id=patient_id,
                categories=[Category.VITALS],
                purpose="personal",
                detail=detail,
            )
        ]
    )


def _patient_and_kind(item: store.Staged) -> tuple[uuid.UUID, str] | None:
    content = item.content
    ref = (content.get("subject") or {}).get("reference") or ""
    k = kind_of(content)
    if not ref.startswith("Patient/") or k is None:
        return None
    return uuid.UUID(ref[len("Patient/") :]), k.key


def vitals_write_staged(
    items: Sequence[store.Staged],
    *,
    provenance: Provenance,
    copy: bool = True,
    sender: Any = None,
    notify: bool = True,
) -> store.WriteResult:
    """Write a chunk of vital_staged items in the caller's transaction (a
    job calls this once per chunk and commits); rows already stored with
    the same content are skipped. Sends vitals_written on commit for the
    patients and kinds actually created or changed — unless notify=False:
    a long import sends it once at its end instead (signals.send_on_commit),
    so the alert rules run once rather than after every chunk. The caller
    authorized the writer (authorize) and audits the import."""
    result = store.write_staged(items, provenance=provenance, copy=copy)
    written = set(result.created) | set(result.updated)
    if written and notify:
        changes: dict[uuid.UUID, set[str]] = {}
        for item in items:
            if item.id in written:
                pk = _patient_and_kind(item)
                if pk is not None:
                    changes.setdefault(pk[0], set()).add(pk[1])
        signals.send_on_commit(sender or __name__, changes)
    return result


@dataclass(frozen=True)
class Written:
    id: uuid.UUID
    kind: str
    created: bool
    changed: bool


@transaction.atomic
def vitals_write(
    *,
    user: User,
    patient: Patient,
    readings: Iterable[Reading],
    device: DeviceRef | None = None,
    provenance_source: str = "",
) -> list[Written]:
    """Write readings for a person, as `user` (hand entry) or from `device`
    (registered by `user`): authorized by sharing.access.may_write (purpose
    personal), checked (VitalError), one record per (source, person, kind,
    instant) — entering the same one again changes that record, never adds
    a second. Audited; vitals_written on commit."""
    authorize(user, patient)
    checked = [reading_check(r) for r in readings]
    if not checked:
        return []
    source = device.source if device is not None else manual_source(user)
    items = [
        vital_staged(patient_id=patient.pk, reading=r, source=source, device=device)
        for r in checked
    ]
    provenance = vitals_provenance(user=user, device=device, source=provenance_source)
    result = vitals_write_staged(items, provenance=provenance, copy=False, sender=vitals_write)
    created = set(result.created)
    changed = created | set(result.updated)
    _audit(
        user,
        patient.pk,
        "vitals.write",
        records=[str(i.id) for i in items],
        kinds=sorted({r.kind for r in checked}),
    )
    return [
        Written(id=i.id, kind=r.kind, created=i.id in created, changed=i.id in changed)
        for i, r in zip(items, checked, strict=True)
    ]


def _own_entry(user: User, patient: Patient, record_id: uuid.UUID) -> tuple[Resource, Kind]:
    """The current vitals Observation `record_id` of this person, hand-
    entered by `user`; PermissionDenied otherwise (the views answer 404)."""
    authorize(user, patient)
    row = (
        Resource.objects.select_related("provenance")
        .filter(
            id=record_id,
            resource_type="Observation",
            deleted=False,
            category=Category.VITALS,
            compartments__contains=[patient.pk],
        )
        .first()
    )
    if row is None or author_id(row) != user.pk:
        raise PermissionDenied
    k = kind_of(row.content)
    if k is None:
        raise PermissionDenied
    return row, k


@transaction.atomic
def vital_edit(*, user: User, patient: Patient, record_id: uuid.UUID, reading: Reading) -> int:
    """Correct a hand entry (its author only): a new version of the same
    record, same kind. Returns the current version."""
    row, k = _own_entry(user, patient, record_id)
    if reading.kind != k.key:
        raise VitalError(
            "kind", reading.kind, "記録の種類は変えられません", "the kind of a record cannot change"
        )
    checked = reading_check(reading)
    resource = vital_observation(patient_id=patient.pk, reading=checked)
    item = store.stage(resource, resource_id=row.id)
    provenance = vitals_provenance(user=user, source="vitals:edit")
    result = vitals_write_staged([item], provenance=provenance, copy=False, sender=vital_edit)
    _audit(user, patient.pk, "vitals.edit", record=str(row.id), kind=k.key)
    return result.versions.get(row.id, row.version)


@transaction.atomic
def vital_delete(*, user: User, patient: Patient, record_id: uuid.UUID) -> None:
    """Delete a hand entry (its author only): a tombstone version."""
    row, k = _own_entry(user, patient, record_id)
    provenance = vitals_provenance(
        user=user, source="vitals:delete", activity=Provenance.Activity.DELETE
    )
    version = store.record_delete(
        resource_type="Observation", resource_id=row.id, provenance=provenance
    )
    if version is not None:
        signals.send_on_commit(vital_delete, {patient.pk: {k.key}})
    _audit(user, patient.pk, "vitals.delete", record=str(row.id), kind=k.key)
