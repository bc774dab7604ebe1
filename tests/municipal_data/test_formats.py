"""The municipal file formats (municipal_data/formats, docs/formats): the
samples read without errors in UTF-8 and Shift_JIS and with Japanese or
English headers, the bad samples give exactly the documented errors, and
every resource a format builds — from the samples and from random valid
rows — is valid FHIR R4B that the index files under the format's category
in the subject's compartment."""

from __future__ import annotations

import csv
import io
import re
import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from municipal_data.formats import (
    FORMATS,
    KEY_COLUMNS,
    common,
    infant_checkup,
    pregnancy,
    school_checkup,
    vaccination,
)
from municipal_data.formats import docs as format_docs
from municipal_data.records import MunicipalFormat, MunicipalRecord
from phr import fhir, indexing, selectors, store, tabular, terminology
from phr.tabular import Row

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "formats"
SAMPLES = DOCS / "samples"
MAEBASHI = "102016"
TAKASAKI = "102024"
SUBJECT = "11111111-1111-4111-8111-111111111111"
MOTHER = "22222222-2222-4222-8222-222222222222"
NAMES = tuple(FORMATS)


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


def read_bytes(
    data: bytes, fmt: MunicipalFormat, municipality: str = MAEBASHI
) -> list[tuple[Row, MunicipalRecord | None]]:
    stream, _ = tabular.open_text(io.BytesIO(data))
    out = []
    for row in tabular.rows(stream, fmt.columns):
        out.append((row, fmt.to_record(row, municipality)))
    return out


def read_sample(name: str, fmt: MunicipalFormat) -> list[tuple[Row, MunicipalRecord | None]]:
    with (SAMPLES / f"{name}.csv").open("rb") as raw:
        stream, _ = tabular.open_text(raw)
        return [(row, fmt.to_record(row, MAEBASHI)) for row in tabular.rows(stream, fmt.columns)]


def csv_bytes(header: list[str], rows: list[list[str]], encoding: str = "utf-8-sig") -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode(encoding)


def errors_of(rows: list[tuple[Row, MunicipalRecord | None]]) -> list[tuple[int, str, str]]:
    return [(e.line, e.column, e.code) for row, _ in rows for e in row.errors]


def resources_of(fmt: MunicipalFormat, record: MunicipalRecord) -> list[tuple[str, Any]]:
    mother = MOTHER if record.mother is not None else None
    return fmt.resources(record, SUBJECT, mother)


def assert_valid_and_indexed(fmt: MunicipalFormat, record: MunicipalRecord) -> None:
    items = resources_of(fmt, record)
    names = [name for name, _ in items]
    assert len(names) == len(set(names)), names
    assert items, record
    for name, resource in items:
        assert re.fullmatch(r"[a-z][a-z0-9-]*", name), name
        fhir.validate_resource(resource)
        fields = indexing.index(resource)
        assert fields.category == fmt.category, (name, fields.category)
        assert fields.compartments == [uuid.UUID(SUBJECT)], name
        assert fields.sensitivity == "normal"
        assert fields.date_start is not None, name
        tags = resource["meta"]["tag"]
        assert {"system": terminology.CATEGORY_SYSTEM, "code": fmt.category} in tags


# --------------------------------------------------------------------------
# The samples
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_each_sample_reads_without_errors_and_has_adds_an_update_and_a_delete(name: str) -> None:
    fmt = FORMATS[name]
    rows = read_sample(name, fmt)
    assert errors_of(rows) == []
    records = [record for _, record in rows]
    assert all(record is not None for record in records)
    assert 10 <= len(records) <= 20
    changes = {r.change for r in records if r is not None}
    assert changes == {"add", "update", "delete"}
    # Every update and delete names a row the file added.
    keys = {r.key for r in records if r is not None and r.change == "add"}
    for record in records:
        assert record is not None
        assert record.subject.municipality_code == MAEBASHI
        if record.change == "update":
            assert record.key in keys


@pytest.mark.parametrize("name", NAMES)
def test_the_sample_is_utf8_with_a_bom_and_the_sjis_sample_is_the_same_in_cp932(name: str) -> None:
    utf8 = (SAMPLES / f"{name}.csv").read_bytes()
    sjis = (SAMPLES / f"{name}_sjis.csv").read_bytes()
    assert utf8.startswith(b"\xef\xbb\xbf")
    text = utf8[3:].decode("utf-8")
    assert sjis.decode("cp932") == text
    fmt = FORMATS[name]
    with (SAMPLES / f"{name}_sjis.csv").open("rb") as raw:
        stream, encoding = tabular.open_text(raw)
        sjis_rows = list(tabular.rows(stream, fmt.columns))
    assert encoding == "cp932"
    utf8_rows = read_sample(name, fmt)
    assert [r.values for r in sjis_rows] == [r.values for r, _ in utf8_rows]
    assert [fmt.to_record(r, MAEBASHI) for r in sjis_rows] == [rec for _, rec in utf8_rows]


@pytest.mark.parametrize("name", NAMES)
def test_every_resource_of_the_samples_is_valid_fhir_indexed_under_the_formats_category(
    name: str,
) -> None:
    fmt = FORMATS[name]
    for _, record in read_sample(name, fmt):
        assert record is not None
        if record.change == "delete":
            assert fmt.resources(record, SUBJECT, None) == []
            continue
        assert_valid_and_indexed(fmt, record)


@pytest.mark.parametrize("name", NAMES)
def test_english_headers_read_the_same_as_japanese_ones(name: str) -> None:
    fmt = FORMATS[name]
    text = (SAMPLES / f"{name}.csv").read_bytes()[3:].decode("utf-8")
    header, rest = text.split("\r\n", 1)
    by_ja = {c.ja: c.key for c in fmt.columns}
    english = ",".join(by_ja[cell] for cell in next(csv.reader([header])))
    japanese_rows = read_sample(name, fmt)
    english_rows = read_bytes(f"{english}\r\n{rest}".encode(), fmt)
    assert errors_of(english_rows) == []
    assert [rec for _, rec in english_rows] == [rec for _, rec in japanese_rows]


