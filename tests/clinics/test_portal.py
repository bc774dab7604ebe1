"""The clinic portal (/clinic/): the patients who share with the clinic,
a patient's page with only the granted categories (for a pregnancy the
flowsheet, charts, standard schedule and risk flags), and the clinic's API
tokens — persona by persona; and the risk flags, visits and schedule as
functions of synthetic visits."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.cache import cache
from django.http import HttpResponse
from django.test import Client
from django.urls import reverse
from django.utils import timezone, translation

from clinics import charts, flags, selectors
from clinics.flags import VisitMeasures, dipstick_grade, risk_flags
from clinics.reference import schedule_bands, weight_gain_bands
from phr import services, store, terminology
from phr.models import ApiToken, AuditEvent, Provenance
from phr.selectors import JAPAN
from phr.terminology import CATEGORY_SYSTEM, UCUM, Category
from sharing.models import ConsentPurpose
from sharing.services import consent_grant, consent_revoke, dv_block_set
from tests import factories as f
from tests.totp import code_for_user

pytestmark = pytest.mark.django_db

PORTAL = "/clinic/"
TOKENS = "/clinic/tokens/"
URINE_DIPSTICK = "https://hagukumi.jp/fhir/CodeSystem/urine-dipstick"


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


def today() -> date:
    return timezone.localdate(timezone=JAPAN)


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def totp_code(user: Any) -> str:
    return code_for_user(user)


def fresh_client(user: Any) -> Client:
    """A client whose user just confirmed the authenticator code (what
    sensitive_action asks of staff)."""
    client = client_for(user)
    response = client.post(reverse("mfa_reauthenticate"), {"code": totp_code(user)})
    assert response.status_code == 302, response.content
    return client


def text(response: HttpResponse) -> str:
    return response.content.decode()


def without_csrf(html: str) -> str:
    return re.sub(r'"X-CSRFToken": "[^"]+"', "", re.sub(r'value="[^"]{40,}"', "", html))


def ja(message: Any) -> str:
    """A message as the pages show it by default (Japanese)."""
    with translation.override("ja"):
        return translation.gettext(message) if isinstance(message, str) else str(message)


def share(mother: Any, patient: Any, clinic: Any, *categories: str, **extra: Any) -> Any:
    return consent_grant(
        patient=patient,
        by=mother,
        purpose=ConsentPurpose.CARE,
        categories=list(categories) or [Category.PREGNANCY, Category.PRENATAL_CHECKUPS],
        grantee_org=clinic,
        **extra,
    )


# --------------------------------------------------------------------------
# A pregnancy in the record store, shaped as phr/demo.py writes one
# --------------------------------------------------------------------------


def _tag(category: str) -> dict[str, Any]:
    return {"tag": [{"system": CATEGORY_SYSTEM, "code": category}]}


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


class Writer:
    """Writes a patient's pregnancy records with one provenance (a clinic
    other than the portal's own unless told, so that only consents decide
    what the portal's clinic sees)."""

    def __init__(self, patient: Any, organization: Any = None) -> None:
        self.patient = patient
        self.provenance = services.provenance_create(
            origin=Provenance.Origin.CLINIC if organization else Provenance.Origin.SYSTEM,
            organization=organization,
        )

    def write(self, resource: dict[str, Any]) -> uuid.UUID:
        rid, _, _ = store.record_write(resource, provenance=self.provenance)
        return rid

    def pregnancy(self, due: date) -> uuid.UUID:
        self.write(
            {
                "resourceType": "Observation",
                "meta": _tag(Category.PREGNANCY),
                "status": "final",
                "code": {"coding": [terminology.item("edd").coding]},
                "subject": {"reference": f"Patient/{self.patient.pk}"},
                "effectiveDateTime": (due - timedelta(days=280 - 70)).isoformat(),
                "valueDateTime": due.isoformat(),
            }
        )
        return self.write(
            {
                "resourceType": "EpisodeOfCare",
                "meta": _tag(Category.PREGNANCY),
                "status": "active",
                "type": [{"text": "妊娠"}],
                "patient": {"reference": f"Patient/{self.patient.pk}"},
                "period": {"start": (due - timedelta(days=280)).isoformat()},
            }
        )

    def observation(
        self, key: str, day: date, encounter: uuid.UUID | None = None, **value: Any
    ) -> uuid.UUID:
        resource: dict[str, Any] = {
            "resourceType": "Observation",
            "meta": _tag(Category.PRENATAL_CHECKUPS),
            "status": "final",
            "code": {"coding": [terminology.item(key).coding]},
            "subject": {"reference": f"Patient/{self.patient.pk}"},
            "effectiveDateTime": day.isoformat(),
            **value,
        }
        if encounter is not None:
            resource["encounter"] = {"reference": f"Encounter/{encounter}"}
        return self.write(resource)

    def visit(
        self,
        day: date,
        *,
        bp: tuple[int, int] | None = None,
        weight: float | None = None,
        protein: str | None = None,
        fundal: float | None = None,
        with_encounter: bool = True,
    ) -> uuid.UUID | None:
        encounter = None
        if with_encounter:
            encounter = self.write(
                {
                    "resourceType": "Encounter",
                    "meta": _tag(Category.PRENATAL_CHECKUPS),
                    "status": "finished",
                    "class": {"code": "AMB"},
                    "type": [{"text": "妊婦健康診査"}],
                    "subject": {"reference": f"Patient/{self.patient.pk}"},
                    "period": {"start": day.isoformat(), "end": day.isoformat()},
                }
            )
        if bp is not None:
            self.observation(
                "bp_panel",
                day,
                encounter,
                component=[
                    {
                        "code": {"coding": [terminology.item("bp_systolic").coding]},
                        "valueQuantity": _quantity(bp[0], "mm[Hg]"),
                    },
                    {
                        "code": {"coding": [terminology.item("bp_diastolic").coding]},
                        "valueQuantity": _quantity(bp[1], "mm[Hg]"),
                    },
                ],
            )
        if weight is not None:
            self.observation("body_weight", day, encounter, valueQuantity=_quantity(weight, "kg"))
        if protein is not None:
            self.observation(
                "urine_protein",
                day,
                encounter,
                valueCodeableConcept={
                    "coding": [{"system": URINE_DIPSTICK, "code": protein, "display": protein}],
                    "text": protein,
                },
            )
        if fundal is not None:
            self.observation("fundal_height", day, encounter, valueQuantity=_quantity(fundal, "cm"))
        return encounter


