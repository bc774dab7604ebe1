"""Shared fixtures. Celery runs eagerly here unless a test is marked
`worker` (those start a real worker process on REDIS_URL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import settings as hypothesis_settings

from config.celery import app as celery_app

ROOT = Path(__file__).resolve().parents[1]

# Hypothesis: a small, derandomized profile in CI (.ci/run exports
# HYPOTHESIS_PROFILE=ci), a larger one for developers.
hypothesis_settings.register_profile(
    "ci", max_examples=50, deadline=None, derandomize=True, database=None, print_blob=True
)
hypothesis_settings.register_profile("dev", max_examples=100, deadline=None)
hypothesis_settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev")
)


@pytest.fixture(autouse=True)
def _celery_eager(request: pytest.FixtureRequest) -> Iterator[None]:
    eager = request.node.get_closest_marker("worker") is None
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = eager
    celery_app.conf.task_eager_propagates = True
    yield
    celery_app.conf.task_always_eager = previous


# --------------------------------------------------------------------------
# Personas (healthchecks style): the mother owns her records and is guardian
# of the child; the father is the child's other guardian (not the mother's
# records); a clinic member, a municipal member (the family's municipality),
# another municipality's member, a staff member without MFA, a stranger.
# --------------------------------------------------------------------------

from tests import factories as f  # noqa: E402


@pytest.fixture
def municipality(db: None) -> Any:
    return f.MunicipalityFactory()


@pytest.fixture
def clinic(db: None) -> Any:
    return f.ClinicFactory()


@pytest.fixture
def mother(db: None) -> Any:
    return f.UserFactory(email="mother@example.jp", display_name="前橋 花子")


@pytest.fixture
def mother_patient(mother: Any, municipality: Any) -> Any:
    from phr.models import Patient
    from phr.services import residency_add

    patient = f.make_patient(kind=Patient.Kind.ADULT, given="花子", account=mother)
    residency_add(patient=patient, municipality=municipality, resident_number="M-1")
    return patient


@pytest.fixture
def child(mother: Any, mother_patient: Any, municipality: Any) -> Any:
    from phr.models import Guardianship
    from phr.services import guardianship_add, residency_add

    patient = f.make_patient(given="はる")
    guardianship_add(guardian=mother, child=patient, relationship=Guardianship.Relationship.MOTHER)
    residency_add(patient=patient, municipality=municipality, resident_number="C-1")
    return patient


@pytest.fixture
def father(db: None, child: Any) -> Any:
    from phr.models import Guardianship
    from phr.services import guardianship_add

    user = f.UserFactory(email="father@example.jp")
    guardianship_add(guardian=user, child=child, relationship=Guardianship.Relationship.FATHER)
    return user


@pytest.fixture
def clinician(clinic: Any) -> Any:
    return f.make_member(f.Role.CLINIC_STAFF, clinic)


@pytest.fixture
def municipal_officer(municipality: Any) -> Any:
    return f.make_member(f.Role.MUNICIPAL_STAFF, municipality)


@pytest.fixture
def other_municipal_officer(db: None) -> Any:
    return f.make_member(f.Role.MUNICIPAL_STAFF, f.MunicipalityFactory())


@pytest.fixture
def staff_without_mfa(municipality: Any) -> Any:
    return f.make_member(f.Role.MUNICIPAL_STAFF, municipality, mfa=False)


@pytest.fixture
def stranger(db: None) -> Any:
    return f.UserFactory(email="stranger@example.jp")


# --------------------------------------------------------------------------
# Background work: tests marked `worker` start a real Celery worker process
# on REDIS_URL; without REDIS_URL they are skipped (and listed by -ra).
# --------------------------------------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import os

    if os.environ.get("REDIS_URL"):
        return
    for item in items:
        if item.get_closest_marker("worker") is not None:
            item.add_marker(
                pytest.mark.skip(
                    reason=f"{item.name} needs REDIS_URL: it starts a real Celery worker on Redis"
                )
            )


def _database_url() -> str:
    from django.db import connection

    db = connection.settings_dict
    host = quote(db["HOST"] or "", safe="")
    port = f":{db['PORT']}" if db["PORT"] else ""
    password = f":{quote(db['PASSWORD'])}" if db["PASSWORD"] else ""
    return f"postgres://{db['USER']}{password}@{host}{port}/{db['NAME']}"


@pytest.fixture
def start_worker() -> Iterator[Any]:
    """Start real Celery worker processes (on REDIS_URL, against the test
    database) and kill them all at the end: start(lease_seconds=3); a
    prefork worker with pool="prefork" (one pool process), more settings
    with env={...}."""
    workers: list[subprocess.Popen[bytes]] = []

    from django.conf import settings

    def start(
        lease_seconds: int = 3, pool: str = "solo", env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        environment = {
            **os.environ,
            "DATABASE_URL": _database_url(),
            "JOB_LEASE_SECONDS": str(lease_seconds),
            "DEBUG": "1",
            "MEDIA_ROOT": str(settings.MEDIA_ROOT),
            **(env or {}),
        }
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                f"--pool={pool}",
                *(["--concurrency=1"] if pool == "prefork" else []),
                "--loglevel=warning",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=ROOT,
            env=environment,
            start_new_session=True,
        )
        workers.append(process)
        return process

    yield start
    for process in workers:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def wait_for(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


@pytest.fixture(scope="session", autouse=True)
def _end_stray_test_connections(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """Threads, a live server or a killed worker can leave a session on the
    test database; end them so the test database can be dropped."""
    yield
    from django.db import connection

    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


# --------------------------------------------------------------------------
# Sharing personas: a clinic the family shares with (and one it does not),
# an emergency responder, a researcher.
# --------------------------------------------------------------------------


@pytest.fixture
def other_clinic(db: None) -> Any:
    return f.ClinicFactory()


@pytest.fixture
def unconsented_clinician(other_clinic: Any) -> Any:
    return f.make_member(f.Role.CLINIC_STAFF, other_clinic)


@pytest.fixture
def emergency_service(db: None) -> Any:
    from phr.models import Organization

    return Organization.objects.create(
        kind=Organization.Kind.EMERGENCY, code="EMS-TEST", name="Test EMS"
    )


@pytest.fixture
def responder(emergency_service: Any) -> Any:
    return f.make_member(f.Role.EMERGENCY_RESPONDER, emergency_service)


@pytest.fixture
def researcher(db: None) -> Any:
    from phr.models import Organization

    institute = Organization.objects.create(
        kind=Organization.Kind.RESEARCH, code="RES-TEST", name="Test Institute"
    )
    return f.make_member(f.Role.RESEARCHER, institute)
