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
from phr.models import BatchError, FeedRun, FeedSource, Organization, Patient, Resource, User
from phr.terminology import LOINC
from tests import factories as f
from tests.municipal_data.test_feeds import FeedServer, Reply, pull, store_state

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
