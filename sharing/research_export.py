"""The research release builder (docs/decisions/0022-research.md).

The job `research.export` loads a ResearchExport, asks sharing.research
whether the export is still allowed, takes the cohort from the one
access-policy point (sharing.access.research_cohort) and builds the
release with build_release(): CSV tables, FHIR NDJSON in the Bulk Data
layout, a release report and a zip of them, in a fresh `<dir>.partial-…`
folder renamed into place at the end, so nothing half-written is served.

How a release is built:

1. The persons (small: one row per person) are read into Python — only
   kind, sex, birth date, the municipality of residence and the child's
   birth items — and k-anonymized by global recoding (sharing.anonymize).
2. The released persons (pseudonym, birth date, kind, categories), their
   pregnancies (due date) and the whitelist of items go into temporary
   tables.
3. Each event table is one SQL query over phr_resource joined to them,
   computing ages and gestational weeks in SQL, run once into a temporary
   table (on the server's disk, ordered by pseudonym); the home vitals,
   most of a release's rows, are aggregated per week already there (count,
   sum, min, max per calendar year), so later steps read tens of thousands
   of weekly rows, not every reading. The (weeks, calendar
   year) pairs of every person are streamed once through the date floor,
   which writes the pairs whose year must be blanked into another
   temporary table; then each table is streamed with COPY … TO STDOUT
   straight into its file (CSV, and NDJSON lines concatenated as JSON text
   in SQL), never held in Python's memory.
4. Every file is hashed by re-reading it in chunks; the report and the zip
   close the release.

Only whitelisted fields are read into rows: codes, numbers, dates turned
into weeks. Names, kana, identifiers, addresses, notes and the store's ids
never reach a query's select list.
"""

# The SQL below is assembled from this module's own constants (item keys,
# code systems, the time zone setting); every value from a request or the
# data is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone, translation
from django.utils.translation import gettext

from phr import terminology
from sharing import anonymize

logger = logging.getLogger(__name__)

JOB_KIND = "research.export"

LOCAL = terminology.LOCAL
LOINC = terminology.LOINC
UCUM = terminology.UCUM
VACCINE_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/vaccine"
CHECKUP_TYPE_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/infant-checkup"
EPISODE_TYPE_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/episode-type"
EXTENSION = "https://hagukumi.jp/fhir/StructureDefinition/research-"

# Items that never leave: free text, dates, and the birth items that are
# quasi-identifiers (released only banded, in persons.csv).
TEXT_UNITS = frozenset({"text", "date"})
BIRTH_ITEMS = ("birth_weight", "gestational_age", "gestational_age_days")
PREGNANCY_ITEMS = ("gestational_age", "gestational_age_days", "edd")

CSV_COLUMNS: dict[str, tuple[str, ...]] = {
    "persons": (
        "pid",
        "kind",
        "sex",
        "birth_ym",
        "area",
        "birth_weight_band",
        "gestational_weeks_at_birth",
        "babies",
    ),
    "pregnancies": (
        "pid",
        "pregnancy_no",
        "calendar_year",
        "outcome",
        "gestational_weeks_at_delivery",
        "babies",
        "delivery_mode",
    ),
    "prenatal_visits": (
        "pid",
        "pregnancy_no",
        "gestational_weeks",
        "calendar_year",
        "item",
        "value",
        "unit",
    ),
    "infant_checkups": (
        "pid",
        "age_weeks",
        "calendar_year",
        "checkup",
        "item",
        "value",
        "unit",
    ),
    "vaccinations": ("pid", "vaccine", "dose", "age_weeks", "calendar_year"),
    "vitals_weekly": (
        "pid",
        "item",
        "unit",
        "age_weeks",
        "gestational_weeks",
        "calendar_year",
        "n",
        "mean",
        "min",
        "max",
    ),
}


class CohortTooSmall(Exception):
    """k cannot be reached: the export is refused with this message."""


# --------------------------------------------------------------------------
# Persons and pregnancies (small, in Python)
# --------------------------------------------------------------------------


@dataclass
class Pregnancy:
    mother: uuid.UUID
    start: date | None
    end: date | None
    active: bool
    due: date | None = None
    delivered_on: date | None = None
    weeks_at_delivery: int | None = None
    babies: int | None = None
    delivery_mode: str = ""
    number: int = 0
    # the date floor blanked the calendar year of this row
    year_blanked: bool = False

    @property
    def lmp(self) -> date | None:
        return anonymize.last_menstrual_period(self.due) if self.due else self.start

    @property
    def window(self) -> tuple[date, date] | None:
        """The days whose events belong to this pregnancy."""
        lmp = self.lmp
        if lmp is None:
            return None
        first = min(lmp, self.start) if self.start else lmp
        last = self.delivered_on or self.end or lmp + timedelta(days=315)
        return first, max(last, first)

    @property
    def outcome(self) -> str:
        if self.delivered_on is not None:
            return "delivered"
        return "ongoing" if self.active else "ended"

    @property
    def event(self) -> tuple[int, int] | None:
        """(weeks, year) this row releases: the delivery, else the start."""
        if self.delivered_on is not None and self.weeks_at_delivery is not None:
            return self.weeks_at_delivery, self.delivered_on.year
        if self.lmp is not None:
            return 0, self.lmp.year
        return None


@dataclass
class Person:
    patient_id: uuid.UUID
    kind: str  # mother | child
    sex: str
    birth: date
    municipality: str
    categories: frozenset[str]
    birth_weight: int | None = None
    gestational_weeks: int | None = None
    babies: int | None = None
    pregnancies: list[Pregnancy] = field(default_factory=list)
    pid: str = ""

    def qi(self) -> anonymize.QiRecord:
        return anonymize.QiRecord(
            key=self.patient_id,
            kind=self.kind,
            sex=self.sex,
            birth_date=self.birth,
            municipality=self.municipality,
            birth_weight=self.birth_weight,
            gestational_weeks=self.gestational_weeks,
            babies=self.babies,
            pregnancies=tuple(
                (p.weeks_at_delivery, p.babies)
                for p in self.pregnancies
                if "pregnancy" in self.categories
            ),
        )


SEXES = frozenset({"male", "female", "other", "unknown"})


def _date(text: Any) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(str(text)[:10])
    except ValueError:
        return None


def _tz() -> str:
    return settings.TIME_ZONE


def _day_sql(column: str = "r.date_start") -> str:
    return f"({column} AT TIME ZONE '{_tz()}')::date"


def _load_persons(
    cohort: dict[uuid.UUID, frozenset[str]],
    *,
    municipality_ids: list[int],
    at: datetime,
) -> tuple[list[Person], int]:
    """The cohort's persons with a birth date: kind, sex, birth date,
    municipality of residence and (children) the birth items. Returns the
    persons and how many had no birth date (left out)."""
    ids = [str(i) for i in cohort]
    today = timezone.localdate(at)
    with connection.cursor() as cur:
        cur.execute(
            "SELECT pt.id, pt.kind, res.content->>'gender', res.content->>'birthDate' "
            "FROM phr_patient pt JOIN phr_resource res ON res.id = pt.id "
            "AND res.resource_type = 'Patient' AND NOT res.deleted "
            "WHERE pt.id = ANY(%s::uuid[]) AND pt.merged_into_id IS NULL",
            [ids],
        )
        rows = cur.fetchall()
        cur.execute(
            "SELECT DISTINCT ON (r.patient_id) r.patient_id, o.code "
            "FROM phr_residency r JOIN phr_organization o ON o.id = r.municipality_id "
            "WHERE r.patient_id = ANY(%s::uuid[]) AND r.valid_from <= %s "
            "ORDER BY r.patient_id, (r.municipality_id = ANY(%s)) DESC, "
            "(r.valid_to IS NULL OR r.valid_to >= %s) DESC, r.valid_from DESC",
            [ids, today, municipality_ids or [0], today],
        )
        municipality = {row[0]: row[1] for row in cur.fetchall()}
    persons: list[Person] = []
    missing = 0
    for patient_id, kind, gender, birth_text in rows:
        birth = _date(birth_text)
        if birth is None:
            missing += 1
            continue
        persons.append(
            Person(
                patient_id=patient_id,
                kind="child" if kind == "child" else "mother",
                sex=gender if gender in SEXES else "unknown",
                birth=birth,
                municipality=municipality.get(patient_id, ""),
                categories=cohort[patient_id],
            )
        )
    # the birth items are the child's infant_checkups records
    _load_birth_items(
        [p for p in persons if p.kind == "child" and "infant_checkups" in p.categories]
    )
    return persons, missing


def _item_token(key: str) -> str:
    coding = terminology.item(key).coding
    return f"{coding['system']}|{coding['code']}"


