"""The clinic's entry forms: a prenatal visit, a delivery, registering a
pregnant patient, and the patient's side of an invitation.

Each field's impossible-outside range comes from clinics.prenatal.bounds
(the data dictionary, narrowed where prenatal.py says why); what a value
means together with the others (a visit's gestational age, systolic above
diastolic) from prenatal.visit_refusals / delivery_refusals. Unusual values
are not errors: the views show them on the confirmation page.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django import forms
from django.forms import BaseFormSet, formset_factory
from django.utils import timezone
from django.utils.functional import lazy
from django.utils.translation import gettext_lazy as _

from clinics import prenatal
from phr.models import Organization

DATE_FORMATS = ["%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d"]
# A dictionary item's name in the language of the request that shows it.
item_label = lazy(prenatal.item_label, str)
EARLIEST = date(2000, 1, 1)


def _date_field(label: Any, *, required: bool = True, help_text: Any = "") -> forms.DateField:
    return forms.DateField(
        label=label,
        required=required,
        help_text=help_text,
        input_formats=DATE_FORMATS,
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
    )


def _number(
    key: str, *, places: int = 1, label: Any = None, newborn: bool = False, required: bool = False
) -> forms.Field:
    """A number field for a dictionary item: its name and unit from the
    dictionary, whole numbers when `places` is 0. The range is checked in
    the form's clean (with the message prenatal.out_of_bounds writes)."""
    item_unit = prenatal.unit_display(prenatal.terminology.item(key).unit)
    low, high = prenatal.bounds(key, newborn=newborn)
    attrs = {"inputmode": "decimal" if places else "numeric", "class": "number-input"}
    if low is not None:
        attrs["min"] = str(low)
    if high is not None:
        attrs["max"] = str(high)
    if places:
        attrs["step"] = str(Decimal(1).scaleb(-places))
    field: forms.Field
    if places:
        field = forms.DecimalField(
            required=required,
            max_digits=7,
            decimal_places=places,
            widget=forms.NumberInput(attrs=attrs),
        )
    else:
        field = forms.IntegerField(required=required, widget=forms.NumberInput(attrs=attrs))
    field.label = label or item_label(key)
    field.help_text = item_unit
    field.dictionary_key = key  # type: ignore[attr-defined]
    field.newborn = newborn  # type: ignore[attr-defined]
    return field


def _choice(table: prenatal.Choices, *, label: Any, blank: Any = None) -> forms.ChoiceField:
    empty = blank if blank is not None else _("not checked")
    return forms.ChoiceField(
        label=label, required=False, choices=[("", empty), *prenatal.choices(table)]
    )


class RangeCheckedForm(forms.Form):
    """Refuses a number outside its item's range, naming the value, the
    unit and the possible range."""

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        for name, field in self.fields.items():
            key = getattr(field, "dictionary_key", None)
            value = cleaned.get(name)
            if key is None or value is None:
                continue
            message = prenatal.out_of_bounds(key, value, newborn=getattr(field, "newborn", False))
            if message:
                self.add_error(name, message)
        return cleaned


# --------------------------------------------------------------------------
# A prenatal visit
# --------------------------------------------------------------------------


def lab_field_name(key: str) -> str:
    return f"lab_{key}"


