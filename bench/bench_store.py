"""Benchmark: the record store's bulk write against plain COPY.

    DEBUG=1 .venv/bin/python bench/bench_store.py [--rows 200000] [--chunk 5000]

Run by hand (never in the test suite). It creates a scratch database
(`hagukumi_bench`, dropped and recreated; dropped again at the end unless
--keep) on the server the settings point at, migrates it, and then:

1. generates N realistic Observations (body weight, blood pressure, body
   temperature from home devices of ~N/100 mothers), each with a source
   identifier;
2. writes them through store.records_write_bulk, one transaction per chunk
   as an import job does (canonical JSON, hash, search index, history,
   provenance) — timed;
3. replays the same batch, which must change nothing — timed;
4. exports the resulting phr_resource and phr_resourcehistory rows with
   COPY TO into memory and COPYs them back into (a) tables with the same
   schema and indexes and (b) tables without indexes — each timed;
5. (for information) rewrites the batch with every tenth row amended, the
   upsert path, and runs reindex_all over the table.

It prints rows/s for each, the ratios store / same-schema COPY, store /
unindexed COPY and replay / first write, and the peak memory. See
bench/README.md for the figures on our machine type.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.common import (
    Phase,
    checkpoint,
    copy_in,
    copy_out,
    execute,
    peak_rss_mb,
    timed,
)

BENCH_DB = "hagukumi_bench"
DEVICE_SYSTEM = "urn:hagukumi:device:gateway"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY = "https://hagukumi.jp/fhir/CodeSystem/data-category"
JST = timedelta(hours=9)


# --- data ------------------------------------------------------------------------


def _vital_signs() -> list[dict[str, Any]]:
    return [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "vital-signs",
                    "display": "Vital Signs",
                }
            ]
        }
    ]


def _quantity(value: float, unit: str, code: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": code}


def generate(rows: int, *, seed: int = 20250401) -> list[tuple[dict[str, Any], Any]]:
    """Home-device vitals of pregnant mothers: a weight, a blood pressure and
    a temperature most days, each reading with the device's own row key."""
    from phr.store import Source

    rnd = random.Random(seed)
    patients = max(1, rows // 100)
    patient_ids = [uuid.UUID(int=rnd.getrandbits(128), version=4) for _ in range(patients)]
    base_weight = [rnd.uniform(48.0, 75.0) for _ in range(patients)]
    start = datetime(2025, 1, 1, tzinfo=UTC)
    batch: list[tuple[dict[str, Any], Any]] = []
    for n in range(rows):
        p = n % patients
        reading = n // patients
        kind = reading % 3
        day = reading // 3
        taken = start + timedelta(days=day, minutes=rnd.randrange(6 * 60, 22 * 60)) - JST
        resource_: dict[str, Any] = {
            "resourceType": "Observation",
            "meta": {"tag": [{"system": CATEGORY, "code": "vitals"}]},
            "identifier": [{"system": f"{DEVICE_SYSTEM}/{p % 50}", "value": f"{p}-{reading}"}],
            "status": "final",
            "category": _vital_signs(),
            "subject": {"reference": f"Patient/{patient_ids[p]}"},
            "effectiveDateTime": (taken + JST).strftime("%Y-%m-%dT%H:%M:%S+09:00"),
            "device": {"display": "Hagukumi home gateway"},
        }
        if kind == 0:
            weight = round(base_weight[p] + day * 0.04 + rnd.uniform(-0.6, 0.6), 1)
            resource_["code"] = {
                "coding": [{"system": LOINC, "code": "29463-7", "display": "Body weight"}],
                "text": "体重",
            }
            resource_["valueQuantity"] = _quantity(weight, "kg", "kg")
        elif kind == 1:
            systolic = rnd.randint(98, 142)
            resource_["code"] = {
                "coding": [
                    {"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"}
                ],
                "text": "血圧",
            }
            resource_["component"] = [
                {
                    "code": {"coding": [{"system": LOINC, "code": "8480-6",
                                         "display": "Systolic blood pressure"}]},
                    "valueQuantity": _quantity(systolic, "mmHg", "mm[Hg]"),
                },
                {
                    "code": {"coding": [{"system": LOINC, "code": "8462-4",
                                         "display": "Diastolic blood pressure"}]},
                    "valueQuantity": _quantity(systolic - rnd.randint(30, 50), "mmHg", "mm[Hg]"),
                },
            ]
        else:
            resource_["code"] = {
                "coding": [{"system": LOINC, "code": "8310-5", "display": "Body temperature"}],
                "text": "体温",
            }
            resource_["valueQuantity"] = _quantity(round(rnd.uniform(36.0, 37.4), 1), "℃", "Cel")
        batch.append((resource_, Source(f"{DEVICE_SYSTEM}/{p % 50}", f"{p}-{reading}")))
    return batch


# --- database ----------------------------------------------------------------------


def recreate_database() -> str:
    return common.recreate_database(BENCH_DB)


def drop_database(original: str) -> None:
    common.drop_database(BENCH_DB, original)


def write_all(
    batch: list[tuple[dict[str, Any], Any]], chunk: int, provenance: Any
) -> tuple[int, int, int]:
    """Write the batch as an import job does: one transaction per chunk."""
    from django.db import transaction

    from phr.store import records_write_bulk

    created = updated = unchanged = 0
    for start in range(0, len(batch), chunk):
        with transaction.atomic():
            result = records_write_bulk(
                batch[start : start + chunk], provenance=provenance, chunk_size=chunk
            )
        created += len(result.created)
        updated += len(result.updated)
        unchanged += len(result.unchanged)
    return created, updated, unchanged


def run(rows: int, chunk: int, profile: str | None, keep: bool) -> None:
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    # DEBUG=1 only selects the embedded server; with it on, Django would also
    # log every query (and its 5000-id parameters) in memory, which
    # production does not do.
    settings.DEBUG = False

    from phr.models import Provenance, Resource, ResourceHistory

    original = recreate_database()
    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("SELECT version()")
        server = cursor.fetchone()[0].split(" on ")[0]
    print(f"server: {server}; database {BENCH_DB}; rows {rows}; chunk {chunk}")

    times: dict[str, Phase] = {}
    with timed("generate", times):
        batch = generate(rows)
    # The batch stays in memory for both runs; a job streams its rows
    # instead. Freezing it keeps the garbage collector from re-scanning
    # 200k dicts on every full collection, which a streaming job never does.
    gc.collect()
    gc.freeze()
    print(f"generated {rows} observations in {times['generate'].seconds:.1f} s; "
          f"peak RSS {peak_rss_mb():.0f} MB")

    provenance = Provenance.objects.create(
        origin=Provenance.Origin.DEVICE, source="bench:device-gateway"
    )
    measure: Callable[[str], Any] = lambda label: timed(label, times)  # noqa: E731

    checkpoint()
    profiler = _profiler(profile == "first")
    with measure("store"):
        created, updated, _ = write_all(batch, chunk, provenance)
    _dump(profiler, "first")
    assert (created, updated) == (rows, 0), (created, updated)
    assert Resource.objects.count() == rows
    assert ResourceHistory.objects.count() == rows

    checkpoint()
    profiler = _profiler(profile == "replay")
    with measure("replay"):
        created, updated, unchanged = write_all(batch, chunk, provenance)
    _dump(profiler, "replay")
    assert (created, updated, unchanged) == (0, 0, rows), (created, updated, unchanged)
    assert ResourceHistory.objects.count() == rows
    store_peak = peak_rss_mb()

    resources = copy_out("phr_resource")
    history = copy_out("phr_resourcehistory")
    megabytes = (len(resources) + len(history)) / 1e6
    for kind, like in (("same", "INCLUDING ALL"), ("bare", "")):
        execute(f"CREATE TABLE bench_resource_{kind} (LIKE phr_resource {like})")
        execute(f"CREATE TABLE bench_history_{kind} (LIKE phr_resourcehistory {like})")
        checkpoint()
        with measure(f"copy_{kind}"):
            copy_in(f"bench_resource_{kind}", resources)
            copy_in(f"bench_history_{kind}", history)

    del resources, history

    # A corrected re-upload: the same batch with every tenth reading amended.
    # Not part of the goals; it shows the upsert path (COPY into a staging
    # table + INSERT ... ON CONFLICT DO UPDATE + history).
    changed = rows // 10
    for n in range(0, rows, 10):
        batch[n] = ({**batch[n][0], "status": "amended"}, batch[n][1])
    checkpoint()
    with measure("update"):
        created, updated, unchanged = write_all(batch, chunk, provenance)
    assert (created, updated, unchanged) == (0, changed, rows - changed)
    assert ResourceHistory.objects.count() == rows + changed

    del batch

    # manage.py reindex over a sound table: every row is read and indexed,
    # none rewritten.
    from phr.store import reindex_all

    checkpoint()
    with measure("reindex"):
        assert reindex_all() == rows
    report(rows, times, megabytes, store_peak)
    if keep:
        print(f"kept database {BENCH_DB}")
    else:
        drop_database(original)


def report(rows: int, times: dict[str, Phase], megabytes: float, store_peak: float) -> None:
    def rate(label: str) -> float:
        return rows / times[label].seconds

    print()
    print(f"{'phase':<32}{'seconds':>8}{'rows/s':>9}{'client CPU':>12}{'server CPU':>12}")
    for label, title in (
        ("store", "store: first write"),
        ("replay", "store: replay (no change)"),
        ("copy_same", "COPY, same schema and indexes"),
        ("copy_bare", "COPY, no indexes"),
        ("update", "store: 10% amended (upsert)"),
        ("reindex", "reindex_all (nothing changes)"),
    ):
        phase = times[label]
        server = "-" if phase.server_cpu is None else f"{phase.server_cpu:.2f}"
        print(
            f"{title:<32}{phase.seconds:>8.2f}{rate(label):>9,.0f}"
            f"{phase.client_cpu:>12.2f}{server:>12}"
        )
    print(f"(COPY moved {megabytes:.0f} MB of resource + history rows)")
    print()
    print(f"store / same-schema COPY   {rate('store') / rate('copy_same'):6.1%}  (goal >= 50%)")
    print(f"store / unindexed COPY     {rate('store') / rate('copy_bare'):6.1%}")
    print(f"replay / first write speed {rate('replay') / rate('store'):6.2f}x (goal >= 1x)")
    print(f"peak memory (max RSS)      {store_peak:6.0f} MB after the store phases, "
          f"{peak_rss_mb():.0f} MB with the COPY exports")
    print(f"load average at the end    {os.getloadavg()[0]:6.2f} (2 cores: above ~1 the figures "
          "are noisy)")


def _profiler(enabled: bool) -> Any:
    if not enabled:
        return None
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    return profiler


def _dump(profiler: Any, label: str) -> None:
    if profiler is None:
        return
    import pstats

    profiler.disable()
    print(f"--- profile of the {label} write (top 25 by own time) ---")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="observations to write")
    parser.add_argument("--chunk", type=int, default=5000, help="rows per transaction")
    parser.add_argument(
        "--profile", choices=("first", "replay"), help="cProfile one store phase"
    )
    parser.add_argument(
        "--keep", action="store_true", help=f"keep the {BENCH_DB} database afterwards"
    )
    args = parser.parse_args()
    run(args.rows, args.chunk, args.profile, args.keep)


if __name__ == "__main__":
    main()
