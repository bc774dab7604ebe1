"""Benchmark: transaction Bundles of 100 Observations POSTed over HTTP to a
real server, against bare fhir.resources validation of the same JSON.

    DEBUG=1 DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
        .venv/bin/python bench/bench_fhir_bundle.py [--bundles 500] [--per-bundle 100]

Run by hand (never in the test suite). It creates a scratch database
(`hagukumi_bench_bundle`, dropped and recreated, migrated, dropped at the
end unless --keep) and:

1. sets up a clinic, one clinic staff member with MFA and a bearer API
   token of the clinic, and 500 mothers, each with an account and an
   active care consent to the clinic for vitals;
2. builds 500 transaction Bundles of 100 Observations (one mother each:
   body weight, blood pressure panel with two components, body
   temperature, pulse; each with the clinic system's identifier, so a
   resend would change nothing) as JSON bytes, before anything is timed;
3. starts gunicorn (the Procfile's web command, DEBUG off) on a free port
   against the scratch database, and POSTs the Bundles to /fhir with
   --clients concurrent clients (keep-alive sessions) — timed: wall
   time, this process's CPU, the gunicorn workers' CPU and the database
   server's CPU (the backends serving the scratch database, from /proc);
4. validates the same resources with bare fhir.resources
   (`fhir.resources.R4B` model_validate of every Observation of the same
   JSON) in this process, on one core — timed.

It prints resources/s of both and the ratio POST / validation (goal: at
least 50%; validation is the floor of what the API must do). Figures in
bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.common import server_version

BENCH_DB = "hagukumi_bench_bundle"
EHR = "urn:oid:1.2.392.100495.20.3.61.1"
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
SECRET = "bench-only-secret-key-" + "x" * 40


def _quantity(value: float, unit: str, code: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": code}


def observation(mother: uuid.UUID, n: int, number: str) -> dict[str, Any]:
    """A home or clinic vital sign as an EHR sends it."""
    kind = n % 4
    base: dict[str, Any] = {
        "resourceType": "Observation",
        "identifier": [{"system": EHR, "value": number}],
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "subject": {"reference": f"Patient/{mother}"},
        "effectiveDateTime": f"2026-{1 + n % 12:02d}-{1 + n % 28:02d}T09:{n % 60:02d}:00+09:00",
    }
    if kind == 0:
        base["code"] = {"coding": [{"system": LOINC, "code": "29463-7", "display": "Body weight"}]}
        base["valueQuantity"] = _quantity(round(55 + (n % 200) / 10, 1), "kg", "kg")
    elif kind == 1:
        base["code"] = {"coding": [{"system": LOINC, "code": "85354-9", "display": "BP panel"}]}
        base["component"] = [
            {
                "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                "valueQuantity": _quantity(100 + n % 40, "mmHg", "mm[Hg]"),
            },
            {
                "code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                "valueQuantity": _quantity(60 + n % 30, "mmHg", "mm[Hg]"),
            },
        ]
    elif kind == 2:
        base["code"] = {"coding": [{"system": LOINC, "code": "8310-5", "display": "Body temp"}]}
        base["valueQuantity"] = _quantity(round(36 + (n % 20) / 10, 1), "Cel", "Cel")
    else:
        base["code"] = {"coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}]}
        base["valueQuantity"] = _quantity(60 + n % 40, "/min", "/min")
    return base


def build_bundles(
    mothers: list[uuid.UUID], bundles: int, per_bundle: int, prefix: str = "B"
) -> list[bytes]:
    import orjson

    out = []
    for b in range(bundles):
        mother = mothers[b % len(mothers)]
        entries = [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": observation(mother, b * per_bundle + n, f"{prefix}{b}-{n}"),
                "request": {"method": "POST", "url": "Observation"},
            }
            for n in range(per_bundle)
        ]
        out.append(
            orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})
        )
    return out


def set_up(mothers: int) -> tuple[str, list[uuid.UUID]]:
    """The clinic, its staff member with MFA and token, the mothers with
    their consents; returns the token's secret and the mothers' ids."""
    from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
    from django.utils import timezone

    from phr import services
    from phr.authentication import api_token_create
    from phr.models import Membership, Organization, Patient, Provenance, Role, User
    from phr.terminology import Category
    from sharing.models import Consent, ConsentPurpose

    clinic = Organization.objects.create(
        kind=Organization.Kind.CLINIC, code="1019999999", name="Bench Clinic"
    )
    staff = User.objects.create_user(email="staff@bench.example.jp", password=None)
    Membership.objects.create(user=staff, organization=clinic, role=Role.CLINIC_STAFF)
    TOTP.activate(staff, generate_totp_secret())
    _, secret = api_token_create(user=staff, name="bench EHR", organization=clinic)
    users = User.objects.bulk_create(
        # "!" is Django's unusable password (no hashing for 500 accounts).
        [User(email=f"mother{n}@bench.example.jp", password="!") for n in range(mothers)]  # noqa: S106
    )
    provenance = services.provenance_create(origin=Provenance.Origin.SYSTEM)
    ids = []
    now = timezone.now()
    consents = []
    for n, user in enumerate(users):
        patient = services.patient_create(
            kind=Patient.Kind.ADULT,
            resource=services.patient_resource(family="前橋", given=f"母{n}"),
            provenance=provenance,
            account=user,
        )
        ids.append(patient.pk)
        consents.append(
            Consent(
                patient=patient,
                granted_by=user,
                grantee_org=clinic,
                purpose=ConsentPurpose.CARE,
                categories=[Category.VITALS],
                starts_at=now,
            )
        )
    Consent.objects.bulk_create(consents)
    return secret, ids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int, workers: int) -> subprocess.Popen[bytes]:
    from django.conf import settings

    db = settings.DATABASES["default"]
    host = db["HOST"] or "127.0.0.1"
    url = f"postgres://{db['USER']}@{host}:{db['PORT'] or 5432}/{BENCH_DB}"
    if db["PASSWORD"]:
        url = f"postgres://{db['USER']}:{db['PASSWORD']}@{host}:{db['PORT'] or 5432}/{BENCH_DB}"
    env = {
        **os.environ,
        "DEBUG": "0",
        "SECRET_KEY": SECRET,
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "0",
        "DATABASE_URL": url,
        "API_RATE_LIMIT": "100000/hour",
    }
    env.pop("REDIS_URL", None)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "config.wsgi:application",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ],
        cwd=common.ROOT,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("gunicorn did not start")


def _cpu_of(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def gunicorn_cpu(master: int) -> float:
    return _cpu_of(master) + sum(_cpu_of(child) for child in _children(master))


def database_cpu() -> dict[int, float]:
    """CPU seconds of each backend serving the scratch database (the
    server runs on this machine, as in CI)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [BENCH_DB],
        )
        pids = [row[0] for row in cursor.fetchall()]
    return {pid: _cpu_of(pid) for pid in pids}


