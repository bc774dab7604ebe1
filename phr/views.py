"""The family's own pages: the family overview and a person's timeline.

Views authorize (sharing.access), read (phr.selectors) and render.
"""

from __future__ import annotations

import uuid

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_safe

from phr import selectors
from phr.models import Role
from phr.roles import active_memberships, is_staff_user
from sharing.access import access_patient, audit_reveal


@require_safe
@login_required
def home(request: HttpRequest) -> HttpResponse:
    """わたしの家族: me, my pregnancy and my children."""
    family = selectors.family(user=request.user)
    if family.is_empty and is_staff_user(request.user):
        memberships = active_memberships(request.user)
        staff_links = {
            "with_me": any(m.role == Role.CLINIC_STAFF for m in memberships),
            "clinic": any(m.role == Role.CLINIC_STAFF for m in memberships),
            "responder": any(m.role == Role.EMERGENCY_RESPONDER for m in memberships),
            "municipal": any(m.role == Role.MUNICIPAL_STAFF for m in memberships),
            "officer": any(
                m.role == Role.MUNICIPAL_STAFF and m.is_privacy_officer for m in memberships
            ),
            "researcher": any(m.role == Role.RESEARCHER for m in memberships),
        }
        # Research reviews: platform admins and municipal privacy officers.
        staff_links["research_reviews"] = bool(
            staff_links["officer"] or getattr(request.user, "is_platform_admin", False)
        )
        return render(request, "phr/staff_home.html", {"staff_links": staff_links})
    # The page shows names, birth dates and a due date: one audit row per
    # person shown.
    audit_reveal(request.user, family.patient_ids, action="view.family")
    return render(request, "phr/home.html", {"family": family})


def _offset(request: HttpRequest) -> int:
    try:
        return max(int(request.GET.get("offset", "0")), 0)
    except ValueError:
        return 0


@require_safe
@login_required
def person(request: HttpRequest, patient_id: uuid.UUID) -> HttpResponse:
    """One person's records, newest first, grouped by day. htmx asks for
    the next page with HX-Request and gets only the timeline fragment."""
    patient = access_patient(request.user, patient_id, action="view.timeline")
    page = selectors.timeline(
        user=request.user,
        patient=patient,
        offset=_offset(request),
        limit=selectors.TIMELINE_PAGE_SIZE,
    )
    context = {
        "person": selectors.person(user=request.user, patient=patient),
        "page": page,
        "is_me": patient.account_id == request.user.pk,
    }
    fragment = request.headers.get("HX-Request") == "true"
    response = render(
        request, "phr/_timeline_page.html" if fragment else "phr/person.html", context
    )
    patch_vary_headers(response, ["HX-Request"])
    return response
