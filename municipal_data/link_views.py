"""Family link code pages.

Staff (municipal staff with MFA, of the code's municipality; everyone
else 404), under /municipal/link-codes/ (municipal_data/urls.py): the list
of codes, issuing a code for a family found by resident number, revoking,
and the printable letter, which carries the code only right after issuing
(the code is never stored: the issuing request hands it to the letter
through the session, and the letter forgets it).

Parents (any signed-in user), under /link/ (municipal_data/link_urls.py):
the form that takes the code (pre-filled from the letter's QR code,
/link/?code=…), a child's birth date and who they are; then a page naming
the people now linked. Attempts are rate-limited per account and per
address with allauth's rate limiter, like failed logins
(ACCOUNT_RATE_LIMITS["link_code"]).

Views authorize, parse, call municipal_data.linking, render.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any

from allauth.core import ratelimit
from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from municipal_data import linking
from municipal_data.models import MatchReview
from phr import selectors as phr_selectors
from phr.audit import audit_write
from phr.models import Guardianship, Organization, Patient
from sharing.access import Purpose, audit_reveal
from sharing.emergency_views import qr_data_uri

View = Callable[..., HttpResponse]

# The code of a letter just issued, for that letter's one showing.
LETTER_SESSION_KEY = "hagukumi_link_code_letter"
# The people a redemption linked, for the page that names them.
DONE_SESSION_KEY = "hagukumi_link_code_done"


# --------------------------------------------------------------------------
# Staff
# --------------------------------------------------------------------------


def link_code_staff(view: View) -> View:
    """Municipal staff with MFA; everyone else gets 404."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not linking.staff_municipalities(request.user):
            raise Http404
        return view(request, *args, **kwargs)

    return wrapper


def _municipality(request: HttpRequest, requested: Any) -> Organization:
    """The municipality asked for (?municipality=id) when the user is its
    staff, else the first; 404 for one that is not theirs."""
    mine = linking.staff_municipalities(request.user)
    if requested in (None, ""):
        return mine[0]
    for municipality in mine:
        if str(municipality.pk) == str(requested):
            return municipality
    raise Http404


def _staff_context(request: HttpRequest, municipality: Organization) -> dict[str, Any]:
    """What the municipal pages' navigation (municipal_data/_nav.html) needs."""
    mine = linking.staff_municipalities(request.user)
    return {
        "municipality": municipality,
        "municipalities": mine,
        "choice": f"?municipality={municipality.pk}" if len(mine) > 1 else "",
        "open_reviews": MatchReview.objects.filter(
            municipality=municipality, status=MatchReview.Status.OPEN
        ).count(),
        "current": "link_codes",
    }


def _list_url(municipality: Organization, request: HttpRequest) -> str:
    url = reverse("municipal:link_codes")
    if len(linking.staff_municipalities(request.user)) > 1:
        url += f"?municipality={municipality.pk}"
    return url


class IssueForm(forms.Form):
    municipality = forms.IntegerField(widget=forms.HiddenInput)
    resident_number = forms.CharField(
        label=_("Resident number (宛名番号) of the mother or of the child"),
        max_length=32,
        widget=forms.TextInput(attrs={"autocomplete": "off", "inputmode": "numeric"}),
        help_text=_(
            "For the mother: the code links her and all her children in the register. For a "
            "child whose mother is not known: the code links this child."
        ),
    )


@login_required
@link_code_staff
@require_safe
def link_codes(request: HttpRequest) -> HttpResponse:
    """The municipality's link codes, newest first; a prefix a family reads
    out finds its letter."""
    municipality = _municipality(request, request.GET.get("municipality"))
    prefix = request.GET.get("prefix", "")[:20]
    rows, named = linking.staff_link_codes(
        user=request.user, municipality=municipality, prefix=prefix
    )
    if named:
        # The list names residents: one audit row per person shown.
        audit_reveal(request.user, named, action="view.link_codes", purpose=Purpose.PUBLIC_HEALTH)
    return render(
        request,
        "municipal_data/link_codes.html",
        {**_staff_context(request, municipality), "rows": rows, "prefix": prefix},
    )


