"""Demo data: organizations, one account per role, and a Maebashi family
with a realistic record (manage.py seed_demo).

Everything clinical is written through phr.services and phr.store with
source identifiers, so seeding twice changes nothing. The family's dates
are anchored on the day it was first seeded (the child is 14 months old
then): a later run reads the anchor back from the child's stored birth
date instead of moving every date, which would fork the records.

Facts used here come from ../shared/reference (standards.md §2–4 and its
data/*.csv); where the reference had no verified code, a local code
system is used and the module says so.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from itertools import pairwise
from typing import Any

from allauth.account.models import EmailAddress
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
from allauth.mfa.utils import decrypt
from django.conf import settings
from django.db import transaction
from django.utils import timezone, translation

from phr import services, store, terminology
from phr.identifiers import MEDICAL_INSTITUTION_SYSTEM, validate_municipality_code, with_luhn_digit
from phr.models import (
    Guardianship,
    Membership,
    Organization,
    Patient,
    Provenance,
    Residency,
    Resource,
    Role,
    User,
)
from phr.reminders import reminders_for_guardian
from phr.terminology import CATEGORY_SYSTEM, UCUM, Category

# --------------------------------------------------------------------------
# Organizations
# --------------------------------------------------------------------------

MAEBASHI_CODE = "102016"  # 全国地方公共団体コード of 前橋市 (10201 + check digit 6)
# 医療機関コード: 群馬 (10) + 点数表 1 (医科) + 郡市区 01 + 番号 2345 + check digit.
CLINIC_CODE = with_luhn_digit("101012345")
EMS_CODE = f"EMS-{MAEBASHI_CODE}"
RESEARCH_CODE = "RES-0001"


@dataclass(frozen=True)
class OrgSpec:
    kind: str
    code: str
    name: str
    name_en: str


ORGANIZATIONS = (
    OrgSpec(Organization.Kind.MUNICIPALITY, MAEBASHI_CODE, "前橋市", "Maebashi City"),
    OrgSpec(
        Organization.Kind.CLINIC,
        CLINIC_CODE,
        "はぐくみレディースクリニック",
        "Hagukumi Ladies' Clinic",
    ),
    OrgSpec(Organization.Kind.EMERGENCY, EMS_CODE, "前橋市消防局", "Maebashi City Fire Department"),
    OrgSpec(
        Organization.Kind.RESEARCH,
        RESEARCH_CODE,
        "群馬大学 母子保健研究室",
        "Gunma University Maternal and Child Health Laboratory",
    ),
)

# --------------------------------------------------------------------------
# Accounts
# --------------------------------------------------------------------------

DOMAIN = "demo.hagukumi.jp"
PARENT_EMAIL = f"parent@{DOMAIN}"


@dataclass(frozen=True)
class AccountSpec:
    email: str
    display_name: str
    role: str  # a phr.models.Role, "parent" or "admin"
    org_kind: str | None = None
    privacy_officer: bool = False


ACCOUNTS = (
    AccountSpec(PARENT_EMAIL, "前橋 花子", "parent"),
    AccountSpec(f"clinic@{DOMAIN}", "伊勢崎 由美", Role.CLINIC_STAFF, Organization.Kind.CLINIC),
    AccountSpec(
        f"municipal@{DOMAIN}",
        "桐生 健一",
        Role.MUNICIPAL_STAFF,
        Organization.Kind.MUNICIPALITY,
        privacy_officer=True,
    ),
    AccountSpec(
        f"emergency@{DOMAIN}", "沼田 翔", Role.EMERGENCY_RESPONDER, Organization.Kind.EMERGENCY
    ),
    AccountSpec(f"researcher@{DOMAIN}", "太田 恵", Role.RESEARCHER, Organization.Kind.RESEARCH),
    AccountSpec(f"admin@{DOMAIN}", "はぐくみ 管理者", "admin"),
)


@dataclass(frozen=True)
class SeededAccount:
    email: str
    role: str  # a readable description for the command's output
    totp_secret: str | None  # base32; None for the parent (MFA optional for parents)


@dataclass
class DemoResult:
    accounts: list[SeededAccount] = field(default_factory=list)
    organizations: dict[str, Organization] = field(default_factory=dict)
    mother: Patient | None = None
    child: Patient | None = None
    anchor: date | None = None
    written: int = 0  # resources created or changed by this run


# --------------------------------------------------------------------------
# The family
# --------------------------------------------------------------------------

MOTHER_RESIDENT_NUMBER = "0001234567"  # 宛名番号 at 前橋市
CHILD_RESIDENT_NUMBER = "0001234575"
MOTHER_MCH_NUMBER = "102016-2026-00412"  # 母子健康手帳 of the current pregnancy
CHILD_MCH_NUMBER = "102016-2025-00187"  # the handbook issued for 陽翔
CLINIC_PATIENT_NUMBER = "000318"
CHILD_AGE_MONTHS = 14

RESIDENT_SYSTEM = services.RESIDENT_NUMBER_SYSTEM.format(municipality_code=MAEBASHI_CODE)
MCH_SYSTEM = services.MCH_HANDBOOK_SYSTEM.format(municipality_code=MAEBASHI_CODE)
# JP Core JP_Patient: a hospital's patient ID lives under
# urn:oid:1.2.392.100495.20.3.51. + "1" + the 10-digit 医療機関コード.
CLINIC_PATIENT_SYSTEM = f"urn:oid:1.2.392.100495.20.3.51.1{CLINIC_CODE}"

CHECKUP_SYSTEM = f"urn:hagukumi:municipality:{MAEBASHI_CODE}:infant-checkup"
VACCINATION_SYSTEM = f"urn:hagukumi:municipality:{MAEBASHI_CODE}:vaccination"
PRENATAL_SYSTEM = f"urn:hagukumi:clinic:{CLINIC_CODE}:prenatal-checkup"

OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
# JP Core body measurement codes (MEDIS 看護実践用語標準マスター), verified in
# jp_core_reference.csv; added beside LOINC, which the dictionary indexes.
JP_BODY_MEASUREMENT = "http://jpfhir.jp/fhir/core/CodeSystem/JP_ObservationBodyMeasurementCode_CS"
JP_BODY_CODES = {
    "body_weight": ("31000296", "体重(kg)"),
    "body_length": ("31000298", "身長"),
    "chest_circumference": ("31000299", "胸囲"),
    "head_circumference": ("31006116", "頭囲"),
    "birth_weight": ("31002900", "出生体重"),
}

# Local code systems where the reference lists no verified national code.
# A pregnancy episode: SNOMED CT 77386006 is commonly used, but the
# reference does not list it, so we do not assert it.
EPISODE_TYPE_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/episode-type"
CHECKUP_TYPE_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/infant-checkup"
JUDGEMENT_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/checkup-judgement"
# No national vaccine-type code list was found (standards.md §4); JP Core's
# HOT/YJ codes name products, and CVX codes are unverified there.
VACCINE_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/vaccine"


# --------------------------------------------------------------------------
# Dates
# --------------------------------------------------------------------------


def add_months(day: date, months: int) -> date:
    """The same day of the month `months` later (earlier when negative),
    clamped to the month's last day."""
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    last = (date(year + (month == 12), month % 12 + 1, 1) - timedelta(days=1)).day
    return date(year, month, min(day.day, last))


