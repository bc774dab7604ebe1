"""The release builder on a small world (sharing.research_export.build_release):
the contract's files and headers, nothing identifying in any file, the
date floor, k, categories and period, pseudonyms per project, refusal."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import uuid
import zipfile
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from fhir.resources.R4B import get_fhir_model_class

from phr import services, store
from phr.models import Provenance, Resource
from sharing import anonymize
from sharing.research_export import CSV_COLUMNS, CohortTooSmall, build_release
from tests.sharing.research import engine_world

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(db: None) -> engine_world.World:
    return engine_world.build()


def _release(world: engine_world.World, tmp_path: Path, **kwargs: Any) -> tuple[dict, Path]:
    project = kwargs.pop("project", None) or engine_world.project()
    cohort = kwargs.pop("cohort", None) or world.cohort()
    filters = kwargs.pop("filters", None) or {}
    out = tmp_path / uuid.uuid4().hex
    out.mkdir()
    report = build_release(project=project, filters=filters, cohort=cohort, out_dir=out, **kwargs)
    return report, out


def _rows(out: Path, table: str) -> list[dict[str, str]]:
    with (out / "csv" / f"{table}.csv").open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _all_text(out: Path) -> str:
    return "\n".join(
        p.read_text(encoding="utf-8") for p in out.rglob("*") if p.is_file() and p.suffix != ".zip"
    )


def test_files_headers_and_report(world: engine_world.World, tmp_path: Path) -> None:
    steps: list[tuple[int, int]] = []
    report, out = _release(world, tmp_path, progress=lambda d, t: steps.append((d, t)))
    for table, columns in CSV_COLUMNS.items():
        with (out / "csv" / f"{table}.csv").open(encoding="utf-8") as handle:
            assert next(csv.reader(handle)) == list(columns)
    assert (out / "csv" / "data_dictionary.csv").exists()
    # every file is listed with its SHA-256 and size
    listed = {entry["path"]: entry for entry in report["files"]}
    on_disk = {
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and p.name not in ("release_report.json", "release.zip")
    }
    assert set(listed) == on_disk
    for path, entry in listed.items():
        data = (out / path).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["bytes"] == len(data)
    assert json.loads((out / "release_report.json").read_text()) == report
    with zipfile.ZipFile(out / "release.zip") as archive:
        assert set(archive.namelist()) == on_disk | {"release_report.json"}
    # the counts
    persons = _rows(out, "persons")
    assert report["records_per_table"]["persons"] == len(persons) == 24
    assert report["records_per_table"]["infant_checkups"] == len(_rows(out, "infant_checkups"))
    assert report["cohort_size"] == 24
    assert report["k"] == 5
    assert report["achieved_k"] >= 5
    assert set(report["generalizations"]) == set(anonymize.QI_HIERARCHIES)
    assert "birth_ym" in report["quasi_identifiers"]
    assert steps[-1][0] == steps[-1][1]
    # FHIR Bulk Data manifest
    manifest = json.loads((out / "fhir" / "manifest.json").read_text())
    assert manifest["requiresAccessToken"] is True
    assert manifest["error"] == []
    for entry in manifest["output"]:
        lines = (out / "fhir" / entry["url"]).read_text().splitlines()
        assert entry["count"] in (len(lines), "<10")
        assert lines, entry["type"]
        model = get_fhir_model_class(entry["type"])
        for line in lines:
            resource = json.loads(line)
            assert resource["resourceType"] == entry["type"]
            model.model_validate(resource)  # valid FHIR R4B


def test_tables_hold_the_world(world: engine_world.World, tmp_path: Path) -> None:
    _, out = _release(world, tmp_path)
    persons = {row["pid"]: row for row in _rows(out, "persons")}
    mothers = [r for r in persons.values() if r["kind"] == "mother"]
    children = [r for r in persons.values() if r["kind"] == "child"]
    assert len(mothers) == len(children) == 12
    assert all(r["birth_weight_band"] and r["gestational_weeks_at_birth"] for r in children)
    assert all(r["babies"] in ("1", "single") for r in children)
    assert all(not r["birth_weight_band"] for r in mothers)
    pregnancies = _rows(out, "pregnancies")
    assert len(pregnancies) == 12
    assert {r["outcome"] for r in pregnancies} == {"delivered"}
    assert {r["delivery_mode"] for r in pregnancies} == {"spontaneous"}
    visits = _rows(out, "prenatal_visits")
    assert {(r["item"], r["gestational_weeks"]) for r in visits} == {
        ("body_weight", "37"),
        ("body_weight", "38"),
    }
    checkups = _rows(out, "infant_checkups")
    assert {r["age_weeks"] for r in checkups} == {"4"}  # the 2019 one is outside the period
    vaccinations = _rows(out, "vaccinations")
    assert {(r["vaccine"], r["dose"], r["age_weeks"]) for r in vaccinations} == {("hepb", "1", "8")}
    vitals = _rows(out, "vitals_weekly")
    child_vitals = [r for r in vitals if persons[r["pid"]]["kind"] == "child"]
    assert {(r["item"], r["n"], r["mean"]) for r in child_vitals} == {
        ("body_temperature", "3", "36.80")
    }


def test_nothing_identifying_leaves(world: engine_world.World, tmp_path: Path) -> None:
    """No name (kanji, kana), resident or handbook number (also in
    full-width digits), free text, lot number, clinic-only result, store id
    or full date is in any file."""
    _, out = _release(world, tmp_path)
    text = _all_text(out)
    with zipfile.ZipFile(out / "release.zip") as archive:
        zipped = "\n".join(archive.read(n).decode() for n in archive.namelist())
    full_width = str.maketrans("0123456789", "０１２３４５６７８９")
    for needle in world.names + world.numbers + [n.translate(full_width) for n in world.numbers]:
        assert needle not in text, needle
        assert needle not in zipped, needle
    for needle in (
        engine_world.SECRET_NOTE,
        engine_world.LOT,
        engine_world.SERIES,
        "SERIES-SECRET",
        "HIVNEG",
        "hiv",
        "prenatal_note",
    ):
        assert needle not in text, needle
    for rid in Resource.objects.values_list("id", flat=True):
        assert str(rid) not in text
        assert str(rid).replace("-", "")[:12] not in text
    data = text.replace(
        json.loads((out / "fhir" / "manifest.json").read_text())["transactionTime"], ""
    )
    report = json.loads((out / "release_report.json").read_text())
    data = data.replace(report["generated_at"], "")
    data = data.replace(report["period"]["start"], "").replace(report["period"]["end"], "")
    assert not re.search(r"\b(19|20)\d\d-\d\d-\d\d\b", data)
    assert not re.search(r"\b(19|20)\d\d/\d\d?/\d\d?\b", data)


def _interval(rows: list[tuple[int, str]], start: tuple[date, date] | None) -> int | None:
    interval = start
    for weeks, year in rows:
        if year:
            interval = anonymize.intersect(interval, anonymize.event_interval(weeks, int(year)))
    return anonymize.interval_days(interval)


def _birth_interval(birth_ym: str) -> tuple[date, date]:
    year = int(birth_ym[:4])
    rest = birth_ym[5:]
    if not rest:
        return date(year, 1, 1), date(year, 12, 31)
    if rest.startswith("Q") or rest.startswith("H"):
        months = 3 if rest[0] == "Q" else 6
        first = (int(rest[1]) - 1) * months + 1
    else:
        months, first = 1, int(rest)
    end = date(year + (first + months > 12), (first + months - 1) % 12 + 1, 1)
    return date(year, first, 1), end - timedelta(days=1)


def test_date_floor_blanks_the_new_year_visit(world: engine_world.World, tmp_path: Path) -> None:
    """The visits at 37 weeks in 2023 and 38 weeks in 2024 would leave a
    week of possible last periods: a year is blanked, and every person's
    and pregnancy's released (weeks, year) pairs leave at least 14 days."""
    report, out = _release(world, tmp_path)
    assert report["suppression"]["calendar_years_blanked"] >= 12
    persons = {row["pid"]: row for row in _rows(out, "persons")}
    by_pregnancy: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for row in _rows(out, "prenatal_visits"):
        by_pregnancy.setdefault((row["pid"], row["pregnancy_no"]), []).append(
            (int(row["gestational_weeks"]), row["calendar_year"])
        )
    for row in _rows(out, "pregnancies"):
        by_pregnancy.setdefault((row["pid"], row["pregnancy_no"]), []).append(
            (int(row["gestational_weeks_at_delivery"] or 0), row["calendar_year"])
        )
    assert any(not year for rows in by_pregnancy.values() for _, year in rows)
    for rows in by_pregnancy.values():
        days = _interval(rows, None)
        assert days is None or days >= 14
    by_person: dict[str, list[tuple[int, str]]] = {}
    for table in ("infant_checkups", "vaccinations"):
        for row in _rows(out, table):
            by_person.setdefault(row["pid"], []).append(
                (int(row["age_weeks"]), row["calendar_year"])
            )
    for row in _rows(out, "vitals_weekly"):
        if row["age_weeks"]:
            by_person.setdefault(row["pid"], []).append(
                (int(row["age_weeks"]), row["calendar_year"])
            )
    for pid, rows in by_person.items():
        assert _interval(rows, _birth_interval(persons[pid]["birth_ym"])) >= 14


