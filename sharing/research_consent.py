"""Research consent: a family's choice, per person and kind of record, to
take part in anonymized research releases or not (issue 8, part 2;
docs/decisions/0023-research-consent.md).

- Who decides: the adult for herself, an active guardian for a child —
  the same rule as sharing grants (sharing.services.may_decide_for);
  anyone else gets PermissionDenied (the views answer 404).
- Rows are never updated (ResearchChoice): the newest per (patient,
  category) is in force; withdrawal is a new `refuse` row and excludes the
  person (or the category) from every later export. Releases already made
  cannot be recalled.
- Without a row, the municipality's ResearchRegime decides: opt-in (the
  default) → not included; opt-out → included from the day its notice was
  published, unless refused.

The same rules, for a whole cohort in one SQL statement, are
sharing.access.research_cohort; `effective_states` here explains them to
the family, person by person.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from phr.audit import audit_write
from phr.models import Organization, Patient, Residency, User
from phr.terminology import Category
from sharing.access import Purpose
from sharing.models import ResearchChoice, ResearchRegime
from sharing.services import may_decide_for

JAPAN = ZoneInfo("Asia/Tokyo")
AUDIT_ACTION = "research_consent.set"

CONSENT = ResearchChoice.Choice.CONSENT
REFUSE = ResearchChoice.Choice.REFUSE

# The kinds of record shown for each kind of person (all of them can be
# refused at once with "withdraw from all research", shown or not).
ADULT_CATEGORIES: tuple[str, ...] = (
    Category.PREGNANCY,
    Category.PRENATAL_CHECKUPS,
    Category.VACCINATIONS,
    Category.VITALS,
    Category.MEDICATIONS,
    Category.ALLERGIES_CONDITIONS,
)
CHILD_CATEGORIES: tuple[str, ...] = (
    Category.INFANT_CHECKUPS,
    Category.SCHOOL_CHECKUPS,
    Category.VACCINATIONS,
    Category.VITALS,
    Category.MEDICATIONS,
    Category.ALLERGIES_CONDITIONS,
)


class Reason:
    """Why a person's records of one kind are (or are not) included."""

    CHOICE = "choice"  # the family's own choice
    OPT_OUT_NOTICE = "opt_out_notice"  # the municipality's published notice
    DEFAULT_OPT_IN = "default_opt_in"  # nothing chosen, opt-in: not included


REASON_TEXT = {
    Reason.CHOICE: _("your family's choice"),
    Reason.OPT_OUT_NOTICE: _(
        "the municipality's public notice (opt-out): included unless you refuse"
    ),
    Reason.DEFAULT_OPT_IN: _("nothing chosen: not included unless you choose to take part"),
}


def categories_for(patient: Patient) -> tuple[str, ...]:
    return CHILD_CATEGORIES if patient.kind == Patient.Kind.CHILD else ADULT_CATEGORIES


def _bilingual(ja: str, en: str) -> str:
    return f"{ja} / {en}"


def _today(at: datetime | None = None) -> date:
    return timezone.localdate(at or timezone.now(), timezone=JAPAN)


# --------------------------------------------------------------------------
# The municipality and its regime
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class RegimeView:
    """A person's current municipality and how it takes part in research."""

    municipality: Organization | None
    kind: str  # ResearchRegime.Kind
    notice_url: str = ""
    notice_published_on: date | None = None
    legal_basis: str = ""
    # opt-out whose notice is published (on or before today)
    opt_out_in_force: bool = False

    @property
    def is_opt_out(self) -> bool:
        return self.kind == ResearchRegime.Kind.OPT_OUT


def current_municipalities(
    patient_ids: Iterable[uuid.UUID], *, at: datetime | None = None
) -> dict[uuid.UUID, Organization]:
    """Each patient's newest residency in force (as research_cohort takes it)."""
    today = _today(at)
    found: dict[uuid.UUID, Organization] = {}
    rows = (
        Residency.objects.filter(patient_id__in=list(patient_ids))
        .filter(valid_from__lte=today)
        .exclude(valid_to__lt=today)
        .select_related("municipality")
        .order_by("patient_id", "-valid_from", "-id")
    )
    for residency in rows:
        found.setdefault(residency.patient_id, residency.municipality)
    return found


def regimes_for(
    patient_ids: Iterable[uuid.UUID], *, at: datetime | None = None
) -> dict[uuid.UUID, RegimeView]:
    ids = list(patient_ids)
    today = _today(at)
    municipalities = current_municipalities(ids, at=at)
    regimes = {
        r.municipality_id: r
        for r in ResearchRegime.objects.filter(
            municipality_id__in={m.pk for m in municipalities.values()}
        )
    }
    out: dict[uuid.UUID, RegimeView] = {}
    for pid in ids:
        municipality = municipalities.get(pid)
        regime = regimes.get(municipality.pk) if municipality else None
        if regime is None:
            out[pid] = RegimeView(municipality=municipality, kind=ResearchRegime.Kind.OPT_IN)
            continue
        published = regime.notice_published_on
        out[pid] = RegimeView(
            municipality=municipality,
            kind=regime.kind,
            notice_url=regime.notice_url,
            notice_published_on=published,
            legal_basis=regime.legal_basis,
            opt_out_in_force=(
                regime.kind == ResearchRegime.Kind.OPT_OUT
                and published is not None
                and published <= today
            ),
        )
    return out