def anchor_for(today: date) -> date:
    """The seeding day, moved back to the 28th at a month's end so that
    "14 months before" is the same day of the month (no month-end clamp)."""
    return today.replace(day=min(today.day, 28))


PREGNANCY_DAYS = 280
MIN_GESTATION_DAYS = 20 * 7  # so two checkups 4 weeks apart both fall after 15 weeks
MAX_GESTATION_DAYS = 36 * 7  # and she has not delivered yet


def due_date(anchor: date) -> date:
    """The estimated delivery date: 20 weeks after the anchor, moved into
    March–April of the next spring, as long as the gestational age on the
    anchor day stays plausible (20–36 weeks); otherwise 20 weeks after it.

    From mid-October to early April this gives a spring due date; in the
    months between, next spring is too far away to be pregnant already.
    """
    target = anchor + timedelta(weeks=20)
    for year in (anchor.year + 1, anchor.year):
        edd = min(max(target, date(year, 3, 1)), date(year, 4, 30))
        gestation = PREGNANCY_DAYS - (edd - anchor).days
        if MIN_GESTATION_DAYS <= gestation <= MAX_GESTATION_DAYS:
            return edd
    return target


# --------------------------------------------------------------------------
# Growth: 2023 Japanese reference, boys, p50
# --------------------------------------------------------------------------

