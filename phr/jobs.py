"""Jobs are rows; Celery only wakes workers.

A job (an import, a feed run, an export) is a phr.Job row. A worker claims
it with a guarded UPDATE that sets a lease, does the work chunk by chunk,
and commits each chunk together with its checkpoint (cursor, progress,
renewed lease) in one transaction. If the worker dies, the beat sweeper
finds the expired lease and re-queues the job; the next worker resumes
from the last committed checkpoint. A lost message, a task run twice or a
worker killed with kill -9 delays work but never loses or duplicates it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from phr.models import Job

logger = logging.getLogger(__name__)

Handler = Callable[["JobContext"], dict[str, Any] | None]
HANDLERS: dict[str, Handler] = {}
# Called with the job row when a kind of job fails for good (an exception,
# or the sweeper giving up after the last attempt): e.g. mark its batch failed.
FAILURE_HOOKS: dict[str, Callable[[Job], None]] = {}

# A queued job nobody picked up for this long lost its message: re-send it.
REQUEUE_QUEUED_AFTER = timedelta(minutes=5)


class LeaseLost(Exception):
    """Another worker took this job over (our lease had expired)."""


def job_handler(
    kind: str, *, on_failure: Callable[[Job], None] | None = None
) -> Callable[[Handler], Handler]:
    """Register the function that does a kind of job (and, optionally, what
    to do when it fails for good)."""

    def register(func: Handler) -> Handler:
        HANDLERS[kind] = func
        if on_failure is not None:
            FAILURE_HOOKS[kind] = on_failure
        return func

    return register


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def lease_length() -> timedelta:
    return timedelta(seconds=settings.JOB_LEASE_SECONDS)


def _wake(job_id: int) -> None:
    from phr.tasks import run_job

    run_job.delay(job_id)


def job_enqueue(
    *,
    kind: str,
    payload: dict[str, Any] | None = None,
    created_by: Any = None,
    organization: Any = None,
    progress_total: int | None = None,
) -> Job:
    """Create the job row and wake a worker once the row is committed."""
    if kind not in HANDLERS:
        raise ValueError(f"no handler for job kind {kind!r}")
    job = Job.objects.create(
        kind=kind,
        payload=payload or {},
        created_by=created_by,
        organization=organization,
        progress_total=progress_total,
    )
    transaction.on_commit(lambda: _wake(job.pk))
    return job


def job_claim(*, job_id: int, worker: str, now: datetime | None = None) -> Job | None:
    """Take the job if it is queued, or running with an expired lease.

    The guarded UPDATE makes two claimants race safely: exactly one row
    update succeeds.
    """
    now = now or timezone.now()
    claimed = Job.objects.filter(
        Q(status=Job.Status.QUEUED) | Q(status=Job.Status.RUNNING, lease_until__lt=now),
        pk=job_id,
        attempts__lt=F("max_attempts"),
    ).update(
        status=Job.Status.RUNNING,
        lease_until=now + lease_length(),
        worker=worker,
        attempts=F("attempts") + 1,
        updated_at=now,
    )
    if not claimed:
        return None
    return Job.objects.get(pk=job_id)


@dataclass
class JobContext:
    job: Job
    worker: str

    @property
    def payload(self) -> dict[str, Any]:
        return self.job.payload

    @property
    def cursor(self) -> dict[str, Any]:
        return self.job.cursor

    def checkpoint(
        self,
        *,
        cursor: dict[str, Any],
        progress_done: int | None = None,
        progress_total: int | None = None,
    ) -> None:
        """Record progress and renew the lease. Call inside the chunk's
        transaction: if the lease was lost, this raises and the chunk rolls
        back, so the new owner redoes it exactly once."""
        now = timezone.now()
        fields: dict[str, Any] = {
            "cursor": cursor,
            "lease_until": now + lease_length(),
            "updated_at": now,
        }
        if progress_done is not None:
            fields["progress_done"] = progress_done
        if progress_total is not None:
            fields["progress_total"] = progress_total
        updated = Job.objects.filter(
            pk=self.job.pk, status=Job.Status.RUNNING, worker=self.worker
        ).update(**fields)
        if not updated:
            raise LeaseLost(self.job.pk)
        self.job.cursor = cursor
        if progress_done is not None:
            self.job.progress_done = progress_done


def job_run(*, job_id: int, worker: str | None = None) -> str:
    """Claim and run a job; return what happened (for logs and tests)."""
    me = worker or worker_id()
    job = job_claim(job_id=job_id, worker=me)
    if job is None:
        return "not-claimed"
    handler = HANDLERS.get(job.kind)
    context = JobContext(job=job, worker=me)
    try:
        if handler is None:
            raise LookupError(f"no handler for job kind {job.kind!r}")
        result = handler(context) or {}
    except LeaseLost:
        logger.warning("job %s: lease lost to another worker", job_id)
        return "lease-lost"
    except Exception as exc:
        logger.exception("job %s failed", job_id)
        Job.objects.filter(pk=job_id, worker=me).update(
            status=Job.Status.FAILED,
            error=f"{type(exc).__name__}: {exc}"[:2000],
            finished_at=timezone.now(),
            lease_until=None,
        )
        _failed(job)
        return "failed"
    done = Job.objects.filter(pk=job_id, worker=me, status=Job.Status.RUNNING).update(
        status=Job.Status.DONE,
        result=result,
        finished_at=timezone.now(),
        lease_until=None,
        updated_at=timezone.now(),
    )
    return "done" if done else "lease-lost"


def _failed(job: Job) -> None:
    hook = FAILURE_HOOKS.get(job.kind)
    if hook is None:
        return
    try:
        hook(job)
    except Exception:
        logger.exception("job %s: the failure hook failed", job.pk)


def sweep_expired_leases(*, now: datetime | None = None) -> list[int]:
    """Re-queue running jobs whose lease expired (their worker died) and
    re-send queued jobs whose message was lost; fail jobs out of attempts."""
    now = now or timezone.now()
    giving_up = Job.objects.filter(
        status=Job.Status.RUNNING, lease_until__lt=now, attempts__gte=F("max_attempts")
    )
    for job in giving_up:
        _failed(job)
    giving_up.update(
        status=Job.Status.FAILED,
        error="gave up: the lease expired after the last attempt",
        finished_at=now,
        lease_until=None,
    )
    expired = list(
        Job.objects.filter(status=Job.Status.RUNNING, lease_until__lt=now).values_list(
            "pk", flat=True
        )
    )
    if expired:
        Job.objects.filter(pk__in=expired, status=Job.Status.RUNNING, lease_until__lt=now).update(
            status=Job.Status.QUEUED, worker="", updated_at=now
        )
    stale = list(
        Job.objects.filter(
            status=Job.Status.QUEUED, updated_at__lt=now - REQUEUE_QUEUED_AFTER
        ).values_list("pk", flat=True)
    )
    if stale:
        Job.objects.filter(pk__in=stale).update(updated_at=now)
    woken = expired + stale
    for job_id in woken:
        transaction.on_commit(lambda job_id=job_id: _wake(job_id))
    return woken
