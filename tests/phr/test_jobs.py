"""Jobs are rows with leases: claimed once, resumed after a crash, never
duplicated (ARCHITECTURE.md "Jobs are rows")."""

from __future__ import annotations

import os
import signal
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from django.conf import settings
from django.utils import timezone

from phr.jobs import JobContext, LeaseLost, job_claim, job_enqueue, job_run, sweep_expired_leases
from phr.models import Job, Resource, ResourceHistory
from tests import factories as f
from tests.conftest import wait_for as _wait_for

ROOT = Path(__file__).resolve().parents[2]


def _ndjson(tmp_path: Path, patient: Any, n: int, *, bad_lines: tuple[int, ...] = ()) -> str:
    lines = []
    for i in range(n):
        resource = f.observation(patient, value=3.0 + i / 100, when="2026-01-01")
        resource["identifier"] = [{"system": "urn:test:ndjson", "value": f"row-{i}"}]
        if i in bad_lines:
            resource["valueQuantity"]["value"] = "heavy"
        lines.append(orjson.dumps(resource))
    media = Path(settings.MEDIA_ROOT)
    folder = media / "test-jobs"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"test-jobs/{uuid.uuid4()}.ndjson"
    (media / name).write_bytes(b"\n".join(lines) + b"\n")
    return name


@pytest.mark.django_db
def test_it_lets_only_one_worker_claim_a_job() -> None:
    job = Job.objects.create(kind="fhir.ndjson")
    assert job_claim(job_id=job.pk, worker="a") is not None
    assert job_claim(job_id=job.pk, worker="b") is None


@pytest.mark.django_db
def test_it_lets_a_worker_take_over_an_expired_lease() -> None:
    job = Job.objects.create(kind="fhir.ndjson")
    first = job_claim(job_id=job.pk, worker="a")
    assert first is not None
    later = timezone.now() + timedelta(seconds=settings.JOB_LEASE_SECONDS + 1)
    second = job_claim(job_id=job.pk, worker="b", now=later)
    assert second is not None
    assert second.attempts == 2
    # The first worker's next checkpoint fails: its chunk will roll back.
    with pytest.raises(LeaseLost):
        JobContext(job=first, worker="a").checkpoint(cursor={"line": 1})


@pytest.mark.django_db
def test_it_requeues_expired_leases_and_fails_after_the_last_attempt() -> None:
    stuck = Job.objects.create(
        kind="fhir.ndjson",
        status=Job.Status.RUNNING,
        attempts=1,
        lease_until=timezone.now() - timedelta(seconds=1),
    )
    exhausted = Job.objects.create(
        kind="fhir.ndjson",
        status=Job.Status.RUNNING,
        attempts=5,
        max_attempts=5,
        lease_until=timezone.now() - timedelta(seconds=1),
    )
    woken = sweep_expired_leases()
    stuck.refresh_from_db()
    exhausted.refresh_from_db()
    assert stuck.pk in woken
    assert stuck.status == Job.Status.QUEUED
    assert exhausted.status == Job.Status.FAILED


@pytest.mark.django_db
def test_it_imports_ndjson_idempotently_and_reports_bad_lines(tmp_path: Path, child: Any) -> None:
    name = _ndjson(tmp_path, child, 30, bad_lines=(4,))
    payload = {"path": name, "source_system": "urn:test:file"}
    first = job_enqueue(kind="fhir.ndjson", payload=payload)
    assert job_run(job_id=first.pk) == "done"
    assert job_run(job_id=first.pk) == "not-claimed"  # a duplicate message does nothing
    first.refresh_from_db()
    assert first.status == Job.Status.DONE
    assert first.result["created"] == 29
    assert first.result["errors"][0]["line"] == 5
    assert first.result["errors"][0]["path"] == "Observation.valueQuantity.value"
    again = job_enqueue(kind="fhir.ndjson", payload=payload)
    job_run(job_id=again.pk)
    again.refresh_from_db()
    assert again.result["created"] == 0
    assert again.result["unchanged"] == 29
    assert Resource.objects.filter(resource_type="Observation").count() == 29


# --------------------------------------------------------------------------
# A real worker process on Redis
# --------------------------------------------------------------------------


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_it_runs_a_job_on_a_real_worker(tmp_path: Path, start_worker: Any, child: Any) -> None:
    start_worker()
    name = _ndjson(tmp_path, child, 50)
    job = job_enqueue(kind="fhir.ndjson", payload={"path": name, "source_system": "urn:t"})
    _wait_for(lambda: Job.objects.get(pk=job.pk).status == Job.Status.DONE)
    assert Resource.objects.filter(resource_type="Observation").count() == 50


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_it_survives_a_worker_killed_mid_job_without_losing_or_duplicating(
    tmp_path: Path, start_worker: Any, child: Any
) -> None:
    # 3,500 lines = 4 chunks; the worker pauses after each chunk, and we
    # kill -9 it once the first chunk is committed.
    worker = start_worker(lease_seconds=3)
    name = _ndjson(tmp_path, child, 3500)
    job = job_enqueue(
        kind="fhir.ndjson",
        payload={"path": name, "source_system": "urn:t", "pause_per_chunk": 1.5},
    )
    _wait_for(lambda: Job.objects.get(pk=job.pk).progress_done >= 1000)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=10)
    crashed = Job.objects.get(pk=job.pk)
    assert crashed.status == Job.Status.RUNNING
    assert crashed.progress_done < 3500

    # The lease runs out; the sweeper (beat in production) re-queues it and
    # a new worker resumes from the last committed chunk.
    start_worker(lease_seconds=3)
    time.sleep(3.5)
    _wait_for(
        lambda: bool(sweep_expired_leases()) or Job.objects.get(pk=job.pk).status != "running"
    )
    _wait_for(lambda: Job.objects.get(pk=job.pk).status == Job.Status.DONE, timeout=90)

    done = Job.objects.get(pk=job.pk)
    assert done.attempts == 2
    assert done.result["created"] == 3500
    assert Resource.objects.filter(resource_type="Observation").count() == 3500
    # Nothing written twice: one history version per record.
    assert ResourceHistory.objects.filter(resource_type="Observation").count() == 3500
