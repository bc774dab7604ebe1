"""Download everything (issue 6, part 6): the family's FHIR Bundle and the
page to print, persona by persona — what is in them is exactly what the
user may see as herself, and every download is audited per person."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from phr import export, services, store
from phr.models import AuditEvent, Provenance, ResourceHistory
from tests import factories as f
from tests.phr.family_support import (
    Records,
    client_for,
    logged_in,
    make_records,
    record_ids,
    share_vaccinations,
    streamed_json,
    validate,
)

pytestmark = pytest.mark.django_db

BUNDLE = "/family/export/bundle.json"
PRINT = "/family/export/print/"
PAGE = "/family/export/"


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


def test_the_page_offers_the_bundle_and_the_print_page(mother: Any) -> None:
    page = client_for(mother).get(PAGE).content.decode()
    assert f'id="download-bundle" href="{BUNDLE}" download' in page
    assert f'id="print-records" href="{PRINT}"' in page


def test_it_downloads_the_mothers_family_as_a_valid_collection(
    mother: Any, mother_patient: Any, child: Any, records: Records
) -> None:
    response = logged_in(mother).get(BUNDLE)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/fhir+json"
    assert response["Content-Disposition"].startswith('attachment; filename="hagukumi-records-')
    bundle = streamed_json(response)
    validate(bundle)
    assert bundle["type"] == "collection"
    expected = {str(i) for i in records.childs | records.mothers} | {
        str(mother_patient.pk),
        str(child.pk),
    }
    # Exactly what she may see of herself and her child: nothing of another family.
    assert record_ids(bundle) == expected
    assert str(records.strangers) not in record_ids(bundle)


def test_every_record_has_its_provenance_beside_it(
    mother: Any, child: Any, municipality: Any, records: Records
) -> None:
    bundle = streamed_json(logged_in(mother).get(BUNDLE))
    provenances = [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Provenance"
    ]
    targeted = {t["reference"].split("/")[1] for p in provenances for t in p["target"]}
    assert targeted == record_ids(bundle)
    # One Provenance per write, never twice in one collection.
    assert len({p["id"] for p in provenances}) == len(provenances)
    weight = next(
        p
        for p in provenances
        if any(str(records.child_weight) in t["reference"] for t in p["target"])
    )
    assert weight["agent"][0]["role"][0]["coding"][0]["code"] == "municipality"
    assert weight["agent"][0]["who"]["identifier"]["value"] == municipality.code


def test_the_fathers_download_has_the_child_but_not_the_mothers_records(
    father: Any, mother_patient: Any, child: Any, records: Records
) -> None:
    # An adult's records are hers: the other guardian sees the child only.
    bundle = streamed_json(logged_in(father).get(BUNDLE))
    validate(bundle)
    assert record_ids(bundle) == {str(i) for i in records.childs} | {str(child.pk)}


def test_a_stranger_downloads_an_empty_bundle(stranger: Any, records: Records) -> None:
    bundle = streamed_json(logged_in(stranger).get(BUNDLE))
    validate(bundle)
    assert "entry" not in bundle


def test_a_granted_clinic_gets_nothing_here(
    mother: Any,
    child: Any,
    clinic: Any,
    clinician: Any,
    records: Records,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The download is "what I see as myself": a clinic's consent is not that
    # (it reads through the FHIR API, $everything). Staff confirm with their
    # authenticator; here the confirmation is taken as done.
    share_vaccinations(mother, child, clinic)
    monkeypatch.setattr("phr.auth.recently_authenticated", lambda request: True)
    bundle = streamed_json(client_for(clinician).get(BUNDLE))
    assert "entry" not in bundle


def test_deleted_records_are_not_in_the_download(mother: Any, child: Any, records: Records) -> None:
    provenance = services.provenance_create(
        origin=Provenance.Origin.SELF, user=mother, activity=Provenance.Activity.DELETE
    )
    store.record_delete(
        resource_type="Observation", resource_id=records.child_note, provenance=provenance
    )
    bundle = streamed_json(logged_in(mother).get(BUNDLE))
    assert str(records.child_note) not in record_ids(bundle)


def test_it_audits_one_row_per_person_revealed_with_the_categories(
    mother: Any, mother_patient: Any, child: Any, records: Records
) -> None:
    logged_in(mother).get(BUNDLE)
    rows = AuditEvent.objects.filter(actor=mother, action="export.bundle", outcome="success")
    assert sorted(str(r.patient_id) for r in rows) == sorted(
        [str(mother_patient.pk), str(child.pk)]
    )
    child_row = next(r for r in rows if r.patient_id == child.pk)
    assert "vaccinations" in child_row.categories
    assert child_row.purpose == "personal"


def test_a_stale_session_confirms_the_password_first(mother: Any, records: Records) -> None:
    response = client_for(mother).get(BUNDLE)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_reauthenticate"))
    assert not AuditEvent.objects.filter(action="export.bundle").exists()


def test_anonymous_is_sent_to_sign_in() -> None:
    for url in (PAGE, BUNDLE, PRINT):
        response = Client().get(url)
        assert response.status_code == 302
        assert reverse("account_login") in response["Location"]


def test_the_print_page_shows_each_person_by_category_in_japan_time_with_sources(
    mother: Any,
    mother_patient: Any,
    child: Any,
    municipality: Any,
    clinic: Any,
    records: Records,
) -> None:
    response = logged_in(mother).get(PRINT)
    assert response.status_code == 200
    page = response.content.decode()
    assert "css/family_print.css" in page
    assert page.count('class="print-person"') == 2
    # 2026-01-15T23:30Z is the 16th in Japan.
    assert "2026年1月16日" in page
    assert "2026年1月15日" not in page
    assert municipality.name in page
    assert clinic.name in page
    # The categories are headings (Japanese labels).
    assert "予防接種" in page
    rows = AuditEvent.objects.filter(actor=mother, action="export.print")
    assert {r.patient_id for r in rows} == {mother_patient.pk, child.pk}


def test_the_fathers_print_page_leaves_out_the_mother(
    father: Any, mother_patient: Any, child: Any, clinic: Any, records: Records
) -> None:
    page = logged_in(father).get(PRINT).content.decode()
    assert page.count('class="print-person"') == 1
    assert clinic.name not in page  # her clinic record is hers


def test_the_download_streams_in_chunks_without_loading_everything(
    mother: Any, child: Any, records: Records
) -> None:
    # Many more records than one chunk: they all arrive, each once.

    provenance = services.provenance_create(origin=Provenance.Origin.DEVICE, user=mother)

    items = [
        (f.observation(child, value=7 + i / 1000, when=f"2026-01-{1 + i % 28:02d}"), None)
        for i in range(export.CHUNK * 2 + 7)
    ]
    store.records_write_bulk(items, provenance=provenance)
    response = logged_in(mother).get(BUNDLE)
    chunks = list(response.streaming_content)
    assert len(chunks) > export.CHUNK  # written entry by entry
    bundle = json.loads(b"".join(chunks))
    validate(bundle)
    ids = [e["resource"]["id"] for e in bundle["entry"]]
    assert len(ids) == len(set(ids))
    # The device write's Provenance comes in parts of at most one chunk,
    # each its own resource, together naming every record of the write.
    device = [
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Provenance"
        and e["resource"]["agent"][0]["role"][0]["coding"][0]["code"] == "device"
    ]
    assert len(device) == 3
    assert all(len(p["target"]) <= export.CHUNK for p in device)
    assert sum(len(p["target"]) for p in device) == len(items)
    assert len(record_ids(bundle)) == len(records.childs | records.mothers) + 2 + len(items)
    assert ResourceHistory.objects.count() >= len(items)
