"""Prenatal checkups, deliveries and registration by a clinic (issue:
clinics, parts 2–4): the FHIR mapping is valid (also for random valid
visits and births), impossible values are refused and unusual ones warned
about, a clinic writes only for patients who share with it (or whom it
registered and who have no account yet), a resubmitted visit or delivery
updates instead of duplicating, HIV and syphilis stay away from the
municipality, a birth gives the baby a record (or reuses the municipal
one), and an invited patient links her account."""

from __future__ import annotations

import csv
import uuid
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core import mail
from django.core.cache import cache
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import Client
from django.utils import timezone, translation
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from clinics import prenatal, services
from clinics.forms import DeliveryForm, VisitForm, baby_formset_class
from clinics.models import ClinicInvitation
from municipal_data.models import MotherChild
from phr import fhir, selectors, store, terminology
from phr.identity import PREGNANCY_CHILD_EXTENSION
from phr.models import AuditEvent, Guardianship, Patient, Provenance, Resource
from phr.terminology import LOINC, UCUM, Category
from sharing.access import forget_grants, may_write, visible_records
from sharing.models import ConsentPurpose, DvBlock
from sharing.services import consent_grant, consent_revoke
from tests import factories as f

pytestmark = pytest.mark.django_db

CLINIC = prenatal.ClinicRef(code="1010123450", name="テストクリニック")
MOTHER_ID = uuid.UUID("11111111-1111-4111-8111-111111111111")
CHILD_ID = uuid.UUID("22222222-2222-4222-8222-222222222222")
EPISODE_ID = uuid.UUID("33333333-3333-4333-8333-333333333333")
JST = timezone.get_fixed_timezone(9 * 60)


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    cache.clear()  # allauth's rate limits live in the cache
    yield
    cache.clear()


def today() -> date:
    return timezone.localdate()


def full_visit(**changes: Any) -> prenatal.Visit:
    values: dict[str, Any] = {
        "visit_date": date(2026, 3, 2),
        "due_date": date(2026, 6, 12),
        "systolic": 118,
        "diastolic": 72,
        "weight": Decimal("58.4"),
        "urine_protein": "negative",
        "urine_glucose": "trace",
        "fundal_height": Decimal("24.5"),
        "abdominal_circumference": Decimal("88.0"),
        "edema": "1+",
        "fetal_heartbeat": "present",
        "fetal_heart_rate": 145,
        "estimated_fetal_weight": 820,
        "pre_pregnancy_weight": Decimal("52.0"),
        "height": Decimal("158.0"),
        "notes": "経過良好",
        "labs": {
            "blood_type_abo": "A",
            "blood_type_rh": "positive",
            "irregular_antibodies": "negative",
            "hemoglobin": Decimal("11.8"),
            "hematocrit": Decimal("35.2"),
            "platelets": Decimal("24.1"),
            "blood_glucose": Decimal("88"),
            "hbs_antigen": "negative",
            "hcv_antibody": "negative",
            "hiv_antibody": "negative",
            "syphilis_serology": "negative",
            "rubella_hi": "<8",
            "htlv1_antibody": "negative",
            "gbs": "negative",
            "cervical_cytology": "NILM",
        },
    }
    values.update(changes)
    return prenatal.Visit(**values)


def codings(resource: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["system"], c["code"]) for c in resource["code"]["coding"]]


def by_item(items: list[prenatal.Item]) -> dict[str, dict[str, Any]]:
    """The visit's resources by dictionary key (Encounter under "")."""
    found: dict[str, dict[str, Any]] = {}
    for resource, _source in items:
        if resource["resourceType"] != "Observation":
            found[resource["resourceType"]] = resource
            continue
        coding = resource["code"]["coding"][0]
        item = terminology.item_for_coding(coding["system"], coding["code"])
        assert item is not None, coding
        found[item.key] = resource
    return found


# --------------------------------------------------------------------------
# The mapping (pure functions)
# --------------------------------------------------------------------------


def test_it_maps_a_full_visit_to_valid_fhir_with_dictionary_codes_and_ucum() -> None:
    items = prenatal.visit_resources(
        visit=full_visit(), patient_id=MOTHER_ID, clinic=CLINIC, episode_id=EPISODE_ID
    )
    for resource, _source in items:
        fhir.validate_resource(resource)
    found = by_item(items)
    encounter = found["Encounter"]
    # The visit as phr/demo.py writes one: typed 妊婦健康診査, in the episode.
    assert encounter["type"] == [{"text": "妊婦健康診査"}]
    assert encounter["episodeOfCare"] == [{"reference": f"EpisodeOfCare/{EPISODE_ID}"}]
    assert encounter["meta"]["tag"][0]["code"] == Category.PRENATAL_CHECKUPS
    # Every item of the visit, the fifteen tests included.
    assert set(found) == {"Encounter", *prenatal.VISIT_ITEMS}
    # LOINC where the reference lists it, JP Core's code beside it.
    assert (LOINC, "29463-7") in codings(found["body_weight"])
    assert (prenatal.common.JP_BODY_MEASUREMENT, "31000296") in codings(found["body_weight"])
    assert (prenatal.common.JP_BODY_MEASUREMENT, "31000301") in codings(
        found["abdominal_circumference"]
    )
    assert codings(found["fundal_height"])[0] == (LOINC, "11881-0")
    # The blood pressure panel with its two components in mm[Hg].
    bp = found["bp_panel"]
    assert codings(bp)[0] == (LOINC, "85354-9")
    assert [c["code"]["coding"][0]["code"] for c in bp["component"]] == ["8480-6", "8462-4"]
    assert {c["valueQuantity"]["code"] for c in bp["component"]} == {"mm[Hg]"}
    # Blood type: our local code, and the LOINC the emergency summary reads.
    assert codings(found["blood_type_abo"]) == [
        (terminology.LOCAL, "blood-type-abo"),
        (LOINC, "883-9"),
    ]
    assert found["blood_type_abo"]["valueCodeableConcept"]["text"] == "A型"
    # Gestational age 2026-03-02 for a due date of 2026-06-12: 25w3d.
    age = found["gestational_age"]
    assert age["valueQuantity"]["value"] == 25
    assert age["component"][0]["valueQuantity"] == {
        "value": 3,
        "unit": "d",
        "system": UCUM,
        "code": "d",
    }
    assert age["note"] == [{"text": "25週3日"}]
    # Quantities are UCUM.
    for resource in found.values():
        quantity = resource.get("valueQuantity")
        if quantity:
            assert quantity["system"] == UCUM
    assert found["rubella_hi"]["valueQuantity"]["comparator"] == "<"
    assert found["platelets"]["valueQuantity"]["code"] == "10*4/uL"


def test_a_visit_writes_only_what_was_measured() -> None:
    visit = prenatal.Visit(visit_date=date(2026, 3, 2), systolic=120, diastolic=70)
    items = prenatal.visit_resources(
        visit=visit, patient_id=MOTHER_ID, clinic=CLINIC, episode_id=None
    )
    assert set(by_item(items)) == {"Encounter", "bp_panel"}
    assert "episodeOfCare" not in items[0][0]


