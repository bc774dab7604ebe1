"""The handbook's forms: a school checkup the parent enters (学校健診), the
birth data, a vaccination given elsewhere, a note.

Values are checked as the school feed checks them
(municipal_data/formats/school_checkup.py: vision A–D or an acuity, teeth
0–32, test-strip results, school-age height and weight bounds, the grade
fitting the birth date) and every refusal names the field, the value and
the reason.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from django import forms
from django.core.validators import RegexValidator
from django.utils.translation import get_language, pgettext
from django.utils.translation import gettext_lazy as _

from municipal_data.formats import common
from municipal_data.formats import school_checkup as school
from municipal_data.formats import vaccination as vaccine_formats
from phr import terminology
from phr import vaccination_schedule as schedule
from phr.handbook_services import (
    NOTE_MAX,
    REPORT_ORIGINS,
    BirthData,
    ReportedDose,
    SchoolCheckup,
    today,
)
from phr.tabular import FieldError

DATE_FORMATS = ["%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d"]


def _date_field(label: Any, **kwargs: Any) -> forms.DateField:
    return forms.DateField(
        label=label,
        input_formats=DATE_FORMATS,
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
        **kwargs,
    )


def _decimal(label: Any, unit: str, low: str, high: str, places: int = 1) -> forms.DecimalField:
    return forms.DecimalField(
        label=label,
        required=False,
        max_digits=6,
        decimal_places=places,
        help_text=unit,
        widget=forms.NumberInput(
            attrs={"inputmode": "decimal", "step": str(Decimal(1).scaleb(-places)),
                   "min": low, "max": high, "class": "number-input"}
        ),
    )  # fmt: skip


def _out_of_range(label: Any, value: Any, unit: str, low: Any, high: Any) -> str:
    return str(
        _("%(label)s %(value)s %(unit)s is not possible here (%(low)s–%(high)s %(unit)s).")
        % {"label": label, "value": value, "unit": unit, "low": low, "high": high}
    )


# The grades a pupil can be in, in order (e1…e6, j1…j3, h1…h4).
GRADE_CHOICES = [
    (school.index_code(n), school.grade_display(school.index_code(n))) for n in range(1, 14)
]
FINDING_CHOICES = [("", _("not checked")), ("no-findings", _("No findings (異常なし)")),
                   ("findings", _("Findings (所見あり)"))]  # fmt: skip
DIPSTICK_CHOICES = [("", _("not checked"))] + [
    (code, ja) for code, (ja, _en) in common.DIPSTICK_CODES.items()
]


class SchoolCheckupForm(forms.Form):
    """学校健診: the day, the school year and any results."""

    date = _date_field(_("Date of the checkup"))
    grade = forms.ChoiceField(label=_("School year"), choices=GRADE_CHOICES)
    school_name = forms.CharField(label=_("School"), required=False, max_length=100)
    body_height = _decimal(_("Height"), "cm", *school.HEIGHT_BOUNDS)
    body_weight = _decimal(_("Weight"), "kg", *school.WEIGHT_BOUNDS)
    school_vision_right = forms.CharField(
        label=_("Vision, right eye (uncorrected)"), required=False, max_length=10,
        help_text=_("A, B, C or D, or an acuity such as 1.0"),
    )  # fmt: skip
    school_vision_left = forms.CharField(
        label=_("Vision, left eye (uncorrected)"), required=False, max_length=10,
        help_text=_("A, B, C or D, or an acuity such as 1.0"),
    )  # fmt: skip
    school_vision_right_corrected = forms.CharField(
        label=_("Vision, right eye (with glasses or lenses)"), required=False, max_length=10
    )
    school_vision_left_corrected = forms.CharField(
        label=_("Vision, left eye (with glasses or lenses)"), required=False, max_length=10
    )
    hearing_right = forms.ChoiceField(
        label=_("Hearing, right ear"), required=False, choices=FINDING_CHOICES
    )
    hearing_left = forms.ChoiceField(
        label=_("Hearing, left ear"), required=False, choices=FINDING_CHOICES
    )
    caries_untreated = forms.IntegerField(
        label=_("Decayed teeth, untreated"), required=False, min_value=0, max_value=32
    )
    caries_treated = forms.IntegerField(
        label=_("Decayed teeth, treated"), required=False, min_value=0, max_value=32
    )
    missing_permanent_teeth = forms.IntegerField(
        label=_("Permanent teeth lost"), required=False, min_value=0, max_value=32
    )
    urine_protein = forms.ChoiceField(
        label=_("Urine protein"), required=False, choices=DIPSTICK_CHOICES
    )
    urine_glucose = forms.ChoiceField(
        label=_("Urine glucose"), required=False, choices=DIPSTICK_CHOICES
    )
    urine_occult_blood = forms.ChoiceField(
        label=_("Urine occult blood"), required=False, choices=DIPSTICK_CHOICES
    )

    VISION_FIELDS = tuple(key for key, *_rest in school.VISION)
    HEARING_FIELDS = tuple(key for key, *_rest in school.HEARING)
    TEETH_FIELDS = tuple(key for key, *_rest in school.TEETH)
    URINE_FIELDS = tuple(key for key, *_rest in school.URINE)
    RESULT_FIELDS = (
        "body_height", "body_weight", *VISION_FIELDS, *HEARING_FIELDS, *TEETH_FIELDS,
        *URINE_FIELDS,
    )  # fmt: skip

    def __init__(self, *args: Any, birth_date: date | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.birth_date = birth_date
        self.visions: dict[str, tuple[str, str]] = {}

    def clean_date(self) -> date:
        day: date = self.cleaned_data["date"]
        if day > today():
            raise forms.ValidationError(
                _("The date %(day)s is in the future."), params={"day": day.isoformat()}
            )
        if self.birth_date is not None and day < self.birth_date:
            raise forms.ValidationError(
                _("The date %(day)s is before the child's birth (%(birth)s)."),
                params={"day": day.isoformat(), "birth": self.birth_date.isoformat()},
            )
        return day

    def _clean_vision(self, name: str) -> str:
        value = (self.cleaned_data.get(name) or "").strip()
        if value:
            try:
                self.visions[name] = school.vision(value)
            except FieldError:
                raise forms.ValidationError(
                    _("Vision “%(value)s” is not A, B, C, D or an acuity from 0.01 to 2.0."),
                    params={"value": value},
                ) from None
        return value

    def clean_school_vision_right(self) -> str:
        return self._clean_vision("school_vision_right")

    def clean_school_vision_left(self) -> str:
        return self._clean_vision("school_vision_left")

    def clean_school_vision_right_corrected(self) -> str:
        return self._clean_vision("school_vision_right_corrected")

    def clean_school_vision_left_corrected(self) -> str:
        return self._clean_vision("school_vision_left_corrected")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        for name, (low, high), unit in (
            ("body_height", school.HEIGHT_BOUNDS, "cm"),
            ("body_weight", school.WEIGHT_BOUNDS, "kg"),
        ):
            value = cleaned.get(name)
            if value is not None and not Decimal(low) <= value <= Decimal(high):
                self.add_error(name, _out_of_range(self.fields[name].label, value, unit, low, high))
        total = sum(cleaned.get(name) or 0 for name in self.TEETH_FIELDS)
        if total > 32:
            self.add_error(
                "caries_untreated",
                _("Untreated, treated and lost teeth add up to %(total)s, more than 32.")
                % {"total": total},
            )
        grade, day = cleaned.get("grade"), cleaned.get("date")
        if grade and day and self.birth_date is not None:
            expected = school.expected_grade_index(self.birth_date, day)
            if abs(school.grade_index(grade) - expected) > 1:
                shown = (
                    school.grade_display(school.index_code(expected))
                    if 1 <= expected <= 13
                    else _("not of school age")
                )
                self.add_error(
                    "grade",
                    _("%(grade)s does not fit the birth date %(birth)s: on %(day)s the child "
                      "is in %(expected)s.")
                    % {"grade": school.grade_display(grade), "birth": self.birth_date.isoformat(),
                       "day": day.isoformat(), "expected": shown},
                )  # fmt: skip
        if not any(cleaned.get(name) not in (None, "") for name in self.RESULT_FIELDS):
            raise forms.ValidationError(_("Enter at least one result of the checkup."))
        return cleaned

    def entry(self) -> SchoolCheckup:
        data = self.cleaned_data

        def filled(names: tuple[str, ...]) -> dict[str, Any]:
            return {n: data[n] for n in names if data.get(n) not in (None, "")}

        return SchoolCheckup(
            day=data["date"],
            grade_code=data["grade"],
            school_name=data.get("school_name") or "",
            body_height=data.get("body_height"),
            body_weight=data.get("body_weight"),
            vision={n: self.visions[n] for n in self.VISION_FIELDS if n in self.visions},
            hearing=filled(self.HEARING_FIELDS),
            teeth=filled(self.TEETH_FIELDS),
            urine=filled(self.URINE_FIELDS),
        )


# Birth: the newborn bounds of the dictionary, narrowed to a newborn's body
# (the infant checkup format's 1-month bounds are wider; these are at birth).
GESTATION_WEEKS = (22, 45)  # as municipal_data/formats/infant_checkup.gestation
BIRTH_LENGTH = ("20", "65")
BIRTH_HEAD = ("15", "45")


class BirthDataForm(forms.Form):
    """出生時の記録 missing from the records: only what is missing is asked."""

    gestation_weeks = forms.IntegerField(
        label=_("Gestational age at birth, weeks"), required=False, min_value=GESTATION_WEEKS[0],
        max_value=GESTATION_WEEKS[1], help_text=_("weeks"),
    )  # fmt: skip
    gestation_days = forms.IntegerField(
        label=_("and days"), required=False, min_value=0, max_value=6, help_text=_("days")
    )
    birth_weight = forms.IntegerField(
        label=terminology.item("birth_weight").ja, required=False,
        min_value=int(terminology.item("birth_weight").min or 0),
        max_value=int(terminology.item("birth_weight").max or 0), help_text="g",
    )  # fmt: skip
    body_length = _decimal(_("Length at birth"), "cm", *BIRTH_LENGTH)
    head_circumference = _decimal(_("Head circumference at birth"), "cm", *BIRTH_HEAD)

    FIELD_OF = {
        "gestational_age": ("gestation_weeks", "gestation_days"),
        "birth_weight": ("birth_weight",),
        "body_length": ("body_length",),
        "head_circumference": ("head_circumference",),
    }

    def __init__(self, *args: Any, recorded: set[str] = frozenset(), **kwargs: Any) -> None:  # type: ignore[assignment]
        super().__init__(*args, **kwargs)
        for key in recorded:
            for name in self.FIELD_OF.get(key, ()):
                self.fields.pop(name, None)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        for name, (low, high) in (
            ("body_length", BIRTH_LENGTH),
            ("head_circumference", BIRTH_HEAD),
        ):
            value = cleaned.get(name)
            if (
                name in self.fields
                and value is not None
                and not (Decimal(low) <= value <= Decimal(high))
            ):
                self.add_error(name, _out_of_range(self.fields[name].label, value, "cm", low, high))
        if cleaned.get("gestation_days") is not None and cleaned.get("gestation_weeks") is None:
            self.add_error("gestation_weeks", _("Enter the weeks with the days."))
        if not any(cleaned.get(n) is not None for n in self.fields):
            raise forms.ValidationError(_("Enter at least one value."))
        return cleaned

    def data_entered(self) -> BirthData:
        data = self.cleaned_data
        return BirthData(
            gestation_weeks=data.get("gestation_weeks"),
            gestation_days=data.get("gestation_days"),
            birth_weight_g=data.get("birth_weight"),
            length_cm=data.get("body_length"),
            head_cm=data.get("head_circumference"),
        )


class NoteForm(forms.Form):
    """保護者の記録: a dated note in the family's own words."""

    date = _date_field(_("Date"))
    text = forms.CharField(
        label=_("Note"), max_length=NOTE_MAX, widget=forms.Textarea(attrs={"rows": 5})
    )

    def clean_date(self) -> date:
        day: date = self.cleaned_data["date"]
        if day > today():
            raise forms.ValidationError(
                _("The date %(day)s is in the future."), params={"day": day.isoformat()}
            )
        return day

    def clean_text(self) -> str:
        text = self.cleaned_data["text"].strip()
        if not text:
            raise forms.ValidationError(_("Write something in the note."))
        return text


