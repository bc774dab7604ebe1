"""The ingest pipeline's first format: FHIR NDJSON files.

A job of kind "fhir.ndjson" reads a stored file line by line, validates
each resource with fhir.resources (outside input is validated at the
boundary), and writes valid ones through the idempotent bulk store in
chunks. Each chunk commits with its checkpoint, so a crash resumes at the
next chunk, and a re-run of the same file writes nothing new. Bad lines
are reported (line, element path, reason) and skipped; nothing half-written.

The municipal, clinic and vitals issues add their own formats on this
pipeline.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
from django.conf import settings
from django.db import transaction

from phr import store
from phr.fhir import FhirValidationError, validate_resource
from phr.jobs import JobContext, job_handler
from phr.models import Organization, Provenance

CHUNK_LINES = 1000
MAX_REPORTED_ERRORS = 1000


def source_for(resource: dict[str, Any], default_system: str, line: int) -> store.Source:
    """The record's identity at its source: its first identifier, else its
    id, else the file's system + line number."""
    identifiers = resource.get("identifier") or []
    if identifiers and identifiers[0].get("system") and identifiers[0].get("value"):
        return store.Source(identifiers[0]["system"], identifiers[0]["value"])
    if resource.get("id"):
        return store.Source(default_system, str(resource["id"]))
    return store.Source(default_system, f"line:{line}")


@job_handler("fhir.ndjson")
def import_ndjson(ctx: JobContext) -> dict[str, Any]:
    payload = ctx.payload
    path = Path(settings.MEDIA_ROOT) / payload["path"]
    system = payload["source_system"]
    start_line = int(ctx.cursor.get("line", 0))
    counts = dict(ctx.cursor.get("counts", {"created": 0, "updated": 0, "unchanged": 0}))
    errors: list[dict[str, Any]] = list(ctx.cursor.get("errors", []))
    # Test hook: slow each chunk down so a test can kill the worker mid-way.
    pause = float(payload.get("pause_per_chunk", 0))

    organization = (
        Organization.objects.filter(pk=payload["organization_id"]).first()
        if payload.get("organization_id")
        else None
    )
    with path.open("rb") as handle:
        lines = handle.readlines()
    total = len(lines)
    line_no = start_line
    while line_no < total:
        chunk = lines[line_no : line_no + CHUNK_LINES]
        items: list[tuple[dict[str, Any], store.Source | None]] = []
        for offset, raw in enumerate(chunk):
            number = line_no + offset + 1
            if not raw.strip():
                continue
            try:
                resource = orjson.loads(raw)
                validate_resource(resource)
            except orjson.JSONDecodeError as exc:
                errors.append({"line": number, "path": "", "reason": f"not JSON: {exc}"})
                continue
            except FhirValidationError as exc:
                for path_, reason in exc.issues:
                    errors.append({"line": number, "path": path_, "reason": reason})
                continue
            items.append((resource, source_for(resource, system, number)))
        with transaction.atomic():
            provenance = Provenance.objects.create(
                origin=payload.get("origin", Provenance.Origin.SYSTEM),
                agent_org=organization,
                job=ctx.job,
                source=f"job:{ctx.job.pk} lines {line_no + 1}-{line_no + len(chunk)}",
            )
            result = store.records_write_bulk(items, provenance=provenance)
            counts["created"] += len(result.created)
            counts["updated"] += len(result.updated)
            counts["unchanged"] += len(result.unchanged)
            line_no += len(chunk)
            ctx.checkpoint(
                cursor={"line": line_no, "counts": counts, "errors": errors[:MAX_REPORTED_ERRORS]},
                progress_done=line_no,
                progress_total=total,
            )
        if pause:
            time.sleep(pause)
    return {**counts, "errors": errors[:MAX_REPORTED_ERRORS], "error_count": len(errors)}