def test_ids_come_from_the_clinic_the_patient_and_the_day() -> None:
    # Sending the same visit again lands on the same records.
    first = prenatal.visit_resources(
        visit=full_visit(), patient_id=MOTHER_ID, clinic=CLINIC, episode_id=None
    )
    again = prenatal.visit_resources(
        visit=full_visit(weight=Decimal("59.0")),
        patient_id=MOTHER_ID,
        clinic=CLINIC,
        episode_id=None,
    )
    assert [s for _r, s in first] == [s for _r, s in again]
    assert first[0][1] == store.Source(
        "urn:hagukumi:clinic:1010123450:prenatal-checkup", f"{MOTHER_ID}|2026-03-02"
    )
    ids = prenatal.visit_item_ids(
        clinic_code=CLINIC.code, patient_id=MOTHER_ID, visit_date=date(2026, 3, 2)
    )
    assert store.source_resource_id("Observation", first[1][1]) in ids.values()


def test_the_gestational_age_is_counted_from_the_due_date() -> None:
    assert prenatal.gestational_age(date(2026, 6, 12), date(2026, 6, 12)).days == 280
    age = prenatal.gestational_age(date(2026, 6, 12), date(2026, 3, 2))
    assert (age.weeks, age.extra_days, age.ja) == (25, 3, "25週3日")
    with translation.override("ja"):
        assert str(age) == "25週3日"
    with translation.override("en"):
        assert str(age) == "25 weeks 3 days"


def test_the_lab_windows_are_those_of_the_standard_schedule() -> None:
    """Each test's weeks are a row of prenatal_schedule_jp.csv (the copy in
    phr/reference_data/ of ../shared/reference/data/)."""
    path = Path(settings.BASE_DIR) / "phr" / "reference_data" / "prenatal_schedule_jp.csv"
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    windows = {
        (
            int(r["window_start_week"] or 0),
            int(r["window_end_week"]) if r["window_end_week"] else None,
        )
        for r in rows
        if r["row_type"] == "test"
    }
    for test in prenatal.LAB_TESTS:
        for window in test.windows:
            assert window in windows, (test.key, window)
    assert {t.key for t in prenatal.tests_due(30)} == {
        "hemoglobin",
        "hematocrit",
        "platelets",
        "blood_glucose",
        "htlv1_antibody",
        "gbs",
    }
    assert {t.key for t in prenatal.tests_due(8)} >= {"blood_type_abo", "hiv_antibody"}
    assert {t.key for t in prenatal.tests_due(37)} == {"hemoglobin", "hematocrit", "platelets"}
    # HIV and syphilis are clinic-only in the dictionary (docs/dataset.md).
    assert {t.key for t in prenatal.LAB_TESTS if t.clinic_only} == {
        "hiv_antibody",
        "syphilis_serology",
    }


def test_it_maps_a_delivery_and_the_babies_to_valid_fhir() -> None:
    delivery = prenatal.Delivery(
        born_at=datetime(2026, 6, 10, 4, 32, tzinfo=JST),
        gestation_days=39 * 7 + 5,
        mode="spontaneous",
        labor_minutes=8 * 60 + 15,
        blood_loss_ml=320,
        transfusion=False,
        babies=(
            prenatal.Baby(
                sex="female",
                weight_g=3050,
                length_cm=Decimal("49.0"),
                head_cm=Decimal("33.0"),
                chest_cm=Decimal("32.0"),
                apgar_1=8,
                apgar_5=9,
            ),
        ),
    )
    mother_items = prenatal.delivery_resources(
        delivery=delivery, mother_id=MOTHER_ID, clinic=CLINIC, episode_id=EPISODE_ID
    )
    baby_items = prenatal.birth_resources(
        delivery=delivery,
        baby=delivery.babies[0],
        index=0,
        child_id=CHILD_ID,
        mother_id=MOTHER_ID,
        clinic=CLINIC,
    )
    for resource, _source in mother_items + baby_items:
        fhir.validate_resource(resource)
    mother = by_item(mother_items)
    assert set(mother) == {
        "Encounter",
        "gestational_age",
        "delivery_mode",
        "labor_duration",
        "delivery_blood_loss",
        "delivery_transfusion",
        "birth_count",
    }
    assert mother["Encounter"]["period"]["start"] == "2026-06-10T04:32:00+09:00"
    assert all(r["meta"]["tag"][0]["code"] == Category.PREGNANCY for r in mother.values())
    assert mother["delivery_transfusion"]["valueBoolean"] is False
    baby = by_item(baby_items)
    # As phr/demo.py child_birth_items(): tagged infant_checkups, on the birthday.
    assert codings(baby["birth_weight"]) == [
        (LOINC, "8339-4"),
        (prenatal.common.JP_BODY_MEASUREMENT, "31002900"),
    ]
    assert baby["birth_weight"]["valueQuantity"]["code"] == "g"
    assert baby["apgar_5min"]["valueInteger"] == 9
    assert all(r["subject"]["reference"] == f"Patient/{CHILD_ID}" for r in baby.values())
    assert all(r["effectiveDateTime"] == "2026-06-10" for r in baby.values())
    assert baby["gestational_age"]["note"] == [{"text": "39週5日"}]
    episode = prenatal.finished_episode(
        prenatal.pregnancy_episode(patient_id=MOTHER_ID, due_date=date(2026, 6, 12), clinic=CLINIC),
        birth_date=delivery.birth_date,
    )
    fhir.validate_resource(episode)
    assert episode["status"] == "finished"
    assert episode["period"] == {"start": "2025-09-05", "end": "2026-06-10"}


def _in_bounds(key: str, places: int = 0, newborn: bool = False) -> st.SearchStrategy[Any]:
    low, high = prenatal.bounds(key, newborn=newborn)
    assert low is not None
    assert high is not None
    if places == 0:
        return st.integers(int(low), int(high))
    return st.decimals(low, high, places=places, allow_nan=False, allow_infinity=False)


def _optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


def _code(table: prenatal.Choices) -> st.SearchStrategy[str]:
    return st.sampled_from(["", *table])


