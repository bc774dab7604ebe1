"""The clinic's entry pages: a prenatal visit, a delivery, registering a
new pregnant patient; and the page where she redeems the clinic's
invitation with her own account.

Staff pages (/clinic/patients/<uuid>/visits/new/, …/delivery/,
/clinic/register/): active clinic staff with MFA only, everyone else 404.
A patient the clinic may not write for (sharing.access.may_write) is a 404
exactly like a missing id, and the refusal is audited. Each form is
checked, then shown again on a confirmation page with the gestational
age and any unusual value; only the confirmation writes. The data travels
from the check to the confirmation signed (django.core.signing), so what
is confirmed is what was checked — and it is checked again.

/clinic/join/ is for anyone signed in (the invited patient): the code,
her birth date, and whether the clinic may go on recording her checkups.
Attempts are rate-limited like family link codes (ACCOUNT_RATE_LIMITS
["link_code"]).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any

from allauth.core import ratelimit
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core import signing
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods

from clinics import prenatal, services
from clinics.forms import (
    DeliveryForm,
    JoinForm,
    RegisterForm,
    VisitForm,
    baby_formset_class,
    delivery_from,
)
from phr import selectors as phr_selectors
from phr.audit import audit_write
from phr.models import Organization, Patient
from phr.terminology import Category
from sharing.access import Purpose, audit_denied, audit_reveal, may_write

PAYLOAD_SALT = "clinics.entry"
PAYLOAD_MAX_AGE = 2 * 60 * 60  # a confirmation page left open for two hours goes stale
IGNORED = frozenset({"csrfmiddlewaretoken", "action", "payload"})


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

View = Callable[..., HttpResponse]


def clinic_staff(view: View) -> View:
    """Clinic staff with MFA (services.staff_clinics, the portal's rule);
    everyone else gets 404."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not services.staff_clinics(request.user):
            raise Http404
        return view(request, *args, **kwargs)

    return wrapper


def _writable_patient(
    request: HttpRequest, patient_id: uuid.UUID, *, category: str, action: str
) -> tuple[Patient, Organization]:
    """The (adult) patient and the clinic the user writes for, or Http404
    — a missing id and a patient the clinic may not write for alike; the
    refusal is audited. Showing the page is audited as a reveal."""
    patient = Patient.objects.filter(pk=patient_id).first()
    while patient is not None and patient.merged_into_id is not None:
        patient = patient.merged_into
    if patient is None or patient.kind != Patient.Kind.ADULT:
        raise Http404
    decision = may_write(request.user, patient, category=category)
    if not decision or decision.organization_id is None:
        audit_denied(request.user, patient.pk, action=action, rule=decision.rule)
        raise Http404
    clinic = Organization.objects.get(pk=decision.organization_id)
    audit_reveal(
        request.user, [patient.pk], categories=[category], action=action, purpose=Purpose.CARE
    )
    return patient, clinic


def _context(request: HttpRequest, clinic: Organization, **extra: Any) -> dict[str, Any]:
    """What the portal's navigation (clinics/portal_nav.html) needs."""
    mine = services.staff_clinics(request.user)
    choice = f"?clinic={clinic.pk}" if len(mine) > 1 else ""
    return {"clinic": clinic, "clinics": mine, "choice": choice, "current": "patients", **extra}


def _salt(patient: Patient) -> str:
    # The payload is good for this patient's page only.
    return f"{PAYLOAD_SALT}:{patient.pk}"


def _sign(data: QueryDict, patient: Patient) -> str:
    return signing.dumps(
        {k: v for k, v in data.items() if k not in IGNORED}, salt=_salt(patient), compress=True
    )


def _unsign(request: HttpRequest, patient: Patient) -> dict[str, Any] | None:
    try:
        data = signing.loads(
            request.POST.get("payload", ""), salt=_salt(patient), max_age=PAYLOAD_MAX_AGE
        )
    except signing.BadSignature:
        return None
    return data if isinstance(data, dict) else None


def _bound_data(request: HttpRequest, patient: Patient) -> tuple[str, Any]:
    """(action, the data to bind): "check" binds the posted form; "confirm"
    and "edit" bind the signed payload of the check."""
    action = request.POST.get("action", "check")
    if action in ("confirm", "edit"):
        data = _unsign(request, patient)
        if data is None:
            return "stale", None
        qd = QueryDict(mutable=True)
        qd.update(data)
        return action, qd
    return "check", request.POST


def _patient_url(patient: Patient, clinic: Organization, request: HttpRequest) -> str:
    url = reverse("clinics:patient", args=[patient.pk])
    if len(services.staff_clinics(request.user)) > 1:
        url += f"?clinic={clinic.pk}"
    return url


def _field_messages(error: ValidationError) -> list[tuple[str | None, str]]:
    if hasattr(error, "error_dict"):
        return [(name, str(m)) for name, errs in error.message_dict.items() for m in errs]
    return [(None, str(m)) for m in error.messages]


# --------------------------------------------------------------------------
# A prenatal visit
# --------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
@clinic_staff
def visit_new(request: HttpRequest, patient_id: uuid.UUID) -> HttpResponse:
    """Record a prenatal checkup: the form, a confirmation page with the
    gestational age and unusual values, then the record."""
    patient, clinic = _writable_patient(
        request, patient_id, category=Category.PRENATAL_CHECKUPS, action="view.clinic_visit_form"
    )
    person = phr_selectors.person(user=request.user, patient=patient)
    today = timezone.localdate()
    if request.method == "GET":
        facts = services.pregnancy_facts(user=request.user, patient=patient)
        form = VisitForm(initial={"visit_date": today, "due_date": facts.due_date})
        return _visit_form_page(request, clinic, patient, person, form, facts.due_date, today)
    action, data = _bound_data(request, patient)
    if action == "stale":
        messages.error(request, _("The confirmation page was too old. Enter the visit again."))
        return redirect("clinics:visit_new", patient.pk)
    form = VisitForm(data)
    if not form.is_valid():
        day = form.cleaned_data.get("visit_date") or today
        return _visit_form_page(
            request, clinic, patient, person, form, form.cleaned_data.get("due_date"), day, 400
        )
    visit = form.visit
    if action == "edit":
        return _visit_form_page(
            request, clinic, patient, person, form, visit.due_date, visit.visit_date
        )
    facts = services.pregnancy_facts(user=request.user, patient=patient, before=visit.visit_date)
    warnings = prenatal.visit_warnings(
        visit,
        previous_weight=facts.previous_weight,
        known_pre_pregnancy_weight=_value(facts.pre_pregnancy_weight),
        known_height=_value(facts.height),
    )
    if action == "confirm":
        try:
            result = services.prenatal_visit_record(user=request.user, patient=patient, data=visit)
        except PermissionDenied:
            raise Http404 from None
        except ValidationError as error:
            for name, message in _field_messages(error):
                form.add_error(name if name in form.fields else None, message)
            return _visit_form_page(
                request, clinic, patient, person, form, visit.due_date, visit.visit_date, 400
            )
        messages.success(
            request,
            _("The prenatal checkup of %(day)s was recorded; the family sees it now.")
            % {"day": visit.visit_date.isoformat()},
        )
        return redirect(_patient_url(patient, result.clinic, request))
    context = _context(
        request,
        clinic,
        patient=patient,
        person=person,
        visit=visit,
        age=visit.gestational_age,
        entered=form.entered(),
        warnings=warnings,
        payload=_sign(form.data, patient),
        clinic_only=[
            prenatal.item_label(t.key)
            for t in prenatal.LAB_TESTS
            if t.clinic_only and t.key in visit.labs
        ],
    )
    return render(request, "clinics/visit_confirm.html", context)


def _value(found: tuple[Any, Any] | None) -> Any:
    return found[1] if found is not None else None


def _visit_form_page(
    request: HttpRequest,
    clinic: Organization,
    patient: Patient,
    person: Any,
    form: VisitForm,
    due_date: Any,
    day: Any,
    status: int = 200,
) -> HttpResponse:
    age = prenatal.gestational_age(due_date, day) if due_date else None
    weeks = age.weeks if age is not None and 0 <= age.days <= prenatal.MAX_GESTATION_DAYS else None
    due, other = form.lab_fields(weeks)
    # What is recorded of the time before the pregnancy: shown, so that a
    # later visit does not ask again (entering it again corrects it).
    facts = services.pregnancy_facts(user=request.user, patient=patient)
    before, height = facts.pre_pregnancy_weight, facts.height
    context = _context(
        request,
        clinic,
        patient=patient,
        person=person,
        form=form,
        age=age if weeks is not None else None,
        age_day=day,
        due_tests=due,
        other_tests=other,
        clinic_only_keys=[f"lab_{t.key}" for t in prenatal.LAB_TESTS if t.clinic_only],
        known_pre_pregnancy_weight=before,
        known_height=height,
        known_bmi=prenatal.bmi(before[1], height[1]) if before and height else None,
    )
    return render(request, "clinics/visit_form.html", context, status=status)


# --------------------------------------------------------------------------
# A delivery
# --------------------------------------------------------------------------


def _baby_count(value: Any) -> int:
    try:
        return min(max(int(value), 1), 5)
    except (TypeError, ValueError):
        return 1


@login_required
@require_http_methods(["GET", "POST"])
@clinic_staff
def delivery_new(request: HttpRequest, patient_id: uuid.UUID) -> HttpResponse:
    """Record a birth (出産の状態 and 出生児): the form, a confirmation page,
    then the record — which ends the pregnancy and gives each baby a
    record linked to the mother."""
    patient, clinic = _writable_patient(
        request, patient_id, category=Category.PREGNANCY, action="view.clinic_delivery_form"
    )
    person = phr_selectors.person(user=request.user, patient=patient)
    if request.method == "GET":
        count = _baby_count(request.GET.get("babies", 1))
        facts = services.pregnancy_facts(user=request.user, patient=patient)
        initial: dict[str, Any] = {"babies": count}
        if facts.due_date is not None:
            age = prenatal.gestational_age(facts.due_date, timezone.localdate())
            if 0 <= age.days <= prenatal.MAX_GESTATION_DAYS:
                initial |= {"gestation_weeks": age.weeks, "gestation_days": age.extra_days}
        form = DeliveryForm(initial=initial)
        babies = baby_formset_class(count)(prefix="baby")
        return _delivery_form_page(request, clinic, patient, person, form, babies, facts.due_date)
    action, data = _bound_data(request, patient)
    if action == "stale":
        messages.error(request, _("The confirmation page was too old. Enter the birth again."))
        return redirect("clinics:delivery_new", patient.pk)
    count = _baby_count(data.get("babies"))
    form = DeliveryForm(data)
    babies = baby_formset_class(count)(data, prefix="baby")
    if not (form.is_valid() and babies.is_valid()):
        return _delivery_form_page(request, clinic, patient, person, form, babies, None, 400)
    delivery = delivery_from(form, babies)
    refusals = prenatal.delivery_refusals(delivery)
    if refusals:
        for name, message in refusals.items():
            form.add_error(name if name in form.fields else None, message)
        return _delivery_form_page(request, clinic, patient, person, form, babies, None, 400)
    if action == "edit":
        return _delivery_form_page(request, clinic, patient, person, form, babies, None)
    if action == "confirm":
        try:
            result = services.delivery_record(user=request.user, mother=patient, data=delivery)
        except PermissionDenied:
            raise Http404 from None
        except ValidationError as error:
            for name, message in _field_messages(error):
                form.add_error(name if name in form.fields else None, message)
            return _delivery_form_page(request, clinic, patient, person, form, babies, None, 400)
        created = sum(1 for b in result.babies if b.created)
        messages.success(
            request,
            _(
                "The birth was recorded and the pregnancy closed: %(new)d new child record(s), "
                "%(linked)d existing record(s) linked."
            )
            % {"new": created, "linked": len(result.babies) - created},
        )
        return redirect(_patient_url(patient, result.clinic, request))
    context = _context(
        request,
        clinic,
        patient=patient,
        person=person,
        delivery=delivery,
        age=delivery.gestational_age,
        mode=prenatal.DELIVERY_MODE[delivery.mode][1],
        babies=[
            (index + 1, baby, prenatal.SEXES.get(baby.sex, baby.sex))
            for index, baby in enumerate(delivery.babies)
        ],
        warnings=prenatal.delivery_warnings(delivery),
        payload=_sign(form.data, patient),
    )
    return render(request, "clinics/delivery_confirm.html", context)


def _delivery_form_page(
    request: HttpRequest,
    clinic: Organization,
    patient: Patient,
    person: Any,
    form: DeliveryForm,
    babies: Any,
    due_date: Any,
    status: int = 200,
) -> HttpResponse:
    context = _context(
        request,
        clinic,
        patient=patient,
        person=person,
        form=form,
        babies=babies,
        due_date=due_date,
        baby_counts=range(1, 6),
    )
    return render(request, "clinics/delivery_form.html", context, status=status)


# --------------------------------------------------------------------------
# Registering a new pregnant patient
# --------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
@clinic_staff
def register(request: HttpRequest) -> HttpResponse:
    """Register a pregnant patient who has no record the clinic can see
    yet; the next page shows her invitation code (once)."""
    mine = services.staff_clinics(request.user)
    clinic = mine[0]
    for candidate in mine:
        if str(candidate.pk) == str(request.GET.get("clinic") or request.POST.get("clinic")):
            clinic = candidate
    if request.method == "GET":
        form = RegisterForm(clinics=mine, initial={"clinic": clinic.pk})
        return render(request, "clinics/register_form.html", _context(request, clinic, form=form))
    form = RegisterForm(request.POST, clinics=mine)
    if not form.is_valid():
        return render(
            request, "clinics/register_form.html", _context(request, clinic, form=form), status=400
        )
    data = form.cleaned_data
    try:
        registration = services.patient_register(
            user=request.user,  # type: ignore[arg-type]
            clinic=data["clinic"],
            family=data["family"],
            given=data["given"],
            family_kana=data["family_kana"],
            given_kana=data["given_kana"],
            birth_date=data["birth_date"],
            clinic_patient_number=data["clinic_patient_number"],
            due_date=data["due_date"],
            email=data["email"],
        )
    except PermissionDenied:
        raise Http404 from None
    except ValidationError as error:
        for name, message in _field_messages(error):
            form.add_error(name if name in form.fields else None, message)
        return render(
            request, "clinics/register_form.html", _context(request, clinic, form=form), status=400
        )
    # Shown in this response only: a reload does not post again (the
    # browser asks), and the code is never stored.
    context = _context(
        request,
        data["clinic"],
        registration=registration,
        name=f"{data['family']} {data['given']}",
        join_url=services.invitation_url(registration.code),
        emailed=bool(data["email"]),
        patient_url=_patient_url(registration.patient, data["clinic"], request),
    )
    return render(request, "clinics/register_done.html", context)


# --------------------------------------------------------------------------
# The invited patient
# --------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def join(request: HttpRequest) -> HttpResponse:
    """The invited patient links her account to the clinic's record."""
    if request.method == "GET":
        initial: dict[str, Any] = {}
        if request.GET.get("code"):
            initial["code"] = request.GET["code"][:40]
        return render(request, "clinics/register_join.html", {"form": JoinForm(initial=initial)})
    form = JoinForm(request.POST)
    if not form.is_valid():
        return render(request, "clinics/register_join.html", {"form": form}, status=400)
    if not ratelimit.consume(request, action="link_code", user=request.user):
        audit_write(
            action="clinic.invitation_redeem",
            outcome="denied",
            actor_id=request.user.pk,
            purpose=Purpose.PERSONAL,
            detail={"reason": "rate_limited"},
        )
        return render(request, "429.html", status=429)
    try:
        result = services.invitation_redeem(
            user=request.user,  # type: ignore[arg-type]
            code=form.cleaned_data["code"],
            birth_date=form.cleaned_data["birth_date"],
            share=form.cleaned_data["share"],
        )
    except services.InvitationError as error:
        form.add_error(None, error.message)
        return render(request, "clinics/register_join.html", {"form": form}, status=400)
    if result.shared:
        messages.success(
            request,
            _("Your record is linked to your account and shared with %(clinic)s.")
            % {"clinic": result.clinic.name},
        )
    else:
        messages.success(request, _("Your record is linked to your account."))
    return redirect("phr:home")
