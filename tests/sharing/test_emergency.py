"""Emergency access: the emergency summary (content, FHIR validity, who may
read it), break-glass (search, re-authentication, window, audit, guardian
alerts, review by a second person) and emergency cards."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.core import mail
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.urls import reverse
from django.utils import timezone, translation

from phr import store
from phr.identifiers import MEDICAL_INSTITUTION_SYSTEM
from phr.models import AuditEvent, Membership, Organization, Patient, Provenance, Role, User
from phr.services import MCH_HANDBOOK_SYSTEM, patient_resource, provenance_create
from phr.terminology import CATEGORY_SYSTEM, LOINC
from sharing import emergency
from sharing.models import BreakGlass, DvBlock, EmergencyCard, EmergencyPreference
from tests import factories as f
from tests.totp import code_for_user

pytestmark = pytest.mark.django_db

JAPAN = ZoneInfo("Asia/Tokyo")


def due_date() -> date:
    """A due date 59 days from today: 280 − 59 = 221 days = 31 weeks 4 days.
    (Relative to the real today, because memberships and guardianships of
    the personas start today.)"""
    return timezone.localdate(timezone=JAPAN) + timedelta(days=59)


PARTS = ("allergy", "medicine", "episode", "edd", "flag", "risk_condition", "blood_type")


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    # Rate-limit counters live in the cache: every test starts from zero.
    cache.clear()
    yield
    cache.clear()


def write(resource: dict[str, Any], organization: Organization | None = None) -> uuid.UUID:
    provenance = provenance_create(
        origin=Provenance.Origin.CLINIC if organization else Provenance.Origin.SYSTEM,
        organization=organization,
    )
    rid, _, _ = store.record_write(resource, provenance=provenance)
    return rid


def subject(patient: Patient) -> dict[str, str]:
    return {"reference": f"Patient/{patient.pk}"}


def write_emergency_records(patient: Patient, clinic: Organization) -> dict[str, uuid.UUID]:
    """An allergy, a medicine, a pregnancy with its due date at the clinic,
    a flag, a gestational diabetes, a blood type — and, outside the
    emergency dataset, a prenatal blood pressure and a home weight."""
    ids = {
        "allergy": write(
            {
                "resourceType": "AllergyIntolerance",
                "clinicalStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                            "code": "active",
                        }
                    ]
                },
                "criticality": "high",
                "code": {"text": "ペニシリン"},
                "patient": subject(patient),
                "recordedDate": "2024-05-01",
                "reaction": [{"manifestation": [{"text": "じんましん"}]}],
            }
        ),
        "medicine": write(
            {
                "resourceType": "MedicationStatement",
                "status": "active",
                "medicationCodeableConcept": {"text": "インスリン アスパルト"},
                "subject": subject(patient),
                "effectiveDateTime": "2026-01-20",
                "dosage": [{"text": "毎食前 4単位"}],
            }
        ),
        "episode": write(
            {
                "resourceType": "EpisodeOfCare",
                "status": "active",
                "patient": subject(patient),
                "managingOrganization": {
                    "display": clinic.name,
                    "identifier": {"system": MEDICAL_INSTITUTION_SYSTEM, "value": clinic.code},
                },
                "period": {"start": (due_date() - timedelta(days=280)).isoformat()},
            },
            clinic,
        ),
        "edd": write(
            {
                "resourceType": "Observation",
                "meta": {"tag": [{"system": CATEGORY_SYSTEM, "code": "pregnancy"}]},
                "status": "final",
                "code": {"coding": [{"system": LOINC, "code": "11778-8"}]},
                "subject": subject(patient),
                "effectiveDateTime": (due_date() - timedelta(days=200)).isoformat(),
                "valueDateTime": due_date().isoformat(),
            },
            clinic,
        ),
        "flag": write(
            {
                "resourceType": "Flag",
                "status": "active",
                "code": {"text": "妊娠高血圧症候群のリスク"},
                "subject": subject(patient),
                "period": {"start": "2026-01-10"},
            },
            clinic,
        ),
        "risk_condition": write(
            {
                "resourceType": "Condition",
                "clinicalStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                            "code": "active",
                        }
                    ]
                },
                "code": {
                    "coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "O24.4"}],
                    "text": "妊娠糖尿病",
                },
                "subject": subject(patient),
                "onsetDateTime": "2026-01-15",
            },
            clinic,
        ),
        "blood_type": write(
            {
                "resourceType": "Observation",
                "meta": {"tag": [{"system": CATEGORY_SYSTEM, "code": "prenatal_checkups"}]},
                "status": "final",
                "code": {"coding": [{"system": LOINC, "code": "882-1"}], "text": "血液型"},
                "subject": subject(patient),
                "effectiveDateTime": "2025-08-01",
                "valueCodeableConcept": {"text": "A型 Rh(+)"},
            },
            clinic,
        ),
    }
    ids["prenatal_bp"] = f.write_observation(
        patient, code="8480-6", value=118, unit="mm[Hg]", category="prenatal_checkups"
    )
    ids["home_weight"] = f.write_observation(patient, category="vitals")
    return ids


def entries(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type
    ]


def totp_code(user: User) -> str:
    return code_for_user(user)


def fresh_client(user: User) -> Client:
    """A logged-in client whose user just confirmed the authenticator code
    (the "password + TOTP again" of break-glass)."""
    client = Client()
    client.force_login(user)
    response = client.post(reverse("mfa_reauthenticate"), {"code": totp_code(user)})
    assert response.status_code == 302, response.content
    return client


def search_by_name(client: Client, municipality: Organization, **override: str) -> Any:
    data = {
        "method": "name",
        "name-family": "前橋",
        "name-given": "はる",
        "name-birth_date": "2025-09-01",
        "name-municipality_code": municipality.code,
    }
    data.update({f"name-{k}": v for k, v in override.items()})
    return client.post(reverse("emergency:find"), data)


def handle_in(html: str) -> str:
    match = re.search(r'name="handle" value="([^"]+)"', html)
    assert match is not None, html
    return match.group(1)


def privacy_officer(user: User, municipality: Organization) -> User:
    Membership.objects.update_or_create(
        user=user,
        organization=municipality,
        role=Role.MUNICIPAL_STAFF,
        defaults={"is_privacy_officer": True},
    )
    return user


# --------------------------------------------------------------------------
# The summary
# --------------------------------------------------------------------------


def test_it_builds_the_summary_with_allergy_medicine_pregnancy_flags_and_blood_type(
    mother: User, mother_patient: Patient, clinic: Organization
) -> None:
    from fhir.resources.R4B.bundle import Bundle

    ids = write_emergency_records(mother_patient, clinic)
    bundle = emergency.emergency_summary(user=mother, patient=mother_patient)

    # A document: the Composition first, every entry a urn:uuid.
    assert bundle["type"] == "document"
    assert bundle["entry"][0]["resource"]["resourceType"] == "Composition"
    assert all(e["fullUrl"].startswith("urn:uuid:") for e in bundle["entry"])
    Bundle.model_validate(bundle)  # valid FHIR R4(B)

    urls = {e["fullUrl"] for e in bundle["entry"]}
    for part in PARTS:
        assert f"urn:uuid:{ids[part]}" in urls, part
    # References point inside the document.
    composition = bundle["entry"][0]["resource"]
    for section in composition["section"]:
        for entry in section.get("entry", []):
            assert entry["reference"] in urls
    titles = {s["code"]["coding"][0]["code"]: s for s in composition["section"]}
    assert f"urn:uuid:{ids['allergy']}" in [e["reference"] for e in titles["48765-2"]["entry"]]
    alerts = [e["reference"] for e in titles["104605-1"]["entry"]]
    # The flag, and the gestational diabetes as a risk flag (ICD-10 O24).
    assert {f"urn:uuid:{ids['flag']}", f"urn:uuid:{ids['risk_condition']}"} <= set(alerts)

    # Pregnancy: the episode, the due date, the gestational age today and
    # the delivery clinic.
    gestation = [
        o for o in entries(bundle, "Observation") if o["code"]["coding"][0]["code"] == "49051-6"
    ]
    assert len(gestation) == 1
    assert gestation[0]["note"][0]["text"].startswith("31w4d")
    assert gestation[0]["valueQuantity"]["value"] == round(221 / 7, 2)
    [organization] = entries(bundle, "Organization")
    assert organization["name"] == clinic.name
    [episode] = entries(bundle, "EpisodeOfCare")
    assert episode["managingOrganization"]["reference"].startswith("urn:uuid:")

    # Outside the emergency dataset: no prenatal blood pressure, no vitals.
    assert f"urn:uuid:{ids['prenatal_bp']}" not in urls
    assert f"urn:uuid:{ids['home_weight']}" not in urls

    with translation.override("ja"):
        page = emergency.summary_page(emergency.summary_facts(user=mother, patient=mother_patient))
    assert page.due_date == due_date()
    assert page.gestation == "31週4日"
    assert [line.label for line in page.allergies] == ["ペニシリン"]
    assert [line.detail for line in page.blood_type] == ["A型 Rh(+)"]
    assert page.clinic == clinic.name


def test_its_medicines_are_the_medication_notebooks_current_medicines(
    mother: User, mother_patient: Patient
) -> None:
    """The summary lists what the notebook calls "taken now" (phr.medications):
    a dispensing within its days of supply, not one whose days ran out (even
    if recent), and each medicine once."""
    from phr import medications

    today = timezone.localdate(timezone=JAPAN)

    def dispensing(day: date, name: str, days: int) -> str:
        return "\n".join(
            [
                "JAHISTC08,1",
                f"5,{day:%Y%m%d},1",
                "11,はぐくみ薬局,10,4,1234567,,,,1",
                f"201,1,{name},3,錠,2,620000001,1",
                f"301,1,毎食後,{days},日分,1,1,,1",
            ]
        )

    for text in (
        dispensing(today - timedelta(days=2), "カロナール錠２００", 7),  # current
        dispensing(today - timedelta(days=6), "カロナール錠", 7),  # the same medicine
        dispensing(today - timedelta(days=30), "ムコダイン錠", 5),  # days ran out
    ):
        medications.medications_import(patient=mother_patient, user=mother, text=text, via="paste")
    facts = emergency.summary_facts(user=mother, patient=mother_patient)
    names = [medications.medicine_name(m.content) for m in facts.medications]
    assert names == ["カロナール錠２００"]
    page = emergency.summary_page(facts)
    assert [line.label for line in page.medications] == ["カロナール錠２００"]
    assert page.medications[0].detail == "毎食後 1日3錠 7日分"


def test_it_names_the_guardians_but_never_a_dv_blocked_one_nor_an_address(
    mother: User,
    child: Patient,
    father: User,
    municipality: Organization,
    municipal_officer: User,
) -> None:
    # The child's Patient resource gets an address: the summary never shows it.
    resource = patient_resource(family="前橋", given="はる", birth_date=date(2025, 9, 1))
    resource["address"] = [{"text": "群馬県前橋市大手町1-1-1"}]
    provenance = provenance_create(origin=Provenance.Origin.SYSTEM)
    store.record_write(resource, provenance=provenance, resource_id=child.pk)
    DvBlock.objects.create(
        patient=child, blocked_user=father, municipality=municipality, created_by=municipal_officer
    )

    bundle = emergency.emergency_summary(user=mother, patient=child)
    [patient] = entries(bundle, "Patient")
    assert "address" not in patient
    emails = [t["value"] for c in patient["contact"] for t in c["telecom"]]
    assert emails == [mother.email]
    assert father.email not in str(bundle)
    assert "大手町" not in str(bundle)


def test_it_answers_404_to_a_responder_without_consent(
    responder: User, child: Patient, mother_patient: Patient
) -> None:
    client = Client()
    client.force_login(responder)
    for name in ("emergency:summary", "emergency:summary_json"):
        assert client.get(reverse(name, args=[child.pk])).status_code == 404
    assert client.get(reverse("emergency:summary", args=[uuid.uuid4()])).status_code == 404
    # The refusal is audited, and nothing is listed as revealed.
    assert not AuditEvent.objects.filter(action="emergency.summary", outcome="success").exists()
    assert AuditEvent.objects.filter(
        action="emergency.summary", outcome="denied", patient_id=child.pk
    ).exists()


def test_it_shows_a_responder_the_summary_the_family_shares_and_nothing_outside_it(
    responder: User, mother: User, mother_patient: Patient, clinic: Organization
) -> None:
    ids = write_emergency_records(mother_patient, clinic)
    EmergencyPreference.objects.create(
        patient=mother_patient, share_summary=True, updated_by=mother
    )
    client = Client()
    client.force_login(responder)

    response = client.get(reverse("emergency:summary_json", args=[mother_patient.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/fhir+json"
    bundle = response.json()
    urls = {e["fullUrl"] for e in bundle["entry"]}
    assert f"urn:uuid:{ids['allergy']}" in urls
    assert f"urn:uuid:{ids['blood_type']}" in urls
    # The emergency scope: no prenatal checkup, no vitals.
    assert f"urn:uuid:{ids['prenatal_bp']}" not in urls
    assert f"urn:uuid:{ids['home_weight']}" not in urls

    html = client.get(reverse("emergency:summary", args=[mother_patient.pk])).content.decode()
    assert "ペニシリン" in html
    assert "31週4日" in html
    assert "A型 Rh(+)" in html

    rows = AuditEvent.objects.filter(action="emergency.summary", patient_id=mother_patient.pk)
    assert rows.count() == 2
    assert {r.purpose for r in rows} == {"emergency"}
    assert {r.detail["rule"] for r in rows} == {"emergency_preference"}
    assert not any(r.break_glass for r in rows)


def test_it_excludes_a_childs_infant_checkups_and_vitals_from_the_summary(
    responder: User, mother: User, child: Patient
) -> None:
    checkup = f.write_observation(child, category="infant_checkups")
    vitals = f.write_observation(child, code="8310-5", value=37.2, unit="Cel", category="vitals")
    EmergencyPreference.objects.create(patient=child, share_summary=True, updated_by=mother)
    client = Client()
    client.force_login(responder)
    response = client.get(reverse("emergency:summary_json", args=[child.pk]))
    assert response.status_code == 200
    text = response.content.decode()
    assert str(checkup) not in text
    assert str(vitals) not in text
    # The child's guardian is the contact.
    assert mother.email in text


def test_it_lets_the_family_see_its_own_summary_and_no_one_elses(
    mother: User, child: Patient, stranger: User, father: User, mother_patient: Patient
) -> None:
    client = Client()
    client.force_login(mother)
    response = client.get(reverse("emergency:summary", args=[child.pk]))
    assert response.status_code == 200
    assert "はる" in response.content.decode()
    row = AuditEvent.objects.get(action="emergency.summary", patient_id=child.pk)
    assert row.purpose == "personal"

    client.force_login(stranger)
    assert client.get(reverse("emergency:summary", args=[child.pk])).status_code == 404
    # An adult's records are hers: the child's father does not see the mother's.
    client.force_login(father)
    assert client.get(reverse("emergency:summary", args=[child.pk])).status_code == 200
    assert client.get(reverse("emergency:summary", args=[mother_patient.pk])).status_code == 404


# --------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------


def test_it_says_only_one_match_and_never_the_name_or_id(
    responder: User, child: Patient, municipality: Organization
) -> None:
    client = Client()
    client.force_login(responder)
    # Typed in katakana with a full-width space: still the same name.
    response = search_by_name(client, municipality, family="前橋　", given="ハル")
    html = response.content.decode()
    assert response.status_code == 200
    assert "1件一致" in html
    # Nothing of the person: not the name as stored or typed, not the id.
    for text in ("前橋", "はる", "ハル", str(child.pk), "2025-09-01"):
        assert text not in html, text
    row = AuditEvent.objects.get(action="emergency.search")
    assert (row.outcome, row.patient_id, row.detail["result"]) == ("success", child.pk, "one")


def test_it_says_no_match_and_audits_without_a_patient(
    responder: User, child: Patient, municipality: Organization
) -> None:
    client = Client()
    client.force_login(responder)
    response = search_by_name(client, municipality, birth_date="2025-09-02")
    html = response.content.decode()
    assert "一致なし" in html
    assert 'name="handle"' not in html
    row = AuditEvent.objects.get(action="emergency.search")
    assert (row.outcome, row.patient_id) == ("denied", None)


def test_it_finds_a_person_by_the_mch_handbook_number_as_the_demo_writes_it(
    responder: User, municipality: Organization
) -> None:
    number = f"{municipality.code}-2025-00187"
    resource = patient_resource(
        family="前橋",
        given="陽翔",
        birth_date=date(2025, 1, 5),
        identifiers=[
            {
                "system": MCH_HANDBOOK_SYSTEM.format(municipality_code=municipality.code),
                "value": number,
            }
        ],
    )
    from phr.services import patient_create

    patient_create(
        kind=Patient.Kind.CHILD,
        resource=resource,
        provenance=provenance_create(origin=Provenance.Origin.MUNICIPALITY),
    )
    client = Client()
    client.force_login(responder)
    # Full-width digits and dashes, no municipality code: the number names it.
    typed = number.translate(str.maketrans("0123456789-", "０１２３４５６７８９－"))
    response = client.post(
        reverse("emergency:find"), {"method": "handbook", "handbook-handbook_number": typed}
    )
    assert "1件一致" in response.content.decode()


def test_it_shows_the_search_to_responders_only(
    stranger: User, mother: User, municipal_officer: User
) -> None:
    client = Client()
    for user in (stranger, mother, municipal_officer):
        client.force_login(user)
        assert client.get(reverse("emergency:find")).status_code == 404


def test_it_says_no_match_to_a_responder_blocked_from_the_person(
    responder: User, child: Patient, municipality: Organization, municipal_officer: User
) -> None:
    DvBlock.objects.create(
        patient=child,
        blocked_user=responder,
        municipality=municipality,
        created_by=municipal_officer,
    )
    client = Client()
    client.force_login(responder)
    assert "一致なし" in search_by_name(client, municipality).content.decode()
    row = AuditEvent.objects.get(action="emergency.search")
    assert (row.outcome, row.detail["rule"]) == ("denied", "dv_block")


def test_it_offers_the_summary_without_break_glass_when_the_family_consented(
    responder: User, mother: User, child: Patient, municipality: Organization
) -> None:
    EmergencyPreference.objects.create(patient=child, share_summary=True, updated_by=mother)
    client = Client()
    client.force_login(responder)
    html = search_by_name(client, municipality).content.decode()
    assert reverse("emergency:open") in html
    assert reverse("emergency:break_glass") not in html
    response = client.post(reverse("emergency:open"), {"handle": handle_in(html)})
    assert response["Location"] == reverse("emergency:summary", args=[child.pk])
    assert not BreakGlass.objects.exists()


# --------------------------------------------------------------------------
# Break-glass
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "justification", "field"),
    [("", "意識なし、保護者不在", "理由を選んでください"), ("child", "   ", "状況の説明")],
)
def test_it_refuses_break_glass_without_reason_or_justification(
    responder: User,
    child: Patient,
    municipality: Organization,
    reason: str,
    justification: str,
    field: str,
) -> None:
    client = fresh_client(responder)
    handle = handle_in(search_by_name(client, municipality).content.decode())
    response = client.post(
        reverse("emergency:break_glass"),
        {"handle": handle, "reason": reason, "justification": justification},
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert field in html
    assert " / " in html  # the message is in Japanese and English
    assert not BreakGlass.objects.exists()
    assert not AuditEvent.objects.filter(action="break_glass.start").exists()


def test_it_sends_a_stale_session_to_reauthenticate_before_breaking_the_glass(
    responder: User, child: Patient, municipality: Organization
) -> None:
    client = Client()
    client.force_login(responder)  # no authentication recorded: stale
    handle = handle_in(search_by_name(client, municipality).content.decode())
    response = client.post(
        reverse("emergency:break_glass"),
        {"handle": handle, "reason": "child", "justification": "意識なし"},
    )
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("mfa_reauthenticate"))
    assert not BreakGlass.objects.exists()

    # The authenticator code again: allauth replays the kept POST, and the
    # glass is broken.
    response = client.post(response["Location"], {"code": totp_code(responder)})
    assert response.status_code == 302
    assert response["Location"] == reverse("emergency:summary", args=[child.pk])
    assert BreakGlass.objects.filter(responder=responder, patient=child).count() == 1


def break_the_glass(client: Client, municipality: Organization, capture: Callable[..., Any]) -> Any:
    handle = handle_in(search_by_name(client, municipality).content.decode())
    with capture(execute=True):
        return client.post(
            reverse("emergency:break_glass"),
            {
                "handle": handle,
                "reason": "child",
                "justification": "保育園で意識消失。保護者に連絡がつかない。",
            },
        )


def test_it_breaks_the_glass_audits_and_alerts_the_guardians_but_never_a_blocked_one(
    responder: User,
    mother: User,
    father: User,
    child: Patient,
    municipality: Organization,
    municipal_officer: User,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    other = f.UserFactory(email="grandma@example.jp", language="en")
    from phr.models import Guardianship
    from phr.services import guardianship_add

    guardianship_add(guardian=other, child=child, relationship=Guardianship.Relationship.OTHER)
    DvBlock.objects.create(
        patient=child, blocked_user=father, municipality=municipality, created_by=municipal_officer
    )
    client = fresh_client(responder)
    response = break_the_glass(client, municipality, django_capture_on_commit_callbacks)
    assert response.status_code == 302
    assert response["Location"] == reverse("emergency:summary", args=[child.pk])

    window = BreakGlass.objects.get()
    assert (window.patient, window.responder, window.reason) == (child, responder, "child")
    assert window.ends_at - window.starts_at == timedelta(hours=4)
    assert window.review_municipality == municipality
    start = AuditEvent.objects.get(action="break_glass.start")
    assert start.break_glass
    assert start.patient_id == child.pk
    assert start.detail["reason"] == "child"
    assert start.detail["subtype"]["code"] == "110127"
    assert start.detail["type"]["code"] == "110113"

    # The guardians are told at once, each in their language; the blocked
    # father is not.
    recipients = sorted(m.to[0] for m in mail.outbox)
    assert recipients == sorted([mother.email, other.email])
    english = next(m for m in mail.outbox if m.to == [other.email])
    assert "Emergency access" in english.subject
    japanese = next(m for m in mail.outbox if m.to == [mother.email])
    assert "緊急" in japanese.subject
    assert "/sharing/history/" in japanese.body
    assert "前橋" not in japanese.body  # no names or health data in the mail
    assert all(father.email not in m.to for m in mail.outbox)
    # Sending again (a task run twice) mails no one twice.
    assert emergency.break_glass_send_alerts(break_glass_id=window.pk) == 0

    # Each read in the window is flagged.
    assert client.get(response["Location"]).status_code == 200
    assert client.get(reverse("emergency:summary_json", args=[child.pk])).status_code == 200
    reads = AuditEvent.objects.filter(action="emergency.summary", patient_id=child.pk)
    assert reads.count() == 2
    assert all(r.break_glass and r.detail["break_glass"] == window.pk for r in reads)
    assert {r.purpose for r in reads} == {"emergency"}


def test_it_hides_a_guardian_blocked_from_the_mother_from_alerts_and_contacts(
    responder: User,
    mother: User,
    mother_patient: Patient,
    father: User,
    child: Patient,
    municipality: Organization,
    municipal_officer: User,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    # DV等支援措置 for the mother only: the child is usually where she is, so
    # an alert or a contact list about the child would tell the father
    # where to find her.
    DvBlock.objects.create(
        patient=mother_patient,
        blocked_user=father,
        municipality=municipality,
        created_by=municipal_officer,
    )
    with django_capture_on_commit_callbacks(execute=True):
        emergency.break_glass_open(
            responder=responder,
            patient=child,
            reason=BreakGlass.Reason.CHILD,
            justification="公園で転倒、意識なし",
        )
    assert [m.to for m in mail.outbox] == [[mother.email]]
    assert father.email not in str(emergency.emergency_summary(user=responder, patient=child))
    # The father still sees his child's summary, without the mother's address.
    bundle = emergency.emergency_summary(user=father, patient=child)
    assert mother.email not in str(bundle)


def test_it_alerts_an_adult_patient_herself(
    responder: User,
    mother: User,
    mother_patient: Patient,
    municipality: Organization,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    window_patient = mother_patient
    with django_capture_on_commit_callbacks(execute=True):
        emergency.break_glass_open(
            responder=responder,
            patient=window_patient,
            reason=BreakGlass.Reason.OBSTETRIC,
            justification="路上で出血、意識混濁",
        )
    assert [m.to for m in mail.outbox] == [[mother.email]]


def test_it_closes_the_window_after_the_configured_hours(
    responder: User,
    child: Patient,
    municipality: Organization,
    settings: Any,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    settings.BREAK_GLASS_HOURS = 1
    client = fresh_client(responder)
    response = break_the_glass(client, municipality, django_capture_on_commit_callbacks)
    summary_url = response["Location"]
    assert client.get(summary_url).status_code == 200
    window = BreakGlass.objects.get()
    assert window.ends_at - window.starts_at == timedelta(hours=1)
    with time_machine.travel(window.ends_at + timedelta(minutes=1)):
        client = Client()  # the old session timed out long ago
        client.force_login(responder)
        assert client.get(summary_url).status_code == 404


# --------------------------------------------------------------------------
# Review
# --------------------------------------------------------------------------


@pytest.fixture
def window(responder: User, child: Patient) -> BreakGlass:
    opened = emergency.break_glass_open(
        responder=responder,
        patient=child,
        reason=BreakGlass.Reason.CHILD,
        justification="保育園で意識消失",
    )
    return opened


def test_it_lets_the_privacy_officer_review_a_break_glass_use(
    municipal_officer: User, municipality: Organization, window: BreakGlass, responder: User
) -> None:
    privacy_officer(municipal_officer, municipality)
    client = Client()
    client.force_login(responder)
    client.get(reverse("emergency:summary", args=[window.patient_id]))  # one read
    client.force_login(municipal_officer)
    html = client.get(reverse("emergency:reviews")).content.decode()
    assert "保育園で意識消失" in html
    assert responder.email in html
    assert "emergency.summary" in html  # the read in the window
    response = client.post(
        reverse("emergency:reviews"),
        {
            "break_glass": window.pk,
            f"bg{window.pk}-review": "appropriate",
            f"bg{window.pk}-note": "救急要請の記録と一致",
        },
    )
    assert response.status_code == 302
    window.refresh_from_db()
    assert (window.review, window.reviewed_by) == ("appropriate", municipal_officer)
    row = AuditEvent.objects.get(action="break_glass.review")
    assert (row.actor_id, row.patient_id) == (municipal_officer.pk, window.patient_id)
    # Reviewed: it leaves the queue.
    assert "保育園で意識消失" not in client.get(reverse("emergency:reviews")).content.decode()


def test_it_refuses_a_review_by_the_responder_himself(
    responder: User, municipality: Organization, window: BreakGlass
) -> None:
    # The responder is also a privacy officer: still not his own use.
    privacy_officer(responder, municipality)
    client = Client()
    client.force_login(responder)
    response = client.post(
        reverse("emergency:reviews"),
        {"break_glass": window.pk, f"bg{window.pk}-review": "appropriate"},
    )
    assert response.status_code == 400
    assert "自分の緊急アクセスは審査できません" in response.content.decode()
    window.refresh_from_db()
    assert window.reviewed_at is None


def test_it_hides_the_queue_from_another_municipality_and_from_non_officers(
    other_municipal_officer: User,
    municipal_officer: User,
    responder: User,
    window: BreakGlass,
) -> None:
    other = other_municipal_officer.memberships.get().organization
    privacy_officer(other_municipal_officer, other)
    client = Client()
    client.force_login(other_municipal_officer)
    assert "保育園で意識消失" not in client.get(reverse("emergency:reviews")).content.decode()
    response = client.post(
        reverse("emergency:reviews"),
        {"break_glass": window.pk, f"bg{window.pk}-review": "inappropriate"},
    )
    assert response.status_code == 404
    for user in (municipal_officer, responder):  # not privacy officers
        client.force_login(user)
        assert client.get(reverse("emergency:reviews")).status_code == 404
    window.refresh_from_db()
    assert window.reviewed_at is None


# --------------------------------------------------------------------------
# Emergency cards
# --------------------------------------------------------------------------


def create_card(client: Client, patient: Patient, **fields: Any) -> Any:
    data = {"action": "create", "patient": str(patient.pk), f"p-{patient.pk}-days": 365}
    data.update({f"p-{patient.pk}-{k}": v for k, v in fields.items()})
    return client.post(reverse("emergency:cards"), data)


def new_card_link(client: Client) -> str:
    html = client.get(reverse("emergency:cards")).content.decode()
    match = re.search(r'href="https?://[^"]*(/emergency/c/[^"]+/)"', html)
    assert match is not None, html
    assert 'src="data:image/svg+xml;base64,' in html  # the QR code
    return match.group(1)


def test_it_opens_the_summary_with_a_card_and_audits_each_opening(
    mother: User, child: Patient
) -> None:
    client = Client()
    client.force_login(mother)
    assert create_card(client, child).status_code == 302
    link = new_card_link(client)
    card = EmergencyCard.objects.get()
    # Only the token's SHA-256 is stored.
    assert card.token_hash == emergency.card_token_hash(link.split("/")[-2])
    # Shown once only.
    assert "/emergency/c/" not in client.get(reverse("emergency:cards")).content.decode()

    anonymous = Client()
    for _ in range(2):
        response = anonymous.get(link)
        assert response.status_code == 200
        assert "はる" in response.content.decode()
        assert response["Referrer-Policy"] == "same-origin"
    rows = AuditEvent.objects.filter(action="emergency.card_open", outcome="success")
    assert rows.count() == 2
    assert {(r.actor_id, r.actor_role, r.patient_id) for r in rows} == {(None, "card", child.pk)}
    assert {r.detail["card"] for r in rows} == {card.pk}
    card.refresh_from_db()
    assert card.last_opened_at is not None


def test_it_asks_for_the_passcode_and_refuses_a_wrong_one(mother: User, child: Patient) -> None:
    client = Client()
    client.force_login(mother)
    create_card(client, child, passcode="2468")
    link = new_card_link(client)
    anonymous = Client()
    page = anonymous.get(link).content.decode()
    assert 'name="passcode"' in page
    assert "はる" not in page
    response = anonymous.post(link, {"passcode": "1357"})
    assert response.status_code == 403
    assert "はる" not in response.content.decode()
    assert AuditEvent.objects.filter(action="emergency.card_open", outcome="denied").count() == 1
    response = anonymous.post(link, {"passcode": "2468"})
    assert response.status_code == 200
    assert "はる" in response.content.decode()


def test_it_shows_the_same_404_page_for_revoked_expired_and_unknown_cards(
    mother: User, child: Patient
) -> None:
    card, token = emergency.card_create(patient=child, by=mother, days=30)
    _expiring, expiring_token = emergency.card_create(patient=child, by=mother, days=1)
    client = Client()
    client.force_login(mother)
    response = client.post(reverse("emergency:cards"), {"action": "revoke", "card": card.pk})
    assert response.status_code == 302
    card.refresh_from_db()
    assert card.revoked_at is not None

    anonymous = Client()
    links = [f"/emergency/c/{token}/", f"/emergency/c/{'x' * 43}/", "/emergency/c/short/"]
    with time_machine.travel(timezone.now() + timedelta(days=2)):
        links.append(f"/emergency/c/{expiring_token}/")
        for link in links:
            response = anonymous.get(link)
            assert response.status_code == 404, link
            html = response.content.decode()
            assert "このカードは無効です" in html
            assert "This card is not valid" in html
            assert "はる" not in html
    assert not AuditEvent.objects.filter(action="emergency.card_open").exists()


def test_it_refuses_a_card_for_someone_elses_child(stranger: User, child: Patient) -> None:
    client = Client()
    client.force_login(stranger)
    assert create_card(client, child).status_code == 404
    assert not EmergencyCard.objects.exists()
    with pytest.raises(PermissionDenied):
        emergency.card_create(patient=child, by=stranger)
    assert not EmergencyCard.objects.exists()


def test_it_refuses_cards_to_a_dv_blocked_guardian(
    father: User, child: Patient, municipality: Organization, municipal_officer: User
) -> None:
    DvBlock.objects.create(
        patient=child, blocked_user=father, municipality=municipality, created_by=municipal_officer
    )
    client = Client()
    client.force_login(father)
    assert create_card(client, child).status_code == 404
    assert "はる" not in client.get(reverse("emergency:cards")).content.decode()


def test_it_validates_the_card_period(mother: User, child: Patient) -> None:
    client = Client()
    client.force_login(mother)
    response = client.post(
        reverse("emergency:cards"),
        {"action": "create", "patient": str(child.pk), f"p-{child.pk}-days": 4000},
    )
    assert response.status_code == 400
    assert not EmergencyCard.objects.exists()


def test_it_throttles_card_openings_per_address(mother: User, child: Patient) -> None:
    _card, token = emergency.card_create(patient=child, by=mother)
    anonymous = Client()
    statuses = [anonymous.get(f"/emergency/c/{token}/").status_code for _ in range(31)]
    assert statuses[:30] == [200] * 30
    assert statuses[30] == 429


def test_it_lets_a_responder_find_a_person_by_the_emergency_card(
    responder: User, mother: User, child: Patient
) -> None:
    _card, token = emergency.card_create(patient=child, by=mother)
    client = Client()
    client.force_login(responder)
    response = client.post(
        reverse("emergency:find"),
        {"method": "card", "card-card_link": f"https://phr.example.jp/emergency/c/{token}/"},
    )
    assert "1件一致" in response.content.decode()
