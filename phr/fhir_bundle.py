"""POST /fhir: transaction and batch Bundles from clinic systems (and
families), for Patient, Encounter, Observation, Condition,
AllergyIntolerance and MedicationStatement.

What happens to a Bundle (docs/decisions/0011-fhir-bundles.md, "FHIR
transaction and batch"):

1. The body is read with a size cap (FHIR_MAX_BUNDLE_MB: 413 beyond it)
   and parsed; only type transaction or batch is accepted.
2. Every entry is checked on its own: request method and URL (POST Type,
   PUT Type/id, PUT Type?identifier=system|value), the resource against
   fhir.resources' R4B model (phr.fhir.validate_resource), and the codes
   we rely on (CODE_RULES: an Observation's code needs a system, statuses
   come from their value sets). fhir.resources checks structure only.
3. Ids: a resource from outside is identified by its identifier
   (store.Source(system, value) → a uuid5 id), so a resend lands on the
   same row and never duplicates; `ifNoneExist: identifier=system|value`
   returns the record the client may see with that identifier (200)
   instead of creating one. PUT Type/id updates a record the client sees.
4. References between entries (a fullUrl such as urn:uuid:…, or an
   absolute URL whose relative references resolve against it) are
   rewritten to the ids assigned. A urn:uuid naming no entry is an error;
   a reference to a stored type that the client cannot read looks like a
   missing record (404).
5. Authorisation, entry by entry, by the policy point: families write for
   their own compartment and their children's (decide, purpose
   personal, as the single-resource API); clinic staff under
   sharing.access.may_write (an active care consent covering the
   record's data category, or a patient their clinic registered). A
   denied entry reads like a missing patient: 404. Clinic staff may
   register a new Patient (an adult: a pregnant patient), which their
   clinic then writes for — unless her identifiers name exactly one
   person the clinic may know (a care consent, or its own registration):
   then the entry is linked to her (clinics/matching.py) and the Bundle's
   references to it land in her record.
6. A transaction is all or nothing in one database transaction: any
   failing entry → 400 (or the entries' common status) with one
   OperationOutcome naming every failing entry ("Bundle.entry[3].resource
   .code"), and nothing written. A batch writes each good entry on its
   own and reports each failure in its entry's response.outcome.
7. One Provenance per Bundle (the clinic, the token's user and
   organization), one audit row per patient written, as the other write
   views do.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import orjson
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.response import Response

from clinics import matching
from phr import fhir_search, indexing, store
from phr.fhir import FhirValidationError, fhir_instant, operation_outcome, validate_resource
from phr.fhir_api import (
    FHIR_MEDIA_TYPE,
    FhirError,
    FhirView,
    _keep_server_held,
    audit_rows,
    etag,
    fhir_base,
)
from phr.models import Organization, Patient, Provenance, Resource, Role
from phr.services import patient_create, provenance_create
from sharing.access import (
    Decision,
    Purpose,
    address_hidden_for,
    audit_denied,
    decide,
    may_write,
    staff_organization_ids,
    visible_records,
)

# The resource types a Bundle may carry (the clinics issue, part 5).
BUNDLE_TYPES = frozenset(
    {
        "Patient",
        "Encounter",
        "Observation",
        "Condition",
        "AllergyIntolerance",
        "MedicationStatement",
    }
)
BUNDLE_KINDS = ("transaction", "batch")
# What the response and the audit rows need of a written row.
RESPONSE_COLUMNS = ("id", "resource_type", "version", "last_updated", "compartments", "category")
# The elements naming the patient a record is about (decided with the write).
COMPARTMENT_ELEMENTS = {
    kind: frozenset(paths) for kind, paths in indexing.COMPARTMENT_PATHS.items()
}
PROVENANCE_SOURCE = "fhir-bundle"
CONCURRENT = "Another request wrote the same record at the same time; send the Bundle again"
# Above this many records a write goes through the store's COPY path.
COPY_THRESHOLD = 20
_JSON_TYPES = frozenset({FHIR_MEDIA_TYPE, "application/json", "application/json+fhir"})
_TYPE_ID = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})$")
_TYPE_QUERY = re.compile(r"^([A-Z][A-Za-z]+)\?(.*)$")
_ABSOLUTE = re.compile(r"^(https?://.+/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})$")
_IF_MATCH = re.compile(r'^(?:W/)?"(\d+)"$')

# --------------------------------------------------------------------------
# Codes we rely on (fhir.resources checks structure, not value sets)
# --------------------------------------------------------------------------

_OBSERVATION_STATUS = frozenset(
    {
        "registered",
        "preliminary",
        "final",
        "amended",
        "corrected",
        "cancelled",
        "entered-in-error",
        "unknown",
    }
)
_ENCOUNTER_STATUS = frozenset(
    {
        "planned",
        "arrived",
        "triaged",
        "in-progress",
        "onleave",
        "finished",
        "cancelled",
        "entered-in-error",
        "unknown",
    }
)
_MEDICATION_STATEMENT_STATUS = frozenset(
    {
        "active",
        "completed",
        "entered-in-error",
        "intended",
        "stopped",
        "on-hold",
        "unknown",
        "not-taken",
    }
)
_CONDITION_CLINICAL = frozenset(
    {"active", "recurrence", "relapse", "inactive", "remission", "resolved"}
)
_CONDITION_VERIFICATION = frozenset(
    {"unconfirmed", "provisional", "differential", "confirmed", "refuted", "entered-in-error"}
)
_ALLERGY_CLINICAL = frozenset({"active", "inactive", "resolved"})
_ALLERGY_VERIFICATION = frozenset({"unconfirmed", "confirmed", "refuted", "entered-in-error"})
_GENDERS = frozenset({"male", "female", "other", "unknown"})
_TERMINOLOGY = "http://terminology.hl7.org/CodeSystem/"

Issue = tuple[str, str]


def _code_in(value: Any, allowed: frozenset[str], path: str, what: str) -> list[Issue]:
    if value is None or value in allowed:
        return []
    return [(path, f"{value!r} is not a valid {what} ({', '.join(sorted(allowed))})")]


def _coded(concept: Any, path: str, *, required: bool) -> list[Issue]:
    """A CodeableConcept we index and categorise by: at least one coding
    with both a system and a code."""
    if concept is None:
        return [(path, "A code with a system is required")] if required else []
    codings = (concept.get("coding") or []) if isinstance(concept, dict) else []
    if any(isinstance(c, dict) and c.get("system") and c.get("code") for c in codings):
        return []
    if not codings:
        return [(path, "A coding with a system and a code is required (text alone is not)")]
    return [(f"{path}.coding", "At least one coding needs both a system and a code")]


def _status_coding(
    concept: Any, path: str, system: str, allowed: frozenset[str], what: str
) -> list[Issue]:
    """A status CodeableConcept bound to an HL7 code system (required
    binding): its codings of that system must use the value set's codes."""
    if not isinstance(concept, dict):
        return []
    issues: list[Issue] = []
    for n, coding in enumerate(concept.get("coding") or ()):
        if isinstance(coding, dict) and coding.get("system") == system:
            issues += _code_in(coding.get("code"), allowed, f"{path}.coding[{n}].code", what)
    return issues