class VisitForm(RangeCheckedForm):
    visit_date = _date_field(_("Date of the visit"))
    due_date = _date_field(
        _("Due date"),
        required=False,
        help_text=_("The gestational age is counted from it (40 weeks 0 days on the due date)."),
    )
    systolic = _number("bp_systolic", places=0, label=_("Blood pressure, systolic"))
    diastolic = _number("bp_diastolic", places=0, label=_("Blood pressure, diastolic"))
    weight = _number("body_weight", places=1)
    urine_protein = _choice(prenatal.DIPSTICK, label=_("Urine protein"))
    urine_glucose = _choice(prenatal.DIPSTICK, label=_("Urine glucose"))
    fundal_height = _number("fundal_height", places=1)
    abdominal_circumference = _number("abdominal_circumference", places=1)
    edema = _choice(prenatal.DIPSTICK, label=_("Edema"))
    fetal_heartbeat = _choice(prenatal.FETAL_HEARTBEAT, label=_("Fetal heartbeat"))
    fetal_heart_rate = _number("fetal_heart_rate", places=0)
    estimated_fetal_weight = _number("estimated_fetal_weight", places=0)
    # 妊娠前体重 and 身長: asked at the first visit; the page shows what is
    # recorded, and a later visit enters them only to correct them.
    pre_pregnancy_weight = _number("pre_pregnancy_weight", places=1)
    height = _number("body_height", places=1, label=_("Height"))
    notes = forms.CharField(
        label=_("Notes and health guidance"),
        required=False,
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text=_("The family sees these notes in the handbook."),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for test in prenatal.LAB_TESTS:
            label = prenatal.item_label(test.key)
            if test.kind == "code":
                field: forms.Field = _choice(test.answers, label=label)
            elif test.kind == "titre":
                field = forms.ChoiceField(
                    label=label,
                    required=False,
                    choices=[("", _("not checked"))]
                    + [(key, key.replace(">=", "≥")) for key in prenatal.RUBELLA_TITRES],
                    help_text=_("HI titre (1:8 is 8)"),
                )
            else:
                field = _number(test.key, places=test.places, label=label)
            field.lab_test = test  # type: ignore[attr-defined]
            self.fields[lab_field_name(test.key)] = field

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        day = cleaned.get("visit_date")
        if day is not None:
            if day > timezone.localdate():
                self.add_error("visit_date", _("The visit date is in the future."))
            elif day < EARLIEST:
                self.add_error("visit_date", _("The visit date is too far in the past."))
        if self.errors or day is None:
            return cleaned
        visit = self.visit_from(cleaned)
        for name, message in prenatal.visit_refusals(visit).items():
            self.add_error(name, message)
        if not self.errors:
            self.visit = visit
        return cleaned

    @staticmethod
    def visit_from(cleaned: dict[str, Any]) -> prenatal.Visit:
        labs: dict[str, prenatal.LabValue] = {}
        for test in prenatal.LAB_TESTS:
            value = cleaned.get(lab_field_name(test.key))
            if value not in (None, ""):
                labs[test.key] = value
        return prenatal.Visit(
            visit_date=cleaned["visit_date"],
            due_date=cleaned.get("due_date"),
            systolic=cleaned.get("systolic"),
            diastolic=cleaned.get("diastolic"),
            weight=cleaned.get("weight"),
            urine_protein=cleaned.get("urine_protein") or "",
            urine_glucose=cleaned.get("urine_glucose") or "",
            fundal_height=cleaned.get("fundal_height"),
            abdominal_circumference=cleaned.get("abdominal_circumference"),
            edema=cleaned.get("edema") or "",
            fetal_heartbeat=cleaned.get("fetal_heartbeat") or "",
            fetal_heart_rate=cleaned.get("fetal_heart_rate"),
            estimated_fetal_weight=cleaned.get("estimated_fetal_weight"),
            pre_pregnancy_weight=cleaned.get("pre_pregnancy_weight"),
            height=cleaned.get("height"),
            notes=cleaned.get("notes") or "",
            labs=labs,
        )

    def lab_fields(self, weeks: int | None) -> tuple[list[Any], list[Any]]:
        """The lab fields as (due in this week's window, the others),
        in the order of the schedule."""
        due, other = [], []
        for test in prenatal.LAB_TESTS:
            bound = self[lab_field_name(test.key)]
            (due if test.due_at(weeks) else other).append(bound)
        return due, other

    def entered(self) -> list[tuple[str, str]]:
        """(label, value as entered) of every filled field, for the
        confirmation page."""
        shown = []
        for name, field in self.fields.items():
            value = self.cleaned_data.get(name)
            if value in (None, ""):
                continue
            if isinstance(field, forms.ChoiceField):
                value = dict(field.choices).get(value, value)  # type: ignore[arg-type]
            elif isinstance(value, date):
                value = value.isoformat()
            unit = str(field.help_text) if getattr(field, "dictionary_key", None) else ""
            shown.append((str(field.label), f"{value} {unit}".strip()))
        return shown


# --------------------------------------------------------------------------
# A delivery
# --------------------------------------------------------------------------

SEX_CHOICES = [(code, label) for code, label in prenatal.SEXES.items()]
TRANSFUSION_CHOICES = [("", _("not recorded")), ("no", _("no")), ("yes", _("yes"))]
MAX_BABIES = 5


class DeliveryForm(RangeCheckedForm):
    born_at = forms.DateTimeField(
        label=_("Date and time of birth"),
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y/%m/%d %H:%M"],
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text=_("For twins: the first baby's."),
    )
    gestation_weeks = forms.IntegerField(
        label=_("Gestational age at birth: weeks"),
        min_value=0,
        max_value=50,
        widget=forms.NumberInput(attrs={"inputmode": "numeric", "class": "number-input"}),
    )
    gestation_days = forms.IntegerField(
        label=_("and days"),
        min_value=0,
        max_value=6,
        initial=0,
        widget=forms.NumberInput(attrs={"inputmode": "numeric", "class": "number-input"}),
    )
    mode = forms.ChoiceField(
        label=_("Mode of delivery"), choices=prenatal.choices(prenatal.DELIVERY_MODE)
    )
    labor_hours = forms.IntegerField(
        label=_("Duration of labour: hours"),
        required=False,
        min_value=0,
        max_value=100,
        widget=forms.NumberInput(attrs={"inputmode": "numeric", "class": "number-input"}),
    )
    labor_minutes = forms.IntegerField(
        label=_("and minutes"),
        required=False,
        min_value=0,
        max_value=59,
        widget=forms.NumberInput(attrs={"inputmode": "numeric", "class": "number-input"}),
    )
    blood_loss_ml = _number("delivery_blood_loss", places=0)
    transfusion = forms.ChoiceField(
        label=_("Blood transfusion"), required=False, choices=TRANSFUSION_CHOICES
    )
    # Chosen before the form is shown (?babies=2): the page has one part per baby.
    babies = forms.IntegerField(
        label=_("Number of babies"),
        min_value=1,
        max_value=MAX_BABIES,
        initial=1,
        widget=forms.HiddenInput,
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        born = cleaned.get("born_at")
        if isinstance(born, datetime) and born > timezone.now():
            self.add_error("born_at", _("The time of birth is in the future."))
        hours, minutes = cleaned.get("labor_hours"), cleaned.get("labor_minutes")
        if hours is not None or minutes is not None:
            total = (hours or 0) * 60 + (minutes or 0)
            message = prenatal.out_of_bounds("labor_duration", total)
            if message:
                self.add_error("labor_hours", message)
        return cleaned

    @property
    def labor_total(self) -> int | None:
        hours = self.cleaned_data.get("labor_hours")
        minutes = self.cleaned_data.get("labor_minutes")
        if hours is None and minutes is None:
            return None
        return (hours or 0) * 60 + (minutes or 0)


class BabyForm(RangeCheckedForm):
    sex = forms.ChoiceField(label=_("Sex"), choices=SEX_CHOICES, widget=forms.RadioSelect)
    weight_g = _number("birth_weight", places=0, required=True, newborn=True)
    length_cm = _number("body_length", places=1, newborn=True, label=_("Length at birth"))
    head_cm = _number("head_circumference", places=1, newborn=True)
    chest_cm = _number("chest_circumference", places=1, newborn=True)
    apgar_1 = _number("apgar_1min", places=0)
    apgar_5 = _number("apgar_5min", places=0)
    given_name = forms.CharField(
        label=_("Given name, if chosen"),
        required=False,
        max_length=50,
        help_text=_("Left empty, the record is named （未定） until the family names the child."),
    )

    def baby(self) -> prenatal.Baby:
        data = self.cleaned_data
        return prenatal.Baby(
            sex=data["sex"],
            weight_g=data["weight_g"],
            length_cm=data.get("length_cm"),
            head_cm=data.get("head_cm"),
            chest_cm=data.get("chest_cm"),
            apgar_1=data.get("apgar_1"),
            apgar_5=data.get("apgar_5"),
            given_name=data.get("given_name") or "",
        )


class BaseBabyFormSet(BaseFormSet):  # type: ignore[type-arg]
    pass


def baby_formset_class(count: int) -> type[BaseBabyFormSet]:
    """A formset of exactly `count` babies, each required."""
    count = min(max(count, 1), MAX_BABIES)
    return formset_factory(  # type: ignore[no-any-return]
        BabyForm,
        formset=BaseBabyFormSet,
        extra=0,
        min_num=count,
        max_num=count,
        validate_min=True,
        validate_max=True,
    )


def delivery_from(form: DeliveryForm, babies: BaseBabyFormSet) -> prenatal.Delivery:
    data = form.cleaned_data
    transfusion = {"yes": True, "no": False}.get(data.get("transfusion") or "")
    return prenatal.Delivery(
        born_at=data["born_at"],
        gestation_days=data["gestation_weeks"] * 7 + data["gestation_days"],
        mode=data["mode"],
        labor_minutes=form.labor_total,
        blood_loss_ml=data.get("blood_loss_ml"),
        transfusion=transfusion,
        babies=tuple(f.baby() for f in babies.forms),
    )


# --------------------------------------------------------------------------
# Registering a pregnant patient, and her invitation
# --------------------------------------------------------------------------


class RegisterForm(forms.Form):
    clinic = forms.ModelChoiceField(
        label=_("Clinic"), queryset=Organization.objects.none(), empty_label=None
    )
    family = forms.CharField(label=_("Family name"), max_length=50)
    given = forms.CharField(label=_("Given name"), max_length=50)
    family_kana = forms.CharField(label=_("Family name (katakana)"), max_length=50, required=False)
    given_kana = forms.CharField(label=_("Given name (katakana)"), max_length=50, required=False)
    birth_date = _date_field(_("Birth date"))
    clinic_patient_number = forms.CharField(
        label=_("Clinic patient number"),
        max_length=20,
        required=False,
        help_text=_("The clinic's own number for her (the record is found by it later)."),
    )
    due_date = _date_field(_("Due date"), required=False)
    email = forms.EmailField(
        label=_("Email address for the invitation"),
        required=False,
        help_text=_(
            "Optional: the invitation code is sent there. It is also shown on the next page."
        ),
    )

    def __init__(self, *args: Any, clinics: list[Organization], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["clinic"]
        field.queryset = Organization.objects.filter(pk__in=[c.pk for c in clinics]).order_by(  # type: ignore[attr-defined]
            "name", "pk"
        )
        if len(clinics) == 1:
            field.initial = clinics[0].pk
            field.widget = forms.HiddenInput()

    def clean_birth_date(self) -> date:
        value: date = self.cleaned_data["birth_date"]
        today = timezone.localdate()
        # Old enough to be pregnant, young enough to be alive: 10–70 years.
        if not date(today.year - 70, 1, 1) <= value <= date(today.year - 10, 12, 31):
            raise forms.ValidationError(_("This birth date does not fit a pregnant patient."))
        return value


class JoinForm(forms.Form):
    code = forms.CharField(
        label=_("Invitation code"),
        max_length=40,
        help_text=_("16 letters and digits, as the clinic gave them (XXXX-XXXX-XXXX-XXXX)."),
        widget=forms.TextInput(
            attrs={"autocomplete": "off", "autocapitalize": "characters", "spellcheck": "false"}
        ),
    )
    birth_date = _date_field(_("Your birth date"))
    share = forms.BooleanField(
        label=_(
            "Share my pregnancy and prenatal checkup records with the clinic, so that it can "
            "go on recording my checkups"
        ),
        required=False,
        initial=True,
        help_text=_("You can stop sharing at any time on the Sharing page."),
    )
