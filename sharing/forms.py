"""Forms of the Sharing pages. They parse input and find the grantee; the
rules (categories, period, who may be a grantee) are checked by
sharing.services, whose "日本語 / English" messages the forms show next
to the field they are about."""

from __future__ import annotations

from typing import ClassVar

from django import forms
from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

from phr.models import Organization, User
from phr.terminology import Category
from sharing.selectors import clinic_by_code, find_clinics, in_language


class _GrantForm(forms.Form):
    """What both grant forms share: the person, categories, an end date.

    Categories are not required here: an empty choice reaches the service,
    which refuses it with the message families see.
    """

    # service error key → form field
    SERVICE_FIELDS: ClassVar[dict[str, str | None]] = {
        "categories": "categories",
        "ends_at": "ends_on",
        "purpose": None,
    }

    patient = forms.UUIDField(widget=forms.HiddenInput)
    categories = forms.MultipleChoiceField(
        label=_("Which records"),
        choices=Category.choices,
        widget=forms.CheckboxSelectMultiple,
        required=False,
    )
    ends_on = forms.DateField(
        label=_("Until (optional)"),
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text=_("Sharing ends after this day. Leave empty to share until you stop it."),
    )

    def add_service_errors(self, error: ValidationError, *, grantee_field: str) -> None:
        """Show the service's bilingual messages, in the page's language,
        next to the fields they concern."""
        fields = {**self.SERVICE_FIELDS, "grantee": grantee_field}
        for key, messages in error.message_dict.items():
            target = fields.get(key)
            for message in messages:
                if target and target in self.errors:
                    continue  # the form already said what is wrong there
                self.add_error(target, in_language(message))


class ClinicGrantForm(_GrantForm):
    clinic = forms.CharField(
        label=_("Clinic name or medical institution code (10 digits)"),
        max_length=200,
        required=False,
    )
    # Set by picking a search result (radio buttons under the field).
    clinic_id = forms.IntegerField(required=False, widget=forms.HiddenInput)

    def grantee(self) -> Organization | None:
        """The chosen clinic, or None with an error on the field."""
        chosen = self.cleaned_data.get("clinic_id")
        if chosen:
            found = Organization.objects.filter(kind=Organization.Kind.CLINIC, pk=chosen).first()
            if found is not None:
                return found
        text = (self.cleaned_data.get("clinic") or "").strip()
        if not text:
            self.add_error("clinic", _("Enter the clinic's name or its medical institution code."))
            return None
        by_code = clinic_by_code(text)
        if by_code is not None:
            return by_code
        matches = find_clinics(text)
        if len(matches) == 1 and not text.isdigit():
            return matches[0]
        if not matches or text.isdigit():
            self.add_error(
                "clinic",
                _("No clinic with this name or medical institution code was found."),
            )
        else:
            self.add_error(
                "clinic",
                _(
                    "Several clinics match. Pick one from the list, or enter its medical "
                    "institution code."
                ),
            )
        return None


class PersonGrantForm(_GrantForm):
    email = forms.CharField(
        label=_("Their email address (the one they use for Hagukumi)"),
        max_length=254,
        required=False,
        widget=forms.EmailInput,
    )

    def grantee(self) -> User | None:
        email = (self.cleaned_data.get("email") or "").strip()
        if not email:
            self.add_error("email", _("Enter the email address of their Hagukumi account."))
            return None
        user = User.objects.filter(email__iexact=email, is_active=True).first()
        if user is None:
            self.add_error(
                "email",
                _(
                    "No Hagukumi account uses this email address. Ask them to sign up first, "
                    "then share again."
                ),
            )
        return user


class EmergencyPreferenceForm(forms.Form):
    patient = forms.UUIDField(widget=forms.HiddenInput)
    share_summary = forms.BooleanField(
        label=_("Let emergency services see the emergency summary"), required=False
    )
    contact_note = forms.CharField(
        label=_("Note for emergency services (e.g. who to call)"),
        max_length=200,
        required=False,
    )


class ReportForm(forms.Form):
    audit_event = forms.IntegerField(widget=forms.HiddenInput)
    note = forms.CharField(
        label=_("What looks wrong? (optional)"),
        max_length=2000,
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
    )


class CloseReportForm(forms.Form):
    report = forms.IntegerField(widget=forms.HiddenInput)
    resolution = forms.CharField(
        label=_("Resolution"),
        max_length=4000,
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
    )

    def add_service_errors(self, error: ValidationError) -> None:
        for key, messages in error.message_dict.items():
            target = key if key in self.fields else None
            for message in messages:
                self.add_error(target, in_language(message))


GRANT_FORMS: dict[str, type[ClinicGrantForm | PersonGrantForm]] = {
    "clinic": ClinicGrantForm,
    "person": PersonGrantForm,
}
