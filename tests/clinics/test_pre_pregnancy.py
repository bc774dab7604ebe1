"""The pre-pregnancy weight (妊娠前体重) and the height, entered by the clinic
at a prenatal visit: stored as FHIR Observations (LOINC 56077-1 and 8302-2,
UCUM kg and cm), impossible values refused in Japanese and English with
nothing written, unusual ones warned about, and — the point of recording
them — the patient page's weight-gain flag computed from what was entered
(JSOG 2021 guidance, clinics/flags.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.test import Client
from django.utils import timezone, translation
from fhir.resources.observation import Observation

from clinics import prenatal, selectors, services
from clinics.forms import VisitForm
from phr import fhir
from phr.models import Patient, Resource
from phr.terminology import LOINC, UCUM, Category
from sharing.models import ConsentPurpose
from sharing.services import consent_grant

pytestmark = pytest.mark.django_db

CLINIC = prenatal.ClinicRef(code="1010123450", name="テストクリニック")
PRE_PREGNANCY = f"{LOINC}|56077-1"
HEIGHT = f"{LOINC}|8302-2"


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


def today() -> date:
    return timezone.localdate()


@pytest.fixture
def due() -> date:
    return today() + timedelta(weeks=14)  # 26 weeks today


@pytest.fixture
def shared(mother: Any, mother_patient: Any, clinic: Any) -> Any:
    return consent_grant(
        patient=mother_patient,
        by=mother,
        purpose=ConsentPurpose.CARE,
        categories=[Category.PREGNANCY, Category.PRENATAL_CHECKUPS],
        grantee_org=clinic,
    )


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)  # the clinician fixture has an authenticator (MFA)
    return client


def visit_url(patient: Patient) -> str:
    return f"/clinic/patients/{patient.pk}/visits/new/"


def page_url(patient: Patient) -> str:
    return f"/clinic/patients/{patient.pk}/"


def records_of(patient: Patient, token: str) -> list[Resource]:
    return list(
        Resource.objects.filter(
            compartments__overlap=[patient.pk], tokens__contains=[token], deleted=False
        )
    )


def enter_visit(client: Client, patient: Patient, language: str = "en", **values: str) -> Any:
    """The visit form, checked, then confirmed (the two POSTs a clinic makes)."""
    data = {"visit_date": today().isoformat(), **values}
    response = client.post(visit_url(patient), data, HTTP_ACCEPT_LANGUAGE=language)
    assert response.status_code == 200, response.content.decode()[:3000]
    payload = response.context["payload"]
    confirmed = client.post(
        visit_url(patient),
        {"action": "confirm", "payload": payload},
        HTTP_ACCEPT_LANGUAGE=language,
    )
    assert confirmed.status_code == 302
    return response


# --------------------------------------------------------------------------
# The mapping and the checks (pure)
# --------------------------------------------------------------------------


def test_it_maps_the_pre_pregnancy_weight_and_height_to_valid_fhir() -> None:
    visit = prenatal.Visit(
        visit_date=date(2026, 1, 9),
        pre_pregnancy_weight=Decimal("52.0"),
        height=Decimal("158.4"),
    )
    items = prenatal.visit_resources(
        visit=visit, patient_id=uuid.uuid4(), clinic=CLINIC, episode_id=None
    )
    observations = {r["code"]["coding"][0]["code"]: r for r, _s in items[1:]}
    assert set(observations) == {"56077-1", "8302-2"}
    before = observations["56077-1"]
    assert before["valueQuantity"] == {
        "value": Decimal("52.0"),
        "unit": "kg",
        "system": UCUM,
        "code": "kg",
    }
    assert before["meta"]["tag"][0]["code"] == Category.PRENATAL_CHECKUPS
    height = observations["8302-2"]
    assert height["valueQuantity"]["code"] == "cm"
    # JP Core's 身長 code beside the LOINC one.
    assert {"system": prenatal.common.JP_BODY_MEASUREMENT, "code": "31000298"}.items() <= (
        height["code"]["coding"][1].items()
    )
    for resource in (before, height):
        fhir.validate_resource(resource)
        Observation.model_validate(fhir_json(resource))


def fhir_json(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource as JSON would carry it (Decimals as numbers)."""
    return json.loads(json.dumps(resource, default=float))


