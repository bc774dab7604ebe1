"""Reads for the FHIR API: search parameters as ORM filters, keyset paging,
and the row lookups behind read, vread and history.

Access is never decided here: every search starts from
`sharing.access.visible_records(user)`, so withheld records are filtered
inside the query — before counting and paging — and a search can neither
return nor count what the user may not see (HAPI's consent interceptor
lesson, reference/security.md A4). A read by id loads its one row and asks
`sharing.access.readable_record` about it, so missing and withheld still
look the same.

Search parameters follow FHIR R4 (https://hl7.org/fhir/R4/search.html),
strictly: an unknown parameter, modifier or prefix is a 400, never silently
ignored (a client that believes it filtered must not get everything).

- token parameters (code, category, identifier, status) match the element
  they name with a JSONB containment (`content @> {...}`), narrowed by the
  GIN-indexed `tokens` column when a system is given; comma means OR.
- date parameters compare the resource's indexed interval
  [date_start, date_end] with the interval the parameter's precision
  implies (a day is a Japanese calendar day, as in phr.indexing).
- paging is a keyset on (last_updated desc, id desc) with a signed, opaque
  cursor; every page re-runs the access filter.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core import signing
from django.db.models import Case, DateTimeField, F, Q, Value, When
from django.db.models.lookups import GreaterThan, LessThan, LessThanOrEqual

from phr.indexing import LOCAL_TZ, SUPPORTED_TYPES, parse_fhir_date
from phr.models import Resource, ResourceHistory
from phr.terminology import CATEGORY_SYSTEM
from sharing.access import readable_record, visible_records

# Parameters that shape the result rather than filter it.
COUNT = "_count"
CURSOR = "_cursor"
# Accepted and ignored: we only speak JSON, and always the same JSON.
IGNORED = frozenset({"_format", "_pretty"})

ONE_MICROSECOND = timedelta(microseconds=1)
# Stands in for the open end of an ongoing Period (no end yet).
FAR_FUTURE = datetime(9999, 12, 31, tzinfo=LOCAL_TZ)

CURSOR_SALT = "phr.fhir_search.cursor"


class SearchError(Exception):
    """A search the client got wrong: rendered as a 400 OperationOutcome.

    `code` is the OperationOutcome issue type ("invalid", "not-supported").
    """

    def __init__(self, message: str, *, code: str = "invalid") -> None:
        self.message = message
        self.code = code
        super().__init__(message)


# --------------------------------------------------------------------------
# Splitting values (FHIR escapes "\," "\|" "\$" "\\" inside values)
# --------------------------------------------------------------------------

_UNESCAPED_COMMA = re.compile(r"(?<!\\),")
_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def _unescape(text: str) -> str:
    return re.sub(r"\\([\\,|$])", r"\1", text)


def split_or(value: str) -> list[str]:
    """A parameter value's comma-separated alternatives (OR)."""
    return [_unescape(part) for part in _UNESCAPED_COMMA.split(value)]


def split_token(value: str) -> tuple[str | None, str]:
    """`[system|]code` → (system, code); system None when no pipe."""
    parts = _UNESCAPED_PIPE.split(value, maxsplit=1)
    if len(parts) == 1:
        return None, _unescape(parts[0])
    return _unescape(parts[0]), _unescape(parts[1])


# --------------------------------------------------------------------------
# Token parameters: which element, in which shape
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Element:
    """Where a token parameter looks in the resource JSON.

    shape: "cc" (a CodeableConcept), "cc_list" (a list of them),
    "identifier_list" (a list of Identifiers), "code_list" (a list of plain
    codes of one implied system).
    """

    name: str
    shape: str
    implied_system: str = ""


