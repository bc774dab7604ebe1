"""The ingest pipeline for files: receive → validate → confirm → import.

A file (an upload, or a page a feed pulled) is stored as received with its
SHA-256 and becomes a Batch row. Two jobs (phr/jobs.py: rows with leases,
resumable) then read it as a stream, chunk by chunk:

- "batch.validate" checks every row and records each bad one (line,
  column, value, reason in Japanese and English) as a BatchError, and asks
  the format what an import would change (new patients, new records,
  updates, deletions, unchanged, rows for the match-review queue). Nothing
  clinical is written.
- "batch.import", after a person confirms (or a feed run, which confirms
  its own pages), writes the valid rows through the format's `apply`, each
  chunk in one transaction with its checkpoint: a killed worker's
  successor resumes after the last committed chunk, and because every
  record's id comes from its source identifier, a chunk done twice or a
  file uploaded twice writes nothing new.

Formats are registered by the apps that bring them (municipal_data,
clinics): a PipelineFormat says how to read the file into rows, how to
plan a chunk and how to apply one. phr knows no format.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import OperationalError, connection, transaction
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from phr.jobs import JobContext, job_enqueue, job_handler, run_partitions
from phr.models import Batch, BatchError, FeedRun, Job, Organization, Provenance, User
from phr.services import provenance_create
from phr.tabular import FileError, Row

logger = logging.getLogger(__name__)

CHUNK_ROWS = 1000
COUNT_KEYS = (
    "rows",
    "valid",
    "invalid",
    "new_patients",
    "created",
    "updated",
    "deleted",
    "unchanged",
    "review",
)

Reader = Callable[[Batch, IO[bytes], int], tuple[Iterator[Row], str]]
PartitionReader = Callable[[Batch, IO[bytes], int, tuple[int, int]], tuple[Iterator[Row], str]]
Planner = Callable[[Batch, list[Row], dict[str, Any]], dict[str, int]]
Applier = Callable[[Batch, list[Row], Provenance], dict[str, int]]


@dataclass(frozen=True)
class PipelineFormat:
    """How to read, plan and apply one kind of file.

    - read(batch, raw, skip) -> (rows, detected encoding): a stream of
      Rows (bad cells already on row.errors), `skip` data rows passed over;
      raises tabular.FileError when the file as a whole is unreadable.
    - plan(batch, valid_rows, state) -> counts: what applying them would
      do, without writing; may add errors to rows (they then count as
      invalid). `state` is carried from chunk to chunk (JSON).
    - apply(batch, valid_rows, provenance) -> counts: write them, in the
      caller's transaction.
    - read_partition(batch, raw, skip, (n, count)) -> as read, only the
      rows of partition n (all rows of a person in one partition, in file
      order; `skip` counts that partition's rows). A format that has it is
      imported by IMPORT_PARTITIONS processes at once.
    """

    key: str
    label_ja: str
    label_en: str
    read: Reader
    plan: Planner
    apply: Applier
    organization_kinds: tuple[str, ...] = (Organization.Kind.MUNICIPALITY,)
    read_partition: PartitionReader | None = None


FORMATS: dict[str, PipelineFormat] = {}


def format_register(fmt: PipelineFormat) -> PipelineFormat:
    FORMATS[fmt.key] = fmt
    return fmt


def format_get(key: str) -> PipelineFormat:
    try:
        return FORMATS[key]
    except KeyError:
        raise ValidationError(_("Unknown file format."), code="format") from None


def zero_counts() -> dict[str, int]:
    return dict.fromkeys(COUNT_KEYS, 0)


def add_counts(total: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    for key, value in more.items():
        total[key] = total.get(key, 0) + value
    return total


# --------------------------------------------------------------------------
# Receiving a file
# --------------------------------------------------------------------------


def batch_file_path(batch: Batch) -> Path:
    return Path(settings.MEDIA_ROOT) / batch.path


def _store(chunks: Iterable[bytes], relative: str) -> tuple[str, int]:
    target = Path(settings.MEDIA_ROOT) / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    partial = target.with_suffix(target.suffix + ".part")
    with partial.open("wb") as handle:
        for chunk in chunks:
            digest.update(chunk)
            size += len(chunk)
            handle.write(chunk)
    partial.rename(target)
    return digest.hexdigest(), size


def _count_records(path: Path) -> int:
    """Lines after the header: the progress total (a quoted field holding a
    line break makes it an estimate)."""
    newlines = 0
    last = b""
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            newlines += block.count(b"\n")
            last = block[-1:]
    lines = newlines + (1 if last not in (b"\n", b"") else 0)
    return max(lines - 1, 0)


def batch_receive(
    *,
    organization: Organization,
    format_key: str,
    chunks: Iterable[bytes],
    filename: str,
    user: User | None = None,
    encoding: str = Batch.Encoding.AUTO,
    feed_run: FeedRun | None = None,
    validate: bool = True,
) -> Batch:
    """Store the file with its checksum, create the batch, and queue its
    validation (once the row is committed)."""
    fmt = format_get(format_key)
    if organization.kind not in fmt.organization_kinds:
        raise PermissionDenied("This organization does not send this format.")
    if encoding not in Batch.Encoding.values:
        raise ValidationError(_("Unknown encoding."), code="encoding")
    name = Path(filename).name[:200] or "upload"
    relative = f"batches/{organization.pk}/{uuid.uuid4()}{Path(name).suffix[:10]}"
    sha256, size = _store(chunks, relative)
    with transaction.atomic():
        same_as = (
            Batch.objects.filter(
                organization=organization,
                format=format_key,
                sha256=sha256,
                status=Batch.Status.IMPORTED,
            )
            .order_by("-created_at")
            .first()
        )
        batch = Batch.objects.create(
            organization=organization,
            format=format_key,
            filename=name,
            path=relative,
            sha256=sha256,
            size=size,
            encoding=encoding,
            uploaded_by=user,
            feed_run=feed_run,
            same_as=same_as,
        )
        if validate:
            batch.validate_job = job_enqueue(
                kind="batch.validate",
                payload={"batch_id": batch.pk},
                created_by=user,
                organization=organization,
                progress_total=_count_records(batch_file_path(batch)),
            )
            batch.save(update_fields=["validate_job"])
    return batch


def batch_confirm(
    *,
    batch: Batch,
    user: User | None,
    only_valid: bool = False,
    job_options: dict[str, Any] | None = None,
) -> Batch:
    """Start the import of a validated batch. A batch with bad rows is
    imported only when the person chooses to import the valid rows alone.
    `job_options` (chunk_rows, pause_per_chunk) are for benchmarks and the
    crash tests."""
    with transaction.atomic():
        batch = Batch.objects.select_for_update().get(pk=batch.pk)
        if batch.status != Batch.Status.VALIDATED:
            raise ValidationError(
                _("Only a validated batch can be imported (this one is %(status)s).")
                % {"status": batch.get_status_display()},
                code="status",
            )
        if batch.summary.get("invalid") and not only_valid:
            raise ValidationError(
                _(
                    "The file has rows with errors: fix them and upload again, "
                    "or choose to import only the valid rows."
                ),
                code="invalid_rows",
            )
        if not batch.summary.get("valid"):
            raise ValidationError(_("The file has no valid row to import."), code="empty")
        batch.status = Batch.Status.IMPORTING
        batch.only_valid = only_valid
        batch.confirmed_by = user
        batch.confirmed_at = timezone.now()
        batch.import_job = job_enqueue(
            kind="batch.import",
            payload={"batch_id": batch.pk, **(job_options or {})},
            created_by=user,
            organization=batch.organization,
            progress_total=batch.summary.get("rows"),
        )
        batch.save(
            update_fields=["status", "only_valid", "confirmed_by", "confirmed_at", "import_job"]
        )
    return batch


def batch_cancel(*, batch: Batch, user: User | None) -> Batch:
    """Drop a batch that was not imported (e.g. to fix and re-upload)."""
    with transaction.atomic():
        batch = Batch.objects.select_for_update().get(pk=batch.pk)
        if batch.status not in (Batch.Status.VALIDATED, Batch.Status.REJECTED):
            raise ValidationError(_("This batch can no longer be cancelled."), code="status")
        batch.status = Batch.Status.CANCELLED
        batch.finished_at = timezone.now()
        batch.save(update_fields=["status", "finished_at"])
    return batch


# --------------------------------------------------------------------------
# The jobs
# --------------------------------------------------------------------------


def _chunks(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    """The rows in chunks. A chunk makes hundreds of thousands of small,
    acyclic objects (cells, dicts of FHIR resources) that reference
    counting frees; the cyclic garbage collector would scan them again and
    again while they live (a third of the import's CPU), so it is paused
    while a chunk is built and worked on, and its young generations are
    collected between chunks."""
    chunk: list[Row] = []
    enabled = gc.isenabled()
    gc.disable()
    try:
        for row in rows:
            chunk.append(row)
            if len(chunk) >= size:
                yield chunk
                chunk = []
                gc.collect(1)
        if chunk:
            yield chunk
    finally:
        if enabled:
            gc.enable()


def error_rows(batch: Batch, rows: Iterable[Row]) -> list[BatchError]:
    out = []
    for row in rows:
        for error in row.errors:
            out.append(
                BatchError(
                    batch=batch,
                    line=error.line,
                    column=error.column[:100],
                    value=error.value[:120],
                    code=error.code[:32],
                    message_ja=error.ja[:300],
                    message_en=error.en[:300],
                )
            )
    return out


def _reject(batch: Batch, error: FileError) -> None:
    batch.status = Batch.Status.REJECTED
    batch.file_error = {"code": error.code, "ja": error.ja, "en": error.en}
    batch.finished_at = timezone.now()
    batch.save(update_fields=["status", "file_error", "finished_at"])


def _open(batch: Batch, fmt: PipelineFormat, skip: int) -> tuple[IO[bytes], Iterator[Row], str]:
    handle: IO[bytes] = batch_file_path(batch).open("rb")
    try:
        rows, encoding = fmt.read(batch, handle, skip)
    except BaseException:
        handle.close()
        raise
    return handle, rows, encoding


def batch_failed(job: Job) -> None:
    """A batch job that failed for good marks its batch failed."""
    batch_id = (job.payload or {}).get("batch_id")
    if batch_id:
        Batch.objects.filter(pk=batch_id).exclude(status=Batch.Status.IMPORTED).update(
            status=Batch.Status.FAILED, finished_at=timezone.now()
        )


@job_handler("batch.validate", on_failure=batch_failed)
def batch_validate(ctx: JobContext) -> dict[str, Any]:
    batch = Batch.objects.get(pk=ctx.payload["batch_id"])
    fmt = format_get(batch.format)
    done = int(ctx.cursor.get("rows", 0))
    counts = dict(ctx.cursor.get("counts") or zero_counts())
    state: dict[str, Any] = dict(ctx.cursor.get("state") or {})
    if batch.status == Batch.Status.RECEIVED:
        Batch.objects.filter(pk=batch.pk).update(status=Batch.Status.VALIDATING)
    try:
        handle, rows, encoding = _open(batch, fmt, done)
    except FileError as error:
        with transaction.atomic():
            _reject(batch, error)
        return {"rejected": error.code}
    with handle:
        try:
            for chunk in _chunks(rows, CHUNK_ROWS):
                valid = [row for row in chunk if row.ok]
                planned = fmt.plan(batch, valid, state) if valid else {}
                invalid = sum(1 for row in chunk if not row.ok)
                add_counts(counts, planned)
                add_counts(
                    counts, {"rows": len(chunk), "valid": len(chunk) - invalid, "invalid": invalid}
                )
                done += len(chunk)
                with transaction.atomic():
                    BatchError.objects.bulk_create(error_rows(batch, chunk))
                    ctx.checkpoint(
                        cursor={"rows": done, "counts": counts, "state": state},
                        progress_done=done,
                    )
        except FileError as error:
            with transaction.atomic():
                _reject(batch, error)
            return {"rejected": error.code}
    with transaction.atomic():
        Batch.objects.filter(pk=batch.pk).update(
            status=Batch.Status.VALIDATED, summary=counts, detected_encoding=encoding
        )
        Job.objects.filter(pk=ctx.job.pk).update(progress_total=done)
    logger.info("batch %s validated: %s", batch.pk, counts)
    return counts


def _provenance(ctx: JobContext, batch: Batch) -> Provenance:
    return provenance_create(
        origin=(
            Provenance.Origin.MUNICIPALITY
            if batch.organization.kind == Organization.Kind.MUNICIPALITY
            else Provenance.Origin.CLINIC
        ),
        user=batch.confirmed_by,
        organization=batch.organization,
        source=f"batch:{batch.pk}:{batch.sha256[:12]}",
        job_id=ctx.job.pk,
    )


def _imported(batch: Batch, counts: dict[str, int]) -> dict[str, int]:
    with transaction.atomic():
        Batch.objects.filter(pk=batch.pk).update(
            status=Batch.Status.IMPORTED, result=counts, finished_at=timezone.now()
        )
    logger.info("batch %s imported: %s", batch.pk, counts)
    return counts


def _partition_count(ctx: JobContext, fmt: PipelineFormat) -> int:
    """How many processes import this job: as many as when it started (its
    cursor says), else IMPORT_PARTITIONS when the format can be read by
    partition. One when the job began in one process, or when the caller
    holds a transaction open (the processes could not see its rows: a test
    in a transaction)."""
    if "partitions" in ctx.cursor:
        return int(ctx.cursor["partition_count"])
    if fmt.read_partition is None or "rows" in ctx.cursor or connection.in_atomic_block:
        return 1
    return int(settings.IMPORT_PARTITIONS)


@job_handler("batch.import", on_failure=batch_failed)
def batch_import(ctx: JobContext) -> dict[str, Any]:
    batch = Batch.objects.select_related("organization").get(pk=ctx.payload["batch_id"])
    fmt = format_get(batch.format)
    count = _partition_count(ctx, fmt)
    if count > 1:
        return _import_partitioned(ctx, batch, fmt, count)
    done = int(ctx.cursor.get("rows", 0))
    counts = dict(ctx.cursor.get("counts") or zero_counts())
    # Test hook: slow each chunk so a test can kill the worker mid-way.
    pause = float(ctx.payload.get("pause_per_chunk", 0))
    chunk_rows = int(ctx.payload.get("chunk_rows", CHUNK_ROWS))
    provenance_id = ctx.cursor.get("provenance_id")
    if provenance_id is None:
        provenance = _provenance(ctx, batch)
    else:
        provenance = Provenance.objects.get(pk=provenance_id)
    handle, rows, _encoding = _open(batch, fmt, done)
    with handle:
        for chunk in _chunks(rows, chunk_rows):
            valid = [row for row in chunk if row.ok]
            with transaction.atomic():
                applied = fmt.apply(batch, valid, provenance) if valid else {}
                add_counts(counts, applied)
                add_counts(
                    counts,
                    {"rows": len(chunk), "valid": len(valid), "invalid": len(chunk) - len(valid)},
                )
                done += len(chunk)
                ctx.checkpoint(
                    cursor={"rows": done, "counts": counts, "provenance_id": provenance.pk},
                    progress_done=done,
                )
            if pause:
                time.sleep(pause)
    return _imported(batch, counts)


def _import_partitioned(
    ctx: JobContext, batch: Batch, fmt: PipelineFormat, count: int
) -> dict[str, Any]:
    """The import in `count` processes at once, each reading the whole file
    but parsing and writing only the rows of its partition (by person:
    phr.tabular.partition_of), so Python (parsing, mapping) and PostgreSQL
    (indexes, COPY) work at the same time. Each partition commits its
    chunks with its own cursor entry (cursor["partitions"][n]: rows done,
    counts) under the job's lease and resumes after its own last chunk; the
    job's progress and counts are the sum. A failed partition fails the job
    with its error (run_partitions stops the others)."""
    if "partitions" not in ctx.cursor:
        # The provenance and the partition count are fixed once, before any
        # partition starts, so that every process and every resumption uses
        # the same.
        with transaction.atomic():
            provenance_id = ctx.cursor.get("provenance_id") or _provenance(ctx, batch).pk
            ctx.checkpoint(
                cursor={"provenance_id": provenance_id, "partition_count": count, "partitions": {}}
            )
    starts: dict[str, dict[str, Any]] = dict(ctx.cursor["partitions"])
    provenance = Provenance.objects.get(pk=ctx.cursor["provenance_id"])
    pause = float(ctx.payload.get("pause_per_chunk", 0))
    chunk_rows = int(ctx.payload.get("chunk_rows", CHUNK_ROWS))
    read_partition = fmt.read_partition
    assert read_partition is not None

    def work(part: int) -> None:
        start = starts.get(str(part), {})
        done = int(start.get("rows", 0))
        counts = dict(start.get("counts") or zero_counts())
        handle = batch_file_path(batch).open("rb")
        with handle:
            rows, _encoding = read_partition(batch, handle, done, (part, count))
            for chunk in _chunks(rows, chunk_rows):
                valid = [row for row in chunk if row.ok]
                counts = _apply_partition_chunk(
                    ctx, fmt, batch, provenance, part, chunk, valid, done, counts
                )
                done += len(chunk)
                if pause:
                    time.sleep(pause)

    run_partitions(count, work)
    ctx.job.refresh_from_db()
    counts = zero_counts()
    for part in ctx.job.cursor.get("partitions", {}).values():
        add_counts(counts, part["counts"])
    return _imported(batch, counts)


DEADLOCK_RETRIES = 5


def _apply_partition_chunk(
    ctx: JobContext,
    fmt: PipelineFormat,
    batch: Batch,
    provenance: Provenance,
    part: int,
    chunk: list[Row],
    valid: list[Row],
    done: int,
    counts: dict[str, int],
) -> dict[str, int]:
    """Write one chunk of a partition with its cursor entry in one
    transaction; return the partition's counts after it. Partitions share
    mothers (created once under the importer's advisory locks, taken in
    sorted order) and the job row; should PostgreSQL still report a
    deadlock, the chunk rolled back as a whole and is done again."""
    for attempt in range(1, DEADLOCK_RETRIES + 1):
        try:
            with transaction.atomic():
                after = dict(counts)
                add_counts(after, fmt.apply(batch, valid, provenance) if valid else {})
                add_counts(
                    after,
                    {"rows": len(chunk), "valid": len(valid), "invalid": len(chunk) - len(valid)},
                )
                ctx.checkpoint_part(
                    part=str(part),
                    value={"rows": done + len(chunk), "counts": after},
                    progress_add=len(chunk),
                )
            return after
        except OperationalError as exc:
            if getattr(exc.__cause__, "pgcode", None) != "40P01" or attempt == DEADLOCK_RETRIES:
                raise
            logger.warning("batch %s partition %s: deadlock, chunk retried", batch.pk, part)
    raise AssertionError("unreachable")