def documented_errors(name: str) -> list[tuple[int, str, str]]:
    """The expected-errors table of docs/formats/<name>.md."""
    text = (DOCS / f"{name}.md").read_text(encoding="utf-8")
    table = text.split("<!-- bad-sample:begin -->", 1)[1].split("<!-- bad-sample:end -->", 1)[0]
    out = []
    for line in table.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        out.append((int(cells[0]), cells[1], cells[2]))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_the_bad_sample_gives_exactly_the_documented_errors(name: str) -> None:
    fmt = FORMATS[name]
    rows = read_sample(f"{name}_bad", fmt)
    expected = documented_errors(name)
    assert errors_of(rows) == expected
    # Every row with an error is refused; the rest are records.
    bad_lines = {line for line, _, _ in expected}
    for row, record in rows:
        assert (record is None) == (row.line in bad_lines)
        for error in row.errors:
            assert error.ja
            assert error.en
            assert error.ja != error.en


@pytest.mark.parametrize("name", NAMES)
def test_the_column_tables_of_the_docs_are_generated_from_the_code(name: str) -> None:
    fmt = FORMATS[name]
    text = format_docs.page(fmt).read_text(encoding="utf-8")
    for block, table in format_docs.blocks(fmt).items():
        assert f"{format_docs.begin(block)}\n{table}\n{format_docs.end(block)}" in text, block


def test_the_samples_are_of_maebashi_whose_code_has_a_valid_check_digit() -> None:
    assert common.municipality_code(MAEBASHI) == MAEBASHI
    assert common.municipality_code(TAKASAKI) == TAKASAKI


# --------------------------------------------------------------------------
# Rules every format shares
# --------------------------------------------------------------------------