# --------------------------------------------------------------------------
# A vaccination given elsewhere (予防接種の記録, reported by a parent)
# --------------------------------------------------------------------------


def vaccine_name(v: vaccine_formats.Vaccine) -> str:
    """The vaccine as families call it, in the active language."""
    return v.name if (get_language() or "ja").startswith("ja") else v.en


def dose_name(v: vaccine_formats.Vaccine, number: int) -> str:
    """A dose as the paper handbook names it: "1期初回 2回目", "第2期", "2回目"
    (number: the dose in the vaccine's whole schedule)."""
    for series, start in v.starts():
        if start <= number < start + series.count:
            within = number - start + 1
            phase = str(schedule.PHASE_LABELS[series.label]) if series.label else ""
            if phase and series.count == 1:
                return phase
            if phase:
                return pgettext("reported dose", "%(phase)s, dose %(number)d") % {
                    "phase": phase,
                    "number": within,
                }
            return pgettext("reported dose", "Dose %(number)d") % {"number": within}
    raise ValueError(number)


def dose_choices() -> list[tuple[str, Any]]:
    """Every dose of every routine vaccine, grouped by vaccine: the value
    "<vaccine code>:<dose number in the whole schedule>"."""
    choices: list[tuple[str, Any]] = [("", _("Choose the vaccine and the dose"))]
    for v in vaccine_formats.VACCINES.values():
        choices.append(
            (vaccine_name(v), [(f"{v.code}:{n}", dose_name(v, n)) for n in range(1, v.doses + 1)])
        )
    return choices