def check_codes(resource: dict[str, Any]) -> list[Issue]:
    """The codes our index, categories and screens rely on, as (element
    path, reason) with paths from the resource type ("Observation.code")."""
    kind = resource["resourceType"]
    issues: list[Issue] = []
    if kind == "Observation":
        issues += _code_in(
            resource.get("status"), _OBSERVATION_STATUS, "Observation.status", "status"
        )
        issues += _coded(resource.get("code"), "Observation.code", required=True)
    elif kind == "Encounter":
        issues += _code_in(resource.get("status"), _ENCOUNTER_STATUS, "Encounter.status", "status")
        klass = resource.get("class")
        if isinstance(klass, dict) and not (klass.get("system") and klass.get("code")):
            issues.append(("Encounter.class", "The class needs both a system and a code"))
    elif kind == "MedicationStatement":
        issues += _code_in(
            resource.get("status"),
            _MEDICATION_STATEMENT_STATUS,
            "MedicationStatement.status",
            "status",
        )
        if "medicationCodeableConcept" in resource:
            issues += _coded(
                resource["medicationCodeableConcept"],
                "MedicationStatement.medicationCodeableConcept",
                required=True,
            )
    elif kind == "Condition":
        issues += _coded(resource.get("code"), "Condition.code", required=False)
        issues += _status_coding(
            resource.get("clinicalStatus"),
            "Condition.clinicalStatus",
            _TERMINOLOGY + "condition-clinical",
            _CONDITION_CLINICAL,
            "clinical status",
        )
        issues += _status_coding(
            resource.get("verificationStatus"),
            "Condition.verificationStatus",
            _TERMINOLOGY + "condition-ver-status",
            _CONDITION_VERIFICATION,
            "verification status",
        )
    elif kind == "AllergyIntolerance":
        issues += _coded(resource.get("code"), "AllergyIntolerance.code", required=False)
        issues += _status_coding(
            resource.get("clinicalStatus"),
            "AllergyIntolerance.clinicalStatus",
            _TERMINOLOGY + "allergyintolerance-clinical",
            _ALLERGY_CLINICAL,
            "clinical status",
        )
        issues += _status_coding(
            resource.get("verificationStatus"),
            "AllergyIntolerance.verificationStatus",
            _TERMINOLOGY + "allergyintolerance-verification",
            _ALLERGY_VERIFICATION,
            "verification status",
        )
    elif kind == "Patient":
        issues += _code_in(resource.get("gender"), _GENDERS, "Patient.gender", "gender")
    return issues


# --------------------------------------------------------------------------
# Entries
# --------------------------------------------------------------------------


class EntryError(Exception):
    """One entry fails: its HTTP status, issue code and (path, reason)
    issues with paths relative to the entry ("resource.code")."""

    def __init__(self, status: int, issues: list[Issue], *, code: str = "invalid") -> None:
        super().__init__("; ".join(reason for _, reason in issues))
        self.status = status
        self.code = code
        self.issues = issues


