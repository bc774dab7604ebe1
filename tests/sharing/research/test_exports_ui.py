"""Export requests: only within the approval, only after the second
approval, only before the expiry — each refusal with a clear message
naming what is wrong (in Japanese and English), asked again when the job
starts; a request that passes is queued as a `research.export` job whose
page shows the progress (htmx polling, no inline script), the reason of
a refusal and the release report."""

from __future__ import annotations

import html
from datetime import datetime, time, timedelta
from typing import Any

import pytest
from django.urls import reverse

from phr.jobs import job_run
from phr.models import Job
from phr.terminology import Category
from sharing import research
from sharing.models import CohortKind, ResearchExport
from sharing.research_views import report_sections
from tests.sharing.research import portal_world as w
from tests.sharing.research.portal_world import *  # noqa: F403 (the personas' fixtures)

pytestmark = pytest.mark.django_db


def export_url(project: Any) -> str:
    return reverse("research:export_create", args=[project.pk])


def form(project: Any, **overrides: Any) -> dict[str, Any]:
    filters = research.default_filters(project)
    data: dict[str, Any] = {
        "birth_year_from": str(filters["birth_year_from"]),
        "birth_year_to": str(filters["birth_year_to"]),
        "municipalities": [str(m) for m in filters["municipalities"]],
        "cohort_kind": filters["cohort_kind"],
        "categories": filters["categories"],
        "formats": filters["formats"],
    }
    data.update(overrides)
    return data


def tokyo(day: Any, hour: int = 12) -> datetime:
    return datetime.combine(day, time(hour), tzinfo=research.JAPAN)


# --------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------


def test_no_export_before_any_approval(project: Any, applicant: Any) -> None:
    message = research.export_refusal(
        project=project, user=applicant, filters=research.default_filters(project)
    )
    assert message == (
        "このプロジェクトは承認されていません（審査中）。 / "
        "This project is not approved (under review)."
    )
    with pytest.raises(research.ResearchRefused):
        research.request_export(user=applicant, project=project, filters={})
    assert not ResearchExport.objects.exists()


def test_no_export_before_the_second_approval(project: Any, applicant: Any, admin: Any) -> None:
    research.project_review(user=admin, project=project, decision="approve", expires_on=w.expiry())
    project.refresh_from_db()
    with pytest.raises(research.ResearchRefused) as caught:
        research.request_export(user=applicant, project=project, filters={})
    assert "2人目の承認が必要です" in caught.value.message
    assert "needs a second approval (two-person rule; approvals so far: 1)" in caught.value.message
    assert not ResearchExport.objects.exists()
    [row] = w.audits("research.export_request")
    assert row.outcome == "denied"
    assert row.actor_id == applicant.pk
    assert row.patient_id is None
    assert row.detail == {"project": str(project.pk)}


def test_the_page_says_a_second_approval_is_needed(
    project: Any, applicant: Any, admin: Any
) -> None:
    research.project_review(user=admin, project=project, decision="approve", expires_on=w.expiry())
    client = w.fresh_client(applicant)
    page = w.text(client.get(reverse("research:export_new", args=[project.pk])))
    assert "このプロジェクトは2人目の承認が必要です" in page
    response = client.post(export_url(project), form(project))
    assert response.status_code == 400
    assert "このプロジェクトは2人目の承認が必要です（二者承認の原則。現在の承認: 1人）。" in w.text(
        response
    )
    english = w.in_english(client).post(export_url(project), form(project))
    assert "This project needs a second approval" in w.text(english)
    assert not ResearchExport.objects.exists()


def test_no_export_after_the_expiry(approved_project: Any, applicant: Any) -> None:
    last_day = approved_project.expires_on
    filters = research.default_filters(approved_project)
    # Still allowed on the last day, late in the evening in Japan ...
    assert (
        research.export_refusal(
            project=approved_project,
            user=applicant,
            filters=filters,
            at=tokyo(last_day, hour=23),
        )
        is None
    )
    # ... refused from the next day on.
    message = research.export_refusal(
        project=approved_project,
        user=applicant,
        filters=filters,
        at=tokyo(last_day + timedelta(days=1), hour=0),
    )
    assert message == (
        f"このプロジェクトの承認は {last_day.isoformat()} に期限が切れました。 / "
        f"This project's approval expired on {last_day.isoformat()}."
    )


def test_the_page_refuses_an_expired_project(approved_project: Any, colleague: Any) -> None:
    yesterday = research.today() - timedelta(days=1)
    type(approved_project).objects.filter(pk=approved_project.pk).update(expires_on=yesterday)
    response = w.fresh_client(colleague).post(export_url(approved_project), form(approved_project))
    assert response.status_code == 400
    assert f"このプロジェクトの承認は {yesterday.isoformat()} に期限が切れました。" in w.text(
        response
    )
    assert not ResearchExport.objects.exists()


