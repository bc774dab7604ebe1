"""Emergency pages: the summary (page and FHIR JSON), the responder's
search and break-glass, the privacy officer's review queue, and the
family's emergency cards with the card link itself.

Views authorize (sharing.access, sharing.emergency), parse, call a service
and render. Anything not allowed answers 404, like a page that does not
exist.
"""

from __future__ import annotations

import base64
import secrets
import time
import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any

import qrcode
from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_http_methods, require_POST
from qrcode.image.svg import SvgPathImage

from phr.auth import sensitive_action
from phr.models import Patient
from sharing import emergency
from sharing.access import EMERGENCY_CATEGORIES, Purpose, audit_denied, audit_reveal, decide
from sharing.models import BreakGlass, EmergencyCard

MATCH_SESSION_KEY = "hagukumi_emergency_match"
NEW_CARD_SESSION_KEY = "hagukumi_emergency_new_card"
# Card links need no login: throttle them per address, and passcode guesses
# per card.
CARD_OPENS_PER_MINUTE = 30
CARD_PASSCODE_FAILURES = 10
CARD_PASSCODE_WINDOW = 15 * 60
# Searches are an existence oracle, even for responders: a generous cap.
SEARCHES_PER_HOUR = 60

View = Callable[..., HttpResponse]


def _over_limit(key: str, limit: int, seconds: int) -> bool:
    """Count one more hit on `key` in a fixed window; True past `limit`."""
    if cache.add(key, 1, seconds):
        return limit < 1
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, seconds)
        count = 1
    return count > limit


def _client_address(request: HttpRequest) -> str:
    return str(request.META.get("REMOTE_ADDR", "") or "unknown")


def _categories() -> list[str]:
    return sorted(str(c) for c in EMERGENCY_CATEGORIES)


