"""No loss, no duplicates, for real: a real Celery worker process on Redis
imports a municipal file against PostgreSQL; we kill -9 it after some
chunks are committed, a different worker process finishes the batch after
the lease expires, and the result equals a clean import of the same file."""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import time
from typing import Any

import pytest

from municipal_data.models import MotherChild
from municipal_data.synthetic import write_infant_checkup_csv
from phr import pipeline
from phr.jobs import sweep_expired_leases
from phr.models import Batch, Job, Organization, Patient, Residency, Resource, ResourceHistory
from tests.conftest import wait_for

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

ROWS = 2000
CHUNK = 250


def _file(code: str) -> bytes:
    buffer = io.BytesIO()
    write_infant_checkup_csv(buffer, ROWS, municipality_code=code)
    return buffer.getvalue()


def _validated(municipality: Organization, data: bytes) -> Batch:
    batch = pipeline.batch_receive(
        organization=municipality,
        format_key="infant_checkup",
        chunks=[data],
        filename="checkups.csv",
    )
    wait_for(lambda: Batch.objects.get(pk=batch.pk).status == Batch.Status.VALIDATED, 120)
    return Batch.objects.get(pk=batch.pk)


def _snapshot(municipality: Organization) -> dict[str, Any]:
    """What an import left, independent of generated ids: counts, the
    distinct source keys, and a checksum of every record's content with
    patient ids replaced by resident numbers."""
    residents = dict(
        Residency.objects.filter(municipality=municipality).values_list(
            "patient_id", "resident_number"
        )
    )
    system = f"urn:hagukumi:municipality:{municipality.code}:infant_checkup"
    rows = list(
        Resource.objects.filter(source_system=system).values_list(
            "id", "resource_type", "source_value", "content", "version", "deleted"
        )
    )
    # References name generated ids: patients by their resident number,
    # records (an Observation's encounter) by their source key.
    names = {str(pid): number for pid, number in residents.items()}
    names.update({str(row[0]): row[2] for row in rows})
    pattern = re.compile(r"/([0-9a-f]{8}-[0-9a-f-]{27})")
    digest = hashlib.sha256()
    keys = []
    for _id, rtype, value, content, version, deleted in sorted(rows, key=lambda r: r[2] + r[1]):
        text = pattern.sub(lambda m: "/" + names[m[1]], str(content))
        text = text.replace(municipality.code, "<municipality>")
        digest.update(f"{rtype}|{value}|{version}|{deleted}|{text}\n".encode())
        keys.append(value)
    patients = list(residents)
    return {
        "records": len(keys),
        "distinct_keys": len(set(keys)),
        "checksum": digest.hexdigest(),
        "patients": Patient.objects.filter(pk__in=patients).count(),
        "history": ResourceHistory.objects.filter(
            resource_id__in=Resource.objects.filter(source_system=system).values("id")
        ).count(),
        "mothers": MotherChild.objects.filter(municipality=municipality).count(),
    }


def test_a_killed_worker_loses_and_duplicates_nothing(start_worker: Any) -> None:
    crashed_town = Organization.objects.create(
        kind=Organization.Kind.MUNICIPALITY, code="102016", name="前橋市"
    )
    clean_town = Organization.objects.create(
        kind=Organization.Kind.MUNICIPALITY, code="102024", name="高崎市"
    )
    first = start_worker(lease_seconds=3)
    batch = _validated(crashed_town, _file(crashed_town.code))
    assert batch.summary["valid"] == ROWS

    pipeline.batch_confirm(
        batch=batch, user=None, job_options={"chunk_rows": CHUNK, "pause_per_chunk": 0.7}
    )
    job_id = Batch.objects.get(pk=batch.pk).import_job_id
    wait_for(lambda: Job.objects.get(pk=job_id).progress_done >= 2 * CHUNK, 120)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=10)

    # Partial progress at the moment of the crash: whole chunks, no more.
    crashed = Job.objects.get(pk=job_id)
    assert crashed.status == Job.Status.RUNNING
    assert 2 * CHUNK <= crashed.progress_done < ROWS
    assert crashed.progress_done % CHUNK == 0
    first_worker = crashed.worker
    partial = _snapshot(crashed_town)
    assert partial["records"] > 0
    assert partial["history"] == partial["records"]
    assert Batch.objects.get(pk=batch.pk).status == Batch.Status.IMPORTING

    # The lease runs out; the sweeper (beat in production) re-queues the
    # job and a different worker process resumes after the last chunk.
    start_worker(lease_seconds=3)
    time.sleep(3.5)
    wait_for(lambda: bool(sweep_expired_leases()) or Job.objects.get(pk=job_id).status != "running")
    wait_for(lambda: Batch.objects.get(pk=batch.pk).status == Batch.Status.IMPORTED, 180)
    done = Job.objects.get(pk=job_id)
    assert done.status == Job.Status.DONE
    assert done.attempts == 2
    assert done.worker != first_worker  # another process (host:pid)

    # A clean import of the same file (as the neighbouring town's) leaves
    # exactly the same records.
    clean = _validated(clean_town, _file(clean_town.code))
    pipeline.batch_confirm(batch=clean, user=None, job_options={"chunk_rows": CHUNK})
    wait_for(lambda: Batch.objects.get(pk=clean.pk).status == Batch.Status.IMPORTED, 180)

    recovered = _snapshot(crashed_town)
    expected = _snapshot(clean_town)
    assert recovered == expected
    assert recovered["records"] == recovered["distinct_keys"]
    assert recovered["history"] == recovered["records"]  # nothing written twice
    assert Batch.objects.get(pk=batch.pk).result["created"] == recovered["records"]


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry))
    return out


