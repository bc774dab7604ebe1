"""GET /fhir/Patient/{id}/$everything (issue 6, part 6): one patient's
records through the FHIR API, with a session or a bearer token, paged,
narrowed by _since and _type — and only what the caller may see: a clinic
under a care consent gets the granted categories, a stranger a 404 that
looks like a missing patient."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from phr.authentication import api_token_create
from phr.models import AuditEvent
from tests.phr.family_support import (
    Records,
    make_records,
    record_ids,
    share_vaccinations,
    validate,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def records(
    mother: Any, mother_patient: Any, child: Any, municipality: Any, clinic: Any
) -> Records:
    return make_records(
        mother=mother,
        mother_patient=mother_patient,
        child=child,
        municipality=municipality,
        clinic=clinic,
    )


def api(user: Any = None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_login(user)
    return client


def everything(client: APIClient, patient: Any, **params: Any) -> Any:
    query = f"?{urlencode(params)}" if params else ""
    return client.get(f"/fhir/Patient/{patient.pk}/$everything{query}")


def test_the_mother_gets_her_childs_records_as_a_valid_searchset(
    mother: Any, child: Any, records: Records
) -> None:
    response = everything(api(mother), child)
    assert response.status_code == 200
    body = response.json()
    validate(body)
    assert body["type"] == "searchset"
    assert record_ids(body) == {str(i) for i in records.childs} | {str(child.pk)}
    assert body["total"] == len(record_ids(body))
    modes = {e["resource"]["resourceType"]: e["search"]["mode"] for e in body["entry"]}
    assert modes["Provenance"] == "include"
    assert modes["Observation"] == "match"


def test_it_serves_the_same_to_a_bearer_token(
    father: Any, mother_patient: Any, child: Any, records: Records
) -> None:
    _token, secret = api_token_create(user=father, name="family app")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    body = everything(client, child).json()
    assert record_ids(body) == {str(i) for i in records.childs} | {str(child.pk)}
    # The other guardian: the child, never the mother.
    assert everything(client, mother_patient).status_code == 404


def test_a_clinic_with_a_consent_gets_only_the_granted_categories(
    mother: Any, child: Any, clinic: Any, clinician: Any, records: Records
) -> None:
    share_vaccinations(mother, child, clinic)
    body = everything(api(clinician), child).json()
    validate(body)
    # The Patient, and the vaccination; not the measurements nor the note.
    assert record_ids(body) == {str(records.child_vaccine), str(child.pk)}
    assert body["total"] == 2


def test_a_clinic_without_consent_and_a_stranger_get_a_404_like_a_missing_patient(
    unconsented_clinician: Any, stranger: Any, child: Any, records: Records
) -> None:
    missing = uuid.uuid4()
    for user in (unconsented_clinician, stranger):
        response = everything(api(user), child)
        assert response.status_code == 404
        other = api(user).get(f"/fhir/Patient/{missing}/$everything")
        assert other.status_code == 404
        assert response.json()["issue"][0]["diagnostics"].replace(
            str(child.pk), "X"
        ) == other.json()["issue"][0]["diagnostics"].replace(str(missing), "X")
    assert not AuditEvent.objects.filter(action="fhir.everything", outcome="success").exists()


def test_anonymous_gets_401(child: Any) -> None:
    response = everything(api(), child)
    assert response.status_code == 401
    assert response.json()["resourceType"] == "OperationOutcome"


def test_it_pages_through_everything_with_the_signed_cursor(
    mother: Any, child: Any, records: Records
) -> None:
    client = api(mother)
    body = everything(client, child, _count=1).json()
    seen: list[str] = []
    pages = 0
    while True:
        pages += 1
        seen += sorted(record_ids(body))
        following = [link["url"] for link in body["link"] if link["relation"] == "next"]
        if not following:
            break
        body = client.get(following[0]).json()
    assert pages == 4
    assert sorted(seen) == sorted({str(i) for i in records.childs} | {str(child.pk)})
    assert len(seen) == len(set(seen))


def test_a_cursor_belongs_to_its_user(
    mother: Any, father: Any, child: Any, records: Records
) -> None:
    body = everything(api(mother), child, _count=1).json()
    following = next(link["url"] for link in body["link"] if link["relation"] == "next")
    assert api(father).get(following).status_code == 400


def test_it_narrows_by_type_and_since(mother: Any, child: Any, records: Records) -> None:
    client = api(mother)
    body = everything(client, child, _type="Immunization,Patient").json()
    assert record_ids(body) == {str(records.child_vaccine), str(child.pk)}
    future = (timezone.now() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = everything(client, child, _since=future).json()
    assert body["total"] == 0
    assert "entry" not in body
    past = (timezone.now() - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert everything(client, child, _since=past).json()["total"] == 4


def test_it_refuses_what_it_does_not_understand(mother: Any, child: Any) -> None:
    client = api(mother)
    for params in ({"code": "x"}, {"_type": "Nonsense"}, {"_since": "yesterday"}):
        response = everything(client, child, **params)
        assert response.status_code == 400, params
        assert response.json()["resourceType"] == "OperationOutcome"


def test_it_audits_each_patient_revealed(mother: Any, child: Any, records: Records) -> None:
    everything(api(mother), child)
    rows = AuditEvent.objects.filter(actor=mother, action="fhir.everything", outcome="success")
    assert [r.patient_id for r in rows] == [child.pk]
    assert "vaccinations" in rows[0].categories


def test_the_capability_statement_names_the_operation() -> None:
    body = APIClient().get("/fhir/metadata").json()
    validate(body)
    patient = next(r for r in body["rest"][0]["resource"] if r["type"] == "Patient")
    assert patient["operation"][0]["name"] == "everything"
