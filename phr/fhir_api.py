"""The FHIR R4 REST API at /fhir/: capabilities, read, vread, history,
search, and — for families — create, update and delete.

Views stay thin: authorize through sharing.access (searches start from
`visible_records`, reads by id go through `readable_record`, writes ask
`decide(..., purpose="personal")`), parse, call the selectors in
phr.fhir_search or the record store, render. Every
response that reveals patient data writes one audit row per patient
revealed (sharing.access.audit_reveal), before the response leaves.

Every error — ours, DRF's (401, 403, 404, 405, 406, 415, 429) and an
unexpected exception inside a view — is an OperationOutcome. A withheld
record and a missing one get the same 404, word for word.
"""

from __future__ import annotations

import logging
import math
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import transaction
from django.db.models import Q
from django.http import Http404
from django.urls import reverse
from django.utils import timezone
from django.utils.http import http_date
from rest_framework import exceptions
from rest_framework.parsers import JSONParser
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView, set_rollback

from phr import fhir_search, indexing, store
from phr.fhir import (
    FhirValidationError,
    fhir_instant,
    operation_outcome,
    to_fhir,
    validate_resource,
)
from phr.fhir_search import SearchError
from phr.models import Provenance, Resource, ResourceHistory
from phr.services import provenance_create
from sharing import fhir as consent_fhir
from sharing.access import (
    Purpose,
    address_hidden_for,
    audit_blocked_attempt,
    audit_reveal,
    decide,
    redact_for,
)

logger = logging.getLogger(__name__)

FHIR_VERSION = "4.0.1"
FHIR_MEDIA_TYPE = "application/fhir+json"
SOFTWARE_NAME = "Hagukumi PHR"
SOFTWARE_VERSION = "0.1.0"
# The date the capabilities last changed (CapabilityStatement.date).
CAPABILITIES_DATE = "2026-11-26"
PROVENANCE_SOURCE = "fhir-api"

# Patient resources are created with the identity row (registration, link
# codes, clinics), never by a client; nor are they deleted here.
CREATE_TYPES = indexing.SUPPORTED_TYPES - {"Patient"}
DELETE_TYPES = CREATE_TYPES

_FORMATS = frozenset({"json", "application/json", FHIR_MEDIA_TYPE, "application/json+fhir"})
_ETAG = re.compile(r'^(?:W/)?"(\d+)"$')


class FhirJsonRenderer(JSONRenderer):
    media_type = FHIR_MEDIA_TYPE
    format = "fhir"


class FhirJsonParser(JSONParser):
    media_type = FHIR_MEDIA_TYPE