@pytest.fixture
def mother_patient(mother: Any, municipality: Any) -> Any:
    from phr.models import Patient

    resource = services.patient_resource(
        family="前橋",
        given="花子",
        family_kana="マエバシ",
        given_kana="ハナコ",
        birth_date=date(1995, 4, 1),
        gender="female",
    )
    provenance = services.provenance_create(origin=Provenance.Origin.SYSTEM)
    patient = services.patient_create(
        kind=Patient.Kind.ADULT, resource=resource, provenance=provenance, account=mother
    )
    services.residency_add(patient=patient, municipality=municipality, resident_number="M-1")
    return patient


@pytest.fixture
def due() -> date:
    """A due date that makes today 30 weeks 0 days."""
    return today() + timedelta(days=70)


@pytest.fixture
def pregnancy(mother_patient: Any, due: date) -> Writer:
    """Three visits at 22, 26 and 28 weeks: the last two hypertensive, the
    last one with proteinuria 2+."""
    writer = Writer(mother_patient)
    writer.pregnancy(due)
    lmp = due - timedelta(days=280)
    writer.visit(lmp + timedelta(weeks=22), bp=(118, 72), weight=56.0, protein="negative")
    writer.visit(lmp + timedelta(weeks=26), bp=(142, 88), weight=57.5, protein="1+", fundal=24)
    writer.visit(lmp + timedelta(weeks=28, days=3), bp=(138, 92), weight=58.2, protein="2+")
    return writer


@pytest.fixture
def shared(mother: Any, mother_patient: Any, clinic: Any) -> Any:
    return share(mother, mother_patient, clinic)


# --------------------------------------------------------------------------
# Risk flags (pure)
# --------------------------------------------------------------------------


def v(day: int, bp: tuple[int, int] | None = None, protein: int | None = None, **kw: Any) -> Any:
    return VisitMeasures(
        day=date(2026, 1, 1) + timedelta(weeks=day),
        systolic=Decimal(bp[0]) if bp else None,
        diastolic=Decimal(bp[1]) if bp else None,
        urine_protein=protein,
        **kw,
    )


def codes(found: list[flags.RiskFlag]) -> list[str]:
    return [flag.code for flag in found]


def test_normal_visits_raise_no_flag() -> None:
    assert risk_flags([v(0, (118, 70), 0), v(4, (124, 80), 0), v(8, (130, 84))]) == []