def sample_header_and_rows(name: str) -> tuple[list[str], list[list[str]]]:
    text = (SAMPLES / f"{name}.csv").read_bytes()[3:].decode("utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0], rows[1:]


def first_add_row(name: str) -> tuple[list[str], list[str]]:
    header, rows = sample_header_and_rows(name)
    return header, rows[0]


def with_cells(header: list[str], row: list[str], **cells: str) -> list[str]:
    row = list(row)
    for key, value in cells.items():
        row[header.index(key)] = value
    return row


@pytest.mark.parametrize("name", NAMES)
def test_another_municipalitys_row_is_refused(name: str) -> None:
    fmt = FORMATS[name]
    header, row = first_add_row(name)
    rows = read_bytes(csv_bytes(header, [row]), fmt, municipality=TAKASAKI)
    assert errors_of(rows) == [(2, "市町村コード", "other_municipality")]
    assert rows[0][1] is None
    error = rows[0][0].errors[0]
    assert "102016" in error.ja
    assert "102024" in error.ja
    assert "102016" in error.en
    assert "102024" in error.en


@pytest.mark.parametrize("name", NAMES)
def test_a_deletion_needs_only_the_key_cells(name: str) -> None:
    fmt = FORMATS[name]
    header, row = first_add_row(name)
    keys = KEY_COLUMNS[name]
    ja_of = {c.key: c.ja for c in fmt.columns}
    key_headers = {ja_of[k] for k in keys}
    deletion = [
        "3" if h == "異動区分" else (cell if h in key_headers else "")
        for h, cell in zip(header, row, strict=True)
    ]
    [(parsed, record)] = read_bytes(csv_bytes(header, [deletion]), fmt)
    assert parsed.errors == []
    assert record is not None
    assert record.change == "delete"
    [(_, added)] = read_bytes(csv_bytes(header, [row]), fmt)
    assert added is not None
    assert record.key == added.key
    # The key cells stay required on a deletion.
    for key in keys:
        blank = with_cells(header, deletion, **{ja_of[key]: ""})
        [(parsed, record)] = read_bytes(csv_bytes(header, [blank]), fmt)
        assert record is None
        assert (2, ja_of[key], "required") in [(e.line, e.column, e.code) for e in parsed.errors]


@pytest.mark.parametrize("name", NAMES)
def test_an_add_row_needs_its_documented_cells(name: str) -> None:
    module = format_docs.modules()[name]
    fmt = FORMATS[name]
    header, row = first_add_row(name)
    ja_of = {c.key: c.ja for c in fmt.columns}
    for key in module.REQUIRED_ON_ADD:
        blank = with_cells(header, row, **{ja_of[key]: ""})
        [(parsed, record)] = read_bytes(csv_bytes(header, [blank]), fmt)
        assert record is None, key
        assert [e.code for e in parsed.errors] == ["required"], (key, parsed.errors)


@pytest.mark.parametrize("name", NAMES)
def test_the_key_makes_the_same_row_the_same_record_whatever_the_spelling(name: str) -> None:
    fmt = FORMATS[name]
    header, row = first_add_row(name)
    fullwidth = str.maketrans("0123456789-", "０１２３４５６７８９－")
    respelled = [
        cell.translate(fullwidth) if h in ("宛名番号", "市町村コード") else cell
        for h, cell in zip(header, row, strict=True)
    ]
    [(_, first)] = read_bytes(csv_bytes(header, [row]), fmt)
    [(_, second)] = read_bytes(csv_bytes(header, [respelled], "cp932"), fmt)
    assert first is not None
    assert second is not None
    assert first.key == second.key
    assert resources_of(fmt, first) == resources_of(fmt, second)


def test_a_one_cell_name_is_split_at_its_first_space_and_hiragana_kana_become_katakana() -> None:
    fmt = FORMATS["vaccination"]
    header = ["市町村コード", "宛名番号", "氏名", "カナ氏名", "生年月日", "性別", "ワクチン",
              "接種回", "接種日"]  # fmt: skip
    [(row, record)] = read_bytes(
        csv_bytes(
            header,
            [
                [
                    "102016",
                    "12",
                    "赤城　陽翔",
                    "あかぎ はると",
                    "R6.3.5",
                    "男",
                    "BCG",
                    "1",
                    "2024-08-20",
                ]
            ],
        ),
        fmt,
    )
    assert row.errors == []
    assert record is not None
    person = record.subject
    assert (person.family, person.given) == ("赤城", "陽翔")
    assert (person.family_kana, person.given_kana) == ("アカギ", "ハルト")
    assert person.birth_date == date(2024, 3, 5)
    assert person.sex == "male"
    [(row, record)] = read_bytes(
        csv_bytes(
            header, [["102016", "12", "赤城陽翔", "", "R6.3.5", "男", "BCG", "1", "2024-08-20"]]
        ),
        fmt,
    )
    assert [(e.column, e.code) for e in row.errors] == [("氏名", "name_split")]


def test_the_mother_needs_her_resident_number_and_her_name() -> None:
    fmt = FORMATS["vaccination"]
    header, row = first_add_row("vaccination")
    [(parsed, _)] = read_bytes(csv_bytes(header, [with_cells(header, row, 母の宛名番号="")]), fmt)
    assert [(e.column, e.code) for e in parsed.errors] == [("母の宛名番号", "required")]
    [(parsed, _)] = read_bytes(csv_bytes(header, [with_cells(header, row, 母の氏名="")]), fmt)
    assert [(e.column, e.code) for e in parsed.errors] == [("母の氏名", "required")]
    no_mother = with_cells(header, row, 母の宛名番号="", 母の氏名="", 母の生年月日="")
    [(parsed, record)] = read_bytes(csv_bytes(header, [no_mother]), fmt)
    assert parsed.errors == []
    assert record is not None
    assert record.mother is None
    [(parsed, record)] = read_bytes(csv_bytes(header, [row]), fmt)
    assert record is not None
    assert record.mother is not None
    assert record.mother.kind == "mother"
    assert record.mother.resident_number == "0002100003"
    assert (record.mother.family, record.mother.given) == ("赤城", "美咲")


def test_a_family_that_moved_in_carries_its_previous_municipality() -> None:
    fmt = FORMATS["infant_checkup"]
    rows = read_sample("infant_checkup", fmt)
    moved = [r for _, r in rows if r is not None and r.subject.previous_municipality_code]
    assert len(moved) == 1
    person = moved[0].subject
    assert (person.previous_municipality_code, person.previous_resident_number) == (
        TAKASAKI,
        "2000456",
    )
    assert person.moved_in == date(2024, 4, 1)
    header, row = first_add_row("infant_checkup")
    bad = with_cells(header, row, 転入前宛名番号="123")
    [(parsed, _)] = read_bytes(csv_bytes(header, [bad]), fmt)
    assert [(e.column, e.code) for e in parsed.errors] == [("転入前市町村コード", "required")]
    same = with_cells(header, row, 転入前市町村コード=MAEBASHI, 転入前宛名番号="123")
    [(parsed, _)] = read_bytes(csv_bytes(header, [same]), fmt)
    assert [(e.column, e.code) for e in parsed.errors] == [
        ("転入前市町村コード", "same_municipality")
    ]


def test_the_encounter_reference_is_the_id_the_store_gives_the_rows_encounter() -> None:
    fmt = FORMATS["infant_checkup"]
    _, record = read_sample("infant_checkup", fmt)[1]
    assert record is not None
    items = dict(resources_of(fmt, record))
    source = store.Source(fmt.source_system(MAEBASHI), f"{record.key}#encounter")
    encounter_id = store.source_resource_id("Encounter", source)
    for name, resource in items.items():
        if name != "encounter":
            assert resource["encounter"] == {"reference": f"Encounter/{encounter_id}"}


def test_the_code_systems_and_codes_are_the_ones_the_demo_family_has() -> None:
    from phr import demo

    assert common.CHECKUP_TYPE_SYSTEM == demo.CHECKUP_TYPE_SYSTEM
    assert common.JUDGEMENT_SYSTEM == demo.JUDGEMENT_SYSTEM
    assert common.VACCINE_SYSTEM == demo.VACCINE_SYSTEM
    assert common.EPISODE_TYPE_SYSTEM == demo.EPISODE_TYPE_SYSTEM
    assert common.JP_BODY_CODES.items() >= demo.JP_BODY_CODES.items()
    for checkup in demo.CHECKUPS:
        assert infant_checkup.KINDS[checkup.kind].name == checkup.name
    assert set(demo.VACCINES) <= set(vaccination.VACCINES)
    for dose in demo.SCHEDULE:
        v = vaccination.VACCINES[dose.vaccine]
        assert dose.number <= v.doses
        assert v.series_of(dose.number).label == dose.series


def test_every_code_of_our_code_systems_is_documented() -> None:
    text = (DOCS / "codesystems.md").read_text(encoding="utf-8")
    codes = [
        *infant_checkup.KINDS,
        *infant_checkup.JUDGEMENT_CODES,
        *vaccination.VACCINES,
        *common.DIPSTICK_CODES,
        *school_checkup.VISION_CODES,
    ]
    for code in codes:
        assert f"| `{code}` |" in text, code
    for system in (
        common.CHECKUP_TYPE_SYSTEM,
        common.JUDGEMENT_SYSTEM,
        common.VACCINE_SYSTEM,
        common.EPISODE_TYPE_SYSTEM,
        common.URINE_DIPSTICK_SYSTEM,
        common.SCHOOL_CHECKUP_SYSTEM,
        common.SCHOOL_GRADE_SYSTEM,
        common.VISION_CLASS_SYSTEM,
    ):
        assert f"`{system}`" in text, system


def test_every_item_the_formats_write_is_in_the_dictionary_with_the_formats_codes() -> None:
    for key in (
        [f.key for f in infant_checkup.FINDINGS]
        + [key for key, *_ in infant_checkup.URINE]
        + [key for key, *_ in school_checkup.VISION + school_checkup.HEARING + school_checkup.TEETH]
        + ["fetus_count", "edd", "gestational_age", "birth_weight", "checkup_judgement"]
    ):
        item = terminology.item(key)
        assert item.loinc or item.local


def test_the_timeline_labels_and_shows_a_value_for_every_observation() -> None:
    for name in NAMES:
        fmt = FORMATS[name]
        for _, record in read_sample(name, fmt):
            assert record is not None
            for item, resource in fmt.resources(record, SUBJECT, None):
                kind = resource["resourceType"]
                assert selectors._label(kind, resource, "ja"), (name, item)
                if kind in ("Observation", "Immunization"):
                    assert selectors._entry_value(kind, resource, "ja"), (name, item)


# --------------------------------------------------------------------------
# Infant checkups
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "code"),
    [
        ("1か月", "1m"),
        ("1か月児健診", "1m"),
        ("１ヶ月児", "1m"),
        ("3～4か月", "3-4m"),
        ("3-4か月", "3-4m"),
        ("3~4m", "3-4m"),
        ("4か月児健康診査", "3-4m"),
        ("3-4m", "3-4m"),
        ("6〜7ヵ月", "6-7m"),
        ("9～10ケ月児", "9-10m"),
        ("18m", "18m"),
        ("1y6m", "18m"),
        ("1歳6か月児健診", "18m"),
        ("1歳半", "18m"),
        ("3歳児健康診査", "3y"),
        ("3y", "3y"),
        ("5歳児", "5y"),
    ],
)
def test_checkup_kinds_are_read_in_their_many_spellings(written: str, code: str) -> None:
    assert infant_checkup.checkup_kind(tabular.normalize(written)) == code


