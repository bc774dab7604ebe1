"""The research export benchmark (bench/bench_research_export.py) at a
tiny size, so that it cannot rot: it writes its population, copies the
cohort's rows, builds the release in each format and measures memory —
here in the test database (--here) instead of a scratch one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"


@pytest.mark.django_db
def test_the_benchmark_runs_at_a_tiny_size(capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import bench_research_export as bench
    finally:
        sys.path.remove(str(BENCH))
    results = bench.main(["--rows", "8000", "--here"])
    printed = capsys.readouterr().out
    # the whole cohort's resources, each family about PER_FAMILY of them
    assert results["resources"] == results["written"]
    assert results["families"] * bench.PER_FAMILY * 0.9 <= results["written"]
    assert results["copy_rate"] > 0
    for label in ("(b) csv", "(c) ndjson", "(d) csv + ndjson"):
        run = results[label]
        assert run["rate"] > 0
        assert "csv/persons.csv" in run["files"] or "fhir/Patient.ndjson" in run["files"]
        assert "release_report.json" in run["files"]
        assert f"{label}:" in printed
    assert results["memory whole cohort"]["peak_mb"] > 0
    assert "of COPY (goal ≥ 25%)" in printed
