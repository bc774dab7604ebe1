"""Open mHealth data points from a device (schemas omh:blood-pressure:3.x,
omh:body-weight:2.x, omh:heart-rate:2.x, github.com/openmhealth/schemas):
written as the same Observations as any other source, units converted
(kg, g, lb), deduplicated, and malformed points refused whole with the
field named."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from hypothesis import given, settings
from hypothesis import strategies as st

from phr.models import Patient, User
from tests.vitals.device_support import device_client, post_json, register, vitals_of
from vitals import device_formats, records

pytestmark = pytest.mark.django_db

URL = "/vitals/devices/api/omh"


def header(name: str, version: str, uid: str) -> dict[str, Any]:
    return {
        "id": uid,
        "creation_date_time": "2026-11-20T07:13:05+09:00",
        "schema_id": {"namespace": "omh", "name": name, "version": version},
        "acquisition_provenance": {
            "source_name": "OMRON connect",
            "source_creation_date_time": "2026-11-20T07:12:00+09:00",
            "modality": "sensed",
        },
    }


BLOOD_PRESSURE = {
    "header": header("blood-pressure", "3.1", "b1a3c0de-6f1e-4d1a-9c55-0a4c6e3b2f10"),
    "body": {
        "systolic_blood_pressure": {"value": 146, "unit": "mmHg"},
        "diastolic_blood_pressure": {"value": 93, "unit": "mmHg"},
        "effective_time_frame": {"date_time": "2026-11-20T07:12:00+09:00"},
        "body_posture": "sitting",
        "measurement_location": "left upper arm",
    },
}
BODY_WEIGHT = {
    "header": header("body-weight", "2.0", "5e0c7f6a-2c1b-4f0e-8a3d-9b2f1e4d6c70"),
    "body": {
        "body_weight": {"value": 128.5, "unit": "lb"},
        "effective_time_frame": {"date_time": "2026-11-20T07:20:00+09:00"},
    },
}
HEART_RATE = {
    "header": header("heart-rate", "2.0", "0f3e9d2c-7b6a-4c5d-8e1f-2a3b4c5d6e7f"),
    "body": {
        "heart_rate": {"value": 78, "unit": "beats/min"},
        "effective_time_frame": {
            "time_interval": {
                "start_date_time": "2026-11-20T07:12:00+09:00",
                "end_date_time": "2026-11-20T07:13:00+09:00",
            }
        },
        "temporal_relationship_to_physical_activity": "at rest",
    },
}


@pytest.fixture
def client(mother: User, mother_patient: Patient) -> Client:
    _, secret = register(mother_patient, mother, name="OMRON connect")
    return device_client(secret)


def test_the_three_schemas_become_vitals_observations(
    client: Client, mother_patient: Patient
) -> None:
    response = post_json(
        client, URL, [BLOOD_PRESSURE, BODY_WEIGHT, HEART_RATE], content_type="application/json"
    )
    assert response.status_code == 201, response.content
    assert [e["response"]["status"] for e in response.json()["entry"]] == ["201 Created"] * 3
    stored = {records.kind_of(r.content).key: r.content for r in vitals_of(mother_patient)}  # type: ignore[union-attr]
    bp = [c["valueQuantity"]["value"] for c in stored["blood_pressure"]["component"]]
    assert bp == [146, 93]
    # 128.5 lb × 0.45359237 = 58.286620… kg, kept to grams.
    assert stored["body_weight"]["valueQuantity"] == {
        "value": 58.287, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"
    }  # fmt: skip
    assert stored["heart_rate"]["valueQuantity"]["value"] == 78
    assert stored["heart_rate"]["effectiveDateTime"] == "2026-11-19T22:12:00Z"


def test_sending_the_points_again_adds_nothing(client: Client, mother_patient: Patient) -> None:
    post_json(client, URL, [BLOOD_PRESSURE, BODY_WEIGHT], content_type="application/json")
    response = post_json(client, URL, BLOOD_PRESSURE, content_type="application/json")
    assert response.status_code == 200
    assert response.json()["entry"][0]["response"]["status"] == "200 OK"
    assert len(vitals_of(mother_patient)) == 2


@pytest.mark.parametrize(
    ("unit", "value", "kg"),
    [("kg", 58.4, Decimal("58.400")), ("g", 3250, Decimal("3.250")), ("lb", 7, Decimal("3.175"))],
)
def test_weight_units_are_converted_to_kilograms(unit: str, value: float, kg: Decimal) -> None:
    point = copy.deepcopy(BODY_WEIGHT)
    point["body"]["body_weight"] = {"value": value, "unit": unit}
    reading = device_formats.reading_from_omh(point)
    assert records.reading_check(reading).value == kg


def broken(point: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """The point with the element at the dotted path set to value (or
    removed when value is ...)."""
    out = copy.deepcopy(point)
    node = out
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[key]
    if value is ...:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return out


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (broken(BLOOD_PRESSURE, "body.diastolic_blood_pressure", ...),
         "$.body.diastolic_blood_pressure"),
        (broken(BLOOD_PRESSURE, "body.systolic_blood_pressure.unit", "kPa"),
         "$.body.systolic_blood_pressure.unit"),
        (broken(BLOOD_PRESSURE, "body.effective_time_frame", {"date_time": "2026-11-20 07:12"}),
         "$.body.effective_time_frame.date_time"),
        (broken(BLOOD_PRESSURE, "header.schema_id.version", "1.0"), "$.header.schema_id"),
        (broken(BODY_WEIGHT, "header.schema_id.name", "body-fat-percentage"), "$.header.schema_id"),
        (broken(BODY_WEIGHT, "body.body_weight.unit", "stone"), "$.body.body_weight.unit"),
        (broken(BODY_WEIGHT, "body.body_weight.value", "heavy"), "$.body.body_weight.value"),
        (broken(BODY_WEIGHT, "body.effective_time_frame", ...), "$.body.effective_time_frame"),
        (broken(HEART_RATE, "body.heart_rate.unit", "Hz"), "$.body.heart_rate.unit"),
        (broken(HEART_RATE, "header", ...), "$.header"),
        (broken(HEART_RATE, "body.heart_rate.value", 400), "$ (heart_rate)"),
        ([BODY_WEIGHT, broken(HEART_RATE, "body", ...)], "$[1].body"),
        ([], "$"),
        ('{"header": {"schema_id": {"namespace": "omh", "na', ""),
    ],
)  # fmt: skip
def test_malformed_points_are_refused_whole_naming_the_field(
    client: Client, mother_patient: Patient, payload: Any, field: str
) -> None:
    response = post_json(client, URL, payload, content_type="application/json")
    assert response.status_code == 400, response.content
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    if field:
        found = [e for issue in outcome["issue"] for e in issue.get("expression", [])]
        assert field in found, found
    assert vitals_of(mother_patient) == []


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(
            ["header", "body", "schema_id", "namespace", "name", "version", "value", "unit",
             "effective_time_frame", "date_time", "body_weight", "heart_rate", "x"]
        ),
        children,
        max_size=4,
    ),
    max_leaves=12,
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(JSON)
def test_garbage_points_are_refused_with_an_outcome_never_an_error(payload: Any) -> None:
    # The parser either reads a point or names what is wrong with it.
    problems: list[device_formats.Problem] | None = None
    try:
        readings = device_formats.readings_from_omh(payload)
    except device_formats.PayloadError as exc:
        problems = exc.problems
    if problems is None:
        assert all(r.kind in records.KINDS for r in readings)
    else:
        assert problems
        assert all(p.field.startswith("$") for p in problems)
