"""The JAHIS e-medication notebook parser (phr/jahis.py): the spec's
example in UTF-8 and Shift_JIS, every record type of the layout, era dates,
the versions, split documents in any order, and garbage (hypothesis): the
parser never raises, and every line it does not use is reported."""

from __future__ import annotations

import csv
import random
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phr import jahis

# Copies of ../shared/reference/data/jahis_tc_* kept in the repository.
REFERENCE = Path(__file__).resolve().parents[2] / "phr" / "reference_data"
SAMPLE_UTF8 = REFERENCE / "jahis_tc_sample_utf8.txt"
SAMPLE_SJIS = REFERENCE / "jahis_tc_sample_sjis.txt"
SPLIT_PART1 = REFERENCE / "jahis_tc_split_part1_example_utf8.txt"
LAYOUT = REFERENCE / "jahis_tc_records.csv"


def sample_text() -> str:
    return SAMPLE_UTF8.read_text(encoding="utf-8")


def only_document(text: str) -> jahis.Document:
    reading = jahis.read(text)
    assert len(reading.documents) == 1, reading
    return reading.documents[0]


def errors(document: jahis.Document) -> list[jahis.Issue]:
    return [i for i in document.issues if i.severity == jahis.ERROR]


# --------------------------------------------------------------------------
# The spec's example (standards.md §1.5)
# --------------------------------------------------------------------------


def test_it_reads_the_spec_example() -> None:
    document = only_document(sample_text())
    assert document.version == "JAHISTC08"
    assert document.output_kind == "1"
    assert document.patient is not None
    assert document.patient.name == "鈴木 太郎"
    assert document.patient.birth_date == date(1958, 3, 3)
    assert errors(document) == []
    (dispensing,) = document.dispensings
    # 5,R020410: 令和2年4月10日
    assert dispensing.date == date(2020, 4, 10)
    assert dispensing.institution is not None
    assert dispensing.institution.name == "株式会社 工業会薬局 駅前店"
    assert dispensing.institution.code10 == "1341234567"
    assert dispensing.dispenser == "薬剤師 太郎"
    assert dispensing.prescriber_org is not None
    assert dispensing.prescriber_org.code10 == "1311234567"
    rp1, rp2 = dispensing.prescriptions
    assert (rp1.doctor, rp1.department) == ("工業会 次郎", "内科")
    assert [d.name for d in rp1.drugs] == ["コリオパンカプセル5mg", "フェロベリン配合錠"]
    assert rp1.drugs[0].code_kind == "receipt"
    assert rp1.drugs[0].code == "620004992"
    assert rp1.drugs[0].dose == Decimal(6)
    assert rp1.drugs[1].supplements == ["一包化"]  # 281 after the RP's last drug
    assert rp1.usage is not None
    assert (rp1.usage.text, rp1.usage.quantity, rp1.usage.quantity_unit, rp1.usage.form) == (
        "【分３ 毎食後服用】",
        5,
        "日分",
        "1",
    )
    assert rp2.usage is not None
    assert rp2.usage.form == "5"
    assert rp2.cautions == ["車の運転は控えてください。"]
    assert dispensing.notes == [
        ("401", "他の薬を併用する際は、相談してください。"),
        ("501", "正しい飲み方は薬袋等をご覧下さい。"),
    ]


def test_it_reads_the_shift_jis_bytes_like_the_utf8_text() -> None:
    raw = SAMPLE_SJIS.read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")  # the file really is Shift_JIS
    text, encoding = jahis.decode(raw)
    assert encoding == "cp932"
    assert "\r\n" in text  # CR+LF as the spec writes it
    from_sjis = only_document(text)
    from_utf8 = only_document(sample_text())
    assert from_sjis.dispensings == from_utf8.dispensings
    assert from_sjis.patient == from_utf8.patient


def test_it_drops_a_utf8_byte_order_mark() -> None:
    text, encoding = jahis.decode(b"\xef\xbb\xbf" + SAMPLE_UTF8.read_bytes())
    assert encoding == "utf-8"
    assert only_document(text).version == "JAHISTC08"


# --------------------------------------------------------------------------
# Every record type of the layout file is read (or reported by design)
# --------------------------------------------------------------------------


