"""Personas and helpers of the research portal's tests
(tests/sharing/research/test_projects.py, test_review.py,
test_exports_ui.py, test_delivery.py).

The applicant researcher and a colleague at the same institution; a
researcher at another institution (the stranger); a platform admin; a
privacy officer of a municipality the project covers and one of a
municipality it does not; a parent (the `mother` fixture). Everyone
staff has MFA, as staff must.

Import the fixtures with `from tests.sharing.research.portal_world import *`.
"""

from __future__ import annotations

import zipfile
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client
from django.urls import reverse

from phr.models import AuditEvent, Membership, Organization, Role, User
from phr.terminology import Category
from sharing import research
from sharing.models import CohortKind, ResearchExport, ResearchProject
from tests import factories as f
from tests.totp import code_for_user


@pytest.fixture(autouse=True)
def fresh_cache() -> Any:
    # allauth keeps login attempts and used TOTP codes in the cache.
    cache.clear()
    yield
    cache.clear()


def _institute(code: str, name: str) -> Organization:
    return Organization.objects.create(kind=Organization.Kind.RESEARCH, code=code, name=name)


@pytest.fixture
def institute(db: None) -> Organization:
    return _institute("RES-PORTAL-1", "子ども健康研究所")


@pytest.fixture
def other_institute(db: None) -> Organization:
    return _institute("RES-PORTAL-2", "Other Institute")


@pytest.fixture
def applicant(institute: Organization) -> User:
    return f.make_member(Role.RESEARCHER, institute, display_name="研究 一郎")


@pytest.fixture
def colleague(institute: Organization) -> User:
    return f.make_member(Role.RESEARCHER, institute, display_name="研究 二郎")


@pytest.fixture
def stranger_researcher(other_institute: Organization) -> User:
    return f.make_member(Role.RESEARCHER, other_institute, display_name="他所 三郎")


@pytest.fixture
def admin(db: None) -> User:
    user = f.UserFactory(is_platform_admin=True, display_name="管理 花子")
    f.enable_totp(user)
    return user


def make_officer(municipality: Organization, **fields: Any) -> User:
    user = f.make_member(Role.MUNICIPAL_STAFF, municipality, **fields)
    Membership.objects.filter(user=user, organization=municipality).update(is_privacy_officer=True)
    return user


@pytest.fixture
def town2(db: None) -> Organization:
    return f.MunicipalityFactory(name="二番町")


@pytest.fixture
def uncovered_town(db: None) -> Organization:
    return f.MunicipalityFactory(name="遠い村")


@pytest.fixture
def officer(municipality: Organization) -> User:
    return make_officer(municipality, display_name="個人情報 保護子")


@pytest.fixture
def uncovered_officer(uncovered_town: Organization) -> User:
    return make_officer(uncovered_town, display_name="別の 保護者")


def application(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "title": "乳幼児健診と予防接種の研究",
        "ethics_approval_number": "ETH-2026-001",
        "purpose": "乳幼児の発育と予防接種の時期の関係を調べる。",
        "categories": [Category.INFANT_CHECKUPS, Category.VACCINATIONS],
        "cohort_kind": CohortKind.BOTH,
        "birth_year_from": 2020,
        "birth_year_to": 2025,
        "period_start": date(2020, 1, 1),
        "period_end": date(2026, 6, 30),
        "publish": False,
    }
    fields.update(overrides)
    return fields


@pytest.fixture
def project(applicant: User, municipality: Organization, town2: Organization) -> ResearchProject:
    return research.project_apply(
        user=applicant, municipalities=[municipality, town2], **application()
    )


def expiry(days: int = 365) -> date:
    return research.today() + timedelta(days=days)


@pytest.fixture
def approved_project(project: ResearchProject, admin: User, officer: User) -> ResearchProject:
    """Approved by two reviewers: the admin first (setting the expiry),
    then the covered municipality's privacy officer."""
    research.project_review(user=admin, project=project, decision="approve", expires_on=expiry())
    research.project_review(user=officer, project=project, decision="approve")
    project.refresh_from_db()
    return project


def client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def fresh_client(user: User) -> Client:
    """A client whose user just entered the authenticator code: the
    re-authentication that reviews, export requests and download links
    need (phr.auth.sensitive_action)."""
    client = client_for(user)
    response = client.post(reverse("mfa_reauthenticate"), {"code": code_for_user(user)})
    assert response.status_code == 302, response.content
    return client


def in_english(client: Client) -> Client:
    client.post(reverse("set_language"), {"language": "en", "next": "/"})
    return client


def text(response: Any) -> str:
    return response.content.decode()


def audits(action: str, **filters: Any) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action, **filters).order_by("id"))


def done_export(
    project: ResearchProject, user: User, media_root: Path, content: bytes = b"release"
) -> ResearchExport:
    """An export as the release builder leaves it when done: status done,
    its folder under MEDIA_ROOT/research/<id>/ with release.zip."""
    export = ResearchExport.objects.create(
        project=project,
        requested_by=user,
        filters=research.default_filters(project),
        status=ResearchExport.Status.DONE,
        report={"cohort_size": 120, "released_persons": 118, "k": 5, "achieved_k": 6},
    )
    directory = f"research/{export.pk}"
    folder = media_root / directory
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / "release.zip", "w") as archive:
        archive.writestr("release_report.json", content)
    export.directory = directory
    export.save(update_fields=["directory"])
    return export
