"""The medication notebook pages (お薬手帳), under /medications/:

- ``<uuid>/`` the notebook of one person: the medicines taken now, every
  dispensing newest first grouped by day and pharmacy, OTC and
  self-entered medicines, allergies — each with its source. Anyone the
  policy point lets see the person's medications (sharing.access).
- ``<uuid>/import/`` paste, scan (camera) or upload JAHIS data, and the
  report of what was imported and what was skipped;
- ``<uuid>/new/`` and ``<uuid>/statements/<uuid>/edit/`` a medicine the
  family enters itself (edited only by whoever entered it).

Importing and entering are for the person herself (rule ``self``) and a
child's guardians (rule ``guardian``) only: the policy point's family write
rule, sharing.access.may_write(purpose=personal), for medications (and,
for an import, allergies_conditions, which its allergy notes become).
Everyone else — a person she shares with, a clinic, a stranger, a missing
id — gets the same 404, and the refusal is audited.
"""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.translation import get_language
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods, require_safe

from phr import medications, selectors
from phr.medication_forms import ImportForm, StatementForm
from phr.models import Patient, Provenance, Resource
from phr.terminology import Category
from sharing.access import (
    Purpose,
    access_patient,
    audit_denied,
    audit_reveal,
    may_write,
    visible_records,
)

PENDING_SESSION_KEY = "medications.pending"
NOTEBOOK_TYPES = ("MedicationDispense", "MedicationStatement", "AllergyIntolerance")


def _today() -> date:
    return timezone.localdate(timezone=selectors.JAPAN)


def may_import(user: Any, patient: Patient) -> bool:
    """The person herself or a child's guardian (no audit: the caller
    audits what it shows)."""
    return bool(may_write(user, patient, category=Category.MEDICATIONS, purpose=Purpose.PERSONAL))


def _writable_patient(
    request: HttpRequest,
    patient_id: uuid.UUID,
    *,
    action: str,
    categories: tuple[str, ...] = (Category.MEDICATIONS,),
) -> Patient:
    """The patient `request.user` may import and enter medicines for, or
    Http404 (audited) — a missing id and a person one may not write for
    alike. Showing the page is audited as a reveal."""
    patient = Patient.objects.filter(pk=patient_id).first()
    if patient is None:
        raise Http404  # as access_patient: nothing to audit about no one
    for category in categories:
        decision = may_write(request.user, patient, category=category, purpose=Purpose.PERSONAL)
        if not decision:
            # A reader (a person or clinic she shares with) is refused like anyone.
            audit_denied(request.user, patient.pk, action=action, rule=decision.rule)
            raise Http404
    audit_reveal(
        request.user,
        [patient.pk],
        categories=[Category.MEDICATIONS],
        action=action,
        purpose=Purpose.PERSONAL,
    )
    return patient


def _origins(rows: list[Resource]) -> dict[int, str]:
    ids = {row.provenance_id for row in rows}
    return dict(Provenance.objects.filter(pk__in=ids).values_list("pk", "origin"))


def _source_label(origin: str) -> str:
    label = selectors.SOURCE_LABELS.get(origin) or selectors.SOURCE_LABELS[Provenance.Origin.SYSTEM]
    return str(label)


@require_safe
@login_required
def notebook(request: HttpRequest, patient_id: uuid.UUID) -> HttpResponse:
    patient = access_patient(
        request.user, patient_id, category=Category.MEDICATIONS, action="view.medications"
    )
    rows = list(
        Resource.objects.filter(
            visible_records(request.user),
            compartments__overlap=[patient.pk],
            resource_type__in=NOTEBOOK_TYPES,
        ).order_by("-date_start", "id")
    )
    origins = _origins(rows)
    today = _today()
    writer = may_import(request.user, patient)
    authors = {}
    statements = [r for r in rows if r.resource_type == "MedicationStatement"]
    if writer and statements:
        authors = medications.statement_authors([r.pk for r in statements])
    current = medications.current_medicines(
        [r for r in rows if r.resource_type != "AllergyIntolerance"], today=today, origins=origins
    )
    language = get_language() or "ja"
    context = {
        "person": selectors.person(user=request.user, patient=patient),
        "patient": patient,
        "is_me": patient.account_id == request.user.pk,
        "today": today,
        "current": [
            {"medicine": m, "source": m.origin, "source_label": _source_label(m.origin)}
            for m in current
        ],
        "visits": [
            {"visit": v, "source_label": _source_label(v.origin)}
            for v in medications.notebook_visits(rows, origins=origins)
        ],
        "statements": [
            {
                "row": row,
                "name": medications.medicine_name(row.content),
                "detail": medications.medicine_detail(row.content),
                "period": medications.statement_period(row.content),
                "status": row.status,
                "notes": medications.note_texts(row.content),
                "source": origins.get(row.provenance_id, ""),
                "source_label": _source_label(origins.get(row.provenance_id, "")),
                "editable": writer and authors.get(row.pk) == request.user.pk,
            }
            for row in statements
        ],
        "allergies": [
            {
                "row": row,
                "name": medications.allergy_name(row.content),
                "notes": medications.note_texts(row.content),
                "source": origins.get(row.provenance_id, ""),
                "source_label": _source_label(origins.get(row.provenance_id, "")),
            }
            for row in rows
            if row.resource_type == "AllergyIntolerance"
        ],
        "can_write": writer,
        "language": language,
    }
    return render(request, "phr/medications/notebook.html", context)