def _load_birth_items(children: list[Person]) -> None:
    """Birth weight, gestational weeks at birth (the child's own records,
    category infant_checkups) and the number of babies of the birth (the
    mother's delivery record, found through the child's guardians)."""
    if not children:
        return
    by_id = {p.patient_id: p for p in children}
    ids = [str(i) for i in by_id]
    with connection.cursor() as cur:
        cur.execute(
            "SELECT DISTINCT ON (s.patient_id, r.tokens @> ARRAY[%s]) s.patient_id, "
            "r.tokens @> ARRAY[%s], "
            "(r.content->'valueQuantity'->>'value')::numeric "
            "FROM phr_resource r CROSS JOIN LATERAL unnest(r.compartments) AS s(patient_id) "
            "WHERE r.resource_type = 'Observation' AND NOT r.deleted "
            "AND r.category = 'infant_checkups' AND s.patient_id = ANY(%s::uuid[]) "
            "AND r.tokens && ARRAY[%s, %s] "
            "AND jsonb_typeof(r.content->'valueQuantity'->'value') = 'number' "
            "ORDER BY s.patient_id, r.tokens @> ARRAY[%s], r.date_start",
            [
                _item_token("birth_weight"),
                _item_token("birth_weight"),
                ids,
                _item_token("birth_weight"),
                _item_token("gestational_age"),
                _item_token("birth_weight"),
            ],
        )
        for patient_id, is_weight, value in cur.fetchall():
            if is_weight:
                by_id[patient_id].birth_weight = int(value)
            else:
                by_id[patient_id].gestational_weeks = int(value)
        # An Observation's compartment is its one subject (phr/indexing.py):
        # joined by equality. The value's type is tested in the select list,
        # not the WHERE: a condition on a JSON function's result is guessed
        # to keep 0.5% of rows, and on that guess the planner tested every
        # mother against every delivery record in a nested loop (14 s for
        # 5,000 families; a hash join takes 30 ms).
        cur.execute(
            "SELECT g.child_id, " + _day_sql() + ", "
            "CASE WHEN jsonb_typeof(r.content->'valueInteger') = 'number' "
            "THEN (r.content->>'valueInteger')::int END "
            "FROM phr_resource r JOIN phr_patient m ON m.id = r.compartments[1] "
            "JOIN phr_guardianship g ON g.guardian_id = m.account_id "
            "WHERE r.resource_type = 'Observation' AND NOT r.deleted "
            "AND r.tokens @> ARRAY[%s] AND g.child_id = ANY(%s::uuid[])",
            [_item_token("birth_count"), ids],
        )
        for child_id, day, count in cur.fetchall():
            child = by_id[child_id]
            if count is not None and day == child.birth:
                child.babies = count


def _load_pregnancies(mothers: list[Person], *, period: tuple[date, date]) -> None:
    """Each mother's pregnancies within the period, with the due date (on
    the episode, else the latest estimate recorded during it, else the
    start + 280 days) and the delivery (gestational weeks, babies, mode),
    numbered 1, 2, … in order."""
    from phr.selectors import _due_date_in_extensions

    if not mothers:
        return
    by_id = {p.patient_id: p for p in mothers}
    ids = [str(i) for i in by_id]
    found: dict[uuid.UUID, list[Pregnancy]] = {}
    with connection.cursor() as cur:
        cur.execute(
            "SELECT r.content->'patient'->>'reference', r.status, "
            "r.content->'period'->>'start', r.content->'period'->>'end', "
            "r.content->'extension' "
            "FROM phr_resource r CROSS JOIN LATERAL unnest(r.compartments) AS s(patient_id) "
            "WHERE r.resource_type = 'EpisodeOfCare' AND NOT r.deleted "
            "AND s.patient_id = ANY(%s::uuid[]) "
            'AND r.content->\'type\' @> \'[{"coding": [{"code": "pregnancy"}]}]\'::jsonb',
            [ids],
        )
        for reference, status, start, end, extension in cur.fetchall():
            try:
                mother = uuid.UUID(str(reference or "").removeprefix("Patient/"))
            except ValueError:
                continue
            if mother not in by_id:
                continue
            content = {"extension": extension if isinstance(extension, list) else []}
            found.setdefault(mother, []).append(
                Pregnancy(
                    mother=mother,
                    start=_date(start),
                    end=_date(end),
                    active=status == "active",
                    due=_due_date_in_extensions(content),
                )
            )
        cur.execute(
            "SELECT s.patient_id, " + _day_sql() + ", r.tokens, "
            "r.content->>'valueDateTime', (r.content->'valueQuantity'->>'value')::numeric, "
            "r.content->>'valueInteger', "
            "r.content->'valueCodeableConcept'->'coding'->0->>'code' "
            "FROM phr_resource r CROSS JOIN LATERAL unnest(r.compartments) AS s(patient_id) "
            "WHERE r.resource_type = 'Observation' AND NOT r.deleted "
            "AND r.category = 'pregnancy' AND s.patient_id = ANY(%s::uuid[]) "
            "AND r.tokens && %s ORDER BY r.date_start",
            [
                ids,
                [
                    _item_token(k)
                    for k in ("edd", "gestational_age", "birth_count", "delivery_mode")
                ],
            ],
        )
        observations = cur.fetchall()
    tokens = {_item_token(k): k for k in ("edd", "gestational_age", "birth_count", "delivery_mode")}
    edd: dict[uuid.UUID, list[tuple[date, date]]] = {}
    # each mother's delivery items (one list per mother: looking through
    # everyone's for each mother cost 12 s for 5,000 mothers)
    delivery: dict[uuid.UUID, list[tuple[date, str, Any]]] = {}
    for mother, day, row_tokens, due_text, quantity, integer, code in observations:
        key = next((tokens[t] for t in row_tokens if t in tokens), None)
        if key is None or day is None:
            continue
        if key == "edd":
            due = _date(due_text)
            if due:
                edd.setdefault(mother, []).append((day, due))
        elif key == "gestational_age" and quantity is not None:
            delivery.setdefault(mother, []).append((day, key, int(quantity)))
        elif key == "birth_count" and integer is not None:
            delivery.setdefault(mother, []).append((day, key, int(integer)))
        elif key == "delivery_mode" and code:
            delivery.setdefault(mother, []).append((day, key, str(code)))
    for mother, pregnancies in found.items():
        for pregnancy in pregnancies:
            if pregnancy.due is None:
                during = [
                    due
                    for recorded, due in edd.get(mother, [])
                    if (pregnancy.start is None or recorded >= pregnancy.start)
                    and (pregnancy.end is None or recorded <= pregnancy.end)
                ]
                if during:
                    pregnancy.due = during[-1]
                elif pregnancy.start:
                    pregnancy.due = pregnancy.start + timedelta(days=anonymize.FULL_TERM_DAYS)
        for day, key, value in delivery.get(mother, []):
            for pregnancy in pregnancies:
                window = pregnancy.window
                if window is None or not window[0] <= day <= window[1] + timedelta(days=7):
                    continue
                pregnancy.delivered_on = day
                if key == "gestational_age":
                    pregnancy.weeks_at_delivery = value
                elif key == "birth_count":
                    pregnancy.babies = value
                else:
                    pregnancy.delivery_mode = value
                break
        kept = []
        for pregnancy in pregnancies:
            window = pregnancy.window
            if window is None or window[0] > period[1] or window[1] < period[0]:
                continue
            if pregnancy.delivered_on and pregnancy.weeks_at_delivery is None:
                lmp = pregnancy.lmp
                if lmp is not None:
                    pregnancy.weeks_at_delivery = anonymize.completed_weeks(
                        lmp, pregnancy.delivered_on
                    )
            kept.append(pregnancy)
        kept.sort(key=lambda p: p.lmp or date.min)
        for number, pregnancy in enumerate(kept, start=1):
            pregnancy.number = number
        by_id[mother].pregnancies = kept


# --------------------------------------------------------------------------
# The event tables (SQL)
# --------------------------------------------------------------------------

# An Observation's value and each of its components' values (x.v), each
# with its code (x.c), joined to the items a release may hold (i).
ITEM_ROWS = """(
        SELECT r.content AS v, r.content->'code'->'coding'->0 AS c
        UNION ALL
        SELECT comp, comp->'code'->'coding'->0
        FROM jsonb_array_elements(CASE WHEN jsonb_typeof(r.content->'component') = 'array'
                                       THEN r.content->'component' ELSE '[]'::jsonb END) comp
    ) x
    JOIN rx_item i ON i.token = (x.c->>'system') || '|' || (x.c->>'code')"""

