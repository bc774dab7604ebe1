"""Property: whatever a municipal file looks like — its encoding, date
spellings, full-width digits, broken quoting, a missing column, huge
fields, wrong column counts — the pipeline never fails and never imports
part of a row: the records written are exactly those of the rows an
independent statement of the rules calls valid, and every other row is
reported at its line."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phr.models import Batch, BatchError, Job, Residency, Resource
from tests.municipal_data.pipeline_support import (
    HEADER,
    confirm,
    receive,
    registered_test_format,
)

pytestmark = pytest.mark.django_db

_numbers = itertools.count(500_000)

# What can happen to one row, and whether the row stays valid.
KINDS = {
    "ok": True,
    "fullwidth": True,  # full-width digits in the resident number and weight
    "era": True,  # a Japanese era date
    "compact": True,  # YYYYMMDD
    "bad_date": False,
    "bad_weight": False,
    "implausible": False,
    "no_resident": False,
    "huge": False,
    "extra_cell": False,
    "short_row": False,
    "unclosed_quote": False,  # swallows the rest of the file
}

FULLWIDTH = str.maketrans("0123456789.", "０１２３４５６７８９．")


@dataclass
class Spec:
    kind: str
    number: str


def _row(code: str, spec: Spec) -> str:
    number, weight, when, family = spec.number, "4.25", "2025-05-01", "前橋"
    if spec.kind == "fullwidth":
        number, weight = number.translate(FULLWIDTH), weight.translate(FULLWIDTH)
    elif spec.kind == "era":
        when = "R7.5.1"
    elif spec.kind == "compact":
        when = "20250501"
    elif spec.kind == "bad_date":
        when = "2025-02-30"
    elif spec.kind == "bad_weight":
        weight = "heavy"
    elif spec.kind == "implausible":
        weight = "400"
    elif spec.kind == "no_resident":
        number = ""
    elif spec.kind == "huge":
        family = "前" * 20_000
    elif spec.kind == "unclosed_quote":
        family = '"前橋'
    cells = [code, number, family, "はな", "2025-04-01", "女", when, weight, "", "", "", "", "", ""]
    cells += ["", "", ""]
    if spec.kind == "extra_cell":
        cells.append("余分")
    if spec.kind == "short_row":
        cells = cells[:5]
    return ",".join(cells)


files = st.tuples(
    # One unclosed quote at most: a second one would close the first.
    st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=12).filter(
        lambda kinds: kinds.count("unclosed_quote") <= 1
    ),
    st.sampled_from(["utf-8", "utf-8-sig", "cp932"]),
    st.sampled_from(["auto", "chosen"]),
    st.booleans(),  # drop a required column from the header
    st.sampled_from(["\r\n", "\n"]),
)


def _imported(municipality: Any, numbers: list[str]) -> set[str]:
    patients = dict(
        Residency.objects.filter(
            municipality=municipality, resident_number__in=numbers
        ).values_list("patient_id", "resident_number")
    )
    found: set[str] = set()
    for compartments in Resource.objects.filter(
        resource_type="Observation", compartments__overlap=list(patients)
    ).values_list("compartments", flat=True):
        found.update(patients[c] for c in compartments)
    return found


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(files)
def test_a_file_never_fails_and_never_imports_part_of_a_row(
    municipality: Any, example: tuple[list[str], str, str, bool, str]
) -> None:
    kinds, encoding, how, drop_column, newline = example
    specs = [Spec(kind, str(next(_numbers))) for kind in kinds]
    header = HEADER.replace("宛名番号,", "") if drop_column else HEADER
    lines = [header, *(_row(municipality.code, spec) for spec in specs)]
    data = (newline.join(lines) + newline).encode(encoding)
    chosen = {"utf-8": "utf-8", "utf-8-sig": "utf-8", "cp932": "cp932"}[encoding]

    with registered_test_format():
        batch = receive(municipality, data, encoding=chosen if how == "chosen" else "auto")
        assert batch.validate_job is not None
        assert Job.objects.get(pk=batch.validate_job.pk).status == Job.Status.DONE
        numbers = [spec.number for spec in specs]
        if drop_column:
            assert batch.status == Batch.Status.REJECTED
            assert batch.file_error["code"] == "missing_columns"
            assert not _imported(municipality, numbers)
            return

        # The oracle: rows up to an unclosed quote are read one by one; the
        # unclosed quote makes one bad record of itself and all that follows.
        expected_valid: list[Spec] = []
        expected_bad_lines: list[int] = []
        for line_no, spec in enumerate(specs, start=2):
            if spec.kind == "unclosed_quote":
                expected_bad_lines.append(line_no)
                break
            if KINDS[spec.kind]:
                expected_valid.append(spec)
            else:
                expected_bad_lines.append(line_no)
        assert batch.status == Batch.Status.VALIDATED, batch.file_error
        assert batch.summary["valid"] == len(expected_valid)
        bad_lines = sorted(
            set(BatchError.objects.filter(batch=batch).values_list("line", flat=True))
        )
        assert bad_lines == expected_bad_lines
        for error in BatchError.objects.filter(batch=batch):
            assert error.message_ja
            assert error.message_en
        if expected_valid:
            batch = confirm(batch, only_valid=bool(expected_bad_lines))
            assert batch.status == Batch.Status.IMPORTED
            assert Job.objects.get(pk=batch.import_job.pk).status == Job.Status.DONE
        assert _imported(municipality, numbers) == {spec.number for spec in expected_valid}


# --------------------------------------------------------------------------
# Through the page staff use: no byte sequence makes a 500
# --------------------------------------------------------------------------

_junk = st.one_of(
    st.binary(max_size=3000),
    st.text(max_size=400).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.lists(
        st.lists(st.text(alphabet='",\r\n前橋0１2R.-年月日ｱ\x00', max_size=12), max_size=8),
        max_size=8,
    ).map(lambda rows: "\r\n".join(",".join(r) for r in rows).encode("utf-8")),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=_junk,
    fmt=st.sampled_from(
        ["infant_checkup", "vaccination", "pregnancy", "school_checkup", "municipal_fhir"]
    ),
    encoding=st.sampled_from(["auto", "utf-8", "cp932"]),
)
def test_the_upload_page_never_answers_500(
    municipality: Any, municipal_officer: Any, data: bytes, fmt: str, encoding: str
) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.test import Client, TestCase
    from django.urls import reverse

    client = Client(raise_request_exception=False)
    client.force_login(municipal_officer)
    before = Resource.objects.count()
    with TestCase.captureOnCommitCallbacks(execute=True):
        response = client.post(
            reverse("municipal:upload"),
            {
                "municipality": municipality.pk,
                "format": fmt,
                "encoding": encoding,
                "file": SimpleUploadedFile("junk.csv", data, content_type="text/csv"),
            },
        )
    assert response.status_code < 500
    batch = Batch.objects.order_by("-pk").first()
    if batch is not None and response.status_code == 302:
        assert batch.status in (Batch.Status.VALIDATED, Batch.Status.REJECTED), batch.status
        page = client.get(reverse("municipal:batch", args=[batch.pk]))
        assert page.status_code == 200
    assert Resource.objects.count() == before  # validation never writes records
