"""Prenatal checkups (妊婦健康診査) and births (出産の状態, 出生児) as FHIR.

Pure functions: a visit or a delivery as the clinic's form states it in,
FHIR resources with their source identifiers out; nothing here reads or
writes the database. clinics/services.py authorises, finds the episode and
the people, and writes what these functions build through phr.store.

The shapes are the ones phr/demo.py writes for the demo family (the
family timeline and the emergency summary read exactly these): an
Encounter per visit typed "妊婦健康診査" and linked to the pregnancy
EpisodeOfCare, Observations with the data-category tag, the dictionary's
coding first (docs/dataset.md: LOINC where the reference lists one, our
local code otherwise, never an invented LOINC), the JP Core body
measurement code beside it where JP Core has one, and UCUM quantities.

What is measured at each visit and which tests fall in which weeks come
from 妊婦に対する健康診査についての望ましい基準 (平成27年厚生労働省告示第226号)
and the MHLW 母性健康管理 page, as transcribed in
../shared/reference/data/prenatal_schedule_jp.csv (standards.md §3);
thresholds from standards.md §6 unless a comment says otherwise.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

from municipal_data.formats import common
from phr import terminology
from phr.identifiers import MEDICAL_INSTITUTION_SYSTEM
from phr.terminology import Category

# --------------------------------------------------------------------------
# Identifiers and code systems
# --------------------------------------------------------------------------

# A clinic's prenatal records: the system phr/demo.py uses for the demo
# clinic (PRENATAL_SYSTEM), by 医療機関コード.
PRENATAL_SYSTEM = "urn:hagukumi:clinic:{code}:prenatal-checkup"
DELIVERY_SYSTEM = "urn:hagukumi:clinic:{code}:delivery"

PRENATAL_ENCOUNTER_TEXT = "妊婦健康診査"  # as phr/demo.py types the demo's visits
DELIVERY_ENCOUNTER_TEXT = "分娩"
ENCOUNTER_TYPE_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/encounter-type"
PREGNANCY_TEXT = "妊娠"
PREGNANCY_DAYS = 280  # the due date is 40w0d (Naegele)

# Local code systems for answers (documented in docs/decisions/0008-clinics.md).
# The reference names no national code lists for these answers.
EDEMA_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/edema-grade"
FETAL_HEARTBEAT_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/fetal-heartbeat"
ABO_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/abo-group"
RH_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/rh-type"
QUALITATIVE_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/qualitative-result"
BETHESDA_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/bethesda"
DELIVERY_MODE_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/delivery-mode"

# JP Core body-measurement codes (jp_core_reference.csv) beyond those
# municipal_data.formats.common adds already (weight, length, head, chest,
# birth weight): 31000301 腹囲.
JP_EXTRA_BODY_CODES = {"abdominal_circumference": ("31000301", "腹囲")}

# The emergency summary and the emergency scope of the policy point find a
# blood type by these LOINC codes (sharing/emergency.py BLOOD_TYPE_CODES);
# they are not in the reference's loinc_codes.csv (docs/dataset.md says so),
# so they ride beside our local code instead of replacing it.
BLOOD_TYPE_LOINC = {
    "blood_type_abo": {"system": terminology.LOINC, "code": "883-9", "display": "ABO group"},
    "blood_type_rh": {"system": terminology.LOINC, "code": "10331-7", "display": "Rh type"},
}

Choices = dict[str, tuple[str, Promise | str]]  # code → (Japanese display stored in FHIR, label)

# −, ±, 1+, 2+, 3+ (standards.md §2–3; the urine codes are the municipal
# formats' urine-dipstick codes, so a clinic's and a town's results read alike).
DIPSTICK: Choices = {
    "negative": ("−", _("− (negative)")),
    "trace": ("±", _("± (trace)")),
    "1+": ("1+", "1+"),
    "2+": ("2+", "2+"),
    "3+": ("3+", "3+"),
}
FETAL_HEARTBEAT: Choices = {
    "present": ("あり", _("seen")),
    "absent": ("なし", _("not seen")),
}
ABO: Choices = {
    "A": ("A型", pgettext_lazy("blood group", "A")),
    "B": ("B型", pgettext_lazy("blood group", "B")),
    "O": ("O型", pgettext_lazy("blood group", "O")),
    "AB": ("AB型", pgettext_lazy("blood group", "AB")),
}
RH: Choices = {
    "positive": ("Rh(+)", _("Rh positive")),
    "negative": ("Rh(−)", _("Rh negative")),
}
QUALITATIVE: Choices = {
    "negative": ("陰性", pgettext_lazy("test result", "negative")),
    "positive": ("陽性", pgettext_lazy("test result", "positive")),
}
QUALITATIVE_WITH_INDETERMINATE: Choices = {
    **QUALITATIVE,
    "indeterminate": ("判定保留", pgettext_lazy("test result", "indeterminate")),
}
BETHESDA: Choices = {
    code: (code, code) for code in ("NILM", "ASC-US", "ASC-H", "LSIL", "HSIL", "SCC", "AGC", "AIS")
} | {"adenocarcinoma": ("Adenocarcinoma", _("adenocarcinoma"))}
DELIVERY_MODE: Choices = {
    "spontaneous": ("経腟分娩（自然）", _("vaginal, spontaneous")),
    "vacuum": ("経腟分娩（吸引）", _("vaginal, vacuum")),
    "forceps": ("経腟分娩（鉗子）", _("vaginal, forceps")),
    "cesarean-planned": ("帝王切開（予定）", _("caesarean, planned")),
    "cesarean-emergency": ("帝王切開（緊急）", _("caesarean, emergency")),
}
SEXES = {"male": _("boy"), "female": _("girl"), "unknown": _("undetermined")}

# Rubella HI titres as laboratories report them (reciprocals; "<8" is
# below the first dilution, "≥512" above the last one reported).
RUBELLA_TITRES: dict[str, tuple[str, int]] = {
    "<8": ("<", 8),
    **{str(n): ("", n) for n in (8, 16, 32, 64, 128, 256)},
    ">=512": (">=", 512),
}


def choices(table: Choices) -> list[tuple[str, Promise | str]]:
    return [(code, label) for code, (_display, label) in table.items()]


def prenatal_system(clinic_code: str) -> str:
    return PRENATAL_SYSTEM.format(code=clinic_code)


def delivery_system(clinic_code: str) -> str:
    return DELIVERY_SYSTEM.format(code=clinic_code)


# --------------------------------------------------------------------------
# Gestational age
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class GestationalAge:
    days: int

    @property
    def weeks(self) -> int:
        return self.days // 7

    @property
    def extra_days(self) -> int:
        return self.days % 7

    def __str__(self) -> str:
        return str(
            _("%(weeks)d weeks %(days)d days") % {"weeks": self.weeks, "days": self.extra_days}
        )

    @property
    def ja(self) -> str:
        return f"{self.weeks}週{self.extra_days}日"


def gestational_age(due_date: date, day: date) -> GestationalAge:
    """Weeks + days on `day` for a pregnancy due on `due_date` (40w0d)."""
    return GestationalAge(PREGNANCY_DAYS - (due_date - day).days)


def last_menstrual_period(due_date: date) -> date:
    return due_date - timedelta(days=PREGNANCY_DAYS)


# Beyond this a "visit" or a "birth" is not a pregnancy any more (the
# dictionary's gestational_age runs 0–45 weeks).
MAX_GESTATION_DAYS = 45 * 7
# 出産 in the MCH handbook counts from 12 weeks (stillbirths from 12 weeks
# are notified as 死産); a birth record before that is refused.
MIN_BIRTH_GESTATION_DAYS = 12 * 7


# --------------------------------------------------------------------------
# Lab tests by gestational window
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class LabTest:
    """A test of the 告示 with the weeks it is usually done in (inclusive;
    None: until birth), as prenatal_schedule_jp.csv lists them."""

    key: str  # the dictionary item
    kind: str  # "code", "quantity" or "titre"
    windows: tuple[tuple[int, int | None], ...]
    answers: Choices = field(default_factory=dict)
    system: str = ""
    places: int = 1

    @property
    def item(self) -> terminology.Item:
        return terminology.item(self.key)

    def due_at(self, weeks: int | None) -> bool:
        if weeks is None:
            return False
        return any(start <= weeks and (end is None or weeks <= end) for start, end in self.windows)

    @property
    def clinic_only(self) -> bool:
        return self.item.sensitivity == terminology.Sensitivity.CLINIC_ONLY


EARLY = ((0, 13),)  # 妊娠初期に1回
CBC = ((0, 13), (24, 35), (36, None))  # 血算: early, 24–35 w, ≥36 w
LAB_TESTS: tuple[LabTest, ...] = (
    LabTest("blood_type_abo", "code", EARLY, ABO, ABO_SYSTEM),
    LabTest("blood_type_rh", "code", EARLY, RH, RH_SYSTEM),
    LabTest("irregular_antibodies", "code", EARLY, QUALITATIVE, QUALITATIVE_SYSTEM),
    LabTest("hemoglobin", "quantity", CBC),
    LabTest("hematocrit", "quantity", CBC),
    LabTest("platelets", "quantity", CBC),
    LabTest("blood_glucose", "quantity", ((0, 13), (24, 35)), places=0),
    LabTest("hbs_antigen", "code", EARLY, QUALITATIVE, QUALITATIVE_SYSTEM),
    LabTest("hcv_antibody", "code", EARLY, QUALITATIVE, QUALITATIVE_SYSTEM),
    LabTest("hiv_antibody", "code", EARLY, QUALITATIVE_WITH_INDETERMINATE, QUALITATIVE_SYSTEM),
    LabTest("syphilis_serology", "code", EARLY, QUALITATIVE, QUALITATIVE_SYSTEM),
    LabTest("rubella_hi", "titre", EARLY),
    LabTest(
        "htlv1_antibody", "code", ((0, 30),), QUALITATIVE_WITH_INDETERMINATE, QUALITATIVE_SYSTEM
    ),
    LabTest("gbs", "code", ((24, 35),), QUALITATIVE, QUALITATIVE_SYSTEM),
    LabTest("cervical_cytology", "code", EARLY, BETHESDA, BETHESDA_SYSTEM),
)
LAB_TESTS_BY_KEY = {test.key: test for test in LAB_TESTS}


def tests_due(weeks: int | None) -> list[LabTest]:
    return [test for test in LAB_TESTS if test.due_at(weeks)]


# --------------------------------------------------------------------------
# Plausibility: impossible values are refused, unusual ones warned about
# --------------------------------------------------------------------------

# Bounds for a pregnant woman where the dictionary's range serves everyone
# (its body weight starts at 0.3 kg for newborns): 25 kg is below any
# adult who carries a pregnancy; 250 kg is the dictionary's upper bound.
PRENATAL_BOUNDS: dict[str, tuple[Decimal, Decimal]] = {
    "body_weight": (Decimal(25), Decimal(250)),
    # The dictionary's height starts at 20 cm for children. The shortest
    # women known to have carried a pregnancy are about 70 cm tall, so a
    # woman's height below 60 cm is a slip of the keyboard (15.8 for 158).
    "body_height": (Decimal(60), Decimal(220)),
}
# A newborn's measurements: inside the dictionary's ranges, narrowed to a
# baby at birth (from 12 weeks on).
NEWBORN_BOUNDS: dict[str, tuple[Decimal, Decimal]] = {
    "body_length": (Decimal(20), Decimal(65)),
    "head_circumference": (Decimal(20), Decimal(45)),
    "chest_circumference": (Decimal(20), Decimal(45)),
}


def bounds(key: str, *, newborn: bool = False) -> tuple[Decimal | None, Decimal | None]:
    """The impossible-outside range of an item: ours where stated above,
    else the dictionary's (docs/dataset.md)."""
    table = NEWBORN_BOUNDS if newborn else PRENATAL_BOUNDS
    if key in table:
        return table[key]
    item = terminology.item(key)
    return item.min, item.max


