"""The record store's service API: every write of clinical data goes here.

- `record_write` / `records_write_bulk`: idempotent upserts. A resource
  from outside carries a source identifier (system + value); its id is
  derived from it (uuid5), so writing the same source again lands on the
  same row. A new version is written only when the canonical content
  changed (sorted keys, no whitespace, no meta.versionId/lastUpdated).
  Concurrent writers of one key end with one record: INSERT … ON CONFLICT.
- The bulk path COPYs a chunk into a temporary staging table and upserts
  from it in one statement that also writes history; the single path runs
  the same statement over a VALUES list.
- `record_delete` writes a tombstone version; `records_purge` removes a
  patient's records and their history for a lawful deletion (audited).

Reads are in phr/selectors.py; who may read is decided by sharing/access.py.
"""

from __future__ import annotations

import csv
import hashlib
import io
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from django.db import connection, transaction

from phr import indexing
from phr.models import Provenance, Resource, ResourceHistory

# Namespace for ids derived from source identifiers.
SOURCE_NAMESPACE = uuid.UUID("6f1d3c5e-6a0b-4c41-9a58-0b2f8e7f3a10")

RESOURCE_TABLE = Resource._meta.db_table
HISTORY_TABLE = ResourceHistory._meta.db_table

# Columns of a staged row, in COPY order.
STAGE_COLUMNS = (
    "id",
    "resource_type",
    "content",
    "content_hash",
    "source_system",
    "source_value",
    "compartments",
    "tokens",
    "refs",
    "status",
    "category",
    "sensitivity",
    "date_start",
    "date_end",
    "date_precision",
    "quantity_value",
    "quantity_code",
)
STAGE_TYPES = (
    "uuid",
    "varchar(40)",
    "jsonb",
    "varchar(64)",
    "varchar(200)",
    "varchar(200)",
    "uuid[]",
    "text[]",
    "text[]",
    "varchar(32)",
    "varchar(32)",
    "varchar(16)",
    "timestamptz",
    "timestamptz",
    "varchar(8)",
    "numeric(18,6)",
    "varchar(32)",
)
_INDEX_COLUMNS = STAGE_COLUMNS[4:]
# Empty text in these columns is '' (not NULL) when COPYed as CSV.
_TEXT_COLUMNS = [
    c for c, t in zip(STAGE_COLUMNS, STAGE_TYPES, strict=True) if t.startswith("varchar")
]

# One statement: upsert the current rows, and write a history row for each
# row inserted or changed. Rows whose content did not change are untouched
# (the WHERE on DO UPDATE), so replaying a batch writes nothing.
# The identifiers interpolated here are module constants, never input.
_UPSERT_SQL = f"""
WITH changed AS (
    INSERT INTO {RESOURCE_TABLE} AS r (
        {", ".join(STAGE_COLUMNS)}, version, last_updated, deleted, provenance_id
    )
    SELECT {", ".join(f"s.{c}" for c in STAGE_COLUMNS)}, 1, %(now)s, false, %(provenance)s
    FROM {{source}}
    ORDER BY s.id
    ON CONFLICT (id) DO UPDATE SET
        version = r.version + 1,
        last_updated = EXCLUDED.last_updated,
        deleted = false,
        provenance_id = EXCLUDED.provenance_id,
        content = EXCLUDED.content,
        content_hash = EXCLUDED.content_hash,
        {", ".join(f"{c} = EXCLUDED.{c}" for c in _INDEX_COLUMNS)}
    WHERE (r.content_hash <> EXCLUDED.content_hash OR r.deleted)
      AND r.resource_type = EXCLUDED.resource_type
    RETURNING r.id, r.resource_type, r.version, r.last_updated, r.deleted, r.content,
              r.content_hash, r.provenance_id
)
INSERT INTO {HISTORY_TABLE} (
    resource_id, resource_type, version, last_updated, deleted, content, content_hash,
    provenance_id
)
SELECT id, resource_type, version, last_updated, deleted, content, content_hash, provenance_id
FROM changed
RETURNING resource_id, version
"""  # noqa: S608


class StoreError(Exception):
    """A write the store refuses (e.g. an id that belongs to another type)."""


@dataclass(frozen=True)
class Source:
    """The identifier a record has at its source: system + value, e.g.
    ("urn:hagukumi:municipality:102016:infant-checkup", "A123|3-4m|2025-06-01")."""

    system: str
    value: str


@dataclass
class Staged:
    id: uuid.UUID
    resource_type: str
    content: dict[str, Any]
    content_json: str
    content_hash: str
    source: Source | None
    fields: indexing.IndexFields


@dataclass
class WriteResult:
    created: list[uuid.UUID] = field(default_factory=list)
    updated: list[uuid.UUID] = field(default_factory=list)
    unchanged: list[uuid.UUID] = field(default_factory=list)
    versions: dict[uuid.UUID, int] = field(default_factory=dict)

    @property
    def written(self) -> int:
        return len(self.created) + len(self.updated)


