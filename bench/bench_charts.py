"""Benchmark: chart-data latency for a mother with two years of home
readings (vitals/charts.py).

    DEBUG=1 .venv/bin/python bench/bench_charts.py [--requests 200] [--keep]

Run by hand (never in the test suite). Like the other benchmarks it
creates a scratch database (`hagukumi_bench_charts`, dropped and
recreated, migrated, dropped again at the end unless --keep) on the server
the settings point at, and builds one mother in her 30th week of pregnancy
with two years of readings from a device — a blood pressure panel four
times a day and a weight once a day (2,920 + 730 = 3,650 Observations) —
plus her pre-pregnancy weight and height from her clinic, written through
the record store (COPY) with the device's provenance.

It then GETs, through Django's test Client in-process as the mother (a
session login), `--requests` times each after a warm-up:

- the JSON chart data of all two years (/vitals/charts/<id>/data.json?period=all),
- the charts page over the default 90 days (/vitals/charts/<id>/),
- the charts page over all two years (?period=all: 3,650 points drawn and
  tabled),

and prints the median and p95 time of the whole request (session, the
policy point and its audit row, the one query for the readings, the
drawing and the template) and the SQL queries one request runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import drop_database, recreate_database, server_version

BENCH_DB = "hagukumi_bench_charts"
DAYS = 730
BP_PER_DAY = 4


@dataclass
class Page:
    name: str
    url: str
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    queries: int = 0
    size: int = 0


def _quantity(value: float, code: str, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": code}


def build() -> tuple[Any, Any, int]:
    from django.utils import timezone

    from phr import store
    from phr.models import Patient, Provenance
    from phr.selectors import JAPAN
    from phr.services import provenance_create
    from tests import factories as f

    loinc = "http://loinc.org"
    mother = f.UserFactory(email="bench-mother@example.jp")
    patient = f.make_patient(kind=Patient.Kind.ADULT, given="花子", account=mother)
    today = timezone.localdate(timezone=JAPAN)
    due = today + timedelta(days=70)  # 30 weeks today
    subject = {"reference": f"Patient/{patient.pk}"}
    clinic = provenance_create(origin=Provenance.Origin.CLINIC)
    store.record_write(
        {
            "resourceType": "EpisodeOfCare",
            "status": "active",
            "patient": subject,
            "period": {"start": (due - timedelta(days=280)).isoformat()},
            "extension": [
                {"url": "https://hagukumi.jp/fhir/StructureDefinition/due-date",
                 "valueDate": due.isoformat()}
            ],
        },
        provenance=clinic,
    )  # fmt: skip
    for code, value, unit in (("56077-1", 55.0, "kg"), ("8302-2", 160.0, "cm")):
        store.record_write(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": loinc, "code": code}]},
                "subject": subject,
                "effectiveDateTime": (due - timedelta(days=250)).isoformat(),
                "valueQuantity": _quantity(value, unit, unit),
            },
            provenance=clinic,
        )
    device = provenance_create(origin=Provenance.Origin.DEVICE)
    items = []
    start = datetime(today.year, today.month, today.day, 7, 0, tzinfo=JAPAN) - timedelta(
        days=DAYS - 1
    )
    for day in range(DAYS):
        morning = start + timedelta(days=day)
        items.append(
            (
                {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": loinc, "code": "29463-7"}]},
                    "subject": subject,
                    "effectiveDateTime": morning.isoformat(),
                    "valueQuantity": _quantity(55.0 + (day % 30) / 10, "kg", "kg"),
                },
                store.Source("urn:bench:scale", f"w{day}"),
            )
        )
        for n in range(BP_PER_DAY):
            at = morning + timedelta(hours=4 * n)
            items.append(
                (
                    {
                        "resourceType": "Observation",
                        "status": "final",
                        "code": {"coding": [{"system": loinc, "code": "85354-9"}]},
                        "subject": subject,
                        "effectiveDateTime": at.isoformat(),
                        "component": [
                            {"code": {"coding": [{"system": loinc, "code": "8480-6"}]},
                             "valueQuantity": _quantity(110 + (day + n) % 25, "mm[Hg]", "mmHg")},
                            {"code": {"coding": [{"system": loinc, "code": "8462-4"}]},
                             "valueQuantity": _quantity(70 + (day * 3 + n) % 15, "mm[Hg]",
                                                        "mmHg")},
                        ],
                    },
                    store.Source("urn:bench:cuff", f"bp{day}-{n}"),
                )
            )  # fmt: skip
    store.records_write_bulk(items, provenance=device)
    return mother, patient, len(items)


def one(client: Any, url: str, cpu: list[float] | None = None) -> tuple[float, int]:
    cpu_start = time.process_time()
    start = time.perf_counter()
    response = client.get(url)
    elapsed = time.perf_counter() - start
    if cpu is not None:
        cpu.append(time.process_time() - cpu_start)
    assert response.status_code == 200, response.status_code
    return elapsed, len(response.content)


def queries_of_one(client: Any, url: str) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        one(client, url)
    return len(captured.captured_queries)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(round(0.95 * len(ordered)) - 1, 0)]


def run(requests: int, keep: bool) -> None:
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.urls import reverse

    settings.DEBUG = False  # no query log kept in memory (as in production)
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]

    original = recreate_database(BENCH_DB)
    try:
        call_command("migrate", verbosity=0)
        server = server_version()
        started = time.perf_counter()
        mother, patient, written = build()
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
        built = time.perf_counter() - started
        print(f"server: {server}; database {BENCH_DB} ({built:.1f} s to build)")
        print(
            f"  one mother, {written:,} device readings over {DAYS} days "
            f"({BP_PER_DAY} blood pressures and 1 weight a day), in her 30th week"
        )
        page = reverse("vitals:chart-person", args=[patient.pk])
        data = reverse("vitals:chart-data", args=[patient.pk])
        pages = [
            Page("JSON, all 2 years", data + "?period=all"),
            Page("page, 90 days", page),
            Page("page, all 2 years", page + "?period=all"),
        ]
        client = Client()
        client.force_login(mother)
        for item in pages:
            for _ in range(5):  # warm up: imports, templates, first plans, grants
                one(client, item.url)
            for _ in range(requests):
                elapsed, item.size = one(client, item.url, item.cpu)
                item.times.append(elapsed)
            item.queries = queries_of_one(client, item.url)
        report(pages)
    finally:
        if keep:
            print(f"kept database {BENCH_DB}")
        else:
            drop_database(BENCH_DB, original)


def report(pages: list[Page]) -> None:
    print()
    print(
        f"{'request':<20}{'requests':>9}{'median ms':>11}{'p95 ms':>9}{'CPU ms':>9}"
        f"{'queries':>9}{'KiB':>8}"
    )
    for item in pages:
        print(
            f"{item.name:<20}{len(item.times):>9}"
            f"{statistics.median(item.times) * 1000:>11.1f}{p95(item.times) * 1000:>9.1f}"
            f"{statistics.median(item.cpu) * 1000:>9.1f}{item.queries:>9}{item.size / 1024:>8.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per page")
    parser.add_argument(
        "--keep", action="store_true", help=f"keep the {BENCH_DB} database afterwards"
    )
    args = parser.parse_args()
    run(args.requests, args.keep)


if __name__ == "__main__":
    main()
