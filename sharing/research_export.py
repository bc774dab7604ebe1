"""The research release builder (docs/decisions/0022-research.md).

The job `research.export` loads a ResearchExport, asks sharing.research
whether the export is still allowed, takes the cohort from the one
access-policy point (sharing.access.research_cohort) and builds the
release with build_release(): CSV tables, FHIR NDJSON in the Bulk Data
layout, a release report and a zip of them, in a fresh `<dir>.partial`
folder renamed into place at the end, so nothing half-written is served.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone

logger = logging.getLogger(__name__)

JOB_KIND = "research.export"


class CohortTooSmall(Exception):
    """k cannot be reached: the export is refused with this message."""


def build_release(
    *,
    project: Any,
    filters: dict[str, Any],
    cohort: dict[uuid.UUID, frozenset[str]],
    out_dir: Path,
    progress: Callable[[int, int], None] | None = None,
    at: datetime | None = None,
    export_id: Any = None,
) -> dict[str, Any]:
    """Write the release into out_dir and return its report."""
    raise NotImplementedError("the release builder lands in the next commit")


def release_directory(export: Any) -> str:
    return f"research/{export.pk}"


def research_export_job(ctx: Any) -> dict[str, Any]:
    from sharing.models import ResearchExport

    export = ResearchExport.objects.select_related("project", "requested_by").get(
        pk=ctx.payload["export_id"]
    )
    if export.status in (ResearchExport.Status.DONE, ResearchExport.Status.REFUSED):
        return {"status": export.status}
    project = export.project
    from sharing import research

    reason = research.export_refusal(
        project=project, user=export.requested_by, filters=export.filters
    )
    if reason:
        _finish(export, ResearchExport.Status.REFUSED, reason=str(reason))
        return {"status": "refused"}
    export.status = ResearchExport.Status.RUNNING
    export.save(update_fields=["status"])

    from sharing.access import research_cohort

    filters = export.filters
    cohort = research_cohort(
        municipality_ids=filters.get("municipalities") or [],
        categories=filters.get("categories") or list(project.categories),
        cohort_kind=filters.get("cohort_kind") or project.cohort_kind,
        birth_year_from=filters.get("birth_year_from") or project.birth_year_from,
        birth_year_to=filters.get("birth_year_to") or project.birth_year_to,
    )
    media = Path(settings.MEDIA_ROOT)
    directory = release_directory(export)
    final = media / directory
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)

    def progress(done: int, total: int) -> None:
        ctx.checkpoint(cursor={"phase": "build"}, progress_done=done, progress_total=total)

    try:
        report = build_release(
            project=project,
            filters=filters,
            cohort=cohort,
            out_dir=partial,
            progress=progress,
            export_id=export.pk,
        )
    except CohortTooSmall as exc:
        shutil.rmtree(partial, ignore_errors=True)
        _finish(export, ResearchExport.Status.REFUSED, reason=str(exc))
        return {"status": "refused"}
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    export.directory = directory
    export.report = report
    _finish(export, ResearchExport.Status.DONE)
    return {"status": "done", "released_persons": report.get("released_persons")}


def _finish(export: Any, status: str, *, reason: str = "") -> None:
    export.status = status
    export.reason = reason
    export.finished_at = timezone.now()
    export.save(update_fields=["status", "reason", "finished_at", "directory", "report"])


def _failed(job: Any) -> None:
    from sharing.models import ResearchExport

    ResearchExport.objects.filter(pk=job.payload.get("export_id")).exclude(
        status__in=[ResearchExport.Status.DONE, ResearchExport.Status.REFUSED]
    ).update(status=ResearchExport.Status.FAILED, finished_at=timezone.now())


def _register() -> None:
    from phr.jobs import job_handler

    job_handler(JOB_KIND, on_failure=_failed)(research_export_job)


_register()
