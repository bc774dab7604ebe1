"""The clinic portal, mounted at /clinic/ (config/urls.py): the patients
who share with the clinic, a patient's page (granted categories only; for
a pregnancy the flowsheet, charts, schedule and risk flags), and the
clinic's API tokens.

Only active clinic staff with MFA reach them (staff without MFA are sent
to set it up by phr.middleware.StaffMfaSetupMiddleware first); everyone
else gets 404, as for a page that does not exist. A patient the policy
point does not let this clinic see is a 404 exactly like a missing id. A
user who is staff of several clinics picks one with ?clinic=<id> (the
first by name otherwise).

Views authorize (clinics.selectors, sharing.access), parse, call, render;
every response that names patients writes one audit row per patient.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from clinics import charts, invitations, selectors, services, tokens
from clinics.models import ClinicInvitation
from phr.auth import sensitive_action
from phr.models import Organization
from phr.selectors import JAPAN, patient_resources, person_name, timeline
from sharing.access import Purpose, audit_reveal
from sharing.selectors import in_language

View = Callable[..., HttpResponse]

# The secret of a token just created waits here for the one page that shows
# it (the tokens page pops it as it renders: a reload shows it no more).
NEW_TOKEN_SESSION_KEY = "clinics:new_token"  # noqa: S105 (a session key, not a secret)


def clinic_staff(view: View) -> View:
    """Clinic staff with MFA; everyone else gets 404."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not selectors.staff_clinics(request.user):
            raise Http404
        return view(request, *args, **kwargs)

    return wrapper


def _today() -> Any:
    return timezone.localdate(timezone=JAPAN)


def _context(request: HttpRequest, clinic: Organization, **extra: Any) -> dict[str, Any]:
    """What every portal page shows: the clinic, the choice of another one
    when the user has several, and the query string keeping that choice."""
    mine = selectors.staff_clinics(request.user)
    choice = f"?clinic={clinic.pk}" if len(mine) > 1 else ""
    return {"clinic": clinic, "clinics": mine, "choice": choice, **extra}


def _other_engineer_url(name: str, patient_id: uuid.UUID, literal: str) -> str:
    """The visit-entry and delivery pages (clinics/entry_views.py) by their
    URL names; their literal paths while those routes are not there yet."""
    try:
        return reverse(name, args=[patient_id])
    except NoReverseMatch:
        return literal


# --------------------------------------------------------------------------
# Patients
# --------------------------------------------------------------------------


@login_required
@require_GET
@clinic_staff
def patients(request: HttpRequest) -> HttpResponse:
    """The patients who share with the clinic now (and those whose records
    the clinic submitted), searchable by name, kana or birth date. htmx
    asks for the results only (HX-Request) as one types."""
    clinic = selectors.chosen_clinic(request.user, request.GET.get("clinic"))
    listed = selectors.portal_patients(
        user=request.user,
        clinic=clinic,
        query=request.GET.get("q", ""),
        page_number=request.GET.get("page", 1),
        today=_today(),
    )
    # Names, birth dates, due dates and flags: one audit row per patient.
    audit_reveal(
        request.user,
        listed.patient_ids,
        action="view.clinic_patients",
        purpose=Purpose.CARE,
        detail={"clinic": clinic.pk},
    )
    context = _context(request, clinic, listed=listed)
    fragment = request.headers.get("HX-Request") == "true"
    template = "clinics/portal_patient_rows.html" if fragment else "clinics/portal_patients.html"
    response = render(request, template, context)
    patch_vary_headers(response, ["HX-Request"])
    return response