# Boys' p50 from こども家庭庁「令和5年乳幼児身体発育調査」 as transcribed in
# ../shared/reference/data/growth_percentiles_jp2023_p3_p50_p97.csv (rows
# R5_2023,M,0..18). Each survey row is an age band ("1～2月未満"); its value
# is placed at the band's middle (1.5 months; 12–18 months at 15) and
# interpolated linearly between. The birth row is at 0.
GROWTH_P50_BOYS: tuple[tuple[float, float, float], ...] = (
    # (age in months, length cm, weight kg)
    (0.0, 49.4, 3.1),
    (1.5, 55.5, 4.8),
    (2.5, 59.2, 5.8),
    (3.5, 62.3, 6.6),
    (4.5, 64.6, 7.1),
    (5.5, 66.2, 7.6),
    (6.5, 67.6, 7.9),
    (7.5, 68.8, 8.2),
    (8.5, 70.0, 8.4),
    (9.5, 71.0, 8.6),
    (10.5, 72.1, 8.8),
    (11.5, 73.1, 9.0),
    (15.0, 76.5, 9.7),
    (21.0, 82.1, 10.8),
)

# Head and chest circumference are not in the reference table. These are
# plausible values only, for a demo: head close to the WHO boys' median
# head circumference (from memory, not from the reference), and chest about
# 1.5 cm below the head at birth, catching up with it at about 12 months,
# as Japanese growth charts show in outline. Do not use them as a reference.
HEAD_BOYS: tuple[tuple[float, float], ...] = (
    (0.0, 33.5),
    (1.0, 37.0),
    (3.0, 40.5),
    (6.0, 43.3),
    (9.0, 45.0),
    (12.0, 46.1),
    (18.0, 47.4),
)


def _interpolate(points: Iterable[tuple[float, float]], age: float) -> float:
    pairs = list(points)
    if age <= pairs[0][0]:
        return pairs[0][1]
    for (a0, v0), (a1, v1) in pairwise(pairs):
        if a0 <= age <= a1:
            return v0 + (v1 - v0) * (age - a0) / (a1 - a0)
    return pairs[-1][1]


def growth_p50(age_months: float) -> tuple[float, float]:
    """(length cm, weight kg) of a boy at the 2023 reference's p50."""
    length = _interpolate(((a, h) for a, h, _ in GROWTH_P50_BOYS), age_months)
    weight = _interpolate(((a, w) for a, _, w in GROWTH_P50_BOYS), age_months)
    return round(length, 1), round(weight, 2)


def head_and_chest(age_months: float) -> tuple[float, float]:
    head = _interpolate(HEAD_BOYS, age_months)
    chest = head - 1.5 * max(0.0, 1 - age_months / 12)
    return round(head, 1), round(chest, 1)


def age_in_months(birth: date, day: date) -> float:
    return (day - birth).days / 30.4375


# --------------------------------------------------------------------------
# Infant checkups and vaccinations
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkup:
    kind: str  # our code in CHECKUP_TYPE_SYSTEM
    name: str  # as in infant_checkups_jp.csv
    months: int
    days: int  # after the month birthday


CHECKUPS = (
    Checkup("1m", "1か月児健診", 1, 0),
    Checkup("3-4m", "3～4か月児健診", 3, 15),
    Checkup("6-7m", "6～7か月児健診", 6, 15),
    Checkup("9-10m", "9～10か月児健診", 9, 15),
    Checkup("18m", "1歳6か月児健診", 18, 15),  # after 14 months: not seeded
)


@dataclass(frozen=True)
class Vaccine:
    code: str  # in VACCINE_SYSTEM
    name: str  # shown to families
    schedule_name: str  # vaccine_ja in immunization_schedule_jp.csv


VACCINES = {
    v.code: v
    for v in (
        Vaccine("dtap-ipv-hib", "5種混合(DPT-IPV-Hib)", "5種混合(DPT-IPV-Hib)"),
        # PCV20 is the routine product from 2024-10-01 (PCV13 removed then).
        Vaccine("pcv20", "小児用肺炎球菌(PCV20)", "小児用肺炎球菌(PCV20; PCV15)"),
        Vaccine("hepb", "B型肝炎", "B型肝炎"),
        Vaccine("rv1", "ロタウイルス 1価(ロタリックス)", "ロタウイルス 1価(ロタリックス)"),
        Vaccine("bcg", "BCG", "BCG"),
        Vaccine("mr", "麻しん風しん(MR)", "麻しん風しん(MR)"),
        Vaccine("varicella", "水痘", "水痘"),
    )
}


@dataclass(frozen=True)
class Dose:
    vaccine: str
    number: int  # dose_no in the schedule CSV
    series: str  # dose_label in the schedule CSV
    months: int  # age at the dose, in months


