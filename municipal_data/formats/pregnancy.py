"""妊娠届 / 母子健康手帳交付 (pregnancy notifications and MCH handbooks):
one row per notified pregnancy, from the municipality's maternal and child
health system. The row is about the mother; the handbook issued for the
pregnancy identifies it.

Documented in docs/formats/pregnancy.md. A row becomes an EpisodeOfCare
(the pregnancy, identified by the handbook number) and, when given, the
estimated delivery date (LOINC 11778-8, valueDateTime), the gestational age
at the notification and the number of fetuses, all tagged pregnancy —
the shapes sharing/emergency.py reads for the emergency summary (an active
EpisodeOfCare, and an 11778-8 Observation dated on or after its start).
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from datetime import date, timedelta
from typing import Any

from municipal_data.formats import common
from municipal_data.formats.common import (
    ADD_REQUIRED_EN,
    ADD_REQUIRED_JA,
    BIRTH_DATE,
    CHANGE,
    CHILD_HANDBOOK,
    EPISODE_TYPE_SYSTEM,
    MOTHER_EXAMPLE,
    MOVE_COLUMNS,
    MUNICIPALITY,
    RESIDENT,
    past_date,
)
from municipal_data.records import Items, MunicipalFormat, MunicipalRecord
from phr.tabular import Column, FieldError, Row, date_between
from phr.terminology import Category

KEY = "pregnancy"
CATEGORY = Category.PREGNANCY

PREGNANCY_DAYS = 280
# A pregnancy whose due date is further back than this when the row is
# mapped is written as finished, not active: a municipality loading past
# notifications must not make the emergency summary say "pregnant".
FINISHED_AFTER = timedelta(weeks=8)


def weeks_and_days(value: str) -> tuple[int, int]:
    """届出時妊娠週数: 11, 11週, 11週3日, 11w3d, 11+3."""
    text = unicodedata.normalize("NFKC", value).lower().replace(" ", "")
    match = re.fullmatch(r"(\d{1,2})(?:週|w|wk|weeks?)?(?:(?:\+|と)?(\d)(?:日|d|days?)?)?", text)
    if match is None or int(match[2] or 0) > 6:
        raise FieldError(
            "gestation",
            f"妊娠週数「{value}」が読めません（例: 11、11週3日、11+3）",
            f"the gestational age {value!r} is not readable (e.g. 11, 11週3日, 11+3)",
        )
    weeks = int(match[1])
    if weeks > 45:
        raise FieldError(
            "range",
            f"妊娠週数 {weeks}週 はありえない値です（0〜45週）",
            f"a gestational age of {weeks} weeks is impossible (0–45)",
        )
    return weeks, int(match[2] or 0)


_FETUSES = {"単胎": 1, "双胎": 2, "品胎": 3, "要胎": 4, "四胎": 4, "五胎": 5}


def fetus_count(value: str) -> int:
    """胎児数: 1–5, or 単胎 / 双胎 / 品胎."""
    text = unicodedata.normalize("NFKC", value).replace(" ", "")
    text = re.sub(r"(人|児|胎児)$", "", text)
    count = _FETUSES.get(text) or (int(text) if re.fullmatch(r"\d{1,2}", text) else None)
    if count is None:
        raise FieldError(
            "fetus_count",
            f"胎児数「{value}」が読めません（1〜5、または単胎・双胎・品胎）",
            f"the number of fetuses {value!r} is not readable (1–5, or 単胎, 双胎, 品胎)",
        )
    if not 1 <= count <= 5:
        raise FieldError(
            "fetus_count",
            f"胎児数 {count} はありえない値です（1〜5）",
            f"{count} fetuses is impossible (1–5)",
        )
    return count


COLUMNS: tuple[Column, ...] = (
    CHANGE,
    MUNICIPALITY,
    dataclasses.replace(RESIDENT, en="the pregnant woman's resident number", example="0001234567"),
    *common.name_columns("", "", "the pregnant woman's ", MOTHER_EXAMPLE),
    dataclasses.replace(BIRTH_DATE, en="the pregnant woman's birth date", example="1992-06-12"),
    dataclasses.replace(
        CHILD_HANDBOOK,
        required=True,
        required_header=True,
        en="the number of the MCH handbook issued for this pregnancy",
        example="102016-2025-00412",
    ),
    Column(
        "notification_date",
        "届出日",
        past_date,
        aliases=("妊娠届出日", "届出年月日", "妊娠届出年月日"),
        en="the day the pregnancy was notified (the handbook is usually issued the same day)",
        example="2025-06-02",
    ),
    Column(
        "due_date",
        "出産予定日",
        date_between(date(2000, 1, 1)),
        aliases=("分娩予定日", "出産予定年月日"),
        en="the estimated delivery date",
        example="2026-01-05",
    ),
    Column(
        "gestational_age",
        "届出時妊娠週数",
        weeks_and_days,
        aliases=("妊娠週数", "届出時の妊娠週数"),
        en="weeks of pregnancy on the notification day (11, 11週3日)",
        example="9週4日",
    ),
    Column(
        "fetus_count",
        "胎児数",
        fetus_count,
        aliases=("胎児の数", "多胎"),
        en="number of fetuses: 1–5, or 単胎 / 双胎 / 品胎",
        example="1",
    ),
    *MOVE_COLUMNS,
)
_BY_KEY = common.columns_by_key(COLUMNS)
KEY_COLUMNS = ("municipality_code", "resident_number", "mch_handbook_number")
REQUIRED_ON_ADD = ("family_name", "given_name", "birth_date", "notification_date")


def to_record(row: Row, uploading: str) -> MunicipalRecord | None:
    if not row.values:
        return None
    basics = common.check_common(row, _BY_KEY, uploading, child=False, mother_columns=False)
    values = dict(row.values)
    if basics.change != "delete":
        common.require(row, _BY_KEY, ["notification_date"], ADD_REQUIRED_JA, ADD_REQUIRED_EN)
        _check_dates(row, values)
    handbook = values.get("mch_handbook_number")
    if row.errors or handbook is None:
        return None
    return MunicipalRecord(
        line=row.line,
        change=basics.change,
        key=f"{values['resident_number']}|{handbook}",
        subject=common.person(
            row, "mother", uploading, basics, handbook=handbook, sex_default="female"
        ),
        values=values,
    )


def _check_dates(row: Row, values: dict[str, Any]) -> None:
    birth, notified = values.get("birth_date"), values.get("notification_date")
    due, weeks = values.get("due_date"), values.get("gestational_age")
    if birth is not None and notified is not None:
        age = common.years_between(birth, notified) if notified >= birth else -1
        if not 10 <= age <= 60:
            row.error(
                "birth_date",
                "mother_age",
                f"生年月日 {birth.isoformat()} では届出日 {notified.isoformat()} に"
                f"{max(age, 0)}歳です（10〜60歳の範囲外）",
                f"the birth date {birth.isoformat()} makes her {max(age, 0)} on the "
                f"notification day {notified.isoformat()} (outside 10–60)",
            )
    if notified is None or due is None:
        return
    if due < notified:
        row.error(
            "due_date",
            "due_before_notification",
            f"出産予定日 {due.isoformat()} が届出日 {notified.isoformat()} より前です",
            f"the due date {due.isoformat()} is before the notification day {notified.isoformat()}",
        )
        return
    if (due - notified).days > PREGNANCY_DAYS:
        row.error(
            "due_date",
            "due_too_far",
            f"出産予定日 {due.isoformat()} が届出日 {notified.isoformat()} から40週より先です",
            f"the due date {due.isoformat()} is more than 40 weeks after the notification "
            f"day {notified.isoformat()}",
        )
        return
    if weeks is not None:
        implied = PREGNANCY_DAYS - (due - notified).days
        given = weeks[0] * 7 + weeks[1]
        if abs(given - implied) > 14:
            row.error(
                "gestational_age",
                "gestation_mismatch",
                f"届出時妊娠週数 {weeks[0]}週{weeks[1]}日 が出産予定日から計算した週数"
                f"（{implied // 7}週{implied % 7}日）と2週を超えて違います",
                f"the gestational age {weeks[0]}w{weeks[1]}d differs by more than 2 weeks from "
                f"the {implied // 7}w{implied % 7}d the due date gives",
            )


def status(values: dict[str, Any], today: date) -> str:
    """active, unless the pregnancy must be over (its due date, or 40 weeks
    after the notification, more than FINISHED_AFTER ago)."""
    expected = values.get("due_date") or values["notification_date"] + timedelta(
        days=PREGNANCY_DAYS
    )
    return "finished" if expected + FINISHED_AFTER < today else "active"


def resources(record: MunicipalRecord, subject: str, mother: str | None) -> Items:
    """The EpisodeOfCare and Observations of an add/update row (nothing for
    a deletion). `subject` is the pregnant woman."""
    from phr.services import MCH_HANDBOOK_SYSTEM  # needs the models: imported when used

    if record.change == "delete":
        return []
    values = record.values
    municipality = record.subject.municipality_code
    notified = values["notification_date"]
    items: Items = [
        (
            "episode",
            {
                "resourceType": "EpisodeOfCare",
                "meta": common.meta(CATEGORY),
                "identifier": [
                    {
                        "system": MCH_HANDBOOK_SYSTEM.format(municipality_code=municipality),
                        "value": values["mch_handbook_number"],
                    }
                ],
                "status": status(values, common.today()),
                "type": [
                    {
                        "coding": [
                            {"system": EPISODE_TYPE_SYSTEM, "code": "pregnancy", "display": "妊娠"}
                        ],
                        "text": "妊娠",
                    }
                ],
                "patient": common.patient_ref(subject),
                "managingOrganization": common.municipality_ref(municipality),
                "period": {"start": notified.isoformat()},
            },
        )
    ]
    # Dated on the notification day (when the municipality learnt them), so
    # the emergency summary finds them within the episode.
    if values.get("due_date") is not None:
        items.append(
            (
                "due-date",
                common.observation(
                    "edd",
                    subject=subject,
                    when=notified,
                    category=CATEGORY,
                    valueDateTime=values["due_date"].isoformat(),
                ),
            )
        )
    if values.get("gestational_age") is not None:
        weeks, days = values["gestational_age"]
        extra: dict[str, Any] = {"note": [{"text": f"妊娠{weeks}週{days}日"}]} if days else {}
        items.append(
            (
                "gestational-age",
                common.observation(
                    "gestational_age",
                    subject=subject,
                    when=notified,
                    category=CATEGORY,
                    obs_category="exam",
                    valueQuantity=common.quantity(weeks, "wk"),
                    **extra,
                ),
            )
        )
    if values.get("fetus_count") is not None:
        items.append(
            (
                "fetus-count",
                common.observation(
                    "fetus_count",
                    subject=subject,
                    when=notified,
                    category=CATEGORY,
                    obs_category="exam",
                    valueInteger=values["fetus_count"],
                ),
            )
        )
    return items


FORMAT = MunicipalFormat(
    key=KEY,
    label_ja="妊娠届・母子健康手帳交付",
    label_en="Pregnancy notifications and MCH handbooks",
    category=CATEGORY,
    columns=COLUMNS,
    to_record=to_record,
    resources=resources,
)
