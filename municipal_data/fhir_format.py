"""The municipal records as FHIR: a Bundle (collection, transaction,
batch or searchset) or NDJSON (one resource per line), the same content
as the CSV formats (docs/formats/fhir.md).

- People are Patient resources identified by the resident number
  (identifier system urn:hagukumi:resident-number:<municipality code>),
  optionally the MCH handbook number; a child names its mother with the
  extension https://hagukumi.jp/fhir/StructureDefinition/mother
  (valueReference to the mother's Patient). Whether a Patient is a mother
  or a child: the tag https://hagukumi.jp/fhir/CodeSystem/patient-kind
  (mother | child); without it, a person born less than 16 years before
  the file is a child.
- Every other resource carries an identifier (its identity at the source:
  writing it again updates it, never duplicates it) and refers to its
  Patient by "Patient/<id>", a Bundle fullUrl ("urn:uuid:…") or a logical
  reference by resident-number identifier; references between the file's
  resources (an Observation's encounter) are rewritten to the stored ids.
- A transaction/batch entry with request.method DELETE withdraws the
  resource named by its identifier (request.url "Type?identifier=system|value").

Outside FHIR is validated with fhir.resources at the boundary, resource by
resource; a bad one is a row error (line = entry number for a Bundle, line
number for NDJSON) and the others go on. The file is read twice: first to
learn its Patients and identifiers (so a reference may point forwards or
into another chunk), then row by row.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import date
from typing import IO, Any

import orjson

from municipal_data.records import MunicipalFormat, MunicipalRecord, Person
from phr import store, tabular
from phr.fhir import FhirValidationError, validate_resource
from phr.indexing import COMPARTMENT_PATHS
from phr.models import Batch
from phr.services import MCH_HANDBOOK_SYSTEM, RESIDENT_NUMBER_SYSTEM

KEY = "municipal_fhir"
MOTHER_EXTENSION = "https://hagukumi.jp/fhir/StructureDefinition/mother"
KIND_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/patient-kind"
MAX_BUNDLE_BYTES = 200 * 1024 * 1024
SYL = "SYL"


def _error(row: tabular.Row, column: str, code: str, ja: str, en: str) -> None:
    row.errors.append(tabular.CellError(row.line, column, "", code, ja, en))


def _entries(raw: IO[bytes]) -> Iterator[tuple[int, Any, str]]:
    """(line or entry number, parsed JSON or None, error) for each resource."""
    head = raw.peek(64) if hasattr(raw, "peek") else b""
    if head.lstrip().startswith(b"{") and b"\n" not in head.lstrip()[:1]:
        body = raw.read(MAX_BUNDLE_BYTES + 1)
        if len(body) > MAX_BUNDLE_BYTES:
            raise tabular.FileError(
                "too_large",
                "Bundle が大きすぎます（NDJSON で送ってください）",
                "the Bundle is too large (send NDJSON)",
            )
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            document = None
        if isinstance(document, dict) and document.get("resourceType") == "Bundle":
            for number, entry in enumerate(document.get("entry") or [], start=1):
                yield number, entry, ""
            return
        if isinstance(document, dict):
            yield 1, {"resource": document}, ""
            return
        raw = _Replay(body)  # not one JSON document: read it as NDJSON
    for number, line in enumerate(raw, start=1):
        if not line.strip():
            continue
        try:
            yield number, {"resource": orjson.loads(line)}, ""
        except orjson.JSONDecodeError as error:
            yield number, None, str(error)


class _Replay:
    def __init__(self, body: bytes) -> None:
        self.lines = body.splitlines(keepends=True)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.lines)


def _identifier(resource: dict[str, Any]) -> tuple[str, str] | None:
    for identifier in resource.get("identifier") or []:
        if isinstance(identifier, dict) and identifier.get("system") and identifier.get("value"):
            return str(identifier["system"]), str(identifier["value"])
    return None


def _kana_and_kanji(patient: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    kanji: dict[str, Any] = {}
    kana: dict[str, Any] = {}
    for name in patient.get("name") or []:
        codes = {e.get("valueCode") for e in name.get("extension") or []}
        if SYL in codes:
            kana = kana or name
        else:
            kanji = kanji or name
    return kanji, kana


def _given(name: dict[str, Any]) -> str:
    return " ".join(name.get("given") or [])


class Directory:
    """What the first pass learned: the file's Patients as Persons, and the
    stored id of every resource a reference may name."""

    def __init__(self, municipality_code: str, today: date) -> None:
        self.code = municipality_code
        self.today = today
        self.resident_system = RESIDENT_NUMBER_SYSTEM.format(municipality_code=municipality_code)
        self.persons: dict[str, Person] = {}  # reference key -> person
        self.mothers: dict[str, str] = {}  # child's reference key -> mother's reference key
        self.targets: dict[str, str] = {}  # reference key -> "Type/<stored id>"

    def person_of(self, patient: dict[str, Any]) -> Person | None:
        numbers = [
            i.get("value")
            for i in patient.get("identifier") or []
            if isinstance(i, dict) and i.get("system") == self.resident_system and i.get("value")
        ]
        if not numbers:
            return None
        handbook = next(
            (
                i.get("value", "")
                for i in patient.get("identifier") or []
                if isinstance(i, dict)
                and i.get("system") == MCH_HANDBOOK_SYSTEM.format(municipality_code=self.code)
            ),
            "",
        )
        kanji, kana = _kana_and_kanji(patient)
        birth = None
        try:
            birth = date.fromisoformat(patient["birthDate"]) if patient.get("birthDate") else None
        except (TypeError, ValueError):
            birth = None
        tags = {
            t.get("code")
            for t in (patient.get("meta") or {}).get("tag") or []
            if t.get("system") == KIND_SYSTEM
        }
        if tags & {"mother", "child"}:
            kind = "mother" if "mother" in tags else "child"
        else:
            young = birth is not None and (self.today.year - birth.year) < 16
            kind = "child" if young else "mother"
        return Person(
            kind=kind,  # type: ignore[arg-type]
            municipality_code=self.code,
            resident_number=str(numbers[0]),
            family=str(kanji.get("family", "")),
            given=_given(kanji),
            family_kana=str(kana.get("family", "")),
            given_kana=_given(kana),
            birth_date=birth,
            sex=patient.get("gender") if patient.get("gender") in ("male", "female") else None,
            mch_handbook_number=str(handbook),
        )

    def learn(self, entry: dict[str, Any]) -> None:
        resource = entry.get("resource")
        if not isinstance(resource, dict):
            return
        rtype = resource.get("resourceType")
        keys = [k for k in (entry.get("fullUrl"), f"{rtype}/{resource.get('id')}") if k]
        if rtype == "Patient":
            person = self.person_of(resource)
            if person is None:
                return
            for key in keys:
                self.persons[key] = person
            for extension in resource.get("extension") or []:
                if extension.get("url") == MOTHER_EXTENSION:
                    mother_ref = (extension.get("valueReference") or {}).get("reference")
                    if mother_ref:
                        for key in keys:
                            self.mothers[key] = mother_ref
            return
        identifier = _identifier(resource)
        if identifier and isinstance(rtype, str):
            stored = store.source_resource_id(rtype, self.source(rtype, identifier))
            for key in keys:
                self.targets[key] = f"{rtype}/{stored}"

    def source(self, rtype: str, identifier: tuple[str, str]) -> store.Source:
        return store.Source(
            f"urn:hagukumi:municipality:{self.code}:{KEY}",
            f"{identifier[0]}|{identifier[1]}#{rtype}",
        )

    def person_for(self, reference: dict[str, Any]) -> Person | None:
        ref = reference.get("reference")
        if ref:
            return self.persons.get(ref)
        identifier = reference.get("identifier") or {}
        if identifier.get("system") == self.resident_system and identifier.get("value"):
            return Person(
                kind="child", municipality_code=self.code, resident_number=identifier["value"]
            )
        return None

    def mother_of(self, reference: dict[str, Any]) -> Person | None:
        ref = reference.get("reference")
        mother_ref = self.mothers.get(ref) if ref else None
        return self.persons.get(mother_ref) if mother_ref else None


def _rewrite(value: Any, directory: Directory) -> Any:
    """Replace references to the file's resources by their stored ids."""
    if isinstance(value, dict):
        out = {k: _rewrite(v, directory) for k, v in value.items()}
        ref = value.get("reference")
        if isinstance(ref, str) and ref in directory.targets:
            out["reference"] = directory.targets[ref]
        return out
    if isinstance(value, list):
        return [_rewrite(v, directory) for v in value]
    return value


