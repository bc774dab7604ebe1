"""The digital MCH handbook: what a child's and a mother's handbook show,
where each item came from, who may open them, and the family's own
entries (school checkups, birth data, notes)."""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Any

import pytest
import time_machine
from django.test import Client
from django.urls import reverse

from municipal_data.formats import school_checkup
from municipal_data.records import MunicipalRecord, Person
from phr import demo, handbook, services, store
from phr.models import AuditEvent, Provenance, Resource
from phr.terminology import CATEGORY_SYSTEM, LOCAL
from sharing.access import Purpose, may_write
from sharing.models import ConsentPurpose
from sharing.services import consent_grant
from tests import factories as f
from tests.phr import handbook_data as data

pytestmark = pytest.mark.django_db

BIRTH = date(2025, 9, 1)  # the child fixture's birth date
TODAY = date(2026, 11, 26)


@pytest.fixture(autouse=True)
def _today() -> Any:
    with time_machine.travel("2026-11-26 10:00 +0900", tick=False):
        yield


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def book_url(patient: Any) -> str:
    return reverse("handbook:book", args=[patient.pk])


def text_of(response: Any) -> str:
    return re.sub(r"\s+", " ", response.content.decode())


@pytest.fixture
def child_book(child: Any, municipality: Any) -> Any:
    data.child_records(
        child=child, birth=BIRTH, anchor=BIRTH + timedelta(days=420), municipality=municipality
    )
    return child


@pytest.fixture
def consented_clinician(clinician: Any, clinic: Any, mother: Any, child: Any,
                        mother_patient: Any) -> Any:  # fmt: skip
    for patient in (child, mother_patient):
        consent_grant(
            patient=patient,
            by=mother,
            purpose=ConsentPurpose.CARE,
            categories=["infant_checkups", "school_checkups", "vaccinations", "pregnancy",
                        "prenatal_checkups", "medications"],
            grantee_org=clinic,
        )  # fmt: skip
    return clinician


# --------------------------------------------------------------------------
# The child's handbook
# --------------------------------------------------------------------------


def test_it_shows_a_childs_birth_data_checkups_and_vaccinations_with_their_source(
    mother: Any, child_book: Any, municipality: Any
) -> None:
    response = client_for(mother).get(book_url(child_book))
    assert response.status_code == 200
    page = text_of(response)
    # Birth data from the municipality's checkup record (出生時体重, 在胎週数).
    birth_weight = round(demo.growth_p50(0)[1] * 1000)
    assert f"{birth_weight} g" in page
    assert "出生体重" in page
    # The checkups by kind, in the paper handbook's order, with the age.
    titles = ["1か月児健診", "3～4か月児健診", "6～7か月児健診", "9～10か月児健診"]
    positions = [page.index(t) for t in titles]
    assert positions == sorted(positions)
    assert "1か月" in page  # the age at the 1-month checkup
    assert "所見なし" in page
    # Vaccinations with their source: the municipality, by name.
    assert "5種混合(DPT-IPV-Hib)" in page
    assert municipality.name in page
    assert 'class="badge badge-municipality"' in response.content.decode()
    # Opening the handbook is audited as a reveal of the child.
    assert AuditEvent.objects.filter(
        action="view.handbook", patient_id=child_book.pk, outcome="success"
    ).exists()


def test_it_shows_the_other_guardian_the_childs_handbook(father: Any, child_book: Any) -> None:
    response = client_for(father).get(book_url(child_book))
    assert response.status_code == 200
    assert "1か月児健診" in text_of(response)


@pytest.mark.parametrize("persona", ["stranger", "consented_clinician", "municipal_officer"])
def test_it_hides_the_handbook_from_everyone_but_the_family(
    request: pytest.FixtureRequest, persona: str, child_book: Any, mother_patient: Any
) -> None:
    # The handbook is the family's page: staff use their portals (docs/0014).
    user = request.getfixturevalue(persona)
    client = client_for(user)
    for patient in (child_book, mother_patient):
        assert client.get(book_url(patient)).status_code == 404
        assert client.get(reverse("handbook:print", args=[patient.pk])).status_code == 404
    assert AuditEvent.objects.filter(
        action="view.handbook", actor_id=user.pk, outcome="denied"
    ).exists()


