"""A real FHIR client, not our own code: the public `fhirclient` package
(SMART on FHIR's client-py, R4 models) drives a running server over HTTP
with a clinic's bearer token — reads, searches that follow next links, and
Bundles built with fhirclient's own models — and HL7's official R4
example resources (tests/phr/fhir_examples/, byte for byte as published)
round-trip without loss."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from fhirclient.models.bundle import Bundle, BundleEntry, BundleEntryRequest
from fhirclient.models.codeableconcept import CodeableConcept
from fhirclient.models.coding import Coding
from fhirclient.models.fhirdate import FHIRDate
from fhirclient.models.fhirdatetime import FHIRDateTime
from fhirclient.models.fhirreference import FHIRReference
from fhirclient.models.humanname import HumanName
from fhirclient.models.identifier import Identifier
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient as FhirPatient
from fhirclient.models.quantity import Quantity
from fhirclient.server import FHIRNotFoundException, FHIRServer

from phr.authentication import api_token_create
from phr.models import Organization, Patient, Resource, User
from tests import factories as f

# The live server runs in another thread on its own connections: the data
# must be committed, so these tests use transactions for real.
pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLES = Path(__file__).resolve().parent / "fhir_examples"
EHR = "urn:oid:1.2.392.100495.20.3.61.1"
CLINIC_PATIENTS = "urn:oid:1.2.392.100495.20.3.51.11019999999"


def example(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))
    return data


@pytest.fixture
def clinic_staff(db: None) -> tuple[User, Organization]:
    clinic = f.ClinicFactory()
    return f.make_member(f.Role.CLINIC_STAFF, clinic), clinic


@pytest.fixture
def server(live_server: Any, clinic_staff: tuple[User, Organization]) -> FHIRServer:
    """fhirclient's server object for our base URL, its requests session
    carrying the clinic's bearer token."""
    user, clinic = clinic_staff
    _, secret = api_token_create(user=user, name="EHR", organization=clinic)
    fhir = FHIRServer(None, base_uri=f"{live_server.url}/fhir/")
    fhir.session.headers["Authorization"] = f"Bearer {secret}"
    return fhir


def coding(system: str, code: str, display: str | None = None) -> Coding:
    out = Coding()
    out.system, out.code = system, code
    if display:
        out.display = display
    return out


def identifier(system: str, value: str) -> Identifier:
    out = Identifier()
    out.system, out.value = system, value
    return out


def reference(ref: str) -> FHIRReference:
    out = FHIRReference()
    out.reference = ref
    return out


def fundal_height(subject: str, number: str, cm: float) -> Observation:
    """A prenatal checkup item, built with fhirclient's models."""
    observation = Observation()
    observation.status = "final"
    observation.identifier = [identifier(EHR, number)]
    concept = CodeableConcept()
    concept.coding = [coding("http://loinc.org", "11881-0", "Uterus Fundal height")]
    observation.code = concept
    observation.subject = reference(subject)
    observation.effectiveDateTime = FHIRDateTime("2026-11-20")
    quantity = Quantity()
    quantity.value, quantity.unit = cm, "cm"
    quantity.system, quantity.code = "http://unitsofmeasure.org", "cm"
    observation.valueQuantity = quantity
    return observation


def entry(resource: Any, *, full_url: str | None = None, if_none_exist: str = "") -> BundleEntry:
    out = BundleEntry()
    out.resource = resource
    if full_url:
        out.fullUrl = full_url
    request = BundleEntryRequest()
    request.method, request.url = "POST", resource.resource_type
    if if_none_exist:
        request.ifNoneExist = if_none_exist
    out.request = request
    return out


def registration(number: str, heights: int) -> Bundle:
    """A transaction: a new pregnant patient and her fundal heights, the
    observations naming her by the urn:uuid of her entry."""
    patient = FhirPatient()
    patient.identifier = [identifier(CLINIC_PATIENTS, number)]
    name = HumanName()
    name.family, name.given = "高崎", ["美咲"]
    patient.name = [name]
    patient.gender = "female"
    patient.birthDate = FHIRDate("1993-06-11")
    patient_url = f"urn:uuid:{uuid.uuid4()}"
    bundle = Bundle()
    bundle.type = "transaction"
    bundle.entry = [
        entry(patient, full_url=patient_url, if_none_exist=f"identifier={CLINIC_PATIENTS}|{number}")
    ] + [entry(fundal_height(patient_url, f"{number}-FH-{n}", 20.0 + n)) for n in range(heights)]
    return bundle


def location_id(response_entry: Any) -> str:
    return str(response_entry.response.location.split("/")[1])


def test_a_clinic_system_posts_a_transaction_then_reads_and_searches_it(
    server: FHIRServer,
) -> None:
    answer = Bundle(registration("K-100", heights=5).create(server))
    assert answer.type == "transaction-response"
    assert [e.response.status for e in answer.entry] == ["201 Created"] * 6
    patient_id = location_id(answer.entry[0])

    # Read, with fhirclient's R4 models parsing our JSON (strict).
    patient = FhirPatient.read(patient_id, server)
    assert patient.name[0].family == "高崎"
    assert patient.identifier[0].value == "K-100"
    assert patient.meta.versionId == "1"

    # Search, two per page: fhirclient follows our next links to the end.
    search = Observation.where({"patient": patient_id, "_count": "2"})
    pages = list(search.perform_iter(server))
    assert len(pages) == 3
    found = [r for page in pages for r in (e.resource for e in page.entry or [])]
    assert sorted(o.valueQuantity.value for o in found) == [20, 21, 22, 23, 24]
    assert {o.subject.reference for o in found} == {f"Patient/{patient_id}"}
    assert pages[0].total == 5

    # Sending the same registration again creates nothing new.
    again = Bundle(registration("K-100", heights=5).create(server))
    assert location_id(again.entry[0]) == patient_id
    assert again.entry[0].response.status == "200 OK"
    assert Patient.objects.count() == 1
    assert Resource.objects.filter(resource_type="Observation").count() == 5


