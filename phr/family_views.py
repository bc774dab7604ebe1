"""The family pages at /family/: the family and its guardians (invite a
second guardian, withdraw an invitation, accept one), a child born
elsewhere, "download everything" (a FHIR Bundle and a page to print), and
leaving.

Views authorize (login, re-authentication for what hands data to someone
or removes it, sharing.access through phr.family and phr.export), parse,
call a service, render. Ids travel in POST bodies, scoped to the user.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from phr import export, family, selectors
from phr.auth import sensitive_action
from phr.family_forms import ChildForm, InviteForm, LeaveForm, add_service_errors
from phr.roles import is_staff_user
from sharing.access import audit_reveal
from sharing.models import GuardianInvitation

FHIR_JSON = "application/fhir+json"


# --------------------------------------------------------------------------
# The family and its guardians
# --------------------------------------------------------------------------


def _invite_form(user: Any, names: dict[Any, str], data: Any = None) -> InviteForm:
    choices = [(str(pid), name or _("(no name recorded)")) for pid, name in names.items()]
    return InviteForm(data, children=choices, initial={"language": user.language or "ja"})


def _render_index(request: HttpRequest, form: InviteForm | None = None) -> HttpResponse:
    user = request.user
    people = selectors.family(user=user)
    children = family.guarded_children(user)
    names = family.child_names(user=user, children=children)
    context = {
        "family": people,
        "invite_form": form or _invite_form(user, names),
        "invitations": family.invitations_sent(user=user, names=names),
        "can_invite": bool(children),
    }
    # Names and birth dates of the family: one audit row per person shown.
    audit_reveal(user, people.patient_ids, action="view.family")
    return render(request, "phr/family/index.html", context, status=400 if form else 200)


@require_GET
@login_required
def index(request: HttpRequest) -> HttpResponse:
    return _render_index(request)


@require_POST
@sensitive_action
def invite(request: HttpRequest) -> HttpResponse:
    """Invite a second guardian for some of the user's children.
    Re-authentication first: it hands children's records to someone."""
    user = request.user
    children = {str(c.pk): c for c in family.guarded_children(user)}
    names = family.child_names(user=user, children=list(children.values()))
    form = _invite_form(user, names, request.POST)
    if not form.is_valid():
        return _render_index(request, form)
    try:
        invitation, _token = family.guardian_invitation_issue(
            inviter=user,
            children=[children[pid] for pid in form.cleaned_data["children"]],
            email=form.cleaned_data["email"],
            relationship=form.cleaned_data["relationship"],
            language=form.cleaned_data["language"],
        )
    except ValidationError as error:
        add_service_errors(form, error)
        return _render_index(request, form)
    messages.success(
        request,
        _("We sent the invitation to %(email)s. It can be used until %(until)s.")
        % {
            "email": invitation.email,
            "until": timezone.localtime(invitation.expires_at, selectors.JAPAN).strftime(
                "%Y-%m-%d %H:%M"
            ),
        },
    )
    return redirect("family:index")


@require_POST
@login_required
def invitation_revoke(request: HttpRequest) -> HttpResponse:
    try:
        pk = int(request.POST.get("invitation", ""))
    except ValueError:
        raise Http404 from None
    invitation = GuardianInvitation.objects.filter(pk=pk, inviter=request.user).first()
    if invitation is None:
        raise Http404
    family.guardian_invitation_revoke(invitation=invitation, by=request.user)
    messages.success(request, _("The invitation was withdrawn."))
    return redirect("family:index")


@require_http_methods(["GET", "HEAD", "POST"])
def invitation(request: HttpRequest) -> HttpResponse:
    """The page the emailed link opens: who invites, and "accept" for a
    signed-in user (sign in or sign up first otherwise)."""
    token = (request.POST.get("token") if request.method == "POST" else None) or request.GET.get(
        "token", ""
    )
    found = family.invitation_for_token(token)
    here = f"{reverse('family:invitation')}?token={token}"
    if request.method == "POST":
        if not request.user.is_authenticated:
            return redirect(f"{reverse('account_login')}?next={quote(here)}")
        try:
            accepted = family.guardian_invitation_accept(user=request.user, token=token)
        except family.InvitationError as error:
            context = {"invitation": None, "token": token, "error": error.message}
            return render(request, "phr/family/invitation.html", context, status=400)
        messages.success(
            request,
            _("You are now a guardian of %(count)d child(ren).")
            % {"count": len(accepted.children)},
        )
        return redirect("family:index")
    usable = found is not None and found.status == GuardianInvitation.Status.ACTIVE
    context = {
        "invitation": found if usable else None,
        "token": token,
        "inviter": (found.inviter.display_name or found.inviter.email) if usable and found else "",
        "children": found.children.count() if usable and found else 0,
        "masked_email": family.mask_email(found.email) if usable and found else "",
        "next": here,
        "error": "" if usable else family.UNUSABLE,
    }
    return render(request, "phr/family/invitation.html", context, status=200 if usable else 404)


