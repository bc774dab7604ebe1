"""The Sharing pages: a family's "who can see what" with grant, revoke and
the emergency setting; the access history with "report as suspicious";
the privacy officer's queue; and "shared with me" for grantees.

Views authorize (the people a user decides for, sharing.access for
grantees), parse, call a service, render. Ids travel in POST bodies and
query strings, never in paths: every lookup is scoped to the user, and
anything outside that scope is a 404.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from phr.auth import sensitive_action
from sharing import selectors
from sharing.access import audit_reveal, forget_grants
from sharing.forms import (
    GRANT_FORMS,
    ClinicGrantForm,
    CloseReportForm,
    EmergencyPreferenceForm,
    PersonGrantForm,
    ReportForm,
)
from sharing.models import ConsentPurpose
from sharing.reports import access_report_close
from sharing.research_consent_views import overview as research_overview
from sharing.services import (
    access_report_create,
    consent_grant,
    consent_revoke,
    emergency_preference_set,
)


def _person_url(patient_id: Any) -> str:
    return f"{reverse('sharing:index')}#person-{patient_id}"


def _nav(request: HttpRequest) -> dict[str, Any]:
    return {"is_privacy_officer": bool(selectors.privacy_officer_municipalities(request.user))}


# --------------------------------------------------------------------------
# Who can see what, grant, revoke, emergency setting
# --------------------------------------------------------------------------


def _auto_id(kind: str, patient_id: Any) -> str:
    # One page holds these forms for every person: ids must not repeat.
    return f"{kind}-{patient_id}-%s"


def _render_index(
    request: HttpRequest, *, bound: dict[tuple[str, Any], Any] | None = None
) -> HttpResponse:
    people = selectors.sharing_overview(user=request.user)
    bound = bound or {}
    # Research participation, summarized per person (/sharing/research/).
    research = {
        r.patient.pk: r
        for r in research_overview(
            request.user, [p.patient for p in people], {p.patient.pk: p.name for p in people}
        )
    }
    sections = []
    for person in people:
        pid = person.patient.pk
        preference = person.emergency
        sections.append(
            {
                "person": person,
                "pid": str(pid),
                "clinic_form": bound.get(("clinic", pid))
                or ClinicGrantForm(initial={"patient": pid}, auto_id=_auto_id("clinic", pid)),
                "person_form": bound.get(("person", pid))
                or PersonGrantForm(initial={"patient": pid}, auto_id=_auto_id("person", pid)),
                "emergency_form": bound.get(("emergency", pid))
                or EmergencyPreferenceForm(
                    initial={
                        "patient": pid,
                        "share_summary": bool(preference and preference.share_summary),
                        "contact_note": preference.contact_note if preference else "",
                    },
                    auto_id=_auto_id("emergency", pid),
                ),
                "research": research.get(pid),
                "open_clinic": ("clinic", pid) in bound,
                "open_person": ("person", pid) in bound,
            }
        )
    # Names and what is shared of each person: one audit row per person.
    audit_reveal(request.user, [p.patient.pk for p in people], action="view.sharing")
    context = {"sections": sections, **_nav(request)}
    return render(request, "sharing/index.html", context)


@login_required
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    return _render_index(request)


@require_POST
@sensitive_action
def grant(request: HttpRequest) -> HttpResponse:
    """Share some kinds of one person's records with a clinic or a person.
    Re-authentication first (a recent login counts)."""
    kind = request.POST.get("kind", "")
    form_class = GRANT_FORMS.get(kind)
    if form_class is None:
        raise Http404
    patient = selectors.decidable_patient(request.user, request.POST.get("patient"))
    form = form_class(request.POST, auto_id=_auto_id(kind, patient.pk))
    form.is_valid()
    grantee = form.grantee()
    if form.errors:
        # An unknown grantee or a malformed date: nothing to ask the service.
        return _render_index(request, bound={(kind, patient.pk): form})
    data = form.cleaned_data
    ends_on = data.get("ends_on")
    try:
        consent = consent_grant(
            patient=patient,
            by=request.user,
            purpose=ConsentPurpose.CARE,
            categories=list(data.get("categories") or []),
            grantee_org=grantee if kind == "clinic" else None,
            grantee_user=grantee if kind == "person" else None,
            ends_at=selectors.end_of_day(ends_on) if ends_on else None,
        )
    except ValidationError as error:
        form.add_service_errors(error, grantee_field="clinic" if kind == "clinic" else "email")
        return _render_index(request, bound={(kind, patient.pk): form})
    forget_grants(request.user)
    row = selectors.consent_row(consent, viewer=request.user)
    messages.success(
        request,
        _("Shared with %(grantee)s: %(categories)s.")
        % {"grantee": row.grantee_name, "categories": "、".join(row.categories)},
    )
    return redirect(_person_url(patient.pk))


@login_required
@require_POST
def revoke(request: HttpRequest) -> HttpResponse:
    """Stop one consent, at once. One click; revoking twice is fine."""
    consent = selectors.decidable_consent(request.user, request.POST.get("consent"))
    consent_revoke(consent=consent, by=request.user)
    forget_grants(request.user)
    row = selectors.consent_row(consent, viewer=request.user)
    messages.success(
        request, _("Sharing with %(grantee)s has stopped.") % {"grantee": row.grantee_name}
    )
    return redirect(_person_url(consent.patient_id))


@login_required
@require_POST
def emergency(request: HttpRequest) -> HttpResponse:
    patient = selectors.decidable_patient(request.user, request.POST.get("patient"))
    form = EmergencyPreferenceForm(request.POST, auto_id=_auto_id("emergency", patient.pk))
    if not form.is_valid():
        return _render_index(request, bound={("emergency", patient.pk): form})
    emergency_preference_set(
        patient=patient,
        by=request.user,
        share_summary=form.cleaned_data["share_summary"],
        contact_note=form.cleaned_data["contact_note"],
    )
    messages.success(request, _("The emergency setting was saved."))
    return redirect(_person_url(patient.pk))


@login_required
@require_GET
def clinics(request: HttpRequest) -> HttpResponse:
    """Clinic search by name or 医療機関コード. htmx gets the radio list to
    pick from inside the grant form; without JavaScript, a page listing
    the codes to type in."""
    # htmx sends the grant form's own field, "clinic"; the search page "q".
    query = (request.GET.get("q") or request.GET.get("clinic") or "")[:200]
    # The grant form the results go into (its radio ids must be unique).
    form_id = request.GET.get("form", "")[:60]
    context = {"query": query, "form_id": form_id, "clinics": selectors.find_clinics(query)}
    fragment = request.headers.get("HX-Request") == "true"
    template = "sharing/_clinic_results.html" if fragment else "sharing/clinics.html"
    response = render(request, template, context)
    patch_vary_headers(response, ["HX-Request"])
    return response


@login_required
@require_GET
def why(request: HttpRequest) -> HttpResponse:
    """なぜ見られるの？ — per kind of record, whether this organization or
    person can see it, and why."""
    answer = selectors.why(
        user=request.user,
        patient_id=request.GET.get("patient"),
        grantee=request.GET.get("grantee", ""),
    )
    audit_reveal(request.user, [answer.patient_id], action="view.sharing")
    return render(
        request,
        "sharing/why.html",
        {"answer": answer, "back": _person_url(answer.patient_id), **_nav(request)},
    )


# --------------------------------------------------------------------------
# Access history and reports
# --------------------------------------------------------------------------


@login_required
@require_GET
def history(request: HttpRequest) -> HttpResponse:
    result = selectors.access_history(user=request.user, page_number=request.GET.get("page", 1))
    audit_reveal(request.user, result.patient_ids, action="view.access_history")
    context = {"history": result, "report_form": ReportForm(), **_nav(request)}
    return render(request, "sharing/history.html", context)


@login_required
@require_POST
def report(request: HttpRequest) -> HttpResponse:
    """Report one access in my history as suspicious: it goes to the
    privacy officer of the person's municipality."""
    form = ReportForm(request.POST)
    if not form.is_valid():
        raise Http404
    event = selectors.history_event(request.user, form.cleaned_data["audit_event"])
    patient = selectors.decidable_patient(request.user, event.patient_id)
    access_report_create(
        audit_event_id=event.id, patient=patient, by=request.user, note=form.cleaned_data["note"]
    )
    messages.success(
        request,
        _(
            "Thank you. Your report was sent to the municipality's privacy officer, "
            "who will look into it."
        ),
    )
    page = request.POST.get("page", "")
    suffix = f"?page={int(page)}" if page.isdigit() else ""
    return redirect(reverse("sharing:history") + suffix)