@pytest.mark.parametrize(
    ("field", "value", "ja", "en"),
    [
        (
            "birth_year_from",
            2019,
            "出生年（から）: 2019 は承認された範囲（2020–2025年）の外です。",
            "Birth year from: 2019 is outside the approved range 2020–2025.",
        ),
        (
            "birth_year_to",
            2026,
            "出生年（まで）: 2026 は承認された範囲（2020–2025年）の外です。",
            "Birth year to: 2026 is outside the approved range 2020–2025.",
        ),
        (
            "categories",
            [Category.MEDICATIONS],
            "記録の種類: 「",
            "Kinds of record not in the approval:",
        ),
        ("formats", ["xml"], "出力形式: xml は使えません", "Format: xml is not available"),
        ("cohort_kind", "everyone", "対象: everyone は不明です。", "Cohort: everyone is unknown."),
    ],
)
def test_a_filter_outside_the_approval_is_refused_by_name(
    approved_project: Any, applicant: Any, field: str, value: Any, ja: str, en: str
) -> None:
    filters = {**research.default_filters(approved_project), field: value}
    with pytest.raises(research.ResearchRefused) as caught:
        research.request_export(user=applicant, project=approved_project, filters=filters)
    japanese, english = caught.value.message.split(" / ")
    assert ja in japanese
    assert en in english
    assert not ResearchExport.objects.exists()


def test_a_municipality_outside_the_approval_is_named(
    approved_project: Any, applicant: Any, uncovered_town: Any, municipality: Any
) -> None:
    response = w.fresh_client(applicant).post(
        export_url(approved_project),
        form(approved_project, municipalities=[str(municipality.pk), str(uncovered_town.pk)]),
    )
    assert response.status_code == 400
    assert f"市区町村: 「遠い村」（{uncovered_town.code}）は承認されていません。" in w.text(
        response
    )
    assert not ResearchExport.objects.exists()


def test_a_cohort_outside_the_approval_is_refused(
    applicant: Any, admin: Any, officer: Any, municipality: Any
) -> None:
    children_only = research.project_apply(
        user=applicant,
        municipalities=[municipality],
        **w.application(cohort_kind=CohortKind.CHILD),
    )
    research.project_review(
        user=admin, project=children_only, decision="approve", expires_on=w.expiry()
    )
    research.project_review(user=officer, project=children_only, decision="approve")
    children_only.refresh_from_db()
    for kind in (CohortKind.PREGNANCY, CohortKind.BOTH):
        message = research.export_refusal(
            project=children_only,
            user=applicant,
            filters={**research.default_filters(children_only), "cohort_kind": kind},
        )
        assert message is not None
        assert "は承認された対象（子ども）の外です。" in message
        assert "is outside the approved cohort (children)." in message
    assert (
        research.export_refusal(
            project=children_only,
            user=applicant,
            filters=research.default_filters(children_only),
        )
        is None
    )


def test_empty_choices_are_refused_not_widened(approved_project: Any, applicant: Any) -> None:
    response = w.fresh_client(applicant).post(
        export_url(approved_project),
        {"birth_year_from": "2020", "birth_year_to": "2025", "cohort_kind": "both"},
    )
    assert response.status_code == 400
    page = w.text(response)
    assert "市区町村を1つ以上選んでください。" in page
    assert "記録の種類を1つ以上選んでください。" in page
    assert "出力形式を1つ以上選んでください。" in page


def test_only_the_projects_researchers_may_export(
    approved_project: Any, stranger_researcher: Any, admin: Any, officer: Any, mother: Any
) -> None:
    filters = research.default_filters(approved_project)
    for user in (stranger_researcher, admin, officer, mother):
        message = research.export_refusal(project=approved_project, user=user, filters=filters)
        assert message == (
            "このプロジェクトの研究機関の研究者ではありません。 / "
            "You are not a researcher of this project's institution."
        )
    for user in (stranger_researcher, officer, mother):
        client = w.client_for(user)
        assert (
            client.get(reverse("research:export_new", args=[approved_project.pk])).status_code
            == 404
        )
        assert client.post(export_url(approved_project), form(approved_project)).status_code == 404
    assert not ResearchExport.objects.exists()


# --------------------------------------------------------------------------
# Requests that pass
# --------------------------------------------------------------------------


def test_a_request_within_the_approval_is_queued_with_normalized_filters(
    approved_project: Any, applicant: Any, municipality: Any
) -> None:
    export = research.request_export(
        user=applicant,
        project=approved_project,
        filters={
            "birth_year_from": "2021",
            "municipalities": [str(municipality.pk), municipality.pk],
            "categories": ["vaccinations"],
        },
    )
    assert export.status == ResearchExport.Status.QUEUED
    assert export.filters == {
        "birth_year_from": 2021,
        "birth_year_to": 2025,
        "municipalities": [municipality.pk],
        "cohort_kind": "both",
        "categories": ["vaccinations"],
        "formats": ["csv", "ndjson"],
    }
    job = Job.objects.get(pk=export.job_id)
    assert job.kind == "research.export"
    assert job.payload == {"export_id": str(export.id)}
    assert job.created_by == applicant
    assert job.organization_id == approved_project.organization_id
    [row] = w.audits("research.export_request")
    assert row.outcome == "success"
    assert row.categories == ["vaccinations"]
    assert row.detail == {"project": str(approved_project.pk), "export": str(export.pk)}


