"""Quick entry of home measurements, mobile-first (/vitals/<patient_id>/):
one page per person with a big, simple form per measurement — for the
mother blood pressure and pulse, weight, temperature, blood glucose and
the fetal movement count (胎動カウント); for a child height/length, weight,
head circumference and temperature — and the recent entries, newest first,
with edit and delete for their author.

Views authorize (sharing.access: access_patient with purpose personal for
reading, as the handbook does; may_write for writing), parse (entry_forms),
write (vitals.records) and render. Only the family's own grants open the
page: the mother for herself, a guardian for a child (the other guardian
sees the child's, not the mother's). Everyone else gets 404.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import get_language, pgettext_lazy
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from phr import selectors
from phr.models import Patient, Provenance, Resource
from phr.selectors import JAPAN
from sharing.access import Category, Purpose, access_patient, audit_denied, may_write
from vitals import entry_forms
from vitals import records as r

RECENT = 30

SOURCE_BADGES = {
    Provenance.Origin.SELF: pgettext_lazy("vitals source", "Entered"),
    Provenance.Origin.DEVICE: pgettext_lazy("vitals source", "Device"),
}


@dataclass(frozen=True)
class Entry:
    id: uuid.UUID
    kind: str
    label: str
    value: str
    taken_at: datetime  # in Japan
    source: str  # Provenance origin
    badge: str
    device: str
    editable: bool


def _value_text(reading: r.Reading) -> str:
    k = r.KINDS[reading.kind]
    numbers = [_plain(v) for v in reading.values]
    if k.key == r.BLOOD_PRESSURE:
        return f"{numbers[0]}/{numbers[1]} mmHg"
    unit = {
        "Cel": "℃",
        "/min": _("/min"),
        "min": _("min"),
        "/d": _("steps"),
        "mm[Hg]": "mmHg",
    }.get(k.unit, k.unit)
    return f"{numbers[0]} {unit}"


def _plain(value: Decimal) -> str:
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _entry(row: Resource, user_id: int) -> Entry | None:
    reading = r.reading_of(row.content or {})
    if reading is None:
        return None
    origin = row.provenance.origin if row.provenance else Provenance.Origin.SYSTEM
    device = ((row.content or {}).get("device") or {}).get("display") or ""
    badge = SOURCE_BADGES.get(origin) or selectors.SOURCE_LABELS.get(origin, "")
    return Entry(
        id=row.id,
        kind=reading.kind,
        label=str(r.KINDS[reading.kind].label),
        value=_value_text(reading),
        taken_at=timezone.localtime(reading.taken_at, JAPAN),
        source=origin,
        badge=str(badge),
        device=device,
        editable=r.author_id(row) == user_id and reading.kind in entry_forms.EDIT_FORM,
    )


def recent_entries(*, user: Any, patient: Patient, limit: int = RECENT) -> list[Entry]:
    rows = r.vitals_queryset(user=user, patient=patient)[:limit]
    return [e for e in (_entry(row, user.pk) for row in rows) if e is not None]


def _readable(request: HttpRequest, patient_id: uuid.UUID, action: str) -> Patient:
    return access_patient(
        request.user, patient_id, category=Category.VITALS, purpose=Purpose.PERSONAL, action=action
    )


def _writable(request: HttpRequest, patient_id: uuid.UUID, action: str) -> Patient:
    """The person whose vitals request.user may write, or Http404 (a
    missing id and a refusal look the same; the refusal is audited)."""
    patient = _readable(request, patient_id, action)
    decision = may_write(request.user, patient, category=Category.VITALS, purpose=Purpose.PERSONAL)
    if not decision:
        audit_denied(request.user, patient.pk, action=action, rule=decision.rule)
        raise Http404
    return patient


def _forms_for(patient: Patient, lying: bool) -> tuple[type[entry_forms.EntryForm], ...]:
    return (
        entry_forms.CHILD_FORMS if patient.kind == Patient.Kind.CHILD else entry_forms.MOTHER_FORMS
    )


def _lying(person: selectors.Person) -> bool:
    """Children under 2 are measured lying down (身長・臥位), as a rule."""
    if person.birth_date is None:
        return True
    today = timezone.localdate(timezone=JAPAN)
    return selectors.age_in_months(person.birth_date, today) < 24


def _make_form(
    cls: type[entry_forms.EntryForm], person: selectors.Person, *args: Any, **kwargs: Any
) -> entry_forms.EntryForm:
    if cls is entry_forms.LengthForm:
        kwargs["lying"] = _lying(person)
    return cls(*args, birth_date=person.birth_date, **kwargs)


def _page(
    request: HttpRequest,
    patient: Patient,
    *,
    bound: entry_forms.EntryForm | None = None,
    status: int = 200,
) -> HttpResponse:
    person = selectors.person(user=request.user, patient=patient)
    may = bool(may_write(request.user, patient, category=Category.VITALS, purpose=Purpose.PERSONAL))
    forms = []
    if may:
        for cls in _forms_for(patient, _lying(person)):
            if bound is not None and isinstance(bound, cls):
                forms.append(bound)
            else:
                forms.append(_make_form(cls, person))
    return render(
        request,
        "vitals/entry/home.html",
        {
            "patient": patient,
            "person": person,
            "is_child": patient.kind == Patient.Kind.CHILD,
            "may_write": may,
            "forms": forms,
            "open_form": bound.slug if bound is not None else "",
            "entries": recent_entries(user=request.user, patient=patient),
        },
        status=status,
    )


@require_safe
@login_required
def home(request: HttpRequest, patient_id: uuid.UUID) -> HttpResponse:
    """The person's quick-entry page and recent entries."""
    patient = _readable(request, patient_id, "vitals.view")
    return _page(request, patient)