def _layout() -> dict[str, list[dict[str, str]]]:
    rows = [line for line in LAYOUT.read_text(encoding="utf-8").splitlines() if line[:1] != "#"]
    records: dict[str, list[dict[str, str]]] = {}
    for row in csv.DictReader(rows):
        records.setdefault(row["record_no"], []).append(row)
    return records


def _value(row: dict[str, str]) -> str:
    """A valid value for a layout field, from its type and name."""
    name = row["field_name"]
    if "年月日" in name or "日(" in name or name.endswith("日") or "生年月日" in name:
        return "R070401"
    if "RP番号" in name or "通番" in name:
        return "1"
    if "都道府県" in name:
        return "13"
    if "点数表" in name:
        return "4"
    if "医療機関" in name and "コード" in name:
        return "1234567"
    if "剤形" in name:
        return "1"
    if "コード種別" in name or "作成者" in name or "種別" in name:
        return "1" if "提供情報" not in name else "30"
    if row["type"] == "9":
        return "1"
    if row["type"] == "X":
        return "1"
    return "テスト"


def test_the_parser_knows_every_record_type_of_the_layout_file() -> None:
    layout = _layout()
    assert set(layout) - {"JAHISTC**"} == set(jahis.RECORDS)
    for number, rows in layout.items():
        if number == "JAHISTC**":
            continue
        ours = jahis.RECORDS[number].fields
        assert len(ours) == len(rows), number
        for spec, row in zip(ours, rows, strict=True):
            assert spec.type == row["type"], (number, row["field_name"])
            assert spec.max_bytes == int(row["max_bytes"]), (number, row["field_name"])


def test_every_record_type_is_parsed_or_reported() -> None:
    layout = _layout()
    lines = ["JAHISTC08,1"]
    order = ["1", "2", "3", "31", "4", "5", "11", "15", "51", "55", "201", "281", "291", "301"]
    order += ["311", "391", "401", "411", "421", "501", "601", "701"]
    assert set(order) == set(layout) - {"JAHISTC**", "911"}
    for number in order:
        lines.append(",".join([number, *(_value(row) for row in layout[number])]))
    document = only_document("\r\n".join(lines))
    assert errors(document) == [], errors(document)
    for number in order:
        assert document.counts.get(number) == 1, number
    # What is not imported on purpose is said so.
    reported = {i.record for i in document.issues if i.code == "not_imported"}
    assert reported == {"4", "601", "701"}
    (dispensing,) = document.dispensings
    (prescription,) = dispensing.prescriptions
    assert prescription.drugs[0].supplements == ["テスト"]
    assert prescription.drugs[0].cautions == ["テスト"]
    assert prescription.usage is not None
    assert prescription.usage.supplements == ["テスト"]
    assert prescription.cautions == ["テスト"]
    assert [n for n, _ in dispensing.notes] == ["401", "411", "421", "501"]
    assert document.otc[0].ingredients == ["テスト"]
    assert document.notes[0].kind == "allergy"


def test_a_911_record_in_the_middle_of_a_document_is_reported() -> None:
    text = sample_text().replace("401,", "911,12345678901234,2,1\n401,", 1)
    document = only_document(text)
    (issue,) = errors(document)
    assert issue.code == "split_misplaced"
    assert issue.line == 15
    assert issue.record == "911"


# --------------------------------------------------------------------------
# Dates and versions
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20200410", date(2020, 4, 10)),
        ("R020410", date(2020, 4, 10)),  # the spec example's 調剤等年月日
        ("S330303", date(1958, 3, 3)),  # standards.md §1.2
        ("R010501", date(2019, 5, 1)),  # the first day of 令和
        ("H310430", date(2019, 4, 30)),  # the last day of 平成
        ("H010108", date(1989, 1, 8)),
        ("S640107", date(1989, 1, 7)),
        ("T010730", date(1912, 7, 30)),
        ("M450729", date(1912, 7, 29)),
        ("Ｒ０２０４１０", date(2020, 4, 10)),  # full-width, as some systems write
        ("r020410", date(2020, 4, 10)),
    ],
)
def test_it_reads_western_and_era_dates(text: str, expected: date) -> None:
    assert jahis.parse_date(text) == expected


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("H310501", "date_era"),  # 平成31年5月1日 is 令和元年
        ("R010430", "date_era"),
        ("S640108", "date_era"),
        ("R000101", "date_invalid"),
        ("R020230", "date_invalid"),
        ("20200230", "date_invalid"),
        ("X020410", "date_format"),
        ("2020-04-10", "date_format"),
        ("R2410", "date_format"),
    ],
)
def test_it_refuses_dates_that_do_not_exist(text: str, code: str) -> None:
    with pytest.raises(jahis.DateError) as caught:
        jahis.parse_date(text)
    assert caught.value.code == code