def source_resource_id(resource_type: str, source: Source) -> uuid.UUID:
    return uuid.uuid5(SOURCE_NAMESPACE, f"{resource_type}|{source.system}|{source.value}")


def canonical_content(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource as stored: without id and the server-owned meta fields."""
    content = {k: v for k, v in resource.items() if k != "id"}
    meta = content.get("meta")
    if isinstance(meta, dict):
        kept = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
        if kept:
            content["meta"] = kept
        else:
            del content["meta"]
    return content


def canonical_json(content: dict[str, Any]) -> bytes:
    return orjson.dumps(content, option=orjson.OPT_SORT_KEYS)


def content_hash(content: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(content)).hexdigest()


def stage(
    resource: dict[str, Any],
    *,
    source: Source | None = None,
    resource_id: uuid.UUID | None = None,
) -> Staged:
    """Prepare one resource for writing: id, canonical JSON, hash, index."""
    resource_type = resource.get("resourceType")
    if resource_type not in indexing.SUPPORTED_TYPES:
        raise StoreError(f"unsupported resource type {resource_type!r}")
    if resource_id is None:
        if source is not None:
            resource_id = source_resource_id(resource_type, source)
        elif resource.get("id"):
            resource_id = uuid.UUID(str(resource["id"]))
        else:
            resource_id = uuid.uuid4()
    content = canonical_content(resource)
    raw = canonical_json(content)
    return Staged(
        id=resource_id,
        resource_type=resource_type,
        content=content,
        content_json=raw.decode(),
        content_hash=hashlib.sha256(raw).hexdigest(),
        source=source,
        fields=indexing.index(content, resource_id=resource_id),
    )


def _pg_array(values: Sequence[object]) -> str:
    parts = []
    for value in values:
        text = str(value).replace("\\", "\\\\").replace('"', '\\"')
        parts.append(f'"{text}"')
    return "{" + ",".join(parts) + "}"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _row(item: Staged) -> list[object]:
    f = item.fields
    return [
        str(item.id),
        item.resource_type,
        item.content_json,
        item.content_hash,
        item.source.system if item.source else "",
        item.source.value if item.source else "",
        _pg_array(f.compartments),
        _pg_array(f.tokens),
        _pg_array(f.refs),
        f.status,
        f.category,
        f.sensitivity,
        _iso(f.date_start),
        _iso(f.date_end),
        f.date_precision,
        None if f.quantity_value is None else str(f.quantity_value),
        f.quantity_code,
    ]


def _dedupe(items: Iterable[Staged]) -> list[Staged]:
    """Last write wins within one call: one statement may not touch a row twice."""
    by_id: dict[uuid.UUID, Staged] = {}
    for item in items:
        by_id[item.id] = item
    return list(by_id.values())


def _result(items: list[Staged], written: list[tuple[uuid.UUID, int]]) -> WriteResult:
    result = WriteResult()
    versions = dict(written)
    result.versions = versions
    for item in items:
        version = versions.get(item.id)
        if version is None:
            result.unchanged.append(item.id)
        elif version == 1:
            result.created.append(item.id)
        else:
            result.updated.append(item.id)
    return result


def _check_types(items: list[Staged]) -> None:
    """An id may not change type (a PUT of an Observation over a Patient id)."""
    ids = [item.id for item in items]
    clash = (
        Resource.objects.filter(id__in=ids)
        .values_list("id", "resource_type")
    )
    wanted = {item.id: item.resource_type for item in items}
    for resource_id, resource_type in clash:
        if wanted[resource_id] != resource_type:
            raise StoreError(f"{resource_id} is a {resource_type}, not a {wanted[resource_id]}")


def _now(cursor: Any) -> datetime:
    cursor.execute("SELECT now()")
    value: datetime = cursor.fetchone()[0]
    return value


def write_staged(items: Sequence[Staged], *, provenance: Provenance, copy: bool) -> WriteResult:
    """Upsert staged items in one statement (inside the caller's transaction
    or a new one). `copy` chooses COPY into a temp table (large chunks) or
    a VALUES list (a few rows)."""
    unique = _dedupe(items)
    if not unique:
        return WriteResult()
    with transaction.atomic(), connection.cursor() as cursor:
        _check_types(unique)
        params: dict[str, Any] = {"now": _now(cursor), "provenance": provenance.pk}
        if copy:
            cursor.execute(
                "CREATE TEMP TABLE IF NOT EXISTS phr_stage ("
                + ", ".join(f"{c} {t}" for c, t in zip(STAGE_COLUMNS, STAGE_TYPES, strict=True))
                + ") ON COMMIT DELETE ROWS"
            )
            cursor.execute("TRUNCATE phr_stage")
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            for item in unique:
                writer.writerow(_row(item))
            buffer.seek(0)
            cursor.copy_expert(
                f"COPY phr_stage ({', '.join(STAGE_COLUMNS)}) FROM STDIN WITH (FORMAT csv, "
                f"FORCE_NOT_NULL ({', '.join(_TEXT_COLUMNS)}))",
                buffer,
            )
            sql = _UPSERT_SQL.replace("{source}", "phr_stage AS s")
        else:
            rows = []
            for n, item in enumerate(unique):
                names = []
                for column, kind, value in zip(STAGE_COLUMNS, STAGE_TYPES, _row(item), strict=True):
                    params[f"{column}_{n}"] = value
                    names.append(f"%({column}_{n})s::{kind}")
                rows.append("(" + ", ".join(names) + ")")
            sql = _UPSERT_SQL.replace(
                "{source}", f"(VALUES {', '.join(rows)}) AS s({', '.join(STAGE_COLUMNS)})"
            )
        cursor.execute(sql, params)
        written = [(uuid.UUID(str(rid)), version) for rid, version in cursor.fetchall()]
    return _result(unique, written)


def record_write(
    resource: dict[str, Any],
    *,
    provenance: Provenance,
    source: Source | None = None,
    resource_id: uuid.UUID | None = None,
) -> tuple[uuid.UUID, int, bool]:
    """Write one resource; return (id, current version, changed)."""
    item = stage(resource, source=source, resource_id=resource_id)
    result = write_staged([item], provenance=provenance, copy=False)
    if item.id in result.versions:
        return item.id, result.versions[item.id], True
    version = Resource.objects.filter(id=item.id).values_list("version", flat=True).get()
    return item.id, version, False


BULK_CHUNK = 5000


def records_write_bulk(
    items: Iterable[tuple[dict[str, Any], Source | None]],
    *,
    provenance: Provenance,
    chunk_size: int = BULK_CHUNK,
) -> WriteResult:
    """Write many resources through COPY + upsert, chunk by chunk, all in
    the caller's transaction (a job commits per chunk by calling this once
    per chunk)."""
    total = WriteResult()
    chunk: list[Staged] = []

    def flush() -> None:
        result = write_staged(chunk, provenance=provenance, copy=True)
        total.created += result.created
        total.updated += result.updated
        total.unchanged += result.unchanged
        total.versions.update(result.versions)
        chunk.clear()

    with transaction.atomic():
        for resource, source in items:
            chunk.append(stage(resource, source=source))
            if len(chunk) >= chunk_size:
                flush()
        if chunk:
            flush()
    return total


def record_delete(
    *, resource_type: str, resource_id: uuid.UUID, provenance: Provenance
) -> int | None:
    """Write a tombstone version; return its version, or None when there is
    nothing (left) to delete. Deleting twice changes nothing."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH gone AS (
                UPDATE {RESOURCE_TABLE} SET deleted = true, version = version + 1,
                       last_updated = now(), provenance_id = %s
                WHERE id = %s AND resource_type = %s AND NOT deleted
                RETURNING id, resource_type, version, last_updated, content, content_hash
            )
            INSERT INTO {HISTORY_TABLE} (resource_id, resource_type, version, last_updated,
                                         deleted, content, content_hash, provenance_id)
            SELECT id, resource_type, version, last_updated, true, content, content_hash, %s
            FROM gone RETURNING version
            """,  # noqa: S608 (table names are module constants)
            [provenance.pk, resource_id, resource_type, provenance.pk],
        )
        row = cursor.fetchone()
    return None if row is None else int(row[0])


def records_purge(*, patient_id: uuid.UUID) -> int:
    """Remove every record in a patient's compartment, history included.

    Only for a lawful deletion; the caller (phr.services.patient_purge)
    checks authority and writes the audit row. Returns the number of
    resources removed.
    """
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {RESOURCE_TABLE} WHERE compartments && ARRAY[%s]::uuid[] "  # noqa: S608
            "RETURNING id",
            [patient_id],
        )
        ids = [row[0] for row in cursor.fetchall()]
        if ids:
            cursor.execute(
                f"DELETE FROM {HISTORY_TABLE} WHERE resource_id = ANY(%s::uuid[])",  # noqa: S608
                [ids],
            )
    return len(ids)


def reindex_all(*, batch_size: int = 2000) -> int:
    """Recompute every row's search columns from its JSON (manage.py reindex)."""
    count = 0
    last: uuid.UUID | None = None
    while True:
        query = Resource.objects.order_by("id").only("id", "content")
        if last is not None:
            query = query.filter(id__gt=last)
        rows = list(query[:batch_size])
        if not rows:
            return count
        with transaction.atomic():
            for row in rows:
                fields = indexing.index(row.content, resource_id=row.id)
                Resource.objects.filter(id=row.id).update(**fields.__dict__)
        count += len(rows)
        last = rows[-1].id