def out_of_bounds(key: str, value: Decimal | int, *, newborn: bool = False) -> str | None:
    """The message refusing `value`, or None when it is possible."""
    low, high = bounds(key, newborn=newborn)
    if (low is None or value >= low) and (high is None or value <= high):
        return None
    item = terminology.item(key)
    return str(
        _("%(value)s %(unit)s is not possible for %(item)s (possible: %(low)s–%(high)s %(unit)s).")
        % {
            "value": value,
            "unit": unit_display(item.unit),
            "item": item_label(key),
            "low": low,
            "high": high,
        }
    )


UNIT_DISPLAY = {"mm[Hg]": "mmHg", "10*4/uL": "×10⁴/µL", "{titer}": "", "/min": "/min", "Cel": "℃"}


def unit_display(unit: str) -> str:
    return UNIT_DISPLAY.get(unit, unit)


def item_label(key: str) -> str:
    """The item's name in the active language (docs/dataset.md ja / en)."""
    from django.utils.translation import get_language

    return terminology.item(key).label(get_language() or "ja")


# Hypertension in pregnancy (JSOG/JSSHP 2018, standards.md §6).
HYPERTENSION = (140, 90)
SEVERE_HYPERTENSION = (160, 110)
# More than 3 kg a week between visits (the example of an unusual
# change; the 2021 JSOG guidance aims at 7–15 kg over the whole pregnancy).
WEIGHT_CHANGE_KG_PER_WEEK = Decimal(3)
# Plt below 15 ×10⁴/µL (150,000/µL) marks organ damage in HDP (standards.md §6).
LOW_PLATELETS = Decimal(15)
# The pre-pregnancy weight and the height give the BMI of the JSOG 2021
# weight-gain guidance. A BMI below 16 (WHO: severe thinness) or of 40 or
# more (WHO: obesity class III) is possible but rare enough to ask whether
# the weight or the height was mistyped; so is a woman shorter than 130 cm
# or taller than 190 cm (the Japanese adult female mean is about 158 cm).
UNUSUAL_BMI = (Decimal(16), Decimal(40))
UNUSUAL_HEIGHT_CM = (Decimal(130), Decimal(190))
# A pre-pregnancy weight more than 20 kg below (or 10 kg above) the weight
# measured now is unusual: the guidance's largest band is 12-15 kg over the
# whole pregnancy, and early-pregnancy losses are a few kilograms.
UNUSUAL_GAIN_KG = (Decimal(-10), Decimal(20))
# Not in the reference (common obstetric practice; flagged, never refused):
FETAL_HEART_RATE_NORMAL = (110, 160)  # baseline bpm
TERM = (37 * 7, 42 * 7)  # term birth: 37w0d to 41w6d
LOW_BIRTH_WEIGHT = 2500  # g (WHO definition)
HIGH_BIRTH_WEIGHT = 4000  # g
LOW_APGAR_5 = 7
# Postpartum haemorrhage: 500 mL vaginal, 1000 mL caesarean.
PPH_ML = {"vaginal": 500, "cesarean": 1000}


