"""The medication notebook service (phr/medications.py): JAHIS → FHIR,
idempotent imports, corrected re-imports, split parts across
submissions, manual entries, "current medicines", and FHIR validity of
everything written."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine
from fhir.resources.R4B import get_fhir_model_class

from phr import jahis, medications, store
from phr.fhir import to_fhir
from phr.identifiers import MEDICAL_INSTITUTION_SYSTEM
from phr.models import Patient, Provenance, Resource, ResourceHistory, User
from phr.services import provenance_create
from phr.terminology import CATEGORY_SYSTEM

pytestmark = pytest.mark.django_db

JAPAN = ZoneInfo("Asia/Tokyo")
# Copies of ../shared/reference/data/jahis_tc_* kept in the repository.
REFERENCE = Path(__file__).resolve().parents[2] / "phr" / "reference_data"
SAMPLE = (REFERENCE / "jahis_tc_sample_utf8.txt").read_text(encoding="utf-8")
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=JAPAN)

NOTES_AND_OTC = "\n".join(
    [
        "JAHISTC07,1",
        "2,1,ペニシリン系抗生物質で発疹,1",
        "2,2,ロキソプロフェンで胃痛,2",
        "2,3,気管支喘息,1",
        "2,9,授乳中,2",
        "3,バファリンＡ,R080101,,2,1,4987306054721",
        "31,1,アセチルサリチル酸,1,,2",
        "3,パブロン,20250101,20250107,2,,",
    ]
)


def do_import(patient: Patient, user: User, text: str = SAMPLE, **kwargs: Any) -> Any:
    report, kept = medications.medications_import(
        patient=patient, user=user, text=text, via="paste", now=kwargs.pop("now", NOW), **kwargs
    )
    return report, kept


def rows(patient: Patient, resource_type: str) -> list[Resource]:
    return list(
        Resource.objects.filter(
            resource_type=resource_type, compartments__overlap=[patient.pk], deleted=False
        ).order_by("date_start", "id")
    )


def by_name(patient: Patient) -> dict[str, dict[str, Any]]:
    return {
        r.content["medicationCodeableConcept"]["text"]: r.content
        for r in rows(patient, "MedicationDispense")
    }


# --------------------------------------------------------------------------
# The mapping
# --------------------------------------------------------------------------


def test_it_turns_each_medicine_of_a_dispensing_into_a_medication_dispense(
    mother: User, mother_patient: Patient
) -> None:
    report, _ = do_import(mother_patient, mother)
    assert (report.documents, report.created, report.updated) == (1, 3, 0)
    assert report.errors == []
    found = by_name(mother_patient)
    assert set(found) == {"コリオパンカプセル5mg", "フェロベリン配合錠", "モーラステープ２０ｍｇ"}
    capsule = found["コリオパンカプセル5mg"]
    assert capsule["status"] == "completed"
    assert capsule["subject"] == {"reference": f"Patient/{mother_patient.pk}"}
    assert capsule["whenHandedOver"] == "2020-04-10"  # R020410
    # The receipt code (薬品コード種別 2) kept as a coding.
    assert capsule["medicationCodeableConcept"]["coding"] == [
        {
            "system": medications.RECEIPT_SYSTEM,
            "code": "620004992",
            "display": "コリオパンカプセル5mg",
        }
    ]
    # 1日量 6 × 5日分
    assert capsule["quantity"] == {"value": 30, "unit": "Ｃ"}
    assert capsule["daysSupply"]["value"] == 5
    assert capsule["dosageInstruction"][0]["text"] == "【分３ 毎食後服用】 1日6Ｃ 5日分"
    ratio = capsule["dosageInstruction"][0]["doseAndRate"][0]["rateRatio"]
    assert ratio["numerator"] == {"value": 6, "unit": "Ｃ"}
    # The pharmacy by its 10-digit 医療機関コード (13 + 4 + 1234567).
    (pharmacy, pharmacist) = capsule["performer"]
    assert pharmacy["actor"]["display"] == "株式会社 工業会薬局 駅前店"
    assert pharmacy["actor"]["identifier"] == {
        "system": MEDICAL_INSTITUTION_SYSTEM,
        "value": "1341234567",
    }
    assert pharmacist["actor"]["display"] == "薬剤師 太郎"
    contained = {c["id"]: c for c in capsule["contained"]}
    assert contained["pharmacy"]["address"][0]["text"] == "東京都港区新橋1丁目11番"
    assert contained["prescription"]["requester"]["display"] == "医療法人 工業会病院 工業会 次郎"
    assert contained["prescriber-role"]["specialty"] == [{"text": "内科"}]
    assert contained["prescriber-org"]["identifier"][0]["value"] == "1311234567"
    assert capsule["note"] == [
        {"text": "服用注意: 他の薬を併用する際は、相談してください。"},
        {"text": "備考: 正しい飲み方は薬袋等をご覧下さい。"},
    ]
    assert {"text": "薬品補足: 一包化"} in found["フェロベリン配合錠"]["note"]
    tape = found["モーラステープ２０ｍｇ"]
    # 外用: the dose is the whole amount, no days of supply.
    assert tape["quantity"] == {"value": 7, "unit": "枚"}
    assert "daysSupply" not in tape
    assert tape["dosageInstruction"][0]["additionalInstruction"] == [
        {"text": "車の運転は控えてください。"}
    ]


def test_yj_and_hot_codes_are_kept_with_jp_core_systems(
    mother: User, mother_patient: Patient
) -> None:
    text = "\n".join(
        [
            "JAHISTC08,1",
            "5,20261120,1",
            "201,1,カロナール錠２００,3,錠,4,1141007F1063,1,アセトアミノフェン,2,2",
            "201,1,ムコダイン錠２５０ｍｇ,3,錠,6,103835401,1",
            "201,1,ビオフェルミン錠,3,錠,3,2316004F1030,1",
            "301,1,毎食後,7,日分,1,2,1013044400000000,1",
        ]
    )
    report, _ = do_import(mother_patient, mother, text)
    assert report.created == 3
    found = by_name(mother_patient)
    assert found["カロナール錠２００"]["medicationCodeableConcept"]["coding"][0] == {
        "system": "http://capstandard.jp/iyaku.info/CodeSystem/YJ-code",
        "code": "1141007F1063",
        "display": "カロナール錠２００",
    }
    assert found["ムコダイン錠２５０ｍｇ"]["medicationCodeableConcept"]["coding"][0]["system"] == (
        "http://medis.or.jp/CodeSystem/master-HOT9"
    )
    assert found["ビオフェルミン錠"]["medicationCodeableConcept"]["coding"][0]["system"] == (
        medications.MHLW_DRUG_SYSTEM
    )
    timing = found["カロナール錠２００"]["dosageInstruction"][0]["timing"]
    assert timing["code"]["coding"][0] == {
        "system": "http://jami.jp/CodeSystem/MedicationUsage",
        "code": "1013044400000000",
    }


def test_imported_records_name_the_pharmacy_as_origin_and_the_medications_category(
    mother: User, mother_patient: Patient
) -> None:
    do_import(mother_patient, mother)
    for row in rows(mother_patient, "MedicationDispense"):
        assert row.category == "medications"
        provenance = Provenance.objects.get(pk=row.provenance_id)
        assert provenance.origin == Provenance.Origin.PHARMACY
        assert provenance.agent_user == mother
        assert {"system": CATEGORY_SYSTEM, "code": "medications"} in row.content["meta"]["tag"]


def test_notes_become_allergies_and_conditions_and_otc_medicines_statements(
    mother: User, mother_patient: Patient
) -> None:
    report, _ = do_import(mother_patient, mother, NOTES_AND_OTC)
    allergies = rows(mother_patient, "AllergyIntolerance")
    assert {a.content["code"]["text"]: a.content["type"] for a in allergies} == {
        "ペニシリン系抗生物質で発疹": "allergy",
        "ロキソプロフェンで胃痛": "intolerance",
    }
    verification = {
        a.content["code"]["text"]: a.content["verificationStatus"]["coding"][0]["code"]
        for a in allergies
    }
    # Written by a health professional (作成者 1) is confirmed; by the patient, not.
    assert verification["ペニシリン系抗生物質で発疹"] == "confirmed"
    assert verification["ロキソプロフェンで胃痛"] == "unconfirmed"
    assert all(a.category == "allergies_conditions" for a in allergies)
    (condition,) = rows(mother_patient, "Condition")
    assert condition.content["code"]["text"] == "気管支喘息"
    statements = {
        s.content["medicationCodeableConcept"]["text"]: s.content
        for s in rows(mother_patient, "MedicationStatement")
    }
    assert statements["バファリンＡ"]["status"] == "active"
    assert statements["バファリンＡ"]["effectivePeriod"] == {"start": "2026-01-01"}
    assert statements["バファリンＡ"]["medicationCodeableConcept"]["coding"] == [
        {"system": medications.JAN_SYSTEM, "code": "4987306054721"}
    ]
    assert {"text": "成分: アセチルサリチル酸"} in statements["バファリンＡ"]["note"]
    assert statements["パブロン"]["status"] == "completed"
    # Kind 9 is read, and said not to be imported.
    assert any(i.code == "not_imported" and i.record == "2" for i in report.notices)


def test_everything_written_is_valid_fhir(mother: User, mother_patient: Patient) -> None:
    do_import(mother_patient, mother)
    do_import(mother_patient, mother, NOTES_AND_OTC)
    medications.statement_save(
        patient=mother_patient,
        user=mother,
        name="葉酸サプリ",
        dosage="1日1錠",
        start=date(2026, 10, 1),
        end=date(2026, 12, 31),
        note="妊娠中",
    )
    written = Resource.objects.filter(compartments__overlap=[mother_patient.pk]).exclude(
        resource_type="Patient"
    )
    assert written.count() == 3 + 2 + 1 + 2 + 1
    for row in written:
        resource = to_fhir(row)
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)


# --------------------------------------------------------------------------
# Idempotency and corrections
# --------------------------------------------------------------------------


def test_importing_the_same_data_twice_adds_nothing(mother: User, mother_patient: Patient) -> None:
    do_import(mother_patient, mother)
    history = ResourceHistory.objects.count()
    provenances = Provenance.objects.count()
    report, _ = do_import(mother_patient, mother)
    assert (report.created, report.updated, report.unchanged) == (0, 0, 3)
    assert len(rows(mother_patient, "MedicationDispense")) == 3
    assert ResourceHistory.objects.count() == history
    assert Provenance.objects.count() == provenances  # no empty provenance left behind
    # Also from Shift_JIS bytes with CR+LF: the same records.
    text, _ = jahis.decode((REFERENCE / "jahis_tc_sample_sjis.txt").read_bytes())
    report, _ = do_import(mother_patient, mother, text)
    assert report.unchanged == 3


def test_the_same_data_for_another_person_is_another_record(
    mother: User, mother_patient: Patient, child: Patient
) -> None:
    do_import(mother_patient, mother)
    report, _ = do_import(child, mother)
    assert report.created == 3


def test_a_corrected_document_updates_the_records_it_corrects(
    mother: User, mother_patient: Patient
) -> None:
    do_import(mother_patient, mother)
    corrected = SAMPLE.replace(
        "301,1,【分３ 毎食後服用】,5,日分", "301,1,【分３ 毎食後服用】,7,日分"
    )
    report, _ = do_import(mother_patient, mother, corrected)
    assert (report.created, report.updated, report.unchanged) == (0, 2, 1)
    found = by_name(mother_patient)
    assert found["コリオパンカプセル5mg"]["daysSupply"]["value"] == 7
    assert len(found) == 3
    capsule = next(
        r
        for r in rows(mother_patient, "MedicationDispense")
        if r.content["quantity"]["value"] == 42
    )
    assert capsule.version == 2


# --------------------------------------------------------------------------
# Split documents across submissions
# --------------------------------------------------------------------------


def parts(data_id: str = "20260310123000") -> list[str]:
    header, *records = SAMPLE.splitlines()
    cut = [records[:6], records[6:10], records[10:]]
    return ["\n".join([header, *body, f"911,{data_id},3,{seq}"]) for seq, body in enumerate(cut, 1)]


def test_split_parts_arriving_in_separate_submissions_are_kept_until_complete(
    mother: User, mother_patient: Patient
) -> None:
    third, first, second = parts()[2], parts()[0], parts()[1]
    report, kept = do_import(mother_patient, mother, third)
    assert report.written == 0
    (waiting,) = report.waiting
    assert (waiting.total, waiting.received, waiting.missing) == (3, (3,), (1, 2))
    assert any(i.code == "split_waiting" for i in report.issues)
    assert rows(mother_patient, "MedicationDispense") == []
    report, kept = do_import(mother_patient, mother, first, pending=kept)
    assert report.waiting[0].missing == (2,)
    report, kept = do_import(mother_patient, mother, second, pending=kept)
    assert report.waiting == []
    assert kept == {}
    assert report.created == 3
    assert len(rows(mother_patient, "MedicationDispense")) == 3


def test_kept_parts_expire_and_are_bounded() -> None:
    reading = jahis.read("\n".join(parts("1")[:1]))
    _, kept, _ = medications.pending_merge({}, reading.parts, now=NOW)
    _, later, waiting = medications.pending_merge(kept, [], now=NOW + timedelta(hours=25))
    assert later == {}
    assert waiting == []
    many = {}
    for n in range(medications.PENDING_MAX_DOCUMENTS + 5):
        reading = jahis.read(parts(str(n))[0])
        _, many, _ = medications.pending_merge(many, reading.parts, now=NOW + timedelta(seconds=n))
    assert len(many) == medications.PENDING_MAX_DOCUMENTS
    assert str(medications.PENDING_MAX_DOCUMENTS + 4) in many  # the newest are kept


def test_a_document_for_someone_else_is_imported_with_a_warning(
    mother: User, mother_patient: Patient
) -> None:
    report, _ = do_import(mother_patient, mother, birth_date=date(1994, 7, 12))
    assert report.created == 3
    assert [i.code for i in report.warnings] == ["other_person"]


def test_garbage_imports_nothing_and_says_why(mother: User, mother_patient: Patient) -> None:
    report, _ = do_import(mother_patient, mother, "これはお薬手帳ではありません")
    assert report.written == 0
    assert [i.code for i in report.errors] == ["before_header", "no_header"]


# --------------------------------------------------------------------------
# Manual entry
# --------------------------------------------------------------------------


def test_a_manual_entry_is_a_self_recorded_statement_its_author_can_edit(
    mother: User, mother_patient: Patient, father: User
) -> None:
    rid = medications.statement_save(
        patient=mother_patient, user=mother, name="鉄剤", dosage="1日2回", start=date(2026, 11, 1)
    )
    row = Resource.objects.get(pk=rid)
    assert row.content["status"] == "active"
    assert row.content["dosage"] == [{"text": "1日2回"}]
    assert Provenance.objects.get(pk=row.provenance_id).origin == Provenance.Origin.SELF
    assert medications.statement_author_id(rid) == mother.pk
    medications.statement_save(
        patient=mother_patient, user=mother, name="鉄剤", dosage="1日1回", resource_id=rid
    )
    row.refresh_from_db()
    assert row.version == 2
    assert row.content["dosage"] == [{"text": "1日1回"}]
    assert medications.statement_author_id(rid) == mother.pk  # the first author stays


def test_an_imported_statement_has_no_author_to_edit_it(
    mother: User, mother_patient: Patient
) -> None:
    do_import(mother_patient, mother, NOTES_AND_OTC)
    (statement, *_) = rows(mother_patient, "MedicationStatement")
    assert medications.statement_author_id(statement.pk) is None


# --------------------------------------------------------------------------
# Current medicines
# --------------------------------------------------------------------------


def dispensing(day: date, name: str, days: int | None, code: str = "") -> str:
    usage = f"301,1,毎食後,{days},日分,1,1,,1" if days else "301,1,頓用,5,回分,3,1,,1"
    kind = f"2,{code}" if code else "1,"
    return "\n".join(
        [
            "JAHISTC08,1",
            f"5,{day:%Y%m%d},1",
            "11,はぐくみ薬局,10,4,1234567,,,,1",
            f"201,1,{name},3,錠,{kind},1",
            usage,
        ]
    )


def _write_statement(patient: Patient, status: str, period: dict[str, str], name: str) -> None:
    store.record_write(
        {
            "resourceType": "MedicationStatement",
            "status": status,
            "medicationCodeableConcept": {"text": name},
            "subject": {"reference": f"Patient/{patient.pk}"},
            "effectivePeriod": period,
        },
        provenance=provenance_create(origin=Provenance.Origin.CLINIC),
    )


@time_machine.travel(NOW, tick=False)
def test_current_medicines_are_those_within_their_days_of_supply_or_still_taken(
    mother: User, mother_patient: Patient
) -> None:
    today = NOW.date()
    # Dispensed 3 days ago for 5 days: current. 10 days ago for 5: over.
    do_import(mother_patient, mother, dispensing(today - timedelta(days=3), "今の薬", 5))
    do_import(mother_patient, mother, dispensing(today - timedelta(days=10), "終わった薬", 5))
    # Exactly on the last day (D + N = today): still current.
    do_import(mother_patient, mother, dispensing(today - timedelta(days=7), "最終日の薬", 7))
    # No number of days (頓用): current for NO_DAYS_SUPPLY_CURRENT_DAYS.
    do_import(mother_patient, mother, dispensing(today - timedelta(days=20), "頓用の薬", None))
    do_import(mother_patient, mother, dispensing(today - timedelta(days=40), "昔の頓用", None))
    _write_statement(mother_patient, "active", {"start": "2026-01-01"}, "飲み続けている薬")
    _write_statement(
        mother_patient, "active", {"start": "2026-01-01", "end": "2026-11-25"}, "昨日まで"
    )
    _write_statement(mother_patient, "completed", {"start": "2026-01-01"}, "やめた薬")
    _write_statement(
        mother_patient, "active", {"start": "2026-11-01", "end": "2026-11-26"}, "今日まで"
    )
    current = medications.current_medicines(
        Resource.objects.filter(compartments__overlap=[mother_patient.pk]), today=today
    )
    assert {m.name for m in current} == {
        "今の薬",
        "最終日の薬",
        "頓用の薬",
        "飲み続けている薬",
        "今日まで",
    }
    now_medicine = next(m for m in current if m.name == "今の薬")
    assert now_medicine.until == today + timedelta(days=2)
    assert now_medicine.detail == "毎食後 1日3錠 5日分"


@time_machine.travel(NOW, tick=False)
def test_current_medicines_are_listed_once_per_medicine(
    mother: User, mother_patient: Patient
) -> None:
    today = NOW.date()
    do_import(
        mother_patient, mother, dispensing(today - timedelta(days=5), "カロナール", 14, "620000001")
    )
    do_import(
        mother_patient,
        mother,
        dispensing(today - timedelta(days=1), "カロナール錠", 14, "620000001"),
    )
    _write_statement(mother_patient, "active", {"start": "2026-11-20"}, "カロナール錠")
    current = medications.current_medicines(
        Resource.objects.filter(compartments__overlap=[mother_patient.pk]), today=today
    )
    (only,) = current
    # The most recent one stands for the medicine.
    assert only.since == today - timedelta(days=1)


def test_the_notebook_groups_dispensings_by_day_and_pharmacy_newest_first(
    mother: User, mother_patient: Patient
) -> None:
    do_import(mother_patient, mother)
    do_import(mother_patient, mother, dispensing(date(2026, 11, 20), "新しい薬", 7))
    visits = medications.notebook_visits(
        Resource.objects.filter(
            compartments__overlap=[mother_patient.pk], resource_type="MedicationDispense"
        )
    )
    assert [(v.day, v.pharmacy) for v in visits] == [
        (date(2026, 11, 20), "はぐくみ薬局"),
        (date(2020, 4, 10), "株式会社 工業会薬局 駅前店"),
    ]
    old = visits[1]
    assert old.pharmacy_code == "1341234567"
    assert old.prescriber == "医療法人 工業会病院 工業会 次郎"
    assert [line.name for line in old.lines] == [
        "コリオパンカプセル5mg",
        "フェロベリン配合錠",
        "モーラステープ２０ｍｇ",
    ]
    assert old.lines[0].amount == "30Ｃ"
    assert old.lines[0].days == 5


def test_ids_are_derived_from_the_record_identity() -> None:
    document = jahis.read(SAMPLE).documents[0]
    patient_id = uuid.uuid4()
    first = medications.dispense_resources(document, patient_id=patient_id)
    again = medications.dispense_resources(document, patient_id=patient_id)
    assert [s for _, s in first] == [s for _, s in again]
    assert len({s.value for _, s in first}) == 3


def test_a_large_notebook_file_goes_through_the_bulk_path_and_stays_idempotent(
    mother: User, mother_patient: Patient
) -> None:
    lines = ["JAHISTC08,1"]
    for day in range(1, 61):
        lines.append(f"5,{date(2025, 1, 1) + timedelta(days=day):%Y%m%d},1")
        lines.append(f"11,薬局{day},10,4,{1000000 + day},,,,1")
        for rp in range(1, 5):
            lines.append(f"201,{rp},薬{day}-{rp},1,錠,1,,1")
            lines.append(f"301,{rp},毎食後,7,日分,1,1,,1")
    text = "\n".join(lines)
    report, _ = do_import(mother_patient, mother, text)
    assert report.created == 240 > medications.COPY_FROM
    assert report.errors == []
    again, _ = do_import(mother_patient, mother, text)
    assert (again.created, again.unchanged) == (0, 240)
