"""The device FHIR endpoints: an Observation or a transaction/batch Bundle
of vital Observations, for the device's person only, deduplicated by
device + kind + instant, audited, with Provenance DEVICE naming the
device; malformed and truncated payloads get a 400 OperationOutcome
naming the element."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from phr.fhir import validate_resource
from phr.models import AuditEvent, Patient, Provenance, Resource, User
from tests.vitals.device_support import (
    bp_observation,
    device_client,
    post_json,
    register,
    vitals_of,
    weight_observation,
)

pytestmark = pytest.mark.django_db

OBSERVATION_URL = "/vitals/devices/api/Observation"
BUNDLE_URL = "/vitals/devices/api/Bundle"


@pytest.fixture
def device_and_client(mother: User, mother_patient: Patient) -> tuple[object, Client]:
    device, secret = register(mother_patient, mother)
    return device, device_client(secret)


def expressions(response: object) -> list[str]:
    body = response.json()  # type: ignore[attr-defined]
    assert body["resourceType"] == "OperationOutcome"
    return [e for issue in body["issue"] for e in issue.get("expression", [])]


def test_a_blood_pressure_observation_is_written_with_device_provenance(
    device_and_client: tuple[object, Client], mother_patient: Patient
) -> None:
    device, client = device_and_client
    response = post_json(client, OBSERVATION_URL, bp_observation(mother_patient, 142, 91))
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["subject"] == {"reference": f"Patient/{mother_patient.pk}"}
    values = [c["valueQuantity"]["value"] for c in body["component"]]
    assert values == [142, 91]
    assert body["device"]["identifier"]["value"] == str(device.pk)  # type: ignore[attr-defined]
    validate_resource(body)
    [row] = vitals_of(mother_patient)
    provenance = Provenance.objects.get(pk=row.provenance_id)
    assert provenance.origin == Provenance.Origin.DEVICE
    assert provenance.source == f"device:{device.pk}"  # type: ignore[attr-defined]
    audit = AuditEvent.objects.get(action="vitals.device.write", patient=mother_patient)
    assert audit.detail["device"] == str(device.pk)  # type: ignore[attr-defined]
    assert audit.detail["created"] == 1


def test_sending_the_same_reading_again_adds_nothing(
    device_and_client: tuple[object, Client], mother_patient: Patient
) -> None:
    _, client = device_and_client
    first = post_json(client, OBSERVATION_URL, bp_observation(mother_patient))
    # The same instant written in UTC is the same reading.
    again = post_json(
        client, OBSERVATION_URL, bp_observation(mother_patient, at="2026-11-19T22:12:00Z")
    )
    assert first.status_code == 201
    assert again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    [row] = vitals_of(mother_patient)
    assert row.version == 1


def test_a_subject_may_be_left_out_but_never_another_person(
    device_and_client: tuple[object, Client], mother_patient: Patient, child: Patient
) -> None:
    _, client = device_and_client
    assert post_json(client, OBSERVATION_URL, bp_observation(None)).status_code == 201
    response = post_json(
        client, OBSERVATION_URL, bp_observation(child, at="2026-11-21T07:00:00+09:00")
    )
    assert response.status_code == 403
    assert expressions(response) == ["Observation.subject"]
    assert vitals_of(child) == []
    assert len(vitals_of(mother_patient)) == 1


def test_weight_in_pounds_and_grams_is_stored_in_kilograms(
    device_and_client: tuple[object, Client], mother_patient: Patient
) -> None:
    _, client = device_and_client
    pounds = post_json(
        client,
        OBSERVATION_URL,
        weight_observation(None, 130, "[lb_av]", "2026-11-20T07:00:00+09:00"),
    )
    grams = post_json(
        client, OBSERVATION_URL, weight_observation(None, 58400, "g", "2026-11-21T07:00:00+09:00")
    )
    assert pounds.status_code == grams.status_code == 201
    assert pounds.json()["valueQuantity"]["value"] == pytest.approx(58.967)  # 130 × 0.45359237
    assert pounds.json()["valueQuantity"]["code"] == "kg"
    assert grams.json()["valueQuantity"]["value"] == pytest.approx(58.4)


@pytest.mark.parametrize(
    ("payload", "status", "expression"),
    [
        # Cut off in the middle (a dropped connection).
        ('{"resourceType": "Observation", "status": "fin', 400, None),
        ("[]", 400, "resourceType"),
        ({"resourceType": "Patient"}, 400, "resourceType"),
        # Not valid FHIR: a string where a number belongs.
        ({**weight_observation(None), "valueQuantity": {"value": "heavy", "code": "kg"}},
         400, "Observation.valueQuantity.value"),
        ({k: v for k, v in weight_observation(None).items() if k != "effectiveDateTime"},
         400, "Observation.effective[x]"),
        ({**weight_observation(None), "effectiveDateTime": "2026-11-20"}, 400,
         "Observation.effectiveDateTime"),
        ({**weight_observation(None), "status": "entered-in-error"}, 400, "Observation.status"),
        ({**weight_observation(None), "code": {"coding": [{"system": "http://loinc.org",
                                                           "code": "2160-0"}]}},
         400, "Observation.code"),
        ({**weight_observation(None), "valueQuantity": {"value": 58, "code": "stone"}}, 400,
         "Observation (unit)"),
        ({**weight_observation(None), "valueQuantity": {"value": 900, "code": "kg"}}, 400,
         "Observation (body_weight)"),
        ({**bp_observation(None), "component": bp_observation(None)["component"][:1]}, 400,
         "Observation.component"),
        (bp_observation(None, 80, 120), 400, "Observation (bp_diastolic)"),
        ({**weight_observation(None), "effectiveDateTime": "2099-01-01T00:00:00+09:00"}, 400,
         "Observation (taken_at)"),
    ],
)  # fmt: skip
def test_malformed_observations_get_a_400_naming_the_element(
    device_and_client: tuple[object, Client],
    mother_patient: Patient,
    payload: object,
    status: int,
    expression: str | None,
) -> None:
    _, client = device_and_client
    response = post_json(client, OBSERVATION_URL, payload)
    assert response.status_code == status, response.content
    found = expressions(response)
    if expression is not None:
        assert expression in found, found
    assert vitals_of(mother_patient) == []


def test_a_non_json_content_type_is_refused(device_and_client: tuple[object, Client]) -> None:
    _, client = device_and_client
    response = client.post(OBSERVATION_URL, data="x", content_type="text/plain")
    assert response.status_code == 415


def entry(resource: dict[str, object]) -> dict[str, object]:
    return {"resource": resource, "request": {"method": "POST", "url": "Observation"}}


def bundle(kind: str, *resources: dict[str, object]) -> dict[str, object]:
    return {"resourceType": "Bundle", "type": kind, "entry": [entry(r) for r in resources]}


def test_a_transaction_writes_every_reading_or_none(
    device_and_client: tuple[object, Client], mother_patient: Patient
) -> None:
    _, client = device_and_client
    good = [
        bp_observation(mother_patient, 118, 76, "2026-11-18T07:00:00+09:00"),
        bp_observation(mother_patient, 121, 79, "2026-11-18T21:00:00+09:00"),
        weight_observation(mother_patient, 58.2, "kg", "2026-11-18T07:05:00+09:00"),
    ]
    bad = weight_observation(mother_patient, -3, "kg", "2026-11-19T07:05:00+09:00")
    response = post_json(client, BUNDLE_URL, bundle("transaction", *good, bad))
    assert response.status_code == 400
    assert any(e.startswith("Bundle.entry[3].resource") for e in expressions(response))
    assert vitals_of(mother_patient) == []
    response = post_json(client, BUNDLE_URL, bundle("transaction", *good))
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["type"] == "transaction-response"
    assert [e["response"]["status"] for e in body["entry"]] == ["201 Created"] * 3
    assert len(vitals_of(mother_patient)) == 3
    # The same Bundle again: nothing new.
    again = post_json(client, BUNDLE_URL, bundle("transaction", *good)).json()
    assert [e["response"]["status"] for e in again["entry"]] == ["200 OK"] * 3
    assert len(vitals_of(mother_patient)) == 3


def test_a_batch_writes_the_good_entries_and_reports_the_bad(
    device_and_client: tuple[object, Client], mother_patient: Patient, child: Patient
) -> None:
    _, client = device_and_client
    response = post_json(
        client,
        BUNDLE_URL,
        bundle(
            "batch",
            bp_observation(None, 135, 85, "2026-11-18T07:00:00+09:00"),
            bp_observation(child, 120, 80, "2026-11-18T08:00:00+09:00"),
            weight_observation(None, "abc", "kg", "2026-11-18T07:05:00+09:00"),
        ),
    )
    assert response.status_code == 200
    statuses = [e["response"]["status"] for e in response.json()["entry"]]
    assert statuses == ["201 Created", "403 Forbidden", "400 Bad Request"]
    assert len(vitals_of(mother_patient)) == 1
    assert vitals_of(child) == []


@pytest.mark.parametrize(
    "payload",
    [
        {"resourceType": "Bundle", "type": "collection", "entry": []},
        {"resourceType": "Bundle", "type": "transaction"},
        {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                entry(bp_observation(None))
                | {"request": {"method": "DELETE", "url": "Observation/1"}}
            ],
        },
        json.dumps(bundle("transaction", bp_observation(None)))[:-40],
    ],
)
def test_malformed_bundles_are_refused(
    device_and_client: tuple[object, Client], mother_patient: Patient, payload: object
) -> None:
    _, client = device_and_client
    response = post_json(client, BUNDLE_URL, payload)
    if isinstance(payload, dict) and payload.get("type") == "batch":
        assert response.json()["entry"][0]["response"]["status"] == "400 Bad Request"
    else:
        assert response.status_code == 400
        assert response.json()["resourceType"] == "OperationOutcome"
    assert vitals_of(mother_patient) == []


def test_a_device_stops_writing_when_its_registrant_loses_the_child(
    mother: User, child: Patient
) -> None:
    from phr.models import Guardianship

    _, secret = register(child, mother)
    Guardianship.objects.filter(guardian=mother, child=child).update(
        valid_from="2019-01-01", valid_to="2020-01-01"
    )
    response = post_json(device_client(secret), OBSERVATION_URL, weight_observation(None, 7.2))
    assert response.status_code == 403
    assert Resource.objects.filter(compartments__overlap=[child.pk], category="vitals").count() == 0