@pytest.mark.parametrize("written", ["2か月", "1歳", "4歳児", "健診", "x"])
def test_unknown_checkup_kinds_are_refused(written: str) -> None:
    with pytest.raises(tabular.FieldError) as error:
        infant_checkup.checkup_kind(written)
    assert error.value.code == "checkup_kind"
    assert written in error.value.ja


@pytest.mark.parametrize(
    ("written", "months"),
    [("4", 4), ("4か月", 4), ("1歳6か月", 18), ("3歳2か月15日", 38), ("3y2m", 38), ("42", 42)],
)
def test_the_age_at_the_checkup_is_read_in_months(written: str, months: int) -> None:
    assert infant_checkup.age_months(written) == months


@pytest.mark.parametrize(
    ("birth", "day", "months"),
    [
        (date(2024, 3, 5), date(2024, 4, 4), 0),
        (date(2024, 3, 5), date(2024, 4, 5), 1),
        (date(2024, 1, 31), date(2024, 2, 29), 1),  # a shorter month ends on its last day
        (date(2022, 11, 12), date(2026, 1, 20), 38),
    ],
)
def test_completed_months_of_age(birth: date, day: date, months: int) -> None:
    assert common.months_between(birth, day) == months


def test_weight_in_grams_is_written_in_kg_and_must_agree_with_the_kg_column() -> None:
    fmt = FORMATS["infant_checkup"]
    header, row = first_add_row("infant_checkup")
    header = [*header, "体重（g）"]
    no_kg = with_cells(header[:-1], row, 体重="")
    [(parsed, record)] = read_bytes(csv_bytes(header, [[*no_kg, "4420"]]), fmt)
    assert parsed.errors == []
    assert record is not None
    weight = dict(resources_of(fmt, record))["body-weight"]
    assert weight["valueQuantity"] == {
        "value": 4.42,
        "unit": "kg",
        "system": "http://unitsofmeasure.org",
        "code": "kg",
    }
    [(parsed, _)] = read_bytes(csv_bytes(header, [[*row, "4900"]]), fmt)
    assert [(e.column, e.code) for e in parsed.errors] == [("体重（g）", "conflict")]
    [(parsed, _)] = read_bytes(csv_bytes(header, [[*no_kg, "44200"]]), fmt)
    assert [(e.column, e.code) for e in parsed.errors] == [("体重（g）", "implausible")]


def test_length_is_lying_up_to_18_months_and_height_standing_from_3_years() -> None:
    fmt = FORMATS["infant_checkup"]
    items = {}
    for _, record in read_sample("infant_checkup", fmt):
        if record is not None and record.change != "delete":
            items[record.values["kind"]] = dict(resources_of(fmt, record))
    assert "body-length" in items["1m"]
    assert "body-height" not in items["1m"]
    assert items["1m"]["body-length"]["code"]["coding"][0]["code"] == "8306-3"
    assert "body-height" in items["3y"]
    assert "body-length" not in items["3y"]
    assert items["3y"]["body-height"]["code"]["coding"][0]["code"] == "8302-2"


def test_birth_data_are_dated_on_the_birth_day_and_days_of_gestation_kept_in_a_note() -> None:
    fmt = FORMATS["infant_checkup"]
    _, record = read_sample("infant_checkup", fmt)[0]
    assert record is not None
    items = dict(resources_of(fmt, record))
    assert items["birth-weight"]["effectiveDateTime"] == "2024-03-05"
    assert items["birth-weight"]["valueQuantity"]["value"] == 3050
    gestation = items["gestational-age-at-birth"]
    assert gestation["valueQuantity"]["value"] == 39
    assert gestation["note"] == [{"text": "在胎39週2日"}]
    assert items["encounter"]["period"] == {"start": "2024-04-08", "end": "2024-04-08"}
    assert items["encounter"]["serviceProvider"]["identifier"]["value"] == MAEBASHI


@pytest.mark.parametrize(
    ("written", "code"),
    [("1", "no-findings"), ("異常なし", "no-findings"), ("要観察", "observation"),
     ("要精検", "referral"), ("要精密検査", "referral"), ("治療中", "under-treatment"),
     ("要医療", "treatment"), ("2", "findings"), ("要指導", "guidance")],
)  # fmt: skip
def test_judgements(written: str, code: str) -> None:
    assert infant_checkup.judgement(written) == code


@pytest.mark.parametrize(
    ("written", "code"),
    [("-", "negative"), ("−", "negative"), ("(-)", "negative"), ("陰性", "negative"),
     ("±", "trace"), ("+", "1+"), ("1+", "1+"), ("++", "2+"), ("3+", "3+"), ("++++", "4+")],
)  # fmt: skip
def test_urine_test_strip_results(written: str, code: str) -> None:
    assert common.dipstick(tabular.normalize(written)) == code


@pytest.mark.parametrize(
    ("written", "code"),
    [("1", "no-findings"), ("所見なし", "no-findings"), ("異常なし", "no-findings"),
     ("-", "no-findings"), ("2", "findings"), ("所見あり", "findings"), ("+", "findings")],
)  # fmt: skip
def test_findings_are_all_or_nothing(written: str, code: str) -> None:
    assert common.finding(written) == code


@pytest.mark.parametrize("written", ["・", "()", "3", "要観察", "?"])
def test_anything_else_is_not_a_finding(written: str) -> None:
    with pytest.raises(tabular.FieldError):
        common.finding(written)