def _denied(what: str) -> EntryError:
    # The same words for a missing record and a withheld one (fhir_api.not_found).
    return EntryError(404, [("", f"{what} is not known")], code="not-found")


@dataclass(frozen=True)
class Written:
    """What the response and the audit rows need of a row written
    (RESPONSE_COLUMNS, in order)."""

    id: uuid.UUID
    resource_type: str
    version: int
    last_updated: datetime
    compartments: list[uuid.UUID]
    category: str


@dataclass
class Entry:
    index: int
    method: str
    url: str
    resource: dict[str, Any]
    resource_type: str
    full_url: str | None = None
    if_none_exist: str | None = None
    if_match: int | None = None
    # Decided while preparing:
    id: uuid.UUID | None = None
    source: store.Source | None = None
    existing: Resource | None = None  # the current row (PUT, or a source id that exists)
    matched: Resource | None = None  # conditional create: the record found instead
    new_patient: bool = False
    # A clinic's Patient matched by identifier to a person it may know: the
    # policy point's decision (clinics/matching.py).
    link: Decision | None = None
    # A new registration whose identifiers named several such persons: them,
    # and the identifiers, for the review note.
    review: list[uuid.UUID] = field(default_factory=list)
    review_tokens: list[str] = field(default_factory=list)
    compartments: list[uuid.UUID] = field(default_factory=list)
    category: str = ""
    fields: indexing.IndexFields | None = None  # the search index, computed once
    # References to check against what the client may read: (reference, path).
    other_references: list[tuple[str, str]] = field(default_factory=list)
    error: EntryError | None = None
    # Filled when written:
    status: str = ""
    row: Resource | Written | None = None

    def path(self, relative: str = "") -> str:
        base = f"Bundle.entry[{self.index}]"
        return f"{base}.{relative}" if relative else base


def _resource_path(entry_type: str, path: str) -> str:
    """ "Observation.code" (validation's path) → "resource.code"."""
    if path == entry_type:
        return "resource"
    if path.startswith(entry_type + ".") or path.startswith(entry_type + "["):
        return "resource" + path[len(entry_type) :]
    return f"resource.{path}" if path else "resource"


def _parse_entry(index: int, raw: Any) -> Entry:
    """An entry's request and resource, checked for shape, validity and
    the codes we rely on (nothing looked up yet)."""
    if not isinstance(raw, dict):
        raise EntryError(400, [("", "An entry must be a JSON object")])
    request = raw.get("request")
    if not isinstance(request, dict):
        raise EntryError(400, [("request", "Each entry needs a request (method and url)")])
    method = request.get("method")
    url = request.get("url")
    if method not in ("POST", "PUT"):
        raise EntryError(
            405 if isinstance(method, str) else 400,
            [("request.method", f"Only POST and PUT entries are supported, not {method!r}")],
            code="not-supported",
        )
    if not isinstance(url, str) or not url:
        raise EntryError(400, [("request.url", "request.url is required")])
    resource = raw.get("resource")
    if not isinstance(resource, dict):
        raise EntryError(400, [("resource", "A POST or PUT entry needs a resource")])
    resource_type = resource.get("resourceType")
    if resource_type not in BUNDLE_TYPES:
        raise EntryError(
            400,
            [
                (
                    "resource.resourceType",
                    f"Resource type {resource_type!r} is not accepted in Bundles; accepted: "
                    + ", ".join(sorted(BUNDLE_TYPES)),
                )
            ],
            code="not-supported",
        )
    url_type = url.split("?", 1)[0].split("/", 1)[0]
    if url_type != resource_type:
        raise EntryError(
            400, [("request.url", f"request.url {url!r} does not name a {resource_type}")]
        )
    full_url = raw.get("fullUrl")
    if full_url is not None and not isinstance(full_url, str):
        raise EntryError(400, [("fullUrl", "fullUrl must be a string")])
    if_none_exist = request.get("ifNoneExist")
    if if_none_exist is not None and (method != "POST" or not isinstance(if_none_exist, str)):
        raise EntryError(400, [("request.ifNoneExist", "ifNoneExist belongs to a POST entry")])
    if_match = None
    if request.get("ifMatch") is not None:
        match = _IF_MATCH.match(str(request["ifMatch"]).strip())
        if match is None:
            raise EntryError(400, [("request.ifMatch", 'ifMatch must be a version ETag: W/"3"')])
        if_match = int(match.group(1))
    try:
        validate_resource(resource)
    except FhirValidationError as exc:
        raise EntryError(
            400, [(_resource_path(resource_type, path), reason) for path, reason in exc.issues]
        ) from None
    issues = check_codes(resource)
    if issues:
        raise EntryError(
            400,
            [(_resource_path(resource_type, path), reason) for path, reason in issues],
            code="code-invalid",
        )
    return Entry(
        index=index,
        method=method,
        url=url,
        resource=resource,
        resource_type=resource_type,
        full_url=full_url,
        if_none_exist=if_none_exist,
        if_match=if_match,
    )