@require_POST
@login_required
def add(request: HttpRequest, patient_id: uuid.UUID, slug: str) -> HttpResponse:
    """One form's measurement(s); the page again with the errors (400)."""
    patient = _writable(request, patient_id, "vitals.write")
    person = selectors.person(user=request.user, patient=patient)
    cls = entry_forms.FORMS.get(slug)
    if cls is None or cls not in _forms_for(patient, True):
        raise Http404
    form = _make_form(cls, person, request.POST)
    if form.is_valid():
        try:
            r.vitals_write(user=request.user, patient=patient, readings=form.readings())
        except r.VitalError as error:  # checked by the form already; kept for safety
            form.add_error(None, error.message(get_language() or "ja"))
        else:
            messages.success(request, _("Saved: %(what)s.") % {"what": form.title})
            return redirect(reverse("vitals:entry-home", args=[patient.pk]) + "#recent")
    return _page(request, patient, bound=form, status=400)


def _own(
    request: HttpRequest, patient_id: uuid.UUID, record_id: uuid.UUID, action: str
) -> tuple[Patient, Resource, r.Reading]:
    """A hand entry request.user made for this person, or Http404."""
    patient = _writable(request, patient_id, action)
    row = r.vitals_queryset(user=request.user, patient=patient).filter(id=record_id).first()
    reading = r.reading_of(row.content) if row is not None else None
    if (
        row is None
        or reading is None
        or r.author_id(row) != request.user.pk
        or reading.kind not in entry_forms.EDIT_FORM
    ):
        raise Http404
    return patient, row, reading


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
def edit(request: HttpRequest, patient_id: uuid.UUID, record_id: uuid.UUID) -> HttpResponse:
    """Correct an entry (its author only): a new version."""
    patient, row, reading = _own(request, patient_id, record_id, "vitals.edit")
    person = selectors.person(user=request.user, patient=patient)
    kind = r.KINDS[reading.kind]
    cls = entry_forms.EDIT_FORM[kind.key]
    form = _make_form(
        cls,
        person,
        request.POST if request.method == "POST" else None,
        initial=entry_forms.edit_initial(reading),
        editing=kind,
    )
    if request.method == "POST" and form.is_valid():
        try:
            [new] = form.readings()
            r.vital_edit(user=request.user, patient=patient, record_id=row.id, reading=new)
        except PermissionDenied:
            raise Http404 from None
        except r.VitalError as error:
            form.add_error(None, error.message(get_language() or "ja"))
        else:
            messages.success(request, _("The entry was corrected."))
            return redirect(reverse("vitals:entry-home", args=[patient.pk]) + "#recent")
    return render(
        request,
        "vitals/entry/edit.html",
        {"patient": patient, "person": person, "form": form, "kind": kind, "record": row},
        status=400 if request.method == "POST" else 200,
    )


@require_POST
@login_required
def delete(request: HttpRequest, patient_id: uuid.UUID, record_id: uuid.UUID) -> HttpResponse:
    """Delete an entry (its author only): a tombstone, history kept."""
    patient, row, _reading = _own(request, patient_id, record_id, "vitals.delete")
    try:
        r.vital_delete(user=request.user, patient=patient, record_id=row.id)
    except PermissionDenied:
        raise Http404 from None
    messages.success(request, _("The entry was deleted."))
    return redirect(reverse("vitals:entry-home", args=[patient.pk]) + "#recent")