@pytest.mark.parametrize("version", [f"JAHISTC{n:02d}" for n in range(1, 9)])
def test_it_reads_every_version_from_01_to_08(version: str) -> None:
    text = sample_text().replace("JAHISTC08", version, 1)
    document = only_document(text)
    assert document.version == version
    assert len(document.dispensings[0].drugs) == 3


@pytest.mark.parametrize("version", ["JAHISTC00", "JAHISTC09", "JAHISTC1", "JAHISTCXX"])
def test_it_reports_an_unknown_version_once_and_reads_nothing(version: str) -> None:
    text = sample_text().replace("JAHISTC08", version, 1)
    document = only_document(text)
    assert not document.dispensings
    codes = [i.code for i in errors(document)]
    assert codes == ["version", "not_read"]
    assert errors(document)[0].line == 1


def test_text_without_a_version_record_is_not_a_notebook() -> None:
    reading = jahis.read("hello\nworld")
    assert not reading.documents
    assert [i.code for i in reading.issues] == ["before_header", "no_header"]


# --------------------------------------------------------------------------
# Malformed lines: reported by line number, the rest still read
# --------------------------------------------------------------------------


def test_bad_lines_are_reported_by_line_and_the_rest_is_read() -> None:
    lines = sample_text().splitlines()
    lines[2] = "5,R020410,1"
    lines.insert(8, "999,謎のレコード")  # line 9
    lines.insert(9, "201,1,,6,錠,2,620000000,1")  # line 10: no name
    lines.insert(10, "201,x,ロキソニン錠,1,錠,2,620000001,1")  # line 11: RP not a number
    lines.insert(11, "201,1,ロキソニン錠,abc,錠,9,620000001,1")  # line 12: odd dose and kind
    document = only_document("\n".join(lines))
    by_line = {(i.line, i.code, i.severity) for i in document.issues}
    assert (9, "unknown_record", jahis.ERROR) in by_line
    assert (10, "required", jahis.ERROR) in by_line
    assert (11, "not_numeric", jahis.ERROR) in by_line
    assert (12, "dose", jahis.WARNING) in by_line
    assert (12, "code_kind", jahis.WARNING) in by_line
    issue = next(i for i in document.issues if i.line == 10)
    assert issue.record == "201"
    assert issue.field == "薬品名称"
    assert issue.ja
    assert issue.en
    names = [d.name for d in document.dispensings[0].drugs]
    assert names == [
        "コリオパンカプセル5mg",
        "ロキソニン錠",
        "フェロベリン配合錠",
        "モーラステープ２０ｍｇ",
    ]


def test_a_hot_code_of_another_length_is_dropped_with_a_warning() -> None:
    document = only_document("JAHISTC08,1\n5,20261120,1\n201,1,ムコダイン錠,3,錠,6,12345,1")
    (drug,) = document.dispensings[0].drugs
    assert (drug.code_kind, drug.code) == ("", "")
    assert [(i.line, i.code, i.severity) for i in document.issues][:1] == [
        (3, "drug_code", jahis.WARNING)
    ]


def test_records_of_a_dispensing_before_any_dispensing_date_are_reported() -> None:
    document = only_document("JAHISTC08,1\n201,1,ロキソニン錠,3,錠,1,,1\n5,20250101,1")
    (issue, *_) = errors(document)
    assert (issue.line, issue.code, issue.record) == (2, "no_dispensing", "201")


def test_a_bad_dispensing_date_skips_only_its_own_records() -> None:
    text = sample_text().rstrip("\n") + "\n5,R021340,1\n201,1,ロキソニン錠,3,錠,1,,1\n"
    document = only_document(text)
    assert len(document.dispensings) == 1
    codes = [(i.line, i.code) for i in errors(document)]
    assert codes == [(17, "date_invalid"), (18, "no_dispensing")]


# --------------------------------------------------------------------------
# Split documents (record 911)
# --------------------------------------------------------------------------


