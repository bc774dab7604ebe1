"""Clinic feed pulls: a clinic's FHIR server registered as a feed source
(phr.feeds, the same machinery and pipeline as municipal feeds) is
searched on a schedule with `_lastUpdated=gt<cursor>`, following the
searchset Bundle's next links; every entry is a resource to store.

Staff register the feed with the format `clinic_fhir`, the cursor
parameter `_lastUpdated` and a search URL sorted by time, e.g.
`https://ehr.example.jp/fhir/Observation?_sort=_lastUpdated&_count=100`
(or a system search with `_type=Patient,Encounter,Observation,…`).
docs/decisions/0011-fhir-bundles.md, "Clinic feed pulls".

- Cursor (phr.feeds.CURSOR_RULES): asked as `gt<instant>`; after a page,
  the newest `meta.lastUpdated` of its entries (an empty page keeps the
  cursor), so a run stopped after page 2 resumes after page 2's entries
  and never after the search time.
- Each entry is checked like a Bundle entry of POST /fhir (structure with
  fhir.resources R4B, the codes we rely on: phr.fhir_bundle.check_codes);
  a bad one is a row error of the page's batch, the others are written.
- Ids come from the source identifier: the server's base URL and
  `Type/id` (store.Source), so a page read twice writes nothing new, and
  the server's references (`Patient/123`) map to our ids without a
  lookup. An entry without an id is identified by its first identifier.
- Who may write: the staff member who registered the feed, as the policy
  point says (sharing.access.may_write: a care consent covering the
  category, or a patient the clinic registered). Patients the server sends
  are registered by the clinic (identity row + resource, provenance of the
  feed run: origin clinic), so their records follow; a record about any
  other patient is refused as "not known" unless a consent covers it.
- Unless she is known here: a Patient whose identifiers name exactly one
  person the clinic may know (sharing.access.may_know; clinics/matching.py)
  is linked to her — no new identity, her Patient resource gains the
  server's identifiers — and an alias (clinics.PatientAlias: the id the
  server's `Patient/123` derives, for this clinic) makes the server's
  references to her, on this page and every later one, land in her
  record. Several such persons: registered anew, noted for review.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from clinics import matching
from phr import feeds, indexing, store
from phr.fhir import FhirValidationError, validate_resource
from phr.fhir_bundle import BUNDLE_TYPES, check_codes
from phr.models import Batch, Organization, Patient, Provenance, Resource, Role
from phr.pipeline import PipelineFormat, format_register
from phr.tabular import FileError, Row
from sharing.access import Decision

FORMAT_KEY = "clinic_fhir"
CURSOR_PARAM = "_lastUpdated"
_TYPE_ID = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})$")
_ABSOLUTE = re.compile(r"^(https?://.+/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(/_history/.*)?$")


def _server_references(
    resource: dict[str, Any], base: str
) -> Iterator[tuple[dict[str, Any], str, str]]:
    """Every reference of a resource in the form Type/id (relative, or
    absolute under the server's base): the element holding it, the type
    and the reference relative to the base."""
    stack: list[Any] = [resource]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            reference = node.get("reference")
            if isinstance(reference, str):
                if reference.startswith(base):
                    reference = reference[len(base) :]
                match = _TYPE_ID.match(reference)
                if match is not None:
                    yield node, match.group(1), reference
            stack.extend(v for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, dict | list))


@dataclass
class _Record:
    """What writing a good entry needs (Row.record of this format)."""

    resource: dict[str, Any]
    source: store.Source
    id: uuid.UUID
    fields: indexing.IndexFields | None = None
    new_patient: bool = False
    # A Patient linked to a person known here: the policy point's decision,
    # and the id the server's own id derives (the alias to remember).
    link: Decision | None = None
    alias: uuid.UUID | None = None
    # A new registration whose identifiers named several persons: them.
    review: list[uuid.UUID] = field(default_factory=list)
    review_tokens: list[str] = field(default_factory=list)


def _entries(body: bytes) -> list[tuple[str | None, Any]]:
    """(fullUrl, resource) per item of a Bundle page or an NDJSON page."""
    text = body.lstrip()
    if text.startswith(b"{") and b"\n{" not in text.strip():
        try:
            bundle = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise FileError("json", "JSONとして読めません。", "The page is not JSON.") from None
        if isinstance(bundle, dict) and bundle.get("resourceType") == "Bundle":
            out = []
            for entry in bundle.get("entry") or []:
                entry = entry if isinstance(entry, dict) else {}
                full_url = entry.get("fullUrl")
                out.append((full_url if isinstance(full_url, str) else None, entry.get("resource")))
            return out
        return [(None, bundle)]
    out = []
    for line in body.split(b"\n"):
        if line.strip():
            try:
                out.append((None, orjson.loads(line)))
            except orjson.JSONDecodeError:
                out.append((None, None))
    return out


def _default_base(batch: Batch) -> str:
    """The server's base URL from the feed's URL: the path without a
    trailing resource type, without the query."""
    run = batch.feed_run
    url = run.source.url if run is not None else ""
    parts = urlsplit(url)
    path = parts.path
    last = path.rstrip("/").rsplit("/", 1)[-1]
    if last[:1].isupper():
        path = path.rstrip("/")[: -len(last)]
    if not path.endswith("/"):
        path += "/"
    return urlunsplit(parts._replace(path=path, query="", fragment=""))


def _acting_user(batch: Batch) -> Any:
    """Whose grants a page is written under: the person who uploaded it,
    or who registered the feed (a token acts as its creator likewise)."""
    if batch.uploaded_by_id is not None:
        return batch.uploaded_by
    run = batch.feed_run
    return run.source.created_by if run is not None else None


class _Page:
    """The rows of one page and what writing them needs, decided while
    reading (so refusals are row errors in the batch's report)."""

    def __init__(self, batch: Batch, body: bytes) -> None:
        from phr.roles import has_mfa, organizations_for

        self.batch = batch
        self.user = _acting_user(batch)
        self.clinic: Organization = batch.organization
        self.base = _default_base(batch)
        staff = self.user is not None and has_mfa(self.user)
        self.may_register = staff and any(
            c.pk == self.clinic.pk for c in organizations_for(self.user, Role.CLINIC_STAFF)
        )
        self._decisions: dict[tuple[uuid.UUID, str], bool] = {}
        self._known: dict[uuid.UUID, Decision] = {}
        self.rows: list[Row] = []
        self.registered: set[uuid.UUID] = set()
        # The server's patients (the id their own id derives) that stand
        # for persons known here: derived id → her id.
        self.resolved: dict[uuid.UUID, uuid.UUID] = {}
        entries = _entries(body)
        prepared = []
        for number, (full_url, resource) in enumerate(entries, start=1):
            row = Row(line=number)
            self.rows.append(row)
            item = self._check(row, full_url, resource)
            if item is not None:
                prepared.append((row, *item))
        # Before references are rewritten: which patients are known here.
        links = self._resolve_patients(prepared)
        for _row, resource, source, _rid in prepared:
            self._rewrite(resource, source.system)
        # Patients first: their records follow them.
        for row, resource, source, rid in sorted(
            prepared, key=lambda p: p[1]["resourceType"] != "Patient"
        ):
            self._authorise(row, resource, source, rid, links.get(rid))

    def _knowable(self, patient_id: uuid.UUID) -> Decision | None:
        """The policy point's yes to this clinic knowing her, or None."""
        from sharing.access import may_know

        if patient_id not in self._known:
            self._known[patient_id] = (
                may_know(self.user, patient_id, clinic_id=self.clinic.pk)
                if self.user is not None
                else Decision(False, "default_deny", "")
            )
        decision = self._known[patient_id]
        return decision if decision else None

    def _resolve_patients(
        self, prepared: list[tuple[Row, dict[str, Any], store.Source, uuid.UUID]]
    ) -> dict[uuid.UUID, _Record]:
        """Which of the server's patients (on this page, or referred to)
        are persons known here, and the links the page's Patient entries
        make. A server patient registered here under its own id stays
        that; else an alias from an earlier link (while the clinic may
        still know her); else, for a Patient entry, the one person its
        identifiers name whom the clinic may know. Fills self.resolved;
        returns the links by the entry's derived id."""
        referred: set[uuid.UUID] = set()
        for _row, resource, source, rid in prepared:
            if resource["resourceType"] == "Patient":
                referred.add(rid)
            for reference in self._patient_references(resource, source.system):
                referred.add(reference)
        if not referred:
            return {}
        registered = set(Patient.objects.filter(pk__in=referred).values_list("pk", flat=True))
        for alias, patient_id in matching.aliases_for(
            self.clinic, [p for p in referred if p not in registered]
        ).items():
            if self._knowable(patient_id) is not None:
                self.resolved[alias] = patient_id
        links: dict[uuid.UUID, _Record] = {}
        for _row, resource, source, rid in prepared:
            if resource["resourceType"] != "Patient" or rid in registered:
                continue
            record = _Record(resource, source, rid, alias=rid)
            if rid in self.resolved:
                record.link = self._knowable(self.resolved[rid])
                record.id = self.resolved[rid]
                links[rid] = record
                continue
            tokens = matching.identifier_tokens(resource)
            known = (
                matching.patients_known_to(self.user, clinic=self.clinic, tokens=tokens)
                if self.user is not None
                else []
            )
            if len(known) == 1:
                record.id, record.link = known[0]
                self.resolved[rid] = record.id
            elif known:
                record.review = [patient_id for patient_id, _ in known]
                record.review_tokens = tokens
            links[rid] = record
        return links

    def _patient_references(self, resource: dict[str, Any], base: str) -> Iterator[uuid.UUID]:
        """The derived ids of the server's Patient references in a resource."""
        for _node, kind, reference in _server_references(resource, base):
            if kind == "Patient":
                yield store.source_resource_id("Patient", store.Source(base, reference))

    def _check(
        self, row: Row, full_url: str | None, resource: Any
    ) -> tuple[dict[str, Any], store.Source, uuid.UUID] | None:
        if not isinstance(resource, dict):
            row.error(
                "resource", "resource", "リソースがありません。", "The entry has no resource."
            )
            return None
        kind = resource.get("resourceType")
        if kind == "OperationOutcome":
            return None  # a search's warning, not a record
        if kind not in BUNDLE_TYPES:
            row.error(
                "resourceType",
                "type",
                f"{kind} は取り込めない種類です。",
                f"{kind!r} is not a type clinics send ({', '.join(sorted(BUNDLE_TYPES))}).",
            )
            return None
        try:
            validate_resource(resource)
        except FhirValidationError as error:
            for path, reason in error.issues[:5]:
                row.error(path, "fhir", f"FHIRとして正しくありません: {reason}", reason)
            return None
        for path, reason in check_codes(resource):
            row.error(path, "code", f"コードが正しくありません: {reason}", reason)
        if not row.ok:
            return None
        base = self.base
        remote = resource.get("id")
        absolute = _ABSOLUTE.match(full_url or "")
        if absolute is not None:
            base, remote = absolute.group(1), remote or absolute.group(3)
        if isinstance(remote, str) and remote:
            source = store.Source(base, f"{kind}/{remote}")
        else:
            identifier = next(
                (
                    i
                    for i in resource.get("identifier") or ()
                    if isinstance(i, dict) and i.get("system") and i.get("value")
                ),
                None,
            )
            if identifier is None:
                row.error(
                    "id",
                    "id",
                    "id も identifier もありません。",
                    "The entry has no id or identifier.",
                )
                return None
            source = store.Source(str(identifier["system"]), str(identifier["value"]))
        return resource, source, store.source_resource_id(kind, source)

    def _rewrite(self, resource: dict[str, Any], base: str) -> None:
        """The server's references (relative, or absolute under its base)
        to our ids for the same source identifiers."""
        for node, kind, reference in _server_references(resource, base):
            if kind in indexing.SUPPORTED_TYPES:
                ours = store.source_resource_id(kind, store.Source(base, reference))
                ours = self.resolved.get(ours, ours)  # a patient known here
                node["reference"] = f"{kind}/{ours}"

    def _allowed(self, patient_id: uuid.UUID, category: str) -> bool:
        from sharing.access import may_write

        if patient_id in self.registered:
            return True
        key = (patient_id, category)
        if key not in self._decisions:
            decision = may_write(self.user, patient_id, category=category) if self.user else None
            self._decisions[key] = bool(decision) and decision.organization_id in (
                None,
                self.clinic.pk,
            )
        return self._decisions[key]

    def _authorise(
        self,
        row: Row,
        resource: dict[str, Any],
        source: store.Source,
        rid: uuid.UUID,
        link: _Record | None = None,
    ) -> None:
        kind = resource["resourceType"]
        fields = None
        if kind == "Patient":
            if link is not None and link.link is not None:
                # Linked to a person the policy point lets the clinic know
                # (may_know): the link adds identifiers only.
                row.record = link
                return
            exists = Patient.objects.filter(pk=rid).exists()
            if not exists and self.may_register:
                self.registered.add(rid)
                row.record = _Record(resource, source, rid, new_patient=True)
                if link is not None:
                    row.record.review = link.review
                    row.record.review_tokens = link.review_tokens
                return
            patients, category = [rid], ""
        else:
            fields = indexing.index(resource, resource_id=rid)
            patients, category = fields.compartments, fields.category
            if not patients:
                element = indexing.COMPARTMENT_PATHS[kind][0]
                row.error(element, "patient", "患者の参照がありません。", "No Patient reference.")
                return
        for patient_id in patients:
            if not self._allowed(patient_id, category):
                row.error(
                    "subject" if kind != "Patient" else "id",
                    "not_found",
                    "この患者は見つかりません。",
                    "This patient is not known.",
                )
                return
        row.record = _Record(resource, source, rid, fields)


def read(batch: Batch, raw: IO[bytes], skip: int) -> tuple[Iterator[Row], str]:
    page = _Page(batch, raw.read())
    return iter(page.rows[skip:]), "utf-8"


def plan(batch: Batch, rows: list[Row], state: dict[str, Any]) -> dict[str, int]:
    """What writing would do, for the upload screens (feeds write at once)."""
    ids = [row.record.id for row in rows if row.record is not None]
    existing = set(Resource.objects.filter(id__in=ids).values_list("id", flat=True))
    new = sum(1 for rid in ids if rid not in existing)
    return {
        "created": new,
        "updated": len(ids) - new,
        "new_patients": sum(1 for row in rows if row.record is not None and row.record.new_patient),
    }


def apply(batch: Batch, rows: list[Row], provenance: Provenance) -> dict[str, int]:
    """Write the page's good rows (in the feed's page transaction): new
    patients with their identity rows, the rest in one store call."""
    from phr.fhir_bundle import _patient_kind
    from phr.services import patient_create

    records: list[_Record] = [row.record for row in rows if row.record is not None]
    new_patients = linked = linked_unchanged = 0
    staged = []
    user = _acting_user(batch)
    for record in sorted(records, key=lambda r: r.resource["resourceType"] != "Patient"):
        content = {k: v for k, v in record.resource.items() if k != "id"}
        if record.link is not None:
            assert record.alias is not None
            matching.alias_record(
                clinic=batch.organization,
                alias=record.alias,
                patient_id=record.id,
                source=record.source,
            )
            changed = matching.patient_link(
                patient_id=record.id,
                identifiers=matching.identifiers_of(content),
                user=user,
                decision=record.link,
                provenance=provenance,
                source=provenance.source or f"batch:{batch.pk}",
                action="feed.patient_link",
            )
            if changed:
                linked += 1
            else:
                linked_unchanged += 1
            continue
        if record.new_patient and not Patient.objects.filter(pk=record.id).exists():
            patient_create(
                kind=_patient_kind(content),
                resource=content,
                provenance=provenance,
                patient_id=record.id,
            )
            if record.review:
                matching.review_note(
                    clinic=batch.organization,
                    registered_id=record.id,
                    candidates=record.review,
                    tokens=record.review_tokens,
                    source=provenance.source or f"batch:{batch.pk}",
                )
            new_patients += 1
            continue
        staged.append(
            store.stage(content, source=record.source, resource_id=record.id, fields=record.fields)
        )
    result = store.write_staged(staged, provenance=provenance, copy=len(staged) > 20)
    return {
        "created": len(result.created) + new_patients,
        "updated": len(result.updated) + linked,
        "unchanged": len(result.unchanged) + linked_unchanged,
        "new_patients": new_patients,
    }


def _instant_of(entry_resource: Any) -> str:
    meta = entry_resource.get("meta") if isinstance(entry_resource, dict) else None
    value = meta.get("lastUpdated") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else ""


def next_cursor(body: bytes, current: str) -> str:
    """The newest meta.lastUpdated of the page's entries (compared as
    instants); the current cursor for a page without any."""
    from phr.feeds import _instant

    newest, newest_at = current, _instant(current) if current else None
    try:
        entries = _entries(body)
    except FileError:
        return current
    for _, resource in entries:
        value = _instant_of(resource)
        moment = _instant(value) if value else None
        if moment is not None and (newest_at is None or moment > newest_at):
            newest, newest_at = value, moment
    return newest


CLINIC_FHIR = PipelineFormat(
    key=FORMAT_KEY,
    label_ja="クリニックのFHIRサーバー（検索Bundle）",
    label_en="Clinic FHIR server (search Bundles)",
    read=read,
    plan=plan,
    apply=apply,
    organization_kinds=(Organization.Kind.CLINIC,),
)


def register() -> None:
    format_register(CLINIC_FHIR)
    feeds.CURSOR_RULES[FORMAT_KEY] = feeds.CursorRule(prefix="gt", next_cursor=next_cursor)
