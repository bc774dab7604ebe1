"""phr.schedules.child_schedule: the schedule from the records a user may
see, written through the record store like every source writes them."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import translation

from municipal_data.formats.common import CHECKUP_TYPE_SYSTEM as MUNICIPAL_CHECKUP_SYSTEM
from municipal_data.formats.common import VACCINE_SYSTEM as MUNICIPAL_VACCINE_SYSTEM
from phr import services, store
from phr.checkup_schedule import CHECKUP_TYPE_SYSTEM
from phr.models import Guardianship, Patient, Provenance
from phr.schedules import DueItem, child_schedule
from phr.terminology import CATEGORY_SYSTEM, Category
from phr.vaccination_schedule import VACCINE_SYSTEM
from sharing.models import ConsentPurpose
from sharing.services import consent_grant, dv_block_set
from tests import factories as f

BIRTH = date(2026, 4, 15)
TODAY = date(2026, 11, 26)


def _meta(category: str) -> dict[str, Any]:
    return {"tag": [{"system": CATEGORY_SYSTEM, "code": category}]}


def immunization(patient: Patient, code: str, when: str, dose: int, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Immunization",
        "meta": _meta(Category.VACCINATIONS),
        "status": extra.pop("status", "completed"),
        "vaccineCode": {"coding": [{"system": VACCINE_SYSTEM, "code": code}], "text": code},
        "patient": {"reference": f"Patient/{patient.pk}"},
        "occurrenceDateTime": when,
        "protocolApplied": [{"doseNumberPositiveInt": dose}],
        **extra,
    }


def checkup(patient: Patient, code: str, when: str) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "meta": _meta(Category.INFANT_CHECKUPS),
        "status": "finished",
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "AMB",
        },
        "type": [{"coding": [{"system": CHECKUP_TYPE_SYSTEM, "code": code}]}],
        "subject": {"reference": f"Patient/{patient.pk}"},
        "period": {"start": when, "end": when},
    }


def write(resource: dict[str, Any], origin: str, organization: Any = None) -> uuid.UUID:
    prov = services.provenance_create(origin=origin, organization=organization)
    rid, _, _ = store.record_write(resource, provenance=prov)
    return rid


@pytest.fixture
def baby(mother: Any, municipality: Any) -> Patient:
    """A girl born 2026-04-15, guarded by the mother."""
    prov = services.provenance_create(origin=Provenance.Origin.MUNICIPALITY)
    resource = services.patient_resource(
        family="前橋", given="さくら", birth_date=BIRTH, gender="female"
    )
    patient = services.patient_create(kind=Patient.Kind.CHILD, resource=resource, provenance=prov)
    services.guardianship_add(
        guardian=mother, child=patient, relationship=Guardianship.Relationship.MOTHER
    )
    services.residency_add(patient=patient, municipality=municipality, resident_number="C-9")
    return patient


def test_the_codes_are_the_municipal_formats_codes() -> None:
    # phr may not import municipal_data; the two constants must stay equal.
    assert VACCINE_SYSTEM == MUNICIPAL_VACCINE_SYSTEM
    assert CHECKUP_TYPE_SYSTEM == MUNICIPAL_CHECKUP_SYSTEM


def test_guardian_sees_the_schedule_with_one_dose_from_three_sources(
    mother: Any, baby: Patient, municipality: Any, clinic: Any
) -> None:
    # The same 5種混合 first dose from the municipality, the clinic (a day
    # later, a typo) and the parent: one dose, three sources, the register's date.
    write(immunization(baby, "dtap-ipv-hib", "2026-06-15", 1), "municipality", municipality)
    write(immunization(baby, "dtap-ipv-hib", "2026-06-16", 1), "clinic", clinic)
    write(immunization(baby, "dtap-ipv-hib", "2026-06-15", 1), "self")
    write(checkup(baby, "1m", "2026-05-16"), "municipality", municipality)

    schedule = child_schedule(user=mother, patient=baby, today=TODAY)

    assert schedule.birth_date == BIRTH
    dtp = next(p for p in schedule.vaccines if p.series == "dtap-ipv-hib")
    assert len(dtp.doses) == 1
    assert dtp.doses[0].on == date(2026, 6, 15)
    assert sorted(s.origin for s in dtp.doses[0].sources) == ["clinic", "municipality", "self"]
    assert {s.organization for s in dtp.doses[0].sources} >= {municipality.name, clinic.name}
    assert dtp.next_dose is not None
    assert dtp.next_dose.number == 2
    # 20日以上の間隔: from 6/15 + 21 days.
    assert dtp.next_dose.earliest == date(2026, 7, 6)
    one_month = next(c for c in schedule.checkups if c.code == "1m")
    assert one_month.status == "done"
    assert [v.on for v in one_month.visits] == [date(2026, 5, 16)]
    # A girl: HPV is in her schedule.
    assert any(p.series == "hpv" for p in schedule.vaccines)


def test_due_items_keys_labels_and_statuses(mother: Any, baby: Patient) -> None:
    write(immunization(baby, "dtap-ipv-hib", "2026-06-15", 1), "self")
    with translation.override("en"):
        items = child_schedule(user=mother, patient=baby, today=TODAY).due_items()
    by_key = {i.key: i for i in items}
    assert all(isinstance(i, DueItem) for i in items)
    # Dose 2 is past its standard 20–56-day spacing: overdue, until the 90-month limit.
    assert by_key["vaccine:dtap-ipv-hib:2"].status == "overdue"
    assert by_key["vaccine:dtap-ipv-hib:2"].label == "DTaP-IPV-Hib (5-in-1) dose 2"
    assert by_key["vaccine:dtap-ipv-hib:2"].due_until == date(2033, 10, 14)
    # The 6–7-month checkup (2026-10-15 … 2026-12-14) is due now.
    assert by_key["checkup:6-7m"].status == "due"
    # Rotavirus (over 32 weeks, with no dose) is no longer eligible: never an item.
    assert not any(k.startswith("vaccine:rotavirus") for k in by_key)
    # MR 第1期 starts 2027-04-14: not within 14 days, but within 140.
    assert "vaccine:mr:1" not in by_key
    with translation.override("en"):
        later = child_schedule(user=mother, patient=baby, today=TODAY).due_items(within_days=140)
    assert "vaccine:mr:1" in {i.key for i in later}
    with translation.override("ja"):
        items_ja = child_schedule(user=mother, patient=baby, today=TODAY).due_items()
    labels = {i.key: i.label for i in items_ja}
    assert labels["vaccine:dtap-ipv-hib:2"] == "5種混合 2回目"
    assert labels["checkup:6-7m"] == "6～7か月児健診"


def test_records_withheld_from_a_user_do_not_count_for_that_user(
    mother: Any, baby: Patient, clinic: Any, clinician: Any, municipality: Any
) -> None:
    write(immunization(baby, "bcg", "2026-09-20", 1), "municipality", municipality)
    write(checkup(baby, "3-4m", "2026-07-20"), "municipality", municipality)
    # The clinic sees the checkups only: the BCG is not given, for the clinic.
    consent_grant(
        patient=baby,
        by=mother,
        purpose=ConsentPurpose.CARE,
        categories=[Category.INFANT_CHECKUPS],
        grantee_org=clinic,
    )
    mine = child_schedule(user=mother, patient=baby, today=TODAY)
    theirs = child_schedule(user=clinician, patient=baby, today=TODAY)
    bcg = {s.series: s for s in mine.vaccines}["bcg"]
    assert bcg.status == "complete"
    # The clinic sees the child's Patient (birth date) under its consent.
    assert theirs.birth_date == BIRTH
    assert {s.series: s for s in theirs.vaccines}["bcg"].status == "due"
    assert {c.code: c for c in theirs.checkups}["3-4m"].status == "done"


def test_a_stranger_gets_nothing(baby: Patient, stranger: Any, municipality: Any) -> None:
    write(immunization(baby, "bcg", "2026-09-20", 1), "municipality", municipality)
    schedule = child_schedule(user=stranger, patient=baby, today=TODAY)
    assert schedule.birth_date is None
    assert schedule.vaccines == []
    assert schedule.checkups == []
    assert schedule.due_items() == []


def test_the_other_guardian_sees_the_same_schedule(
    mother: Any, baby: Patient, municipality: Any
) -> None:
    father = f.UserFactory(email="father2@example.jp")
    services.guardianship_add(
        guardian=father, child=baby, relationship=Guardianship.Relationship.FATHER
    )
    write(immunization(baby, "hepb", "2026-06-20", 1), "municipality", municipality)
    ours = child_schedule(user=mother, patient=baby, today=TODAY).due_items()
    theirs = child_schedule(user=father, patient=baby, today=TODAY).due_items()
    assert ours
    assert ours == theirs


def test_a_dv_blocked_guardian_gets_no_schedule(
    mother: Any, baby: Patient, municipality: Any, municipal_officer: Any
) -> None:
    # A DV/custody block cuts the named guardian off through every channel
    # (ARCHITECTURE.md): the schedule — and so the reminders — too.
    father = f.UserFactory(email="father3@example.jp")
    services.guardianship_add(
        guardian=father, child=baby, relationship=Guardianship.Relationship.FATHER
    )
    write(immunization(baby, "hepb", "2026-06-20", 1), "municipality", municipality)
    assert child_schedule(user=father, patient=baby, today=TODAY).due_items()
    dv_block_set(patient=baby, blocked_user=father, by=municipal_officer)
    # The next request: a fresh user object (grants are kept per request on it).
    father = type(father).objects.get(pk=father.pk)
    blocked = child_schedule(user=father, patient=baby, today=TODAY)
    assert blocked.birth_date is None
    assert blocked.due_items() == []
    assert child_schedule(user=mother, patient=baby, today=TODAY).due_items()


def test_not_given_subpotent_cancelled_and_foreign_coded_records_do_not_count(
    mother: Any, baby: Patient, municipality: Any
) -> None:
    write(immunization(baby, "bcg", "2026-09-20", 1, status="not-done"), "self")
    write(immunization(baby, "bcg", "2026-09-22", 1, isSubpotent=True), "clinic")
    cancelled = checkup(baby, "6-7m", "2026-10-20")
    cancelled["status"] = "cancelled"
    write(cancelled, "municipality", municipality)
    yj = immunization(baby, "bcg", "2026-09-21", 1)
    yj["vaccineCode"] = {
        "coding": [{"system": "urn:oid:1.2.392.100495.20.2.74", "code": "6311400A1010"}]
    }
    rid = write(yj, "clinic")
    schedule = child_schedule(user=mother, patient=baby, today=TODAY)
    assert {s.series: s for s in schedule.vaccines}["bcg"].doses == ()
    assert schedule.unplaced == [rid]
    assert {c.code: c for c in schedule.checkups}["6-7m"].status == "due"


def test_query_count_does_not_grow_with_records(
    mother: Any, baby: Patient, municipality: Any
) -> None:
    def count() -> int:
        child_schedule(user=mother, patient=baby, today=TODAY)  # warm the grant cache
        with CaptureQueriesContext(connection) as ctx:
            child_schedule(user=mother, patient=baby, today=TODAY)
        return len(ctx.captured_queries)

    write(immunization(baby, "bcg", "2026-09-20", 1), "municipality", municipality)
    few = count()
    for n, day in enumerate(("2026-06-15", "2026-07-15", "2026-08-15"), start=1):
        write(immunization(baby, "dtap-ipv-hib", day, n), "municipality", municipality)
        write(immunization(baby, "pcv20", day, n), "clinic")
        write(immunization(baby, "hepb", day, n), "self")
    for code, day in (("1m", "2026-05-16"), ("3-4m", "2026-07-20"), ("6-7m", "2026-10-20")):
        write(checkup(baby, code, day), "municipality", municipality)
    many = count()
    assert many == few
    assert few <= 3
