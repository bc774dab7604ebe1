"""The independent checker can fail: hand-made releases with a class of
one, a birth date (or an LMP) pinned by a New-Year pair, and identifiers
in full-width digits, hiragana or inside release.zip are each reported.
And its date reasoning is sound: the true birth date is always among its
candidates, and every candidate is consistent with what was released."""

from __future__ import annotations

import csv
import json
import zipfile
from datetime import date, timedelta
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from tests.sharing.research import checker

PERSONS = (
    "pid",
    "kind",
    "sex",
    "birth_ym",
    "area",
    "birth_weight_band",
    "gestational_weeks_at_birth",
    "babies",
)
COLUMNS = {
    "persons": PERSONS,
    "pregnancies": (
        "pid",
        "pregnancy_no",
        "calendar_year",
        "outcome",
        "gestational_weeks_at_delivery",
        "babies",
        "delivery_mode",
    ),
    "prenatal_visits": (
        "pid",
        "pregnancy_no",
        "gestational_weeks",
        "calendar_year",
        "item",
        "value",
        "unit",
    ),
    "infant_checkups": ("pid", "age_weeks", "calendar_year", "checkup", "item", "value", "unit"),
    "vaccinations": ("pid", "vaccine", "dose", "age_weeks", "calendar_year"),
    "vitals_weekly": (
        "pid",
        "item",
        "unit",
        "age_weeks",
        "gestational_weeks",
        "calendar_year",
        "n",
        "mean",
        "min",
        "max",
    ),
}


def write_release(directory: Path, tables: dict[str, list[dict[str, object]]]) -> Path:
    (directory / "csv").mkdir(parents=True, exist_ok=True)
    for table, columns in COLUMNS.items():
        with (directory / "csv" / f"{table}.csv").open("w", encoding="utf-8", newline="") as out:
            writer = csv.DictWriter(out, columns, lineterminator="\n")
            writer.writeheader()
            for row in tables.get(table, []):
                writer.writerow({c: row.get(c, "") for c in columns})
    return directory


def child(pid: str, birth_ym: str = "2025", sex: str = "female") -> dict[str, object]:
    return {
        "pid": pid,
        "kind": "child",
        "sex": sex,
        "birth_ym": birth_ym,
        "area": "10",
        "birth_weight_band": "2500-3999",
        "gestational_weeks_at_birth": "37-41",
        "babies": "single",
    }


def test_a_class_of_one_is_reported(tmp_path: Path) -> None:
    persons = [child(f"p{i}") for i in range(6)] + [child("lonely", sex="male")]
    findings = checker.check_release(write_release(tmp_path, {"persons": persons}))
    assert findings.persons == 7
    assert findings.k == 1
    assert [n for _, n in findings.small_classes(5)] == [1]
    failures = findings.failures(k=5, min_days=14)
    assert any(f.startswith("k=1 < 5") for f in failures)


def test_k_joins_the_mothers_pregnancies(tmp_path: Path) -> None:
    """Five mothers alike in persons.csv, one of them with a pregnancy at
    other weeks: two classes, k = 1."""
    mothers = [
        {"pid": f"m{i}", "kind": "mother", "sex": "female", "birth_ym": "1992", "area": "10"}
        for i in range(5)
    ]
    pregnancies = [
        {
            "pid": f"m{i}",
            "pregnancy_no": 1,
            "calendar_year": 2025,
            "outcome": "delivered",
            "gestational_weeks_at_delivery": "39" if i else "33",
            "babies": "1",
        }
        for i in range(5)
    ]
    findings = checker.check_release(
        write_release(tmp_path, {"persons": mothers, "pregnancies": pregnancies})
    )
    assert findings.k == 1
    assert sorted(findings.classes.values()) == [1, 4]


def test_k_passes_when_every_class_is_large(tmp_path: Path) -> None:
    persons = [child(f"p{i}") for i in range(5)] + [child(f"q{i}", sex="male") for i in range(5)]
    findings = checker.check_release(write_release(tmp_path, {"persons": persons}))
    assert findings.k == 5
    assert findings.failures(k=5, min_days=14) == []
    assert findings.failures(k=10, min_days=14) != []