def test_k_holds_over_the_quasi_identifiers(world: engine_world.World, tmp_path: Path) -> None:
    _, out = _release(world, tmp_path)
    pregnancies: dict[str, list[tuple[str, str]]] = {}
    for row in _rows(out, "pregnancies"):
        pregnancies.setdefault(row["pid"], []).append(
            (row["gestational_weeks_at_delivery"], row["babies"])
        )
    classes: dict[tuple[Any, ...], int] = {}
    for row in _rows(out, "persons"):
        vector = (
            *(row[c] for c in CSV_COLUMNS["persons"][1:]),
            tuple(sorted(pregnancies.get(row["pid"], []))),
        )
        classes[vector] = classes.get(vector, 0) + 1
    assert min(classes.values()) >= 5


def test_categories_are_respected(world: engine_world.World, tmp_path: Path) -> None:
    cohort = world.cohort(frozenset({"vaccinations"}))
    _, out = _release(world, tmp_path, cohort=cohort)
    assert len(_rows(out, "vaccinations")) == 12
    for table in ("pregnancies", "prenatal_visits", "infant_checkups", "vitals_weekly"):
        assert _rows(out, table) == [], table
    assert all(not r["birth_weight_band"] for r in _rows(out, "persons"))


def test_formats_asked_for_are_the_formats_written(
    world: engine_world.World, tmp_path: Path
) -> None:
    both, _ = _release(world, tmp_path)
    only_csv, out_csv = _release(world, tmp_path, filters={"formats": ["csv"]})
    only_fhir, out_fhir = _release(world, tmp_path, filters={"formats": ["ndjson"]})
    assert both["formats"] == ["csv", "ndjson"]
    assert only_csv["formats"] == ["csv"]
    assert not (out_csv / "fhir").exists()
    assert (out_csv / "csv" / "vaccinations.csv").exists()
    assert only_csv["records_per_table"] == both["records_per_table"]
    assert only_fhir["formats"] == ["ndjson"]
    assert (out_fhir / "fhir" / "manifest.json").exists()
    # the persons (the release's key) and the dictionary are always there
    assert (out_fhir / "csv" / "persons.csv").exists()
    assert not (out_fhir / "csv" / "vaccinations.csv").exists()
    listed = {f["path"] for f in only_fhir["files"]}
    with zipfile.ZipFile(out_fhir / "release.zip") as archive:
        assert listed <= set(archive.namelist())
    assert not any(path.startswith("csv/vacc") for path in listed)