@dataclass(frozen=True)
class Finding:
    """One unusual value: the field it belongs to and what to check."""

    field: str
    message: str


# --------------------------------------------------------------------------
# A visit
# --------------------------------------------------------------------------

# A lab result: an answer code, a number, or a titre key of RUBELLA_TITRES.
LabValue = str | Decimal | int


@dataclass(frozen=True)
class Visit:
    """One prenatal checkup as the clinic's form states it (None or "":
    not measured)."""

    visit_date: date
    due_date: date | None = None
    systolic: int | None = None
    diastolic: int | None = None
    weight: Decimal | None = None
    urine_protein: str = ""
    urine_glucose: str = ""
    fundal_height: Decimal | None = None
    abdominal_circumference: Decimal | None = None
    edema: str = ""
    fetal_heartbeat: str = ""
    fetal_heart_rate: int | None = None
    estimated_fetal_weight: int | None = None
    # Before this pregnancy (妊娠前体重) and her height: usually stated at the
    # first visit; a later visit states them again only to correct them.
    pre_pregnancy_weight: Decimal | None = None
    height: Decimal | None = None
    notes: str = ""
    labs: dict[str, LabValue] = field(default_factory=dict)

    @property
    def gestational_age(self) -> GestationalAge | None:
        if self.due_date is None:
            return None
        return gestational_age(self.due_date, self.visit_date)