@st.composite
def visits(draw: Any) -> prenatal.Visit:
    day = draw(st.dates(date(2020, 1, 1), date(2030, 12, 31)))
    due = draw(_optional(st.integers(-14, 280).map(lambda n: day + timedelta(days=n))))
    pressure = draw(_optional(st.tuples(_in_bounds("bp_systolic"), _in_bounds("bp_diastolic"))))
    if pressure is not None and pressure[0] <= pressure[1]:
        pressure = None
    labs: dict[str, Any] = {}
    for test in prenatal.LAB_TESTS:
        if not draw(st.booleans()):
            continue
        if test.kind == "code":
            labs[test.key] = draw(st.sampled_from(list(test.answers)))
        elif test.kind == "titre":
            labs[test.key] = draw(st.sampled_from(list(prenatal.RUBELLA_TITRES)))
        else:
            labs[test.key] = draw(_in_bounds(test.key, test.places))
    return prenatal.Visit(
        visit_date=day,
        due_date=due,
        systolic=pressure[0] if pressure else None,
        diastolic=pressure[1] if pressure else None,
        weight=draw(_optional(_in_bounds("body_weight", 1))),
        urine_protein=draw(_code(prenatal.DIPSTICK)),
        urine_glucose=draw(_code(prenatal.DIPSTICK)),
        fundal_height=draw(_optional(_in_bounds("fundal_height", 1))),
        abdominal_circumference=draw(_optional(_in_bounds("abdominal_circumference", 1))),
        edema=draw(_code(prenatal.DIPSTICK)),
        fetal_heartbeat=draw(_code(prenatal.FETAL_HEARTBEAT)),
        fetal_heart_rate=draw(_optional(_in_bounds("fetal_heart_rate"))),
        estimated_fetal_weight=draw(_optional(_in_bounds("estimated_fetal_weight"))),
        pre_pregnancy_weight=draw(_optional(_in_bounds("pre_pregnancy_weight", 1))),
        height=draw(_optional(_in_bounds("body_height", 1))),
        notes=draw(st.text(max_size=40).filter(lambda s: "\x00" not in s)),
        labs=labs,
    )


@given(visit=visits())
@hypothesis_settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_any_valid_visit_maps_to_valid_fhir(visit: prenatal.Visit) -> None:
    if prenatal.visit_refusals(visit):
        return  # the form refuses it: never mapped
    items = prenatal.visit_resources(
        visit=visit, patient_id=MOTHER_ID, clinic=CLINIC, episode_id=EPISODE_ID
    )
    sources = set()
    for resource, source in items:
        fhir.validate_resource(resource)
        sources.add(source)
        if resource["resourceType"] == "Observation":
            coding = resource["code"]["coding"][0]
            assert terminology.item_for_coding(coding["system"], coding["code"]) is not None
    assert len(sources) == len(items)  # one record per item


@st.composite
def deliveries(draw: Any) -> prenatal.Delivery:
    count = draw(st.integers(1, 3))
    babies = tuple(
        prenatal.Baby(
            sex=draw(st.sampled_from(list(prenatal.SEXES))),
            weight_g=draw(_in_bounds("birth_weight")),
            length_cm=draw(_optional(_in_bounds("body_length", 1, newborn=True))),
            head_cm=draw(_optional(_in_bounds("head_circumference", 1, newborn=True))),
            chest_cm=draw(_optional(_in_bounds("chest_circumference", 1, newborn=True))),
            apgar_1=draw(_optional(_in_bounds("apgar_1min"))),
            apgar_5=draw(_optional(_in_bounds("apgar_5min"))),
            given_name=draw(st.sampled_from(["", "陽葵"])),
        )
        for _ in range(count)
    )
    born = datetime.combine(
        draw(st.dates(date(2020, 1, 1), date(2030, 12, 31))),
        draw(st.times()),
        tzinfo=JST,
    )
    return prenatal.Delivery(
        born_at=born,
        gestation_days=draw(st.integers(prenatal.MIN_BIRTH_GESTATION_DAYS, 45 * 7)),
        mode=draw(st.sampled_from(list(prenatal.DELIVERY_MODE))),
        labor_minutes=draw(_optional(_in_bounds("labor_duration"))),
        blood_loss_ml=draw(_optional(_in_bounds("delivery_blood_loss"))),
        transfusion=draw(st.sampled_from([None, True, False])),
        babies=babies,
    )


@given(delivery=deliveries())
@hypothesis_settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_any_valid_delivery_maps_to_valid_fhir(delivery: prenatal.Delivery) -> None:
    assert prenatal.delivery_refusals(delivery) == {}
    items = prenatal.delivery_resources(
        delivery=delivery, mother_id=MOTHER_ID, clinic=CLINIC, episode_id=None
    )
    for index, baby in enumerate(delivery.babies):
        items += prenatal.birth_resources(
            delivery=delivery,
            baby=baby,
            index=index,
            child_id=uuid.uuid4(),
            mother_id=MOTHER_ID,
            clinic=CLINIC,
        )
        patient = prenatal.child_patient_resource(
            family="前橋", baby=baby, birth_date=delivery.birth_date, index=index, of=3
        )
        fhir.validate_resource(patient)
    for resource, _source in items:
        fhir.validate_resource(resource)
    assert len({s for _r, s in items}) == len(items)


# --------------------------------------------------------------------------
# Impossible values are refused, unusual ones warned about
# --------------------------------------------------------------------------


def visit_form(**values: Any) -> VisitForm:
    data = {"visit_date": "2026-03-02", "due_date": "2026-06-12", **values}
    return VisitForm(data={k: str(v) for k, v in data.items()})


def test_it_refuses_an_impossible_blood_pressure_with_a_clear_message() -> None:
    with translation.override("en"):
        form = visit_form(systolic=400, diastolic=10)
        assert not form.is_valid()
    assert form.errors["systolic"] == [
        "400 mmHg is not possible for Systolic blood pressure (possible: 50–300 mmHg)."
    ]
    assert "10 mmHg is not possible for Diastolic blood pressure" in form.errors["diastolic"][0]


def test_it_refuses_a_weight_of_5_kg_for_a_pregnant_woman() -> None:
    with translation.override("ja"):
        form = visit_form(weight="5")
        assert not form.is_valid()
        assert form.errors["weight"] == ["体重として 5 kg はありえない値です（25〜250 kg）。"]


def test_it_refuses_a_diastolic_at_or_above_the_systolic_and_a_half_pressure() -> None:
    form = visit_form(systolic=90, diastolic=95)
    assert not form.is_valid()
    assert "diastolic" in form.errors
    form = visit_form(systolic=120)
    assert not form.is_valid()
    assert "diastolic" in form.errors


def test_it_refuses_a_due_date_that_makes_no_pregnancy_of_the_visit() -> None:
    form = visit_form(due_date="2027-06-12")  # the visit would be 15 months early
    assert not form.is_valid()
    assert "due_date" in form.errors


def test_it_refuses_a_visit_in_the_future() -> None:
    form = visit_form(visit_date=(today() + timedelta(days=1)).isoformat(), due_date="")
    assert not form.is_valid()
    assert "visit_date" in form.errors


def test_it_accepts_unusual_values_and_warns_about_them() -> None:
    # 165/112 is possible: accepted, flagged as severe; so is a 3.5 kg
    # gain in a week and a fetal heart rate of 100/min.
    form = visit_form(systolic=165, diastolic=112, weight="62.5", fetal_heart_rate=100)
    assert form.is_valid(), form.errors
    with translation.override("en"):
        found = prenatal.visit_warnings(
            form.visit, previous_weight=(date(2026, 2, 23), Decimal("59.0"))
        )
    fields = [w.field for w in found]
    assert fields == ["systolic", "weight", "fetal_heart_rate"]
    assert "severe range" in found[0].message
    assert "+3.5 kg" in found[1].message
    normal = prenatal.visit_warnings(
        full_visit(), previous_weight=(date(2026, 2, 2), Decimal("57.0"))
    )
    assert normal == []


