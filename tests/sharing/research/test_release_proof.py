"""Proof, against real releases (issue 8, part 6).

Releases built by the engine (sharing.research_export.build_release, and
through the export job) over a world written by the project's own
services (tests/sharing/research/world.py), judged by the independent
checker (tests/sharing/research/checker.py — none of the exporter's code):

- k over all tables joined by pid ≥ the project's k (5, and 10);
- no birth date and no LMP narrower than RESEARCH_MIN_DATE_CANDIDATES days;
- no direct identifier of the database in any file, zip members included;
- withdrawn, never-consented and outside-municipality patients absent:
  each has a feature no one else has (world.MARKERS), which a release of a
  cohort wrongly holding them does show (the positive control);
- two projects' releases share no pid;
- a cohort too small for k is refused (CohortTooSmall; through the job,
  status refused with the reason);
- every file's SHA-256 in the report is the file's.
"""

from __future__ import annotations

import csv
import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import transaction

from phr.models import Job
from phr.terminology import Category
from sharing import research
from sharing.access import research_cohort
from sharing.models import ResearchExport, ResearchProject
from sharing.research_export import CohortTooSmall, build_release
from tests.sharing.research import checker
from tests.sharing.research import world as research_world
from vitals import records as vital_records

pytestmark = pytest.mark.django_db

MIN_DAYS = settings.RESEARCH_MIN_DATE_CANDIDATES


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def cohort_of(project: ResearchProject, filters: dict[str, Any] | None = None) -> dict:
    f = research.normalize_filters(project, filters or {})
    return research_cohort(
        municipality_ids=f["municipalities"],
        categories=f["categories"],
        cohort_kind=f["cohort_kind"],
        birth_year_from=f["birth_year_from"],
        birth_year_to=f["birth_year_to"],
    )