# --------------------------------------------------------------------------
# Effective state and history
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class CategoryState:
    category: str
    label: str
    included: bool
    reason: str  # Reason.*
    choice: str = ""  # the newest choice, when there is one
    decided_at: datetime | None = None
    decided_by_id: int | None = None

    @property
    def reason_text(self) -> str:
        return str(REASON_TEXT[self.reason])


def latest_choices(
    patient_ids: Iterable[uuid.UUID], *, at: datetime | None = None
) -> dict[tuple[uuid.UUID, str], ResearchChoice]:
    """The newest choice per (patient, category), made by `at`."""
    rows = (
        ResearchChoice.objects.filter(
            patient_id__in=list(patient_ids), decided_at__lte=at or timezone.now()
        )
        .order_by("patient_id", "category", "-decided_at", "-id")
        .distinct("patient_id", "category")
    )
    return {(row.patient_id, row.category): row for row in rows}


def effective_states(
    patients: Sequence[Patient], *, at: datetime | None = None
) -> dict[uuid.UUID, list[CategoryState]]:
    """Per patient, per kind of record shown for her: included or not, and
    why (her family's choice / the municipality's opt-out notice / the
    opt-in default). Three queries whatever the number of patients."""
    ids = [p.pk for p in patients]
    latest = latest_choices(ids, at=at)
    regimes = regimes_for(ids, at=at)
    labels = dict(Category.choices)
    out: dict[uuid.UUID, list[CategoryState]] = {}
    for patient in patients:
        regime = regimes[patient.pk]
        states = []
        for category in categories_for(patient):
            row = latest.get((patient.pk, category))
            if row is not None:
                state = CategoryState(
                    category=category,
                    label=str(labels[category]),
                    included=row.choice == CONSENT,
                    reason=Reason.CHOICE,
                    choice=row.choice,
                    decided_at=row.decided_at,
                    decided_by_id=row.decided_by_id,
                )
            elif regime.opt_out_in_force:
                state = CategoryState(category, str(labels[category]), True, Reason.OPT_OUT_NOTICE)
            else:
                state = CategoryState(category, str(labels[category]), False, Reason.DEFAULT_OPT_IN)
            states.append(state)
        out[patient.pk] = states
    return out


def history(patient: Patient, *, limit: int = 50) -> list[ResearchChoice]:
    """The patient's choices, newest first."""
    return list(
        ResearchChoice.objects.filter(patient=patient)
        .select_related("decided_by")
        .order_by("-decided_at", "-id")[:limit]
    )


# --------------------------------------------------------------------------
# Writes
# --------------------------------------------------------------------------


def _check(user: User, patient: Patient) -> None:
    if patient.merged_into_id is not None or not may_decide_for(user, patient):
        raise PermissionDenied


def set_choices(
    *, user: User, patient: Patient, categories: Sequence[str], choice: str
) -> list[ResearchChoice]:
    """Take part (`consent`) or not (`refuse`) for several kinds of record
    at once. Only the categories whose newest choice differs get a new row;
    one audit row lists them. Returns the rows written (none when nothing
    changed)."""
    _check(user, patient)
    errors: dict[str, str] = {}
    if choice not in ResearchChoice.Choice.values:
        errors["choice"] = _bilingual(
            f"選択「{choice}」は正しくありません（参加する／参加しない）。",
            f"Unknown choice “{choice}” (take part / do not take part).",
        )
    wanted = sorted(set(categories))
    if not wanted:
        errors["categories"] = _bilingual(
            "記録の種類を1つ以上選んでください。", "Choose at least one kind of record."
        )
    elif unknown := [c for c in wanted if c not in Category.values]:
        errors["categories"] = _bilingual(
            f"不明な記録の種類です: {', '.join(unknown)}",
            f"Unknown kinds of record: {', '.join(unknown)}",
        )
    if errors:
        raise ValidationError(errors)
    now = timezone.now()
    with transaction.atomic():
        # Serialize concurrent choices for one patient (two guardians).
        Patient.objects.select_for_update().filter(pk=patient.pk).get()
        latest = latest_choices([patient.pk], at=now)
        changed = [
            c
            for c in wanted
            if (row := latest.get((patient.pk, c))) is None or row.choice != choice
        ]
        if not changed:
            return []
        rows = ResearchChoice.objects.bulk_create(
            [
                ResearchChoice(
                    patient=patient, category=c, choice=choice, decided_by=user, decided_at=now
                )
                for c in changed
            ]
        )
        audit_write(
            action=AUDIT_ACTION,
            actor_id=user.pk,
            patient_id=patient.pk,
            categories=changed,
            purpose=Purpose.RESEARCH,
            detail={"choice": choice},
        )
    return rows


def set_choice(
    *, user: User, patient: Patient, category: str, choice: str
) -> ResearchChoice | None:
    """One kind of record; None when the choice was already in force."""
    rows = set_choices(user=user, patient=patient, categories=[category], choice=choice)
    return rows[0] if rows else None


def withdraw(
    *, user: User, patient: Patient, categories: Sequence[str] | None = None
) -> list[ResearchChoice]:
    """Refuse some kinds of record, or — without `categories` — every kind
    (also those not shown for this person): every later export leaves the
    person out. What was released before cannot be recalled."""
    return set_choices(
        user=user,
        patient=patient,
        categories=list(categories) if categories is not None else list(Category.values),
        choice=REFUSE,
    )