ITEM_LATERAL = f"""
CROSS JOIN LATERAL (
    SELECT i.key, i.system AS item_system, i.code AS item_code, i.code_json,
           CASE WHEN x.v ? 'valueQuantity' THEN (x.v->'valueQuantity'->'value')::text
                WHEN x.v ? 'valueInteger' THEN (x.v->'valueInteger')::text
                WHEN x.v ? 'valueBoolean' THEN (x.v->'valueBoolean')::text
                ELSE (x.v->'valueCodeableConcept'->'coding'->0->'code')::text
           END AS value_json,
           coalesce(x.v->'valueQuantity'->>'value', x.v->>'valueInteger',
                    x.v->'valueCodeableConcept'->'coding'->0->>'code',
                    x.v->>'valueBoolean') AS value,
           x.v->'valueQuantity'->>'comparator' AS comparator,
           CASE WHEN x.v ? 'valueQuantity' THEN coalesce(x.v->'valueQuantity'->>'code', i.unit)
                WHEN x.v ? 'valueInteger' THEN i.unit ELSE '' END AS unit,
           x.v->'valueCodeableConcept'->'coding'->0->>'system' AS value_system,
           CASE WHEN x.v ? 'valueQuantity' THEN 'q' WHEN x.v ? 'valueInteger' THEN 'i'
                WHEN x.v ? 'valueBoolean' THEN 'b' ELSE 'c' END AS vtype
    FROM {ITEM_ROWS}
) m
"""

# An Observation's or Immunization's compartment is its one subject
# (phr/indexing.py): a hash join on it, no unnest.
SUBJECT_JOIN = """
JOIN rx_person p ON p.patient_id = r.compartments[1]
CROSS JOIN LATERAL (SELECT {day} AS day) d
"""


