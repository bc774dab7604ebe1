"""Forms of the research-consent page (/sharing/research/). The person
travels in the POST body and is looked up among the people the user
decides for (404 otherwise); these forms only parse."""

from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from phr.terminology import Category
from sharing.models import ResearchChoice


class ChoiceForm(forms.Form):
    """Take part, or not, for one or several kinds of record."""

    patient = forms.UUIDField(widget=forms.HiddenInput)
    categories = forms.MultipleChoiceField(
        label=_("Kinds of record"),
        choices=Category.choices,
        widget=forms.CheckboxSelectMultiple,
        error_messages={
            "required": _("Choose at least one kind of record."),
            "invalid_choice": _("“%(value)s” is not a kind of record you can choose."),
        },
    )
    choice = forms.ChoiceField(
        choices=ResearchChoice.Choice.choices,
        widget=forms.HiddenInput,
        error_messages={
            "required": _("Choose to take part or not to take part."),
            "invalid_choice": _("“%(value)s” is not a choice (take part / do not take part)."),
        },
    )


class WithdrawForm(forms.Form):
    """Withdraw from all research: refuse every kind of record."""

    patient = forms.UUIDField(widget=forms.HiddenInput)
