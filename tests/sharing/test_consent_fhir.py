"""The FHIR R4 Consent projection: valid by construction (checked with
fhir.resources R4B and our own code checks), served read-only at
/fhir/Consent to whoever decides for the patient and to the grantee while
the consent is in force — 404 to everyone else."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone
from fhir.resources.R4B.consent import Consent as FhirConsent
from rest_framework.test import APIClient

from phr.identifiers import MEDICAL_INSTITUTION_SYSTEM, MUNICIPALITY_CODE_SYSTEM
from phr.models import AuditEvent
from phr.terminology import CATEGORY_SYSTEM, Category
from sharing.fhir import ACCOUNT_SYSTEM, consent_resource
from sharing.models import Consent, ConsentPurpose
from sharing.services import consent_grant, consent_revoke

pytestmark = pytest.mark.django_db

JAPAN = ZoneInfo("Asia/Tokyo")
FHIR_JSON = "application/fhir+json"


def api(user: Any = None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


def grant(by: Any, patient: Any, **extra: Any) -> Consent:
    return consent_grant(
        patient=patient,
        by=by,
        purpose=extra.pop("purpose", ConsentPurpose.CARE),
        categories=extra.pop("categories", [Category.VACCINATIONS]),
        **extra,
    )


def validated(resource: dict[str, Any]) -> dict[str, Any]:
    """Valid R4(B) structure, and the invariants and codes fhir.resources
    does not check (it checks no value sets)."""
    FhirConsent.model_validate(resource)
    assert resource["status"] in {"draft", "proposed", "active", "rejected", "inactive"}
    assert resource["provision"]["type"] in {"deny", "permit"}
    # ppc-1: a policy or a policy rule; ppc-2: a privacy consent names the patient.
    assert "policyRule" in resource or "policy" in resource
    assert resource["patient"]["reference"].startswith("Patient/")
    return resource


# --------------------------------------------------------------------------
# The projection
# --------------------------------------------------------------------------


def test_a_clinic_consent_projects_to_a_valid_r4_consent(
    mother: Any, child: Any, clinic: Any, municipality: Any
) -> None:
    consent = grant(
        mother,
        child,
        grantee_org=clinic,
        categories=[Category.VACCINATIONS, Category.INFANT_CHECKUPS],
        ends_at=datetime(2031, 6, 1, tzinfo=JAPAN),
    )
    resource = validated(consent_resource(consent))
    assert resource["id"] == str(consent.pk)
    assert resource["status"] == "active"
    assert resource["scope"]["coding"][0]["code"] == "patient-privacy"
    assert resource["category"][0]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "59284-0",
        "display": "Patient Consent",
    }
    assert resource["patient"] == {"reference": f"Patient/{child.pk}"}
    # A guardian granted it for the child: a RelatedPerson, by account.
    assert resource["performer"][0]["type"] == "RelatedPerson"
    assert resource["performer"][0]["identifier"] == {
        "system": ACCOUNT_SYSTEM,
        "value": str(mother.pk),
    }
    assert resource["organization"][0]["identifier"] == {
        "system": MUNICIPALITY_CODE_SYSTEM,
        "value": municipality.code,
    }
    provision = resource["provision"]
    assert provision["type"] == "permit"
    assert provision["period"]["end"] == "2031-05-31T15:00:00.000000Z"
    actor = provision["actor"][0]
    assert actor["role"]["coding"][0]["code"] == "IRCP"
    assert actor["reference"]["type"] == "Organization"
    assert actor["reference"]["identifier"] == {
        "system": MEDICAL_INSTITUTION_SYSTEM,
        "value": clinic.code,
    }
    assert provision["action"][0]["coding"][0]["code"] == "access"
    assert provision["purpose"][0]["code"] == "TREAT"
    assert {(c["system"], c["code"]) for c in provision["class"]} == {
        (CATEGORY_SYSTEM, Category.VACCINATIONS),
        (CATEGORY_SYSTEM, Category.INFANT_CHECKUPS),
    }


def test_the_mothers_own_consent_to_her_partner_names_her_as_performer(
    mother: Any, mother_patient: Any, father: Any
) -> None:
    consent = grant(mother, mother_patient, grantee_user=father, categories=[Category.VITALS])
    resource = validated(consent_resource(consent))
    assert resource["performer"] == [{"reference": f"Patient/{mother_patient.pk}"}]
    actor = resource["provision"]["actor"][0]["reference"]
    assert actor["type"] == "RelatedPerson"
    assert actor["identifier"]["value"] == str(father.pk)
    assert "period" in resource["provision"]
    assert "end" not in resource["provision"]["period"]


@pytest.mark.parametrize(
    ("state", "status"),
    [("active", "active"), ("pending", "active"), ("revoked", "inactive"), ("expired", "inactive")],
)
def test_it_maps_every_consent_state_to_a_fhir_status(
    mother: Any, child: Any, clinic: Any, state: str, status: str
) -> None:
    now = timezone.now()
    extra: dict[str, Any] = {}
    if state == "pending":
        extra = {"starts_at": now + timedelta(days=3)}
    elif state == "expired":
        extra = {"starts_at": now - timedelta(days=10), "ends_at": now - timedelta(days=1)}
    consent = grant(mother, child, grantee_org=clinic, **extra)
    if state == "revoked":
        consent_revoke(consent=consent, by=mother)
        consent.refresh_from_db()
    assert consent.status == state
    resource = validated(consent_resource(consent))
    assert resource["status"] == status


@pytest.mark.parametrize(
    ("purpose", "category", "scope"),
    [
        (ConsentPurpose.EMERGENCY, "emrgonly", "patient-privacy"),
        (ConsentPurpose.RESEARCH, "research", "research"),
    ],
)
def test_emergency_and_research_consents_say_so(
    mother: Any,
    child: Any,
    emergency_service: Any,
    researcher: Any,
    purpose: str,
    category: str,
    scope: str,
) -> None:
    grantee = (
        emergency_service
        if purpose == ConsentPurpose.EMERGENCY
        else researcher.memberships.get().organization
    )
    consent = grant(
        mother,
        child,
        grantee_org=grantee,
        purpose=purpose,
        categories=[Category.ALLERGIES_CONDITIONS],
    )
    resource = validated(consent_resource(consent))
    assert resource["category"][1]["coding"][0]["code"] == category
    assert resource["scope"]["coding"][0]["code"] == scope


# --------------------------------------------------------------------------
# GET /fhir/Consent/{id}
# --------------------------------------------------------------------------


def test_it_serves_the_consent_to_the_mother_and_404_to_a_stranger(
    mother: Any, child: Any, clinic: Any, stranger: Any
) -> None:
    consent = grant(mother, child, grantee_org=clinic)
    response = api(mother).get(f"/fhir/Consent/{consent.pk}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith(FHIR_JSON)
    body = validated(response.json())
    assert body["id"] == str(consent.pk)

    for url in (f"/fhir/Consent/{consent.pk}", "/fhir/Consent/not-a-uuid"):
        response = api(stranger).get(url)
        assert response.status_code == 404
        assert response.json()["resourceType"] == "OperationOutcome"
    # Withheld and missing look the same, word for word.
    missing = api(stranger).get("/fhir/Consent/00000000-0000-0000-0000-000000000000").json()
    withheld = api(stranger).get(f"/fhir/Consent/{consent.pk}").json()
    assert (
        missing["issue"][0]["diagnostics"].replace(
            "00000000-0000-0000-0000-000000000000", str(consent.pk)
        )
        == (withheld["issue"][0]["diagnostics"])
    )


def test_it_audits_a_consent_read_against_the_patient(mother: Any, child: Any, clinic: Any) -> None:
    consent = grant(mother, child, grantee_org=clinic)
    api(mother).get(f"/fhir/Consent/{consent.pk}")
    row = AuditEvent.objects.get(actor=mother, action="fhir.read")
    assert row.patient_id == child.pk
    assert row.detail["type"] == "Consent"


def test_the_grantee_sees_the_consent_only_while_it_is_in_force(
    mother: Any, child: Any, clinic: Any, clinician: Any, unconsented_clinician: Any
) -> None:
    consent = grant(mother, child, grantee_org=clinic)
    assert api(clinician).get(f"/fhir/Consent/{consent.pk}").status_code == 200
    assert api(unconsented_clinician).get(f"/fhir/Consent/{consent.pk}").status_code == 404
    consent_revoke(consent=consent, by=mother)
    assert api(clinician).get(f"/fhir/Consent/{consent.pk}").status_code == 404
    # The family still sees it, now inactive.
    assert api(mother).get(f"/fhir/Consent/{consent.pk}").json()["status"] == "inactive"


def test_the_father_does_not_see_the_mothers_own_consents(
    mother: Any, mother_patient: Any, child: Any, father: Any, clinic: Any
) -> None:
    hers = grant(mother, mother_patient, grantee_org=clinic, categories=[Category.VITALS])
    childs = grant(mother, child, grantee_org=clinic)
    assert api(father).get(f"/fhir/Consent/{hers.pk}").status_code == 404
    # The child's other guardian decides for the child too.
    assert api(father).get(f"/fhir/Consent/{childs.pk}").status_code == 200


def test_staff_without_mfa_and_emergency_services_do_not_list_consents(
    mother: Any, child: Any, emergency_service: Any, responder: Any, staff_without_mfa: Any
) -> None:
    consent = grant(
        mother,
        child,
        grantee_org=emergency_service,
        purpose=ConsentPurpose.EMERGENCY,
        categories=[Category.ALLERGIES_CONDITIONS],
    )
    assert api(responder).get(f"/fhir/Consent/{consent.pk}").status_code == 404
    assert api(responder).get("/fhir/Consent").json()["total"] == 0
    assert api(staff_without_mfa).get("/fhir/Consent").json()["total"] == 0


def test_consents_are_read_only_in_the_api(mother: Any, child: Any, clinic: Any) -> None:
    consent = grant(mother, child, grantee_org=clinic)
    client = api(mother)
    body = consent_resource(consent)
    assert client.put(f"/fhir/Consent/{consent.pk}", body, format="json").status_code == 405
    assert client.delete(f"/fhir/Consent/{consent.pk}").status_code == 405
    assert client.post("/fhir/Consent", body, format="json").status_code == 405
    consent.refresh_from_db()
    assert consent.revoked_at is None


# --------------------------------------------------------------------------
# GET /fhir/Consent?patient=…
# --------------------------------------------------------------------------


def test_it_searches_consents_by_patient(
    mother: Any, mother_patient: Any, child: Any, clinic: Any, father: Any, stranger: Any
) -> None:
    childs = grant(mother, child, grantee_org=clinic)
    hers = grant(mother, mother_patient, grantee_user=father, categories=[Category.VITALS])
    body = api(mother).get("/fhir/Consent", {"patient": f"Patient/{child.pk}"}).json()
    assert body["resourceType"] == "Bundle"
    assert body["total"] == 1
    assert [e["resource"]["id"] for e in body["entry"]] == [str(childs.pk)]
    for entry in body["entry"]:
        validated(entry["resource"])
    everything = api(mother).get("/fhir/Consent").json()
    assert {e["resource"]["id"] for e in everything["entry"]} == {str(childs.pk), str(hers.pk)}
    # The father is the grantee of hers (in force) and decides for the child.
    fathers = api(father).get("/fhir/Consent").json()
    assert {e["resource"]["id"] for e in fathers["entry"]} == {str(childs.pk), str(hers.pk)}
    assert api(stranger).get("/fhir/Consent", {"patient": str(child.pk)}).json()["total"] == 0
    assert api(stranger).get("/fhir/Consent").json()["total"] == 0


def test_it_pages_consent_searches_with_a_signed_cursor(
    mother: Any, child: Any, clinic: Any, other_clinic: Any
) -> None:
    ids = {str(grant(mother, child, grantee_org=org).pk) for org in (clinic, other_clinic)}
    client = api(mother)
    first = client.get("/fhir/Consent", {"patient": str(child.pk), "_count": 1}).json()
    assert first["total"] == 2
    assert len(first["entry"]) == 1
    next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
    second = client.get(next_url).json()
    assert {first["entry"][0]["resource"]["id"], second["entry"][0]["resource"]["id"]} == ids
    assert not any(link["relation"] == "next" for link in second["link"])


def test_it_refuses_unknown_consent_search_parameters(mother: Any) -> None:
    response = api(mother).get("/fhir/Consent", {"grantee": "x"})
    assert response.status_code == 400
    assert response.json()["issue"][0]["code"] == "not-supported"