def release(
    project: ResearchProject,
    out: Path,
    *,
    cohort: dict | None = None,
    filters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    normalized = research.normalize_filters(project, filters or {})
    return build_release(
        project=project,
        filters=normalized,
        cohort=cohort if cohort is not None else cohort_of(project, filters),
        out_dir=out,
    )


def identifiers(world: research_world.World) -> dict[str, set[str]]:
    found = {kind: set(values) for kind, values in world.identifiers.items()}
    found["uuid"] = world.store_ids()
    return found


def rows(out: Path, table: str) -> list[dict[str, str]]:
    return checker.read_table(out, table)


def vitals_items(kind_key: str | None) -> set[str]:
    """The dictionary keys a vitals kind is released under (the panel and
    its parts)."""
    if kind_key is None:
        return set()
    k = vital_records.KINDS[kind_key]
    return {k.item.key, kind_key, *(part.item.key for part in k.parts)}


def count(value: Any) -> int | None:
    return value if isinstance(value, int) else None


def assert_proven(findings: checker.Findings, *, k: int) -> None:
    failures = findings.failures(k=k, min_days=MIN_DAYS)
    assert failures == [], "\n".join(failures)
    assert findings.persons > 0
    assert findings.k is not None
    assert findings.k >= k


@pytest.fixture(scope="module")
def world(django_db_setup: Any, django_db_blocker: Any) -> Iterator[research_world.World]:
    """One world for the module (it takes seconds to write): written in a
    transaction of its own, each test's in a savepoint inside it, all
    rolled back at the end."""
    with django_db_blocker.unblock():
        atomic = transaction.atomic()
        atomic.__enter__()
        try:
            yield research_world.build_world(seed=20261126)
        finally:
            transaction.set_rollback(True)
            atomic.__exit__(None, None, None)


@pytest.fixture
def media(settings: Any, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = str(tmp_path / "media")
    return Path(settings.MEDIA_ROOT)


# --------------------------------------------------------------------------
# k, dates, identifiers, files
# --------------------------------------------------------------------------


def test_a_k5_release_passes_the_independent_checker(
    world: research_world.World, tmp_path: Path
) -> None:
    project = research_world.approved_project(world)
    assert project.k == 5
    out = tmp_path / "release"
    report = release(project, out)
    findings = checker.check_release(out, identifiers=identifiers(world))
    assert_proven(findings, k=5)
    # the report's k is the one the checker finds on its own
    assert report["achieved_k"] == findings.k
    # every table is there and has rows (the proof is not vacuous)
    for table in checker.TABLES:
        assert rows(out, table), table
    # the birth dates and LMPs the checker looked at are all of them
    assert set(findings.birth_days) == {r["pid"] for r in rows(out, "persons")}
    assert {pid for pid, _ in findings.lmp_days} == {r["pid"] for r in rows(out, "pregnancies")}


def test_the_scan_finds_the_worlds_identifiers_planted_in_a_real_release(
    world: research_world.World, tmp_path: Path
) -> None:
    """The scan's positive control: the world's identifiers, planted in a
    copy of a real release in the disguises an export could give them,
    are each found."""
    project = research_world.approved_project(world)
    out = tmp_path / "release"
    release(project, out)
    found = identifiers(world)
    kana = sorted(v for v in found["kana"] if " " in v)[0]
    number = sorted(found["number"])[0]
    email = sorted(found["email"])[0]
    device = sorted(found["device"])[0]
    store_id = sorted(found["uuid"])[0]
    note = sorted(found["note"])[0]
    planted = {
        "kana": checker.katakana_to_hiragana(kana.replace(" ", "")),
        "number": number.translate(checker.FULL_WIDTH),
        "email": email.upper(),
        "device": device,
        "uuid": store_id.replace("-", "").upper(),
        "note": note,
    }
    with (out / "csv" / "vaccinations.csv").open("a", encoding="utf-8") as handle:
        for value in planted.values():
            handle.write(f"x,{value},1,10,2025\n")
    hits = checker.scan_release(out, found)
    assert {hit.kind for hit in hits if hit.file == "csv/vaccinations.csv"} >= set(planted)


def test_every_file_has_its_sha256_in_the_report(
    world: research_world.World, tmp_path: Path
) -> None:
    project = research_world.approved_project(world)
    out = tmp_path / "release"
    report = release(project, out)
    listed = {entry["path"]: entry["sha256"] for entry in report["files"]}
    files = {
        p.relative_to(out).as_posix(): p
        for p in out.rglob("*")
        if p.is_file() and p.name not in ("release_report.json", "release.zip")
    }
    assert set(listed) == set(files)
    for path, digest in listed.items():
        assert hashlib.sha256(files[path].read_bytes()).hexdigest() == digest, path
    assert report == checker.report_json(out)


def test_a_k10_release_for_publication(world: research_world.World, tmp_path: Path) -> None:
    project = research_world.approved_project(world, publish=True)
    assert project.k == 10
    out = tmp_path / "release"
    report = release(project, out)
    findings = checker.check_release(out, identifiers=identifiers(world))
    assert_proven(findings, k=10)
    assert report["achieved_k"] == findings.k


# --------------------------------------------------------------------------
# Who is absent
# --------------------------------------------------------------------------


def _released_items(out: Path) -> set[str]:
    return {r["item"] for r in rows(out, "vitals_weekly")}


def test_withdrawn_never_consented_and_outside_patients_are_absent(
    world: research_world.World, tmp_path: Path
) -> None:
    project = research_world.approved_project(world)
    cohort = cohort_of(project)
    out = tmp_path / "release"
    release(project, out, cohort=cohort)
    items = _released_items(out)
    vaccines = {r["vaccine"] for r in rows(out, "vaccinations")}
    for mode in ("withdrawn", "never", "outside", "some"):
        mother_marker, child_marker = research_world.MARKERS[mode]
        leaked = (vitals_items(mother_marker) | vitals_items(child_marker)) & items
        assert not leaked, f"{mode}: {leaked} released"
    assert research_world.MARKER_CHILD_SOME_VACCINE not in vaccines
    # and no more persons than were asked to take part, mothers and children
    persons = rows(out, "persons")
    for kind in ("mother", "child"):
        released = sum(1 for r in persons if r["kind"] == kind)
        consented = len(world.consented & world.ids(kind=kind))
        assert 0 < released <= consented
    # suppression under 5% of the eligible (rule 5), counted from the world
    eligible = len(world.consented)
    assert len(persons) >= eligible * 0.95 - 1

    # The positive control: the same release with the excluded patients
    # wrongly in the cohort shows every marker — so their absence above
    # is the cohort's doing, not the markers being unreleasable.
    wrong = dict(cohort)
    for pid in world.withdrawn | world.never | world.outside_ids:
        wrong[pid] = frozenset(research_world.RESEARCH_CATEGORIES)
    for pid in world.ids(mode="some"):
        wrong[pid] = frozenset(research_world.RESEARCH_CATEGORIES)
    leaky = tmp_path / "leaky"
    project_all = research_world.approved_project(
        world, municipalities=[*world.municipalities, world.outside]
    )
    release(project_all, leaky, cohort=wrong)
    leaky_items = _released_items(leaky)
    for mode in ("withdrawn", "never", "outside", "some"):
        mother_marker, child_marker = research_world.MARKERS[mode]
        assert vitals_items(mother_marker) & leaky_items, mode
        if child_marker is not None:
            assert vitals_items(child_marker) & leaky_items, mode
    assert research_world.MARKER_CHILD_SOME_VACCINE in {
        r["vaccine"] for r in rows(leaky, "vaccinations")
    }


def test_the_cohort_holds_exactly_the_consented_residents(world: research_world.World) -> None:
    """The policy point's cohort, against the world's own record of who
    chose what (the release can only hold what the cohort holds)."""
    project = research_world.approved_project(world)
    cohort = cohort_of(project)
    assert set(cohort) == world.consented
    for pid, categories in cohort.items():
        facts = world.persons[pid]
        assert set(categories) == set(facts.consented) & set(project.categories)
    assert not set(cohort) & (world.withdrawn | world.never | world.outside_ids)


def test_only_consented_categories_are_released(
    world: research_world.World, tmp_path: Path
) -> None:
    """A project asking for vaccinations only: the children who consented
    to everything are released, with doses; the "some" children (who did
    not consent to vaccinations) and all mothers are not."""
    project = research_world.approved_project(
        world, categories=(Category.VACCINATIONS,), cohort_kind="child"
    )
    out = tmp_path / "release"
    release(project, out)
    persons = rows(out, "persons")
    assert {r["kind"] for r in persons} == {"child"}
    all_children = world.ids(mode="all", kind="child")
    assert 0 < len(persons) <= len(all_children)
    assert not rows(out, "infant_checkups")
    assert not rows(out, "vitals_weekly")
    assert rows(out, "vaccinations")
    assert_proven(checker.check_release(out, identifiers=identifiers(world)), k=5)


def test_two_projects_share_no_pseudonym(world: research_world.World, tmp_path: Path) -> None:
    first = research_world.approved_project(world, title="第一研究")
    second = research_world.approved_project(world, title="第二研究")
    release(first, tmp_path / "a")
    release(second, tmp_path / "b")
    a = {r["pid"] for r in rows(tmp_path / "a", "persons")}
    b = {r["pid"] for r in rows(tmp_path / "b", "persons")}
    assert a
    assert b
    assert len(a) == len(b)  # the same people, the same generalization
    assert not a & b
    # and none of one project's pids appears anywhere in the other's files
    hits = checker.scan_release(tmp_path / "b", {"uuid": set(), "pid": a})
    assert hits == []
    # a second release of the same project links: same pids
    release(first, tmp_path / "a2")
    assert {r["pid"] for r in rows(tmp_path / "a2", "persons")} == a


# --------------------------------------------------------------------------
# Refusal
# --------------------------------------------------------------------------


def test_a_cohort_too_small_for_k_is_refused(tmp_path: Path, db: None) -> None:
    world = research_world.build_world(
        families=6, outside_families=0, mix={}, vitals=False, notes=False, seed=61
    )
    project = research_world.approved_project(world, publish=True)
    out = tmp_path / "release"
    with pytest.raises(CohortTooSmall) as refused:
        release(project, out)
    message = str(refused.value)
    assert "k = 10" in message
    assert not (out / "csv" / "persons.csv").exists()


def test_the_job_refuses_a_cohort_too_small_with_the_reason(
    media: Path, django_capture_on_commit_callbacks: Any, db: None
) -> None:
    world = research_world.build_world(
        families=6, outside_families=0, mix={}, vitals=False, notes=False, seed=62
    )
    project = research_world.approved_project(world, publish=True)
    with django_capture_on_commit_callbacks(execute=True):
        export = research.request_export(user=project.applicant, project=project, filters={})
    export.refresh_from_db()
    assert export.status == ResearchExport.Status.REFUSED
    assert "k = 10" in export.reason
    assert not export.directory
    assert not list(media.rglob("persons.csv"))


def test_the_job_path_delivers_a_proven_release(
    world: research_world.World, media: Path, django_capture_on_commit_callbacks: Any
) -> None:
    project = research_world.approved_project(world)
    with django_capture_on_commit_callbacks(execute=True):
        export = research.request_export(user=project.applicant, project=project, filters={})
    export.refresh_from_db()
    assert export.status == ResearchExport.Status.DONE, export.reason
    assert Job.objects.get(pk=export.job_id).status == Job.Status.DONE
    out = media / export.directory
    findings = checker.check_release(out, identifiers=identifiers(world))
    assert_proven(findings, k=5)
    assert export.report["achieved_k"] == findings.k
    for entry in export.report["files"]:
        digest = hashlib.sha256((out / entry["path"]).read_bytes()).hexdigest()
        assert digest == entry["sha256"], entry["path"]
    with (out / "csv" / "persons.csv").open(encoding="utf-8") as handle:
        released = {r["pid"] for r in csv.DictReader(handle)}
    # the job's release and a direct build of the same project link
    direct = tmp_dir = media / f"direct-{uuid.uuid4().hex}"
    release(project, tmp_dir)
    assert {r["pid"] for r in rows(direct, "persons")} == released