def _exclude(keys: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{k}'" for k in keys) + ")"


def _prenatal_base() -> str:
    return f"""
SELECT p.patient_id, p.pid, g.pregnancy_no, (d.day - g.lmp) / 7 AS weeks,
       extract(year FROM d.day)::int AS year, m.*
FROM phr_resource r
{SUBJECT_JOIN.format(day=_day_sql())}
JOIN rx_preg g ON g.patient_id = p.patient_id AND d.day BETWEEN g.first_day AND g.last_day
                AND d.day >= g.lmp
{ITEM_LATERAL}
WHERE r.resource_type = 'Observation' AND NOT r.deleted AND r.sensitivity = 'normal'
  AND r.category = 'prenatal_checkups' AND 'prenatal_checkups' = ANY(p.cats)
  AND r.date_start >= %(period_from)s AND r.date_start < %(period_until)s
  AND m.value IS NOT NULL AND m.value_json IS NOT NULL AND m.key NOT IN {_exclude(PREGNANCY_ITEMS)}
"""


def _infant_base() -> str:
    return f"""
SELECT p.patient_id, p.pid, 0 AS pregnancy_no, (d.day - p.birth) / 7 AS weeks,
       extract(year FROM d.day)::int AS year,
       CASE WHEN ck.code IS NOT NULL THEN ck.code
            WHEN d.day = p.birth THEN 'birth' ELSE '' END AS checkup,
       m.*
FROM phr_resource r
{SUBJECT_JOIN.format(day=_day_sql())}
LEFT JOIN rx_checkup ck ON ck.ref = r.content->'encounter'->>'reference'
{ITEM_LATERAL}
WHERE r.resource_type = 'Observation' AND NOT r.deleted AND r.sensitivity = 'normal'
  AND r.category = 'infant_checkups' AND 'infant_checkups' = ANY(p.cats)
  AND p.kind = 'child' AND d.day >= p.birth
  AND r.date_start >= %(period_from)s AND r.date_start < %(period_until)s
  AND m.value IS NOT NULL AND m.value_json IS NOT NULL AND m.key NOT IN {_exclude(BIRTH_ITEMS)}
"""


def _vaccination_base() -> str:
    return f"""
SELECT p.patient_id, p.pid, 0 AS pregnancy_no, (d.day - p.birth) / 7 AS weeks,
       extract(year FROM d.day)::int AS year,
       r.content->'vaccineCode'->'coding'->0->>'code' AS vaccine,
       -- the dose as a number only (doseNumberString is free text)
       coalesce(r.content->'protocolApplied'->0->>'doseNumberPositiveInt', '') AS dose
FROM phr_resource r
{SUBJECT_JOIN.format(day=_day_sql())}
WHERE r.resource_type = 'Immunization' AND NOT r.deleted AND r.sensitivity = 'normal'
  AND r.category = 'vaccinations' AND 'vaccinations' = ANY(p.cats)
  AND coalesce(r.content->>'status', 'completed') = 'completed'
  AND r.content->'vaccineCode'->'coding'->0->>'system' = '{VACCINE_SYSTEM}'
  AND d.day >= p.birth AND r.date_start >= %(period_from)s AND r.date_start < %(period_until)s
"""


# The home vitals' items: a number (valueQuantity without a comparator, or
# valueInteger) and its unit; only what the weekly aggregate needs is read
# from each reading, which is most of a release's rows.
VITALS_LATERAL = f"""
CROSS JOIN LATERAL (
    SELECT i.key, i.code_json,
           coalesce(x.v->'valueQuantity'->>'value', x.v->>'valueInteger') AS value,
           CASE WHEN x.v ? 'valueQuantity' THEN coalesce(x.v->'valueQuantity'->>'code', i.unit)
                ELSE i.unit END AS unit
    FROM {ITEM_ROWS}
    WHERE CASE WHEN x.v ? 'valueQuantity' THEN x.v->'valueQuantity'->>'comparator' IS NULL
               ELSE x.v ? 'valueInteger' END
) m
"""


def _vitals_base() -> str:
    """The readings aggregated per person, item, unit, pregnancy, week and
    calendar year (count, sum, min, max): the release shows only weekly
    aggregates, and the (week, year) pairs the date floor sees are the same
    as the readings'. The release's grouping merges these groups again
    where the date floor blanked a year (sums and counts add up exactly)."""
    return f"""
SELECT p.patient_id, p.pid, coalesce(g.pregnancy_no, 0) AS pregnancy_no,
       CASE WHEN g.pregnancy_no IS NULL THEN (d.day - p.birth) / 7
            ELSE (d.day - g.lmp) / 7 END AS weeks,
       extract(year FROM d.day)::int AS year, m.key, m.code_json, m.unit,
       count(*) AS n, sum(m.value::numeric) AS total,
       min(m.value::numeric) AS min, max(m.value::numeric) AS max
FROM phr_resource r
{SUBJECT_JOIN.format(day=_day_sql())}
LEFT JOIN rx_preg g ON g.patient_id = p.patient_id AND d.day BETWEEN g.first_day AND g.last_day
                    AND d.day >= g.lmp
{VITALS_LATERAL}
WHERE r.resource_type = 'Observation' AND NOT r.deleted AND r.sensitivity = 'normal'
  AND r.category = 'vitals' AND 'vitals' = ANY(p.cats) AND d.day >= p.birth
  AND r.date_start >= %(period_from)s AND r.date_start < %(period_until)s
  AND m.value ~ '^-?[0-9]+(\\.[0-9]+)?$'
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
"""


BLANK_JOIN = """
LEFT JOIN rx_blank b ON b.patient_id = e.patient_id AND b.pregnancy_no = e.pregnancy_no
                     AND b.weeks = e.weeks AND b.year = e.year
"""
YEAR = "CASE WHEN b.patient_id IS NULL THEN e.year END"
# rx_e_vitals holds (n, total, min, max) per week and calendar year; a blanked
# year merges a week's groups, so the aggregates are combined, not averaged
VITALS_AGGREGATES = (
    "sum(e.n) AS n, round(sum(e.total) / sum(e.n), 2) AS mean, min(e.min) AS min, max(e.max) AS max"
)


def _csv_sql(table: str) -> str:
    if table == "prenatal_visits":
        return f"""
SELECT e.pid, e.pregnancy_no, e.weeks AS gestational_weeks, {YEAR} AS calendar_year,
       e.key AS item, coalesce(e.comparator, '') || e.value AS value, e.unit
FROM rx_e_prenatal e {BLANK_JOIN}"""
    if table == "infant_checkups":
        return f"""
SELECT e.pid, e.weeks AS age_weeks, {YEAR} AS calendar_year, e.checkup,
       e.key AS item, coalesce(e.comparator, '') || e.value AS value, e.unit
FROM rx_e_infant e {BLANK_JOIN}"""
    if table == "vaccinations":
        return f"""
SELECT e.pid, e.vaccine, e.dose, e.weeks AS age_weeks, {YEAR} AS calendar_year
FROM rx_e_vaccination e {BLANK_JOIN}"""
    if table == "vitals_weekly":
        return f"""
SELECT e.pid, e.key AS item, e.unit,
       CASE WHEN e.pregnancy_no = 0 THEN e.weeks END AS age_weeks,
       CASE WHEN e.pregnancy_no > 0 THEN e.weeks END AS gestational_weeks,
       {YEAR} AS calendar_year, {VITALS_AGGREGATES}
FROM rx_e_vitals e {BLANK_JOIN}
GROUP BY e.pid, e.key, e.unit, e.pregnancy_no, e.weeks, {YEAR}
ORDER BY e.pid, e.key, e.unit, e.pregnancy_no, e.weeks, calendar_year"""
    raise ValueError(table)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _sql_text(text: str) -> str:
    """A SQL string literal of our own constant text."""
    return "'" + text.replace("'", "''") + "'"


# The NDJSON lines are concatenated JSON text: a million json_build_object
# calls cost several times more. Every piece from the data is JSON already
# (jsonb's own text of a value, the numbers of the aggregates, the weeks)
# or passes through to_json; the rest are this module's constants.


def _ext_sql(name: str, kind: str, json_text: str) -> str:
    head = _sql_text(_json({"url": f"{EXTENSION}{name}"})[:-1] + f',"{kind}":')
    return f"{head} || {json_text} || '}}'"


def _ext_list(parts: list[tuple[str, str, str, str | None]]) -> str:
    """The JSON text of an array of extensions (name, value[x], JSON text of
    the value, condition); those whose condition is false are left out."""
    if parts[0][3] is not None:
        raise ValueError("the first extension is always present")
    pieces = []
    for index, (name, kind, value, condition) in enumerate(parts):
        comma = "','" if index else "''"
        one = f"{comma} || {_ext_sql(name, kind, value)}"
        pieces.append(
            f"({one})" if condition is None else f"(CASE WHEN {condition} THEN {one} ELSE '' END)"
        )
    # a leading comma is left when the first part is out: the first is always in
    return "'[' || " + " || ".join(pieces) + " || ']'"


UNIT = "to_json(e.unit)::text"

VALUE_SQL = f"""
CASE e.vtype
  WHEN 'q' THEN '"valueQuantity":{{"value":' || e.value_json
       || CASE WHEN e.comparator IS NULL THEN ''
               ELSE ',"comparator":' || to_json(e.comparator)::text END
       || ',"unit":' || {UNIT} || ',"system":"{UCUM}","code":' || {UNIT} || '}}'
  WHEN 'i' THEN '"valueInteger":' || e.value_json
  WHEN 'b' THEN '"valueBoolean":' || e.value_json
  ELSE '"valueCodeableConcept":{{"coding":[{{'
       || CASE WHEN e.value_system IS NULL THEN ''
               ELSE '"system":' || to_json(e.value_system)::text || ',' END
       || '"code":' || e.value_json || '}}]}}'
END"""


def _observation_json(category: str, tag: str, extensions: str) -> str:
    category_json = _sql_text(
        _json([{"coding": [{"system": terminology.CATEGORY_SYSTEM, "code": category}]}])
    )
    return f"""
'{{"resourceType":"Observation","id":"' || e.pid || '-{tag}-' || row_number() OVER ()
|| '","status":"final","category":' || {category_json}
|| ',"code":' || e.code_json
|| ',"subject":{{"reference":"Patient/' || e.pid || '"}}'
|| ',"extension":' || {extensions}
|| ',' || {VALUE_SQL} || '}}'"""


def _ndjson_sql(part: str) -> str:
    year = ("calendar-year", "valueInteger", f"({YEAR})::text", "b.patient_id IS NULL")
    if part == "prenatal":
        ext = _ext_list(
            [
                ("pregnancy-number", "valueInteger", "e.pregnancy_no::text", None),
                ("gestational-weeks", "valueInteger", "e.weeks::text", None),
                year,
            ]
        )
        select = _observation_json("prenatal_checkups", "pv", ext)
        return f"SELECT {select} FROM rx_e_prenatal e {BLANK_JOIN}"
    if part == "infant":
        ext = _ext_list(
            [
                ("age-weeks", "valueInteger", "e.weeks::text", None),
                year,
                ("checkup", "valueCode", "to_json(e.checkup)::text", "e.checkup <> ''"),
            ]
        )
        select = _observation_json("infant_checkups", "ic", ext)
        return f"SELECT {select} FROM rx_e_infant e {BLANK_JOIN}"
    if part == "vitals":
        ext = _ext_list(
            [
                ("weekly-count", "valueInteger", "e.n::text", None),
                ("weekly-min", "valueDecimal", "e.min::text", None),
                ("weekly-max", "valueDecimal", "e.max::text", None),
                ("age-weeks", "valueInteger", "e.weeks::text", "e.pregnancy_no = 0"),
                ("gestational-weeks", "valueInteger", "e.weeks::text", "e.pregnancy_no > 0"),
                ("calendar-year", "valueInteger", "e.year::text", "e.year IS NOT NULL"),
            ]
        )
        category_json = _sql_text(
            _json([{"coding": [{"system": terminology.CATEGORY_SYSTEM, "code": "vitals"}]}])
        )
        return f"""
SELECT '{{"resourceType":"Observation","id":"' || e.pid || '-vw-' || row_number() OVER ()
    || '","status":"final","category":' || {category_json}
    || ',"code":' || e.code_json
    || ',"subject":{{"reference":"Patient/' || e.pid || '"}}'
    || ',"valueQuantity":{{"value":' || e.mean::text || ',"unit":' || {UNIT}
    || ',"system":"{UCUM}","code":' || {UNIT} || '}}'
    || ',"extension":' || {ext} || '}}'
FROM (
    SELECT e.pid, e.code_json, e.unit, e.pregnancy_no, e.weeks,
           {YEAR} AS year, {VITALS_AGGREGATES}
    FROM rx_e_vitals e {BLANK_JOIN}
    GROUP BY e.pid, e.code_json, e.unit, e.pregnancy_no, e.weeks, {YEAR}
    -- grouped in memory, in no useful order: sorted as every other file is
    ORDER BY e.pid, e.code_json, e.unit, e.pregnancy_no, e.weeks, year
) e"""
    if part == "immunization":
        ext = _ext_list([("age-weeks", "valueInteger", "e.weeks::text", None), year])
        vaccine = _sql_text(_json({"system": VACCINE_SYSTEM})[:-1] + ',"code":')
        return f"""
SELECT '{{"resourceType":"Immunization","id":"' || e.pid || '-im-' || row_number() OVER ()
    || '","status":"completed","vaccineCode":{{"coding":[' || {vaccine}
    || to_json(e.vaccine)::text || '}}]}}'
    || ',"patient":{{"reference":"Patient/' || e.pid || '"}}'
    || ',"occurrenceString":"age ' || e.weeks || ' weeks"'
    || CASE WHEN e.dose ~ '^[1-9][0-9]{{0,3}}$'
        THEN ',"protocolApplied":[{{"doseNumberPositiveInt":' || e.dose || '}}]' ELSE '' END
    || ',"extension":' || {ext} || '}}'
FROM rx_e_vaccination e {BLANK_JOIN}"""
    raise ValueError(part)


# COPY … CSV with a delimiter and a quote that JSON text never holds
# (control characters are escaped inside JSON strings): each line is the
# JSON as it is.
NDJSON_COPY = "COPY ({query}) TO STDOUT WITH (FORMAT csv, DELIMITER E'\\x01', QUOTE E'\\x02')"


def _copy_to(cur: Any, query: str, params: dict[str, Any], out: Any, *, header: bool) -> None:
    sql = cur.mogrify(query, params).decode()
    if header:
        cur.copy_expert(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, HEADER true)", out)
    else:
        cur.copy_expert(NDJSON_COPY.format(query=sql), out)


# --------------------------------------------------------------------------
# Temporary tables
# --------------------------------------------------------------------------

TEMP_TABLES = (
    "rx_person",
    "rx_preg",
    "rx_item",
    "rx_blank",
    "rx_checkup",
    "rx_e_prenatal",
    "rx_e_infant",
    "rx_e_vaccination",
    "rx_e_vitals",
)


def _drop_temp(cur: Any) -> None:
    for name in TEMP_TABLES:
        cur.execute(f"DROP TABLE IF EXISTS pg_temp.{name}")


def _copy_rows(
    cur: Any, table: str, columns: tuple[str, ...], rows: Iterator[tuple[Any, ...]]
) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in rows:
        writer.writerow(["\\N" if v is None else v for v in row])
    buffer.seek(0)
    cur.copy_expert(
        f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv, NULL '\\N')", buffer
    )


def _allowed_items() -> Iterator[tuple[str, str, str, str, str, str]]:
    """The items a release may hold: normal sensitivity, no free text, no
    dates (clinic-only items such as HIV and syphilis never go)."""
    for item in terminology.items().values():
        if item.sensitivity != terminology.Sensitivity.NORMAL or item.unit in TEXT_UNITS:
            continue
        coding = item.coding
        yield (
            f"{coding['system']}|{coding['code']}",
            item.key,
            "" if item.unit in ("code", "ordinal", "boolean") else item.unit,
            coding["system"],
            coding["code"],
            # the Observation.code of the FHIR files, as JSON text
            _json({"coding": [{"system": coding["system"], "code": coding["code"]}]}),
        )