def test_pseudonyms_differ_between_projects(world: engine_world.World, tmp_path: Path) -> None:
    _, one = _release(world, tmp_path)
    _, two = _release(world, tmp_path)
    first = {r["pid"] for r in _rows(one, "persons")}
    second = {r["pid"] for r in _rows(two, "persons")}
    assert len(first) == len(second) == 24
    assert first.isdisjoint(second)
    project = engine_world.project()
    _, three = _release(world, tmp_path, project=project)
    _, four = _release(world, tmp_path, project=project)
    assert {r["pid"] for r in _rows(three, "persons")} == {r["pid"] for r in _rows(four, "persons")}


def test_cohort_too_small_is_refused(world: engine_world.World, tmp_path: Path) -> None:
    cohort = {p.pk: engine_world.ALL for p in world.children[:3]}
    with pytest.raises(CohortTooSmall) as refused:
        _release(world, tmp_path, cohort=cohort)
    message = str(refused.value)
    assert "k = 5" in message
    assert "<10" in message  # three persons, shown as a small cell
    assert " / " in message  # Japanese / English
    # with k = 10 (published) six boys and six girls cannot be kept: refused,
    # not released with everything suppressed
    project = engine_world.project(k=10, publish=True)
    cohort = {p.pk: engine_world.ALL for p in world.children}
    with pytest.raises(CohortTooSmall):
        _release(world, tmp_path, cohort=cohort, project=project)


