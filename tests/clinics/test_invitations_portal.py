"""The clinic's invitations page (/clinic/invitations/): the staff of the
clinic that registered a patient see her latest code's state (never the
code), issue a new one (shown once; the old one stops working) or revoke
it; POST only, with CSRF, audited; another clinic's staff get 404, staff
without MFA are sent to set it up, and nothing changes for either."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import pytest
from django.core import mail
from django.core.cache import cache
from django.test import Client
from django.utils import timezone, translation

from clinics import services
from clinics.models import ClinicInvitation
from phr.models import AuditEvent
from tests import factories as f

pytestmark = pytest.mark.django_db

LIST = "/clinic/invitations/"
BIRTH = date(1995, 5, 20)


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    cache.clear()  # allauth's rate limits live in the cache
    yield
    cache.clear()


def client_for(user: Any, **kwargs: Any) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


@pytest.fixture
def registration(clinician: Any, clinic: Any) -> services.Registration:
    return services.patient_register(
        user=clinician,
        clinic=clinic,
        family="高崎",
        given="美咲",
        birth_date=BIRTH,
        due_date=timezone.localdate() + timedelta(weeks=20),
    )


def reissue_url(invitation: ClinicInvitation) -> str:
    return f"/clinic/invitations/{invitation.pk}/reissue/"


def revoke_url(invitation: ClinicInvitation) -> str:
    return f"/clinic/invitations/{invitation.pk}/revoke/"


def join(user: Any, code: str) -> Any:
    return client_for(user).post(
        "/clinic/join/", {"code": code, "birth_date": BIRTH.isoformat(), "share": "on"}
    )


def test_the_staff_see_the_invitation_but_never_its_code(
    clinician: Any, registration: services.Registration
) -> None:
    with translation.override("en"):
        response = client_for(clinician).get(LIST, HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 200
    text = response.content.decode()
    assert "高崎 美咲" in text
    assert f"{registration.invitation.prefix}…" in text
    assert "valid" in text
    assert registration.code not in text
    assert registration.code.replace("-", "") not in text
    # The names shown are audited, one row per patient.
    row = AuditEvent.objects.get(action="view.clinic_invitations")
    assert row.patient_id == registration.patient.pk
    # The portal's navigation and the patient's page lead here.
    assert 'href="/clinic/invitations/"' in text
    page = client_for(clinician).get(f"/clinic/patients/{registration.patient.pk}/")
    assert f"/clinic/invitations/#invitation-{registration.invitation.pk}" in (
        page.content.decode()
    )


def test_the_staff_reissue_a_code_and_the_old_one_stops_working(
    clinician: Any,
    registration: services.Registration,
    django_capture_on_commit_callbacks: Any,
) -> None:
    client = client_for(clinician)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reissue_url(registration.invitation), {"email": "misaki@example.jp"})
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    code = response.context["code"]
    assert code != registration.code
    assert code in response.content.decode()
    [message] = mail.outbox
    assert message.to == ["misaki@example.jp"]
    assert code in message.body
    old = ClinicInvitation.objects.get(pk=registration.invitation.pk)
    assert old.status == ClinicInvitation.Status.REVOKED
    new = ClinicInvitation.objects.get(revoked_at=None)
    assert new.patient == registration.patient
    assert AuditEvent.objects.filter(action="clinic.invitation_issue").count() == 2
    # The list shows the new invitation's state only, never the code.
    text = client.get(LIST).content.decode()
    assert f"{new.prefix}…" in text
    assert code not in text
    # The old code no longer redeems; the new one does.
    woman = f.UserFactory()
    refused = join(woman, registration.code)
    assert refused.status_code == 400
    assert not ClinicInvitation.objects.filter(used_at__isnull=False).exists()
    assert join(woman, code).status_code == 302
    new.refresh_from_db()
    assert new.used_by == woman
    # Once she has her account the clinic cannot issue another code: the
    # button is gone and a POST changes nothing.
    text = client.get(LIST).content.decode()
    assert reissue_url(new) not in text
    assert "she linked her account" in text or "アカウントを連携" in text
    before = ClinicInvitation.objects.count()
    response = client.post(reissue_url(new), {})
    assert response.status_code == 302
    assert ClinicInvitation.objects.count() == before


def test_the_staff_revoke_a_code_and_it_no_longer_redeems(
    clinician: Any, registration: services.Registration
) -> None:
    client = client_for(clinician)
    response = client.post(revoke_url(registration.invitation))
    assert response.status_code == 302
    assert response["Location"] == LIST
    invitation = ClinicInvitation.objects.get()
    assert invitation.status == ClinicInvitation.Status.REVOKED
    row = AuditEvent.objects.get(action="clinic.invitation_revoke")
    assert (row.patient_id, row.organization_id) == (registration.patient.pk, invitation.clinic_id)
    assert registration.code not in str(row.detail)
    with translation.override("en"):
        refused = client_for(f.UserFactory()).post(
            "/clinic/join/",
            {"code": registration.code, "birth_date": BIRTH.isoformat()},
            HTTP_ACCEPT_LANGUAGE="en",
        )
    assert refused.status_code == 400
    assert "can no longer be used" in refused.content.decode()
    # Revoking again changes nothing and is not audited again.
    assert client.post(revoke_url(invitation)).status_code == 302
    assert AuditEvent.objects.filter(action="clinic.invitation_revoke").count() == 1
    # A revoked code can be replaced by a new one.
    response = client.post(reissue_url(invitation), {})
    assert response.status_code == 200
    assert ClinicInvitation.objects.filter(revoked_at=None).count() == 1


def test_another_clinics_staff_get_404_and_change_nothing(
    registration: services.Registration,
) -> None:
    stranger = f.make_member(f.Role.CLINIC_STAFF, f.ClinicFactory())
    client = client_for(stranger)
    text = client.get(LIST).content.decode()
    assert "高崎" not in text
    assert registration.invitation.prefix not in text
    assert client.post(reissue_url(registration.invitation), {}).status_code == 404
    assert client.post(revoke_url(registration.invitation)).status_code == 404
    assert client.post("/clinic/invitations/999999/revoke/").status_code == 404
    invitation = ClinicInvitation.objects.get()
    assert invitation.status == ClinicInvitation.Status.ACTIVE
    assert not AuditEvent.objects.filter(
        action__in=["clinic.invitation_revoke", "view.clinic_invitations"],
        actor_id=stranger.pk,
        patient_id=registration.patient.pk,
    ).exists()


@pytest.mark.parametrize("persona", ["no_mfa", "mother", "municipal_officer"])
def test_staff_without_mfa_and_other_roles_are_refused(
    persona: str,
    request: pytest.FixtureRequest,
    clinic: Any,
    registration: services.Registration,
) -> None:
    if persona == "no_mfa":
        user = f.make_member(f.Role.CLINIC_STAFF, clinic, mfa=False)
    else:
        user = request.getfixturevalue(persona)
    client = client_for(user)
    # Staff without an authenticator are sent to set one up first; anyone
    # else who is no clinic's staff finds no such page.
    refused = 302 if persona == "no_mfa" else 404
    response = client.get(LIST)
    assert response.status_code == refused
    if persona == "no_mfa":
        assert response["Location"].startswith("/accounts/2fa/totp/activate/")
    assert client.post(reissue_url(registration.invitation), {}).status_code == refused
    assert client.post(revoke_url(registration.invitation)).status_code == refused
    assert ClinicInvitation.objects.get().status == ClinicInvitation.Status.ACTIVE
    assert ClinicInvitation.objects.count() == 1


def test_the_actions_are_post_only_and_need_the_csrf_token(
    clinician: Any, registration: services.Registration
) -> None:
    client = client_for(clinician, enforce_csrf_checks=True)
    assert client.get(reissue_url(registration.invitation)).status_code == 405
    assert client.get(revoke_url(registration.invitation)).status_code == 405
    assert client.post(revoke_url(registration.invitation)).status_code == 403
    assert client.post(reissue_url(registration.invitation), {}).status_code == 403
    # With the page's token it works.
    page = client.get(LIST)
    token = page.context["csrf_token"]
    response = client.post(revoke_url(registration.invitation), {"csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert ClinicInvitation.objects.get().status == ClinicInvitation.Status.REVOKED


def test_the_page_speaks_japanese(clinician: Any, registration: services.Registration) -> None:
    with translation.override("ja"):
        response = client_for(clinician).get(LIST, HTTP_ACCEPT_LANGUAGE="ja")
        revoked = client_for(clinician).post(
            revoke_url(registration.invitation), HTTP_ACCEPT_LANGUAGE="ja", follow=True
        )
    assert "招待" in response.content.decode()
    assert "新しいコードを発行" in response.content.decode()
    assert "無効にしました" in revoked.content.decode()
