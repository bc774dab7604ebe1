"""Helpers shared by the device and import tests: a registered device, a
client holding its token, and real-looking payloads."""

from __future__ import annotations

import copy
from typing import Any

from django.test import Client

from phr.models import Patient, Resource, User
from vitals import devices
from vitals.models import Device

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
VITAL_SIGNS = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs",
            "display": "Vital Signs",
        }
    ]
}


def register(patient: Patient, by: User, name: str = "オムロン HEM-7600T") -> tuple[Device, str]:
    return devices.device_register(patient=patient, by=by, name=name, kind=Device.Kind.DEVICE)


def device_client(secret: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {secret}")


def post_json(
    client: Client, url: str, body: Any, content_type: str = "application/fhir+json"
) -> Any:
    import json

    data = body if isinstance(body, str | bytes) else json.dumps(body, ensure_ascii=False)
    return client.post(url, data=data, content_type=content_type)


def bp_observation(
    patient: Patient | None, systolic: Any = 128, diastolic: Any = 82,
    at: str = "2026-11-20T07:12:00+09:00",
) -> dict[str, Any]:  # fmt: skip
    """A home blood pressure reading as a gateway sends it (FHIR R4 vital
    signs BP profile shape)."""
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "category": [copy.deepcopy(VITAL_SIGNS)],
        "code": {
            "coding": [
                {
                    "system": LOINC,
                    "code": "85354-9",
                    "display": "Blood pressure panel with all children optional",
                }
            ],
            "text": "Blood pressure",
        },
        "effectiveDateTime": at,
        "component": [
            {
                "code": {"coding": [{"system": LOINC, "code": "8480-6",
                                     "display": "Systolic blood pressure"}]},
                "valueQuantity": {"value": systolic, "unit": "mmHg", "system": UCUM,
                                  "code": "mm[Hg]"},
            },
            {
                "code": {"coding": [{"system": LOINC, "code": "8462-4",
                                     "display": "Diastolic blood pressure"}]},
                "valueQuantity": {"value": diastolic, "unit": "mmHg", "system": UCUM,
                                  "code": "mm[Hg]"},
            },
        ],
    }  # fmt: skip
    if patient is not None:
        resource["subject"] = {"reference": f"Patient/{patient.pk}"}
    return resource


def weight_observation(
    patient: Patient | None, value: Any = 58.4, code: str = "kg",
    at: str = "2026-11-20T07:15:00+09:00",
) -> dict[str, Any]:  # fmt: skip
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "category": [copy.deepcopy(VITAL_SIGNS)],
        "code": {"coding": [{"system": LOINC, "code": "29463-7", "display": "Body weight"}]},
        "effectiveDateTime": at,
        "valueQuantity": {"value": value, "unit": code, "system": UCUM, "code": code},
    }
    if patient is not None:
        resource["subject"] = {"reference": f"Patient/{patient.pk}"}
    return resource


def vitals_of(patient: Patient) -> list[Resource]:
    return list(
        Resource.objects.filter(
            resource_type="Observation", compartments__overlap=[patient.pk], category="vitals"
        ).order_by("date_start")
    )
