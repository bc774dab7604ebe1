"""The record store's service API: every write of clinical data goes here.

- `record_write` / `records_write_bulk`: idempotent upserts. A resource
  from outside carries a source identifier (system + value); its id is
  derived from it (uuid5), so writing the same source again lands on the
  same row. A new version is written only when the canonical content
  changed (sorted keys, no whitespace, no meta.versionId/lastUpdated).
  Concurrent writers of one key end with one record: INSERT … ON CONFLICT,
  or a unique violation that sends the chunk down that path.
- The bulk path (`write_staged(copy=True)`) first reads the chunk's ids
  that already exist (id, type, hash): unchanged rows are skipped before
  anything is sent (so a replay only reads), ids that are new are COPYed
  straight into the resource and history tables, and changed rows are
  COPYed into a temporary staging table and upserted from it in one
  statement that also writes history. The single path runs that statement
  over a VALUES list.
- `record_delete` writes a tombstone version; `records_purge` removes a
  patient's records and their history for a lawful deletion (audited).

Reads are in phr/selectors.py; who may read is decided by sharing/access.py.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from django.db import IntegrityError, connection, transaction

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
_INDEX_COLUMNS = STAGE_COLUMNS[6:]
# The columns a new resource row gets besides the staged ones, in COPY order.
_NEW_ROW_COLUMNS = (*STAGE_COLUMNS, "version", "last_updated", "deleted", "provenance_id")
_HISTORY_COLUMNS = (
    "resource_id",
    "resource_type",
    "version",
    "last_updated",
    "deleted",
    "content",
    "content_hash",
    "provenance_id",
)

# One statement: upsert the current rows, and write a history row for each
# row inserted or changed. Rows whose content did not change are untouched
# (the WHERE on DO UPDATE), so replaying a batch writes nothing. ORDER BY
# makes concurrent writers lock rows in the same order (no deadlock within
# one statement). lastUpdated only moves forward for one resource, even when
# the writer's transaction started before the previous version's.
# The identifiers interpolated here are module constants, never input.
_UPSERT_SQL = f"""
WITH changed AS (
    INSERT INTO {RESOURCE_TABLE} AS r (
        {", ".join(STAGE_COLUMNS)}, version, last_updated, deleted, provenance_id
    )
    SELECT {", ".join(f"s.{c}" for c in STAGE_COLUMNS)}, 1, now(), false, %(provenance)s
    FROM {{source}}
    ORDER BY s.id
    ON CONFLICT (id) DO UPDATE SET
        version = r.version + 1,
        last_updated = GREATEST(EXCLUDED.last_updated, r.last_updated + interval '1 microsecond'),
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

_STAGE_TABLE = "phr_stage"
_CREATE_STAGE_SQL = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE_TABLE} ("
    + ", ".join(f"{c} {t}" for c, t in zip(STAGE_COLUMNS, STAGE_TYPES, strict=True))
    + ") ON COMMIT DELETE ROWS"
)
_COPY_STAGE_SQL = f"COPY {_STAGE_TABLE} ({', '.join(STAGE_COLUMNS)}) FROM STDIN"
_COPY_RESOURCE_SQL = f"COPY {RESOURCE_TABLE} ({', '.join(_NEW_ROW_COLUMNS)}) FROM STDIN"
# History of rows _insert_fresh just wrote, from the rows themselves.
_HISTORY_OF_NEW_SQL = f"""
INSERT INTO {HISTORY_TABLE} ({", ".join(_HISTORY_COLUMNS)})
SELECT {", ".join(("id", *_HISTORY_COLUMNS[1:]))}
FROM {RESOURCE_TABLE} WHERE id = ANY(%s::uuid[])
"""  # noqa: S608
_EXISTING_SQL = (
    f"SELECT id::text, resource_type, content_hash, deleted FROM {RESOURCE_TABLE} "  # noqa: S608
    "WHERE id = ANY(%s::uuid[])"
)


class StoreError(Exception):
    """A write the store refuses (e.g. an id that belongs to another type)."""


@dataclass(frozen=True)
class Source:
    """The identifier a record has at its source: system + value, e.g.
    ("urn:hagukumi:municipality:102016:infant-checkup", "A123|3-4m|2025-06-01")."""

    system: str
    value: str


