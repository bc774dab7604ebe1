"""The municipal formats on the ingest pipeline: matching residents,
planning and applying a chunk of rows.

Matching (issue: municipal data, part 4):
- a person is found by municipality + resident number (宛名番号), through
  the Residency table;
- a known resident number with another birth date or sex is not imported:
  the row goes to the match-review queue (MatchReview);
- an unknown one creates the Patient (identity row + FHIR Patient) and its
  residency — or, when the row says the family moved here (previous
  municipality + resident number), finds the person there, closes the old
  residency the day before the move and opens the new one from it, so the
  family keeps its whole record;
- the mother named on a child's row is matched or created the same way and
  remembered as the child's mother (MotherChild); if she already has an
  account she becomes the child's guardian at once, otherwise the records
  wait until a family link code is redeemed.

Every record's id derives from (format system, row key + "#" + item), so a
row written twice is one record, a corrected row a new version of it, and a
"delete" row tombstones all of the row's records.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import IO, Any

from django.db import connection
from django.db.models import Q
from django.utils import timezone

from municipal_data import fhir_format
from municipal_data.models import MatchReview, MotherChild
from municipal_data.records import MunicipalFormat, MunicipalRecord, Person
from phr import store, tabular
from phr.models import (
    Batch,
    Guardianship,
    Organization,
    Patient,
    Provenance,
    Residency,
    Resource,
    User,
)
from phr.pipeline import PartitionReader, PipelineFormat, format_register
from phr.services import (
    MCH_HANDBOOK_SYSTEM,
    RESIDENT_NUMBER_SYSTEM,
    guardianship_add,
    patient_resource,
)

# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


def read(
    fmt: MunicipalFormat,
    batch: Batch,
    raw: IO[bytes],
    skip: int,
    partition: tuple[int, int] | None = None,
) -> tuple[Iterator[tabular.Row], str]:
    """The file's rows, each valid one carrying its MunicipalRecord (only
    those of one partition, by person, with `partition=(n, count)`)."""
    stream, detected = tabular.open_text(raw, batch.encoding)
    municipality_code = batch.organization.code

    def rows() -> Iterator[tabular.Row]:
        for row in tabular.rows(stream, fmt.columns, skip=skip, partition=partition):
            if row.ok:
                row.record = fmt.to_record(row, municipality_code)
                if row.record is None and row.ok:
                    row.error("", "row", "この行は取り込めません", "the row cannot be used")
            yield row

    return rows(), detected


# --------------------------------------------------------------------------
# People
# --------------------------------------------------------------------------


@dataclass
class Match:
    patient_id: uuid.UUID | None = None
    new: bool = False
    differences: list[dict[str, str]] = field(default_factory=list)
    moved_from: Residency | None = None


def _identity(patient_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    """The birth date and sex recorded for each patient (what a match checks)."""
    if not patient_ids:
        return {}
    rows = Resource.objects.filter(id__in=patient_ids, resource_type="Patient").values_list(
        "id", "content__birthDate", "content__gender"
    )
    return {pid: {"birthDate": birth or "", "gender": sex or ""} for pid, birth, sex in rows}


def _differences(person: Person, content: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    recorded_birth = content.get("birthDate", "")
    if person.birth_date and recorded_birth and recorded_birth != person.birth_date.isoformat():
        out.append(
            {"field": "birth_date", "file": person.birth_date.isoformat(), "record": recorded_birth}
        )
    recorded_sex = content.get("gender", "")
    if person.sex and recorded_sex in ("male", "female") and recorded_sex != person.sex:
        out.append({"field": "sex", "file": person.sex, "record": recorded_sex})
    return out


class People:
    """Resolves the persons of one chunk with a handful of queries."""

    def __init__(self, municipality: Organization) -> None:
        self.municipality = municipality
        self.cache: dict[tuple[str, str], Match] = {}

    def lookup(self, persons: list[Person]) -> None:
        wanted: set[tuple[str, str]] = set()
        for person in persons:
            wanted.add((person.municipality_code, person.resident_number))
            if person.previous_municipality_code and person.previous_resident_number:
                wanted.add((person.previous_municipality_code, person.previous_resident_number))
        wanted -= set(self.cache)
        if not wanted:
            return
        by_code: dict[str, list[str]] = {}
        for code, number in wanted:
            by_code.setdefault(code, []).append(number)
        condition = Q()
        for code, numbers in by_code.items():
            condition |= Q(municipality__code=code, resident_number__in=numbers)
        found: dict[tuple[str, str], tuple[uuid.UUID, Residency]] = {}
        for residency in (
            Residency.objects.filter(condition)
            .select_related("municipality", "patient")
            .order_by("valid_from")
        ):
            patient = residency.patient
            patient_id = patient.merged_into_id or patient.pk
            found[(residency.municipality.code, residency.resident_number)] = (
                patient_id,
                residency,
            )
        identities = _identity([pid for pid, _ in found.values()])
        self._found = found
        self._identities = identities

    def match(self, person: Person) -> Match:
        key = (person.municipality_code, person.resident_number)
        if key in self.cache:
            return self.cache[key]
        found = getattr(self, "_found", {})
        identities = getattr(self, "_identities", {})
        result = Match(new=True)
        if key in found:
            patient_id, _residency = found[key]
            result = Match(
                patient_id=patient_id,
                differences=_differences(person, identities.get(patient_id, {})),
            )
        elif person.previous_municipality_code and person.previous_resident_number:
            before = found.get((person.previous_municipality_code, person.previous_resident_number))
            if before is not None:
                patient_id, residency = before
                result = Match(
                    patient_id=patient_id,
                    differences=_differences(person, identities.get(patient_id, {})),
                    moved_from=residency,
                )
        self.cache[key] = result
        return result


def _unidentified(person: Person, match: Match) -> bool:
    """A new resident the row does not describe (a FHIR reference by
    resident number alone) cannot be created."""
    return match.patient_id is None and not match.differences and person.birth_date is None


def _patient_for(person: Person) -> dict[str, Any]:
    identifiers = [
        {
            "system": RESIDENT_NUMBER_SYSTEM.format(municipality_code=person.municipality_code),
            "value": person.resident_number,
        }
    ]
    # The MCH handbook is issued to the pregnant woman: its number
    # identifies her (the emergency lookup by handbook number finds one
    # person). A child's rows name it too; there it is not an identifier.
    if person.mch_handbook_number and person.kind == "mother":
        identifiers.append(
            {
                "system": MCH_HANDBOOK_SYSTEM.format(municipality_code=person.municipality_code),
                "value": person.mch_handbook_number,
            }
        )
    return patient_resource(
        family=person.family,
        given=person.given,
        family_kana=person.family_kana,
        given_kana=person.given_kana,
        birth_date=person.birth_date,
        gender=person.sex,
        identifiers=identifiers,
    )


def _lock(keys: list[str]) -> None:
    """Serialise the creation of residents across concurrent imports: one
    transaction-scoped advisory lock per resident, taken in sorted order
    (so two imports never wait on each other in a circle), in one query."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_advisory_xact_lock(hashtext(k))) "
            "FROM (SELECT k FROM unnest(%s::text[]) AS k ORDER BY k) AS ordered",
            [sorted(keys)],
        )