def test_two_partitions_in_a_prefork_worker_killed_mid_import(start_worker: Any) -> None:
    """IMPORT_PARTITIONS=2 in a prefork worker: the pool process forks two
    partition processes. kill -9 of the pool process alone (not its group)
    takes the partitions with it (PR_SET_PDEATHSIG) — nothing writes after
    it — and the job resumes each partition after its own last chunk."""
    crashed_town = Organization.objects.create(
        kind=Organization.Kind.MUNICIPALITY, code="102016", name="前橋市"
    )
    clean_town = Organization.objects.create(
        kind=Organization.Kind.MUNICIPALITY, code="102024", name="高崎市"
    )
    start_worker(lease_seconds=3, pool="prefork", env={"IMPORT_PARTITIONS": "2"})
    batch = _validated(crashed_town, _file(crashed_town.code))

    pipeline.batch_confirm(
        batch=batch, user=None, job_options={"chunk_rows": CHUNK, "pause_per_chunk": 0.7}
    )
    job_id = Batch.objects.get(pk=batch.pk).import_job_id

    def both_started() -> bool:
        job = Job.objects.get(pk=job_id)
        return job.progress_done >= 2 * CHUNK and len(job.cursor.get("partitions", {})) == 2

    wait_for(both_started, 120)
    running = Job.objects.get(pk=job_id)
    pool_process = int(running.worker.rsplit(":", 1)[1])
    partitions = _children(pool_process)
    assert len(partitions) == 2
    os.kill(pool_process, signal.SIGKILL)
    wait_for(lambda: not any(_alive(pid) for pid in partitions), 10)

    crashed = Job.objects.get(pk=job_id)
    assert crashed.worker == running.worker
    assert 2 * CHUNK <= crashed.progress_done < ROWS
    assert sorted(crashed.cursor["partitions"]) == ["0", "1"]
    assert sum(p["rows"] for p in crashed.cursor["partitions"].values()) == crashed.progress_done
    assert all(p["rows"] % CHUNK == 0 for p in crashed.cursor["partitions"].values())
    partial = _snapshot(crashed_town)
    assert partial["history"] == partial["records"] > 0
    time.sleep(2)  # nobody is left to write
    assert Job.objects.get(pk=job_id).progress_done == crashed.progress_done
    assert _snapshot(crashed_town) == partial

    # The worker's main process starts a new pool process; once the lease
    # ran out the sweeper re-queues the job and it resumes both partitions.
    time.sleep(3.5)
    wait_for(lambda: bool(sweep_expired_leases()) or Job.objects.get(pk=job_id).status != "running")
    wait_for(lambda: Batch.objects.get(pk=batch.pk).status == Batch.Status.IMPORTED, 180)
    done = Job.objects.get(pk=job_id)
    assert done.status == Job.Status.DONE
    assert done.worker != running.worker
    assert done.progress_done == ROWS
    assert sum(p["rows"] for p in done.cursor["partitions"].values()) == ROWS

    clean = _validated(clean_town, _file(clean_town.code))
    pipeline.batch_confirm(batch=clean, user=None, job_options={"chunk_rows": CHUNK})
    wait_for(lambda: Batch.objects.get(pk=clean.pk).status == Batch.Status.IMPORTED, 180)
    recovered = _snapshot(crashed_town)
    assert recovered == _snapshot(clean_town)
    assert recovered["records"] == recovered["distinct_keys"]
    assert recovered["history"] == recovered["records"]
    assert Batch.objects.get(pk=batch.pk).result["created"] == recovered["records"]