def test_one_hypertensive_visit_is_not_yet_a_flag_but_two_are() -> None:
    # JSOG/JSSHP: ≥140 and/or ≥90; one reading can be the white coat.
    assert risk_flags([v(0, (142, 80)), v(4, (130, 84))]) == []
    found = risk_flags([v(4, (130, 92)), v(0, (142, 80)), v(8, (120, 70))])
    assert codes(found) == ["hypertension"]
    assert found[0].days == (date(2026, 1, 1), date(2026, 1, 29))
    assert found[0].severity == "danger"
    assert "142/80" in found[0].detail
    assert "130/92" in found[0].detail


def test_a_diastolic_of_90_alone_counts_and_89_does_not() -> None:
    assert codes(risk_flags([v(0, (120, 90)), v(2, (120, 90))])) == ["hypertension"]
    assert risk_flags([v(0, (139, 89)), v(2, (139, 89))]) == []


def test_one_visit_in_the_severe_range_is_enough() -> None:
    for bp in ((160, 90), (150, 110)):
        found = risk_flags([v(0, bp), v(4, (141, 91))])
        assert codes(found) == ["hypertension_severe"]  # the plain flag is implied
        assert found[0].days == (date(2026, 1, 1),)


def test_proteinuria_of_2_plus_once_or_1_plus_twice() -> None:
    assert codes(risk_flags([v(0, protein=2)])) == ["proteinuria"]
    assert codes(risk_flags([v(0, protein=3), v(2, protein=1)])) == ["proteinuria"]
    assert risk_flags([v(0, protein=1), v(2, protein=0)]) == []
    found = risk_flags([v(0, protein=1), v(2, protein=0), v(4, protein=1)])
    assert codes(found) == ["proteinuria_repeated"]
    assert found[0].severity == "warning"


def test_flags_come_most_serious_first() -> None:
    found = risk_flags([v(0, (150, 95), 1), v(2, (145, 92), 1)])
    assert codes(found) == ["hypertension", "proteinuria_repeated"]


@pytest.mark.parametrize(
    ("written", "grade"),
    [
        ("negative", 0),
        ("trace", 0),
        ("±", 0),
        ("−", 0),
        ("陰性", 0),
        ("1+", 1),
        ("+", 1),
        ("2+", 2),
        ("++", 2),
        ("＋＋", 2),  # full width, as typed in Japanese
        ("(3+)", 3),
        (" 4+ ", 4),
        ("", None),
        (None, None),
        ("many", None),
    ],
)
def test_it_reads_test_strip_results(written: str | None, grade: int | None) -> None:
    assert dipstick_grade(written) == grade


def test_weight_gain_outside_the_jsog_2021_band() -> None:
    # 普通体重 (18.5 ≤ BMI < 25): 10–13 kg over the whole pregnancy.
    def weighed(kg: float, weeks: int) -> list[VisitMeasures]:
        return [v(weeks, weight=Decimal(str(kg)), gestation_days=weeks * 7)]

    normal = {"pre_pregnancy_weight": Decimal(50), "pre_pregnancy_bmi": Decimal("21.0")}
    assert codes(risk_flags(weighed(64.5, 34), **normal)) == ["weight_gain_high"]
    assert risk_flags(weighed(62.0, 34), **normal) == []
    # Below the band only counts at term, when the total is reached.
    assert risk_flags(weighed(57.0, 30), **normal) == []
    assert codes(risk_flags(weighed(57.0, 38), **normal)) == ["weight_gain_low"]
    # 肥満2度以上: up to about 5 kg, no lower bound.
    obese = {"pre_pregnancy_weight": Decimal(85), "pre_pregnancy_bmi": Decimal("31.2")}
    assert codes(risk_flags(weighed(90.5, 30), **obese)) == ["weight_gain_high"]
    assert risk_flags(weighed(85.5, 39), **obese) == []
    # Without the pre-pregnancy BMI there is no band to compare with.
    assert risk_flags(weighed(80.0, 38), pre_pregnancy_weight=Decimal(50)) == []


def test_the_reference_tables_load_as_published() -> None:
    bands = [(b.start, b.end, b.interval) for b in schedule_bands()]
    assert bands == [(8, 23, 4), (24, 35, 2), (36, 40, 1)]
    jsog = {(b.bmi_min, b.bmi_max): (b.gain_min, b.gain_max) for b in weight_gain_bands()}
    assert jsog[(None, Decimal("18.5"))] == (Decimal(12), Decimal(15))
    assert jsog[(Decimal("30.0"), None)] == (None, Decimal(5))


# --------------------------------------------------------------------------
# Visits, flowsheet, schedule and charts from stored records
# --------------------------------------------------------------------------


def _visits(user: Any, patient: Any) -> list[selectors.Visit]:
    page = selectors.patient_page(user=user, patient=patient, today=today())
    return page.facts.visits


