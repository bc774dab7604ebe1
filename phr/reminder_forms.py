"""The notification settings form: where reminders go, and about what."""

from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from phr.models import NotificationSettings


class NotificationSettingsForm(forms.ModelForm):
    class Meta:
        model = NotificationSettings
        fields = ("email_enabled", "in_app_enabled", "vaccinations", "checkups")
        labels = {
            "email_enabled": _("Send me reminders by email"),
            "in_app_enabled": _("Show reminders in my notification list"),
            "vaccinations": _("Vaccinations"),
            "checkups": _("Infant checkups"),
        }
        help_texts = {
            "email_enabled": _("At most one email a day, only when something new is due."),
        }


class MarkReadForm(forms.Form):
    """One reminder (its id), or all of the user's reminders."""

    reminder = forms.IntegerField(required=False, min_value=1)
    all = forms.BooleanField(required=False)

    def clean(self) -> dict[str, object]:
        data = super().clean() or {}
        if not data.get("all") and not data.get("reminder"):
            raise forms.ValidationError(_("Choose a notification to mark as read."))
        return data
