"""The municipal staff pages, mounted at /municipal/ (config/urls.py): the
dashboard, uploads with their validation report and import, the list of
uploads, and the match-review queue.

Only active municipal staff with MFA reach them (staff without MFA are sent
to set it up by phr.middleware.StaffMfaSetupMiddleware before they get
here); everyone else gets 404. A batch or review of another municipality
is a 404 like a missing one. A user who is staff of several
municipalities picks one with ?municipality=<id> (the first by name
otherwise); batch and review pages follow the batch's own municipality.

Views authorize (municipal_data.selectors, sharing.access), parse, call
the pipeline or a service, render.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from municipal_data import selectors
from municipal_data.forms import ConfirmForm, ReviewDecisionForm, UploadForm, UploadLimit
from municipal_data.models import MatchReview
from municipal_data.services import review_decide
from phr import pipeline
from phr.audit import audit_write
from phr.models import Batch, Organization, Role
from phr.terminology import Category
from sharing.access import Purpose, audit_reveal
from sharing.selectors import in_language

View = Callable[..., HttpResponse]


def municipal_staff(view: View) -> View:
    """Municipal staff with MFA; everyone else gets 404."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not selectors.staff_municipalities(request.user):
            raise Http404
        return view(request, *args, **kwargs)

    return wrapper


def _context(request: HttpRequest, municipality: Organization, **extra: Any) -> dict[str, Any]:
    """What every municipal page shows: the municipality, the choice of
    another one when the user has several, and the query string that
    keeps the choice on the sub-navigation's links."""
    mine = selectors.staff_municipalities(request.user)
    choice = f"?municipality={municipality.pk}" if len(mine) > 1 else ""
    return {
        "municipality": municipality,
        "municipalities": mine,
        "choice": choice,
        "open_reviews": selectors.open_reviews(municipality).count(),
        **extra,
    }


def _batch_url(batch: Batch) -> str:
    return reverse("municipal:batch", args=[batch.pk])


def _audit_aggregate(request: HttpRequest, municipality: Organization, **detail: Any) -> None:
    """Aggregate figures reveal no person: one audit row for the view of
    them, naming no patient (docs/decisions/0007-municipal-data.md)."""
    audit_write(
        action="view.municipal_dashboard",
        actor_id=request.user.pk,
        actor_role=Role.MUNICIPAL_STAFF,
        organization_id=municipality.pk,
        categories=[Category.INFANT_CHECKUPS, Category.VACCINATIONS],
        purpose=Purpose.PUBLIC_HEALTH,
        detail={"rule": "municipal", "aggregate": True, **detail},
    )


# --------------------------------------------------------------------------
# Dashboard
# --------------------------------------------------------------------------


@login_required
@require_GET
@municipal_staff
def dashboard(request: HttpRequest) -> HttpResponse:
    municipality = selectors.chosen_municipality(request.user, request.GET.get("municipality"))
    coverage = selectors.coverage(user=request.user, municipality=municipality)
    _audit_aggregate(
        request, municipality, children=coverage.total_children, cohorts=coverage.cohorts
    )
    recent = list(selectors.batches(municipality)[: selectors.RECENT_BATCHES])
    context = _context(request, municipality, coverage=coverage, recent=_batch_rows(recent))
    return render(request, "municipal_data/dashboard.html", context)


# --------------------------------------------------------------------------
# Upload
# --------------------------------------------------------------------------


def _render_upload(
    request: HttpRequest,
    municipality: Organization,
    form: UploadForm,
    *,
    refused: str = "",
    status: int = 200,
) -> HttpResponse:
    context = _context(
        request, municipality, form=form, formats=selectors.upload_formats(), refused=refused
    )
    return render(request, "municipal_data/upload.html", context, status=status)


@csrf_exempt  # checked by upload_form, once the size limit is in place
@login_required
@require_http_methods(["GET", "POST"])
@municipal_staff
def upload(request: HttpRequest) -> HttpResponse:
    """Choose the kind of file and its encoding, send it: it is stored with
    its checksum and validated in the background; the batch page follows.

    The size limit is an upload handler, which must be in place before
    anything reads the body — the CSRF check included, so that check runs
    in upload_form (Django's documented pattern)."""
    limit = UploadLimit(request)
    request.upload_handlers.insert(0, limit)
    return upload_form(request, limit)


