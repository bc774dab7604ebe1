"""Consent drives access: clinics and persons see exactly what the family
granted, for as long as it runs; DV blocks cut a person off; explain()
says why."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.utils import timezone

from phr.models import Resource
from phr.terminology import Category
from sharing.access import decide, explain, forget_grants, visible_records
from sharing.models import Consent, ConsentPurpose
from sharing.services import consent_grant, consent_revoke, dv_block_set
from tests import factories as f

pytestmark = pytest.mark.django_db


def visible_ids(user: Any) -> set[Any]:
    forget_grants(user)
    return set(Resource.objects.filter(visible_records(user)).values_list("id", flat=True))


@pytest.fixture
def records(child: Any) -> dict[str, Any]:
    return {
        "vaccination": f.write_observation(child, category=Category.VACCINATIONS),
        "checkup": f.write_observation(child, category=Category.INFANT_CHECKUPS),
    }


def grant_clinic(mother: Any, child: Any, clinic: Any, **extra: Any) -> Consent:
    return consent_grant(
        patient=child,
        by=mother,
        purpose=ConsentPurpose.CARE,
        categories=extra.pop("categories", [Category.VACCINATIONS]),
        grantee_org=clinic,
        **extra,
    )


def test_it_shows_a_consented_clinic_only_the_granted_categories(
    mother: Any, child: Any, clinic: Any, clinician: Any, records: dict[str, Any]
) -> None:
    grant_clinic(mother, child, clinic)
    seen = visible_ids(clinician)
    assert records["vaccination"] in seen
    assert records["checkup"] not in seen
    assert child.pk in seen  # the patient herself (demographics)
    assert decide(clinician, child, category=Category.VACCINATIONS)
    assert not decide(clinician, child, category=Category.INFANT_CHECKUPS)


def test_it_shows_a_clinic_without_consent_nothing(
    mother: Any, child: Any, clinic: Any, unconsented_clinician: Any, records: dict[str, Any]
) -> None:
    grant_clinic(mother, child, clinic)
    assert visible_ids(unconsented_clinician) == set()


def test_it_ends_access_at_once_when_consent_is_revoked_and_emails_the_clinic(
    mother: Any, child: Any, clinic: Any, clinician: Any, records: dict[str, Any]
) -> None:
    consent = grant_clinic(mother, child, clinic)
    assert visible_ids(clinician)
    consent_revoke(consent=consent, by=mother)
    assert visible_ids(clinician) == set()
    assert explain(clinician, child).decision.rule == "consent_revoked"


def test_it_emails_the_grantee_on_revocation(
    mother: Any, child: Any, clinic: Any, clinician: Any, django_capture_on_commit_callbacks: Any
) -> None:
    consent = grant_clinic(mother, child, clinic)
    with django_capture_on_commit_callbacks(execute=True):
        consent_revoke(consent=consent, by=mother)
    assert [m.to for m in mail.outbox] == [[clinician.email]]
    assert "前橋" not in mail.outbox[0].body  # no patient data in the mail


def test_it_ends_access_when_the_consent_expires(
    mother: Any, child: Any, clinic: Any, clinician: Any, records: dict[str, Any]
) -> None:
    start = timezone.now() - timedelta(days=10)
    grant_clinic(mother, child, clinic, starts_at=start, ends_at=start + timedelta(days=1))
    assert visible_ids(clinician) == set()
    assert explain(clinician, child).decision.rule == "consent_expired"


def test_a_partner_sees_the_mothers_records_only_through_her_consent(
    mother: Any, mother_patient: Any, father: Any
) -> None:
    own = f.write_observation(mother_patient, category=Category.VITALS)
    assert own not in visible_ids(father)
    consent_grant(
        patient=mother_patient,
        by=mother,
        purpose=ConsentPurpose.CARE,
        categories=[Category.VITALS],
        grantee_user=father,
    )
    assert own in visible_ids(father)
    assert explain(father, mother_patient).decision.rule == "consent_person"


def test_it_refuses_bad_grants_and_writes_nothing(
    mother: Any, child: Any, clinic: Any, emergency_service: Any
) -> None:
    now = timezone.now()
    bad = [
        {"categories": []},
        {"ends_at": now - timedelta(days=1), "starts_at": now},
        {"grantee_org": emergency_service},  # a care consent to an emergency service
    ]
    for extra in bad:
        arguments = {"grantee_org": clinic, "categories": [Category.VACCINATIONS], **extra}
        with pytest.raises(ValidationError) as info:
            consent_grant(patient=child, by=mother, purpose=ConsentPurpose.CARE, **arguments)
        # Each message says what is wrong in Japanese and English.
        assert " / " in str(info.value)
    assert not Consent.objects.exists()


def test_the_father_cannot_decide_for_the_mother(
    father: Any, mother_patient: Any, clinic: Any
) -> None:
    from django.core.exceptions import PermissionDenied

    with pytest.raises(PermissionDenied):
        consent_grant(
            patient=mother_patient,
            by=father,
            purpose=ConsentPurpose.CARE,
            categories=[Category.VITALS],
            grantee_org=clinic,
        )


def test_a_dv_block_cuts_a_guardian_off_and_refuses_shares_to_him(
    mother: Any, child: Any, father: Any, municipal_officer: Any, records: dict[str, Any]
) -> None:
    assert visible_ids(father)
    dv_block_set(patient=child, blocked_user=father, by=municipal_officer)
    assert visible_ids(father) == set()
    assert decide(father, child).rule == "dv_block"
    with pytest.raises(ValidationError):
        consent_grant(
            patient=child,
            by=mother,
            purpose=ConsentPurpose.CARE,
            categories=[Category.VACCINATIONS],
            grantee_user=father,
        )


def test_only_the_patients_municipality_sets_a_dv_block(
    child: Any, father: Any, other_municipal_officer: Any
) -> None:
    from django.core.exceptions import PermissionDenied

    with pytest.raises(PermissionDenied):
        dv_block_set(patient=child, blocked_user=father, by=other_municipal_officer)


def test_researchers_never_see_identified_records(
    mother: Any, child: Any, researcher: Any, records: dict[str, Any]
) -> None:
    institute = researcher.memberships.get().organization
    consent_grant(
        patient=child,
        by=mother,
        purpose=ConsentPurpose.RESEARCH,
        categories=[Category.VACCINATIONS],
        grantee_org=institute,
    )
    assert visible_ids(researcher) == set()


def test_explain_names_the_consent_that_grants(
    mother: Any, child: Any, clinic: Any, clinician: Any
) -> None:
    consent = grant_clinic(mother, child, clinic)
    answer = explain(clinician, child, category=Category.VACCINATIONS)
    assert answer.decision.allowed
    assert answer.decision.consent_id == consent.pk
    denied = explain(clinician, child, category=Category.INFANT_CHECKUPS)
    assert not denied.decision.allowed
    assert denied.decision.rule == "category_not_granted"


def test_emergency_consent_does_not_list_patients(
    mother: Any, child: Any, emergency_service: Any, responder: Any
) -> None:
    f.write_observation(child, category=Category.ALLERGIES_CONDITIONS)
    consent_grant(
        patient=child,
        by=mother,
        purpose=ConsentPurpose.EMERGENCY,
        categories=[Category.ALLERGIES_CONDITIONS],
        grantee_org=emergency_service,
    )
    assert visible_ids(responder) == set()  # no browsing
    assert decide(responder, child, purpose="emergency")
    rows = Resource.objects.filter(visible_records(responder, "emergency"))
    assert {r.category for r in rows if r.resource_type != "Patient"} == {"allergies_conditions"}



def test_a_dv_block_hides_the_address_from_everyone_but_municipal_staff(
    mother: Any, mother_patient: Any, child: Any, father: Any, municipal_officer: Any
) -> None:
    from rest_framework.test import APIClient

    from phr import services, store
    from phr.models import Provenance

    row = Resource.objects.get(pk=mother_patient.pk)
    content = {**row.content, "address": [{"city": "前橋市", "line": ["シェルター1-2-3"]}]}
    store.record_write(
        content,
        provenance=services.provenance_create(origin=Provenance.Origin.MUNICIPALITY),
        resource_id=mother_patient.pk,
    )
    dv_block_set(patient=mother_patient, blocked_user=father, by=municipal_officer)

    def fetched(user: Any) -> dict[str, Any]:
        client = APIClient()
        client.force_login(user)
        response = client.get(f"/fhir/Patient/{mother_patient.pk}")
        assert response.status_code == 200
        body: dict[str, Any] = response.json()
        return body

    assert "address" in fetched(municipal_officer)
    assert "address" not in fetched(mother)
    # Her own PUT without the address she cannot see keeps it stored.
    client = APIClient()
    client.force_login(mother)
    body = fetched(mother)
    body["name"][0]["given"] = ["花"]
    import orjson

    response = client.put(
        f"/fhir/Patient/{mother_patient.pk}",
        data=orjson.dumps(body),
        content_type="application/fhir+json",
    )
    assert response.status_code == 200
    assert "address" in Resource.objects.get(pk=mother_patient.pk).content


def test_a_next_page_link_issued_before_revocation_shows_nothing_after_it(
    mother: Any, child: Any, clinic: Any, clinician: Any
) -> None:
    from rest_framework.test import APIClient

    for n in range(3):
        f.write_observation(child, category=Category.VACCINATIONS, value=1 + n)
    consent = grant_clinic(mother, child, clinic)
    client = APIClient()
    client.force_login(clinician)
    first = client.get(f"/fhir/Observation?patient={child.pk}&_count=1").json()
    assert first["total"] == 3
    next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
    consent_revoke(consent=consent, by=mother)
    after = client.get(next_url).json()
    assert after["total"] == 0
    assert after.get("entry", []) == []


def test_a_refused_share_to_a_blocked_person_is_audited(
    mother: Any, child: Any, father: Any, municipal_officer: Any
) -> None:
    from phr.models import AuditEvent

    dv_block_set(patient=child, blocked_user=father, by=municipal_officer)
    with pytest.raises(ValidationError):
        consent_grant(
            patient=child,
            by=mother,
            purpose=ConsentPurpose.CARE,
            categories=[Category.VACCINATIONS],
            grantee_user=father,
        )
    assert AuditEvent.objects.filter(
        action="consent.refused_dv_block", patient_id=child.pk, outcome="denied"
    ).exists()