def test_it_reads_visits_linked_to_encounters_and_bare_observations_by_day(
    clinician: Any, shared: Any, pregnancy: Writer, due: date
) -> None:
    lmp = due - timedelta(days=280)
    # A clinic system that sends only Observations: they make a visit of
    # their day; a later weight that day corrects the first. (Written in
    # one test transaction, both rows have the same last_updated: the
    # times of day order them.)
    bare = lmp + timedelta(weeks=29)
    for time, weight in (("09:00", 58.0), ("11:30", 58.4)):
        pregnancy.observation(
            "body_weight",
            bare,
            effectiveDateTime=f"{bare.isoformat()}T{time}:00+09:00",
            valueQuantity=_quantity(weight, "kg"),
        )
    # A home weight (vitals) is not a prenatal visit.
    f.write_observation(pregnancy.patient, when=(bare + timedelta(days=1)).isoformat(), value=59)
    visits = _visits(clinician, pregnancy.patient)
    assert [x.day for x in visits] == [
        lmp + timedelta(weeks=22),
        lmp + timedelta(weeks=26),
        lmp + timedelta(weeks=28, days=3),
        bare,
    ]
    assert [x.gestation_days for x in visits] == [154, 182, 199, 203]
    assert visits[1].blood_pressure == "142/88"
    assert visits[1].values["fundal_height"].text == "24"
    assert visits[2].values["urine_protein"].grade == 2
    assert visits[3].values["body_weight"].number == Decimal("58.4")


def test_visits_of_an_earlier_pregnancy_stay_out(
    clinician: Any, shared: Any, pregnancy: Writer, due: date
) -> None:
    pregnancy.visit(due - timedelta(days=400), bp=(150, 100), weight=50.0)
    visits = _visits(clinician, pregnancy.patient)
    assert len(visits) == 3
    assert all(x.day >= due - timedelta(days=280) for x in visits)


def test_the_flowsheet_has_items_as_rows_and_visits_as_columns(
    clinician: Any, shared: Any, pregnancy: Writer
) -> None:
    rows = {row.key: row for row in selectors.flowsheet(_visits(clinician, pregnancy.patient))}
    assert list(rows)[:6] == [
        "bp",
        "body_weight",
        "urine_protein",
        "urine_glucose",
        "fundal_height",
        "abdominal_circumference",
    ]
    assert [c.text for c in rows["bp"].cells] == ["118/72", "142/88", "138/92"]
    assert [c.alert for c in rows["bp"].cells] == [False, True, True]
    assert [c.text for c in rows["body_weight"].cells] == ["56", "57.5", "58.2"]
    assert rows["body_weight"].unit == "kg"
    assert [c.alert for c in rows["urine_protein"].cells] == [False, False, True]
    assert [c.text for c in rows["fundal_height"].cells] == ["", "24", ""]


def _slots(due: date, on: date, *weeks: int) -> dict[tuple[int, int], str]:
    lmp = due - timedelta(days=280)
    visits = [selectors.Visit(day=lmp + timedelta(weeks=w), gestation_days=w * 7) for w in weeks]
    found = selectors.schedule(due_date=due, visits=visits, today=on)
    return {(s.first_week, s.last_week): s.status for s in found.slots}


def test_the_standard_schedule_counts_visits_done_and_due() -> None:
    due = date(2027, 4, 15)
    lmp = due - timedelta(days=280)
    slots = _slots(due, lmp + timedelta(weeks=25, days=2), 6, 13, 21, 24)
    # Every 4 weeks to 23, every 2 weeks 24–35, weekly 36–40: 15 windows.
    assert len(slots) == 15
    assert slots[(8, 11)] == "done"  # the 6-week visit counts for the first window
    assert slots[(12, 15)] == "done"
    assert slots[(16, 19)] == "missed"
    assert slots[(20, 23)] == "done"
    assert slots[(24, 25)] == "done"
    assert slots[(26, 27)] == "upcoming"
    assert slots[(36, 36)] == "upcoming"
    assert slots[(40, 40)] == "upcoming"
    now = _slots(due, lmp + timedelta(weeks=27), 24)
    assert now[(26, 27)] == "due"


def test_the_schedule_gives_dates_and_the_next_window() -> None:
    due = date(2027, 4, 15)
    lmp = due - timedelta(days=280)
    found = selectors.schedule(due_date=due, visits=[], today=lmp + timedelta(weeks=30, days=1))
    following = found.next_slot
    assert following is not None
    assert (following.first_week, following.last_week) == (30, 31)
    assert following.starts_on == lmp + timedelta(weeks=30)
    assert following.ends_on == lmp + timedelta(weeks=32, days=-1)


