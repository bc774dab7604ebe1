"""The research portal, mounted at /research/ (sharing/research_urls.py):
researchers apply, follow their institution's projects, request exports
within the approval, watch them run and make download links; reviewers
(platform admins, municipal privacy officers) work through the review
queue.

Only researchers and reviewers with MFA reach these pages (staff without
MFA are sent to set it up by phr.middleware.StaffMfaSetupMiddleware);
everyone else gets 404, and so does another institution's project,
export or link — as if it did not exist. Decisions that release data
(a review, an export request, a download link) need a recent
authentication (phr.auth.sensitive_action).

Views authorize (sharing.research selectors), parse, call a service,
render.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.utils.translation import get_language, gettext_lazy
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from phr.auth import sensitive_action
from phr.models import Job
from sharing import research
from sharing.models import ResearchExport, ResearchProject
from sharing.research_forms import ApplyForm, ExportForm, ReviewForm
from sharing.selectors import in_language, organization_name

View = Callable[..., HttpResponse]

# The link just created waits here for the one page that shows it (the
# export page pops it as it renders: a reload shows it no more).
NEW_LINK_SESSION_KEY = "research:new_link"


def researcher_required(view: View) -> View:
    """Researchers (active, at a research institution, with MFA); everyone
    else gets 404."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not research.researcher_institutions(request.user):
            raise Http404
        return view(request, *args, **kwargs)

    return wrapper