# --------------------------------------------------------------------------
# Vaccinations
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vaccine", "written", "series", "number", "label"),
    [
        ("五種混合", "1", "", 1, "1期初回"),
        ("5種混合", "第1期初回2回目", "", 2, "1期初回"),
        ("DPT-IPV-Hib", "第Ⅰ期追加", "", 4, "1期追加"),
        ("5種混合", "第1期追加4回目", "", 4, "1期追加"),
        ("5種混合", "3", "第1期初回", 3, "1期初回"),
        ("四種混合", "追加", "", 4, "1期追加"),
        ("ヒブ", "初回3回目", "", 3, "初回"),
        ("小児用肺炎球菌", "追加", "", 4, "追加"),
        ("PCV20", "1期初回2回目", "", 2, "初回"),
        ("B型肝炎", "3回目", "", 3, ""),
        ("ロタテック", "3", "", 3, ""),
        ("MR", "第2期", "", 2, "第2期"),
        ("麻しん風しん混合", "1期", "", 1, "第1期"),
        ("日本脳炎", "第1期追加", "", 3, "第1期追加"),
        ("日本脳炎", "第2期", "", 4, "第2期"),
        ("日本脳炎", "2", "第1期初回", 2, "第1期初回"),
        ("二種混合", "第2期", "", 1, "第2期"),
        ("シルガード9", "二回目", "", 2, ""),
    ],
)
def test_doses_resolve_to_the_dose_of_the_whole_schedule(
    vaccine: str, written: str, series: str, number: int, label: str
) -> None:
    code = vaccination.vaccine(tabular.normalize(vaccine))
    spec = vaccination.dose(tabular.normalize(written))
    if series:
        given = vaccination.series_column(series)
        spec = vaccination.DoseSpec(given.period, given.part, spec.number)
    v = vaccination.VACCINES[code]
    assert vaccination.resolve(v, spec) == number
    assert v.series_of(number).label == label


@pytest.mark.parametrize(
    ("vaccine", "written", "code"),
    [
        ("5種混合", "5", "dose_beyond_schedule"),
        ("ロタリックス", "3", "dose_beyond_schedule"),
        ("BCG", "2回目", "dose_beyond_schedule"),
        ("MR", "第1期2回目", "dose_beyond_schedule"),
        ("5種混合", "第2期", "dose_series"),
        ("B型肝炎", "追加", "dose_series"),
        ("5種混合", "第1期初回", "dose_number"),
        ("日本脳炎", "第1期", "dose_ambiguous"),
    ],
)
def test_doses_outside_the_schedule_are_refused(vaccine: str, written: str, code: str) -> None:
    v = vaccination.VACCINES[vaccination.vaccine(vaccine)]
    with pytest.raises(vaccination.DoseProblem) as problem:
        vaccination.resolve(v, vaccination.dose(written))
    assert problem.value.code == code
    assert v.name in problem.value.ja


@pytest.mark.parametrize("written", ["インフルエンザ", "おたふくかぜ", "コロナ", "MMR"])
def test_vaccines_outside_the_routine_schedule_are_refused(written: str) -> None:
    with pytest.raises(tabular.FieldError) as error:
        vaccination.vaccine(written)
    assert error.value.code == "vaccine"
    assert written in error.value.ja


def test_every_vaccine_spelling_means_one_vaccine() -> None:
    seen: dict[str, str] = {}
    for v in vaccination.VACCINES.values():
        for spelling in (v.code, v.name, *v.aliases):
            assert vaccination.vaccine(tabular.normalize(spelling)) == v.code, spelling
            key = vaccination._vaccine_key(spelling)
            assert seen.setdefault(key, v.code) == v.code, spelling


def test_the_immunization_names_the_clinic_the_lot_and_the_dose() -> None:
    fmt = FORMATS["vaccination"]
    _, record = read_sample("vaccination", fmt)[3]
    assert record is not None
    [(item, resource)] = resources_of(fmt, record)
    assert item == "immunization"
    assert record.key == "0002100011|dtap-ipv-hib|4"
    assert resource["protocolApplied"] == [{"doseNumberPositiveInt": 4, "series": "1期追加"}]
    assert resource["lotNumber"] == "GB25C11"
    assert resource["performer"] == [
        {
            "actor": {
                "identifier": {
                    "system": "http://jpfhir.jp/fhir/core/IdSystem/insurance-medical-institution-no",
                    "value": "1010123451",
                },
                "display": "まえばし小児科クリニック",
            }
        }
    ]
    assert resource["vaccineCode"]["coding"][0]["code"] == "dtap-ipv-hib"


# --------------------------------------------------------------------------
# Pregnancy
# --------------------------------------------------------------------------


def pregnancy_row(notified: date, due: date | None, weeks: str = "") -> list[str]:
    return [
        "1", MAEBASHI, "0002200019", "小野", "千尋", "1996-02-03", "102016-2026-00187",
        notified.isoformat(), due.isoformat() if due else "", weeks,
    ]  # fmt: skip


PREGNANCY_HEADER = ["異動区分", "市町村コード", "宛名番号", "氏名（姓）", "氏名（名）", "生年月日",
                    "母子健康手帳番号", "届出日", "出産予定日", "届出時妊娠週数"]  # fmt: skip


def test_a_pregnancy_is_an_active_episode_with_the_handbook_and_the_due_date() -> None:
    fmt = FORMATS["pregnancy"]
    today = common.today()
    notified, due = today - timedelta(days=40), today + timedelta(days=170)
    [(row, record)] = read_bytes(csv_bytes(PREGNANCY_HEADER, [pregnancy_row(notified, due)]), fmt)
    assert row.errors == []
    assert record is not None
    assert record.subject.kind == "mother"
    assert record.subject.mch_handbook_number == "102016-2026-00187"
    assert record.subject.sex == "female"
    assert record.mother is None
    items = dict(resources_of(fmt, record))
    episode = items["episode"]
    assert episode["status"] == "active"
    assert episode["identifier"] == [
        {"system": "urn:hagukumi:mch-handbook:102016", "value": "102016-2026-00187"}
    ]
    assert episode["period"] == {"start": notified.isoformat()}
    edd = items["due-date"]
    assert edd["code"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "11778-8",
        "display": "Delivery date estimated",
    }
    assert edd["valueDateTime"] == due.isoformat()
    assert edd["effectiveDateTime"] >= episode["period"]["start"]


