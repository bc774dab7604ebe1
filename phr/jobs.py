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

import contextlib
import ctypes
import json
import logging
import os
import select
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, connections, transaction
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


class PartitionFailed(Exception):
    """A partition process of a job failed; the message is its error."""


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

    def checkpoint_part(self, *, part: str, value: dict[str, Any], progress_add: int) -> None:
        """checkpoint() for one partition of a job run by several processes
        (run_partitions): sets cursor["partitions"][part] to `value`, adds
        `progress_add` to the progress and renews the lease, in one UPDATE
        fenced by the lease like checkpoint(). jsonb_set writes only this
        partition's entry; the row lock the UPDATE takes (held until the
        chunk commits, a moment later) orders it with the other
        partitions', each applied to the latest committed cursor."""
        now = timezone.now()
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {Job._meta.db_table} SET "  # noqa: S608 (the table name is ours)
                "cursor = jsonb_set(cursor, ARRAY['partitions', %s], %s::jsonb, true), "
                "progress_done = progress_done + %s, lease_until = %s, updated_at = %s "
                "WHERE id = %s AND status = %s AND worker = %s",
                [
                    part,
                    json.dumps(value),
                    progress_add,
                    now + lease_length(),
                    now,
                    self.job.pk,
                    Job.Status.RUNNING,
                    self.worker,
                ],
            )
            if cursor.rowcount != 1:
                raise LeaseLost(self.job.pk)


# --------------------------------------------------------------------------
# Partition processes
# --------------------------------------------------------------------------

PR_SET_PDEATHSIG = 1
_LEASE_LOST_EXIT = 3
# Handlers a Celery worker (main or pool process) installs; a partition
# process must not run them (e.g. a warm shutdown on SIGTERM).
_RESET_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM")


def _die_with(parent: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux),
    so a worker killed with kill -9 leaves no partition writing."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the request
        os._exit(1)


def _partition_child(parent: int, part: int, work: Callable[[int], None], report: int) -> int:
    code = 0
    try:
        _die_with(parent)
        for name in _RESET_SIGNALS:
            signal.signal(getattr(signal, name), signal.SIG_DFL)
        work(part)
    except LeaseLost:
        code = _LEASE_LOST_EXIT
    except BaseException as exc:
        logger.exception("partition %s failed", part)
        os.write(report, f"{type(exc).__name__}: {exc}".encode(errors="replace")[:4000])
        code = 1
    finally:
        try:
            connections.close_all()  # its own connections, opened after the fork
        except Exception:
            code = code or 1
    return code


def run_partitions(count: int, work: Callable[[int], None]) -> None:
    """Run work(0) … work(count - 1) at once, each in a forked process with
    its own database connections; return when all succeeded.

    The parent's connections are closed before forking (a child never
    shares, or closes, the parent's socket; the parent reconnects when it
    next queries). Children are plain os.fork() processes, not
    multiprocessing ones: a Celery pool process is daemonic (multiprocessing
    refuses it children) and a child must leave with os._exit, running none
    of the worker's exit handlers. Each child asks to be killed when the
    parent dies. If a child fails, the others are killed (their open chunk
    rolls back) and PartitionFailed (LeaseLost when a child lost the lease)
    is raised with its error."""
    if connection.in_atomic_block:
        raise RuntimeError("partition processes cannot see an open transaction's rows")
    connections.close_all()
    parent = os.getpid()
    children: dict[int, tuple[int, int]] = {}  # read end of the report pipe -> (pid, part)
    errors: list[BaseException] = []
    try:
        for part in range(count):
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child
                for inherited in children:
                    os.close(inherited)
                os.close(read_end)
                os._exit(_partition_child(parent, part, work, write_end))
            os.close(write_end)
            children[read_end] = (pid, part)
        messages: dict[int, bytes] = dict.fromkeys(children, b"")
        while children and not errors:
            ready, _, _ = select.select(list(children), [], [])
            for read_end in ready:
                data = os.read(read_end, 4096)
                if data:
                    messages[read_end] += data
                    continue
                # End of file: the child exited.
                pid, part = children.pop(read_end)
                os.close(read_end)
                _, status = os.waitpid(pid, 0)
                if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
                    continue
                if os.WIFEXITED(status) and os.WEXITSTATUS(status) == _LEASE_LOST_EXIT:
                    errors.append(LeaseLost(part))
                elif os.WIFSIGNALED(status):
                    errors.append(
                        PartitionFailed(f"partition {part}: killed by signal {os.WTERMSIG(status)}")
                    )
                else:
                    text = messages[read_end].decode(errors="replace") or f"exit status {status}"
                    errors.append(PartitionFailed(f"partition {part}: {text}"))
    finally:
        for read_end, (pid, _part) in children.items():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_end)
    if errors:
        raise errors[0]


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