# Each dose on the first day of its standard window in
# immunization_schedule_jp.csv, primary series a month apart (inside the
# standard 20–56 days; at least the 27 days PCV and rotavirus need), as
# Japanese families usually go: 2, 3 and 4 months, then the 1-year doses.
SCHEDULE = (
    Dose("dtap-ipv-hib", 1, "1期初回", 2),  # start 生後2月～7月
    Dose("dtap-ipv-hib", 2, "1期初回", 3),  # 標準 20～56日間隔
    Dose("dtap-ipv-hib", 3, "1期初回", 4),
    Dose("dtap-ipv-hib", 4, "1期追加", 10),  # 初回終了後 6～18月: 4 + 6
    Dose("pcv20", 1, "初回", 2),  # start 生後2月～7月 (4 doses)
    Dose("pcv20", 2, "初回", 3),  # 27日以上, before 1 year
    Dose("pcv20", 3, "初回", 4),
    Dose("pcv20", 4, "追加", 12),  # 生後12～15月, ≥60 days after the 3rd
    Dose("hepb", 1, "", 2),  # 生後2月
    Dose("hepb", 2, "", 3),  # 生後3月
    Dose("hepb", 3, "", 7),  # 生後7～8月, ≥139 days after the 1st
    Dose("rv1", 1, "", 2),  # 6w0d–24w0d, first by 14w6d
    Dose("rv1", 2, "", 3),  # 27日以上
    Dose("bcg", 1, "", 5),  # 生後5～8月
    # MR 第1期 (生後12～24月) is left for the family: the handbook shows it
    # due and the reminder job reminds the parent of it.
    Dose("varicella", 1, "", 12),  # 生後12～15月
    Dose("varicella", 2, "", 18),  # 1回目から 6～12月: after 14 months, not seeded
)

VACCINATION_CLINIC = "まえばし小児科クリニック"  # a text-only performer


# --------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------


def _meta(category: str) -> dict[str, Any]:
    return {"tag": [{"system": CATEGORY_SYSTEM, "code": category}]}


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def _observation(
    *,
    key: str,
    subject: uuid.UUID,
    when: date,
    category: str,
    encounter: uuid.UUID | None = None,
    obs_category: str | None = None,
    **value: Any,
) -> dict[str, Any]:
    """An Observation of a dictionary item (LOINC or local code from
    docs/dataset.md, with the JP Core body-measurement code beside it)."""
    item = terminology.item(key)
    codings = [item.coding]
    if key in JP_BODY_CODES:
        code, display = JP_BODY_CODES[key]
        codings.append({"system": JP_BODY_MEASUREMENT, "code": code, "display": display})
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "meta": _meta(category),
        "status": "final",
        "code": {"coding": codings, "text": item.ja},
        "subject": {"reference": f"Patient/{subject}"},
        "effectiveDateTime": when.isoformat(),
    }
    if obs_category:
        resource["category"] = [
            {"coding": [{"system": OBSERVATION_CATEGORY, "code": obs_category}]}
        ]
    if encounter is not None:
        resource["encounter"] = {"reference": f"Encounter/{encounter}"}
    resource.update(value)
    return resource


def _organization_ref(org: Organization) -> dict[str, Any]:
    ref: dict[str, Any] = {"display": org.name}
    if org.kind == Organization.Kind.CLINIC:
        ref["identifier"] = {"system": MEDICAL_INSTITUTION_SYSTEM, "value": org.code}
    return ref


Item = tuple[dict[str, Any], store.Source]


def _encounter(
    *,
    subject: uuid.UUID,
    when: date,
    category: str,
    type_text: str,
    provider: Organization,
    type_coding: dict[str, str] | None = None,
    episode: uuid.UUID | None = None,
) -> dict[str, Any]:
    encounter_type: dict[str, Any] = {"text": type_text}
    if type_coding:
        encounter_type["coding"] = [type_coding]
    resource: dict[str, Any] = {
        "resourceType": "Encounter",
        "meta": _meta(category),
        "status": "finished",
        "class": {"system": ACT_CODE, "code": "AMB", "display": "ambulatory"},
        "type": [encounter_type],
        "subject": {"reference": f"Patient/{subject}"},
        "period": {"start": when.isoformat(), "end": when.isoformat()},
        "serviceProvider": _organization_ref(provider),
    }
    if episode is not None:
        resource["episodeOfCare"] = [{"reference": f"EpisodeOfCare/{episode}"}]
    return resource


