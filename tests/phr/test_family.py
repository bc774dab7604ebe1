"""The family pages (issue 6, part 8): a second guardian invited by email,
a child born elsewhere, and leaving — persona by persona (the mother, the
invited guardian, the other guardian, a granted clinic, a stranger,
anonymous)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import pytest
import time_machine
from allauth.account.models import EmailAddress
from django.core import mail
from django.core.cache import cache
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from municipal_data import linking
from municipal_data.models import MotherChild
from phr import family, services
from phr.models import (
    AuditEvent,
    Guardianship,
    Patient,
    PatientLink,
    Provenance,
    Resource,
    ResourceHistory,
    Role,
    User,
)
from sharing.models import Consent, GuardianInvitation
from sharing.services import dv_block_set
from tests import factories as f
from tests.phr.family_support import (
    Records,
    client_for,
    logged_in,
    make_records,
    share_vaccinations,
)

pytestmark = pytest.mark.django_db

INVITED = "partner@example.jp"


@pytest.fixture(autouse=True)
def _fresh_rate_limits() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def records(
    mother: Any, mother_patient: Any, child: Any, municipality: Any, clinic: Any
) -> Records:
    return make_records(
        mother=mother,
        mother_patient=mother_patient,
        child=child,
        municipality=municipality,
        clinic=clinic,
    )


@pytest.fixture
def partner(db: None) -> User:
    """The person the mother invites; her verified address is the invited one."""
    user = f.UserFactory(email=INVITED)
    EmailAddress.objects.create(user=user, email=INVITED, verified=True, primary=True)
    return user


def invite(client: Client, child: Patient, email: str = INVITED, language: str = "ja") -> Any:
    return client.post(
        "/family/invite/",
        {
            "children": [str(child.pk)],
            "email": email,
            "relationship": "father",
            "language": language,
        },
    )


def token_from_mail() -> str:
    match = re.search(r"token=([A-Za-z0-9_\-]+)", mail.outbox[-1].body)
    assert match is not None, mail.outbox[-1].body
    return match.group(1)


def issue(mother: User, child: Patient, email: str = INVITED) -> str:
    _invitation, token = family.guardian_invitation_issue(
        inviter=mother, children=[child], email=email, relationship="father"
    )
    return token


def accept(user: User, token: str) -> Any:
    return client_for(user).post("/family/invitation/", {"token": token})


# --------------------------------------------------------------------------
# Invitations
# --------------------------------------------------------------------------


def test_the_mother_invites_by_email_in_the_language_she_chose(
    mother: User, child: Patient, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = invite(logged_in(mother), child, language="en")
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == [INVITED]
    assert "invites you" in message.subject
    assert "/family/invitation/?token=" in message.body
    # Nothing of the child in the email but a count.
    assert "はる" not in message.body
    invitation = GuardianInvitation.objects.get()
    token = token_from_mail()
    # Only the hash of the token is stored.
    assert token not in invitation.token_hash
    assert invitation.token_hash == family.token_hash(token)
    assert list(invitation.children.all()) == [child]
    assert AuditEvent.objects.filter(
        action="guardian_invitation.issue", patient=child.pk, actor=mother
    ).exists()


def test_a_japanese_invitation_is_in_japanese(
    mother: User, child: Patient, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        invite(logged_in(mother), child, language="ja")
    assert "招待" in mail.outbox[0].subject


def test_inviting_needs_a_recent_sign_in(mother: User, child: Patient) -> None:
    response = invite(client_for(mother), child)
    assert response["Location"].startswith(reverse("account_reauthenticate"))
    assert not GuardianInvitation.objects.exists()


def test_nobody_invites_for_a_child_not_theirs(
    stranger: User, mother: User, child: Patient
) -> None:
    response = invite(logged_in(stranger), child)
    assert response.status_code == 400  # not one of the choices offered
    assert not GuardianInvitation.objects.exists()
    with pytest.raises(family.PermissionDenied):
        issue(stranger, child)


def test_accepting_makes_a_guardian_who_sees_the_children_not_the_mother(
    mother: User, mother_patient: Patient, child: Patient, partner: User, records: Records
) -> None:
    token = issue(mother, child)
    response = accept(partner, token)
    assert response.status_code == 302
    assert Guardianship.objects.active().filter(guardian=partner, child=child).exists()
    client = client_for(partner)
    page = client.get("/family/").content.decode()
    assert 'id="family-children"' in page
    assert reverse("phr:person", args=[child.pk]) in page
    assert client.get(reverse("phr:person", args=[child.pk])).status_code == 200
    # The mother's own records stay hers.
    assert client.get(reverse("phr:person", args=[mother_patient.pk])).status_code == 404
    assert client.get(f"/fhir/Patient/{mother_patient.pk}").status_code == 404
    assert client.get(f"/fhir/Observation/{records.mother_bp}").status_code == 404
    assert client.get(f"/fhir/Observation/{records.child_note}").status_code == 200
    assert GuardianInvitation.objects.get().accepted_by == partner
    assert AuditEvent.objects.filter(
        action="guardian_invitation.accept", outcome="success", patient=child.pk, actor=partner
    ).exists()


def test_a_guardian_whose_guardianship_ended_is_a_guardian_again_once_she_accepts(
    mother: User, child: Patient, partner: User
) -> None:
    """guardianship_add never hands back an ended row: accepting a new
    invitation starts a new period, and the child is visible again."""
    ended = services.guardianship_add(
        guardian=partner,
        child=child,
        relationship=Guardianship.Relationship.FATHER,
        valid_from=timezone.localdate() - timedelta(days=30),
    )
    ended.valid_to = timezone.localdate() - timedelta(days=1)
    ended.save(update_fields=["valid_to"])
    assert client_for(partner).get(reverse("phr:person", args=[child.pk])).status_code == 404
    assert accept(partner, issue(mother, child)).status_code == 302
    assert Guardianship.objects.active().filter(guardian=partner, child=child).count() == 1
    assert Guardianship.objects.filter(guardian=partner, child=child).count() == 2
    assert client_for(partner).get(reverse("phr:person", args=[child.pk])).status_code == 200


def test_an_invitation_is_used_once(mother: User, child: Patient, partner: User) -> None:
    token = issue(mother, child)
    assert accept(partner, token).status_code == 302
    again = accept(partner, token)
    assert again.status_code == 400
    assert "can no longer be used" in again.content.decode() or "使えません" in (
        again.content.decode()
    )


def test_a_second_invitation_to_a_guardian_adds_no_second_guardianship(
    mother: User, child: Patient, partner: User
) -> None:
    services.guardianship_add(
        guardian=partner,
        child=child,
        relationship="father",
        valid_from=timezone.localdate() - timedelta(days=3),
    )
    assert accept(partner, issue(mother, child)).status_code == 302
    assert Guardianship.objects.filter(guardian=partner, child=child).count() == 1


def test_an_expired_invitation_is_refused(mother: User, child: Patient, partner: User) -> None:
    token = issue(mother, child)
    with time_machine.travel(timezone.now() + timedelta(days=15)):
        response = accept(partner, token)
    assert response.status_code == 400
    assert not Guardianship.objects.filter(guardian=partner).exists()
    assert AuditEvent.objects.filter(
        action="guardian_invitation.accept", outcome="denied", actor=partner
    ).exists()


def test_a_withdrawn_invitation_is_refused(mother: User, child: Patient, partner: User) -> None:
    token = issue(mother, child)
    invitation = GuardianInvitation.objects.get()
    response = client_for(mother).post("/family/invitations/revoke/", {"invitation": invitation.pk})
    assert response.status_code == 302
    assert accept(partner, token).status_code == 400
    assert not Guardianship.objects.filter(guardian=partner).exists()


def test_only_the_inviter_withdraws(
    mother: User, child: Patient, father: User, stranger: User
) -> None:
    issue(mother, child)
    invitation = GuardianInvitation.objects.get()
    for user in (father, stranger):
        response = client_for(user).post(
            "/family/invitations/revoke/", {"invitation": invitation.pk}
        )
        assert response.status_code == 404
    invitation.refresh_from_db()
    assert invitation.revoked_at is None


def test_the_wrong_email_is_refused_with_a_hint(
    mother: User, child: Patient, stranger: User
) -> None:
    EmailAddress.objects.create(user=stranger, email=stranger.email, verified=True)
    token = issue(mother, child)
    response = accept(stranger, token)
    assert response.status_code == 400
    assert "p***@example.jp" in response.content.decode()
    assert not Guardianship.objects.filter(guardian=stranger).exists()


def test_an_unverified_invited_email_is_not_enough(mother: User, child: Patient) -> None:
    user = f.UserFactory(email=INVITED)
    EmailAddress.objects.create(user=user, email=INVITED, verified=False)
    assert accept(user, issue(mother, child)).status_code == 400


def test_a_dv_blocked_person_cannot_accept(
    mother: User, child: Patient, partner: User, municipal_officer: User
) -> None:
    dv_block_set(patient=child, blocked_user=partner, by=municipal_officer)
    response = accept(partner, issue(mother, child))
    assert response.status_code == 400
    assert not Guardianship.objects.active().filter(guardian=partner).exists()
    denied = AuditEvent.objects.get(action="guardian_invitation.accept", outcome="denied")
    assert denied.detail["reason"] == "dv_block"


def test_the_invitation_page_for_anonymous_asks_to_sign_in(mother: User, child: Patient) -> None:
    token = issue(mother, child)
    page = Client().get(f"/family/invitation/?token={token}")
    assert page.status_code == 200
    text = page.content.decode()
    assert reverse("account_login") in text
    assert reverse("account_signup") in text
    assert "はる" not in text  # no child's name before accepting
    response = Client().post("/family/invitation/", {"token": token})
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))
    assert Client().get("/family/invitation/?token=nonsense").status_code == 404


# --------------------------------------------------------------------------
# A child born elsewhere
# --------------------------------------------------------------------------

CHILD_FORM = {
    "family": "前橋",
    "given": "葵",
    "family_kana": "まえばし",
    "given_kana": "ｱｵｲ",
    "birth_date": "2024-06-30",
    "sex": "female",
    "relationship": "mother",
}


def test_a_guardian_adds_a_child_born_elsewhere(mother: User) -> None:
    client = client_for(mother)
    assert client.get("/family/children/add/").status_code == 200
    response = client.post("/family/children/add/", CHILD_FORM)
    assert response.status_code == 302
    child = Patient.objects.get(kind=Patient.Kind.CHILD, guardianships__guardian=mother)
    assert response["Location"] == reverse("phr:person", args=[child.pk])
    resource = Resource.objects.get(pk=child.pk)
    assert resource.content["birthDate"] == "2024-06-30"
    assert resource.content["gender"] == "female"
    # Kana as JP Core writes it: full-width katakana.
    assert resource.content["name"][1]["family"] == "マエバシ"
    assert resource.content["name"][1]["given"] == ["アオイ"]
    assert resource.provenance.origin == Provenance.Origin.SELF
    assert resource.provenance.agent_user == mother
    assert client.get(response["Location"]).status_code == 200
    assert "葵" in client.get("/family/").content.decode()


def test_bad_child_input_says_what_is_wrong_and_writes_nothing(mother: User) -> None:
    future = (timezone.localdate() + timedelta(days=2)).isoformat()
    response = client_for(mother).post(
        "/family/children/add/", {**CHILD_FORM, "given_kana": "Aoi", "birth_date": future}
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert "Aoi" in page
    assert not Patient.objects.filter(kind=Patient.Kind.CHILD).exists()


def test_staff_and_anonymous_do_not_add_children(clinician: User) -> None:
    assert client_for(clinician).post("/family/children/add/", CHILD_FORM).status_code == 403
    response = Client().post("/family/children/add/", CHILD_FORM)
    assert response.status_code == 302
    assert not Patient.objects.exists()


def test_the_link_code_later_merges_the_added_child_into_the_municipal_record(
    mother: User,
) -> None:
    # The mother adds her child by hand, records a temperature, and later
    # enters the family link code the town sends: one child, one record.
    town = f.MunicipalityFactory()
    officer = f.make_member(Role.MUNICIPAL_STAFF, town)
    municipal_mother = f.make_patient(kind=Patient.Kind.ADULT, birth_date=date(1994, 4, 2))
    municipal_child = f.make_patient(birth_date=date(2024, 6, 30))
    for patient, number in ((municipal_mother, "1"), (municipal_child, "2")):
        services.residency_add(patient=patient, municipality=town, resident_number=number)
    MotherChild.objects.create(mother=municipal_mother, child=municipal_child, municipality=town)

    client_for(mother).post("/family/children/add/", CHILD_FORM)
    added = Patient.objects.get(guardianships__guardian=mother)
    note = f.write_observation(added, value=36.8, code="8310-5", unit="Cel")
    _link, code = linking.link_code_issue(municipality=town, mother=municipal_mother, by=officer)
    linking.link_code_redeem(user=mother, code=code, child_birth_date=date(2024, 6, 30))

    added.refresh_from_db()
    assert added.merged_into == municipal_child
    assert PatientLink.objects.filter(survivor=municipal_child, merged=added).exists()
    assert municipal_child.pk in Resource.objects.get(pk=note).compartments
    children = Guardianship.objects.active().filter(guardian=mother)
    assert [g.child_id for g in children] == [municipal_child.pk]


def test_a_second_guardian_invited_for_an_added_child_follows_the_merge(
    mother: User, partner: User
) -> None:
    town = f.MunicipalityFactory()
    officer = f.make_member(Role.MUNICIPAL_STAFF, town)
    municipal_mother = f.make_patient(kind=Patient.Kind.ADULT, birth_date=date(1994, 4, 2))
    municipal_child = f.make_patient(birth_date=date(2024, 6, 30))
    for patient, number in ((municipal_mother, "1"), (municipal_child, "2")):
        services.residency_add(patient=patient, municipality=town, resident_number=number)
    MotherChild.objects.create(mother=municipal_mother, child=municipal_child, municipality=town)
    client_for(mother).post("/family/children/add/", CHILD_FORM)
    added = Patient.objects.get(guardianships__guardian=mother)
    accept(partner, issue(mother, added))
    _link, code = linking.link_code_issue(municipality=town, mother=municipal_mother, by=officer)
    linking.link_code_redeem(user=mother, code=code, child_birth_date=date(2024, 6, 30))
    assert Guardianship.objects.active().filter(guardian=partner, child=municipal_child).exists()


# --------------------------------------------------------------------------
# Leaving
# --------------------------------------------------------------------------


def leave(client: Client, **data: Any) -> Any:
    return client.post("/family/leave/confirm/", {"confirm": "on", **data})


def test_the_leave_page_offers_the_download_first_and_says_what_stays(
    mother: User, records: Records
) -> None:
    page = client_for(mother).get("/family/leave/").content.decode()
    assert page.index('id="leave-export"') < page.index('id="leave-form"')
    # Two self-entered records go; the municipal and clinic ones stay.
    assert "2件" in page or "2 records" in page
    assert "母子保健法" in page


def test_leaving_deletes_self_entered_data_and_keeps_what_others_hold(
    mother: User,
    mother_patient: Patient,
    child: Patient,
    father: User,
    clinic: Any,
    records: Records,
) -> None:
    share_vaccinations(mother, child, clinic)
    earlier = AuditEvent.objects.filter(actor=mother).count()
    elsewhere = client_for(mother)  # her session on another device
    response = leave(logged_in(mother))
    assert response.status_code == 302
    assert response["Location"] == reverse("family:left")

    # Her own typed record is gone, history included.
    assert not Resource.objects.filter(pk=records.mother_bp).exists()
    assert not ResourceHistory.objects.filter(resource_id=records.mother_bp).exists()
    # The clinic's and the municipality's records stay, and her Patient with them.
    assert Resource.objects.filter(pk=records.mother_clinic).exists()
    assert Resource.objects.filter(pk=records.child_weight).exists()
    assert Resource.objects.filter(pk=mother_patient.pk).exists()
    # The child keeps a guardian (the father): what she typed for him stays too.
    assert Resource.objects.filter(pk=records.child_note).exists()
    mother_patient.refresh_from_db()
    assert mother_patient.account_id is None
    assert not Guardianship.objects.active().filter(guardian=mother).exists()
    assert Guardianship.objects.active().filter(guardian=father, child=child).exists()
    assert Consent.objects.get().revoked_at is not None

    # The account cannot sign in and says nothing of who she was.
    mother.refresh_from_db()
    assert not mother.is_active
    assert mother.email.endswith("@deleted.invalid")
    assert mother.display_name == ""
    assert not Client().login(email="mother@example.jp", password=f.PASSWORD)
    login = Client().post(
        reverse("account_login"), {"login": "mother@example.jp", "password": f.PASSWORD}
    )
    assert login.status_code == 200  # the form again, with an error
    assert elsewhere.get("/family/")["Location"].startswith(reverse("account_login"))
    # The audit trail stays, one more row saying what was done.
    assert AuditEvent.objects.filter(actor=mother).count() >= earlier + 1
    done = AuditEvent.objects.get(action="account.leave")
    assert done.detail["deleted_records"] == 1
    assert done.detail["consents_revoked"] == 1


def test_a_sole_guardian_takes_a_hand_added_child_with_her(mother: User) -> None:
    client = logged_in(mother)
    client.post("/family/children/add/", CHILD_FORM)
    added = Patient.objects.get(guardianships__guardian=mother)
    note = f.write_observation(added, value=36.8)
    Resource.objects.filter(pk=note).update(
        provenance=services.provenance_create(origin=Provenance.Origin.SELF, user=mother)
    )
    ResourceHistory.objects.filter(resource_id=note).update(
        provenance=Resource.objects.get(pk=note).provenance
    )
    assert leave(client).status_code == 302
    assert not Patient.objects.filter(pk=added.pk).exists()
    assert not Resource.objects.filter(pk__in=[note, added.pk]).exists()


def test_leaving_needs_the_confirmation_and_a_recent_sign_in(
    mother: User, records: Records
) -> None:
    stale = leave(client_for(mother))
    assert stale["Location"].startswith(reverse("account_reauthenticate"))
    unconfirmed = logged_in(mother).post("/family/leave/confirm/", {})
    assert unconfirmed.status_code == 400
    mother.refresh_from_db()
    assert mother.is_active
    assert Resource.objects.filter(pk=records.mother_bp).exists()


def test_staff_cannot_leave_here(clinician: User, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("phr.auth.recently_authenticated", lambda request: True)
    assert leave(client_for(clinician)).status_code == 403
    clinician.refresh_from_db()
    assert clinician.is_active


# --------------------------------------------------------------------------
# Every route, every persona
# --------------------------------------------------------------------------

LOGIN_ONLY = [
    "/family/",
    "/family/children/add/",
    "/family/export/",
    "/family/leave/",
]


def test_anonymous_is_sent_to_sign_in_everywhere_but_the_invitation_and_goodbye() -> None:
    for url in LOGIN_ONLY:
        response = Client().get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("account_login")), url
    for url in ("/family/invite/", "/family/invitations/revoke/", "/family/leave/confirm/"):
        assert Client().post(url).status_code == 302, url
    assert Client().get("/family/left/").status_code == 200


def test_each_persona_sees_only_their_own_family_page(
    mother: User,
    child: Patient,
    father: User,
    clinician: User,
    stranger: User,
    records: Records,
) -> None:
    share_vaccinations(mother, child, clinic=clinician.memberships.get().organization)
    child_url = reverse("phr:person", args=[child.pk])
    for user, sees_child in ((mother, True), (father, True), (clinician, False), (stranger, False)):
        page = client_for(user).get("/family/")
        assert page.status_code == 200
        assert (child_url in page.content.decode()) is sees_child, user
    # The family page audits the people it names.
    assert AuditEvent.objects.filter(action="view.family", actor=father, patient=child.pk).exists()


@pytest.mark.parametrize(
    ("url", "clinic_status"),
    [
        ("/family/", 200),
        ("/family/export/", 200),
        ("/family/export/bundle.json", 200),
        ("/family/export/print/", 200),
        ("/family/leave/", 200),
        ("/family/children/add/", 403),
        ("/family/left/", 200),
    ],
)
def test_every_family_page_answers_each_persona(
    url: str,
    clinic_status: int,
    mother: User,
    child: Patient,
    father: User,
    clinician: User,
    stranger: User,
    records: Records,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Re-authentication is tested on its own; here every session counts as
    # recent, so the status is the page's own answer.
    monkeypatch.setattr("phr.auth.recently_authenticated", lambda request: True)
    share_vaccinations(mother, child, clinician.memberships.get().organization)
    for user, status in ((mother, 200), (father, 200), (stranger, 200), (clinician, clinic_status)):
        assert client_for(user).get(url).status_code == status, (url, user)
