"""Benchmark: the cost of the access-policy point and the audit write per
FHIR read.

    DEBUG=1 .venv/bin/python bench/bench_access.py [--reads 2000] [--families 1000]

Run by hand (never in the test suite). Like bench_store.py it creates a
scratch database (`hagukumi_bench_access`, dropped and recreated, migrated,
dropped again at the end unless --keep) on the server the settings point
at, fills it with a town of families (each a mother and a child with
home vitals), gives clinics care consents from some of them (by default
three clinics, holding 1, 20 and 200 consents), and then times, in one run,
GET /fhir/Observation/{id} through Django's test Client, in-process, as
each clinic's system (bearer token of a clinic staff member with MFA), for
records a consent lets it read:

- full: the real path — fhir_search.resource_for loads the row by id and
  type (with its submitting organization and the access epoch) and
  sharing.access decides it in Python against the clinician's grants,
  kept from the previous request while the epoch is the same (else
  computed from the grant facts: DV blocks, own patient, guardianships,
  MFA, memberships, consents, one statement); one audit row is written per
  patient revealed (one INSERT, committed before the response); the
  Patient address redaction is asked;
- cold: the same with no grants kept (ACCESS_GRANT_CACHE_SIZE=0): the
  grant facts are read every time, as for the first read after any
  access change;
- bare: the same request through the same middleware, authentication,
  throttle, view, serialization (to_fhir) and renderer, with the three
  access functions the view calls patched out: fhir_search.resource_for
  loads the row by id and type alone (no grant, no decision), audit_rows
  writes nothing and redact_for returns the resource unchanged.

The two alternate in rounds, so a change in machine load hits both. It
prints reads/s, the ratio full / bare (goal: at most 1.5x), the CPU time
per read of this process and of the server process serving it (these stay
meaningful on a busy machine; the server's waits, e.g. the audit commit's
WAL flush, are not CPU), the queries one request of each runs, and checks
that every full read wrote its audit row and no bare read did.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import drop_database, recreate_database, server_cpu, server_version

BENCH_DB = "hagukumi_bench_access"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY = "https://hagukumi.jp/fhir/CodeSystem/data-category"


# --- the world -----------------------------------------------------------------------


@dataclass
class Clinic:
    """A clinic's system: its clinician's bearer token, and the Observations
    its consents let it read."""

    consents: int
    token: str
    reads: list[str] = field(default_factory=list)


@dataclass
class World:
    clinics: list[Clinic]
    resources: int = 0


def _observation(patient: uuid.UUID, day: date, n: int, rnd: random.Random) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
        "meta": {"tag": [{"system": CATEGORY, "code": "vitals"}]},
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "29463-7", "display": "Body weight"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": f"{day.isoformat()}T07:{n % 60:02d}:00+09:00",
        "valueQuantity": {
            "value": round(rnd.uniform(50, 70), 1),
            "unit": "kg",
            "system": UCUM,
            "code": "kg",
        },
    }


def build(families: int, per_patient: int, sizes: list[int], seed: int = 20261126) -> World:
    """A town of `families` mothers with a child each, `per_patient` home
    weights per person; one clinic per entry of `sizes`, that many families
    sharing vitals with it (a mother or a child each), so its clinician's
    grants hold that many consents; other clinics' consents (in force,
    expired, revoked) and a DV block in the tables too."""
    from allauth.mfa.models import Authenticator
    from django.contrib.auth.hashers import make_password
    from django.db import transaction
    from django.utils import timezone

    from phr import store
    from phr.authentication import api_token_create
    from phr.models import (
        Guardianship,
        Membership,
        Organization,
        Patient,
        Provenance,
        Residency,
        Role,
        User,
    )
    from sharing.models import Consent, DvBlock

    rnd = random.Random(seed)
    now = timezone.now()
    nobody_logs_in = make_password(None)  # an unusable password
    town = Organization.objects.create(kind="municipality", code="102016", name="前橋市")
    others = Organization.objects.bulk_create(
        [Organization(kind="clinic", code=f"10109{i:05d}", name=f"Clinic {i}") for i in range(5)]
    )
    mothers = User.objects.bulk_create(
        [
            User(email=f"mother{i}@bench.example.jp", password=nobody_logs_in)
            for i in range(families)
        ]
    )
    adults = Patient.objects.bulk_create(
        [Patient(kind="adult", account=mother) for mother in mothers]
    )
    children = Patient.objects.bulk_create([Patient(kind="child") for _ in range(families)])
    Guardianship.objects.bulk_create(
        [
            Guardianship(guardian=m, child=c, relationship="mother")
            for m, c in zip(mothers, children, strict=True)
        ]
    )
    Residency.objects.bulk_create(
        [Residency(patient=p, municipality=town) for p in (*adults, *children)]
    )
    shared = [children[i] if i % 2 else adults[i] for i in range(families)]
    consents = [
        # Other clinics' consents, expired and revoked ones: rows the
        # clinician's query must skip.
        Consent(
            patient=shared[i],
            granted_by=mothers[i],
            grantee_org=others[i % len(others)],
            purpose="care",
            categories=["vitals"],
            starts_at=now - timedelta(days=60),
            ends_at=now - timedelta(days=1) if i % 3 == 0 else None,
            revoked_at=now - timedelta(days=2) if i % 3 == 1 else None,
        )
        for i in range(families)
    ]
    clinics = []
    first = 0
    for n, size in enumerate(sizes):
        clinic = Organization.objects.create(
            kind="clinic", code=f"10101{n:05d}", name=f"Bench Clinic {size}"
        )
        clinician = User.objects.create(
            email=f"clinician{n}@bench.example.jp", password=nobody_logs_in
        )
        Membership.objects.create(user=clinician, organization=clinic, role=Role.CLINIC_STAFF)
        Authenticator.objects.create(user=clinician, type=Authenticator.Type.TOTP, data={})
        _token, secret = api_token_create(user=clinician, name="clinic EHR", organization=clinic)
        clinics.append(Clinic(consents=size, token=secret))
        for i in range(first, first + size):
            consents.append(
                Consent(
                    patient=shared[i % families],
                    granted_by=mothers[i % families],
                    grantee_org=clinic,
                    purpose="care",
                    categories=["vitals", "vaccinations"],
                    starts_at=now - timedelta(days=30),
                )
            )
        first += size
    Consent.objects.bulk_create(consents)
    DvBlock.objects.create(
        patient=children[-1], blocked_user=mothers[0], municipality=town, created_by=mothers[-1]
    )

    provenance = Provenance.objects.create(origin=Provenance.Origin.DEVICE, source="bench")
    start = date(2025, 4, 1)
    shared_ids: dict[str, list[str]] = {}
    total = 0
    for i in range(families):
        batch = [
            (_observation(patient.pk, start + timedelta(days=n), n, rnd), None)
            for patient in (adults[i], children[i])
            for n in range(per_patient)
        ]
        with transaction.atomic():
            store.records_write_bulk(batch, provenance=provenance)
        total += len(batch)
        reference = f"Patient/{shared[i].pk}"
        shared_ids[str(i)] = [r["id"] for r, _ in batch if r["subject"]["reference"] == reference]
    first = 0
    for clinic in clinics:
        for i in range(first, first + clinic.consents):
            clinic.reads += shared_ids[str(i % families)]
        first += clinic.consents
    return World(clinics=clinics, resources=total)


# --- the two paths -------------------------------------------------------------------


def _bare_resource_for(
    user: Any, resource_type: str, resource_id: str, *, purpose: str | None = None
) -> Any:
    """The row by id and type, nothing asked of sharing.access."""
    from phr.models import Resource

    try:
        rid = uuid.UUID(resource_id)
    except ValueError:
        return None
    return Resource.objects.filter(id=rid, resource_type=resource_type).first()


def _no_audit(*args: Any, **kwargs: Any) -> None:
    return None


def _no_redaction(user: Any, resource: dict[str, Any]) -> dict[str, Any]:
    return resource


@contextmanager
def bare() -> Iterator[None]:
    """The view's three access calls patched out (see the module doc)."""
    with (
        mock.patch("phr.fhir_search.resource_for", _bare_resource_for),
        mock.patch("phr.fhir_api.audit_rows", _no_audit),
        mock.patch("phr.fhir_api.redact_for", _no_redaction),
    ):
        yield


