"""A small municipal format for pipeline tests (a child's body weight,
with the mother), so the pipeline and the importer are tested apart from
the real formats' columns."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

from django.test import TestCase

from municipal_data.importing import pipeline_format
from municipal_data.records import MunicipalFormat, MunicipalRecord, Person
from phr import pipeline, tabular
from phr.models import Batch, Organization, User
from phr.terminology import CATEGORY_SYSTEM

COLUMNS = (
    tabular.Column(
        "municipality_code", "市町村コード", tabular.text(6), required=True, required_header=True
    ),
    tabular.Column(
        "resident_number",
        "宛名番号",
        tabular.text(15, r"\d{1,15}", "数字"),
        required=True,
        required_header=True,
    ),
    tabular.Column("family", "氏", tabular.text(30), name=True),
    tabular.Column("given", "名", tabular.text(30), name=True),
    tabular.Column("birth_date", "生年月日", tabular.parse_date),
    tabular.Column("sex", "性別", tabular.sex),
    tabular.Column("date", "測定日", tabular.parse_date, required=True, required_header=True),
    tabular.Column("weight", "体重", tabular.decimal(0.5, 40, 3)),
    tabular.Column("height", "身長", tabular.decimal(20, 130, 1)),
    tabular.Column("change", "異動区分", tabular.change_flag),
    tabular.Column("mother_resident_number", "母の宛名番号", tabular.text(15)),
    tabular.Column("mother_family", "母の氏", tabular.text(30), name=True),
    tabular.Column("mother_given", "母の名", tabular.text(30), name=True),
    tabular.Column("mother_birth_date", "母の生年月日", tabular.parse_date),
    tabular.Column("previous_municipality_code", "転入前の市町村コード", tabular.text(6)),
    tabular.Column("previous_resident_number", "転入前の宛名番号", tabular.text(15)),
    tabular.Column("moved_in", "転入日", tabular.parse_date),
)


def _to_record(row: tabular.Row, code: str) -> MunicipalRecord | None:
    v = row.values
    if v["municipality_code"] != code:
        row.error(
            "municipality_code",
            "municipality",
            "他の市町村の行です",
            "a row of another municipality",
        )
        return None
    change = v["change"] or "add"
    if change != "delete" and v["weight"] is None:
        row.error("weight", "required", "体重が空です", "the weight is empty")
        return None
    mother = None
    if v["mother_resident_number"]:
        mother = Person(
            kind="mother",
            municipality_code=code,
            resident_number=v["mother_resident_number"],
            family=v["mother_family"] or "",
            given=v["mother_given"] or "",
            birth_date=v["mother_birth_date"],
            sex="female",
        )
    return MunicipalRecord(
        line=row.line,
        change=change,
        key=f"{v['resident_number']}|{v['date'].isoformat()}",
        subject=Person(
            kind="child",
            municipality_code=code,
            resident_number=v["resident_number"],
            family=v["family"] or "",
            given=v["given"] or "",
            birth_date=v["birth_date"],
            sex=v["sex"],
            previous_municipality_code=v["previous_municipality_code"] or "",
            previous_resident_number=v["previous_resident_number"] or "",
            moved_in=v["moved_in"],
        ),
        mother=mother,
        values=v,
    )


def _observation(patient: str, when: date, code: str, value: Any, unit: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "meta": {"tag": [{"system": CATEGORY_SYSTEM, "code": "infant_checkups"}]},
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": when.isoformat(),
        "valueQuantity": {
            "value": float(value),
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit,
        },
    }


def _resources(record: MunicipalRecord, subject: str, mother: str | None) -> list[Any]:
    v = record.values
    items = [("body-weight", _observation(subject, v["date"], "29463-7", v["weight"], "kg"))]
    if v["height"] is not None:
        items.append(("body-height", _observation(subject, v["date"], "8302-2", v["height"], "cm")))
    return items


TEST_FORMAT = MunicipalFormat(
    key="test_weight",
    label_ja="テスト体重",
    label_en="test weight",
    category="infant_checkups",
    columns=COLUMNS,
    to_record=_to_record,
    resources=_resources,
)

HEADER = (
    "市町村コード,宛名番号,氏,名,生年月日,性別,測定日,体重,身長,異動区分,"
    "母の宛名番号,母の氏,母の名,母の生年月日,転入前の市町村コード,転入前の宛名番号,転入日"
)


def line(
    code: str,
    number: str,
    when: str,
    weight: str,
    *,
    birth: str = "2025-04-01",
    sex: str = "女",
    height: str = "",
    change: str = "",
    mother: str = "",
    family: str = "前橋",
    given: str = "はな",
    previous: tuple[str, str] = ("", ""),
    moved_in: str = "",
) -> str:
    mother_cells = f"{mother},前橋,さくら,1995-01-02" if mother else ",,,"
    return (
        f"{code},{number},{family},{given},{birth},{sex},{when},{weight},{height},{change},"
        f"{mother_cells},{previous[0]},{previous[1]},{moved_in}"
    )


def csv_bytes(lines: list[str], encoding: str = "utf-8-sig") -> bytes:
    return ("\r\n".join([HEADER, *lines]) + "\r\n").encode(encoding)


class registered_test_format:
    def __enter__(self) -> None:
        pipeline.format_register(pipeline_format(TEST_FORMAT))

    def __exit__(self, *exc: object) -> None:
        pipeline.FORMATS.pop(TEST_FORMAT.key, None)


def receive(
    municipality: Organization,
    data: bytes,
    *,
    user: User | None = None,
    fmt: str = "test_weight",
    encoding: str = "auto",
    name: str = "upload.csv",
) -> Batch:
    """Upload and validate (Celery is eager in tests: the job runs on commit)."""
    with TestCase.captureOnCommitCallbacks(execute=True):
        batch = pipeline.batch_receive(
            organization=municipality,
            format_key=fmt,
            chunks=[data],
            filename=name,
            user=user,
            encoding=encoding,
        )
    batch.refresh_from_db()
    return batch


def confirm(batch: Batch, user: User | None = None, *, only_valid: bool = False) -> Batch:
    with TestCase.captureOnCommitCallbacks(execute=True):
        pipeline.batch_confirm(batch=batch, user=user, only_valid=only_valid)
    batch.refresh_from_db()
    return batch


def upload_and_import(municipality: Organization, data: bytes, **kwargs: Any) -> Batch:
    batch = receive(municipality, data, **kwargs)
    assert batch.status == Batch.Status.VALIDATED, (batch.status, batch.file_error)
    return confirm(batch, only_valid=bool(batch.summary.get("invalid")))


def chunks_of(data: bytes, size: int = 7) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def media_file(batch: Batch) -> Path:
    return pipeline.batch_file_path(batch)