def _paths(code: str) -> list[schedule.Path]:
    """The schedule engine's paths a dose of `code` can be on
    (phr.vaccination_schedule: by start age, by product)."""
    series = schedule.SERIES_OF[code]
    if series == "rotavirus":
        return [schedule.ROTAVIRUS.get(code, schedule.ROTAVIRUS["rv5"])]
    if series == "hpv":
        if code in ("hpv2", "hpv4"):
            return [schedule.HPV_PATHS[code]]
        return [schedule.HPV_PATHS["hpv9-2"], schedule.HPV_PATHS["hpv9-3"]]
    many = {"hib": schedule.HIB_PATHS, "pcv": schedule.PCV_PATHS}
    if series in many:
        return list(many[series].values())
    one = {
        "dtap-ipv-hib": schedule.DTAP_IPV_HIB, "dtap-ipv": schedule.DTAP_IPV,
        "hepb": schedule.HEPB, "bcg": schedule.BCG, "mr": schedule.MR,
        "varicella": schedule.VARICELLA, "je": schedule.JE, "dt": schedule.DT,
    }  # fmt: skip
    return [one[series]]


def routine_ages(code: str, number: int, birth: date) -> tuple[date, date] | None:
    """The first and last day this child may get dose `number` of `code`
    as a routine vaccination (予防接種法施行令's ages, as the schedule engine
    counts them: phr.vaccination_schedule's DoseRule.eligible), or None
    when no path of the schedule has such a dose."""
    for path in _paths(code):
        for rule in path.doses:
            if rule.number == number:
                return rule.eligible[0].on(birth), rule.eligible[1].on(birth)
    return None