def post_all(port: int, secret: str, bodies: list[bytes], clients: int) -> list[int]:
    import requests

    local = threading.local()

    def session() -> Any:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.headers.update(
                {
                    "Authorization": f"Bearer {secret}",
                    "Content-Type": "application/fhir+json",
                    "Accept": "application/fhir+json",
                }
            )
        return local.session

    url = f"http://127.0.0.1:{port}/fhir"

    def one(body: bytes) -> int:
        response = session().post(url, data=body, timeout=300)
        if response.status_code != 200:
            print(response.status_code, response.text[:500])
        return int(response.status_code)

    with ThreadPoolExecutor(max_workers=clients) as pool:
        return list(pool.map(one, bodies))


def validate_bare(bodies: list[bytes]) -> tuple[int, float, float]:
    """fhir.resources alone on the same JSON: parse each Bundle and validate
    every Observation with the R4B model. Returns (resources, s, CPU s)."""
    import orjson
    from fhir.resources.R4B import get_fhir_model_class

    model = get_fhir_model_class("Observation")
    # Built on first use: not timed, as in the warmed-up server.
    model.model_validate(orjson.loads(bodies[0])["entry"][0]["resource"])
    count = 0
    cpu = time.process_time()
    start = time.perf_counter()
    for body in bodies:
        for entry in orjson.loads(body)["entry"]:
            model.model_validate(entry["resource"])
            count += 1
    return count, time.perf_counter() - start, time.process_time() - cpu