def test_a_hypertensive_pressure_is_a_warning_not_a_refusal() -> None:
    found = prenatal.visit_warnings(full_visit(systolic=142, diastolic=88))
    assert [w.field for w in found] == ["systolic"]


def delivery_forms(babies: int = 1, **values: Any) -> tuple[DeliveryForm, Any]:
    data: dict[str, Any] = {
        "born_at": "2026-01-10T04:32",
        "gestation_weeks": "39",
        "gestation_days": "2",
        "mode": "spontaneous",
        "babies": str(babies),
        "baby-TOTAL_FORMS": str(babies),
        "baby-INITIAL_FORMS": "0",
        "baby-MIN_NUM_FORMS": str(babies),
        "baby-MAX_NUM_FORMS": str(babies),
    }
    for index in range(babies):
        data[f"baby-{index}-sex"] = "female"
        data[f"baby-{index}-weight_g"] = "3050"
    data.update({k: str(v) for k, v in values.items()})
    return DeliveryForm(data), baby_formset_class(babies)(data, prefix="baby")


def test_a_delivery_form_refuses_impossible_values() -> None:
    form, babies = delivery_forms(**{"baby-0-weight_g": "50", "blood_loss_ml": "99999"})
    assert form.is_valid() is False
    assert "blood_loss_ml" in form.errors
    assert babies.is_valid() is False
    assert "weight_g" in babies.forms[0].errors
    form, babies = delivery_forms(gestation_weeks="8")
    assert form.is_valid()
    assert babies.is_valid()
    from clinics.forms import delivery_from

    assert "gestation_weeks" in prenatal.delivery_refusals(delivery_from(form, babies))


def test_a_delivery_warns_about_preterm_low_weight_and_bleeding() -> None:
    form, babies = delivery_forms(
        gestation_weeks="35",
        blood_loss_ml="800",
        **{"baby-0-weight_g": "2100", "baby-0-apgar_5": "5"},
    )
    assert form.is_valid(), form.errors
    assert babies.is_valid(), babies.errors
    from clinics.forms import delivery_from

    found = prenatal.delivery_warnings(delivery_from(form, babies))
    assert [w.field for w in found] == [
        "gestation_weeks",
        "blood_loss_ml",
        "baby-0-weight_g",
        "baby-0-apgar_5",
    ]


# --------------------------------------------------------------------------
# Who may write
# --------------------------------------------------------------------------


@pytest.fixture
def due() -> date:
    return today() + timedelta(weeks=14)


def share(mother: Any, patient: Any, clinic: Any, *categories: str, **extra: Any) -> Any:
    consent = consent_grant(
        patient=patient,
        by=mother,
        purpose=ConsentPurpose.CARE,
        categories=list(categories) or [Category.PREGNANCY, Category.PRENATAL_CHECKUPS],
        grantee_org=clinic,
        **extra,
    )
    return consent


@pytest.fixture
def shared(mother: Any, mother_patient: Any, clinic: Any) -> Any:
    return share(mother, mother_patient, clinic)


def records_of(patient: Patient) -> list[Resource]:
    return list(Resource.objects.filter(compartments__overlap=[patient.pk]).exclude(pk=patient.pk))


def visit_today(due: date, **changes: Any) -> prenatal.Visit:
    values: dict[str, Any] = {
        "visit_date": today(),
        "due_date": due,
        "systolic": 116,
        "diastolic": 70,
        "weight": Decimal("58.0"),
        "urine_protein": "negative",
    }
    return prenatal.Visit(**(values | changes))


def test_a_clinic_the_patient_shares_with_records_a_visit(
    clinician: Any, mother_patient: Any, clinic: Any, shared: Any, due: date
) -> None:
    result = services.prenatal_visit_record(
        user=clinician, patient=mother_patient, data=visit_today(due)
    )
    assert result.clinic == clinic
    encounter = Resource.objects.get(pk=result.encounter_id)
    assert encounter.category == Category.PRENATAL_CHECKUPS
    # Provenance: origin clinic, the user and the clinic.
    provenance = Provenance.objects.get(pk=encounter.provenance_id)
    assert (provenance.origin, provenance.agent_user, provenance.agent_org) == (
        Provenance.Origin.CLINIC,
        clinician,
        clinic,
    )
    # The pregnancy and its due date were created (the consent covers it).
    episode = Resource.objects.get(pk=result.episode_id)
    assert episode.resource_type == "EpisodeOfCare"
    assert episode.status == "active"
    assert encounter.content["episodeOfCare"] == [{"reference": f"EpisodeOfCare/{episode.pk}"}]
    summary = selectors.pregnancy_summary(user=clinician, patient=mother_patient)
    assert summary is not None
    assert summary.due_date == due
    # Audited: one row naming the consent.
    row = AuditEvent.objects.get(action="clinic.prenatal_visit")
    assert row.patient_id == mother_patient.pk
    assert row.organization_id == clinic.pk
    assert row.detail["rule"] == "consent"
    assert row.detail["consent"] == str(shared.pk)


def test_the_family_sees_the_visit_in_her_handbook_at_once(
    mother: Any, clinician: Any, mother_patient: Any, shared: Any, due: date
) -> None:
    services.prenatal_visit_record(user=clinician, patient=mother_patient, data=visit_today(due))
    with translation.override("ja"):
        page = selectors.timeline(user=mother, patient=mother_patient)
    entries = [e for day in page.days for e in day.entries]
    labels = {(e.resource_type, e.label, e.value) for e in entries}
    assert ("Encounter", "妊婦健康診査", "") in labels
    assert ("Observation", "血圧", "116/70 mmHg") in labels
    assert ("Observation", "尿蛋白", "−") in labels
    # The gestational age as the handbook writes it, weeks and days.
    assert ("Observation", "妊娠週数", "26週0日") in labels
    family = selectors.family(user=mother)
    assert family.pregnancy is not None
    assert family.pregnancy.due_date == due


@pytest.mark.parametrize("case", ["unconsented", "expired", "revoked", "other_clinic", "category"])
def test_nothing_is_written_without_a_consent_in_force_for_the_category(
    case: str, mother: Any, mother_patient: Any, clinic: Any, clinician: Any, due: date
) -> None:
    now = timezone.now()
    if case == "expired":
        share(
            mother,
            mother_patient,
            clinic,
            starts_at=now - timedelta(days=9),
            ends_at=now - timedelta(days=1),
        )
    elif case == "revoked":
        consent_revoke(consent=share(mother, mother_patient, clinic), by=mother)
    elif case == "other_clinic":
        share(mother, mother_patient, f.ClinicFactory())
    elif case == "category":
        share(mother, mother_patient, clinic, Category.VACCINATIONS)
    before = Resource.objects.count()
    with pytest.raises(PermissionDenied):
        services.prenatal_visit_record(
            user=clinician, patient=mother_patient, data=visit_today(due)
        )
    with pytest.raises(PermissionDenied):
        services.delivery_record(user=clinician, mother=mother_patient, data=a_delivery())
    assert Resource.objects.count() == before
    assert AuditEvent.objects.filter(action="clinic.prenatal_visit", outcome="denied").count() == 1


