"""Grants kept between requests (sharing.access._GrantCache) must never
answer differently from grants computed afresh.

These tests commit (transactional database): the access epoch moves at
commit, which a test wrapped in one transaction never reaches. Each change
of a fact the rules read — a consent revoked, starting or ending, a
membership, an MFA authenticator, a guardianship, a DV block, the user's
own flags — must count at the next read, as it does without the cache;
and a transaction that changed a fact must not trust the cache at all.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import psycopg2
import pytest
import time_machine
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from phr.models import AuditEvent, Guardianship, Membership, Resource, User
from phr.terminology import Category
from sharing.access import _GRANT_CACHE, visible_records
from sharing.models import Consent, ConsentPurpose, DvBlock
from sharing.services import consent_grant, consent_revoke
from tests import factories as f

pytestmark = pytest.mark.django_db(transaction=True)

FACTS = "hagukumi_access_facts"


@pytest.fixture(autouse=True)
def _empty_cache() -> Any:
    _GRANT_CACHE.clear()
    yield
    _GRANT_CACHE.clear()


def api(user: User) -> APIClient:
    """A session client: each request loads the user afresh, as in service."""
    client = APIClient()
    client.force_login(user)
    return client


def read(client: APIClient, rid: uuid.UUID) -> tuple[int, list[str]]:
    """Status of GET /fhir/Observation/{rid} and the statements it ran."""
    with CaptureQueriesContext(connection) as captured:
        status = client.get(f"/fhir/Observation/{rid}").status_code
    return status, [q["sql"] for q in captured.captured_queries]


def facts_read(queries: list[str]) -> bool:
    return any(FACTS in q for q in queries)


@pytest.fixture
def shared(mother: User, child: Any, clinic: Any, clinician: User) -> dict[str, Any]:
    """A child's vaccination, shared with the clinic for care."""
    rid = f.write_observation(child, category=Category.VACCINATIONS)
    consent = consent_grant(
        patient=child,
        by=mother,
        purpose=ConsentPurpose.CARE,
        categories=[Category.VACCINATIONS],
        grantee_org=clinic,
    )
    return {"rid": rid, "consent": consent}


def test_a_second_read_uses_the_cached_grants_and_is_still_audited(
    clinician: User, shared: dict[str, Any]
) -> None:
    client = api(clinician)
    first_status, first = read(client, shared["rid"])
    second_status, second = read(client, shared["rid"])
    assert first_status == second_status == 200
    assert facts_read(first)
    assert not facts_read(second)
    # The facts statement (prepared on the first) is the one statement less.
    assert len(second) == len(first) - sum(FACTS in q for q in first)
    assert AuditEvent.objects.filter(actor_id=clinician.pk, action="fhir.read").count() == 2


def test_a_revocation_counts_at_the_next_read(
    mother: User, clinician: User, shared: dict[str, Any]
) -> None:
    client = api(clinician)
    assert read(client, shared["rid"])[0] == 200
    assert read(client, shared["rid"])[0] == 200  # cached
    consent_revoke(consent=shared["consent"], by=mother)
    status, queries = read(client, shared["rid"])
    assert status == 404
    assert facts_read(queries)  # the epoch moved: computed afresh


def test_a_revocation_committed_by_another_process_counts_at_the_next_read(
    clinician: User, shared: dict[str, Any]
) -> None:
    client = api(clinician)
    assert read(client, shared["rid"])[0] == 200
    assert read(client, shared["rid"])[0] == 200  # cached
    db = connection.settings_dict
    other = psycopg2.connect(
        dbname=db["NAME"], user=db["USER"], host=db["HOST"], port=db["PORT"] or 5432
    )
    try:
        with other, other.cursor() as cursor:
            cursor.execute(
                "UPDATE sharing_consent SET revoked_at = now() WHERE id = %s",
                [str(shared["consent"].pk)],
            )
    finally:
        other.close()
    assert read(client, shared["rid"])[0] == 404


