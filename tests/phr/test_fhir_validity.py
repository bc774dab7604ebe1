"""What the store gives back is valid FHIR, and what is not valid FHIR is
refused at the boundary with the element named (phr.fhir).

Every type the store supports is written through the store and read back
with to_fhir(); the output must pass fhir.resources' R4B models. This is
how "valid by construction inside" is proven: the store adds only id and
meta (versionId, lastUpdated), and these tests show that it adds them
validly.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from phr import fhir, indexing, store, terminology
from phr.models import Provenance, Resource, ResourceHistory

MOTHER = uuid.UUID("11111111-1111-4111-8111-111111111111")
CHILD = uuid.UUID("22222222-2222-4222-8222-222222222222")
PREGNANCY = uuid.UUID("33333333-3333-4333-8333-333333333333")
CLINIC_PATIENT_IDS = "urn:oid:1.2.392.100495.20.3.51.11312345670"
YJ = "http://capstandard.jp/iyaku.info/CodeSystem/YJ-code"
SNOMED = "http://snomed.info/sct"
MEDIS_DISEASE = "http://medis.or.jp/CodeSystem/master-disease-keyNumber"


def cc(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


EXAMPLES: dict[str, dict[str, Any]] = {
    "Patient": {
        "resourceType": "Patient",
        "identifier": [{"system": CLINIC_PATIENT_IDS, "value": "00012345"}],
        "name": [
            {"use": "official", "family": "前橋", "given": ["花子"]},
            {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation",
                            "valueCode": "SYL"}],
             "family": "マエバシ", "given": ["ハナコ"]},
        ],
        "gender": "female",
        "birthDate": "1994-07-12",
    },
    "EpisodeOfCare": {
        "resourceType": "EpisodeOfCare",
        "status": "active",
        "type": [cc(SNOMED, "77386006", "Pregnancy")],
        "patient": {"reference": f"Patient/{MOTHER}"},
        "period": {"start": "2025-02-10"},
    },
    "Encounter": {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "AMB",
            "display": "ambulatory",
        },
        "subject": {"reference": f"Patient/{MOTHER}"},
        "episodeOfCare": [{"reference": f"EpisodeOfCare/{PREGNANCY}"}],
        "period": {"start": "2025-04-01T10:00:00+09:00", "end": "2025-04-01T10:30:00+09:00"},
    },
    "Observation": {
        "resourceType": "Observation",
        "status": "final",
        "category": [cc("http://terminology.hl7.org/CodeSystem/observation-category",
                        "vital-signs", "Vital Signs")],
        "code": cc(terminology.LOINC, "29463-7", "Body weight"),
        "subject": {"reference": f"Patient/{MOTHER}"},
        "effectiveDateTime": "2025-04-01T10:05:00+09:00",
        "valueQuantity": {"value": 58.4, "unit": "kg", "system": terminology.UCUM, "code": "kg"},
    },
    "Immunization": {
        "resourceType": "Immunization",
        "status": "completed",
        "vaccineCode": cc(YJ, "6311400A1010", "肺炎球菌ワクチン"),
        "patient": {"reference": f"Patient/{CHILD}"},
        "occurrenceDateTime": "2025-06-02",
        "lotNumber": "A123",
        "protocolApplied": [{"doseNumberPositiveInt": 1}],
    },
    "MedicationDispense": {
        "resourceType": "MedicationDispense",
        "status": "completed",
        "medicationCodeableConcept": cc(YJ, "1149019F1560", "ロキソプロフェンNa錠60mg"),
        "subject": {"reference": f"Patient/{MOTHER}"},
        "quantity": {"value": 21, "unit": "錠"},
        "daysSupply": {"value": 7, "unit": "日", "system": terminology.UCUM, "code": "d"},
        "whenHandedOver": "2025-04-03",
        "dosageInstruction": [{"text": "1回1錠 1日3回 毎食後"}],
    },
    "MedicationStatement": {
        "resourceType": "MedicationStatement",
        "status": "active",
        "medicationCodeableConcept": cc(YJ, "3222012F1029", "フェロミア錠50mg"),
        "subject": {"reference": f"Patient/{MOTHER}"},
        "effectivePeriod": {"start": "2025-04-03"},
        "dateAsserted": "2025-04-10T09:00:00+09:00",
    },
    "AllergyIntolerance": {
        "resourceType": "AllergyIntolerance",
        "clinicalStatus": cc(
            "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "active", "Active"
        ),
        "category": ["food"],
        "code": cc(SNOMED, "102263004", "Eggs"),
        "patient": {"reference": f"Patient/{CHILD}"},
        "recordedDate": "2025-09-01",
    },
    "Condition": {
        "resourceType": "Condition",
        "clinicalStatus": cc(
            "http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"
        ),
        "code": cc(MEDIS_DISEASE, "20061734", "妊娠糖尿病"),
        "subject": {"reference": f"Patient/{MOTHER}"},
        "onsetDateTime": "2025-06-15",
    },
    "Flag": {
        "resourceType": "Flag",
        "status": "active",
        "code": {"text": "血圧が高めです。医療機関に相談してください。"},
        "subject": {"reference": f"Patient/{MOTHER}"},
        "period": {"start": "2025-04-01T10:05:00+09:00"},
    },
}


@pytest.fixture
def provenance(db: None) -> Provenance:
    return Provenance.objects.create(origin=Provenance.Origin.CLINIC, source="test")


def r4b_valid(resource: dict[str, Any]) -> None:
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def test_it_has_an_example_for_every_type_the_store_supports() -> None:
    assert set(EXAMPLES) == indexing.SUPPORTED_TYPES


@pytest.mark.parametrize("resource_type", sorted(EXAMPLES))
def test_it_gives_back_valid_fhir_for_every_stored_type(
    provenance: Provenance, resource_type: str
) -> None:
    # Valid in, valid out: the store's id and meta make valid FHIR, for the
    # current version and for history.
    example = EXAMPLES[resource_type]
    fhir.validate_resource(example)
    source = store.Source("urn:test", resource_type)
    resource_id, _, _ = store.record_write(example, provenance=provenance, source=source)
    changed = {**example, "meta": {"tag": [{"system": "urn:test:tag", "code": "x"}]}}
    store.record_write(changed, provenance=provenance, source=source)

    current = fhir.to_fhir(Resource.objects.get(id=resource_id))
    first = fhir.to_fhir(ResourceHistory.objects.get(resource_id=resource_id, version=1))

    for out in (current, first):
        r4b_valid(out)
        fhir.validate_resource(out)
        assert list(out)[:3] == ["resourceType", "id", "meta"]
        assert out["id"] == str(resource_id)
    assert current["meta"]["versionId"] == "2"
    assert current["meta"]["tag"] == changed["meta"]["tag"]
    assert first["meta"] == {"versionId": "1", "lastUpdated": first["meta"]["lastUpdated"]}
    assert {k: v for k, v in first.items() if k not in ("id", "meta")} == example


def test_it_renders_last_updated_as_a_utc_instant() -> None:
    assert fhir.fhir_instant(datetime(2025, 4, 1, 1, 2, 3, 456, tzinfo=UTC)) == (
        "2025-04-01T01:02:03.000456Z"
    )


def test_it_names_the_element_of_an_invalid_value() -> None:
    # The boundary answers with the element a client must fix.
    bad = {**EXAMPLES["Observation"], "valueQuantity": {"value": "heavy", "unit": "kg"}}
    with pytest.raises(fhir.FhirValidationError) as caught:
        fhir.validate_resource(bad)
    paths = [path for path, _ in caught.value.issues]
    assert paths == ["Observation.valueQuantity.value"]


def test_it_names_a_missing_required_element() -> None:
    bad = {k: v for k, v in EXAMPLES["Observation"].items() if k != "status"}
    with pytest.raises(fhir.FhirValidationError) as caught:
        fhir.validate_resource(bad)
    assert [path for path, _ in caught.value.issues] == ["Observation.status"]


def test_it_names_an_unknown_element() -> None:
    # fhir.resources reports missing required elements only once the
    # elements present are sound, so a client may fix in two rounds.
    bad = {**EXAMPLES["Observation"], "weight": 58}
    with pytest.raises(fhir.FhirValidationError) as caught:
        fhir.validate_resource(bad)
    assert [path for path, _ in caught.value.issues] == ["Observation.weight"]


def test_it_names_list_positions_in_the_path() -> None:
    bad = {**EXAMPLES["Patient"], "name": [{"family": "前橋"}, {"given": [7]}]}
    with pytest.raises(fhir.FhirValidationError) as caught:
        fhir.validate_resource(bad)
    assert [path for path, _ in caught.value.issues] == ["Patient.name[1].given[0]"]


def test_it_names_the_choice_element_when_two_values_are_given() -> None:
    bad = {**EXAMPLES["Observation"], "valueString": "58.4 kg"}
    with pytest.raises(fhir.FhirValidationError) as caught:
        fhir.validate_resource(bad)
    assert [path for path, _ in caught.value.issues] == ["Observation.value[x]"]


@pytest.mark.parametrize(
    ("resource", "path"),
    [
        ({"resourceType": "Bundle", "type": "collection"}, "Bundle"),
        ({"resourceType": "NoSuchThing"}, "NoSuchThing"),
        ({"status": "final"}, "resourceType"),
        (["not", "an", "object"], ""),
    ],
)
def test_it_refuses_a_type_the_store_does_not_take(resource: object, path: str) -> None:
    # Accepting what the store cannot keep would only move the error later.
    with pytest.raises(fhir.FhirValidationError) as caught:
        fhir.validate_resource(resource)
    assert [issue_path for issue_path, _ in caught.value.issues] == [path]


def test_it_reports_issues_as_a_valid_operation_outcome() -> None:
    bad = {**EXAMPLES["Observation"], "valueQuantity": {"value": "heavy"}, "issued": "today"}
    with pytest.raises(fhir.FhirValidationError) as caught:
        fhir.validate_resource(bad)

    outcome = fhir.operation_outcome(caught.value.issues)

    r4b_valid(outcome)
    assert outcome["resourceType"] == "OperationOutcome"
    by_path = {issue["expression"][0]: issue for issue in outcome["issue"]}
    assert set(by_path) == {"Observation.valueQuantity.value", "Observation.issued"}
    for issue in outcome["issue"]:
        assert (issue["severity"], issue["code"]) == ("error", "invalid")
        assert issue["diagnostics"]
    assert fhir.operation_outcome([("Patient", "gone")], code="not-found")["issue"][0][
        "code"
    ] == "not-found"


def test_it_refuses_a_nul_character_naming_the_element() -> None:
    # jsonb cannot store U+0000: refuse it at the boundary, per element,
    # instead of failing a whole import chunk in the database.
    resource = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "weight\u0000"},
    }
    with pytest.raises(fhir.FhirValidationError) as info:
        fhir.validate_resource(resource)
    assert info.value.issues[0][0] == "Observation.code.text"
