"""Reviews: platform admins and privacy officers of a covered municipality
review (with MFA); the first approval sets the expiry, a second approval
by a different reviewer completes the two-person rule; a rejection ends
the project; nobody reviews twice; the applicant and anyone of the
applying institution never review; everything is audited."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.urls import reverse

from phr.models import Membership, Role
from sharing import research
from sharing.models import ResearchApproval, ResearchProject
from tests import factories as f
from tests.sharing.research import portal_world as w
from tests.sharing.research.portal_world import *  # noqa: F403 (the personas' fixtures)

pytestmark = pytest.mark.django_db


def review_url(project: ResearchProject) -> str:
    return reverse("research:review", args=[project.pk])


def decide_url(project: ResearchProject) -> str:
    return reverse("research:review_decide", args=[project.pk])


def test_the_queue_shows_the_project_to_its_reviewers_only(
    project: Any, admin: Any, officer: Any, uncovered_officer: Any
) -> None:
    for reviewer in (admin, officer):
        client = w.client_for(reviewer)
        queue = client.get(reverse("research:reviews"))
        assert queue.status_code == 200
        assert project.title in w.text(queue)
        page = client.get(review_url(project))
        assert page.status_code == 200
        assert "ETH-2026-001" in w.text(page)
        assert "乳幼児の発育と予防接種の時期の関係を調べる。" in w.text(page)
    outsider = w.client_for(uncovered_officer)
    assert project.title not in w.text(outsider.get(reverse("research:reviews")))
    assert outsider.get(review_url(project)).status_code == 404
    assert outsider.post(decide_url(project), {"decision": "approve"}).status_code == 404


def test_researchers_and_families_are_no_reviewers(
    project: Any, applicant: Any, colleague: Any, stranger_researcher: Any, mother: Any
) -> None:
    for user in (applicant, colleague, stranger_researcher, mother):
        client = w.client_for(user)
        assert client.get(reverse("research:reviews")).status_code == 404
        assert client.get(review_url(project)).status_code == 404
        assert client.post(decide_url(project), {"decision": "approve"}).status_code == 404
    assert not ResearchApproval.objects.exists()


def test_first_approval_sets_the_expiry_and_the_second_completes_the_two_person_rule(
    project: Any, admin: Any, officer: Any, municipality: Any
) -> None:
    expires = w.expiry(180)
    first = research.project_review(
        user=admin, project=project, decision="approve", expires_on=expires
    )
    project.refresh_from_db()
    assert project.status == ResearchProject.Status.APPROVED
    assert project.expires_on == expires
    assert first.reviewer_role == "admin"
    assert research.approval_count(project) == 1

    # The second approver cannot move the expiry.
    second = research.project_review(
        user=officer, project=project, decision="approve", expires_on=w.expiry(900)
    )
    project.refresh_from_db()
    assert project.expires_on == expires
    assert second.reviewer_role == "privacy_officer"
    assert second.organization == municipality
    assert research.approval_count(project) == 2

    rows = w.audits("research.approve")
    assert [(r.actor_id, r.outcome) for r in rows] == [
        (admin.pk, "success"),
        (officer.pk, "success"),
    ]
    assert rows[1].actor_role == "privacy_officer"
    assert rows[1].organization_id == municipality.pk
    assert all(r.patient_id is None and r.purpose == "research" for r in rows)
    assert rows[0].detail["project"] == str(project.pk)


@pytest.mark.parametrize("days", [0, -3])
def test_the_first_approval_needs_an_expiry_after_today(
    project: Any, admin: Any, days: int
) -> None:
    with pytest.raises(ValidationError) as caught:
        research.project_review(
            user=admin, project=project, decision="approve", expires_on=w.expiry(days)
        )
    assert "明日以降" in caught.value.message_dict["expires_on"][0]
    with pytest.raises(ValidationError) as missing:
        research.project_review(user=admin, project=project, decision="approve")
    assert "expires_on" in missing.value.message_dict
    project.refresh_from_db()
    assert project.status == ResearchProject.Status.SUBMITTED
    assert not ResearchApproval.objects.exists()
    assert {r.outcome for r in w.audits("research.approve")} == {"denied"}


def test_a_reviewer_decides_once(project: Any, admin: Any) -> None:
    research.project_review(user=admin, project=project, decision="approve", expires_on=w.expiry())
    with pytest.raises(ValidationError) as caught:
        research.project_review(user=admin, project=project, decision="approve")
    assert "すでに審査しました" in caught.value.message_dict["decision"][0]
    assert research.approval_count(project) == 1
    # ... and the database holds to it too.
    with pytest.raises(IntegrityError), transaction.atomic():
        ResearchApproval.objects.create(
            project=project, reviewer=admin, reviewer_role="admin", decision="approve"
        )


def test_the_applicant_never_reviews_even_as_a_reviewer(
    project: Any, applicant: Any, colleague: Any, municipality: Any
) -> None:
    # The applicant becomes a platform admin; a colleague becomes the
    # covered municipality's privacy officer as well.
    applicant.is_platform_admin = True
    applicant.save(update_fields=["is_platform_admin"])
    Membership.objects.create(
        user=colleague,
        organization=municipality,
        role=Role.MUNICIPAL_STAFF,
        is_privacy_officer=True,
    )
    for user in (applicant, colleague):
        fresh = type(user).objects.get(pk=user.pk)
        assert research.is_reviewer(fresh)
        assert research.reviewer_role(fresh, project) is None
        with pytest.raises(PermissionDenied):
            research.project_review(
                user=fresh, project=project, decision="approve", expires_on=w.expiry()
            )
        client = w.client_for(fresh)
        assert project.title not in w.text(client.get(reverse("research:reviews")))
        assert client.get(review_url(project)).status_code == 404
    assert not ResearchApproval.objects.exists()
    denied = w.audits("research.approve", outcome="denied")
    assert {r.actor_id for r in denied} == {applicant.pk, colleague.pk}


def test_a_rejection_ends_the_project(project: Any, admin: Any, officer: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        research.project_review(user=officer, project=project, decision="reject")
    assert "note" in caught.value.message_dict
    research.project_review(
        user=officer, project=project, decision="reject", note="倫理審査の承認書が古い"
    )
    project.refresh_from_db()
    assert project.status == ResearchProject.Status.REJECTED
    [row] = w.audits("research.reject", outcome="success")
    assert row.actor_id == officer.pk
    with pytest.raises(ValidationError) as late:
        research.project_review(
            user=admin, project=project, decision="approve", expires_on=w.expiry()
        )
    assert "審査を終えています" in late.value.message_dict["decision"][0]
    assert project.title not in w.text(w.client_for(admin).get(reverse("research:reviews")))


def test_a_rejection_after_one_approval_also_ends_it(
    project: Any, admin: Any, officer: Any
) -> None:
    research.project_review(user=admin, project=project, decision="approve", expires_on=w.expiry())
    research.project_review(user=officer, project=project, decision="reject", note="範囲が広い")
    project.refresh_from_db()
    assert project.status == ResearchProject.Status.REJECTED


def test_the_queue_drops_what_the_reviewer_decided_and_what_is_fully_approved(
    project: Any, admin: Any, officer: Any, municipality: Any
) -> None:
    other_admin = f.UserFactory(is_platform_admin=True)
    f.enable_totp(other_admin)
    research.project_review(user=admin, project=project, decision="approve", expires_on=w.expiry())
    assert project not in research.review_queue(admin)
    assert project in research.review_queue(officer)
    assert project in research.review_queue(other_admin)
    research.project_review(user=officer, project=project, decision="approve")
    assert project not in research.review_queue(other_admin)
    # The reviewer's own decisions stay listed for them.
    page = w.text(w.client_for(admin).get(reverse("research:reviews")))
    assert "あなたの判断" in page
    assert project.title in page


def test_a_reviewer_without_mfa_reviews_nothing(project: Any, municipality: Any) -> None:
    officer = w.make_officer(municipality, mfa=False)
    admin = f.UserFactory(is_platform_admin=True)
    for user in (officer, admin):
        assert not research.is_reviewer(user)
        assert research.reviewer_role(user, project) is None
        response = w.client_for(user).get(reverse("research:reviews"))
        assert response.status_code == 302
        assert response["Location"] == reverse("mfa_activate_totp")


def test_reviewing_on_the_page_needs_a_fresh_authentication(project: Any, admin: Any) -> None:
    stale = w.client_for(admin)
    response = stale.post(
        decide_url(project), {"decision": "approve", "expires_on": w.expiry().isoformat()}
    )
    assert response.status_code == 302
    assert "reauthenticate" in response["Location"]
    assert not ResearchApproval.objects.exists()


def test_two_reviewers_approve_on_the_page(project: Any, admin: Any, officer: Any) -> None:
    first = w.fresh_client(admin)
    page = w.text(first.get(review_url(project)))
    assert "あなたは1人目の審査者です" in page
    assert 'name="expires_on"' in page
    response = first.post(
        decide_url(project), {"decision": "approve", "expires_on": w.expiry().isoformat()}
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("research:reviews")

    second = w.fresh_client(officer)
    page = w.text(second.get(review_url(project)))
    assert "2人目の承認" in page
    assert 'name="expires_on"' not in page
    response = second.post(decide_url(project), {"decision": "approve"})
    assert response.status_code == 302
    project.refresh_from_db()
    assert project.status == ResearchProject.Status.APPROVED
    assert research.approval_count(project) == 2

    # Once decided, the page says so instead of offering the form again.
    again = w.text(second.get(review_url(project)))
    assert "このプロジェクトはすでに審査しました" in again
    assert 'name="decision"' not in again


def test_a_wrong_decision_on_the_page_says_what_is_wrong(project: Any, admin: Any) -> None:
    client = w.in_english(w.fresh_client(admin))
    yesterday = (research.today() - timedelta(days=1)).isoformat()
    response = client.post(decide_url(project), {"decision": "approve", "expires_on": yesterday})
    assert response.status_code == 400
    assert f"The expiry {yesterday} must be after today." in w.text(response)
    response = client.post(decide_url(project), {"decision": "reject"})
    assert response.status_code == 400
    assert "Give the reason for the rejection." in w.text(response)
    assert not ResearchApproval.objects.exists()
