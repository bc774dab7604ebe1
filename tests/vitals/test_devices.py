"""Devices: registering one for a person (herself or a child), its token
shown once and kept only as a hash, revoking it, last use; and who may do
that — the person herself and the child's guardians; a clinic the family
shares vitals with, a stranger, a missing id get 404 (audited)."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from django.test import Client
from django.urls import reverse

from phr.models import AuditEvent, Organization, Patient, User
from sharing.services import consent_grant
from tests.factories import PASSWORD
from tests.vitals.device_support import (
    bp_observation,
    device_client,
    post_json,
    register,
    vitals_of,
)
from vitals.models import Device

pytestmark = pytest.mark.django_db

OBSERVATION_URL = "/vitals/devices/api/Observation"


def client_for(user: User | None) -> Client:
    """A client whose user just confirmed her password (registering a
    device asks for a recent authentication)."""
    client = Client()
    if user is not None:
        client.force_login(user)
        response = client.post(reverse("account_reauthenticate"), {"password": PASSWORD})
        assert response.status_code == 302
    return client


def list_url(patient: Patient) -> str:
    return reverse("vitals:device-list", args=[patient.pk])


def register_via_page(client: Client, patient: Patient, name: str = "体重計") -> tuple[str, str]:
    response = client.post(list_url(patient), {"name": name, "kind": "device"})
    assert response.status_code == 200
    page = response.content.decode()
    start = page.index('id="new-token" value="') + len('id="new-token" value="')
    return page[start : page.index('"', start)], page


def test_the_mother_registers_a_scale_and_sees_its_token_once(
    mother: User, mother_patient: Patient
) -> None:
    client = client_for(mother)
    assert client.get(list_url(mother_patient)).status_code == 200
    secret, _ = register_via_page(client, mother_patient)
    assert secret.startswith("hgkd_")
    device = Device.objects.get(patient=mother_patient)
    # Only the SHA-256 is stored, never the secret.
    assert device.token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str(Device.objects.filter(pk=device.pk).values().first())
    # Shown once: the list page afterwards names it by its prefix only.
    again = client.get(list_url(mother_patient)).content.decode()
    assert secret not in again
    assert device.token_prefix in again
    assert "体重計" in again
    assert AuditEvent.objects.filter(
        action="vitals.device.register", patient=mother_patient, actor=mother
    ).exists()


def test_an_empty_name_is_refused_with_a_message(mother: User, mother_patient: Patient) -> None:
    response = client_for(mother).post(list_url(mother_patient), {"name": " ", "kind": "device"})
    assert response.status_code == 400
    assert not Device.objects.exists()
    response = client_for(mother).post(list_url(mother_patient), {"name": "x", "kind": "robot"})
    assert response.status_code == 400
    assert not Device.objects.exists()


def test_the_device_writes_and_its_last_use_is_shown(mother: User, mother_patient: Patient) -> None:
    client = client_for(mother)
    secret, _ = register_via_page(client, mother_patient)
    assert Device.objects.get().last_used_at is None
    response = post_json(device_client(secret), OBSERVATION_URL, bp_observation(mother_patient))
    assert response.status_code == 201, response.content
    device = Device.objects.get()
    assert device.last_used_at is not None
    page = client.get(list_url(mother_patient)).content.decode()
    assert device.last_used_at.astimezone().strftime("%Y") in page
    assert len(vitals_of(mother_patient)) == 1


def test_a_revoked_token_gets_401_and_writes_nothing(mother: User, mother_patient: Patient) -> None:
    client = client_for(mother)
    secret, _ = register_via_page(client, mother_patient)
    device = Device.objects.get()
    response = client.post(reverse("vitals:device-revoke", args=[mother_patient.pk, device.pk]))
    assert response.status_code == 302
    device.refresh_from_db()
    assert device.revoked_at is not None
    assert device.revoked_by == mother
    response = post_json(device_client(secret), OBSERVATION_URL, bp_observation(mother_patient))
    assert response.status_code == 401
    assert response.json()["resourceType"] == "OperationOutcome"
    assert vitals_of(mother_patient) == []
    # Revoking twice changes nothing and is audited once.
    client.post(reverse("vitals:device-revoke", args=[mother_patient.pk, device.pk]))
    assert AuditEvent.objects.filter(action="vitals.device.revoke").count() == 1


def test_unknown_or_missing_tokens_get_401(mother_patient: Patient) -> None:
    assert post_json(Client(), OBSERVATION_URL, bp_observation(None)).status_code == 401
    assert (
        post_json(device_client("hgkd_nonsense"), OBSERVATION_URL, bp_observation(None)).status_code
        == 401
    )


def test_the_other_guardian_manages_the_childs_devices_but_not_the_mothers(
    mother: User, mother_patient: Patient, child: Patient, father: User
) -> None:
    device, _ = register(child, mother, name="体温計")
    father_client = client_for(father)
    page = father_client.get(list_url(child))
    assert page.status_code == 200
    assert "体温計" in page.content.decode()
    _secret, _ = register_via_page(father_client, child, name="パパのスマホ")
    assert Device.objects.filter(patient=child).count() == 2
    assert (
        father_client.post(reverse("vitals:device-revoke", args=[child.pk, device.pk])).status_code
        == 302
    )
    # The mother's own devices are hers alone.
    assert father_client.get(list_url(mother_patient)).status_code == 404


@pytest.mark.parametrize("persona", ["stranger", "clinician"])
def test_a_stranger_or_a_clinic_gets_404_like_a_missing_id_and_is_audited(
    persona: str,
    request: pytest.FixtureRequest,
    mother: User,
    mother_patient: Patient,
    child: Patient,
    clinic: Organization,
) -> None:
    # The clinic even holds a care consent for vitals: reading is not
    # managing the family's devices.
    for patient in (mother_patient, child):
        consent_grant(
            patient=patient, by=mother, purpose="care", categories=["vitals"], grantee_org=clinic
        )
    user = request.getfixturevalue(persona)
    device, _ = register(mother_patient, mother)
    client = client_for(user)
    for patient_id in (mother_patient.pk, child.pk, uuid.uuid4()):
        assert client.get(f"/vitals/devices/{patient_id}/").status_code == 404
        assert client.get(f"/vitals/devices/{patient_id}/csv/").status_code == 404
        assert (
            client.post(f"/vitals/devices/{patient_id}/", {"name": "x", "kind": "app"}).status_code
            == 404
        )
    assert (
        client.post(
            reverse("vitals:device-revoke", args=[mother_patient.pk, device.pk])
        ).status_code
        == 404
    )
    device.refresh_from_db()
    assert device.revoked_at is None
    assert Device.objects.count() == 1
    assert AuditEvent.objects.filter(
        actor=user, outcome="denied", patient=mother_patient, action="view.vitals.devices"
    ).exists()


def test_a_device_of_another_person_cannot_be_revoked_through_this_persons_url(
    mother: User, mother_patient: Patient, child: Patient
) -> None:
    device, _ = register(child, mother)
    url = reverse("vitals:device-revoke", args=[mother_patient.pk, device.pk])
    assert client_for(mother).post(url).status_code == 404
    device.refresh_from_db()
    assert device.revoked_at is None


def test_anonymous_visitors_are_sent_to_log_in(mother_patient: Patient) -> None:
    response = Client().get(list_url(mother_patient))
    assert response.status_code == 302
    assert "login" in response["Location"]


def test_a_device_token_opens_nothing_else(mother: User, mother_patient: Patient) -> None:
    # Neither the FHIR API nor the pages accept a device token.
    _, secret = register(mother_patient, mother)
    client = device_client(secret)
    assert client.get(f"/fhir/Patient/{mother_patient.pk}").status_code == 401
    assert client.get(f"/fhir/Observation?patient={mother_patient.pk}").status_code == 401
    assert post_json(client, "/fhir/Observation", bp_observation(mother_patient)).status_code == 401
    assert client.get(list_url(mother_patient)).status_code == 302  # to the login page
    # Nor may it read through its own endpoints.
    assert client.get(OBSERVATION_URL).status_code == 405


def test_the_pages_speak_japanese_by_default(mother: User, mother_patient: Patient) -> None:
    client = client_for(mother)
    page = client.get(list_url(mother_patient)).content.decode()
    assert "機器・アプリを登録する" in page
    assert "スマートフォンのアプリ" in page
    _secret, page = register_via_page(client, mother_patient)
    assert "もう一度表示することはできません" in page
    csv_page = client.get(reverse("vitals:device-csv", args=[mother_patient.pk])).content.decode()
    assert "CSV ファイルから測定値を取り込む" in csv_page


def test_registering_asks_a_stale_session_to_confirm_access_first(
    mother: User, mother_patient: Patient
) -> None:
    client = Client()
    client.force_login(mother)  # no authentication record: a stale session
    response = client.post(list_url(mother_patient), {"name": "体重計", "kind": "device"})
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_reauthenticate"))
    assert not Device.objects.exists()
    # The list itself needs no confirmation.
    assert client.get(list_url(mother_patient)).status_code == 200


@pytest.mark.parametrize(
    "url",
    ["/vitals/devices/api/Observation", "/vitals/devices/api/Bundle", "/vitals/devices/api/omh"],
)
def test_the_device_endpoints_take_no_session_only_a_device_token(
    url: str, mother: User, mother_patient: Patient
) -> None:
    # The person herself, logged in, is not a device: 401, nothing written.
    client = client_for(mother)
    assert post_json(client, url, bp_observation(mother_patient)).status_code == 401
    assert client.get(url).status_code == 401
    assert Client().get(url).status_code == 401
    assert vitals_of(mother_patient) == []
