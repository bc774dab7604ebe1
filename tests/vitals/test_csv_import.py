"""The generic vitals CSV (docs/formats/vitals_csv.md): the documented
samples import whole (UTF-8 with a BOM, Shift_JIS with Japanese headers and
types), units are converted, a time without a zone is Japan time,
importing again adds nothing; a bad or truncated file imports nothing and
reports every row (row, column, value, reason in Japanese and English)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from hypothesis import given, settings
from hypothesis import strategies as st

from phr.models import AuditEvent, Patient, Provenance, User
from tests.vitals.device_support import (
    bp_observation,
    device_client,
    post_json,
    register,
    vitals_of,
)
from vitals import csv_import, records

pytestmark = pytest.mark.django_db

SAMPLES = Path(__file__).resolve().parents[2] / "docs" / "formats" / "samples"


def upload(
    user: User, patient: Patient, data: bytes, name: str = "vitals.csv", **extra: str
) -> object:
    client = Client()
    client.force_login(user)
    return client.post(
        reverse("vitals:device-csv", args=[patient.pk]),
        {"file": SimpleUploadedFile(name, data, content_type="text/csv"), **extra},
    )


def test_the_sample_imports_whole_and_again_adds_nothing(
    mother: User, mother_patient: Patient
) -> None:
    data = (SAMPLES / "vitals.csv").read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")  # the sample carries a BOM
    response = upload(mother, mother_patient, data)
    assert response.status_code == 200  # type: ignore[attr-defined]
    assert 'id="csv-result"' in response.content.decode()  # type: ignore[attr-defined]
    rows = vitals_of(mother_patient)
    assert len(rows) == 11
    provenance = Provenance.objects.get(pk=rows[0].provenance_id)
    assert provenance.origin == Provenance.Origin.SELF
    assert provenance.agent_user == mother
    assert AuditEvent.objects.get(action="vitals.csv_import").detail["created"] == 11
    again = upload(mother, mother_patient, data)
    assert again.status_code == 200  # type: ignore[attr-defined]
    assert len(vitals_of(mother_patient)) == 11
    assert all(r.version == 1 for r in vitals_of(mother_patient))


def test_units_are_converted_and_local_times_are_japan_time() -> None:
    rows = {r.line: r.reading for r in csv_import.parse((SAMPLES / "vitals.csv").read_bytes())}
    # 127.6 lb → 57.878 kg; 98.1 °F → 36.7 °C; 5.4 mmol/L → 97 mg/dL (×18.016)
    assert rows[9].values == (Decimal("57.878"),)
    assert rows[10].values == (Decimal("36.7"),)
    assert rows[11].values == (Decimal("97"),)
    # "2026-11-03 07:05" has no zone: Japan time, 22:05 UTC the day before.
    assert rows[6].taken_at == datetime(2026, 11, 2, 22, 5, tzinfo=UTC)
    assert rows[6].values == (Decimal("121"), Decimal("78"))


def test_a_shift_jis_file_with_japanese_headers_and_types_imports(
    mother: User, child: Patient
) -> None:
    data = (SAMPLES / "vitals_sjis.csv").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    rows = csv_import.parse(data)
    assert [r.reading.kind for r in rows] == [
        records.BLOOD_PRESSURE, records.HEART_RATE, records.BODY_WEIGHT, records.BODY_TEMPERATURE
    ]  # fmt: skip
    assert rows[2].reading.values == (Decimal("57.600"),)  # 57600 g


def test_the_bad_sample_imports_nothing_and_reports_every_row(
    mother: User, mother_patient: Patient
) -> None:
    response = upload(mother, mother_patient, (SAMPLES / "vitals_bad.csv").read_bytes())
    assert response.status_code == 400  # type: ignore[attr-defined]
    assert vitals_of(mother_patient) == []
    with pytest.raises(csv_import.CsvError) as caught:
        csv_import.parse((SAMPLES / "vitals_bad.csv").read_bytes())
    found = {(p.row, p.field) for p in caught.value.problems}
    assert found == {
        (3, "value"),  # 76/118: swapped
        (4, "timestamp"),  # 7:10 AM
        (5, "value"),  # 578 kg
        (6, "unit"),  # stone
        (7, "type"),  # sleep
        (8, "value"),  # warm
        (9, "value"),  # 120 without a diastolic
        (10, "timestamp"),  # in the future
        (11, "row"),  # cut off
    }
    page = response.content.decode()  # type: ignore[attr-defined]
    assert "are they swapped?" in page
    assert "上と下が逆ではありませんか" in page
    assert all(p.reason_ja and p.reason_en for p in caught.value.problems)


@pytest.mark.parametrize(
    ("data", "row", "field"),
    [
        (b"", 1, "file"),
        (b"timestamp,type,value\r\n2026-11-02T07:10:00+09:00,heart_rate,72\r\n", 1, "header"),
        (b"timestamp,type,value,unit\r\n", 2, "file"),
        # Cut off inside a quoted cell.
        (b'timestamp,type,value,unit\r\n2026-11-02T07:10:00+09:00,heart_rate,"72', 2, "row"),
        # Cut off inside a row.
        (b"timestamp,type,value,unit\r\n2026-11-02T07:10:00+09:00,heart_ra", 2, "row"),
        ("timestamp,type,value,unit\r\n2026-11-02,体重,57,kg\r\n".encode("utf-16"), 0, "file"),
    ],
)
def test_empty_truncated_and_undecodable_files_are_refused(
    data: bytes, row: int, field: str
) -> None:
    with pytest.raises(csv_import.CsvError) as caught:
        csv_import.parse(data)
    assert (caught.value.problems[0].row, caught.value.problems[0].field) == (row, field)


def test_rows_from_a_registered_device_are_not_added_twice(
    mother: User, mother_patient: Patient
) -> None:
    device, secret = register(mother_patient, mother)
    post_json(device_client(secret), "/vitals/devices/api/Observation", bp_observation(None))
    csv = b"timestamp,type,value,unit\n2026-11-20T07:12:00+09:00,blood_pressure,128/82,mmHg\n"
    response = upload(mother, mother_patient, csv, device=str(device.pk))
    assert response.status_code == 200  # type: ignore[attr-defined]
    assert len(vitals_of(mother_patient)) == 1
    # Without naming the device it is the uploader's own record.
    upload(mother, mother_patient, csv)
    assert len(vitals_of(mother_patient)) == 2


def test_a_too_large_file_is_refused(mother: User, mother_patient: Patient) -> None:
    data = b"timestamp,type,value,unit\n" + b"x" * csv_import.MAX_BYTES
    assert upload(mother, mother_patient, data).status_code == 400  # type: ignore[attr-defined]
    assert vitals_of(mother_patient) == []


def test_the_other_guardian_imports_for_the_child(father: User, child: Patient) -> None:
    csv = "日時,種類,値,単位\n2026-11-20 19:00,体重,7450,g\n2026-11-20 19:00,頭囲,42.5,cm\n"
    response = upload(father, child, csv.encode())
    assert response.status_code == 200  # type: ignore[attr-defined]
    assert len(vitals_of(child)) == 2


@settings(max_examples=60, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.lists(
            st.lists(st.text(max_size=25), min_size=0, max_size=6).map(",".join), max_size=6
        ).map(lambda lines: ("timestamp,type,value,unit\n" + "\n".join(lines)).encode()),
    )
)
def test_garbage_is_either_read_or_reported_never_an_error(data: bytes) -> None:
    # Whatever the bytes, the parser answers with readings or a report of
    # problems, each naming a row and a column (no other exception).
    problems: list[csv_import.RowProblem] | None = None
    try:
        rows = csv_import.parse(data)
    except csv_import.CsvError as exc:
        problems = exc.problems
    if problems is None:
        assert all(r.reading.kind in records.KINDS for r in rows)
    else:
        assert problems
        assert all(p.field and p.reason_ja and p.reason_en for p in problems)