def responder_only(view: View) -> View:
    """Emergency responders with MFA; everyone else gets 404."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if emergency.responder_organization(request.user) is None:
            raise Http404
        return view(request, *args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------
# The summary
# --------------------------------------------------------------------------


def _summary(request: HttpRequest, patient_id: uuid.UUID, *, fmt: str) -> Any:
    user = request.user
    patient = Patient.objects.filter(pk=patient_id).first()
    purpose = emergency.summary_purpose(user, patient) if patient is not None else None
    if patient is None or purpose is None:
        rule = decide(user, patient, purpose=Purpose.EMERGENCY).rule if patient else "none"
        audit_denied(user, patient.pk if patient else None, action="emergency.summary", rule=rule)
        raise Http404
    facts = emergency.summary_facts(user=user, patient=patient, purpose=purpose)
    decision = decide(user, patient, purpose=purpose)
    audit_reveal(
        user,
        [patient.pk],
        categories=_categories(),
        action="emergency.summary",
        purpose=purpose,
        detail={"format": fmt},
    )
    return facts, decision


@login_required
def summary(request: HttpRequest, patient_id: uuid.UUID) -> HttpResponse:
    facts, decision = _summary(request, patient_id, fmt="html")
    return render(
        request,
        "emergency/summary.html",
        {
            "page": emergency.summary_page(facts),
            "break_glass_until": decision.until if decision.break_glass_id else None,
            "purpose": decision.purpose,
            "json_url": reverse("emergency:summary_json", args=[patient_id]),
        },
    )


@login_required
def summary_json(request: HttpRequest, patient_id: uuid.UUID) -> HttpResponse:
    facts, _decision = _summary(request, patient_id, fmt="fhir+json")
    return JsonResponse(
        emergency.summary_bundle(facts),
        content_type="application/fhir+json",
        json_dumps_params={"ensure_ascii": False},
    )


# --------------------------------------------------------------------------
# Search and break-glass
# --------------------------------------------------------------------------


class NameSearchForm(forms.Form):
    family = forms.CharField(label=_("Family name (kanji or kana)"), max_length=100, required=False)
    given = forms.CharField(label=_("Given name (kanji or kana)"), max_length=100, required=False)
    birth_date = forms.DateField(
        label=_("Birth date"), required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    municipality_code = forms.CharField(
        label=_("Municipality code"),
        max_length=12,
        required=False,
        widget=forms.TextInput(attrs={"inputmode": "numeric", "autocomplete": "off"}),
    )


class HandbookSearchForm(forms.Form):
    handbook_number = forms.CharField(
        label=_("MCH handbook number"),
        max_length=40,
        required=False,
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )
    municipality_code = forms.CharField(
        label=_("Municipality code (if not part of the number)"),
        max_length=12,
        required=False,
        widget=forms.TextInput(attrs={"inputmode": "numeric", "autocomplete": "off"}),
    )


class CardSearchForm(forms.Form):
    card_link = forms.CharField(
        label=_("Emergency card link"),
        max_length=400,
        required=False,
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )


SEARCH_FORMS: dict[str, type[forms.Form]] = {
    "name": NameSearchForm,
    "handbook": HandbookSearchForm,
    "card": CardSearchForm,
}


class BreakGlassForm(forms.Form):
    # The service checks reason and justification, with bilingual messages.
    reason = forms.ChoiceField(
        label=_("Reason"),
        choices=BreakGlass.Reason.choices,
        required=False,
        widget=forms.RadioSelect,
    )
    justification = forms.CharField(
        label=_("Justification"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "maxlength": emergency.JUSTIFICATION_MAX}),
        help_text=_("What is happening, and why the emergency summary is needed now."),
    )


def _add_errors(form: forms.Form, error: ValidationError) -> None:
    for name, messages_ in error.message_dict.items():
        form.add_error(name if name in form.fields else None, messages_)


def _search_forms(bound: forms.Form | None = None) -> dict[str, forms.Form]:
    found = {key: cls(prefix=key) for key, cls in SEARCH_FORMS.items()}
    if bound is not None and bound.prefix:
        found[bound.prefix] = bound
    return found


def _remember_match(request: HttpRequest, patient: Patient) -> str:
    """Keep the match on the server; the page gets an opaque handle only."""
    handle = secrets.token_urlsafe(16)
    request.session[MATCH_SESSION_KEY] = {
        "handle": handle,
        "patient": str(patient.pk),
        "expires": time.time() + emergency.SEARCH_HANDLE_SECONDS,
    }
    return handle


def _matched_patient(request: HttpRequest, handle: str | None) -> Patient | None:
    match = request.session.get(MATCH_SESSION_KEY)
    if not isinstance(match, dict) or not handle:
        return None
    if not secrets.compare_digest(str(match.get("handle", "")), str(handle)):
        return None
    if float(match.get("expires", 0)) < time.time():
        request.session.pop(MATCH_SESSION_KEY, None)
        return None
    return Patient.objects.filter(pk=match.get("patient")).first()


def _find_page(
    request: HttpRequest,
    *,
    forms_: dict[str, forms.Form] | None = None,
    result: str = "",
    handle: str = "",
    has_access: bool = False,
    break_glass_form: BreakGlassForm | None = None,
    status: int = 200,
) -> HttpResponse:
    return render(
        request,
        "emergency/find.html",
        {
            "forms": forms_ or _search_forms(),
            "result": result,
            "handle": handle,
            "has_access": has_access,
            "break_glass_form": break_glass_form or BreakGlassForm(),
            "hours": emergency.break_glass_hours(),
        },
        status=status,
    )


@login_required
@responder_only
@require_http_methods(["GET", "POST"])
def find(request: HttpRequest) -> HttpResponse:
    """Find one person. The answer is "one match" or "no match" — never a
    name or an id; the match stays in the session behind a handle."""
    if request.method == "GET":
        return _find_page(request)
    method = request.POST.get("method", "")
    form_class = SEARCH_FORMS.get(method)
    if form_class is None:
        return _find_page(request, status=400)
    form = form_class(request.POST, prefix=method)
    if not form.is_valid():
        return _find_page(request, forms_=_search_forms(form), status=400)
    if _over_limit(f"emergency:search:{request.user.pk}", SEARCHES_PER_HOUR, 3600):
        return render(request, "429.html", status=429)
    data = form.cleaned_data
    query = emergency.SearchQuery(
        method=method,
        family=data.get("family", ""),
        given=data.get("given", ""),
        birth_date=data.get("birth_date"),
        municipality_code=data.get("municipality_code", ""),
        handbook_number=data.get("handbook_number", ""),
        card_link=data.get("card_link", ""),
    )
    try:
        patient = emergency.break_glass_search(user=request.user, query=query)
    except ValidationError as error:
        _add_errors(form, error)
        return _find_page(request, forms_=_search_forms(form), status=400)
    request.session.pop(MATCH_SESSION_KEY, None)
    if patient is None:
        return _find_page(request, result="none")
    handle = _remember_match(request, patient)
    has_access = emergency.summary_purpose(request.user, patient) == Purpose.EMERGENCY
    return _find_page(request, result="one", handle=handle, has_access=has_access)


@login_required
@responder_only
@require_POST
def open_match(request: HttpRequest) -> HttpResponse:
    """Open the summary of the matched person when the family's consent or
    preference (or an open window) already allows it: no break-glass."""
    patient = _matched_patient(request, request.POST.get("handle"))
    if patient is None or emergency.summary_purpose(request.user, patient) != Purpose.EMERGENCY:
        messages.warning(request, _("Search again: the result is no longer valid."))
        return redirect("emergency:find")
    request.session.pop(MATCH_SESSION_KEY, None)
    return redirect("emergency:summary", patient_id=patient.pk)


@login_required
@responder_only
@require_POST
@sensitive_action
def break_glass(request: HttpRequest) -> HttpResponse:
    """Break the glass: after re-authentication (password and authenticator
    code), with a reason and a justification, open a time-limited window on
    the matched person's emergency summary."""
    handle = request.POST.get("handle", "")
    patient = _matched_patient(request, handle)
    if patient is None:
        messages.warning(request, _("Search again: the result is no longer valid."))
        return redirect("emergency:find")
    form = BreakGlassForm(request.POST)
    form.is_valid()
    try:
        emergency.break_glass_open(
            responder=request.user,
            patient=patient,
            reason=form.cleaned_data.get("reason", ""),
            justification=form.cleaned_data.get("justification", ""),
        )
    except ValidationError as error:
        _add_errors(form, error)
        return _find_page(request, result="one", handle=handle, break_glass_form=form, status=400)
    except PermissionDenied:
        raise Http404 from None
    request.session.pop(MATCH_SESSION_KEY, None)
    return redirect("emergency:summary", patient_id=patient.pk)


