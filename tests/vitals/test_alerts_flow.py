"""Vitals alerts end to end: a vitals write commits → vitals_written →
the alerts_evaluate task → a Flag in the record store; one Flag per
episode, idempotent re-evaluation; the family's alerts page and banner;
the clinic portal with and without a vitals consent; persona access."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.cache import cache
from django.template import Context, Template
from django.test import Client, RequestFactory
from django.utils import timezone, translation
from fhir.resources.R4B.flag import Flag

from phr import services, store, terminology
from phr.models import AuditEvent, Guardianship, Patient, Provenance, Resource, ResourceHistory
from phr.selectors import JAPAN
from phr.terminology import CATEGORY_SYSTEM, UCUM, Category
from sharing.models import ConsentPurpose
from sharing.services import consent_grant
from vitals import alerts, records
from vitals.alerts import ALERT_TOKENS

pytestmark = pytest.mark.django_db

LIST = "/vitals/alerts/"


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


def today() -> date:
    return timezone.localdate(timezone=JAPAN)


def days_ago(days: int, hour: int = 8) -> datetime:
    """A morning `days` days ago in Japan."""
    return datetime.combine(today() - timedelta(days=days), time(hour), tzinfo=JAPAN)


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def html(response: Any) -> str:
    return response.content.decode()


def ja(message: Any) -> str:
    """A message as the pages show it by default (Japanese)."""
    with translation.override("ja"):
        return translation.gettext(message) if isinstance(message, str) else str(message)


def _tag(category: str) -> dict[str, Any]:
    return {"tag": [{"system": CATEGORY_SYSTEM, "code": category}]}


def write_system(resource: dict[str, Any], organization: Any = None) -> uuid.UUID:
    provenance = services.provenance_create(
        origin=Provenance.Origin.CLINIC if organization else Provenance.Origin.SYSTEM,
        organization=organization,
    )
    rid, _, _ = store.record_write(resource, provenance=provenance)
    return rid


def pregnant(patient: Patient, *, weeks_today: int = 30) -> date:
    """An active pregnancy whose due date makes today `weeks_today` weeks."""
    due = today() + timedelta(days=280 - weeks_today * 7)
    write_system(
        {
            "resourceType": "Observation",
            "meta": _tag(Category.PREGNANCY),
            "status": "final",
            "code": {"coding": [terminology.item("edd").coding]},
            "subject": {"reference": f"Patient/{patient.pk}"},
            "effectiveDateTime": (due - timedelta(days=210)).isoformat(),
            "valueDateTime": due.isoformat(),
        }
    )
    write_system(
        {
            "resourceType": "EpisodeOfCare",
            "meta": _tag(Category.PREGNANCY),
            "status": "active",
            "type": [{"text": "妊娠"}],
            "patient": {"reference": f"Patient/{patient.pk}"},
            "period": {"start": (due - timedelta(days=280)).isoformat()},
        }
    )
    return due


def home_bp(
    user: Any, patient: Patient, when: datetime, systolic: int, diastolic: int
) -> uuid.UUID:
    """A blood pressure typed in by the mother, through the vitals service
    (which sends vitals_written on commit)."""
    written = records.vitals_write(
        user=user,
        patient=patient,
        readings=[
            records.reading(
                records.BLOOD_PRESSURE, systolic=systolic, diastolic=diastolic, taken_at=when
            )
        ],
    )
    return written[0].id


def home_weight(user: Any, patient: Patient, when: datetime, kg: str) -> uuid.UUID:
    written = records.vitals_write(
        user=user,
        patient=patient,
        readings=[records.reading(records.BODY_WEIGHT, Decimal(kg), taken_at=when)],
    )
    return written[0].id


def alert_flags(patient: Patient) -> list[Resource]:
    return list(
        Resource.objects.filter(
            resource_type="Flag", tokens__overlap=ALERT_TOKENS, compartments__overlap=[patient.pk]
        ).order_by("date_start")
    )


def evaluate(patient: Patient, now: datetime | None = None) -> alerts.EvaluationResult:
    return alerts.alerts_evaluate(patient_id=patient.pk, now=now)


@pytest.fixture
def mother_patient(mother: Any, municipality: Any) -> Patient:
    resource = services.patient_resource(
        family="前橋", given="花子", birth_date=date(1995, 4, 1), gender="female"
    )
    provenance = services.provenance_create(origin=Provenance.Origin.SYSTEM)
    patient = services.patient_create(
        kind=Patient.Kind.ADULT, resource=resource, provenance=provenance, account=mother
    )
    services.residency_add(patient=patient, municipality=municipality, resident_number="M-1")
    return patient


@pytest.fixture
def pregnancy(mother_patient: Patient) -> date:
    return pregnant(mother_patient)


def share_vitals(mother: Any, patient: Patient, clinic: Any, *categories: str) -> Any:
    return consent_grant(
        patient=patient,
        by=mother,
        purpose=ConsentPurpose.CARE,
        categories=list(categories) or [Category.VITALS],
        grantee_org=clinic,
    )


# --------------------------------------------------------------------------
# The signal path
# --------------------------------------------------------------------------


def test_two_high_home_readings_raise_one_flag_through_commit_signal_and_task(
    mother: Any, mother_patient: Patient, pregnancy: date, django_capture_on_commit_callbacks: Any
) -> None:
    # The write's transaction commits → vitals_written → the receiver
    # queues alerts_evaluate on commit → (eager) the task writes the Flag.
    with django_capture_on_commit_callbacks(execute=True):
        first = home_bp(mother, mother_patient, days_ago(3), 142, 88)
    assert alert_flags(mother_patient) == []  # one high reading is not an alert
    with django_capture_on_commit_callbacks(execute=True):
        second = home_bp(mother, mother_patient, days_ago(1), 138, 92)
    flags = alert_flags(mother_patient)
    assert len(flags) == 1
    flag = flags[0]
    Flag.model_validate({"id": str(flag.id), **flag.content})
    assert flag.status == "active"
    assert flag.category == Category.VITALS
    assert alerts.flag_kind(flag.content) is alerts.KINDS["bp-high"]
    assert alerts.flag_readings(flag.content) == [f"Observation/{first}", f"Observation/{second}"]
    assert flag.date_start == days_ago(3)
    assert flag.provenance.origin == Provenance.Origin.SYSTEM
    # The read on her behalf is audited as hers, marked as the system's.
    audit = AuditEvent.objects.filter(action="alert.evaluate", patient_id=mother_patient.pk)
    assert audit.exists()
    assert all(row.detail["by"] == "system" and row.actor_id == mother.pk for row in audit)


def test_a_rolled_back_write_queues_nothing(
    mother: Any, mother_patient: Patient, pregnancy: date, django_capture_on_commit_callbacks: Any
) -> None:
    from django.db import transaction

    home_bp(mother, mother_patient, days_ago(3), 142, 88)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        try:
            with transaction.atomic():
                home_bp(mother, mother_patient, days_ago(1), 170, 112)
                raise RuntimeError("rolled back")
        except RuntimeError:
            pass
    assert callbacks == []
    assert alert_flags(mother_patient) == []


def test_a_temperature_does_not_queue_an_evaluation(
    mother: Any, mother_patient: Patient, pregnancy: date, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        records.vitals_write(
            user=mother,
            patient=mother_patient,
            readings=[records.reading(records.BODY_TEMPERATURE, "36.5", taken_at=days_ago(1))],
        )
    assert not AuditEvent.objects.filter(action="alert.evaluate").exists()


# --------------------------------------------------------------------------
# Episodes in the store: once per episode, idempotent
# --------------------------------------------------------------------------


def test_re_evaluating_and_re_importing_add_nothing(
    mother: Any, mother_patient: Patient, pregnancy: date
) -> None:
    home_bp(mother, mother_patient, days_ago(3), 142, 88)
    home_bp(mother, mother_patient, days_ago(1), 165, 100)
    evaluate(mother_patient)
    (flag,) = alert_flags(mother_patient)
    assert alerts.flag_kind(flag.content) is alerts.KINDS["bp-severe"]
    versions = ResourceHistory.objects.filter(resource_id=flag.id).count()
    provenances = Provenance.objects.count()
    again = evaluate(mother_patient)
    assert again.created == again.updated == []
    # The same reading entered again lands on the same record: no new alert.
    home_bp(mother, mother_patient, days_ago(1), 165, 100)
    evaluate(mother_patient)
    assert alert_flags(mother_patient) == [flag]
    assert ResourceHistory.objects.filter(resource_id=flag.id).count() == versions
    # Only the vitals write made a Provenance; the evaluation made none.
    assert Provenance.objects.count() == provenances + 1


def test_more_high_readings_extend_the_same_flag(
    mother: Any, mother_patient: Patient, pregnancy: date
) -> None:
    home_bp(mother, mother_patient, days_ago(6), 142, 88)
    home_bp(mother, mother_patient, days_ago(4), 145, 91)
    evaluate(mother_patient)
    (flag,) = alert_flags(mother_patient)
    home_bp(mother, mother_patient, days_ago(1), 150, 96)
    evaluate(mother_patient)
    (same,) = alert_flags(mother_patient)
    assert same.id == flag.id
    assert same.version == flag.version + 1
    assert len(alerts.flag_readings(same.content)) == 3


def test_a_closed_episode_stays_and_a_new_one_is_a_new_flag(
    mother: Any, mother_patient: Patient, pregnancy: date
) -> None:
    home_bp(mother, mother_patient, days_ago(30), 142, 88)
    home_bp(mother, mother_patient, days_ago(28), 146, 92)
    home_bp(mother, mother_patient, days_ago(20), 118, 76)
    evaluate(mother_patient)
    (first,) = alert_flags(mother_patient)
    # 7 days after its last high reading the episode is over.
    assert first.status == "inactive"
    assert first.date_end == days_ago(21)
    home_bp(mother, mother_patient, days_ago(2), 150, 100)
    home_bp(mother, mother_patient, days_ago(1), 148, 96)
    evaluate(mother_patient)
    closed, current = alert_flags(mother_patient)
    assert closed.id == first.id
    assert closed.status == "inactive"
    assert current.status == "active"
    assert current.date_start == days_ago(2)


def test_the_daily_sweep_closes_an_episode_whose_seven_days_ran_out(
    mother: Any, mother_patient: Patient, pregnancy: date
) -> None:
    from vitals.tasks import alerts_close_lapsed

    home_bp(mother, mother_patient, days_ago(2), 165, 112)
    evaluate(mother_patient)
    (flag,) = alert_flags(mother_patient)
    assert flag.status == "active"
    assert alerts.patients_with_lapsed_alerts() == []
    later = timezone.now() + timedelta(days=6)
    assert alerts.patients_with_lapsed_alerts(now=later) == [mother_patient.pk]
    evaluate(mother_patient, now=later)
    flag.refresh_from_db()
    assert flag.status == "inactive"
    assert alerts_close_lapsed() == 0


def test_a_deleted_reading_withdraws_the_flag_it_alone_supported(
    mother: Any, mother_patient: Patient, pregnancy: date
) -> None:
    home_bp(mother, mother_patient, days_ago(3), 142, 88)
    second = home_bp(mother, mother_patient, days_ago(1), 141, 92)
    evaluate(mother_patient)
    (flag,) = alert_flags(mother_patient)
    records.vital_delete(user=mother, patient=mother_patient, record_id=second)
    evaluate(mother_patient)
    flag.refresh_from_db()
    assert flag.status == "entered-in-error"


def test_readings_before_20_weeks_and_clinic_visits_count_as_the_rule_says(
    mother: Any, mother_patient: Patient, clinic: Any
) -> None:
    pregnant(mother_patient, weeks_today=20)
    # 19 weeks: high at home, no alert.
    home_bp(mother, mother_patient, days_ago(3), 150, 95)
    home_bp(mother, mother_patient, days_ago(2), 152, 96)
    evaluate(mother_patient)
    assert alert_flags(mother_patient) == []
    # A clinic's visit reading at 20 weeks counts with a home reading.
    write_system(
        {
            "resourceType": "Observation",
            "meta": _tag(Category.PRENATAL_CHECKUPS),
            "status": "final",
            "code": {"coding": [terminology.item("bp_panel").coding]},
            "subject": {"reference": f"Patient/{mother_patient.pk}"},
            "effectiveDateTime": today().isoformat(),
            "component": [
                {
                    "code": {"coding": [terminology.item("bp_systolic").coding]},
                    "valueQuantity": {
                        "value": 144,
                        "unit": "mmHg",
                        "system": UCUM,
                        "code": "mm[Hg]",
                    },
                },
                {
                    "code": {"coding": [terminology.item("bp_diastolic").coding]},
                    "valueQuantity": {
                        "value": 86,
                        "unit": "mmHg",
                        "system": UCUM,
                        "code": "mm[Hg]",
                    },
                },
            ],
        },
        organization=clinic,
    )
    home_bp(mother, mother_patient, datetime.now(tz=JAPAN) - timedelta(minutes=5), 141, 80)
    evaluate(mother_patient)
    assert len(alert_flags(mother_patient)) == 1


def test_weight_gain_above_the_band_gives_gentle_advice(
    mother: Any, mother_patient: Patient, pregnancy: date, clinic: Any
) -> None:
    # Pre-pregnancy 50 kg at 160 cm: BMI 19.5, "普通体重", 10–13 kg.
    for key, value, unit in (("pre_pregnancy_weight", 50, "kg"), ("body_height", 160, "cm")):
        write_system(
            {
                "resourceType": "Observation",
                "meta": _tag(Category.PRENATAL_CHECKUPS),
                "status": "final",
                "code": {"coding": [terminology.item(key).coding]},
                "subject": {"reference": f"Patient/{mother_patient.pk}"},
                "effectiveDateTime": (pregnancy - timedelta(days=200)).isoformat(),
                "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
            },
            organization=clinic,
        )
    home_weight(mother, mother_patient, days_ago(10), "62.5")
    evaluate(mother_patient)
    assert alert_flags(mother_patient) == []
    home_weight(mother, mother_patient, days_ago(1), "63.4")
    evaluate(mother_patient)
    (flag,) = alert_flags(mother_patient)
    assert alerts.flag_kind(flag.content) is alerts.KINDS["weight-gain-high"]
    assert alerts.flag_priority(flag.content) == "PL"


# --------------------------------------------------------------------------
# A child's weight-for-age
# --------------------------------------------------------------------------


@pytest.fixture
def baby(mother: Any, municipality: Any) -> Patient:
    birth = today() - timedelta(days=200)
    resource = services.patient_resource(
        family="前橋", given="はる", birth_date=birth, gender="female"
    )
    provenance = services.provenance_create(origin=Provenance.Origin.SYSTEM)
    patient = services.patient_create(
        kind=Patient.Kind.CHILD, resource=resource, provenance=provenance
    )
    services.guardianship_add(
        guardian=mother,
        child=patient,
        relationship=Guardianship.Relationship.MOTHER,
        valid_from=birth,
    )
    return patient


def test_a_childs_weight_falling_across_two_centile_lines_advises_a_consultation(
    mother: Any, baby: Patient
) -> None:
    from vitals import growth

    birth = today() - timedelta(days=200)

    def kg_at(days_old: int, z: float) -> str:
        lms = growth.who_lms(growth.WEIGHT, "female", growth.months_of(days_old))
        assert lms is not None
        return f"{lms.value_at(z):.2f}"

    home_weight(mother, baby, days_ago(60), kg_at(140, 0.6))
    home_weight(mother, baby, days_ago(1), kg_at(199, -0.9))
    result = evaluate(baby)
    assert result.acted_as == mother.pk
    (flag,) = alert_flags(baby)
    assert alerts.flag_kind(flag.content) is alerts.KINDS["growth-falter"]
    assert flag.status == "active"
    assert birth < flag.date_start.date()


# --------------------------------------------------------------------------
# The family's pages and the banner
# --------------------------------------------------------------------------


@pytest.fixture
def severe(mother: Any, mother_patient: Patient, pregnancy: date) -> Resource:
    home_bp(mother, mother_patient, days_ago(1), 168, 112)
    evaluate(mother_patient)
    (flag,) = alert_flags(mother_patient)
    return flag


def test_the_mother_sees_the_severe_alert_first_in_japanese_with_its_readings(
    mother: Any, mother_patient: Patient, severe: Resource
) -> None:
    page = html(client_for(mother).get(LIST))
    assert ja(alerts.KINDS["bp-severe"].advice) in page
    assert "vitals-alert-severe" in page
    assert "168/112 mmHg" in page
    assert ja("Contact your clinic at once") in page
    one = client_for(mother).get(f"{LIST}{mother_patient.pk}/")
    assert one.status_code == 200
    assert "168/112 mmHg" in html(one)
    assert AuditEvent.objects.filter(
        action="view.alerts", actor_id=mother.pk, patient_id=mother_patient.pk
    ).exists()


def test_the_page_is_in_english_when_asked(
    mother: Any, mother_patient: Patient, severe: Resource
) -> None:
    from django.urls import reverse

    client = client_for(mother)
    client.post(reverse("set_language"), {"language": "en", "next": LIST})
    page = html(client.get(LIST))
    assert "Contact your clinic at once" in page
    assert ja("Contact your clinic at once") not in page
    assert ja("Contact your clinic at once") != "Contact your clinic at once"


def test_nobody_else_sees_her_alerts_page(
    mother_patient: Patient, severe: Resource, stranger: Any, clinician: Any, father: Any
) -> None:
    for user in (stranger, clinician, father):
        assert client_for(user).get(f"{LIST}{mother_patient.pk}/").status_code == 404
        assert "168/112" not in html(client_for(user).get(LIST))
    missing = client_for(stranger).get(f"{LIST}{uuid.uuid4()}/")
    assert missing.status_code == 404
    anonymous = Client().get(LIST)
    assert anonymous.status_code == 302
    assert Client().post(LIST).status_code in (302, 405)


def test_the_banner_shows_current_alerts_to_the_family_only(
    mother: Any, mother_patient: Patient, severe: Resource, stranger: Any
) -> None:
    template = Template('{% include "vitals/alerts/_banner.html" %}')
    factory = RequestFactory()

    def render(user: Any, **extra: Any) -> str:
        request = factory.get("/")
        request.user = user
        return template.render(Context({"request": request, **extra}))

    shown = render(mother)
    assert 'role="alert"' in shown
    assert ja(alerts.KINDS["bp-severe"].label) in shown
    assert render(stranger).strip() == ""
    assert render(mother, alert_patient_id=uuid.uuid4()).strip() == ""


# --------------------------------------------------------------------------
# The clinic portal
# --------------------------------------------------------------------------


def test_a_clinic_she_shares_vitals_with_sees_the_alert_and_others_do_not(
    mother: Any,
    mother_patient: Patient,
    severe: Resource,
    clinic: Any,
    clinician: Any,
    other_clinic: Any,
    unconsented_clinician: Any,
) -> None:
    label = ja(alerts.KINDS["bp-severe"].label)
    share_vitals(mother, mother_patient, clinic)
    portal = html(client_for(clinician).get("/clinic/"))
    assert label in portal
    assert re.search(r'flag flag-danger">[^<]*' + re.escape(label), portal)
    chart = client_for(clinician).get(f"/clinic/patients/{mother_patient.pk}/")
    assert chart.status_code == 200
    assert label in html(chart)
    # Another clinic: no consent, no patient, no alert.
    assert label not in html(client_for(unconsented_clinician).get("/clinic/"))
    assert (
        client_for(unconsented_clinician).get(f"/clinic/patients/{mother_patient.pk}/").status_code
        == 404
    )


def test_a_clinic_sharing_only_the_pregnancy_does_not_see_the_vitals_alert(
    mother: Any, mother_patient: Patient, severe: Resource, clinic: Any, clinician: Any
) -> None:
    share_vitals(mother, mother_patient, clinic, Category.PREGNANCY, Category.PRENATAL_CHECKUPS)
    label = ja(alerts.KINDS["bp-severe"].label)
    assert label not in html(client_for(clinician).get("/clinic/"))
    assert label not in html(client_for(clinician).get(f"/clinic/patients/{mother_patient.pk}/"))


# --------------------------------------------------------------------------
# The emergency summary reads the same Flag
# --------------------------------------------------------------------------


def test_the_emergency_summary_shows_the_current_alert_but_not_the_readings(
    mother: Any, mother_patient: Patient, severe: Resource, responder: Any
) -> None:
    from django.urls import reverse

    from sharing.models import EmergencyPreference

    EmergencyPreference.objects.create(
        patient=mother_patient, share_summary=True, updated_by=mother
    )
    client = client_for(responder)
    page = html(client.get(reverse("emergency:summary", args=[mother_patient.pk])))
    assert ja(alerts.KINDS["bp-severe"].label) in page
    bundle = client.get(reverse("emergency:summary_json", args=[mother_patient.pk])).json()
    urls = {e["fullUrl"] for e in bundle["entry"]}
    assert f"urn:uuid:{severe.id}" in urls
    # The readings are vitals, outside the emergency dataset.
    for ref in alerts.flag_readings(severe.content):
        assert f"urn:uuid:{ref.removeprefix('Observation/')}" not in urls


def test_a_preterm_childs_z_score_uses_the_corrected_age_as_the_chart_does(
    mother: Any, baby: Patient
) -> None:
    from vitals import growth

    # Born at 30 weeks 0 days: corrected age is 70 days less until 24 months.
    write_system(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [terminology.item("gestational_age").coding]},
            "subject": {"reference": f"Patient/{baby.pk}"},
            "effectiveDateTime": (today() - timedelta(days=200)).isoformat(),
            "valueQuantity": {"value": 30, "unit": "wk", "system": UCUM, "code": "wk"},
        }
    )
    rows = list(Resource.objects.filter(compartments__overlap=[baby.pk]))
    assert alerts._gestation_at_birth(rows) == 210
    content = Resource.objects.get(pk=baby.pk).content
    zscore = alerts._zscore_for(content, gestation_at_birth=210)
    assert zscore is not None
    birth = today() - timedelta(days=200)
    expected = growth.who_score(growth.WEIGHT, "female", growth.months_of(130), 6.0)
    assert expected is not None
    assert zscore(birth + timedelta(days=200), Decimal("6.0")) == pytest.approx(expected.z)


def test_both_guardians_see_a_childs_alert_and_the_owner_posts_nothing(
    mother: Any, baby: Patient, stranger: Any, clinician: Any
) -> None:
    from vitals import growth

    father = services.guardianship_add(
        guardian=type(mother).objects.create_user(email="dad@example.jp", password="x" * 16),
        child=baby,
        relationship=Guardianship.Relationship.FATHER,
        valid_from=today() - timedelta(days=200),
    ).guardian

    def kg_at(days_old: int, z: float) -> str:
        lms = growth.who_lms(growth.WEIGHT, "female", growth.months_of(days_old))
        assert lms is not None
        return f"{lms.value_at(z):.2f}"

    home_weight(mother, baby, days_ago(60), kg_at(140, 0.6))
    home_weight(mother, baby, days_ago(1), kg_at(199, -0.9))
    evaluate(baby)
    label = ja(alerts.KINDS["growth-falter"].label)
    for guardian in (mother, father):
        response = client_for(guardian).get(f"{LIST}{baby.pk}/")
        assert response.status_code == 200
        assert label in html(response)
        assert label in html(client_for(guardian).get(LIST))
    for other in (stranger, clinician):
        assert client_for(other).get(f"{LIST}{baby.pk}/").status_code == 404
    assert client_for(mother).post(f"{LIST}{baby.pk}/").status_code == 405