@csrf_protect
def upload_form(request: HttpRequest, limit: UploadLimit) -> HttpResponse:
    if request.method == "GET":
        municipality = selectors.chosen_municipality(request.user, request.GET.get("municipality"))
        form = UploadForm(initial={"municipality": municipality.pk})
        return _render_upload(request, municipality, form)
    municipality = selectors.chosen_municipality(request.user, request.POST.get("municipality"))
    if limit.exceeded:
        form = UploadForm(initial={"municipality": municipality.pk})
        refused = _("The file is larger than %(size)s MB. Split it into smaller files.") % {
            "size": settings.MUNICIPAL_UPLOAD_MAX_MB
        }
        return _render_upload(request, municipality, form, refused=refused, status=413)
    form = UploadForm(request.POST, request.FILES)
    if not form.is_valid():
        return _render_upload(request, municipality, form)
    upload_file = form.cleaned_data["file"]
    try:
        batch = pipeline.batch_receive(
            organization=municipality,
            format_key=form.cleaned_data["format"],
            chunks=upload_file.chunks(),
            filename=upload_file.name or "upload.csv",
            user=request.user,
            encoding=form.cleaned_data["encoding"],
        )
    except ValidationError as error:
        for message in error.messages:
            form.add_error(None, message)
        return _render_upload(request, municipality, form)
    except PermissionDenied:
        raise Http404 from None
    messages.success(
        request, _("The file was received. It is checked row by row; the report follows here.")
    )
    return redirect(_batch_url(batch))


# --------------------------------------------------------------------------
# Uploads
# --------------------------------------------------------------------------


def _batch_rows(batches: list[Batch]) -> list[dict[str, Any]]:
    return [
        {
            "batch": batch,
            "format_label": selectors.format_label(batch.format),
            "counts": batch.result or batch.summary,
        }
        for batch in batches
    ]


@login_required
@require_GET
@municipal_staff
def batches(request: HttpRequest) -> HttpResponse:
    municipality = selectors.chosen_municipality(request.user, request.GET.get("municipality"))
    page = selectors.batches_page(municipality, request.GET.get("page", 1))
    context = _context(request, municipality, page=page, rows=_batch_rows(list(page.object_list)))
    return render(request, "municipal_data/batches.html", context)


def _batch_context(request: HttpRequest, batch: Batch) -> dict[str, Any]:
    # The bad rows are known once validation finished (a batch keeps its
    # report when imported or cancelled afterwards).
    errors = (
        selectors.batch_errors_page(batch, request.GET.get("page", 1))
        if batch.summary.get("invalid")
        else None
    )
    file_error = batch.file_error or {}
    return _context(
        request,
        batch.organization,
        batch=batch,
        format_label=selectors.format_label(batch.format),
        detected_encoding=selectors.encoding_label(batch.detected_encoding),
        progress=selectors.batch_progress(batch),
        summary=selectors.counts(batch.summary),
        # An import counts what it wrote; "valid" is the summary's.
        result=selectors.counts(batch.result, skip=("valid",)) if batch.result else None,
        errors=errors,
        file_error=file_error,
        can_import=batch.status == Batch.Status.VALIDATED and bool(batch.summary.get("valid")),
        can_cancel=batch.status in (Batch.Status.VALIDATED, Batch.Status.REJECTED),
    )


@login_required
@require_GET
@municipal_staff
def batch(request: HttpRequest, batch_id: int) -> HttpResponse:
    """The batch: its file, progress while a job runs, the validation
    report with the bad rows, the import buttons, and the result."""
    found = selectors.municipal_batch(request.user, batch_id)
    return render(request, "municipal_data/batch.html", _batch_context(request, found))


@login_required
@require_GET
@municipal_staff
def batch_progress(request: HttpRequest, batch_id: int) -> HttpResponse:
    """The progress fragment htmx polls every 2 seconds while a job runs.
    Once the batch left the running states the page reloads (HX-Refresh)
    to show the report, and the polling stops with it."""
    found = selectors.municipal_batch(request.user, batch_id)
    progress = selectors.batch_progress(found)
    response = render(
        request, "municipal_data/_progress.html", {"batch": found, "progress": progress}
    )
    if request.headers.get("HX-Request") == "true" and not progress.running:
        response["HX-Refresh"] = "true"
    patch_vary_headers(response, ["HX-Request"])
    return response


class _Echo:
    """A file-like object whose write() returns what it was given, so the
    csv module can feed a streaming response row by row."""

    def write(self, value: str) -> str:
        return value


