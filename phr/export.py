"""Take your data with you (issue 6, part 6): everything a family may see
of itself, as a FHIR Bundle to download, as a page to print, and through
the FHIR API as Patient/$everything.

Access is the policy point's, as everywhere: the rows come from
`sharing.access.visible_records(user, …)` — for the download and the print
page with purpose "personal" (what the user sees as herself: her own
records and her children's), for $everything with the caller's listable
grants (a clinic with a care consent gets the granted categories only).
Withheld records are filtered inside the query, so they are absent, not
blanked. Every response writes one audit row per patient it reveals
(sharing.access.audit_reveal), before the first byte leaves.

The download is a Bundle of type "collection" (FHIR R4 Bundle.type: "a set
of resources collected into a single document for ease of distribution");
$everything answers a "searchset", as its OperationDefinition says. Both
carry, beside the records, one Provenance resource per write that produced
them (who: the municipality, clinic, device or family member; when), built
from the relational provenance rows.

The download is streamed: rows are read through a server-side cursor in
chunks, ordered by provenance, and written out entry by entry, so a family
with years of device vitals never sits in memory whole. $everything pages
with the FHIR API's signed keyset cursor.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import orjson
from django.db.models import (
    Case,
    F,
    Func,
    IntegerField,
    Q,
    QuerySet,
    UUIDField,
    Value,
    When,
)
from django.utils import timezone
from django.utils.translation import get_language, gettext

from phr import selectors
from phr.fhir import fhir_instant, to_fhir
from phr.models import Patient, Provenance, Resource
from phr.selectors import kana_name, person_name
from phr.terminology import Category
from sharing.access import Purpose, audit_reveal, blocked_patients, redact_for, visible_records
from sharing.fhir import organization_reference

CHUNK = 500
PROVENANCE_NAMESPACE = uuid.UUID("0b7c1f0e-5d8a-4f53-9a7e-8e1d2c3b4a50")
ORIGIN_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/record-origin"
ACTIVITY_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/provenance-activity"
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
ACCOUNT_SYSTEM = "https://hagukumi.jp/fhir/sid/account"


# --------------------------------------------------------------------------
# Whose records: the family as the user sees it as herself
# --------------------------------------------------------------------------


def family_patient_ids(user: Any) -> list[uuid.UUID]:
    """The user's own patient and the children in her active
    guardianships (not DV-blocked) — the family page's people."""
    family = selectors.family(user=user)
    blocked = set(blocked_patients(user))
    return [pid for pid in family.patient_ids if pid not in blocked]


def export_rows(user: Any, patient_ids: list[uuid.UUID]) -> QuerySet[Resource]:
    """The family's records the user may see as herself (purpose
    personal), ordered so one write's records come together."""
    if not patient_ids:
        return Resource.objects.none()
    return (
        Resource.objects.filter(
            visible_records(user, Purpose.PERSONAL), compartments__overlap=patient_ids
        )
        .select_related("provenance", "provenance__agent_org", "provenance__agent_user")
        .order_by("provenance_id", "id")
    )


class _Unnest(Func):
    function = "unnest"
    output_field = UUIDField()


def audit_export(user: Any, rows: QuerySet[Resource], *, action: str) -> list[uuid.UUID]:
    """One audit row per patient the rows reveal, naming the categories
    revealed of each (one query, before anything is sent). Returns the
    patients."""
    pairs = (
        rows.order_by()
        .annotate(pid=_Unnest(F("compartments")))
        .values_list("pid", "category")
        .distinct()
    )
    categories: dict[uuid.UUID, set[str]] = defaultdict(set)
    for pid, category in pairs:
        found = categories[pid]
        if category:
            found.add(category)
    groups: dict[tuple[str, ...], list[uuid.UUID]] = defaultdict(list)
    for pid, cats in categories.items():
        groups[tuple(sorted(cats))].append(pid)
    for cats, pids in groups.items():
        audit_reveal(user, pids, categories=cats, action=action, purpose=Purpose.PERSONAL)
    return list(categories)


# --------------------------------------------------------------------------
# FHIR: Provenance projections and the streamed Bundle
# --------------------------------------------------------------------------


