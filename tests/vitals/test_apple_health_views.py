"""The Apple Health upload page and an import's page, per persona: the
mother for herself, a guardian and the other guardian for the child; a
clinic she shares with, a stranger and a missing person get 404."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, override_settings
from django.utils import timezone

from phr.models import Job, Resource
from sharing.services import consent_grant
from vitals import apple_health_sample as sample

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(tmp_path: Path) -> Any:
    with override_settings(MEDIA_ROOT=tmp_path):
        yield tmp_path


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def url(patient: Any, *rest: Any) -> str:
    tail = "".join(f"{part}/" for part in rest)
    return f"/vitals/imports/{patient.pk}/{tail}"


_capture: list[Any] = []


@pytest.fixture(autouse=True)
def _run_jobs_on_commit(django_capture_on_commit_callbacks: Any) -> Any:
    # The job is queued on commit; run those callbacks (eager Celery) as
    # the end of the request's transaction would.
    _capture.append(django_capture_on_commit_callbacks)
    yield
    _capture.pop()


def send(client: Client, patient: Any, data: bytes, name: str = "export.zip") -> Any:
    with _capture[-1](execute=True):
        return client.post(url(patient), {"file": SimpleUploadedFile(name, data)})


def observations(patient: Any) -> int:
    return Resource.objects.filter(compartments__overlap=[patient.pk],
                                   resource_type="Observation").count()


def test_the_mother_imports_her_export_and_sees_the_report(
    mother: Any, mother_patient: Any
) -> None:
    client = client_for(mother)
    page = client.get(url(mother_patient))
    assert page.status_code == 200
    assert b'enctype="multipart/form-data"' in page.content
    response = send(client, mother_patient, sample.zipped(sample.sample_export()))
    assert response.status_code == 302
    job = Job.objects.get(kind="vitals.apple_health")
    assert response["Location"] == url(mother_patient, job.pk)
    report = client.get(response["Location"])
    assert report.status_code == 200
    assert b'id="import-result"' in report.content
    assert observations(mother_patient) == 12 + len(sample.SAMPLE_STEP_TOTALS)
    # Listed on the upload page; the progress fragment says it is done.
    assert f"/{job.pk}/".encode() in client.get(url(mother_patient)).content
    fragment = client.get(url(mother_patient, job.pk, "progress"), HTTP_HX_REQUEST="true")
    assert fragment.status_code == 200
    assert fragment["HX-Refresh"] == "true"


def test_a_re_upload_adds_nothing(mother: Any, mother_patient: Any) -> None:
    client = client_for(mother)
    send(client, mother_patient, sample.sample_export(), "export.xml")
    count = observations(mother_patient)
    send(client, mother_patient, sample.zipped(sample.sample_export(pointer_seed=5)))
    assert observations(mother_patient) == count


def test_a_truncated_upload_shows_the_error_and_imports_nothing(
    mother: Any, mother_patient: Any
) -> None:
    client = client_for(mother)
    data = sample.sample_export()
    response = send(client, mother_patient, data[:-100], "export.xml")
    report = client.get(response["Location"], HTTP_ACCEPT_LANGUAGE="ja")
    assert b'id="import-failed"' in report.content
    assert "途中で切れています" in report.content.decode()
    assert "行目" in report.content.decode()
    assert observations(mother_patient) == 0


def test_a_file_that_is_not_an_export_is_refused_on_the_form(
    mother: Any, mother_patient: Any
) -> None:
    response = send(client_for(mother), mother_patient, b"%PDF-1.7 ...", "export.pdf")
    assert response.status_code == 400
    assert not Job.objects.filter(kind="vitals.apple_health").exists()


@pytest.mark.parametrize("who", ["mother", "father"])
def test_a_guardian_imports_for_the_child(
    request: pytest.FixtureRequest, who: str, child: Any, father: Any
) -> None:
    user = request.getfixturevalue(who)
    client = client_for(user)
    assert client.get(url(child)).status_code == 200
    response = send(client, child, sample.sample_export(), "export.xml")
    assert response.status_code == 302
    assert observations(child) > 0


def test_the_other_guardian_sees_the_childs_imports(
    mother: Any, child: Any, father: Any
) -> None:
    send(client_for(mother), child, sample.sample_export(), "export.xml")
    job = Job.objects.get(kind="vitals.apple_health")
    assert client_for(father).get(url(child, job.pk)).status_code == 200


def test_the_father_may_not_import_for_the_mother(
    father: Any, mother_patient: Any
) -> None:
    assert client_for(father).get(url(mother_patient)).status_code == 404


@pytest.fixture
def shared_clinician(clinician: Any, clinic: Any, mother: Any, mother_patient: Any) -> Any:
    consent_grant(patient=mother_patient, by=mother, purpose="care", categories=["vitals"],
                  grantee_org=clinic, starts_at=timezone.now() - timedelta(days=1))
    return clinician


@pytest.mark.parametrize("who", ["stranger", "shared_clinician"])
def test_others_get_404_on_every_page(
    request: pytest.FixtureRequest, who: str, mother: Any, mother_patient: Any
) -> None:
    send(client_for(mother), mother_patient, sample.sample_export(), "export.xml")
    job = Job.objects.get(kind="vitals.apple_health")
    client = client_for(request.getfixturevalue(who))
    assert client.get(url(mother_patient)).status_code == 404
    assert client.get(url(mother_patient, job.pk)).status_code == 404
    assert client.get(url(mother_patient, job.pk, "progress")).status_code == 404
    before = observations(mother_patient)
    assert send(client, mother_patient, sample.sample_export(), "x.xml").status_code == 404
    assert observations(mother_patient) == before


def test_an_import_is_only_found_under_its_own_person(
    mother: Any, mother_patient: Any, child: Any
) -> None:
    client = client_for(mother)
    send(client, mother_patient, sample.sample_export(), "export.xml")
    job = Job.objects.get(kind="vitals.apple_health")
    assert client.get(url(child, job.pk)).status_code == 404
    assert client.get(f"/vitals/imports/{uuid.uuid4()}/").status_code == 404


def test_anonymous_is_sent_to_log_in(mother_patient: Any) -> None:
    response = Client().get(url(mother_patient))
    assert response.status_code == 302
    assert "login" in response["Location"]
