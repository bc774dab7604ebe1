"""Reads behind the municipal staff pages: which municipalities a user acts
for, their batches and review queue, and the dashboard's coverage figures.

Batches, batch errors and match reviews are control data of one
municipality: they are scoped here to the municipalities the user is
staff of (with MFA), and anything else is a 404, like an id that does not
exist. Health records (the coverage figures, the record side of a match
review) are read through sharing.access only.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from django.core.paginator import Page, Paginator
from django.db import connection
from django.db.models import Q, QuerySet
from django.http import Http404
from django.utils import timezone
from django.utils.translation import get_language, gettext
from django.utils.translation import gettext_lazy as _

from municipal_data.formats import FORMATS as MUNICIPAL_FORMATS
from municipal_data.formats.common import CHECKUP_TYPE_SYSTEM, VACCINE_SYSTEM
from municipal_data.formats.infant_checkup import KINDS as CHECKUP_KINDS
from municipal_data.models import MatchReview
from municipal_data.records import MunicipalFormat
from phr.models import Batch, BatchError, Organization, Patient, Residency, Resource, Role
from phr.pipeline import FORMATS as PIPELINE_FORMATS
from phr.pipeline import PipelineFormat
from phr.roles import has_mfa, organizations_for
from phr.terminology import Category
from sharing.access import Purpose, decide, visible_records

BATCHES_PAGE_SIZE = 25
ERRORS_PAGE_SIZE = 50
REVIEWS_PAGE_SIZE = 20
RECENT_BATCHES = 5
COHORTS_SHOWN = 7  # fiscal years of birth on the dashboard: children up to school age

# A batch in one of these states has a job working (or about to) on it.
RUNNING = (Batch.Status.RECEIVED, Batch.Status.VALIDATING, Batch.Status.IMPORTING)


def japanese(language: str | None = None) -> bool:
    return (language or get_language() or "ja").startswith("ja")


# --------------------------------------------------------------------------
# Who acts for which municipality
# --------------------------------------------------------------------------


def staff_municipalities(user: Any) -> list[Organization]:
    """The municipalities this user is active municipal staff of, when the
    user has MFA (staff without it hold no staff role anywhere, as in
    sharing.access); sorted by name so "the first" is stable."""
    if not has_mfa(user):
        return []
    return sorted(organizations_for(user, Role.MUNICIPAL_STAFF), key=lambda o: (o.name, o.pk))


def chosen_municipality(user: Any, requested: Any = None) -> Organization:
    """The municipality a page is about: the one asked for (?municipality=
    id) when the user is its staff, else the first. Http404 for users who
    are no municipality's staff, and for a municipality not theirs."""
    mine = staff_municipalities(user)
    if not mine:
        raise Http404
    if requested in (None, ""):
        return mine[0]
    for municipality in mine:
        if str(municipality.pk) == str(requested):
            return municipality
    raise Http404


def municipal_batch(user: Any, batch_id: int) -> Batch:
    """A batch of one of the user's municipalities, or Http404 (another
    municipality's batch and a missing one alike)."""
    mine = [m.pk for m in staff_municipalities(user)]
    batch = (
        Batch.objects.select_related(
            "organization",
            "uploaded_by",
            "confirmed_by",
            "same_as",
            "validate_job",
            "import_job",
        )
        .filter(pk=batch_id, organization_id__in=mine)
        .first()
    )
    if batch is None:
        raise Http404
    return batch


def municipal_review(user: Any, review_id: int) -> MatchReview:
    mine = [m.pk for m in staff_municipalities(user)]
    review = (
        MatchReview.objects.select_related("municipality", "batch")
        .filter(pk=review_id, municipality_id__in=mine)
        .first()
    )
    if review is None:
        raise Http404
    return review


# --------------------------------------------------------------------------
# Formats and batches
# --------------------------------------------------------------------------


def upload_formats() -> list[PipelineFormat]:
    """The pipeline formats a municipality may upload: the documented CSV
    formats first (in their documented order), then the others (FHIR)."""
    order = {key: index for index, key in enumerate(MUNICIPAL_FORMATS)}
    formats = [
        fmt
        for fmt in PIPELINE_FORMATS.values()
        if Organization.Kind.MUNICIPALITY in fmt.organization_kinds
    ]
    return sorted(formats, key=lambda fmt: order.get(fmt.key, len(order)))


def format_label(key: str) -> str:
    fmt = PIPELINE_FORMATS.get(key)
    if fmt is None:
        return key
    return fmt.label_ja if japanese() else fmt.label_en


def encoding_label(encoding: str) -> str:
    return {"utf-8": "UTF-8", "cp932": "Shift_JIS (CP932)"}.get(encoding, encoding)