def provenance_id(provenance_pk: int, part: int = 0) -> str:
    """A Provenance's id, derived from its row (the same in every export);
    a write with more records than one chunk is sent in parts, each its own
    Provenance."""
    name = f"provenance/{provenance_pk}" + (f"/{part}" if part else "")
    return str(uuid.uuid5(PROVENANCE_NAMESPACE, name))


def _agent_who(provenance: Provenance | None) -> dict[str, Any]:
    if provenance is None:
        return {"display": "Hagukumi"}
    if provenance.agent_org is not None:
        return organization_reference(provenance.agent_org)
    if provenance.agent_user is not None:
        user = provenance.agent_user
        return {
            "identifier": {"system": ACCOUNT_SYSTEM, "value": str(user.pk)},
            "display": user.display_name or str(Provenance.Origin(provenance.origin).label),
        }
    return {"display": str(Provenance.Origin(provenance.origin).label)}


def version_reference(row: Resource) -> str:
    return f"{row.resource_type}/{row.pk}/_history/{row.version}"


def provenance_resource(
    provenance: Provenance, targets: list[str], *, part: int = 0
) -> dict[str, Any]:
    """The FHIR Provenance of one write (a provenance row), targeting the
    records of it that are being sent (version references)."""
    origin = provenance.origin
    activity = provenance.activity
    recorded = provenance.recorded_at
    return {
        "resourceType": "Provenance",
        "id": provenance_id(provenance.pk, part),
        "target": [{"reference": target} for target in targets],
        "recorded": fhir_instant(recorded),
        "activity": {"coding": [{"system": ACTIVITY_SYSTEM, "code": activity}]},
        "agent": [
            {
                "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "author"}]},
                "role": [
                    {
                        "coding": [
                            {
                                "system": ORIGIN_SYSTEM,
                                "code": origin,
                                "display": str(Provenance.Origin(origin).label),
                            }
                        ]
                    }
                ],
                "who": _agent_who(provenance),
            }
        ],
    }


def _entry(base: str, resource: dict[str, Any], mode: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "fullUrl": f"{base}{resource['resourceType']}/{resource['id']}",
        "resource": resource,
    }
    if mode:
        entry["search"] = {"mode": mode}
    return entry


def _resource_json(user: Any, row: Resource) -> dict[str, Any]:
    resource = to_fhir(row)
    return redact_for(user, resource) if row.resource_type == "Patient" else resource


def bundle_stream(user: Any, rows: QuerySet[Resource], *, base: str) -> Iterator[bytes]:
    """A FHIR Bundle (type collection) of `rows` and their Provenance, as
    JSON bytes, written entry by entry from a server-side cursor."""
    now = timezone.now()
    head = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": fhir_instant(now)},
        "type": "collection",
        "timestamp": fhir_instant(now),
    }
    yield orjson.dumps(head)[:-1]
    opened = False

    def entry(resource: dict[str, Any]) -> bytes:
        nonlocal opened
        start = b"," if opened else b',"entry":['
        opened = True
        return start + orjson.dumps(_entry(base, resource))

    # Rows come ordered by provenance: each record is written at once, and
    # its write's Provenance after the write's last record — or after every
    # CHUNK of them, so a write of thousands of records (a device import)
    # never gathers in memory.
    provenance: Provenance | None = None
    targets: list[str] = []
    part = 0
    for row in rows.iterator(chunk_size=CHUNK):
        if provenance is not None and (row.provenance_id != provenance.pk or len(targets) >= CHUNK):
            yield entry(provenance_resource(provenance, targets, part=part))
            part = part + 1 if row.provenance_id == provenance.pk else 0
            targets = []
        provenance = row.provenance
        yield entry(_resource_json(user, row))
        targets.append(version_reference(row))
    if provenance is not None and targets:
        yield entry(provenance_resource(provenance, targets, part=part))
    yield b"]}" if opened else b"}"


# --------------------------------------------------------------------------
# $everything: one patient's records, paged
# --------------------------------------------------------------------------


@dataclass
class EverythingPage:
    rows: list[Resource]
    total: int
    next_position: dict[str, Any] | None