def _officer_or_404(request: HttpRequest) -> None:
    if not selectors.privacy_officer_municipalities(request.user):
        raise Http404


def _render_reports(
    request: HttpRequest, *, failed: tuple[int, CloseReportForm] | None = None
) -> HttpResponse:
    queue = selectors.report_queue(user=request.user, page_number=request.GET.get("page", 1))
    forms = {
        row.report.pk: CloseReportForm(initial={"report": row.report.pk}) for row in queue.rows
    }
    if failed is not None:
        forms[failed[0]] = failed[1]
    rows = [{"row": row, "form": forms[row.report.pk]} for row in queue.rows]
    audit_reveal(request.user, queue.patient_ids, action="view.access_reports")
    context = {"queue": queue, "rows": rows, **_nav(request)}
    return render(request, "sharing/reports.html", context)


@login_required
@require_GET
def reports(request: HttpRequest) -> HttpResponse:
    """The privacy officer's queue of open reports. 404 for anyone else."""
    _officer_or_404(request)
    return _render_reports(request)


@login_required
@require_POST
def report_close(request: HttpRequest) -> HttpResponse:
    _officer_or_404(request)
    form = CloseReportForm(request.POST)
    if not form.is_valid():
        raise Http404
    found = selectors.officer_report(request.user, form.cleaned_data["report"])
    try:
        access_report_close(
            report=found, by=request.user, resolution=form.cleaned_data["resolution"]
        )
    except ValidationError as error:
        form.add_service_errors(error)
        return _render_reports(request, failed=(found.pk, form))
    messages.success(request, _("The report was closed."))
    return redirect("sharing:reports")


# --------------------------------------------------------------------------
# Shared with me
# --------------------------------------------------------------------------


@login_required
@require_GET
def with_me(request: HttpRequest) -> HttpResponse:
    """Patients whose families share records with my clinic or with me."""
    shared = selectors.shared_with_me(user=request.user)
    audit_reveal(request.user, [s.patient_id for s in shared], action="view.shared_with_me")
    return render(request, "sharing/with_me.html", {"shared": shared, **_nav(request)})