# The numbers of a visit by form field, with their dictionary item.
VISIT_NUMBERS = {
    "systolic": "bp_systolic",
    "diastolic": "bp_diastolic",
    "weight": "body_weight",
    "fundal_height": "fundal_height",
    "abdominal_circumference": "abdominal_circumference",
    "fetal_heart_rate": "fetal_heart_rate",
    "estimated_fetal_weight": "estimated_fetal_weight",
    "pre_pregnancy_weight": "pre_pregnancy_weight",
    "height": "body_height",
}


def visit_refusals(visit: Visit) -> dict[str, str]:
    """What cannot be true about a visit: by field, the message. The form
    checks each field's range first (with `out_of_bounds`, as here); the
    service checks again, so a visit built elsewhere is refused alike."""
    errors: dict[str, str] = {}
    for name, key in VISIT_NUMBERS.items():
        value = getattr(visit, name)
        message = out_of_bounds(key, value) if value is not None else None
        if message:
            errors[name] = message
    for test in LAB_TESTS:
        value = visit.labs.get(test.key)
        if test.kind == "quantity" and isinstance(value, Decimal | int):
            message = out_of_bounds(test.key, value)
            if message:
                errors[f"lab_{test.key}"] = message
    if errors:
        return errors
    if (visit.systolic is None) != (visit.diastolic is None):
        field_name = "diastolic" if visit.diastolic is None else "systolic"
        errors[field_name] = str(_("Enter both the systolic and the diastolic pressure."))
    elif visit.systolic is not None and visit.diastolic is not None:
        if visit.systolic <= visit.diastolic:
            errors["diastolic"] = str(
                _("The diastolic pressure must be lower than the systolic (%(bp)s).")
                % {"bp": f"{visit.systolic}/{visit.diastolic}"}
            )
    age = visit.gestational_age
    if age is not None and not 0 <= age.days <= MAX_GESTATION_DAYS:
        errors["due_date"] = str(
            _(
                "With this due date the visit would be at %(age)s: check the due date and "
                "the visit date."
            )
            % {"age": age}
        )
    return errors


def bmi(weight: Decimal, height_cm: Decimal) -> Decimal:
    """Body mass index, kg/m², to one decimal."""
    return (weight / (height_cm / 100) ** 2).quantize(Decimal("0.1"))


def _body_warnings(
    visit: Visit,
    *,
    previous_weight: tuple[date, Decimal] | None,
    known_pre_pregnancy_weight: Decimal | None,
    known_height: Decimal | None,
) -> list[Finding]:
    """Unusual pre-pregnancy weight and height, checked when this visit
    states one of them (a value recorded earlier was confirmed then)."""
    found: list[Finding] = []
    if visit.height is not None and not (
        UNUSUAL_HEIGHT_CM[0] <= visit.height <= UNUSUAL_HEIGHT_CM[1]
    ):
        found.append(
            Finding(
                "height",
                str(
                    _("A height of %(height)s cm is unusual (below 130 or above 190 cm).")
                    % {"height": visit.height}
                ),
            )
        )
    if visit.pre_pregnancy_weight is None and visit.height is None:
        return found
    before = visit.pre_pregnancy_weight or known_pre_pregnancy_weight
    height = visit.height or known_height
    if before is not None and height is not None:
        index = bmi(before, height)
        if not UNUSUAL_BMI[0] <= index < UNUSUAL_BMI[1]:
            found.append(
                Finding(
                    "pre_pregnancy_weight" if visit.pre_pregnancy_weight else "height",
                    str(
                        _(
                            "The pre-pregnancy BMI would be %(bmi)s (%(weight)s kg, %(height)s "
                            "cm): below 16 or 40 or more is unusual. Check the weight and the "
                            "height."
                        )
                        % {"bmi": index, "weight": before, "height": height}
                    ),
                )
            )
    now = visit.weight
    if now is None and previous_weight is not None:
        now = previous_weight[1]
    if visit.pre_pregnancy_weight is not None and now is not None:
        gain = now - visit.pre_pregnancy_weight
        if not UNUSUAL_GAIN_KG[0] <= gain <= UNUSUAL_GAIN_KG[1]:
            found.append(
                Finding(
                    "pre_pregnancy_weight",
                    str(
                        _(
                            "The pre-pregnancy weight %(before)s kg is %(gain)s kg from the "
                            "weight in pregnancy (%(now)s kg): more than 10 kg lost or 20 kg "
                            "gained is unusual."
                        )
                        % {"before": visit.pre_pregnancy_weight, "gain": f"{gain:+.1f}", "now": now}
                    ),
                )
            )
    return found


