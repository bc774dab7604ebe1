"""Forms of the medication notebook: importing JAHIS data (pasted,
scanned or uploaded) and entering a medicine by hand."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

from phr import jahis

DATE_FORMATS = ["%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d"]
EARLIEST = date(1900, 1, 1)
# A JAHIS document is a few kB (a QR code holds ~2.3 kB); a notebook
# exported whole some tens of kB.
MAX_UPLOAD_BYTES = 1024 * 1024
MAX_TEXT_CHARS = 500_000


class ImportForm(forms.Form):
    """Paste the text (or let the camera scanner fill it in), or choose a
    file: one of the two."""

    text = forms.CharField(
        label=_("Medication notebook data (text)"),
        required=False,
        strip=False,
        max_length=MAX_TEXT_CHARS,
        help_text=_(
            "Paste the text of the pharmacy's QR code (it starts with JAHISTC), "
            "or scan the QR codes with the camera."
        ),
        widget=forms.Textarea(attrs={"rows": 8, "spellcheck": "false", "autocomplete": "off"}),
    )
    file = forms.FileField(
        label=_("…or a file"),
        required=False,
        help_text=_("A JAHIS e-medication notebook file (Shift_JIS or UTF-8)."),
    )
    via = forms.ChoiceField(
        choices=[("paste", "paste"), ("scan", "scan"), ("upload", "upload")],
        required=False,
        widget=forms.HiddenInput,
    )

    def clean_file(self) -> Any:
        upload = self.cleaned_data.get("file")
        if upload is not None and upload.size > MAX_UPLOAD_BYTES:
            raise ValidationError(_("The file is too large (at most 1 MB)."), code="too_large")
        return upload

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        text = data.get("text") or ""
        upload = data.get("file")
        if self.errors:
            return data
        if upload is not None and text.strip():
            raise ValidationError(_("Paste the text or choose a file, not both."), code="both")
        if upload is None and not text.strip():
            raise ValidationError(
                _("Paste the text, scan the QR code or choose a file."), code="empty"
            )
        if upload is not None:
            decoded, encoding = jahis.decode(upload.read())
            data["decoded"], data["encoding"], data["via"] = decoded, encoding, "upload"
        else:
            data["decoded"], data["encoding"] = text, "utf-8"
            data["via"] = "scan" if data.get("via") == "scan" else "paste"
        return data


def _date_field(label: Any, *, required: bool = False) -> forms.DateField:
    return forms.DateField(
        label=label,
        required=required,
        input_formats=DATE_FORMATS,
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
    )


class StatementForm(forms.Form):
    """A medicine the family records itself."""

    name = forms.CharField(label=_("Medicine"), max_length=120)
    dosage = forms.CharField(
        label=_("Dose and how to take it"),
        max_length=200,
        required=False,
        help_text=_("e.g. 1 tablet after breakfast"),
    )
    start = _date_field(_("Started on"), required=True)
    end = _date_field(_("Ended (or ends) on"))
    days = forms.IntegerField(
        label=_("…or for how many days"), min_value=1, max_value=365, required=False
    )
    taking = forms.BooleanField(label=_("Taking it now"), required=False, initial=True)
    note = forms.CharField(
        label=_("Note"), max_length=400, required=False, widget=forms.Textarea(attrs={"rows": 3})
    )

    def __init__(self, *args: Any, today: date, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.today = today

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if not name:
            raise ValidationError(_("Enter the medicine's name."), code="required")
        return name

    def clean_start(self) -> date:
        start: date = self.cleaned_data["start"]
        if not EARLIEST <= start <= self.today + timedelta(days=366):
            raise ValidationError(_("Enter a start date that is possible."), code="range")
        return start

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        start, end, days = data.get("start"), data.get("end"), data.get("days")
        if end is not None and days is not None:
            raise ValidationError(_("Give an end date or a number of days, not both."), code="both")
        if start is not None and days is not None:
            data["end"] = end = start + timedelta(days=days - 1)
        if start is not None and end is not None and end < start:
            self.add_error("end", _("The end cannot be before the start."))
        return data
