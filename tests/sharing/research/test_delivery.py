"""Delivery: a download link for a finished export, shown once, only the
SHA-256 of its token kept; it works only for signed-in researchers of the
project's institution (everyone else: 404), expires after
RESEARCH_DOWNLOAD_DAYS, allows RESEARCH_DOWNLOAD_USES uses (counted with
a guarded UPDATE), can be revoked, stops when the project's approval
ends; every use and refusal is audited."""

from __future__ import annotations

import hashlib
import io
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from sharing import research
from sharing.models import ResearchDownload, ResearchExport
from tests.sharing.research import portal_world as w
from tests.sharing.research.portal_world import *  # noqa: F403 (the personas' fixtures)

pytestmark = pytest.mark.django_db


@pytest.fixture
def media(tmp_path: Path, settings: Any) -> Path:
    settings.MEDIA_ROOT = str(tmp_path)
    return tmp_path


@pytest.fixture
def export(approved_project: Any, applicant: Any, media: Path) -> ResearchExport:
    return w.done_export(approved_project, applicant, media, content=b'{"k": 5}')


def download_url(token: str) -> str:
    return reverse("research:download", args=[token])


def zip_names(response: Any) -> list[str]:
    body = b"".join(response.streaming_content)
    return zipfile.ZipFile(io.BytesIO(body)).namelist()


def test_a_link_is_made_once_and_only_its_hash_is_kept(
    export: Any, applicant: Any, settings: Any
) -> None:
    settings.RESEARCH_DOWNLOAD_DAYS = 7
    settings.RESEARCH_DOWNLOAD_USES = 3
    before = timezone.now()
    link, token = research.create_download(user=applicant, export=export)
    assert len(token) >= 43  # 32 random bytes, URL-safe base64
    assert link.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in {link.token_hash, str(link.pk)}
    assert link.max_uses == 3
    assert link.uses == 0
    assert before + timedelta(days=7) <= link.expires_at <= timezone.now() + timedelta(days=7)
    [row] = w.audits("research.link")
    assert row.outcome == "success"
    assert row.detail == {
        "project": str(export.project_id),
        "export": str(export.pk),
        "link": link.pk,
    }
    assert row.patient_id is None


def test_the_page_shows_the_new_link_once(export: Any, applicant: Any) -> None:
    client = w.fresh_client(applicant)
    response = client.post(reverse("research:link_create", args=[export.pk]))
    assert response.status_code == 302
    page = w.text(client.get(reverse("research:export", args=[export.pk])))
    assert "一度しか表示されません" in page
    link = ResearchDownload.objects.get()
    start = page.index('id="new-link-url" value="') + len('id="new-link-url" value="')
    url = page[start : page.index('"', start)]
    token = url.rstrip("/").rsplit("/", 1)[1]
    assert hashlib.sha256(token.encode()).hexdigest() == link.token_hash
    again = w.text(client.get(reverse("research:export", args=[export.pk])))
    assert token not in again
    assert 'id="new-link-url"' not in again
    # The link works for the researcher who made it.
    downloaded = client.get(url)
    assert downloaded.status_code == 200
    assert downloaded["Content-Type"] == "application/zip"
    assert "attachment" in downloaded["Content-Disposition"]
    assert zip_names(downloaded) == ["release_report.json"]


def test_a_link_creation_needs_a_fresh_authentication(export: Any, applicant: Any) -> None:
    response = w.client_for(applicant).post(reverse("research:link_create", args=[export.pk]))
    assert response.status_code == 302
    assert "reauthenticate" in response["Location"]
    assert not ResearchDownload.objects.exists()


