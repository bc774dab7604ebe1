"""POST /fhir: a clinic's Patient matched by identifier to a person known
here (clinics/matching.py; docs/decisions/0011-fhir-bundles.md, "Matching a
clinic's Patient") — linked when her identifier names exactly one person
the clinic may know; registered anew, exactly as an unknown identifier,
when the clinic has no right to her; registered anew and noted for review
when two persons match."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from rest_framework.test import APIClient

from clinics.models import PatientMatchReview
from phr import store
from phr.models import AuditEvent, Organization, Patient, Provenance, Resource, User
from phr.services import MCH_HANDBOOK_SYSTEM, patient_create, patient_resource, provenance_create
from phr.terminology import Category
from sharing.models import Consent, ConsentPurpose
from sharing.services import consent_grant
from tests import factories as f
from tests.phr.test_fhir_api import api
from tests.phr.test_fhir_bundle import bearer, bundle, post, post_bundle, weight

pytestmark = pytest.mark.django_db

HANDBOOK = MCH_HANDBOOK_SYSTEM.format(municipality_code="102016")
EHR_PATIENTS = "urn:oid:1.2.392.100495.20.3.51.11019999999"  # the clinic EHR's patient numbers


def carrying(patient: Patient, *identifiers: dict[str, str]) -> None:
    """Her stored Patient resource carries these identifiers (as the
    municipality's import writes the MCH handbook number)."""
    row = Resource.objects.get(pk=patient.pk)
    content = dict(row.content)
    content["identifier"] = [*content.get("identifier", []), *identifiers]
    store.record_write(
        content,
        provenance=provenance_create(origin=Provenance.Origin.MUNICIPALITY),
        resource_id=patient.pk,
    )


def sent_patient(*identifiers: dict[str, str]) -> dict[str, Any]:
    """The Patient as the clinic's EHR sends her (its own spelling of her)."""
    return {
        "resourceType": "Patient",
        "identifier": list(identifiers),
        "name": [{"use": "official", "family": "前橋", "given": ["はなこ"]}],
        "gender": "female",
        "birthDate": "1994-04-02",
    }


def handbook(number: str = "102016-2026-00187") -> dict[str, str]:
    return {"system": HANDBOOK, "value": number}


def ehr_number(number: str = "K-0042") -> dict[str, str]:
    return {"system": EHR_PATIENTS, "value": number}


def identifiers_of(patient_id: Any) -> list[dict[str, Any]]:
    identifiers: list[dict[str, Any]] = Resource.objects.get(pk=patient_id).content.get(
        "identifier", []
    )
    return identifiers


def store_state() -> set[tuple[Any, int]]:
    return set(Resource.objects.values_list("id", "version"))


def patient_with_weight(
    patient: dict[str, Any], number: str, *, full_url: str | None = None, subject: str = ""
) -> dict[str, Any]:
    """A transaction: the Patient and a weight referring to her entry."""
    url = full_url or f"urn:uuid:{uuid.uuid4()}"
    return bundle("transaction", post(patient, url), post(weight(subject or url, number=number)))


def location_id(answer: dict[str, Any], index: int) -> uuid.UUID:
    return uuid.UUID(answer["entry"][index]["response"]["location"].split("/")[1])


@pytest.fixture
def shared(mother: User, mother_patient: Patient, clinic: Organization) -> Consent:
    """She carries an MCH handbook number and shares her vitals and
    prenatal checkups with the clinic."""
    carrying(mother_patient, handbook())
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


def test_a_consented_patient_sent_with_a_known_identifier_is_linked_to_her(
    ehr: APIClient, mother: User, mother_patient: Patient, shared: Consent, clinician: User
) -> None:
    people = Patient.objects.count()
    before = Resource.objects.get(pk=mother_patient.pk)
    response = post_bundle(ehr, patient_with_weight(sent_patient(handbook(), ehr_number()), "W-1"))
    assert response.status_code == 200, response.json()
    answer = response.json()
    assert [e["response"]["status"] for e in answer["entry"]] == ["200 OK", "201 Created"]
    # No new identity: the entry is her, and the weight is in her record.
    assert Patient.objects.count() == people
    assert location_id(answer, 0) == mother_patient.pk
    measured = Resource.objects.get(pk=location_id(answer, 1))
    assert measured.content["subject"] == {"reference": f"Patient/{mother_patient.pk}"}
    # Her Patient resource keeps what was stored (her name, the municipality's
    # identifier) and gains the clinic's identifier, nothing else it sent.
    linked = Resource.objects.get(pk=mother_patient.pk)
    assert linked.content["name"] == before.content["name"]
    assert linked.content["identifier"] == [handbook(), ehr_number()]
    assert "gender" not in linked.content
    # The new version is not the clinic's submission: the clinic_submitted
    # rule must not let it read her resource after the consent ends.
    assert linked.provenance.agent_org_id is None
    assert linked.provenance.agent_user == clinician
    # Audited: the link, and the write, under her consent.
    link = AuditEvent.objects.get(action="fhir.patient_link", patient_id=mother_patient.pk)
    assert link.detail["rule"] == "consent"
    assert link.detail["consent"] == str(shared.pk)
    assert link.detail["identifier_systems"] == sorted([HANDBOOK, EHR_PATIENTS])
    assert AuditEvent.objects.filter(action="fhir.write", patient_id=mother_patient.pk).exists()
    assert not PatientMatchReview.objects.exists()
    # Her family sees what the clinic sent.
    mine = api(mother).get(f"/fhir/Observation?patient={mother_patient.pk}")
    assert mine.json()["total"] == 1


def test_a_resend_changes_nothing_and_the_clinic_number_now_matches_on_its_own(
    ehr: APIClient, mother_patient: Patient, shared: Consent
) -> None:
    sent = patient_with_weight(sent_patient(handbook(), ehr_number()), "W-1")
    assert post_bundle(ehr, sent).status_code == 200
    state, people = store_state(), Patient.objects.count()
    again = post_bundle(ehr, sent)
    assert again.status_code == 200, again.json()
    assert [e["response"]["status"] for e in again.json()["entry"]] == ["200 OK", "200 OK"]
    assert store_state() == state
    assert Patient.objects.count() == people
    # The EHR's own number alone (no handbook number) finds her directly.
    alone = post_bundle(ehr, patient_with_weight(sent_patient(ehr_number()), "W-2"))
    assert alone.status_code == 200, alone.json()
    assert location_id(alone.json(), 0) == mother_patient.pk
    assert Patient.objects.count() == people
    assert (
        Resource.objects.filter(
            resource_type="Observation", compartments__overlap=[mother_patient.pk]
        ).count()
        == 2
    )


def test_the_server_relative_reference_under_an_absolute_full_url_lands_in_her_record(
    ehr: APIClient, mother_patient: Patient, shared: Consent
) -> None:
    sent = patient_with_weight(
        sent_patient(handbook()),
        "W-1",
        full_url="https://ehr.example.jp/fhir/Patient/123",
        subject="Patient/123",
    )
    # The weight's fullUrl under the same base makes "Patient/123" resolve
    # against it (FHIR's Bundle rules).
    sent["entry"][1]["fullUrl"] = "https://ehr.example.jp/fhir/Observation/9"
    response = post_bundle(ehr, sent)
    assert response.status_code == 200, response.json()
    measured = Resource.objects.get(pk=location_id(response.json(), 1))
    assert measured.content["subject"] == {"reference": f"Patient/{mother_patient.pk}"}


def outcome(response: Any) -> tuple[int, list[str]]:
    return response.status_code, [e["response"]["status"] for e in response.json()["entry"]]


def test_a_clinic_without_consent_gets_what_an_unknown_identifier_gets(
    mother_patient: Patient,
    shared: Consent,
    unconsented_clinician: User,
    other_clinic: Organization,
) -> None:
    # The consented clinic linked her first: her resource carries its number.
    post_bundle(
        bearer(f.make_member(f.Role.CLINIC_STAFF, shared.grantee_org), shared.grantee_org),
        patient_with_weight(sent_patient(handbook(), ehr_number()), "W-1"),
    )
    before, people = Resource.objects.get(pk=mother_patient.pk), Patient.objects.count()
    other = bearer(unconsented_clinician, other_clinic)
    known = post_bundle(other, patient_with_weight(sent_patient(handbook(), ehr_number()), "X-1"))
    unknown = post_bundle(
        other, patient_with_weight(sent_patient(handbook("999"), ehr_number("K-9")), "X-2")
    )
    # The same answer: a new patient registered by this clinic, her weight in it.
    assert outcome(known) == outcome(unknown) == (200, ["201 Created", "201 Created"])
    assert Patient.objects.count() == people + 2
    new = location_id(known.json(), 0)
    assert new != mother_patient.pk
    assert Resource.objects.get(pk=location_id(known.json(), 1)).content["subject"] == {
        "reference": f"Patient/{new}"
    }
    # Nothing of hers changed or was revealed to the other clinic.
    assert Resource.objects.get(pk=mother_patient.pk).version == before.version
    assert not AuditEvent.objects.filter(
        patient_id=mother_patient.pk, actor=unconsented_clinician
    ).exists()
    # Sent again, each lands on what it registered (as for any identifier).
    assert (
        outcome(
            post_bundle(other, patient_with_weight(sent_patient(handbook(), ehr_number()), "X-1"))
        )
        == outcome(
            post_bundle(
                other, patient_with_weight(sent_patient(handbook("999"), ehr_number("K-9")), "X-2")
            )
        )
        == (200, ["200 OK", "200 OK"])
    )
    assert Patient.objects.count() == people + 2


def test_two_persons_with_the_identifier_are_not_guessed_between(
    ehr: APIClient, mother_patient: Patient, shared: Consent, clinic: Organization
) -> None:
    # A second person the clinic may know carries the same handbook number
    # (an import error, a reused number): which one is she?
    twin_account = f.UserFactory(email="twin@example.jp")
    twin = f.make_patient(kind=Patient.Kind.ADULT, given="葉子", account=twin_account)
    carrying(twin, handbook())
    consent_grant(
        patient=twin,
        by=twin_account,
        purpose=ConsentPurpose.CARE,
        categories=[Category.VITALS],
        grantee_org=clinic,
    )
    people = Patient.objects.count()
    sent = patient_with_weight(sent_patient(handbook(), ehr_number()), "W-1")
    response = post_bundle(ehr, sent)
    assert outcome(response) == (200, ["201 Created", "201 Created"])
    new = location_id(response.json(), 0)
    assert Patient.objects.count() == people + 1
    assert new not in (mother_patient.pk, twin.pk)
    # Neither of them was touched; the question waits for review.
    assert identifiers_of(mother_patient.pk) == [handbook()]
    assert identifiers_of(twin.pk) == [handbook()]
    review = PatientMatchReview.objects.get()
    assert (review.clinic, review.registered_id) == (clinic, new)
    assert sorted(review.candidates, key=str) == sorted([mother_patient.pk, twin.pk], key=str)
    assert f"{HANDBOOK}|102016-2026-00187" in review.identifiers
    # A resend lands on the registration: nothing new, no second question.
    state = store_state()
    assert outcome(post_bundle(ehr, sent)) == (200, ["200 OK", "200 OK"])
    assert store_state() == state
    assert Patient.objects.count() == people + 1
    assert PatientMatchReview.objects.count() == 1


def test_a_patient_the_clinic_registered_is_linked_by_its_number(
    ehr: APIClient, clinic: Organization, clinician: User
) -> None:
    # Registered on the clinic portal (a random id), with the EHR's number.
    registered = patient_create(
        kind=Patient.Kind.ADULT,
        resource=patient_resource(family="前橋", given="陽子", identifiers=[ehr_number()]),
        provenance=provenance_create(
            origin=Provenance.Origin.CLINIC, user=clinician, organization=clinic
        ),
    )
    people = Patient.objects.count()
    response = post_bundle(ehr, patient_with_weight(sent_patient(ehr_number(), handbook()), "W-1"))
    assert outcome(response) == (200, ["200 OK", "201 Created"])
    assert location_id(response.json(), 0) == registered.pk
    assert Patient.objects.count() == people
    assert identifiers_of(registered.pk) == [ehr_number(), handbook()]
    # Her registrar's version: the clinic still reads her (clinic_submitted).
    assert Resource.objects.get(pk=registered.pk).provenance.agent_org == clinic
    assert ehr.get(f"/fhir/Patient/{registered.pk}").status_code == 200


def test_a_dv_block_hides_her_from_the_match(
    ehr: APIClient,
    mother_patient: Patient,
    shared: Consent,
    clinician: User,
    municipality: Organization,
    municipal_officer: User,
) -> None:
    from sharing.models import DvBlock

    DvBlock.objects.create(
        patient=mother_patient,
        blocked_user=clinician,
        municipality=municipality,
        created_by=municipal_officer,
    )
    people = Patient.objects.count()
    response = post_bundle(ehr, patient_with_weight(sent_patient(handbook()), "W-1"))
    assert outcome(response) == (200, ["201 Created", "201 Created"])
    assert Patient.objects.count() == people + 1
    assert identifiers_of(mother_patient.pk) == [handbook()]