def reviewer_required(view: View) -> View:
    """Platform admins and municipal privacy officers with MFA; everyone
    else gets 404."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not research.is_reviewer(request.user):
            raise Http404
        return view(request, *args, **kwargs)

    return wrapper


def found_first(lookup: Callable[[Any, Any], Any], kwarg: str) -> Callable[[View], View]:
    """Look the object up (Http404 when it is not the user's) before any
    re-authentication is asked, so that another institution's project is
    a 404 like a missing one, not a "confirm access" page."""

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            lookup(request.user, kwargs[kwarg])
            return view(request, *args, **kwargs)

        return wrapper

    return decorate


def _nav(request: HttpRequest, current: str = "") -> dict[str, Any]:
    is_reviewer = research.is_reviewer(request.user)
    return {
        "current": current,
        "is_researcher": bool(research.researcher_institutions(request.user)),
        "is_reviewer": is_reviewer,
        "queue_count": research.review_queue(request.user).count() if is_reviewer else 0,
    }


def _project_facts(project: ResearchProject) -> dict[str, Any]:
    """The application as both sides read it."""
    return {
        "project": project,
        "institution": organization_name(project.organization),
        "municipalities": [
            {"name": organization_name(m), "code": m.code}
            for m in project.municipalities.order_by("code")
        ],
        "category_labels": research_category_labels(project.categories),
        "approvals": list(research.approvals(project)),
        "approval_count": research.approval_count(project),
        "approvals_needed": research.APPROVALS_NEEDED,
    }


def research_category_labels(codes: list[str]) -> list[str]:
    from sharing.selectors import category_labels

    return category_labels(codes)


# --------------------------------------------------------------------------
# Portal home
# --------------------------------------------------------------------------


@login_required
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    """The researcher's projects and, for reviewers, the queue's size."""
    nav = _nav(request, "index")
    if not (nav["is_researcher"] or nav["is_reviewer"]):
        raise Http404
    projects = list(research.researcher_projects(request.user)) if nav["is_researcher"] else []
    return render(request, "sharing/research/index.html", {**nav, "projects": projects})


# --------------------------------------------------------------------------
# Applying
# --------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
@researcher_required
def apply(request: HttpRequest) -> HttpResponse:
    institutions = research.researcher_institutions(request.user)
    if request.method != "POST":
        form = ApplyForm(institutions=institutions)
        return render(
            request, "sharing/research/apply.html", {**_nav(request, "apply"), "form": form}
        )
    form = ApplyForm(request.POST, institutions=institutions)
    if form.is_valid():
        data = form.cleaned_data
        try:
            project = research.project_apply(
                user=request.user,
                organization=data.get("organization"),
                title=data["title"],
                ethics_approval_number=data["ethics_approval_number"],
                purpose=data["purpose"],
                categories=data["categories"],
                cohort_kind=data["cohort_kind"],
                municipalities=list(data["municipalities"]),
                birth_year_from=data["birth_year_from"],
                birth_year_to=data["birth_year_to"],
                period_start=data["period_start"],
                period_end=data["period_end"],
                publish=data["publish"],
            )
        except PermissionDenied as exc:
            raise Http404 from exc
        except ValidationError as exc:
            form.add_service_errors(exc)
        else:
            messages.success(request, _("The application was submitted for review."))
            return redirect("research:project", project.pk)
    return render(
        request,
        "sharing/research/apply.html",
        {**_nav(request, "apply"), "form": form},
        status=400,
    )


# --------------------------------------------------------------------------
# A project, seen by its institution's researchers
# --------------------------------------------------------------------------


@login_required
@require_GET
@researcher_required
def project(request: HttpRequest, project_id: uuid.UUID) -> HttpResponse:
    found = research.researcher_project(request.user, project_id)
    block = research.project_export_block(found, request.user)
    exports = list(research.project_exports(found))
    context = {
        **_nav(request, "index"),
        **_project_facts(found),
        "export_block": in_language(block) if block else "",
        "exports": [{"export": e, "progress": _progress(e)} for e in exports],
    }
    return render(request, "sharing/research/project.html", context)


# --------------------------------------------------------------------------
# Export requests
# --------------------------------------------------------------------------


def _render_export_form(
    request: HttpRequest, project: ResearchProject, form: ExportForm, *, status: int = 200
) -> HttpResponse:
    block = research.project_export_block(project, request.user)
    context = {
        **_nav(request, "index"),
        **_project_facts(project),
        "form": form,
        "export_block": in_language(block) if block else "",
    }
    return render(request, "sharing/research/export_new.html", context, status=status)


@login_required
@require_GET
@researcher_required
def export_new(request: HttpRequest, project_id: uuid.UUID) -> HttpResponse:
    found = research.researcher_project(request.user, project_id)
    return _render_export_form(request, found, ExportForm(project=found))


@login_required
@require_POST
@researcher_required
@found_first(research.researcher_project, "project_id")
@sensitive_action
def export_create(request: HttpRequest, project_id: uuid.UUID) -> HttpResponse:
    """Queue an export with these filters, or show why it is refused
    (outside the approval, before the second approval, after expiry)."""
    found = research.researcher_project(request.user, project_id)
    form = ExportForm(request.POST, project=found)
    if form.is_valid():
        try:
            export = research.request_export(
                user=request.user, project=found, filters=form.filters()
            )
        except research.ResearchRefused as exc:
            form.add_error(None, in_language(exc.message))
        else:
            messages.success(request, _("The export was queued."))
            return redirect("research:export", export.pk)
    return _render_export_form(request, found, form, status=400)


def _progress(export: ResearchExport) -> dict[str, Any]:
    job = export.job
    running = export.status in (ResearchExport.Status.QUEUED, ResearchExport.Status.RUNNING)
    if job is not None and job.status in (Job.Status.FAILED, Job.Status.CANCELLED):
        running = False
    done = job.progress_done if job is not None else 0
    total = (job.progress_total or 0) if job is not None else 0
    percent = int(done * 100 / total) if total else 0
    return {"running": running, "done": done, "total": total, "percent": min(percent, 100)}


# Labels of the release report's keys (docs/decisions/0022-research.md);
# a key not listed here is shown as it is written.
REPORT_LABELS = {
    "cohort_size": gettext_lazy("Cohort size"),
    "persons": gettext_lazy("Persons"),
    "released_persons": gettext_lazy("Persons released"),
    "k": gettext_lazy("k (required)"),
    "k_required": gettext_lazy("k (required)"),
    "k_achieved": gettext_lazy("k achieved"),
    "achieved_k": gettext_lazy("k achieved"),
    "records": gettext_lazy("Records per table"),
    "records_per_table": gettext_lazy("Records per table"),
    "tables": gettext_lazy("Tables"),
    "quasi_identifiers": gettext_lazy("Quasi-identifiers"),
    "suppressed": gettext_lazy("Suppressed"),
    "suppression": gettext_lazy("Suppression"),
    "suppressed_persons": gettext_lazy("Persons suppressed"),
    "generalizations": gettext_lazy("Generalizations applied"),
    "generalization": gettext_lazy("Generalizations applied"),
    "files": gettext_lazy("Files (SHA-256)"),
    "sha256": gettext_lazy("SHA-256"),
    "blanked_calendar_years": gettext_lazy("Calendar years blanked (date protection)"),
    "top_bottom_coding": gettext_lazy("Top and bottom coding"),
    "filters": gettext_lazy("Filters"),
    "generated_at": gettext_lazy("Generated at"),
    "created_at": gettext_lazy("Generated at"),
    "export_id": gettext_lazy("Export"),
    "project_id": gettext_lazy("Project"),
    "excluded_without_birth_date": gettext_lazy("Left out: no birth date"),
    "equivalence_classes": gettext_lazy("Equivalence classes"),
    "date_floor_days": gettext_lazy("Fewest candidate birth dates per person (days)"),
    "period": gettext_lazy("Data period"),
    "start": gettext_lazy("From"),
    "end": gettext_lazy("Until"),
    "categories": gettext_lazy("Kinds of record"),
    "cohort_kind": gettext_lazy("Cohort"),
    "pseudonym": gettext_lazy("Pseudonym"),
    "max_fraction": gettext_lazy("Largest share that may be suppressed"),
    "calendar_years_blanked": gettext_lazy("Calendar years blanked (date protection)"),
    "cells_below_10": gettext_lazy("Counts shown as <10"),
    "path": gettext_lazy("File"),
    "bytes": gettext_lazy("Bytes"),
}


def _label(key: str) -> str:
    return str(REPORT_LABELS.get(key, key))


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_cell(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    if value is None:
        return "—"
    if isinstance(value, bool):
        return _("yes") if value else _("no")
    return str(value)


def report_sections(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The release report as the page shows it, whatever keys the builder
    wrote: a scalar is one line, a mapping a two-column table, a list of
    mappings a table with a column per key, any other list one line."""
    sections: list[dict[str, Any]] = []
    for key, value in (report or {}).items():
        label = _label(key)
        if isinstance(value, dict):
            rows = [
                (_label(k) if not isinstance(v, dict) else str(k), _cell(v))
                for k, v in value.items()
            ]
            if all(isinstance(v, dict) for v in value.values()) and value:
                columns = list(dict.fromkeys(c for v in value.values() for c in v))
                sections.append(
                    {
                        "kind": "table",
                        "label": label,
                        "columns": ["", *(_label(c) for c in columns)],
                        "rows": [
                            [str(k), *(_cell(v.get(c)) for c in columns)] for k, v in value.items()
                        ],
                    }
                )
            else:
                sections.append({"kind": "mapping", "label": label, "rows": rows})
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            columns = list(dict.fromkeys(c for v in value for c in v))
            sections.append(
                {
                    "kind": "table",
                    "label": label,
                    "columns": [_label(c) for c in columns],
                    "rows": [[_cell(v.get(c)) for c in columns] for v in value],
                }
            )
        else:
            sections.append({"kind": "line", "label": label, "value": _cell(value)})
    return sections


def reason_text(reason: str) -> str:
    """A stored reason in the page's language: "日本語 / English" (this
    module's refusals) or Japanese and English on two lines (the release
    builder's)."""
    if not reason:
        return ""
    if " / " not in reason and "\n" in reason:
        ja, en = reason.split("\n", 1)
        return ja if (get_language() or "ja").startswith("ja") else en
    return in_language(reason)


def _export_context(request: HttpRequest, export: ResearchExport) -> dict[str, Any]:
    downloads = [
        {"download": d, "state": research.download_state(d)}
        for d in research.export_downloads(export)
    ]
    return {
        **_nav(request, "index"),
        "export": export,
        "project": export.project,
        "progress": _progress(export),
        "reason": reason_text(export.reason),
        "report": report_sections(export.report),
        "downloads": downloads,
        "link_block": research.project_export_block(export.project, request.user),
        "filters": _filter_lines(export),
    }


def _filter_lines(export: ResearchExport) -> list[tuple[str, str]]:
    from phr.models import Organization
    from sharing.models import CohortKind

    filters = export.filters or {}
    lines: list[tuple[str, str]] = []
    if "birth_year_from" in filters or "birth_year_to" in filters:
        lines.append(
            (
                _("Birth years"),
                f"{filters.get('birth_year_from', '')}–{filters.get('birth_year_to', '')}",
            )
        )
    ids = [i for i in filters.get("municipalities") or [] if isinstance(i, int)]
    if ids:
        names = [
            f"{organization_name(o)}（{o.code}）"
            for o in Organization.objects.filter(pk__in=ids).order_by("code")
        ]
        lines.append((_("Municipalities"), "、".join(names)))
    kind = filters.get("cohort_kind")
    if kind in CohortKind.values:
        lines.append((_("Cohort"), str(CohortKind(kind).label)))
    if filters.get("categories"):
        lines.append(
            (_("Kinds of record"), "、".join(research_category_labels(filters["categories"])))
        )
    if filters.get("formats"):
        lines.append((_("Formats"), ", ".join(filters["formats"])))
    return lines


@login_required
@require_GET
@researcher_required
def export_detail(request: HttpRequest, export_id: uuid.UUID) -> HttpResponse:
    export = research.researcher_export(request.user, export_id)
    fresh = request.session.pop(NEW_LINK_SESSION_KEY, None)
    new_link = ""
    if isinstance(fresh, dict) and fresh.get("export") == str(export.pk):
        new_link = str(fresh.get("url", ""))
    context = {**_export_context(request, export), "new_link": new_link}
    if context["link_block"]:
        context["link_block"] = in_language(context["link_block"])
    response = render(request, "sharing/research/export.html", context)
    # The link must not stay in a cache or the back button's copy.
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_GET
@researcher_required
def export_progress(request: HttpRequest, export_id: uuid.UUID) -> HttpResponse:
    """The fragment htmx polls every 2 seconds; once the export is over
    the page reloads (HX-Refresh) to show the result."""
    export = research.researcher_export(request.user, export_id)
    state = _progress(export)
    response = render(
        request,
        "sharing/research/_export_progress.html",
        {"export": export, "progress": state},
    )
    if request.headers.get("HX-Request") == "true" and not state["running"]:
        response["HX-Refresh"] = "true"
    patch_vary_headers(response, ["HX-Request"])
    return response


# --------------------------------------------------------------------------
# Download links
# --------------------------------------------------------------------------


@login_required
@require_POST
@researcher_required
@found_first(research.researcher_export, "export_id")
@sensitive_action
def link_create(request: HttpRequest, export_id: uuid.UUID) -> HttpResponse:
    export = research.researcher_export(request.user, export_id)
    try:
        _download, token = research.create_download(user=request.user, export=export)
    except PermissionDenied as exc:
        raise Http404 from exc
    except research.ResearchRefused as exc:
        messages.error(request, in_language(exc.message))
        return redirect("research:export", export.pk)
    url = request.build_absolute_uri(reverse("research:download", args=[token]))
    request.session[NEW_LINK_SESSION_KEY] = {"export": str(export.pk), "url": url}
    messages.success(request, _("A download link was created. Copy it now: it is shown only once."))
    return redirect("research:export", export.pk)


@login_required
@require_POST
@researcher_required
def link_revoke(request: HttpRequest, link_id: int) -> HttpResponse:
    download = research.researcher_download(request.user, link_id)
    try:
        research.revoke_download(user=request.user, download=download)
    except PermissionDenied as exc:
        raise Http404 from exc
    messages.success(request, _("The download link was revoked."))
    return redirect("research:export", download.export_id)


@login_required
@require_GET
def download(request: HttpRequest, token: str) -> HttpResponse:
    """Stream the release (a zip) to a researcher of the project's
    institution, counting one use of the link. Anyone else: 404. A link
    revoked, expired, used up, or of a project whose approval ended: 410
    with the reason."""
    try:
        used = research.download_use(user=request.user, token=token)
    except research.DownloadGone as exc:
        response = render(
            request,
            "sharing/research/gone.html",
            {**_nav(request), "reason": in_language(exc.message)},
            status=410,
        )
        response["Cache-Control"] = "no-store"
        return response
    path = research.release_zip_path(used.export)
    if path is None:
        raise Http404
    response = FileResponse(
        path.open("rb"),
        as_attachment=True,
        filename=f"hagukumi-research-{used.export_id}.zip",
        content_type="application/zip",
    )
    response["Cache-Control"] = "no-store"
    return response


# --------------------------------------------------------------------------
# Reviews
# --------------------------------------------------------------------------


@login_required
@require_GET
@reviewer_required
def reviews(request: HttpRequest) -> HttpResponse:
    queue = list(research.review_queue(request.user))
    decided = list(research.reviewed_by(request.user)[:50])
    return render(
        request,
        "sharing/research/reviews.html",
        {**_nav(request, "reviews"), "queue": queue, "decided": decided},
    )


def _render_review(
    request: HttpRequest, project: ResearchProject, form: ReviewForm, *, status: int = 200
) -> HttpResponse:
    role = research.reviewer_role(request.user, project)
    already = project.approvals.filter(reviewer=request.user).first()
    open_for_review = project.status in (
        ResearchProject.Status.SUBMITTED,
        ResearchProject.Status.APPROVED,
    )
    context = {
        **_nav(request, "reviews"),
        **_project_facts(project),
        "form": form,
        "role": role,
        "already": already,
        "may_decide": role is not None and already is None and open_for_review,
        "first_approval": project.expires_on is None,
    }
    return render(request, "sharing/research/review.html", context, status=status)


@login_required
@require_GET
@reviewer_required
def review(request: HttpRequest, project_id: uuid.UUID) -> HttpResponse:
    found = research.reviewable_project(request.user, project_id)
    return _render_review(request, found, ReviewForm())


@login_required
@require_POST
@reviewer_required
@found_first(research.reviewable_project, "project_id")
@sensitive_action
def review_decide(request: HttpRequest, project_id: uuid.UUID) -> HttpResponse:
    found = research.reviewable_project(request.user, project_id)
    form = ReviewForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            approval = research.project_review(
                user=request.user,
                project=found,
                decision=data["decision"],
                expires_on=data["expires_on"],
                note=data["note"],
            )
        except PermissionDenied as exc:
            raise Http404 from exc
        except ValidationError as exc:
            form.add_service_errors(exc)
        else:
            if approval.decision == approval.Decision.REJECT:
                messages.success(request, _("The project was rejected."))
            else:
                messages.success(request, _("Your approval was recorded."))
            return redirect("research:reviews")
    return _render_review(request, found, form, status=400)