def test_inside_a_transaction_that_changed_a_consent_the_cache_is_not_trusted(
    mother: User, clinician: User, shared: dict[str, Any]
) -> None:
    client = api(clinician)
    assert read(client, shared["rid"])[0] == 200
    assert read(client, shared["rid"])[0] == 200  # cached
    with transaction.atomic():
        consent_revoke(consent=shared["consent"], by=mother)
        # The epoch moves only at commit; this transaction sees its change.
        assert read(client, shared["rid"])[0] == 404
        transaction.set_rollback(True)
    assert read(client, shared["rid"])[0] == 200


def test_a_consent_that_ends_stops_the_cached_grants_at_its_end(
    mother: User, child: Any, clinic: Any, clinician: User
) -> None:
    rid = f.write_observation(child, category=Category.VITALS)
    consent_grant(
        patient=child,
        by=mother,
        purpose=ConsentPurpose.CARE,
        categories=[Category.VITALS],
        grantee_org=clinic,
        ends_at=timezone.now() + timedelta(hours=1),
    )
    client = api(clinician)
    assert read(client, rid)[0] == 200
    assert read(client, rid)[0] == 200
    with time_machine.travel(timezone.now() + timedelta(hours=1, seconds=1)):
        assert read(api(clinician), rid)[0] == 404


def test_a_consent_that_starts_later_opens_the_record_when_it_starts(
    mother: User, child: Any, clinic: Any, clinician: User
) -> None:
    rid = f.write_observation(child, category=Category.VITALS)
    Consent.objects.create(
        patient=child,
        granted_by=mother,
        grantee_org=clinic,
        purpose=ConsentPurpose.CARE,
        categories=[Category.VITALS],
        starts_at=timezone.now() + timedelta(hours=2),
    )
    other = f.write_observation(child, category=Category.VITALS)
    client = api(clinician)
    assert read(client, rid)[0] == 404
    assert read(client, other)[0] == 404
    with time_machine.travel(timezone.now() + timedelta(hours=2, seconds=1)):
        assert read(api(clinician), rid)[0] == 200


@pytest.mark.parametrize(
    "change",
    [
        "membership_ended",
        "membership_deleted",
        "mfa_removed",
        "clinician_blocked",
        "categories_narrowed",
    ],
)
def test_a_change_to_the_readers_facts_counts_at_the_next_read(
    change: str, municipality: Any, clinician: User, shared: dict[str, Any], child: Any
) -> None:
    client = api(clinician)
    assert read(client, shared["rid"])[0] == 200
    assert read(client, shared["rid"])[0] == 200  # cached
    if change == "membership_ended":
        Membership.objects.filter(user=clinician).update(
            valid_from=timezone.localdate() - timedelta(days=30),
            valid_to=timezone.localdate() - timedelta(days=1),
        )
    elif change == "membership_deleted":
        Membership.objects.filter(user=clinician).delete()
    elif change == "mfa_removed":
        clinician.authenticator_set.all().delete()
    elif change == "clinician_blocked":
        DvBlock.objects.create(
            patient=child, blocked_user=clinician, municipality=municipality, created_by=clinician
        )
    elif change == "categories_narrowed":
        Consent.objects.filter(pk=shared["consent"].pk).update(categories=[Category.VITALS])
    assert read(client, shared["rid"])[0] == 404


def test_a_guardianship_that_ends_counts_at_the_next_read(mother: User, child: Any) -> None:
    rid = f.write_observation(child, category=Category.INFANT_CHECKUPS)
    client = api(mother)
    assert read(client, rid)[0] == 200
    assert read(client, rid)[0] == 200
    Guardianship.objects.filter(guardian=mother, child=child).update(
        valid_from=timezone.localdate() - timedelta(days=30),
        valid_to=timezone.localdate() - timedelta(days=1),
    )
    assert read(client, rid)[0] == 404


