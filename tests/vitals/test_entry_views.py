"""Quick entry pages (/vitals/<patient_id>/): who sees and writes them,
what the forms accept and refuse (with the reason on the field), the
recent entries with their source, edit and delete by the author only, and
the vitals_written signal once per saved form."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import time_machine
from django.test import Client
from django.urls import reverse

from phr.models import AuditEvent, Resource
from sharing.models import ConsentPurpose
from sharing.services import consent_grant
from vitals import records as r
from vitals.signals import vitals_written

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _now() -> Any:
    with time_machine.travel("2026-11-26 10:00 +0900", tick=False):
        yield


def client_for(user: Any, language: str = "ja") -> Client:
    client = Client(HTTP_ACCEPT_LANGUAGE=language)
    client.force_login(user)
    return client


def home(patient: Any) -> str:
    return reverse("vitals:entry-home", args=[patient.pk])


def add(patient: Any, slug: str) -> str:
    return reverse("vitals:entry-add", args=[patient.pk, slug])


def text_of(response: Any) -> str:
    return re.sub(r"\s+", " ", response.content.decode())


def vitals_rows() -> Any:
    return Resource.objects.filter(category="vitals", deleted=False)


@pytest.fixture
def consented_clinician(
    clinician: Any, clinic: Any, mother: Any, child: Any, mother_patient: Any
) -> Any:
    for patient in (child, mother_patient):
        consent_grant(
            patient=patient,
            by=mother,
            purpose=ConsentPurpose.CARE,
            categories=["vitals", "pregnancy", "infant_checkups"],
            grantee_org=clinic,
        )
    return clinician


@pytest.fixture
def signals_seen() -> Any:
    seen: list[tuple[uuid.UUID, frozenset[str]]] = []

    def receiver(sender: Any, patient_id: uuid.UUID, kinds: frozenset[str], **_: Any) -> None:
        seen.append((patient_id, kinds))

    vitals_written.connect(receiver, dispatch_uid="test-vitals-entry")
    yield seen
    vitals_written.disconnect(dispatch_uid="test-vitals-entry")


# --------------------------------------------------------------------------
# Who sees the page
# --------------------------------------------------------------------------


def test_the_mother_gets_her_forms(mother: Any, mother_patient: Any) -> None:
    response = client_for(mother).get(home(mother_patient))
    assert response.status_code == 200
    page = text_of(response)
    for slug in ("blood-pressure", "weight", "temperature", "glucose", "fetal-movement"):
        assert f'action="{add(mother_patient, slug)}"' in page
    assert add(mother_patient, "head") not in page
    assert "data-vt-timer-for" in page
    for japanese in (
        "おうちでの記録",
        "血圧・脈拍",
        "最高血圧（上）",
        "胎動カウント",
        "測定日時（日本時間）",
    ):
        assert japanese in page
    # Time defaults to now in Japan.
    assert 'value="2026-11-26T10:00"' in page


def test_a_guardian_gets_the_childs_forms(father: Any, child: Any) -> None:
    response = client_for(father).get(home(child))
    assert response.status_code == 200
    page = text_of(response)
    for slug in ("length", "weight", "head", "temperature"):
        assert f'action="{add(child, slug)}"' in page
    assert add(child, "glucose") not in page
    assert add(child, "blood-pressure") not in page


def test_the_other_guardian_does_not_see_the_mothers_page(father: Any, mother_patient: Any) -> None:
    client = client_for(father)
    assert client.get(home(mother_patient)).status_code == 404
    response = client.post(
        add(mother_patient, "weight"),
        {
            "weight-value": "60",
            "weight-unit": "kg",
            "weight-taken_at": "2026-11-26T08:00",
        },
    )
    assert response.status_code == 404
    assert not vitals_rows().exists()


@pytest.mark.parametrize("persona", ["stranger", "consented_clinician", "municipal_officer"])
def test_everyone_else_gets_404(
    request: pytest.FixtureRequest, persona: str, child: Any, mother_patient: Any
) -> None:
    user = request.getfixturevalue(persona)
    client = client_for(user)
    for patient in (child, mother_patient):
        assert client.get(home(patient)).status_code == 404
        posted = client.post(add(patient, "weight"), {"weight-value": "9"})
        assert posted.status_code == 404
    assert AuditEvent.objects.filter(
        action="vitals.view", actor_id=user.pk, outcome="denied"
    ).exists()
    assert not vitals_rows().exists()


def test_an_unknown_person_is_404(mother: Any) -> None:
    assert client_for(mother).get(home(type("P", (), {"pk": uuid.uuid4()}))).status_code == 404


def test_anonymous_visitors_are_sent_to_log_in(child: Any) -> None:
    response = Client().get(home(child))
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


def test_reading_the_page_is_audited(mother: Any, mother_patient: Any) -> None:
    client_for(mother).get(home(mother_patient))
    row = AuditEvent.objects.get(action="vitals.view", actor_id=mother.pk, outcome="success")
    assert row.patient_id == mother_patient.pk
    assert row.categories == ["vitals"]


# --------------------------------------------------------------------------
# Entering
# --------------------------------------------------------------------------


def test_blood_pressure_and_pulse_in_one_form(
    mother: Any, mother_patient: Any, django_capture_on_commit_callbacks: Any, signals_seen: Any
) -> None:
    client = client_for(mother)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            add(mother_patient, "blood-pressure"),
            {
                "blood-pressure-systolic": "142",
                "blood-pressure-diastolic": "91",
                "blood-pressure-pulse": "78",
                "blood-pressure-taken_at": "2026-11-26T08:15",
            },
        )
    assert response.status_code == 302
    assert response["Location"].endswith(home(mother_patient) + "#recent")
    assert signals_seen == [(mother_patient.pk, frozenset({r.BLOOD_PRESSURE, r.HEART_RATE}))]
    rows = {r.kind_of(row.content).key: row.content for row in vitals_rows()}
    assert set(rows) == {r.BLOOD_PRESSURE, r.HEART_RATE}
    # 08:15 in Japan is 23:15 UTC the day before.
    assert rows[r.BLOOD_PRESSURE]["effectiveDateTime"] == "2026-11-25T23:15:00Z"
    assert [c["valueQuantity"]["value"] for c in rows[r.BLOOD_PRESSURE]["component"]] == [142, 91]
    assert rows[r.HEART_RATE]["valueQuantity"]["value"] == 78
    page = text_of(client.get(home(mother_patient)))
    assert "142/91 mmHg" in page
    assert "2026-11-26 08:15" in page


def test_the_same_form_sent_twice_is_one_record(mother: Any, mother_patient: Any) -> None:
    client = client_for(mother)
    data = {
        "temperature-value": "37.2",
        "temperature-unit": "Cel",
        "temperature-taken_at": "2026-11-26T07:00",
    }
    client.post(add(mother_patient, "temperature"), data)
    client.post(add(mother_patient, "temperature"), data)
    assert vitals_rows().count() == 1


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("ja", "収縮期血圧 350 mm[Hg] は範囲外です"),
        ("en", "systolic blood pressure 350 mm[Hg] is outside the plausible range"),
    ],
)
def test_an_impossible_value_is_refused_on_its_field(
    mother: Any, mother_patient: Any, language: str, expected: str
) -> None:
    response = client_for(mother, language).post(
        add(mother_patient, "blood-pressure"),
        {
            "blood-pressure-systolic": "350",
            "blood-pressure-diastolic": "90",
            "blood-pressure-taken_at": "2026-11-26T08:15",
        },
    )
    assert response.status_code == 400
    page = text_of(response)
    assert expected in page
    assert 'id="id_blood-pressure-systolic_error"' in page
    assert not vitals_rows().exists()


def test_swapped_pressures_and_future_times_are_refused(mother: Any, mother_patient: Any) -> None:
    client = client_for(mother, "en")
    swapped = client.post(
        add(mother_patient, "blood-pressure"),
        {
            "blood-pressure-systolic": "80",
            "blood-pressure-diastolic": "120",
            "blood-pressure-taken_at": "2026-11-26T08:15",
        },
    )
    assert swapped.status_code == 400
    assert "are they swapped?" in text_of(swapped)
    future = client.post(
        add(mother_patient, "weight"),
        {
            "weight-value": "60",
            "weight-unit": "kg",
            "weight-taken_at": "2026-11-26T12:00",
        },
    )
    assert future.status_code == 400
    assert "in the future" in text_of(future)
    assert not vitals_rows().exists()


def test_a_measurement_before_birth_is_refused(mother: Any, child: Any) -> None:
    # The child fixture was born on 2025-09-01.
    response = client_for(mother, "en").post(
        add(child, "head"), {"head-value": "40.1", "head-taken_at": "2025-08-31T10:00"}
    )
    assert response.status_code == 400
    assert "2025-08-31 is before the birth date (2025-09-01)." in text_of(response)
    assert not vitals_rows().exists()


def test_units_are_converted(mother: Any, mother_patient: Any, child: Any) -> None:
    client = client_for(mother)
    client.post(
        add(child, "weight"),
        {"weight-value": "8450", "weight-unit": "g", "weight-taken_at": "2026-11-26T09:00"},
    )
    client.post(
        add(mother_patient, "glucose"),
        {"glucose-value": "5.5", "glucose-unit": "mmol/L", "glucose-taken_at": "2026-11-26T09:00"},
    )
    client.post(
        add(mother_patient, "temperature"),
        {
            "temperature-value": "99.5",
            "temperature-unit": "[degF]",
            "temperature-taken_at": "2026-11-26T09:00",
        },
    )
    values = {r.kind_of(row.content).key: row.content["valueQuantity"] for row in vitals_rows()}
    assert values[r.BODY_WEIGHT]["value"] == 8.45
    assert values[r.BODY_WEIGHT]["code"] == "kg"
    assert values[r.BLOOD_GLUCOSE]["value"] == 99
    assert values[r.BLOOD_GLUCOSE]["code"] == "mg/dL"
    assert values[r.BODY_TEMPERATURE]["value"] == 37.5
    assert values[r.BODY_TEMPERATURE]["code"] == "Cel"


def test_a_childs_length_is_lying_under_two_and_standing_when_chosen(
    mother: Any, child: Any
) -> None:
    client = client_for(mother)
    page = text_of(client.get(home(child)))
    assert re.search(r'value="body_length"[^>]*checked', page)
    client.post(
        add(child, "length"),
        {
            "length-value": "78.4",
            "length-posture": "body_length",
            "length-taken_at": "2026-11-26T09:00",
        },
    )
    client.post(
        add(child, "length"),
        {
            "length-value": "79.0",
            "length-posture": "body_height",
            "length-taken_at": "2026-11-26T09:05",
        },
    )
    kinds = sorted(r.kind_of(row.content).key for row in vitals_rows())
    assert kinds == [r.BODY_HEIGHT, r.BODY_LENGTH]


def test_fetal_movement_minutes(mother: Any, mother_patient: Any) -> None:
    response = client_for(mother).post(
        add(mother_patient, "fetal-movement"),
        {
            "fetal-movement-value": "24",
            "fetal-movement-taken_at": "2026-11-26T09:00",
        },
    )
    assert response.status_code == 302
    [row] = vitals_rows()
    assert row.content["code"]["coding"][0]["code"] == "fetal-movement-10"
    assert row.content["valueQuantity"] == {
        "value": 24,
        "unit": "min",
        "system": "http://unitsofmeasure.org",
        "code": "min",
    }


def test_a_form_of_the_other_person_kind_is_404(
    mother: Any, mother_patient: Any, child: Any
) -> None:
    client = client_for(mother)
    assert client.post(add(mother_patient, "head"), {"head-value": "40"}).status_code == 404
    assert client.post(add(child, "glucose"), {"glucose-value": "90"}).status_code == 404
    assert client.post(add(child, "nonsense"), {}).status_code == 404


# --------------------------------------------------------------------------
# Recent entries, edit and delete
# --------------------------------------------------------------------------


def _enter_weight(user: Any, patient: Any, value: str = "9.1") -> uuid.UUID:
    [written] = r.vitals_write(
        user=user,
        patient=patient,
        readings=[r.Reading(r.BODY_WEIGHT, (value,), datetime(2026, 11, 25, 23, 0, tzinfo=UTC))],
    )
    return written.id


def test_entries_are_listed_newest_first_with_their_source(
    mother: Any, child: Any, father: Any
) -> None:
    _enter_weight(mother, child)
    r.vitals_write(
        user=father,
        patient=child,
        device=r.DeviceRef("5", "体組成計 HBF-228T"),
        readings=[
            r.Reading(r.BODY_TEMPERATURE, ("36.9",), datetime(2026, 11, 26, 0, 30, tzinfo=UTC))
        ],
    )
    page = text_of(client_for(mother).get(home(child)))
    assert page.index("36.9 ℃") < page.index("9.1 kg")
    assert "体組成計 HBF-228T" in page
    assert "2026-11-26 09:30" in page  # Japan time


def test_the_author_corrects_an_entry(
    mother: Any, child: Any, django_capture_on_commit_callbacks: Any, signals_seen: Any
) -> None:
    rid = _enter_weight(mother, child)
    client = client_for(mother)
    url = reverse("vitals:entry-edit", args=[child.pk, rid])
    page = text_of(client.get(home(child)))
    assert url in page
    form = text_of(client.get(url))
    assert 'value="9.1"' in form
    assert 'value="2026-11-26T08:00"' in form
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            url, {"weight-value": "9.4", "weight-unit": "kg", "weight-taken_at": "2026-11-26T08:00"}
        )
    assert response.status_code == 302
    row = Resource.objects.get(id=rid)
    assert row.version == 2
    assert row.content["valueQuantity"]["value"] == 9.4
    assert signals_seen == [(child.pk, frozenset({r.BODY_WEIGHT}))]
    bad = client.post(
        url, {"weight-value": "900", "weight-unit": "kg", "weight-taken_at": "2026-11-26T08:00"}
    )
    assert bad.status_code == 400
    assert Resource.objects.get(id=rid).version == 2


def test_the_author_deletes_an_entry(mother: Any, child: Any) -> None:
    rid = _enter_weight(mother, child)
    client = client_for(mother)
    response = client.post(reverse("vitals:entry-delete", args=[child.pk, rid]))
    assert response.status_code == 302
    row = Resource.objects.get(id=rid)
    assert row.deleted
    assert "9.1 kg" not in text_of(client.get(home(child)))


def test_only_the_author_edits_or_deletes(mother: Any, child: Any, father: Any) -> None:
    rid = _enter_weight(mother, child)
    client = client_for(father)
    page = text_of(client.get(home(child)))
    assert "9.1 kg" in page  # the other guardian sees it …
    edit_url = reverse("vitals:entry-edit", args=[child.pk, rid])
    assert edit_url not in page  # … but may not change it
    assert client.get(edit_url).status_code == 404
    assert client.post(edit_url, {"weight-value": "1"}).status_code == 404
    delete_url = reverse("vitals:entry-delete", args=[child.pk, rid])
    assert client.post(delete_url).status_code == 404
    row = Resource.objects.get(id=rid)
    assert not row.deleted
    assert row.version == 1


def test_device_readings_cannot_be_edited_by_hand(mother: Any, mother_patient: Any) -> None:
    [w] = r.vitals_write(
        user=mother,
        patient=mother_patient,
        device=r.DeviceRef("3", "HEM-7600T"),
        readings=[r.Reading(r.HEART_RATE, (70,), datetime(2026, 11, 26, 0, 0, tzinfo=UTC))],
    )
    client = client_for(mother)
    assert (
        client.get(reverse("vitals:entry-edit", args=[mother_patient.pk, w.id])).status_code == 404
    )
    assert (
        client.post(reverse("vitals:entry-delete", args=[mother_patient.pk, w.id])).status_code
        == 404
    )


def test_an_entry_of_another_person_is_404_under_this_one(
    mother: Any, mother_patient: Any, child: Any
) -> None:
    rid = _enter_weight(mother, child)
    client = client_for(mother)
    assert (
        client.get(reverse("vitals:entry-edit", args=[mother_patient.pk, rid])).status_code == 404
    )
