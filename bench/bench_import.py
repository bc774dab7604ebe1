"""Benchmark: a municipal checkup file imported end to end, against COPY
of the same final rows.

    DEBUG=1 .venv/bin/python bench/bench_import.py [--rows 100000] [--small 10000]
    DEBUG=1 DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
        .venv/bin/python bench/bench_import.py

Run by hand (never in the test suite). It creates a scratch database
(`hagukumi_bench_import`, dropped and recreated, migrated, dropped at the
end unless --keep) and:

1. writes a synthetic infant checkup CSV (municipal_data/synthetic.py: 4
   checkups per child, a mother per child; an Encounter and ~6.75
   Observations per row) to a temporary file — streamed, never in memory;
2. imports a small file first (--small rows, another town), so that the
   peak memory after it is the baseline the big file is compared with
   ("memory flat in file size");
3. imports the big file through the real pipeline, in process: the upload
   (stored with its SHA-256), the validation job (decode, field checks,
   mapping to FHIR, matching, what would change — nothing written) and the
   import job (the same again, then new residents in bulk, records through
   the store's COPY path: canonical JSON, hash, search index, history,
   provenance), each chunk of 1,000 rows committing with its checkpoint —
   timed per phase;
4. exports the rows the import wrote (phr_resource, phr_resourcehistory,
   phr_patient, phr_residency, municipal_data_motherchild) with COPY TO a
   temporary file and COPYs them into tables with the same schema and
   indexes (CREATE TABLE … (LIKE … INCLUDING ALL)) — timed.

It prints rows/s and records/s of each phase, the ratio import / COPY
(goal: at least 50%), and the peak memory after the small and the big file.
The import runs in IMPORT_PARTITIONS processes (default 2): client CPU
counts this process and its partition processes, server CPU every server
process of the scratch database (sampled from /proc every 0.25 s: the
partitions' connections come and go), peak memory the largest process.
Figures in bench/README.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.common import Phase, checkpoint, execute, peak_rss_mb, server_version

BENCH_DB = "hagukumi_bench_import"
TABLES = (
    "phr_resource",
    "phr_resourcehistory",
    "phr_patient",
    "phr_residency",
    "municipal_data_motherchild",
)


_NOT_BACKENDS: set[int] = set()


def _backend_cpu() -> dict[int, float]:
    """CPU seconds so far of each server process of the scratch database
    (PostgreSQL titles them "postgres: … <user> <database> <client> …").
    Other processes are remembered, so a sample reads little."""
    marker = f" {BENCH_DB} ".encode()
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in _NOT_BACKENDS:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if marker not in handle.read().replace(b"\0", b" "):
                    _NOT_BACKENDS.add(int(entry))
                    continue
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def _client_cpu() -> float:
    """This process and its (reaped) partition processes."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


@contextmanager
def timed(label: str, out: dict[str, Phase]) -> Iterator[None]:
    """Wall time, client CPU (with the partition processes) and the CPU of
    every server process of the database (the partitions' come and go)."""
    start_cpu = _backend_cpu()
    last = dict(start_cpu)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.25):
            last.update(_backend_cpu())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cpu_start = _client_cpu()
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - start
        client = _client_cpu() - cpu_start
        stop.set()
        sampler.join()
        last.update(_backend_cpu())
        server = sum(cpu - start_cpu.get(pid, 0.0) for pid, cpu in last.items())
        out[label] = Phase(seconds, client, server)