# --------------------------------------------------------------------------
# A child born elsewhere
# --------------------------------------------------------------------------


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
def child_add(request: HttpRequest) -> HttpResponse:
    if is_staff_user(request.user):
        raise PermissionDenied
    form = ChildForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            child = family.child_add(
                user=request.user,
                family=data["family"],
                given=data["given"],
                family_kana=data["family_kana"],
                given_kana=data["given_kana"],
                birth_date=data["birth_date"],
                sex=data["sex"],
                relationship=data["relationship"],
            )
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            messages.success(request, _("The child was added to your family."))
            return redirect("phr:person", patient_id=child.pk)
    status = 400 if request.method == "POST" else 200
    return render(request, "phr/family/child_add.html", {"form": form}, status=status)


# --------------------------------------------------------------------------
# Download everything
# --------------------------------------------------------------------------


@require_GET
@login_required
def export_page(request: HttpRequest) -> HttpResponse:
    """The buttons (nothing of the records is shown here)."""
    return render(request, "phr/family/export.html", {})


def _fhir_base(request: HttpRequest) -> str:
    return request.build_absolute_uri(reverse("fhir:metadata")).removesuffix("metadata")


@require_GET
@sensitive_action
def export_bundle(request: HttpRequest) -> StreamingHttpResponse:
    """Everything the user may see of herself and her children, as a FHIR
    Bundle (collection) to save: streamed, audited per person first."""
    user = request.user
    rows = export.export_rows(user, export.family_patient_ids(user))
    export.audit_export(user, rows, action="export.bundle")
    response = StreamingHttpResponse(
        export.bundle_stream(user, rows, base=_fhir_base(request)), content_type=FHIR_JSON
    )
    today = timezone.localdate(timezone=selectors.JAPAN)
    response["Content-Disposition"] = f'attachment; filename="hagukumi-records-{today:%Y%m%d}.json"'
    response["Cache-Control"] = "no-store"
    return response


@require_GET
@sensitive_action
def export_print(request: HttpRequest) -> HttpResponse:
    """The same records as a page to print: per person, per category."""
    user = request.user
    ids = export.family_patient_ids(user)
    export.audit_export(user, export.export_rows(user, ids), action="export.print")
    context = {
        "people": export.print_people(user, ids),
        "printed_at": timezone.localtime(timezone.now(), selectors.JAPAN),
    }
    response = render(request, "phr/family/print.html", context)
    response["Cache-Control"] = "no-store"
    return response


# --------------------------------------------------------------------------
# Leaving
# --------------------------------------------------------------------------


def _render_leave(request: HttpRequest, form: LeaveForm, status: int = 200) -> HttpResponse:
    user = request.user
    staff = is_staff_user(user)
    plan = None if staff else family.leave_plan(user=user)
    kept_names: list[str] = []
    if plan is not None and plan.kept_children:
        names = family.child_names(user=user, children=plan.kept_children)
        kept_names = [names.get(c.pk) or _("(no name recorded)") for c in plan.kept_children]
        audit_reveal(user, [c.pk for c in plan.kept_children], action="view.family")
    context = {"form": form, "plan": plan, "staff": staff, "kept_names": kept_names}
    return render(request, "phr/family/leave.html", context, status=status)


@require_GET
@login_required
def leave(request: HttpRequest) -> HttpResponse:
    return _render_leave(request, LeaveForm())


@require_POST
@sensitive_action
def leave_confirm(request: HttpRequest) -> HttpResponse:
    """Delete the account and its self-entered data. Re-authentication
    first; then the session ends."""
    if is_staff_user(request.user):
        raise PermissionDenied
    form = LeaveForm(request.POST)
    if not form.is_valid():
        return _render_leave(request, form, status=400)
    family.account_leave(user=request.user)  # type: ignore[arg-type]
    logout(request)
    return redirect("family:left")


@require_GET
def left(request: HttpRequest) -> HttpResponse:
    return render(request, "phr/family/left.html", {})