def _identifier_query(query: str, where: str) -> store.Source:
    """ "identifier=system|value" (the only search these conditions take)."""
    name, _, value = query.partition("=")
    system, bar, code = value.partition("|")
    if name != "identifier" or not bar or not system or not code or "&" in query:
        raise EntryError(
            400,
            [(where, "Only identifier=system|value is supported here")],
            code="not-supported",
        )
    return store.Source(system, code)


def _first_identifier(resource: dict[str, Any]) -> store.Source | None:
    for identifier in resource.get("identifier") or ():
        if isinstance(identifier, dict):
            system, value = identifier.get("system"), identifier.get("value")
            if isinstance(system, str) and isinstance(value, str) and system and value:
                return store.Source(system, value)
    return None


def _references(node: Any, path: str) -> Iterator[tuple[dict[str, Any], str]]:
    """Every Reference object (a dict with a string `reference`) and its path."""
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield node, path
        for key, value in node.items():
            if isinstance(value, dict | list):
                yield from _references(value, f"{path}.{key}")
    elif isinstance(node, list):
        for n, value in enumerate(node):
            yield from _references(value, f"{path}[{n}]")


def _patient_kind(resource: dict[str, Any]) -> str:
    """A Patient a clinic registers is an adult (a pregnant patient) unless
    her birth date makes her a child (under 12: a newborn, a sibling)."""
    born = resource.get("birthDate")
    if isinstance(born, str) and len(born) >= 4:
        try:
            year = int(born[:4])
        except ValueError:
            return Patient.Kind.ADULT
        if timezone.localdate().year - year < 12:
            return Patient.Kind.CHILD
    return Patient.Kind.ADULT


# --------------------------------------------------------------------------
# Processing one Bundle
# --------------------------------------------------------------------------


