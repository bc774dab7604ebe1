"""The Apple Health import: the streaming reader of export.xml / export.zip,
the generated sample (the real schema), and the import job writing
through vitals.records — units, blood-pressure correlations, steps per
Japan day, malformed and truncated files (nothing written), unknown types
counted, re-import adds nothing, memory flat in file size."""

from __future__ import annotations

import io
import tracemalloc
import uuid
import zipfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings
from fhir.resources.R4B.observation import Observation

from phr.models import Job, Resource
from vitals import apple_health as ah
from vitals import apple_health_sample as sample
from vitals import records


def read_all(data: bytes) -> tuple[list[Any], ah.Tally, dict[Any, float]]:
    tally = ah.Tally()
    steps: dict[Any, float] = {}
    items = list(ah.read_export(io.BytesIO(data), tally, steps=steps))
    return items, tally, steps


# --------------------------------------------------------------------------
# The reader (no database)
# --------------------------------------------------------------------------


def test_the_sample_follows_the_schema_it_declares() -> None:
    data = sample.sample_export()
    text = data.decode()
    # The DTD a phone writes, the root with its locale, ExportDate and Me first.
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE HealthData [')
    assert "<!ELEMENT Correlation ((MetadataEntry|Record)*)>" in text
    assert '<HealthData locale="ja_JP">' in text
    assert text.index("<ExportDate") < text.index("<Me ") < text.index("<Record ")
    # Dates are local with their offset; devices carry HealthKit's description.
    assert 'startDate="2024-01-05 08:30:00 +0900"' in text
    assert 'device="&lt;&lt;HKDevice: 0x' in text
    assert "<MetadataEntry key=" in text


def test_it_reads_every_mapped_type_of_the_sample() -> None:
    items, tally, _steps = read_all(sample.sample_export())
    singles = [i for i in items if isinstance(i, ah.Sample)]
    pressures = [i for i in items if isinstance(i, ah.Pressure)]
    by_type: dict[str, int] = {}
    for s in singles:
        by_type[s.hk_type] = by_type.get(s.hk_type, 0) + 1
    assert by_type == {
        ah.BODY_MASS: len(sample.SAMPLE_BODY_MASS),
        ah.BODY_TEMPERATURE: len(sample.SAMPLE_TEMPERATURE),
        ah.BLOOD_GLUCOSE: len(sample.SAMPLE_GLUCOSE),
        ah.HEART_RATE: len(sample.SAMPLE_HEART_RATE),
    }
    assert len(pressures) == len(sample.SAMPLE_BLOOD_PRESSURE)
    assert tally.read[ah.STEP_COUNT] == len(sample.SAMPLE_STEPS)
    assert tally.export_date == "2024-01-20 21:15:03 +0900"
    assert tally.error_count == 0


def test_it_pairs_each_blood_pressure_correlation_and_reads_its_halves_once() -> None:
    items, tally, _ = read_all(sample.sample_export())
    pressures = [i for i in items if isinstance(i, ah.Pressure)]
    got = [(p.systolic.value, p.diastolic.value, p.systolic.start) for p in pressures]
    want = [(float(s), float(d), ah.parse_date(at)) for at, s, d in sample.SAMPLE_BLOOD_PRESSURE]
    assert got == want
    # The top-level copies of the halves (the DTD's note) are not read twice.
    assert tally.in_correlation == 2 * len(sample.SAMPLE_BLOOD_PRESSURE)
    assert pressures[0].systolic.source_name == sample.OMRON.name


def test_it_keeps_the_units_the_file_states() -> None:
    items, _, _ = read_all(sample.sample_export())
    units = {(i.hk_type, i.unit) for i in items if isinstance(i, ah.Sample)}
    assert {(ah.BODY_MASS, "kg"), (ah.BODY_MASS, "[lb_av]"), (ah.BODY_MASS, "g")} <= units
    assert {(ah.BODY_TEMPERATURE, "Cel"), (ah.BODY_TEMPERATURE, "[degF]")} <= units
    assert {(ah.BLOOD_GLUCOSE, "mg/dL"), (ah.BLOOD_GLUCOSE, "mmol/L")} <= units


def test_it_adds_up_steps_per_japan_day_and_source() -> None:
    _, _, steps = read_all(sample.sample_export())
    totals = {(d.day.isoformat(), d.source_name): d.steps for d in ah.day_steps(steps)}
    # A sample written in UTC counts on its Japan day; one across midnight
    # is shared between the two days.
    assert totals == sample.SAMPLE_STEP_TOTALS


def test_it_counts_unknown_types_without_failing() -> None:
    _, tally, _ = read_all(sample.sample_export())
    for hk_type, *_ in sample.SAMPLE_OTHER:
        assert tally.skipped[hk_type] == 1
    assert tally.skipped["Workout"] == 1
    assert tally.skipped["ActivitySummary"] == 1
    assert tally.error_count == 0


def test_the_device_label_drops_the_address_that_changes_per_export() -> None:
    raw = (
        "<<HKDevice: 0x283a0c780>, name:Apple Watch, manufacturer:Apple Inc., "
        "model:Watch, hardware:Watch6,2, software:10.1.1>"
    )
    other = raw.replace("0x283a0c780", "0x2811f3e40").replace("10.1.1", "10.2")
    assert ah.device_label(raw) == ah.device_label(other)
    assert ah.device_label(raw) == (
        "name:Apple Watch, manufacturer:Apple Inc., model:Watch, hardware:Watch6,2"
    )


def test_a_truncated_file_is_an_error_with_its_line_and_column() -> None:
    data = sample.sample_export()
    cut = data[: len(data) * 2 // 3]
    with pytest.raises(ah.ExportError) as caught:
        read_all(cut)
    error = caught.value
    assert error.code == "truncated"
    assert error.line is not None
    assert error.line > 100
    assert "line" in error.en
    assert "行目" in error.ja


def test_malformed_xml_is_an_error_with_its_line_and_column() -> None:
    lines = sample.sample_export().decode().splitlines(keepends=True)
    # A bare "&" in a heart-rate Record's attribute (not well-formed).
    at = next(n for n, line in enumerate(lines) if "HeartRate" in line and "<Record" in line)
    lines[at] = lines[at].replace('sourceVersion="', 'sourceVersion="R&D ')
    with pytest.raises(ah.ExportError) as caught:
        read_all("".join(lines).encode())
    assert caught.value.code == "malformed"
    assert caught.value.line == at + 1
    assert caught.value.column is not None
    assert caught.value.column > 1


def test_entity_declarations_are_refused() -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE HealthData [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><HealthData locale="ja_JP">&b;'
        b"</HealthData>"
    )
    with pytest.raises(ah.ExportError) as caught:
        read_all(bomb)
    assert caught.value.code == "entity"


def test_another_xml_document_is_not_an_export() -> None:
    with pytest.raises(ah.ExportError) as caught:
        read_all(b'<?xml version="1.0"?><ClinicalDocument/>')
    assert caught.value.code == "not_apple_health"


def test_a_record_with_a_bad_value_or_unit_is_reported_and_skipped() -> None:
    text = sample.sample_export().decode()
    text = text.replace('unit="count/min" creationDate', 'unit="Hz" creationDate', 1)
    text = text.replace('value="36.6"', 'value="hot"', 1)
    items, tally, _ = read_all(text.encode())
    assert tally.error_count == 2
    assert {e.field for e in tally.errors} == {"unit", "value"}
    assert all(e.line > 0 for e in tally.errors)
    assert len([i for i in items if isinstance(i, ah.Sample)]) == 10 - 2


def test_it_reads_the_export_inside_the_zip(tmp_path: Path) -> None:
    path = tmp_path / "export.zip"
    path.write_bytes(sample.zipped(sample.sample_export()))
    with ah.open_export(path) as stream:
        tally = ah.Tally()
        items = list(ah.read_export(stream, tally))
    assert len(items) == 12
    assert ah.xml_size(path) == len(sample.sample_export())


def test_a_damaged_zip_is_an_error(tmp_path: Path) -> None:
    data = sample.zipped(sample.sample_export())
    path = tmp_path / "export.zip"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ah.ExportError) as caught, ah.open_export(path) as stream:
        list(ah.read_export(stream, ah.Tally()))
    assert caught.value.code == "bad_zip"


def test_a_zip_without_export_xml_is_an_error(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("photos/cat.jpg", b"meow")
    path = tmp_path / "export.zip"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ah.ExportError) as caught, ah.open_export(path):
        pass
    assert caught.value.code == "no_export_xml"


def _peak_while_reading(elements: int) -> tuple[int, int]:
    """Peak traced memory while streaming a generated export of this many
    elements through the reader, and the bytes it read."""
    reader = sample.ChunkReader(sample.export_chunks(elements, seed=3))
    tally = ah.Tally()
    steps: dict[Any, float] = {}
    tracemalloc.start()
    try:
        for _ in ah.read_export(reader, tally, steps=steps):
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert tally.error_count == 0
    return peak, reader.produced


def test_memory_stays_flat_in_file_size() -> None:
    # The generated stream is never held whole: 10x the elements (tens of
    # MB of XML) may not need more than a little more memory.
    small_peak, small_bytes = _peak_while_reading(3_000)
    big_peak, big_bytes = _peak_while_reading(30_000)
    assert big_bytes > 9 * small_bytes
    assert big_peak < small_peak * 1.5 + 256 * 1024, (small_peak, big_peak)
    # A fixed bound: the elements of one 1 MB block in flight, whatever the size.
    assert big_peak < 12 * 1024 * 1024


# --------------------------------------------------------------------------
# The import job (database)
# --------------------------------------------------------------------------


def _store(data: bytes, name: str = "export.xml") -> str:
    relative = f"vitals/apple-health/test/{uuid.uuid4()}-{name}"
    target = Path(settings.MEDIA_ROOT) / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return relative


def run_import(patient: Any, user: Any, data: bytes, name: str = "export.xml") -> Job:
    job = ah.import_enqueue(
        patient=patient, user=user, path=_store(data, name), filename=name, size=len(data)
    )
    from phr.jobs import job_run

    job_run(job_id=job.pk)
    job.refresh_from_db()
    return job


def vitals_rows(patient: Any) -> list[Resource]:
    return list(
        Resource.objects.filter(
            compartments__overlap=[patient.pk],
            resource_type="Observation",
            deleted=False,
        ).order_by("date_start", "id")
    )


def _by_kind(patient: Any) -> dict[str, list[records.Reading]]:
    out: dict[str, list[records.Reading]] = {}
    for row in vitals_rows(patient):
        reading = records.reading_of(row.content)
        assert reading is not None
        out.setdefault(reading.kind, []).append(reading)
    return out


@pytest.fixture
def media(tmp_path: Path) -> Any:
    with override_settings(MEDIA_ROOT=tmp_path):
        yield tmp_path


@pytest.mark.django_db
def test_it_imports_the_sample_with_units_converted(
    media: Path, mother: Any, mother_patient: Any
) -> None:
    job = run_import(mother_patient, mother, sample.sample_export())
    assert job.status == Job.Status.DONE, job.error
    kinds = _by_kind(mother_patient)
    weights = [r.value for r in kinds["body_weight"]]
    # kg as written; 121.9 lb and 55600 g converted to kg.
    assert weights == [
        Decimal("55.2"),
        (Decimal("121.9") * records.LB_KG).quantize(Decimal("0.001")),
        Decimal("55.6"),
    ]
    temperatures = [r.value for r in kinds["body_temperature"]]
    assert temperatures == [Decimal("36.6"), Decimal("37.0")]  # 98.6 °F
    glucose = [r.value for r in kinds["blood_glucose"]]
    assert glucose[0] == Decimal("92")
    assert abs(glucose[1] - Decimal("5.2") * Decimal("18.0156")) < 1  # mmol/L → mg/dL
    assert [r.value for r in kinds["heart_rate"]] == [72, 88, 64]
    assert [r.values for r in kinds["blood_pressure"]] == [
        (Decimal(s), Decimal(d)) for _, s, d in sample.SAMPLE_BLOOD_PRESSURE
    ]
    result = job.result
    assert result["skipped"]["HKQuantityTypeIdentifierActiveEnergyBurned"] == 1
    assert result["error_count"] == 0
    assert result["created"] == 12 + len(sample.SAMPLE_STEP_TOTALS)


@pytest.mark.django_db
def test_steps_become_one_record_per_japan_day_and_source(
    media: Path, mother: Any, mother_patient: Any
) -> None:
    run_import(mother_patient, mother, sample.sample_export())
    rows = [
        r
        for r in vitals_rows(mother_patient)
        if (records.kind_of(r.content) or records.KINDS["heart_rate"]).key == "step_count"
    ]
    got = {}
    for row in rows:
        period = row.content["effectivePeriod"]
        start = ah.parse_date(period["start"].replace("Z", "+00:00")).astimezone(ah.JAPAN)
        display = row.content["device"]["display"]
        source = display.removeprefix("Apple Health: ").split(" (")[0]
        got[(start.date().isoformat(), source)] = row.content["valueQuantity"]["value"]
        assert start.hour == 0
        assert start.minute == 0
    assert got == sample.SAMPLE_STEP_TOTALS


@pytest.mark.django_db
def test_the_imported_observations_are_valid_fhir(
    media: Path, mother: Any, mother_patient: Any
) -> None:
    run_import(mother_patient, mother, sample.sample_export())
    rows = vitals_rows(mother_patient)
    assert rows
    for row in rows:
        Observation.model_validate(row.content)
        assert row.content["device"]["display"].startswith("Apple Health: ")
        assert row.provenance.origin == "device"


@pytest.mark.django_db
def test_re_importing_adds_nothing_even_from_a_new_export(
    media: Path, mother: Any, mother_patient: Any
) -> None:
    first = run_import(mother_patient, mother, sample.sample_export(pointer_seed=1))
    count = len(vitals_rows(mother_patient))
    # A later export of the same data: other device addresses, zipped.
    second = run_import(
        mother_patient, mother, sample.zipped(sample.sample_export(pointer_seed=99)), "export.zip"
    )
    assert second.status == Job.Status.DONE, second.error
    assert len(vitals_rows(mother_patient)) == count
    assert second.result["created"] == 0
    assert second.result["updated"] == 0
    assert second.result["unchanged"] == first.result["created"]


@pytest.mark.django_db
@pytest.mark.parametrize("damage", ["truncated", "malformed"])
def test_a_bad_file_imports_nothing(
    media: Path, mother: Any, mother_patient: Any, damage: str
) -> None:
    data = sample.sample_export()
    # The damage is near the end: every record before it is readable, and
    # still none may be written.
    bad = (
        data[:-40]
        if damage == "truncated"
        else data.replace(b"</Correlation>", b"</Correlaton>", 1)
    )
    job = run_import(mother_patient, mother, bad)
    assert job.status == Job.Status.FAILED
    assert vitals_rows(mother_patient) == []
    assert "line" in job.error
    assert not (media / job.payload["path"]).exists()


@pytest.mark.django_db
def test_an_implausible_value_is_reported_not_imported(
    media: Path, mother: Any, mother_patient: Any
) -> None:
    data = sample.sample_export().replace(b'value="72"', b'value="720"', 1)
    job = run_import(mother_patient, mother, data)
    assert job.status == Job.Status.DONE
    assert job.result["error_count"] == 1
    assert job.result["errors"][0]["line"] > 0
    assert [r.value for r in _by_kind(mother_patient)["heart_rate"]] == [88, 64]


@pytest.mark.django_db
def test_the_job_refuses_a_user_no_longer_allowed(
    media: Path, mother: Any, mother_patient: Any, stranger: Any
) -> None:
    job = run_import(mother_patient, stranger, sample.sample_export())
    assert job.status == Job.Status.FAILED
    assert vitals_rows(mother_patient) == []


@pytest.mark.django_db
def test_a_resumed_job_writes_each_record_once(
    media: Path, mother: Any, mother_patient: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunks of 4: the job dies after its second chunk committed; the next
    # worker resumes after it and the end state is the clean import's.
    monkeypatch.setattr(ah, "CHUNK", 4)
    from phr import jobs

    real = ah._write_chunk
    calls = {"n": 0}

    def dying(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise SystemExit("worker killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(ah, "_write_chunk", dying)
    job = ah.import_enqueue(
        patient=mother_patient,
        user=mother,
        path=_store(sample.sample_export()),
        filename="export.xml",
        size=1,
    )
    with pytest.raises(SystemExit):
        jobs.job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.cursor["phase"] == "write"
    assert job.cursor["done"] == 4
    monkeypatch.setattr(ah, "_write_chunk", real)
    Job.objects.filter(pk=job.pk).update(lease_until=None, status=Job.Status.QUEUED)
    assert jobs.job_run(job_id=job.pk) == "done"
    job.refresh_from_db()
    assert len(vitals_rows(mother_patient)) == 12 + len(sample.SAMPLE_STEP_TOTALS)
    assert job.result["created"] == 12 + len(sample.SAMPLE_STEP_TOTALS)


@pytest.mark.django_db
def test_an_import_tells_the_alert_rules_once_not_per_chunk(
    media: Path,
    mother: Any,
    mother_patient: Any,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    """vitals_written (which queues the alert evaluation) is sent once for
    the whole import, after its last chunk, naming the kinds it may have
    written; a re-import that writes nothing sends none."""
    from vitals.signals import vitals_written

    monkeypatch.setattr(ah, "CHUNK", 4)  # the sample makes several chunks
    sent: list[tuple[Any, frozenset[str]]] = []

    def receiver(sender: Any, *, patient_id: Any, kinds: Any = (), **_: Any) -> None:
        sent.append((patient_id, frozenset(kinds)))

    vitals_written.connect(receiver, dispatch_uid="test-apple-health-once")
    try:
        with django_capture_on_commit_callbacks(execute=True):
            job = run_import(mother_patient, mother, sample.sample_export())
        assert job.status == Job.Status.DONE, job.error
        assert len(sent) == 1
        patient_id, kinds = sent[0]
        assert patient_id == mother_patient.pk
        assert {"blood_pressure", "body_weight"} <= kinds
        sent.clear()
        with django_capture_on_commit_callbacks(execute=True):
            again = run_import(mother_patient, mother, sample.sample_export())
        assert again.status == Job.Status.DONE
        assert sent == []
    finally:
        vitals_written.disconnect(dispatch_uid="test-apple-health-once")