def test_records_the_clinic_submitted_give_no_right_to_write(
    mother_patient: Any, clinic: Any, clinician: Any, due: date
) -> None:
    # The clinic once submitted her fundal height: it may read it, not add more.
    f.write_observation(
        mother_patient, code="11881-0", value=20, unit="cm", origin="clinic", organization=clinic
    )
    assert not may_write(clinician, mother_patient, category=Category.PRENATAL_CHECKUPS)
    with pytest.raises(PermissionDenied):
        services.prenatal_visit_record(
            user=clinician, patient=mother_patient, data=visit_today(due)
        )


def test_staff_without_mfa_and_other_roles_may_not_write(
    mother: Any, mother_patient: Any, clinic: Any, shared: Any, municipal_officer: Any
) -> None:
    no_mfa = f.make_member(f.Role.CLINIC_STAFF, clinic, mfa=False)
    assert may_write(no_mfa, mother_patient, category=Category.PRENATAL_CHECKUPS).rule == (
        "staff_without_mfa"
    )
    assert not may_write(municipal_officer, mother_patient, category=Category.PRENATAL_CHECKUPS)
    assert not may_write(mother, mother_patient, category=Category.PRENATAL_CHECKUPS)


def test_a_consent_for_prenatal_checkups_alone_records_visits_but_not_the_pregnancy(
    mother: Any, mother_patient: Any, clinic: Any, clinician: Any, due: date
) -> None:
    share(mother, mother_patient, clinic, Category.PRENATAL_CHECKUPS)
    result = services.prenatal_visit_record(
        user=clinician, patient=mother_patient, data=visit_today(due)
    )
    assert result.episode_id is None
    assert not Resource.objects.filter(
        resource_type="EpisodeOfCare", compartments__overlap=[mother_patient.pk]
    ).exists()
    # The gestational age is still recorded with the visit.
    assert Resource.objects.filter(
        compartments__overlap=[mother_patient.pk], tokens__contains=[f"{LOINC}|49051-6"]
    ).exists()


# --------------------------------------------------------------------------
# Resubmission
# --------------------------------------------------------------------------


def test_a_resubmitted_visit_updates_instead_of_duplicating(
    clinician: Any, mother_patient: Any, shared: Any, due: date
) -> None:
    visit = visit_today(due, labs={"hemoglobin": Decimal("11.2")})
    services.prenatal_visit_record(user=clinician, patient=mother_patient, data=visit)
    count = len(records_of(mother_patient))
    again = services.prenatal_visit_record(user=clinician, patient=mother_patient, data=visit)
    assert again.written == 0
    assert again.removed == 0
    assert len(records_of(mother_patient)) == count
    # A corrected weight is a new version of the same record; a test no
    # longer stated is removed (a tombstone version).
    corrected = visit_today(due, weight=Decimal("58.6"))
    result = services.prenatal_visit_record(user=clinician, patient=mother_patient, data=corrected)
    assert result.written == 1
    assert result.removed == 1
    rows = records_of(mother_patient)
    assert len(rows) == count
    weight = next(r for r in rows if f"{LOINC}|29463-7" in r.tokens)
    assert weight.version == 2
    assert weight.content["valueQuantity"]["value"] == 58.6
    assert sum(r.deleted for r in rows) == 1


def test_a_corrected_due_date_updates_the_one_due_date(
    clinician: Any, mother_patient: Any, shared: Any, due: date
) -> None:
    services.prenatal_visit_record(user=clinician, patient=mother_patient, data=visit_today(due))
    later = due + timedelta(days=5)
    services.prenatal_visit_record(user=clinician, patient=mother_patient, data=visit_today(later))
    edds = Resource.objects.filter(
        compartments__overlap=[mother_patient.pk], tokens__contains=[f"{LOINC}|11778-8"]
    )
    assert edds.count() == 1
    assert edds.get().content["valueDateTime"] == later.isoformat()
    assert (
        Resource.objects.filter(
            resource_type="EpisodeOfCare", compartments__overlap=[mother_patient.pk]
        ).count()
        == 1
    )


# --------------------------------------------------------------------------
# HIV and syphilis: clinic only
# --------------------------------------------------------------------------


def test_hiv_and_syphilis_results_never_reach_the_municipality(
    clinician: Any, mother_patient: Any, shared: Any, municipal_officer: Any, mother: Any, due: date
) -> None:
    visit = visit_today(
        due,
        labs={
            "hiv_antibody": "negative",
            "syphilis_serology": "negative",
            "hbs_antigen": "negative",
        },
    )
    services.prenatal_visit_record(user=clinician, patient=mother_patient, data=visit)
    hiv = f"{terminology.LOCAL}|hiv-antibody"
    syphilis = f"{terminology.LOCAL}|syphilis-serology"
    hbs = f"{terminology.LOCAL}|hbs-antigen"

    def seen(user: Any) -> set[str]:
        forget_grants(user)
        rows = Resource.objects.filter(
            visible_records(user), compartments__overlap=[mother_patient.pk]
        )
        return {t for r in rows for t in r.tokens}

    stored = Resource.objects.filter(tokens__overlap=[hiv, syphilis])
    assert {r.sensitivity for r in stored} == {"clinic_only"}
    # The municipality (she is a resident) sees the visit, not these two.
    officer = seen(municipal_officer)
    assert hbs in officer
    assert f"{LOINC}|85354-9" in officer
    assert hiv not in officer
    assert syphilis not in officer
    # The clinic and the woman herself see them.
    assert {hiv, syphilis} <= seen(clinician)
    assert {hiv, syphilis} <= seen(mother)


# --------------------------------------------------------------------------
# Delivery
# --------------------------------------------------------------------------


def a_delivery(
    born: date | None = None, *babies: prenatal.Baby, days: int = 39 * 7 + 2
) -> prenatal.Delivery:
    day = born or today() - timedelta(days=1)
    return prenatal.Delivery(
        born_at=datetime.combine(day, time(4, 32), tzinfo=JST),
        gestation_days=days,
        mode="spontaneous",
        labor_minutes=495,
        blood_loss_ml=320,
        transfusion=False,
        babies=babies
        or (
            prenatal.Baby(
                sex="female",
                weight_g=3050,
                length_cm=Decimal("49.0"),
                head_cm=Decimal("33.0"),
                chest_cm=Decimal("32.0"),
                apgar_1=8,
                apgar_5=9,
            ),
        ),
    )


