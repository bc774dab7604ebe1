"""The notification list (newest first, unread marked, mark read) and the
reminder settings. Views authorize, call phr.reminders, render.

A user sees only their own reminders; a reminder about a child the user
may no longer see (the guardianship ended, a DV block) is not shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from phr import reminders
from phr.models import Reminder
from phr.reminder_forms import MarkReadForm, NotificationSettingsForm
from sharing.access import Purpose, audit_reveal

PAGE_SIZE = 30


@dataclass(frozen=True)
class NotificationRow:
    id: int
    child_name: str
    child_id: str
    label: str
    kind: str
    overdue: bool
    due_from: date
    due_until: date | None
    created_at: datetime
    unread: bool


def _page_number(request: HttpRequest) -> int:
    try:
        return max(int(request.GET.get("page", "1")), 1)
    except ValueError:
        return 1


@require_safe
@login_required
def notification_list(request: HttpRequest) -> HttpResponse:
    rows = reminders.notifications_queryset(request.user)
    paginator = Paginator(rows, PAGE_SIZE)
    page = paginator.get_page(_page_number(request))
    names = reminders.child_names(
        user=request.user, patient_ids=[r.patient_id for r in page.object_list]
    )
    shown = [
        NotificationRow(
            id=r.pk,
            child_name=names[r.patient_id],
            child_id=str(r.patient_id),
            label=r.label,
            kind=r.kind,
            overdue=r.stage == Reminder.Stage.OVERDUE,
            due_from=r.due_from,
            due_until=r.due_until,
            created_at=r.created_at,
            unread=r.read_at is None,
        )
        for r in page.object_list
        if r.patient_id in names
    ]
    # The page names children and their due vaccinations and checkups.
    audit_reveal(
        request.user,
        [r.patient_id for r in page.object_list if r.patient_id in names],
        categories=reminders.READ_CATEGORIES,
        action="view.notifications",
        purpose=Purpose.PERSONAL,
    )
    return render(
        request,
        "phr/notifications/list.html",
        {
            "rows": shown,
            "page": page,
            "unread": reminders.unread_count(request.user),
            "settings": reminders.settings_for(request.user),
        },
    )


@require_POST
@login_required
def mark_read(request: HttpRequest) -> HttpResponse:
    form = MarkReadForm(request.POST)
    if not form.is_valid():
        messages.error(request, _("Choose a notification to mark as read."))
        return redirect("reminder:list")
    if form.cleaned_data["all"]:
        reminders.notifications_mark_read(user=request.user)
        messages.success(request, _("All notifications were marked as read."))
    else:
        reminders.notifications_mark_read(
            user=request.user, reminder_ids=[form.cleaned_data["reminder"]]
        )
    page = request.POST.get("page", "")
    suffix = f"?page={page}" if page.isdigit() and page != "1" else ""
    return redirect(reverse("reminder:list") + suffix)


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
def notification_settings(request: HttpRequest) -> HttpResponse:
    current = reminders.settings_for(request.user)
    if request.method == "POST":
        form = NotificationSettingsForm(request.POST, instance=current)
        if form.is_valid():
            reminders.settings_save(
                user=request.user,
                email_enabled=form.cleaned_data["email_enabled"],
                in_app_enabled=form.cleaned_data["in_app_enabled"],
                vaccinations=form.cleaned_data["vaccinations"],
                checkups=form.cleaned_data["checkups"],
            )
            messages.success(request, _("Your notification settings were saved."))
            return redirect("reminder:settings")
    else:
        form = NotificationSettingsForm(instance=current)
    return render(request, "phr/notifications/settings.html", {"form": form})