@pytest.mark.parametrize(
    ("language", "value", "message"),
    [
        ("ja", "5", "妊娠前体重として 5 kg はありえない値です（25〜250 kg）。"),
        (
            "en",
            "400",
            "400 kg is not possible for Body weight before this pregnancy (possible: 25–250 kg).",
        ),
    ],
)
def test_the_form_refuses_an_impossible_pre_pregnancy_weight(
    language: str, value: str, message: str
) -> None:
    with translation.override(language):
        form = VisitForm(data={"visit_date": "2026-03-02", "pre_pregnancy_weight": value})
        assert not form.is_valid()
        assert form.errors["pre_pregnancy_weight"] == [message]


def test_the_form_refuses_a_height_no_woman_has() -> None:
    with translation.override("en"):
        form = VisitForm(data={"visit_date": "2026-03-02", "height": "15.8"})
        assert not form.is_valid()
    assert form.errors["height"] == [
        "15.8 cm is not possible for Body height (possible: 60–220 cm)."
    ]


def test_unusual_values_are_warned_about_not_refused() -> None:
    # 38 kg at 160 cm is a BMI of 14.8; 25 kg more now than before the
    # pregnancy is unusual; a height of 125 cm too. Possible, so only warned.
    form = VisitForm(
        data={
            "visit_date": "2026-03-02",
            "weight": "63.0",
            "pre_pregnancy_weight": "38.0",
            "height": "160.0",
        }
    )
    assert form.is_valid(), form.errors
    with translation.override("en"):
        found = prenatal.visit_warnings(form.visit)
    assert [w.field for w in found] == ["pre_pregnancy_weight", "pre_pregnancy_weight"]
    assert "BMI would be 14.8" in found[0].message
    assert "+25.0 kg" in found[1].message
    short = prenatal.visit_warnings(
        prenatal.Visit(visit_date=date(2026, 3, 2), height=Decimal("125.0")),
        known_pre_pregnancy_weight=Decimal("45.0"),
    )
    assert [w.field for w in short] == ["height"]
    # The values recorded before are used, and an ordinary entry warns of nothing.
    assert (
        prenatal.visit_warnings(
            prenatal.Visit(visit_date=date(2026, 3, 2), pre_pregnancy_weight=Decimal("52.0")),
            previous_weight=(date(2026, 2, 2), Decimal("55.0")),
            known_height=Decimal("158.0"),
        )
        == []
    )


# --------------------------------------------------------------------------
# Through the pages, as clinic staff with MFA
# --------------------------------------------------------------------------