@login_required
@require_GET
@municipal_staff
def batch_errors_csv(request: HttpRequest, batch_id: int) -> StreamingHttpResponse:
    """The bad rows as CSV, UTF-8 with a BOM so that Excel opens it."""
    found = selectors.municipal_batch(request.user, batch_id)
    # The cells of rows that were not imported leave the system: say who
    # took them (no patient: these rows are nobody's record).
    audit_write(
        action="batch.errors_download",
        actor_id=request.user.pk,
        actor_role=Role.MUNICIPAL_STAFF,
        organization_id=found.organization_id,
        purpose=Purpose.PUBLIC_HEALTH,
        detail={"rule": "municipal", "batch": found.pk},
    )
    writer = csv.writer(_Echo())

    def lines() -> Iterator[str]:
        yield "\ufeff"
        yield writer.writerow(["line", "column", "value", "code", "reason_ja", "reason_en"])
        for error in selectors.batch_errors(found).iterator(chunk_size=2000):
            yield writer.writerow(
                [
                    error.line,
                    error.column,
                    error.value,
                    error.code,
                    error.message_ja,
                    error.message_en,
                ]
            )

    response = StreamingHttpResponse(
        (line.encode("utf-8", "replace") for line in lines()),
        content_type="text/csv; charset=utf-8",
    )
    response["Content-Disposition"] = f'attachment; filename="batch-{found.pk}-errors.csv"'
    return response


@login_required
@require_POST
@municipal_staff
def batch_confirm(request: HttpRequest, batch_id: int) -> HttpResponseRedirect:
    """Import the batch (all rows, or only the valid ones)."""
    found = selectors.municipal_batch(request.user, batch_id)
    form = ConfirmForm(request.POST)
    only_valid = form.is_valid() and form.cleaned_data["only_valid"]
    try:
        confirmed = pipeline.batch_confirm(batch=found, user=request.user, only_valid=only_valid)
    except ValidationError as error:
        for message in error.messages:
            messages.error(request, message)
        return redirect(_batch_url(found))
    # Without a broker the import ran as the confirmation committed.
    confirmed.refresh_from_db(fields=["status"])
    if confirmed.status == Batch.Status.IMPORTED:
        messages.success(request, _("The rows were imported."))
    else:
        messages.success(request, _("The import has started."))
    return redirect(_batch_url(found))


@login_required
@require_POST
@municipal_staff
def batch_cancel(request: HttpRequest, batch_id: int) -> HttpResponseRedirect:
    """Drop a batch that was not imported, to fix the file and upload it again."""
    found = selectors.municipal_batch(request.user, batch_id)
    try:
        pipeline.batch_cancel(batch=found, user=request.user)
    except ValidationError as error:
        for message in error.messages:
            messages.error(request, message)
        return redirect(_batch_url(found))
    messages.success(request, _("The upload was cancelled. Fix the file and upload it again."))
    return redirect(f"{reverse('municipal:upload')}?municipality={found.organization_id}")


# --------------------------------------------------------------------------
# Match review
# --------------------------------------------------------------------------


def _render_reviews(
    request: HttpRequest,
    municipality: Organization,
    *,
    failed: tuple[int, ReviewDecisionForm] | None = None,
    status: int = 200,
) -> HttpResponse:
    queue = selectors.review_queue(
        user=request.user, municipality=municipality, page_number=request.GET.get("page", 1)
    )
    # The page shows, for each person the user may see, what their record
    # says: one audit row per person.
    audit_reveal(
        request.user,
        queue.patient_ids,
        categories=queue.categories,
        action="view.match_review",
        purpose=Purpose.PUBLIC_HEALTH,
    )
    rows = [
        {
            "row": row,
            "form": failed[1] if failed and failed[0] == row.review.pk else ReviewDecisionForm(),
        }
        for row in queue.rows
    ]
    context = _context(request, municipality, queue=queue, rows=rows)
    return render(request, "municipal_data/reviews.html", context, status=status)


@login_required
@require_GET
@municipal_staff
def reviews(request: HttpRequest) -> HttpResponse:
    municipality = selectors.chosen_municipality(request.user, request.GET.get("municipality"))
    return _render_reviews(request, municipality)


@login_required
@require_POST
@municipal_staff
def review_decision(request: HttpRequest, review_id: int) -> HttpResponse:
    found = selectors.municipal_review(request.user, review_id)
    back = f"{reverse('municipal:reviews')}?municipality={found.municipality_id}"
    form = ReviewDecisionForm(request.POST)
    if not form.is_valid():
        messages.error(request, _("Choose to accept or to reject the row."))
        return redirect(back)
    accept = form.cleaned_data["decision"] == "accept"
    try:
        decided = review_decide(
            review=found, user=request.user, accept=accept, note=form.cleaned_data["note"]
        )
    except PermissionDenied:
        raise Http404 from None
    except ValidationError as error:
        form.add_error(None, in_language(error.messages[0]))
        return _render_reviews(request, found.municipality, failed=(found.pk, form), status=400)
    if decided.status == MatchReview.Status.ACCEPTED:
        messages.success(request, _("The row was imported into the person's record."))
    else:
        messages.success(request, _("The row was rejected; it stays out of the record."))
    return redirect(back)
