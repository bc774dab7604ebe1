"""Benchmark: import a generated Apple Health export of 1,000,000 elements.

    DEBUG=1 .venv/bin/python bench/bench_apple_health.py [--big 1000000] [--small 100000] [--keep]

A scratch database (`hagukumi_bench_apple`, dropped and recreated,
migrated, dropped at the end unless --keep). It writes two exports
(vitals/apple_health_sample.export_chunks: heart rate, steps, active
energy, weight, temperature, glucose, blood-pressure correlations with
their top-level halves) to temporary files, then imports the small one
and the big one, each for its own mother, through the real job in
process (vitals.apple_health: pass one checks the whole file and adds up
the steps, pass two writes through vitals.records' bulk path in chunks of
5,000 with their checkpoints). Printed per file: elements/s and
observations written/s, client and server CPU, peak RSS after the import
(ru_maxrss: it only grows, so a flat figure after the big file shows the
big file needed no more), and the tracemalloc peak of a parse-only pass
over the same file (the reader: where a size-dependent cost would show).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import common
import django


def parse_peak(path: Path) -> tuple[float, float]:
    from vitals import apple_health as ah

    tally = ah.Tally()
    tracemalloc.start()
    start = time.perf_counter()
    with ah.open_export(path) as stream:
        for _ in ah.read_export(stream, tally, steps={}):
            pass
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 1024 / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from phr.jobs import job_run
    from phr.models import Job, Patient, Resource
    from tests import factories as f
    from vitals import apple_health as ah
    from vitals import apple_health_sample as sample

    name = "hagukumi_bench_apple"
    original = common.recreate_database(name)
    try:
        call_command("migrate", verbosity=0)
        print(f"database: {common.server_version()}")
        with tempfile.TemporaryDirectory() as media:
            settings.MEDIA_ROOT = media
            for label, elements in (("small", args.small), ("big", args.big)):
                user = f.UserFactory()
                patient = f.make_patient(kind=Patient.Kind.ADULT, account=user)
                relative = f"bench-{label}.xml"
                start = time.perf_counter()
                size = sample.write_export(Path(media) / relative, elements, seed=7)
                print(f"\n{label}: {elements:,} elements, {size / 1e6:,.0f} MB of XML "
                      f"(generated in {time.perf_counter() - start:.1f} s)")
                peak_mb, parse_s = parse_peak(Path(media) / relative)
                print(f"  parse only: {parse_s:.1f} s ({elements / parse_s:,.0f} elements/s), "
                      f"tracemalloc peak {peak_mb:.1f} MB")
                common.checkpoint()
                phases: dict[str, common.Phase] = {}
                with common.timed("import", phases):
                    job = ah.import_enqueue(patient=patient, user=user, path=relative,
                                            filename=relative, size=size)
                    outcome = job_run(job_id=job.pk)
                job = Job.objects.get(pk=job.pk)
                phase = phases["import"]
                written = Resource.objects.filter(compartments__overlap=[patient.pk]).count()
                result = job.result
                print(f"  import: {outcome}, {phase.seconds:.1f} s; client CPU "
                      f"{phase.client_cpu:.1f} s, server CPU {phase.server_cpu or 0:.1f} s")
                print(f"  {elements / phase.seconds:,.0f} elements/s; "
                      f"{result.get('created', 0):,} observations created "
                      f"({result.get('created', 0) / phase.seconds:,.0f}/s), "
                      f"{result.get('days', 0)} step days, "
                      f"{result.get('in_correlation', 0):,} BP halves read from their "
                      f"correlations, skipped {result.get('skipped')}, "
                      f"errors {result.get('error_count')}")
                print(f"  resources in her compartment: {written:,}")
                print(f"  peak RSS so far: {common.peak_rss_mb():.0f} MB")
                (Path(media) / relative).unlink(missing_ok=True)
    finally:
        if not args.keep:
            common.drop_database(name, original)


if __name__ == "__main__":
    main()