def test_entered_at_a_visit_it_raises_the_weight_gain_flag_on_the_patient_page(
    clinician: Any, mother_patient: Any, shared: Any, due: date
) -> None:
    client = client_for(clinician)
    # The first visit: 50 kg before, 160 cm (BMI 19.5: the 10–13 kg band),
    # 56 kg now — within the band so far.
    enter_visit(
        client,
        mother_patient,
        visit_date=(today() - timedelta(weeks=14)).isoformat(),
        due_date=due.isoformat(),
        weight="56.0",
        pre_pregnancy_weight="50.0",
        height="160.0",
    )
    with translation.override("en"):
        text = client.get(page_url(mother_patient), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "50.0 kg (BMI 19.5)" in text
    assert "Weight gain above the recommended range" not in text
    assert "not above the recommended range" in text
    # Today's visit states only the weight: 66 kg, 16 kg gained.
    with translation.override("en"):
        form_page = client.get(visit_url(mother_patient), HTTP_ACCEPT_LANGUAGE="en")
    shown = form_page.content.decode()
    assert "pre-pregnancy weight 50.0 kg" in shown  # shown, not asked again
    assert "height 160.0 cm" in shown
    enter_visit(client, mother_patient, due_date=due.isoformat(), weight="66.0")
    with translation.override("en"):
        text = client.get(page_url(mother_patient), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "Weight gain above the recommended range" in text
    assert "+16.0 kg gained; guidance for BMI 19.5: 10–13 kg" in text
    with translation.override("ja"):
        text = client.get(page_url(mother_patient), HTTP_ACCEPT_LANGUAGE="ja").content.decode()
    assert "体重増加が目安を超えています" in text
    # Stored once each, as valid FHIR Observations with LOINC and UCUM.
    [before] = records_of(mother_patient, PRE_PREGNANCY)
    [height] = records_of(mother_patient, HEIGHT)
    for row, unit in ((before, "kg"), (height, "cm")):
        assert row.category == Category.PRENATAL_CHECKUPS
        assert row.content["valueQuantity"]["system"] == UCUM
        assert row.content["valueQuantity"]["code"] == unit
        assert row.content["encounter"]["reference"].startswith("Encounter/")
        Observation.model_validate(row.content)
    assert before.content["code"]["coding"][0] == {
        "system": LOINC,
        "code": "56077-1",
        "display": "Body weight before this pregnancy",
    }


def test_an_impossible_value_is_refused_with_its_message_and_nothing_is_written(
    clinician: Any, mother_patient: Any, shared: Any, due: date
) -> None:
    client = client_for(clinician)
    before = Resource.objects.count()
    for language, value, message in (
        ("ja", "5", "妊娠前体重として 5 kg はありえない値です"),
        ("en", "400", "400 kg is not possible for Body weight before this pregnancy"),
    ):
        response = client.post(
            visit_url(mother_patient),
            {
                "visit_date": today().isoformat(),
                "due_date": due.isoformat(),
                "weight": "58.0",
                "pre_pregnancy_weight": value,
            },
            HTTP_ACCEPT_LANGUAGE=language,
        )
        assert response.status_code == 400
        assert message in response.content.decode()
    # The service refuses it too, whoever builds the visit.
    with translation.override("en"), pytest.raises(ValidationError) as refused:
        services.prenatal_visit_record(
            user=clinician,
            patient=mother_patient,
            data=prenatal.Visit(visit_date=today(), pre_pregnancy_weight=Decimal(5)),
        )
    assert "5 kg is not possible" in refused.value.message_dict["pre_pregnancy_weight"][0]
    assert Resource.objects.count() == before
    assert not records_of(mother_patient, PRE_PREGNANCY)


def test_an_unusual_value_is_shown_on_the_confirmation_page_then_saved(
    clinician: Any, mother_patient: Any, shared: Any, due: date
) -> None:
    client = client_for(clinician)
    response = enter_visit(
        client,
        mother_patient,
        due_date=due.isoformat(),
        weight="80.0",
        pre_pregnancy_weight="55.0",
        height="158.0",
    )
    assert [w.field for w in response.context["warnings"]] == ["pre_pregnancy_weight"]
    assert "+25.0 kg" in response.content.decode()
    assert records_of(mother_patient, PRE_PREGNANCY)


def test_a_pre_pregnancy_weight_of_an_earlier_pregnancy_is_not_used(
    clinician: Any, mother_patient: Any, shared: Any, due: date
) -> None:
    # Recorded 16 months ago (an earlier pregnancy, no due date then): not
    # the start of this one, so no flag, though 90 kg now would be far above.
    services.prenatal_visit_record(
        user=clinician,
        patient=mother_patient,
        data=prenatal.Visit(
            visit_date=today() - timedelta(days=480),
            pre_pregnancy_weight=Decimal("50.0"),
            height=Decimal("160.0"),
        ),
    )
    services.prenatal_visit_record(
        user=clinician,
        patient=mother_patient,
        data=prenatal.Visit(visit_date=today(), due_date=due, weight=Decimal("90.0")),
    )
    page = selectors.patient_page(user=clinician, patient=mother_patient, today=today())
    assert page.facts.pre_pregnancy.weight is None
    assert page.facts.pre_pregnancy.height == Decimal("160.0")  # a height stays a height
    assert not [f for f in page.facts.risk if f.code.startswith("weight_gain")]
    facts = services.pregnancy_facts(user=clinician, patient=mother_patient)
    assert facts.pre_pregnancy_weight is None
    assert facts.height is not None
