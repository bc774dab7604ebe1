"""The child's vaccination and checkup schedule, from the records a user
may see: the selector the handbook page and the reminder job call.

`child_schedule` reads the child's Patient (birth date, sex), their
Immunizations and their infant checkup Encounters in ONE query filtered by
`sharing.access.visible_records(user)` — so a record withheld from this
user does not count for this user — and hands them to the pure engines
(phr.vaccination_schedule, phr.checkup_schedule). It never decides access
and never audits: the caller has authorized and audited the patient
(sharing.access.access_patient). docs/decisions/0012-schedules.md.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from django.db.models import Q
from django.utils.translation import get_language

from phr import checkup_schedule, vaccination_schedule
from phr.checkup_schedule import CHECKUP_TYPE_SYSTEM, CheckupPlan, CheckupVisit
from phr.indexing import fhir_local_date
from phr.models import Patient, Provenance, Resource
from phr.vaccination_schedule import VACCINE_SYSTEM, GivenDose, SeriesPlan
from sharing.access import visible_records

DUE_STATUSES = ("upcoming", "due", "overdue")
CHECKUP_TOKENS = [f"{CHECKUP_TYPE_SYSTEM}|{c.code}" for c in checkup_schedule.CHECKUPS]
# An Immunization that says it was not given (or was a mistake) is no dose;
# an Encounter that was only planned, or called off, is no checkup held.
NOT_GIVEN = ("not-done", "entered-in-error")
NOT_HELD = ("planned", "cancelled", "entered-in-error")


@dataclass(frozen=True)
class DoseSource:
    """Where a report of a dose or a checkup came from (for "all sources shown")."""

    record_id: uuid.UUID
    origin: str  # a Provenance.Origin value
    organization: str  # the submitting organization's name, or ""
    performer: str  # the clinic named in the record (Immunization.performer), or ""
    reported_dose: int | None = None


@dataclass(frozen=True)
class DueItem:
    key: str  # stable across runs: "vaccine:hib:2", "checkup:18m" (reminder idempotency)
    kind: str  # "vaccination" | "checkup"
    label: str  # in the active language
    due_from: date  # start of the recommended window (or the earliest allowed day if later)
    due_until: date | None  # end of the recommended window, or the last eligible day
    status: str  # "upcoming" | "due" | "overdue"


@dataclass
class ChildSchedule:
    birth_date: date | None
    today: date
    vaccines: list[SeriesPlan] = field(default_factory=list)
    checkups: list[CheckupPlan] = field(default_factory=list)
    # Immunizations we could not place in the routine schedule (coded other
    # than in VACCINE_SYSTEM, e.g. JP Core YJ/HOT codes; or a vaccine outside it).
    unplaced: list[uuid.UUID] = field(default_factory=list)

    def due_items(self, *, within_days: int = 14) -> list[DueItem]:
        """What needs doing: due now, overdue, or becoming due within
        `within_days` of today; never what is complete, done, missed or no
        longer eligible. Soonest first."""
        horizon = self.today + timedelta(days=within_days)
        items: list[DueItem] = []
        for plan in self.vaccines:
            nxt = plan.next_dose
            if nxt is None or plan.status not in DUE_STATUSES or nxt.due_from > horizon:
                continue
            items.append(
                DueItem(
                    key=f"vaccine:{plan.series}:{nxt.number}",
                    kind="vaccination",
                    label=nxt.label,
                    due_from=nxt.due_from,
                    due_until=nxt.due_until,
                    status=plan.status,
                )
            )
        for checkup in self.checkups:
            if checkup.status not in DUE_STATUSES or checkup.due_from > horizon:
                continue
            items.append(
                DueItem(
                    key=f"checkup:{checkup.code}",
                    kind="checkup",
                    label=checkup.label,
                    due_from=checkup.due_from,
                    due_until=checkup.due_until,
                    status=checkup.status,
                )
            )
        items.sort(key=lambda i: (i.due_from, i.key))
        return items


def _codes(concept: Any, system: str) -> list[str]:
    if not isinstance(concept, dict):
        return []
    return [
        str(c.get("code"))
        for c in concept.get("coding") or ()
        if isinstance(c, dict) and c.get("system") == system and c.get("code")
    ]


def _organization(provenance: Provenance | None, language: str) -> str:
    org = provenance.agent_org if provenance is not None else None
    if org is None:
        return ""
    return org.name_en if (org.name_en and not language.startswith("ja")) else org.name


def _performer(content: dict[str, Any]) -> str:
    for performer in content.get("performer") or ():
        actor = performer.get("actor") if isinstance(performer, dict) else None
        if isinstance(actor, dict) and actor.get("display"):
            return str(actor["display"])
    return ""


def _dose_number(content: dict[str, Any]) -> int | None:
    for protocol in content.get("protocolApplied") or ():
        if isinstance(protocol, dict) and isinstance(protocol.get("doseNumberPositiveInt"), int):
            return int(protocol["doseNumberPositiveInt"])
    return None


def schedule_records(*, user: Any, patient: Patient) -> Any:
    """The one query: the child's Patient resource, Immunizations and
    checkup Encounters that `user` may see, with their provenance."""
    return (
        Resource.objects.filter(visible_records(user))
        .filter(
            Q(resource_type="Patient", id=patient.pk)
            | Q(resource_type="Immunization", compartments__overlap=[patient.pk])
            | Q(
                resource_type="Encounter",
                compartments__overlap=[patient.pk],
                tokens__overlap=CHECKUP_TOKENS,
            )
        )
        .select_related("provenance", "provenance__agent_org")
        .order_by("date_start", "id")
    )


def child_schedule(*, user: Any, patient: Patient, today: date) -> ChildSchedule:
    """The child's schedule on `today` (a Japanese calendar day) from the
    records visible to `user`. Without a visible birth date there is no
    schedule: the lists stay empty."""
    language = get_language() or "ja"
    birth: date | None = None
    sex: str | None = None
    given: list[GivenDose] = []
    visits: list[CheckupVisit] = []
    unplaced: list[uuid.UUID] = []
    for row in schedule_records(user=user, patient=patient):
        content = row.content or {}
        if row.resource_type == "Patient":
            birth = fhir_local_date(content.get("birthDate"))
            sex = content.get("gender") if isinstance(content.get("gender"), str) else None
            continue
        source = DoseSource(
            record_id=row.id,
            origin=row.provenance.origin if row.provenance_id else "system",
            organization=_organization(row.provenance, language),
            performer=_performer(content),
            reported_dose=_dose_number(content) if row.resource_type == "Immunization" else None,
        )
        if row.resource_type == "Encounter":
            if row.status in NOT_HELD:
                continue
            period = content.get("period") or {}
            day = fhir_local_date(period.get("start") if isinstance(period, dict) else None)
            for code in _codes_of_types(content):
                visits.append(CheckupVisit(code, day, source))
            continue
        if row.status in NOT_GIVEN or content.get("isSubpotent") is True:
            # A subpotent dose (FHIR Immunization.isSubpotent) does not count.
            continue
        day = fhir_local_date(content.get("occurrenceDateTime"))
        codes = [
            c
            for c in _codes(content.get("vaccineCode"), VACCINE_SYSTEM)
            if c in vaccination_schedule.SERIES_OF
        ]
        if day is None or not codes:
            unplaced.append(row.id)
            continue
        given.append(
            GivenDose(
                vaccine=codes[0],
                on=day,
                origin=source.origin,
                dose_number=source.reported_dose,
                source=source,
            )
        )
    schedule = ChildSchedule(birth_date=birth, today=today, unplaced=unplaced)
    if birth is None:
        return schedule
    child = vaccination_schedule.Child(birth=birth, sex=sex, given=given)
    schedule.vaccines = vaccination_schedule.plan_vaccinations(child, today)
    schedule.checkups = checkup_schedule.plan_checkups(birth, visits, today)
    return schedule


def _codes_of_types(content: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for concept in content.get("type") or ():
        out.extend(_codes(concept, CHECKUP_TYPE_SYSTEM))
    return out