@login_required
@link_code_staff
@require_http_methods(["GET", "POST"])
def link_code_issue(request: HttpRequest) -> HttpResponse:
    """Issue a code for the family of the resident with this number, then
    show its letter (once)."""
    if request.method == "GET":
        municipality = _municipality(request, request.GET.get("municipality"))
        form = IssueForm(initial={"municipality": municipality.pk})
        return _issue_page(request, municipality, form)
    form = IssueForm(request.POST)
    municipality = _municipality(request, request.POST.get("municipality"))
    if not form.is_valid():
        return _issue_page(request, municipality, form, status=400)
    person = linking.resident_find(
        municipality=municipality, resident_number=form.cleaned_data["resident_number"]
    )
    if person is None:
        form.add_error("resident_number", _("No current resident has this number."))
        return _issue_page(request, municipality, form, status=400)
    is_child = person.kind == Patient.Kind.CHILD
    try:
        link, code = linking.link_code_issue(
            municipality=municipality,
            mother=None if is_child else person,
            child=person if is_child else None,
            by=request.user,
        )
    except ValidationError as error:
        for message in error.messages:
            form.add_error("resident_number", message)
        return _issue_page(request, municipality, form, status=400)
    except PermissionDenied:
        raise Http404 from None
    request.session[LETTER_SESSION_KEY] = {"link_code": link.pk, "code": code}
    return redirect("municipal:link_code_letter", link_code_id=link.pk)


def _issue_page(
    request: HttpRequest, municipality: Organization, form: IssueForm, status: int = 200
) -> HttpResponse:
    return render(
        request,
        "municipal_data/link_issue.html",
        {**_staff_context(request, municipality), "form": form},
        status=status,
    )


@login_required
@link_code_staff
@require_POST
def link_code_revoke(request: HttpRequest, link_code_id: int) -> HttpResponse:
    link = linking.staff_link_code(user=request.user, link_code_id=link_code_id)
    linking.link_code_revoke(link_code=link, by=request.user)
    messages.success(request, _("The code was revoked. It no longer links anyone."))
    return redirect(_list_url(link.municipality, request))


@login_required
@link_code_staff
@require_safe
def link_code_letter(request: HttpRequest, link_code_id: int) -> HttpResponse:
    """The printable letter, with the code in large type and a QR code of
    /link/?code=…; only right after issuing. Later (a reload, another
    tab) the page says the code is gone and how to give the family a new
    one."""
    link = linking.staff_link_code(user=request.user, link_code_id=link_code_id)
    fresh = request.session.get(LETTER_SESSION_KEY)
    context: dict[str, Any] = {
        **_staff_context(request, link.municipality),
        "link": link,
        "status": link.status,
        "list_url": _list_url(link.municipality, request),
    }
    if isinstance(fresh, dict) and fresh.get("link_code") == link.pk and fresh.get("code"):
        del request.session[LETTER_SESSION_KEY]
        code = str(fresh["code"])
        url = settings.SITE_URL.rstrip("/") + reverse("link:redeem") + f"?code={code}"
        family = linking.letter_family(user=request.user, link=link)
        if family:
            audit_reveal(
                request.user,
                [m.patient_id for m in family],
                action="view.link_code_letter",
                purpose=Purpose.PUBLIC_HEALTH,
            )
        mother = next((m for m in family if m.role == "mother"), None)
        context.update(
            code=code,
            url=url,
            link_url=settings.SITE_URL.rstrip("/") + reverse("link:redeem"),
            site_url=settings.SITE_URL.rstrip("/") + "/",
            qr=qr_data_uri(url),
            mother=mother,
            children=[m for m in family if m.role == "child"],
        )
    # The project's Referrer-Policy (same-origin) keeps the code's URL
    # from other sites; "no-referrer" would make browsers send "Origin:
    # null" with the page's forms (logout, language), which CSRF refuses.
    return render(request, "municipal_data/link_letter.html", context)


