"""Forms of the municipal staff pages: they parse input; the pipeline
(phr.pipeline) and municipal_data.services decide what happens."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.utils.translation import gettext_lazy as _

from municipal_data import selectors
from phr.models import Batch


def upload_limit_bytes() -> int:
    return int(settings.MUNICIPAL_UPLOAD_MAX_MB) * 1024 * 1024


class UploadLimit(FileUploadHandler):
    """Stops reading a file past MUNICIPAL_UPLOAD_MAX_MB, before the
    handlers after it (memory, then a temporary file) store any more of
    it: the rest of the body is read and thrown away, the request goes on
    without the file, and `exceeded` tells the view why. A body whose
    declared length is already too large is not stored at all."""

    # The form's other fields and the multipart framing.
    SLACK = 64 * 1024

    def __init__(self, request: Any = None) -> None:
        super().__init__(request)
        self.limit = upload_limit_bytes()
        self.exceeded = False

    def handle_raw_input(
        self,
        input_data: Any,
        META: dict[str, Any],
        content_length: int,
        boundary: Any,
        encoding: str | None = None,
    ) -> None:
        if content_length > self.limit + self.SLACK:
            self.exceeded = True

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        if self.exceeded or start + len(raw_data) > self.limit:
            self.exceeded = True
            raise StopUpload(connection_reset=False)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None  # the next handler makes the file


class UploadForm(forms.Form):
    municipality = forms.IntegerField(widget=forms.HiddenInput)
    format = forms.ChoiceField(label=_("Kind of file"))
    encoding = forms.ChoiceField(
        label=_("Character encoding"),
        choices=[
            (Batch.Encoding.AUTO, _("Detect automatically")),
            (Batch.Encoding.UTF8, "UTF-8"),
            (Batch.Encoding.CP932, "Shift_JIS"),
        ],
        initial=Batch.Encoding.AUTO,
        required=False,  # not chosen: detected
        widget=forms.RadioSelect,
        help_text=_(
            "Files saved by Excel in Japan are usually Shift_JIS; detection tells "
            "UTF-8 from Shift_JIS by the file's first bytes."
        ),
    )
    file = forms.FileField(label=_("File"))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["format"].choices = [
            (fmt.key, fmt.label_ja if selectors.japanese() else fmt.label_en)
            for fmt in selectors.upload_formats()
        ]
        self.fields["file"].help_text = _(
            "CSV (JSON or NDJSON for the FHIR format), at most %(size)s MB."
        ) % {"size": settings.MUNICIPAL_UPLOAD_MAX_MB}

    def clean_encoding(self) -> str:
        return self.cleaned_data.get("encoding") or Batch.Encoding.AUTO

    def clean_file(self) -> UploadedFile:
        upload: UploadedFile = self.cleaned_data["file"]
        if upload.size is not None and upload.size > upload_limit_bytes():
            raise forms.ValidationError(
                _("The file is larger than %(size)s MB. Split it into smaller files."),
                code="too_large",
                params={"size": settings.MUNICIPAL_UPLOAD_MAX_MB},
            )
        return upload


class ConfirmForm(forms.Form):
    # Set by the "import only the valid rows" button.
    only_valid = forms.BooleanField(required=False)


class ReviewDecisionForm(forms.Form):
    # Sent by the button pressed.
    decision = forms.ChoiceField(choices=[("accept", _("Accept")), ("reject", _("Reject"))])
    note = forms.CharField(label=_("Note (optional)"), max_length=500, required=False)
