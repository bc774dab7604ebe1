"""Benchmark: rendering a child's handbook page (母子健康手帳).

    DEBUG=1 .venv/bin/python bench/bench_handbook.py [--requests 200] [--keep]

Run by hand (never in the test suite). Like the other benchmarks it
creates a scratch database (`hagukumi_bench_handbook`, dropped and
recreated, migrated, dropped again at the end unless --keep) on the server
the settings point at, and builds one family: a mother, guardian of two
children born five years ago —

- "big": five years of records — birth data, the infant checkups up to
  five years with their measurements and findings, 30 vaccinations (the
  routine doses of the demo child and more from a clinic), 200
  dispensings from a pharmacy and 2,000 home weights from a device;
- "small": the same checkups and routine vaccinations, and a tenth of the
  other records (3 vaccinations beyond them — fewer, 20 dispensings, 200
  home weights) —

with the builders the tests use (tests/phr/handbook_data.py: phr/demo.py's
checkups and vaccinations, written through the record store with their
source's provenance). It then GETs /handbook/<child>/ through Django's test
Client, in-process, as the mother (a session login), `--requests` times per
child in alternating rounds after a warm-up, and prints the median and p95
render time (the whole request: session, the policy point and its audit
row, the schedule engine, the handbook queries, the template) and the SQL
queries one request runs — the same for both children: the page never
asks once per record. The print page of the big child is measured too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import drop_database, recreate_database, server_version

BENCH_DB = "hagukumi_bench_handbook"


@dataclass
class Child:
    name: str
    url: str
    counts: dict[str, int]
    records: int = 0
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    queries: int = 0


def build(birth: date) -> tuple[Any, list[Child]]:
    from django.urls import reverse

    from phr.models import Guardianship, Patient, Resource
    from phr.services import guardianship_add
    from tests import factories as f
    from tests.phr import handbook_data

    municipality = f.MunicipalityFactory()
    mother = f.UserFactory(email="bench-mother@example.jp")
    mother_patient = f.make_patient(kind=Patient.Kind.ADULT, given="花子", account=mother)
    del mother_patient
    children = []
    for name, scale in (("big", 1.0), ("small", 0.1)):
        child = f.make_patient(given=name, birth_date=birth)
        guardianship_add(
            guardian=mother, child=child, relationship=Guardianship.Relationship.MOTHER
        )
        counts = handbook_data.five_years(
            child=child, birth=birth, municipality=municipality, scale=scale
        )
        item = Child(name, reverse("handbook:book", args=[child.pk]), counts)
        item.records = Resource.objects.filter(compartments__overlap=[child.pk]).count()
        children.append(item)
    return mother, children


def one(client: Any, url: str, cpu: list[float] | None = None) -> float:
    """One request: its wall time (and its CPU time in this process,
    which stays meaningful on a busy machine, added to `cpu`)."""
    cpu_start = time.process_time()
    start = time.perf_counter()
    response = client.get(url)
    elapsed = time.perf_counter() - start
    if cpu is not None:
        cpu.append(time.process_time() - cpu_start)
    assert response.status_code == 200, response.status_code
    return elapsed


def queries_of_one(client: Any, url: str) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        one(client, url)
    return len(captured.captured_queries)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(round(0.95 * len(ordered)) - 1, 0)]


def run(requests: int, rounds: int, keep: bool) -> None:
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.utils import timezone

    settings.DEBUG = False  # no query log kept in memory (as in production)
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]

    original = recreate_database(BENCH_DB)
    try:
        call_command("migrate", verbosity=0)
        server = server_version()
        started = time.perf_counter()
        today = timezone.localdate()
        mother, children = build(today - timedelta(days=5 * 365 + 10))
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
        built = time.perf_counter() - started
        print(f"server: {server}; database {BENCH_DB} ({built:.1f} s to build)")
        for child in children:
            print(
                f"  {child.name}: {child.records:,} records in the child's compartment "
                f"({child.counts['vaccinations']} vaccinations, {child.counts['dispensings']} "
                f"dispensings, {child.counts['vitals']:,} home measurements, and the checkups)"
            )
        client = Client()
        client.force_login(mother)
        for child in children:  # warm up: imports, template loading, first plans, grants
            for _ in range(10):
                one(client, child.url)
        per_round = max(requests // rounds, 1)
        for _ in range(rounds):
            for child in children:
                child.times += [one(client, child.url, child.cpu) for _ in range(per_round)]
        for child in children:
            child.queries = queries_of_one(client, child.url)
        big = children[0]
        print_url = big.url + "print/"
        for _ in range(10):
            one(client, print_url)
        printed = Child("print view, big", print_url, big.counts, big.records)
        printed.times = [one(client, print_url, printed.cpu) for _ in range(per_round * rounds)]
        printed.queries = queries_of_one(client, print_url)
        report(children, printed)
    finally:
        if keep:
            print(f"kept database {BENCH_DB}")
        else:
            drop_database(BENCH_DB, original)


def report(children: list[Child], printed: Child) -> None:
    print()
    print(
        f"{'page':<22}{'records':>9}{'requests':>10}{'median ms':>11}{'p95 ms':>9}"
        f"{'CPU ms':>9}{'queries':>9}"
    )
    for child in [*children, printed]:
        name = child.name if child is printed else f"handbook, {child.name}"
        print(
            f"{name:<22}{child.records:>9,}{len(child.times):>10}"
            f"{statistics.median(child.times) * 1000:>11.1f}{p95(child.times) * 1000:>9.1f}"
            f"{statistics.median(child.cpu) * 1000:>9.1f}{child.queries:>9}"
        )
    same = len({c.queries for c in children}) == 1
    print()
    print(
        "queries per page: "
        + ("the same for both children (they do not grow with the records)" if same
           else "DIFFERENT between the children — they grow with the records")
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per child")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds")
    parser.add_argument(
        "--keep", action="store_true", help=f"keep the {BENCH_DB} database afterwards"
    )
    args = parser.parse_args()
    run(args.requests, args.rounds, args.keep)


if __name__ == "__main__":
    main()
