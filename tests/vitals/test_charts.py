"""The family's vitals charts (vitals/charts.py, vitals/chart_views.py):
the child's points and the table of the same numbers, corrected age marked,
the WHO option's z-scores, the mother's weight gain band by pre-pregnancy
BMI, the blood pressure lines, and who may open them."""

from __future__ import annotations

import re
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.test import Client
from django.urls import reverse

from phr import services, store
from phr.models import AuditEvent, Guardianship, Patient, Provenance
from sharing.models import ConsentPurpose
from sharing.services import consent_grant
from tests import factories as f
from vitals import charts, growth

pytestmark = pytest.mark.django_db

TODAY = date(2026, 11, 26)
BIRTH = date(2025, 9, 1)


@pytest.fixture(autouse=True)
def _today() -> Any:
    with time_machine.travel("2026-11-26 10:00 +0900", tick=False):
        yield


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def text_of(response: Any) -> str:
    return re.sub(r"\s+", " ", response.content.decode())


def make_child(mother: Any, *, gender: str = "male", birth: date = BIRTH) -> Patient:
    prov = services.provenance_create(origin=Provenance.Origin.SYSTEM)
    resource = services.patient_resource(family="前橋", given="そら", birth_date=birth,
                                         gender=gender)  # fmt: skip
    child = services.patient_create(kind=Patient.Kind.CHILD, resource=resource, provenance=prov)
    services.guardianship_add(
        guardian=mother, child=child, relationship=Guardianship.Relationship.MOTHER
    )
    return child


def measure(patient: Patient, code: str, value: float, unit: str, when: date, *,
            origin: str = Provenance.Origin.SELF, org: Any = None) -> None:  # fmt: skip
    f.write_observation(patient, code=code, value=value, unit=unit, when=when.isoformat(),
                        origin=origin, organization=org)  # fmt: skip


def gestation_at_birth(child: Patient, weeks: int, days: int = 0) -> None:
    resource = f.observation(child, code="49051-6", value=weeks, unit="wk",
                             when=BIRTH.isoformat())  # fmt: skip
    resource["component"] = [
        {
            "code": {"coding": [{"system": "https://hagukumi.jp/fhir/CodeSystem/item",
                                 "code": "gestational-age-days"}]},
            "valueQuantity": {"value": days, "unit": "d", "system": "http://unitsofmeasure.org",
                              "code": "d"},
        }
    ]  # fmt: skip
    prov = services.provenance_create(origin=Provenance.Origin.MUNICIPALITY)
    store.record_write(resource, provenance=prov)


def url(patient: Patient, **query: str) -> str:
    base = reverse("vitals:chart-person", args=[patient.pk])
    return base + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


# --------------------------------------------------------------------------
# The child's growth
# --------------------------------------------------------------------------


@pytest.fixture
def boy(mother: Any, municipality: Any) -> Patient:
    child = make_child(mother)
    measure(child, "8339-4", 3100, "g", BIRTH, origin=Provenance.Origin.MUNICIPALITY,
            org=municipality)  # fmt: skip
    measure(child, "29463-7", 7.93, "kg", date(2026, 3, 1), origin=Provenance.Origin.MUNICIPALITY,
            org=municipality)  # fmt: skip
    measure(child, "29463-7", 9.9, "kg", date(2026, 9, 1))  # a parent's entry
    measure(child, "8306-3", 67.6, "cm", date(2026, 3, 1), origin=Provenance.Origin.MUNICIPALITY,
            org=municipality)  # fmt: skip
    measure(child, "9843-4", 44.0, "cm", date(2026, 3, 1), origin=Provenance.Origin.DEVICE)
    return child


def test_the_growth_chart_shows_the_childs_points_and_the_same_numbers_in_its_table(
    mother: Any, boy: Patient
) -> None:
    response = client_for(mother).get(url(boy))
    assert response.status_code == 200
    page = response.content.decode()
    weight_section = page.split('id="chart-weight-heading"')[1].split("</section>")[0]
    # three weights: at birth (3100 g → 3.10 kg), 6 months, 12 months
    assert weight_section.count('data-point="child"') == 3
    rows = re.findall(r"<tr>\s*<td><time datetime=\"([\d-]+)\">.*?</tr>", weight_section, re.S)
    assert rows == ["2025-09-01", "2026-03-01", "2026-09-01"]
    for value in ("3.10", "7.93", "9.90"):
        assert f'<td class="num">{value}</td>' in weight_section
    # the child's points carry the same values in their titles
    titles = re.findall(r'data-point="child"><title>([^<]+)</title>', weight_section)
    assert [t.split(": ")[1] for t in titles] == ["3.10 kg", "7.93 kg", "9.90 kg"]
    # the JP band is drawn and named under the chart
    assert 'class="ref-band"' in weight_section
    assert "令和5年乳幼児身体発育調査" in weight_section
    # every source counts and is named
    text = text_of(response)
    assert 'role="img"' in page
    assert '<title id="chart-weight-title">' in page
    head_section = page.split('id="chart-head-heading"')[1].split("</section>")[0]
    assert head_section.count('data-point="child"') == 1
    assert "44.00" in head_section
    assert text.count("chart-data") >= 3