def birth_records(child: Patient) -> dict[str, Resource]:
    found = {}
    for row in Resource.objects.filter(
        compartments__overlap=[child.pk], resource_type="Observation", deleted=False
    ):
        coding = row.content["code"]["coding"][0]
        item = terminology.item_for_coding(coding["system"], coding["code"])
        assert item is not None
        found[item.key] = row
    return found


def test_a_delivery_creates_the_child_makes_the_mother_guardian_and_closes_the_pregnancy(
    mother: Any, clinician: Any, mother_patient: Any, shared: Any, due: date, clinic: Any
) -> None:
    visit = services.prenatal_visit_record(
        user=clinician, patient=mother_patient, data=visit_today(due)
    )
    result = services.delivery_record(user=clinician, mother=mother_patient, data=a_delivery())
    assert result.episode_id == visit.episode_id
    [outcome] = result.babies
    assert outcome.created
    assert outcome.guardian_added
    child = outcome.child
    assert child.kind == Patient.Kind.CHILD
    assert child.account is None
    content = Resource.objects.get(pk=child.pk).content
    assert content["birthDate"] == a_delivery().birth_date.isoformat()
    assert content["gender"] == "female"
    assert content["name"][0] == {"use": "official", "family": "前橋", "given": ["（未定）"]}
    # The mother's account is the child's guardian: the child is in her family.
    assert (
        Guardianship.objects.active()
        .filter(guardian=mother, child=child, relationship=Guardianship.Relationship.MOTHER)
        .exists()
    )
    forget_grants(mother)
    family = selectors.family(user=mother)
    assert [c.patient_id for c in family.children] == [child.pk]
    assert family.pregnancy is None  # the pregnancy is over
    # The pregnancy is finished on the birthday and names the child.
    episode = Resource.objects.get(pk=result.episode_id)
    assert episode.status == "finished"
    assert episode.content["period"]["end"] == a_delivery().birth_date.isoformat()
    assert episode.content["extension"] == [
        {"url": PREGNANCY_CHILD_EXTENSION, "valueReference": {"reference": f"Patient/{child.pk}"}}
    ]
    # Birth data in the child's record, and 出産の状態 in the mother's.
    found = birth_records(child)
    assert set(found) == {
        "birth_weight",
        "body_length",
        "head_circumference",
        "chest_circumference",
        "apgar_1min",
        "apgar_5min",
        "gestational_age",
    }
    assert found["birth_weight"].category == Category.INFANT_CHECKUPS
    assert found["birth_weight"].content["valueQuantity"]["value"] == 3050
    encounter = Resource.objects.get(pk=result.encounter_id)
    assert encounter.category == Category.PREGNANCY
    assert AuditEvent.objects.filter(
        action="clinic.delivery", patient_id=mother_patient.pk
    ).exists()
    assert AuditEvent.objects.filter(action="clinic.delivery.child", patient_id=child.pk).exists()


def test_a_resubmitted_delivery_creates_no_second_child(
    mother: Any, clinician: Any, mother_patient: Any, shared: Any
) -> None:
    first = services.delivery_record(user=clinician, mother=mother_patient, data=a_delivery())
    changed = a_delivery(
        None,
        prenatal.Baby(sex="female", weight_g=3080, given_name="陽葵"),
    )
    again = services.delivery_record(user=clinician, mother=mother_patient, data=changed)
    assert [b.child.pk for b in again.babies] == [b.child.pk for b in first.babies]
    assert not again.babies[0].created
    assert Patient.objects.filter(kind=Patient.Kind.CHILD).count() == 1
    assert Guardianship.objects.filter(guardian=mother).count() == 1
    found = birth_records(again.babies[0].child)
    assert found["birth_weight"].content["valueQuantity"]["value"] == 3080
    assert "apgar_5min" not in found  # no longer stated: removed
    episode = Resource.objects.get(pk=again.episode_id)
    assert len(episode.content["extension"]) == 1


def test_a_delivery_links_the_child_the_municipality_registered_instead_of_duplicating(
    mother: Any, clinician: Any, mother_patient: Any, shared: Any, municipality: Any
) -> None:
    born = today() - timedelta(days=3)
    municipal_child = f.make_patient(given="陽葵", birth_date=born)
    Resource.objects.filter(pk=municipal_child.pk)  # (its Patient resource has no sex yet)
    MotherChild.objects.create(
        mother=mother_patient, child=municipal_child, municipality=municipality
    )
    # The family had also added the baby by hand: the same child, twice.
    own = f.make_patient(given="ひまり", birth_date=born)
    Guardianship.objects.create(
        guardian=mother, child=own, relationship=Guardianship.Relationship.MOTHER
    )
    result = services.delivery_record(user=clinician, mother=mother_patient, data=a_delivery(born))
    [outcome] = result.babies
    assert outcome.child.pk == municipal_child.pk
    assert not outcome.created
    assert outcome.merged == 1
    own.refresh_from_db()
    assert own.merged_into_id == municipal_child.pk
    assert Patient.objects.filter(kind=Patient.Kind.CHILD, merged_into=None).count() == 1
    assert "birth_weight" in birth_records(municipal_child)
    assert Guardianship.objects.active().filter(guardian=mother, child=municipal_child).exists()


def test_twins_of_one_sex_are_not_guessed_onto_one_existing_record(
    mother: Any, clinician: Any, mother_patient: Any, shared: Any, municipality: Any
) -> None:
    born = today() - timedelta(days=2)
    for given_name in ("一", "二"):
        child = f.make_patient(given=given_name, birth_date=born)
        MotherChild.objects.create(mother=mother_patient, child=child, municipality=municipality)
    twins = (prenatal.Baby(sex="female", weight_g=2400), prenatal.Baby(sex="female", weight_g=2350))
    result = services.delivery_record(
        user=clinician, mother=mother_patient, data=a_delivery(born, *twins, days=37 * 7)
    )
    # Two register records, two babies of one sex: which is which is not
    # ours to guess, so both get a record of their own and staff merge later.
    assert [b.created for b in result.babies] == [True, True]
    names = [Resource.objects.get(pk=b.child.pk).content["name"][0]["given"] for b in result.babies]
    assert names == [["（未定・第1子）"], ["（未定・第2子）"]]


def test_a_dv_block_keeps_the_guardianship_from_being_made(
    mother: Any,
    clinician: Any,
    mother_patient: Any,
    shared: Any,
    municipality: Any,
    municipal_officer: Any,
) -> None:
    born = today() - timedelta(days=3)
    municipal_child = f.make_patient(given="陽葵", birth_date=born)
    MotherChild.objects.create(
        mother=mother_patient, child=municipal_child, municipality=municipality
    )
    from phr.services import residency_add

    residency_add(patient=municipal_child, municipality=municipality, resident_number="C-9")
    DvBlock.objects.create(
        patient=municipal_child,
        blocked_user=mother,
        municipality=municipality,
        created_by=municipal_officer,
    )
    result = services.delivery_record(user=clinician, mother=mother_patient, data=a_delivery(born))
    assert not result.babies[0].guardian_added
    assert not Guardianship.objects.filter(guardian=mother, child=municipal_child).exists()