def test_the_charts_put_visits_at_their_week_with_the_thresholds(
    clinician: Any, shared: Any, pregnancy: Writer
) -> None:
    visits = _visits(clinician, pregnancy.patient)
    chart = charts.blood_pressure_chart(visits)
    assert [len(line.points) for line in chart.lines] == [3, 3]
    assert {r.label for r in chart.rules if r.label} == {"140", "90", "160", "110"}
    # Higher pressure is drawn higher (smaller y), later visits further right.
    systolic = chart.lines[0].points
    assert systolic[1].y < systolic[0].y
    assert systolic[0].x < systolic[1].x < systolic[2].x
    assert "142" in systolic[1].title
    weight = charts.weight_chart(visits)
    titles = [p.title.split(": ")[1] for p in weight.lines[0].points]
    assert titles == ["56 kg", "57.5 kg", "58.2 kg"]


# --------------------------------------------------------------------------
# The list
# --------------------------------------------------------------------------


def listed(response: HttpResponse, *names: str) -> list[str]:
    body = text(response)
    return [name for name in names if name in body]


def test_it_lists_exactly_the_patients_who_share_with_the_clinic(
    client: Client,
    mother: Any,
    mother_patient: Any,
    child: Any,
    clinic: Any,
    other_clinic: Any,
    clinician: Any,
    unconsented_clinician: Any,
    pregnancy: Writer,
) -> None:
    share(mother, mother_patient, clinic)
    share(mother, child, other_clinic, Category.VACCINATIONS)
    response = client_for(clinician).get(PORTAL)
    assert response.status_code == 200
    names = listed(response, "前橋 花子", "マエバシ ハナコ", "はる")
    assert names == ["前橋 花子", "マエバシ ハナコ"]
    body = text(response)
    assert "1995/04/01" in body
    due = today() + timedelta(days=70)
    assert due.strftime("%Y/%m/%d") in body
    assert "30週0日" in body  # gestational age today, 週+日
    # The flags of the visits: hypertension at two visits, proteinuria 2+.
    assert ja(flags.FLAG_LABELS["hypertension"]) in body
    assert ja(flags.FLAG_LABELS["proteinuria"]) in body
    other = client_for(unconsented_clinician).get(PORTAL)
    assert listed(other, "前橋 花子", "はる") == ["はる"]


def test_a_revoked_or_expired_consent_takes_the_patient_off_the_list(
    mother: Any, mother_patient: Any, clinic: Any, clinician: Any
) -> None:
    consent = share(mother, mother_patient, clinic)
    assert listed(client_for(clinician).get(PORTAL), "前橋 花子")
    consent_revoke(consent=consent, by=mother)
    assert not listed(client_for(clinician).get(PORTAL), "前橋 花子")
    now = timezone.now()
    share(
        mother,
        mother_patient,
        clinic,
        starts_at=now - timedelta(days=30),
        ends_at=now - timedelta(seconds=1),
    )
    assert not listed(client_for(clinician).get(PORTAL), "前橋 花子")


def test_a_dv_block_hides_the_patient_from_a_blocked_clinician(
    mother: Any, mother_patient: Any, clinic: Any, clinician: Any, municipal_officer: Any
) -> None:
    share(mother, mother_patient, clinic)
    dv_block_set(patient=mother_patient, blocked_user=clinician, by=municipal_officer)
    assert not listed(client_for(clinician).get(PORTAL), "前橋 花子")
    response = client_for(clinician).get(f"{PORTAL}patients/{mother_patient.pk}/")
    assert response.status_code == 404


def test_it_lists_patients_whose_records_the_clinic_submitted(
    mother_patient: Any, clinic: Any, clinician: Any, due: date
) -> None:
    # No consent: the clinic sees what it submitted itself, and not her
    # name (the Patient record came from elsewhere).
    Writer(mother_patient, clinic).pregnancy(due)
    response = client_for(clinician).get(PORTAL)
    body = text(response)
    assert "前橋 花子" not in body
    assert str(mother_patient.pk) in body
    assert due.strftime("%Y/%m/%d") in body


@pytest.mark.parametrize(
    "query",
    ["前橋花子", "花子", "はなこ", "ﾏｴﾊﾞｼ", "まえばし はなこ", "1995-04-01", "19950401", "H7.4.1"],
)
def test_it_finds_a_patient_by_name_kana_or_birth_date(
    mother: Any, mother_patient: Any, child: Any, clinic: Any, clinician: Any, query: str
) -> None:
    share(mother, mother_patient, clinic)
    share(mother, child, clinic, Category.VACCINATIONS)
    response = client_for(clinician).get(PORTAL, {"q": query})
    assert listed(response, "前橋 花子", "はる") == ["前橋 花子"]