def _delete_target(entry: dict[str, Any]) -> tuple[str, tuple[str, str]] | None:
    url = str((entry.get("request") or {}).get("url") or "")
    if "?identifier=" not in url:
        return None
    rtype, _, query = url.partition("?identifier=")
    system, _, value = query.partition("|")
    return (rtype, (system, value)) if system and value else None


def read(batch: Batch, raw: IO[bytes], skip: int) -> tuple[Iterator[tabular.Row], str]:
    from django.utils import timezone

    from phr.pipeline import batch_file_path

    directory = Directory(batch.organization.code, timezone.localdate())
    with batch_file_path(batch).open("rb") as first:
        for _number, entry, _error_text in _entries(_buffered(first)):
            if isinstance(entry, dict):
                directory.learn(entry)

    def rows() -> Iterator[tabular.Row]:
        seen = 0
        for number, entry, error_text in _entries(_buffered(raw)):
            seen += 1
            if seen <= skip:
                continue
            yield _row(number, entry, error_text, directory)

    return rows(), "utf-8"


def _buffered(handle: IO[bytes]) -> Any:
    import io

    return handle if hasattr(handle, "peek") else io.BufferedReader(handle)  # type: ignore[arg-type]


def _row(number: int, entry: Any, error_text: str, directory: Directory) -> tabular.Row:
    row = tabular.Row(line=number)
    if entry is None:
        _error(row, "", "json", f"JSON として読めません: {error_text}", f"not JSON: {error_text}")
        return row
    if not isinstance(entry, dict):
        _error(row, "", "entry", "Bundle.entry が不正です", "not a Bundle entry")
        return row
    method = str((entry.get("request") or {}).get("method") or "").upper()
    if method == "DELETE":
        target = _delete_target(entry)
        if target is None:
            _error(
                row,
                "request.url",
                "delete",
                "削除は request.url を 'Type?identifier=system|value' で指定してください",
                "a DELETE names its resource as request.url 'Type?identifier=system|value'",
            )
            return row
        rtype, identifier = target
        row.record = MunicipalRecord(
            line=number,
            change="delete",
            key=directory.source(rtype, identifier).value.rsplit("#", 1)[0],
            subject=Person(kind="child", municipality_code=directory.code, resident_number=""),
        )
        return row
    resource = entry.get("resource")
    try:
        validate_resource(resource)
    except FhirValidationError as error:
        for path, reason in error.issues[:20]:
            _error(row, path, "fhir", f"FHIR として正しくありません: {reason}", reason)
        return row
    assert isinstance(resource, dict)
    rtype = resource["resourceType"]
    if rtype == "Patient":
        person = directory.person_of(resource)
        if person is None:
            _error(
                row,
                "Patient.identifier",
                "resident_number",
                f"宛名番号（{directory.resident_system}）がありません",
                f"no resident number identifier ({directory.resident_system})",
            )
            return row
        mother = directory.mother_of({"reference": entry.get("fullUrl")}) or directory.mother_of(
            {"reference": f"Patient/{resource.get('id')}"}
        )
        row.record = MunicipalRecord(
            line=number,
            change="add",
            key=f"{directory.resident_system}|{person.resident_number}",
            subject=person,
            mother=replace(mother, kind="mother") if mother and person.kind == "child" else None,
            values={"resource": None},
        )
        return row
    identifier = _identifier(resource)
    if identifier is None:
        _error(
            row,
            f"{rtype}.identifier",
            "identifier",
            "identifier（送信元での識別子）が必要です。同じ記録を二重に取り込まないために使います",
            "an identifier (the record's id at the source) is required, so that sending it "
            "again updates it instead of duplicating it",
        )
        return row
    field = COMPARTMENT_PATHS.get(rtype, ("subject",))[0]
    reference = resource.get(field) or {}
    person = directory.person_for(reference) if isinstance(reference, dict) else None
    if person is None:
        _error(
            row,
            f"{rtype}.{field}",
            "patient",
            "対象者（Patient）が見つかりません。ファイル内の Patient か宛名番号で指定してください",
            "the patient is not in the file: refer to a Patient of the file or by resident number",
        )
        return row
    row.record = MunicipalRecord(
        line=number,
        change="add",
        key=directory.source(rtype, identifier).value.rsplit("#", 1)[0],
        subject=person,
        mother=None,
        values={"resource": _rewrite(resource, directory), "field": field, "type": rtype},
    )
    return row


def resources(record: MunicipalRecord, subject: str, mother: str | None) -> list[tuple[str, Any]]:
    resource = record.values.get("resource")
    if resource is None:  # a Patient: the person is matched or created, nothing more
        return []
    content = dict(resource)
    content.pop("id", None)
    content[record.values["field"]] = {"reference": f"Patient/{subject}"}
    return [(record.values["type"], content)]


FHIR_FORMAT = MunicipalFormat(
    key=KEY,
    label_ja="FHIR（Bundle / NDJSON）",
    label_en="FHIR (Bundle / NDJSON)",
    category="",
    columns=(),
    to_record=lambda row, code: row.record,
    resources=resources,
)


def stored_id(municipality_code: str, rtype: str, system: str, value: str) -> uuid.UUID:
    """The id a resource sent with this identifier is stored under."""
    directory = Directory(municipality_code, date.min)
    return store.source_resource_id(rtype, directory.source(rtype, (system, value)))