def child_birth_items(*, child: uuid.UUID, birth: date) -> list[Item]:
    """Birth weight and gestational age at birth, as the municipality
    records them with the checkups (MHLW minimum set: 出生時体重, 在胎週数)."""
    _, weight_kg = growth_p50(0)
    base = f"{CHILD_RESIDENT_NUMBER}|birth|{birth.isoformat()}"
    return [
        (
            _observation(
                key="birth_weight",
                subject=child,
                when=birth,
                category=Category.INFANT_CHECKUPS,
                obs_category="vital-signs",
                valueQuantity=_quantity(round(weight_kg * 1000), "g"),
            ),
            store.Source(CHECKUP_SYSTEM, f"{base}|birth_weight"),
        ),
        (
            _observation(
                key="gestational_age",
                subject=child,
                when=birth,
                category=Category.INFANT_CHECKUPS,
                obs_category="exam",
                valueQuantity=_quantity(39, "wk"),
            ),
            store.Source(CHECKUP_SYSTEM, f"{base}|gestational_age"),
        ),
    ]


def checkup_items(
    *, child: uuid.UUID, birth: date, anchor: date, municipality: Organization
) -> list[Item]:
    """The infant checkups held by `anchor`: an Encounter each, with body
    measurements at the 2023 reference's p50 and the judgement 所見なし."""
    items: list[Item] = []
    for checkup in CHECKUPS:
        when = add_months(birth, checkup.months) + timedelta(days=checkup.days)
        if when > anchor:
            continue
        base = f"{CHILD_RESIDENT_NUMBER}|{checkup.kind}|{when.isoformat()}"
        encounter_source = store.Source(CHECKUP_SYSTEM, base)
        encounter_id = store.source_resource_id("Encounter", encounter_source)
        items.append(
            (
                _encounter(
                    subject=child,
                    when=when,
                    category=Category.INFANT_CHECKUPS,
                    type_text=checkup.name,
                    provider=municipality,
                    type_coding={
                        "system": CHECKUP_TYPE_SYSTEM,
                        "code": checkup.kind,
                        "display": checkup.name,
                    },
                ),
                encounter_source,
            )
        )
        age = age_in_months(birth, when)
        length, weight = growth_p50(age)
        head, chest = head_and_chest(age)
        measurements = (
            ("body_weight", "vital-signs", _quantity(weight, "kg")),
            ("body_length", "vital-signs", _quantity(length, "cm")),
            ("head_circumference", "vital-signs", _quantity(head, "cm")),
            ("chest_circumference", "exam", _quantity(chest, "cm")),
        )
        for key, obs_category, quantity in measurements:
            items.append(
                (
                    _observation(
                        key=key,
                        subject=child,
                        when=when,
                        encounter=encounter_id,
                        category=Category.INFANT_CHECKUPS,
                        obs_category=obs_category,
                        valueQuantity=quantity,
                    ),
                    store.Source(CHECKUP_SYSTEM, f"{base}|{key}"),
                )
            )
        items.append(
            (
                _observation(
                    key="checkup_judgement",
                    subject=child,
                    when=when,
                    encounter=encounter_id,
                    category=Category.INFANT_CHECKUPS,
                    obs_category="exam",
                    valueCodeableConcept={
                        "coding": [
                            {
                                "system": JUDGEMENT_SYSTEM,
                                "code": "no-findings",
                                "display": "所見なし",
                            }
                        ],
                        "text": "所見なし",
                    },
                ),
                store.Source(CHECKUP_SYSTEM, f"{base}|checkup_judgement"),
            )
        )
    return items


def vaccination_items(*, child: uuid.UUID, birth: date, anchor: date) -> list[Item]:
    """The routine doses whose standard date is on or before `anchor`."""
    items: list[Item] = []
    for dose in SCHEDULE:
        when = add_months(birth, dose.months)
        if when > anchor:
            continue
        vaccine = VACCINES[dose.vaccine]
        protocol: dict[str, Any] = {"doseNumberPositiveInt": dose.number}
        if dose.series:
            protocol["series"] = dose.series
        resource = {
            "resourceType": "Immunization",
            "meta": _meta(Category.VACCINATIONS),
            "status": "completed",
            "vaccineCode": {
                "coding": [
                    {"system": VACCINE_SYSTEM, "code": vaccine.code, "display": vaccine.name}
                ],
                "text": vaccine.name,
            },
            "patient": {"reference": f"Patient/{child}"},
            "occurrenceDateTime": when.isoformat(),
            "lotNumber": f"DEMO{when:%y%m}{dose.number}",
            "performer": [{"actor": {"display": VACCINATION_CLINIC}}],
            "protocolApplied": [protocol],
        }
        value = f"{CHILD_RESIDENT_NUMBER}|{vaccine.code}|{dose.number}|{when.isoformat()}"
        items.append((resource, store.Source(VACCINATION_SYSTEM, value)))
    return items


