"""manage.py seed_demo (phr.demo): what it seeds, that seeding twice
changes nothing, and that the demo accounts can log in.

Expected checkups and vaccinations are derived here from the reference
tables in phr/reference_data (copies of ../shared/reference/data; not from
phr.demo), so the demo and the schedule cannot drift apart silently.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine
from allauth.account.models import EmailAddress
from allauth.mfa.models import Authenticator
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.test import Client
from fhir.resources.R4B import get_fhir_model_class

from phr import demo
from phr.identifiers import validate_medical_institution_code, validate_municipality_code
from phr.models import (
    Guardianship,
    Membership,
    Organization,
    Patient,
    Provenance,
    Residency,
    Resource,
    ResourceHistory,
    Role,
    User,
)
from phr.terminology import CATEGORY_SYSTEM, LOINC
from tests.factories import UserFactory
from tests.totp import code_for_secret

try:  # phr.fhir renders a stored row as a client sees it (id and meta added)
    from phr.fhir import to_fhir
except ImportError:  # pragma: no cover - before phr/fhir.py landed

    def to_fhir(row: Any) -> dict[str, Any]:
        return {**row.content, "id": str(row.id)}


TOKYO = ZoneInfo("Asia/Tokyo")
TODAY = date(2026, 11, 26)
REFERENCE = Path(settings.BASE_DIR) / "phr" / "reference_data"
BASE32 = re.compile(r"\b[A-Z2-7]{32}\b")
STAFF = [a.email for a in demo.ACCOUNTS if a.role != "parent"]


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def seed(*args: str) -> str:
    out = io.StringIO()
    call_command("seed_demo", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def pinned(day: date) -> Any:
    return time_machine.travel(datetime(day.year, day.month, day.day, 10, tzinfo=TOKYO), tick=False)


def reference_rows(name: str) -> list[dict[str, str]]:
    path = REFERENCE / name
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return list(csv.DictReader(line for line in lines if not line.startswith("#")))


def counts() -> dict[str, int]:
    return {
        "users": User.objects.count(),
        "organizations": Organization.objects.count(),
        "memberships": Membership.objects.count(),
        "patients": Patient.objects.count(),
        "guardianships": Guardianship.objects.count(),
        "residencies": Residency.objects.count(),
        "resources": Resource.objects.count(),
        "history": ResourceHistory.objects.count(),
        "provenance": Provenance.objects.count(),
        "emails": EmailAddress.objects.count(),
        "authenticators": Authenticator.objects.count(),
    }


def secrets_by_email(output: str) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for line in output.splitlines():
        for account in demo.ACCOUNTS:
            if line.startswith(account.email):
                match = BASE32.search(line)
                found[account.email] = match.group(0) if match else None
    return found


def child() -> Patient:
    return Guardianship.objects.get(guardian__email=demo.PARENT_EMAIL).child


def records(patient: Patient, resource_type: str) -> list[Resource]:
    return list(
        Resource.objects.filter(resource_type=resource_type, compartments__contains=[patient.id])
    )


def has_code(resource: Resource, system: str, code: str) -> bool:
    codings = (resource.content.get("code") or {}).get("coding") or []
    return any(c.get("system") == system and c.get("code") == code for c in codings)


def months_between(start: date, end: date) -> int:
    """Completed calendar months from `start` to `end`."""
    return (end.year - start.year) * 12 + end.month - start.month - (end.day < start.day)


# --- the immunization schedule, read from the reference CSV ------------------


def _reference_dose(row: dict[str, str], number: int) -> int:
    """The dose an interval counts from: "previous dose", "dose 1", "3rd dose"."""
    text = row["interval_reference"]
    match = re.search(r"(\d+)", text)
    return int(match.group(1)) if match else number - 1


def _interval_days(row: dict[str, str]) -> int | None:
    """min_interval_days, when the rule is in days ("(6 months)" is not)."""
    text = row["min_interval_days"]
    return int(text) if text.isdigit() else None


def standard_start(row: dict[str, str], birth: date, doses: dict[int, date]) -> date | None:
    """The first day of a dose's standard window in the schedule CSV: an age
    (生後N月, N歳, 出生N週), or an interval after an earlier dose (N～M日間隔,
    初回終了後 N～M月, 1回目から N～M月), else the legal minimum interval or
    the start of the legal age."""
    number = int(row["dose_no"])
    standard, legal = row["standard_age"], row["eligible_age_legal"]
    if match := re.search(r"生後(\d+)", standard):
        return demo.add_months(birth, int(match.group(1)))
    if match := re.search(r"(?:初回終了後|1回目から)\s*(\d+)～\d+月", standard):
        earlier = doses.get(_reference_dose(row, number))
        return demo.add_months(earlier, int(match.group(1))) if earlier else None
    if match := re.search(r"(\d+)～\d+日", standard):
        earlier = doses.get(_reference_dose(row, number))
        return earlier + timedelta(days=int(match.group(1))) if earlier else None
    if match := re.search(r"(\d+)歳", standard):
        return demo.add_months(birth, 12 * int(match.group(1)))
    if (days := _interval_days(row)) is not None:
        earlier = doses.get(_reference_dose(row, number))
        return earlier + timedelta(days=days) if earlier else None
    if match := re.search(r"出生(\d+)週", legal):
        return birth + timedelta(weeks=int(match.group(1)))
    if match := re.search(r"生後(\d+)月", legal):
        return demo.add_months(birth, int(match.group(1)))
    if match := re.search(r"(\d+)歳", legal):
        return demo.add_months(birth, 12 * int(match.group(1)))
    return None


# Products a child gets one of: the demo uses 5種混合 and the monovalent
# rotavirus vaccine, so single Hib and the pentavalent vaccine are not due.
ALTERNATIVES = ("Hib(単独)", "ロタウイルス 5価(ロタテック)")


def due_doses(birth: date, today: date) -> Counter[str]:
    """Doses per vaccine (vaccine_ja) whose standard date is on or before today."""
    by_vaccine: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in reference_rows("immunization_schedule_jp.csv"):
        if row["vaccine_ja"] not in ALTERNATIVES:
            by_vaccine[row["vaccine_ja"]].append(row)
    due: Counter[str] = Counter()
    for vaccine, rows in by_vaccine.items():
        doses: dict[int, date] = {}
        for row in sorted(rows, key=lambda r: int(r["dose_no"])):
            start = standard_start(row, birth, doses)
            if start is None or start > today:
                break
            doses[int(row["dose_no"])] = start
            due[vaccine] += 1
    return due


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


@pytest.fixture
def today(db: None) -> Iterator[date]:
    with pinned(TODAY):
        yield TODAY


@pytest.fixture
def output(today: date) -> str:
    return seed()


# --------------------------------------------------------------------------
# Idempotence and the printed accounts
# --------------------------------------------------------------------------


def test_it_changes_nothing_when_run_a_second_time(output: str) -> None:
    before = counts()
    again = seed()
    assert counts() == before
    assert "(0 records written" in again
    assert before["resources"] > 0
    assert before["history"] == before["resources"]


def test_it_keeps_the_family_dates_when_run_again_weeks_later(output: str) -> None:
    # The family is anchored on the first seeding day: a later run must not
    # move birth dates and so fork checkups and vaccinations into new records.
    before = counts()
    with pinned(TODAY + timedelta(days=45)):
        seed()
    assert counts() == before


def test_it_prints_each_account_and_a_totp_secret_for_each_staff_account(output: str) -> None:
    secrets = secrets_by_email(output)
    assert set(secrets) == {a.email for a in demo.ACCOUNTS}
    assert secrets[demo.PARENT_EMAIL] is None  # MFA is optional for parents
    assert all(secrets[email] for email in STAFF)
    assert len({secrets[email] for email in STAFF}) == len(STAFF)
    assert settings.DEMO_PASSWORD in output


def test_it_prints_the_same_totp_secrets_on_the_second_run(output: str) -> None:
    assert secrets_by_email(seed()) == secrets_by_email(output)
    assert Authenticator.objects.filter(type=Authenticator.Type.TOTP).count() == len(STAFF)


def test_it_skips_with_if_empty_when_a_user_exists(db: None) -> None:
    UserFactory()
    text = seed("--if-empty")
    assert "skipped" in text
    assert Organization.objects.count() == 0
    assert Resource.objects.count() == 0


def test_it_seeds_an_empty_database_with_if_empty(today: date) -> None:
    seed("--if-empty")
    assert User.objects.filter(email__endswith=f"@{demo.DOMAIN}").count() == len(demo.ACCOUNTS)


# --------------------------------------------------------------------------
# Organizations and accounts
# --------------------------------------------------------------------------


def test_it_creates_the_four_organizations_with_valid_codes(output: str) -> None:
    orgs = {o.kind: o for o in Organization.objects.all()}
    assert set(orgs) == set(Organization.Kind.values)
    assert (orgs["municipality"].name, orgs["municipality"].code) == ("前橋市", "102016")
    validate_municipality_code(orgs["municipality"].code)
    clinic = orgs["clinic"]
    validate_medical_institution_code(clinic.code)
    assert clinic.code[:3] == "101"  # 群馬, 医科
    assert clinic.prefecture == "10"
    with pytest.raises(ValidationError):  # one wrong digit breaks the check digit
        validate_medical_institution_code(clinic.code[:-1] + str((int(clinic.code[-1]) + 1) % 10))


def test_it_gives_each_staff_account_its_role_and_verified_email(output: str) -> None:
    roles = {
        m.user.email: (m.role, m.organization.kind, m.is_privacy_officer)
        for m in Membership.objects.select_related("user", "organization")
    }
    assert roles == {
        f"clinic@{demo.DOMAIN}": (Role.CLINIC_STAFF, "clinic", False),
        f"municipal@{demo.DOMAIN}": (Role.MUNICIPAL_STAFF, "municipality", True),
        f"emergency@{demo.DOMAIN}": (Role.EMERGENCY_RESPONDER, "emergency", False),
        f"researcher@{demo.DOMAIN}": (Role.RESEARCHER, "research", False),
    }
    admin = User.objects.get(email=f"admin@{demo.DOMAIN}")
    assert (admin.is_platform_admin, admin.is_staff, admin.is_superuser) == (True, True, True)
    assert not User.objects.get(email=demo.PARENT_EMAIL).is_staff
    for account in demo.ACCOUNTS:
        address = EmailAddress.objects.get(email=account.email)
        assert (address.verified, address.primary) == (True, True)


def test_the_parent_can_log_in_with_the_demo_password(output: str, client: Client) -> None:
    # Through allauth's form, so a missing email verification would show.
    response = client.post(
        "/accounts/login/", {"login": demo.PARENT_EMAIL, "password": settings.DEMO_PASSWORD}
    )
    assert response.status_code == 302
    assert "confirm-email" not in response["Location"]
    parent = User.objects.get(email=demo.PARENT_EMAIL)
    assert client.session["_auth_user_id"] == str(parent.pk)


def test_a_staff_account_logs_in_with_the_printed_totp_secret(output: str, client: Client) -> None:
    email = f"municipal@{demo.DOMAIN}"
    secret = secrets_by_email(output)[email]
    assert secret is not None
    response = client.post("/accounts/login/", {"login": email, "password": settings.DEMO_PASSWORD})
    assert response.status_code == 302
    assert "2fa" in response["Location"]
    assert "_auth_user_id" not in client.session  # not before the second factor
    code = code_for_secret(secret)
    response = client.post(response["Location"], {"code": code})
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(User.objects.get(email=email).pk)


# --------------------------------------------------------------------------
# The family
# --------------------------------------------------------------------------


@pytest.mark.parametrize("day", [TODAY, date(2027, 1, 31), date(2027, 3, 29)])
def test_the_child_is_14_months_old_and_the_mothers_ward(db: None, day: date) -> None:
    with pinned(day):
        seed()
    son = child()
    birth = date.fromisoformat(Resource.objects.get(id=son.id).content["birthDate"])
    assert months_between(birth, day) == 14
    assert birth.day <= 28  # no month-end clamping anywhere in its schedule
    mother = Patient.objects.get(account__email=demo.PARENT_EMAIL)
    assert (mother.kind, son.kind) == (Patient.Kind.ADULT, Patient.Kind.CHILD)
    residents = ((mother, demo.MOTHER_RESIDENT_NUMBER), (son, demo.CHILD_RESIDENT_NUMBER))
    for patient, number in residents:
        residency = Residency.objects.get(patient=patient)
        assert (residency.municipality.code, residency.resident_number) == ("102016", number)
        identifiers = Resource.objects.get(id=patient.id).content["identifier"]
        assert {"system": "urn:hagukumi:resident-number:102016", "value": number} in identifiers


def test_the_mother_is_pregnant_and_due_next_spring(output: str) -> None:
    mother = Patient.objects.get(account__email=demo.PARENT_EMAIL)
    (episode,) = records(mother, "EpisodeOfCare")
    assert episode.content["status"] == "active"
    (edd_row,) = [r for r in records(mother, "Observation") if has_code(r, LOINC, "11778-8")]
    assert edd_row.category == "pregnancy"
    edd = date.fromisoformat(edd_row.content["valueDateTime"])
    assert edd.year == TODAY.year + 1
    assert edd.month in (3, 4)
    gestation_weeks = (280 - (edd - TODAY).days) / 7
    assert 12 <= gestation_weeks <= 37


def test_the_prenatal_checkups_come_from_the_clinic(output: str) -> None:
    mother = Patient.objects.get(account__email=demo.PARENT_EMAIL)
    clinic = Organization.objects.get(kind="clinic")
    encounters = records(mother, "Encounter")
    assert len(encounters) >= 1
    for encounter in encounters:
        assert encounter.category == "prenatal_checkups"
        provenance = Provenance.objects.get(pk=encounter.provenance_id)
        assert (provenance.origin, provenance.agent_org_id) == ("clinic", clinic.pk)
        inside = [
            r
            for r in records(mother, "Observation")
            if r.content.get("encounter", {}).get("reference") == f"Encounter/{encounter.id}"
        ]
        for code in ("85354-9", "29463-7", "11881-0"):
            assert any(has_code(r, LOINC, code) for r in inside), code
        (bp,) = [r for r in inside if has_code(r, LOINC, "85354-9")]
        components = {c["code"]["coding"][0]["code"] for c in bp.content["component"]}
        assert components == {"8480-6", "8462-4"}


def test_the_child_has_the_checkups_held_by_14_months(output: str) -> None:
    def age_months(name: str) -> int:
        if match := re.match(r"(\d+)歳(\d+)か月", name):
            return 12 * int(match.group(1)) + int(match.group(2))
        if match := re.match(r"(\d+)歳", name):
            return 12 * int(match.group(1))
        match = re.match(r"(\d+)", name)
        assert match, name
        return int(match.group(1))

    expected = {
        row["checkup"]
        for row in reference_rows("infant_checkups_jp.csv")
        if age_months(row["checkup"]) <= 14
    }
    son = child()
    municipality = Organization.objects.get(kind="municipality")
    encounters = records(son, "Encounter")
    assert {e.content["type"][0]["text"] for e in encounters} == expected
    assert len(encounters) == 4
    observations = records(son, "Observation")
    for encounter in encounters:
        assert encounter.content["class"]["code"] == "AMB"
        assert encounter.category == "infant_checkups"
        assert encounter.source_system == "urn:hagukumi:municipality:102016:infant-checkup"
        provenance = Provenance.objects.get(pk=encounter.provenance_id)
        assert (provenance.origin, provenance.agent_org_id) == ("municipality", municipality.pk)
        inside = [
            r
            for r in observations
            if r.content.get("encounter", {}).get("reference") == f"Encounter/{encounter.id}"
        ]
        for code in ("29463-7", "8306-3", "9843-4", "8279-2"):
            assert sum(has_code(r, LOINC, code) for r in inside) == 1, code
        (judgement,) = [r for r in inside if "valueCodeableConcept" in r.content]
        assert judgement.content["valueCodeableConcept"]["text"] == "所見なし"
        assert all(r.category == "infant_checkups" for r in inside)


def test_the_childs_length_and_weight_sit_inside_the_2023_reference(output: str) -> None:
    # Between the boys' p3 and p97 of the survey's age band, and nearer p50 than
    # either: the demo interpolates p50 between the bands' middles.
    bands = {
        int(row["age_months"]): row
        for row in reference_rows("growth_percentiles_jp2023_p3_p50_p97.csv")
        if row["sex"] == "M"
    }
    son = child()
    birth = date.fromisoformat(Resource.objects.get(id=son.id).content["birthDate"])
    checked = 0
    for row in records(son, "Observation"):
        for code, column in (("29463-7", "weight"), ("8306-3", "height")):
            if not has_code(row, LOINC, code):
                continue
            months = months_between(birth, date.fromisoformat(row.content["effectiveDateTime"]))
            band = bands[months if months < 12 else 12 + 6 * ((months - 12) // 6)]
            value = row.content["valueQuantity"]["value"]
            low, mid, high = (
                float(band[f"{column}_{p}_{'kg' if column == 'weight' else 'cm'}"])
                for p in ("p3", "p50", "p97")
            )
            assert low <= value <= high, (code, months, value)
            assert abs(value - mid) < (high - low) / 2, (code, months, value)
            checked += 1
    assert checked == 8


def test_the_child_has_the_vaccinations_due_by_14_months(output: str) -> None:
    son = child()
    birth = date.fromisoformat(Resource.objects.get(id=son.id).content["birthDate"])
    expected = due_doses(birth, TODAY)
    # The demo leaves MR 第1期 for the family (the handbook shows it due).
    expected["麻しん風しん(MR)"] -= 1
    seeded: Counter[str] = Counter()
    municipality = Organization.objects.get(kind="municipality")
    for row in records(son, "Immunization"):
        (coding,) = row.content["vaccineCode"]["coding"]
        assert coding["system"] == demo.VACCINE_SYSTEM
        seeded[demo.VACCINES[coding["code"]].schedule_name] += 1
        assert row.source_system == "urn:hagukumi:municipality:102016:vaccination"
        provenance = Provenance.objects.get(pk=row.provenance_id)
        assert (provenance.origin, provenance.agent_org_id) == ("municipality", municipality.pk)
        assert date.fromisoformat(row.content["occurrenceDateTime"]) <= TODAY
    assert seeded == expected


def test_each_dose_keeps_the_legal_age_and_minimum_interval(output: str) -> None:
    son = child()
    birth = date.fromisoformat(Resource.objects.get(id=son.id).content["birthDate"])
    given: dict[str, dict[int, date]] = defaultdict(dict)
    for row in records(son, "Immunization"):
        vaccine = demo.VACCINES[row.content["vaccineCode"]["coding"][0]["code"]].schedule_name
        number = row.content["protocolApplied"][0]["doseNumberPositiveInt"]
        given[vaccine][number] = date.fromisoformat(row.content["occurrenceDateTime"])
    checked = 0
    for rule in reference_rows("immunization_schedule_jp.csv"):
        doses = given.get(rule["vaccine_ja"], {})
        number = int(rule["dose_no"])
        if number not in doses:
            continue
        when, legal = doses[number], rule["eligible_age_legal"]
        assert sorted(doses) == list(range(1, len(doses) + 1))
        if match := re.search(r"生後(\d+)月", legal):
            assert when >= demo.add_months(birth, int(match.group(1)))
        if match := re.search(r"出生(\d+)週\d+日後～(\d+)週", legal):
            assert birth + timedelta(weeks=int(match.group(1))) <= when
            assert when <= birth + timedelta(weeks=int(match.group(2)))
        if "1歳に至るまで" in legal:
            assert when < demo.add_months(birth, 12)
        earlier = doses.get(_reference_dose(rule, number))
        if (days := _interval_days(rule)) is not None and earlier:
            assert (when - earlier).days >= days, rule
        if (match := re.match(r"(\d+)月以上", rule["min_interval"])) and earlier:
            assert when >= demo.add_months(earlier, int(match.group(1))), rule
        if "1歳以上" in rule["min_interval"]:
            assert when >= demo.add_months(birth, 12)
        checked += 1
    assert checked == Resource.objects.filter(resource_type="Immunization").count()


@pytest.mark.parametrize("month", range(1, 13))
def test_the_due_date_keeps_the_pregnancy_plausible_all_year(month: int) -> None:
    anchor = date(2026, month, 15)
    edd = demo.due_date(anchor)
    weeks = (280 - (edd - anchor).days) / 7
    assert 20 <= weeks <= 36
    if month >= 10 or month <= 3:  # then next spring is within reach
        assert edd.month in (3, 4)


# --------------------------------------------------------------------------
# FHIR validity and categories
# --------------------------------------------------------------------------


def test_every_seeded_resource_is_valid_fhir_r4b(output: str) -> None:
    rows = list(Resource.objects.all())
    assert {r.resource_type for r in rows} == {
        "Patient",
        "EpisodeOfCare",
        "Encounter",
        "Observation",
        "Immunization",
    }
    for row in rows:
        get_fhir_model_class(row.resource_type).model_validate(to_fhir(row))


def test_every_clinical_record_carries_its_data_category_tag(output: str) -> None:
    for row in Resource.objects.exclude(resource_type="Patient"):
        tags = [t for t in row.content["meta"]["tag"] if t["system"] == CATEGORY_SYSTEM]
        assert [t["code"] for t in tags] == [row.category], row.content
        # Idempotent by source identifier.
        assert row.source_system
        assert row.source_value