def test_links_only_for_finished_exports_of_ones_own_institution(
    approved_project: Any, applicant: Any, stranger_researcher: Any, export: Any
) -> None:
    queued = ResearchExport.objects.create(project=approved_project, requested_by=applicant)
    with pytest.raises(research.ResearchRefused) as caught:
        research.create_download(user=applicant, export=queued)
    assert "この出力はまだダウンロードできません（待機中）。" in caught.value.message
    with pytest.raises(PermissionDenied):
        research.create_download(user=stranger_researcher, export=export)
    outsider = w.client_for(stranger_researcher)
    assert outsider.post(reverse("research:link_create", args=[export.pk])).status_code == 404
    assert outsider.get(reverse("research:export", args=[export.pk])).status_code == 404
    assert not ResearchDownload.objects.exists()
    assert {r.outcome for r in w.audits("research.link")} == {"denied"}


def test_the_colleague_downloads_and_each_use_is_counted_and_audited(
    export: Any, applicant: Any, colleague: Any, settings: Any
) -> None:
    settings.RESEARCH_DOWNLOAD_USES = 2
    link, token = research.create_download(user=applicant, export=export)
    client = w.client_for(colleague)
    for expected in (1, 2):
        response = client.get(download_url(token))
        assert response.status_code == 200
        assert zip_names(response) == ["release_report.json"]
        link.refresh_from_db()
        assert link.uses == expected
    third = client.get(download_url(token))
    assert third.status_code == 410
    assert "このリンクは使用回数の上限（2回）に達しました。" in w.text(third)
    link.refresh_from_db()
    assert link.uses == 2
    rows = w.audits("research.download")
    assert [r.outcome for r in rows] == ["success", "success", "denied"]
    assert {r.actor_id for r in rows} == {colleague.pk}
    assert all(r.patient_id is None and r.purpose == "research" for r in rows)
    assert rows[0].detail == {
        "project": str(export.project_id),
        "export": str(export.pk),
        "link": link.pk,
    }
    assert rows[2].detail["reason"] == "used_up"


def test_the_last_use_cannot_be_taken_twice(export: Any, applicant: Any, settings: Any) -> None:
    settings.RESEARCH_DOWNLOAD_USES = 1
    link, token = research.create_download(user=applicant, export=export)
    # Another request took the last use between our read and our update:
    # the guarded UPDATE (uses < max_uses) counts nothing and refuses.
    ResearchDownload.objects.filter(pk=link.pk).update(uses=1)
    with pytest.raises(research.DownloadGone):
        research.download_use(user=applicant, token=token)
    link.refresh_from_db()
    assert link.uses == 1


def test_an_expired_link_is_refused(export: Any, applicant: Any, settings: Any) -> None:
    settings.RESEARCH_DOWNLOAD_DAYS = 7
    link, token = research.create_download(
        user=applicant, export=export, at=timezone.now() - timedelta(days=8)
    )
    response = w.client_for(applicant).get(download_url(token))
    assert response.status_code == 410
    assert "このリンクは期限が切れました。" in w.text(response)
    link.refresh_from_db()
    assert link.uses == 0
    [row] = w.audits("research.download")
    assert (row.outcome, row.detail["reason"]) == ("denied", "expired")
    # still valid a moment before the seventh day ends
    fresh, fresh_token = research.create_download(user=applicant, export=export)
    assert research.download_use(
        user=applicant, token=fresh_token, at=fresh.expires_at - timedelta(seconds=1)
    )


def test_a_revoked_link_is_refused(export: Any, applicant: Any, colleague: Any) -> None:
    link, token = research.create_download(user=applicant, export=export)
    client = w.client_for(colleague)
    page = w.text(client.get(reverse("research:export", args=[export.pk])))
    assert reverse("research:link_revoke", args=[link.pk]) in page
    response = client.post(reverse("research:link_revoke", args=[link.pk]))
    assert response.status_code == 302
    link.refresh_from_db()
    assert link.revoked_at is not None
    refused = w.client_for(applicant).get(download_url(token))
    assert refused.status_code == 410
    assert "このリンクは取り消されました。" in w.text(refused)
    [revoked] = w.audits("research.link_revoke")
    assert revoked.actor_id == colleague.pk
    assert revoked.outcome == "success"
    listed = w.text(client.get(reverse("research:export", args=[export.pk])))
    assert "取り消し済み" in listed