class BundleRun:
    """One Bundle for one user: prepares every entry (ids, references,
    authorisation), then writes — all at once (transaction) or entry by
    entry (batch)."""

    def __init__(self, request: Request, bundle: dict[str, Any]) -> None:
        self.request = request
        self.user = request.user
        self.kind: str = bundle["type"]
        self.base = fhir_base(request)
        token = request.auth if hasattr(request.auth, "organization_id") else None
        self.clinic = self._writing_clinic(token)
        self.provenance: Provenance | None = None
        self.entries: list[Entry] = []
        self.failed: list[Entry] = []
        self._decisions: dict[tuple[uuid.UUID, str], Decision] = {}
        self.denied: list[tuple[uuid.UUID, str]] = []
        # Patients this Bundle registers, and every "Type/id" it writes.
        self.registered: set[uuid.UUID] = set()
        self.bundle_ids: set[str] = set()
        raw_entries = bundle.get("entry") or []
        for index, raw in enumerate(raw_entries):
            try:
                self.entries.append(_parse_entry(index, raw))
            except EntryError as error:
                entry = Entry(index=index, method="", url="", resource={}, resource_type="")
                entry.error = error
                self.entries.append(entry)

    # ---- who writes ---------------------------------------------------------

    def _writing_clinic(self, token: Any) -> Organization | None:
        """The clinic this client writes for: the token's clinic, or (a
        session) the user's only clinic. Staff without MFA write for none."""
        clinics = staff_organization_ids(self.user, Role.CLINIC_STAFF)
        if token is not None and token.organization_id is not None:
            clinics = [c for c in clinics if c == token.organization_id]
        return Organization.objects.get(pk=clinics[0]) if len(clinics) == 1 else None

    def decision(self, patient_id: uuid.UUID, category: str) -> Decision:
        """May this client write `category` records of this patient? The
        family as in the single-resource API (decide, purpose personal);
        clinic staff as sharing.access.may_write says."""
        key = (patient_id, category)
        found = self._decisions.get(key)
        if found is None:
            found = decide(self.user, patient_id, purpose=Purpose.PERSONAL)
            if not found and self.clinic is not None:
                found = may_write(self.user, patient_id, category=category)
                if found and found.organization_id not in (None, self.clinic.pk):
                    found = Decision(False, "other_clinic", "Another clinic's patient")
            self._decisions[key] = found
        return found

    # ---- preparing ----------------------------------------------------------

    def prepare(self) -> None:
        good = [e for e in self.entries if e.error is None]
        for entry in good:
            self._guard(entry, self._assign_id)
        # A conditional create that finds its record refers to that record
        # (whatever its id: a patient registered on the portal has a
        # random one), before references to its fullUrl are rewritten.
        for entry in good:
            self._guard(entry, self._match)
        # A clinic's Patient lands on its own registration, or on the one
        # person its identifiers name whom the clinic may know, before
        # references to its fullUrl are rewritten.
        for entry in good:
            self._guard(entry, self._place_patient)
        full_urls = self._full_urls(good)
        for entry in good:
            self._guard(entry, lambda e: self._rewrite_references(e, full_urls))
        self._load_existing(good)
        self.bundle_ids = {f"{e.resource_type}/{e.id}" for e in good if e.error is None}
        # Patients first: the records of a patient registered by this very
        # Bundle are written for her (her entry was authorised).
        for entry in sorted(good, key=lambda e: e.resource_type != "Patient"):
            self._guard(entry, self._authorise)

    def _guard(self, entry: Entry, step: Callable[[Entry], None]) -> None:
        if entry.error is not None:
            return
        try:
            step(entry)
        except EntryError as error:
            entry.error = error

    def _assign_id(self, entry: Entry) -> None:
        """The id an entry writes to: from its URL (PUT Type/id), from the
        identifier named by a condition, or from its first identifier (so
        a resend lands on the same row); else a new random id."""
        if entry.method == "PUT":
            query = _TYPE_QUERY.match(entry.url)
            if query is not None:
                entry.source = _identifier_query(query.group(2), "request.url")
                entry.id = store.source_resource_id(entry.resource_type, entry.source)
                return
            match = _TYPE_ID.match(entry.url)
            if match is None:
                raise EntryError(400, [("request.url", "A PUT names Type/id or Type?identifier=…")])
            try:
                entry.id = uuid.UUID(match.group(2))
            except ValueError:
                raise _denied(entry.url) from None
            body_id = entry.resource.get("id")
            if body_id is not None and str(body_id) != str(entry.id):
                raise EntryError(400, [("resource.id", "The id must equal the id in request.url")])
            return
        if entry.url != entry.resource_type:
            raise EntryError(400, [("request.url", "A POST entry's url is the resource type")])
        if entry.if_none_exist is not None:
            entry.source = _identifier_query(entry.if_none_exist, "request.ifNoneExist")
        else:
            entry.source = _first_identifier(entry.resource)
        if entry.source is not None:
            entry.id = store.source_resource_id(entry.resource_type, entry.source)
        else:
            entry.id = uuid.uuid4()

    def _place_patient(self, entry: Entry) -> None:
        """Where a clinic's Patient (POST, or PUT Patient?identifier=…)
        lands (0011, "Matching a clinic's Patient"):

        1. a Patient this clinic registered from the same identifier (its
           clinic-scoped id; or the plain source id earlier registrations
           used) that it may still update: updated, as before;
        2. else the one person carrying one of its identifiers whom the
           clinic may know (sharing.access.may_know): linked to her;
        3. else a new registration at the clinic-scoped id — also when
           several persons matched (noted for review, nothing guessed).

        Only the clinic's own registrations and the persons it may know
        take part, so a clinic without a right to her gets what an unknown
        identifier gets."""
        if (
            entry.resource_type != "Patient"
            or self.clinic is None
            or entry.matched is not None
            or entry.source is None
        ):
            return
        if entry.method == "PUT" and _TYPE_QUERY.match(entry.url) is None:
            return  # PUT Patient/<id> names the record itself
        assert entry.id is not None
        own = matching.clinic_patient_id(self.clinic.pk, entry.source)
        for registered in dict.fromkeys((own, entry.id)):
            if self._may_update_patient(registered):
                entry.id = registered
                return
        tokens = matching.identifier_tokens(entry.resource, source=entry.source)
        known = matching.patients_known_to(self.user, clinic=self.clinic, tokens=tokens)
        if len(known) == 1:
            entry.id, entry.link = known[0]
            return
        entry.id = own
        if known:
            entry.review = [patient_id for patient_id, _ in known]
            entry.review_tokens = tokens

    def _may_update_patient(self, patient_id: uuid.UUID) -> bool:
        """Is there a Patient at this id that this client may read and
        update (its own registration)?"""
        row = Resource.objects.filter(pk=patient_id, resource_type="Patient").defer("content")
        found = row.first()
        return (
            found is not None
            and self._visible(found) is not None
            and bool(self.decision(patient_id, ""))
        )

    def _full_urls(self, entries: list[Entry]) -> dict[str, str]:
        """fullUrl → "Type/id" for the references of a transaction (a
        batch's entries do not depend on each other, as FHIR says)."""
        if self.kind != "transaction":
            return {}
        out: dict[str, str] = {}
        for entry in entries:
            if entry.full_url and entry.error is None:
                out[entry.full_url] = f"{entry.resource_type}/{entry.id}"
        return out

    def _rewrite_references(self, entry: Entry, full_urls: dict[str, str]) -> None:
        base = None
        if entry.full_url:
            absolute = _ABSOLUTE.match(entry.full_url)
            base = absolute.group(1) if absolute else None
        issues: list[Issue] = []
        compartment = COMPARTMENT_ELEMENTS.get(entry.resource_type, frozenset())
        for node, path in _references(entry.resource, "resource"):
            reference = node["reference"]
            target = full_urls.get(reference) if full_urls else None
            if target is None and base is not None and _TYPE_ID.match(reference):
                target = full_urls.get(base + reference)
            if target is not None:
                node["reference"] = target
            elif reference.startswith(("urn:uuid:", "urn:oid:")):
                issues.append((f"{path}.reference", f"{reference} names no entry of this Bundle"))
                continue
            # The patient a record is about is decided with the write;
            # other references are checked against what the client reads.
            if path.split(".", 2)[1].split("[", 1)[0] not in compartment:
                entry.other_references.append((node["reference"], f"{path}.reference"))
        if issues:
            raise EntryError(400, issues)

    def _load_existing(self, entries: list[Entry]) -> None:
        """The current rows of the ids entries write to, read once; each is
        then checked against what the client may see."""
        ids = [e.id for e in entries if e.error is None and e.id is not None]
        # The content is read only when needed (a Patient's PUT keeps its
        # server-held elements).
        found = Resource.objects.filter(id__in=ids).defer("content") if ids else []
        rows = {row.id: row for row in found}
        for entry in entries:
            if entry.error is None and entry.id in rows:
                entry.existing = rows[entry.id]

    def _visible(self, row: Resource) -> Resource | None:
        return fhir_search.resource_for(self.user, row.resource_type, str(row.id))

    def _authorise(self, entry: Entry) -> None:
        assert entry.id is not None
        if entry.matched is not None:
            return  # the client may read it: found among what it may read
        if entry.link is not None:
            # Matched by identifier to a person the policy point lets the
            # clinic know (may_know): the link adds identifiers only.
            entry.compartments = [entry.id]
            if entry.existing is None:
                raise _denied(f"Patient/{entry.id}")  # her resource is gone meanwhile
            if entry.if_match is not None and entry.if_match != entry.existing.version:
                raise EntryError(
                    412,
                    [("request.ifMatch", f"Version {entry.if_match} is not the current version")],
                    code="conflict",
                )
            return
        if entry.existing is not None:
            if (
                entry.existing.resource_type != entry.resource_type
                or self._visible(entry.existing) is None
            ):
                raise _denied(f"{entry.resource_type}/{entry.id}")
            if entry.if_match is not None and entry.if_match != entry.existing.version:
                raise EntryError(
                    412,
                    [("request.ifMatch", f"Version {entry.if_match} is not the current version")],
                    code="conflict",
                )
            # Changing a record needs the right to write what it was, too.
            for patient_id in entry.existing.compartments:
                self._check_write(entry, patient_id, entry.existing.category)
        elif entry.method == "PUT" and entry.source is None:
            raise _denied(f"{entry.resource_type}/{entry.id}")  # no update-as-create
        if entry.resource_type == "Patient":
            self._authorise_patient(entry)
        else:
            fields = indexing.index(entry.resource, resource_id=entry.id)
            entry.fields = fields
            entry.compartments, entry.category = fields.compartments, fields.category
            if not entry.compartments:
                element = indexing.COMPARTMENT_PATHS[entry.resource_type][0]
                raise EntryError(
                    400,
                    [
                        (
                            f"resource.{element}",
                            "The record must reference the Patient it is about (Patient/<id>)",
                        )
                    ],
                )
            for patient_id in entry.compartments:
                self._check_write(entry, patient_id, entry.category)
        self._check_other_references(entry)

    def _authorise_patient(self, entry: Entry) -> None:
        assert entry.id is not None
        entry.compartments = [entry.id]
        if entry.existing is not None:
            self._check_write(entry, entry.id, "")
            return
        if self.clinic is None:
            # Patients are created with their identity row by registration,
            # link codes and clinics; a family does not create them here.
            raise EntryError(
                403,
                [("resource", "Only clinic staff register new patients through this API")],
                code="forbidden",
            )
        if Patient.objects.filter(pk=entry.id).exists():
            raise _denied(f"Patient/{entry.id}")  # an identity without a record: not ours
        entry.new_patient = True
        self.registered.add(entry.id)

    def _check_write(self, entry: Entry, patient_id: uuid.UUID, category: str) -> None:
        if patient_id in self.registered:
            return  # registered by this very Bundle (the entry was authorised)
        decision = self.decision(patient_id, category)
        if not decision:
            self.denied.append((patient_id, decision.rule))
            raise _denied(f"Patient/{patient_id}")

    def _check_other_references(self, entry: Entry) -> None:
        """Other references to stored types (an Observation's encounter,
        hasMember …) must name records the client may read, or an entry of
        this Bundle; references to types we do not store stay as sent."""
        for reference, path in entry.other_references:
            match = _TYPE_ID.match(reference)
            if match is None or match.group(1) not in indexing.SUPPORTED_TYPES:
                continue
            if reference in self.bundle_ids:
                continue
            if fhir_search.resource_for(self.user, match.group(1), match.group(2)) is None:
                raise EntryError(404, [(path, f"{reference} is not known")], code="not-found")

    def _match(self, entry: Entry) -> None:
        if entry.if_none_exist is None:
            return
        match = self._conditional_match(entry)
        if match is not None:
            entry.matched = match
            entry.id = match.id

    def _conditional_match(self, entry: Entry) -> Resource | None:
        """ifNoneExist: the record of this type and identifier the client
        may see, if there is one (several: 412, as FHIR says)."""
        assert entry.source is not None
        token = f"{entry.source.system}|{entry.source.value}"
        found = list(
            Resource.objects.filter(
                visible_records(self.user),
                resource_type=entry.resource_type,
                tokens__contains=[token],
            )[:2]
        )
        if len(found) > 1:
            raise EntryError(
                412,
                [("request.ifNoneExist", f"More than one {entry.resource_type} has {token}")],
                code="duplicate",
            )
        return found[0] if found else None

    # ---- writing ------------------------------------------------------------

    def provenance_for_bundle(self) -> Provenance:
        if self.provenance is None:
            self.provenance = provenance_create(
                origin=Provenance.Origin.CLINIC if self.clinic else Provenance.Origin.SELF,
                user=self.user,
                organization=self.clinic,
                source=f"{PROVENANCE_SOURCE}:{self.kind}",
            )
        return self.provenance

    def write(self, entries: list[Entry]) -> None:
        """Write these (prepared, good) entries in the caller's transaction:
        new patients with their identity rows, then the other records in
        one store call; read the rows back for the response and audit."""
        to_write = [e for e in entries if e.matched is None]
        if to_write:
            provenance = self.provenance_for_bundle()
        staged: list[store.Staged] = []
        for entry in to_write:
            assert entry.id is not None
            resource = {k: v for k, v in entry.resource.items() if k != "id"}
            if entry.link is not None:
                matching.patient_link(
                    patient_id=entry.id,
                    identifiers=matching.identifiers_of(resource),
                    user=self.user,
                    decision=entry.link,
                    provenance=provenance,
                    source=f"{PROVENANCE_SOURCE}:{self.kind}",
                    action="fhir.patient_link",
                )
                continue
            if entry.resource_type == "Patient" and entry.existing is not None:
                resource = _keep_server_held(
                    resource,
                    entry.existing.content,
                    address_hidden=address_hidden_for(self.user, entry.id),
                )
            if entry.new_patient:
                patient_create(
                    kind=_patient_kind(resource),
                    resource=resource,
                    provenance=provenance,
                    patient_id=entry.id,
                )
                if entry.review and self.clinic is not None:
                    matching.review_note(
                        clinic=self.clinic,
                        registered_id=entry.id,
                        candidates=entry.review,
                        tokens=entry.review_tokens,
                        source=f"{PROVENANCE_SOURCE}:{self.kind}",
                    )
                continue
            staged.append(
                store.stage(
                    resource, source=entry.source, resource_id=entry.id, fields=entry.fields
                )
            )
        if staged:
            store.write_staged(staged, provenance=provenance, copy=len(staged) > COPY_THRESHOLD)
        ids = [e.id for e in to_write]
        # Tuples, not model instances with deferred fields (their __init__
        # showed in profiles): the response and audit need these columns.
        found = Resource.objects.filter(id__in=ids).values_list(*RESPONSE_COLUMNS) if ids else []
        rows = {values[0]: Written(*values) for values in found}
        for entry in entries:
            if entry.matched is not None:
                entry.row, entry.status = entry.matched, "200 OK"
                continue
            assert entry.id is not None
            entry.row = rows[entry.id]
            created = entry.existing is None or entry.existing.deleted
            entry.status = "201 Created" if created else "200 OK"
        written = [e.row for e in to_write if e.row is not None]
        if written:
            audit_rows(
                self.user,
                cast("list[Resource]", written),  # what audit_rows reads, Written has
                action="fhir.write",
                detail={"interaction": self.kind, "provenance": provenance.pk},
            )

    def audit_denials(self) -> None:
        """Failed authorisations are logged (ASVS 7.2.2), after the
        transaction, which a failure rolls back."""
        for patient_id, rule in dict.fromkeys(self.denied):
            audit_denied(self.user, patient_id, action="fhir.write", rule=rule)

    # ---- the response -------------------------------------------------------

    def response_entry(self, entry: Entry) -> dict[str, Any]:
        if entry.error is not None:
            return {
                "response": {
                    "status": _status_line(entry.error.status),
                    "outcome": operation_outcome(
                        [
                            (entry.path(path) if path else entry.path(), reason)
                            for path, reason in entry.error.issues
                        ],
                        code=entry.error.code,
                    ),
                }
            }
        row = entry.row
        assert row is not None
        out: dict[str, Any] = {"fullUrl": f"{self.base}{row.resource_type}/{row.id}"}
        out["response"] = {
            "status": entry.status,
            "location": f"{row.resource_type}/{row.id}/_history/{row.version}",
            "etag": etag(row.version),
            "lastModified": fhir_instant(row.last_updated),
        }
        return out

    def response_bundle(self) -> dict[str, Any]:
        return {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "meta": {"lastUpdated": fhir_instant(timezone.now())},
            "type": f"{self.kind}-response",
            **({"entry": [self.response_entry(e) for e in self.entries]} if self.entries else {}),
        }

    def failure_outcome(self) -> tuple[int, dict[str, Any]]:
        """A transaction that failed: one OperationOutcome naming every
        failing entry; the status is the entries' if they agree, else 400."""
        failing = [e for e in self.entries if e.error is not None]
        statuses = {e.error.status for e in failing if e.error is not None}
        status = statuses.pop() if len(statuses) == 1 else 400
        issues: list[dict[str, Any]] = []
        for entry in failing:
            assert entry.error is not None
            for path, reason in entry.error.issues:
                issues.append(
                    {
                        "severity": "error",
                        "code": entry.error.code,
                        "diagnostics": reason,
                        "expression": [entry.path(path) if path else entry.path()],
                    }
                )
        return status, {"resourceType": "OperationOutcome", "issue": issues}


