"""Writing what devices and files send, through vitals.records (the one
catalog, builder and write path): every reading checked first (unit
conversion, plausible range, time), so a payload or file is written whole
or not at all, with every problem named; then one write, audited, its
Provenance naming the device (origin DEVICE) or the person (SELF).

Dedupe: a reading's identity is (source, person, kind, instant)
(records.vital_identity), the source being the device ("device:<uuid>") or,
for a CSV not tied to a device, the uploader ("csv:<user id>") — sending or
importing the same data again adds nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import transaction

from phr.audit import audit_write
from phr.models import Patient
from phr.terminology import Category
from sharing.access import Purpose
from vitals import csv_import, records
from vitals.device_formats import PayloadError, Problem
from vitals.devices import family_role
from vitals.models import Device


class RegistrantLostAccess(Exception):
    """The person who registered the device may no longer write this
    patient's vitals (a guardianship ended, a DV block): the device is cut
    off with her."""


def device_ref(device: Device) -> records.DeviceRef:
    return records.DeviceRef(id=str(device.pk), display=device.name)


def check_all(readings: Sequence[records.Reading], wheres: Sequence[str]) -> list[records.Reading]:
    """Every reading checked (records.reading_check), or PayloadError with
    every problem, each at its place in the payload."""
    checked: list[records.Reading] = []
    problems: list[Problem] = []
    for reading, where in zip(readings, wheres, strict=True):
        try:
            checked.append(records.reading_check(reading))
        except records.VitalError as exc:
            problems.append(Problem(f"{where} ({exc.field})", str(exc.value), exc.ja, exc.en))
    if problems:
        raise PayloadError(problems)
    return checked


@dataclass(frozen=True)
class DeviceWrite:
    written: list[records.Written]

    @property
    def created(self) -> int:
        return sum(1 for w in self.written if w.created)

    @property
    def unchanged(self) -> int:
        return sum(1 for w in self.written if not w.changed)


@transaction.atomic
def write_from_device(
    *, device: Device, readings: Sequence[records.Reading], wheres: Sequence[str], api: str
) -> DeviceWrite:
    """Write a device's readings for its patient (checked first: all or
    nothing). Audited with the device named; Provenance DEVICE
    ("device:<uuid>", agent: the person who registered it)."""
    checked = check_all(readings, wheres)
    user = device.registered_by
    if user is None:
        raise RegistrantLostAccess
    try:
        written = records.vitals_write(
            user=user,
            patient=device.patient,
            readings=checked,
            device=device_ref(device),
            provenance_source=device.provenance_source,
        )
    except PermissionDenied:
        raise RegistrantLostAccess from None
    result = DeviceWrite(written)
    audit_write(
        action="vitals.device.write",
        actor_id=user.pk,
        actor_role="device",
        patient_id=device.patient_id,
        categories=[Category.VITALS],
        purpose=Purpose.PERSONAL,
        detail={
            "device": str(device.pk),
            "api": api,
            "readings": len(written),
            "created": result.created,
            "unchanged": result.unchanged,
        },
    )
    return result


@dataclass(frozen=True)
class CsvResult:
    rows: int
    created: int
    updated: int
    unchanged: int
    kinds: dict[str, int]


@transaction.atomic
def write_csv(
    *, patient: Patient, by: Any, rows: Sequence[csv_import.CsvRow], device: Device | None
) -> CsvResult:
    """Import a parsed CSV for `patient` as `by` (checked first, then one
    write through the store's bulk path: all rows or none). Raises
    csv_import.CsvError listing every row refused."""
    records.authorize(by, patient)
    checked: list[records.Reading] = []
    problems: list[csv_import.RowProblem] = []
    for row in rows:
        try:
            checked.append(records.reading_check(row.reading))
        except records.VitalError as exc:
            problems.append(
                csv_import.RowProblem(
                    row.line, csv_import.column_of(exc.field), str(exc.value), exc.ja, exc.en
                )
            )
    if problems:
        raise csv_import.CsvError(problems)
    ref = device_ref(device) if device is not None else None
    source = ref.source if ref is not None else f"csv:{by.pk}"
    items = [
        records.vital_staged(patient_id=patient.pk, reading=r, source=source, device=ref)
        for r in checked
    ]
    # Two rows of the file for the same kind and instant are one reading
    # (the last one wins, as writing them one after the other would).
    unique = list({item.id: item for item in items}.values())
    provenance = records.vitals_provenance(
        user=by, device=ref, source=ref.source if ref else "vitals:csv"
    )
    result = records.vitals_write_staged(unique, provenance=provenance, copy=True, sender=write_csv)
    kinds: dict[str, int] = {}
    for reading in checked:
        kinds[reading.kind] = kinds.get(reading.kind, 0) + 1
    created, updated = len(result.created), len(result.updated)
    audit_write(
        action="vitals.csv_import",
        actor_id=by.pk,
        actor_role=family_role(by, patient),
        patient_id=patient.pk,
        categories=[Category.VITALS],
        purpose=Purpose.PERSONAL,
        detail={
            "rows": len(checked),
            "created": created,
            "updated": updated,
            "device": str(device.pk) if device is not None else None,
        },
    )
    return CsvResult(
        rows=len(checked),
        created=created,
        updated=updated,
        unchanged=len(unique) - created - updated,
        kinds={str(records.KINDS[k].label): n for k, n in kinds.items()},
    )