def visit_warnings(
    visit: Visit,
    *,
    previous_weight: tuple[date, Decimal] | None = None,
    known_pre_pregnancy_weight: Decimal | None = None,
    known_height: Decimal | None = None,
) -> list[Finding]:
    """Unusual values the person entering them confirms before saving.
    `previous_weight` is the latest prenatal weight before the visit; the
    `known_` values are the pre-pregnancy weight and height recorded before."""
    found: list[Finding] = []
    if visit.systolic is not None and visit.diastolic is not None:
        bp = f"{visit.systolic}/{visit.diastolic} mmHg"
        if visit.systolic >= SEVERE_HYPERTENSION[0] or visit.diastolic >= SEVERE_HYPERTENSION[1]:
            found.append(
                Finding(
                    "systolic",
                    str(
                        _("Blood pressure %(bp)s is in the severe range (160/110 or more).")
                        % {"bp": bp}
                    ),
                )
            )
        elif visit.systolic >= HYPERTENSION[0] or visit.diastolic >= HYPERTENSION[1]:
            found.append(
                Finding(
                    "systolic",
                    str(_("Blood pressure %(bp)s is hypertensive (140/90 or more).") % {"bp": bp}),
                )
            )
    if visit.weight is not None and previous_weight is not None:
        day, before = previous_weight
        days = (visit.visit_date - day).days
        if days > 0:
            per_week = (visit.weight - before) * 7 / days
            if abs(per_week) > WEIGHT_CHANGE_KG_PER_WEEK:
                found.append(
                    Finding(
                        "weight",
                        str(
                            _(
                                "Weight changed by %(change)s kg since %(day)s "
                                "(%(rate)s kg a week; more than 3 kg a week is unusual)."
                            )
                            % {
                                "change": f"{visit.weight - before:+.1f}",
                                "day": day.isoformat(),
                                "rate": f"{per_week:+.1f}",
                            }
                        ),
                    )
                )
    rate = visit.fetal_heart_rate
    if rate is not None and not FETAL_HEART_RATE_NORMAL[0] <= rate <= FETAL_HEART_RATE_NORMAL[1]:
        found.append(
            Finding(
                "fetal_heart_rate",
                str(_("Fetal heart rate %(rate)s/min is outside 110–160/min.") % {"rate": rate}),
            )
        )
    if visit.fetal_heartbeat == "absent":
        found.append(Finding("fetal_heartbeat", str(_("No fetal heartbeat was seen."))))
    platelets = visit.labs.get("platelets")
    if isinstance(platelets, Decimal) and platelets < LOW_PLATELETS:
        found.append(
            Finding(
                "lab_platelets",
                str(_("Platelets %(value)s ×10⁴/µL are below 15 ×10⁴/µL.") % {"value": platelets}),
            )
        )
    age = visit.gestational_age
    if age is not None and age.days >= TERM[1]:
        found.append(
            Finding(
                "due_date",
                str(_("The visit is at %(age)s: 42 weeks or more.") % {"age": age}),
            )
        )
    found += _body_warnings(
        visit,
        previous_weight=previous_weight,
        known_pre_pregnancy_weight=known_pre_pregnancy_weight,
        known_height=known_height,
    )
    return found


# --------------------------------------------------------------------------
# FHIR building blocks
# --------------------------------------------------------------------------

Item = tuple[dict[str, Any], Any]  # (resource, store.Source)


@dataclass(frozen=True)
class ClinicRef:
    code: str  # 医療機関コード (10 digits)
    name: str

    @property
    def reference(self) -> dict[str, Any]:
        """As phr/demo.py refers to the demo clinic."""
        return {
            "display": self.name,
            "identifier": {"system": MEDICAL_INSTITUTION_SYSTEM, "value": self.code},
        }


def _source(system: str, value: str) -> Any:
    # Imported here: phr.store needs Django's models, and this module is
    # imported by forms at start-up.
    from phr import store

    return store.Source(system, value)


def source_id(resource_type: str, system: str, value: str) -> uuid.UUID:
    from phr import store

    return store.source_resource_id(resource_type, _source(system, value))


def _observation(
    key: str,
    *,
    subject: uuid.UUID,
    when: date,
    category: str,
    obs_category: str,
    encounter: uuid.UUID | None = None,
    **value: Any,
) -> dict[str, Any]:
    resource = common.observation(
        key,
        subject=str(subject),
        when=when,
        category=category,
        obs_category=obs_category,
        encounter=str(encounter) if encounter else None,
        **value,
    )
    codings = resource["code"]["coding"]
    if key in JP_EXTRA_BODY_CODES:
        code, display = JP_EXTRA_BODY_CODES[key]
        codings.append({"system": common.JP_BODY_MEASUREMENT, "code": code, "display": display})
    if key in BLOOD_TYPE_LOINC:
        codings.append(dict(BLOOD_TYPE_LOINC[key]))
    return resource


def _coded(system: str, code: str, table: Choices) -> dict[str, Any]:
    display = table[code][0]
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _gestational_age_value(age: GestationalAge) -> dict[str, Any]:
    """Completed weeks as the value (as phr/demo.py writes it), the days
    beyond them as a component, and 24週3日 in words."""
    days_item = terminology.item("gestational_age_days")
    return {
        "valueQuantity": common.quantity(age.weeks, "wk"),
        "component": [
            {
                "code": {"coding": [days_item.coding], "text": days_item.ja},
                "valueQuantity": common.quantity(age.extra_days, "d"),
            }
        ],
        "note": [{"text": age.ja}],
    }


def pregnancy_episode(
    *, patient_id: uuid.UUID, due_date: date, clinic: ClinicRef
) -> dict[str, Any]:
    """A pregnancy as phr/demo.py records one: from the last menstrual
    period the due date implies, managed by the clinic."""
    return {
        "resourceType": "EpisodeOfCare",
        "meta": common.meta(Category.PREGNANCY),
        "status": "active",
        "type": [
            {
                "coding": [
                    {
                        "system": common.EPISODE_TYPE_SYSTEM,
                        "code": "pregnancy",
                        "display": PREGNANCY_TEXT,
                    }
                ],
                "text": PREGNANCY_TEXT,
            }
        ],
        "patient": common.patient_ref(str(patient_id)),
        "managingOrganization": clinic.reference,
        "period": {"start": last_menstrual_period(due_date).isoformat()},
    }


def episode_source_value(patient_id: uuid.UUID, due_date: date) -> str:
    return f"{patient_id}|pregnancy|{last_menstrual_period(due_date).isoformat()}"