def _create_temp(cur: Any, persons: list[Person], key: bytes) -> None:
    _drop_temp(cur)
    cur.execute(
        "CREATE TEMPORARY TABLE rx_person (patient_id uuid PRIMARY KEY, pid text NOT NULL, "
        "kind text NOT NULL, birth date NOT NULL, cats text[] NOT NULL)"
    )
    cur.execute(
        "CREATE TEMPORARY TABLE rx_preg (patient_id uuid NOT NULL, pregnancy_no int NOT NULL, "
        "lmp date NOT NULL, first_day date NOT NULL, last_day date NOT NULL)"
    )
    cur.execute(
        "CREATE TEMPORARY TABLE rx_item (token text PRIMARY KEY, key text NOT NULL, "
        "unit text NOT NULL, system text NOT NULL, code text NOT NULL, code_json text NOT NULL)"
    )
    cur.execute(
        "CREATE TEMPORARY TABLE rx_blank (patient_id uuid NOT NULL, pregnancy_no int NOT NULL, "
        "weeks int NOT NULL, year int NOT NULL, "
        "PRIMARY KEY (patient_id, pregnancy_no, weeks, year))"
    )
    _copy_rows(
        cur,
        "rx_person",
        ("patient_id", "pid", "kind", "birth", "cats"),
        (
            (
                p.patient_id,
                p.pid,
                p.kind,
                p.birth.isoformat(),
                "{" + ",".join(sorted(p.categories)) + "}",
            )
            for p in persons
        ),
    )
    _copy_rows(
        cur,
        "rx_preg",
        ("patient_id", "pregnancy_no", "lmp", "first_day", "last_day"),
        (
            (
                p.patient_id,
                g.number,
                g.lmp.isoformat(),
                g.window[0].isoformat(),
                g.window[1].isoformat(),
            )
            for p in persons
            for g in p.pregnancies
            if g.lmp is not None and g.window is not None
        ),
    )
    _copy_rows(
        cur, "rx_item", ("token", "key", "unit", "system", "code", "code_json"), _allowed_items()
    )
    # the infant checkup (1m, 3-4m, …) of each encounter of a released child
    cur.execute("CREATE TEMPORARY TABLE rx_checkup (ref text PRIMARY KEY, code text NOT NULL)")
    cur.execute(
        "INSERT INTO rx_checkup SELECT DISTINCT ON (e.id) 'Encounter/' || e.id, "
        "e.content->'type'->0->'coding'->0->>'code' "
        "FROM phr_resource e CROSS JOIN LATERAL unnest(e.compartments) AS s(patient_id) "
        "JOIN rx_person p ON p.patient_id = s.patient_id AND p.kind = 'child' "
        "WHERE e.resource_type = 'Encounter' AND NOT e.deleted "
        "AND e.content->'type'->0->'coding'->0->>'system' = %s "
        "AND e.content->'type'->0->'coding'->0->>'code' IS NOT NULL",
        [CHECKUP_TYPE_SYSTEM],
    )
    cur.execute("ANALYZE rx_checkup")
    cur.execute("ANALYZE rx_person")
    cur.execute("ANALYZE rx_preg")


# --------------------------------------------------------------------------
# The date floor over every event of the release
# --------------------------------------------------------------------------

EVENT_BASES = ("prenatal", "infant", "vaccination", "vitals")


# Ties within a person's week are ordered by what the files show, so a
# release is the same bytes each time it is built from the same records.
ORDER_WITHIN_WEEK = {
    "prenatal": "e.year, e.key, e.value, e.comparator, e.unit",
    "infant": "e.year, e.checkup, e.key, e.value, e.comparator, e.unit",
    "vaccination": "e.year, e.vaccine, e.dose",
    "vitals": "e.year, e.key, e.unit",
}


def _bases() -> dict[str, str]:
    return {
        "prenatal": _prenatal_base(),
        "infant": _infant_base(),
        "vaccination": _vaccination_base(),
        "vitals": _vitals_base(),
    }


def _materialize(cur: Any, params: dict[str, Any]) -> None:
    """Each event table's rows, computed once from phr_resource into a
    temporary table (on disk, not in memory): the date floor, the CSV and
    the NDJSON then read these instead of the store three times.

    Without parallel workers: a parallel scan would pass every row's whole
    content through the gather queue, slower than one process reading it
    (measured: 9 s against 2 s for a million Observations)."""
    cur.execute("SET max_parallel_workers_per_gather = 0")
    cur.execute("SET jit = off")  # compiling these queries costs more than it saves
    # the weekly vitals are grouped in memory (tens of MB for a million
    # readings); with the default 4 MB the planner sorted the readings on
    # disk, several times slower
    cur.execute("SET work_mem = '128MB'")
    for name, sql in _bases().items():
        # ordered by pseudonym and then by what the files show: the rows'
        # order says nothing of when or where the records were made (the
        # store's order would)
        cur.execute(
            f"CREATE TEMPORARY TABLE rx_e_{name} AS SELECT * FROM ({sql}) e "
            f"ORDER BY e.pid, e.pregnancy_no, e.weeks, {ORDER_WITHIN_WEEK[name]}",
            params,
        )
        cur.execute(f"ANALYZE rx_e_{name}")


def _events_sql() -> str:
    union = "\nUNION\n".join(
        f"SELECT e.patient_id, e.pregnancy_no, e.weeks, e.year FROM rx_e_{name} e"
        for name in EVENT_BASES
    )
    return f"SELECT * FROM ({union}) u ORDER BY patient_id, pregnancy_no"


def _apply_date_floor(
    cur: Any,
    persons: list[Person],
    *,
    node: anonymize.Node,
    params: dict[str, Any],
    floor_days: int,
) -> int:
    """Stream every (person, pregnancy, weeks, year) once through the date
    floor; write the pairs whose year is blanked into rx_blank. Returns how
    many event rows' pairs were blanked (distinct pairs)."""
    by_id = {p.patient_id: p for p in persons}
    pregnancy_events: dict[tuple[uuid.UUID, int], tuple[int, int]] = {}
    for person in persons:
        for pregnancy in person.pregnancies:
            if pregnancy.event is not None and "pregnancy" in person.categories:
                pregnancy_events[(person.patient_id, pregnancy.number)] = pregnancy.event
    blanked: list[tuple[str, int, int, int]] = []

    def settle(group: tuple[uuid.UUID, int], events: list[tuple[int, int]]) -> None:
        patient_id, number = group
        person = by_id[patient_id]
        extra = pregnancy_events.pop(group, None)
        if extra is not None:
            events.append(extra)
        start = anonymize.birth_period_interval(person.birth, node[0]) if number == 0 else None
        out, _ = anonymize.date_floor(start=start, events=events, floor_days=floor_days)
        for weeks, year in out:
            blanked.append((str(patient_id), number, weeks, year))

    with tempfile.TemporaryFile("w+", encoding="utf-8") as spool:
        cur.copy_expert(f"COPY ({_events_sql()}) TO STDOUT WITH (FORMAT csv)", spool)
        spool.seek(0)
        group: tuple[uuid.UUID, int] | None = None
        events: list[tuple[int, int]] = []
        for row in csv.reader(spool):
            key = (uuid.UUID(row[0]), int(row[1]))
            if key != group:
                if group is not None:
                    settle(group, events)
                group, events = key, []
            events.append((int(row[2]), int(row[3])))
        if group is not None:
            settle(group, events)
    for group in list(pregnancy_events):
        settle(group, [])
    _copy_rows(cur, "rx_blank", ("patient_id", "pregnancy_no", "weeks", "year"), iter(blanked))
    for patient_id, number, weeks, year in blanked:
        if number:
            pregnancy = next(
                g for g in by_id[uuid.UUID(patient_id)].pregnancies if g.number == number
            )
            if pregnancy.event == (weeks, year):
                pregnancy.year_blanked = True
    return len(blanked)


# --------------------------------------------------------------------------
# The release
# --------------------------------------------------------------------------


def _pseudonym_key(project: Any) -> bytes:
    secret = settings.RESEARCH_PSEUDONYM_KEY
    if secret:
        material = secret.encode()
    else:
        # No dedicated key: one derived from SECRET_KEY for this purpose only.
        material = hashlib.sha256(
            b"hagukumi research pseudonym key\x00" + settings.SECRET_KEY.encode()
        ).digest()
    return anonymize.project_key(secret=material, salt=bytes(project.pseudonym_salt))


def _refusal(persons: int, k: int, best: int | None) -> str:
    def text() -> str:
        if persons < k:
            return gettext(
                "The cohort has %(persons)s eligible persons, fewer than k = %(k)s: "
                "no release can make each person indistinguishable from at least %(k)s others."
            ) % {"persons": anonymize.small_cell(persons), "k": k}
        return gettext(
            "The cohort is too small for k = %(k)s: even with every quasi-identifier "
            "fully generalized, %(suppressed)s of %(persons)s eligible persons would have "
            "to be suppressed, more than the 5%% allowed. Widen the cohort (more birth "
            "years or municipalities) instead."
        ) % {
            "k": k,
            "persons": anonymize.small_cell(persons),
            "suppressed": anonymize.small_cell(best or 0),
        }

    with translation.override("ja"):
        ja = text()
    with translation.override("en"):
        en = text()
    return f"{ja} / {en}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _count_lines(path: Path) -> int:
    count = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
    return count


