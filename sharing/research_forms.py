"""Forms of the research portal. They parse input; the rules (what an
application needs, the two-person rule and the expiry, what lies within
an approval) are sharing.research's, whose "日本語 / English" messages the
forms show next to the field they are about."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

from phr.models import Organization
from phr.terminology import Category
from sharing.models import CohortKind, ResearchApproval, ResearchProject
from sharing.research import FORMATS
from sharing.selectors import in_language


class _ServiceErrors:
    """Put a service's ValidationError on the form's fields."""

    def add_service_errors(self: Any, error: ValidationError) -> None:
        if not hasattr(error, "error_dict"):
            for message in error.messages:
                self.add_error(None, in_language(message))
            return
        for key, messages in error.message_dict.items():
            target = key if key in self.fields else None
            for message in messages:
                if target and target in self.errors:
                    continue  # the form already said what is wrong there
                self.add_error(target, in_language(message))


class _Unchecked(forms.MultipleChoiceField):
    """Offers the allowed choices but passes any value on, so that the
    service names a value outside the approval instead of a generic
    "not one of the available choices"."""

    def valid_value(self, value: Any) -> bool:
        return True


class _AnyChoice(forms.ChoiceField):
    """One choice shown from the allowed ones; any value passed on (see
    _Unchecked)."""

    def valid_value(self, value: Any) -> bool:
        return True


class _Municipalities(forms.ModelMultipleChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return f"{obj.name}（{obj.code}）"


class ApplyForm(_ServiceErrors, forms.Form):
    organization = forms.ModelChoiceField(
        label=_("Research institution"),
        queryset=Organization.objects.none(),
        required=False,
        empty_label=None,
    )
    title = forms.CharField(label=_("Title"), max_length=200, required=False)
    ethics_approval_number = forms.CharField(
        label=_("Ethics approval number"), max_length=100, required=False
    )
    purpose = forms.CharField(
        label=_("Purpose of the research"),
        widget=forms.Textarea(attrs={"rows": 5}),
        max_length=10000,
        required=False,
    )
    categories = forms.MultipleChoiceField(
        label=_("Kinds of record requested"),
        choices=Category.choices,
        widget=forms.CheckboxSelectMultiple,
        required=False,
    )
    cohort_kind = forms.ChoiceField(
        label=_("Cohort"),
        choices=CohortKind.choices,
        initial=CohortKind.BOTH,
        widget=forms.RadioSelect,
    )
    municipalities = _Municipalities(
        label=_("Municipalities"),
        queryset=Organization.objects.filter(kind=Organization.Kind.MUNICIPALITY).order_by("code"),
        widget=forms.CheckboxSelectMultiple,
        required=False,
    )
    birth_year_from = forms.IntegerField(label=_("Birth year from"), required=False)
    birth_year_to = forms.IntegerField(label=_("Birth year to"), required=False)
    period_start = forms.DateField(
        label=_("Data from"), required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    period_end = forms.DateField(
        label=_("Data until"), required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    publish = forms.BooleanField(
        label=_("The results will be published as data"),
        required=False,
        help_text=_(
            "Then each release must reach k = 10 (k-anonymity); otherwise k = 5 under the "
            "data-use agreement."
        ),
    )

    def __init__(self, *args: Any, institutions: list[Organization], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.institutions = institutions
        self.fields["organization"].queryset = Organization.objects.filter(
            pk__in=[o.pk for o in institutions]
        ).order_by("name")
        if len(institutions) == 1:
            self.fields["organization"].initial = institutions[0].pk
            self.fields["organization"].widget = forms.HiddenInput()


class ReviewForm(_ServiceErrors, forms.Form):
    decision = forms.ChoiceField(
        label=_("Decision"),
        choices=ResearchApproval.Decision.choices,
        widget=forms.RadioSelect,
        required=False,
    )
    expires_on = forms.DateField(
        label=_("Approval expires on"),
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text=_("Set by the first approval; exports after this day are refused."),
    )
    note = forms.CharField(
        label=_("Note (the reason, for a rejection)"),
        widget=forms.Textarea(attrs={"rows": 3}),
        max_length=4000,
        required=False,
    )


class ExportForm(_ServiceErrors, forms.Form):
    """The filters of one export, offered within the project's approval.
    Values outside it are passed on and refused by name by the service."""

    birth_year_from = forms.IntegerField(label=_("Birth year from"), required=False)
    birth_year_to = forms.IntegerField(label=_("Birth year to"), required=False)
    municipalities = _Unchecked(
        label=_("Municipalities"), widget=forms.CheckboxSelectMultiple, required=False
    )
    cohort_kind = _AnyChoice(label=_("Cohort"), widget=forms.RadioSelect, required=False)
    categories = _Unchecked(
        label=_("Kinds of record"), widget=forms.CheckboxSelectMultiple, required=False
    )
    formats = _Unchecked(
        label=_("Formats"),
        widget=forms.CheckboxSelectMultiple,
        required=False,
        choices=[("csv", _("CSV (one file per table)")), ("ndjson", _("FHIR NDJSON (Bulk Data)"))],
    )

    def __init__(self, *args: Any, project: ResearchProject, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.project = project
        municipalities = list(project.municipalities.order_by("code"))
        self.fields["municipalities"].choices = [
            (str(m.pk), f"{m.name}（{m.code}）") for m in municipalities
        ]
        allowed = {
            CohortKind.BOTH: list(CohortKind),
            CohortKind.PREGNANCY: [CohortKind.PREGNANCY],
            CohortKind.CHILD: [CohortKind.CHILD],
        }[CohortKind(project.cohort_kind)]
        self.fields["cohort_kind"].choices = [(k.value, k.label) for k in allowed]
        self.fields["categories"].choices = [
            (c, Category(c).label) for c in project.categories if c in Category.values
        ]
        if not self.is_bound:
            self.initial = {
                "birth_year_from": project.birth_year_from,
                "birth_year_to": project.birth_year_to,
                "municipalities": [str(m.pk) for m in municipalities],
                "cohort_kind": project.cohort_kind,
                "categories": list(project.categories),
                "formats": list(FORMATS),
            }

    def filters(self) -> dict[str, Any]:
        """The cleaned filters for sharing.research.request_export. An
        empty year or cohort takes the approval's value; an empty list
        stays empty (and is refused: choose at least one)."""
        data = self.cleaned_data
        filters: dict[str, Any] = {
            "municipalities": list(data.get("municipalities") or []),
            "categories": list(data.get("categories") or []),
            "formats": list(data.get("formats") or []),
        }
        for key in ("birth_year_from", "birth_year_to", "cohort_kind"):
            if data.get(key) not in (None, ""):
                filters[key] = data[key]
        return filters