def test_outside_the_period_nothing(world: engine_world.World, tmp_path: Path) -> None:
    project = engine_world.project(period_start=date(2024, 2, 1), period_end=date(2024, 12, 31))
    _, out = _release(world, tmp_path, project=project)
    assert _rows(out, "prenatal_visits") == []
    assert _rows(out, "pregnancies") == []  # ended 5 January
    assert len(_rows(out, "infant_checkups")) == 12


def test_csv_reads_back(world: engine_world.World, tmp_path: Path) -> None:
    _, out = _release(world, tmp_path)
    text = (out / "csv" / "infant_checkups.csv").read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    assert all(len(r) == len(CSV_COLUMNS["infant_checkups"]) for r in rows)


def _weekly_readings(world: engine_world.World) -> tuple[list[str], list[tuple[int, int]]]:
    """Every child weighed three times in its week 51, which spans New Year
    (born 2024-01-05: days 357-363 are 2024-12-27 … 2025-01-02), plus one
    reading with a comparator (not a number: never aggregated); every
    mother's blood pressure (the reading's two components) three times in
    one week of her age. Returns the children's weights and the mothers' (systolic,
    diastolic) readings, the same for everyone."""
    from vitals import records

    weights = ["8.1", "8.3", "8.8"]  # a mean of the two years' means would be 8.5, not 8.4
    for child in world.children:
        for day, value in zip(
            (date(2024, 12, 28), date(2024, 12, 30), date(2025, 1, 1)), weights, strict=True
        ):
            engine_world._obs(
                child, engine_world.LOINC, "29463-7", day, "vitals",
                **engine_world._quantity(float(value), "kg"),
            )  # fmt: skip
        quantity = engine_world._quantity(9.9, "kg")
        quantity["valueQuantity"]["comparator"] = "<"
        engine_world._obs(
            child, engine_world.LOINC, "29463-7", date(2024, 12, 29), "vitals", **quantity
        )
    pressures = [(118, 72), (124, 80), (121, 77)]
    for mother in world.mothers:
        # three days of one week of her age, after the birth
        born = date.fromisoformat(Resource.objects.get(pk=mother.pk).content["birthDate"])
        first = date(2024, 6, 1) + timedelta(days=(born - date(2024, 6, 1)).days % 7)
        for day, (systolic, diastolic) in zip(
            (first, first + timedelta(days=2), first + timedelta(days=6)), pressures, strict=True
        ):
            reading = records.reading_check(
                records.reading(
                    records.BLOOD_PRESSURE,
                    systolic=systolic,
                    diastolic=diastolic,
                    taken_at=datetime.combine(day, datetime.min.time(), tzinfo=UTC),
                )
            )
            resource = records.vital_observation(patient_id=mother.pk, reading=reading)
            store.record_write(
                resource,
                provenance=services.provenance_create(origin=Provenance.Origin.SYSTEM),
            )
    return weights, pressures


