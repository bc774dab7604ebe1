"""Clinic feed pulls (clinics/fhir_feed.py): a clinic's FHIR server,
searched with _lastUpdated=gt<cursor> page by page through its searchset
Bundles' next links, against a real local HTTP server (the feed tests'
FeedServer)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from clinics import fhir_feed
from clinics.models import PatientAlias, PatientMatchReview
from phr.models import (
    AuditEvent,
    BatchError,
    FeedRun,
    FeedSource,
    Organization,
    Patient,
    Resource,
    User,
)
from phr.terminology import LOINC, Category
from sharing.models import ConsentPurpose
from sharing.services import consent_grant
from tests import factories as f
from tests.municipal_data.test_feeds import FeedServer, Reply, pull, store_state
from tests.phr.test_fhir_api import api
from tests.phr.test_fhir_bundle_matching import carrying

pytestmark = pytest.mark.django_db

FHIR = "application/fhir+json"
CLINIC_PATIENTS = "urn:oid:1.2.392.100495.20.3.51.11019999999"


@pytest.fixture(autouse=True)
def _media(settings: Any, tmp_path: Any) -> None:
    settings.MEDIA_ROOT = tmp_path


@pytest.fixture
def server(settings: Any) -> Iterator[FeedServer]:
    """The feed tests' local HTTP server, serving scripted replies in order."""
    settings.FEED_ALLOW_HTTP_HOSTS = ["127.0.0.1"]
    settings.FEED_TIMEOUT_SECONDS = 5
    feed_server = FeedServer()
    feed_server.thread.start()
    yield feed_server
    feed_server.httpd.shutdown()
    feed_server.httpd.server_close()


@pytest.fixture
def clinic_staff(db: None) -> tuple[User, Organization]:
    clinic = f.ClinicFactory()
    return f.make_member(f.Role.CLINIC_STAFF, clinic), clinic


@pytest.fixture
def source(server: FeedServer, clinic_staff: tuple[User, Organization]) -> FeedSource:
    user, clinic = clinic_staff
    return FeedSource.objects.create(
        organization=clinic,
        name="電子カルテ",
        url=f"{server.url}/Observation?_sort=_lastUpdated",
        auth_header="Bearer ehr-4711",
        format=fhir_feed.FORMAT_KEY,
        cursor_param=fhir_feed.CURSOR_PARAM,
        created_by=user,
    )


def patient(remote_id: str, updated: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": remote_id,
        "meta": {"lastUpdated": updated},
        "identifier": [{"system": CLINIC_PATIENTS, "value": f"K-{remote_id}"}],
        "name": [{"family": "前橋", "given": ["陽子"]}],
        "gender": "female",
        "birthDate": "1994-04-02",
    }


def weight(remote_id: str, subject: str, updated: str, status: str = "final") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": remote_id,
        "meta": {"lastUpdated": updated},
        "status": status,
        "code": {"coding": [{"system": LOINC, "code": "29463-7"}]},
        "subject": {"reference": subject},
        "effectiveDateTime": "2026-11-20",
        "valueQuantity": {"value": 61.5, "unit": "kg", "system": "http://unitsofmeasure.org"},
    }


def searchset(*resources: dict[str, Any], next_url: str | None = None) -> Reply:
    base = "https://ehr.example.jp/fhir/"
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "meta": {"lastUpdated": "2026-11-26T10:00:00+09:00"},  # the search time
        "total": len(resources),
        "link": [{"relation": "self", "url": f"{base}Observation"}],
        "entry": [
            {
                "fullUrl": f"{base}{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in resources
        ],
    }
    if next_url:
        bundle["link"].append({"relation": "next", "url": next_url})
    return Reply(orjson.dumps(bundle), content_type=FHIR)


