"""The municipal import in several processes (IMPORT_PARTITIONS): rows are
split by person before they are parsed, each partition process commits its
own chunks with its own cursor entry, and the result is the one-process
import's — records, versions, people (a mother shared by children of both
partitions created once), counts."""

from __future__ import annotations

import io
import os
from collections import defaultdict
from typing import Any

import pytest

from municipal_data import importing
from municipal_data.formats import FORMATS
from municipal_data.models import MotherChild
from municipal_data.synthetic import infant_checkup_lines
from phr import pipeline, tabular
from phr.jobs import JobContext, LeaseLost, job_claim
from phr.models import Batch, Job, Organization, Residency
from tests.municipal_data.test_import_worker import _snapshot

pytestmark = pytest.mark.django_db(transaction=True)

ROWS = 400
CHUNK = 50
MOTHERS = 7


def _csv(code: str, rows: int = ROWS, *, change: dict[int, tuple[int, str]] | None = None) -> bytes:
    """The synthetic checkup file, where the children share MOTHERS mothers
    (child i has the mother of child i % MOTHERS), so mothers have children
    in both partitions. `change` = {line index: (cell, value)}."""
    lines = list(infant_checkup_lines(rows, municipality_code=code))
    mothers: dict[int, list[str]] = {}
    out = [lines[0]]
    for index, line in enumerate(lines[1:]):
        cells = line.split(",")
        child = index // 4
        if child < MOTHERS:
            mothers[child] = cells[23:27]
        cells[23:27] = mothers[child % MOTHERS]
        if change and index in change:
            cell, value = change[index]
            cells[cell] = value
        out.append(",".join(cells))
    return ("\ufeff" + "\r\n".join(out) + "\r\n").encode()


def _import(town: Organization, data: bytes, settings: Any, partitions: int) -> Batch:
    settings.IMPORT_PARTITIONS = partitions
    batch = pipeline.batch_receive(
        organization=town, format_key="infant_checkup", chunks=[data], filename="checkups.csv"
    )
    batch.refresh_from_db()
    assert batch.status == Batch.Status.VALIDATED, batch.file_error
    pipeline.batch_confirm(batch=batch, user=None, job_options={"chunk_rows": CHUNK})
    batch.refresh_from_db()
    return batch


def _town(code: str, name: str) -> Organization:
    return Organization.objects.create(kind=Organization.Kind.MUNICIPALITY, code=code, name=name)


def test_rows_are_split_by_person_in_file_order() -> None:
    data = _csv("102016")
    columns = FORMATS["infant_checkup"].columns

    def read(partition: tuple[int, int] | None, skip: int = 0) -> list[tuple[int, str]]:
        stream, _ = tabular.open_text(io.BytesIO(data), "auto")
        return [
            (row.line, row.values["resident_number"])
            for row in tabular.rows(stream, columns, skip=skip, partition=partition)
        ]

    everything = read(None)
    parts = [read((n, 2)) for n in range(2)]
    assert all(parts)
    assert sorted(parts[0] + parts[1]) == everything  # each row once
    for part in parts:
        assert part == sorted(part)  # in file order
    owner: dict[str, set[int]] = defaultdict(set)
    for n, part in enumerate(parts):
        for _line, number in part:
            owner[number].add(n)
    assert all(len(found) == 1 for found in owner.values())
    # `skip` counts the partition's own rows (a partition's cursor).
    assert read((1, 2), skip=10) == parts[1][10:]
    # The number is read as the importer normalises it.
    header = tabular.Header({"resident_number": 0, "mother_resident_number": 1}, {}, [], 4)
    wide = tabular.partition_of(["１０００ａ", "", "", ""], header, 7)
    assert wide == tabular.partition_of(["1000A", "", "", ""], header, 7)
    assert tabular.partition_of(["", "2000", "", ""], header, 7) == tabular.partition_of(
        ["", " 2000", "", ""], header, 7
    )
    assert tabular.partition_of(["", "", "", ""], header, 7) == 0