def _coding_match(element: Element, system: str | None, code: str) -> Q:
    if not code:
        raise SearchError("A token needs a code: [system|]code", code="not-supported")
    if system == "":
        # "|code" asks for codings without a system; the index does not keep those.
        raise SearchError(
            "Searching for codes without a system (|code) is not supported", code="not-supported"
        )
    if element.shape == "code_list":
        if system not in (None, element.implied_system):
            return Q(pk__in=[])
        return Q(content__contains={element.name: [code]})
    if element.shape == "identifier_list":
        ident: dict[str, str] = {"value": code}
        if system is not None:
            ident["system"] = system
        match = Q(content__contains={element.name: [ident]})
    else:
        coding: dict[str, str] = {"code": code}
        if system is not None:
            coding["system"] = system
        concept = {"coding": [coding]}
        match = Q(
            content__contains={element.name: [concept] if element.shape == "cc_list" else concept}
        )
    if system is not None:
        # The GIN-indexed token array narrows the rows before the JSON check.
        match &= Q(tokens__contains=[f"{system}|{code}"])
    return match


def _token_filter(elements: Sequence[Element]) -> Callable[[str], Q]:
    def build(value: str) -> Q:
        system, code = split_token(value)
        q = Q(pk__in=[])
        for element in elements:
            q |= _coding_match(element, system, code)
        return q

    return build


def _category_filter(elements: Sequence[Element]) -> Callable[[str], Q]:
    """FHIR category codings, and our data categories (meta.tag system
    CATEGORY_SYSTEM, indexed in the `category` column)."""
    fhir = _token_filter(elements)

    def build(value: str) -> Q:
        system, code = split_token(value)
        if system == CATEGORY_SYSTEM:
            return Q(category=code)
        if system is None:
            return fhir(value) | Q(category=code)
        return fhir(value)

    return build


def _status_filter(value: str) -> Q:
    # Status codes have one implied system per type, so a system adds nothing.
    _, code = split_token(value)
    return Q(status=code)


def _id_filter(value: str) -> Q:
    try:
        return Q(id=uuid.UUID(value))
    except ValueError:
        return Q(pk__in=[])  # ids here are UUIDs: anything else matches nothing


def _patient_filter(value: str) -> Q:
    """patient=<id>, Patient/<id> or an absolute …/Patient/<id> URL."""
    parts = value.rstrip("/").split("/")
    if len(parts) >= 2:
        if parts[-2] != "Patient":
            raise SearchError(f"patient must reference a Patient, not {value!r}")
        value = parts[-1]
    try:
        patient_id = uuid.UUID(value)
    except ValueError:
        return Q(pk__in=[])
    return Q(compartments__overlap=[patient_id])


# --------------------------------------------------------------------------
# Date parameters
# --------------------------------------------------------------------------

DATE_PREFIXES = ("eq", "ne", "lt", "gt", "le", "ge", "sa", "eb")
_DATE = re.compile(r"^\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$")