def test_a_new_year_pair_pins_the_birth_date(tmp_path: Path) -> None:
    """Born in December 2024, vaccinated at 0 completed weeks in 2025: the
    birth was on 26–31 December, six days."""
    persons = [child("p0", birth_ym="2024-12")]
    tables = {
        "persons": persons,
        "vaccinations": [
            {"pid": "p0", "vaccine": "hepb", "dose": 1, "age_weeks": 0, "calendar_year": 2025}
        ],
    }
    findings = checker.check_release(write_release(tmp_path, tables))
    assert findings.birth_days == {"p0": 6}
    assert any("birth dates pinned" in f for f in findings.failures(k=1, min_days=14))


def test_the_year_blanked_leaves_the_month(tmp_path: Path) -> None:
    tables = {
        "persons": [child("p0", birth_ym="2024-12")],
        "vaccinations": [
            {"pid": "p0", "vaccine": "hepb", "dose": 1, "age_weeks": 0, "calendar_year": ""}
        ],
    }
    findings = checker.check_release(write_release(tmp_path, tables))
    assert findings.birth_days == {"p0": 31}
    assert findings.failures(k=1, min_days=14) == []


def test_events_of_every_table_narrow_together(tmp_path: Path) -> None:
    """A quarter (Q4 2024: 92 days), a checkup at 5 weeks in 2025 (born on
    or after 21 Nov 2024) and home vitals at 1 week in 2024 (born on or
    before 24 Dec 2024): together, the days between."""
    tables = {
        "persons": [child("p0", birth_ym="2024-Q4")],
        "infant_checkups": [
            {"pid": "p0", "age_weeks": 5, "calendar_year": 2025, "item": "body_weight"}
        ],
        "vitals_weekly": [
            {"pid": "p0", "item": "body_weight", "age_weeks": 1, "calendar_year": 2024}
        ],
    }
    findings = checker.check_release(write_release(tmp_path, tables))
    low = date(2025, 1, 1) - timedelta(days=7 * 5 + 6)  # 2024-11-21
    high = date(2024, 12, 31) - timedelta(days=7)  # 2024-12-24
    assert findings.birth_days == {"p0": (high - low).days + 1}


def test_lmp_pinned_by_a_visit_and_the_delivery(tmp_path: Path) -> None:
    """A visit at 39 weeks in 2024 and the delivery at 40 weeks in 2025:
    the LMP was between 21 March and 2 April 2024 — 13 days."""
    tables = {
        "persons": [
            {"pid": "m0", "kind": "mother", "sex": "female", "birth_ym": "1992", "area": "10"}
        ],
        "pregnancies": [
            {
                "pid": "m0",
                "pregnancy_no": 1,
                "calendar_year": 2025,
                "outcome": "delivered",
                "gestational_weeks_at_delivery": "40",
                "babies": "1",
            }
        ],
        "prenatal_visits": [
            {
                "pid": "m0",
                "pregnancy_no": 1,
                "gestational_weeks": 39,
                "calendar_year": 2024,
                "item": "body_weight",
            }
        ],
    }
    findings = checker.check_release(write_release(tmp_path, tables))
    assert findings.lmp_days == {("m0", "1"): 13}
    assert any("LMP dates pinned" in f for f in findings.failures(k=1, min_days=14))


def test_coded_weeks_widen_the_lmp(tmp_path: Path) -> None:
    tables = {
        "persons": [{"pid": "m0", "kind": "mother", "sex": "female", "birth_ym": "1992"}],
        "pregnancies": [
            {
                "pid": "m0",
                "pregnancy_no": 1,
                "calendar_year": 2025,
                "gestational_weeks_at_delivery": "37-41",
            }
        ],
    }
    findings = checker.check_release(write_release(tmp_path, tables))
    # [1 Jan 2025 − 41w − 6, 31 Dec 2025 − 37w]
    expected = (date(2025, 12, 31) - timedelta(weeks=37)) - (
        date(2025, 1, 1) - timedelta(days=41 * 7 + 6)
    )
    assert findings.lmp_days == {("m0", "1"): expected.days + 1}