def test_a_new_day_recomputes_the_grants(mother: User, child: Any) -> None:
    rid = f.write_observation(child, category=Category.INFANT_CHECKUPS)
    Guardianship.objects.filter(guardian=mother, child=child).update(valid_to=timezone.localdate())
    client = api(mother)
    assert read(client, rid)[0] == 200
    assert read(client, rid)[0] == 200
    with time_machine.travel(timezone.now() + timedelta(days=1)):
        assert read(api(mother), rid)[0] == 404


def test_municipal_imports_of_residents_do_not_move_the_epoch(
    clinician: User, shared: dict[str, Any]
) -> None:
    client = api(clinician)
    assert read(client, shared["rid"])[0] == 200
    f.make_patient(given="新")  # an account-less resident, as imports create
    status, queries = read(client, shared["rid"])
    assert status == 200
    assert not facts_read(queries)


def test_a_search_uses_the_cached_grants_and_sees_a_revocation_at_once(
    mother: User, child: Any, clinician: User, shared: dict[str, Any]
) -> None:
    """Lists and pages take the cached grants too, after one small statement
    that reads the epoch (instead of the facts)."""
    client = api(clinician)
    url = f"/fhir/Observation?patient=Patient/{child.pk}"

    def search() -> tuple[int, list[str]]:
        with CaptureQueriesContext(connection) as captured:
            body = client.get(url).json()
        return body["total"], [q["sql"] for q in captured.captured_queries]

    total, first = search()
    assert total == 1
    assert facts_read(first)
    total, second = search()
    assert total == 1
    assert not facts_read(second)
    assert any("sharing_access_epoch" in q for q in second)
    consent_revoke(consent=shared["consent"], by=mother)
    total, third = search()
    assert total == 0
    assert facts_read(third)


# --- the property: cached answers are fresh answers ---------------------------

STEPS = st.lists(
    st.tuples(
        st.sampled_from(["grant", "revoke", "read", "read", "read"]),
        st.integers(0, 2),  # which child
        st.sampled_from([Category.VITALS, Category.VACCINATIONS]),
    ),
    min_size=4,
    max_size=14,
)


@settings(
    max_examples=min(15, settings.default.max_examples),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=STEPS)
def test_cached_reads_always_agree_with_the_sql_filter(
    steps: list[tuple[str, int, str]], mother: User, clinic: Any, clinician: User
) -> None:
    children = [f.make_patient(given=f"子{n}") for n in range(3)]
    for child in children:
        Guardianship.objects.create(guardian=mother, child=child, relationship="mother")
    records = [
        f.write_observation(child, category=category)
        for child in children
        for category in (Category.VITALS, Category.VACCINATIONS)
    ]
    client = api(clinician)
    # The database is not emptied between examples: each has its own children.
    for action, n, category in steps:
        child = children[n]
        if action == "grant":
            consent_grant(
                patient=child,
                by=mother,
                purpose=ConsentPurpose.CARE,
                categories=[category],
                grantee_org=clinic,
            )
        elif action == "revoke":
            for consent in Consent.objects.filter(patient=child, revoked_at__isnull=True):
                consent_revoke(consent=consent, by=mother)
        else:
            statuses = {rid: read(client, rid)[0] for rid in records}
            found = {
                entry["resource"]["id"]
                for child in children
                for entry in client.get(f"/fhir/Observation?patient=Patient/{child.pk}")
                .json()
                .get("entry", [])
            }
            # The oracle after the reads (computing it fills the cache afresh).
            fresh = User.objects.get(pk=clinician.pk)
            _GRANT_CACHE.forget(fresh)  # the oracle computes afresh
            listed = set(
                Resource.objects.filter(visible_records(fresh)).values_list("id", flat=True)
            )
            for rid, status in statuses.items():
                assert (status == 200) == (rid in listed), (steps, rid)
            assert found == {str(rid) for rid in records if rid in listed}, steps
