"""POST /fhir: transaction and batch Bundles from a clinic's system (and a
family's app) — validation, all-or-nothing, idempotence by identifier,
references between entries, the policy point entry by entry, provenance
and audit."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.test.utils import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from phr.authentication import api_token_create
from phr.models import AuditEvent, Organization, Patient, Provenance, Resource, User
from phr.services import patient_create, provenance_create
from phr.terminology import CATEGORY_SYSTEM, LOINC, Category
from sharing.models import Consent, ConsentPurpose
from sharing.services import consent_grant
from tests import factories as f

pytestmark = pytest.mark.django_db

FHIR_JSON = "application/fhir+json"
EHR = "urn:oid:1.2.392.100495.20.3.61.1"  # the clinic EHR's record numbers (a test system)


def bearer(user: User, organization: Organization | None = None) -> APIClient:
    """A client with a bearer API token, as a clinic's system uses."""
    _, secret = api_token_create(user=user, name="EHR", organization=organization)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def post_bundle(client: APIClient, bundle: dict[str, Any] | bytes, path: str = "/fhir/") -> Any:
    body = bundle if isinstance(bundle, bytes) else json.dumps(bundle)
    return client.post(path, data=body, content_type=FHIR_JSON)


def weight(patient: str, *, value: float = 60.2, number: str | None = None) -> dict[str, Any]:
    """A body weight (vitals) about `patient` (a reference)."""
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "29463-7", "display": "Body weight"}]},
        "subject": {"reference": patient},
        "effectiveDateTime": "2026-11-20T10:00:00+09:00",
        "valueQuantity": {
            "value": value,
            "unit": "kg",
            "system": "http://unitsofmeasure.org",
            "code": "kg",
        },
    }
    if number:
        resource["identifier"] = [{"system": EHR, "value": number}]
    return resource


def fundal_height(patient: str, number: str) -> dict[str, Any]:
    """A prenatal checkup item (category prenatal_checkups)."""
    return {
        "resourceType": "Observation",
        "identifier": [{"system": EHR, "value": number}],
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "11881-0"}]},
        "subject": {"reference": patient},
        "effectiveDateTime": "2026-11-20",
        "valueQuantity": {"value": 28, "unit": "cm", "system": "http://unitsofmeasure.org"},
    }


def post(resource: dict[str, Any], full_url: str | None = None, **request: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"], **request},
    }
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def bundle(kind: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def new_mother(number: str = "K-0001") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51.11019999999", "value": number}],
        "name": [{"use": "official", "family": "前橋", "given": ["陽子"]}],
        "gender": "female",
        "birthDate": "1994-04-02",
    }


def expressions(body: dict[str, Any]) -> list[str]:
    assert body["resourceType"] == "OperationOutcome", body
    return [e for issue in body["issue"] for e in issue.get("expression", [])]


def records_of(patient_id: Any) -> int:
    return Resource.objects.filter(compartments__overlap=[patient_id]).count()


@pytest.fixture
def shared(mother: User, mother_patient: Patient, clinic: Organization) -> Consent:
    """The mother shares her vitals and prenatal checkups with the clinic."""
    return consent_grant(
        patient=mother_patient,
        by=mother,
        purpose=ConsentPurpose.CARE,
        categories=[Category.VITALS, Category.PRENATAL_CHECKUPS],
        grantee_org=clinic,
    )


@pytest.fixture
def ehr(clinician: User, clinic: Organization) -> APIClient:
    return bearer(clinician, clinic)


# --------------------------------------------------------------------------
# Transactions
# --------------------------------------------------------------------------


