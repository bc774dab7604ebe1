"""The search index: what queries need, derived from a resource's JSON.

`index(resource)` is the only producer of the search columns of
phr.Resource (compartments, tokens, refs, status, category, sensitivity,
dates, quantity). `manage.py reindex` recomputes them for every row, so the
JSON stays the record and the index can always be rebuilt.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from phr import terminology

# Date-only values are Japanese calendar dates: "2025-04-01" means that day
# in Japan. The index keeps them as the [start, end) interval of that day in
# Asia/Tokyo, with the precision, so a date never shifts by a timezone.
LOCAL_TZ = ZoneInfo("Asia/Tokyo")

# The compartment reference(s) of each type: the patient(s) it belongs to.
COMPARTMENT_PATHS: dict[str, tuple[str, ...]] = {
    "Observation": ("subject",),
    "Encounter": ("subject",),
    "EpisodeOfCare": ("patient",),
    "Immunization": ("patient",),
    "MedicationDispense": ("subject",),
    "MedicationStatement": ("subject",),
    "AllergyIntolerance": ("patient",),
    "Condition": ("subject",),
    "Flag": ("subject",),
}

# The clinically meaningful date of each type (first present wins).
DATE_PATHS: dict[str, tuple[str, ...]] = {
    "Patient": ("birthDate",),
    "Observation": ("effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued"),
    "Encounter": ("period",),
    "EpisodeOfCare": ("period",),
    "Immunization": ("occurrenceDateTime",),
    "MedicationDispense": ("whenHandedOver", "whenPrepared"),
    "MedicationStatement": ("effectiveDateTime", "effectivePeriod", "dateAsserted"),
    "AllergyIntolerance": ("recordedDate", "onsetDateTime"),
    "Condition": ("onsetDateTime", "recordedDate"),
    "Flag": ("period",),
}

SUPPORTED_TYPES = frozenset({"Patient", *COMPARTMENT_PATHS})


@dataclass
class IndexFields:
    compartments: list[uuid.UUID] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    refs: list[str] = field(default_factory=list)
    status: str = ""
    category: str = ""
    sensitivity: str = "normal"
    date_start: datetime | None = None
    date_end: datetime | None = None
    date_precision: str = ""
    quantity_value: Decimal | None = None
    quantity_code: str = ""


def patient_id_from_reference(reference: str | None) -> uuid.UUID | None:
    if not reference or not reference.startswith("Patient/"):
        return None
    try:
        return uuid.UUID(reference[len("Patient/") :])
    except ValueError:
        return None


# JSON scalar types, skipped by _walk without an isinstance check.
_LEAF_TYPES = frozenset((str, int, float, bool, type(None)))


_NUMBERS = (int, float)


def _walk(node: Any, codings: list[dict[str, Any]], refs: list[str]) -> None:
    """Collect, at any depth, every coding-like element (a system with a
    code, or an identifier's system with a value) and every reference.

    Iterative, with an explicit stack, because this runs for every row of
    every import: the order things are collected in does not matter, as
    index() sorts and de-duplicates them.
    """
    stack = [node]
    pop = stack.pop
    push = stack.append
    containers = (dict, list)
    leaves = _LEAF_TYPES
    while stack:
        node = pop()
        if isinstance(node, dict):
            system = node.get("system")
            # A Quantity (numeric value) has a system and code too: its unit
            # is indexed as quantity_code, not as a token.
            if isinstance(system, str) and type(node.get("value")) not in _NUMBERS:
                code = node["code"] if "code" in node else node.get("value")
                if isinstance(code, str):
                    codings.append(node)
            reference = node.get("reference")
            if isinstance(reference, str):
                refs.append(reference)
            values: Any = node.values()
        elif isinstance(node, list):
            values = node
        else:
            continue
        for value in values:
            # Most values are JSON scalars: one set lookup skips them.
            if type(value) not in leaves and isinstance(value, containers):
                push(value)


def parse_fhir_date(value: str) -> tuple[datetime, datetime, str]:
    """A FHIR date/dateTime/instant as a [start, end) interval and precision.

    "2025" → year, "2025-04" → month, "2025-04-01" → day (Japanese calendar
    days), and a dateTime with a time → an instant (its own offset; a time
    without an offset is taken as Japan time).
    """
    if len(value) == 4:
        start = datetime(int(value), 1, 1, tzinfo=LOCAL_TZ)
        return start, start.replace(year=start.year + 1), "year"
    if len(value) == 7:
        year, month = int(value[:4]), int(value[5:7])
        start = datetime(year, month, 1, tzinfo=LOCAL_TZ)
        end = (
            datetime(year + 1, 1, 1, tzinfo=LOCAL_TZ)
            if month == 12
            else datetime(year, month + 1, 1, tzinfo=LOCAL_TZ)
        )
        return start, end, "month"
    if len(value) == 10:
        day = date.fromisoformat(value)
        start = datetime(day.year, day.month, day.day, tzinfo=LOCAL_TZ)
        return start, start + timedelta(days=1), "day"
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=LOCAL_TZ)
    return moment, moment, "instant"


def fhir_local_date(value: Any) -> date | None:
    """A FHIR date or dateTime as the Japanese calendar day it falls on
    (None for anything shorter than a day or unreadable)."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        start, _, _ = parse_fhir_date(value)
    except ValueError:
        return None
    return start.astimezone(LOCAL_TZ).date()


def _dates(resource_type: str, resource: dict[str, Any], out: IndexFields) -> None:
    for path in DATE_PATHS.get(resource_type, ()):
        value = resource.get(path)
        if value is None:
            continue
        if isinstance(value, dict):  # a Period
            start_text, end_text = value.get("start"), value.get("end")
            if not start_text:
                continue
            # A Period without an end is still going on (an ongoing
            # pregnancy): its end stays open (NULL), whatever the start's
            # precision.
            out.date_start, _, out.date_precision = parse_fhir_date(start_text)
            out.date_end = parse_fhir_date(end_text)[1] if end_text else None
            return
        if isinstance(value, str):
            out.date_start, out.date_end, out.date_precision = parse_fhir_date(value)
            return


_CATEGORIES = frozenset(terminology.Category.values)
_SENSITIVITIES = frozenset(terminology.Sensitivity.values)
# numeric(18, 6) holds magnitudes below 10**12; larger quantities stay in
# the JSON but are not indexed.
_QUANTITY_LIMIT = Decimal(10) ** 12


def _category(
    resource_type: str, resource: dict[str, Any], codings: list[dict[str, Any]]
) -> tuple[str, str]:
    """Data category and sensitivity: meta tags first (the writer knew the
    context), then the dictionary item of the resource's code, then the
    resource type."""
    meta = resource.get("meta") or {}
    category = ""
    sensitivity = ""
    # Only known codes count: an unknown tag is ignored (the dictionary and
    # the type decide), so one odd label cannot fail a whole import chunk.
    for tag in meta.get("tag") or ():
        if tag.get("system") == terminology.CATEGORY_SYSTEM and tag.get("code") in _CATEGORIES:
            category = tag["code"]
    for label in meta.get("security") or ():
        if (
            label.get("system") == terminology.SENSITIVITY_SYSTEM
            and label.get("code") in _SENSITIVITIES
        ):
            sensitivity = label["code"]
    code = resource.get("code") or resource.get("vaccineCode") or {}
    dictionary_item = None
    for coding in code.get("coding") or ():
        dictionary_item = terminology.item_for_coding(coding.get("system"), coding.get("code"))
        if dictionary_item:
            break
    if dictionary_item is not None:
        category = category or dictionary_item.category
        # The dictionary's sensitivity can only be raised by a label, never lowered.
        if dictionary_item.sensitivity != "normal":
            sensitivity = dictionary_item.sensitivity
    category = category or terminology.TYPE_CATEGORY.get(resource_type, "")
    return category, sensitivity or "normal"


def index(resource: dict[str, Any], *, resource_id: uuid.UUID | None = None) -> IndexFields:
    resource_type = resource["resourceType"]
    out = IndexFields()
    codings: list[dict[str, Any]] = []
    refs: list[str] = []
    _walk(resource, codings, refs)

    if resource_type == "Patient":
        if resource_id is not None:
            out.compartments = [resource_id]
    else:
        seen: list[uuid.UUID] = []
        for path in COMPARTMENT_PATHS.get(resource_type, ()):
            patient = patient_id_from_reference((resource.get(path) or {}).get("reference"))
            if patient is not None and patient not in seen:
                seen.append(patient)
        out.compartments = seen

    tokens: list[str] = []
    for coding in codings:
        system = coding["system"]
        code = coding.get("code", coding.get("value"))
        tokens.append(f"{system}|{code}")
        tokens.append(f"|{code}")
    status = resource.get("status")
    if isinstance(status, str):
        out.status = status[:32]
    out.tokens = sorted(set(tokens))
    out.refs = sorted(set(refs))
    out.category, out.sensitivity = _category(resource_type, resource, codings)
    _dates(resource_type, resource, out)

    quantity = resource.get("valueQuantity")
    if isinstance(quantity, dict) and "value" in quantity:
        try:
            value = Decimal(str(quantity["value"]))
        except InvalidOperation:
            value = None
        if value is not None and value.is_finite() and abs(value) < _QUANTITY_LIMIT:
            out.quantity_value = value
        out.quantity_code = str(quantity.get("code") or quantity.get("unit") or "")[:32]
    return out