@contextmanager
def full() -> Iterator[None]:
    yield


@contextmanager
def cold() -> Iterator[None]:
    """The full path with no grants kept between requests (as every first
    read after an access change anywhere): the facts statement each read."""
    from django.test import override_settings

    from sharing.access import _GRANT_CACHE

    _GRANT_CACHE.clear()
    with override_settings(ACCESS_GRANT_CACHE_SIZE=0):
        yield
    _GRANT_CACHE.clear()


@dataclass
class Timing:
    reads: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    server: float = 0.0

    @property
    def rate(self) -> float:
        return self.reads / self.seconds


def read_many(client: Any, token: str, ids: list[str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds of this process and of the server process."""
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    server = server_cpu() or 0.0
    cpu = time.process_time()
    start = time.perf_counter()
    for rid in ids:
        response = client.get(f"/fhir/Observation/{rid}", **headers)
        if response.status_code != 200:
            raise SystemExit(f"GET /fhir/Observation/{rid}: {response.status_code}")
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return seconds, cpu, (server_cpu() or 0.0) - server


def queries_of_one(client: Any, token: str, rid: str) -> list[str]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        response = client.get(f"/fhir/Observation/{rid}", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200
    return [q["sql"] for q in captured.captured_queries]


def _short(sql: str) -> str:
    """The verb and the table (or prepared statement) of a query."""
    sql = " ".join(sql.split())
    verb = sql.split()[0]
    if verb == "EXECUTE":
        return f"EXECUTE {sql.split()[1]}"
    # Django quotes the table it selects from; a scalar subquery's does not count.
    quoted = re.search(r' FROM "(\w+)"', sql)
    if quoted:
        return f"{verb} FROM {quoted.group(1)}"
    for marker in (" FROM ", " INTO "):
        if marker in sql:
            return f"{verb} {marker.strip()} {sql.partition(marker)[2].split()[0]}"
    return sql[:60]


# --- the run ---------------------------------------------------------------------------


def measure(client: Any, token: str, ids: list[str], rounds: int) -> dict[str, Timing]:
    """Both paths over the same ids, alternating in rounds."""
    timings = {"full": Timing(), "cold": Timing(), "bare": Timing()}
    per_round = max(1, len(ids) // rounds)
    for n in range(rounds):
        chunk = ids[n * per_round : (n + 1) * per_round]
        order = [("full", full), ("cold", cold), ("bare", bare)]
        if n % 2:
            order.reverse()
        for label, path in order:
            with path():
                seconds, cpu, server = read_many(client, token, chunk)
            timing = timings[label]
            timing.reads += len(chunk)
            timing.seconds += seconds
            timing.cpu += cpu
            timing.server += server
    return timings


def run(
    reads: int, families: int, per_patient: int, sizes: list[int], rounds: int, keep: bool
) -> None:
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from rest_framework.throttling import UserRateThrottle

    from phr.models import AuditEvent

    # DEBUG=1 only selects the embedded server; production runs without it
    # (no query log kept in memory).
    settings.DEBUG = False
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]  # the test Client's host
    # The API throttle (6000/hour) would stop the run half-way; both paths
    # still run the throttle's code, at a rate the run cannot reach.
    UserRateThrottle.rate = "100000000/hour"

    original = recreate_database(BENCH_DB)
    try:
        call_command("migrate", verbosity=0)
        server = server_version()
        started = time.perf_counter()
        world = build(families, per_patient, sizes)
        with connection.cursor() as cursor:
            # Planner statistics, as a database in service has them (both
            # paths plan their queries with them).
            cursor.execute("ANALYZE")
        print(
            f"server: {server}; database {BENCH_DB}; {families} families, "
            f"{world.resources:,} observations, clinics holding {sizes} consents "
            f"({time.perf_counter() - started:.1f} s to build)"
        )
        client = Client()
        rnd = random.Random(7)
        results = []
        for clinic in world.clinics:
            ids = [rnd.choice(clinic.reads) for _ in range(reads)]
            for path in (full, cold, bare):  # warm up: imports, caches, first plans
                with path():
                    read_many(client, clinic.token, ids[:20])
            audit_before = AuditEvent.objects.count()
            timings = measure(client, clinic.token, ids, rounds)
            audited = AuditEvent.objects.count() - audit_before
            reads_audited = timings["full"].reads + timings["cold"].reads
            assert audited == reads_audited, (audited, reads_audited)
            full_queries = queries_of_one(client, clinic.token, ids[0])
            with cold():
                cold_queries = queries_of_one(client, clinic.token, ids[0])
            with bare():
                bare_queries = queries_of_one(client, clinic.token, ids[0])
            queries = {"full": full_queries, "cold": cold_queries, "bare": bare_queries}
            results.append((clinic, timings, queries, audited))
        report(results)
    finally:
        if keep:
            print(f"kept database {BENCH_DB}")
        else:
            drop_database(BENCH_DB, original)


def report(results: list[tuple[Clinic, dict[str, Timing], dict[str, list[str]], int]]) -> None:
    print()
    print(
        f"{'consents':>8}  {'path':<6}{'reads':>7}{'seconds':>9}{'reads/s':>9}"
        f"{'ms/read':>9}{'CPU ms':>8}{'server':>8}{'queries':>9}{'ratio':>8}{'CPU':>8}"
    )
    for clinic, timings, queries, _audited in results:
        bare_t = timings["bare"]
        bare_cpu = (bare_t.cpu + bare_t.server) / bare_t.reads
        for label in ("full", "cold", "bare"):
            t = timings[label]
            shown = ""
            if label != "bare":
                ratio = bare_t.rate / t.rate
                cpu_ratio = ((t.cpu + t.server) / t.reads) / bare_cpu
                shown = f"{ratio:7.2f}x{cpu_ratio:7.2f}x"
            print(
                f"{clinic.consents:>8}  {label:<6}{t.reads:>7}{t.seconds:>9.2f}{t.rate:>9,.0f}"
                f"{1000 * t.seconds / t.reads:>9.2f}{1000 * t.cpu / t.reads:>8.2f}"
                f"{1000 * t.server / t.reads:>8.2f}{len(queries[label]):>9}{shown:>16}"
            )
    print()
    print(
        "ratio = full / bare wall time per read (goal <= 1.5x); CPU = the same for CPU time "
        "(this process + the server process)"
    )
    print(
        "full = grants kept between requests (validated by the access epoch), the steady "
        "state of a system reading with one token; cold = grants computed every read"
    )
    print("CPU ms = this process; server = CPU ms of the server process serving it")
    print("every full and cold read wrote its audit row, no bare read did")
    _clinic, _timings, queries, _audited = results[0]
    for title in ("full", "cold", "bare"):
        print(f"queries, {title}: " + "; ".join(_short(q) for q in queries[title]))
    print(
        f"load average at the end {os.getloadavg()[0]:5.2f} (2 cores: above ~1 the figures "
        "are noisy)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=2000, help="reads per path")
    parser.add_argument("--families", type=int, default=1000, help="mothers (each with a child)")
    parser.add_argument("--per-patient", type=int, default=20, help="observations per person")
    parser.add_argument(
        "--consents",
        default="1,20,200",
        help="consents held by each clinic measured (comma-separated)",
    )
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per path")
    parser.add_argument(
        "--keep", action="store_true", help=f"keep the {BENCH_DB} database afterwards"
    )
    args = parser.parse_args()
    sizes = [int(n) for n in args.consents.split(",")]
    run(args.reads, args.families, args.per_patient, sizes, args.rounds, args.keep)


if __name__ == "__main__":
    main()