def residents_create(
    people: People, candidates: list[tuple[Person, MunicipalRecord]], provenance: Provenance
) -> set[uuid.UUID]:
    """Create, in bulk, the chunk's residents nobody knows yet (identity
    rows, FHIR Patients, residencies); return their ids."""
    municipality = people.municipality
    wanted: dict[str, tuple[Person, MunicipalRecord]] = {}
    for person, record in candidates:
        match = people.match(person)
        if match.patient_id is None and not match.differences and not _unidentified(person, match):
            wanted.setdefault(person.resident_number, (person, record))
    if not wanted:
        return set()
    _lock([f"resident|{municipality.code}|{number}" for number in wanted])
    # Another import may have created some of them a moment ago.
    for number, patient_id in Residency.objects.filter(
        municipality=municipality, resident_number__in=list(wanted)
    ).values_list("resident_number", "patient_id"):
        match = people.match(wanted.pop(number)[0])
        match.patient_id = patient_id
        match.new = False
    patients: list[Patient] = []
    residencies: list[Residency] = []
    staged: list[store.Staged] = []
    for number, (person, record) in wanted.items():
        patient_id = uuid.uuid4()
        kind = Patient.Kind.CHILD if person.kind == "child" else Patient.Kind.ADULT
        patients.append(Patient(id=patient_id, kind=kind))
        residencies.append(
            Residency(
                patient_id=patient_id,
                municipality=municipality,
                resident_number=number,
                valid_from=_residency_start(person, record),
            )
        )
        staged.append(store.stage(_patient_for(person), resource_id=patient_id))
        people.match(person).patient_id = patient_id
    Patient.objects.bulk_create(patients)
    Residency.objects.bulk_create(residencies)
    store.write_staged(staged, provenance=provenance, copy=True)
    return {p.pk for p in patients}