# --------------------------------------------------------------------------
# Review queue (municipal privacy officers)
# --------------------------------------------------------------------------


class ReviewForm(forms.Form):
    # One form per break-glass on the page, prefixed "bg<id>" so that field
    # ids stay unique; the id itself travels as a plain "break_glass" field.
    review = forms.ChoiceField(
        label=_("Review"), choices=BreakGlass.Review.choices, widget=forms.RadioSelect
    )
    note = forms.CharField(
        label=_("Note"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "maxlength": emergency.REVIEW_NOTE_MAX}),
    )


@login_required
@require_http_methods(["GET", "POST"])
def reviews(request: HttpRequest) -> HttpResponse:
    """Break-glass uses awaiting review, for the privacy officers of the
    patients' municipalities; 404 for everyone else."""
    if not emergency.privacy_officer_municipalities(request.user):
        raise Http404
    errors: dict[int, ReviewForm] = {}
    status = 200
    if request.method == "POST":
        try:
            window = emergency.break_glass_for_review(
                user=request.user, break_glass_id=request.POST.get("break_glass")
            )
        except PermissionDenied:
            raise Http404 from None
        form = ReviewForm(request.POST, prefix=f"bg{window.pk}")
        if form.is_valid():
            try:
                emergency.break_glass_review(
                    break_glass=window,
                    by=request.user,
                    review=form.cleaned_data["review"],
                    note=form.cleaned_data["note"],
                )
            except ValidationError as error:
                _add_errors(form, error)
            else:
                messages.success(request, _("The review was saved."))
                return redirect("emergency:reviews")
        errors[window.pk] = form
        status = 400
    items = emergency.break_glass_review_queue(user=request.user)
    for pk, form in errors.items():
        if not any(item.window.pk == pk for item in items):
            # Reviewed meanwhile (by someone else): the form is gone, say why.
            for error in form.errors.values():
                messages.error(request, " ".join(error))
    rows = [
        {
            "item": item,
            "form": errors.get(item.window.pk) or ReviewForm(prefix=f"bg{item.window.pk}"),
        }
        for item in items
    ]
    return render(request, "emergency/reviews.html", {"rows": rows}, status=status)


# --------------------------------------------------------------------------
# Emergency cards
# --------------------------------------------------------------------------


class CardCreateForm(forms.Form):
    # One form per person on the page, prefixed by the person (unique field
    # ids); the person travels as a plain "patient" field.
    days = forms.IntegerField(
        label=_("Valid for (days)"),
        min_value=1,
        max_value=emergency.CARD_DAYS_MAX,
        initial=emergency.CARD_DAYS_DEFAULT,
    )
    passcode = forms.CharField(
        label=_("Passcode (optional)"),
        required=False,
        max_length=32,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=_("Whoever opens the card must then type it. Write it on the card or not."),
    )


def card_url(token: str) -> str:
    # SITE_URL, not the request's Host header: the link is printed.
    return settings.SITE_URL.rstrip("/") + reverse("emergency:card_open", kwargs={"token": token})


def qr_data_uri(text: str) -> str:
    """A QR code as an SVG data: URI (CSP allows img-src data:)."""
    image = qrcode.make(text, image_factory=SvgPathImage, box_size=10, border=2)
    return "data:image/svg+xml;base64," + base64.b64encode(image.to_string()).decode()