_REASONS = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    412: "Precondition Failed",
    500: "Internal Server Error",
}


def _status_line(status: int) -> str:
    return f"{status} {_REASONS.get(status, '')}".strip()


# --------------------------------------------------------------------------
# The view
# --------------------------------------------------------------------------


def max_bundle_bytes() -> int:
    return int(settings.FHIR_MAX_BUNDLE_MB) * 1024 * 1024


def read_bundle(request: Request) -> dict[str, Any]:
    """The body as a Bundle object, read with the size cap (413 beyond it)
    before anything is parsed."""
    media_type = (request.content_type or "").split(";", 1)[0].strip().lower()
    if media_type not in _JSON_TYPES:
        raise exceptions.UnsupportedMediaType(media_type or "(none)")
    limit = max_bundle_bytes()
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > limit:
        raise FhirError(
            413,
            f"The Bundle is larger than {settings.FHIR_MAX_BUNDLE_MB} MB",
            code="too-costly",
        )
    raw = request._request.read(limit + 1)
    if len(raw) > limit:
        raise FhirError(
            413, f"The Bundle is larger than {settings.FHIR_MAX_BUNDLE_MB} MB", code="too-costly"
        )
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise FhirError(400, "The body is not JSON", code="structure") from None
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise FhirError(400, "POST /fhir takes a Bundle", path="resourceType")
    if body.get("type") not in BUNDLE_KINDS:
        raise FhirError(
            400,
            f"Bundle.type must be transaction or batch, not {body.get('type')!r}",
            path="Bundle.type",
            code="not-supported",
        )
    entries = body.get("entry", [])
    if not isinstance(entries, list):
        raise FhirError(400, "Bundle.entry must be a list", path="Bundle.entry")
    return body


