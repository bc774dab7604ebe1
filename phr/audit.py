"""The audit log: append, seal, verify.

Rows are appended with plain INSERTs (writers never wait for each other);
a periodic job seals each closed interval by hashing its rows, in id order,
together with the previous seal's digest. `audit_verify` recomputes every
seal: a changed, removed or inserted-after-the-fact row breaks its seal.
The table is INSERT-only (migration 0002); see docs/decisions/0003-audit.md.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from phr.middleware import current_request_id
from phr.models import AuditSeal

logger = logging.getLogger(__name__)

# Seal only intervals that ended this long ago, so that a transaction still
# open when the interval ended has committed its rows before we hash them.
SEAL_LAG = timedelta(minutes=5)
GENESIS = "0" * 64

_COLUMNS = (
    "actor_id",
    "actor_role",
    "organization_id",
    "patient_id",
    "action",
    "categories",
    "purpose",
    "outcome",
    "break_glass",
    "request_id",
    "detail",
)


@dataclass(frozen=True)
class AuditEntry:
    action: str
    outcome: str = "success"
    actor_id: int | None = None
    actor_role: str = ""
    organization_id: int | None = None
    patient_id: uuid.UUID | None = None
    categories: Sequence[str] = ()
    purpose: str = ""
    break_glass: bool = False
    detail: dict[str, Any] | None = None
    request_id: str = ""


def audit_write_many(entries: Iterable[AuditEntry]) -> int:
    """Append entries in one INSERT. Never store the data itself in
    `detail`: only ids, codes and reasons."""
    rows = list(entries)
    if not rows:
        return 0
    default_rid = current_request_id()
    values: list[Any] = []
    for e in rows:
        values.extend(
            [
                e.actor_id,
                e.actor_role,
                e.organization_id,
                e.patient_id,
                e.action,
                list(e.categories),
                e.purpose,
                e.outcome,
                e.break_glass,
                e.request_id or default_rid,
                orjson.dumps(e.detail or {}).decode(),
            ]
        )
    one = "(" + ", ".join(["%s"] * (len(_COLUMNS) - 1)) + ", %s::jsonb)"
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO phr_auditevent ({', '.join(_COLUMNS)}) VALUES "  # noqa: S608
            + ", ".join([one] * len(rows)),
            values,
        )
    return len(rows)


def audit_write(**fields: Any) -> None:
    audit_write_many([AuditEntry(**fields)])


# --------------------------------------------------------------------------
# Seals
# --------------------------------------------------------------------------

_DIGEST_SQL = """
SELECT count(*),
       encode(sha256(convert_to(
           %(previous)s || coalesce(string_agg(row_to_json(a)::text, E'\\n' ORDER BY a.id), ''),
           'UTF8')), 'hex')