def test_the_who_option_shows_z_scores_and_percentiles(mother: Any, boy: Patient) -> None:
    response = client_for(mother).get(url(boy, reference="who"))
    page = response.content.decode()
    weight_section = page.split('id="chart-weight-heading"')[1].split("</section>")[0]
    # 7.93 kg at 6 months (181 days ≈ 5.95 months) is about the WHO median
    months = growth.months_of((date(2026, 3, 1) - BIRTH).days)
    expected = growth.who_score(growth.WEIGHT, "M", months, 7.93)
    assert expected is not None
    assert f'<td class="num">{expected.z:.2f}</td>' in weight_section
    assert f'<td class="num">{expected.percentile:.1f}</td>' in weight_section
    assert weight_section.count('class="ref-line') == 7  # P3…P97
    assert "WHO Child Growth Standards" in weight_section  # named in Japanese too


def test_json_gives_the_numbers_clinicians_see(mother: Any, boy: Patient) -> None:
    response = client_for(mother).get(reverse("vitals:chart-data", args=[boy.pk]))
    assert response.status_code == 200
    body = response.json()
    weights = body["series"]["weight"]
    assert [w["value"] for w in weights] == [3.1, 7.93, 9.9]
    score = growth.who_score(growth.WEIGHT, "M", 0, 3.1)
    assert score is not None
    assert weights[0]["whoZ"] == round(score.z, 2)
    assert weights[0]["jp2023"] == "within"
    assert [w["source"] for w in weights] == ["municipality", "municipality", "self"]


def test_a_preterm_childs_points_are_at_corrected_age_and_marked(mother: Any) -> None:
    child = make_child(mother)
    gestation_at_birth(child, 32, 0)
    measure(child, "29463-7", 5.0, "kg", BIRTH + timedelta(days=120))
    measure(child, "29463-7", 11.0, "kg", BIRTH + timedelta(days=760))  # past 24 months
    data = charts.child_growth(user=mother, patient=child)
    assert data.gestational_days == 224
    early, late = data.series["weight"]
    assert early.age.corrected
    assert early.age.chart_days == 120 - 56
    assert not late.age.corrected
    response = client_for(mother).get(url(child))
    page = response.content.decode()
    weight_section = page.split('id="chart-weight-heading"')[1].split("</section>")[0]
    assert weight_section.count("marker hollow") == 1
    assert "修正月齢の終了（24か月）" in weight_section  # the line where correction ends
    assert 'class="mark mark-corrected"' in weight_section
    # the table gives the corrected age beside the age
    assert weight_section.count("<td>—</td>") >= 1  # the later one is not corrected


def test_without_a_recorded_sex_no_reference_is_drawn(mother: Any) -> None:
    child = f.make_patient(given="なな")
    services.guardianship_add(
        guardian=mother, child=child, relationship=Guardianship.Relationship.MOTHER
    )
    measure(child, "29463-7", 8.0, "kg", date(2026, 3, 1))
    response = client_for(mother).get(url(child))
    page = response.content.decode()
    weight_section = page.split('id="chart-weight-heading"')[1].split("</section>")[0]
    assert "ref-band" not in weight_section
    assert weight_section.count('data-point="child"') == 1


# --------------------------------------------------------------------------
# The mother's charts
# --------------------------------------------------------------------------


def pregnancy(mother_patient: Patient, due: date) -> None:
    prov = services.provenance_create(origin=Provenance.Origin.SELF)
    store.record_write(
        {
            "resourceType": "EpisodeOfCare",
            "status": "active",
            "patient": {"reference": f"Patient/{mother_patient.pk}"},
            "period": {"start": (due - timedelta(days=280)).isoformat()},
            "extension": [{"url": "https://hagukumi.jp/fhir/StructureDefinition/due-date",
                           "valueDate": due.isoformat()}],
        },
        provenance=prov,
    )  # fmt: skip