def pregnancy_items(*, mother: uuid.UUID, anchor: date, clinic: Organization) -> list[Item]:
    """The current pregnancy at the clinic: the episode, the estimated
    delivery date, and two prenatal checkups four weeks apart."""
    edd = due_date(anchor)
    lmp = edd - timedelta(days=PREGNANCY_DAYS)
    base = f"{CLINIC_PATIENT_NUMBER}|pregnancy|{lmp.isoformat()}"
    episode_source = store.Source(PRENATAL_SYSTEM, base)
    episode_id = store.source_resource_id("EpisodeOfCare", episode_source)
    items: list[Item] = [
        (
            {
                "resourceType": "EpisodeOfCare",
                "meta": _meta(Category.PREGNANCY),
                "status": "active",
                "type": [
                    {
                        "coding": [
                            {"system": EPISODE_TYPE_SYSTEM, "code": "pregnancy", "display": "妊娠"}
                        ],
                        "text": "妊娠",
                    }
                ],
                "patient": {"reference": f"Patient/{mother}"},
                "managingOrganization": _organization_ref(clinic),
                "period": {"start": lmp.isoformat()},
            },
            episode_source,
        ),
        (
            # Dated at 10 weeks, when the clinic confirmed the due date.
            _observation(
                key="edd",
                subject=mother,
                when=lmp + timedelta(weeks=10),
                category=Category.PREGNANCY,
                valueDateTime=edd.isoformat(),
            ),
            store.Source(PRENATAL_SYSTEM, f"{base}|edd"),
        ),
    ]
    for days_before in (29, 1):
        when = anchor - timedelta(days=days_before)
        weeks = (when - lmp).days // 7
        visit = f"{CLINIC_PATIENT_NUMBER}|{when.isoformat()}"
        encounter_source = store.Source(PRENATAL_SYSTEM, visit)
        encounter_id = store.source_resource_id("Encounter", encounter_source)
        items.append(
            (
                _encounter(
                    subject=mother,
                    when=when,
                    category=Category.PRENATAL_CHECKUPS,
                    type_text="妊婦健康診査",
                    provider=clinic,
                    episode=episode_id,
                ),
                encounter_source,
            )
        )
        systolic, diastolic = (112, 68) if days_before > 1 else (116, 72)
        # 53.0 kg before pregnancy (普通体重), ~0.3 kg/week from 12 weeks: inside
        # the 10–13 kg total the 2021 JSOG guidance gives for her BMI.
        weight = round(53.0 + 0.3 * max(0, weeks - 12), 1)
        # Fundal height ≈ weeks − 2 cm around mid-pregnancy (illustrative).
        fundal = float(max(weeks - 2, 8))
        common: dict[str, Any] = {
            "subject": mother,
            "when": when,
            "encounter": encounter_id,
            "category": Category.PRENATAL_CHECKUPS,
        }
        bp_panel = {
            "component": [
                {
                    "code": {"coding": [terminology.item("bp_systolic").coding]},
                    "valueQuantity": _quantity(systolic, "mm[Hg]"),
                },
                {
                    "code": {"coding": [terminology.item("bp_diastolic").coding]},
                    "valueQuantity": _quantity(diastolic, "mm[Hg]"),
                },
            ]
        }
        observations = (
            ("gestational_age", {"obs_category": "exam", "valueQuantity": _quantity(weeks, "wk")}),
            ("bp_panel", {"obs_category": "vital-signs", **bp_panel}),
            (
                "body_weight",
                {"obs_category": "vital-signs", "valueQuantity": _quantity(weight, "kg")},
            ),
            ("fundal_height", {"obs_category": "exam", "valueQuantity": _quantity(fundal, "cm")}),
        )
        for key, value in observations:
            items.append(
                (
                    _observation(key=key, **common, **value),
                    store.Source(PRENATAL_SYSTEM, f"{visit}|{key}"),
                )
            )
    return items


# --------------------------------------------------------------------------
# Writing, only what changed
# --------------------------------------------------------------------------


def _unchanged(staged: list[store.Staged]) -> bool:
    current = dict(
        Resource.objects.filter(id__in=[s.id for s in staged], deleted=False).values_list(
            "id", "content_hash"
        )
    )
    return all(current.get(s.id) == s.content_hash for s in staged)