def due_date_observation(
    *, patient_id: uuid.UUID, due_date: date, recorded_on: date
) -> dict[str, Any]:
    """The estimated delivery date (LOINC 11778-8) as phr/demo.py and the
    family page read it: valueDateTime, dated when it was set."""
    return common.observation(
        "edd",
        subject=str(patient_id),
        when=recorded_on,
        category=Category.PREGNANCY,
        valueDateTime=due_date.isoformat(),
    )


def due_date_source_value(episode_id: uuid.UUID) -> str:
    """One due date per pregnancy: a correction updates it."""
    return f"{episode_id}|edd"


def visit_source_value(patient_id: uuid.UUID, visit_date: date) -> str:
    """One visit per patient, clinic and day: sending it again updates it."""
    return f"{patient_id}|{visit_date.isoformat()}"


# Every item key a visit may write, so that a corrected visit can remove
# what it no longer states.
VISIT_ITEMS = (
    "gestational_age",
    "bp_panel",
    "body_weight",
    "urine_protein",
    "urine_glucose",
    "fundal_height",
    "abdominal_circumference",
    "edema",
    "fetal_heartbeat",
    "fetal_heart_rate",
    "estimated_fetal_weight",
    "pre_pregnancy_weight",
    "body_height",
    "prenatal_note",
    *(test.key for test in LAB_TESTS),
)


def visit_item_ids(
    *, clinic_code: str, patient_id: uuid.UUID, visit_date: date
) -> dict[str, uuid.UUID]:
    """The ids the store gives each possible record of a visit."""
    system = prenatal_system(clinic_code)
    visit = visit_source_value(patient_id, visit_date)
    return {key: source_id("Observation", system, f"{visit}|{key}") for key in VISIT_ITEMS}


def _lab_value(test: LabTest, value: LabValue) -> dict[str, Any]:
    item = test.item
    if test.kind == "code":
        return {"valueCodeableConcept": _coded(test.system, str(value), test.answers)}
    if test.kind == "titre":
        comparator, number = RUBELLA_TITRES[str(value)]
        quantity = common.quantity(number, item.unit)
        quantity["unit"] = "倍"  # how the result is read: 16倍 (1:16)
        if comparator:
            quantity["comparator"] = comparator
        return {"valueQuantity": quantity}
    assert isinstance(value, Decimal | int)
    return {"valueQuantity": common.quantity(value, item.unit)}


def visit_resources(
    *,
    visit: Visit,
    patient_id: uuid.UUID,
    clinic: ClinicRef,
    episode_id: uuid.UUID | None,
) -> list[Item]:
    """The visit's Encounter and one Observation per item measured, each
    with its source identifier (clinic system, patient|date|item)."""
    system = prenatal_system(clinic.code)
    base = visit_source_value(patient_id, visit.visit_date)
    encounter_id = source_id("Encounter", system, base)
    encounter = common.encounter(
        subject=str(patient_id),
        when=visit.visit_date,
        category=Category.PRENATAL_CHECKUPS,
        types=[{"text": PRENATAL_ENCOUNTER_TEXT}],
        provider=clinic.reference,
    )
    if episode_id is not None:
        encounter["episodeOfCare"] = [{"reference": f"EpisodeOfCare/{episode_id}"}]
    items: list[Item] = [(encounter, _source(system, base))]

    def add(key: str, obs_category: str, **value: Any) -> None:
        resource = _observation(
            key,
            subject=patient_id,
            when=visit.visit_date,
            category=Category.PRENATAL_CHECKUPS,
            obs_category=obs_category,
            encounter=encounter_id,
            **value,
        )
        items.append((resource, _source(system, f"{base}|{key}")))

    age = visit.gestational_age
    if age is not None:
        add("gestational_age", "exam", **_gestational_age_value(age))
    if visit.systolic is not None and visit.diastolic is not None:
        add(
            "bp_panel",
            "vital-signs",
            component=[
                {
                    "code": {"coding": [terminology.item("bp_systolic").coding]},
                    "valueQuantity": common.quantity(visit.systolic, "mm[Hg]"),
                },
                {
                    "code": {"coding": [terminology.item("bp_diastolic").coding]},
                    "valueQuantity": common.quantity(visit.diastolic, "mm[Hg]"),
                },
            ],
        )
    if visit.weight is not None:
        add("body_weight", "vital-signs", valueQuantity=common.quantity(visit.weight, "kg"))
    for key, code in (
        ("urine_protein", visit.urine_protein),
        ("urine_glucose", visit.urine_glucose),
    ):
        if code:
            add(
                key,
                "laboratory",
                valueCodeableConcept=_coded(common.URINE_DIPSTICK_SYSTEM, code, DIPSTICK),
            )
    for key, number in (
        ("fundal_height", visit.fundal_height),
        ("abdominal_circumference", visit.abdominal_circumference),
    ):
        if number is not None:
            add(key, "exam", valueQuantity=common.quantity(number, "cm"))
    if visit.edema:
        add("edema", "exam", valueCodeableConcept=_coded(EDEMA_SYSTEM, visit.edema, DIPSTICK))
    if visit.fetal_heartbeat:
        add(
            "fetal_heartbeat",
            "exam",
            valueCodeableConcept=_coded(
                FETAL_HEARTBEAT_SYSTEM, visit.fetal_heartbeat, FETAL_HEARTBEAT
            ),
        )
    if visit.fetal_heart_rate is not None:
        add(
            "fetal_heart_rate",
            "exam",
            valueQuantity=common.quantity(visit.fetal_heart_rate, "/min"),
        )
    if visit.estimated_fetal_weight is not None:
        add(
            "estimated_fetal_weight",
            "imaging",
            valueQuantity=common.quantity(visit.estimated_fetal_weight, "g"),
        )
    if visit.pre_pregnancy_weight is not None:
        # Reported at this visit, about the time before the pregnancy: the
        # HL7 vital-records IGs record 56077-1 as a vital sign the same way.
        add(
            "pre_pregnancy_weight",
            "vital-signs",
            valueQuantity=common.quantity(visit.pre_pregnancy_weight, "kg"),
        )
    if visit.height is not None:
        add("body_height", "vital-signs", valueQuantity=common.quantity(visit.height, "cm"))
    if visit.notes.strip():
        add("prenatal_note", "exam", valueString=visit.notes.strip())
    for test in LAB_TESTS:
        value = visit.labs.get(test.key)
        if value is None or value == "":
            continue
        add(test.key, "laboratory", **_lab_value(test, value))
    return items