# --------------------------------------------------------------------------
# Parents
# --------------------------------------------------------------------------

WHO_MOTHER = "mother"
WHO_FATHER = "father"
WHO_GUARDIAN = "guardian"


class RedeemForm(forms.Form):
    code = forms.CharField(
        label=_("Link code"),
        max_length=40,
        help_text=_("16 letters and digits, as printed on the letter (XXXX-XXXX-XXXX-XXXX)."),
        widget=forms.TextInput(
            attrs={
                "autocomplete": "off",
                "autocapitalize": "characters",
                "spellcheck": "false",
                "class": "link-code-input",
            }
        ),
    )
    birth_date = forms.DateField(
        label=_("Your child's birth date"),
        help_text=_("During a pregnancy, before the child is born: the mother's birth date."),
        input_formats=["%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d"],
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
    )
    who = forms.ChoiceField(
        label=_("Who are you?"),
        choices=[
            (WHO_MOTHER, _("I am the mother")),
            (WHO_FATHER, _("I am the father")),
            (WHO_GUARDIAN, _("I am another guardian")),
        ],
        widget=forms.RadioSelect,
        help_text=_(
            "The mother's own records (pregnancy, checkups) are linked only for the mother; "
            "another guardian sees the children's records."
        ),
    )


def _redeem_page(request: HttpRequest, form: RedeemForm, status: int = 200) -> HttpResponse:
    # The code may be in the address (the letter's QR code): the project's
    # Referrer-Policy, same-origin, never passes it to another site.
    return render(request, "municipal_data/link_redeem.html", {"form": form}, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def redeem(request: HttpRequest) -> HttpResponse:
    """Enter a link code: the family's records join this account."""
    if request.method == "GET":
        initial = {}
        if request.GET.get("code"):
            initial["code"] = linking.code_display(request.GET["code"][:40])
        return _redeem_page(request, RedeemForm(initial=initial))
    form = RedeemForm(request.POST)
    if not form.is_valid():
        return _redeem_page(request, form, status=400)
    if not ratelimit.consume(request, action="link_code", user=request.user):
        audit_write(
            action="link_code.redeem",
            outcome="denied",
            actor_id=request.user.pk,
            purpose=Purpose.PERSONAL,
            detail={"reason": "rate_limited"},
        )
        return render(request, "429.html", status=429)
    who = form.cleaned_data["who"]
    try:
        result = linking.link_code_redeem(
            user=request.user,  # type: ignore[arg-type]
            code=form.cleaned_data["code"],
            child_birth_date=form.cleaned_data["birth_date"],
            role=linking.ROLE_MOTHER if who == WHO_MOTHER else linking.ROLE_GUARDIAN,
            relationship=(
                Guardianship.Relationship.FATHER
                if who == WHO_FATHER
                else Guardianship.Relationship.OTHER
            ),
        )
    except linking.LinkCodeError as error:
        form.add_error(None, error.message)
        return _redeem_page(request, form, status=400)
    linked = ([result.mother] if result.mother else []) + result.children
    request.session[DONE_SESSION_KEY] = [str(p.pk) for p in linked]
    return redirect("link:done")


@login_required
@require_safe
def redeem_done(request: HttpRequest) -> HttpResponse:
    """The people the code just linked, and the way to the family page."""
    ids = request.session.pop(DONE_SESSION_KEY, None)
    if not isinstance(ids, list):
        return redirect("phr:home")
    wanted = set()
    for value in ids:
        try:
            wanted.add(uuid.UUID(str(value)))
        except ValueError:
            continue
    family = phr_selectors.family(user=request.user)
    people = [
        p for p in ([family.me] if family.me else []) + family.children if p.patient_id in wanted
    ]
    if people:
        audit_reveal(request.user, [p.patient_id for p in people], action="view.family")
    return render(request, "municipal_data/link_done.html", {"people": people})