def warm_up(port: int, secret: str, mother: uuid.UUID, workers: int, master: int) -> None:
    """Small Bundles first, until every worker has served some (built the
    fhir.resources models, which happens on first use, and opened its
    database connection), so that none of that is timed."""
    for _ in range(20):
        post_all(port, secret, build_bundles([mother], 4 * workers, 2, "warm"), workers)
        cpus = [_cpu_of(child) for child in _children(master)]
        if len(cpus) == workers and min(cpus) > 0.5 * max(cpus):
            break
    print("gunicorn workers' CPU after warm-up: " + ", ".join(f"{c:.1f} s" for c in cpus))


def run(
    bundles: int, per_bundle: int, mothers: int, clients: int, workers: int, keep: bool
) -> None:
    import django

    os.environ.pop("REDIS_URL", None)
    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    settings.DEBUG = False
    original = common.recreate_database(BENCH_DB)
    call_command("migrate", verbosity=0)
    print(f"server: {server_version()}; database {BENCH_DB}")
    secret, ids = set_up(mothers)
    start = time.perf_counter()
    bodies = build_bundles(ids, bundles, per_bundle)
    megabytes = sum(len(b) for b in bodies) / 1e6
    print(
        f"{bundles} Bundles of {per_bundle} Observations ({megabytes:.1f} MB JSON) "
        f"for {mothers} mothers built in {time.perf_counter() - start:.1f} s"
    )
    from django.db import connection

    connection.close()
    port = free_port()
    server = start_server(port, workers)
    try:
        warm_up(port, secret, ids[0], workers, server.pid)
        common.checkpoint()
        cpu_server_before = gunicorn_cpu(server.pid)
        db_before = database_cpu()
        cpu_before = time.process_time()
        start = time.perf_counter()
        statuses = post_all(port, secret, bodies, clients)
        seconds = time.perf_counter() - start
        client_cpu = time.process_time() - cpu_before
        server_cpu = gunicorn_cpu(server.pid) - cpu_server_before
        db_after = database_cpu()
        db_cpu = sum(cpu - db_before.get(pid, 0.0) for pid, cpu in db_after.items())
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    from phr.models import Resource

    failed = sum(1 for s in statuses if s != 200)
    stored = Resource.objects.filter(resource_type="Observation").count()
    resources = bundles * per_bundle
    count, v_seconds, v_cpu = validate_bare(bodies)
    post_rate = resources / seconds
    validate_rate = count / v_seconds
    print(f"\nPOST /fhir: {bundles} transactions, {failed} failed; {stored} Observations stored")
    print(f"{'phase':<34}{'s':>8}{'resources/s':>13}{'CPU s':>30}")
    print(
        f"{'POST transaction Bundles (HTTP)':<34}{seconds:8.1f}{post_rate:13.0f}"
        f"{f'client {client_cpu:.1f}, gunicorn {server_cpu:.1f}, db {db_cpu:.1f}':>30}"
    )
    print(
        f"{'bare fhir.resources validation':<34}{v_seconds:8.1f}{validate_rate:13.0f}{v_cpu:30.1f}"
    )
    print(
        f"\nPOST / validation  {100 * post_rate / validate_rate:5.1f}%  (goal >= 50%; "
        f"{clients} clients, {workers} gunicorn workers, {os.cpu_count()} cores)"
    )
    per_resource = 1e6 * (server_cpu + db_cpu) / resources
    print(
        f"server-side CPU per resource: {per_resource:.0f} µs (gunicorn + database); "
        f"validation alone {1e6 * v_cpu / count:.0f} µs"
    )
    print(f"load average at the end      {os.getloadavg()[0]:.2f}")
    if keep:
        print(f"kept database {BENCH_DB}")
    else:
        common.drop_database(BENCH_DB, original)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", type=int, default=500)
    parser.add_argument("--per-bundle", type=int, default=100)
    parser.add_argument("--mothers", type=int, default=500)
    parser.add_argument("--clients", type=int, default=2, help="concurrent HTTP clients")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args()
    run(args.bundles, args.per_bundle, args.mothers, args.clients, args.workers, args.keep)


if __name__ == "__main__":
    main()