def _residency_start(person: Person, record: MunicipalRecord) -> date:
    if person.moved_in:
        return person.moved_in
    if person.kind == "child" and person.birth_date:
        return person.birth_date
    return timezone.localdate()


def person_resolve(
    people: People, person: Person, record: MunicipalRecord, provenance: Provenance
) -> Match:
    """Match the person (created in bulk before, see residents_create), or
    move them here when the row says the family moved."""
    match = people.match(person)
    if match.differences or (match.patient_id and not match.moved_from):
        return match
    municipality = people.municipality
    if match.moved_from is not None:
        moved_in = person.moved_in or timezone.localdate()
        old = match.moved_from
        if old.valid_to is None or old.valid_to >= moved_in:
            old.valid_to = moved_in - timedelta(days=1)
            old.save(update_fields=["valid_to"])
        Residency.objects.get_or_create(
            patient_id=match.patient_id,
            municipality=municipality,
            resident_number=person.resident_number,
            defaults={"valid_from": moved_in},
        )
        match.moved_from = None
        return match
    return match  # unknown and not creatable: the caller skips the row


# --------------------------------------------------------------------------
# Records of a row
# --------------------------------------------------------------------------


def _sources(
    fmt: MunicipalFormat, record: MunicipalRecord, subject: uuid.UUID, mother: uuid.UUID | None
) -> list[tuple[dict[str, Any], store.Source]]:
    system = fmt.source_system(record.subject.municipality_code)
    return [
        (resource, store.Source(system, f"{record.key}#{item}"))
        for item, resource in fmt.resources(record, str(subject), str(mother) if mother else None)
    ]


def _row_records(
    fmt: MunicipalFormat, municipality_code: str, keys: list[str]
) -> dict[str, list[tuple[uuid.UUID, str]]]:
    """The live records of each row key: {key: [(id, type)]}."""
    if not keys:
        return {}
    system = fmt.source_system(municipality_code)
    condition = Q()
    for key in keys:
        condition |= Q(source_value__startswith=f"{key}#")
    out: dict[str, list[tuple[uuid.UUID, str]]] = {}
    for rid, rtype, value in Resource.objects.filter(
        condition, source_system=system, deleted=False
    ).values_list("id", "resource_type", "source_value"):
        out.setdefault(value.rsplit("#", 1)[0], []).append((rid, rtype))
    return out


def _row_hash(row: tabular.Row) -> str:
    text = "\x1f".join(f"{k}={v}" for k, v in sorted(row.raw.items()))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _existing_hashes(staged: list[store.Staged]) -> dict[str, str]:
    if not staged:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id::text, content_hash FROM phr_resource WHERE id = ANY(%s::uuid[])",
            ["{" + ",".join(s.id_text for s in staged) + "}"],
        )
        return dict(cursor.fetchall())


def _last_per_key(
    rows: list[tabular.Row], counts: dict[str, int]
) -> list[tuple[tabular.Row, MunicipalRecord]]:
    """A file that names a row key twice (an addition, then its correction
    or withdrawal further down) means its last word: only the last row of
    each key is applied, so importing the same file again writes nothing.
    (Within a chunk of rows; the rows of one key are almost always close.)
    The rows it supersedes count as unchanged."""
    last: dict[str, tuple[tabular.Row, MunicipalRecord]] = {}
    for row in rows:
        record: MunicipalRecord = row.record
        last.pop(record.key, None)
        last[record.key] = (row, record)
    counts["unchanged"] += len(rows) - len(last)
    return sorted(last.values(), key=lambda pair: pair[0].line)