def test_identifiers_in_full_width_digits_hiragana_and_the_zip_are_found(
    tmp_path: Path,
) -> None:
    identifiers = {
        "number": {"912345678901"},
        "kana": {"タカス ミオネ"},
        "phone": {"090-7123-3456"},
        "email": {"Mother001.2345678@example-family.jp"},
        "uuid": {"0b5e7c1e-1f0a-4c47-9a4e-6b1f3f0b9d2a"},
        "name": {"鷹栖 澪音"},
        "address": {"群馬県風待坂3丁目12番5号"},
    }
    tables = {
        "persons": [child("p0")],
        "infant_checkups": [
            # the resident number in full-width digits, in a value cell
            {"pid": "p0", "age_weeks": 5, "item": "note", "value": "９１２３４５６７８９０１"},
            # the kana name in hiragana, without the space
            {"pid": "p0", "age_weeks": 9, "item": "note", "value": "たかすみおね"},
        ],
    }
    directory = write_release(tmp_path, tables)
    (directory / "fhir").mkdir()
    (directory / "fhir" / "Patient.ndjson").write_text(
        json.dumps({"resourceType": "Patient", "id": "0B5E7C1E1F0A4C479A4E6B1F3F0B9D2A"}) + "\n",
        encoding="utf-8",
    )
    with zipfile.ZipFile(directory / "release.zip", "w") as archive:
        archive.writestr("csv/extra.csv", "phone\n０９０－７１２３－３４５６\n")
        archive.writestr("notes.txt", "mother001.2345678@EXAMPLE-FAMILY.JP 鷹栖　澪音")
    findings = checker.check_release(directory, identifiers=identifiers)
    found = {(hit.file, hit.kind) for hit in findings.hits}
    assert ("csv/infant_checkups.csv", "number") in found
    assert ("csv/infant_checkups.csv", "kana") in found
    assert ("fhir/Patient.ndjson", "uuid") in found
    assert ("release.zip:csv/extra.csv", "phone") in found
    assert ("release.zip:notes.txt", "email") in found
    assert ("release.zip:notes.txt", "name") in found
    assert not any(hit.kind == "address" for hit in findings.hits)
    failures = findings.failures(k=1, min_days=1)
    assert sum(f.startswith("identifier in") for f in failures) == len(findings.hits)


def test_hyphens_between_digits_do_not_hide_a_number(tmp_path: Path) -> None:
    tables = {
        "persons": [child("p0")],
        "infant_checkups": [{"pid": "p0", "item": "x", "value": "9123-4567-8901"}],
    }
    findings = checker.check_release(
        write_release(tmp_path, tables), identifiers={"number": {"912345678901"}}
    )
    assert [hit.kind for hit in findings.hits] == ["number"]


def test_a_clean_release_has_no_hits(tmp_path: Path) -> None:
    tables = {
        "persons": [child(f"p{i}") for i in range(5)],
        "infant_checkups": [
            {"pid": "p1", "age_weeks": 5, "calendar_year": 2025, "item": "body_weight"}
        ],
    }
    identifiers = {"number": {"912345678901"}, "kana": {"タカス ミオネ"}, "name": {"鷹栖 澪音"}}
    findings = checker.check_release(write_release(tmp_path, tables), identifiers=identifiers)
    assert findings.hits == []


def test_rows_of_persons_not_released_are_reported(tmp_path: Path) -> None:
    tables = {
        "persons": [child("p0")],
        "vaccinations": [{"pid": "ghost", "vaccine": "bcg", "dose": 1, "age_weeks": 22}],
    }
    findings = checker.check_release(write_release(tmp_path, tables))
    assert findings.orphans["vaccinations"] == {"ghost"}
    assert any("ghost" in f for f in findings.failures(k=1, min_days=1))


def test_an_unknown_birth_period_is_a_problem(tmp_path: Path) -> None:
    findings = checker.check_release(
        write_release(tmp_path, {"persons": [child("p0", birth_ym="2025-03-14")]})
    )
    assert findings.problems


