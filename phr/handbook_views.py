"""The digital MCH handbook (母子健康手帳): a child's handbook and a
mother's pregnancy handbook, on screen and as a print page laid out like
the paper handbook; the family's own entries (school checkups, birth data,
notes, vaccinations given elsewhere).

Views authorize (sharing.access: access_patient for reading, may_write
with purpose=personal for the family's own entries), read
(phr.handbook), write (phr.handbook_services) and render. The handbook
is the family's page: only the family's own grants open it (self,
guardian — Purpose.PERSONAL); clinic and municipal staff have their
portals (docs/decisions/0014-handbook.md). Everyone else gets 404.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from phr import handbook, handbook_services, schedules
from phr.handbook_forms import BirthDataForm, NoteForm, SchoolCheckupForm, VaccinationForm
from phr.models import Patient
from sharing.access import Category as C
from sharing.access import (
    Purpose,
    access_patient,
    audit_denied,
    audit_reveal,
    may_write,
)


def _readable(request: HttpRequest, patient_id: uuid.UUID, action: str) -> Patient:
    return access_patient(request.user, patient_id, purpose=Purpose.PERSONAL, action=action)


def _writable(
    request: HttpRequest,
    patient_id: uuid.UUID,
    *,
    category: str,
    action: str,
    child_only: bool = False,
) -> Patient:
    """The patient whose handbook `request.user` may write `category`
    entries in (herself, or a child she is guardian of), or Http404 — a
    missing id and a refusal alike; the refusal is audited, showing the
    form is audited as a reveal."""
    patient = Patient.objects.filter(pk=patient_id).first()
    if patient is None:
        raise Http404
    decision = may_write(request.user, patient, category=category, purpose=Purpose.PERSONAL)
    if not decision:
        audit_denied(request.user, patient.pk, action=action, rule=decision.rule)
        raise Http404
    if child_only and patient.kind != Patient.Kind.CHILD:
        raise Http404  # school checkups and birth data are a child's
    audit_reveal(
        request.user, [patient.pk], categories=[category], action=action, purpose=Purpose.PERSONAL
    )
    return patient


def _may(request: HttpRequest, patient: Patient, category: str) -> bool:
    return bool(may_write(request.user, patient, category=category, purpose=Purpose.PERSONAL))


def _context(request: HttpRequest, patient: Patient) -> dict[str, Any]:
    today = handbook_services.today()
    context: dict[str, Any] = {
        "patient": patient,
        "is_child": patient.kind == Patient.Kind.CHILD,
        "today": today,
        # The medication notebook (お薬手帳) lists every medicine.
        "medications_url": reverse("medication:notebook", args=[patient.pk]),
    }
    if patient.kind == Patient.Kind.CHILD:
        context["book"] = handbook.child_handbook(user=request.user, patient=patient)
        # The schedule engine (phr.schedules) decides due / overdue; the
        # handbook only shows it.
        plan = schedules.child_schedule(user=request.user, patient=patient, today=today)
        if plan.birth_date is not None:
            context["schedule"] = handbook.schedule_view(plan)
        context["may_enter_school"] = _may(request, patient, C.SCHOOL_CHECKUPS)
        context["may_enter_birth"] = _may(request, patient, C.INFANT_CHECKUPS)
        context["may_note"] = context["may_enter_birth"]
        context["may_enter_vaccination"] = _may(request, patient, C.VACCINATIONS)
    else:
        context["book"] = handbook.mother_handbook(user=request.user, patient=patient, today=today)
        context["may_note"] = _may(request, patient, C.PREGNANCY)
    return context


@require_safe
@login_required
def book(request: HttpRequest, patient_id: uuid.UUID) -> HttpResponse:
    """The handbook of one person: a child's, or a mother's pregnancies."""
    patient = _readable(request, patient_id, "view.handbook")
    return render(request, "phr/handbook/book.html", _context(request, patient))


@require_safe
@login_required
def book_print(request: HttpRequest, patient_id: uuid.UUID) -> HttpResponse:
    """The same handbook laid out like the paper 母子健康手帳, to print."""
    patient = _readable(request, patient_id, "view.handbook_print")
    return render(request, "phr/handbook/print.html", _context(request, patient))


# --------------------------------------------------------------------------
# The family's own entries
# --------------------------------------------------------------------------


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
def school_checkup_new(request: HttpRequest, patient_id: uuid.UUID) -> HttpResponse:
    """学校健診: the parent enters the results the school did not send."""
    patient = _writable(
        request,
        patient_id,
        category=C.SCHOOL_CHECKUPS,
        action="handbook.school_checkup",
        child_only=True,
    )
    person = handbook.selectors.person(user=request.user, patient=patient)
    form = SchoolCheckupForm(
        request.POST if request.method == "POST" else None, birth_date=person.birth_date
    )
    if request.method == "POST" and form.is_valid():
        handbook_services.school_checkup_record(
            user=request.user, patient=patient, entry=form.entry()
        )
        messages.success(request, _("The school checkup was added to the handbook."))
        return redirect(reverse("handbook:book", args=[patient.pk]) + "#school-checkups")
    status = 400 if request.method == "POST" else 200
    return render(
        request,
        "phr/handbook/school_checkup_form.html",
        {"patient": patient, "person": person, "form": form},
        status=status,
    )


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
def birth_data(request: HttpRequest, patient_id: uuid.UUID) -> HttpResponse:
    """出生時の記録: the parent enters the birth data no record holds."""
    patient = _writable(
        request, patient_id, category=C.INFANT_CHECKUPS, action="handbook.birth", child_only=True
    )
    person = handbook.selectors.person(user=request.user, patient=patient)
    recorded = handbook.birth_items_recorded(user=request.user, patient=patient)
    form = BirthDataForm(request.POST if request.method == "POST" else None, recorded=set(recorded))
    context = {"patient": patient, "person": person, "form": form, "recorded": recorded}
    if person.birth_date is None:
        form.fields.clear()
        context["no_birth_date"] = True
        return render(request, "phr/handbook/birth_form.html", context)
    if request.method == "POST" and form.fields and form.is_valid():
        handbook_services.birth_data_record(
            user=request.user, patient=patient, data=form.data_entered(), birth=person.birth_date
        )
        messages.success(request, _("The birth data were added to the handbook."))
        return redirect(reverse("handbook:book", args=[patient.pk]) + "#birth")
    status = 400 if request.method == "POST" else 200
    return render(request, "phr/handbook/birth_form.html", context, status=status)


def _note_category(patient: Patient) -> str:
    return handbook_services.note_category(patient)


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
def note_new(request: HttpRequest, patient_id: uuid.UUID) -> HttpResponse:
    """A note of the family (保護者の記録 / 妊婦の記録)."""
    patient = Patient.objects.filter(pk=patient_id).first()
    if patient is None:
        raise Http404
    patient = _writable(
        request, patient_id, category=_note_category(patient), action="handbook.note"
    )
    form = NoteForm(
        request.POST if request.method == "POST" else None,
        initial={"date": handbook_services.today()},
    )
    if request.method == "POST" and form.is_valid():
        handbook_services.note_write(
            user=request.user,
            patient=patient,
            day=form.cleaned_data["date"],
            text=form.cleaned_data["text"],
        )
        messages.success(request, _("The note was saved."))
        return redirect(reverse("handbook:book", args=[patient.pk]) + "#notes")
    person = handbook.selectors.person(user=request.user, patient=patient)
    status = 400 if request.method == "POST" else 200
    return render(
        request,
        "phr/handbook/note_form.html",
        {"patient": patient, "person": person, "form": form},
        status=status,
    )


def _own_note(
    request: HttpRequest, patient_id: uuid.UUID, note_id: uuid.UUID
) -> tuple[Patient, Any]:
    """The note and its patient when `request.user` wrote it and may still
    write there; else Http404 (someone else's note, or none)."""
    patient = Patient.objects.filter(pk=patient_id).first()
    if patient is None:
        raise Http404
    patient = _writable(
        request, patient_id, category=_note_category(patient), action="handbook.note_edit"
    )
    note = handbook.note_of(user=request.user, patient=patient, note_id=note_id)
    if note is None or handbook_services.note_author_id(note) != request.user.pk:
        raise Http404
    return patient, note


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
def note_edit(request: HttpRequest, patient_id: uuid.UUID, note_id: uuid.UUID) -> HttpResponse:
    patient, note = _own_note(request, patient_id, note_id)
    content = note.content or {}
    initial = {"date": handbook._day(note), "text": content.get("valueString") or ""}
    form = NoteForm(request.POST if request.method == "POST" else None, initial=initial)
    if request.method == "POST" and form.is_valid():
        handbook_services.note_write(
            user=request.user,
            patient=patient,
            day=form.cleaned_data["date"],
            text=form.cleaned_data["text"],
            note_id=note.id,
        )
        messages.success(request, _("The note was saved."))
        return redirect(reverse("handbook:book", args=[patient.pk]) + "#notes")
    person = handbook.selectors.person(user=request.user, patient=patient)
    status = 400 if request.method == "POST" else 200
    return render(
        request,
        "phr/handbook/note_form.html",
        {"patient": patient, "person": person, "form": form, "note": note},
        status=status,
    )


@require_POST
@login_required
def note_delete(request: HttpRequest, patient_id: uuid.UUID, note_id: uuid.UUID) -> HttpResponse:
    patient, note = _own_note(request, patient_id, note_id)
    handbook_services.note_delete(user=request.user, patient=patient, note_id=note.id)
    messages.success(request, _("The note was deleted."))
    return redirect(reverse("handbook:book", args=[patient.pk]) + "#notes")


# --------------------------------------------------------------------------
# Vaccinations given elsewhere (a parent's report)
# --------------------------------------------------------------------------


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
def vaccination_new(request: HttpRequest, patient_id: uuid.UUID) -> HttpResponse:
    """予防接種の記録: a dose given elsewhere (before moving here, read off
    the paper handbook), reported by a guardian."""
    patient = _writable(
        request,
        patient_id,
        category=C.VACCINATIONS,
        action="handbook.vaccination",
        child_only=True,
    )
    person = handbook.selectors.person(user=request.user, patient=patient)
    # A link may name the dose to report (?dose=mr:2, as the form's values).
    initial = {"dose": request.GET.get("dose", ""), "date": None}
    form = VaccinationForm(
        request.POST if request.method == "POST" else None,
        birth_date=person.birth_date,
        initial=initial,
    )
    if request.method == "POST" and form.is_valid():
        handbook_services.vaccination_record(
            user=request.user, patient=patient, dose=form.reported()
        )
        messages.success(request, _("The vaccination was added to the handbook."))
        return redirect(reverse("handbook:book", args=[patient.pk]) + "#vaccinations")
    status = 400 if request.method == "POST" else 200
    return render(
        request,
        "phr/handbook/vaccination_form.html",
        {"patient": patient, "person": person, "form": form},
        status=status,
    )


@require_POST
@login_required
def vaccination_delete(
    request: HttpRequest, patient_id: uuid.UUID, record_id: uuid.UUID
) -> HttpResponse:
    """Delete a dose the user reported herself (a tombstone; history kept).
    Someone else's report, and the municipality's or a clinic's records,
    are 404: they stay with their source."""
    patient = _writable(
        request,
        patient_id,
        category=C.VACCINATIONS,
        action="handbook.vaccination_delete",
        child_only=True,
    )
    record = handbook.vaccination_of(user=request.user, patient=patient, record_id=record_id)
    if record is None or handbook_services.vaccination_author_id(record) != request.user.pk:
        raise Http404
    handbook_services.vaccination_delete(user=request.user, patient=patient, record_id=record.id)
    messages.success(request, _("The vaccination you entered was deleted."))
    return redirect(reverse("handbook:book", args=[patient.pk]) + "#vaccinations")