def test_a_pregnancy_long_past_its_due_date_is_written_finished() -> None:
    values = {"notification_date": date(2020, 1, 6), "due_date": date(2020, 8, 1)}
    assert pregnancy.status(values, date(2020, 9, 25)) == "active"
    assert pregnancy.status(values, date(2020, 9, 27)) == "finished"
    without_due = {"notification_date": date(2020, 1, 6), "due_date": None}
    assert pregnancy.status(without_due, date(2020, 12, 1)) == "active"
    assert pregnancy.status(without_due, date(2021, 1, 20)) == "finished"


@pytest.mark.parametrize(
    ("written", "count"), [("1", 1), ("単胎", 1), ("双胎", 2), ("品胎", 3), ("2人", 2)]
)
def test_fetus_counts(written: str, count: int) -> None:
    assert pregnancy.fetus_count(written) == count


@pytest.mark.django_db
def test_the_emergency_summary_reads_the_pregnancy_and_due_date_a_notification_writes() -> None:
    from phr import services
    from phr.models import Patient, Provenance, Resource
    from sharing import emergency
    from tests import factories as f

    fmt = FORMATS["pregnancy"]
    today = common.today()
    notified, due = today - timedelta(days=30), today + timedelta(days=200)
    weeks = (280 - (due - notified).days) // 7
    [(row, record)] = read_bytes(
        csv_bytes(PREGNANCY_HEADER, [pregnancy_row(notified, due, f"{weeks}週")]), fmt
    )
    assert row.errors == []
    assert record is not None
    mother = f.make_patient(kind=Patient.Kind.ADULT, given="千尋", birth_date=date(1996, 2, 3))
    provenance = services.provenance_create(origin=Provenance.Origin.MUNICIPALITY)
    system = fmt.source_system(MAEBASHI)
    for item, resource in fmt.resources(record, str(mother.pk), None):
        store.record_write(
            resource, provenance=provenance, source=store.Source(system, f"{record.key}#{item}")
        )
    rows = Resource.objects.filter(compartments__overlap=[mother.pk])
    facts = emergency._collect(mother, rows, viewer=None)
    assert facts.pregnancy is not None
    assert facts.due_date == due
    assert facts.gestation_days == 280 - 200


@pytest.mark.django_db
def test_a_checkup_written_through_the_store_points_at_its_stored_encounter() -> None:
    from phr import services
    from phr.models import Provenance, Resource
    from tests import factories as f

    fmt = FORMATS["infant_checkup"]
    _, record = read_sample("infant_checkup", fmt)[1]
    assert record is not None
    child = f.make_patient(birth_date=date(2024, 3, 5))
    provenance = services.provenance_create(origin=Provenance.Origin.MUNICIPALITY)
    system = fmt.source_system(MAEBASHI)
    written = {}
    for item, resource in fmt.resources(record, str(child.pk), None):
        rid, _, _ = store.record_write(
            resource, provenance=provenance, source=store.Source(system, f"{record.key}#{item}")
        )
        written[item] = rid
    encounter = Resource.objects.get(pk=written["encounter"])
    assert encounter.resource_type == "Encounter"
    weight = Resource.objects.get(pk=written["body-weight"])
    assert weight.content["encounter"] == {"reference": f"Encounter/{encounter.pk}"}
    assert weight.category == "infant_checkups"
    assert weight.compartments == [child.pk]


# --------------------------------------------------------------------------
# School checkups
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "parsed"),
    [("小1", ("e", 1)), ("小学2年", ("e", 2)), ("小学校3年生", ("e", 3)), ("1年(小)", ("e", 1)),
     ("中2", ("j", 2)), ("中学３年", ("j", 3)), ("高1", ("h", 1)), ("高校2年", ("h", 2)),
     ("三年", (None, 3)), ("1年", (None, 1)), ("義務教育学校7年", ("c", 7))],
)  # fmt: skip
def test_grades(written: str, parsed: tuple[str | None, int]) -> None:
    assert school_checkup.grade(tabular.normalize(written)) == parsed


@pytest.mark.parametrize(
    ("birth", "day", "index"),
    [
        (date(2019, 8, 17), date(2026, 5, 12), 1),
        (date(2020, 4, 1), date(2026, 5, 12), 1),  # born 1 April: the year before
        (date(2020, 4, 2), date(2026, 5, 12), 0),
        (date(2020, 2, 28), date(2027, 3, 1), 1),  # March belongs to the school year before
        (date(2012, 10, 22), date(2026, 5, 20), 8),
    ],
)
def test_the_grade_a_birth_date_gives(birth: date, day: date, index: int) -> None:
    assert school_checkup.expected_grade_index(birth, day) == index


@pytest.mark.parametrize(
    ("written", "letter"),
    [("A", "A"), ("ｂ", "B"), ("C", "C"), ("D", "D"), ("1.2", "A"), ("1.0", "A"), ("0.9", "B"),
     ("0.7", "B"), ("0.6", "C"), ("0.3", "C"), ("0.2", "D")],
)  # fmt: skip
def test_vision_classes_and_decimal_acuity(written: str, letter: str) -> None:
    assert school_checkup.vision(tabular.normalize(written))[0] == letter


def test_a_bare_grade_takes_its_level_from_the_school_type_column() -> None:
    fmt = FORMATS["school_checkup"]
    header, row = first_add_row("school_checkup")
    header = [*header, "学校種別"]
    rows = [[*with_cells(header[:-1], row, 学校名="はぐくみ学園", 学年="1年"), "小学校"]]
    [(parsed, record)] = read_bytes(csv_bytes(header, rows), fmt)
    assert parsed.errors == []
    assert record is not None
    assert record.values["grade_code"] == "e1"
    encounter = dict(resources_of(fmt, record))["encounter"]
    assert encounter["type"][1]["coding"][0]["code"] == "e1"
    assert encounter["serviceProvider"] == {"display": "はぐくみ学園"}


# --------------------------------------------------------------------------
# Random valid rows (hypothesis)
# --------------------------------------------------------------------------

TODAY = date(2026, 11, 1)  # generated dates stay before the real today
FAMILY = ("前橋", "赤城", "榛名", "高崎", "桐生", "渡邉", "齋藤", "髙橋", "佐藤", "伊勢崎")
GIVEN = ("陽翔", "結菜", "蓮", "さくら", "湊", "芽依", "大和", "葵", "悠真", "千尋")
KANA = ("マエバシ", "アカギ", "ハルナ", "タカサキ", "キリュウ", "ハルト", "ユイナ", "レン")
CLINICS = ("1010123451", "1010234563", "3010123457")