@given(
    birth=st.dates(min_value=date(2023, 1, 1), max_value=date(2026, 12, 31)),
    offsets=st.lists(st.integers(min_value=0, max_value=900), min_size=1, max_size=4),
    level=st.sampled_from(["month", "quarter", "half", "year"]),
)
def test_birth_candidates_are_exactly_the_consistent_days(
    birth: date, offsets: list[int], level: str
) -> None:
    """Brute force over every day of four years: a day is counted if and
    only if it gives the same released birth period and the same
    (completed weeks, calendar year) for every event."""

    def period(day: date) -> str:
        if level == "month":
            return f"{day.year}-{day.month:02d}"
        if level == "quarter":
            return f"{day.year}-Q{(day.month - 1) // 3 + 1}"
        if level == "half":
            return f"{day.year}-H{(day.month - 1) // 6 + 1}"
        return str(day.year)

    events = [birth + timedelta(days=o) for o in offsets]
    released = [((e - birth).days // 7, e.year) for e in events]
    tables = {
        "persons": [child("p0", birth_ym=period(birth))],
        "vaccinations": [
            {"pid": "p0", "age_weeks": str(w), "calendar_year": str(y), "vaccine": "x"}
            for w, y in released
        ],
    }
    counted = checker.birth_candidates(tables)["p0"]

    def consistent(day: date) -> bool:
        if period(day) != period(birth):
            return False
        for weeks, year in released:
            # some event date in `year` at `weeks` completed weeks from `day`
            first = max(day + timedelta(days=7 * weeks), date(year, 1, 1))
            last = min(day + timedelta(days=7 * weeks + 6), date(year, 12, 31))
            if first > last:
                return False
        return True

    # every candidate shares the birth's period, so its year
    start = date(birth.year, 1, 1)
    brute = sum(consistent(start + timedelta(days=i)) for i in range(366))
    assert counted == brute
    assert counted >= 1  # the true birth date is always a candidate


def test_the_fhir_files_count_too(tmp_path: Path) -> None:
    """The CSV blanked the year, the NDJSON did not: pinned all the same."""
    tables = {
        "persons": [child("p0", birth_ym="2024-12")],
        "vaccinations": [
            {"pid": "p0", "vaccine": "hepb", "dose": 1, "age_weeks": 0, "calendar_year": ""}
        ],
    }
    directory = write_release(tmp_path, tables)
    (directory / "fhir").mkdir()
    ext = checker.EXTENSION
    immunization = {
        "resourceType": "Immunization",
        "patient": {"reference": "Patient/p0"},
        "extension": [
            {"url": f"{ext}age-weeks", "valueInteger": 0},
            {"url": f"{ext}calendar-year", "valueInteger": 2025},
        ],
    }
    (directory / "fhir" / "Immunization.ndjson").write_text(
        json.dumps(immunization) + "\n", encoding="utf-8"
    )
    findings = checker.check_release(directory)
    assert findings.birth_days == {"p0": 6}


def test_a_full_date_in_a_fhir_file_is_a_problem(tmp_path: Path) -> None:
    directory = write_release(tmp_path, {"persons": [child("p0")]})
    (directory / "fhir").mkdir()
    observation = {
        "resourceType": "Observation",
        "subject": {"reference": "Patient/p0"},
        "effectiveDateTime": "2025-03-14",
    }
    (directory / "fhir" / "Observation.ndjson").write_text(
        json.dumps(observation) + "\n", encoding="utf-8"
    )
    findings = checker.check_release(directory)
    assert any("a full date '2025-03-14'" in p for p in findings.problems)
    assert findings.failures(k=1, min_days=1)


def test_a_year_month_in_an_event_table_is_a_problem(tmp_path: Path) -> None:
    tables = {
        "persons": [child("p0", birth_ym="2025-03")],
        "infant_checkups": [{"pid": "p0", "item": "body_weight", "value": "2025-04"}],
    }
    findings = checker.check_release(write_release(tmp_path, tables))
    assert findings.problems == ["csv/infant_checkups.csv: a year-month '2025-04'"]