def test_it_sends_anonymous_visitors_to_log_in(child_book: Any) -> None:
    response = Client().get(book_url(child_book))
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


def test_it_lists_the_latest_medicines_and_links_the_medication_notebook(
    mother: Any, child: Any
) -> None:
    items = [
        (data.dispense(child, BIRTH + timedelta(days=30 + n), n), store.Source("urn:t", str(n)))
        for n in range(handbook.MEDICINES_SHOWN + 3)
    ]
    data.write_items(items, origin=Provenance.Origin.PHARMACY)
    response = client_for(mother).get(book_url(child))
    page = text_of(response)
    shown = handbook.MEDICINES_SHOWN + 2
    assert f"カルボシステインシロップ {shown}" in page  # the newest
    assert "カルボシステインシロップ 0 " not in page  # older than the latest 20
    assert "はぐくみ薬局" in page
    notebook = reverse("medication:notebook", args=[child.pk])
    assert f'href="{notebook}"' in response.content.decode()


def test_the_print_view_lays_the_sections_out_in_the_paper_handbooks_order(
    mother: Any, child_book: Any
) -> None:
    response = client_for(mother).get(reverse("handbook:print", args=[child_book.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "data-handbook-print" in html  # the print button
    assert "css/handbook.css" in html
    ids = ['id="birth"', 'id="checkups"', 'id="vaccinations"', 'id="school-checkups"',
           'id="medicines"', 'id="notes"']  # fmt: skip
    positions = [html.index(i) for i in ids]
    assert positions == sorted(positions)
    # No forms or edit links on paper.
    assert reverse("handbook:school_checkup_new", args=[child_book.pk]) not in html


# --------------------------------------------------------------------------
# The mother's handbook
# --------------------------------------------------------------------------


def _pregnancy(mother_patient: Any, clinic: Any) -> date:
    anchor = TODAY
    items = demo.pregnancy_items(mother=mother_patient.pk, anchor=anchor, clinic=clinic)
    data.write_items(items, origin=Provenance.Origin.CLINIC, organization=clinic)
    return demo.due_date(anchor)


def test_it_shows_the_mother_her_pregnancy_due_date_gestational_age_and_visits(
    mother: Any, mother_patient: Any, clinic: Any
) -> None:
    due = _pregnancy(mother_patient, clinic)
    response = client_for(mother).get(book_url(mother_patient))
    assert response.status_code == 200
    page = text_of(response)
    assert f'datetime="{due.isoformat()}"' in page
    days = 280 - (due - TODAY).days
    assert f"{days // 7}週{days % 7}日" in page  # gestational age today
    assert "116/72 mmHg" in page  # the two visits' BP
    assert "112/68 mmHg" in page
    assert " kg" in page
    assert clinic.name in page
    assert "badge badge-clinic" in page


def test_it_lists_prenatal_results_no_visit_holds_by_date_with_their_source(
    mother: Any, mother_patient: Any, clinic: Any
) -> None:
    # A clinic's fundal height and HIV test sent without their Encounter,
    # and a result from before this pregnancy: none of them is dropped.
    due = _pregnancy(mother_patient, clinic)
    started = due - timedelta(days=280)
    fundal_day, hiv_day = TODAY - timedelta(days=3), started + timedelta(days=60)
    f.write_observation(
        mother_patient,
        organization=clinic,
        origin=Provenance.Origin.CLINIC,
        code="11881-0",
        value=26.7,
        unit="cm",
        when=fundal_day.isoformat(),
        category="prenatal_checkups",
    )
    hiv = {
        "resourceType": "Observation",
        "status": "final",
        "meta": {"tag": [{"system": CATEGORY_SYSTEM, "code": "prenatal_checkups"}]},
        "code": {"coding": [{"system": LOCAL, "code": "hiv-antibody"}], "text": "HIV抗体"},
        "subject": {"reference": f"Patient/{mother_patient.pk}"},
        "effectiveDateTime": hiv_day.isoformat(),
        "valueString": "陰性",
    }
    provenance = services.provenance_create(origin=Provenance.Origin.CLINIC, organization=clinic)
    store.record_write(hiv, provenance=provenance)
    f.write_observation(
        mother_patient,
        organization=clinic,
        origin=Provenance.Origin.CLINIC,
        code="11881-0",
        value=30.1,
        unit="cm",
        when="2020-05-01",
        category="prenatal_checkups",
    )
    html = client_for(mother).get(book_url(mother_patient)).content.decode()
    pregnancy, _, outside = html.partition('id="other-results"')
    rows = re.findall(r'<tr class="hb-result">(.*?)</tr>', pregnancy, re.S)
    # In the pregnancy, by date: the HIV test (at 8 weeks), then the fundal height.
    assert len(rows) == 2
    assert f'datetime="{hiv_day.isoformat()}"' in rows[0]
    assert "陰性" in rows[0]
    assert f'datetime="{fundal_day.isoformat()}"' in rows[1]
    assert "26.7" in rows[1]
    for row in rows:
        assert "badge badge-clinic" in row
        assert clinic.name in row
    # Before the pregnancy began: listed apart, not in it.
    assert "30.1" not in pregnancy
    (before,) = re.findall(r'<tr class="hb-result">(.*?)</tr>', outside, re.S)
    assert 'datetime="2020-05-01"' in before
    assert "30.1" in before
    assert "記録された妊娠の期間外の妊婦健診の結果" in outside
    # The visits keep their own results (not repeated as loose ones).
    assert "116/72 mmHg" in pregnancy
    assert "116/72" not in "".join(rows)


def test_it_hides_the_mothers_own_handbook_from_the_other_guardian(
    father: Any, mother_patient: Any, clinic: Any
) -> None:
    # The father is the child's guardian, not hers: her records are hers.
    _pregnancy(mother_patient, clinic)
    assert client_for(father).get(book_url(mother_patient)).status_code == 404


# --------------------------------------------------------------------------
# School checkups entered by a parent
# --------------------------------------------------------------------------

SCHOOL_BIRTH = date(2018, 6, 10)  # 小2 in 2026


@pytest.fixture
def pupil(mother: Any, municipality: Any) -> Any:
    from phr.models import Guardianship
    from phr.services import guardianship_add

    patient = f.make_patient(given="そら", birth_date=SCHOOL_BIRTH)
    guardianship_add(guardian=mother, child=patient, relationship=Guardianship.Relationship.MOTHER)
    return patient


def school_url(patient: Any) -> str:
    return reverse("handbook:school_checkup_new", args=[patient.pk])


GOOD = {
    "date": "2026-05-12",
    "grade": "e3",
    "school_name": "前橋市立はぐくみ小学校",
    "body_height": "128.4",
    "body_weight": "26.1",
    "school_vision_right": "A",
    "school_vision_left": "0.8",
    "hearing_right": "no-findings",
    "hearing_left": "no-findings",
    "caries_untreated": "1",
    "caries_treated": "2",
    "urine_protein": "negative",
    "urine_glucose": "negative",
    "urine_occult_blood": "trace",
}


def test_a_parent_enters_school_checkup_results_shown_as_parent_entered(
    mother: Any, pupil: Any
) -> None:
    client = client_for(mother)
    assert client.get(school_url(pupil)).status_code == 200
    response = client.post(school_url(pupil), GOOD)
    assert response.status_code == 302
    rows = Resource.objects.filter(compartments__overlap=[pupil.pk], category="school_checkups")
    assert rows.filter(resource_type="Encounter").count() == 1
    assert rows.filter(resource_type="Observation").count() == 11
    assert {r.provenance.origin for r in rows} == {Provenance.Origin.SELF}
    assert {r.provenance.agent_user_id for r in rows} == {mother.pk}
    page = text_of(client.get(book_url(pupil)))
    assert "学校健診（小学3年）" in page
    assert "128.4 cm" in page
    assert "0.8（B）" in page  # a decimal acuity kept with its class
    assert "保護者が入力" in page  # marked as entered by a parent


def test_parent_entered_school_results_have_the_school_feeds_codes(mother: Any, pupil: Any) -> None:
    # Shown "like any other measurement": the same codes and shape as the
    # school feed writes (municipal_data/formats/school_checkup.py).
    client_for(mother).post(school_url(pupil), GOOD)
    ours = {
        tuple(sorted(c["system"] + "|" + c["code"] for c in r.content["code"]["coding"]))
        for r in Resource.objects.filter(
            compartments__overlap=[pupil.pk], resource_type="Observation"
        )
    }
    record = MunicipalRecord(
        line=2,
        change="add",
        key="x|2026-05-12",
        subject=Person(kind="child", municipality_code="102016", resident_number="x"),
        values={
            "date": date(2026, 5, 12),
            "grade_code": "e3",
            "school_name": "s",
            "body_height": 128,
            "body_weight": 26,
            "school_vision_right": ("A", ""),
            "school_vision_left": ("B", "0.8"),
            "hearing_right": "no-findings",
            "hearing_left": "no-findings",
            "caries_untreated": 1,
            "caries_treated": 2,
            "urine_protein": "negative",
            "urine_glucose": "negative",
            "urine_occult_blood": "trace",
        },
    )
    feed = {
        tuple(sorted(c["system"] + "|" + c["code"] for c in resource["code"]["coding"]))
        for _item, resource in school_checkup.resources(record, str(pupil.pk), None)
        if resource["resourceType"] == "Observation"
    }
    assert ours == feed


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("school_vision_right", "E", "E"),
        ("body_height", "1168", "1168"),
        ("body_weight", "5", "5"),
        ("caries_untreated", "33", "32"),
        ("grade", "e6", "小学6年"),
        ("date", "2027-01-10", "2027-01-10"),
        ("date", "2018-01-10", "2018-01-10"),
    ],
)
def test_it_refuses_implausible_school_results_with_a_clear_error(
    mother: Any, pupil: Any, field: str, value: str, message: str
) -> None:
    response = client_for(mother).post(school_url(pupil), {**GOOD, field: value})
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert field in errors
    assert message in " ".join(errors[field])
    assert (
        not Resource.objects.filter(compartments__overlap=[pupil.pk])
        .exclude(resource_type="Patient")
        .exists()
    )


def test_it_refuses_a_school_checkup_with_no_result(mother: Any, pupil: Any) -> None:
    response = client_for(mother).post(school_url(pupil), {"date": "2026-05-12", "grade": "e3"})
    assert response.status_code == 400
    assert response.context["form"].non_field_errors()


def test_entering_the_same_school_checkup_day_again_corrects_it(mother: Any, pupil: Any) -> None:
    client = client_for(mother)
    client.post(school_url(pupil), GOOD)
    corrected = {**GOOD, "body_height": "128.9"}
    del corrected["urine_occult_blood"]
    client.post(school_url(pupil), corrected)
    live = Resource.objects.filter(
        compartments__overlap=[pupil.pk], category="school_checkups", deleted=False
    )
    assert live.filter(resource_type="Encounter").count() == 1
    assert live.filter(resource_type="Observation").count() == 10
    heights = [r.content["valueQuantity"]["value"] for r in live if r.content.get("valueQuantity")
               and r.content["valueQuantity"]["unit"] == "cm"]  # fmt: skip
    assert heights == [128.9]


@pytest.mark.parametrize("persona", ["stranger", "consented_clinician", "municipal_officer"])
def test_only_a_guardian_may_enter_school_results(
    request: pytest.FixtureRequest, persona: str, child: Any
) -> None:
    user = request.getfixturevalue(persona)
    client = client_for(user)
    url = school_url(child)
    assert client.get(url).status_code == 404
    assert client.post(url, GOOD).status_code == 404
    assert not Resource.objects.filter(category="school_checkups").exists()


def test_the_other_guardian_may_enter_school_results(father: Any, child: Any) -> None:
    assert may_write(father, child, category="school_checkups", purpose=Purpose.PERSONAL)
    # Not a clinic's write: the care rules do not answer for a parent.
    assert not may_write(father, child, category="school_checkups")


# --------------------------------------------------------------------------
# Birth data entered by a parent
# --------------------------------------------------------------------------


def test_a_parent_enters_birth_data_no_record_holds(mother: Any, child: Any) -> None:
    client = client_for(mother)
    url = reverse("handbook:birth", args=[child.pk])
    form = client.get(url).context["form"]
    assert set(form.fields) == {
        "gestation_weeks", "gestation_days", "birth_weight", "body_length", "head_circumference"
    }  # fmt: skip
    response = client.post(
        url,
        {"gestation_weeks": "38", "gestation_days": "4", "birth_weight": "2980",
         "body_length": "48.5", "head_circumference": "33.0"},
    )  # fmt: skip
    assert response.status_code == 302
    page = text_of(client.get(book_url(child)))
    assert "38週4日" in page
    assert "2980 g" in page
    assert "48.5 cm" in page
    rows = Resource.objects.filter(compartments__overlap=[child.pk], resource_type="Observation")
    assert rows.count() == 4
    assert {r.provenance.origin for r in rows} == {Provenance.Origin.SELF}


def test_it_asks_only_for_birth_data_the_clinic_did_not_record(
    mother: Any, child: Any, clinic: Any
) -> None:
    # The delivering clinic recorded the weight and length only.
    items = [
        (data_item, store.Source("urn:t:delivery", key))
        for key, data_item in (
            ("bw", _birth_obs(child, "birth_weight", {"value": 3050, "unit": "g"})),
            ("len", _birth_obs(child, "body_length", {"value": 49.0, "unit": "cm"})),
        )
    ]
    data.write_items(items, origin=Provenance.Origin.CLINIC, organization=clinic)
    response = client_for(mother).get(reverse("handbook:birth", args=[child.pk]))
    assert set(response.context["form"].fields) == {
        "gestation_weeks", "gestation_days", "head_circumference"
    }  # fmt: skip
    assert clinic.name in text_of(response)


def _birth_obs(child: Any, key: str, quantity: dict[str, Any]) -> dict[str, Any]:
    from municipal_data.formats import common

    return common.observation(
        key,
        subject=str(child.pk),
        when=BIRTH,
        category="infant_checkups",
        obs_category="vital-signs",
        valueQuantity={**quantity, "system": "http://unitsofmeasure.org", "code": quantity["unit"]},
    )


def test_it_refuses_impossible_birth_data(mother: Any, child: Any) -> None:
    response = client_for(mother).post(
        reverse("handbook:birth", args=[child.pk]),
        {"gestation_weeks": "50", "birth_weight": "98000", "body_length": "120"},
    )
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert {"gestation_weeks", "birth_weight", "body_length"} <= set(errors)
    assert not Resource.objects.filter(
        compartments__overlap=[child.pk], resource_type="Observation"
    ).exists()


def test_a_stranger_may_not_enter_birth_data(stranger: Any, child: Any) -> None:
    url = reverse("handbook:birth", args=[child.pk])
    assert client_for(stranger).get(url).status_code == 404
    assert client_for(stranger).post(url, {"birth_weight": "3000"}).status_code == 404


# --------------------------------------------------------------------------
# Notes
# --------------------------------------------------------------------------


def test_a_parent_adds_edits_and_deletes_her_note(mother: Any, child: Any) -> None:
    client = client_for(mother)
    response = client.post(
        reverse("handbook:note_new", args=[child.pk]),
        {"date": "2026-11-20", "text": "はじめて寝返りをした"},
    )
    assert response.status_code == 302
    note = Resource.objects.get(compartments__overlap=[child.pk], resource_type="Observation")
    assert note.content["valueString"] == "はじめて寝返りをした"
    assert note.category == "infant_checkups"
    page = text_of(client.get(book_url(child)))
    assert "はじめて寝返りをした" in page
    edit = reverse("handbook:note_edit", args=[child.pk, note.pk])
    assert edit in page
    client.post(edit, {"date": "2026-11-20", "text": "寝返りをした（右から）"})
    note.refresh_from_db()
    assert note.version == 2
    assert note.content["valueString"] == "寝返りをした（右から）"
    client.post(reverse("handbook:note_delete", args=[child.pk, note.pk]))
    note.refresh_from_db()
    assert note.deleted
    assert "寝返り" not in text_of(client.get(book_url(child)))


def test_only_the_author_may_edit_a_note(mother: Any, father: Any, child: Any) -> None:
    client_for(mother).post(
        reverse("handbook:note_new", args=[child.pk]), {"date": "2026-11-20", "text": "メモ"}
    )
    note = Resource.objects.get(compartments__overlap=[child.pk], resource_type="Observation")
    father_client = client_for(father)
    # The other guardian reads it, but it is not his to change.
    page = text_of(father_client.get(book_url(child)))
    assert "メモ" in page
    edit = reverse("handbook:note_edit", args=[child.pk, note.pk])
    assert edit not in page
    assert father_client.get(edit).status_code == 404
    assert father_client.post(edit, {"date": "2026-11-20", "text": "x"}).status_code == 404
    delete = reverse("handbook:note_delete", args=[child.pk, note.pk])
    assert father_client.post(delete).status_code == 404
    note.refresh_from_db()
    assert note.version == 1
    assert not note.deleted


def test_a_note_cannot_be_empty_or_in_the_future(mother: Any, child: Any) -> None:
    client = client_for(mother)
    url = reverse("handbook:note_new", args=[child.pk])
    response = client.post(url, {"date": "2026-12-20", "text": "  "})
    assert response.status_code == 400
    assert {"date", "text"} <= set(response.context["form"].errors)


def test_the_mother_keeps_notes_in_her_pregnancy_handbook(
    mother: Any, mother_patient: Any, clinic: Any
) -> None:
    _pregnancy(mother_patient, clinic)
    client = client_for(mother)
    client.post(
        reverse("handbook:note_new", args=[mother_patient.pk]),
        {"date": "2026-11-25", "text": "胎動を感じた"},
    )
    note = Resource.objects.get(
        compartments__overlap=[mother_patient.pk], tokens__contains=[handbook.NOTE_TOKEN]
    )
    assert note.category == "pregnancy"
    assert "胎動を感じた" in text_of(client.get(book_url(mother_patient)))


def test_the_family_overview_and_the_person_page_link_to_the_handbook(
    mother: Any, child: Any
) -> None:
    client = client_for(mother)
    assert book_url(child) in client.get(reverse("phr:home")).content.decode()
    assert book_url(child) in client.get(reverse("phr:person", args=[child.pk])).content.decode()


def test_it_shows_the_latest_home_measurements_of_the_last_three_months(
    mother: Any, child: Any
) -> None:
    # The growth chart has them all; the handbook shows the recent ones.
    items = [
        (data.home_weight(child, date(2026, 11, 20), 1, 10.4), store.Source("urn:t:h", "new")),
        (data.home_weight(child, date(2026, 5, 20), 2, 8.7), store.Source("urn:t:h", "old")),
    ]
    data.write_items(items, origin=Provenance.Origin.DEVICE)
    page = text_of(client_for(mother).get(book_url(child)))
    assert "10.4 kg" in page
    assert "8.7 kg" not in page
    assert "badge badge-device" in page


def test_a_dv_blocked_guardian_gets_nothing_of_the_child(
    father: Any, child_book: Any, municipality: Any, municipal_officer: Any
) -> None:
    # DV等支援措置: cut off through every channel, the handbook included.
    from sharing.models import DvBlock

    DvBlock.objects.create(
        patient=child_book,
        blocked_user=father,
        municipality=municipality,
        created_by=municipal_officer,
    )
    client = client_for(father)
    assert client.get(book_url(child_book)).status_code == 404
    assert client.post(school_url(child_book), GOOD).status_code == 404
    note = reverse("handbook:note_new", args=[child_book.pk])
    assert client.post(note, {"date": "2026-11-20", "text": "x"}).status_code == 404
    assert AuditEvent.objects.filter(
        actor=father, patient=child_book, outcome="denied", action="view.handbook"
    ).exists()
    assert not Resource.objects.filter(
        compartments__overlap=[child_book.pk], category="school_checkups"
    ).exists()


def test_the_mothers_print_view_shows_her_pregnancy(
    mother: Any, mother_patient: Any, clinic: Any
) -> None:
    due = _pregnancy(mother_patient, clinic)
    response = client_for(mother).get(reverse("handbook:print", args=[mother_patient.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "data-handbook-print" in html
    assert f'datetime="{due.isoformat()}"' in html
    assert "116/72 mmHg" in html


def test_school_checkups_and_birth_data_are_for_children_only(
    mother: Any, mother_patient: Any
) -> None:
    client = client_for(mother)
    assert client.get(school_url(mother_patient)).status_code == 404
    assert client.get(reverse("handbook:birth", args=[mother_patient.pk])).status_code == 404


def test_the_family_write_rule_covers_only_what_a_family_records(
    mother: Any, mother_patient: Any, child: Any, stranger: Any, consented_clinician: Any
) -> None:
    # sharing.access.may_write(purpose=personal): herself (self) and her
    # children (guardian), for the family's own categories; never a clinic's
    # or municipality's findings, never anyone else. (Vaccinations a parent
    # reports are hers to write: tests/phr/test_handbook_vaccinations.py.)
    personal = Purpose.PERSONAL
    assert may_write(mother, mother_patient, category="pregnancy", purpose=personal).rule == "self"
    assert may_write(mother, child, category="school_checkups", purpose=personal).rule == "guardian"
    assert not may_write(mother, mother_patient, category="prenatal_checkups", purpose=personal)
    assert not may_write(mother, child, category="prenatal_checkups", purpose=personal)
    assert not may_write(stranger, child, category="school_checkups", purpose=personal)
    # A clinic's consent lets it write as a clinic, not as the family.
    assert not may_write(consented_clinician, child, category="infant_checkups", purpose=personal)


def test_the_growth_record_puts_parent_entered_school_results_beside_the_checkups(
    mother: Any, pupil: Any, municipality: Any
) -> None:
    # Part 7: "like any other measurement" — one table of heights and
    # weights, at birth and at every checkup, whoever recorded them.
    data.child_records(
        child=pupil,
        birth=SCHOOL_BIRTH,
        anchor=SCHOOL_BIRTH + timedelta(days=200),
        municipality=municipality,
    )
    client = client_for(mother)
    client.post(school_url(pupil), GOOD)
    html = client.get(book_url(pupil)).content.decode()
    growth = html[html.index('id="growth"') : html.index('id="vaccinations"')]
    rows = growth.split('class="hb-growth-row"')[1:]
    assert "出生時" in rows[0]
    assert "badge-municipality" in rows[1]
    assert "128.4 cm" in rows[-1]
    assert "26.1 kg" in rows[-1]
    assert "保護者が入力" in rows[-1]