def peak_rss_all_mb() -> float:
    """The largest process: this one or a partition process."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return max(peak_rss_mb(), children)


def write_file(folder: Path, rows: int, code: str) -> Path:
    from municipal_data.synthetic import write_infant_checkup_csv

    path = folder / f"checkups-{code}-{rows}.csv"
    with path.open("wb") as handle:
        write_infant_checkup_csv(handle, rows, municipality_code=code)
    return path


def file_chunks(path: Path) -> Any:
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            yield block


def import_file(path: Path, municipality: Any, times: dict[str, Phase], prefix: str) -> Any:
    """Upload, validate and import one file as the screens do (Celery is
    eager here: each job runs in this process when its row is committed)."""
    from phr import pipeline
    from phr.models import Batch

    with timed(f"{prefix}receive+validate", times):
        batch = pipeline.batch_receive(
            organization=municipality,
            format_key="infant_checkup",
            chunks=file_chunks(path),
            filename=path.name,
        )
    batch.refresh_from_db()
    assert batch.status == Batch.Status.VALIDATED, (batch.status, batch.file_error)
    assert batch.summary["invalid"] == 0, batch.summary
    checkpoint()
    with timed(f"{prefix}import", times):
        pipeline.batch_confirm(batch=batch, user=None)
    batch.refresh_from_db()
    assert batch.status == Batch.Status.IMPORTED, batch.status
    return batch


def copy_baseline(folder: Path, times: dict[str, Phase]) -> tuple[int, float]:
    """COPY what the import wrote into same-schema tables; return the
    number of rows moved and the megabytes."""
    from django.db import connection

    files = {}
    for table in TABLES:
        files[table] = folder / f"{table}.copy"
        with files[table].open("wb") as handle:
            common.copy_out(table, handle)
        execute(f"CREATE TABLE bench_{table} (LIKE {table} INCLUDING ALL)")
    megabytes = sum(f.stat().st_size for f in files.values()) / 1e6
    checkpoint()
    with timed("copy", times):
        for table in TABLES:
            with files[table].open("rb") as handle:
                common.copy_in(f"bench_{table}", handle)
    with connection.cursor() as cursor:
        moved = 0
        for table in TABLES:
            cursor.execute(f"SELECT count(*) FROM bench_{table}")  # noqa: S608
            moved += cursor.fetchone()[0]
    return moved, megabytes


def run(rows: int, small: int, keep: bool) -> None:
    import django

    os.environ.pop("REDIS_URL", None)
    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from config.celery import app as celery_app

    settings.DEBUG = False  # DEBUG=1 only selects the embedded server
    celery_app.conf.task_always_eager = True

    from phr.models import Organization, Resource

    original = common.recreate_database(BENCH_DB)
    call_command("migrate", verbosity=0)
    print(
        f"server: {server_version()}; database {BENCH_DB}; rows {rows} (small {small}); "
        f"import partitions {settings.IMPORT_PARTITIONS}"
    )
    times: dict[str, Phase] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        big = write_file(folder, rows, "102016")
        little = write_file(folder, small, "102024")
        print(
            f"files written in {time.perf_counter() - start:.1f} s: "
            f"{big.stat().st_size / 1e6:.1f} MB and {little.stat().st_size / 1e6:.1f} MB"
        )
        maebashi = Organization.objects.create(
            kind=Organization.Kind.MUNICIPALITY, code="102016", name="前橋市"
        )
        takasaki = Organization.objects.create(
            kind=Organization.Kind.MUNICIPALITY, code="102024", name="高崎市"
        )
        gc.collect()
        before = peak_rss_all_mb()
        import_file(little, takasaki, times, "small ")
        gc.collect()
        after_small = peak_rss_all_mb()
        # Only the big town's rows count for the COPY: drop the small one's.
        execute(
            "TRUNCATE phr_resource, phr_resourcehistory, phr_patient, phr_residency, "
            "municipal_data_motherchild, municipal_data_matchreview, phr_batcherror CASCADE"
        )
        checkpoint()
        batch = import_file(big, maebashi, times, "")
        after_big = peak_rss_all_mb()
        records = Resource.objects.count()
        observations = Resource.objects.filter(resource_type="Observation").count()
        moved, megabytes = copy_baseline(folder, times)
    report(
        rows,
        records,
        observations,
        moved,
        megabytes,
        times,
        batch.result,
        (before, after_small, after_big),
    )
    if keep:
        print(f"kept database {BENCH_DB}")
    else:
        common.drop_database(BENCH_DB, original)


def report(
    rows: int,
    records: int,
    observations: int,
    moved: int,
    megabytes: float,
    times: dict[str, Phase],
    result: dict[str, int],
    memory: tuple[float, float, float],
) -> None:
    print(f"\nimport result: {result}")
    print(
        f"records written: {records} ({observations} Observations); "
        f"rows moved by COPY: {moved} ({megabytes:.0f} MB)"
    )
    print(f"{'phase':<22}{'s':>8}{'rows/s':>10}{'obs/s':>10}{'client CPU':>12}{'server CPU':>12}")
    for label, phase in times.items():
        if label.startswith("small"):
            continue
        rate = rows / phase.seconds
        server = "-" if phase.server_cpu is None else f"{phase.server_cpu:.1f}"
        print(
            f"{label:<22}{phase.seconds:8.1f}{rate:10.0f}{observations / phase.seconds:10.0f}"
            f"{phase.client_cpu:12.1f}{server:>12}"
        )
    copy_rate = moved / times["copy"].seconds
    import_rate = moved / times["import"].seconds
    both = times["receive+validate"].seconds + times["import"].seconds
    print(
        f"\nimport / same-schema COPY      {100 * import_rate / copy_rate:5.1f}%  "
        f"(the same {moved} rows; goal >= 50%)"
    )
    print(f"upload+validate+import / COPY  {100 * times['copy'].seconds / both:5.1f}%")
    before, small, big = memory
    print(
        f"peak memory (max RSS): {before:.0f} MB before, {small:.0f} MB after the small file, "
        f"{big:.0f} MB after the big one (flat if these two are close)"
    )
    print(f"load average at the end      {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args()
    run(args.rows, args.small, args.keep)


if __name__ == "__main__":
    main()
