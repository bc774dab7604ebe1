"""Vaccinations a parent reports in the handbook (a dose given elsewhere:
before moving to this town, read off the paper handbook): the form's
checks, the Immunization it becomes (shaped like the municipal
register's), who may write and delete it, and that the schedule counts it —
once, beside the municipality's report of the same dose
(docs/decisions/0014-handbook.md, 0012-schedules.md)."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

import pytest
import time_machine
from django.test import Client
from django.urls import reverse

from municipal_data.formats import vaccination as vaccination_format
from municipal_data.records import MunicipalRecord, Person
from phr import fhir, handbook_services, schedules
from phr.legal_age import after_interval_months, days_after_birth, months_reached_on
from phr.models import AuditEvent, Provenance, Resource
from sharing.access import Purpose, may_write
from sharing.models import ConsentPurpose
from sharing.services import consent_grant
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


def new_url(patient: Any) -> str:
    return reverse("handbook:vaccination_new", args=[patient.pk])


def delete_url(patient: Any, record_id: Any) -> str:
    return reverse("handbook:vaccination_delete", args=[patient.pk, record_id])


def text_of(response: Any) -> str:
    return re.sub(r"\s+", " ", response.content.decode())


def immunizations(child: Any) -> list[Resource]:
    return list(
        Resource.objects.filter(
            resource_type="Immunization", compartments__overlap=[child.pk], deleted=False
        )
    )


def form(dose: str, day: str, **extra: str) -> dict[str, str]:
    return {"dose": dose, "date": day, "report_origin": "record", **extra}


def mr_plan(user: Any, child: Any) -> Any:
    plan = schedules.child_schedule(user=user, patient=child, today=TODAY)
    return next(p for p in plan.vaccines if p.series == "mr")


@pytest.fixture
def consented_clinician(clinician: Any, clinic: Any, mother: Any, child: Any) -> Any:
    consent_grant(
        patient=child,
        by=mother,
        purpose=ConsentPurpose.CARE,
        categories=["infant_checkups", "vaccinations"],
        grantee_org=clinic,
    )
    return clinician


# --------------------------------------------------------------------------
# Writing a dose
# --------------------------------------------------------------------------


def test_a_guardian_records_a_dose_shaped_like_the_municipal_register(
    mother: Any, child: Any
) -> None:
    response = client_for(mother).post(
        new_url(child),
        form("mr:1", "2026-09-05", lot_number="MR123A", clinic_name="旧住所こどもクリニック"),
    )
    assert response.status_code == 302
    assert response["Location"].endswith("#vaccinations")
    [row] = immunizations(child)
    content = row.content
    # Exactly the municipal shape (municipal_data/formats/vaccination.resources)
    # for the same dose, plus what says a parent reported it.
    municipal = vaccination_format.resources(
        MunicipalRecord(
            line=1,
            change="add",
            key="x",
            subject=Person(kind="child", municipality_code="102016", resident_number="x"),
            values={
                "vaccine": "mr",
                "dose_number": 1,
                "series_label": "第1期",
                "date": date(2026, 9, 5),
                "lot_number": "MR123A",
                "clinic_name": "旧住所こどもクリニック",
            },
        ),
        str(child.pk),
        None,
    )[0][1]
    ours = {k: v for k, v in content.items() if k not in ("primarySource", "reportOrigin", "id")}
    ours["meta"] = {"tag": content["meta"]["tag"]}
    assert ours == municipal
    assert content["primarySource"] is False
    assert content["reportOrigin"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/immunization-origin",
        "code": "record",
        "display": "Written Record",
    }
    fhir.validate_resource(fhir.to_fhir(row))
    # The family's own entry: provenance origin self, naming the guardian.
    assert row.provenance.origin == Provenance.Origin.SELF
    assert row.provenance.agent_user_id == mother.pk
    assert row.category == "vaccinations"
    assert AuditEvent.objects.filter(
        action="handbook.vaccination", patient_id=child.pk, outcome="success"
    ).exists()


def test_entering_the_same_dose_twice_adds_no_second_record(mother: Any, child: Any) -> None:
    client = client_for(mother)
    assert client.post(new_url(child), form("mr:1", "2026-09-05")).status_code == 302
    assert client.post(new_url(child), form("mr:1", "2026-09-05")).status_code == 302
    [row] = immunizations(child)
    assert row.version == 1  # nothing changed, no new version
    # The same dose again with another day (or product) corrects it.
    assert client.post(new_url(child), form("mr:1", "2026-09-06")).status_code == 302
    [row] = immunizations(child)
    assert row.version == 2
    assert row.content["occurrenceDateTime"] == "2026-09-06"
    # A PCV dose 1 named by product and without one is the same dose.
    client.post(new_url(child), form("pcv:1", "2025-11-05"))
    client.post(new_url(child), form("pcv20:1", "2025-11-05"))
    assert len(immunizations(child)) == 2


def test_the_other_guardian_may_record_a_dose_too(father: Any, child: Any) -> None:
    client = client_for(father)
    assert client.get(new_url(child)).status_code == 200
    assert client.post(new_url(child), form("bcg:1", "2026-03-02")).status_code == 302
    [row] = immunizations(child)
    assert row.provenance.agent_user_id == father.pk


@pytest.mark.parametrize(
    ("day", "message"),
    [
        ("2026-11-27", "The date 2026-11-27 is in the future."),
        ("2025-08-31", "The date 2025-08-31 is before the child's birth (2025-09-01)."),
        ("2026/13/01", "Enter a valid date."),
    ],
)
def test_it_refuses_impossible_dates_and_writes_nothing(
    mother: Any, child: Any, day: str, message: str
) -> None:
    response = client_for(mother).post(new_url(child), form("mr:1", day), HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 400
    assert message in text_of(response).replace("&#x27;", "'")
    assert immunizations(child) == []


def test_it_refuses_a_dose_the_vaccine_does_not_have_and_a_malformed_lot(
    mother: Any, child: Any
) -> None:
    client = client_for(mother)
    response = client.post(new_url(child), form("mr:3", "2026-09-05"), HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 400
    assert "Select a valid choice" in text_of(response)
    response = client.post(
        new_url(child), form("mr:1", "2026-09-05", lot_number="AB 12"), HTTP_ACCEPT_LANGUAGE="en"
    )
    assert response.status_code == 400
    assert "A lot number is letters and digits" in text_of(response)
    assert immunizations(child) == []


def test_a_day_outside_the_routine_ages_is_asked_to_be_confirmed(mother: Any, child: Any) -> None:
    # MR 第1期: 生後12月～24月に至るまで (the engine's rule; CSV 麻しん風しん): for a
    # child born 2025-09-01, from 2026-08-31 to 2027-08-31. A dose at 6
    # months is outside: the parent is told the routine ages and asked to
    # confirm (voluntary doses happen); nothing is written until she does.
    client = client_for(mother)
    first, last = months_reached_on(BIRTH, 12), months_reached_on(BIRTH, 24)
    response = client.post(new_url(child), form("mr:1", "2026-03-02"), HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 400
    page = text_of(response)
    assert (
        f"Measles-rubella (MR) phase 1 is a routine vaccination from {first.isoformat()} to "
        f"{last.isoformat()} for this child"
    ) in page
    assert "2026-03-02 is before them" in page
    assert 'name="confirm_ages"' in page
    assert immunizations(child) == []
    confirmed = form("mr:1", "2026-03-02", confirm_ages="on")
    assert client.post(new_url(child), confirmed).status_code == 302
    # The schedule counts it, noted as given before the routine ages.
    [dose] = mr_plan(mother, child).doses
    assert dose.on == date(2026, 3, 2)
    assert dose.notes == ("early",)


def test_the_rotavirus_upper_age_is_the_products_in_japanese(mother: Any, child: Any) -> None:
    # ロタ 1価 (ロタリックス): 出生6週0日後～24週0日後 (CSV ロタウイルス): the last day is
    # birth + 168 days. The warning is in Japanese by default.
    last = days_after_birth(BIRTH, weeks=24)
    response = client_for(mother).post(new_url(child), form("rv1:2", "2026-03-20"))
    assert response.status_code == 400
    page = text_of(response)
    assert (
        f"ロタウイルス 1価(ロタリックス) 2回目は、この子は{days_after_birth(BIRTH, weeks=6)}から"
        f"{last}までが定期接種です" in page
    )
    assert "この日付で記録する" in page


# --------------------------------------------------------------------------
# The schedule counts it, once
# --------------------------------------------------------------------------


def test_a_municipal_and_a_parent_report_of_one_dose_count_once_with_both_sources(
    mother: Any, child: Any, municipality: Any
) -> None:
    # The municipality's register has MR 第1期 on 2026-09-03; the parent copies
    # it from the paper handbook as 2026-09-05 (2 days apart, within the
    # engine's DEDUP_DAYS): one dose, dated by the register, both sources.
    data.write_items(
        [(data.immunization(child, date(2026, 9, 3), "mr", 1), data.store.Source("town", "mr1"))],
        origin=Provenance.Origin.MUNICIPALITY,
        organization=municipality,
    )
    client = client_for(mother)
    assert client.post(new_url(child), form("mr:1", "2026-09-05")).status_code == 302
    assert len(immunizations(child)) == 2
    plan = mr_plan(mother, child)
    [dose] = plan.doses
    assert dose.on == date(2026, 9, 3)
    assert sorted(r.origin for r in dose.reports) == ["municipality", "self"]
    # The next dose is 第2期, not a second 第1期.
    assert plan.next_dose is not None
    assert plan.next_dose.number == 2
    # The handbook's table lists the dose once, with both sources.
    response = client.get(reverse("handbook:book", args=[child.pk]))
    html = response.content.decode()
    row = re.search(r'<tr class="hb-series" data-series="mr".*?</tr>', html, re.S)
    assert row is not None
    assert row.group(0).count('<li class="hb-dose">') == 1
    assert "badge-municipality" in row.group(0)
    assert "badge-self" in row.group(0)
    assert "保護者が入力" in row.group(0)


def test_a_parent_reported_dose_moves_the_next_dose(mother: Any, child: Any) -> None:
    # 水痘: 2 doses, the 2nd 3月以上 after the 1st (CSV 水痘). Without a dose
    # the next is dose 1; after the parent reports it, dose 2 from 3 months on.
    before = schedules.child_schedule(user=mother, patient=child, today=TODAY)
    varicella = next(p for p in before.vaccines if p.series == "varicella")
    assert varicella.next_dose is not None
    assert varicella.next_dose.number == 1
    client_for(mother).post(new_url(child), form("varicella:1", "2026-09-10"))
    after = schedules.child_schedule(user=mother, patient=child, today=TODAY)
    varicella = next(p for p in after.vaccines if p.series == "varicella")
    assert varicella.next_dose is not None
    assert varicella.next_dose.number == 2
    assert varicella.next_dose.earliest == after_interval_months(date(2026, 9, 10), 3)
    assert "vaccine:varicella:1" not in {i.key for i in after.due_items()}


# --------------------------------------------------------------------------
# Deleting what one entered
# --------------------------------------------------------------------------


def test_the_author_deletes_her_report_and_the_schedule_forgets_it(mother: Any, child: Any) -> None:
    client = client_for(mother)
    client.post(new_url(child), form("varicella:1", "2026-09-10"))
    [row] = immunizations(child)
    page = text_of(client.get(reverse("handbook:book", args=[child.pk])))
    assert delete_url(child, row.id) in page
    assert client.get(delete_url(child, row.id)).status_code == 405
    response = client.post(delete_url(child, row.id))
    assert response.status_code == 302
    stored = Resource.objects.get(id=row.id)
    assert stored.deleted  # a tombstone, history kept
    assert stored.version == 2
    plan = schedules.child_schedule(user=mother, patient=child, today=TODAY)
    assert next(p for p in plan.vaccines if p.series == "varicella").doses == ()
    assert AuditEvent.objects.filter(action="handbook.vaccination_delete").exists()
    # Entering it again brings the same record back.
    client.post(new_url(child), form("varicella:1", "2026-09-10"))
    assert [r.id for r in immunizations(child)] == [row.id]


def test_only_the_author_may_delete_and_never_a_municipal_record(
    mother: Any, father: Any, child: Any, municipality: Any, stranger: Any,
    consented_clinician: Any,
) -> None:  # fmt: skip
    client_for(mother).post(new_url(child), form("bcg:1", "2026-03-02"))
    [own] = immunizations(child)
    data.write_items(
        [(data.immunization(child, date(2026, 9, 3), "mr", 1), data.store.Source("town", "mr1"))],
        origin=Provenance.Origin.MUNICIPALITY,
        organization=municipality,
    )
    town = Resource.objects.get(resource_type="Immunization", provenance__origin="municipality")
    # The other guardian sees the report but may not delete it.
    page = text_of(client_for(father).get(reverse("handbook:book", args=[child.pk])))
    assert "保護者が入力" in page
    assert delete_url(child, own.id) not in page
    for user in (father, stranger, consented_clinician):
        assert client_for(user).post(delete_url(child, own.id)).status_code == 404
    # The municipality's record stays with the municipality.
    assert client_for(mother).post(delete_url(child, town.id)).status_code == 404
    assert not Resource.objects.get(id=own.id).deleted
    assert not Resource.objects.get(id=town.id).deleted
    # Anonymous: the login page.
    response = Client().post(delete_url(child, own.id))
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


# --------------------------------------------------------------------------
# Who may open the form
# --------------------------------------------------------------------------


def test_only_the_childs_guardians_open_the_form(
    mother: Any, father: Any, child: Any, mother_patient: Any, stranger: Any,
    consented_clinician: Any, municipal_officer: Any,
) -> None:  # fmt: skip
    assert client_for(mother).get(new_url(child)).status_code == 200
    assert client_for(father).get(new_url(child)).status_code == 200
    for user in (stranger, consented_clinician, municipal_officer):
        assert client_for(user).get(new_url(child)).status_code == 404
        assert client_for(user).post(new_url(child), form("bcg:1", "2026-03-02")).status_code == 404
    # An adult's handbook has no vaccination form (a child's only).
    assert client_for(mother).get(new_url(mother_patient)).status_code == 404
    response = Client().get(new_url(child))
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]
    assert immunizations(child) == []
    # The refusal is audited.
    assert AuditEvent.objects.filter(
        action="handbook.vaccination", patient_id=child.pk, outcome="denied"
    ).exists()


def test_the_family_write_rule_now_covers_vaccinations(
    mother: Any, child: Any, stranger: Any, consented_clinician: Any
) -> None:
    personal = Purpose.PERSONAL
    assert may_write(mother, child, category="vaccinations", purpose=personal).rule == "guardian"
    assert not may_write(stranger, child, category="vaccinations", purpose=personal)
    # A clinic's consent lets it write as a clinic, not as the family.
    assert not may_write(consented_clinician, child, category="vaccinations", purpose=personal)


def test_the_handbook_offers_the_form_to_guardians_not_in_print(mother: Any, child: Any) -> None:
    client = client_for(mother)
    assert new_url(child) in text_of(client.get(reverse("handbook:book", args=[child.pk])))
    assert new_url(child) not in text_of(client.get(reverse("handbook:print", args=[child.pk])))


def test_the_form_lists_every_routine_vaccine_with_its_doses_as_the_schedule_names_them(
    mother: Any, child: Any
) -> None:
    page = text_of(client_for(mother).get(new_url(child)))
    for code, v in vaccination_format.VACCINES.items():
        assert f'<optgroup label="{v.name}">' in page
        for n in range(1, v.doses + 1):
            assert f'value="{code}:{n}"' in page
    assert ">第1期初回 2回目<" in page
    assert ">第2期<" in page
    assert (
        handbook_services.vaccination_key(
            handbook_services.ReportedDose("pcv13", 1, date(2025, 11, 5))
        )
        == "pcv#1"
    )


def test_a_vaccine_not_routine_for_the_childs_birth_year_is_asked_to_be_confirmed(
    mother: Any,
) -> None:
    # B型肝炎 is routine only for children born from 2016-04-01
    # (vaccination_schedule.BORN_FROM): a dose reported for an older child is
    # possible (voluntary), so it is asked to be confirmed, not refused.
    from phr.models import Guardianship
    from phr.services import guardianship_add
    from tests import factories as f

    older = f.make_patient(given="たろう", birth_date=date(2015, 6, 1))
    guardianship_add(guardian=mother, child=older, relationship=Guardianship.Relationship.MOTHER)
    client = client_for(mother)
    response = client.post(new_url(older), form("hepb:1", "2015-08-01"), HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 400
    assert "only for children born on or after 2016-04-01" in text_of(response)
    assert immunizations(older) == []
    confirmed = form("hepb:1", "2015-08-01", confirm_ages="on")
    assert client.post(new_url(older), confirmed).status_code == 302
    assert len(immunizations(older)) == 1