def test_the_researcher_requests_on_the_page_and_watches_it(
    approved_project: Any, applicant: Any, colleague: Any, stranger_researcher: Any
) -> None:
    client = w.fresh_client(applicant)
    page = w.text(client.get(reverse("research:export_new", args=[approved_project.pk])))
    assert 'name="formats" value="csv"' in page
    assert "checked" in page
    response = client.post(export_url(approved_project), form(approved_project))
    export = ResearchExport.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("research:export", args=[export.pk])

    detail = w.text(w.client_for(colleague).get(response["Location"]))
    progress_url = reverse("research:export_progress", args=[export.pk])
    assert f'hx-get="{progress_url}"' in detail
    assert 'hx-trigger="every 2s"' in detail
    assert "<script" not in detail.split("<main", 1)[1]
    assert "開始を待っています" in detail

    Job.objects.filter(pk=export.job_id).update(
        status=Job.Status.RUNNING, progress_done=3, progress_total=4
    )
    ResearchExport.objects.filter(pk=export.pk).update(status=ResearchExport.Status.RUNNING)
    fragment = client.get(progress_url, HTTP_HX_REQUEST="true")
    assert "75%" in w.text(fragment)
    assert "HX-Refresh" not in fragment

    ResearchExport.objects.filter(pk=export.pk).update(status=ResearchExport.Status.DONE)
    finished = client.get(progress_url, HTTP_HX_REQUEST="true")
    assert finished["HX-Refresh"] == "true"

    outsider = w.client_for(stranger_researcher)
    assert outsider.get(response["Location"]).status_code == 404
    assert outsider.get(progress_url).status_code == 404


def test_the_job_asks_again_when_it_starts(approved_project: Any, applicant: Any) -> None:
    export = research.request_export(user=applicant, project=approved_project, filters={})
    # The approval ends before a worker picks the job up.
    yesterday = research.today() - timedelta(days=1)
    type(approved_project).objects.filter(pk=approved_project.pk).update(expires_on=yesterday)
    assert job_run(job_id=export.job_id) == "done"
    export.refresh_from_db()
    assert export.status == ResearchExport.Status.REFUSED
    page = w.text(w.client_for(applicant).get(reverse("research:export", args=[export.pk])))
    assert "データ出力はできませんでした" in page
    assert f"このプロジェクトの承認は {yesterday.isoformat()} に期限が切れました。" in page
    english = html.unescape(
        w.text(
            w.in_english(w.client_for(applicant)).get(reverse("research:export", args=[export.pk]))
        )
    )
    assert f"This project's approval expired on {yesterday.isoformat()}." in english


def test_a_cohort_too_small_is_refused_with_the_builders_reason(
    approved_project: Any, applicant: Any, django_capture_on_commit_callbacks: Any
) -> None:
    """End to end through the real job: nobody in the covered towns takes
    part, so k cannot be reached and the page says why."""
    client = w.fresh_client(applicant)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(export_url(approved_project), form(approved_project))
    export = ResearchExport.objects.get()
    assert export.status == ResearchExport.Status.REFUSED
    assert export.reason
    page = w.text(client.get(reverse("research:export", args=[export.pk])))
    assert "データ出力はできませんでした" in page
    assert "k = 5" in page
    assert "ダウンロード用リンクを作成" not in page


def test_the_release_report_is_shown_whatever_keys_it_has(
    approved_project: Any, applicant: Any, tmp_path: Any, settings: Any
) -> None:
    settings.MEDIA_ROOT = str(tmp_path)
    export = w.done_export(approved_project, applicant, tmp_path)
    export.report = {
        "k": 5,
        "cohort_size": 240,
        "released_persons": 236,
        "achieved_k": 7,
        "records_per_table": {"persons": 236, "vaccinations": 1800},
        "quasi_identifiers": ["sex", "birth_ym", "area"],
        "generalizations": {"birth_ym": "quarter", "area": "municipality"},
        "suppression": {"persons": "<10", "calendar_years_blanked": 12},
        "files": [{"path": "csv/persons.csv", "sha256": "ab" * 32, "bytes": 9100}],
        "a_key_added_later": "shown as it is",
    }
    export.save(update_fields=["report"])
    page = w.text(w.client_for(applicant).get(reverse("research:export", args=[export.pk])))
    assert "提供データの報告書" in page
    assert "達成した k:</strong> 7" in page
    assert "csv/persons.csv" in page
    assert "ab" * 32 in page
    assert "準識別子:</strong> sex, birth_ym, area" in page
    for shown in ("quarter", "1800", "&lt;10"):
        assert shown in page
    assert "a_key_added_later:</strong> shown as it is" in page


def test_report_sections_render_mappings_lists_and_scalars() -> None:
    sections = report_sections(
        {
            "k": 10,
            "files": [{"path": "a", "sha256": "x"}],
            "records_per_table": {"persons": 3},
        }
    )
    kinds = [s["kind"] for s in sections]
    assert kinds == ["line", "table", "mapping"]
    assert sections[1]["rows"] == [["a", "x"]]