def _summary(values: list[Decimal]) -> tuple[str, str, str, str]:
    mean = (sum(values) / len(values)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return str(len(values)), str(mean), str(min(values)), str(max(values))


@pytest.mark.parametrize("floor_days", [14, 1000])
def test_weekly_vitals_add_up_across_new_year(
    world: engine_world.World, tmp_path: Path, settings: Any, floor_days: int
) -> None:
    """vitals_weekly holds one row per person, item, week and calendar year;
    where the date floor blanks the year of a week that spans New Year, the
    week's rows merge and their count, mean, min and max are those of all
    its readings (a floor of 1,000 days blanks every year)."""
    settings.RESEARCH_MIN_DATE_CANDIDATES = floor_days
    weights, pressures = _weekly_readings(world)
    _, out = _release(world, tmp_path)
    persons = {row["pid"]: row for row in _rows(out, "persons")}
    rows = _rows(out, "vitals_weekly")
    children = [pid for pid, p in persons.items() if p["kind"] == "child"]
    mothers = [pid for pid, p in persons.items() if p["kind"] == "mother"]
    assert len(children) == len(mothers) == 12
    for pid in children:
        week = [r for r in rows if r["pid"] == pid and r["item"] == "body_weight"]
        assert {r["age_weeks"] for r in week} == {"51"}
        assert sum(int(r["n"]) for r in week) == len(weights)  # the "<9.9" is left out
        for r in week:
            assert Decimal(r["min"]) <= Decimal(r["mean"]) <= Decimal(r["max"])
        if floor_days == 1000:
            assert [(r["calendar_year"], r["n"], r["mean"], r["min"], r["max"]) for r in week] == [
                ("", *_summary([Decimal(w) for w in weights]))
            ]
        else:
            # the two years are told apart unless the floor blanks them
            assert {r["calendar_year"] for r in week} <= {"2024", "2025", ""}
    for pid in mothers:
        for item, index in (("bp_systolic", 0), ("bp_diastolic", 1)):
            week = [r for r in rows if r["pid"] == pid and r["item"] == item]
            values = [Decimal(p[index]) for p in pressures]
            assert [(r["n"], r["mean"], r["min"], r["max"]) for r in week] == [_summary(values)]
            assert week[0]["unit"] == "mm[Hg]"
            assert week[0]["age_weeks"]
    # the FHIR file says the same of the merged week
    observations = [
        json.loads(line)
        for line in (out / "fhir" / "Observation.ndjson").read_text(encoding="utf-8").splitlines()
    ]
    weekly = [
        o
        for o in observations
        if o["code"]["coding"][0]["code"] == "29463-7"
        and any(e["url"].endswith("weekly-count") for e in o["extension"])
    ]
    assert len({o["subject"]["reference"] for o in weekly}) == 12
    counts: dict[str, int] = {}
    for o in weekly:
        ext = {e["url"].rsplit("-", 1)[-1]: e for e in o["extension"]}
        counts[o["subject"]["reference"]] = (
            counts.get(o["subject"]["reference"], 0) + ext["count"]["valueInteger"]
        )
        if floor_days == 1000:
            assert "year" not in ext
            mean = _summary([Decimal(w) for w in weights])[1]
            assert Decimal(str(o["valueQuantity"]["value"])) == Decimal(mean)
    assert set(counts.values()) == {len(weights)}


def test_every_table_is_in_pseudonym_order(world: engine_world.World, tmp_path: Path) -> None:
    """Rows come sorted by pid (then the table's own keys), never in the
    store's order, which would tell when and where the records were made."""
    _weekly_readings(world)
    _, out = _release(world, tmp_path)
    for table in CSV_COLUMNS:
        pids = [row["pid"] for row in _rows(out, table)]
        assert pids, table
        assert pids == sorted(pids), table
    vitals = [
        (r["pid"], r["item"], r["unit"], r["gestational_weeks"] != "", int(r["age_weeks"] or 0))
        for r in _rows(out, "vitals_weekly")
    ]
    assert vitals == sorted(vitals)


def test_a_release_built_twice_is_the_same_bytes(world: engine_world.World, tmp_path: Path) -> None:
    """Rows are ordered down to what the files show (ties within a person's
    week too), so the same records give the same files and hashes."""
    _weekly_readings(world)
    project = engine_world.project()
    at = timezone.now()
    first, _ = _release(world, tmp_path, project=project, at=at)
    second, _ = _release(world, tmp_path, project=project, at=at)
    assert first["files"] == second["files"]
    paths = {f["path"] for f in first["files"]}
    assert {"csv/vitals_weekly.csv", "fhir/Observation.ndjson"} <= paths
