"""Research projects: a researcher applies (the page and the service),
with specific errors in Japanese and English; k follows "published as
data"; every project gets its own pseudonym salt; researchers see only
their own institution's projects (another's is a 404, like a missing
one); nobody else reaches the portal."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.urls import reverse

from phr.models import Role
from sharing import research
from sharing.models import ResearchProject
from tests import factories as f
from tests.sharing.research import portal_world as w
from tests.sharing.research.portal_world import *  # noqa: F403 (the personas' fixtures)

pytestmark = pytest.mark.django_db

APPLY = "/research/apply/"


def form_data(municipalities: list[Any], **overrides: Any) -> dict[str, Any]:
    fields = w.application()
    data: dict[str, Any] = {
        "title": fields["title"],
        "ethics_approval_number": fields["ethics_approval_number"],
        "purpose": fields["purpose"],
        "categories": [str(c) for c in fields["categories"]],
        "cohort_kind": str(fields["cohort_kind"]),
        "municipalities": [str(m.pk) for m in municipalities],
        "birth_year_from": "2020",
        "birth_year_to": "2025",
        "period_start": "2020-01-01",
        "period_end": "2026-06-30",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def test_a_researcher_applies_on_the_page(
    applicant: Any, institute: Any, municipality: Any, town2: Any
) -> None:
    client = w.client_for(applicant)
    page = client.get(APPLY)
    assert page.status_code == 200
    assert "研究の申請" in w.text(page)

    response = client.post(APPLY, form_data([municipality, town2]))

    project = ResearchProject.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("research:project", args=[project.pk])
    assert project.organization == institute
    assert project.applicant == applicant
    assert project.status == ResearchProject.Status.SUBMITTED
    assert project.k == 5
    assert project.expires_on is None
    assert set(project.municipalities.all()) == {municipality, town2}
    assert project.categories == ["infant_checkups", "vaccinations"]
    assert (project.birth_year_from, project.birth_year_to) == (2020, 2025)
    assert len(bytes(project.pseudonym_salt)) == 32
    [row] = w.audits("research.apply")
    assert row.outcome == "success"
    assert row.actor_id == applicant.pk
    assert row.actor_role == "researcher"
    assert row.organization_id == institute.pk
    assert row.patient_id is None
    assert row.purpose == "research"
    assert row.detail == {"project": str(project.pk)}
    shown = client.get(response["Location"])
    assert shown.status_code == 200
    assert "乳幼児健診と予防接種の研究" in w.text(shown)
    assert "審査中" in w.text(shown)


def test_results_published_as_data_need_k_10(applicant: Any, municipality: Any) -> None:
    w.client_for(applicant).post(APPLY, form_data([municipality], publish="on"))
    assert ResearchProject.objects.get().k == 10


def test_every_project_gets_its_own_salt(applicant: Any, municipality: Any) -> None:
    one = research.project_apply(user=applicant, municipalities=[municipality], **w.application())
    two = research.project_apply(user=applicant, municipalities=[municipality], **w.application())
    assert bytes(one.pseudonym_salt) != bytes(two.pseudonym_salt)


@pytest.mark.parametrize(
    ("overrides", "ja", "en"),
    [
        (
            {"period_start": "2026-01-01", "period_end": "2025-12-31"},
            "データの期間の終了日 2025-12-31 が開始日 2026-01-01 より前です。",
            "The data period ends (2025-12-31) before it starts (2026-01-01).",
        ),
        (
            {"birth_year_from": "2024", "birth_year_to": "2021"},
            "出生年（まで）2021 が出生年（から）2024 より前です。",
            "Birth year to (2021) is before birth year from (2024).",
        ),
        (
            {"categories": None},
            "記録の種類を1つ以上選んでください。",
            "Choose at least one kind of record.",
        ),
        (
            {"municipalities": None},
            "市区町村を1つ以上選んでください。",
            "Choose at least one municipality.",
        ),
        (
            {"ethics_approval_number": ""},
            "倫理審査の承認番号を入力してください。",
            "Enter the ethics approval number.",
        ),
        (
            {"birth_year_from": "1850"},
            "出生年（から）: 1850 は 1900年から",
            "Birth year from: 1850 must be between 1900 and",
        ),
    ],
)
def test_a_wrong_application_is_refused_with_a_specific_message(
    applicant: Any, municipality: Any, overrides: dict[str, Any], ja: str, en: str
) -> None:
    data = form_data(
        [municipality], **{k: v for k, v in overrides.items() if k != "municipalities"}
    )
    if "municipalities" in overrides:
        data.pop("municipalities")
    response = w.client_for(applicant).post(APPLY, data)
    assert response.status_code == 400
    assert ja in w.text(response)
    english = w.in_english(w.client_for(applicant)).post(APPLY, data)
    assert english.status_code == 400
    assert en in w.text(english)
    assert not ResearchProject.objects.exists()
    assert not w.audits("research.apply")


def test_the_service_refuses_a_reversed_period_too(applicant: Any, municipality: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        research.project_apply(
            user=applicant,
            municipalities=[municipality],
            **w.application(period_start=date(2026, 1, 1), period_end=date(2025, 12, 31)),
        )
    assert "period_end" in caught.value.message_dict


def test_only_municipalities_can_be_covered(applicant: Any, institute: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        research.project_apply(user=applicant, municipalities=[institute], **w.application())
    assert "子ども健康研究所" in caught.value.message_dict["municipalities"][0]


def test_nobody_but_a_researcher_applies(
    admin: Any, officer: Any, mother: Any, municipality: Any
) -> None:
    for user in (admin, officer, mother):
        assert w.client_for(user).post(APPLY, form_data([municipality])).status_code == 404
        with pytest.raises(PermissionDenied):
            research.project_apply(user=user, municipalities=[municipality], **w.application())
    assert not ResearchProject.objects.exists()
    assert {row.outcome for row in w.audits("research.apply")} == {"denied"}


def test_researchers_see_only_their_institutions_projects(
    project: Any, applicant: Any, colleague: Any, stranger_researcher: Any
) -> None:
    url = reverse("research:project", args=[project.pk])
    for user in (applicant, colleague):
        client = w.client_for(user)
        assert project.title in w.text(client.get("/research/"))
        assert client.get(url).status_code == 200
        assert client.get(reverse("research:export_new", args=[project.pk])).status_code == 200
    outsider = w.client_for(stranger_researcher)
    assert project.title not in w.text(outsider.get("/research/"))
    assert outsider.get(url).status_code == 404
    assert outsider.get(reverse("research:export_new", args=[project.pk])).status_code == 404
    missing = reverse("research:project", args=["00000000-0000-0000-0000-000000000000"])
    assert outsider.get(missing).status_code == 404


def test_the_portal_is_a_404_for_families_and_other_staff(
    mother: Any, municipal_officer: Any, clinician: Any, project: Any
) -> None:
    for user in (mother, municipal_officer, clinician):
        client = w.client_for(user)
        for url in (
            "/research/",
            APPLY,
            reverse("research:project", args=[project.pk]),
            reverse("research:reviews"),
            reverse("research:review", args=[project.pk]),
        ):
            assert client.get(url).status_code == 404, (user, url)


def test_a_researcher_without_mfa_is_sent_to_set_it_up(institute: Any) -> None:
    user = f.make_member(Role.RESEARCHER, institute, mfa=False)
    response = w.client_for(user).get("/research/")
    assert response.status_code == 302
    assert response["Location"] == reverse("mfa_activate_totp")
    # and the services give such a user no role
    assert research.researcher_institutions(user) == []


def test_the_portal_needs_a_login() -> None:
    from django.test import Client

    response = Client().get("/research/")
    assert response.status_code == 302
    assert reverse("account_login") in response["Location"]


def test_the_project_page_says_why_no_export_yet(project: Any, applicant: Any) -> None:
    page = w.text(w.client_for(applicant).get(reverse("research:project", args=[project.pk])))
    assert "このプロジェクトは承認されていません（審査中）。" in page


def test_the_approved_project_offers_the_export(approved_project: Any, colleague: Any) -> None:
    url = reverse("research:project", args=[approved_project.pk])
    page = w.text(w.client_for(colleague).get(url))
    assert reverse("research:export_new", args=[approved_project.pk]) in page
    assert "2人中2人" in page