def parse_date_value(value: str) -> tuple[str, datetime, datetime]:
    """`[prefix]date` → (prefix, first, last): the closed interval the
    value's precision implies. A date is a Japanese calendar day; a time
    without an offset is Japan time (as the index stores them); minutes and
    seconds cover the whole minute or second; fractional seconds are one
    instant."""
    prefix = "eq"
    if value[:2].isalpha():
        prefix, value = value[:2], value[2:]
        if prefix not in DATE_PREFIXES:
            raise SearchError(f"Unsupported date prefix {prefix!r}", code="not-supported")
    # An unencoded "+" of an offset arrives as a space.
    value = value.replace(" ", "+")
    if not _DATE.match(value):
        raise SearchError(f"Invalid date {value!r}")
    try:
        if "T" not in value:
            start, end, _ = parse_fhir_date(value)
            return prefix, start, end - ONE_MICROSECOND
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise SearchError(f"Invalid date {value!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=LOCAL_TZ)
    time = re.split(r"[Z+-]", value.split("T", 1)[1])[0]  # without the offset
    if "." in time:
        return prefix, moment, moment
    step = timedelta(seconds=1) if time.count(":") >= 2 else timedelta(minutes=1)
    return prefix, moment, moment + step - ONE_MICROSECOND


# The resource's date interval as a closed [date_start, last] range.
# date_end is exclusive for calendar values (a day ends at the next
# midnight), inclusive for instants (start = end), and NULL for a Period
# still going on. A Period that starts with a time is taken as inclusive:
# its end is an instant too, or at most a microsecond off.
_RESOURCE_LAST = Case(
    When(date_end__isnull=True, then=Value(FAR_FUTURE)),
    When(Q(date_precision="instant") | Q(date_end__lte=F("date_start")), then=F("date_end")),
    default=F("date_end") - Value(ONE_MICROSECOND),
    output_field=DateTimeField(),
)


def _interval_filter(prefix: str, first: datetime, last: datetime) -> Q:
    """FHIR R4 date comparison of the resource's interval [rs, re] with the
    parameter's [first, last] (search.html#prefix):

    eq  the parameter's range contains the resource's: rs >= first, re <= last
    ne  not eq
    gt  the resource's range reaches above the parameter's: re > last
    lt  it reaches below: rs < first
    ge  gt or eq;  le  lt or eq
    sa  it starts after the parameter's range: rs > last
    eb  it ends before it: re < first
    """
    within = Q(date_start__gte=first) & Q(LessThanOrEqual(_RESOURCE_LAST, last))
    above = Q(GreaterThan(_RESOURCE_LAST, last))
    below = Q(date_start__lt=first)
    q = {
        "eq": within,
        "ne": below | above,
        "gt": above,
        "lt": below,
        "ge": above | within,
        "le": below | within,
        "sa": Q(date_start__gt=last),
        "eb": Q(LessThan(_RESOURCE_LAST, first)),
    }[prefix]
    # A resource without the date never matches a date search.
    return Q(date_start__isnull=False) & q


def _date_filter(value: str) -> Q:
    prefix, first, last = parse_date_value(value)
    return _interval_filter(prefix, first, last)


def _last_updated_filter(value: str) -> Q:
    """_lastUpdated: the same comparison, against a single instant."""
    prefix, first, last = parse_date_value(value)
    return {
        "eq": Q(last_updated__gte=first, last_updated__lte=last),
        "ne": Q(last_updated__lt=first) | Q(last_updated__gt=last),
        "gt": Q(last_updated__gt=last),
        "lt": Q(last_updated__lt=first),
        "ge": Q(last_updated__gte=first),
        "le": Q(last_updated__lte=last),
        "sa": Q(last_updated__gt=last),
        "eb": Q(last_updated__lt=first),
    }[prefix]


# --------------------------------------------------------------------------
# The parameters of each type
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One supported search parameter: its FHIR type (for the
    CapabilityStatement), what it means, and how one value becomes a Q."""

    name: str
    type: str
    documentation: str
    build: Callable[[str], Q]


_CODE_ELEMENTS: dict[str, tuple[str, Element]] = {
    # type: (parameter name, element)
    "Observation": ("code", Element("code", "cc")),
    "Condition": ("code", Element("code", "cc")),
    "AllergyIntolerance": ("code", Element("code", "cc")),
    "MedicationStatement": ("code", Element("medicationCodeableConcept", "cc")),
    "MedicationDispense": ("code", Element("medicationCodeableConcept", "cc")),
    "Immunization": ("vaccine-code", Element("vaccineCode", "cc")),
    "Encounter": ("type", Element("type", "cc_list")),
    "EpisodeOfCare": ("type", Element("type", "cc_list")),
    # Not an R4 parameter of Flag, but its one coded element: what the flag says.
    "Flag": ("code", Element("code", "cc")),
}

# Types whose FHIR resource has a category element, and its shape.
_CATEGORY_ELEMENTS: dict[str, Element] = {
    "Observation": Element("category", "cc_list"),
    "Condition": Element("category", "cc_list"),
    "AllergyIntolerance": Element(
        "category", "code_list", "http://hl7.org/fhir/allergy-intolerance-category"
    ),
    "MedicationStatement": Element("category", "cc"),
    "Flag": Element("category", "cc_list"),
}

# Types with a plain `status` element (phr.indexing indexes it).
_STATUS_TYPES = frozenset(
    {
        "Observation",
        "Encounter",
        "EpisodeOfCare",
        "Immunization",
        "MedicationDispense",
        "MedicationStatement",
        "Flag",
    }
)


def _params_for(resource_type: str) -> dict[str, Param]:
    params = [
        Param("_id", "token", "Logical id of the resource (comma: any of)", _id_filter),
        Param(
            "_lastUpdated",
            "date",
            "When the current version was written (prefixes eq ne lt gt le ge sa eb)",
            _last_updated_filter,
        ),
        Param(
            "identifier",
            "token",
            "A business identifier: [system|]value",
            _token_filter([Element("identifier", "identifier_list")]),
        ),
    ]
    if resource_type == "Patient":
        params.append(
            Param("birthdate", "date", "Birth date (Japanese calendar day)", _date_filter)
        )
    else:
        params.append(
            Param(
                "patient",
                "reference",
                "The patient the record is about: <id> or Patient/<id>",
                _patient_filter,
            )
        )
        params.append(
            Param(
                "date",
                "date",
                "The record's clinically relevant date or period "
                "(prefixes eq ne lt gt le ge sa eb; a date is a Japanese calendar day)",
                _date_filter,
            )
        )
    if resource_type in _CODE_ELEMENTS:
        name, element = _CODE_ELEMENTS[resource_type]
        params.append(
            Param(name, "token", "What was recorded: [system|]code", _token_filter([element]))
        )
    if resource_type in _CATEGORY_ELEMENTS:
        params.append(
            Param(
                "category",
                "token",
                "The resource's category codings, or our data category "
                f"({CATEGORY_SYSTEM}|<category>)",
                _category_filter([_CATEGORY_ELEMENTS[resource_type]]),
            )
        )
    if resource_type in _STATUS_TYPES:
        params.append(Param("status", "token", "The record's status code", _status_filter))
    return {p.name: p for p in params}


SEARCH_PARAMS: dict[str, dict[str, Param]] = {t: _params_for(t) for t in SUPPORTED_TYPES}


def search_params(resource_type: str) -> list[Param]:
    """The parameters a type supports, for the CapabilityStatement."""
    return sorted(SEARCH_PARAMS[resource_type].values(), key=lambda p: p.name)


# --------------------------------------------------------------------------
# Paging
# --------------------------------------------------------------------------


def page_size(values: Sequence[str]) -> int:
    """_count: default FHIR_PAGE_SIZE, at most FHIR_MAX_PAGE_SIZE (a larger
    request is served at the maximum, as FHIR allows)."""
    if not values:
        return int(settings.FHIR_PAGE_SIZE)
    if len(values) > 1:
        raise SearchError("_count may be given once")
    try:
        count = int(values[0])
    except ValueError:
        raise SearchError(f"_count must be a number, not {values[0]!r}") from None
    if count < 0:
        raise SearchError("_count may not be negative")
    return min(count, int(settings.FHIR_MAX_PAGE_SIZE))


def _fingerprint(scope: str, params: Iterable[tuple[str, str]]) -> str:
    text = scope + "\n" + "\n".join(f"{k}={v}" for k, v in sorted(params))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cursor_dumps(*, user_id: Any, fingerprint: str, position: Mapping[str, Any]) -> str:
    """An opaque, signed paging cursor, bound to the user and the query, so
    it can neither be forged nor replayed with other parameters."""
    return signing.dumps(
        {"u": str(user_id), "f": fingerprint, "p": dict(position)}, salt=CURSOR_SALT, compress=True
    )


def cursor_loads(token: str, *, user_id: Any, fingerprint: str) -> dict[str, Any]:
    try:
        data = signing.loads(token, salt=CURSOR_SALT)
    except signing.BadSignature:
        raise SearchError("Invalid paging cursor") from None
    if not isinstance(data, dict) or data.get("u") != str(user_id) or data.get("f") != fingerprint:
        raise SearchError("This paging cursor belongs to another search")
    position = data.get("p")
    if not isinstance(position, dict):
        raise SearchError("Invalid paging cursor")
    return position


# --------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------


@dataclass
class Search:
    """A parsed search: the filter, the page size, the position after
    which this page starts, and the parameters to repeat in links."""

    resource_type: str
    filters: Q
    count: int
    fingerprint: str
    after: dict[str, Any] | None = None
    params: list[tuple[str, str]] = field(default_factory=list)


def parse_search(resource_type: str, query: Mapping[str, Sequence[str]], *, user_id: Any) -> Search:
    """Turn query parameters ({name: [values]}) into a Search.

    Repeated parameters are ANDed, comma-separated values ORed (FHIR).
    Raises SearchError for anything not understood.
    """
    known = SEARCH_PARAMS[resource_type]
    filters = Q()
    params: list[tuple[str, str]] = []
    for name, values in query.items():
        if name in (COUNT, CURSOR) or name in IGNORED:
            continue
        if ":" in name:
            raise SearchError(
                f"Search modifiers are not supported ({name!r})", code="not-supported"
            )
        param = known.get(name)
        if param is None:
            raise SearchError(
                f"Unknown search parameter {name!r} for {resource_type}; supported: "
                + ", ".join(sorted(known)),
                code="not-supported",
            )
        for value in values:
            alternatives = [v for v in split_or(value) if v]
            if not alternatives:
                raise SearchError(f"Search parameter {name!r} needs a value")
            any_of = Q(pk__in=[])
            for alternative in alternatives:
                any_of |= param.build(alternative)
            filters &= any_of
            params.append((name, value))
    count = page_size(query.get(COUNT, ()))
    fingerprint = _fingerprint(resource_type, params)
    search = Search(resource_type, filters, count, fingerprint, params=params)
    cursors = query.get(CURSOR, ())
    if cursors:
        search.after = cursor_loads(cursors[-1], user_id=user_id, fingerprint=fingerprint)
    return search


@dataclass
class Page:
    rows: list[Resource]
    total: int
    next_position: dict[str, Any] | None


def search_page(user: Any, search: Search) -> Page:
    """One page of a search, and the total, both inside the access filter."""
    matches = Resource.objects.filter(
        visible_records(user), search.filters, resource_type=search.resource_type
    )
    total = matches.count()
    if search.count == 0:
        return Page([], total, None)
    page = matches.order_by("-last_updated", "-id")
    if search.after is not None:
        try:
            moment = datetime.fromisoformat(search.after["lu"])
            last_id = uuid.UUID(search.after["id"])
        except (KeyError, TypeError, ValueError):
            raise SearchError("Invalid paging cursor") from None
        page = page.filter(Q(last_updated__lt=moment) | Q(last_updated=moment, id__lt=last_id))
    rows = list(page[: search.count + 1])
    next_position = None
    if len(rows) > search.count:
        rows = rows[: search.count]
        last = rows[-1]
        next_position = {"lu": last.last_updated.isoformat(), "id": str(last.id)}
    return Page(rows, total, next_position)


# --------------------------------------------------------------------------
# Read, vread, history
# --------------------------------------------------------------------------


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def resource_for(
    user: Any, resource_type: str, resource_id: str, *, purpose: str | None = None
) -> Resource | None:
    """The current row (a tombstone included) if `user` could see it for
    `purpose`; None when it is missing or withheld — on purpose the same.
    The row is loaded by id and type, then decided against the user's
    grants in Python (sharing.access.readable_record)."""
    rid = _uuid(resource_id)
    if rid is None or resource_type not in SUPPORTED_TYPES:
        return None
    rows = Resource.objects.filter(id=rid, resource_type=resource_type)
    return readable_record(user, rows, purpose=purpose)


def version_of(row: Resource, version_id: str) -> ResourceHistory | None:
    try:
        version = int(version_id)
    except ValueError:
        return None
    return ResourceHistory.objects.filter(resource_id=row.id, version=version).first()


@dataclass
class HistoryPage:
    versions: list[ResourceHistory]
    total: int
    next_position: dict[str, Any] | None


def history_page(row: Resource, *, count: int, after: Mapping[str, Any] | None) -> HistoryPage:
    """Versions of a resource, newest first; the caller has checked the
    current row's visibility."""
    versions = ResourceHistory.objects.filter(resource_id=row.id)
    total = versions.count()
    if count == 0:
        return HistoryPage([], total, None)
    page = versions.order_by("-version")
    if after is not None:
        try:
            page = page.filter(version__lt=int(after["v"]))
        except (KeyError, TypeError, ValueError):
            raise SearchError("Invalid paging cursor") from None
    rows = list(page[: count + 1])
    next_position = None
    if len(rows) > count:
        rows = rows[:count]
        next_position = {"v": rows[-1].version}
    return HistoryPage(rows, total, next_position)
