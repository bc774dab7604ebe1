"""The audit log is append-only, sealed, and verifiable."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from phr.audit import SEAL_LAG, AuditEntry, audit_maintain_partitions, audit_seal, audit_verify
from phr.audit import audit_write_many as write
from phr.models import AuditEvent, AuditSeal

pytestmark = pytest.mark.django_db


def _rows(n: int, action: str = "read") -> None:
    write([AuditEntry(action=action, outcome="success", purpose="personal") for _ in range(n)])


def _db_clock() -> Any:
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        return cursor.fetchone()[0]


def _seal_everything() -> AuditSeal:
    # Seal up to this very moment (as if the lag had passed), so rows
    # written afterwards fall into the next interval.
    seal = audit_seal(now=_db_clock() + SEAL_LAG)
    assert seal is not None
    return seal


def test_it_refuses_update_delete_and_truncate_even_for_the_owner() -> None:
    _rows(1)
    for statement in (
        "UPDATE phr_auditevent SET action = 'x'",
        "DELETE FROM phr_auditevent",
        "TRUNCATE phr_auditevent",
    ):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            connection.cursor().execute(statement)


def test_it_denies_the_application_role_update_and_delete() -> None:
    # The role the app runs as in production has INSERT and SELECT only.
    _rows(1)
    role = connection.ops.quote_name(settings.APP_DB_ROLE)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL ROLE {role}")
        cursor.execute(
            "INSERT INTO phr_auditevent (action, outcome) VALUES ('read', 'success')"
        )
        cursor.execute("SELECT count(*) FROM phr_auditevent")
        assert cursor.fetchone()[0] >= 2
    for statement in ("UPDATE phr_auditevent SET action = 'x'", "DELETE FROM phr_auditevent"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL ROLE {role}")
            with pytest.raises(DatabaseError, match="permission denied"), transaction.atomic():
                cursor.execute(statement)


def test_it_verifies_an_untouched_log() -> None:
    _rows(5)
    seal = _seal_everything()
    assert seal.row_count == 5
    _rows(2)
    second = _seal_everything()
    assert second.previous_digest == seal.digest
    assert audit_verify() == []
    call_command("audit_verify")  # exits 0


def _tamper(sql: str) -> None:
    # A superuser who disables the trigger can still change rows; the seal
    # is what shows it.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute(sql)


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        (
            "UPDATE phr_auditevent SET actor_role = 'someone else' "
            "WHERE id = (SELECT min(id) FROM phr_auditevent)",
            "altered",
        ),
        ("DELETE FROM phr_auditevent WHERE id = (SELECT max(id) FROM phr_auditevent)", "row count"),
    ],
)
def test_it_catches_a_row_changed_or_removed_by_a_superuser(sql: str, reason: str) -> None:
    _rows(4)
    _seal_everything()
    _tamper(sql)
    problems = audit_verify()
    assert problems
    assert reason in problems[0].reason
    with pytest.raises(SystemExit) as exit_info:
        call_command("audit_verify")
    assert exit_info.value.code == 1


def test_it_catches_a_forged_seal_chain() -> None:
    _rows(2)
    _seal_everything()
    _rows(2)
    second = _seal_everything()
    AuditSeal.objects.filter(pk=second.pk).update(previous_digest="f" * 64)
    assert any(p.reason == "chain broken" for p in audit_verify())


def test_it_seals_nothing_twice() -> None:
    _rows(3)
    later = _db_clock() + SEAL_LAG
    assert audit_seal(now=later) is not None
    assert audit_seal(now=later) is None


def test_it_writes_rows_into_monthly_partitions() -> None:
    audit_maintain_partitions(months_ahead=1)
    _rows(1, action="partition-check")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tableoid::regclass::text FROM phr_auditevent WHERE action = 'partition-check'"
        )
        (partition,) = cursor.fetchone()
    now = timezone.now()
    assert partition == f"phr_auditevent_y{now.year:04d}m{now.month:02d}"


def test_it_never_stores_the_data_itself(mother: Any, child: Any) -> None:
    from sharing.access import audit_reveal

    audit_reveal(mother, [child.pk], categories=["vitals"], action="view")
    row = AuditEvent.objects.filter(patient_id=child.pk).latest("occurred_at")
    assert set(row.detail) == {"rule"}
    assert row.categories == ["vitals"]