def batches(municipality: Organization) -> QuerySet[Batch]:
    return (
        Batch.objects.filter(organization=municipality)
        .select_related("uploaded_by")
        .order_by("-created_at", "-pk")
    )


def batches_page(municipality: Organization, page_number: Any) -> Page[Batch]:
    return Paginator(batches(municipality), BATCHES_PAGE_SIZE).get_page(page_number)


def batch_errors(batch: Batch) -> QuerySet[BatchError]:
    return BatchError.objects.filter(batch=batch).order_by("line", "id")


def batch_errors_page(batch: Batch, page_number: Any) -> Page[BatchError]:
    return Paginator(batch_errors(batch), ERRORS_PAGE_SIZE).get_page(page_number)


@dataclass(frozen=True)
class Progress:
    """How far the batch's current job got: rows done of (about) total."""

    stage: str  # "validate", "import", or "" when no job is running
    done: int
    total: int | None

    @property
    def running(self) -> bool:
        return bool(self.stage)

    @property
    def percent(self) -> int | None:
        if not self.total:
            return None
        return min(100, int(self.done * 100 / self.total))


def batch_progress(batch: Batch) -> Progress:
    if batch.status in (Batch.Status.RECEIVED, Batch.Status.VALIDATING):
        job, stage = batch.validate_job, "validate"
    elif batch.status == Batch.Status.IMPORTING:
        job, stage = batch.import_job, "import"
    else:
        return Progress("", 0, None)
    if job is None:
        return Progress(stage, 0, None)
    return Progress(stage, job.progress_done, job.progress_total)


# --------------------------------------------------------------------------
# The match-review queue
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    field: str
    label: str
    file: str
    record: str | None  # None: the record is not shown to this user


@dataclass(frozen=True)
class ReviewRow:
    review: MatchReview
    format_label: str
    differences: list[Difference]
    cells: list[tuple[str, str]]  # (column, value as the file wrote it), non-empty ones
    # The user may see the matched person's record (sharing.access): the
    # record's values are shown and accepting is possible.
    visible: bool
    # The row can be imported from the queue (its format reads it again
    # from the stored cells; a FHIR file's resources are not kept).
    replayable: bool


@dataclass
class ReviewQueue:
    page: Page[MatchReview]
    rows: list[ReviewRow] = field(default_factory=list)

    @property
    def patient_ids(self) -> list[uuid.UUID]:
        """The persons whose record this page shows (for the audit)."""
        return [row.review.patient_id for row in self.rows if row.visible]

    @property
    def categories(self) -> list[str]:
        return sorted({category_of(row.review.format) for row in self.rows if row.visible})


FIELD_LABELS = {"birth_date": _("birth date"), "sex": _("sex")}
SEX_LABELS = {"male": _("male"), "female": _("female")}


def _shown_value(field_name: str, value: str) -> str:
    if field_name == "sex":
        return str(SEX_LABELS.get(value, value))
    return value


def municipal_format(key: str) -> MunicipalFormat | None:
    """The municipal format (columns, category, mapper) of a format key."""
    return MUNICIPAL_FORMATS.get(key)


def replayable(format_key: str) -> bool:
    fmt = municipal_format(format_key)
    return fmt is not None and bool(fmt.columns)


def category_of(format_key: str) -> str:
    fmt = municipal_format(format_key)
    return str(fmt.category) if fmt is not None else ""


def _cells(review: MatchReview) -> list[tuple[str, str]]:
    fmt = municipal_format(review.format)
    raw = review.row or {}
    if fmt is None:
        return [(key, value) for key, value in raw.items() if value]
    ja = japanese()
    return [
        (column.ja if ja else column.key, raw[column.key])
        for column in fmt.columns
        if raw.get(column.key)
    ]


def open_reviews(municipality: Organization) -> QuerySet[MatchReview]:
    return (
        MatchReview.objects.filter(municipality=municipality, status=MatchReview.Status.OPEN)
        .select_related("batch")
        .order_by("-created_at", "-pk")
    )


def review_queue(*, user: Any, municipality: Organization, page_number: Any) -> ReviewQueue:
    """The open reviews of the municipality, newest first. The row from the
    file is the municipality's own; the matched person's recorded values
    are shown only when sharing.access lets the user see that person."""
    page = Paginator(open_reviews(municipality), REVIEWS_PAGE_SIZE).get_page(page_number)
    queue = ReviewQueue(page)
    for review in page.object_list:
        visible = bool(decide(user, review.patient_id, purpose=Purpose.PUBLIC_HEALTH))
        differences = [
            Difference(
                field=d.get("field", ""),
                label=str(FIELD_LABELS.get(d.get("field", ""), d.get("field", ""))),
                file=_shown_value(d.get("field", ""), d.get("file", "")),
                record=_shown_value(d.get("field", ""), d.get("record", "")) if visible else None,
            )
            for d in review.differences or []
        ]
        queue.rows.append(
            ReviewRow(
                review=review,
                format_label=format_label(review.format),
                differences=differences,
                cells=_cells(review),
                visible=visible,
                replayable=replayable(review.format),
            )
        )
    return queue