def bp(patient: Patient, high: int, low: int, when: str) -> None:
    prov = services.provenance_create(origin=Provenance.Origin.DEVICE)
    loinc = "http://loinc.org"
    store.record_write(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": loinc, "code": "85354-9"}]},
            "subject": {"reference": f"Patient/{patient.pk}"},
            "effectiveDateTime": when,
            "component": [
                {"code": {"coding": [{"system": loinc, "code": code}]},
                 "valueQuantity": {"value": v, "unit": "mmHg",
                                   "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
                for code, v in (("8480-6", high), ("8462-4", low))
            ],
        },
        provenance=prov,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("pre_weight", "height", "category", "gain_min", "gain_max"),
    [
        (44.0, 160.0, "underweight", 12, 15),  # BMI 17.2
        (55.0, 160.0, "normal", 10, 13),  # BMI 21.5
        (70.0, 160.0, "obese class 1", 7, 10),  # BMI 27.3
        (80.0, 160.0, "obese class >=2", None, 5),  # BMI 31.3
    ],
)
def test_weight_gain_band_follows_the_pre_pregnancy_bmi(
    mother: Any, mother_patient: Patient, pre_weight: float, height: float, category: str,
    gain_min: int | None, gain_max: int,
) -> None:  # fmt: skip
    due = TODAY + timedelta(days=70)  # 30 weeks today
    pregnancy(mother_patient, due)
    measure(mother_patient, "56077-1", pre_weight, "kg", due - timedelta(days=250))
    measure(mother_patient, "8302-2", height, "cm", due - timedelta(days=250))
    measure(mother_patient, "29463-7", pre_weight + 4.5, "kg", TODAY - timedelta(days=7))
    response = client_for(mother).get(reverse("vitals:chart-data", args=[mother_patient.pk]))
    body = response.json()
    assert body["band"] == {
        "category": category,
        "gainMinKg": gain_min,
        "gainMaxKg": gain_max,
    }
    assert body["weightGain"][0]["gainKg"] == 4.5
    assert body["weightGain"][0]["week"] == pytest.approx(29, abs=0.01)
    page = client_for(mother).get(url(mother_patient)).content.decode()
    gain_section = page.split('id="chart-weight-gain-heading"')[1].split("</section>")[0]
    assert 'class="ref-band"' in gain_section
    assert "日本産科婦人科学会" in gain_section  # the reference, named under the chart
    assert gain_section.count('data-point="reading"') == 1


def test_the_blood_pressure_chart_has_the_140_90_and_160_110_lines(
    mother: Any, mother_patient: Patient
) -> None:
    bp(mother_patient, 118, 76, "2026-11-20T07:30:00+09:00")
    bp(mother_patient, 142, 92, "2026-11-21T07:30:00+09:00")
    bp(mother_patient, 120, 80, "2026-01-01T07:30:00+09:00")  # outside the 90 days
    response = client_for(mother).get(url(mother_patient))
    page = response.content.decode()
    bp_section = page.split('id="chart-bp-heading"')[1].split("</section>")[0]
    for limit in ("140", "90", "160", "110"):
        assert 'class="rule-label threshold' in bp_section
        assert f">{limit}</text>" in bp_section
    assert bp_section.count('data-point="reading"') == 4  # 2 readings × systolic, diastolic
    assert "2026-11-21 07:30" in bp_section
    assert "2026-01-01" not in bp_section
    every = client_for(mother).get(url(mother_patient, period="all")).content.decode()
    assert "2026-01-01 07:30" in every


# --------------------------------------------------------------------------
# Who may open them
# --------------------------------------------------------------------------


def test_guardians_open_a_childs_charts_others_get_404(
    mother: Any, father: Any, boy: Patient, stranger: Any, clinician: Any, clinic: Any,
    municipal_officer: Any,
) -> None:  # fmt: skip
    services.guardianship_add(
        guardian=father, child=boy, relationship=Guardianship.Relationship.FATHER
    )
    consent_grant(patient=boy, by=mother, purpose=ConsentPurpose.CARE,
                  categories=["infant_checkups", "vitals"], grantee_org=clinic)  # fmt: skip
    for user, status in ((mother, 200), (father, 200), (stranger, 404), (clinician, 404),
                         (municipal_officer, 404)):  # fmt: skip
        for name in ("vitals:chart-person", "vitals:chart-data"):
            response = client_for(user).get(reverse(name, args=[boy.pk]))
            assert response.status_code == status, (user, name)
    anonymous = Client().get(url(boy))
    assert anonymous.status_code == 302
    assert reverse("vitals:chart-data", args=[boy.pk]) not in (anonymous.url or "")


def test_a_mother_opens_her_own_charts_and_the_view_is_audited(
    mother: Any, mother_patient: Patient, stranger: Any
) -> None:
    before = AuditEvent.objects.count()
    assert client_for(mother).get(url(mother_patient)).status_code == 200
    assert AuditEvent.objects.count() > before
    assert client_for(stranger).get(url(mother_patient)).status_code == 404
    assert client_for(mother).post(url(mother_patient)).status_code == 405


def test_japanese_is_the_default(mother: Any, boy: Patient) -> None:
    page = text_of(client_for(mother).get(url(boy)))
    assert "成長曲線" in page


def test_separate_systolic_and_diastolic_readings_and_weights_in_other_units(
    mother: Any, mother_patient: Patient
) -> None:
    # a device that sends the two pressures as two Observations of one moment
    measure(mother_patient, "8480-6", 150, "mm[Hg]", TODAY, origin=Provenance.Origin.DEVICE)
    measure(mother_patient, "8462-4", 95, "mm[Hg]", TODAY, origin=Provenance.Origin.DEVICE)
    measure(mother_patient, "29463-7", 132.0, "[lb_av]", TODAY - timedelta(days=1))
    measure(mother_patient, "29463-7", 60100, "g", TODAY - timedelta(days=2))
    measure(mother_patient, "29463-7", 60, "stone", TODAY - timedelta(days=3))  # not converted
    body = client_for(mother).get(reverse("vitals:chart-data", args=[mother_patient.pk])).json()
    assert [(r["systolic"], r["diastolic"]) for r in body["bloodPressure"]] == [(150, 95)]
    assert [round(w["kg"], 2) for w in body["weight"]] == [60.1, 59.87]


def test_a_deleted_reading_is_not_drawn(mother: Any, mother_patient: Patient) -> None:
    rid = f.write_observation(mother_patient, code="29463-7", value=61.0, unit="kg",
                              when=TODAY.isoformat())  # fmt: skip
    store.record_delete(
        resource_type="Observation",
        resource_id=rid,
        provenance=services.provenance_create(origin=Provenance.Origin.SELF),
    )
    body = client_for(mother).get(reverse("vitals:chart-data", args=[mother_patient.pk])).json()
    assert body["weight"] == []


def test_birth_data_entered_in_the_handbook_gives_the_corrected_age(mother: Any) -> None:
    from phr import handbook_services

    child = make_child(mother, gender="female")
    handbook_services.birth_data_record(
        user=mother,
        patient=child,
        data=handbook_services.BirthData(gestation_weeks=28, gestation_days=3,
                                         birth_weight_g=1150, length_cm=Decimal("37.0"),
                                         head_cm=Decimal("26.0")),
        birth=BIRTH,
    )  # fmt: skip
    measure(child, "29463-7", 4.2, "kg", BIRTH + timedelta(days=150))
    body = client_for(mother).get(reverse("vitals:chart-data", args=[child.pk])).json()
    assert body["gestationalAgeAtBirthDays"] == 28 * 7 + 3
    assert body["correctedAgeUsed"] is True
    birth_weight, later = body["series"]["weight"]
    assert birth_weight["value"] == 1.15  # 1150 g
    assert birth_weight["chartAgeDays"] == -81  # before term: no reference, no z
    assert birth_weight["whoZ"] is None
    assert later["chartAgeDays"] == 150 - 81
    expected = growth.who_score(growth.WEIGHT, "F", growth.months_of(69), 4.2)
    assert expected is not None
    assert later["whoZ"] == round(expected.z, 2)
    assert body["series"]["head"][0]["value"] == 26.0


def test_the_number_of_queries_does_not_grow_with_the_readings(
    mother: Any, mother_patient: Patient
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = client_for(mother)
    data_url = reverse("vitals:chart-data", args=[mother_patient.pk]) + "?period=all"

    def count() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(data_url).status_code == 200
            assert client.get(url(mother_patient)).status_code == 200
        return len(captured.captured_queries)

    bp(mother_patient, 120, 80, "2026-11-20T07:30:00+09:00")
    client.get(data_url)  # warm the grant cache
    few = count()
    for day in range(1, 40):
        bp(mother_patient, 120, 80, f"2026-10-{day % 28 + 1:02d}T0{day % 9}:30:00+09:00")
        measure(mother_patient, "29463-7", 60.0, "kg", TODAY - timedelta(days=day))
    assert count() == few


def test_english_on_request(mother: Any, boy: Patient) -> None:
    client = client_for(mother)
    client.post(reverse("set_language"), {"language": "en", "next": url(boy)})
    page = text_of(client.get(url(boy)))
    assert "Growth charts" in page
    assert "Weight for age" in page
    assert "2023 National Growth Survey" in page
