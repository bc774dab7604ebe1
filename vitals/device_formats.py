"""Device payloads → readings: FHIR Observations and Open mHealth data
points, parsed and checked field by field, before anything is written.

Each measurement becomes a vitals.records.Reading — its kind (found by
its coding in the catalog, records.kind_for_coding), its value(s) in the
unit the device sent, and the instant it was taken. vitals.records
converts units, checks the plausible range and builds the Observation;
nothing here knows a code of its own or builds FHIR.

Open mHealth schemas (https://github.com/openmhealth/schemas, schema/omh/):
- omh:blood-pressure:3.x — body.systolic_blood_pressure and
  body.diastolic_blood_pressure ({value, unit: "mmHg"}) and
  body.effective_time_frame, all three required (blood-pressure-3.0.json);
- omh:body-weight:2.x — body.body_weight (a mass-unit-value: unit one of
  fg pg ng ug mg g kg "Metric Ton" gr oz lb Ton) and
  body.effective_time_frame, required (body-weight-2.0.json,
  mass-unit-value-1.0.json);
- omh:heart-rate:2.x — body.heart_rate ({value, unit: "beats/min"}) and
  body.effective_time_frame, required (heart-rate-2.0.json);
- a data point is {header, body}; header.id, header.creation_date_time and
  header.schema_id ({namespace, name, version}) are required
  (header-1.1.json); a time frame is {date_time} or {time_interval}.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from vitals import records

ACCEPTED_STATUSES = frozenset({"final", "amended", "corrected"})

# An instant: a date, a time with seconds optional, and an offset or Z.
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a payload: where (a path or column), the value
    found, and why, in Japanese and English."""

    field: str
    value: str
    reason_ja: str
    reason_en: str

    @property
    def text(self) -> str:
        return f"{self.reason_ja} / {self.reason_en}"


class PayloadError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p.field}: {p.reason_en}" for p in problems[:5]))


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "…"


def parse_instant(value: Any, where: str) -> datetime:
    """An ISO 8601 date-time with a time zone (a measurement's instant)."""
    if not isinstance(value, str) or not _INSTANT.match(value):
        raise PayloadError(
            [
                Problem(
                    where,
                    _shown(value),
                    "日時はタイムゾーン付きの ISO 8601 形式で指定してください"
                    "(例 2026-11-26T07:30:00+09:00)",
                    "must be an ISO 8601 date-time with a time zone "
                    "(e.g. 2026-11-26T07:30:00+09:00)",
                )
            ]
        )
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise PayloadError(
            [Problem(where, _shown(value), "存在しない日時です", "is not a real date and time")]
        ) from None