# --------------------------------------------------------------------------
# Coverage per birth cohort
# --------------------------------------------------------------------------

# Encounters of infant checkups carry their kind (municipal_data.formats:
# infant_checkup.KINDS, CHECKUP_TYPE_SYSTEM), Immunizations their vaccine
# (VACCINE_SYSTEM) and dose number (protocolApplied.doseNumberPositiveInt).
NOT_DONE = ("cancelled", "entered-in-error", "planned")


def resident_children(municipality: Organization, *, at: date | None = None) -> QuerySet[Patient]:
    """Children registered as residents of the municipality on `at` (today)."""
    day = at or timezone.localdate()
    residents = Residency.objects.filter(
        Q(valid_to__isnull=True) | Q(valid_to__gte=day),
        municipality=municipality,
        valid_from__lte=day,
    )
    return Patient.objects.filter(
        kind=Patient.Kind.CHILD,
        merged_into__isnull=True,
        pk__in=residents.values("patient_id"),
    )


@dataclass(frozen=True)
class Share:
    done: int
    of: int

    @property
    def percent(self) -> float | None:
        return round(self.done * 100 / self.of, 1) if self.of else None


@dataclass(frozen=True)
class CoverageLine:
    key: str
    label: str
    shares: list[Share]  # one per cohort, in Coverage.cohorts order


@dataclass
class Coverage:
    cohorts: list[int]  # fiscal years of birth (2024 = 2024-04-01 … 2025-03-31), newest first
    children: dict[int, int]
    checkups: list[CoverageLine]
    vaccinations: list[CoverageLine]

    @property
    def total_children(self) -> int:
        return sum(self.children.values())


def fiscal_year(day: date) -> int:
    """年度: the fiscal year a day falls in (April to March)."""
    return day.year if day.month >= 4 else day.year - 1


_COVERAGE_SQL = """
WITH kids AS (
    SELECT k.id,
           extract(year from (k.date_start AT TIME ZONE 'Asia/Tokyo') - interval '3 months')::int
               AS cohort
    FROM ({kids}) AS k
    WHERE k.date_start IS NOT NULL
),
checkups AS (
    SELECT DISTINCT kids.cohort, kids.id, substr(t.token, %(checkup_cut)s) AS item
    FROM ({encounters}) AS e
    CROSS JOIN LATERAL unnest(e.compartments) AS c(pid)
    JOIN kids ON kids.id = c.pid
    CROSS JOIN LATERAL unnest(e.tokens) AS t(token)
    WHERE left(t.token, %(checkup_len)s) = %(checkup_prefix)s
),
doses AS (
    SELECT DISTINCT kids.cohort, kids.id,
           substr(t.token, %(vaccine_cut)s) AS item,
           coalesce(i.content -> 'protocolApplied' -> 0 ->> 'doseNumberPositiveInt', '') AS dose,
           coalesce(i.content -> 'vaccineCode' ->> 'text', '') AS label
    FROM ({immunizations}) AS i
    CROSS JOIN LATERAL unnest(i.compartments) AS c(pid)
    JOIN kids ON kids.id = c.pid
    CROSS JOIN LATERAL unnest(i.tokens) AS t(token)
    WHERE left(t.token, %(vaccine_len)s) = %(vaccine_prefix)s
)
SELECT 'children', cohort, '', '', '', count(*) FROM kids GROUP BY cohort
UNION ALL
SELECT 'checkup', cohort, item, '', '', count(DISTINCT id) FROM checkups GROUP BY cohort, item
UNION ALL
SELECT 'dose', cohort, item, dose, max(label), count(DISTINCT id)
FROM doses GROUP BY cohort, item, dose
"""


def _sql(queryset: QuerySet[Any]) -> tuple[str, list[Any]]:
    sql, params = queryset.query.sql_with_params()
    return sql, list(params)


