"""Benchmark: an anonymized research release of a cohort with 1,000,000
observations, against a plain COPY of the same rows.

    DEBUG=1 .venv/bin/python bench/bench_research_export.py [--rows 1000000] [--keep]
    DEBUG=1 .venv/bin/python bench/bench_research_export.py --rows 20000     # a quick smoke run

A scratch database (`hagukumi_bench_research`, dropped and recreated,
migrated, dropped at the end unless --keep). Setup, timed on its own:
mother-and-child families written in bulk through the record store
(store.write_staged, the COPY path) with the records the clinics, the
municipalities and the families' devices write — the mother's pregnancy,
eight prenatal visits and the delivery (clinics.prenatal), the child's
birth data, four checkups (municipal_data.formats.infant_checkup) and the
routine doses (…vaccination), home vitals (vitals.records: the mother's
blood pressure in pregnancy, the baby's weight) — about 200 resources a
family, families enough for `--rows`. A tenth of the families live in a
small town, the rest in a city; both towns are under the opt-out regime
with a published notice, so every resident is in the cohort.

Then, in the same process, for the whole cohort (both towns):

(a) COPY: `COPY (SELECT content FROM phr_resource …) TO STDOUT` of every
    resource of the cohort's persons into a file (the baseline);
(b) build_release with formats csv only, (c) ndjson only, (d) both.

Printed: resources/s (the cohort's resources over the wall time), the
ratio to COPY (goal ≥ 25%), client and server CPU, file sizes. Memory:
the tracemalloc peak and the peak RSS of a release of the small town
(~10% of the rows) and then of the whole cohort — flat when the builder
streams.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import common
import django

UNUSABLE = "!"  # Django's mark of an unusable password: these accounts never sign in
PER_FAMILY = 200  # resources a family holds, about
CHUNK = 20_000  # staged resources per write
MONTHS = ("1m", 33), ("3-4m", 110), ("6-7m", 200), ("9-10m", 290)
DOSES = (
    ("hepb", 1, 62),
    ("dtap-ipv-hib", 1, 63),
    ("pcv20", 1, 63),
    ("rv1", 1, 63),
    ("hepb", 2, 92),
    ("dtap-ipv-hib", 2, 93),
    ("pcv20", 2, 93),
    ("rv1", 2, 93),
    ("dtap-ipv-hib", 3, 124),
    ("pcv20", 3, 124),
    ("bcg", 1, 160),
    ("hepb", 3, 220),
)


# --------------------------------------------------------------------------
# The population
# --------------------------------------------------------------------------


class Family:
    def __init__(self, rng: random.Random, index: int, town: Any) -> None:
        self.index = index
        self.town = town
        self.mother = uuid.uuid4()
        self.child = uuid.uuid4()
        self.born = date(2025, 1, 1) + timedelta(days=rng.randrange(0, 300))
        self.gestation = rng.choice((266, 270, 273, 276, 278, 280, 282, 284, 287))
        self.weight = rng.randrange(2600, 3900, 10)
        self.sex = rng.choice(("male", "female"))
        self.mother_birth = date(rng.choice((1991, 1992)), rng.randrange(1, 13), 10)


def family_resources(family: Family, rng: random.Random, clinic: Any, vitals: int) -> Iterator[Any]:
    """Staged resources of one family (not the Patients)."""
    from clinics import prenatal
    from municipal_data.formats import infant_checkup, vaccination
    from municipal_data.records import MunicipalRecord, Person
    from phr import store
    from vitals import records as vital_records

    lmp = family.born - timedelta(days=family.gestation)
    due = lmp + timedelta(days=prenatal.PREGNANCY_DAYS)
    system = prenatal.prenatal_system(clinic.code)
    episode_source = store.Source(system, prenatal.episode_source_value(family.mother, due))
    episode_id = store.source_resource_id("EpisodeOfCare", episode_source)
    episode = prenatal.pregnancy_episode(patient_id=family.mother, due_date=due, clinic=clinic)
    yield store.stage(
        prenatal.finished_episode(episode, birth_date=family.born), source=episode_source
    )
    yield store.stage(
        prenatal.due_date_observation(
            patient_id=family.mother, due_date=due, recorded_on=lmp + timedelta(weeks=9)
        ),
        source=store.Source(system, prenatal.due_date_source_value(episode_id)),
    )
    for weeks in (9, 12, 16, 20, 24, 28, 32, 36):
        visit = prenatal.Visit(
            visit_date=lmp + timedelta(days=7 * weeks + rng.randrange(0, 5)),
            due_date=due,
            systolic=rng.randrange(100, 128),
            diastolic=rng.randrange(58, 80),
            weight=Decimal(rng.randrange(500, 700)) / 10,
        )
        for resource, source in prenatal.visit_resources(
            visit=visit, patient_id=family.mother, clinic=clinic, episode_id=episode_id
        ):
            yield store.stage(resource, source=source)
    delivery = prenatal.Delivery(
        born_at=datetime(family.born.year, family.born.month, family.born.day, 1, tzinfo=UTC),
        gestation_days=family.gestation,
        mode="spontaneous",
        babies=(prenatal.Baby(sex=family.sex, weight_g=family.weight),),
    )
    for resource, source in prenatal.delivery_resources(
        delivery=delivery, mother_id=family.mother, clinic=clinic, episode_id=episode_id
    ):
        yield store.stage(resource, source=source)
    for resource, source in prenatal.birth_resources(
        delivery=delivery,
        baby=delivery.babies[0],
        index=0,
        child_id=family.child,
        mother_id=family.mother,
        clinic=clinic,
    ):
        yield store.stage(resource, source=source)
    # the municipality's checkups and doses
    person = Person(
        kind="child",
        municipality_code=family.town.code,
        resident_number=f"B{family.index:09d}",
        birth_date=family.born,
        sex=family.sex,
    )
    fmt = infant_checkup.FORMAT
    checkup_system = fmt.source_system(family.town.code)
    for code, age in MONTHS:
        day = family.born + timedelta(days=age)
        values = {
            "kind": code,
            "date": day,
            "body_weight": Decimal(family.weight + 30 * age) / 1000,
            "body_height": Decimal(490 + age // 3) / 10,
            "head_circumference": Decimal(335 + age // 12) / 10,
        }
        key = f"{person.resident_number}|{code}|{day.isoformat()}"
        record = MunicipalRecord(line=1, change="add", key=key, subject=person, values=values)
        for item, resource in fmt.resources(record, str(family.child), None):
            yield store.stage(resource, source=store.Source(checkup_system, f"{key}#{item}"))
    vfmt = vaccination.FORMAT
    vaccine_system = vfmt.source_system(family.town.code)
    for code, number, age in DOSES:
        v = vaccination.VACCINES[code]
        values = {
            "vaccine": code,
            "dose_number": number,
            "series_label": v.series_of(number).label,
            "date": family.born + timedelta(days=age),
        }
        key = f"{person.resident_number}|{code}|{number}"
        record = MunicipalRecord(line=1, change="add", key=key, subject=person, values=values)
        for item, resource in vfmt.resources(record, str(family.child), None):
            yield store.stage(resource, source=store.Source(vaccine_system, f"{key}#{item}"))
    # home vitals: the mother's blood pressure in pregnancy, the baby's weight
    device = vital_records.DeviceRef(id=f"bench-{family.index}", display="bench")
    half = vitals // 3
    start = datetime(lmp.year, lmp.month, lmp.day, 6, tzinfo=UTC) + timedelta(weeks=12)
    for n in range(half):
        when = start + timedelta(hours=13 * n)
        reading = vital_records.Reading(
            kind=vital_records.BLOOD_PRESSURE,
            values=(Decimal(rng.randrange(100, 130)), Decimal(rng.randrange(60, 84))),
            taken_at=when,
        )
        yield vital_records.vital_staged(
            patient_id=family.mother, reading=reading, source=device.source, device=device
        )
    born = datetime(family.born.year, family.born.month, family.born.day, 8, tzinfo=UTC)
    for n in range(vitals - half):
        when = born + timedelta(hours=9 * n + 20)
        reading = vital_records.Reading(
            kind=vital_records.BODY_WEIGHT,
            values=(Decimal(family.weight + 25 * n // 3) / 1000,),
            taken_at=when,
        )
        yield vital_records.vital_staged(
            patient_id=family.child, reading=reading, source=device.source, device=device
        )


def populate(rows: int, seed: int) -> tuple[list[Any], int, int]:
    """Write the families; return the towns, the families and the rows."""
    from django.db import transaction

    from clinics.services import clinic_ref
    from phr import services, store
    from phr.identifiers import municipality_check_digit
    from phr.models import Guardianship, Organization, Patient, Provenance, Residency, User
    from sharing.models import ResearchRegime
    from tests import factories

    rng = random.Random(seed)
    towns = []
    for head, name in (("10501", "小町"), ("10502", "大市")):
        code = head + municipality_check_digit(head)
        towns.append(
            Organization.objects.create(kind=Organization.Kind.MUNICIPALITY, code=code, name=name)
        )
        ResearchRegime.objects.create(
            municipality=towns[-1],
            kind=ResearchRegime.Kind.OPT_OUT,
            legal_basis="bench",
            notice_published_on=date(2024, 1, 1),
        )
    clinic_org = factories.ClinicFactory()
    clinic = clinic_ref(clinic_org)
    families_n = max(20, rows // PER_FAMILY)
    fixed = 0
    written = 0
    provenance = services.provenance_create(
        origin=Provenance.Origin.MUNICIPALITY, source="bench:research"
    )
    staged: list[Any] = []

    def flush() -> None:
        nonlocal written
        if staged:
            with transaction.atomic():
                written += store.write_staged(staged, provenance=provenance, copy=True).written
            staged.clear()

    batch = 500
    for first in range(0, families_n, batch):
        families = [
            Family(rng, i, towns[0] if i % 10 == 0 else towns[1])
            for i in range(first, min(first + batch, families_n))
        ]
        users = User.objects.bulk_create(
            [
                User(email=f"bench-{f.index}@example.jp", display_name="", password=UNUSABLE)
                for f in families
            ]
        )
        patients = []
        for f, user in zip(families, users, strict=True):
            patients.append(Patient(id=f.mother, kind=Patient.Kind.ADULT, account=user))
            patients.append(Patient(id=f.child, kind=Patient.Kind.CHILD))
        Patient.objects.bulk_create(patients)
        Residency.objects.bulk_create(
            [
                Residency(patient_id=pid, municipality=f.town, valid_from=date(2020, 1, 1))
                for f in families
                for pid in (f.mother, f.child)
            ]
        )
        Guardianship.objects.bulk_create(
            [
                Guardianship(guardian=u, child_id=f.child, relationship="mother", valid_from=f.born)
                for f, u in zip(families, users, strict=True)
            ]
        )
        for f in families:
            staged.append(
                store.stage(
                    services.patient_resource(
                        family="", given="", birth_date=f.mother_birth, gender="female"
                    ),
                    resource_id=f.mother,
                )
            )
            staged.append(
                store.stage(
                    services.patient_resource(family="", given="", birth_date=f.born, gender=f.sex),
                    resource_id=f.child,
                )
            )
            # vitals fill each family up to PER_FAMILY resources
            if not fixed:
                fixed = len(list(family_resources(f, random.Random(0), clinic, vitals=0))) + 2
            staged.extend(family_resources(f, rng, clinic, vitals=max(0, PER_FAMILY - fixed)))
            if len(staged) >= CHUNK:
                flush()
    flush()
    return towns, families_n, written


# --------------------------------------------------------------------------
# The runs
# --------------------------------------------------------------------------


def project_for(towns: list[Any]) -> Any:
    from django.utils import timezone

    from phr.models import Organization, Role
    from sharing import research
    from tests import factories

    institution = factories.ClinicFactory(
        kind=Organization.Kind.RESEARCH, code=f"RES-{uuid.uuid4().hex[:8]}"
    )
    researcher = factories.make_member(Role.RESEARCHER, institution)
    project = research.project_apply(
        user=researcher,
        title="bench",
        ethics_approval_number="BENCH-1",
        purpose="bench",
        categories=["pregnancy", "prenatal_checkups", "infant_checkups", "vaccinations", "vitals"],
        cohort_kind="both",
        municipalities=towns,
        birth_year_from=2020,
        birth_year_to=2026,
        period_start=date(2023, 1, 1),
        period_end=date(2026, 12, 31),
        publish=False,
        organization=institution,
    )
    for _ in range(2):
        admin = factories.UserFactory(is_platform_admin=True)
        factories.enable_totp(admin)
        research.project_review(
            user=admin,
            project=project,
            decision="approve",
            expires_on=timezone.localdate() + timedelta(days=30),
        )
    project.refresh_from_db()
    return project


def cohort_for(project: Any, towns: list[Any]) -> dict[Any, frozenset[str]]:
    from sharing.access import research_cohort

    return research_cohort(
        municipality_ids=[t.pk for t in towns],
        categories=list(project.categories),
        cohort_kind="both",
        birth_year_from=project.birth_year_from,
        birth_year_to=project.birth_year_to,
    )


def cohort_resources(cohort: dict[Any, Any]) -> int:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM phr_resource r WHERE NOT r.deleted "
            "AND r.compartments && %s::uuid[]",
            [list(cohort)],
        )
        return int(cur.fetchone()[0])


def copy_baseline(cohort: dict[Any, Any], target: Path) -> int:
    """COPY (SELECT …) TO STDOUT of every resource of the cohort."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("CREATE TEMPORARY TABLE bench_cohort (id uuid PRIMARY KEY)")
        cur.copy_expert(
            "COPY bench_cohort FROM STDIN",
            __import__("io").StringIO("".join(f"{pid}\n" for pid in cohort)),
        )
        with target.open("wb") as out:
            cur.copy_expert(
                "COPY (SELECT r.id, r.resource_type, r.content FROM phr_resource r "
                "WHERE NOT r.deleted AND EXISTS (SELECT 1 FROM bench_cohort c "
                "WHERE c.id = ANY (r.compartments))) TO STDOUT",
                out,
            )
        cur.execute("DROP TABLE bench_cohort")
    return target.stat().st_size