# --------------------------------------------------------------------------
# A delivery
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Baby:
    """出生児: one baby as the delivering clinic records it."""

    sex: str  # male, female, unknown (FHIR administrative-gender)
    weight_g: int
    length_cm: Decimal | None = None
    head_cm: Decimal | None = None
    chest_cm: Decimal | None = None
    apgar_1: int | None = None
    apgar_5: int | None = None
    given_name: str = ""  # often not chosen yet


@dataclass(frozen=True)
class Delivery:
    """出産の状態: when, at how many weeks, how, how long, blood loss,
    transfusion; and the babies."""

    born_at: datetime  # aware
    gestation_days: int
    mode: str
    labor_minutes: int | None = None
    blood_loss_ml: int | None = None
    transfusion: bool | None = None
    babies: tuple[Baby, ...] = ()

    @property
    def birth_date(self) -> date:
        from django.utils import timezone

        return timezone.localtime(self.born_at).date()

    @property
    def gestational_age(self) -> GestationalAge:
        return GestationalAge(self.gestation_days)


def delivery_refusals(delivery: Delivery) -> dict[str, str]:
    errors: dict[str, str] = {}
    if not MIN_BIRTH_GESTATION_DAYS <= delivery.gestation_days <= MAX_GESTATION_DAYS:
        errors["gestation_weeks"] = str(
            _("A birth at %(age)s is not possible here (12 to 45 weeks).")
            % {"age": delivery.gestational_age}
        )
    if not 1 <= len(delivery.babies) <= 5:
        errors["babies"] = str(_("Record one to five babies."))
    return errors


def delivery_warnings(delivery: Delivery) -> list[Finding]:
    found: list[Finding] = []
    days = delivery.gestation_days
    if days < TERM[0]:
        found.append(
            Finding(
                "gestation_weeks",
                str(_("Preterm birth: %(age)s.") % {"age": delivery.gestational_age}),
            )
        )
    elif days >= TERM[1]:
        found.append(
            Finding(
                "gestation_weeks",
                str(_("Post-term birth: %(age)s.") % {"age": delivery.gestational_age}),
            )
        )
    if delivery.blood_loss_ml is not None:
        route = "cesarean" if delivery.mode.startswith("cesarean") else "vaginal"
        if delivery.blood_loss_ml >= PPH_ML[route]:
            found.append(
                Finding(
                    "blood_loss_ml",
                    str(
                        _("Blood loss of %(ml)s mL: %(limit)s mL or more for this mode of birth.")
                        % {"ml": delivery.blood_loss_ml, "limit": PPH_ML[route]}
                    ),
                )
            )
    for number, baby in enumerate(delivery.babies, start=1):
        prefix = f"baby-{number - 1}-"
        if baby.weight_g < LOW_BIRTH_WEIGHT or baby.weight_g > HIGH_BIRTH_WEIGHT:
            found.append(
                Finding(
                    f"{prefix}weight_g",
                    str(
                        _("Baby %(n)s weighs %(g)s g (below 2500 g or above 4000 g).")
                        % {"n": number, "g": baby.weight_g}
                    ),
                )
            )
        if baby.apgar_5 is not None and baby.apgar_5 < LOW_APGAR_5:
            found.append(
                Finding(
                    f"{prefix}apgar_5",
                    str(
                        _("Baby %(n)s has an Apgar score of %(score)s at 5 minutes (below 7).")
                        % {"n": number, "score": baby.apgar_5}
                    ),
                )
            )
    return found


def delivery_source_value(mother_id: uuid.UUID, birth_date: date) -> str:
    """One delivery per mother and day: sending it again updates it."""
    return f"{mother_id}|delivery|{birth_date.isoformat()}"


def baby_source_value(base: str, index: int) -> str:
    return f"{base}|baby{index + 1}"


def child_patient_id(*, clinic_code: str, base: str, index: int) -> uuid.UUID:
    """The id of a child created by this delivery: derived from the
    delivery, so a resubmitted delivery finds the child it created."""
    return source_id("Patient", delivery_system(clinic_code), baby_source_value(base, index))


def birth_weight_id(*, clinic_code: str, base: str, index: int) -> uuid.UUID:
    """The id of the n-th baby's birth weight: its subject names the child
    a resubmitted delivery wrote to (created or linked)."""
    value = f"{baby_source_value(base, index)}|birth_weight"
    return source_id("Observation", delivery_system(clinic_code), value)


