"""Forms of the family pages (/family/): invite a second guardian, add a
child born elsewhere, leave. They parse input; the rules are phr.family's,
whose messages the forms show next to the field they concern."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

from phr.models import Guardianship
from sharing.models import GuardianInvitation


def add_service_errors(form: forms.Form, error: ValidationError) -> None:
    """phr.family's field → message errors, next to their fields."""
    if not hasattr(error, "error_dict"):
        form.add_error(None, error)
        return
    for key, messages in error.message_dict.items():
        target = key if key in form.fields else None
        for message in messages:
            if target and target in form.errors:
                continue
            form.add_error(target, message)


class InviteForm(forms.Form):
    children = forms.MultipleChoiceField(
        label=_("For which children"),
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": _("Choose at least one child.")},
    )
    email = forms.EmailField(
        label=_("Their email address"),
        help_text=_("They must sign in (or sign up) with this address to accept."),
    )
    relationship = forms.ChoiceField(
        label=_("Their relationship to the children"),
        choices=GuardianInvitation.Relationship.choices,
        initial=GuardianInvitation.Relationship.FATHER,
    )
    language = forms.ChoiceField(
        label=_("Language of the email"), choices=settings.LANGUAGES, initial="ja"
    )

    def __init__(self, *args: Any, children: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["children"].choices = children


class ChildForm(forms.Form):
    family = forms.CharField(label=_("Family name"), max_length=50)
    given = forms.CharField(label=_("Given name"), max_length=50)
    family_kana = forms.CharField(label=_("Family name (kana)"), max_length=50)
    given_kana = forms.CharField(label=_("Given name (kana)"), max_length=50)
    birth_date = forms.DateField(
        label=_("Birth date"), widget=forms.DateInput(attrs={"type": "date"})
    )
    sex = forms.ChoiceField(
        label=_("Sex"),
        choices=[("", _("not stated")), ("female", _("female")), ("male", _("male"))],
        required=False,
    )
    relationship = forms.ChoiceField(
        label=_("You are the child's"),
        choices=Guardianship.Relationship.choices,
        initial=Guardianship.Relationship.MOTHER,
    )


class LeaveForm(forms.Form):
    confirm = forms.BooleanField(
        label=_("I have downloaded what I want to keep, and I want to delete my account."),
        error_messages={"required": _("Tick the box to confirm that you want to leave.")},
    )