def test_two_partitions_import_what_one_process_imports(settings: Any) -> None:
    one = _town("102024", "高崎市")
    two = _town("102016", "前橋市")
    single = _import(one, _csv(one.code), settings, 1)
    parted = _import(two, _csv(two.code), settings, 2)
    assert single.status == parted.status == Batch.Status.IMPORTED
    assert "partitions" not in single.import_job.cursor
    cursor = Job.objects.get(pk=parted.import_job_id).cursor
    assert cursor["partition_count"] == 2
    assert sorted(cursor["partitions"]) == ["0", "1"]
    assert sum(p["rows"] for p in cursor["partitions"].values()) == ROWS
    assert Job.objects.get(pk=parted.import_job_id).progress_done == ROWS
    assert _snapshot(two) == _snapshot(one)
    assert parted.result == single.result
    assert parted.result["rows"] == parted.result["valid"] == ROWS
    # A mother of children in both partitions is one person, created once.
    children = ROWS // 4
    assert parted.result["new_patients"] == children + MOTHERS
    assert Residency.objects.filter(municipality=two).count() == children + MOTHERS
    assert MotherChild.objects.filter(municipality=two).count() == children
    assert MotherChild.objects.filter(municipality=two).values("mother").distinct().count() == (
        MOTHERS
    )


def test_the_same_file_twice_writes_nothing_and_a_correction_updates(settings: Any) -> None:
    town = _town("102016", "前橋市")
    first = _import(town, _csv(town.code), settings, 2)
    before = _snapshot(town)
    again = _import(town, _csv(town.code), settings, 2)
    assert again.same_as_id == first.pk
    assert again.result["created"] == again.result["updated"] == 0
    assert again.result["new_patients"] == 0
    assert again.result["unchanged"] == first.result["created"]
    assert _snapshot(town) == before
    # Line 10's weight (cell 15) corrected: one new version, no new record.
    corrected = _import(town, _csv(town.code, change={10: (15, "9.99")}), settings, 2)
    assert corrected.result["created"] == 0
    assert corrected.result["updated"] == 1
    after = _snapshot(town)
    assert after["records"] == after["distinct_keys"] == before["records"]
    assert after["history"] == before["history"] + 1


def test_a_failing_partition_fails_the_job_with_its_error(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    town = _town("102016", "前橋市")
    parent = os.getpid()
    apply = importing.apply

    def failing(fmt: Any, batch: Any, rows: list[Any], provenance: Any) -> Any:
        # Partition 1's first chunk fails; partition 0 goes on meanwhile.
        if os.getpid() != parent and any(
            tabular.partition_of([r.raw["resident_number"]], _HEADER, 2) == 1 for r in rows
        ):
            raise ValueError("a broken chunk")
        return apply(fmt, batch, rows, provenance)

    monkeypatch.setattr(importing, "apply", failing)
    batch = _import(town, _csv(town.code), settings, 2)
    job = Job.objects.get(pk=batch.import_job_id)
    assert job.status == Job.Status.FAILED
    assert "partition 1: ValueError: a broken chunk" in job.error
    assert batch.status == Batch.Status.FAILED
    assert "1" not in job.cursor["partitions"]  # nothing of it committed
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # no partition process left behind


_HEADER = tabular.Header({"resident_number": 0}, {}, [], 1)


def test_a_partition_checkpoint_keeps_the_others_and_is_fenced_by_the_lease() -> None:
    job = job_claim(job_id=Job.objects.create(kind="test.partitions").pk, worker="w1")
    assert job is not None
    ctx = JobContext(job=job, worker="w1")
    ctx.checkpoint(cursor={"provenance_id": 1, "partition_count": 2, "partitions": {}})
    ctx.checkpoint_part(part="0", value={"rows": 5, "counts": {"rows": 5}}, progress_add=5)
    ctx.checkpoint_part(part="1", value={"rows": 3, "counts": {"rows": 3}}, progress_add=3)
    ctx.checkpoint_part(part="0", value={"rows": 9, "counts": {"rows": 9}}, progress_add=4)
    job.refresh_from_db()
    assert job.cursor == {
        "provenance_id": 1,
        "partition_count": 2,
        "partitions": {
            "0": {"rows": 9, "counts": {"rows": 9}},
            "1": {"rows": 3, "counts": {"rows": 3}},
        },
    }
    assert job.progress_done == 12
    # Another worker took the job over: the old one writes nothing.
    Job.objects.filter(pk=job.pk).update(worker="w2")
    with pytest.raises(LeaseLost):
        JobContext(job=job, worker="w1").checkpoint_part(
            part="1", value={"rows": 99, "counts": {}}, progress_add=96
        )
    job.refresh_from_db()
    assert job.cursor["partitions"]["1"]["rows"] == 3
    assert job.progress_done == 12