def _write_csv(path: Path, columns: tuple[str, ...], rows: Iterator[tuple[Any, ...]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if v is None else v for v in row])


def _person_row(person: Person, node: anonymize.Node) -> tuple[Any, ...]:
    birth, area, weight, gestation, babies = node
    child = person.kind == "child"
    return (
        person.pid,
        person.kind,
        person.sex,
        anonymize.birth_period(person.birth, birth),
        anonymize.area_code(person.municipality, area),
        anonymize.weight_band(person.birth_weight, weight) if child else "",
        anonymize.gestation_band(person.gestational_weeks, gestation) if child else "",
        anonymize.babies_band(person.babies, babies) if child else "",
    )


def _pregnancy_rows(persons: list[Person], node: anonymize.Node) -> Iterator[tuple[Any, ...]]:
    gestation, babies = node[3], node[4]
    for person in persons:
        if "pregnancy" not in person.categories:
            continue
        for g in person.pregnancies:
            event = g.event
            year = None if event is None or g.year_blanked else event[1]
            yield (
                person.pid,
                g.number,
                year,
                g.outcome,
                anonymize.gestation_band(g.weeks_at_delivery, gestation),
                anonymize.babies_band(g.babies, babies),
                g.delivery_mode,
            )


def _fhir_patient(person: Person, node: anonymize.Node) -> dict[str, Any]:
    row = dict(zip(CSV_COLUMNS["persons"], _person_row(person, node), strict=True))
    birth_ym = row["birth_ym"]
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": person.pid,
        "gender": person.sex,
        # FHIR takes YYYY-MM or YYYY; a quarter or a half is in the extension
        "birthDate": birth_ym if node[0] == 0 else birth_ym[:4],
        "extension": [
            {"url": f"{EXTENSION}kind", "valueCode": person.kind},
            {"url": f"{EXTENSION}birth-period", "valueString": birth_ym},
            {"url": f"{EXTENSION}area", "valueString": row["area"]},
        ],
    }
    for column in ("birth_weight_band", "gestational_weeks_at_birth", "babies"):
        if row[column]:
            name = column.replace("_", "-")
            resource["extension"].append({"url": f"{EXTENSION}{name}", "valueString": row[column]})
    return resource


def _fhir_episodes(persons: list[Person], node: anonymize.Node) -> Iterator[dict[str, Any]]:
    for values in _pregnancy_rows(persons, node):
        row = dict(zip(CSV_COLUMNS["pregnancies"], values, strict=True))
        extension: list[dict[str, Any]] = [
            {"url": f"{EXTENSION}pregnancy-number", "valueInteger": row["pregnancy_no"]},
            {"url": f"{EXTENSION}outcome", "valueCode": row["outcome"]},
        ]
        if row["calendar_year"] is not None:
            extension.append(
                {"url": f"{EXTENSION}calendar-year", "valueInteger": row["calendar_year"]}
            )
        for column in ("gestational_weeks_at_delivery", "babies", "delivery_mode"):
            if row[column]:
                name = column.replace("_", "-")
                extension.append({"url": f"{EXTENSION}{name}", "valueString": row[column]})
        yield {
            "resourceType": "EpisodeOfCare",
            "id": f"{row['pid']}-pg-{row['pregnancy_no']}",
            "status": "active" if row["outcome"] == "ongoing" else "finished",
            "type": [{"coding": [{"system": EPISODE_TYPE_SYSTEM, "code": "pregnancy"}]}],
            "patient": {"reference": f"Patient/{row['pid']}"},
            "extension": extension,
        }