class Staged:
    """One resource ready to write: its id, canonical JSON and hash.

    The JSON is serialized here, so later changes to the caller's dicts (a
    mapper reusing one) cannot reach what is written; `content` is only a
    shallow copy of the caller's resource, kept for convenience. The search columns
    (`fields`) are derived from that JSON on first use: a bulk write needs
    them only for rows it sends, and computes them while the server is
    busy with the rows before (see _LineStream); a replay never indexes.
    """

    __slots__ = ("_fields", "content", "content_hash", "content_json", "id", "id_text",
                 "resource_type", "source")

    def __init__(
        self,
        *,
        id: uuid.UUID,
        resource_type: str,
        content: dict[str, Any],
        content_json: str,
        content_hash: str,
        source: Source | None,
    ) -> None:
        self.id = id
        self.id_text = str(id)
        self.resource_type = resource_type
        self.content = content
        self.content_json = content_json
        self.content_hash = content_hash
        self.source = source
        self._fields: indexing.IndexFields | None = None

    @property
    def fields(self) -> indexing.IndexFields:
        if self._fields is None:
            self._fields = indexing.index(orjson.loads(self.content_json), resource_id=self.id)
        return self._fields


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
    fields: indexing.IndexFields | None = None,
) -> Staged:
    """Prepare one resource for writing: id, canonical JSON and hash (the
    search columns follow on demand, see Staged, unless the caller indexed
    this very resource already and passes `fields`)."""
    resource_type = resource.get("resourceType")
    if resource_type not in indexing.SUPPORTED_TYPES:
        raise StoreError(f"unsupported resource type {resource_type!r}")
    if resource_id is None:
        if source is not None:
            resource_id = source_resource_id(resource_type, source)
        elif resource.get("id"):
            try:
                resource_id = uuid.UUID(str(resource["id"]))
            except ValueError:
                raise StoreError(f"resource id {resource['id']!r} is not a UUID") from None
        else:
            resource_id = uuid.uuid4()
    content = canonical_content(resource)
    raw = canonical_json(content)
    staged = Staged(
        id=resource_id,
        resource_type=resource_type,
        content=content,
        content_json=raw.decode(),
        content_hash=hashlib.sha256(raw).hexdigest(),
        source=source,
    )
    staged._fields = fields
    return staged


# --------------------------------------------------------------------------
# Rows as parameters (the VALUES path) and as COPY text (the bulk path)
# --------------------------------------------------------------------------


def _pg_array(values: Sequence[object]) -> str:
    """A PostgreSQL array literal with every element quoted."""
    if not values:
        return "{}"
    text = '","'.join(map(str, values))
    # The separators hold 2 * (n - 1) quotes; any more come from the values.
    if "\\" in text or text.count('"') != 2 * (len(values) - 1):
        parts = [str(v).replace("\\", "\\\\").replace('"', '\\"') for v in values]
        text = '","'.join(parts)
    return '{"' + text + '"}'


def _id_array(items: Iterable[Staged]) -> str:
    """A uuid[] literal of the items' ids: one short parameter, not one per id."""
    return "{" + ",".join([item.id_text for item in items]) + "}"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _row(item: Staged) -> list[object]:
    f = item.fields
    return [
        item.id_text,
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


# COPY's text format: backslash, tab, newline and carriage return are
# escaped; \N is NULL. Canonical JSON (orjson) never contains a raw tab or
# newline (JSON escapes control characters), so only its backslashes need
# doubling.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_NULL = "\\N"


def _copy_text(value: str) -> str:
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_COPY_ESCAPES)
    return value


def _copy_json(item: Staged) -> str:
    content = item.content_json
    return content.replace("\\", "\\\\") if "\\" in content else content


def _copy_datetime(value: datetime | None) -> str:
    return _NULL if value is None else value.isoformat()


def _copy_decimal(value: Decimal | None) -> str:
    return _NULL if value is None else str(value)


def _index_text(fields: indexing.IndexFields) -> str:
    """The search columns (_INDEX_COLUMNS) as tab-separated COPY text."""
    return "\t".join(
        (
            _pg_array(fields.compartments),
            _copy_text(_pg_array(fields.tokens)),
            _copy_text(_pg_array(fields.refs)),
            _copy_text(fields.status),
            _copy_text(fields.category),
            _copy_text(fields.sensitivity),
            _copy_datetime(fields.date_start),
            _copy_datetime(fields.date_end),
            fields.date_precision,
            _copy_decimal(fields.quantity_value),
            _copy_text(fields.quantity_code),
        )
    )


def _stage_line(item: Staged) -> str:
    """The staged columns (STAGE_COLUMNS) of one row as a line of COPY text."""
    source = item.source
    return "\t".join(
        (
            item.id_text,
            item.resource_type,
            _copy_json(item),
            item.content_hash,
            _copy_text(source.system) if source else "",
            _copy_text(source.value) if source else "",
            _index_text(item.fields),
        )
    )


class _LineStream:
    """A file-like view of COPY lines, formatted as the server asks for
    them: the server (another process, so another core) parses and indexes
    one block while Python formats the next, instead of waiting for the
    whole chunk. An error while formatting is kept and re-raised by _copy
    (psycopg2 would turn it into a bare "COPY failed")."""

    def __init__(self, lines: Iterable[str]) -> None:
        self._lines = iter(lines)
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> str:
        parts: list[str] = []
        length = 0
        try:
            for line in self._lines:
                parts.append(line)
                length += len(line) + 1
                if 0 < size <= length:
                    break
        except BaseException as exc:
            self.error = exc
            raise
        if not parts:
            return ""
        parts.append("")
        return "\n".join(parts)