def test_it_registers_a_patient_with_her_records_resolving_urn_uuid_references(
    ehr: APIClient, clinician: User, clinic: Organization
) -> None:
    mother_url = f"urn:uuid:{uuid.uuid4()}"
    visit_url = f"urn:uuid:{uuid.uuid4()}"
    visit = {
        "resourceType": "Encounter",
        "meta": {"tag": [{"system": CATEGORY_SYSTEM, "code": Category.PRENATAL_CHECKUPS}]},
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": mother_url},
        "period": {"start": "2026-11-20T09:30:00+09:00"},
    }
    measured = fundal_height(mother_url, "FH-1")
    measured["encounter"] = {"reference": visit_url}
    response = post_bundle(
        ehr,
        bundle(
            "transaction",
            post(new_mother(), mother_url),
            post(visit, visit_url),
            post(measured),
            post(weight(mother_url, number="W-1")),
        ),
    )
    assert response.status_code == 200, response.json()
    answer = response.json()
    assert answer["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in answer["entry"]]
    assert statuses == ["201 Created"] * 4
    patient_id = uuid.UUID(answer["entry"][0]["response"]["location"].split("/")[1])
    encounter_id = answer["entry"][1]["response"]["location"].split("/")[1]
    # The references now name the ids the server assigned.
    height = Resource.objects.get(resource_type="Observation", tokens__contains=[f"{EHR}|FH-1"])
    assert height.content["subject"] == {"reference": f"Patient/{patient_id}"}
    assert height.content["encounter"] == {"reference": f"Encounter/{encounter_id}"}
    assert height.category == Category.PRENATAL_CHECKUPS
    assert Patient.objects.get(pk=patient_id).kind == Patient.Kind.ADULT
    # One provenance for the Bundle: the clinic, the token's user and organization.
    provenance = Provenance.objects.get(pk=height.provenance_id)
    assert (provenance.origin, provenance.agent_user, provenance.agent_org) == (
        Provenance.Origin.CLINIC,
        clinician,
        clinic,
    )
    assert set(
        Resource.objects.filter(compartments__overlap=[patient_id]).values_list(
            "provenance_id", flat=True
        )
    ) == {provenance.pk}
    # The write is audited for the patient, naming the categories written.
    audit = AuditEvent.objects.get(action="fhir.write", patient_id=patient_id)
    assert audit.actor_id == clinician.pk
    assert audit.detail["interaction"] == "transaction"
    assert Category.PRENATAL_CHECKUPS in audit.categories
    # The clinic reads back what it registered.
    read = ehr.get(f"/fhir/Observation?patient={patient_id}")
    assert read.json()["total"] == 2


def test_a_transaction_with_one_bad_entry_writes_nothing(
    ehr: APIClient, mother_patient: Patient, shared: Consent
) -> None:
    before = (Resource.objects.count(), Provenance.objects.count())
    bad = weight(f"Patient/{mother_patient.pk}", number="W-2")
    bad["status"] = "done"  # fhir.resources lets it through; the value set does not
    response = post_bundle(
        ehr,
        bundle(
            "transaction",
            post(weight(f"Patient/{mother_patient.pk}", number="W-1")),
            post(fundal_height(f"Patient/{mother_patient.pk}", "FH-1")),
            post(bad),
        ),
    )
    assert response.status_code == 400
    assert expressions(response.json()) == ["Bundle.entry[2].resource.status"]
    assert (Resource.objects.count(), Provenance.objects.count()) == before


def test_it_names_every_failing_entry_of_a_transaction(
    ehr: APIClient, mother_patient: Patient, shared: Consent
) -> None:
    ref = f"Patient/{mother_patient.pk}"
    no_system = weight(ref)
    no_system["code"] = {"coding": [{"code": "29463-7"}]}
    structural = weight(ref)
    structural["valueQuantity"]["value"] = "heavy"
    response = post_bundle(
        ehr,
        bundle(
            "transaction",
            post(weight(ref)),
            post(no_system),
            post(structural),
            {
                "resource": {"resourceType": "Practitioner"},
                "request": {"method": "POST", "url": "Practitioner"},
            },
            post(weight(f"urn:uuid:{uuid.uuid4()}")),
        ),
    )
    assert response.status_code == 400
    found = expressions(response.json())
    assert "Bundle.entry[1].resource.code.coding" in found
    assert "Bundle.entry[2].resource.valueQuantity.value" in found
    assert "Bundle.entry[3].resource.resourceType" in found  # wrong resource type
    assert "Bundle.entry[4].resource.subject.reference" in found  # missing reference
    assert not any(e.startswith("Bundle.entry[0]") for e in found)
    assert records_of(mother_patient.pk) == 1  # only her Patient record


# --------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------


def test_a_batch_writes_the_good_entries_and_reports_the_bad(
    ehr: APIClient, mother_patient: Patient, shared: Consent
) -> None:
    ref = f"Patient/{mother_patient.pk}"
    bad = weight(ref)
    bad["code"] = {"text": "weight"}
    response = post_bundle(
        ehr, bundle("batch", post(weight(ref, number="W-1")), post(bad), post(weight(ref)))
    )
    assert response.status_code == 200
    answer = response.json()
    assert answer["type"] == "batch-response"
    first, second, third = (e["response"] for e in answer["entry"])
    assert first["status"] == third["status"] == "201 Created"
    assert first["etag"] == 'W/"1"'
    assert first["location"].startswith("Observation/")
    assert "lastModified" in first
    assert second["status"].startswith("400")
    assert expressions(second["outcome"]) == ["Bundle.entry[1].resource.code"]
    assert records_of(mother_patient.pk) == 3
    # One provenance for the Bundle, shared by the entries written.
    written = Resource.objects.filter(resource_type="Observation")
    assert len({row.provenance_id for row in written}) == 1


# --------------------------------------------------------------------------
# Idempotence by identifier
# --------------------------------------------------------------------------


def test_a_conditional_create_sent_twice_makes_one_record(
    ehr: APIClient, mother_patient: Patient, shared: Consent
) -> None:
    entry = post(
        weight(f"Patient/{mother_patient.pk}", number="W-9"),
        ifNoneExist=f"identifier={EHR}|W-9",
    )
    first = post_bundle(ehr, bundle("transaction", entry))
    second = post_bundle(ehr, bundle("transaction", entry))
    assert first.json()["entry"][0]["response"]["status"] == "201 Created"
    assert second.json()["entry"][0]["response"]["status"] == "200 OK"
    assert (
        first.json()["entry"][0]["response"]["location"]
        == second.json()["entry"][0]["response"]["location"]
    )
    assert Resource.objects.filter(tokens__contains=[f"{EHR}|W-9"]).count() == 1


def test_a_resend_of_a_record_with_an_identifier_never_duplicates(
    ehr: APIClient, mother_patient: Patient, shared: Consent
) -> None:
    observation = weight(f"Patient/{mother_patient.pk}", number="W-3")
    for _ in range(2):
        assert post_bundle(ehr, bundle("batch", post(observation))).status_code == 200
    row = Resource.objects.get(tokens__contains=[f"{EHR}|W-3"])
    assert row.version == 1  # the same content again is no new version
    observation["valueQuantity"]["value"] = 61.0
    answer = post_bundle(ehr, bundle("batch", post(observation))).json()
    assert answer["entry"][0]["response"]["status"] == "200 OK"
    assert Resource.objects.get(pk=row.pk).version == 2


def test_a_conditional_create_registers_a_patient_once(ehr: APIClient) -> None:
    mother = new_mother("K-7")
    entry = post(mother, ifNoneExist=f"identifier={mother['identifier'][0]['system']}|K-7")
    answers = [post_bundle(ehr, bundle("transaction", entry)).json() for _ in range(2)]
    locations = {a["entry"][0]["response"]["location"].split("/")[1] for a in answers}
    assert len(locations) == 1
    assert Patient.objects.filter(pk__in=locations).count() == 1


def test_a_conditional_create_finds_a_patient_registered_on_the_portal(
    ehr: APIClient, clinician: User, clinic: Organization
) -> None:
    # Registered by the clinic's staff on the portal: a random id, the
    # clinic's patient number as identifier.
    provenance = provenance_create(
        origin=Provenance.Origin.CLINIC, user=clinician, organization=clinic
    )
    registered = patient_create(
        kind=Patient.Kind.ADULT, resource=new_mother("K-42"), provenance=provenance
    )
    mother_url = f"urn:uuid:{uuid.uuid4()}"
    system = new_mother()["identifier"][0]["system"]
    response = post_bundle(
        ehr,
        bundle(
            "transaction",
            post(new_mother("K-42"), mother_url, ifNoneExist=f"identifier={system}|K-42"),
            post(weight(mother_url, number="W-42")),
        ),
    )
    assert response.status_code == 200, response.json()
    first, second = (e["response"] for e in response.json()["entry"])
    assert first["status"] == "200 OK"
    assert first["location"].startswith(f"Patient/{registered.pk}/")
    assert second["status"] == "201 Created"
    observation = Resource.objects.get(tokens__contains=[f"{EHR}|W-42"])
    assert observation.compartments == [registered.pk]


def test_it_updates_with_put_and_conditional_put(
    ehr: APIClient, mother_patient: Patient, shared: Consent
) -> None:
    ref = f"Patient/{mother_patient.pk}"
    created = post_bundle(ehr, bundle("transaction", post(weight(ref, number="W-5")))).json()
    rid = created["entry"][0]["response"]["location"].split("/")[1]
    changed = weight(ref, value=62.5, number="W-5")
    changed["id"] = rid
    response = post_bundle(
        ehr,
        bundle(
            "transaction",
            {"resource": changed, "request": {"method": "PUT", "url": f"Observation/{rid}"}},
            {
                "resource": weight(ref, value=3.1, number="W-6"),
                "request": {"method": "PUT", "url": f"Observation?identifier={EHR}|W-6"},
            },
        ),
    )
    assert response.status_code == 200, response.json()
    statuses = [e["response"]["status"] for e in response.json()["entry"]]
    assert statuses == ["200 OK", "201 Created"]
    assert Resource.objects.get(pk=rid).version == 2
    # A stale If-Match fails the transaction.
    stale = {
        "resource": changed,
        "request": {"method": "PUT", "url": f"Observation/{rid}", "ifMatch": 'W/"1"'},
    }
    assert post_bundle(ehr, bundle("transaction", stale)).status_code == 412


# --------------------------------------------------------------------------
# The policy point, entry by entry
# --------------------------------------------------------------------------


def test_a_clinic_without_consent_cannot_write_and_is_told_not_found(
    mother_patient: Patient, unconsented_clinician: User, other_clinic: Organization
) -> None:
    client = bearer(unconsented_clinician, other_clinic)
    response = post_bundle(
        client, bundle("transaction", post(weight(f"Patient/{mother_patient.pk}", number="X")))
    )
    assert response.status_code == 404
    body = response.json()
    assert body["issue"][0]["code"] == "not-found"
    assert expressions(body) == ["Bundle.entry[0]"]
    assert records_of(mother_patient.pk) == 1
    # The attempt is logged as a denied write.
    assert AuditEvent.objects.filter(
        action="fhir.write", outcome="denied", patient_id=mother_patient.pk
    ).exists()
    # A patient that does not exist answers the same.
    missing = post_bundle(client, bundle("batch", post(weight(f"Patient/{uuid.uuid4()}"))))
    assert missing.json()["entry"][0]["response"]["outcome"]["issue"][0]["diagnostics"].endswith(
        "is not known"
    )


def test_an_expired_consent_stops_writes_and_reads(
    ehr: APIClient, mother_patient: Patient, shared: Consent
) -> None:
    ref = f"Patient/{mother_patient.pk}"
    assert post_bundle(ehr, bundle("batch", post(weight(ref, number="E-1")))).status_code == 200
    Consent.objects.filter(pk=shared.pk).update(
        starts_at=timezone.now() - timedelta(days=30), ends_at=timezone.now() - timedelta(days=1)
    )
    answer = post_bundle(ehr, bundle("batch", post(weight(ref, number="E-2")))).json()
    assert answer["entry"][0]["response"]["status"].startswith("404")
    assert not Resource.objects.filter(tokens__contains=[f"{EHR}|E-2"]).exists()
    # Reading her Patient record stops too.
    assert ehr.get(f"/fhir/Patient/{mother_patient.pk}").status_code == 404


def test_a_consent_covers_only_its_categories(
    ehr: APIClient, mother: User, mother_patient: Patient, clinic: Organization
) -> None:
    consent_grant(
        patient=mother_patient,
        by=mother,
        purpose=ConsentPurpose.CARE,
        categories=[Category.PRENATAL_CHECKUPS],
        grantee_org=clinic,
    )
    ref = f"Patient/{mother_patient.pk}"
    answer = post_bundle(
        ehr, bundle("batch", post(fundal_height(ref, "FH-2")), post(weight(ref, number="W-7")))
    ).json()
    assert [e["response"]["status"][:3] for e in answer["entry"]] == ["201", "404"]


def test_staff_of_another_clinic_see_nothing_of_what_a_clinic_wrote(
    ehr: APIClient,
    mother_patient: Patient,
    shared: Consent,
    unconsented_clinician: User,
    other_clinic: Organization,
) -> None:
    answer = post_bundle(
        ehr, bundle("transaction", post(weight(f"Patient/{mother_patient.pk}", number="S-1")))
    ).json()
    location = answer["entry"][0]["response"]["location"].rsplit("/_history", 1)[0]
    other = bearer(unconsented_clinician, other_clinic)
    assert other.get(f"/fhir/{location}").status_code == 404
    search = other.get(f"/fhir/Observation?identifier={EHR}|S-1").json()
    assert search["total"] == 0
    # Nor can they overwrite it through its identifier.
    replay = weight(f"Patient/{mother_patient.pk}", value=99, number="S-1")
    response = post_bundle(other, bundle("transaction", post(replay)))
    assert response.status_code == 404
    assert Resource.objects.get(tokens__contains=[f"{EHR}|S-1"]).version == 1


def test_a_reference_to_a_record_the_client_cannot_see_fails_the_entry(
    ehr: APIClient, mother_patient: Patient, child: Patient, shared: Consent
) -> None:
    # The child's checkup encounter, which the clinic may not read.
    hidden = f.write_observation(child, category=Category.INFANT_CHECKUPS)
    observation = weight(f"Patient/{mother_patient.pk}")
    observation["hasMember"] = [{"reference": f"Observation/{hidden}"}]
    response = post_bundle(ehr, bundle("transaction", post(observation)))
    assert response.status_code == 404
    assert expressions(response.json()) == ["Bundle.entry[0].resource.hasMember[0].reference"]


def test_a_family_writes_its_own_records_but_registers_no_patient(
    mother: User, mother_patient: Patient, child: Patient
) -> None:
    client = bearer(mother)
    answer = post_bundle(
        client,
        bundle(
            "batch",
            post(weight(f"Patient/{child.pk}", value=8.1)),
            post(new_mother()),
        ),
    ).json()
    statuses = [e["response"]["status"][:3] for e in answer["entry"]]
    assert statuses == ["201", "403"]


def test_staff_without_mfa_write_nothing(
    mother_patient: Patient, clinic: Organization, mother: User
) -> None:
    no_mfa = f.make_member(f.Role.CLINIC_STAFF, clinic, mfa=False)
    consent_grant(
        patient=mother_patient,
        by=mother,
        purpose=ConsentPurpose.CARE,
        categories=[Category.VITALS],
        grantee_org=clinic,
    )
    response = post_bundle(
        bearer(no_mfa, clinic),
        bundle("transaction", post(weight(f"Patient/{mother_patient.pk}")), post(new_mother())),
    )
    assert response.status_code in (403, 404, 400)
    assert records_of(mother_patient.pk) == 1
    assert not Patient.objects.exclude(pk=mother_patient.pk).exists()


# --------------------------------------------------------------------------
# Bad Bundles
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"resourceType": "Patient"}, "resourceType"),
        ({"resourceType": "Bundle", "type": "collection", "entry": []}, "Bundle.type"),
        ({"resourceType": "Bundle", "type": "transaction", "entry": {}}, "Bundle.entry"),
        ([1, 2, 3], "resourceType"),
    ],
)
def test_it_refuses_what_is_not_a_transaction_or_batch(
    ehr: APIClient, body: Any, where: str
) -> None:
    response = post_bundle(ehr, json.dumps(body).encode())
    assert response.status_code == 400
    assert expressions(response.json()) == [where]