def _pending(request: HttpRequest, patient: Patient) -> dict[str, Any]:
    stored = request.session.get(PENDING_SESSION_KEY) or {}
    value = stored.get(str(patient.pk)) if isinstance(stored, dict) else None
    return value if isinstance(value, dict) else {}


def _keep_pending(request: HttpRequest, patient: Patient, kept: dict[str, Any]) -> None:
    stored = request.session.get(PENDING_SESSION_KEY)
    stored = dict(stored) if isinstance(stored, dict) else {}
    if kept:
        stored[str(patient.pk)] = kept
    else:
        stored.pop(str(patient.pk), None)
    request.session[PENDING_SESSION_KEY] = stored


def _waiting(request: HttpRequest, patient: Patient) -> list[medications.Waiting]:
    _, _, waiting = medications.pending_merge(_pending(request, patient), [], now=timezone.now())
    return waiting


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
def import_view(request: HttpRequest, patient_id: uuid.UUID) -> HttpResponse:
    # Its allergy and side-effect notes become AllergyIntolerance records.
    patient = _writable_patient(
        request,
        patient_id,
        action="medications.import",
        categories=(Category.MEDICATIONS, Category.ALLERGIES_CONDITIONS),
    )
    person = selectors.person(user=request.user, patient=patient)
    if request.method == "POST" and request.POST.get("action") == "discard":
        _keep_pending(request, patient, {})
        messages.info(request, _("The parts scanned so far were discarded."))
        return redirect("medication:import", patient_id=patient.pk)
    posted = request.method == "POST"
    form = ImportForm(request.POST, request.FILES) if posted else ImportForm()
    if posted and form.is_valid():
        report, kept = medications.medications_import(
            patient=patient,
            user=request.user,
            text=form.cleaned_data["decoded"],
            via=form.cleaned_data["via"],
            pending=_pending(request, patient),
            birth_date=person.birth_date,
            encoding=form.cleaned_data["encoding"],
        )
        _keep_pending(request, patient, kept)
        return render(
            request,
            "phr/medications/import_result.html",
            {"person": person, "patient": patient, "report": report, "language": get_language()},
        )
    return render(
        request,
        "phr/medications/import.html",
        {
            "person": person,
            "patient": patient,
            "form": form,
            "waiting": _waiting(request, patient),
        },
        # A posted form with errors (no text and no file) is a bad request,
        # as the handbook's and the clinic's forms answer.
        status=400 if posted else 200,
    )


def _statement_row(patient: Patient, resource_id: uuid.UUID) -> Resource | None:
    return Resource.objects.filter(
        pk=resource_id,
        resource_type="MedicationStatement",
        compartments__overlap=[patient.pk],
        deleted=False,
    ).first()


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
def statement_new(request: HttpRequest, patient_id: uuid.UUID) -> HttpResponse:
    patient = _writable_patient(request, patient_id, action="medications.add")
    return _statement_form(request, patient, None)


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
def statement_edit(
    request: HttpRequest, patient_id: uuid.UUID, resource_id: uuid.UUID
) -> HttpResponse:
    patient = _writable_patient(request, patient_id, action="medications.edit")
    row = _statement_row(patient, resource_id)
    if row is None or medications.statement_author_id(row.pk) != request.user.pk:
        # Only whoever entered it edits it; a pharmacy's record is not editable.
        raise Http404
    return _statement_form(request, patient, row)


def _statement_form(request: HttpRequest, patient: Patient, row: Resource | None) -> HttpResponse:
    today = _today()
    initial = medications.statement_initial(row.content) if row is not None else {"start": today}
    posted = request.method == "POST"
    form = StatementForm(request.POST if posted else None, initial=initial, today=today)
    if posted and form.is_valid():
        data = form.cleaned_data
        medications.statement_save(
            patient=patient,
            user=request.user,
            name=data["name"],
            dosage=data.get("dosage") or "",
            start=data.get("start"),
            end=data.get("end"),
            note=data.get("note") or "",
            taking=bool(data.get("taking")),
            resource_id=row.pk if row is not None else None,
        )
        messages.success(
            request, _("The medicine was saved.") if row is None else _("The medicine was updated.")
        )
        return redirect("medication:notebook", patient_id=patient.pk)
    return render(
        request,
        "phr/medications/statement_form.html",
        {
            "person": selectors.person(user=request.user, patient=patient),
            "patient": patient,
            "form": form,
            "editing": row is not None,
        },
        status=400 if posted else 200,
    )