def test_it_pulls_a_clinic_server_page_by_page_since_the_last_update(
    server: FeedServer, source: FeedSource, clinic_staff: tuple[User, Organization]
) -> None:
    _, clinic = clinic_staff
    server.script(
        searchset(
            patient("p1", "2026-11-20T09:00:00+09:00"),
            weight("o1", "Patient/p1", "2026-11-20T09:05:00+09:00"),
            next_url="/feed/Observation?page=2",
        ),
        searchset(
            weight("o2", "https://ehr.example.jp/fhir/Patient/p1", "2026-11-21T10:00:00+09:00"),
            weight("o3", "Patient/p1", "2026-11-21T11:00:00+09:00", status="done"),
            weight("o4", "Patient/someone-else", "2026-11-21T12:00:00+09:00"),
        ),
    )
    run = pull(source)
    assert run.status == FeedRun.Status.SUCCEEDED, run.error
    assert (run.pages, run.items, run.imported, run.errors) == (2, 5, 3, 2)
    # The first pull asks from the beginning; the next page is followed as given.
    assert [s.query for s in server.seen] == [{"_sort": ["_lastUpdated"]}, {"page": ["2"]}]
    assert {s.authorization for s in server.seen} == {"Bearer ehr-4711"}
    # The cursor is the newest entry committed, not the search time; the
    # refused entries count too (their pages were read whole).
    assert source.cursor == "2026-11-21T12:00:00+09:00"

    # The patient is registered by the clinic; her records point at her.
    registered = Patient.objects.get()
    assert registered.kind == Patient.Kind.ADULT
    weights = Resource.objects.filter(resource_type="Observation")
    assert weights.count() == 2
    assert {w.content["subject"]["reference"] for w in weights} == {f"Patient/{registered.pk}"}
    assert {w.provenance.agent_org_id for w in weights} == {clinic.pk}
    # The bad status and the unknown patient are row errors of the batch.
    codes = set(BatchError.objects.values_list("code", flat=True))
    assert codes == {"code", "not_found"}

    # The next pull asks since the cursor, with FHIR's gt prefix; the same
    # entries again write nothing.
    before = store_state()
    server.script(searchset(weight("o2", "Patient/p1", "2026-11-21T10:00:00+09:00")))
    pull(source)
    assert server.seen[-1].query == {
        "_sort": ["_lastUpdated"],
        "_lastUpdated": ["gt2026-11-21T12:00:00+09:00"],
    }
    assert store_state() == before
    assert source.cursor == "2026-11-21T12:00:00+09:00"  # never goes back


def test_an_empty_page_keeps_the_cursor(server: FeedServer, source: FeedSource) -> None:
    source.cursor = "2026-11-01T00:00:00+09:00"
    source.save(update_fields=["cursor"])
    server.script(searchset())
    run = pull(source)
    assert run.status == FeedRun.Status.SUCCEEDED, run.error
    source.refresh_from_db()
    assert source.cursor == "2026-11-01T00:00:00+09:00"


def test_a_feed_registered_by_staff_without_mfa_writes_nothing(
    server: FeedServer, source: FeedSource, clinic_staff: tuple[User, Organization]
) -> None:
    _, clinic = clinic_staff
    source.created_by = f.make_member(f.Role.CLINIC_STAFF, clinic, mfa=False)
    source.save(update_fields=["created_by"])
    server.script(
        searchset(
            patient("p1", "2026-11-20T09:00:00+09:00"),
            weight("o1", "Patient/p1", "2026-11-20T09:05:00+09:00"),
        )
    )
    run = pull(source)
    assert run.errors == 2
    assert not Resource.objects.filter(resource_type__in=["Patient", "Observation"]).exists()


# --------------------------------------------------------------------------
# A Patient the server sends who is known here (clinics/matching.py)
# --------------------------------------------------------------------------

HANDBOOK = {"system": "urn:hagukumi:mch-handbook:102016", "value": "102016-2026-00187"}


def known_mother(clinic: Organization | None, email: str = "hanako@example.jp") -> Patient:
    """A mother with an account whose record carries her MCH handbook
    number, sharing her vitals with `clinic` (None: with no clinic)."""
    account = f.UserFactory(email=email)
    mother = f.make_patient(kind=Patient.Kind.ADULT, given="花子", account=account)
    carrying(mother, HANDBOOK)
    if clinic is not None:
        consent_grant(
            patient=mother,
            by=account,
            purpose=ConsentPurpose.CARE,
            categories=[Category.VITALS],
            grantee_org=clinic,
        )
    return mother


def sent(remote_id: str, updated: str, *identifiers: dict[str, str]) -> dict[str, Any]:
    """The server's Patient, with these identifiers besides its own number."""
    resource = patient(remote_id, updated)
    resource["identifier"] = [*identifiers, *resource["identifier"]]
    return resource


def in_record(patient_id: Any) -> int:
    return Resource.objects.filter(
        resource_type="Observation", compartments__overlap=[patient_id]
    ).count()


