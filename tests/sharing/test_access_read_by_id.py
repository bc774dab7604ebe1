"""Reads by id are decided in Python on the loaded row
(sharing.access.readable_record), lists in SQL (visible_records): the two
must say the same thing, and a read by id must still answer a withheld
record exactly like a missing one.

The property below draws the worlds of test_access_properties.py and asks,
for every user, record and purpose, whether a read by id returns the
record; it must exactly when the SQL filter (tombstones included) lists it.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from hypothesis import HealthCheck, given, settings
from rest_framework.test import APIClient

from phr import fhir_search
from phr.models import AuditEvent, Patient, Resource, User
from phr.terminology import Category
from sharing.access import Purpose, visible_records
from sharing.models import ConsentPurpose
from sharing.services import consent_grant, consent_revoke
from tests import factories as f
from tests.sharing.test_access_properties import Spec, build, rolled_back, worlds

pytestmark = pytest.mark.django_db

PURPOSES = (None, *Purpose.ALL)


@settings(
    max_examples=min(40, settings.default.max_examples),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(spec=worlds())
def test_a_read_by_id_returns_exactly_what_the_sql_filter_lists(spec: Spec) -> None:
    with rolled_back():
        built = build(spec)
        rows = list(Resource.objects.values_list("id", "resource_type"))
        for index, stored in enumerate(built.users):
            for purpose in PURPOSES:
                user = User.objects.get(pk=stored.pk)  # fresh: no cached grants
                listed = set(
                    Resource.objects.filter(
                        visible_records(user, purpose, include_deleted=True)
                    ).values_list("id", flat=True)
                )
                read = {
                    rid
                    for rid, resource_type in rows
                    if fhir_search.resource_for(user, resource_type, str(rid), purpose=purpose)
                    is not None
                }
                assert read == listed, (
                    f"user {index}, purpose {purpose}: read only {read - listed}, "
                    f"listed only {listed - read}"
                )


def api(user: User) -> APIClient:
    """A session client: a fresh user object (no cached grants) per request."""
    client = APIClient()
    client.force_login(user)
    return client


def audited(user: User) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(actor_id=user.pk, action="fhir.read").order_by("id"))


def test_the_owner_reads_her_record_and_the_read_is_audited(
    mother: User, mother_patient: Any
) -> None:
    rid = f.write_observation(mother_patient, category=Category.VITALS)
    response = api(mother).get(f"/fhir/Observation/{rid}")
    assert response.status_code == 200
    assert response.json()["id"] == str(rid)
    [row] = audited(mother)
    assert (row.patient_id, row.detail["rule"]) == (mother_patient.pk, "self")


def test_a_clinic_reads_the_category_it_was_granted_and_nothing_else(
    mother: User, child: Any, clinic: Any, clinician: User
) -> None:
    vaccination = f.write_observation(child, category=Category.VACCINATIONS)
    vitals = f.write_observation(child, category=Category.VITALS)
    consent = consent_grant(
        patient=child,
        by=mother,
        purpose=ConsentPurpose.CARE,
        categories=[Category.VACCINATIONS],
        grantee_org=clinic,
    )
    client = api(clinician)
    assert client.get(f"/fhir/Observation/{vaccination}").status_code == 200
    [row] = audited(clinician)
    assert row.detail["rule"] == "consent"
    assert row.detail["consent"] == str(consent.pk)
    assert row.organization_id == clinic.pk
    # The category not granted: the same 404 as an id that does not exist.
    missing = uuid.uuid4()
    withheld_response = client.get(f"/fhir/Observation/{vitals}")
    missing_response = client.get(f"/fhir/Observation/{missing}")
    assert withheld_response.status_code == missing_response.status_code == 404
    assert withheld_response.json() == json.loads(
        json.dumps(missing_response.json()).replace(str(missing), str(vitals))
    )
    assert "ETag" not in withheld_response
    assert len(audited(clinician)) == 1  # nothing revealed, nothing audited


def test_a_revoked_consent_hides_the_record_at_once(
    mother: User, child: Any, clinic: Any, clinician: User
) -> None:
    rid = f.write_observation(child, category=Category.VITALS)
    consent = consent_grant(
        patient=child,
        by=mother,
        purpose=ConsentPurpose.CARE,
        categories=[Category.VITALS],
        grantee_org=clinic,
    )
    client = api(clinician)
    assert client.get(f"/fhir/Observation/{rid}").status_code == 200
    consent_revoke(consent=consent, by=mother)
    assert client.get(f"/fhir/Observation/{rid}").status_code == 404
    assert client.get(f"/fhir/Patient/{child.pk}").status_code == 404


def test_a_deleted_record_is_gone_to_its_reader_and_missing_to_others(
    mother: User, child: Any, stranger: User
) -> None:
    from phr import store
    from phr.models import Provenance

    rid = f.write_observation(child)
    store.record_delete(
        resource_type="Observation",
        resource_id=rid,
        provenance=Provenance.objects.create(origin=Provenance.Origin.SELF),
    )
    assert api(mother).get(f"/fhir/Observation/{rid}").status_code == 410
    assert api(stranger).get(f"/fhir/Observation/{rid}").status_code == 404


def test_a_read_by_id_costs_the_same_queries_however_many_consents_a_clinic_holds(
    mother: User, child: Any, clinic: Any, clinician: User
) -> None:
    # The grant facts come in one statement; the row is loaded by id and
    # decided in Python: more consents add rows to that statement, not
    # queries (nor branches to the read's WHERE clause).
    rid = f.write_observation(child, category=Category.VITALS)
    consent_grant(
        patient=child,
        by=mother,
        purpose=ConsentPurpose.CARE,
        categories=[Category.VITALS],
        grantee_org=clinic,
    )

    def queries() -> list[str]:
        client = api(clinician)
        with CaptureQueriesContext(connection) as captured:
            assert client.get(f"/fhir/Observation/{rid}").status_code == 200
        return [q["sql"] for q in captured.captured_queries]

    queries()  # a new database connection prepares the facts statement first
    one = queries()
    for n in range(30):
        other_mother = f.UserFactory(email=f"mother{n}@example.jp")
        patient = f.make_patient(kind=Patient.Kind.ADULT, account=other_mother)
        consent_grant(
            patient=patient,
            by=other_mother,
            purpose=ConsentPurpose.CARE,
            categories=[Category.VITALS],
            grantee_org=clinic,
        )
    many = queries()
    assert len(many) == len(one)
    reads = [q for q in many if "phr_resource" in q and "INSERT" not in q]
    assert len(reads) == 1
    assert "compartments" not in reads[0].split("WHERE", 1)[1]  # no grant in the WHERE clause
    assert sum("hagukumi_access_facts" in q for q in many) == 1


def _forget_the_prepared_statement() -> None:
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")
    connection._hagukumi_facts_prepared_on = None


def test_the_facts_statement_outlives_the_transaction_that_prepared_it(
    mother: User, mother_patient: Any
) -> None:
    rid = f.write_observation(mother_patient)
    _forget_the_prepared_statement()
    with transaction.atomic():
        assert api(mother).get(f"/fhir/Observation/{rid}").status_code == 200
        transaction.set_rollback(True)
    assert api(mother).get(f"/fhir/Observation/{rid}").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_the_facts_statement_is_prepared_again_on_a_new_connection(
    mother: User, mother_patient: Any
) -> None:
    rid = f.write_observation(mother_patient)
    assert api(mother).get(f"/fhir/Observation/{rid}").status_code == 200
    connection.close()
    assert api(mother).get(f"/fhir/Observation/{rid}").status_code == 200


# --- DV blocks: a blocked person's attempts are audited ------------------------


def _denied(user: User) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(actor_id=user.pk, outcome="denied").order_by("id"))


def test_a_dv_blocked_guardians_fhir_attempts_are_audited_and_answered_like_missing_records(
    mother: User, child: Any, father: User, municipal_officer: User, stranger: User
) -> None:
    from sharing.services import dv_block_set

    rid = f.write_observation(child, category=Category.VACCINATIONS)
    client = api(father)
    assert client.get(f"/fhir/Observation/{rid}").status_code == 200
    dv_block_set(patient=child, blocked_user=father, by=municipal_officer)
    missing = uuid.uuid4()
    blocked_response = client.get(f"/fhir/Observation/{rid}")
    missing_response = client.get(f"/fhir/Observation/{missing}")
    assert blocked_response.status_code == missing_response.status_code == 404
    assert blocked_response.json() == json.loads(
        json.dumps(missing_response.json()).replace(str(missing), str(rid))
    )
    assert client.get(f"/fhir/Observation/{rid}/_history").status_code == 404
    assert client.get(f"/fhir/Observation/{rid}/_history/1").status_code == 404
    assert client.get(f"/fhir/Patient/{child.pk}").status_code == 404
    search = client.get(f"/fhir/Observation?patient=Patient/{child.pk}")
    assert search.status_code == 200
    assert search.json()["total"] == 0
    denied = _denied(father)
    assert [(row.action, row.patient_id, row.detail["rule"]) for row in denied] == [
        ("fhir.read", child.pk, "dv_block"),
        ("fhir.history", child.pk, "dv_block"),
        ("fhir.read", child.pk, "dv_block"),
        ("fhir.read", child.pk, "dv_block"),
        ("fhir.search", child.pk, "dv_block"),
    ]
    # Someone without a block who finds nothing leaves no denied row: only
    # blocked attempts are worth a line (and the missing id named nobody).
    assert api(stranger).get(f"/fhir/Observation/{rid}").status_code == 404
    assert _denied(stranger) == []
    # The family's access history does not list denied attempts.
    assert not AuditEvent.objects.filter(
        patient_id=child.pk, outcome="denied", actor_id=mother.pk
    ).exists()


def test_without_prepared_statements_the_facts_are_read_with_plain_parameters(
    mother: User, child: Any, clinic: Any, clinician: User
) -> None:
    """Behind a transaction-pooling PgBouncer (ACCESS_FACTS_PREPARED off) the
    facts statement runs without PREPARE, with the same answers."""
    from django.test import override_settings

    granted = f.write_observation(child, category=Category.VACCINATIONS)
    withheld = f.write_observation(child, category=Category.VITALS)
    consent_grant(
        patient=child,
        by=mother,
        purpose=ConsentPurpose.CARE,
        categories=[Category.VACCINATIONS],
        grantee_org=clinic,
    )
    with override_settings(ACCESS_FACTS_PREPARED=False):
        client = api(clinician)
        with CaptureQueriesContext(connection) as captured:
            assert client.get(f"/fhir/Observation/{granted}").status_code == 200
            assert client.get(f"/fhir/Observation/{withheld}").status_code == 404
        # (read before the next request: a request clears the query log)
        statements = [q["sql"] for q in captured.captured_queries]
        assert api(mother).get(f"/fhir/Observation/{withheld}").status_code == 200
    assert not any(q.startswith(("PREPARE", "EXECUTE")) for q in statements)
    assert any("sharing_access_epoch" in q and "sharing_consent" in q for q in statements)
