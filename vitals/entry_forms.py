"""The quick-entry forms: big, simple, one per measurement.

A form parses what the person typed (numbers, a unit where several are
usual, the time in Japan) and hands Readings to vitals.records, whose
checks (the data dictionary's plausible ranges, units, a time not in the
future, a blood pressure the right way round) decide; a VitalError is put
on the field it concerns with the reason in the page's language.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any, ClassVar

from django import forms
from django.utils import timezone
from django.utils.translation import get_language
from django.utils.translation import gettext_lazy as _

from phr.selectors import JAPAN
from vitals import records as r

DATETIME_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y/%m/%d %H:%M"]
INPUT_FORMAT = "%Y-%m-%dT%H:%M"


def now_in_japan() -> str:
    """The value of a datetime-local input for now, in Japan."""
    return timezone.localtime(timezone.now(), JAPAN).strftime(INPUT_FORMAT)


class JapanDateTimeField(forms.DateTimeField):
    """A date and time as a person in Japan means it (Asia/Tokyo),
    whatever the server's or the request's time zone."""

    def to_python(self, value: Any) -> datetime | None:
        with timezone.override(JAPAN):
            return super().to_python(value)

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, datetime):
            return timezone.localtime(value, JAPAN).strftime(INPUT_FORMAT)
        return value


def _number(label: Any, *, step: str, required: bool = True, **attrs: Any) -> forms.DecimalField:
    return forms.DecimalField(
        label=label,
        required=required,
        max_digits=9,
        widget=forms.NumberInput(
            attrs={
                "inputmode": "numeric" if step == "1" else "decimal",
                "step": step,
                "class": "vt-number",
                **attrs,
            }
        ),
    )


class EntryForm(forms.Form):
    """One measurement (or two taken together: blood pressure and pulse)."""

    slug: ClassVar[str] = ""
    title: ClassVar[Any] = ""
    # The kinds this form writes (the first is the one an edit keeps).
    kinds: ClassVar[tuple[str, ...]] = ()
    # VitalError.field (a dictionary item key) → the form field it is about.
    field_of: ClassVar[dict[str, str]] = {}

    taken_at = JapanDateTimeField(
        label=_("Date and time (Japan time)"),
        input_formats=DATETIME_FORMATS,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format=INPUT_FORMAT),
    )

    def __init__(
        self,
        *args: Any,
        editing: r.Kind | None = None,
        birth_date: date | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("prefix", self.slug)
        super().__init__(*args, **kwargs)
        self.editing = editing
        self.birth_date = birth_date
        if not self.is_bound and "taken_at" not in self.initial:
            self.initial["taken_at"] = now_in_japan()
        self._readings: list[r.Reading] = []

    def build(self, data: dict[str, Any], taken_at: datetime) -> list[r.Reading]:
        raise NotImplementedError

    def clean_taken_at(self) -> datetime:
        value: datetime = self.cleaned_data["taken_at"]
        day = timezone.localtime(value, JAPAN).date()
        if self.birth_date is not None and day < self.birth_date:
            raise forms.ValidationError(
                _("%(day)s is before the birth date (%(birth)s).")
                % {"day": day.isoformat(), "birth": self.birth_date.isoformat()}
            )
        return value

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if self.errors or data.get("taken_at") is None:
            return data
        try:
            readings = self.build(data, data["taken_at"])
            self._readings = [r.reading_check(x) for x in readings]
        except r.VitalError as error:
            name = self.field_of.get(error.field, "taken_at" if error.field == "taken_at" else "")
            if name not in self.fields:
                name = "value" if "value" in self.fields else None
            self.add_error(name, error.message(get_language() or "ja"))
        return data

    def readings(self) -> list[r.Reading]:
        """The checked readings (after is_valid())."""
        return self._readings


class BloodPressureForm(EntryForm):
    slug = "blood-pressure"
    title = _("Blood pressure and pulse")
    kinds = (r.BLOOD_PRESSURE, r.HEART_RATE)
    field_of = {"bp_systolic": "systolic", "bp_diastolic": "diastolic", "heart_rate": "pulse"}

    systolic = _number(_("Systolic (upper)"), step="1", min="50", max="300")
    diastolic = _number(_("Diastolic (lower)"), step="1", min="20", max="200")
    pulse = _number(_("Pulse (per minute)"), step="1", required=False, min="20", max="250")

    field_order = ["systolic", "diastolic", "pulse", "taken_at"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.editing is not None:
            # A pulse is a record of its own: edited on its own.
            del self.fields["pulse"]

    def build(self, data: dict[str, Any], taken_at: datetime) -> list[r.Reading]:
        out = [r.Reading(r.BLOOD_PRESSURE, (data["systolic"], data["diastolic"]), taken_at)]
        if data.get("pulse") is not None:
            out.append(r.Reading(r.HEART_RATE, (data["pulse"],), taken_at))
        return out


class PulseForm(EntryForm):
    """Only for editing a pulse entered with a blood pressure."""

    slug = "pulse"
    title = _("Pulse")
    kinds = (r.HEART_RATE,)
    field_of = {"heart_rate": "value"}

    value = _number(_("Pulse (per minute)"), step="1", min="20", max="250")
    field_order = ["value", "taken_at"]

    def build(self, data: dict[str, Any], taken_at: datetime) -> list[r.Reading]:
        return [r.Reading(r.HEART_RATE, (data["value"],), taken_at)]


class _ValueUnitForm(EntryForm):
    """One value, with a unit chosen where several are in use."""

    units: ClassVar[list[tuple[str, Any]]] = []
    field_order = ["value", "unit", "taken_at"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if len(self.units) > 1:
            self.fields["unit"] = forms.ChoiceField(
                label=_("Unit"), choices=self.units, initial=self.units[0][0]
            )
            self.order_fields(self.field_order)

    def unit(self, data: dict[str, Any]) -> str | None:
        return data.get("unit") or None

    def build(self, data: dict[str, Any], taken_at: datetime) -> list[r.Reading]:
        kind = self.editing.key if self.editing is not None else self.kinds[0]
        return [r.Reading(kind, (data["value"],), taken_at, unit=self.unit(data))]


class WeightForm(_ValueUnitForm):
    slug = "weight"
    title = _("Body weight")
    kinds = (r.BODY_WEIGHT,)
    field_of = {"body_weight": "value"}
    units = [("kg", "kg"), ("g", "g"), ("[lb_av]", "lb")]
    value = _number(_("Body weight"), step="any", min="0")


class TemperatureForm(_ValueUnitForm):
    slug = "temperature"
    title = _("Body temperature")
    kinds = (r.BODY_TEMPERATURE,)
    field_of = {"body_temperature": "value"}
    units = [("Cel", "℃"), ("[degF]", "℉")]
    value = _number(_("Body temperature"), step="0.1", min="0")


class GlucoseForm(_ValueUnitForm):
    slug = "glucose"
    title = _("Blood glucose")
    kinds = (r.BLOOD_GLUCOSE,)
    field_of = {"blood_glucose": "value"}
    units = [("mg/dL", "mg/dL"), ("mmol/L", "mmol/L")]
    value = _number(_("Blood glucose"), step="any", min="0")


class FetalMovementForm(_ValueUnitForm):
    slug = "fetal-movement"
    title = _("Fetal movement count")
    kinds = (r.FETAL_MOVEMENT,)
    field_of = {"fetal_movement_count": "value"}
    value = _number(
        _("Minutes until 10 movements"), step="1", min="1", max="720", **{"data-vt-timer": "1"}
    )


class LengthForm(_ValueUnitForm):
    """Height or length: lying (身長・臥位, under 2 years as a rule) or
    standing — two codes (8306-3, 8302-2), so the choice is kept."""

    slug = "length"
    title = _("Height / length")
    kinds = (r.BODY_LENGTH, r.BODY_HEIGHT)
    field_of = {"body_length": "value", "body_height": "value"}
    value = _number(_("Height / length (cm)"), step="0.1", min="0")
    posture = forms.ChoiceField(
        label=_("Measured"),
        choices=[(r.BODY_LENGTH, _("lying down")), (r.BODY_HEIGHT, _("standing"))],
        widget=forms.RadioSelect,
        initial=r.BODY_LENGTH,
    )
    field_order = ["value", "posture", "taken_at"]

    def __init__(self, *args: Any, lying: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["posture"].initial = r.BODY_LENGTH if lying else r.BODY_HEIGHT
        if self.editing is not None:
            del self.fields["posture"]

    def build(self, data: dict[str, Any], taken_at: datetime) -> list[r.Reading]:
        kind = self.editing.key if self.editing is not None else data["posture"]
        return [r.Reading(kind, (data["value"],), taken_at)]


class HeadForm(_ValueUnitForm):
    slug = "head"
    title = _("Head circumference")
    kinds = (r.HEAD_CIRCUMFERENCE,)
    field_of = {"head_circumference": "value"}
    value = _number(_("Head circumference (cm)"), step="0.1", min="0")


MOTHER_FORMS: tuple[type[EntryForm], ...] = (
    BloodPressureForm,
    WeightForm,
    TemperatureForm,
    GlucoseForm,
    FetalMovementForm,
)
CHILD_FORMS: tuple[type[EntryForm], ...] = (LengthForm, WeightForm, HeadForm, TemperatureForm)
FORMS: dict[str, type[EntryForm]] = {
    form.slug: form for form in (*MOTHER_FORMS, *CHILD_FORMS, PulseForm)
}
# The form that edits a record of a kind.
EDIT_FORM: dict[str, type[EntryForm]] = {
    r.BLOOD_PRESSURE: BloodPressureForm,
    r.HEART_RATE: PulseForm,
    r.BODY_WEIGHT: WeightForm,
    r.BODY_TEMPERATURE: TemperatureForm,
    r.BLOOD_GLUCOSE: GlucoseForm,
    r.FETAL_MOVEMENT: FetalMovementForm,
    r.BODY_LENGTH: LengthForm,
    r.BODY_HEIGHT: LengthForm,
    r.HEAD_CIRCUMFERENCE: HeadForm,
}


def edit_initial(reading: r.Reading) -> dict[str, Any]:
    """The edit form's initial values for a stored reading (in the kind's
    unit)."""
    initial: dict[str, Any] = {"taken_at": reading.taken_at}
    if reading.kind == r.BLOOD_PRESSURE:
        initial["systolic"], initial["diastolic"] = (_plain(v) for v in reading.values)
    else:
        initial["value"] = _plain(reading.value)
        initial["unit"] = r.KINDS[reading.kind].unit
    return initial


def _plain(value: Decimal) -> Decimal:
    """58.40 → 58.4, 120.0 → 120 (never 1.2E+2)."""
    if value == value.to_integral_value():
        return Decimal(int(value))
    return value.normalize()