def coverage(*, user: Any, municipality: Organization, at: date | None = None) -> Coverage:
    """For each fiscal year of birth (年度) of the children resident in the
    municipality today: how many there are, and the share of them with
    each infant checkup done (an Encounter of that kind, not cancelled) and
    each vaccine dose given (a completed Immunization with that dose
    number). Records are read through sharing.access.visible_records, so
    a child or record the user may not see counts nowhere (DV blocks
    included). One query; the figures name no person."""
    visible = Resource.objects.filter(visible_records(user, purpose=Purpose.PUBLIC_HEALTH))
    kids_sql, kids_params = _sql(
        visible.filter(
            resource_type="Patient",
            id__in=resident_children(municipality, at=at).values("pk"),
        ).values("id", "date_start")
    )
    encounters_sql, encounter_params = _sql(
        visible.filter(resource_type="Encounter", category=Category.INFANT_CHECKUPS)
        .exclude(status__in=NOT_DONE)
        .values("compartments", "tokens")
    )
    immunizations_sql, immunization_params = _sql(
        visible.filter(resource_type="Immunization", status="completed").values(
            "compartments", "tokens", "content"
        )
    )
    # Django's SQL uses %s placeholders; ours are named: turn Django's into
    # named ones so the two can be mixed in one statement.
    named: dict[str, Any] = {}

    def rename(sql: str, params: list[Any], prefix: str) -> str:
        parts = sql.split("%s")
        assert len(parts) == len(params) + 1
        out = parts[0]
        for index, (param, rest) in enumerate(zip(params, parts[1:], strict=True)):
            name = f"{prefix}{index}"
            named[name] = param
            out += f"%({name})s" + rest
        return out

    statement = _COVERAGE_SQL.format(
        kids=rename(kids_sql, kids_params, "k"),
        encounters=rename(encounters_sql, encounter_params, "e"),
        immunizations=rename(immunizations_sql, immunization_params, "i"),
    )
    checkup_prefix = f"{CHECKUP_TYPE_SYSTEM}|"
    vaccine_prefix = f"{VACCINE_SYSTEM}|"
    named.update(
        checkup_prefix=checkup_prefix,
        checkup_len=len(checkup_prefix),
        checkup_cut=len(checkup_prefix) + 1,
        vaccine_prefix=vaccine_prefix,
        vaccine_len=len(vaccine_prefix),
        vaccine_cut=len(vaccine_prefix) + 1,
    )
    with connection.cursor() as cursor:
        cursor.execute(statement, named)
        rows = cursor.fetchall()

    children: dict[int, int] = {}
    checkups: dict[str, dict[int, int]] = {}
    doses: dict[tuple[str, str], dict[int, int]] = {}
    dose_labels: dict[tuple[str, str], str] = {}
    for kind, cohort, item, dose, label, count in rows:
        if kind == "children":
            children[cohort] = count
        elif kind == "checkup":
            checkups.setdefault(item, {})[cohort] = count
        else:
            doses.setdefault((item, dose), {})[cohort] = count
            dose_labels[(item, dose)] = label or item
    current = fiscal_year(at or timezone.localdate())
    cohorts = sorted((c for c in children if c <= current), reverse=True)[:COHORTS_SHOWN]

    def shares(counts: dict[int, int]) -> list[Share]:
        return [Share(counts.get(c, 0), children.get(c, 0)) for c in cohorts]

    ja = japanese()
    checkup_lines = [
        CoverageLine(kind.code, kind.name if ja else kind.en, shares(checkups.get(kind.code, {})))
        for kind in CHECKUP_KINDS.values()
    ] + [
        CoverageLine(code, code, shares(counts))
        for code, counts in sorted(checkups.items())
        if code not in CHECKUP_KINDS
    ]

    def dose_order(key: tuple[str, str]) -> tuple[str, int, str]:
        item, dose = key
        return (dose_labels[key], int(dose) if dose.isdigit() else 99, item)

    vaccination_lines = [
        CoverageLine(f"{item}#{dose}", _dose_label(dose_labels[(item, dose)], dose), shares(counts))
        for (item, dose), counts in sorted(doses.items(), key=lambda kv: dose_order(kv[0]))
    ]
    return Coverage(
        cohorts=cohorts,
        children={c: children[c] for c in cohorts},
        checkups=checkup_lines,
        vaccinations=vaccination_lines,
    )


def _dose_label(vaccine: str, dose: str) -> str:
    if not dose:
        return vaccine
    return gettext("%(vaccine)s, dose %(dose)s") % {"vaccine": vaccine, "dose": dose}


# --------------------------------------------------------------------------
# Counts of a validation summary or an import result
# --------------------------------------------------------------------------

COUNT_LABELS: tuple[tuple[str, Any], ...] = (
    ("rows", _("Rows")),
    ("valid", _("Valid rows")),
    ("invalid", _("Rows with errors")),
    ("new_patients", _("New persons")),
    ("created", _("New records")),
    ("updated", _("Updated records")),
    ("deleted", _("Deleted records")),
    ("unchanged", _("Unchanged")),
    ("review", _("To review (person does not match)")),
)


@dataclass(frozen=True)
class Count:
    key: str
    label: str
    value: int


def counts(values: dict[str, Any] | None, *, skip: tuple[str, ...] = ()) -> list[Count]:
    values = values or {}
    return [
        Count(key, str(label), int(values.get(key) or 0))
        for key, label in COUNT_LABELS
        if key not in skip
    ]