def test_a_search_that_matches_no_one_shows_no_one(
    mother: Any, mother_patient: Any, clinic: Any, clinician: Any
) -> None:
    share(mother, mother_patient, clinic)
    response = client_for(clinician).get(PORTAL, {"q": "2001-01-01"})
    assert not listed(response, "前橋 花子")
    assert ja("No patient of this clinic matches the search.") in text(response)


def test_htmx_gets_the_results_only(
    mother: Any, mother_patient: Any, clinic: Any, clinician: Any
) -> None:
    share(mother, mother_patient, clinic)
    response = client_for(clinician).get(PORTAL, {"q": "花子"}, HTTP_HX_REQUEST="true")
    body = text(response)
    assert "前橋 花子" in body
    assert "<html" not in body
    assert "HX-Request" in response["Vary"]


def test_the_list_writes_one_audit_row_per_patient_shown(
    mother: Any, mother_patient: Any, child: Any, clinic: Any, clinician: Any
) -> None:
    share(mother, mother_patient, clinic)
    share(mother, child, clinic, Category.VACCINATIONS)
    client_for(clinician).get(PORTAL)
    rows = AuditEvent.objects.filter(action="view.clinic_patients", actor_id=clinician.pk)
    assert sorted(str(r.patient_id) for r in rows) == sorted(
        [str(mother_patient.pk), str(child.pk)]
    )
    assert {r.purpose for r in rows} == {"care"}
    assert {r.detail["rule"] for r in rows} == {"consent"}


@pytest.mark.parametrize(
    "persona", ["mother", "stranger", "municipal_officer", "responder", "researcher"]
)
def test_everyone_but_clinic_staff_gets_404(persona: str, request: pytest.FixtureRequest) -> None:
    user = request.getfixturevalue(persona)
    client = client_for(user)
    for url in (PORTAL, TOKENS, f"{PORTAL}patients/{uuid.uuid4()}/"):
        assert client.get(url).status_code == 404, url
    assert client.post(f"{TOKENS}create/", {"name": "x", "lifetime": "30"}).status_code == 404


def test_clinic_staff_without_mfa_are_sent_to_set_it_up(clinic: Any) -> None:
    user = f.make_member(f.Role.CLINIC_STAFF, clinic, mfa=False)
    response = client_for(user).get(PORTAL)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/2fa/totp/activate/")


def test_anonymous_visitors_go_to_the_login_page(client: Client) -> None:
    response = client.get(PORTAL)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_the_staff_home_page_links_the_portal_for_clinic_staff(clinician: Any) -> None:
    body = text(client_for(clinician).get("/"))
    assert 'href="/clinic/"' in body


# --------------------------------------------------------------------------
# The patient page
# --------------------------------------------------------------------------


def page_url(patient: Any) -> str:
    return f"{PORTAL}patients/{patient.pk}/"


def test_the_patient_page_shows_the_granted_categories_only(
    mother: Any, mother_patient: Any, clinic: Any, clinician: Any, pregnancy: Writer
) -> None:
    share(mother, mother_patient, clinic, Category.PRENATAL_CHECKUPS)
    pregnancy.write(
        {
            "resourceType": "Immunization",
            "status": "completed",
            "vaccineCode": {"text": "mk-vaccine-influenza"},
            "patient": {"reference": f"Patient/{mother_patient.pk}"},
            "occurrenceDateTime": "2026-10-01",
        }
    )
    response = client_for(clinician).get(page_url(mother_patient))
    assert response.status_code == 200
    body = text(response)
    assert "前橋 花子" in body
    assert "mk-vaccine-influenza" not in body  # vaccinations: not shared
    assert "142/88" in body  # prenatal checkups: shared
    # Pregnancy (the episode and the due date) is not shared: no due date.
    assert (today() + timedelta(days=70)).strftime("%Y/%m/%d") not in body
    access = {c.code: c for c in selectors.category_access(clinician, mother_patient) if c.shared}
    assert set(access) == {Category.PRENATAL_CHECKUPS}
    assert body.count('class="not-shared"') == len(Category.values) - 1


