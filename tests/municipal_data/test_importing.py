"""The municipal import on the pipeline: upload → validate → confirm →
import; matching residents, the review queue, corrections, deletions,
moves, mothers, encodings, the same file twice."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from municipal_data.models import MatchReview, MotherChild
from phr.models import (
    Batch,
    BatchError,
    Guardianship,
    Organization,
    Patient,
    Residency,
    Resource,
    ResourceHistory,
    Role,
)
from phr.services import RESIDENT_NUMBER_SYSTEM
from sharing.access import visible_records
from tests import factories as f
from tests.municipal_data.pipeline_support import (
    confirm,
    csv_bytes,
    line,
    receive,
    registered_test_format,
    upload_and_import,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _format() -> Iterator[None]:
    with registered_test_format():
        yield


def observations() -> int:
    return Resource.objects.filter(resource_type="Observation", deleted=False).count()


def seen(user: Any) -> Any:
    return Resource.objects.filter(visible_records(user), resource_type="Observation")


def patient_of(municipality: Any, number: str) -> Patient:
    return Residency.objects.get(municipality=municipality, resident_number=number).patient


def test_upload_validate_confirm_import(municipality: Any, municipal_officer: Any) -> None:
    code = municipality.code
    data = csv_bytes(
        [
            line(code, "1001", "2025-05-01", "4.1", height="52.0", mother="9001"),
            line(code, "1001", "2025-08-01", "6.6"),
            line(code, "1002", "R7.6.1", "５.２", birth="令和7年1月15日", sex="男", mother="9001"),
        ]
    )
    batch = receive(municipality, data, user=municipal_officer)
    assert batch.status == Batch.Status.VALIDATED
    assert len(batch.sha256) == 64
    assert batch.size == len(data)
    assert batch.detected_encoding == "utf-8"
    assert batch.summary["rows"] == 3
    assert batch.summary["valid"] == 3
    assert batch.summary["new_patients"] == 3  # two children and their mother
    assert batch.summary["created"] == 4
    assert observations() == 0  # validation writes nothing clinical

    batch = confirm(batch, municipal_officer)
    assert batch.status == Batch.Status.IMPORTED
    assert batch.result["created"] == 4
    assert batch.result["new_patients"] == 3
    assert observations() == 4
    first = patient_of(municipality, "1001")
    second = patient_of(municipality, "1002")
    mother = patient_of(municipality, "9001")
    assert first.kind == Patient.Kind.CHILD
    assert mother.kind == Patient.Kind.ADULT
    content = Resource.objects.get(pk=second.pk).content
    assert content["birthDate"] == "2025-01-15"
    assert content["gender"] == "male"
    assert {"system": RESIDENT_NUMBER_SYSTEM.format(municipality_code=code), "value": "1002"} in (
        content["identifier"]
    )
    assert set(MotherChild.objects.values_list("mother", "child")) == {
        (mother.pk, first.pk),
        (mother.pk, second.pk),
    }
    # The municipality sees its new residents' records through the policy point.
    assert seen(municipal_officer).count() == 4


def test_the_same_file_twice_imports_nothing_new(municipality: Any) -> None:
    data = csv_bytes([line(municipality.code, "1001", "2025-05-01", "4.1", mother="9001")])
    first = upload_and_import(municipality, data)
    versions = ResourceHistory.objects.count()
    again = receive(municipality, data)
    assert again.same_as == first
    assert again.summary["unchanged"] == 1
    assert again.summary["created"] == 0
    assert again.summary["new_patients"] == 0
    again = confirm(again)
    assert again.result["created"] == 0
    assert again.result["unchanged"] == 1
    assert ResourceHistory.objects.count() == versions
    assert Patient.objects.count() == 2


def test_a_corrected_row_updates_the_record_and_an_emptied_item_is_withdrawn(
    municipality: Any,
) -> None:
    code = municipality.code
    upload_and_import(
        municipality, csv_bytes([line(code, "1001", "2025-05-01", "4.1", height="52")])
    )
    weight = Resource.objects.get(resource_type="Observation", quantity_code="kg")
    batch = receive(
        municipality, csv_bytes([line(code, "1001", "2025-05-01", "4.3", change="変更")])
    )
    assert batch.summary["updated"] == 1
    batch = confirm(batch)
    assert batch.result["updated"] == 1
    assert batch.result["deleted"] == 1  # the height the correction no longer carries
    weight.refresh_from_db()
    assert weight.version == 2
    assert weight.content["valueQuantity"]["value"] == 4.3
    assert observations() == 1
    assert ResourceHistory.objects.filter(resource_id=weight.pk).count() == 2


def test_a_delete_row_withdraws_the_rows_records(municipality: Any) -> None:
    code = municipality.code
    upload_and_import(
        municipality, csv_bytes([line(code, "1001", "2025-05-01", "4.1", height="52")])
    )
    batch = receive(municipality, csv_bytes([line(code, "1001", "2025-05-01", "", change="3")]))
    assert batch.summary["deleted"] == 2
    batch = confirm(batch)
    assert batch.result["deleted"] == 2
    assert observations() == 0
    assert Resource.objects.filter(resource_type="Observation", deleted=True).count() == 2
    # Deleting again changes nothing.
    again = upload_and_import(
        municipality, csv_bytes([line(code, "1001", "2025-05-01", "", change="削除")])
    )
    assert again.result["deleted"] == 0


def test_a_known_number_with_another_birth_date_waits_for_review(
    municipality: Any, municipal_officer: Any
) -> None:
    code = municipality.code
    upload_and_import(municipality, csv_bytes([line(code, "1001", "2025-05-01", "4.1")]))
    batch = receive(
        municipality, csv_bytes([line(code, "1001", "2025-06-01", "5.0", birth="2024-04-01")])
    )
    assert batch.summary["review"] == 1
    assert batch.summary["created"] == 0
    batch = confirm(batch)
    assert batch.result["review"] == 1
    assert observations() == 1
    review = MatchReview.objects.get()
    assert review.status == MatchReview.Status.OPEN
    assert review.patient == patient_of(municipality, "1001")
    assert review.differences == [
        {"field": "birth_date", "file": "2024-04-01", "record": "2025-04-01"}
    ]
    assert review.line == 2
    assert review.row["resident_number"] == "1001"
    # The same file again does not queue the row twice.
    upload_and_import(
        municipality, csv_bytes([line(code, "1001", "2025-06-01", "5.0", birth="2024-04-01")])
    )
    assert MatchReview.objects.count() == 1


def test_bad_rows_are_reported_and_only_valid_rows_import_on_request(municipality: Any) -> None:
    code = municipality.code
    data = csv_bytes(
        [
            line(code, "1001", "2025-05-01", "4.1"),
            line(code, "1002", "2025-02-30", "4.1"),
            line(code, "1003", "2025-05-01", "400"),
            line("102016", "1004", "2025-05-01", "4.1"),
        ]
    )
    batch = receive(municipality, data)
    assert batch.summary["invalid"] == 3
    assert batch.summary["valid"] == 1
    errors = list(BatchError.objects.filter(batch=batch).values_list("line", "column", "value"))
    assert errors == [
        (3, "測定日", "2025-02-30"),
        (4, "体重", "400"),
        (5, "市町村コード", "102016"),
    ]
    error = BatchError.objects.get(batch=batch, line=4)
    assert "範囲外" in error.message_ja
    assert "outside" in error.message_en
    with pytest.raises(ValidationError) as refused:
        confirm(batch)
    assert refused.value.code == "invalid_rows"
    batch = confirm(batch, only_valid=True)
    assert batch.status == Batch.Status.IMPORTED
    assert batch.result["created"] == 1
    assert batch.result["invalid"] == 3
    assert observations() == 1


def test_a_file_without_its_required_columns_is_rejected_whole(municipality: Any) -> None:
    batch = receive(municipality, "氏,名\r\n前橋,はな\r\n".encode())
    assert batch.status == Batch.Status.REJECTED
    assert batch.file_error["code"] == "missing_columns"
    assert "宛名番号" in batch.file_error["ja"]
    assert "resident_number" in batch.file_error["en"]
    assert observations() == 0


def test_shift_jis_files_are_read(municipality: Any) -> None:
    data = csv_bytes(
        [line(municipality.code, "１００１", "令和7年5月1日", "4.1", family="髙橋")], "cp932"
    )
    batch = upload_and_import(municipality, data)
    assert batch.detected_encoding == "cp932"
    assert batch.result["created"] == 1
    patient = patient_of(municipality, "1001")
    assert Resource.objects.get(pk=patient.pk).content["name"][0]["family"] == "髙橋"


def test_a_mother_with_an_account_becomes_guardian_of_her_new_child(municipality: Any) -> None:
    user = f.UserFactory()
    upload_and_import(
        municipality,
        csv_bytes([line(municipality.code, "1001", "2025-05-01", "4.1", mother="9001")]),
    )
    mother = patient_of(municipality, "9001")
    mother.account = user
    mother.save()
    upload_and_import(
        municipality,
        csv_bytes([line(municipality.code, "1002", "2025-06-01", "4.0", mother="9001")]),
    )
    children = set(Guardianship.objects.filter(guardian=user).values_list("child", flat=True))
    assert patient_of(municipality, "1002").pk in children
    assert seen(user).count() == 1


def test_a_family_that_moves_keeps_its_record(municipality: Any, municipal_officer: Any) -> None:
    town = f.MunicipalityFactory()
    town_officer = f.make_member(Role.MUNICIPAL_STAFF, town)
    upload_and_import(
        municipality, csv_bytes([line(municipality.code, "1001", "2025-05-01", "4.1")])
    )
    child = patient_of(municipality, "1001")
    moved = line(
        town.code,
        "77",
        "2025-09-01",
        "7.5",
        previous=(municipality.code, "1001"),
        moved_in="2025-08-15",
    )
    batch = upload_and_import(town, csv_bytes([moved]))
    assert batch.result["new_patients"] == 0
    assert batch.result["created"] == 1
    assert patient_of(town, "77") == child
    old = Residency.objects.get(municipality=municipality, patient=child)
    assert old.valid_to == date(2025, 8, 14)
    assert Residency.objects.get(municipality=town, patient=child).valid_from == date(2025, 8, 15)
    # The new municipality sees the whole record; the old one what it sent.
    assert seen(town_officer).count() == 2
    assert seen(municipal_officer).count() == 1


def test_records_wait_for_the_family_and_another_town_sees_none(
    municipality: Any, other_municipal_officer: Any
) -> None:
    upload_and_import(
        municipality, csv_bytes([line(municipality.code, "1001", "2025-05-01", "4.1")])
    )
    assert observations() == 1
    assert not Resource.objects.filter(
        visible_records(other_municipal_officer), resource_type="Observation"
    ).exists()
    assert not Patient.objects.filter(account__isnull=False).exists()


def test_the_fhir_format_imports_the_same_content(municipality: Any) -> None:
    import orjson

    code = municipality.code
    resident = RESIDENT_NUMBER_SYSTEM.format(municipality_code=code)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111",
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": resident, "value": "1001"}],
                    "name": [{"family": "前橋", "given": ["はな"]}],
                    "birthDate": "2025-04-01",
                    "gender": "female",
                },
                "request": {"method": "PUT", "url": f"Patient?identifier={resident}|1001"},
            },
            {
                "fullUrl": "urn:uuid:22222222-2222-4222-8222-222222222222",
                "resource": {
                    "resourceType": "Observation",
                    "identifier": [{"system": "urn:town:obs", "value": "w-1"}],
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
                    "subject": {"reference": "urn:uuid:11111111-1111-4111-8111-111111111111"},
                    "effectiveDateTime": "2025-05-01",
                    "valueQuantity": {
                        "value": 4.1,
                        "unit": "kg",
                        "system": "http://unitsofmeasure.org",
                        "code": "kg",
                    },
                },
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "resource": {"resourceType": "Observation", "status": "final"},
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    batch = receive(municipality, orjson.dumps(bundle), fmt="municipal_fhir", name="b.json")
    assert batch.status == Batch.Status.VALIDATED, batch.file_error
    assert batch.summary["valid"] == 2
    assert batch.summary["invalid"] == 1
    assert BatchError.objects.filter(batch=batch, line=3).exists()
    batch = confirm(batch, only_valid=True)
    child = patient_of(municipality, "1001")
    stored = Resource.objects.get(resource_type="Observation")
    assert stored.content["subject"] == {"reference": f"Patient/{child.pk}"}
    assert stored.compartments == [child.pk]
    # NDJSON of the same resources is the same record; a DELETE withdraws it.
    ndjson = b"\n".join(orjson.dumps(e["resource"]) for e in bundle["entry"][:2])
    ndjson = ndjson.replace(b"urn:uuid:11111111-1111-4111-8111-111111111111", b"Patient/p1")
    ndjson = ndjson.replace(b'"resourceType":"Patient",', b'"resourceType":"Patient","id":"p1",')
    again = upload_and_import(municipality, ndjson, fmt="municipal_fhir", name="b.ndjson")
    assert again.result["created"] == 0
    assert again.result["unchanged"] == 1
    delete = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "DELETE", "url": "Observation?identifier=urn:town:obs|w-1"}}
        ],
    }
    gone = upload_and_import(municipality, orjson.dumps(delete), fmt="municipal_fhir")
    assert gone.result["deleted"] == 1
    assert observations() == 0


SAMPLES = Path(__file__).resolve().parents[2] / "docs" / "formats" / "samples"


@pytest.mark.parametrize("name", ["infant_checkup", "vaccination", "pregnancy", "school_checkup"])
def test_each_documented_sample_imports_and_its_twin_imports_nothing_new(name: str) -> None:
    maebashi = Organization.objects.create(
        kind=Organization.Kind.MUNICIPALITY, code="102016", name="前橋市"
    )
    batch = receive(maebashi, (SAMPLES / f"{name}.csv").read_bytes(), fmt=name)
    assert batch.status == Batch.Status.VALIDATED
    assert batch.summary["invalid"] == 0
    planned = batch.summary
    batch = confirm(batch)
    assert batch.status == Batch.Status.IMPORTED
    for key in ("created", "updated", "deleted", "unchanged", "new_patients", "review"):
        assert batch.result[key] == planned[key], key
    assert batch.result["created"] > 0
    versions = ResourceHistory.objects.count()
    # The same rows in Shift_JIS with Japanese headers: recognised as the
    # same records; nothing new is written.
    twin = receive(maebashi, (SAMPLES / f"{name}_sjis.csv").read_bytes(), fmt=name)
    assert twin.detected_encoding == "cp932"
    assert twin.summary["created"] == 0
    assert twin.summary["updated"] == 0
    twin = confirm(twin)
    assert twin.result["created"] == 0
    assert twin.result["updated"] == 0
    assert ResourceHistory.objects.count() == versions
    bad = receive(maebashi, (SAMPLES / f"{name}_bad.csv").read_bytes(), fmt=name)
    assert bad.summary["invalid"] > 0
    assert (
        BatchError.objects.filter(batch=bad).exclude(message_ja="").count()
        >= bad.summary["invalid"]
    )