def test_others_cannot_revoke(export: Any, applicant: Any, stranger_researcher: Any) -> None:
    link, _token = research.create_download(user=applicant, export=export)
    response = w.client_for(stranger_researcher).post(
        reverse("research:link_revoke", args=[link.pk])
    )
    assert response.status_code == 404
    with pytest.raises(PermissionDenied):
        research.revoke_download(user=stranger_researcher, download=link)
    link.refresh_from_db()
    assert link.revoked_at is None


def test_the_link_stops_when_the_approval_ends(
    export: Any, applicant: Any, approved_project: Any
) -> None:
    link, token = research.create_download(user=applicant, export=export)
    yesterday = research.today() - timedelta(days=1)
    type(approved_project).objects.filter(pk=approved_project.pk).update(expires_on=yesterday)
    response = w.client_for(applicant).get(download_url(token))
    assert response.status_code == 410
    assert f"このプロジェクトの承認は {yesterday.isoformat()} に期限が切れました。" in w.text(
        response
    )
    with pytest.raises(research.ResearchRefused):
        research.create_download(user=applicant, export=export)
    link.refresh_from_db()
    assert link.uses == 0


def test_anyone_but_the_institutions_researchers_gets_404(
    export: Any,
    applicant: Any,
    stranger_researcher: Any,
    admin: Any,
    officer: Any,
    mother: Any,
) -> None:
    link, token = research.create_download(user=applicant, export=export)
    for user in (stranger_researcher, admin, officer, mother):
        assert w.client_for(user).get(download_url(token)).status_code == 404
    link.refresh_from_db()
    assert link.uses == 0
    denied = w.audits("research.download", outcome="denied")
    assert {r.actor_id for r in denied} == {
        stranger_researcher.pk,
        admin.pk,
        officer.pk,
        mother.pk,
    }
    assert {r.detail["reason"] for r in denied} == {"not_a_researcher"}
    # An unknown token is a 404 too; signed out, the login page comes first.
    assert w.client_for(applicant).get(download_url("x" * 43)).status_code == 404
    anonymous = Client().get(download_url(token))
    assert anonymous.status_code == 302
    assert reverse("account_login") in anonymous["Location"]
    link.refresh_from_db()
    assert link.uses == 0


def test_a_missing_release_file_counts_no_use(export: Any, applicant: Any, media: Path) -> None:
    link, token = research.create_download(user=applicant, export=export)
    (media / export.directory / "release.zip").unlink()
    response = w.client_for(applicant).get(download_url(token))
    assert response.status_code == 410
    link.refresh_from_db()
    assert link.uses == 0


def test_the_folder_must_lie_under_media_root(export: Any, applicant: Any) -> None:
    export.directory = "../../etc"
    assert research.release_zip_path(export) is None


@pytest.mark.django_db(transaction=True)
def test_simultaneous_requests_never_exceed_the_uses(
    approved_project: Any, applicant: Any, colleague: Any, media: Path, settings: Any
) -> None:
    """Eight requests at once on a link with two uses: exactly two get the
    release (the guarded UPDATE), the others are refused."""
    import threading

    from django.db import connection

    settings.RESEARCH_DOWNLOAD_USES = 2
    export = w.done_export(approved_project, applicant, media)
    _link, token = research.create_download(user=applicant, export=export)
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def attempt(user: Any) -> None:
        try:
            barrier.wait()
            research.download_use(user=user, token=token)
            outcomes.append("ok")
        except research.DownloadGone:
            outcomes.append("gone")
        finally:
            connection.close()

    threads = [
        threading.Thread(target=attempt, args=(applicant if i % 2 else colleague,))
        for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["gone"] * 6 + ["ok"] * 2
    assert ResearchDownload.objects.get().uses == 2
    # Audit rows outlive a transactional test's flush (the table is
    # INSERT-only): count this export's.
    assert len(w.audits("research.download", outcome="success", detail__export=str(export.pk))) == 2