# --------------------------------------------------------------------------
# Registering a pregnant patient; the invitation
# --------------------------------------------------------------------------


def register(clinician: Any, clinic: Any, **extra: Any) -> services.Registration:
    values: dict[str, Any] = {
        "family": "高崎",
        "given": "美咲",
        "family_kana": "タカサキ",
        "given_kana": "ミサキ",
        "birth_date": date(1995, 5, 20),
        "clinic_patient_number": "000777",
        "due_date": today() + timedelta(weeks=20),
    }
    values.update(extra)
    return services.patient_register(user=clinician, clinic=clinic, **values)


def test_a_clinic_registers_a_pregnant_patient_and_may_write_for_her(
    clinician: Any, clinic: Any
) -> None:
    registration = register(clinician, clinic, email="misaki@example.jp")
    patient = registration.patient
    decision = may_write(clinician, patient, category=Category.PRENATAL_CHECKUPS)
    assert decision.rule == "clinic_registered"
    assert decision.organization_id == clinic.pk
    # Her pregnancy and due date, as the clinic registered them.
    summary = selectors.pregnancy_summary(user=clinician, patient=patient)
    assert summary is not None
    assert summary.due_date == today() + timedelta(weeks=20)
    content = Resource.objects.get(pk=patient.pk).content
    assert content["identifier"] == [
        {"system": f"urn:oid:1.2.392.100495.20.3.51.1{clinic.code}", "value": "000777"}
    ]
    # The invitation: only a hash stored; the code emailed once the
    # registration committed.
    invitation = registration.invitation
    assert invitation.code_hash != registration.code
    assert len(registration.code) == 19
    assert ClinicInvitation.objects.get().status == ClinicInvitation.Status.ACTIVE
    services.prenatal_visit_record(
        user=clinician, patient=patient, data=visit_today(today() + timedelta(weeks=20))
    )
    # Another clinic may not.
    other = f.make_member(f.Role.CLINIC_STAFF, f.ClinicFactory())
    assert not may_write(other, patient, category=Category.PRENATAL_CHECKUPS)
    # The same clinic patient number twice is refused.
    with pytest.raises(ValidationError):
        register(clinician, clinic, family="別人")