def everything_page(
    user: Any,
    *,
    patient_id: uuid.UUID,
    since: datetime | None,
    types: list[str],
    count: int,
    after: dict[str, Any] | None,
) -> EverythingPage:
    """A page of the records of one patient `user` may see (any listable
    purpose, as the FHIR API's searches), newest first, with the total —
    both inside the access filter. Raises ValueError for a broken cursor."""
    matches = Resource.objects.filter(visible_records(user), compartments__overlap=[patient_id])
    if since is not None:
        matches = matches.filter(last_updated__gte=since)
    if types:
        matches = matches.filter(resource_type__in=types)
    total = matches.count()
    if count == 0:
        return EverythingPage([], total, None)
    page = matches.select_related(
        "provenance", "provenance__agent_org", "provenance__agent_user"
    ).order_by("-last_updated", "-id")
    if after is not None:
        moment = datetime.fromisoformat(after["lu"])
        last_id = uuid.UUID(after["id"])
        page = page.filter(Q(last_updated__lt=moment) | Q(last_updated=moment, id__lt=last_id))
    rows = list(page[: count + 1])
    next_position = None
    if len(rows) > count:
        rows = rows[:count]
        next_position = {"lu": rows[-1].last_updated.isoformat(), "id": str(rows[-1].id)}
    return EverythingPage(rows, total, next_position)


def everything_entries(user: Any, rows: list[Resource], *, base: str) -> list[dict[str, Any]]:
    """Search entries of the page's records ("match") and of their
    Provenance ("include")."""
    entries = [_entry(base, _resource_json(user, row), "match") for row in rows]
    groups: dict[int, list[Resource]] = defaultdict(list)
    for row in rows:
        groups[row.provenance_id].append(row)
    for group in groups.values():
        targets = [version_reference(row) for row in group]
        entries.append(_entry(base, provenance_resource(group[0].provenance, targets), "include"))
    return entries


# --------------------------------------------------------------------------
# The print page: per person, per category, Japanese dates, sources
# --------------------------------------------------------------------------

CATEGORY_ORDER = [*Category.values, ""]


@dataclass(frozen=True)
class PrintEntry:
    day: date | None
    precision: str
    time: str
    label: str
    value: str
    source: str
    organization: str


@dataclass
class PrintSection:
    category: str
    label: str
    entries: list[PrintEntry] = field(default_factory=list)


@dataclass
class PrintPerson:
    patient_id: uuid.UUID
    name: str
    kana: str
    birth_date: date | None
    sex: str
    sections: list[PrintSection] = field(default_factory=list)


def _category_label(category: str) -> str:
    if category in Category.values:
        return str(Category(category).label)
    return gettext("other records")


def print_people(user: Any, patient_ids: list[uuid.UUID]) -> list[PrintPerson]:
    """What the print page shows: each person's visible records (purpose
    personal), by category, oldest first as a handbook reads."""
    language = get_language() or "ja"
    contents = selectors.patient_resources(
        user=user, patient_ids=patient_ids, purpose=Purpose.PERSONAL
    )
    people = []
    for pid in patient_ids:
        content = contents.get(pid)
        if content is None:
            continue
        person = PrintPerson(
            patient_id=pid,
            name=person_name(content),
            kana=kana_name(content),
            birth_date=selectors.birth_date_of(content),
            sex=str(content.get("gender") or ""),
        )
        sections: dict[str, PrintSection] = {}
        patient = Patient(pk=pid)
        rows = selectors.timeline_queryset(
            user=user, patient=patient, purpose=Purpose.PERSONAL
        ).order_by(
            # Oldest first, as a handbook reads; within a day the checkup or
            # visit before what was found at it (as the timeline orders it).
            F("date_start").asc(nulls_first=True),
            Case(
                When(resource_type="Encounter", then=Value(0)),
                When(resource_type="EpisodeOfCare", then=Value(1)),
                default=Value(2),
                output_field=IntegerField(),
            ),
            "last_updated",
            "id",
        )
        for row in rows.iterator(chunk_size=CHUNK):
            entry = selectors._entry(row, language)
            day, precision = selectors._day_key(row)
            key = row.category if row.category in Category.values else ""
            section = sections.setdefault(key, PrintSection(key, _category_label(key)))
            section.entries.append(
                PrintEntry(
                    day=day,
                    precision=precision,
                    time=entry.time,
                    label=entry.label,
                    value=entry.value,
                    source=entry.source_label,
                    organization=entry.organization,
                )
            )
        person.sections = [sections[k] for k in CATEGORY_ORDER if k in sections]
        people.append(person)
    return people