def era(day: date) -> str:
    if day >= date(2019, 5, 1):
        return f"R{day.year - 2018}.{day.month}.{day.day}"
    if day >= date(1989, 1, 8):
        return f"H{day.year - 1988}.{day.month}.{day.day}"
    return f"S{day.year - 1925}.{day.month}.{day.day}"


@st.composite
def date_text(draw: st.DrawFn, day: date) -> str:
    style = draw(st.sampled_from(("iso", "compact", "slash", "kanji", "era", "fullwidth")))
    if style == "iso":
        return day.isoformat()
    if style == "compact":
        return day.strftime("%Y%m%d")
    if style == "slash":
        return f"{day.year}/{day.month}/{day.day}"
    if style == "kanji":
        return f"{day.year}年{day.month}月{day.day}日"
    if style == "era":
        return era(day)
    return day.isoformat().translate(str.maketrans("0123456789-", "０１２３４５６７８９－"))


def decimal_text(low: str, high: str, places: int) -> st.SearchStrategy[str]:
    return st.decimals(Decimal(low), Decimal(high), places=places).map(str)


def person_cells(draw: st.DrawFn, birth: date, sex: bool = True) -> dict[str, str]:
    cells = {
        "change": draw(st.sampled_from(("1", "2", "", "新規", "変更", "A", "U"))),
        "municipality_code": MAEBASHI,
        "resident_number": draw(st.from_regex(r"[0-9]{1,15}", fullmatch=True)),
        "birth_date": draw(date_text(birth)),
    }
    family, given = draw(st.sampled_from(FAMILY)), draw(st.sampled_from(GIVEN))
    if draw(st.booleans()):
        cells["family_name"], cells["given_name"] = family, given
    else:
        cells["name"] = f"{family}　{given}"
    if draw(st.booleans()):
        cells["family_kana"], cells["given_kana"] = (
            draw(st.sampled_from(KANA)),
            draw(st.sampled_from(KANA)),
        )
    if sex:
        cells["sex"] = draw(st.sampled_from(("1", "2", "男", "女", "M", "F")))
    return cells


def maybe(draw: st.DrawFn, strategy: st.SearchStrategy[str]) -> str:
    return draw(strategy) if draw(st.booleans()) else ""


@st.composite
def infant_rows(draw: st.DrawFn) -> dict[str, str]:
    kind = infant_checkup.KINDS[draw(st.sampled_from(tuple(infant_checkup.KINDS)))]
    day = draw(st.dates(date(2016, 1, 1), TODAY))
    months = draw(st.integers(*kind.ages))
    birth = day - timedelta(days=int(months * 30.4375) + draw(st.integers(0, 20)))
    age = common.months_between(birth, day)
    assume(kind.ages[0] <= age <= kind.ages[1])
    cells = person_cells(draw, birth)
    spellings = {
        "1m": ("1か月", "1か月児健診", "1m", "１ヶ月"),
        "3-4m": ("3～4か月", "3-4か月", "3~4m", "4か月児"),
        "6-7m": ("6～7か月", "6〜7ヵ月児健診", "6-7m"),
        "9-10m": ("9～10か月", "9-10m", "10か月児"),
        "18m": ("1歳6か月", "18m", "1y6m", "1歳半"),
        "3y": ("3歳", "3歳児健康診査", "3y"),
        "5y": ("5歳", "5歳児", "5y"),
    }[kind.code]
    cells["kind"] = draw(st.sampled_from(spellings))
    cells["date"] = draw(date_text(day))
    cells["age_months"] = maybe(draw, st.sampled_from((str(age), f"{age}か月")))
    cells["birth_weight"] = maybe(draw, st.integers(400, 5500).map(str))
    cells["gestational_age"] = maybe(
        draw,
        st.tuples(st.integers(22, 44), st.integers(0, 6)).map(
            lambda wd: f"{wd[0]}週{wd[1]}日" if wd[1] else f"{wd[0]}"
        ),
    )
    cells["body_height"] = maybe(draw, decimal_text(*kind.height, 1))
    cells["body_weight"] = maybe(draw, decimal_text(*kind.weight, 2))
    cells["head_circumference"] = maybe(draw, decimal_text(*kind.head, 1))
    cells["chest_circumference"] = maybe(draw, decimal_text(*kind.chest, 1))
    cells["judgement"] = maybe(
        draw, st.sampled_from(("所見なし", "異常なし", "要観察", "要精密検査", "治療中", "1", "2"))
    )
    for f in infant_checkup.FINDINGS:
        cells[f.key] = maybe(draw, st.sampled_from(("所見なし", "所見あり", "1", "2")))
    for key, *_ in infant_checkup.URINE:
        cells[key] = maybe(draw, st.sampled_from(("－", "-", "±", "+", "2+", "3+")))
    if draw(st.booleans()):
        cells["mother_resident_number"] = draw(st.from_regex(r"9[0-9]{1,10}", fullmatch=True))
        cells["mother_name"] = f"{draw(st.sampled_from(FAMILY))} {draw(st.sampled_from(GIVEN))}"
        mother_birth = birth - timedelta(days=draw(st.integers(16 * 366, 44 * 365)))
        cells["mother_birth_date"] = draw(date_text(mother_birth))
    return cells


@st.composite
def vaccination_rows(draw: st.DrawFn) -> dict[str, str]:
    v = vaccination.VACCINES[draw(st.sampled_from(tuple(vaccination.VACCINES)))]
    number = draw(st.integers(1, v.doses))
    series = v.series_of(number)
    start = next(s for candidate, s in v.starts() if candidate == series)
    birth = draw(st.dates(date(2008, 1, 1), TODAY - timedelta(days=60)))
    day = draw(st.dates(birth, TODAY))
    cells = person_cells(draw, birth)
    cells["vaccine"] = draw(st.sampled_from((v.code, v.name, *v.aliases)))
    period = f"第{series.period}期" if series.period else ""
    part = series.part or ""
    forms = [str(number), f"{number}回目"]
    if period or part:
        within = number - start + 1
        forms.append(f"{period}{part}{within}回目")
        if series.count == 1:
            forms.append(f"{period}{part}")
    cells["dose"] = draw(st.sampled_from(forms))
    cells["date"] = draw(date_text(day))
    cells["lot_number"] = maybe(draw, st.from_regex(r"[A-Z]{1,3}[0-9]{2,6}", fullmatch=True))
    if draw(st.booleans()):
        cells["clinic_code"] = draw(st.sampled_from(CLINICS))
    cells["clinic_name"] = maybe(draw, st.sampled_from(("まえばし小児科", "あかぎクリニック")))
    return cells