def _write(items: list[Item], *, origin: str, organization: Organization) -> int:
    """Write through the idempotent store; skip the Provenance row too when
    every record is already stored as it is, so a re-run adds nothing."""
    staged = [store.stage(resource, source=source) for resource, source in items]
    if not staged or _unchanged(staged):
        return 0
    provenance = services.provenance_create(
        origin=origin, organization=organization, source="seed_demo"
    )
    # A few dozen rows: the VALUES path, not COPY.
    return store.write_staged(staged, provenance=provenance, copy=False).written


def _patient(
    *,
    existing: Patient | None,
    kind: str,
    resource: dict[str, Any],
    organization: Organization,
    account: User | None = None,
) -> tuple[Patient, int]:
    if existing is None:
        provenance = services.provenance_create(
            origin=Provenance.Origin.MUNICIPALITY, organization=organization, source="seed_demo"
        )
        patient = services.patient_create(
            kind=kind, resource=resource, provenance=provenance, account=account
        )
        return patient, 1
    if _unchanged([store.stage(resource, resource_id=existing.id)]):
        return existing, 0
    provenance = services.provenance_create(
        origin=Provenance.Origin.MUNICIPALITY, organization=organization, source="seed_demo"
    )
    _, _, changed = store.record_write(resource, provenance=provenance, resource_id=existing.id)
    return existing, int(changed)


# --------------------------------------------------------------------------
# Control data
# --------------------------------------------------------------------------


def _organization(spec: OrgSpec) -> Organization:
    if spec.kind == Organization.Kind.MUNICIPALITY:
        validate_municipality_code(spec.code)
    org = Organization.objects.filter(kind=spec.kind, code=spec.code).first()
    if org is None:
        org = Organization(kind=spec.kind, code=spec.code)
    elif (org.name, org.name_en) == (spec.name, spec.name_en):
        return org
    org.name, org.name_en = spec.name, spec.name_en
    org.full_clean()  # validates the code (check digits) and sets the prefecture
    org.save()
    return org


def _user(spec: AccountSpec, password: str) -> User:
    user = User.objects.filter(email__iexact=spec.email).first()
    if user is None:
        user = User.objects.create_user(spec.email, password, display_name=spec.display_name)
    elif not user.check_password(password):
        user.set_password(password)
        user.save(update_fields=["password"])
    is_admin = user.is_platform_admin and user.is_staff and user.is_superuser
    if spec.role == "admin" and not is_admin:
        user.is_platform_admin = user.is_staff = user.is_superuser = True
        user.save(update_fields=["is_platform_admin", "is_staff", "is_superuser"])
    # Login requires a verified address (ACCOUNT_EMAIL_VERIFICATION=mandatory).
    address, _ = EmailAddress.objects.get_or_create(
        user=user, email=user.email, defaults={"verified": True, "primary": True}
    )
    if not (address.verified and address.primary):
        address.verified = address.primary = True
        address.save(update_fields=["verified", "primary"])
    return user


def _totp_secret(user: User) -> str:
    """The user's TOTP secret (base32): the existing authenticator's, so the
    secret printed once keeps working, or a new one."""
    authenticator = Authenticator.objects.filter(user=user, type=Authenticator.Type.TOTP).first()
    if authenticator is not None:
        secret: str = decrypt(authenticator.data["secret"])
        return secret
    secret = generate_totp_secret()
    TOTP.activate(user, secret)
    return secret


def _membership(spec: AccountSpec, user: User, organization: Organization) -> None:
    membership = Membership.objects.filter(
        user=user, organization=organization, role=spec.role
    ).first()
    if membership is None:
        membership = Membership(user=user, organization=organization, role=spec.role)
    elif membership.is_privacy_officer == spec.privacy_officer:
        return
    membership.is_privacy_officer = spec.privacy_officer
    membership.full_clean()
    membership.save()


def _role_label(spec: AccountSpec, orgs: dict[str, Organization]) -> str:
    if spec.role == "parent":
        return "parent (前橋 花子, mother and guardian of 前橋 陽翔)"
    if spec.role == "admin":
        return "platform administrator (is_staff, is_superuser)"
    assert spec.org_kind is not None
    # English like the rest of the command's output, whatever the locale.
    with translation.override("en"):
        label = f"{Role(spec.role).label}, {orgs[spec.org_kind].name}"
    return label + (" (privacy officer)" if spec.privacy_officer else "")


def _resident(municipality: Organization, number: str) -> Patient | None:
    residency = (
        Residency.objects.filter(municipality=municipality, resident_number=number)
        .select_related("patient")
        .first()
    )
    return residency.patient if residency else None


