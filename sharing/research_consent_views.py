"""The family's research page (/sharing/research/): for the signed-in
adult and each child under her guardianship, per kind of record, whether
it takes part in anonymized research and why, with a switch, "withdraw from
all research", the municipality's regime and what anonymization means
(docs/decisions/0023-research-consent.md).

Views authorize (the people the user decides for — the same rule as the
Sharing page's grants — else 404), parse, call sharing.research_consent,
render. Ids travel in POST bodies, never in paths."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from phr.models import Patient
from phr.terminology import Category
from sharing import research_consent, selectors
from sharing.access import audit_reveal
from sharing.models import ResearchChoice
from sharing.research_consent_forms import ChoiceForm, WithdrawForm

VIEW_ACTION = "view.research_consent"


@dataclass
class PersonResearch:
    patient: Patient
    name: str
    is_me: bool
    states: list[research_consent.CategoryState]
    regime: research_consent.RegimeView
    municipality_name: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def pid(self) -> str:
        return str(self.patient.pk)

    @property
    def included(self) -> list[research_consent.CategoryState]:
        return [s for s in self.states if s.included]

    @property
    def not_included(self) -> list[research_consent.CategoryState]:
        return [s for s in self.states if not s.included]


def research_people(user: Any) -> list[Patient]:
    """The people whose research choices `user` makes: herself and the
    children she decides for (not merged records)."""
    return [p for p in selectors.decidable_patients(user) if p.merged_into_id is None]


def overview(
    user: Any,
    patients: list[Patient] | None = None,
    names: dict[uuid.UUID, str] | None = None,
) -> list[PersonResearch]:
    """What the research page (and the Sharing page's summary) shows.
    `patients` and `names`, when the caller has them already, must be the
    people the user decides for (selectors.decidable_patients) and their
    names read through the policy point."""
    if patients is None:
        people = research_people(user)
    else:
        people = [p for p in patients if p.merged_into_id is None]
    if not people:
        return []
    if names is None:
        names = selectors.patient_names(user, [p.pk for p in people])
    states = research_consent.effective_states(people)
    regimes = research_consent.regimes_for([p.pk for p in people])
    return [
        PersonResearch(
            patient=p,
            name=names.get(p.pk, ""),
            is_me=p.account_id == user.pk,
            states=states[p.pk],
            regime=regimes[p.pk],
            municipality_name=(
                selectors.organization_name(regimes[p.pk].municipality)
                if regimes[p.pk].municipality
                else ""
            ),
        )
        for p in people
    ]


def _history_rows(user: Any, people: list[PersonResearch]) -> None:
    labels = dict(Category.choices)
    rows = (
        ResearchChoice.objects.filter(patient_id__in=[p.patient.pk for p in people])
        .select_related("decided_by")
        .order_by("-decided_at", "-id")
    )
    by_patient: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for row in rows[:500]:
        entries = by_patient.setdefault(row.patient_id, [])
        if len(entries) < 30:
            entries.append(
                {
                    "at": row.decided_at,
                    "category": str(labels.get(row.category, row.category)),
                    "consent": row.choice == ResearchChoice.Choice.CONSENT,
                    "by": _("you")
                    if row.decided_by_id == user.pk
                    else selectors.person_label(row.decided_by),
                }
            )
    for person in people:
        person.history = by_patient.get(person.patient.pk, [])


def _render(
    request: HttpRequest, *, errors: dict[uuid.UUID, list[str]] | None = None, status: int = 200
) -> HttpResponse:
    people = overview(request.user)
    _history_rows(request.user, people)
    for person in people:
        person.errors = (errors or {}).get(person.patient.pk, [])
    # Names and each person's research choices: one audit row per person.
    audit_reveal(request.user, [p.patient.pk for p in people], action=VIEW_ACTION)
    context = {"people": people, "consent_value": ResearchChoice.Choice.CONSENT}
    return render(request, "sharing/research_consent/index.html", context, status=status)


def _person_url(patient_id: Any) -> str:
    return f"{reverse('research_consent:index')}#research-{patient_id}"


@login_required
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    return _render(request)


def _form_errors(form: Any) -> list[str]:
    return [str(e) for errors in form.errors.values() for e in errors]


def _validation_messages(error: ValidationError) -> list[str]:
    if hasattr(error, "message_dict"):
        return [m for messages_ in error.message_dict.values() for m in messages_]
    return list(error.messages)


@login_required
@require_POST
def choose(request: HttpRequest) -> HttpResponse:
    """Take part, or not, for one or several kinds of record of one person."""
    patient = selectors.decidable_patient(request.user, request.POST.get("patient"))
    if patient.merged_into_id is not None:
        return redirect(reverse("research_consent:index"))
    form = ChoiceForm(request.POST)
    if not form.is_valid():
        return _render(request, errors={patient.pk: _form_errors(form)}, status=400)
    data = form.cleaned_data
    try:
        rows = research_consent.set_choices(
            user=request.user,
            patient=patient,
            categories=data["categories"],
            choice=data["choice"],
        )
    except ValidationError as error:
        return _render(request, errors={patient.pk: _validation_messages(error)}, status=400)
    labels = "、".join(selectors.category_labels(data["categories"]))
    if not rows:
        messages.info(request, _("Nothing changed: this was already your choice."))
    elif data["choice"] == ResearchChoice.Choice.CONSENT:
        messages.success(request, _("Taking part in research: %(kinds)s.") % {"kinds": labels})
    else:
        messages.success(
            request,
            _("Not taking part in research: %(kinds)s. Later exports leave these records out.")
            % {"kinds": labels},
        )
    return redirect(_person_url(patient.pk))


@login_required
@require_POST
def withdraw(request: HttpRequest) -> HttpResponse:
    """Withdraw one person from all research (every kind of record)."""
    patient = selectors.decidable_patient(request.user, request.POST.get("patient"))
    if patient.merged_into_id is not None:
        return redirect(reverse("research_consent:index"))
    form = WithdrawForm(request.POST)
    if not form.is_valid():
        return _render(request, errors={patient.pk: _form_errors(form)}, status=400)
    research_consent.withdraw(user=request.user, patient=patient)
    messages.success(
        request,
        _(
            "Withdrawn from all research. No later export will include these records; "
            "data already released cannot be recalled."
        ),
    )
    return redirect(_person_url(patient.pk))