@login_required
@require_http_methods(["GET", "POST"])
def cards(request: HttpRequest) -> HttpResponse:
    """The family's emergency cards: make one (shown once, as a QR code and
    a link), see when each was last opened, revoke."""
    owners = emergency.cards_for(user=request.user)
    allowed = {o.patient_id: o for o in owners}
    create_forms = {o.patient_id: CardCreateForm(prefix=f"p-{o.patient_id}") for o in owners}
    status = 200
    if request.method == "POST":
        action = request.POST.get("action")
        if action == "revoke":
            card_id = request.POST.get("card", "")
            card = (
                EmergencyCard.objects.filter(pk=int(card_id), patient_id__in=list(allowed)).first()
                if card_id.isdigit()
                else None
            )
            if card is None:
                raise Http404
            emergency.card_revoke(card=card, by=request.user)
            messages.success(request, _("The card was revoked. Its link no longer opens."))
            return redirect("emergency:cards")
        try:
            patient_id = uuid.UUID(request.POST.get("patient", ""))
        except ValueError:
            raise Http404 from None
        if patient_id not in allowed:
            raise Http404  # not a person this user decides for: like no such page
        form = CardCreateForm(request.POST, prefix=f"p-{patient_id}")
        if form.is_valid():
            patient = Patient.objects.get(pk=patient_id)
            try:
                card, token = emergency.card_create(
                    patient=patient,
                    by=request.user,
                    days=form.cleaned_data["days"],
                    passcode=form.cleaned_data["passcode"],
                )
            except ValidationError as error:
                _add_errors(form, error)
            else:
                # Shown once on the next page, then forgotten.
                request.session[NEW_CARD_SESSION_KEY] = {"token": token, "card": card.pk}
                return redirect("emergency:cards")
        create_forms[patient_id] = form
        status = 400
    new_card = None
    fresh = request.session.pop(NEW_CARD_SESSION_KEY, None)
    if isinstance(fresh, dict) and fresh.get("token"):
        card = EmergencyCard.objects.filter(
            pk=fresh.get("card"), patient_id__in=list(allowed)
        ).first()
        if card is not None:
            link = card_url(str(fresh["token"]))
            new_card = {
                "card": card,
                "url": link,
                "qr": qr_data_uri(link),
                "name": allowed[card.patient_id].name,
            }
    if owners:
        # The page names the family's members.
        audit_reveal(request.user, list(allowed), action="view.emergency_cards")
    rows = [
        {
            "owner": owner,
            "form": create_forms[owner.patient_id],
            "cards": [(card, emergency.card_status(card)) for card in owner.cards],
        }
        for owner in owners
    ]
    return render(
        request, "emergency/cards.html", {"rows": rows, "new_card": new_card}, status=status
    )


class PasscodeForm(forms.Form):
    passcode = forms.CharField(
        label=_("Passcode"),
        max_length=32,
        widget=forms.PasswordInput(attrs={"autocomplete": "off"}),
    )


def _card_invalid(request: HttpRequest) -> HttpResponse:
    return render(request, "emergency/card_invalid.html", status=404)


@require_http_methods(["GET", "POST"])
def card_open(request: HttpRequest, token: str) -> HttpResponse:
    """An emergency card's link: no login. A valid card (and passcode, if
    it has one) shows the emergency summary; anything else the same "not
    valid" page."""
    if _over_limit(f"emergency:card-ip:{_client_address(request)}", CARD_OPENS_PER_MINUTE, 60):
        return render(request, "429.html", status=429)
    card = emergency.card_find(token=token)
    if card is None:
        return _card_invalid(request)
    if card.passcode_hash:
        if request.method != "POST":
            return render(request, "emergency/card_passcode.html", {"form": PasscodeForm()})
        form = PasscodeForm(request.POST)
        failures_key = f"emergency:card-passcode:{card.pk}"
        if (cache.get(failures_key) or 0) >= CARD_PASSCODE_FAILURES:
            return render(request, "429.html", status=429)
        passcode = form.cleaned_data["passcode"] if form.is_valid() else ""
        try:
            facts = emergency.card_open(card=card, passcode=passcode)
        except emergency.WrongPasscode:
            _over_limit(failures_key, CARD_PASSCODE_FAILURES, CARD_PASSCODE_WINDOW)
            form = PasscodeForm(request.POST)
            form.is_valid()
            form.add_error(
                None,
                "パスコードが違います。 / The passcode is not correct.",
            )
            return render(request, "emergency/card_passcode.html", {"form": form}, status=403)
    else:
        facts = emergency.card_open(card=card)
    response = render(
        request,
        "emergency/summary.html",
        {"page": emergency.summary_page(facts), "via_card": True},
    )
    # The token is in the URL: never send it to another site as a referrer.
    # ("no-referrer" would also make browsers send "Origin: null" on this
    # page's own forms — language switch, logout — which CSRF refuses.)
    response["Referrer-Policy"] = "same-origin"
    response["X-Robots-Tag"] = "noindex, nofollow"
    return response