# Small enough that the server starts early and both sides stay busy, large
# enough that the per-block overhead does not count.
_COPY_BLOCK = 1 << 16


def _copy(cursor: Any, sql: str, lines: Iterable[str]) -> None:
    stream = _LineStream(lines)
    try:
        # psycopg2's copy_expert is not wrapped by Django: convert its
        # errors (a unique violation above all) into django.db ones.
        with connection.wrap_database_errors:
            # size positionally: Django's debug cursor (DEBUG=1) takes no keywords.
            cursor.copy_expert(sql, stream, _COPY_BLOCK)
    except Exception:
        if stream.error is not None:
            raise stream.error from None
        raise


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


def _dedupe(items: Iterable[Staged]) -> list[Staged]:
    """Last write wins within one call: one statement may not touch a row twice."""
    by_id: dict[str, Staged] = {}
    for item in items:
        by_id[item.id_text] = item
    return list(by_id.values())


def _result(items: list[Staged], written: dict[uuid.UUID, int]) -> WriteResult:
    result = WriteResult(versions=written)
    for item in items:
        version = written.get(item.id)
        if version is None:
            result.unchanged.append(item.id)
        elif version == 1:
            result.created.append(item.id)
        else:
            result.updated.append(item.id)
    return result


def _refuse_type_change(items: Iterable[Staged], existing: dict[str, str]) -> None:
    """An id may not change type (a PUT of an Observation over a Patient id)."""
    for item in items:
        resource_type = existing.get(item.id_text)
        if resource_type is not None and resource_type != item.resource_type:
            raise StoreError(f"{item.id} is a {resource_type}, not a {item.resource_type}")


def _existing(cursor: Any, items: Sequence[Staged]) -> dict[str, tuple[str, str, bool]]:
    """(type, hash, deleted) of the items' ids that are stored, by id text."""
    cursor.execute(_EXISTING_SQL, [_id_array(items)])
    return {rid: (rtype, rhash, deleted) for rid, rtype, rhash, deleted in cursor.fetchall()}


def _check_not_written(
    cursor: Any, items: Sequence[Staged], written: dict[uuid.UUID, int]
) -> None:
    """Rows the upsert left alone are unchanged, or belong to another type
    (the upsert's WHERE skips those; a concurrent writer may have created
    one after we looked). Only runs when the upsert skipped something."""
    skipped = [item for item in items if item.id not in written]
    if skipped:
        existing = _existing(cursor, skipped)
        _refuse_type_change(skipped, {rid: row[0] for rid, row in existing.items()})


def _upsert_values(
    cursor: Any, items: Sequence[Staged], provenance_id: int
) -> dict[uuid.UUID, int]:
    params: dict[str, Any] = {"provenance": provenance_id}
    rows = []
    for n, item in enumerate(items):
        names = []
        for column, kind, value in zip(STAGE_COLUMNS, STAGE_TYPES, _row(item), strict=True):
            params[f"{column}_{n}"] = value
            names.append(f"%({column}_{n})s::{kind}")
        rows.append("(" + ", ".join(names) + ")")
    sql = _UPSERT_SQL.replace(
        "{source}", f"(VALUES {', '.join(rows)}) AS s({', '.join(STAGE_COLUMNS)})"
    )
    cursor.execute(sql, params)
    return dict(cursor.fetchall())


def _upsert_staged(
    cursor: Any, items: Sequence[Staged], provenance_id: int
) -> dict[uuid.UUID, int]:
    cursor.execute(_CREATE_STAGE_SQL)
    # ON COMMIT DELETE ROWS empties it at commit; a caller's transaction may
    # run several chunks, so empty it here too.
    cursor.execute(f"TRUNCATE {_STAGE_TABLE}")
    _copy(cursor, _COPY_STAGE_SQL, map(_stage_line, items))
    cursor.execute(
        _UPSERT_SQL.replace("{source}", f"{_STAGE_TABLE} AS s"), {"provenance": provenance_id}
    )
    return dict(cursor.fetchall())