def split(text: str, sizes: list[int], data_id: str = "20260310123000") -> list[str]:
    """The sample cut into parts of `sizes` records, each with the version
    line and a 911 record, as a pharmacy's QR codes carry it."""
    header, *records = text.splitlines()
    parts, start = [], 0
    for seq, size in enumerate(sizes, start=1):
        body = records[start : start + size]
        start += size
        parts.append("\n".join([header, *body, f"911,{data_id},{len(sizes)},{seq}"]))
    assert start == len(records)
    return parts


def test_the_spec_split_example_is_a_part_waiting_for_its_other_part() -> None:
    reading = jahis.read(SPLIT_PART1.read_text(encoding="utf-8"))
    assert reading.documents == []
    (part,) = reading.parts
    assert (part.data_id, part.total, part.seq) == ("12345678901234", 2, 1)
    assert jahis.missing_parts(reading.parts) == (2, [2])


@pytest.mark.parametrize("seed", range(6))
def test_split_parts_are_joined_in_any_order(seed: int) -> None:
    whole = only_document(sample_text())
    parts = split(sample_text(), [6, 4, 5])
    random.Random(seed).shuffle(parts)
    reading = jahis.read("\r\n".join(parts))
    assert reading.documents == []
    assert jahis.missing_parts(reading.parts) == (3, [])
    document = jahis.assemble(reading.parts)
    assert errors(document) == []
    assert document.dispensings[0].drugs == [
        # Only where the line came from differs.
        type(d)(**{**d.__dict__, "line": d2.line, "part": d2.part})
        for d, d2 in zip(whole.dispensings[0].drugs, document.dispensings[0].drugs, strict=True)
    ]
    assert [d.name for d in document.dispensings[0].drugs] == [
        "コリオパンカプセル5mg",
        "フェロベリン配合錠",
        "モーラステープ２０ｍｇ",
    ]
    assert document.data_id == "20260310123000"


def test_a_missing_part_is_reported_with_its_number() -> None:
    parts = split(sample_text(), [6, 4, 5])
    reading = jahis.read(parts[2] + "\n" + parts[0])
    assert jahis.missing_parts(reading.parts) == (3, [2])


def test_an_issue_in_a_part_names_the_part_and_its_line() -> None:
    parts = split(sample_text(), [6, 4, 5])
    parts[1] = parts[1].replace("201,1,フェロベリン配合錠", "201,,フェロベリン配合錠")
    reading = jahis.read("\n".join(parts))
    document = jahis.assemble(reading.parts)
    (issue,) = errors(document)
    assert (issue.part, issue.line, issue.field) == (2, 3, "RP番号")


# --------------------------------------------------------------------------
# Garbage (hypothesis): never an exception, never a silent loss
# --------------------------------------------------------------------------


@given(st.text(max_size=2000))
def test_any_text_is_read_without_an_exception(text: str) -> None:
    reading = jahis.read(text)
    for document in reading.documents:
        assert isinstance(document.issues, list)
    if not reading.documents and not reading.parts:
        assert reading.issues  # nothing readable is said so


@given(st.binary(max_size=2000))
def test_any_bytes_are_decoded_and_read(raw: bytes) -> None:
    text, encoding = jahis.decode(raw)
    assert encoding in ("utf-8", "cp932")
    jahis.read(text)


def _medicine_lines(lines: list[str]) -> int:
    return sum(1 for line in lines if line.split(",", 1)[0] == "201")


def _accounted(document: jahis.Document) -> int:
    """Medicines read plus medicine lines reported as not read."""
    read = sum(len(d.drugs) for d in document.dispensings)
    return read + sum(1 for i in errors(document) if i.record == "201")


@given(st.randoms(use_true_random=False), st.integers(min_value=1, max_value=16))
def test_shuffled_or_truncated_documents_never_lose_a_medicine_silently(
    rnd: random.Random, keep: int
) -> None:
    header, *records = sample_text().splitlines()
    rnd.shuffle(records)
    records = records[: keep - 1]
    document = only_document("\n".join([header, *records]))
    assert _accounted(document) == _medicine_lines(records)


@given(st.integers(min_value=1, max_value=15), st.text(max_size=40))
def test_a_corrupted_line_is_either_read_or_reported(index: int, garbage: str) -> None:
    lines = sample_text().splitlines()
    lines[index] = garbage.replace("\r", "").replace("\n", "")
    document = only_document("\n".join(lines))
    assert _accounted(document) == _medicine_lines(lines)
