"""The family's vitals alerts (/vitals/alerts/): every alert of the
mother and the children she is guardian of, with the advice and the
readings that raised it; and one person's alerts.

The pages are the family's: only the family's own grants open them (self,
guardian — Purpose.PERSONAL); clinics see the same Flags in their portal,
under the family's vitals consent. Views authorize (sharing.access), read
(vitals.alerts.alert_lines), audit what they show and render.
"""

from __future__ import annotations

import uuid

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_safe

from phr.selectors import family, person
from sharing.access import Category, Purpose, access_patient, audit_reveal
from vitals.alerts import alert_lines


@login_required
@require_safe
def alert_list(request: HttpRequest) -> HttpResponse:
    """Every alert of the family: the user herself and her children."""
    household = family(user=request.user)
    people = ([household.me] if household.me else []) + household.children
    ids = [p.patient_id for p in people]
    found = alert_lines(user=request.user, patient_ids=ids) if ids else {}
    if ids:
        audit_reveal(
            request.user,
            ids,
            categories=[Category.VITALS],
            action="view.alerts",
            purpose=Purpose.PERSONAL,
        )
    sections = [(p, found.get(p.patient_id, [])) for p in people]
    return render(
        request,
        "vitals/alerts/list.html",
        {
            "sections": sections,
            "any_current": any(a.current for _, lines in sections for a in lines),
            "now": timezone.now(),
        },
    )


@login_required
@require_safe
def alert_patient(request: HttpRequest, patient_id: uuid.UUID) -> HttpResponse:
    """One person's alerts (herself or a child); 404 for anyone else."""
    patient = access_patient(
        request.user,
        patient_id,
        category=Category.VITALS,
        purpose=Purpose.PERSONAL,
        action="view.alerts",
    )
    lines = alert_lines(user=request.user, patient_ids=[patient.pk]).get(patient.pk, [])
    return render(
        request,
        "vitals/alerts/patient.html",
        {
            "patient": patient,
            "person": person(user=request.user, patient=patient),
            "current": [a for a in lines if a.current],
            "past": [a for a in lines if not a.current],
        },
    )