def _write_ndjson(path: Path, resources: Iterator[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for resource in resources:
            handle.write(json.dumps(resource, ensure_ascii=False, separators=(",", ":")))
            handle.write("\n")


def build_release(
    *,
    project: Any,
    filters: dict[str, Any],
    cohort: dict[uuid.UUID, frozenset[str]],
    out_dir: Path,
    progress: Callable[[int, int], None] | None = None,
    at: datetime | None = None,
    export_id: Any = None,
) -> dict[str, Any]:
    """Write the release of `cohort` for `project` into out_dir and return
    its report (also written as release_report.json). Raises CohortTooSmall
    when k cannot be reached."""
    at = at or timezone.now()
    out_dir = Path(out_dir)
    k = int(project.k)
    allowed = set(project.categories)
    if filters.get("categories"):
        allowed &= set(filters["categories"])
    kind_filter = filters.get("cohort_kind") or project.cohort_kind
    period = (project.period_start, project.period_end)
    # the period's days in Japan as instants: the store's date_start is
    # compared as it is (an estimate the planner can use, no conversion)
    zone = ZoneInfo(settings.TIME_ZONE)
    params = {
        "period_from": datetime.combine(period[0], time.min, tzinfo=zone),
        "period_until": datetime.combine(period[1] + timedelta(days=1), time.min, tzinfo=zone),
    }
    steps = 13
    step = 0

    def advance() -> None:
        nonlocal step
        step += 1
        if progress is not None:
            progress(step, steps)

    cohort = {uuid.UUID(str(i)): frozenset(c) & allowed for i, c in cohort.items()}
    cohort = {i: c for i, c in cohort.items() if c}
    persons, no_birth_date = _load_persons(
        cohort, municipality_ids=[int(m) for m in filters.get("municipalities") or []], at=at
    )
    if kind_filter == "pregnancy":
        persons = [p for p in persons if p.kind == "mother"]
    elif kind_filter == "child":
        persons = [p for p in persons if p.kind == "child"]
    _load_pregnancies(
        [
            p
            for p in persons
            if p.kind == "mother" and p.categories & {"pregnancy", "prenatal_checkups"}
        ],
        period=period,
    )
    advance()
    eligible = len(persons)
    try:
        result = anonymize.k_anonymize([p.qi() for p in persons], k=k)
    except anonymize.KNotReachable as exc:
        raise CohortTooSmall(_refusal(exc.persons, k, exc.best_suppressed)) from exc
    released = [p for p in persons if p.patient_id not in result.suppressed]
    key = _pseudonym_key(project)
    for person in released:
        person.pid = anonymize.pseudonym(key, person.patient_id)
    released.sort(key=lambda p: p.pid)
    advance()

    # persons.csv, pregnancies.csv and the data dictionary are in every
    # release (the persons are its key and the audit reads them); the
    # event tables come as CSV, as FHIR NDJSON or both, as asked.
    formats = set((filters or {}).get("formats") or ("csv", "ndjson")) & {"csv", "ndjson"}
    formats = formats or {"csv", "ndjson"}
    csv_dir = out_dir / "csv"
    fhir_dir = out_dir / "fhir"
    csv_dir.mkdir(parents=True, exist_ok=True)
    fhir_dir.mkdir(parents=True, exist_ok=True)
    node = result.node
    floor_days = int(settings.RESEARCH_MIN_DATE_CANDIDATES)
    with connection.cursor() as cur:
        try:
            _create_temp(cur, released, key)
            _materialize(cur, params)
            blanked = _apply_date_floor(
                cur, released, node=node, params=params, floor_days=floor_days
            )
            advance()
            _write_csv(
                csv_dir / "persons.csv",
                CSV_COLUMNS["persons"],
                (_person_row(p, node) for p in released),
            )
            _write_csv(
                csv_dir / "pregnancies.csv",
                CSV_COLUMNS["pregnancies"],
                _pregnancy_rows(released, node),
            )
            advance()
            for table in ("prenatal_visits", "infant_checkups", "vaccinations", "vitals_weekly"):
                if "csv" in formats:
                    with (csv_dir / f"{table}.csv").open("w", encoding="utf-8", newline="") as out:
                        _copy_to(cur, _csv_sql(table), params, out, header=True)
                advance()
            if "ndjson" in formats:
                _write_ndjson(
                    fhir_dir / "Patient.ndjson", (_fhir_patient(p, node) for p in released)
                )
                _write_ndjson(fhir_dir / "EpisodeOfCare.ndjson", _fhir_episodes(released, node))
                with (fhir_dir / "Observation.ndjson").open("w", encoding="utf-8") as out:
                    for part in ("prenatal", "infant", "vitals"):
                        _copy_to(cur, _ndjson_sql(part), params, out, header=False)
                        advance()
                with (fhir_dir / "Immunization.ndjson").open("w", encoding="utf-8") as out:
                    _copy_to(cur, _ndjson_sql("immunization"), params, out, header=False)
            else:
                for _part in ("prenatal", "infant", "vitals"):
                    advance()
        finally:
            _drop_temp(cur)
            cur.execute("RESET max_parallel_workers_per_gather")
            cur.execute("RESET jit")
            cur.execute("RESET work_mem")
    _write_dictionary(csv_dir / "data_dictionary.csv", result.generalizations)

    records: dict[str, int | str] = {}
    for table in CSV_COLUMNS:
        if not (csv_dir / f"{table}.csv").exists():
            continue  # an NDJSON-only release: the manifest counts its resources
        lines = max(_count_lines(csv_dir / f"{table}.csv") - 1, 0)
        records[table] = anonymize.small_cell(lines) if table == "persons" else lines
    if "ndjson" in formats:
        manifest_output = []
        for resource_type in ("Patient", "EpisodeOfCare", "Observation", "Immunization"):
            name = f"{resource_type}.ndjson"
            count = _count_lines(fhir_dir / name)
            manifest_output.append(
                {
                    "type": resource_type,
                    "url": name,
                    "count": anonymize.small_cell(count) if resource_type == "Patient" else count,
                }
            )
        manifest = {
            "transactionTime": at.isoformat(),
            "request": f"research/exports/{export_id}" if export_id else "research/export",
            "requiresAccessToken": True,
            "output": manifest_output,
            "error": [],
        }
        (fhir_dir / "manifest.json").write_text(
            json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8"
        )
    else:
        fhir_dir.rmdir()
    advance()

    files = []
    for path in sorted(p for p in out_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(out_dir).as_posix()
        if relative in ("release_report.json", "release.zip"):
            continue
        files.append({"path": relative, "sha256": _sha256(path), "bytes": path.stat().st_size})
    report = {
        "export_id": str(export_id) if export_id else None,
        "project_id": str(project.pk),
        "generated_at": at.isoformat(),
        "k": k,
        "cohort_size": anonymize.small_cell(eligible),
        "released_persons": anonymize.small_cell(len(released)),
        "suppressed_persons": anonymize.small_cell(len(result.suppressed)),
        "excluded_without_birth_date": anonymize.small_cell(no_birth_date),
        "records_per_table": records,
        "quasi_identifiers": list(anonymize.QUASI_IDENTIFIERS),
        "generalizations": result.generalizations,
        "achieved_k": result.achieved_k,
        "equivalence_classes": result.classes,
        "suppression": {
            "persons": anonymize.small_cell(len(result.suppressed)),
            "max_fraction": anonymize.MAX_SUPPRESSION,
            "calendar_years_blanked": blanked,
            "cells_below_10": _cells_below_10(records, eligible, len(released), result),
        },
        "date_floor_days": floor_days,
        "period": {"start": period[0].isoformat(), "end": period[1].isoformat()},
        "categories": sorted(allowed),
        "cohort_kind": kind_filter,
        "formats": sorted(formats),
        "pseudonym": f"HMAC-SHA256, {anonymize.PSEUDONYM_HEX} hex digits, per project",
        "files": files,
    }
    (out_dir / "release_report.json").write_text(
        json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8"
    )
    with zipfile.ZipFile(
        out_dir / "release.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=1
    ) as archive:
        for path in sorted(p for p in out_dir.rglob("*") if p.is_file()):
            relative = path.relative_to(out_dir).as_posix()
            if relative != "release.zip":
                archive.write(path, relative)
    advance()
    return report


def _cells_below_10(
    records: dict[str, int | str], eligible: int, released: int, result: anonymize.Anonymized
) -> int:
    """How many counts of people the report shows as <10."""
    counts = [eligible, released, len(result.suppressed)]
    return sum(1 for n in counts if 0 < n < anonymize.SMALL_CELL) + sum(
        1 for v in records.values() if v == "<10"
    )


# --------------------------------------------------------------------------
# The data dictionary
# --------------------------------------------------------------------------

# (table, column, type, unit, meaning ja, meaning en, generalized as QI)
DICTIONARY: tuple[tuple[str, str, str, str, str, str, str], ...] = (
    (
        "persons",
        "pid",
        "text",
        "",
        "仮名ID（プロジェクトごとの鍵付きHMAC。他のプロジェクトと照合できない）",
        "pseudonym (keyed HMAC per project; cannot be linked across projects)",
        "",
    ),
    ("persons", "kind", "code", "", "mother（母）または child（子）", "mother or child", ""),
    (
        "persons",
        "sex",
        "code",
        "",
        "性別 male/female/other/unknown",
        "sex: male, female, other or unknown",
        "",
    ),
    (
        "persons",
        "birth_ym",
        "text",
        "",
        "生年月（YYYY-MM）。一般化時は四半期 YYYY-Qn、半期 YYYY-Hn、年 YYYY",
        "birth year-month (YYYY-MM); generalized: quarter YYYY-Qn, half YYYY-Hn, year YYYY",
        "birth_ym",
    ),
    (
        "persons",
        "area",
        "code",
        "",
        "居住地の全国地方公共団体コード（6桁）、一般化時は都道府県コード（2桁）または *",
        "municipality of residence (6-digit local government code); "
        "generalized: 2-digit prefecture code or *",
        "area",
    ),
    (
        "persons",
        "birth_weight_band",
        "band",
        "g",
        "出生体重の階級（<1000、>=4500 は常にトップ／ボトムコード）。子のみ",
        "birth weight band (always coded <1000 and >=4500); children only",
        "birth_weight_band",
    ),
    (
        "persons",
        "gestational_weeks_at_birth",
        "band",
        "wk",
        "出生時の在胎週数（<28、>=42 にまとめる）。子のみ",
        "completed gestational weeks at birth (<28 and >=42 grouped); children only",
        "gestational_weeks",
    ),
    (
        "persons",
        "babies",
        "code",
        "",
        "同時に生まれた子の数 1/2/3+、一般化時は single/multiple。子のみ",
        "babies of the birth 1, 2, 3+; generalized: single or multiple; children only",
        "babies",
    ),
    ("pregnancies", "pid", "text", "", "母の仮名ID", "the mother's pseudonym", ""),
    (
        "pregnancies",
        "pregnancy_no",
        "integer",
        "",
        "この母の妊娠の通し番号（1から）",
        "number of the pregnancy for this mother (from 1)",
        "",
    ),
    (
        "pregnancies",
        "calendar_year",
        "integer",
        "",
        "分娩の年（未分娩は妊娠開始の年）。生年月日の推定を防ぐため空欄のことがある",
        "calendar year of the delivery (of the start when not delivered); "
        "blank where it would narrow the date",
        "",
    ),
    (
        "pregnancies",
        "outcome",
        "code",
        "",
        "delivered（分娩）、ongoing（妊娠中）、ended（分娩記録なく終了）",
        "delivered, ongoing, or ended without a delivery record",
        "",
    ),
    (
        "pregnancies",
        "gestational_weeks_at_delivery",
        "band",
        "wk",
        "分娩時の在胎週数（persons と同じ一般化）",
        "completed gestational weeks at delivery (generalized as in persons)",
        "gestational_weeks",
    ),
    (
        "pregnancies",
        "babies",
        "code",
        "",
        "出生児数（persons と同じ一般化）",
        "number of babies born (generalized as in persons)",
        "babies",
    ),
    (
        "pregnancies",
        "delivery_mode",
        "code",
        "",
        "分娩方法のコード（https://hagukumi.jp/fhir/CodeSystem/delivery-mode）",
        "mode of delivery code (https://hagukumi.jp/fhir/CodeSystem/delivery-mode)",
        "",
    ),
    ("prenatal_visits", "pid", "text", "", "母の仮名ID", "the mother's pseudonym", ""),
    (
        "prenatal_visits",
        "pregnancy_no",
        "integer",
        "",
        "pregnancies.pregnancy_no",
        "pregnancies.pregnancy_no",
        "",
    ),
    (
        "prenatal_visits",
        "gestational_weeks",
        "integer",
        "wk",
        "健診時の妊娠週数（分娩予定日から: 280 −（予定日 − 健診日）日）",
        "gestational weeks at the visit (from the due date: 280 − (due − day) days)",
        "",
    ),
    (
        "prenatal_visits",
        "calendar_year",
        "integer",
        "",
        "健診の年（空欄あり、上記参照）",
        "calendar year of the visit (may be blank, see above)",
        "",
    ),
    (
        "prenatal_visits",
        "item",
        "code",
        "",
        "項目キー（docs/dataset.md）",
        "item key (docs/dataset.md)",
        "",
    ),
    (
        "prenatal_visits",
        "value",
        "text",
        "",
        "値（数値またはコード）",
        "value (a number or a code)",
        "",
    ),
    (
        "prenatal_visits",
        "unit",
        "code",
        "",
        "UCUM 単位（コード値では空）",
        "UCUM unit (blank for codes)",
        "",
    ),
    ("infant_checkups", "pid", "text", "", "子の仮名ID", "the child's pseudonym", ""),
    (
        "infant_checkups",
        "age_weeks",
        "integer",
        "wk",
        "健診時の月齢（満週数）",
        "age at the checkup in completed weeks",
        "",
    ),
    (
        "infant_checkups",
        "calendar_year",
        "integer",
        "",
        "健診の年（空欄あり）",
        "calendar year of the checkup (may be blank)",
        "",
    ),
    (
        "infant_checkups",
        "checkup",
        "code",
        "",
        "健診の種類（1m、3-4m、6-7m、9-10m、18m、3y、出生時は birth）",
        "checkup (1m, 3-4m, 6-7m, 9-10m, 18m, 3y; birth for birth records)",
        "",
    ),
    (
        "infant_checkups",
        "item",
        "code",
        "",
        "項目キー（docs/dataset.md）",
        "item key (docs/dataset.md)",
        "",
    ),
    (
        "infant_checkups",
        "value",
        "text",
        "",
        "値（数値またはコード）",
        "value (a number or a code)",
        "",
    ),
    ("infant_checkups", "unit", "code", "", "UCUM 単位", "UCUM unit", ""),
    ("vaccinations", "pid", "text", "", "仮名ID", "pseudonym", ""),
    (
        "vaccinations",
        "vaccine",
        "code",
        "",
        "ワクチンコード（https://hagukumi.jp/fhir/CodeSystem/vaccine）",
        "vaccine code (https://hagukumi.jp/fhir/CodeSystem/vaccine)",
        "",
    ),
    ("vaccinations", "dose", "text", "", "接種回数", "dose number", ""),
    (
        "vaccinations",
        "age_weeks",
        "integer",
        "wk",
        "接種時の年齢（満週数）",
        "age at the dose in completed weeks",
        "",
    ),
    (
        "vaccinations",
        "calendar_year",
        "integer",
        "",
        "接種の年（空欄あり）",
        "calendar year of the dose (may be blank)",
        "",
    ),
    ("vitals_weekly", "pid", "text", "", "仮名ID", "pseudonym", ""),
    (
        "vitals_weekly",
        "item",
        "code",
        "",
        "項目キー（docs/dataset.md）",
        "item key (docs/dataset.md)",
        "",
    ),
    ("vitals_weekly", "unit", "code", "", "UCUM 単位", "UCUM unit", ""),
    (
        "vitals_weekly",
        "age_weeks",
        "integer",
        "wk",
        "年齢（満週数）。妊娠中は空欄",
        "age in completed weeks (blank during a pregnancy)",
        "",
    ),
    (
        "vitals_weekly",
        "gestational_weeks",
        "integer",
        "wk",
        "妊娠中の妊娠週数",
        "gestational weeks during a pregnancy",
        "",
    ),
    (
        "vitals_weekly",
        "calendar_year",
        "integer",
        "",
        "年（空欄あり）",
        "calendar year (may be blank)",
        "",
    ),
    (
        "vitals_weekly",
        "n",
        "integer",
        "",
        "その週の測定回数（人数ではない）",
        "number of readings that week (not of people)",
        "",
    ),
    ("vitals_weekly", "mean", "decimal", "", "平均", "mean", ""),
    ("vitals_weekly", "min", "decimal", "", "最小", "minimum", ""),
    ("vitals_weekly", "max", "decimal", "", "最大", "maximum", ""),
)


def _write_dictionary(path: Path, generalizations: dict[str, str]) -> None:
    _write_csv(
        path,
        ("table", "column", "type", "unit", "meaning_ja", "meaning_en", "generalization"),
        (
            (table, column, kind, unit, ja, en, generalizations.get(qi, "") if qi else "")
            for table, column, kind, unit, ja, en, qi in DICTIONARY
        ),
    )


# --------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------

AUDIT_BATCH = 1000


def release_directory(export: Any) -> str:
    return f"research/{export.pk}"


def research_export_job(ctx: Any) -> dict[str, Any]:
    from sharing.models import ResearchExport

    export = ResearchExport.objects.select_related("project", "requested_by").get(
        pk=ctx.payload["export_id"]
    )
    if export.status in (ResearchExport.Status.DONE, ResearchExport.Status.REFUSED):
        return {"status": export.status}
    project = export.project
    from sharing import research

    reason = research.export_refusal(
        project=project, user=export.requested_by, filters=export.filters
    )
    if reason:
        _finish(export, ResearchExport.Status.REFUSED, reason=str(reason))
        return {"status": "refused"}
    export.status = ResearchExport.Status.RUNNING
    export.save(update_fields=["status"])

    from sharing.access import research_cohort

    filters = export.filters
    cohort = research_cohort(
        municipality_ids=filters.get("municipalities")
        or list(project.municipalities.values_list("pk", flat=True)),
        categories=filters.get("categories") or list(project.categories),
        cohort_kind=filters.get("cohort_kind") or project.cohort_kind,
        birth_year_from=filters.get("birth_year_from") or project.birth_year_from,
        birth_year_to=filters.get("birth_year_to") or project.birth_year_to,
    )
    media = Path(settings.MEDIA_ROOT)
    directory = release_directory(export)
    final = media / directory
    final.parent.mkdir(parents=True, exist_ok=True)
    # A worker that died left its partial folder: nothing serves it, remove it.
    for stale in final.parent.glob(f"{final.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    partial = final.with_name(f"{final.name}.partial-{uuid.uuid4().hex[:12]}")
    partial.mkdir()

    def progress(done: int, total: int) -> None:
        ctx.checkpoint(cursor={"phase": "build"}, progress_done=done, progress_total=total)

    try:
        report = build_release(
            project=project,
            filters=filters,
            cohort=cohort,
            out_dir=partial,
            progress=progress,
            export_id=export.pk,
        )
    except CohortTooSmall as exc:
        shutil.rmtree(partial, ignore_errors=True)
        _finish(export, ResearchExport.Status.REFUSED, reason=str(exc))
        return {"status": "refused"}
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    # Still ours? (a lost lease raises here, before anything is served)
    ctx.checkpoint(cursor={"phase": "publish"})
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    released = list(_released_patients(report, cohort, project, export))
    with transaction.atomic():
        _audit_release(export, released)
        export.directory = directory
        export.report = report
        _finish(export, ResearchExport.Status.DONE)
        ctx.checkpoint(cursor={"phase": "done"})
    return {"status": "done", "released_persons": report.get("released_persons")}


def _released_patients(
    report: dict[str, Any], cohort: dict[uuid.UUID, frozenset[str]], project: Any, export: Any
) -> Iterator[tuple[uuid.UUID, list[str]]]:
    """(patient id, categories released) of each person in the release:
    the cohort's persons whose pseudonym is in persons.csv."""
    key = _pseudonym_key(project)
    path = Path(settings.MEDIA_ROOT) / release_directory(export) / "csv" / "persons.csv"
    with path.open(encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader)
        pids = {row[0] for row in reader}
    allowed = set(project.categories)
    if export.filters.get("categories"):
        allowed &= set(export.filters["categories"])
    for patient_id, categories in cohort.items():
        if anonymize.pseudonym(key, patient_id) in pids:
            yield uuid.UUID(str(patient_id)), sorted(set(categories) & allowed)


def _audit_release(export: Any, released: list[tuple[uuid.UUID, list[str]]]) -> None:
    from phr.audit import AuditEntry, audit_write_many

    for start in range(0, len(released), AUDIT_BATCH):
        audit_write_many(
            AuditEntry(
                action="research.export",
                actor_id=export.requested_by_id,
                actor_role="researcher",
                organization_id=export.project.organization_id,
                patient_id=patient_id,
                categories=categories,
                purpose="research",
                detail={"project": str(export.project_id), "export": str(export.pk)},
            )
            for patient_id, categories in released[start : start + AUDIT_BATCH]
        )


def _finish(export: Any, status: str, *, reason: str = "") -> None:
    export.status = status
    export.reason = reason
    export.finished_at = timezone.now()
    export.save(update_fields=["status", "reason", "finished_at", "directory", "report"])


def _failed(job: Any) -> None:
    """The job failed for good (an error, or out of attempts): the export
    is marked failed unless it already finished."""
    from django.db.models import F, Q

    from phr.models import Job
    from sharing.models import ResearchExport

    now = timezone.now()
    failed_for_good = Job.objects.filter(pk=job.pk).filter(
        Q(status=Job.Status.FAILED)
        | Q(status=Job.Status.RUNNING, lease_until__lt=now, attempts__gte=F("max_attempts"))
    )
    if not failed_for_good.exists():
        return  # another worker holds the job now
    ResearchExport.objects.filter(pk=job.payload.get("export_id")).exclude(
        status__in=[ResearchExport.Status.DONE, ResearchExport.Status.REFUSED]
    ).update(
        status=ResearchExport.Status.FAILED,
        reason=_failure_reason(),
        finished_at=timezone.now(),
    )


def _failure_reason() -> str:
    with translation.override("ja"):
        ja = gettext("The export failed. Please request it again.")
    with translation.override("en"):
        en = gettext("The export failed. Please request it again.")
    return f"{ja} / {en}"


def _register() -> None:
    from phr.jobs import job_handler

    job_handler(JOB_KIND, on_failure=_failed)(research_export_job)


_register()