def plan(
    fmt: MunicipalFormat, batch: Batch, rows: list[tabular.Row], state: dict[str, Any]
) -> dict[str, int]:
    """What apply() would do with these rows, without writing anything."""
    counts = {"new_patients": 0, "created": 0, "updated": 0, "deleted": 0, "unchanged": 0}
    counts["review"] = 0
    people = People(batch.organization)
    records = _last_per_key(rows, counts)
    people.lookup(
        [r.subject for _, r in records] + [r.mother for _, r in records if r.mother is not None]
    )
    new_seen: set[str] = set(state.get("new", []))
    deletes = [r.key for _, r in records if r.change == "delete"]
    existing_rows = _row_records(fmt, batch.organization.code, deletes)
    staged: list[store.Staged] = []
    fresh_ids: set[uuid.UUID] = set()
    for row, record in records:
        if record.change == "delete":
            if existing_rows.get(record.key):
                counts["deleted"] += len(existing_rows[record.key])
            else:
                counts["unchanged"] += 1
            continue
        persons = [record.subject] + ([record.mother] if record.mother else [])
        matches = {p.kind: people.match(p) for p in persons}
        if any(_unidentified(p, m) for p in persons for m in [matches[p.kind]]):
            row.error(
                "",
                "unknown_resident",
                "この宛名番号の方は未登録で、氏名・生年月日もないため登録できません",
                "this resident number is not known and the row does not say who it is "
                "(name, birth date)",
            )
            continue
        if any(m.differences for m in matches.values()):
            counts["review"] += 1
            continue
        ids: dict[str, uuid.UUID] = {}
        for person in persons:
            match = matches[person.kind]
            if match.patient_id is not None:
                ids[person.kind] = match.patient_id
            else:
                token = f"{person.municipality_code}|{person.resident_number}"
                if token not in new_seen:
                    new_seen.add(token)
                    counts["new_patients"] += 1
                # a stand-in id: all its records are new anyway
                ids[person.kind] = uuid.uuid5(uuid.NAMESPACE_URL, token)
        for resource, source in _sources(fmt, record, ids[record.subject.kind], ids.get("mother")):
            item = store.stage(resource, source=source)
            if matches[record.subject.kind].patient_id is None:
                fresh_ids.add(item.id)
            staged.append(item)
    hashes = _existing_hashes([s for s in staged if s.id not in fresh_ids])
    seen: set[uuid.UUID] = set()
    for item in staged:
        if item.id in seen:
            continue
        seen.add(item.id)
        old = hashes.get(item.id_text)
        if old is None:
            counts["created"] += 1
        elif old == item.content_hash:
            counts["unchanged"] += 1
        else:
            counts["updated"] += 1
    state["new"] = sorted(new_seen)
    return counts