def test_the_patient_page_says_until_when_a_category_is_shared(
    mother: Any, mother_patient: Any, clinic: Any, clinician: Any
) -> None:
    ends = timezone.now() + timedelta(days=30)
    share(mother, mother_patient, clinic, Category.PRENATAL_CHECKUPS, ends_at=ends)
    body = text(client_for(clinician).get(page_url(mother_patient)))
    last_day = timezone.localtime(ends - timedelta(microseconds=1), JAPAN).date()
    assert last_day.strftime("%Y/%m/%d") in body


def test_the_pregnancy_section_has_the_flowsheet_charts_schedule_and_flags(
    clinician: Any, shared: Any, pregnancy: Writer, due: date
) -> None:
    response = client_for(clinician).get(page_url(pregnancy.patient))
    body = text(response)
    assert response.status_code == 200
    assert due.strftime("%Y/%m/%d") in body
    assert "30週0日" in body
    assert 'class="flowsheet"' in body
    assert body.count('<th scope="col"><time') == 3  # one column per visit
    assert "22週0日" in body
    assert "28週3日" in body
    assert '<td class="alert">138/92' in body
    assert body.count("<svg") == 2
    assert 'class="rule threshold severe"' in body
    assert ja(flags.FLAG_LABELS["hypertension"]) in body
    assert ja(flags.FLAG_LABELS["proteinuria"]) in body
    assert 'class="schedule"' in body
    # Links to the visit entry and the delivery pages.
    assert f"/clinic/patients/{pregnancy.patient.pk}/visits/new/" in body
    assert f"/clinic/patients/{pregnancy.patient.pk}/delivery/" in body


def test_a_flag_record_shows_with_the_computed_flags(
    mother: Any, mother_patient: Any, clinic: Any, clinician: Any
) -> None:
    share(mother, mother_patient, clinic, Category.PRENATAL_CHECKUPS, Category.PREGNANCY)
    Writer(mother_patient).write(
        {
            "resourceType": "Flag",
            "meta": _tag(Category.PRENATAL_CHECKUPS),
            "status": "active",
            "code": {"text": "mk-flag-placenta-praevia"},
            "subject": {"reference": f"Patient/{mother_patient.pk}"},
        }
    )
    assert "mk-flag-placenta-praevia" in text(client_for(clinician).get(PORTAL))
    assert "mk-flag-placenta-praevia" in text(client_for(clinician).get(page_url(mother_patient)))


def test_another_clinic_or_an_unknown_id_gets_the_same_404(
    mother: Any,
    mother_patient: Any,
    clinic: Any,
    clinician: Any,
    unconsented_clinician: Any,
    pregnancy: Writer,
) -> None:
    share(mother, mother_patient, clinic)
    other = client_for(unconsented_clinician)
    withheld = other.get(page_url(mother_patient))
    missing = other.get(f"{PORTAL}patients/{uuid.uuid4()}/")
    assert withheld.status_code == missing.status_code == 404
    assert without_csrf(text(withheld)) == without_csrf(text(missing))
    assert "前橋" not in text(withheld)
    denied = AuditEvent.objects.filter(actor_id=unconsented_clinician.pk, outcome="denied")
    assert [str(e.patient_id) for e in denied] == [str(mother_patient.pk)]


def test_a_consent_that_ends_closes_the_page(
    mother: Any, mother_patient: Any, clinic: Any, clinician: Any
) -> None:
    consent = share(mother, mother_patient, clinic)
    client = client_for(clinician)
    assert client.get(page_url(mother_patient)).status_code == 200
    consent_revoke(consent=consent, by=mother)
    assert client.get(page_url(mother_patient)).status_code == 404


def test_the_patient_page_is_audited_with_the_consent(
    mother: Any, mother_patient: Any, clinic: Any, clinician: Any
) -> None:
    consent = share(mother, mother_patient, clinic)
    client_for(clinician).get(page_url(mother_patient))
    event = AuditEvent.objects.get(action="view.clinic_patient", actor_id=clinician.pk)
    assert event.patient_id == mother_patient.pk
    assert event.detail["consent"] == str(consent.pk)
    assert event.purpose == "care"
    assert event.organization_id == clinic.pk


def test_a_child_page_has_no_pregnancy_section(
    mother: Any, child: Any, clinic: Any, clinician: Any
) -> None:
    share(mother, child, clinic, Category.VACCINATIONS)
    body = text(client_for(clinician).get(page_url(child)))
    assert 'id="pregnancy-heading"' not in body
    assert "/visits/new/" not in body


# --------------------------------------------------------------------------
# API tokens
# --------------------------------------------------------------------------