class FhirError(exceptions.APIException):
    """An error to answer with an OperationOutcome: status, issue type and
    (element path, reason) issues."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str = "invalid",
        path: str = "",
        issues: list[tuple[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status
        self.code = code
        self.issues = issues or [(path, message)]
        self.headers = dict(headers or {})


_STATUS_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    410: "deleted",
    412: "conflict",
    415: "not-supported",
    429: "throttled",
}


def _detail_text(detail: Any) -> str:
    if isinstance(detail, list):
        return "; ".join(_detail_text(d) for d in detail)
    if isinstance(detail, dict):
        return "; ".join(f"{k}: {_detail_text(v)}" for k, v in detail.items())
    return str(detail)


def fhir_exception_handler(exc: Exception, context: Mapping[str, Any]) -> Response:
    """DRF exception handler for the FHIR views: everything becomes an
    OperationOutcome, and an unexpected error reveals nothing of itself."""
    headers: dict[str, str] = {}
    if isinstance(exc, FhirError):
        status, code, issues = exc.status_code, exc.code, exc.issues
        headers.update(exc.headers)
    elif isinstance(exc, FhirValidationError):
        status, code, issues = 400, "invalid", exc.issues
    elif isinstance(exc, SearchError):
        status, code, issues = 400, exc.code, [("", exc.message)]
    elif isinstance(exc, Http404):
        status, code, issues = 404, "not-found", [("", "Not found")]
    elif isinstance(exc, DjangoPermissionDenied):
        status, code, issues = 403, "forbidden", [("", "Forbidden")]
    elif isinstance(exc, exceptions.APIException):
        status = exc.status_code
        code = _STATUS_CODES.get(status, "invalid" if status < 500 else "exception")
        issues = [("", _detail_text(exc.detail))]
        auth_header = getattr(exc, "auth_header", None)
        if auth_header:
            headers["WWW-Authenticate"] = auth_header
        wait = getattr(exc, "wait", None)
        if wait:
            headers["Retry-After"] = str(math.ceil(wait))
    else:
        logger.exception("Unexpected error in the FHIR API", exc_info=exc)
        status, code, issues = 500, "exception", [("", "An unexpected error occurred.")]
    set_rollback()
    return Response(operation_outcome(issues, code=code), status=status, headers=headers)


# --------------------------------------------------------------------------
# Helpers: URLs, ETags, audit
# --------------------------------------------------------------------------


def fhir_base(request: Request) -> str:
    """The absolute base URL of the API, ending in a slash."""
    return request.build_absolute_uri(reverse("fhir:metadata")).removesuffix("metadata")


def not_found(resource_type: str, resource_id: str, version_id: str | None = None) -> FhirError:
    # The same words for a missing record and a withheld one, on purpose.
    what = f"{resource_type}/{resource_id}"
    if version_id is not None:
        what += f"/_history/{version_id}"
    return FhirError(404, f"{what} is not known", code="not-found")


def gone(resource_type: str, resource_id: str) -> FhirError:
    return FhirError(410, f"{resource_type}/{resource_id} has been deleted", code="deleted")


def etag(version: int) -> str:
    return f'W/"{version}"'


def version_headers(row: Resource | ResourceHistory) -> dict[str, str]:
    return {
        "ETag": etag(row.version),
        "Last-Modified": http_date(row.last_updated.timestamp()),
    }


def _if_match(request: Request) -> int | None:
    header = request.headers.get("If-Match")
    if not header:
        return None
    match = _ETAG.match(header.strip())
    if match is None:
        raise FhirError(400, f'If-Match must be a version ETag like W/"3", not {header!r}')
    return int(match.group(1))


def audit_rows(
    user: Any, rows: Iterable[Resource], *, action: str, detail: dict[str, Any] | None = None
) -> None:
    """One audit row per distinct patient the rows reveal, each naming the
    data categories revealed of that patient."""
    categories: dict[uuid.UUID, set[str]] = {}
    for row in rows:
        for patient_id in row.compartments:
            found = categories.setdefault(patient_id, set())
            if row.category:
                found.add(row.category)
    groups: dict[tuple[str, ...], list[uuid.UUID]] = {}
    for patient_id, cats in categories.items():
        groups.setdefault(tuple(sorted(cats)), []).append(patient_id)
    for cats, patient_ids in groups.items():
        audit_reveal(user, patient_ids, categories=cats, action=action, detail=detail)


def bundle(
    kind: str, *, total: int, links: Sequence[tuple[str, str]], entries: list[dict[str, Any]]
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": fhir_instant(timezone.now())},
        "type": kind,
        "total": total,
        "link": [{"relation": rel, "url": url} for rel, url in links],
    }
    if entries:  # FHIR JSON has no empty arrays
        out["entry"] = entries
    return out


def query_lists(request: Request) -> dict[str, list[str]]:
    return {name: request.query_params.getlist(name) for name in request.query_params}


# --------------------------------------------------------------------------
# Views
# --------------------------------------------------------------------------


class FhirView(APIView):
    """Base of the FHIR views: FHIR JSON in and out, OperationOutcome errors.

    Authentication and throttling are the project defaults (bearer API
    tokens and sessions; IsAuthenticated).
    """

    renderer_classes = [FhirJsonRenderer, JSONRenderer]
    parser_classes = [FhirJsonParser, JSONParser]
    # The FHIR API describes itself with its CapabilityStatement (/fhir/metadata),
    # not in the OpenAPI schema of our own JSON APIs.
    schema = None
    # OPTIONS would describe the view in DRF's own format; FHIR has /metadata.
    metadata_class = None

    def get_exception_handler(self) -> Any:
        return fhir_exception_handler

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        for value in request.query_params.getlist("_format"):
            if value not in _FORMATS:
                raise exceptions.NotAcceptable(f"Only JSON is served (_format={value!r})")

    def check_type(self, resource_type: str) -> None:
        if resource_type not in indexing.SUPPORTED_TYPES:
            raise FhirError(
                404, f"Resource type {resource_type!r} is not supported", code="not-supported"
            )

    def read_body(self, request: Request, resource_type: str) -> dict[str, Any]:
        """The request body as a valid resource of `resource_type`."""
        body = request.data
        if not isinstance(body, dict) or not body:
            raise FhirError(400, "The body must be a FHIR resource (a JSON object)")
        if body.get("resourceType") != resource_type:
            raise FhirError(
                400,
                f"resourceType must be {resource_type!r} at this URL",
                path="resourceType",
            )
        validate_resource(body)
        return body

    def check_writable_compartments(
        self, user: Any, resource: dict[str, Any], resource_id: uuid.UUID
    ) -> list[uuid.UUID]:
        """Families write into their own compartment and their children's
        only. The answer is the same whether or not the patient exists."""
        resource_type = resource["resourceType"]
        compartments = indexing.index(resource, resource_id=resource_id).compartments
        if not compartments:
            element = indexing.COMPARTMENT_PATHS[resource_type][0]
            raise FhirError(
                400,
                "The record must reference the Patient it is about (Patient/<id>)",
                path=f"{resource_type}.{element}",
            )
        for patient_id in compartments:
            if not decide(user, patient_id, purpose=Purpose.PERSONAL):
                raise FhirError(
                    403,
                    "You may write only your own records and your children's",
                    code="forbidden",
                )
        return compartments

    def row_for_write(self, user: Any, resource_type: str, resource_id: str) -> Resource:
        """The current row a family member may change: 404 when they cannot
        see it (missing or withheld alike), 403 when they see it but not as
        their own or their child's (e.g. a municipal officer)."""
        row = fhir_search.resource_for(user, resource_type, resource_id)
        if row is None:
            raise not_found(resource_type, resource_id)
        if (
            fhir_search.resource_for(user, resource_type, resource_id, purpose=Purpose.PERSONAL)
            is None
        ):
            raise FhirError(
                403, "You may change only your own records and your children's", code="forbidden"
            )
        return row

    def resource_response(
        self,
        request: Request,
        row: Resource | ResourceHistory,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        return Response(
            redact_for(request.user, to_fhir(row)),
            status=status,
            headers={**version_headers(row), **(headers or {})},
        )


class CapabilityStatementView(FhirView):
    """GET /fhir/metadata: what this server does. Public, as FHIR expects."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    def get(self, request: Request) -> Response:
        return Response(capability_statement(fhir_base(request)))


class TypeView(FhirView):
    """GET /fhir/{type}?… (search) and POST /fhir/{type} (create)."""

    @property
    def allowed_methods(self) -> list[str]:
        methods = ["GET"]
        if self.kwargs.get("resource_type") in CREATE_TYPES:
            methods.append("POST")
        return methods

    def get(self, request: Request, resource_type: str) -> Response:
        if resource_type == CONSENT:
            return consent_search(request)
        self.check_type(resource_type)
        user = request.user
        search = fhir_search.parse_search(resource_type, query_lists(request), user_id=user.pk)
        # A search naming a person blocked for this user finds nothing, and
        # the attempt is audited.
        audit_blocked_attempt(
            user,
            action="fhir.search",
            patient_ids=[
                part
                for name, value in search.params
                if name == "patient" or (resource_type == "Patient" and name == "_id")
                for part in value.split(",")
            ],
        )
        page = fhir_search.search_page(user, search)
        base = fhir_base(request)
        links = [("self", request.build_absolute_uri())]
        if page.next_position is not None:
            cursor = fhir_search.cursor_dumps(
                user_id=user.pk, fingerprint=search.fingerprint, position=page.next_position
            )
            query = [*search.params, ("_count", str(search.count)), ("_cursor", cursor)]
            links.append(("next", f"{base}{resource_type}?{urlencode(query)}"))
        audit_rows(user, page.rows, action="fhir.search", detail={"type": resource_type})
        entries = [
            {
                "fullUrl": f"{base}{row.resource_type}/{row.id}",
                "resource": redact_for(user, to_fhir(row)),
                "search": {"mode": "match"},
            }
            for row in page.rows
        ]
        return Response(bundle("searchset", total=page.total, links=links, entries=entries))

    def post(self, request: Request, resource_type: str) -> Response:
        refuse_consent_writes(resource_type, "POST")
        self.check_type(resource_type)
        if resource_type not in CREATE_TYPES:
            raise exceptions.MethodNotAllowed(
                "POST", detail=f"{resource_type} resources are not created through this API"
            )
        user = request.user
        resource = self.read_body(request, resource_type)
        # The server names new resources: an id in the body is ignored
        # (FHIR create), so a client cannot aim a create at an existing row.
        resource_id = uuid.uuid4()
        self.check_writable_compartments(user, resource, resource_id)
        with transaction.atomic():
            provenance = provenance_create(
                origin=Provenance.Origin.SELF, user=user, source=PROVENANCE_SOURCE
            )
            store.record_write(resource, provenance=provenance, resource_id=resource_id)
            row = Resource.objects.get(id=resource_id)
            audit_rows(user, [row], action="fhir.write", detail={"interaction": "create"})
        location = f"{fhir_base(request)}{resource_type}/{row.id}/_history/{row.version}"
        return self.resource_response(request, row, status=201, headers={"Location": location})


class InstanceView(FhirView):
    """GET (read), PUT (update) and DELETE /fhir/{type}/{id}."""

    @property
    def allowed_methods(self) -> list[str]:
        if self.kwargs.get("resource_type") == CONSENT:
            return ["GET"]
        methods = ["GET", "PUT"]
        if self.kwargs.get("resource_type") in DELETE_TYPES:
            methods.append("DELETE")
        return methods

    def get(self, request: Request, resource_type: str, resource_id: str) -> Response:
        if resource_type == CONSENT:
            return consent_read(request, resource_id)
        self.check_type(resource_type)
        row = fhir_search.resource_for(request.user, resource_type, resource_id)
        if row is None:
            audit_blocked_attempt(
                request.user, action="fhir.read", resource=(resource_type, resource_id)
            )
            raise not_found(resource_type, resource_id)
        if row.deleted:
            raise gone(resource_type, resource_id)
        audit_rows(request.user, [row], action="fhir.read", detail={"interaction": "read"})
        return self.resource_response(request, row)

    def put(self, request: Request, resource_type: str, resource_id: str) -> Response:
        refuse_consent_writes(resource_type, "PUT")
        self.check_type(resource_type)
        user = request.user
        row = self.row_for_write(user, resource_type, resource_id)
        resource = self.read_body(request, resource_type)
        if str(resource.get("id", "")) != str(row.id):
            raise FhirError(
                400, "The resource's id must equal the id in the URL", path=f"{resource_type}.id"
            )
        self.check_writable_compartments(user, resource, row.id)
        expected = _if_match(request)
        with transaction.atomic():
            current = Resource.objects.select_for_update().get(id=row.id)
            if expected is not None and expected != current.version:
                raise FhirError(
                    412,
                    f"Version {expected} is not the current version ({current.version})",
                    code="conflict",
                )
            if resource_type == "Patient":
                resource = _keep_server_held(
                    resource, current.content, address_hidden=address_hidden_for(user, current.id)
                )
            unchanged = not current.deleted and current.content_hash == store.content_hash(
                store.canonical_content(resource)
            )
            if not unchanged:
                provenance = provenance_create(
                    origin=Provenance.Origin.SELF, user=user, source=PROVENANCE_SOURCE
                )
                store.record_write(resource, provenance=provenance, resource_id=row.id)
                current = Resource.objects.get(id=row.id)
            audit_rows(user, [current], action="fhir.write", detail={"interaction": "update"})
        return self.resource_response(request, current)

    def delete(self, request: Request, resource_type: str, resource_id: str) -> Response:
        refuse_consent_writes(resource_type, "DELETE")
        self.check_type(resource_type)
        if resource_type not in DELETE_TYPES:
            raise exceptions.MethodNotAllowed(
                "DELETE", detail=f"{resource_type} resources are not deleted through this API"
            )
        user = request.user
        row = self.row_for_write(user, resource_type, resource_id)
        expected = _if_match(request)
        if row.deleted:
            return Response(status=204)  # deleting twice changes nothing (FHIR)
        with transaction.atomic():
            current = Resource.objects.select_for_update().get(id=row.id)
            if expected is not None and expected != current.version:
                raise FhirError(
                    412,
                    f"Version {expected} is not the current version ({current.version})",
                    code="conflict",
                )
            provenance = provenance_create(
                origin=Provenance.Origin.SELF,
                user=user,
                source=PROVENANCE_SOURCE,
                activity=Provenance.Activity.DELETE,
            )
            store.record_delete(
                resource_type=resource_type, resource_id=row.id, provenance=provenance
            )
            audit_rows(user, [current], action="fhir.delete", detail={"interaction": "delete"})
        return Response(status=204)


class HistoryView(FhirView):
    """GET /fhir/{type}/{id}/_history: every version, newest first. The
    current row's visibility decides for all its versions."""

    def get(self, request: Request, resource_type: str, resource_id: str) -> Response:
        self.check_type(resource_type)
        user = request.user
        row = fhir_search.resource_for(user, resource_type, resource_id)
        if row is None:
            audit_blocked_attempt(
                user, action="fhir.history", resource=(resource_type, resource_id)
            )
            raise not_found(resource_type, resource_id)
        query = query_lists(request)
        unknown = set(query) - {fhir_search.COUNT, fhir_search.CURSOR, *fhir_search.IGNORED}
        if unknown:
            raise SearchError(
                f"Unsupported history parameter(s): {', '.join(sorted(unknown))}",
                code="not-supported",
            )
        count = fhir_search.page_size(query.get(fhir_search.COUNT, ()))
        scope = f"history:{resource_type}/{row.id}"
        after = None
        if query.get(fhir_search.CURSOR):
            after = fhir_search.cursor_loads(
                query[fhir_search.CURSOR][-1], user_id=user.pk, fingerprint=scope
            )
        page = fhir_search.history_page(row, count=count, after=after)
        base = fhir_base(request)
        links = [("self", request.build_absolute_uri())]
        if page.next_position is not None:
            cursor = fhir_search.cursor_dumps(
                user_id=user.pk, fingerprint=scope, position=page.next_position
            )
            links.append(
                (
                    "next",
                    f"{base}{resource_type}/{row.id}/_history?"
                    + urlencode({"_count": count, "_cursor": cursor}),
                )
            )
        if any(not version.deleted for version in page.versions):
            audit_rows(user, [row], action="fhir.history", detail={"interaction": "history"})
        entries = [history_entry(base, version, request.user) for version in page.versions]
        return Response(bundle("history", total=page.total, links=links, entries=entries))


class VersionView(FhirView):
    """GET /fhir/{type}/{id}/_history/{vid} (vread)."""

    def get(
        self, request: Request, resource_type: str, resource_id: str, version_id: str
    ) -> Response:
        self.check_type(resource_type)
        user = request.user
        row = fhir_search.resource_for(user, resource_type, resource_id)
        version = fhir_search.version_of(row, version_id) if row is not None else None
        if version is None:
            if row is None:
                audit_blocked_attempt(
                    user, action="fhir.read", resource=(resource_type, resource_id)
                )
            raise not_found(resource_type, resource_id, version_id)
        if version.deleted:
            raise gone(resource_type, resource_id)
        assert row is not None
        audit_rows(user, [row], action="fhir.read", detail={"interaction": "vread"})
        return self.resource_response(request, version)


class EverythingView(FhirView):
    """GET /fhir/Patient/{id}/$everything: the patient's records the caller
    may see (a clinic under a care consent: the granted categories), as a
    searchset with their Provenance included, newest first, paged with the
    signed cursor of searches. _since (an instant), _type (types, comma:
    any of) and _count narrow it. Missing and withheld patients alike: 404."""

    PARAMS = frozenset({"_since", "_type", fhir_search.COUNT, fhir_search.CURSOR})

    def get(self, request: Request, resource_id: str) -> Response:
        from phr import export

        user = request.user
        row = fhir_search.resource_for(user, "Patient", resource_id)
        if row is None:
            audit_blocked_attempt(user, action="fhir.everything", resource=("Patient", resource_id))
            raise not_found("Patient", resource_id)
        if row.deleted:
            raise gone("Patient", resource_id)
        query = query_lists(request)
        unknown = set(query) - self.PARAMS - fhir_search.IGNORED
        if unknown:
            raise SearchError(
                f"Unsupported $everything parameter(s): {', '.join(sorted(unknown))}; "
                "supported: _since, _type, _count",
                code="not-supported",
            )
        since = None
        params: list[tuple[str, str]] = []
        for value in query.get("_since", ())[-1:]:
            prefix, since, _last = fhir_search.parse_date_value(value)
            if prefix != "eq" or value[:2].isalpha():
                raise SearchError("_since takes an instant, without a prefix")
            params.append(("_since", value))
        types: list[str] = []
        for value in query.get("_type", ()):
            for name in fhir_search.split_or(value):
                if name not in indexing.SUPPORTED_TYPES:
                    raise SearchError(f"_type: resource type {name!r} is not supported")
                types.append(name)
            params.append(("_type", value))
        count = fhir_search.page_size(query.get(fhir_search.COUNT, ()))
        fingerprint = fhir_search._fingerprint(f"everything:{row.id}", params)
        after = None
        if query.get(fhir_search.CURSOR):
            after = fhir_search.cursor_loads(
                query[fhir_search.CURSOR][-1], user_id=user.pk, fingerprint=fingerprint
            )
        try:
            page = export.everything_page(
                user, patient_id=row.id, since=since, types=types, count=count, after=after
            )
        except (KeyError, TypeError, ValueError):
            raise SearchError("Invalid paging cursor") from None
        base = fhir_base(request)
        links = [("self", request.build_absolute_uri())]
        if page.next_position is not None:
            cursor = fhir_search.cursor_dumps(
                user_id=user.pk, fingerprint=fingerprint, position=page.next_position
            )
            next_query = [*params, ("_count", str(count)), ("_cursor", cursor)]
            links.append(("next", f"{base}Patient/{row.id}/$everything?{urlencode(next_query)}"))
        audit_rows(
            user,
            page.rows,
            action="fhir.everything",
            detail={"interaction": "operation", "operation": "everything"},
        )
        entries = export.everything_entries(user, page.rows, base=base)
        return Response(bundle("searchset", total=page.total, links=links, entries=entries))


# --------------------------------------------------------------------------
# Consent: a read-only projection of sharing.Consent rows (sharing/fhir.py)
# --------------------------------------------------------------------------

CONSENT = "Consent"
CONSENT_SEARCH_PARAMS = ("_id", "patient")


def refuse_consent_writes(resource_type: str, method: str) -> None:
    # Consents are control data: granted and revoked on the Sharing page
    # (with re-authentication), never written through the API.
    if resource_type == CONSENT:
        raise exceptions.MethodNotAllowed(
            method, detail="Consent is read-only here; families change it on the Sharing page"
        )


def _consent_id_filter(value: str) -> Q:
    try:
        return Q(pk=uuid.UUID(value))
    except ValueError:
        return Q(pk__in=[])


def consent_read(request: Request, resource_id: str) -> Response:
    """GET /fhir/Consent/{id}: to whoever decides for the patient, and to
    the grantee while it is in force; 404 to everyone else."""
    consent = consent_fhir.consent_for(request.user, resource_id)
    if consent is None:
        raise not_found(CONSENT, resource_id)
    audit_reveal(
        request.user,
        [consent.patient_id],
        action="fhir.read",
        detail={"interaction": "read", "type": CONSENT},
    )
    resource = consent_fhir.consent_resource(consent)
    return Response(resource, headers={"Last-Modified": http_date(consent.created_at.timestamp())})


def consent_search(request: Request) -> Response:
    """GET /fhir/Consent?patient=…&_id=…: the consents the caller may read,
    newest first, paged with a signed cursor like record searches."""
    user = request.user
    query = query_lists(request)
    filters = Q()
    params: list[tuple[str, str]] = []
    for name, values in query.items():
        if name in (fhir_search.COUNT, fhir_search.CURSOR) or name in fhir_search.IGNORED:
            continue
        if name not in CONSENT_SEARCH_PARAMS:
            raise SearchError(
                f"Unknown search parameter {name!r} for Consent; supported: "
                + ", ".join(CONSENT_SEARCH_PARAMS),
                code="not-supported",
            )
        build = consent_fhir.patient_filter if name == "patient" else _consent_id_filter
        for value in values:
            alternatives = [v for v in fhir_search.split_or(value) if v]
            if not alternatives:
                raise SearchError(f"Search parameter {name!r} needs a value")
            any_of = Q(pk__in=[])
            for alternative in alternatives:
                any_of |= build(alternative)
            filters &= any_of
            params.append((name, value))
    count = fhir_search.page_size(query.get(fhir_search.COUNT, ()))
    fingerprint = fhir_search._fingerprint(CONSENT, params)
    matches = consent_fhir.visible_consents(user).filter(filters)
    total = matches.count()
    page = matches.order_by("-created_at", "-pk")
    if query.get(fhir_search.CURSOR):
        after = fhir_search.cursor_loads(
            query[fhir_search.CURSOR][-1], user_id=user.pk, fingerprint=fingerprint
        )
        try:
            moment = datetime.fromisoformat(after["c"])
            last_id = uuid.UUID(after["id"])
        except (KeyError, TypeError, ValueError):
            raise SearchError("Invalid paging cursor") from None
        page = page.filter(Q(created_at__lt=moment) | Q(created_at=moment, pk__lt=last_id))
    rows = list(page[: count + 1]) if count else []
    base = fhir_base(request)
    links = [("self", request.build_absolute_uri())]
    if len(rows) > count:
        rows = rows[:count]
        cursor = fhir_search.cursor_dumps(
            user_id=user.pk,
            fingerprint=fingerprint,
            position={"c": rows[-1].created_at.isoformat(), "id": str(rows[-1].pk)},
        )
        next_query = [*params, ("_count", str(count)), ("_cursor", cursor)]
        links.append(("next", f"{base}{CONSENT}?{urlencode(next_query)}"))
    audit_reveal(
        user,
        [row.patient_id for row in rows],
        action="fhir.search",
        detail={"type": CONSENT},
    )
    entries = [
        {
            "fullUrl": f"{base}{CONSENT}/{row.pk}",
            "resource": consent_fhir.consent_resource(row),
            "search": {"mode": "match"},
        }
        for row in rows
    ]
    return Response(bundle("searchset", total=total, links=links, entries=entries))


class UnknownEndpointView(FhirView):
    """Anything else under /fhir/: a FHIR 404 rather than Django's page."""

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        raise FhirError(404, f"Unknown FHIR endpoint {request.path!r}", code="not-found")


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------


def history_entry(base: str, version: ResourceHistory, user: Any) -> dict[str, Any]:
    """A history Bundle entry: the version (none for a deletion), with the
    request that produced it and its outcome."""
    url = f"{version.resource_type}/{version.resource_id}"
    if version.deleted:
        method, status = "DELETE", "204 No Content"
    elif version.version == 1:
        method, status, url = "POST", "201 Created", version.resource_type
    else:
        method, status = "PUT", "200 OK"
    entry: dict[str, Any] = {"fullUrl": f"{base}{version.resource_type}/{version.resource_id}"}
    if not version.deleted:
        entry["resource"] = redact_for(user, to_fhir(version))
    entry["request"] = {"method": method, "url": url}
    entry["response"] = {
        "status": status,
        "etag": etag(version.version),
        "lastModified": fhir_instant(version.last_updated),
    }
    return entry


def capability_statement(base: str) -> dict[str, Any]:
    """The server's CapabilityStatement (FHIR R4), built from the same
    tables that drive the views and the search parser."""
    from phr import fhir_bundle  # imports this module

    resources = []
    for resource_type in sorted(indexing.SUPPORTED_TYPES):
        interactions = ["read", "vread", "history-instance", "search-type", "update"]
        if resource_type in CREATE_TYPES:
            interactions.append("create")
        if resource_type in DELETE_TYPES:
            interactions.append("delete")
        operations = []
        if resource_type == "Patient":
            # phr/export.py: the patient's records as a searchset, paged.
            operations.append(
                {
                    "name": "everything",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                    "documentation": "_since, _type and _count; the caller's access applies",
                }
            )
        resources.append(
            {
                "type": resource_type,
                **({"operation": operations} if operations else {}),
                "interaction": [{"code": code} for code in interactions],
                "versioning": "versioned",
                "readHistory": True,
                "updateCreate": False,
                # Conditional create and update: in transaction and batch
                # Bundles, by identifier (phr/fhir_bundle.py).
                "conditionalCreate": resource_type in fhir_bundle.BUNDLE_TYPES,
                "conditionalRead": "not-supported",
                "conditionalUpdate": resource_type in fhir_bundle.BUNDLE_TYPES,
                "conditionalDelete": "not-supported",
                "searchParam": [
                    {"name": p.name, "type": p.type, "documentation": p.documentation}
                    for p in fhir_search.search_params(resource_type)
                ]
                + [
                    {
                        "name": fhir_search.COUNT,
                        "type": "number",
                        "documentation": "Page size (default and maximum set by the server)",
                    }
                ],
            }
        )
    # Consent is a read-only projection of the sharing tables.
    resources.append(
        {
            "type": CONSENT,
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": [
                {"name": "patient", "type": "reference", "documentation": "The consent's patient"},
                {"name": "_id", "type": "token", "documentation": "Logical id"},
            ],
        }
    )
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": CAPABILITIES_DATE,
        "publisher": SOFTWARE_NAME,
        "kind": "instance",
        "software": {"name": SOFTWARE_NAME, "version": SOFTWARE_VERSION},
        "implementation": {
            "description": "Hagukumi PHR: maternal and child health records",
            "url": base.rstrip("/"),
        },
        "fhirVersion": FHIR_VERSION,
        "format": [FHIR_MEDIA_TYPE, "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "Reads show only what the access policy lets the caller see; families "
                    "write their own and their children's records; clinic systems write "
                    "through transaction and batch Bundles (POST to the base URL)."
                ),
                "security": {
                    "cors": False,
                    "description": (
                        "Bearer API tokens (Authorization: Bearer …) or a browser session. "
                        "Withheld and missing records both answer 404."
                    ),
                },
                "resource": resources,
                "interaction": fhir_bundle.capability_interactions(),
            }
        ],
    }


# Identifiers (resident number, MCH handbook number, clinic patient numbers)
# and merge links are what identity matching relies on: they come from the
# municipality, clinics and the merge service, never from a family's PUT.
SERVER_HELD_PATIENT_ELEMENTS = ("identifier", "link")


def _keep_server_held(
    resource: dict[str, Any], stored: dict[str, Any], *, address_hidden: bool = False
) -> dict[str, Any]:
    kept = {k: v for k, v in resource.items() if k not in SERVER_HELD_PATIENT_ELEMENTS}
    for element in SERVER_HELD_PATIENT_ELEMENTS:
        if element in stored:
            kept[element] = stored[element]
    # An address the writer could not see (DV block) is not lost by a PUT.
    if address_hidden and "address" in stored:
        kept["address"] = stored["address"]
    return kept