LOT = RegexValidator(
    r"^[0-9A-Za-z][0-9A-Za-z./-]*$",
    _("A lot number is letters and digits (and . / -), as printed on the sticker."),
)


class VaccinationForm(forms.Form):
    """A dose given elsewhere — before moving here, read off the paper
    handbook: the vaccine and dose as the schedule knows them, the day,
    optionally the lot and the clinic.

    Refused: a day in the future or before birth. A day outside the dose's
    routine ages (the schedule engine's rules) is asked to be confirmed,
    since voluntary and catch-up doses happen; the schedule then shows the
    dose with the engine's note ("early" / "outside_ages")."""

    dose = forms.ChoiceField(label=_("Vaccine and dose"))
    date = _date_field(_("Date of the vaccination"))
    report_origin = forms.ChoiceField(
        label=_("Where does the date come from?"),
        choices=[
            ("record", _("A written record (the paper handbook, a vaccination certificate)")),
            ("recall", _("We remember it")),
        ],
        initial="record",
        widget=forms.RadioSelect,
    )
    lot_number = forms.CharField(
        label=_("Lot number"), required=False, max_length=30, validators=[LOT]
    )
    clinic_name = forms.CharField(label=_("Clinic"), required=False, max_length=100)
    confirm_ages = forms.BooleanField(
        label=_("The date is right: record it anyway"), required=False
    )

    def __init__(self, *args: Any, birth_date: date | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.birth_date = birth_date
        self.fields["dose"].choices = dose_choices()
        self.needs_confirmation = False

    def clean_dose(self) -> tuple[str, int]:
        code, _sep, number = self.cleaned_data["dose"].partition(":")
        # ChoiceField has checked the value is one of dose_choices().
        return code, int(number)

    def clean_date(self) -> date:
        day: date = self.cleaned_data["date"]
        if day > today():
            raise forms.ValidationError(
                _("The date %(day)s is in the future."), params={"day": day.isoformat()}
            )
        if self.birth_date is not None and day < self.birth_date:
            raise forms.ValidationError(
                _("The date %(day)s is before the child's birth (%(birth)s)."),
                params={"day": day.isoformat(), "birth": self.birth_date.isoformat()},
            )
        return day

    def clean_report_origin(self) -> str:
        origin: str = self.cleaned_data["report_origin"]
        assert origin in REPORT_ORIGINS
        return origin

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        dose, day = cleaned.get("dose"), cleaned.get("date")
        if dose is None or day is None or self.birth_date is None:
            return cleaned
        warning = self.age_warning(*dose, day)
        if warning and not cleaned.get("confirm_ages"):
            self.needs_confirmation = True
            self.add_error("date", warning)
        return cleaned

    def age_warning(self, code: str, number: int, day: date) -> str:
        """Why this day does not fit the dose's routine ages, or ""."""
        assert self.birth_date is not None
        v = vaccine_formats.VACCINES[code]
        name = f"{vaccine_name(v)} {dose_name(v, number)}"
        series = schedule.SERIES_OF[code]
        born_from = schedule.BORN_FROM.get(series)
        if born_from is not None and self.birth_date < born_from:
            return str(
                _("%(dose)s is a routine vaccination only for children born on or after "
                  "%(from)s. If the dose was given (e.g. as a voluntary vaccination), confirm "
                  "below.")
                % {"dose": name, "from": born_from.isoformat()}
            )  # fmt: skip
        ages = routine_ages(code, number, self.birth_date)
        if ages is None or ages[0] <= day <= ages[1]:
            return ""
        first, last = ages
        return str(
            _("%(dose)s is a routine vaccination from %(first)s to %(last)s for this child "
              "(the ages the schedule's rules allow); %(day)s is %(when)s. Check the date and "
              "the dose. If they are right (e.g. a voluntary or catch-up vaccination), confirm "
              "below: the schedule will show the dose with a note saying so.")
            % {"dose": name, "first": first.isoformat(), "last": last.isoformat(),
               "day": day.isoformat(),
               "when": _("before them") if day < first else _("after them")}
        )  # fmt: skip

    def reported(self) -> ReportedDose:
        data = self.cleaned_data
        code, number = data["dose"]
        return ReportedDose(
            vaccine=code,
            dose_number=number,
            day=data["date"],
            lot=(data.get("lot_number") or "").strip(),
            clinic=(data.get("clinic_name") or "").strip(),
            report_origin=data["report_origin"],
        )