@login_required
@require_GET
@clinic_staff
def patient(request: HttpRequest, patient_id: uuid.UUID) -> HttpResponse:
    """One patient, as far as she shares with the clinic: which categories
    and until when; for a pregnancy the flowsheet, charts, standard
    schedule and risk flags; and every shared record, newest first."""
    clinic = selectors.chosen_clinic(request.user, request.GET.get("clinic"))
    found = selectors.clinic_patient(request.user, clinic, patient_id)
    try:
        offset = max(int(request.GET.get("offset", "0")), 0)
    except ValueError:
        offset = 0
    records = timeline(user=request.user, patient=found, offset=offset, purpose=Purpose.CARE)
    if request.headers.get("HX-Request") == "true" and offset:
        # The next page of the records list ("show older records").
        response = render(request, "phr/_timeline_page.html", {"page": records})
        patch_vary_headers(response, ["HX-Request"])
        return response
    today = _today()
    page = selectors.patient_page(user=request.user, patient=found, today=today)
    visits = page.facts.visits
    # The clinic's code for her to link her account, if it invited her.
    invitation = invitations.latest_for(clinic, found)
    context = _context(
        request,
        clinic,
        page=page,
        records=records,
        bp_chart=charts.blood_pressure_chart(visits),
        weight_chart=charts.weight_chart(visits),
        weights=[v for v in visits if v.values.get("body_weight")],
        pressures=[v for v in visits if v.blood_pressure],
        visit_url=_other_engineer_url(
            "clinics:visit_new", found.pk, f"/clinic/patients/{found.pk}/visits/new/"
        ),
        delivery_url=_other_engineer_url(
            "clinics:delivery_new", found.pk, f"/clinic/patients/{found.pk}/delivery/"
        ),
        invitation=invitation,
        invitation_status=(ClinicInvitation.Status(invitation.status).label if invitation else ""),
    )
    response = render(request, "clinics/portal_patient.html", context)
    patch_vary_headers(response, ["HX-Request"])
    return response


# --------------------------------------------------------------------------
# API tokens
# --------------------------------------------------------------------------


def _tokens_url(clinic: Organization, request: HttpRequest) -> str:
    mine = selectors.staff_clinics(request.user)
    suffix = f"?clinic={clinic.pk}" if len(mine) > 1 else ""
    return reverse("clinics:tokens") + suffix


def _render_tokens(
    request: HttpRequest,
    clinic: Organization,
    *,
    new_secret: str = "",
    errors: list[str] | None = None,
    name: str = "",
    status: int = 200,
) -> HttpResponse:
    rows = [{"token": t, "state": tokens.token_state(t)} for t in tokens.clinic_tokens(clinic)]
    context = _context(
        request,
        clinic,
        rows=rows,
        new_secret=new_secret,
        errors=errors or [],
        name=name,
        lifetimes=tokens.LIFETIMES,
    )
    return render(request, "clinics/portal_tokens.html", context, status=status)


@login_required
@require_GET
@clinic_staff
def token_list(request: HttpRequest) -> HttpResponse:
    """The clinic's tokens (name, prefix, created, last used, expires,
    state), the form for a new one, and — once, right after creating — the
    new token's secret."""
    clinic = selectors.chosen_clinic(request.user, request.GET.get("clinic"))
    fresh = request.session.pop(NEW_TOKEN_SESSION_KEY, None)
    secret = ""
    if isinstance(fresh, dict) and fresh.get("clinic") == clinic.pk:
        secret = str(fresh.get("secret", ""))
    response = _render_tokens(request, clinic, new_secret=secret)
    # The secret must not stay in a cache or the back button's copy.
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
@clinic_staff
@sensitive_action
def token_create(request: HttpRequest) -> HttpResponse:
    """Create a token (re-authentication first: a recent login with the
    second factor counts); its secret is shown once, on the tokens page."""
    clinic = selectors.chosen_clinic(request.user, request.POST.get("clinic"))
    name = request.POST.get("name", "")[: tokens.NAME_MAX + 1]
    try:
        lifetime = int(request.POST.get("lifetime", ""))
    except ValueError:
        lifetime = -1
    try:
        token, secret = tokens.clinic_token_create(
            clinic=clinic, by=request.user, name=name, lifetime_days=lifetime
        )
    except ValidationError as error:
        return _render_tokens(
            request,
            clinic,
            errors=[in_language(m) for m in error.messages],
            name=name,
            status=400,
        )
    request.session[NEW_TOKEN_SESSION_KEY] = {"clinic": clinic.pk, "secret": secret}
    messages.success(request, _("The token “%(name)s” was created.") % {"name": token.name})
    return HttpResponseRedirect(_tokens_url(clinic, request))