def test_five_megabytes_of_junk_get_an_outcome_and_write_nothing(
    ehr: APIClient, mother_patient: Patient, shared: Consent
) -> None:
    before = Resource.objects.count()
    junk = b"\x00\xff{not json" * (5 * 1024 * 1024 // 12)
    response = post_bundle(ehr, junk)
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"
    with override_settings(FHIR_MAX_BUNDLE_MB=1):
        too_big = post_bundle(ehr, junk)
    assert too_big.status_code == 413
    assert too_big.json()["issue"][0]["code"] == "too-costly"
    assert Resource.objects.count() == before


def test_it_refuses_other_content_types(ehr: APIClient) -> None:
    response = ehr.post("/fhir/", data="<Bundle/>", content_type="application/fhir+xml")
    assert response.status_code == 415
    assert response.json()["resourceType"] == "OperationOutcome"


def test_it_answers_at_the_base_url_without_the_slash_too(
    ehr: APIClient, mother_patient: Patient, shared: Consent
) -> None:
    response = post_bundle(
        ehr, bundle("batch", post(weight(f"Patient/{mother_patient.pk}"))), path="/fhir"
    )
    assert response.status_code == 200
    assert ehr.get("/fhir/").status_code == 405


def test_it_requires_authentication() -> None:
    response = post_bundle(APIClient(), bundle("batch"))
    assert response.status_code == 401


def test_the_capability_statement_offers_transaction_and_batch() -> None:
    statement = APIClient().get("/fhir/metadata").json()
    codes = {i["code"] for i in statement["rest"][0]["interaction"]}
    assert codes == {"transaction", "batch"}
    observation = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Observation")
    assert observation["conditionalCreate"] is True


def test_a_bundle_racing_its_twin_is_told_to_send_again(
    ehr: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two copies of one registration at once: the second one's Patient row
    # collides with the first's (same id from the same identifier).
    from django.db import IntegrityError

    from phr import fhir_bundle

    def collide(**kwargs: Any) -> None:
        raise IntegrityError("duplicate key value violates unique constraint")

    monkeypatch.setattr(fhir_bundle, "patient_create", collide)
    response = post_bundle(ehr, bundle("transaction", post(new_mother("K-77"))))
    assert response.status_code == 409
    assert response.json()["issue"][0]["code"] == "conflict"
    assert not Provenance.objects.filter(source__startswith="fhir-bundle").exists()
