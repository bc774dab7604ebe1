"""Celery tasks: thin, given ids, safe to run twice (STYLE.md)."""

from __future__ import annotations

from celery import shared_task

from phr import audit, jobs


@shared_task(acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: int) -> str:
    return jobs.job_run(job_id=job_id)


@shared_task
def sweep_expired_leases() -> int:
    return len(jobs.sweep_expired_leases())


@shared_task
def audit_seal() -> bool:
    return audit.audit_seal() is not None


@shared_task
def audit_maintain_partitions() -> int:
    return len(audit.audit_maintain_partitions())


@shared_task
def feed_pull(source_id: int, retry_of: int | None = None, attempt: int = 0) -> bool:
    """Beat's schedule (and a failed run's retry) asks for a pull: queue the
    job unless one is queued or running. The job does the work."""
    from phr.feeds import feed_pull_start

    return feed_pull_start(source_id=source_id, retry_of=retry_of, attempt=attempt) is not None


@shared_task(acks_late=True, reject_on_worker_lost=True)
def send_reminders() -> dict[str, object]:
    """Beat, every morning in Japan: remind guardians of vaccinations and
    checkups due within 14 days or overdue. Safe to run twice, or twice at
    once: the Reminder rows decide what is new (phr/reminders.py)."""
    from phr.reminders import reminders_run

    return reminders_run().as_dict()