def _insert_fresh(
    cursor: Any, items: Sequence[Staged], provenance_id: int
) -> dict[uuid.UUID, int] | None:
    """COPY rows whose ids did not exist straight into the resource table
    as version 1, and copy them into history. Returns None, having written
    nothing, when a concurrent writer created one of the ids meanwhile
    (unique violation): the caller then upserts them instead.

    Rows go in id order so that two writers of overlapping new ids wait for
    each other instead of deadlocking. History is filled from the rows just
    written (INSERT … SELECT), so the JSON crosses the wire and is parsed
    once.
    """
    cursor.execute("SELECT now()")
    tail = f"\t1\t{cursor.fetchone()[0].isoformat()}\tf\t{provenance_id}"
    ordered = sorted(items, key=_id_text)
    try:
        with transaction.atomic():
            _copy(cursor, _COPY_RESOURCE_SQL, (_stage_line(item) + tail for item in ordered))
            cursor.execute(_HISTORY_OF_NEW_SQL, [_id_array(ordered)])
    except IntegrityError:
        return None
    return dict.fromkeys([item.id for item in ordered], 1)


def _id_text(item: Staged) -> str:
    # The text form sorts like PostgreSQL's uuid order (fixed-width hex).
    return item.id_text


def write_staged(items: Sequence[Staged], *, provenance: Provenance, copy: bool) -> WriteResult:
    """Upsert staged items (inside the caller's transaction or a new one).

    `copy` chooses the bulk path (large chunks: read what exists, COPY the
    new rows, COPY + upsert the changed ones) or one upsert over a VALUES
    list (a few rows).
    """
    unique = _dedupe(items)
    if not unique:
        return WriteResult()
    provenance_id = provenance.pk
    with transaction.atomic(), connection.cursor() as cursor:
        if not copy:
            written = _upsert_values(cursor, unique, provenance_id)
            _check_not_written(cursor, unique, written)
            return _result(unique, written)

        existing = _existing(cursor, unique)
        _refuse_type_change(unique, {rid: row[0] for rid, row in existing.items()})
        fresh: list[Staged] = []
        changed: list[Staged] = []
        for item in unique:
            row = existing.get(item.id_text)
            if row is None:
                fresh.append(item)
            elif row[1] != item.content_hash or row[2]:
                changed.append(item)
            # else: the same content is stored already; nothing to send.

        written = {}
        if fresh:
            inserted = _insert_fresh(cursor, fresh, provenance_id)
            if inserted is None:
                changed.extend(fresh)
            else:
                written.update(inserted)
        if changed:
            upserted = _upsert_staged(cursor, changed, provenance_id)
            _check_not_written(cursor, changed, upserted)
            written.update(upserted)
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
    """Write many resources through COPY (+ upsert), chunk by chunk, all in
    the caller's transaction (a job commits per chunk by calling this once
    per chunk).

    Several chunks in one transaction hold their row locks to the end:
    two such callers writing overlapping ids in different orders can
    deadlock (PostgreSQL then aborts one). Jobs commit per chunk.
    """
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
                       last_updated = GREATEST(now(), last_updated + interval '1 microsecond'),
                       provenance_id = %s
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


REINDEX_BATCH = 5000
_REINDEX_TABLE = "phr_reindex"
_REINDEX_COLUMNS = ("id", *_INDEX_COLUMNS)
_REINDEX_TYPES = ("uuid", *STAGE_TYPES[6:])


def _index_line(resource_id: uuid.UUID, fields: indexing.IndexFields) -> str:
    return f"{resource_id}\t{_index_text(fields)}"


def reindex_all(*, batch_size: int = REINDEX_BATCH) -> int:
    """Recompute every row's search columns from its JSON (manage.py
    reindex); return the number of rows examined.

    Batches in id order, each in its own transaction; a row is rewritten
    only when a column actually differs, so reindexing a sound table writes
    nothing.
    """
    count = 0
    last = uuid.UUID(int=0)
    assignments = ", ".join(f"{c} = x.{c}" for c in _INDEX_COLUMNS)
    differs = " OR ".join(f"r.{c} IS DISTINCT FROM x.{c}" for c in _INDEX_COLUMNS)
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                f"SELECT id, content::text FROM {RESOURCE_TABLE} "  # noqa: S608
                "WHERE id > %s ORDER BY id LIMIT %s",
                [last, batch_size],
            )
            rows = cursor.fetchall()
            if not rows:
                return count
            lines = [
                _index_line(rid, indexing.index(orjson.loads(text), resource_id=rid))
                for rid, text in rows
            ]
            cursor.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {_REINDEX_TABLE} ("
                + ", ".join(
                    f"{c} {t}" for c, t in zip(_REINDEX_COLUMNS, _REINDEX_TYPES, strict=True)
                )
                + ") ON COMMIT DELETE ROWS"
            )
            cursor.execute(f"TRUNCATE {_REINDEX_TABLE}")
            _copy(cursor, f"COPY {_REINDEX_TABLE} FROM STDIN", lines)
            cursor.execute(
                f"UPDATE {RESOURCE_TABLE} AS r SET {assignments} "  # noqa: S608
                f"FROM {_REINDEX_TABLE} AS x WHERE r.id = x.id AND ({differs})"
            )
        count += len(rows)
        last = rows[-1][0]