@login_required
@require_POST
@clinic_staff
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    """Revoke one of the clinic's tokens, at once. Another clinic's token
    is a 404 like a missing one."""
    token = tokens.clinic_token(selectors.staff_clinics(request.user), token_id)
    tokens.clinic_token_revoke(token=token, by=request.user)
    messages.success(request, _("The token “%(name)s” was revoked.") % {"name": token.name})
    assert token.organization is not None  # a clinic's token, found by its clinic
    return redirect(_tokens_url(token.organization, request))


# --------------------------------------------------------------------------
# Invitations of the patients the clinic registered
# --------------------------------------------------------------------------


class ReissueForm(forms.Form):
    email = forms.EmailField(required=False)


def _invitations_url(clinic: Organization, request: HttpRequest) -> str:
    mine = selectors.staff_clinics(request.user)
    suffix = f"?clinic={clinic.pk}" if len(mine) > 1 else ""
    return reverse("clinics:invitations") + suffix


@login_required
@require_GET
@clinic_staff
def invitation_list(request: HttpRequest) -> HttpResponse:
    """The latest invitation of each patient the clinic invited: who (as
    far as the clinic may see her name), issued when and by whom, until
    when, and whether she used it; buttons to issue a new code or revoke.
    Codes are never shown here (only their hash is kept)."""
    clinic = selectors.chosen_clinic(request.user, request.GET.get("clinic"))
    listed = invitations.clinic_invitations(
        user=request.user, clinic=clinic, page_number=request.GET.get("page", 1)
    )
    audit_reveal(
        request.user,
        listed.patient_ids,
        action="view.clinic_invitations",
        purpose=Purpose.CARE,
        detail={"clinic": clinic.pk},
    )
    context = _context(request, clinic, listed=listed)
    return render(request, "clinics/portal_invitations.html", context)


@login_required
@require_POST
@clinic_staff
def invitation_reissue(request: HttpRequest, invitation_id: int) -> HttpResponse:
    """A new code for the patient of one of the clinic's invitations: the
    previous code stops working, the new one is shown on this response
    only (not stored, not cached) and, with an address, emailed."""
    old = invitations.clinic_invitation(selectors.staff_clinics(request.user), invitation_id)
    clinic = old.clinic
    form = ReissueForm(request.POST)
    if not form.is_valid():
        messages.error(request, _("Enter a valid email address, or leave it empty."))
        return redirect(_invitations_url(clinic, request))
    patient = invitations.survivor(old.patient)
    email = form.cleaned_data["email"]
    try:
        invitation, code = services.invitation_issue(
            user=request.user,  # type: ignore[arg-type]
            clinic=clinic,
            patient=patient,
            email=email,
        )
    except PermissionDenied:
        # She linked her account (or the clinic's record was merged into
        # hers): the clinic no longer invites her; her consents decide.
        messages.error(
            request,
            _("No new code was issued: she has linked her own account, so she needs none."),
        )
        return redirect(_invitations_url(clinic, request))
    content = patient_resources(user=request.user, patient_ids=[patient.pk], purpose=Purpose.CARE)
    context = _context(
        request,
        clinic,
        invitation=invitation,
        code=code,
        name=person_name(content.get(patient.pk)),
        join_url=services.invitation_url(code),
        emailed=bool(email),
        patient_url=reverse("clinics:patient", args=[patient.pk])
        + (f"?clinic={clinic.pk}" if len(selectors.staff_clinics(request.user)) > 1 else ""),
        invitations_url=_invitations_url(clinic, request),
    )
    response = render(request, "clinics/invitation_reissued.html", context)
    # The code must not stay in a cache or the back button's copy.
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
@clinic_staff
def invitation_revoke(request: HttpRequest, invitation_id: int) -> HttpResponse:
    """Stop one of the clinic's codes at once. Another clinic's invitation
    is a 404 like a missing one."""
    invitation = invitations.clinic_invitation(selectors.staff_clinics(request.user), invitation_id)
    was_active = invitation.status == ClinicInvitation.Status.ACTIVE
    services.invitation_revoke(user=request.user, invitation=invitation)  # type: ignore[arg-type]
    if was_active:
        messages.success(
            request,
            _("The code beginning %(prefix)s… was revoked: it no longer works.")
            % {"prefix": invitation.prefix},
        )
    else:
        messages.info(request, _("This code could not be used any more; nothing changed."))
    return redirect(_invitations_url(invitation.clinic, request))