def test_registration_emails_the_code_after_commit(
    clinician: Any, clinic: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        registration = register(clinician, clinic, email="misaki@example.jp")
    [message] = mail.outbox
    assert message.to == ["misaki@example.jp"]
    assert registration.code in message.body
    assert "美咲" not in message.body  # no name, nothing clinical


def test_the_invited_patient_links_her_account_and_shares_with_the_clinic(
    clinician: Any, clinic: Any
) -> None:
    registration = register(clinician, clinic)
    woman = f.UserFactory(email="misaki@example.jp")
    # A wrong birth date is refused and counted.
    with pytest.raises(services.InvitationError):
        services.invitation_redeem(
            user=woman, code=registration.code, birth_date=date(1995, 5, 21), share=True
        )
    assert ClinicInvitation.objects.get().failed_attempts == 1
    result = services.invitation_redeem(
        user=woman,
        code=registration.code.lower().replace("-", " "),
        birth_date=date(1995, 5, 20),
        share=True,
    )
    assert result.patient.pk == registration.patient.pk
    assert not result.merged
    registration.patient.refresh_from_db()
    assert registration.patient.account == woman
    # Her consent now lets the clinic go on: by the consent, not the registration.
    forget_grants(clinician)
    assert may_write(clinician, registration.patient, category=Category.PRENATAL_CHECKUPS).rule == (
        "consent"
    )
    family = selectors.family(user=woman)
    assert family.me is not None
    assert family.me.name == "高崎 美咲"
    assert family.pregnancy is not None
    # The code was single-use.
    other = f.UserFactory()
    with pytest.raises(services.InvitationError):
        services.invitation_redeem(
            user=other, code=registration.code, birth_date=date(1995, 5, 20), share=True
        )


def test_once_linked_without_sharing_the_clinic_may_no_longer_write(
    clinician: Any, clinic: Any
) -> None:
    registration = register(clinician, clinic)
    woman = f.UserFactory()
    services.invitation_redeem(
        user=woman, code=registration.code, birth_date=date(1995, 5, 20), share=False
    )
    forget_grants(clinician)
    assert not may_write(clinician, registration.patient, category=Category.PRENATAL_CHECKUPS)


def test_an_invitation_merges_the_clinic_record_into_the_one_her_account_has(
    clinician: Any, clinic: Any, mother: Any, mother_patient: Any
) -> None:
    # She already has a record (e.g. the municipality's): it stays, and the
    # clinic's record with its pregnancy moves into it.
    Resource.objects.filter(pk=mother_patient.pk)
    content = Resource.objects.get(pk=mother_patient.pk).content
    assert content["birthDate"] == "2025-09-01"  # (the fixture's date)
    registration = register(clinician, clinic, birth_date=date(1995, 5, 20))
    with pytest.raises(services.InvitationError):  # her record says another birth date
        services.invitation_redeem(
            user=mother, code=registration.code, birth_date=date(1995, 5, 20), share=True
        )
    assert ClinicInvitation.objects.get().used_at is None
    agreeing = register(
        clinician, clinic, clinic_patient_number="000778", birth_date=date(2025, 9, 1)
    )
    result = services.invitation_redeem(
        user=mother, code=agreeing.code, birth_date=date(2025, 9, 1), share=True
    )
    assert result.merged
    assert result.patient.pk == mother_patient.pk
    assert Resource.objects.filter(
        resource_type="EpisodeOfCare", compartments__overlap=[mother_patient.pk]
    ).exists()


# --------------------------------------------------------------------------
# The pages
# --------------------------------------------------------------------------


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def visit_url(patient: Patient) -> str:
    return f"/clinic/patients/{patient.pk}/visits/new/"


def test_the_visit_page_shows_the_gestational_age_and_the_tests_of_the_stage(
    clinician: Any, mother_patient: Any, shared: Any
) -> None:
    due = today() + timedelta(weeks=30)  # 10 weeks today: the early tests
    services.prenatal_visit_record(
        user=clinician,
        patient=mother_patient,
        data=prenatal.Visit(visit_date=today(), due_date=due),
    )
    with translation.override("ja"):
        response = client_for(clinician).get(visit_url(mother_patient), HTTP_ACCEPT_LANGUAGE="ja")
    assert response.status_code == 200
    text = response.content.decode()
    assert "10週0日" in text
    assert 'name="lab_blood_type_abo"' in text
    assert 'name="lab_gbs"' in text
    due_part = text.split("other-tests")[0]
    assert "lab_hiv_antibody" in due_part
    assert "lab_gbs" not in due_part


@pytest.mark.parametrize(
    "persona", ["stranger", "mother", "municipal_officer", "unconsented", "no_mfa"]
)
def test_the_entry_pages_are_404_for_anyone_the_clinic_may_not_write_for(
    persona: str, request: pytest.FixtureRequest, mother_patient: Any, clinic: Any, due: date
) -> None:
    users = {
        "unconsented": lambda: f.make_member(f.Role.CLINIC_STAFF, f.ClinicFactory()),
        "no_mfa": lambda: f.make_member(f.Role.CLINIC_STAFF, clinic, mfa=False),
    }
    user = users[persona]() if persona in users else request.getfixturevalue(persona)
    share(request.getfixturevalue("mother"), mother_patient, clinic)
    client = client_for(user)
    before = Resource.objects.count()
    for url in (visit_url(mother_patient), f"/clinic/patients/{mother_patient.pk}/delivery/"):
        response = client.post(url, {"visit_date": today().isoformat(), "systolic": "120"})
        # Staff without MFA are sent to set it up first.
        assert response.status_code == (302 if persona == "no_mfa" else 404)
    assert Resource.objects.count() == before
    assert client.get(f"/clinic/patients/{uuid.uuid4()}/visits/new/").status_code in (302, 404)


def test_a_visit_goes_through_the_confirmation_page(
    clinician: Any, mother: Any, mother_patient: Any, shared: Any, due: date
) -> None:
    client = client_for(clinician)
    data = {
        "visit_date": today().isoformat(),
        "due_date": due.isoformat(),
        "systolic": "165",
        "diastolic": "112",
        "weight": "58.0",
        "urine_protein": "1+",
        "lab_hiv_antibody": "negative",
    }
    with translation.override("en"):
        response = client.post(visit_url(mother_patient), data, HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 200
    text = response.content.decode()
    assert "severe range" in text  # the warning, on the confirmation page
    assert "clinic only" in text
    assert not records_of(mother_patient)  # nothing written before confirming
    payload = response.context["payload"]
    # Back to correct: the form again, filled in.
    response = client.post(visit_url(mother_patient), {"action": "edit", "payload": payload})
    assert response.status_code == 200
    assert 'value="165"' in response.content.decode()
    # A tampered payload is refused; the real one saves.
    response = client.post(
        visit_url(mother_patient), {"action": "confirm", "payload": payload + "x"}
    )
    assert response.status_code == 302
    assert not records_of(mother_patient)
    response = client.post(visit_url(mother_patient), {"action": "confirm", "payload": payload})
    assert response.status_code == 302
    assert response["Location"] == f"/clinic/patients/{mother_patient.pk}/"
    tokens = {t for r in records_of(mother_patient) for t in r.tokens}
    assert f"{LOINC}|85354-9" in tokens
    assert f"{terminology.LOCAL}|hiv-antibody" in tokens


def test_a_confirmation_is_good_for_its_own_patient_only(
    clinician: Any, mother_patient: Any, shared: Any, clinic: Any, due: date
) -> None:
    other_mother = f.UserFactory()
    other = f.make_patient(kind=Patient.Kind.ADULT, given="葵", account=other_mother)
    share(other_mother, other, clinic)
    client = client_for(clinician)
    data = {"visit_date": today().isoformat(), "systolic": "120", "diastolic": "70"}
    payload = client.post(visit_url(mother_patient), data).context["payload"]
    # Posted to another patient's page, it is refused as stale.
    response = client.post(visit_url(other), {"action": "confirm", "payload": payload})
    assert response.status_code == 302
    assert response["Location"] == visit_url(other)
    assert not records_of(other)
    assert not records_of(mother_patient)


def test_an_impossible_value_comes_back_with_its_message(
    clinician: Any, mother_patient: Any, shared: Any, due: date
) -> None:
    response = client_for(clinician).post(
        visit_url(mother_patient),
        {"visit_date": today().isoformat(), "weight": "5"},
        HTTP_ACCEPT_LANGUAGE="ja",
    )
    assert response.status_code == 400
    assert "体重として 5 kg はありえない値です" in response.content.decode()
    assert not records_of(mother_patient)


def test_a_delivery_through_the_pages(
    clinician: Any, mother: Any, mother_patient: Any, shared: Any
) -> None:
    client = client_for(clinician)
    url = f"/clinic/patients/{mother_patient.pk}/delivery/"
    response = client.get(url + "?babies=2")
    assert response.status_code == 200
    assert 'name="baby-1-weight_g"' in response.content.decode()
    born = timezone.localtime() - timedelta(hours=5)
    data = {
        "born_at": born.strftime("%Y-%m-%dT%H:%M"),
        "gestation_weeks": "38",
        "gestation_days": "1",
        "mode": "cesarean-planned",
        "blood_loss_ml": "700",
        "babies": "2",
        "baby-TOTAL_FORMS": "2",
        "baby-INITIAL_FORMS": "0",
        "baby-MIN_NUM_FORMS": "2",
        "baby-MAX_NUM_FORMS": "2",
        "baby-0-sex": "male",
        "baby-0-weight_g": "2650",
        "baby-1-sex": "female",
        "baby-1-weight_g": "2480",
    }
    response = client.post(url, data)
    assert response.status_code == 200, response.content.decode()[:2000]
    assert response.context["warnings"]  # 2480 g is below 2500 g
    response = client.post(url, {"action": "confirm", "payload": response.context["payload"]})
    assert response.status_code == 302
    forget_grants(mother)
    children = selectors.family(user=mother).children
    assert len(children) == 2
    assert {c.birth_date for c in children} == {born.date()}


def test_registration_and_joining_through_the_pages(clinician: Any, clinic: Any) -> None:
    client = client_for(clinician)
    assert client.get("/clinic/register/").status_code == 200
    assert client.post("/clinic/register/", {}).status_code == 400
    response = client.post(
        "/clinic/register/",
        {
            "clinic": clinic.pk,
            "family": "高崎",
            "given": "美咲",
            "birth_date": "1995-05-20",
            "due_date": (today() + timedelta(weeks=20)).isoformat(),
        },
    )
    assert response.status_code == 200
    registration = response.context["registration"]
    code = registration.code
    assert code in response.content.decode()
    # The clinic records her visits at once (it registered her), in English too.
    with translation.override("en"):
        response = client.get(visit_url(registration.patient), HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 200
    assert "20 weeks 0 days" in response.content.decode()
    woman = f.UserFactory()
    joining = client_for(woman)
    assert joining.get(f"/clinic/join/?code={code}").status_code == 200
    response = joining.post(
        "/clinic/join/", {"code": code, "birth_date": "1995-05-21", "share": "on"}
    )
    assert response.status_code == 400
    response = joining.post(
        "/clinic/join/", {"code": code, "birth_date": "1995-05-20", "share": "on"}
    )
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert Patient.objects.get(account=woman).pk == response.wsgi_request.user.own_patient.pk
    # Other people get 404 for the staff pages, the join page is for anyone.
    assert client_for(woman).get("/clinic/register/").status_code == 404
