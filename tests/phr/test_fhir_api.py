"""The FHIR R4 API at /fhir/, persona by persona: what each may read,
search, page through and write, and what the audit log keeps of it."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import orjson
import pytest
from django.test.utils import override_settings
from django.utils import timezone
from fhir.resources.R4B import get_fhir_model_class
from rest_framework.test import APIClient
from rest_framework.throttling import UserRateThrottle

from phr import store
from phr.authentication import api_token_create, api_token_revoke
from phr.models import AuditEvent, Guardianship, Patient, Provenance, Resource, User
from phr.services import provenance_create
from phr.terminology import CATEGORY_SYSTEM, LOCAL
from tests import factories as f

pytestmark = pytest.mark.django_db

FHIR_JSON = "application/fhir+json"


def api(user: User | None = None) -> APIClient:
    """A client logged in with a session (a fresh user object per request,
    as in production)."""
    client = APIClient()
    if user is not None:
        client.force_login(user)
    return client


def ids(bundle: dict[str, Any]) -> set[str]:
    return {entry["resource"]["id"] for entry in bundle.get("entry", ())}


def validate(resource: dict[str, Any]) -> None:
    """Raise unless `resource` is valid FHIR R4B."""
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def outcome_text(response: Any) -> str:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    return " ".join(issue.get("diagnostics", "") for issue in body["issue"])


def post(client: APIClient, resource: dict[str, Any], **extra: Any) -> Any:
    return client.post(
        f"/fhir/{resource['resourceType']}",
        data=json.dumps(resource),
        content_type=extra.pop("content_type", FHIR_JSON),
        **extra,
    )


def put(client: APIClient, resource: dict[str, Any], **extra: Any) -> Any:
    return client.put(
        f"/fhir/{resource['resourceType']}/{resource['id']}",
        data=json.dumps(resource),
        content_type=extra.pop("content_type", FHIR_JSON),
        **extra,
    )


def hiv_result(patient: Patient) -> uuid.UUID:
    """A clinic-only item (dictionary sensitivity): never shown to municipalities."""
    return f.write_observation(patient, system=LOCAL, code="hiv-antibody", value=0, unit="1")


def samples(patient: Patient) -> dict[str, dict[str, Any]]:
    """One valid resource of every writable type, about `patient`."""
    ref = {"reference": f"Patient/{patient.pk}"}
    medicine = {"coding": [{"system": "urn:oid:1.2.392.100495.20.1.73", "code": "620000000"}]}
    return {
        "Observation": f.observation(patient),
        "Encounter": {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "code": "AMB",
            },
            "subject": ref,
            "period": {"start": "2026-01-15T09:00:00+09:00", "end": "2026-01-15T10:00:00+09:00"},
        },
        "EpisodeOfCare": {
            "resourceType": "EpisodeOfCare",
            "status": "active",
            "patient": ref,
            "period": {"start": "2025-06-01"},
        },
        "Immunization": {
            "resourceType": "Immunization",
            "status": "completed",
            "vaccineCode": {
                "coding": [{"system": "urn:oid:1.2.392.200119.4.403.1", "code": "HIB"}]
            },
            "patient": ref,
            "occurrenceDateTime": "2026-01-10",
        },
        "MedicationDispense": {
            "resourceType": "MedicationDispense",
            "status": "completed",
            "medicationCodeableConcept": medicine,
            "subject": ref,
            "whenHandedOver": "2026-01-12",
        },
        "MedicationStatement": {
            "resourceType": "MedicationStatement",
            "status": "active",
            "medicationCodeableConcept": medicine,
            "subject": ref,
            "effectiveDateTime": "2026-01-12",
        },
        "AllergyIntolerance": {
            "resourceType": "AllergyIntolerance",
            "patient": ref,
            "category": ["food"],
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "102263004"}]},
            "recordedDate": "2026-01-01",
        },
        "Condition": {
            "resourceType": "Condition",
            "subject": ref,
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
            "onsetDateTime": "2026-01-01",
        },
        "Flag": {
            "resourceType": "Flag",
            "status": "active",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/flag-category",
                            "code": "clinical",
                        }
                    ]
                }
            ],
            "code": {"text": "Weight below the 3rd percentile"},
            "subject": ref,
            "period": {"start": "2026-01-15"},
        },
    }


# --------------------------------------------------------------------------
# metadata
# --------------------------------------------------------------------------


def test_it_serves_a_capability_statement_that_validates_as_fhir() -> None:
    # Public, as FHIR clients discover a server before they log in.
    response = api().get("/fhir/metadata")
    assert response.status_code == 200
    assert response["Content-Type"].startswith(FHIR_JSON)
    statement = response.json()
    validate(statement)
    assert statement["fhirVersion"] == "4.0.1"
    assert "json" in statement["format"]
    rest = statement["rest"][0]
    assert rest["mode"] == "server"
    by_type = {r["type"]: r for r in rest["resource"]}
    assert set(by_type) == {
        "Patient",
        "Observation",
        "Encounter",
        "EpisodeOfCare",
        "Immunization",
        "MedicationDispense",
        "MedicationStatement",
        "AllergyIntolerance",
        "Condition",
        "Flag",
        "Consent",
    }
    assert {i["code"] for i in by_type["Consent"]["interaction"]} == {"read", "search-type"}

    def interactions(t: str) -> set[str]:
        return {i["code"] for i in by_type[t]["interaction"]}

    def params(t: str) -> set[str]:
        return {p["name"] for p in by_type[t]["searchParam"]}

    assert interactions("Observation") == {
        "read",
        "vread",
        "history-instance",
        "search-type",
        "create",
        "update",
        "delete",
    }
    assert interactions("Patient") == {"read", "vread", "history-instance", "search-type", "update"}
    assert {"patient", "code", "date", "_lastUpdated", "category", "_id", "_count"} <= params(
        "Observation"
    )
    assert {"identifier", "_id", "birthdate"} <= params("Patient")
    # category only where FHIR R4 has the element
    for t in ("Observation", "Condition", "AllergyIntolerance", "MedicationStatement", "Flag"):
        assert "category" in params(t)
    for t in ("Encounter", "Immunization", "Patient"):
        assert "category" not in params(t)


# --------------------------------------------------------------------------
# read, vread, history: who sees what
# --------------------------------------------------------------------------


def test_it_reads_the_mothers_own_record_and_her_childs(
    mother: User, mother_patient: Patient, child: Patient
) -> None:
    own = f.write_observation(mother_patient)
    childs = f.write_observation(child)
    client = api(mother)
    for rid in (own, childs):
        response = client.get(f"/fhir/Observation/{rid}")
        assert response.status_code == 200
        assert response["Content-Type"].startswith(FHIR_JSON)
        assert response["ETag"] == 'W/"1"'
        body = response.json()
        assert body["id"] == str(rid)
        assert body["meta"]["versionId"] == "1"
        validate(body)
    assert client.get(f"/fhir/Patient/{child.pk}").status_code == 200


def test_it_accepts_application_json_as_well(mother: User, mother_patient: Patient) -> None:
    rid = f.write_observation(mother_patient)
    response = api(mother).get(f"/fhir/Observation/{rid}", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")


def test_it_lets_the_father_read_the_child_but_not_the_mother(
    father: User, mother_patient: Patient, child: Patient
) -> None:
    own = f.write_observation(mother_patient)
    childs = f.write_observation(child)
    client = api(father)
    assert client.get(f"/fhir/Observation/{childs}").status_code == 200
    assert client.get(f"/fhir/Patient/{child.pk}").status_code == 200
    assert client.get(f"/fhir/Observation/{own}").status_code == 404
    assert client.get(f"/fhir/Patient/{mother_patient.pk}").status_code == 404


def test_it_answers_a_withheld_record_exactly_like_a_missing_one(
    stranger: User, child: Patient
) -> None:
    # Nobody can probe which ids exist: same status, same words, same headers.
    rid = f.write_observation(child)
    missing = uuid.uuid4()
    client = api(stranger)
    withheld_response = client.get(f"/fhir/Observation/{rid}")
    missing_response = client.get(f"/fhir/Observation/{missing}")
    assert withheld_response.status_code == missing_response.status_code == 404
    assert withheld_response.json() == json.loads(
        json.dumps(missing_response.json()).replace(str(missing), str(rid))
    )
    assert "ETag" not in withheld_response
    assert "ETag" not in missing_response


@pytest.mark.parametrize("suffix", ["", "/_history", "/_history/1"])
def test_it_answers_a_stranger_404_on_read_history_and_vread(
    stranger: User, child: Patient, suffix: str
) -> None:
    rid = f.write_observation(child)
    response = api(stranger).get(f"/fhir/Observation/{rid}{suffix}")
    assert response.status_code == 404
    assert "is not known" in outcome_text(response)
    assert not AuditEvent.objects.filter(actor=stranger).exists()


@pytest.mark.parametrize("suffix", ["", "/_history", "/_history/1"])
def test_it_serves_read_history_and_vread_to_the_owner_and_the_guardian(
    mother: User, father: User, child: Patient, suffix: str
) -> None:
    rid = f.write_observation(child)
    for user in (mother, father):
        response = api(user).get(f"/fhir/Observation/{rid}{suffix}")
        assert response.status_code == 200
        validate(response.json())


def test_it_keeps_every_version_in_history_and_vread(mother: User, child: Patient) -> None:
    resource = f.observation(child, value=8.2)
    provenance = provenance_create(origin=Provenance.Origin.SELF)
    rid, _, _ = store.record_write(resource, provenance=provenance)
    store.record_write(
        {**resource, "valueQuantity": {**resource["valueQuantity"], "value": 8.4}},
        provenance=provenance,
        resource_id=rid,
    )
    client = api(mother)

    history = client.get(f"/fhir/Observation/{rid}/_history").json()
    validate(history)
    assert history["type"] == "history"
    assert history["total"] == 2
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    assert [e["request"]["method"] for e in history["entry"]] == ["PUT", "POST"]

    first = client.get(f"/fhir/Observation/{rid}/_history/1")
    assert first.status_code == 200
    assert first["ETag"] == 'W/"1"'
    assert first.json()["valueQuantity"]["value"] == 8.2
    assert client.get(f"/fhir/Observation/{rid}/_history/3").status_code == 404
    assert client.get(f"/fhir/Observation/{rid}/_history/x").status_code == 404


def test_it_pages_through_history(mother: User, child: Patient) -> None:
    resource = f.observation(child)
    provenance = provenance_create(origin=Provenance.Origin.SELF)
    rid, _, _ = store.record_write(resource, provenance=provenance)
    for value in (1.0, 2.0):
        store.record_write(
            {**resource, "valueQuantity": {**resource["valueQuantity"], "value": value}},
            provenance=provenance,
            resource_id=rid,
        )
    client = api(mother)
    url: str | None = f"/fhir/Observation/{rid}/_history?_count=2"
    seen: list[str] = []
    while url:
        page = client.get(url).json()
        seen += [e["resource"]["meta"]["versionId"] for e in page["entry"]]
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    assert seen == ["3", "2", "1"]


def test_it_answers_410_for_a_deleted_record_to_those_who_could_see_it_and_404_to_others(
    mother: User, stranger: User, child: Patient
) -> None:
    rid = f.write_observation(child)
    store.record_delete(
        resource_type="Observation",
        resource_id=rid,
        provenance=provenance_create(origin=Provenance.Origin.SELF),
    )
    gone = api(mother).get(f"/fhir/Observation/{rid}")
    assert gone.status_code == 410
    assert gone.json()["issue"][0]["code"] == "deleted"
    assert api(mother).get(f"/fhir/Observation/{rid}/_history/2").status_code == 410
    # The history still tells the story (FHIR keeps deleted resources' versions).
    history = api(mother).get(f"/fhir/Observation/{rid}/_history").json()
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "POST"]
    assert "resource" not in history["entry"][0]
    for suffix in ("", "/_history", "/_history/1"):
        assert api(stranger).get(f"/fhir/Observation/{rid}{suffix}").status_code == 404
    # Deleted records leave searches.
    search = api(mother).get(f"/fhir/Observation?patient={child.pk}").json()
    assert search["total"] == 0


def test_it_shows_municipal_staff_residents_but_not_clinic_only_items(
    municipal_officer: User, child: Patient
) -> None:
    weight = f.write_observation(child)
    hiv = hiv_result(child)
    client = api(municipal_officer)
    assert client.get(f"/fhir/Observation/{weight}").status_code == 200
    assert client.get(f"/fhir/Observation/{hiv}").status_code == 404
    search = client.get(f"/fhir/Observation?patient={child.pk}").json()
    assert ids(search) == {str(weight)}
    assert search["total"] == 1  # the withheld item is not even counted


def test_it_hides_residents_from_another_municipality(
    other_municipal_officer: User, child: Patient
) -> None:
    rid = f.write_observation(child)
    client = api(other_municipal_officer)
    assert client.get(f"/fhir/Observation/{rid}").status_code == 404
    assert client.get(f"/fhir/Patient/{child.pk}").status_code == 404
    assert client.get("/fhir/Observation").json()["total"] == 0


def test_it_shows_staff_without_mfa_nothing(staff_without_mfa: User, child: Patient) -> None:
    rid = f.write_observation(child)
    client = api(staff_without_mfa)
    assert client.get(f"/fhir/Observation/{rid}").status_code == 404
    assert client.get("/fhir/Observation").json()["total"] == 0
    assert client.get("/fhir/Patient").json()["total"] == 0


def test_it_answers_an_unsupported_type_with_a_404_outcome(mother: User) -> None:
    for url in ("/fhir/Practitioner", f"/fhir/Practitioner/{uuid.uuid4()}", "/fhir/a/b/c/d/e"):
        response = api(mother).get(url)
        assert response.status_code == 404, url
        outcome_text(response)


# --------------------------------------------------------------------------
# Authentication and errors as OperationOutcome
# --------------------------------------------------------------------------


def test_it_requires_authentication(child: Patient) -> None:
    rid = f.write_observation(child)
    for url in (f"/fhir/Observation/{rid}", "/fhir/Observation", "/fhir/nothing/here"):
        response = api().get(url)
        assert response.status_code == 401, url
        assert response.json()["issue"][0]["code"] == "login"
        assert response["WWW-Authenticate"] == "Bearer"


def test_it_accepts_a_bearer_token_and_refuses_it_once_revoked(
    mother: User, mother_patient: Patient
) -> None:
    rid = f.write_observation(mother_patient)
    token, secret = api_token_create(user=mother, name="home app")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.get(f"/fhir/Observation/{rid}").status_code == 200
    assert client.get("/fhir/Observation").json()["total"] == 1

    api_token_revoke(token=token)
    response = client.get(f"/fhir/Observation/{rid}")
    assert response.status_code == 401
    assert response.json()["resourceType"] == "OperationOutcome"


def test_it_answers_an_unexpected_error_with_an_outcome_that_reveals_nothing(
    mother: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr("phr.fhir_search.search_page", explode)
    response = api(mother).get("/fhir/Observation")
    assert response.status_code == 500
    assert response.json()["issue"][0]["code"] == "exception"
    assert "secret" not in response.content.decode()


def test_it_answers_throttling_with_an_outcome(
    mother: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(UserRateThrottle, "allow_request", lambda self, request, view: False)
    monkeypatch.setattr(UserRateThrottle, "wait", lambda self: 12.5)
    response = api(mother).get("/fhir/Observation")
    assert response.status_code == 429
    assert response.json()["issue"][0]["code"] == "throttled"
    assert response["Retry-After"] == "13"


def test_it_answers_405_for_a_method_the_route_does_not_have(mother: User) -> None:
    response = api(mother).patch(
        f"/fhir/Observation/{uuid.uuid4()}", data="{}", content_type=FHIR_JSON
    )
    assert response.status_code == 405
    outcome_text(response)


def test_it_refuses_formats_other_than_json(mother: User) -> None:
    response = api(mother).get("/fhir/Observation?_format=xml")
    assert response.status_code == 406
    outcome_text(response)


# --------------------------------------------------------------------------
# search
# --------------------------------------------------------------------------


def test_it_searches_by_patient_and_code(
    mother: User, mother_patient: Patient, child: Patient
) -> None:
    weight = f.write_observation(child, code="29463-7")
    height = f.write_observation(child, code="8302-2", value=70.1, unit="cm")
    own = f.write_observation(mother_patient, code="29463-7", value=55)
    client = api(mother)

    every = client.get("/fhir/Observation").json()
    validate(every)
    assert every["type"] == "searchset"
    assert ids(every) == {str(weight), str(height), str(own)}
    assert all(e["search"]["mode"] == "match" for e in every["entry"])
    assert all(
        e["fullUrl"].endswith(f"/fhir/Observation/{e['resource']['id']}") for e in every["entry"]
    )

    def found(query: str) -> set[str]:
        response = client.get(f"/fhir/Observation?{query}")
        assert response.status_code == 200, response.json()
        return ids(response.json())

    assert found(f"patient={child.pk}") == {str(weight), str(height)}
    assert found(f"patient=Patient/{child.pk}") == {str(weight), str(height)}
    assert found(f"patient={child.pk},{mother_patient.pk}") == {str(weight), str(height), str(own)}
    assert found("code=http://loinc.org|29463-7") == {str(weight), str(own)}
    assert found("code=29463-7") == {str(weight), str(own)}
    assert found("code=29463-7,8302-2") == {str(weight), str(height), str(own)}
    assert found("code=http://example.org|29463-7") == set()
    assert found(f"code=29463-7&patient={child.pk}") == {str(weight)}
    assert found(f"_id={weight},{own}") == {str(weight), str(own)}
    assert found("_id=not-a-uuid") == set()
    assert found(f"patient={uuid.uuid4()}") == set()


def test_it_searches_by_fhir_category_and_by_data_category(
    mother: User, mother_patient: Patient
) -> None:
    vital = f.observation(
        mother_patient, code="8480-6", value=120, unit="mm[Hg]", category="vitals"
    )
    vital["category"] = [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "vital-signs",
                }
            ]
        }
    ]
    provenance = provenance_create(origin=Provenance.Origin.SELF)
    vital_id, _, _ = store.record_write(vital, provenance=provenance)
    other = f.write_observation(mother_patient, category="prenatal_checkups")
    client = api(mother)

    def found(query: str) -> set[str]:
        response = client.get(f"/fhir/Observation?{query}")
        assert response.status_code == 200, response.json()
        return ids(response.json())

    system = "http://terminology.hl7.org/CodeSystem/observation-category"
    assert found(f"category={system}|vital-signs") == {str(vital_id)}
    assert found("category=vital-signs") == {str(vital_id)}
    assert found(f"category={CATEGORY_SYSTEM}|vitals") == {str(vital_id)}
    assert found(f"category={CATEGORY_SYSTEM}|prenatal_checkups") == {str(other)}
    assert found("category=prenatal_checkups") == {str(other)}
    # Encounter has no category in R4: strict search says so.
    assert client.get("/fhir/Encounter?category=x").status_code == 400


def test_it_finds_a_patient_by_identifier(mother: User, child: Patient) -> None:
    resource = f.services.patient_resource(
        family="前橋", given="はる", identifiers=[{"system": "urn:test:mch", "value": "A-1"}]
    )
    store.record_write(
        resource,
        provenance=provenance_create(origin=Provenance.Origin.SYSTEM),
        resource_id=child.pk,
    )
    client = api(mother)
    assert ids(client.get("/fhir/Patient?identifier=urn:test:mch|A-1").json()) == {str(child.pk)}
    assert ids(client.get("/fhir/Patient?identifier=A-1").json()) == {str(child.pk)}
    assert ids(client.get("/fhir/Patient?identifier=urn:other|A-1").json()) == set()
    assert client.get("/fhir/Patient?patient=x").status_code == 400


def test_it_gives_a_stranger_an_empty_searchset_like_a_patient_without_records(
    stranger: User, mother: User, child: Patient
) -> None:
    f.write_observation(child)
    empty_child = f.make_patient()
    f.services.guardianship_add(
        guardian=mother, child=empty_child, relationship=Guardianship.Relationship.MOTHER
    )
    strangers = api(stranger).get(f"/fhir/Observation?patient={child.pk}").json()
    nothing_there = api(mother).get(f"/fhir/Observation?patient={empty_child.pk}").json()
    assert strangers["total"] == nothing_there["total"] == 0
    assert "entry" not in strangers
    assert "entry" not in nothing_there
    assert [link["relation"] for link in strangers["link"]] == ["self"]
    validate(strangers)
    assert not AuditEvent.objects.filter(actor=stranger).exists()


def test_it_shows_the_father_only_the_childs_records_in_searches(
    father: User, mother_patient: Patient, child: Patient
) -> None:
    childs = f.write_observation(child)
    f.write_observation(mother_patient)
    client = api(father)
    assert ids(client.get("/fhir/Observation").json()) == {str(childs)}
    assert client.get(f"/fhir/Observation?patient={mother_patient.pk}").json()["total"] == 0
    assert ids(client.get("/fhir/Patient").json()) == {str(child.pk)}


@pytest.mark.parametrize(
    "query",
    [
        "unknown=1",
        "code:text=weight",
        "date=ap2026-01-01",
        "date=2026-13",
        "date=yesterday",
        "_count=many",
        "_count=-1",
        "_sort=date",
        "_cursor=forged",
        "patient=Observation/123",
        "code=http://loinc.org|",
        "code=|29463-7",
    ],
)
def test_it_rejects_search_parameters_it_does_not_understand(mother: User, query: str) -> None:
    # Strict: a client that believes it filtered must not silently get everything.
    response = api(mother).get(f"/fhir/Observation?{query}")
    assert response.status_code == 400, response.json()
    outcome_text(response)


def test_it_caps_the_page_size_and_serves_count_only_pages(
    mother: User, mother_patient: Patient
) -> None:
    for n in range(3):
        f.write_observation(mother_patient, value=n)
    client = api(mother)
    with override_settings(FHIR_MAX_PAGE_SIZE=2):
        capped = client.get("/fhir/Observation?_count=100").json()
    assert len(capped["entry"]) == 2
    assert capped["total"] == 3
    counted = client.get("/fhir/Observation?_count=0").json()
    assert counted["total"] == 3
    assert "entry" not in counted
    with override_settings(FHIR_PAGE_SIZE=1):
        default = client.get("/fhir/Observation").json()
    assert len(default["entry"]) == 1


def next_url(bundle: dict[str, Any]) -> str | None:
    return next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)


def test_it_pages_with_next_links_through_every_record_once(mother: User, child: Patient) -> None:
    made = {str(f.write_observation(child, value=n)) for n in range(3)}
    client = api(mother)
    url: str | None = f"/fhir/Observation?patient={child.pk}&_count=1"
    seen: list[str] = []
    pages = 0
    while url:
        page = client.get(url).json()
        validate(page)
        assert page["total"] == 3
        assert len(page["entry"]) == 1
        seen += [e["resource"]["id"] for e in page["entry"]]
        url = next_url(page)
        pages += 1
    assert pages == 3
    assert sorted(seen) == sorted(made)


def test_it_rechecks_access_on_every_page(father: User, child: Patient) -> None:
    # A next link is not a ticket: when the guardianship ends between pages,
    # the following page shows (and counts) nothing.
    for n in range(3):
        f.write_observation(child, value=n)
    client = api(father)
    first = client.get(f"/fhir/Observation?patient={child.pk}&_count=1").json()
    assert first["total"] == 3
    url = next_url(first)
    assert url is not None

    today = timezone.localdate()
    Guardianship.objects.filter(guardian=father, child=child).update(
        valid_from=today - timedelta(days=365), valid_to=today - timedelta(days=1)
    )
    second = client.get(url).json()
    assert second["total"] == 0
    assert "entry" not in second
    assert next_url(second) is None


def test_it_refuses_a_next_link_replayed_by_someone_else_or_with_other_parameters(
    mother: User, father: User, child: Patient
) -> None:
    for n in range(2):
        f.write_observation(child, value=n)
    first = api(mother).get(f"/fhir/Observation?patient={child.pk}&_count=1").json()
    url = next_url(first)
    assert url is not None
    assert api(father).get(url).status_code == 400
    assert api(mother).get(url.replace("patient=", "code=x&patient=")).status_code == 400
    assert api(mother).get(url).status_code == 200


# --------------------------------------------------------------------------
# date search
# --------------------------------------------------------------------------


@pytest.fixture
def dated(mother: User, child: Patient) -> dict[str, str]:
    """Observations of the child at dates of every precision."""
    made = {
        "day": f.write_observation(child, when="2026-01-15"),
        "month": f.write_observation(child, when="2026-01"),
        # 00:30 in Japan on the 15th is still the 14th in UTC.
        "instant": f.write_observation(child, when="2026-01-15T00:30:00+09:00"),
        "new_year_eve": f.write_observation(child, when="2025-12-31"),
    }
    ongoing = f.observation(child)
    del ongoing["effectiveDateTime"]
    ongoing["effectivePeriod"] = {"start": "2026-01-10T09:00:00+09:00"}
    made["ongoing"], _, _ = store.record_write(
        ongoing, provenance=provenance_create(origin=Provenance.Origin.SELF)
    )
    # Ends at the first second of the 16th: an instant end is inclusive, so
    # this period is not within the 15th.
    late = f.observation(child)
    del late["effectiveDateTime"]
    late["effectivePeriod"] = {
        "start": "2026-01-15T22:00:00+09:00",
        "end": "2026-01-16T00:00:00+09:00",
    }
    made["to_midnight"], _, _ = store.record_write(
        late, provenance=provenance_create(origin=Provenance.Origin.SELF)
    )
    return {name: str(rid) for name, rid in made.items()}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # eq: the parameter's range contains the resource's range
        ("date=2026-01-15", {"day", "instant"}),
        ("date=eq2026-01-15", {"day", "instant"}),
        ("date=2026-01", {"day", "month", "instant", "to_midnight"}),
        ("date=2026", {"day", "month", "instant", "to_midnight"}),
        ("date=2025", {"new_year_eve"}),
        # dates are Japanese calendar days: nothing happened on the 14th
        ("date=2026-01-14", set()),
        ("date=2026-01-14T15:30:00Z", {"instant"}),
        ("date=2026-01-15T00:30%2B09:00", {"instant"}),
        ("date=2026-01-15T00:30:00+09:00", {"instant"}),  # an unencoded "+" arrives as a space
        # lt / gt: the resource's range reaches below / above the parameter's
        ("date=lt2026-01-15", {"month", "new_year_eve", "ongoing"}),
        ("date=gt2026-01-15", {"month", "ongoing", "to_midnight"}),
        ("date=ge2026-01-15", {"day", "instant", "month", "ongoing", "to_midnight"}),
        ("date=le2026-01-15", {"day", "instant", "month", "new_year_eve", "ongoing"}),
        ("date=2026-01-16", set()),
        ("date=2026-01-15T22:00:00%2B09:00", set()),
        ("date=ne2026-01-15", {"month", "new_year_eve", "ongoing", "to_midnight"}),
        ("date=sa2026-01-14", {"day", "instant", "to_midnight"}),
        ("date=eb2026-01-01", {"new_year_eve"}),
        # repeated parameters AND, commas OR
        (
            "date=ge2026-01-01&date=lt2026-02-01",
            {"day", "month", "instant", "ongoing", "to_midnight"},
        ),
        ("date=2025,2026-01-15", {"new_year_eve", "day", "instant"}),
    ],
)
def test_it_searches_dates_by_prefix_and_precision(
    mother: User, dated: dict[str, str], query: str, expected: set[str]
) -> None:
    response = api(mother).get(f"/fhir/Observation?{query}")
    assert response.status_code == 200, response.json()
    names = {dated_id: name for name, dated_id in dated.items()}
    assert {names[i] for i in ids(response.json())} == expected


def test_it_searches_by_birthdate_for_patients(mother: User, child: Patient) -> None:
    # make_patient's default birth date is 2025-09-01
    client = api(mother)
    assert str(child.pk) in ids(client.get("/fhir/Patient?birthdate=2025-09").json())
    assert str(child.pk) not in ids(client.get("/fhir/Patient?birthdate=lt2025-09-01").json())


def test_it_searches_by_last_updated(mother: User, mother_patient: Patient) -> None:
    old = f.write_observation(mother_patient)
    new = f.write_observation(mother_patient)
    Resource.objects.filter(id=old).update(last_updated=timezone.now() - timedelta(days=30))
    yesterday = (timezone.localdate() - timedelta(days=1)).isoformat()
    client = api(mother)

    def found(query: str) -> set[str]:
        return ids(client.get(f"/fhir/Observation?{query}").json())

    assert found(f"_lastUpdated=gt{yesterday}") == {str(new)}
    assert found(f"_lastUpdated=lt{yesterday}") == {str(old)}
    assert found(f"_lastUpdated=le{yesterday}") == {str(old)}


# --------------------------------------------------------------------------
# audit
# --------------------------------------------------------------------------


def test_it_audits_one_row_per_patient_revealed(
    municipal_officer: User, mother_patient: Patient, child: Patient
) -> None:
    for patient in (mother_patient, child, child):
        f.write_observation(patient)
    response = api(municipal_officer).get("/fhir/Observation")
    assert response.json()["total"] == 3
    rows = AuditEvent.objects.filter(actor=municipal_officer, action="fhir.search")
    assert sorted(str(r.patient_id) for r in rows) == sorted(
        [str(mother_patient.pk), str(child.pk)]
    )
    assert all(r.outcome == "success" and r.purpose == "public_health" for r in rows)
    assert all(r.categories == ["vitals"] for r in rows)


def test_it_audits_reads_and_history(mother: User, child: Patient) -> None:
    rid = f.write_observation(child)
    client = api(mother)
    client.get(f"/fhir/Observation/{rid}")
    client.get(f"/fhir/Observation/{rid}/_history/1")
    client.get(f"/fhir/Observation/{rid}/_history")
    actions = list(
        AuditEvent.objects.filter(actor=mother, patient=child).values_list("action", flat=True)
    )
    assert sorted(actions) == ["fhir.history", "fhir.read", "fhir.read"]


def test_it_audits_nothing_when_nothing_is_revealed(
    stranger: User, mother: User, child: Patient
) -> None:
    rid = f.write_observation(child)
    api(stranger).get(f"/fhir/Observation/{rid}")
    api(stranger).get("/fhir/Observation")
    api(mother).get("/fhir/Observation?_count=0")
    api(mother).get("/fhir/Observation?code=nothing")
    assert not AuditEvent.objects.filter(action__startswith="fhir.").exists()


# --------------------------------------------------------------------------
# writes
# --------------------------------------------------------------------------


def test_it_creates_a_record_in_the_mothers_own_compartment(
    mother: User, mother_patient: Patient
) -> None:
    resource = f.observation(mother_patient, value=54.5)
    resource["id"] = str(uuid.uuid4())  # ignored: the server names new resources
    response = post(api(mother), resource)
    assert response.status_code == 201, response.json()
    body = response.json()
    validate(body)
    assert body["id"] != resource["id"]
    assert response["ETag"] == 'W/"1"'
    assert response["Location"].endswith(f"/fhir/Observation/{body['id']}/_history/1")
    row = Resource.objects.select_related("provenance").get(id=body["id"])
    assert row.compartments == [mother_patient.pk]
    assert row.provenance.origin == Provenance.Origin.SELF
    assert row.provenance.agent_user == mother
    assert (
        AuditEvent.objects.filter(actor=mother, patient=mother_patient, action="fhir.write").count()
        == 1
    )


def test_it_lets_either_guardian_write_the_childs_records(
    mother: User, father: User, child: Patient
) -> None:
    for user in (mother, father):
        assert post(api(user), f.observation(child)).status_code == 201


def test_it_accepts_plain_json_bodies(mother: User, mother_patient: Patient) -> None:
    response = post(api(mother), f.observation(mother_patient), content_type="application/json")
    assert response.status_code == 201


def test_it_refuses_other_content_types_with_415(mother: User, mother_patient: Patient) -> None:
    response = post(api(mother), f.observation(mother_patient), content_type="text/plain")
    assert response.status_code == 415
    outcome_text(response)
    assert not Resource.objects.filter(resource_type="Observation").exists()


@pytest.mark.parametrize("persona", ["father", "stranger", "municipal_officer"])
def test_it_refuses_to_create_into_someone_elses_compartment(
    request: pytest.FixtureRequest, persona: str, mother_patient: Patient
) -> None:
    user = request.getfixturevalue(persona)
    response = post(api(user), f.observation(mother_patient))
    assert response.status_code == 403
    assert response.json()["issue"][0]["code"] == "forbidden"
    assert not Resource.objects.filter(resource_type="Observation").exists()


def test_it_refuses_to_create_into_a_patient_that_does_not_exist_the_same_way(
    mother: User,
) -> None:
    nobody = Patient(id=uuid.uuid4())
    response = post(api(mother), f.observation(nobody))
    assert response.status_code == 403


def test_it_rejects_invalid_fhir_naming_the_element_and_writes_nothing(
    mother: User, mother_patient: Patient
) -> None:
    resource = f.observation(mother_patient)
    resource["valueQuantity"]["value"] = "heavy"
    response = post(api(mother), resource)
    assert response.status_code == 400
    issue = response.json()["issue"][0]
    assert issue["code"] == "invalid"
    assert issue["expression"] == ["Observation.valueQuantity.value"]
    assert issue["diagnostics"]
    assert not Resource.objects.filter(resource_type="Observation").exists()


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[]",
        '{"resourceType": "Condition"}',
        '{"resourceType": "Observation", "status": "final"}',  # code is required
    ],
)
def test_it_rejects_bodies_that_are_not_an_observation(mother: User, body: str) -> None:
    response = api(mother).post("/fhir/Observation", data=body, content_type=FHIR_JSON)
    assert response.status_code == 400
    outcome_text(response)
    assert not Resource.objects.filter(resource_type="Observation").exists()


def test_it_does_not_create_patients(mother: User) -> None:
    resource = f.services.patient_resource(family="前橋", given="なつ")
    response = post(api(mother), resource)
    assert response.status_code == 405
    assert "POST" not in response["Allow"]
    outcome_text(response)


def test_it_updates_a_record_with_a_new_version(mother: User, child: Patient) -> None:
    rid = f.write_observation(child, value=8.2)
    client = api(mother)
    resource = client.get(f"/fhir/Observation/{rid}").json()
    resource["valueQuantity"]["value"] = 8.3
    response = put(client, resource, HTTP_IF_MATCH='W/"1"')
    assert response.status_code == 200, response.json()
    assert response["ETag"] == 'W/"2"'
    assert response.json()["meta"]["versionId"] == "2"
    validate(response.json())
    row = Resource.objects.select_related("provenance").get(id=rid)
    assert row.version == 2
    assert row.provenance.agent_user == mother
    # Sending the same content again changes nothing.
    assert put(client, resource).json()["meta"]["versionId"] == "2"
    # A stale version is refused.
    stale = put(client, resource, HTTP_IF_MATCH='W/"1"')
    assert stale.status_code == 412
    outcome_text(stale)


def test_it_lets_the_mother_update_her_own_patient_resource(
    mother: User, mother_patient: Patient
) -> None:
    client = api(mother)
    resource = client.get(f"/fhir/Patient/{mother_patient.pk}").json()
    resource["telecom"] = [{"system": "phone", "value": "027-000-0000"}]
    response = put(client, resource)
    assert response.status_code == 200, response.json()
    assert response.json()["telecom"][0]["value"] == "027-000-0000"


def test_it_refuses_an_update_whose_id_differs_from_the_url(mother: User, child: Patient) -> None:
    rid = f.write_observation(child)
    client = api(mother)
    resource = client.get(f"/fhir/Observation/{rid}").json()
    resource["id"] = str(uuid.uuid4())
    response = client.put(
        f"/fhir/Observation/{rid}", data=json.dumps(resource), content_type=FHIR_JSON
    )
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["Observation.id"]


def test_it_refuses_to_move_a_record_into_someone_elses_compartment(
    mother: User, child: Patient
) -> None:
    rid = f.write_observation(child)
    client = api(mother)
    resource = client.get(f"/fhir/Observation/{rid}").json()
    resource["subject"] = {"reference": f"Patient/{f.make_patient().pk}"}
    assert put(client, resource).status_code == 403
    assert Resource.objects.get(id=rid).version == 1


@pytest.mark.parametrize(
    ("persona", "status"),
    [("stranger", 404), ("other_municipal_officer", 404), ("municipal_officer", 403)],
)
def test_it_lets_only_the_family_change_or_delete_records(
    request: pytest.FixtureRequest, child: Patient, persona: str, status: int
) -> None:
    # Someone who cannot see the record gets 404; a municipal officer who
    # sees it for public health still may not change it.
    rid = f.write_observation(child)
    user = request.getfixturevalue(persona)
    client = api(user)
    resource = f.observation(child, value=1)
    resource["id"] = str(rid)
    assert put(client, resource).status_code == status
    assert client.delete(f"/fhir/Observation/{rid}").status_code == status
    row = Resource.objects.get(id=rid)
    assert row.version == 1
    assert not row.deleted


def test_it_answers_404_to_an_update_of_a_record_that_does_not_exist(
    mother: User, child: Patient
) -> None:
    resource = f.observation(child)
    resource["id"] = str(uuid.uuid4())
    assert put(api(mother), resource).status_code == 404
    assert not Resource.objects.filter(resource_type="Observation").exists()


def test_it_deletes_a_record_leaving_a_tombstone(
    mother: User, father: User, child: Patient
) -> None:
    rid = f.write_observation(child)
    client = api(father)
    assert client.delete(f"/fhir/Observation/{rid}").status_code == 204
    assert client.delete(f"/fhir/Observation/{rid}").status_code == 204  # twice is fine
    assert api(mother).get(f"/fhir/Observation/{rid}").status_code == 410
    row = Resource.objects.select_related("provenance").get(id=rid)
    assert row.deleted
    assert row.version == 2
    assert row.provenance.activity == Provenance.Activity.DELETE
    assert AuditEvent.objects.filter(actor=father, action="fhir.delete").count() == 1


def test_it_restores_a_deleted_record_on_update(mother: User, child: Patient) -> None:
    # FHIR: an update of a deleted resource brings it back, as a new version.
    rid = f.write_observation(child)
    client = api(mother)
    resource = client.get(f"/fhir/Observation/{rid}").json()
    assert client.delete(f"/fhir/Observation/{rid}").status_code == 204
    response = put(client, resource)
    assert response.status_code == 200
    assert response.json()["meta"]["versionId"] == "3"
    assert client.get(f"/fhir/Observation/{rid}").status_code == 200


def test_it_does_not_delete_patients(mother: User, child: Patient) -> None:
    response = api(mother).delete(f"/fhir/Patient/{child.pk}")
    assert response.status_code == 405


# --------------------------------------------------------------------------
# every type, through the API and back
# --------------------------------------------------------------------------


@pytest.mark.parametrize("resource_type", sorted(samples(Patient(id=uuid.uuid4()))))
def test_it_round_trips_every_type_as_valid_fhir(
    mother: User, child: Patient, resource_type: str
) -> None:
    client = api(mother)
    created = post(client, samples(child)[resource_type])
    assert created.status_code == 201, created.json()
    rid = created.json()["id"]
    read = client.get(f"/fhir/{resource_type}/{rid}")
    assert read.status_code == 200
    validate(read.json())
    search = client.get(f"/fhir/{resource_type}?patient={child.pk}").json()
    assert ids(search) == {rid}
    validate(search)
    validate(client.get(f"/fhir/{resource_type}/{rid}/_history").json())


def test_it_round_trips_patients_as_valid_fhir(mother: User, child: Patient) -> None:
    read = api(mother).get(f"/fhir/Patient/{child.pk}")
    validate(read.json())


def test_it_searches_each_types_own_code_parameter(mother: User, child: Patient) -> None:
    client = api(mother)
    made = {t: post(client, r).json()["id"] for t, r in samples(child).items()}
    queries: dict[str, str] = {
        "Immunization": "vaccine-code=urn:oid:1.2.392.200119.4.403.1|HIB",
        "MedicationStatement": "code=620000000",
        "MedicationDispense": "code=620000000",
        "AllergyIntolerance": "category=food",
        "Condition": "code=http://snomed.info/sct|38341003",
        "Flag": "category=clinical",
        "EpisodeOfCare": "status=active",
        "Encounter": "date=2026-01-15",
    }
    for resource_type, query in queries.items():
        response = client.get(f"/fhir/{resource_type}?{query}")
        assert response.status_code == 200, (resource_type, response.json())
        assert ids(response.json()) == {made[resource_type]}, resource_type


def test_it_keeps_identifiers_and_links_server_held_on_a_patient_put(
    mother: Any, child: Any
) -> None:
    # A family may correct a name, never the identifiers matching relies on.
    from phr import services, store
    from phr.models import Provenance, Resource

    row = Resource.objects.get(pk=child.pk)
    content = {**row.content, "identifier": [{"system": "urn:resident", "value": "C-1"}]}
    store.record_write(
        content,
        provenance=services.provenance_create(origin=Provenance.Origin.MUNICIPALITY),
        resource_id=child.pk,
    )
    client = api(mother)
    body = {
        "resourceType": "Patient",
        "id": str(child.pk),
        "name": [{"family": "前橋", "given": ["はるき"]}],
        "identifier": [{"system": "urn:resident", "value": "FORGED"}],
    }
    response = client.put(
        f"/fhir/Patient/{child.pk}", data=orjson.dumps(body), content_type="application/fhir+json"
    )
    assert response.status_code == 200, response.content
    stored = Resource.objects.get(pk=child.pk).content
    assert stored["name"][0]["given"] == ["はるき"]
    assert stored["identifier"] == [{"system": "urn:resident", "value": "C-1"}]