def test_creating_a_token_asks_for_the_second_factor_again(clinician: Any) -> None:
    response = client_for(clinician).post(f"{TOKENS}create/", {"name": "EHR", "lifetime": "90"})
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("mfa_reauthenticate"))
    assert not ApiToken.objects.exists()


def test_a_token_is_shown_once_stored_hashed_and_scoped_to_the_clinic(
    clinician: Any, clinic: Any
) -> None:
    client = fresh_client(clinician)
    response = client.post(f"{TOKENS}create/", {"name": "電子カルテ", "lifetime": "90"})
    assert response.status_code == 302
    assert response["Location"] == TOKENS
    page = text(client.get(TOKENS))
    token = ApiToken.objects.get()
    secret = page.split('id="new-token" value="', 1)[1].split('"', 1)[0]
    assert secret.startswith(token.prefix)
    assert len(secret) > 30
    assert token.token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in (token.token_hash, token.prefix, token.name)
    assert token.organization == clinic
    assert token.user == clinician
    assert token.expires_at is not None
    assert (token.expires_at - token.created_at) == timedelta(days=90)
    # Shown once: the next visit lists the token, not its secret.
    again = text(client.get(TOKENS))
    assert secret not in again
    assert token.prefix in again
    assert "電子カルテ" in again
    event = AuditEvent.objects.get(action="api_token.create")
    assert event.actor_id == clinician.pk
    assert event.organization_id == clinic.pk
    assert secret not in str(event.detail)


def test_a_token_without_a_name_is_refused(clinician: Any) -> None:
    response = fresh_client(clinician).post(f"{TOKENS}create/", {"name": " ", "lifetime": "30"})
    assert response.status_code == 400
    assert not ApiToken.objects.exists()


def test_the_list_shows_when_a_token_was_last_used(clinician: Any, clinic: Any) -> None:
    client = fresh_client(clinician)
    client.post(f"{TOKENS}create/", {"name": "EHR", "lifetime": "0"})
    page = text(client.get(TOKENS))
    secret = page.split('id="new-token" value="', 1)[1].split('"', 1)[0]
    assert Client().get("/fhir/Observation", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == (
        200
    )
    token = ApiToken.objects.get()
    assert token.last_used_at is not None
    assert token.expires_at is None
    used = timezone.localtime(token.last_used_at, JAPAN).strftime("%Y/%m/%d %H:%M")
    assert used in text(client.get(TOKENS))


def test_revoking_a_token_stops_it_at_once(clinician: Any, clinic: Any) -> None:
    from clinics.tokens import clinic_token_create

    token, secret = clinic_token_create(clinic=clinic, by=clinician, name="EHR", lifetime_days=30)
    api = Client()
    assert api.get("/fhir/Observation", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 200
    response = client_for(clinician).post(f"{TOKENS}{token.pk}/revoke/")
    assert response.status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert api.get("/fhir/Observation", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 401
    assert AuditEvent.objects.filter(action="api_token.revoke", actor_id=clinician.pk).count() == 1
    # Revoking twice changes nothing.
    client_for(clinician).post(f"{TOKENS}{token.pk}/revoke/")
    assert AuditEvent.objects.filter(action="api_token.revoke").count() == 1


def test_another_clinics_token_cannot_be_seen_or_revoked(
    clinician: Any, clinic: Any, unconsented_clinician: Any
) -> None:
    from clinics.tokens import clinic_token_create

    token, _ = clinic_token_create(clinic=clinic, by=clinician, name="mk-token", lifetime_days=30)
    other = client_for(unconsented_clinician)
    assert "mk-token" not in text(other.get(TOKENS))
    assert other.post(f"{TOKENS}{token.pk}/revoke/").status_code == 404
    assert other.post(f"{TOKENS}999999/revoke/").status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None
    assert client_for(clinician).get(f"{TOKENS}{token.pk}/revoke/").status_code == 405


def test_a_colleague_sees_and_may_revoke_the_clinics_tokens(clinician: Any, clinic: Any) -> None:
    from clinics.tokens import clinic_token_create

    token, _ = clinic_token_create(clinic=clinic, by=clinician, name="mk-token", lifetime_days=30)
    colleague = f.make_member(f.Role.CLINIC_STAFF, clinic)
    assert "mk-token" in text(client_for(colleague).get(TOKENS))
    assert client_for(colleague).post(f"{TOKENS}{token.pk}/revoke/").status_code == 302


def test_token_pages_do_not_name_patients(
    mother: Any, mother_patient: Any, clinic: Any, clinician: Any
) -> None:
    share(mother, mother_patient, clinic)
    assert "前橋" not in text(client_for(clinician).get(TOKENS))