def bundle_process(request: Request, bundle: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Prepare and write a Bundle; return the HTTP status and the body."""
    run = BundleRun(request, bundle)
    if run.kind == "transaction":
        try:
            with transaction.atomic():
                run.prepare()
                if any(e.error is not None for e in run.entries):
                    raise _TransactionFailed
                run.write(run.entries)
        except _TransactionFailed:
            run.audit_denials()
            return run.failure_outcome()
        except store.StoreError as exc:
            run.audit_denials()
            return 400, operation_outcome([("Bundle", str(exc))])
        except IntegrityError:
            # The same Bundle sent twice at once: both registered the same
            # patient. Nothing of this one was written; sent again, it
            # finds what the other wrote.
            return 409, operation_outcome([("Bundle", CONCURRENT)], code="conflict")
        return 200, run.response_bundle()
    run.prepare()
    if any(e.error is None and e.matched is None for e in run.entries):
        # Outside the entries' savepoints: an entry that fails must not
        # take the Bundle's provenance with it.
        run.provenance_for_bundle()
    for entry in run.entries:
        if entry.error is not None:
            continue
        try:
            with transaction.atomic():
                run.write([entry])
        except store.StoreError as exc:
            entry.error = EntryError(400, [("resource", str(exc))])
        except IntegrityError:
            entry.error = EntryError(409, [("", CONCURRENT)], code="conflict")
    run.audit_denials()
    return 200, run.response_bundle()


class _TransactionFailed(Exception):
    pass


class BundleView(FhirView):
    """POST /fhir (the base URL): a transaction or batch Bundle."""

    @property
    def allowed_methods(self) -> list[str]:
        return ["POST"]

    def post(self, request: Request) -> Response:
        bundle = read_bundle(request)
        status, body = bundle_process(request, bundle)
        return Response(body, status=status)


def capability_interactions() -> list[dict[str, str]]:
    """The system-level interactions this module serves (CapabilityStatement
    rest.interaction)."""
    return [
        {"code": "transaction", "documentation": _INTERACTION_DOC},
        {"code": "batch", "documentation": _INTERACTION_DOC},
    ]


_INTERACTION_DOC = (
    "POST to the base URL; entries POST (conditional create with "
    "ifNoneExist identifier=system|value) and PUT (Type/id, or conditional "
    "Type?identifier=system|value) of " + ", ".join(sorted(BUNDLE_TYPES)) + "."
)

__all__ = [
    "BUNDLE_TYPES",
    "BundleView",
    "bundle_process",
    "capability_interactions",
    "check_codes",
]
