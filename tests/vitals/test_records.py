"""The vitals core (vitals/records.py): kinds on the data dictionary,
ranges and their messages, unit conversions, the Observation builder
(validated with fhir.resources R4B), the dedupe identity, writes through
the store (hand entry and the bulk path), edit and delete by the author
only, and the vitals_written signal on commit."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone
from fhir.resources.R4B.observation import Observation

from phr import terminology
from phr.models import AuditEvent, Provenance, Resource
from phr.terminology import CATEGORY_SYSTEM, LOINC
from vitals import records as r
from vitals.signals import vitals_written

JST_MORNING = datetime(2026, 11, 20, 7, 30, tzinfo=UTC)


def at(minutes: int = 0) -> datetime:
    return JST_MORNING + timedelta(minutes=minutes)


# --------------------------------------------------------------------------
# Kinds and the dictionary
# --------------------------------------------------------------------------


def test_every_kind_is_on_a_dictionary_item_with_its_codes() -> None:
    for k in r.KINDS.values():
        assert terminology.item(k.item_key).category == "vitals" or k.key in (
            r.BODY_LENGTH,
            r.HEAD_CIRCUMFERENCE,
        )
        for part in k.parts:
            assert part.item.unit == part.unit, k.key
    assert r.kind(r.BLOOD_PRESSURE).item.loinc == "85354-9"
    assert [p.item.loinc for p in r.kind(r.BLOOD_PRESSURE).parts] == ["8480-6", "8462-4"]
    assert r.kind(r.HEART_RATE).item.loinc == "8867-4"
    assert r.kind(r.BODY_WEIGHT).item.loinc == "29463-7"
    assert r.kind(r.BODY_TEMPERATURE).item.loinc == "8310-5"
    assert r.kind(r.BODY_HEIGHT).item.loinc == "8302-2"
    assert r.kind(r.BODY_LENGTH).item.loinc == "8306-3"
    assert r.kind(r.HEAD_CIRCUMFERENCE).item.loinc == "9843-4"
    assert r.kind(r.STEP_COUNT).item.loinc == "41950-7"
    assert r.kind(r.FETAL_MOVEMENT).item.local == "fetal-movement-10"


def test_codings_from_outside_map_to_kinds() -> None:
    assert r.kind_for_coding(LOINC, "8480-6") is None  # a component, not a kind
    assert r.kind_for_coding(LOINC, "85354-9").key == r.BLOOD_PRESSURE
    assert r.kind_for_coding(LOINC, "15074-8").key == r.BLOOD_GLUCOSE
    assert r.kind_for_coding(LOINC, "2339-0").key == r.BLOOD_GLUCOSE
    assert r.kind_for_coding(LOINC, "55423-8").key == r.STEP_COUNT
    assert r.kind_for_coding(terminology.LOCAL, "blood-glucose").key == r.BLOOD_GLUCOSE
    assert r.kind_for_coding("http://example.org", "x") is None


def test_unknown_kind_is_a_clear_error() -> None:
    with pytest.raises(r.VitalError) as err:
        r.kind("mood")
    assert err.value.field == "kind"
    assert "mood" in err.value.en


# --------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------


def test_conversions() -> None:
    assert r.g_to_kg(Decimal(3250)) == Decimal("3.25")
    assert r.kg_to_g(Decimal("3.25")) == Decimal(3250)
    assert r.lb_to_kg(Decimal(1)) == Decimal("0.45359237")
    assert r.f_to_c(Decimal("98.6")) == Decimal(37)
    assert r.c_to_f(Decimal(37)) == Decimal("98.6")
    assert r.mmol_to_mgdl(Decimal(5)) == Decimal("90.080")
    assert round(r.mgdl_to_mmol(Decimal(90)), 2) == Decimal("5.00")
    assert r.convert("150", "[lb_av]", to="kg").quantize(Decimal("0.001")) == Decimal("68.039")
    assert r.convert(30, "s", to="min") == Decimal("0.5")


def test_reading_is_converted_and_rounded_to_the_kind_unit() -> None:
    assert r.reading(r.BODY_WEIGHT, 3456, unit="g", taken_at=at()).value == Decimal("3.456")
    assert r.reading(r.BODY_WEIGHT, "132.3", unit="lb", taken_at=at()).value == Decimal("60.010")
    assert r.reading(r.BODY_TEMPERATURE, "99.5", unit="[degF]", taken_at=at()).value == Decimal(
        "37.5"
    )
    assert r.reading(r.BLOOD_GLUCOSE, "5.5", unit="mmol/L", taken_at=at()).value == Decimal(99)
    assert r.reading(r.BODY_LENGTH, 512, unit="mm", taken_at=at()).value == Decimal("51.2")


def test_unknown_unit_names_the_accepted_ones() -> None:
    with pytest.raises(r.VitalError) as err:
        r.reading(r.BODY_WEIGHT, 60, unit="stone", taken_at=at())
    assert err.value.field == "unit"
    assert err.value.value == "stone"
    assert "kg" in err.value.en
    assert "換算" in err.value.ja


# --------------------------------------------------------------------------
# Ranges and their messages
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "kwargs", "field", "value"),
    [
        (r.BLOOD_PRESSURE, {"systolic": 320, "diastolic": 90}, "bp_systolic", "320"),
        (r.BLOOD_PRESSURE, {"systolic": 120, "diastolic": 10}, "bp_diastolic", "10"),
        (r.HEART_RATE, {"value": 300}, "heart_rate", "300"),
        (r.BODY_TEMPERATURE, {"value": "46.2"}, "body_temperature", "46.2"),
        (r.BODY_TEMPERATURE, {"value": 120, "unit": "[degF]"}, "body_temperature", "48.9"),
        (r.BLOOD_GLUCOSE, {"value": 60, "unit": "mmol/L"}, "blood_glucose", "1081"),
        (r.FETAL_MOVEMENT, {"value": 0}, "fetal_movement_count", "0"),
        (r.HEAD_CIRCUMFERENCE, {"value": 80}, "head_circumference", "80"),
        (r.BODY_WEIGHT, {"value": 100, "unit": "g"}, "body_weight", "0.1"),
    ],
)
def test_out_of_range_is_refused_with_field_value_and_reason(
    kind: str, kwargs: dict[str, Any], field: str, value: str
) -> None:
    with pytest.raises(r.VitalError) as err:
        r.reading(kind, taken_at=at(), **kwargs)
    e = err.value
    assert e.field == field
    assert e.value == value
    item = terminology.item(field)
    assert value in e.ja
    assert "範囲外" in e.ja
    assert item.ja in e.ja
    assert value in e.en
    assert "outside the plausible range" in e.en
    assert f"{item.min}".rstrip("0").rstrip(".") in e.en
    assert e.message("ja") == e.ja
    assert e.message("en") == e.en


def test_swapped_blood_pressure_is_refused() -> None:
    with pytest.raises(r.VitalError) as err:
        r.reading(r.BLOOD_PRESSURE, systolic=80, diastolic=120, taken_at=at())
    assert err.value.field == "bp_diastolic"
    assert "swapped" in err.value.en
    assert "逆" in err.value.ja


def test_missing_value_and_non_numbers() -> None:
    with pytest.raises(r.VitalError) as err:
        r.reading(r.BLOOD_PRESSURE, systolic=120, diastolic=None, taken_at=at())
    assert err.value.field == "bp_diastolic"
    with pytest.raises(r.VitalError) as err:
        r.reading(r.BODY_WEIGHT, "6O.2", taken_at=at())
    assert err.value.value == "6O.2"
    assert "not a number" in err.value.en


def test_times_must_be_aware_and_not_in_the_future() -> None:
    with pytest.raises(r.VitalError) as err:
        r.reading(r.HEART_RATE, 70, taken_at=datetime(2026, 1, 1, 8, 0))  # noqa: DTZ001
    assert err.value.field == "taken_at"
    with pytest.raises(r.VitalError) as err:
        r.reading(r.HEART_RATE, 70, taken_at=timezone.now() + timedelta(hours=1))
    assert "future" in err.value.en
    # A phone clock a few minutes ahead is fine.
    r.reading(r.HEART_RATE, 70, taken_at=timezone.now() + timedelta(minutes=3))


# --------------------------------------------------------------------------
# The Observation
# --------------------------------------------------------------------------


def _valid(resource: dict[str, Any]) -> Observation:
    return Observation.model_validate({**resource, "id": str(uuid.uuid4())})


def test_blood_pressure_observation_is_valid_with_components() -> None:
    pid = uuid.uuid4()
    tokyo = datetime(2026, 11, 20, 16, 30, tzinfo=timezone.get_fixed_timezone(540))
    reading = r.reading(r.BLOOD_PRESSURE, systolic=142, diastolic=91, taken_at=tokyo)
    resource = r.vital_observation(patient_id=pid, reading=reading)
    _valid(resource)
    assert resource["effectiveDateTime"] == "2026-11-20T07:30:00Z"
    assert resource["subject"] == {"reference": f"Patient/{pid}"}
    assert {"system": CATEGORY_SYSTEM, "code": "vitals"} in resource["meta"]["tag"]
    assert resource["category"][0]["coding"][0]["code"] == "vital-signs"
    assert resource["code"]["coding"][0]["code"] == "85354-9"
    assert "valueQuantity" not in resource
    comps = {c["code"]["coding"][0]["code"]: c["valueQuantity"] for c in resource["component"]}
    assert comps["8480-6"] == {
        "value": 142,
        "unit": "mm[Hg]",
        "system": "http://unitsofmeasure.org",
        "code": "mm[Hg]",
    }
    assert comps["8462-4"]["value"] == 91
    assert r.reading_of(resource) == reading


@pytest.mark.parametrize(
    ("kind", "value", "unit", "code", "ucum"),
    [
        (r.HEART_RATE, 72, None, "8867-4", "/min"),
        (r.BODY_WEIGHT, "58.4", None, "29463-7", "kg"),
        (r.BODY_TEMPERATURE, "36.8", None, "8310-5", "Cel"),
        (r.BLOOD_GLUCOSE, 6.1, "mmol/L", "blood-glucose", "mg/dL"),
        (r.FETAL_MOVEMENT, 25, None, "fetal-movement-10", "min"),
        (r.BODY_HEIGHT, "98.5", None, "8302-2", "cm"),
        (r.BODY_LENGTH, "61.2", None, "8306-3", "cm"),
        (r.HEAD_CIRCUMFERENCE, "40.1", None, "9843-4", "cm"),
    ],
)
def test_single_value_observations_are_valid(
    kind: str, value: Any, unit: str | None, code: str, ucum: str
) -> None:
    reading = r.reading(kind, value, unit=unit, taken_at=at())
    device = r.DeviceRef("7", "オムロン HCR-7601T")
    resource = r.vital_observation(patient_id=uuid.uuid4(), reading=reading, device=device)
    _valid(resource)
    assert resource["code"]["coding"][0]["code"] == code
    assert resource["valueQuantity"]["code"] == ucum
    assert resource["device"] == {
        "identifier": {"system": r.DEVICE_SYSTEM, "value": "7"},
        "display": "オムロン HCR-7601T",
    }
    assert r.reading_of(resource) == reading


def test_glucose_carries_the_mass_loinc_beside_the_local_code() -> None:
    reading = r.reading(r.BLOOD_GLUCOSE, 95, taken_at=at())
    codes = [
        c["code"]
        for c in r.vital_observation(patient_id=uuid.uuid4(), reading=reading)["code"]["coding"]
    ]
    assert codes == ["blood-glucose", "2339-0"]


def test_daily_steps_use_a_period() -> None:
    start = datetime(2026, 11, 18, 15, 0, tzinfo=UTC)  # 00:00 in Japan
    reading = r.reading(r.STEP_COUNT, 8012, taken_at=start, until=start + timedelta(days=1))
    resource = r.vital_observation(patient_id=uuid.uuid4(), reading=reading)
    _valid(resource)
    assert resource["effectivePeriod"] == {
        "start": "2026-11-18T15:00:00Z",
        "end": "2026-11-19T15:00:00Z",
    }
    assert resource["category"][0]["coding"][0]["code"] == "activity"


def test_fractional_seconds_are_kept_exactly() -> None:
    when = datetime(2026, 11, 20, 7, 30, 5, 250000, tzinfo=UTC)
    assert r.instant_text(when) == "2026-11-20T07:30:05.250000Z"


# --------------------------------------------------------------------------
# Identity
# --------------------------------------------------------------------------


def test_identity_is_source_person_kind_and_exact_instant() -> None:
    pid = uuid.uuid4()
    one = r.vital_id(source="device:7", patient_id=pid, kind_key=r.BODY_WEIGHT, taken_at=at())
    tokyo = at().astimezone(timezone.get_fixed_timezone(540))
    assert one == r.vital_id(
        source="device:7", patient_id=pid, kind_key=r.BODY_WEIGHT, taken_at=tokyo
    )
    others = {
        r.vital_id(source="device:8", patient_id=pid, kind_key=r.BODY_WEIGHT, taken_at=at()),
        r.vital_id(source="manual:1", patient_id=pid, kind_key=r.BODY_WEIGHT, taken_at=at()),
        r.vital_id(
            source="device:7", patient_id=uuid.uuid4(), kind_key=r.BODY_WEIGHT, taken_at=at()
        ),
        r.vital_id(source="device:7", patient_id=pid, kind_key=r.HEART_RATE, taken_at=at()),
        r.vital_id(source="device:7", patient_id=pid, kind_key=r.BODY_WEIGHT, taken_at=at(1)),
    }
    assert one not in others
    assert len(others) == 5


# --------------------------------------------------------------------------
# Writes
# --------------------------------------------------------------------------


@pytest.fixture
def signals_seen() -> Any:
    seen: list[tuple[uuid.UUID, frozenset[str]]] = []

    def receiver(sender: Any, patient_id: uuid.UUID, kinds: frozenset[str], **_: Any) -> None:
        seen.append((patient_id, kinds))

    vitals_written.connect(receiver, dispatch_uid="test-vitals-records")
    yield seen
    vitals_written.disconnect(dispatch_uid="test-vitals-records")


def _bp(minutes: int = 0, sys_: int = 128, dia: int = 82) -> r.Reading:
    return r.Reading(r.BLOOD_PRESSURE, (sys_, dia), at(minutes))


def test_hand_entry_writes_self_provenance_and_audit(
    mother: Any, mother_patient: Any, django_capture_on_commit_callbacks: Any, signals_seen: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        written = r.vitals_write(
            user=mother,
            patient=mother_patient,
            readings=[_bp(), r.Reading(r.HEART_RATE, (76,), at())],
        )
    assert [w.kind for w in written] == [r.BLOOD_PRESSURE, r.HEART_RATE]
    assert all(w.created for w in written)
    rows = Resource.objects.filter(id__in=[w.id for w in written]).select_related("provenance")
    assert len(rows) == 2
    for row in rows:
        assert row.category == "vitals"
        assert row.compartments == [mother_patient.pk]
        assert row.provenance.origin == Provenance.Origin.SELF
        assert row.provenance.agent_user_id == mother.pk
        assert r.author_id(row) == mother.pk
        assert row.source_system == r.VITALS_SOURCE_SYSTEM
        assert row.source_value.startswith(f"manual:{mother.pk}|{mother_patient.pk}|")
    assert signals_seen == [(mother_patient.pk, frozenset({r.BLOOD_PRESSURE, r.HEART_RATE}))]
    audit = AuditEvent.objects.filter(action="vitals.write", patient_id=mother_patient.pk).get()
    assert audit.actor_id == mother.pk
    assert audit.categories == ["vitals"]


def test_the_same_entry_again_adds_nothing(
    mother: Any, mother_patient: Any, django_capture_on_commit_callbacks: Any, signals_seen: Any
) -> None:
    r.vitals_write(user=mother, patient=mother_patient, readings=[_bp()])
    with django_capture_on_commit_callbacks(execute=True):
        again = r.vitals_write(user=mother, patient=mother_patient, readings=[_bp()])
    assert not again[0].created
    assert not again[0].changed
    assert Resource.objects.filter(category="vitals").count() == 1
    assert signals_seen == []  # nothing changed, nothing to tell


def test_bulk_path_replays_without_writing_and_signals_per_patient(
    mother: Any,
    mother_patient: Any,
    child: Any,
    django_capture_on_commit_callbacks: Any,
    signals_seen: Any,
) -> None:
    device = r.DeviceRef("42", "Apple Health")
    readings = [r.reading(r.BODY_WEIGHT, 60 + n / 10, taken_at=at(n)) for n in range(30)]
    child_reading = r.reading(r.BODY_WEIGHT, "9.2", taken_at=at())

    def chunk() -> list[Any]:
        items = [
            r.vital_staged(
                patient_id=mother_patient.pk, reading=x, source=device.source, device=device
            )
            for x in readings
        ]
        items.append(
            r.vital_staged(
                patient_id=child.pk, reading=child_reading, source=device.source, device=device
            )
        )
        return items

    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        prov = r.vitals_provenance(user=mother, device=device)
        first = r.vitals_write_staged(chunk(), provenance=prov)
    assert len(first.created) == 31
    assert sorted(signals_seen) == sorted(
        [(mother_patient.pk, frozenset({r.BODY_WEIGHT})), (child.pk, frozenset({r.BODY_WEIGHT}))]
    )
    row = (
        Resource.objects.select_related("provenance")
        .filter(compartments=[child.pk], category="vitals")
        .get()
    )
    assert row.provenance.origin == Provenance.Origin.DEVICE
    assert r.author_id(row) is None
    signals_seen.clear()
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        replay = r.vitals_write_staged(
            chunk(), provenance=r.vitals_provenance(user=mother, device=device)
        )
    assert replay.written == 0
    assert len(replay.unchanged) == 31
    assert Resource.objects.filter(category="vitals").count() == 31
    assert signals_seen == []


def test_signal_is_not_sent_on_rollback(
    mother: Any, mother_patient: Any, django_capture_on_commit_callbacks: Any, signals_seen: Any
) -> None:
    def write_then_fail() -> None:
        with transaction.atomic():
            r.vitals_write(user=mother, patient=mother_patient, readings=[_bp()])
            raise RuntimeError("rolled back")

    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError):
        write_then_fail()
    assert signals_seen == []
    assert not Resource.objects.filter(category="vitals").exists()


def test_a_bad_reading_writes_nothing(mother: Any, mother_patient: Any) -> None:
    with pytest.raises(r.VitalError):
        r.vitals_write(
            user=mother,
            patient=mother_patient,
            readings=[_bp(), r.Reading(r.HEART_RATE, (400,), at())],
        )
    assert not Resource.objects.filter(category="vitals").exists()


def test_who_may_write(
    mother: Any, mother_patient: Any, child: Any, father: Any, stranger: Any, clinician: Any
) -> None:
    weight = r.Reading(r.BODY_WEIGHT, (Decimal("9.1"),), at())
    r.vitals_write(user=father, patient=child, readings=[weight])  # the other guardian: the child
    r.vitals_write(user=mother, patient=child, readings=[weight])
    for user, patient in [(father, mother_patient), (stranger, child), (clinician, mother_patient)]:
        with pytest.raises(PermissionDenied):
            r.vitals_write(user=user, patient=patient, readings=[weight])


# --------------------------------------------------------------------------
# Edit and delete
# --------------------------------------------------------------------------


def test_edit_is_a_new_version_by_the_author_only(
    mother: Any,
    child: Any,
    father: Any,
    django_capture_on_commit_callbacks: Any,
    signals_seen: Any,
) -> None:
    [w] = r.vitals_write(
        user=mother, patient=child, readings=[r.Reading(r.BODY_WEIGHT, (Decimal("9.1"),), at())]
    )
    fixed = r.Reading(r.BODY_WEIGHT, (Decimal("9.4"),), at(5))
    with pytest.raises(PermissionDenied):
        r.vital_edit(user=father, patient=child, record_id=w.id, reading=fixed)
    with pytest.raises(r.VitalError):
        r.vital_edit(
            user=mother,
            patient=child,
            record_id=w.id,
            reading=r.Reading(r.HEAD_CIRCUMFERENCE, (40,), at()),
        )
    with django_capture_on_commit_callbacks(execute=True):
        version = r.vital_edit(user=mother, patient=child, record_id=w.id, reading=fixed)
    assert version == 2
    row = Resource.objects.get(id=w.id)
    assert row.content["valueQuantity"]["value"] == 9.4
    assert row.content["effectiveDateTime"] == r.instant_text(at(5))
    assert signals_seen == [(child.pk, frozenset({r.BODY_WEIGHT}))]
    assert AuditEvent.objects.filter(action="vitals.edit", actor_id=mother.pk).count() == 1


def test_delete_is_a_tombstone_by_the_author_only(
    mother: Any,
    child: Any,
    father: Any,
    django_capture_on_commit_callbacks: Any,
    signals_seen: Any,
) -> None:
    [w] = r.vitals_write(
        user=father,
        patient=child,
        readings=[r.Reading(r.BODY_TEMPERATURE, (Decimal("38.2"),), at())],
    )
    with pytest.raises(PermissionDenied):
        r.vital_delete(user=mother, patient=child, record_id=w.id)
    with django_capture_on_commit_callbacks(execute=True):
        r.vital_delete(user=father, patient=child, record_id=w.id)
    row = Resource.objects.get(id=w.id)
    assert row.deleted
    assert row.version == 2
    assert signals_seen == [(child.pk, frozenset({r.BODY_TEMPERATURE}))]
    with pytest.raises(PermissionDenied):  # gone: nothing left to delete or edit
        r.vital_delete(user=father, patient=child, record_id=w.id)


def test_device_readings_are_not_editable_by_hand(mother: Any, mother_patient: Any) -> None:
    device = r.DeviceRef("9")
    [w] = r.vitals_write(
        user=mother,
        patient=mother_patient,
        device=device,
        readings=[r.Reading(r.HEART_RATE, (70,), at())],
    )
    with pytest.raises(PermissionDenied):
        r.vital_edit(
            user=mother,
            patient=mother_patient,
            record_id=w.id,
            reading=r.Reading(r.HEART_RATE, (71,), at()),
        )
    with pytest.raises(PermissionDenied):
        r.vital_delete(user=mother, patient=mother_patient, record_id=w.id)