def _stored_birth_date(patient: Patient) -> date | None:
    content = Resource.objects.filter(id=patient.id).values_list("content", flat=True).first()
    text = (content or {}).get("birthDate")
    return date.fromisoformat(text) if text else None


# --------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------


@transaction.atomic
def demo_seed(*, today: date | None = None) -> DemoResult:
    """Create (or complete) the demo organizations, accounts and family.

    Idempotent: a second run finds everything and writes nothing — no new
    rows, versions or provenance — and keeps each staff account's TOTP
    secret.
    """
    result = DemoResult()
    orgs = {spec.kind: _organization(spec) for spec in ORGANIZATIONS}
    result.organizations = orgs
    municipality = orgs[Organization.Kind.MUNICIPALITY]
    clinic = orgs[Organization.Kind.CLINIC]

    users: dict[str, User] = {}
    for spec in ACCOUNTS:
        user = _user(spec, settings.DEMO_PASSWORD)
        users[spec.email] = user
        secret = None
        if spec.role != "parent":
            secret = _totp_secret(user)
        if spec.org_kind is not None:
            _membership(spec, user, orgs[spec.org_kind])
        result.accounts.append(SeededAccount(spec.email, _role_label(spec, orgs), secret))
    parent = users[PARENT_EMAIL]

    # The family's dates hang on one anchor day, read back on later runs.
    existing_child = _resident(municipality, CHILD_RESIDENT_NUMBER)
    stored_birth = _stored_birth_date(existing_child) if existing_child else None
    if stored_birth is not None:
        anchor = add_months(stored_birth, CHILD_AGE_MONTHS)
    else:
        anchor = anchor_for(today or timezone.localdate())
    birth = add_months(anchor, -CHILD_AGE_MONTHS)
    result.anchor = anchor

    mother_resource = services.patient_resource(
        family="前橋",
        given="花子",
        family_kana="マエバシ",
        given_kana="ハナコ",
        birth_date=date(anchor.year - 32, 6, 12),
        gender="female",
        identifiers=[
            {"system": RESIDENT_SYSTEM, "value": MOTHER_RESIDENT_NUMBER},
            {"system": MCH_SYSTEM, "value": MOTHER_MCH_NUMBER},
            {"system": CLINIC_PATIENT_SYSTEM, "value": CLINIC_PATIENT_NUMBER},
        ],
    )
    mother, written = _patient(
        existing=Patient.objects.filter(account=parent).first(),
        kind=Patient.Kind.ADULT,
        resource=mother_resource,
        organization=municipality,
        account=parent,
    )
    result.written += written
    services.residency_add(
        patient=mother,
        municipality=municipality,
        resident_number=MOTHER_RESIDENT_NUMBER,
        valid_from=date(anchor.year - 5, 4, 1),
    )

    child_resource = services.patient_resource(
        family="前橋",
        given="陽翔",
        family_kana="マエバシ",
        given_kana="ハルト",
        birth_date=birth,
        gender="male",
        identifiers=[
            {"system": RESIDENT_SYSTEM, "value": CHILD_RESIDENT_NUMBER},
            {"system": MCH_SYSTEM, "value": CHILD_MCH_NUMBER},
        ],
    )
    child, written = _patient(
        existing=existing_child,
        kind=Patient.Kind.CHILD,
        resource=child_resource,
        organization=municipality,
    )
    result.written += written
    services.guardianship_add(
        guardian=parent,
        child=child,
        relationship=Guardianship.Relationship.MOTHER,
        valid_from=birth,
    )
    services.residency_add(
        patient=child,
        municipality=municipality,
        resident_number=CHILD_RESIDENT_NUMBER,
        valid_from=birth,
    )
    result.mother, result.child = mother, child

    result.written += _write(
        pregnancy_items(mother=mother.id, anchor=anchor, clinic=clinic),
        origin=Provenance.Origin.CLINIC,
        organization=clinic,
    )
    result.written += _write(
        child_birth_items(child=child.id, birth=birth)
        + checkup_items(child=child.id, birth=birth, anchor=anchor, municipality=municipality),
        origin=Provenance.Origin.MUNICIPALITY,
        organization=municipality,
    )
    result.written += _write(
        vaccination_items(child=child.id, birth=birth, anchor=anchor),
        origin=Provenance.Origin.MUNICIPALITY,
        organization=municipality,
    )
    # The daily reminder job, run once now for the parent, so that her
    # notifications list already holds the MR dose due (made once: a
    # second seed finds the reminder and mails nothing).
    reminders_for_guardian(guardian_id=parent.pk, today=today or timezone.localdate())
    return result