def delivery_resources(
    *, delivery: Delivery, mother_id: uuid.UUID, clinic: ClinicRef, episode_id: uuid.UUID | None
) -> list[Item]:
    """The mother's side: the birth Encounter (an inpatient stay ending the
    pregnancy) and 出産の状態 as Observations tagged pregnancy."""
    system = delivery_system(clinic.code)
    base = delivery_source_value(mother_id, delivery.birth_date)
    encounter_id = source_id("Encounter", system, base)
    born = delivery.born_at.isoformat()
    encounter: dict[str, Any] = {
        "resourceType": "Encounter",
        "meta": common.meta(Category.PREGNANCY),
        "status": "finished",
        "class": {"system": common.ACT_CODE, "code": "IMP", "display": "inpatient encounter"},
        "type": [
            {
                "coding": [
                    {
                        "system": ENCOUNTER_TYPE_SYSTEM,
                        "code": "delivery",
                        "display": DELIVERY_ENCOUNTER_TEXT,
                    }
                ],
                "text": DELIVERY_ENCOUNTER_TEXT,
            }
        ],
        "subject": common.patient_ref(str(mother_id)),
        "period": {"start": born, "end": born},
        "serviceProvider": clinic.reference,
    }
    if episode_id is not None:
        encounter["episodeOfCare"] = [{"reference": f"EpisodeOfCare/{episode_id}"}]
    items: list[Item] = [(encounter, _source(system, base))]

    def add(key: str, obs_category: str, **value: Any) -> None:
        resource = _observation(
            key,
            subject=mother_id,
            when=delivery.birth_date,
            category=Category.PREGNANCY,
            obs_category=obs_category,
            encounter=encounter_id,
            **value,
        )
        items.append((resource, _source(system, f"{base}|{key}")))

    add("gestational_age", "exam", **_gestational_age_value(delivery.gestational_age))
    add(
        "delivery_mode",
        "procedure",
        valueCodeableConcept=_coded(DELIVERY_MODE_SYSTEM, delivery.mode, DELIVERY_MODE),
    )
    if delivery.labor_minutes is not None:
        add("labor_duration", "exam", valueQuantity=common.quantity(delivery.labor_minutes, "min"))
    if delivery.blood_loss_ml is not None:
        add(
            "delivery_blood_loss",
            "exam",
            valueQuantity=common.quantity(delivery.blood_loss_ml, "mL"),
        )
    if delivery.transfusion is not None:
        add("delivery_transfusion", "procedure", valueBoolean=delivery.transfusion)
    add("birth_count", "exam", valueInteger=len(delivery.babies))
    return items


# The keys a baby's birth record may hold (for removing corrected items).
BABY_ITEMS = (
    "birth_weight",
    "body_length",
    "head_circumference",
    "chest_circumference",
    "apgar_1min",
    "apgar_5min",
    "gestational_age",
)


def baby_item_ids(*, clinic_code: str, base: str, index: int) -> dict[str, uuid.UUID]:
    system = delivery_system(clinic_code)
    prefix = baby_source_value(base, index)
    return {key: source_id("Observation", system, f"{prefix}|{key}") for key in BABY_ITEMS}


def birth_resources(
    *,
    delivery: Delivery,
    baby: Baby,
    index: int,
    child_id: uuid.UUID,
    mother_id: uuid.UUID,
    clinic: ClinicRef,
) -> list[Item]:
    """The child's side, as phr/demo.py child_birth_items() writes birth
    data: birth weight, length, head and chest, Apgar scores and the
    gestational age at birth, tagged infant_checkups, dated on the birthday."""
    system = delivery_system(clinic.code)
    prefix = baby_source_value(delivery_source_value(mother_id, delivery.birth_date), index)
    items: list[Item] = []

    def add(key: str, obs_category: str, **value: Any) -> None:
        resource = _observation(
            key,
            subject=child_id,
            when=delivery.birth_date,
            category=Category.INFANT_CHECKUPS,
            obs_category=obs_category,
            **value,
        )
        items.append((resource, _source(system, f"{prefix}|{key}")))

    add("birth_weight", "vital-signs", valueQuantity=common.quantity(baby.weight_g, "g"))
    measured: tuple[tuple[str, str, Decimal | None], ...] = (
        ("body_length", "vital-signs", baby.length_cm),
        ("head_circumference", "vital-signs", baby.head_cm),
        ("chest_circumference", "exam", baby.chest_cm),
    )
    for key, obs_category, number in measured:
        if number is not None:
            add(key, obs_category, valueQuantity=common.quantity(number, "cm"))
    for key, score in (("apgar_1min", baby.apgar_1), ("apgar_5min", baby.apgar_5)):
        if score is not None:
            add(key, "exam", valueInteger=score)
    add("gestational_age", "exam", **_gestational_age_value(delivery.gestational_age))
    return items


def finished_episode(content: dict[str, Any], *, birth_date: date) -> dict[str, Any]:
    """The pregnancy, ended by the birth: status finished, period end."""
    resource = dict(content)
    period = dict(resource.get("period") or {})
    period["end"] = birth_date.isoformat()
    if "start" in period and str(period["start"])[:10] > period["end"]:
        period["start"] = period["end"]
    resource["period"] = period
    resource["status"] = "finished"
    return resource


PLACEHOLDER_GIVEN_NAME = "（未定）"


def child_patient_resource(
    *, family: str, baby: Baby, birth_date: date, index: int, of: int
) -> dict[str, Any]:
    """A newborn's Patient: the family name of the mother, the given name
    when the family chose one, else （未定）(with the birth order for twins)."""
    from phr.services import patient_resource

    given = baby.given_name.strip() or PLACEHOLDER_GIVEN_NAME
    if not baby.given_name.strip() and of > 1:
        given = f"（未定・第{index + 1}子）"
    return patient_resource(
        family=family or PLACEHOLDER_GIVEN_NAME,
        given=given,
        birth_date=birth_date,
        gender=baby.sex,
    )
