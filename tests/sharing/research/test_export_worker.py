"""The research.export job: requested through sharing.research, run
eagerly end to end (release files, report, one audit row per released
patient, progress), refused when k cannot be reached, and on a real Celery
worker killed with SIGKILL mid-export: the job is re-claimed after its
lease and completes with exactly one release.

The worker test is marked `worker`: skipped without REDIS_URL."""

from __future__ import annotations

import json
import os
import signal
import time
import zipfile
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connections

from phr.models import AuditEvent, Job, Membership, Organization, Role
from sharing import research
from sharing.models import ResearchApproval, ResearchExport, ResearchProject, ResearchRegime
from tests import factories as f
from tests.conftest import wait_for
from tests.sharing.research import engine_world


def _approved_project(world: engine_world.World) -> tuple[ResearchProject, Any]:
    project = engine_world.project()
    project.municipalities.add(world.municipality)
    researcher = f.UserFactory()
    Membership.objects.create(
        user=researcher, organization=project.organization, role=Role.RESEARCHER
    )
    f.enable_totp(researcher)
    project.applicant = researcher
    project.save(update_fields=["applicant"])
    for _ in range(2):
        ResearchApproval.objects.create(
            project=project,
            reviewer=f.UserFactory(is_platform_admin=True),
            reviewer_role="admin",
            decision=ResearchApproval.Decision.APPROVE,
            expires_on=date(2030, 1, 1),
        )
    ResearchRegime.objects.create(
        municipality=world.municipality,
        kind=ResearchRegime.Kind.OPT_OUT,
        notice_published_on=date(2020, 1, 1),
    )
    return project, researcher


def _release_dir(export: ResearchExport) -> Path:
    return Path(settings.MEDIA_ROOT) / export.directory


@pytest.fixture
def media(tmp_path: Path, settings: Any) -> Path:
    settings.MEDIA_ROOT = str(tmp_path / "media")
    return Path(settings.MEDIA_ROOT)


@pytest.mark.django_db
def test_export_job_end_to_end(media: Path, django_capture_on_commit_callbacks: Any) -> None:
    world = engine_world.build()
    project, researcher = _approved_project(world)
    with django_capture_on_commit_callbacks(execute=True):
        export = research.request_export(user=researcher, project=project, filters={})
    export.refresh_from_db()
    assert export.status == ResearchExport.Status.DONE, export.reason
    assert export.directory == f"research/{export.pk}"
    folder = _release_dir(export)
    with zipfile.ZipFile(folder / "release.zip") as archive:
        names = set(archive.namelist())
    assert {"csv/persons.csv", "fhir/manifest.json", "release_report.json"} <= names
    assert json.loads((folder / "release_report.json").read_text()) == export.report
    assert export.report["export_id"] == str(export.pk)
    assert not list(media.glob("research/*.partial-*"))
    job = Job.objects.get(pk=export.job_id)
    assert job.status == Job.Status.DONE
    assert job.progress_total
    assert job.progress_done == job.progress_total
    # one audit row per released patient, purpose research, the requester
    # (the INSERT-only audit table keeps other tests' rows: this export's)
    rows = AuditEvent.objects.filter(action="research.export", detail__export=str(export.pk))
    released = {p.pk for p in world.mothers + world.children}
    assert {r.patient_id for r in rows} == released
    assert rows.count() == len(released)
    row = rows.first()
    assert row.actor_id == researcher.pk
    assert row.purpose == "research"
    assert row.organization_id == project.organization_id
    assert row.detail == {"project": str(project.pk), "export": str(export.pk)}
    assert row.categories


@pytest.mark.django_db
def test_cohort_too_small_is_refused_with_the_reason(
    media: Path, django_capture_on_commit_callbacks: Any
) -> None:
    world = engine_world.build(pairs=2)
    project, researcher = _approved_project(world)
    with django_capture_on_commit_callbacks(execute=True):
        export = research.request_export(user=researcher, project=project, filters={})
    export.refresh_from_db()
    assert export.status == ResearchExport.Status.REFUSED
    assert "k = 5" in export.reason
    assert " / " in export.reason
    assert not (media / "research" / str(export.pk)).exists()
    assert not list(media.glob("research/*.partial-*"))
    assert not AuditEvent.objects.filter(
        action="research.export", detail__project=str(project.pk)
    ).exists()


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_worker_killed_mid_export_completes_once(media: Path, start_worker: Any) -> None:
    from phr.jobs import sweep_expired_leases

    world = engine_world.build()
    project, researcher = _approved_project(world)
    # Hold the guardianship table: the builder waits on it (birth items)
    # after the job was claimed and its partial folder made.
    blocker = connections.create_connection("default")
    blocker.set_autocommit(False)
    with blocker.cursor() as cur:
        cur.execute("LOCK TABLE phr_guardianship IN ACCESS EXCLUSIVE MODE")
    first = start_worker(lease_seconds=3)
    export = research.request_export(user=researcher, project=project, filters={})
    wait_for(lambda: ResearchExport.objects.get(pk=export.pk).status == "running")
    wait_for(lambda: bool(list(media.glob("research/*.partial-*"))))
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    blocker.rollback()
    blocker.close()
    job = Job.objects.get(pk=export.job_id)
    assert job.status == Job.Status.RUNNING
    assert job.attempts == 1
    time.sleep(3.5)  # the lease runs out
    start_worker(lease_seconds=30)
    assert job.pk in sweep_expired_leases()
    wait_for(lambda: ResearchExport.objects.get(pk=export.pk).status == "done", timeout=90)
    export.refresh_from_db()
    job.refresh_from_db()
    assert job.status == Job.Status.DONE
    assert job.attempts == 2
    assert (_release_dir(export) / "release.zip").exists()
    assert not list(media.glob("research/*.partial-*"))
    assert list((media / "research").iterdir()) == [_release_dir(export)]
    rows = AuditEvent.objects.filter(action="research.export", detail__export=str(export.pk))
    assert rows.count() == len(world.mothers) + len(world.children)
    assert Organization.objects.filter(pk=project.organization_id).exists()