FROM phr_auditevent AS a
WHERE a.occurred_at >= %(start)s AND a.occurred_at < %(end)s
"""


def _interval_digest(start: datetime, end: datetime, previous: str) -> tuple[int, str]:
    with transaction.atomic(), connection.cursor() as cursor:
        # row_to_json renders timestamps in the session time zone: pin it.
        cursor.execute("SET LOCAL TimeZone = 'UTC'")
        cursor.execute(_DIGEST_SQL, {"previous": previous, "start": start, "end": end})
        count, digest = cursor.fetchone()
    return int(count), str(digest)


def _first_event_time() -> datetime | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT min(occurred_at) FROM phr_auditevent")
        value: datetime | None = cursor.fetchone()[0]
    return value


def audit_seal(*, now: datetime | None = None) -> AuditSeal | None:
    """Seal everything from the last seal up to now - SEAL_LAG (one seal).

    Safe to run twice at once: period_end is unique and the chain is read
    under a lock, so a concurrent second run seals nothing.
    """
    cutoff = (now or timezone.now()) - SEAL_LAG
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [0x48474B5345414C])  # "HGKSEAL"
        last = AuditSeal.objects.order_by("-period_end").first()
        if last is None:
            first = _first_event_time()
            if first is None:
                return None
            start = first
            previous = GENESIS
        else:
            start, previous = last.period_end, last.digest
        if cutoff <= start:
            return None
        count, digest = _interval_digest(start, cutoff, previous)
        return AuditSeal.objects.create(
            period_start=start,
            period_end=cutoff,
            row_count=count,
            digest=digest,
            previous_digest=previous,
        )


@dataclass(frozen=True)
class SealProblem:
    seal_id: int
    period_start: datetime
    period_end: datetime
    reason: str


def audit_verify() -> list[SealProblem]:
    """Recompute every seal. Empty list: the sealed log is intact."""
    problems: list[SealProblem] = []
    previous = GENESIS
    prior_end: datetime | None = None
    for seal in AuditSeal.objects.order_by("period_end"):
        if seal.previous_digest != previous:
            problems.append(
                SealProblem(seal.pk, seal.period_start, seal.period_end, "chain broken")
            )
        if prior_end is not None and seal.period_start != prior_end:
            problems.append(SealProblem(seal.pk, seal.period_start, seal.period_end, "gap"))
        count, digest = _interval_digest(seal.period_start, seal.period_end, seal.previous_digest)
        if count != seal.row_count:
            problems.append(
                SealProblem(
                    seal.pk,
                    seal.period_start,
                    seal.period_end,
                    f"row count {count}, sealed {seal.row_count}",
                )
            )
        elif digest != seal.digest:
            problems.append(
                SealProblem(seal.pk, seal.period_start, seal.period_end, "rows were altered")
            )
        previous = seal.digest
        prior_end = seal.period_end
    # Rows older than the first seal cannot be covered by it: flag them.
    first_seal = AuditSeal.objects.order_by("period_end").first()
    if first_seal is not None:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM phr_auditevent WHERE occurred_at < %s",
                [first_seal.period_start],
            )
            (before,) = cursor.fetchone()
        if before:
            problems.append(
                SealProblem(
                    first_seal.pk,
                    first_seal.period_start,
                    first_seal.period_end,
                    f"{before} rows predate the first seal",
                )
            )
    return problems


# --------------------------------------------------------------------------
# Monthly partitions
# --------------------------------------------------------------------------


def _month_start(moment: datetime, offset: int) -> datetime:
    month_index = moment.year * 12 + moment.month - 1 + offset
    return datetime(month_index // 12, month_index % 12 + 1, 1, tzinfo=UTC)


def audit_maintain_partitions(*, months_ahead: int = 3, now: datetime | None = None) -> list[str]:
    """Create the monthly partitions from this month to `months_ahead`
    months on. New partitions get the same INSERT-only grants."""
    moment = now or timezone.now()
    created = []
    role = settings.APP_DB_ROLE
    for offset in range(months_ahead + 1):
        start, end = _month_start(moment, offset), _month_start(moment, offset + 1)
        name = f"phr_auditevent_y{start.year:04d}m{start.month:02d}"
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regclass(%s)", [name])
            if cursor.fetchone()[0] is not None:
                continue
            try:
                with transaction.atomic():
                    cursor.execute(
                        f"CREATE TABLE {name} PARTITION OF phr_auditevent "
                        "FOR VALUES FROM (%s) TO (%s)",
                        [start, end],
                    )
                    cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
                    if cursor.fetchone() is not None:
                        quoted = connection.ops.quote_name(role)
                        cursor.execute(f"REVOKE UPDATE, DELETE, TRUNCATE ON {name} FROM {quoted}")
                        cursor.execute(f"GRANT SELECT, INSERT ON {name} TO {quoted}")
            except DatabaseError:
                # Rows for that month already sit in the DEFAULT partition;
                # they stay there (still INSERT-only and sealed).
                logger.warning("audit partition %s not created", name, exc_info=True)
                continue
        created.append(name)
    return created