def test_a_consented_patient_the_server_sends_is_linked_and_its_references_follow_her(
    server: FeedServer, source: FeedSource, clinic_staff: tuple[User, Organization]
) -> None:
    user, clinic = clinic_staff
    mother = known_mother(clinic)
    people = Patient.objects.count()
    first_page = searchset(
        sent("p1", "2026-11-20T09:00:00+09:00", HANDBOOK),
        weight("o1", "Patient/p1", "2026-11-20T09:05:00+09:00"),
        weight("o2", "https://ehr.example.jp/fhir/Patient/p1", "2026-11-20T09:06:00+09:00"),
    )
    server.script(first_page)
    run = pull(source)
    assert run.status == FeedRun.Status.SUCCEEDED, run.error
    assert (run.imported, run.errors) == (3, 0)
    # No new identity: the server's p1 is her; both weights are in her record.
    assert Patient.objects.count() == people
    assert in_record(mother.pk) == 2
    # She gained the server's number; her name stays hers.
    stored = Resource.objects.get(pk=mother.pk).content
    assert stored["identifier"] == [HANDBOOK, {"system": CLINIC_PATIENTS, "value": "K-p1"}]
    assert stored["name"][0]["given"] == ["花子"]
    alias = PatientAlias.objects.get()
    assert (alias.organization, alias.patient_id) == (clinic, mother.pk)
    assert alias.source_value == "Patient/p1"
    link = AuditEvent.objects.get(action="feed.patient_link", patient_id=mother.pk)
    assert (link.actor_id, link.detail["rule"]) == (user.pk, "consent")
    # Her family sees them.
    assert mother.account is not None
    family = api(mother.account).get(f"/fhir/Observation?patient={mother.pk}")
    assert family.json()["total"] == 2

    # The page read again writes nothing new.
    before = store_state()
    server.script(first_page)
    assert pull(source).errors == 0
    assert store_state() == before
    assert PatientAlias.objects.count() == 1
    assert Patient.objects.count() == people

    # A later page that only refers to Patient/p1 lands in her record too.
    server.script(searchset(weight("o3", "Patient/p1", "2026-11-22T09:00:00+09:00")))
    assert pull(source).errors == 0
    assert in_record(mother.pk) == 3
    assert Patient.objects.count() == people


def test_a_feed_without_consent_registers_a_known_identifier_as_an_unknown_one(
    server: FeedServer, source: FeedSource, clinic_staff: tuple[User, Organization]
) -> None:
    user, _ = clinic_staff
    # She shares with another clinic only.
    mother = known_mother(f.ClinicFactory())
    before = Resource.objects.get(pk=mother.pk).version
    people = Patient.objects.count()
    server.script(
        searchset(
            sent("p1", "2026-11-20T09:00:00+09:00", HANDBOOK),
            weight("o1", "Patient/p1", "2026-11-20T09:05:00+09:00"),
        )
    )
    known = pull(source)
    server.script(
        searchset(
            sent("p2", "2026-11-21T09:00:00+09:00", {**HANDBOOK, "value": "999"}),
            weight("o2", "Patient/p2", "2026-11-21T09:05:00+09:00"),
        )
    )
    unknown = pull(source)
    # The same: each registered anew by the clinic, its weight with it.
    assert (known.imported, known.errors) == (unknown.imported, unknown.errors) == (2, 0)
    assert Patient.objects.count() == people + 2
    assert in_record(mother.pk) == 0
    assert Resource.objects.get(pk=mother.pk).version == before
    assert not PatientAlias.objects.exists()
    assert not AuditEvent.objects.filter(patient_id=mother.pk, actor_id=user.pk).exists()


def test_two_persons_with_the_identifier_make_a_new_registration_for_review(
    server: FeedServer, source: FeedSource, clinic_staff: tuple[User, Organization]
) -> None:
    _, clinic = clinic_staff
    mother = known_mother(clinic)
    other = known_mother(clinic, email="yoko@example.jp")
    people = Patient.objects.count()
    page = searchset(
        sent("p1", "2026-11-20T09:00:00+09:00", HANDBOOK),
        weight("o1", "Patient/p1", "2026-11-20T09:05:00+09:00"),
    )
    server.script(page)
    assert pull(source).errors == 0
    assert Patient.objects.count() == people + 1
    assert in_record(mother.pk) == in_record(other.pk) == 0
    review = PatientMatchReview.objects.get()
    assert review.clinic == clinic
    assert set(review.candidates) == {mother.pk, other.pk}
    assert in_record(review.registered_id) == 1
    assert not PatientAlias.objects.exists()
    # Read again: the registration is found under the server's id; nothing new.
    before = store_state()
    server.script(page)
    assert pull(source).errors == 0
    assert store_state() == before
    assert PatientMatchReview.objects.count() == 1