def test_a_batch_from_the_client_reports_each_entry(server: FHIRServer) -> None:
    registered = Bundle(registration("K-200", heights=1).create(server))
    patient_ref = f"Patient/{location_id(registered.entry[0])}"
    good = fundal_height(patient_ref, "B-1", 25.0)
    bad = fundal_height(patient_ref, "B-2", 26.0)
    bad.status = "done"  # not in the Observation status value set
    batch = Bundle()
    batch.type = "batch"
    batch.entry = [entry(good), entry(bad)]
    answer = Bundle(batch.create(server))
    assert answer.type == "batch-response"
    assert answer.entry[0].response.status == "201 Created"
    assert answer.entry[1].response.status.startswith("400")
    issue = answer.entry[1].response.outcome.issue[0]
    assert issue.expression == ["Bundle.entry[1].resource.status"]


def test_a_stranger_clinic_gets_not_found(server: FHIRServer, live_server: Any) -> None:
    registered = Bundle(registration("K-300", heights=1).create(server))
    patient_id = location_id(registered.entry[0])
    other = f.make_member(f.Role.CLINIC_STAFF, f.ClinicFactory())
    _, secret = api_token_create(user=other, name="EHR")
    stranger = FHIRServer(None, base_uri=f"{live_server.url}/fhir/")
    stranger.session.headers["Authorization"] = f"Bearer {secret}"
    with pytest.raises(FHIRNotFoundException):
        FhirPatient.read(patient_id, stranger)
    assert list(Observation.where({"patient": patient_id}).perform_resources_iter(stranger)) == []


# --------------------------------------------------------------------------
# HL7's official R4 examples
# --------------------------------------------------------------------------

OFFICIAL_BASE = "http://hl7.org/fhir/"
OFFICIAL = (
    "Patient-example",
    "Encounter-example",
    "Observation-example",
    "Observation-body-height",
    "Observation-heart-rate",
    "Observation-blood-pressure",
)


def without_server_fields(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource without what the server assigns: id, meta.versionId and
    meta.lastUpdated."""
    out = {k: v for k, v in resource.items() if k != "id"}
    meta = dict(out.pop("meta", None) or {})
    meta.pop("versionId", None)
    meta.pop("lastUpdated", None)
    if meta:
        out["meta"] = meta
    return out


def test_the_official_r4_examples_round_trip_without_loss(server: FHIRServer) -> None:
    originals = {name: example(name) for name in OFFICIAL}
    # fhirclient's own R4 models accept every one of them as they are.
    FhirPatient(copy.deepcopy(originals["Patient-example"]))
    for name in OFFICIAL[2:]:
        Observation(copy.deepcopy(originals[name]))

    # One transaction, each example under its canonical URL as fullUrl, so
    # that their relative references (Patient/example, Encounter/example)
    # resolve to the entries (FHIR's Bundle resolution rules).
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"{OFFICIAL_BASE}{data['resourceType']}/{data['id']}",
                "resource": copy.deepcopy(data),
                "request": {"method": "POST", "url": data["resourceType"]},
            }
            for data in originals.values()
        ],
    }
    response = server.post_json("", transaction)  # the base URL
    answer = Bundle(response.json())
    assert [e.response.status for e in answer.entry] == ["201 Created"] * len(OFFICIAL)
    assigned = {
        f"{data['resourceType']}/{data['id']}": e.response.location.rsplit("/_history", 1)[0]
        for data, e in zip(originals.values(), answer.entry, strict=True)
    }

    for name, data in originals.items():
        location = assigned[f"{data['resourceType']}/{data['id']}"]
        stored = server.request_json(location)
        assert stored["id"] == location.split("/")[1]
        assert stored["meta"]["versionId"] == "1"
        # Equal to the published example but for the server's fields and
        # the references the transaction rewrote to the ids it assigned.
        expected = json.loads(
            json.dumps(without_server_fields(data))
            .replace('"Patient/example"', json.dumps(assigned["Patient/example"]))
            .replace('"Encounter/example"', json.dumps(assigned["Encounter/example"]))
        )
        assert without_server_fields(stored) == expected, name

    # The clinic updates the Patient with a PUT entry and puts it back:
    # every element is kept, the versions count up.
    patient_location = assigned["Patient/example"]
    stored = server.request_json(patient_location)
    changed = copy.deepcopy(stored)
    changed["active"] = False
    for body in (changed, stored):
        put = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"resource": body, "request": {"method": "PUT", "url": patient_location}}],
        }
        assert server.post_json("", put).json()["entry"][0]["response"]["status"] == "200 OK"
    final = server.request_json(patient_location)
    assert final["meta"]["versionId"] == "3"
    assert without_server_fields(final) == without_server_fields(stored)
