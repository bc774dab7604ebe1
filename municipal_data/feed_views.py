"""The feed pages of municipal staff, mounted under /municipal/feeds/: the
municipality's feed sources with their last run, a source's form (the
authorization header is write-only), "run now", and a source's runs with
links to each page's batch and its error report.

Who may: municipal staff with MFA (municipal_data.views.municipal_staff);
a source of another municipality is a 404 like a missing one. Feed sources
and runs are control data: counts, cursors and error messages that never
quote a page's content, so these pages show no patient and are not
audited as reads of records.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Page, Paginator
from django.db.models import Prefetch, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from municipal_data import selectors
from municipal_data.feed_forms import FeedSourceForm
from municipal_data.views import _context, municipal_staff
from phr import feeds
from phr.models import Batch, FeedRun, FeedSource, Organization

RUNS_PAGE_SIZE = 25


def _source(user: Any, source_id: int) -> FeedSource:
    """A feed source of one of the user's municipalities, or Http404
    (another municipality's source and a missing one alike)."""
    mine = [m.pk for m in selectors.staff_municipalities(user)]
    source = (
        FeedSource.objects.select_related("organization", "periodic_task")
        .filter(pk=source_id, organization_id__in=mine)
        .first()
    )
    if source is None:
        raise Http404
    return source


def schedule_text(source: FeedSource) -> str:
    schedule = feeds.feed_schedule(source)
    if schedule is None:
        return _("not scheduled")
    if schedule.daily_at is not None:
        return _("daily at %(time)s") % {"time": schedule.daily_at.strftime("%H:%M")}
    return _("every %(minutes)s minutes") % {"minutes": schedule.every_minutes}


def _run_row(run: FeedRun | None) -> dict[str, Any] | None:
    if run is None:
        return None
    duration = run.duration
    return {
        "run": run,
        "seconds": round(duration.total_seconds(), 1) if duration is not None else None,
        "error": feeds.error_text(run.error),
    }


def _sources(municipality: Organization) -> QuerySet[FeedSource]:
    return FeedSource.objects.filter(organization=municipality).select_related("periodic_task")


@login_required
@require_GET
@municipal_staff
def feed_list(request: HttpRequest) -> HttpResponse:
    municipality = selectors.chosen_municipality(request.user, request.GET.get("municipality"))
    rows = []
    for source in _sources(municipality).order_by("name", "pk"):
        last = source.runs.order_by("-started_at", "-pk").first()
        rows.append(
            {
                "source": source,
                "format_label": selectors.format_label(source.format),
                "schedule": schedule_text(source),
                "last": _run_row(last),
            }
        )
    return render(
        request, "municipal_data/feed_list.html", _context(request, municipality, rows=rows)
    )


def _render_form(
    request: HttpRequest,
    municipality: Organization,
    form: FeedSourceForm,
    source: FeedSource | None = None,
) -> HttpResponse:
    context = _context(request, municipality, form=form, source=source)
    return render(request, "municipal_data/feed_form.html", context)


def _save(request: HttpRequest, form: FeedSourceForm) -> FeedSource | None:
    try:
        return feeds.feed_source_save(
            source=form.instance,
            schedule=form.schedule_value(),
            auth_header=form.auth_header_value(),
            by=request.user,
        )
    except ValidationError as error:
        for message in error.messages:
            form.add_error(None, message)
        return None


@login_required
@require_http_methods(["GET", "POST"])
@municipal_staff
def feed_new(request: HttpRequest) -> HttpResponse:
    chosen = request.POST.get("municipality") or request.GET.get("municipality")
    municipality = selectors.chosen_municipality(request.user, chosen)
    if request.method == "GET":
        return _render_form(request, municipality, FeedSourceForm())
    form = FeedSourceForm(request.POST, instance=FeedSource(organization=municipality))
    if not form.is_valid() or (source := _save(request, form)) is None:
        return _render_form(request, municipality, form)
    messages.success(request, _("The feed was saved."))
    return redirect(reverse("municipal:feed_detail", args=[source.pk]))


@login_required
@require_http_methods(["GET", "POST"])
@municipal_staff
def feed_edit(request: HttpRequest, source_id: int) -> HttpResponse:
    source = _source(request.user, source_id)
    if request.method == "GET":
        return _render_form(request, source.organization, FeedSourceForm(instance=source), source)
    form = FeedSourceForm(request.POST, instance=source)
    if not form.is_valid() or _save(request, form) is None:
        return _render_form(request, source.organization, form, source)
    messages.success(request, _("The feed was saved."))
    return redirect(reverse("municipal:feed_detail", args=[source.pk]))


@login_required
@require_POST
@municipal_staff
def feed_run(request: HttpRequest, source_id: int) -> HttpResponseRedirect:
    source = _source(request.user, source_id)
    if feeds.feed_run_now(source=source, by=request.user) is None:
        messages.info(request, _("A pull of this feed is already queued or running."))
    else:
        messages.success(request, _("A pull was queued. Its run appears below."))
    return redirect(reverse("municipal:feed_detail", args=[source.pk]))


def _runs_page(source: FeedSource, number: Any) -> Page[FeedRun]:
    runs = source.runs.order_by("-started_at", "-pk").prefetch_related(
        Prefetch("batches", queryset=Batch.objects.order_by("pk"))
    )
    return Paginator(runs, RUNS_PAGE_SIZE).get_page(number)


@login_required
@require_GET
@municipal_staff
def feed_detail(request: HttpRequest, source_id: int) -> HttpResponse:
    source = _source(request.user, source_id)
    page = _runs_page(source, request.GET.get("page", 1))
    context = _context(
        request,
        source.organization,
        source=source,
        format_label=selectors.format_label(source.format),
        schedule=schedule_text(source),
        page=page,
        runs=[_run_row(run) for run in page.object_list],
    )
    return render(request, "municipal_data/feed_detail.html", context)
