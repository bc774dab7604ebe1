"""The feed source form of the municipal staff pages: it parses input;
phr.feeds.feed_source_save checks the address and format again and saves
the source with its schedule."""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

from municipal_data import selectors
from phr import feeds
from phr.models import FeedSource

EVERY, DAILY = "every", "daily"
CURSOR_PARAM = re.compile(r"[A-Za-z0-9_.\-]{1,40}")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class FeedSourceForm(forms.ModelForm):  # type: ignore[type-arg]
    """Name, address, authorization header (write-only: never shown back;
    blank keeps the stored one), format, cursor parameter, schedule and
    whether the schedule runs."""

    auth_header = forms.CharField(
        label=_("Authorization header"),
        required=False,
        max_length=500,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
    )
    clear_auth_header = forms.BooleanField(
        label=_("Remove the stored authorization header"), required=False
    )
    url = forms.URLField(
        label=_("Address (URL)"),
        max_length=500,
        assume_scheme="https",
        help_text=_("https:// only. The feed protocol is in docs/formats/feeds.md."),
    )
    format = forms.ChoiceField(label=_("Kind of data"))
    schedule = forms.ChoiceField(
        label=_("Schedule"),
        choices=[(EVERY, _("Every N minutes")), (DAILY, _("Daily at a time"))],
        initial=EVERY,
        widget=forms.RadioSelect,
    )
    every_minutes = forms.IntegerField(
        label=_("Every (minutes)"), min_value=5, max_value=1440, required=False, initial=60
    )
    daily_at = forms.TimeField(
        label=_("Daily at (Japan time)"),
        required=False,
        widget=forms.TimeInput(attrs={"type": "time"}, format="%H:%M"),
    )

    class Meta:
        model = FeedSource
        fields = ("name", "url", "format", "cursor_param", "enabled")
        labels = {
            "name": _("Name"),
            "cursor_param": _("Cursor parameter"),
            "enabled": _("Pull on the schedule"),
        }
        help_texts = {
            "cursor_param": _(
                "The query parameter that carries the cursor, e.g. _since or page_token."
            ),
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["format"].choices = [
            (fmt.key, fmt.label_ja if selectors.japanese() else fmt.label_en)
            for fmt in selectors.upload_formats()
        ]
        stored = bool(self.instance.pk and self.instance.auth_header)
        self.fields["auth_header"].help_text = (
            _("A header is stored. Leave this blank to keep it, or enter a new one.")
            if stored
            else _("The whole value, e.g. “Bearer abc…”. It is never shown again.")
        )
        if not stored:
            del self.fields["clear_auth_header"]
        schedule = feeds.feed_schedule(self.instance) if self.instance.pk else None
        if schedule is not None and schedule.daily_at is not None:
            self.initial.setdefault("schedule", DAILY)
            self.initial.setdefault("daily_at", schedule.daily_at)
        elif schedule is not None:
            self.initial.setdefault("schedule", EVERY)
            self.initial.setdefault("every_minutes", schedule.every_minutes)

    def clean_url(self) -> str:
        url: str = self.cleaned_data["url"]
        feeds.url_check(url)
        return url

    def clean_cursor_param(self) -> str:
        value: str = self.cleaned_data["cursor_param"]
        if not CURSOR_PARAM.fullmatch(value):
            raise ValidationError(
                _("Letters, digits, _ . and - only (at most 40)."), code="cursor_param"
            )
        return value

    def clean_auth_header(self) -> str:
        value: str = self.cleaned_data["auth_header"]
        if CONTROL.search(value):
            raise ValidationError(_("The header must be one line."), code="auth_header")
        return value

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("schedule") == DAILY and data.get("daily_at") is None:
            self.add_error("daily_at", _("Enter the time of day."))
        if data.get("schedule") == EVERY and data.get("every_minutes") is None:
            self.add_error("every_minutes", _("Enter how many minutes apart."))
        return data

    def schedule_value(self) -> feeds.Schedule:
        if self.cleaned_data["schedule"] == DAILY:
            return feeds.Schedule(daily_at=self.cleaned_data["daily_at"])
        return feeds.Schedule(every_minutes=self.cleaned_data["every_minutes"])

    def auth_header_value(self) -> str | None:
        """The header to store: a new one, "" to remove it, None to keep."""
        if self.cleaned_data.get("clear_auth_header"):
            return ""
        return self.cleaned_data["auth_header"] or None