def run_release(
    project: Any, towns: list[Any], cohort: dict[Any, Any], out: Path, formats: list[str]
) -> dict[str, Any]:
    from sharing import research
    from sharing.research_export import build_release

    filters = research.normalize_filters(
        project, {"municipalities": [t.pk for t in towns], "formats": formats}
    )
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return build_release(project=project, filters=filters, cohort=cohort, out_dir=out)


def sizes(out: Path) -> dict[str, int]:
    return {
        p.relative_to(out).as_posix(): p.stat().st_size
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--database", default="hagukumi_bench_research")
    parser.add_argument(
        "--here",
        action="store_true",
        help="use the database Django is connected to (the smoke test's), no scratch database",
    )
    args = parser.parse_args(argv)
    django.setup()

    from django.core.management import call_command

    from sharing.research_export import CohortTooSmall

    results: dict[str, Any] = {}
    name = args.database
    original = None if args.here else common.recreate_database(name)
    try:
        if original is not None:
            call_command("migrate", verbosity=0)
        print(f"database: {common.server_version()}")
        phases: dict[str, common.Phase] = {}
        with common.timed("setup", phases):
            towns, families, written = populate(args.rows, args.seed)
            # as autovacuum would soon after a bulk load: without statistics
            # the planner takes a million fresh rows for one
            common.execute("ANALYZE")
        setup = phases["setup"]
        print(
            f"setup: {families:,} families, {written:,} resources written in "
            f"{setup.seconds:.1f} s ({written / setup.seconds:,.0f}/s; client CPU "
            f"{setup.client_cpu:.1f} s, server CPU {setup.server_cpu or 0:.1f} s); "
            f"peak RSS after it {common.peak_rss_mb():.0f} MB"
        )
        project = project_for(towns)
        cohort = cohort_for(project, towns)
        small_town = [towns[0]]
        small_cohort = cohort_for(project, small_town)
        resources = cohort_resources(cohort)
        small_resources = cohort_resources(small_cohort)
        print(
            f"cohort: {len(cohort):,} persons, {resources:,} resources "
            f"(small town: {len(small_cohort):,} persons, {small_resources:,} resources)"
        )
        results.update(families=families, written=written, resources=resources)
        with tempfile.TemporaryDirectory() as scratch:
            root = Path(scratch)
            # memory first, the small town, then everyone: ru_maxrss only grows,
            # so each figure is the peak up to that run
            print("memory (csv + ndjson, tracemalloc on: slower):")
            for label, towns_used, group in (
                ("small town", small_town, small_cohort),
                ("whole cohort", towns, cohort),
            ):
                out = root / "memory"
                tracemalloc.start()
                start = time.perf_counter()
                try:
                    run_release(project, towns_used, group, out, ["csv", "ndjson"])
                except CohortTooSmall:
                    tracemalloc.stop()
                    print(f"  {label}: refused, too small for k at this --rows")
                    continue
                seconds = time.perf_counter() - start
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                rss = common.peak_rss_mb()
                count = small_resources if group is small_cohort else resources
                print(
                    f"  {label}: {count:,} resources, tracemalloc peak {peak / 1e6:.1f} MB, "
                    f"peak RSS so far {rss:.0f} MB ({seconds:.1f} s)"
                )
                results[f"memory {label}"] = {"peak_mb": peak / 1e6, "rss_mb": rss}
                shutil.rmtree(out, ignore_errors=True)
            common.checkpoint()
            with common.timed("copy", phases):
                copied = copy_baseline(cohort, root / "copy.tsv")
            base = phases["copy"]
            copy_rate = resources / base.seconds
            print(
                f"\n(a) COPY (SELECT …) TO STDOUT: {base.seconds:.1f} s, {copy_rate:,.0f} "
                f"resources/s, {mb(copied)}; client CPU {base.client_cpu:.1f} s, "
                f"server CPU {base.server_cpu or 0:.1f} s"
            )
            results["copy_rate"] = copy_rate
            for label, formats in (
                ("(b) csv", ["csv"]),
                ("(c) ndjson", ["ndjson"]),
                ("(d) csv + ndjson", ["csv", "ndjson"]),
            ):
                out = root / label.split()[1]
                common.checkpoint()
                with common.timed(label, phases):
                    report = run_release(project, towns, cohort, out, formats)
                phase = phases[label]
                rate = resources / phase.seconds
                files = sizes(out)
                wrote_csv = any(p.startswith("csv/infant_checkups") for p in files)
                wrote_fhir = any(p.startswith("fhir/Observation") for p in files)
                print(
                    f"\n{label}: {phase.seconds:.1f} s, {rate:,.0f} resources/s = "
                    f"{rate / copy_rate:.0%} of COPY (goal ≥ 25%); client CPU "
                    f"{phase.client_cpu:.1f} s, server CPU {phase.server_cpu or 0:.1f} s"
                )
                print(
                    f"  released {report['released_persons']} persons, k {report['achieved_k']},"
                    f" generalizations {report['generalizations']}"
                )
                print(f"  records per table: {report['records_per_table']}")
                if (wrote_csv, wrote_fhir) != ("csv" in formats, "ndjson" in formats):
                    print(
                        f"  NOTE: asked for {formats}, the builder wrote csv={wrote_csv} "
                        f"ndjson={wrote_fhir}"
                    )
                print("  files: " + ", ".join(f"{p} {mb(n)}" for p, n in files.items()))
                results[label] = {"seconds": phase.seconds, "rate": rate, "files": files}
                shutil.rmtree(out, ignore_errors=True)

    finally:
        if original is not None:
            from django.db import connection

            connection.close()
            if not args.keep:
                common.drop_database(name, original)
            else:
                from django.conf import settings

                settings.DATABASES["default"]["NAME"] = original
                connection.settings_dict["NAME"] = original
    return results


if __name__ == "__main__":
    main()