@st.composite
def pregnancy_rows(draw: st.DrawFn) -> dict[str, str]:
    notified = draw(st.dates(date(2005, 1, 1), TODAY))
    days_pregnant = draw(st.integers(4 * 7, 40 * 7))
    due = notified + timedelta(days=280 - days_pregnant)
    birth = notified - timedelta(days=draw(st.integers(15 * 366, 50 * 365)))
    cells = person_cells(draw, birth, sex=False)
    cells["mch_handbook_number"] = draw(
        st.from_regex(r"102016-20[0-9]{2}-[0-9]{5}", fullmatch=True)
    )
    cells["notification_date"] = draw(date_text(notified))
    cells["due_date"] = maybe(draw, date_text(due))
    if cells["due_date"]:
        weeks, days = divmod(days_pregnant + draw(st.integers(-7, 7)), 7)
        cells["gestational_age"] = maybe(
            draw, st.sampled_from((f"{weeks}", f"{weeks}週{days}日", f"{weeks}+{days}"))
        )
    cells["fetus_count"] = maybe(draw, st.sampled_from(("1", "2", "単胎", "双胎", "品胎")))
    return cells


@st.composite
def school_rows(draw: st.DrawFn) -> dict[str, str]:
    day = draw(st.dates(date(2012, 4, 1), TODAY))
    index = draw(st.integers(1, 12))
    cohort = common.fiscal_year(day) - 6 - index
    birth = draw(st.dates(date(cohort, 4, 2), date(cohort + 1, 4, 1)))
    code = school_checkup.index_code(index)
    cells = person_cells(draw, birth)
    level, year = code[0], int(code[1:])
    name = {"e": "小学校", "j": "中学校", "h": "高等学校"}[level]
    cells["school_name"] = f"前橋市立はぐくみ{name}"
    short = {"e": "小", "j": "中", "h": "高"}[level]
    cells["grade"] = draw(
        st.sampled_from((f"{short}{year}", f"{short[0]}学{year}年" if level != "h" else
                         f"高校{year}年", f"{year}年"))
    )  # fmt: skip
    cells["date"] = draw(date_text(day))
    cells["body_height"] = maybe(draw, decimal_text(*school_checkup.HEIGHT_BOUNDS, 1))
    cells["body_weight"] = maybe(draw, decimal_text(*school_checkup.WEIGHT_BOUNDS, 1))
    for key, *_ in school_checkup.VISION:
        cells[key] = maybe(draw, st.sampled_from(("A", "B", "C", "D", "1.5", "0.8", "0.4", "0.1")))
    for key, *_ in school_checkup.HEARING:
        cells[key] = maybe(draw, st.sampled_from(("異常なし", "所見あり", "1", "2")))
    teeth = draw(st.lists(st.integers(0, 10), min_size=3, max_size=3))
    for (key, *_), count in zip(school_checkup.TEETH, teeth, strict=True):
        cells[key] = maybe(draw, st.just(str(count)))
    for key, *_ in school_checkup.URINE:
        cells[key] = maybe(draw, st.sampled_from(("－", "±", "+", "2+")))
    return cells


STRATEGIES = {
    "infant_checkup": infant_rows,
    "vaccination": vaccination_rows,
    "pregnancy": pregnancy_rows,
    "school_checkup": school_rows,
}


def file_of(fmt: MunicipalFormat, rows: list[dict[str, str]], japanese: bool, sjis: bool) -> bytes:
    keys = [c.key for c in fmt.columns if any(c.key in row for row in rows)]
    header = [next(c.ja for c in fmt.columns if c.key == k) if japanese else k for k in keys]
    body = [[row.get(k, "") for k in keys] for row in rows]
    return csv_bytes(header, body, "cp932" if sjis else "utf-8")


def records_of(data: bytes, fmt: MunicipalFormat) -> Iterator[MunicipalRecord]:
    for row, record in read_bytes(data, fmt):
        assert row.errors == [], [e.as_dict() for e in row.errors]
        assert record is not None
        yield record


@pytest.mark.parametrize("name", NAMES)
def test_random_valid_rows_map_to_valid_fhir_indexed_under_the_formats_category(
    name: str,
) -> None:
    fmt = FORMATS[name]

    @settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(
        rows=st.lists(STRATEGIES[name](), min_size=1, max_size=4),
        japanese=st.booleans(),
        sjis=st.booleans(),
    )
    def check(rows: list[dict[str, str]], japanese: bool, sjis: bool) -> None:
        for record in records_of(file_of(fmt, rows, japanese, sjis), fmt):
            if record.change == "delete":  # pragma: no cover - never generated
                continue
            assert_valid_and_indexed(fmt, record)

    check()


@pytest.mark.parametrize("name", NAMES)
def test_any_cell_text_gives_a_record_or_row_errors_never_an_exception(name: str) -> None:
    """to_record runs inside the import job: whatever a cell holds, it
    reports the row, it never raises; what it accepts still maps to valid
    FHIR."""
    fmt = FORMATS[name]
    header, rows = sample_header_and_rows(name)
    cell_text = st.one_of(
        st.text(max_size=12),
        st.sampled_from(("0", "-1", "9999-12-31", "R99.1.1", "00010101", "999", "1e3", "NaN")),
        st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3})?", fullmatch=True),
    )

    @settings(suppress_health_check=[HealthCheck.too_slow])
    @given(
        row=st.sampled_from(rows),
        changes=st.dictionaries(st.sampled_from(header), cell_text, min_size=1, max_size=4),
    )
    def check(row: list[str], changes: dict[str, str]) -> None:
        changed = with_cells(header, row, **changes)
        changed = [cell.replace("\x00", "") for cell in changed]
        for parsed, record in read_bytes(csv_bytes(header, [changed]), fmt):
            assert (record is None) == bool(parsed.errors)
            if record is not None and record.change != "delete":
                assert_valid_and_indexed(fmt, record)

    check()