def parse_number(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PayloadError([Problem(where, _shown(value), "数値ではありません", "is not a number")])
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise PayloadError(
            [Problem(where, _shown(value), "数値ではありません", "is not a number")]
        ) from None
    if not number.is_finite():
        raise PayloadError([Problem(where, _shown(value), "数値ではありません", "is not a number")])
    return number


def _missing(where: str) -> Problem:
    return Problem(where, "", "必須項目がありません", "is required")


# --------------------------------------------------------------------------
# FHIR Observation
# --------------------------------------------------------------------------


def _codings(concept: Any) -> list[tuple[str, str]]:
    if not isinstance(concept, dict):
        return []
    return [
        (str(c.get("system") or ""), str(c.get("code") or ""))
        for c in concept.get("coding") or []
        if isinstance(c, dict)
    ]


def _kind_of(concept: Any) -> records.Kind | None:
    for system, code in _codings(concept):
        found = records.kind_for_coding(system, code)
        if found is not None:
            return found
    return None


def _names_part(concept: Any, part: records.Part) -> bool:
    tokens = set(part.item.tokens)
    return any(f"{system}|{code}" in tokens for system, code in _codings(concept))


def _quantity(quantity: Any, where: str) -> tuple[Decimal, str]:
    if not isinstance(quantity, dict):
        raise PayloadError([_missing(where)])
    if "value" not in quantity:
        raise PayloadError([_missing(f"{where}.value")])
    value = parse_number(quantity["value"], f"{where}.value")
    unit = quantity.get("code") or quantity.get("unit")
    if not isinstance(unit, str) or not unit.strip():
        raise PayloadError([_missing(f"{where}.code")])
    return value, unit.strip()


def _effective(resource: dict[str, Any]) -> datetime:
    if "effectiveDateTime" in resource:
        return parse_instant(resource["effectiveDateTime"], "Observation.effectiveDateTime")
    if "effectiveInstant" in resource:
        return parse_instant(resource["effectiveInstant"], "Observation.effectiveInstant")
    period = resource.get("effectivePeriod")
    if isinstance(period, dict) and ("start" in period or "end" in period):
        key = "start" if "start" in period else "end"
        return parse_instant(period[key], f"Observation.effectivePeriod.{key}")
    raise PayloadError(
        [
            Problem(
                "Observation.effective[x]",
                "",
                "測定日時(effectiveDateTime)が必要です",
                "the time of measurement (effectiveDateTime) is required",
            )
        ]
    )


def reading_from_observation(resource: dict[str, Any]) -> records.Reading:
    """A vital-sign Observation (already valid FHIR) as a Reading; the
    subject is checked by the caller."""
    status = resource.get("status")
    if status not in ACCEPTED_STATUSES:
        raise PayloadError(
            [
                Problem(
                    "Observation.status",
                    _shown(status),
                    "status は final・amended・corrected のいずれかにしてください",
                    "must be final, amended or corrected",
                )
            ]
        )
    kind = _kind_of(resource.get("code"))
    if kind is None:
        shown = ", ".join(f"{sy}|{co}" for sy, co in _codings(resource.get("code")))
        raise PayloadError(
            [
                Problem(
                    "Observation.code",
                    shown or "(no coding)",
                    "受け付けるバイタルのコードではありません",
                    "is not the code of a vital sign this endpoint accepts (LOINC: "
                    "blood pressure 85354-9, weight 29463-7, pulse 8867-4, body "
                    "temperature 8310-5, height 8302-2, head circumference 9843-4, …)",
                )
            ]
        )
    at = _effective(resource)
    if not kind.is_panel:
        value, unit = _quantity(resource.get("valueQuantity"), "Observation.valueQuantity")
        return records.Reading(kind=kind.key, values=(value,), taken_at=at, unit=unit)
    found: dict[int, tuple[Decimal, str]] = {}
    for index, component in enumerate(resource.get("component") or []):
        for number, part in enumerate(kind.parts):
            if isinstance(component, dict) and _names_part(component.get("code"), part):
                found[number] = _quantity(
                    component.get("valueQuantity"),
                    f"Observation.component[{index}].valueQuantity",
                )
    missing = [
        Problem(
            "Observation.component",
            "",
            f"{part.item.ja}({part.item.loinc})の component がありません",
            f"a {part.item.en.lower()} component (LOINC {part.item.loinc}) is required",
        )
        for number, part in enumerate(kind.parts)
        if number not in found
    ]
    if missing:
        raise PayloadError(missing)
    units = {unit for _, unit in found.values()}
    if len(units) != 1:
        raise PayloadError(
            [
                Problem(
                    "Observation.component",
                    ", ".join(sorted(units)),
                    "収縮期と拡張期の単位が異なります",
                    "systolic and diastolic must have the same unit",
                )
            ]
        )
    return records.Reading(
        kind=kind.key,
        values=tuple(found[n][0] for n in range(len(kind.parts))),
        taken_at=at,
        unit=units.pop(),
    )


# --------------------------------------------------------------------------
# Open mHealth
# --------------------------------------------------------------------------

# schema name → (accepted major version, catalog kind)
OMH_SCHEMAS = {
    "blood-pressure": ("3", records.BLOOD_PRESSURE),
    "body-weight": ("2", records.BODY_WEIGHT),
    "heart-rate": ("2", records.HEART_RATE),
}
OMH_MASS_UNITS = frozenset({"g", "kg", "lb", "oz", "mg"})


def _omh_unit_value(body: dict[str, Any], key: str, where: str) -> tuple[Decimal, str]:
    item = body.get(key)
    if not isinstance(item, dict):
        raise PayloadError([_missing(f"{where}.{key}")])
    if "value" not in item:
        raise PayloadError([_missing(f"{where}.{key}.value")])
    value = parse_number(item["value"], f"{where}.{key}.value")
    unit = item.get("unit")
    if not isinstance(unit, str) or not unit:
        raise PayloadError([_missing(f"{where}.{key}.unit")])
    return value, unit


def _omh_time(body: dict[str, Any], where: str) -> datetime:
    frame = body.get("effective_time_frame")
    if not isinstance(frame, dict):
        raise PayloadError([_missing(f"{where}.effective_time_frame")])
    if "date_time" in frame:
        return parse_instant(frame["date_time"], f"{where}.effective_time_frame.date_time")
    interval = frame.get("time_interval")
    if isinstance(interval, dict):
        for key in ("start_date_time", "end_date_time"):
            if key in interval:
                return parse_instant(
                    interval[key], f"{where}.effective_time_frame.time_interval.{key}"
                )
    raise PayloadError(
        [
            Problem(
                f"{where}.effective_time_frame",
                _shown(frame),
                "date_time か time_interval が必要です",
                "needs a date_time or a time_interval",
            )
        ]
    )


def _unit_problem(where: str, unit: str, allowed: str) -> PayloadError:
    return PayloadError(
        [
            Problem(
                where,
                unit,
                f"単位は {allowed} のいずれかにしてください",
                f"the unit must be one of {allowed}",
            )
        ]
    )


def reading_from_omh(point: Any, where: str = "$") -> records.Reading:
    """One Open mHealth data point ({header, body}) as a Reading."""
    if not isinstance(point, dict):
        raise PayloadError(
            [
                Problem(
                    where,
                    _shown(point),
                    "データポイントは JSON オブジェクトです",
                    "a data point must be a JSON object",
                )
            ]
        )
    header = point.get("header")
    body = point.get("body")
    if not isinstance(header, dict):
        raise PayloadError([_missing(f"{where}.header")])
    if not isinstance(body, dict):
        raise PayloadError([_missing(f"{where}.body")])
    schema_id = header.get("schema_id")
    if not isinstance(schema_id, dict):
        raise PayloadError([_missing(f"{where}.header.schema_id")])
    namespace, name, version = (
        schema_id.get("namespace"),
        schema_id.get("name"),
        str(schema_id.get("version", "")),
    )
    accepted = OMH_SCHEMAS.get(name) if namespace == "omh" else None
    if accepted is None or version.split(".")[0] != accepted[0]:
        raise PayloadError(
            [
                Problem(
                    f"{where}.header.schema_id",
                    f"{namespace}:{name}:{version}",
                    "受け付けるスキーマは omh:blood-pressure:3.x、omh:body-weight:2.x、"
                    "omh:heart-rate:2.x です",
                    "accepted schemas are omh:blood-pressure:3.x, omh:body-weight:2.x "
                    "and omh:heart-rate:2.x",
                )
            ]
        )
    kind = accepted[1]
    body_where = f"{where}.body"
    at = _omh_time(body, body_where)
    if kind == records.BLOOD_PRESSURE:
        systolic, s_unit = _omh_unit_value(body, "systolic_blood_pressure", body_where)
        diastolic, d_unit = _omh_unit_value(body, "diastolic_blood_pressure", body_where)
        units = (("systolic_blood_pressure", s_unit), ("diastolic_blood_pressure", d_unit))
        for key, unit in units:
            if unit != "mmHg":
                raise _unit_problem(f"{body_where}.{key}.unit", unit, "mmHg")
        return records.Reading(kind=kind, values=(systolic, diastolic), taken_at=at, unit="mm[Hg]")
    if kind == records.BODY_WEIGHT:
        value, unit = _omh_unit_value(body, "body_weight", body_where)
        if unit not in OMH_MASS_UNITS:
            raise _unit_problem(f"{body_where}.body_weight.unit", unit, "kg, g, lb, oz, mg")
        return records.Reading(kind=kind, values=(value,), taken_at=at, unit=unit)
    value, unit = _omh_unit_value(body, "heart_rate", body_where)
    if unit != "beats/min":
        raise _unit_problem(f"{body_where}.heart_rate.unit", unit, "beats/min")
    return records.Reading(kind=kind, values=(value,), taken_at=at, unit="/min")


def readings_from_omh(payload: Any) -> list[records.Reading]:
    """A data point, or a JSON array of them (all or nothing: every
    problem of every point is reported)."""
    points = payload if isinstance(payload, list) else [payload]
    if not points:
        raise PayloadError(
            [Problem("$", "[]", "データポイントがありません", "there are no data points")]
        )
    readings: list[records.Reading] = []
    problems: list[Problem] = []
    for index, point in enumerate(points):
        where = f"$[{index}]" if isinstance(payload, list) else "$"
        try:
            readings.append(reading_from_omh(point, where))
        except PayloadError as exc:
            problems.extend(exc.problems)
    if problems:
        raise PayloadError(problems)
    return readings