def apply(
    fmt: MunicipalFormat, batch: Batch, rows: list[tabular.Row], provenance: Provenance
) -> dict[str, int]:
    """Write the rows (in the caller's transaction)."""
    counts = {"new_patients": 0, "created": 0, "updated": 0, "deleted": 0, "unchanged": 0}
    counts["review"] = 0
    municipality = batch.organization
    people = People(municipality)
    records = _last_per_key(rows, counts)
    people.lookup(
        [r.subject for _, r in records] + [r.mother for _, r in records if r.mother is not None]
    )
    created = residents_create(
        people,
        [
            (person, record)
            for _, record in records
            if record.change != "delete"
            for person in (record.subject, record.mother)
            if person is not None
        ],
        provenance,
    )
    counts["new_patients"] += len(created)
    writes: list[store.Staged] = []
    item_ids: dict[str, set[uuid.UUID]] = {}
    old_subject: set[str] = set()
    check: set[str] = set()
    deletes: list[str] = []
    pairs: set[tuple[uuid.UUID, uuid.UUID]] = set()
    for row, record in records:
        if record.change == "delete":
            deletes.append(record.key)
            continue
        persons = [record.subject] + ([record.mother] if record.mother else [])
        if any(_unidentified(p, people.match(p)) for p in persons):
            # Validation reported it; it stays out (and counts as invalid).
            counts["invalid"] = counts.get("invalid", 0) + 1
            counts["valid"] = counts.get("valid", 0) - 1
            continue
        matches: dict[str, Match] = {}
        for person in persons:
            matches[person.kind] = person_resolve(people, person, record, provenance)
        differing = [(p, matches[p.kind]) for p in persons if matches[p.kind].differences]
        if differing:
            person, match = differing[0]
            MatchReview.objects.get_or_create(
                municipality=municipality,
                format=fmt.key,
                row_key=record.key,
                row_hash=_row_hash(row),
                defaults={
                    "batch": batch,
                    "line": row.line,
                    "resident_number": person.resident_number,
                    "patient_id": match.patient_id,
                    "row": dict(row.raw),
                    "differences": match.differences,
                },
            )
            counts["review"] += 1
            continue
        subject_id = matches[record.subject.kind].patient_id
        mother_id = matches["mother"].patient_id if "mother" in matches else None
        assert subject_id is not None
        if mother_id is not None and record.subject.kind == "child":
            pairs.add((mother_id, subject_id))
        staged = [
            store.stage(resource, source=source)
            for resource, source in _sources(fmt, record, subject_id, mother_id)
        ]
        writes += staged
        item_ids[record.key] = {item.id for item in staged}
        if record.change == "update":
            check.add(record.key)
        if subject_id not in created:
            old_subject.add(record.key)
    result = store.write_staged(writes, provenance=provenance, copy=True) if writes else None
    if result is not None:
        counts["created"] += len(result.created)
        counts["updated"] += len(result.updated)
        counts["unchanged"] += len(result.unchanged)
        # A row whose records changed may have lost an item (a cell emptied);
        # a person created just now has no older records to lose.
        changed = set(result.created) | set(result.updated)
        check |= {key for key in old_subject if item_ids[key] & changed}
    # Records a corrected row no longer carries, and all of a "delete"
    # row's records, become tombstones.
    live = _row_records(fmt, municipality.code, sorted(check) + deletes)
    counts["unchanged"] += sum(1 for key in deletes if not live.get(key))
    for key, records_of_key in live.items():
        keep = set() if key in deletes else item_ids.get(key, set())
        for rid, rtype in records_of_key:
            if rid in keep:
                continue
            if store.record_delete(resource_type=rtype, resource_id=rid, provenance=provenance):
                counts["deleted"] += 1
    if pairs:
        _remember_mothers(pairs, municipality)
    return counts


def _remember_mothers(pairs: set[tuple[uuid.UUID, uuid.UUID]], municipality: Organization) -> None:
    MotherChild.objects.bulk_create(
        [MotherChild(mother_id=m, child_id=c, municipality=municipality) for m, c in pairs],
        ignore_conflicts=True,
    )
    # A mother who already has an account is her child's guardian at once.
    accounts = dict(
        Patient.objects.filter(pk__in={m for m, _ in pairs}, account__isnull=False).values_list(
            "pk", "account_id"
        )
    )
    for mother, child in pairs:
        account = accounts.get(mother)
        if (
            account
            and not Guardianship.objects.filter(guardian_id=account, child_id=child).exists()
        ):
            guardianship_add(
                guardian=User.objects.get(pk=account),
                child=Patient.objects.get(pk=child),
                relationship=Guardianship.Relationship.MOTHER,
            )


# --------------------------------------------------------------------------
# Registration on the pipeline
# --------------------------------------------------------------------------


def pipeline_format(fmt: MunicipalFormat) -> PipelineFormat:
    partitioned: PartitionReader | None = None
    if fmt.key == fhir_format.KEY:
        reader = fhir_format.read
    else:

        def reader(batch: Batch, raw: IO[bytes], skip: int) -> tuple[Iterator[tabular.Row], str]:
            return read(fmt, batch, raw, skip)

        def partitioned(
            batch: Batch, raw: IO[bytes], skip: int, partition: tuple[int, int]
        ) -> tuple[Iterator[tabular.Row], str]:
            return read(fmt, batch, raw, skip, partition)

    return PipelineFormat(
        key=fmt.key,
        label_ja=fmt.label_ja,
        label_en=fmt.label_en,
        read=reader,
        read_partition=partitioned,
        plan=lambda batch, rows, state: plan(fmt, batch, rows, state),
        apply=lambda batch, rows, provenance: apply(fmt, batch, rows, provenance),
    )


def register_all() -> None:
    format_register(pipeline_format(fhir_format.FHIR_FORMAT))
    from municipal_data.formats import FORMATS

    for fmt in FORMATS.values():
        format_register(pipeline_format(fmt))
