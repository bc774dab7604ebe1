"""Feed pulls against a real local HTTP server that serves scripted pages
and injects faults (docs/formats/feeds.md, phr/feeds.py).

The rule every scenario pins down: the source's cursor moves only together
with the data of the page that gave it, so it never passes data that was
not committed, and a page read twice writes nothing new.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import time as time_of_day
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse
from django.utils import timezone, translation

from phr import feeds
from phr.jobs import job_run
from phr.models import (
    Batch,
    BatchError,
    FeedRun,
    FeedSource,
    Job,
    Organization,
    Provenance,
    Resource,
)
from tests import factories as f
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db

AUTH = "Bearer feed-secret-4711"

# --------------------------------------------------------------------------
# The server: each request gets the next scripted reply, in order
# --------------------------------------------------------------------------


@dataclass
class Reply:
    body: bytes = b""
    status: int = 200
    content_type: str = "text/csv; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering
    cut: int | None = None  # send only this many bytes, announcing the whole body


@dataclass
class Seen:
    path: str
    query: dict[str, list[str]]
    authorization: str | None


class FeedServer:
    """A ThreadingHTTPServer on 127.0.0.1 (a random port) in a thread."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                with server.lock:
                    server.seen.append(
                        Seen(parts.path, parse_qs(parts.query), self.headers.get("Authorization"))
                    )
                    reply = server.replies.pop(0) if server.replies else Reply(status=404)
                if reply.delay:
                    time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", reply.content_type)
                    self.send_header("Content-Length", str(len(reply.body)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(reply.body if reply.cut is None else reply.body[: reply.cut])
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)
                if reply.cut is not None:
                    self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/feed"

    def script(self, *replies: Reply) -> None:
        with self.lock:
            self.replies.extend(replies)


@pytest.fixture(autouse=True)
def _media(settings: Any, tmp_path: Any) -> None:
    settings.MEDIA_ROOT = tmp_path


@pytest.fixture
def server(settings: Any) -> Iterator[FeedServer]:
    settings.FEED_ALLOW_HTTP_HOSTS = ["127.0.0.1"]
    settings.FEED_TIMEOUT_SECONDS = 5
    settings.FEED_RETRY_SECONDS = ["60", "300", "1500"]
    settings.FEED_ALERT_AFTER = 3
    feed_server = FeedServer()
    feed_server.thread.start()
    yield feed_server
    feed_server.httpd.shutdown()
    feed_server.httpd.server_close()


# --------------------------------------------------------------------------
# The real municipal formats: infant checkups as CSV, municipal_fhir for
# Bundles and NDJSON (registered by municipal_data at start-up)
# --------------------------------------------------------------------------

CODE = "102016"  # 前橋市
CHECKUPS = f"urn:hagukumi:municipality:{CODE}:infant_checkup"
HEADER = "市町村コード,宛名番号,氏名（姓）,氏名（名）,生年月日,性別,健診区分,受診日,身長,体重,判定"
RESIDENT = f"urn:hagukumi:resident-number:{CODE}"


@pytest.fixture
def municipality(db: None) -> Organization:
    """The family's town has a real code: the rows name it."""
    return Organization.objects.create(
        kind=Organization.Kind.MUNICIPALITY, code=CODE, name="前橋市", prefecture="10"
    )


def checkup(number: str, weight: str = "6.35", day: str = "2025-05-01") -> str:
    """One infant checkup row: a child, by resident number, measured on a day."""
    return f"{CODE},{number},前橋,はな,2025-01-10,2,3～4か月,{day},61.2,{weight},所見なし"


def csv_page(
    *rows: str,
    next_cursor: str | None,
    next_page: str | None = None,
    count: int | None = None,
) -> Reply:
    body = HEADER + "\r\n" + "".join(f"{row}\r\n" for row in rows)
    headers = {"X-Item-Count": str(len(rows) if count is None else count)}
    if next_cursor is not None:
        headers["X-Next-Cursor"] = next_cursor
    if next_page is not None:
        headers["X-Next-Page"] = next_page
    return Reply(body.encode(), headers=headers)


def checkups() -> set[str]:
    """The rows imported so far, by their key (a row writes several records)."""
    values = Resource.objects.filter(source_system=CHECKUPS, deleted=False).values_list(
        "source_value", flat=True
    )
    return {value.rsplit("#", 1)[0].split("|")[0] for value in values}


def store_state() -> set[tuple[Any, int]]:
    """Every record with its version: equal states mean nothing was written."""
    return set(Resource.objects.values_list("id", "version"))


@pytest.fixture
def source(municipality: Organization, server: FeedServer) -> FeedSource:
    return FeedSource.objects.create(
        organization=municipality,
        name="健診システム",
        url=server.url,
        auth_header=AUTH,
        format="infant_checkup",
        cursor_param="_since",
    )


def english(run: FeedRun) -> str:
    """The run's error as staff reading English see it."""
    with translation.override("en"):
        return feeds.error_text(run.error)


def pull(source: FeedSource) -> FeedRun:
    """Queue and run one pull here (Celery is eager in tests, and the job
    wakes only on commit, which a test transaction never reaches)."""
    job = feeds.feed_pull_start(source_id=source.pk, manual=True)
    assert job is not None
    job_run(job_id=job.pk)
    source.refresh_from_db()
    return FeedRun.objects.get(job=job)


# --------------------------------------------------------------------------
# Pages, cursors and what is committed
# --------------------------------------------------------------------------


def test_it_pulls_every_page_and_commits_each_pages_cursor_with_its_data(
    server: FeedServer, source: FeedSource
) -> None:
    server.script(
        csv_page(
            checkup("1001", "6.31"),
            checkup("1002", "6.32"),
            next_cursor="c1",
            next_page="/feed?page=2",
        ),
        csv_page(checkup("1003", "6.33"), next_cursor="c2"),
    )
    run = pull(source)
    assert run.status == FeedRun.Status.SUCCEEDED
    assert (run.pages, run.items, run.imported, run.errors) == (2, 3, 3, 0)
    assert (run.cursor_before, run.cursor_after) == ("", "c2")
    assert run.duration is not None
    assert source.cursor == "c2"
    assert len(checkups()) == 3
    # The first pull asks from the beginning; the next page is followed as given.
    assert [(s.path, s.query) for s in server.seen] == [("/feed", {}), ("/feed", {"page": ["2"]})]
    # Every page is kept as an imported batch of the run, with the feed as provenance.
    assert list(run.batches.values_list("status", flat=True)) == ["imported", "imported"]
    provenance = Provenance.objects.get(source=f"feed:{source.pk}:{run.pk}")
    assert provenance.origin == Provenance.Origin.MUNICIPALITY
    sources = Resource.objects.filter(source_system=CHECKUPS).values_list("provenance__source")
    assert set(sources) == {(provenance.source,)}

    # The next pull asks since the committed cursor.
    server.script(csv_page(checkup("1004", "6.34"), next_cursor="c3"))
    pull(source)
    assert server.seen[-1].query == {"_since": ["c2"]}
    assert source.cursor == "c3"
    assert len(checkups()) == 4


def test_it_sends_the_authorization_header_on_every_page(
    server: FeedServer, source: FeedSource
) -> None:
    server.script(
        csv_page(checkup("1001", "6.10"), next_cursor="c1", next_page="/feed?page=2"),
        csv_page(next_cursor="c1"),
    )
    pull(source)
    assert [s.authorization for s in server.seen] == [AUTH, AUTH]


def test_it_records_bad_rows_as_errors_and_imports_the_good_ones(
    server: FeedServer, source: FeedSource
) -> None:
    server.script(
        csv_page(
            checkup("1001", "6.10"),
            checkup("1002", "heavy"),
            checkup("1003", "6.20"),
            next_cursor="c1",
        )
    )
    run = pull(source)
    assert run.status == FeedRun.Status.SUCCEEDED
    assert (run.items, run.imported, run.errors) == (3, 2, 1)
    assert source.cursor == "c1"  # bad rows are reported, not retried forever
    error = BatchError.objects.get(batch__feed_run=run)
    assert (error.line, error.column, error.value) == (3, "体重", "heavy")
    assert len(checkups()) == 2


def test_an_empty_page_moves_the_cursor_and_keeps_no_batch(
    server: FeedServer, source: FeedSource
) -> None:
    server.script(csv_page(next_cursor="2026-04-01T00:00:00Z"))
    run = pull(source)
    assert run.status == FeedRun.Status.SUCCEEDED
    assert (run.pages, run.items) == (1, 0)
    assert source.cursor == "2026-04-01T00:00:00Z"
    assert not run.batches.exists()


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        pytest.param(Reply(b"oops", status=500), "HTTP 500", id="500"),
        pytest.param(Reply(b"", status=404), "HTTP 404", id="404"),
        pytest.param(
            Reply(b"<html>login</html>", content_type="text/html", headers={"X-Next-Cursor": "x"}),
            "text/html",
            id="html-instead-of-csv",
        ),
        pytest.param(
            Reply(b"key,value\na,1\n", headers={"X-Next-Cursor": "x"}),
            "X-Item-Count",
            id="no-item-count",
        ),
        pytest.param(
            Reply(b"key,value\na,1\n", headers={"X-Item-Count": "1"}),
            "X-Next-Cursor",
            id="no-next-cursor",
        ),
        pytest.param(
            Reply(b"key\na\n", headers={"X-Item-Count": "1", "X-Next-Cursor": "x"}),
            "could not be read: required columns are missing",
            id="missing-column",
        ),
    ],
)
def test_a_failed_page_commits_nothing_and_keeps_the_cursor(
    server: FeedServer, source: FeedSource, reply: Reply, reason: str
) -> None:
    source.cursor = "c0"
    source.save()
    server.script(reply)
    run = pull(source)
    assert run.status == FeedRun.Status.FAILED
    assert reason in english(run)
    assert source.cursor == "c0"
    assert run.cursor_after == "c0"
    assert len(checkups()) == 0
    assert source.consecutive_failures == 1


def test_a_runs_error_speaks_the_readers_language_and_quotes_no_cell_of_the_page(
    server: FeedServer, source: FeedSource
) -> None:
    missing = b"name\n\xe5\x89\x8d\xe6\xa9\x8b\n"  # no key columns
    duplicate = (HEADER + ",氏名（名）\r\n").encode()  # a header cell twice: it is quoted
    headers = {"X-Item-Count": "1", "X-Next-Cursor": "x"}
    server.script(Reply(missing, headers=headers), Reply(duplicate, headers=headers))
    run = pull(source)
    assert "必須の列がありません" in feeds.error_text(run.error)  # Japanese by default
    assert "required columns are missing" in english(run)
    run = pull(source)
    assert "氏名" not in feeds.error_text(run.error)
    assert "duplicate_column" in english(run)
    # The batch keeps the whole reason, as for an upload.
    assert "氏名（名）" in run.batches.get().file_error["ja"]


def test_a_timeout_fails_the_page(server: FeedServer, source: FeedSource, settings: Any) -> None:
    settings.FEED_TIMEOUT_SECONDS = 0.3
    server.script(Reply(b"key,value\na,1\n", delay=1.5))
    started = time.monotonic()
    run = pull(source)
    assert time.monotonic() - started < 1.5
    assert run.status == FeedRun.Status.FAILED
    assert "did not answer" in english(run)
    assert source.cursor == ""
    assert len(checkups()) == 0


@pytest.mark.parametrize(
    "reply",
    [
        # The connection closes before the announced Content-Length.
        pytest.param(
            Reply(
                b"key,value\na,1\nb,2\nc,3\n",
                headers={"X-Item-Count": "3", "X-Next-Cursor": "c1"},
                cut=16,
            ),
            id="content-length",
        ),
        # The last line is cut mid-way: the row count still matches, the
        # missing final line break shows the loss.
        pytest.param(
            Reply(
                b"key,value\na,1\nb,2\nc,3", headers={"X-Item-Count": "3", "X-Next-Cursor": "c1"}
            ),
            id="last-line-cut",
        ),
        # A whole line is lost: only the count shows it.
        pytest.param(
            Reply(b"key,value\na,1\nb,2\n", headers={"X-Item-Count": "3", "X-Next-Cursor": "c1"}),
            id="line-lost",
        ),
    ],
)
def test_a_truncated_csv_page_commits_nothing(
    server: FeedServer, source: FeedSource, reply: Reply
) -> None:
    server.script(reply)
    run = pull(source)
    assert run.status == FeedRun.Status.FAILED
    assert source.cursor == ""
    assert len(checkups()) == 0
    # A page that was stored (its bytes arrived whole) stays as a rejected batch.
    assert not run.batches.exclude(status=Batch.Status.REJECTED).exists()


def test_a_page_then_a_failure_keeps_the_committed_page_and_its_cursor(
    server: FeedServer, source: FeedSource
) -> None:
    server.script(
        csv_page(
            checkup("1001", "6.10"),
            checkup("1002", "6.20"),
            next_cursor="c1",
            next_page="/feed?page=2",
        ),
        Reply(b"", status=503),
    )
    run = pull(source)
    assert run.status == FeedRun.Status.FAILED
    assert run.pages == 1
    assert source.cursor == "c1"  # the first page's data and cursor are committed
    assert len(checkups()) == 2

    # The retry goes on from the committed cursor, not from the lost page link.
    server.script(csv_page(checkup("1003", "6.30"), next_cursor="c2"))
    again = pull(source)
    assert again.status == FeedRun.Status.SUCCEEDED
    assert server.seen[-1].query == {"_since": ["c1"]}
    assert source.cursor == "c2"
    assert len(checkups()) == 3
    assert source.consecutive_failures == 0


def test_the_same_page_twice_imports_nothing_new_and_the_cursor_does_not_go_back(
    server: FeedServer, source: FeedSource
) -> None:
    page = csv_page(
        checkup("1001", "6.10"), checkup("1002", "6.20"), next_cursor="2026-04-01T10:00:00+09:00"
    )
    server.script(page)
    pull(source)
    assert checkups() == {"1001", "1002"}
    before = store_state()

    # The server serves the page again — the same cursor, then an older one
    # (a cached answer): the store writes nothing, the cursor stays.
    older = csv_page(
        checkup("1001", "6.10"), checkup("1002", "6.20"), next_cursor="2026-03-01T10:00:00+09:00"
    )
    server.script(page, older)
    again = pull(source)
    assert again.status == FeedRun.Status.SUCCEEDED
    assert source.cursor == "2026-04-01T10:00:00+09:00"
    third = pull(source)
    assert third.status == FeedRun.Status.SUCCEEDED
    assert source.cursor == "2026-04-01T10:00:00+09:00"
    assert store_state() == before  # no record, no version written
    batches = Batch.objects.filter(feed_run__source=source).order_by("pk")
    assert [b.result["created"] for b in batches][1:] == [0, 0]
    assert [b.result["updated"] for b in batches] == [0, 0, 0]


def test_the_same_page_twice_in_one_run_writes_nothing_twice(
    server: FeedServer, source: FeedSource
) -> None:
    server.script(
        csv_page(checkup("1001", "6.10"), next_cursor="c1", next_page="/feed?page=2"),
        csv_page(checkup("1001", "6.10"), next_cursor="c1", next_page="/feed?page=3"),
        csv_page(next_cursor="c2"),
    )
    run = pull(source)
    assert run.status == FeedRun.Status.SUCCEEDED
    assert run.pages == 3
    first, second = run.batches.order_by("pk")
    assert first.result["created"] > 0
    assert (second.result["created"], second.result["updated"]) == (0, 0)
    assert all(version == 1 for _id, version in store_state())
    assert source.cursor == "c2"


def test_next_page_links_that_go_round_fail_the_run(server: FeedServer, source: FeedSource) -> None:
    server.script(
        csv_page(checkup("1001", "6.10"), next_cursor="c1", next_page="/feed?page=2"),
        csv_page(checkup("1002", "6.20"), next_cursor="c2", next_page="/feed?page=2"),
    )
    run = pull(source)
    assert run.status == FeedRun.Status.FAILED
    assert "circle" in english(run)
    assert source.cursor == "c2"  # both pages were good and are kept
    assert len(server.seen) == 2


def test_a_worker_that_dies_mid_run_is_resumed_at_the_next_page(
    server: FeedServer, source: FeedSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.script(
        csv_page(checkup("1001", "6.10"), next_cursor="c1", next_page="/feed?page=2"),
        csv_page(checkup("1002", "6.20"), next_cursor="c2"),
    )
    job = feeds.feed_pull_start(source_id=source.pk, manual=True)
    assert job is not None
    real_fetch = feeds.fetch
    calls = []

    def dies_on_the_second_page(*args: Any) -> Any:
        calls.append(args[1])
        if len(calls) == 2:
            raise feeds.LeaseLost(job.pk)  # as if this worker were gone
        return real_fetch(*args)

    monkeypatch.setattr(feeds, "fetch", dies_on_the_second_page)
    assert job_run(job_id=job.pk) == "lease-lost"
    source.refresh_from_db()
    assert source.cursor == "c1"
    # The lease runs out; the sweeper re-queues the job and a worker resumes it.
    Job.objects.filter(pk=job.pk).update(lease_until=timezone.now(), status=Job.Status.QUEUED)
    monkeypatch.setattr(feeds, "fetch", real_fetch)
    assert job_run(job_id=job.pk) == "done"
    run = FeedRun.objects.get(job=job)  # one run, continued
    assert (run.status, run.pages, run.items) == (FeedRun.Status.SUCCEEDED, 2, 2)
    assert [s.query for s in server.seen] == [{}, {"page": ["2"]}]
    assert len(checkups()) == 2


# --------------------------------------------------------------------------
# FHIR pages: Bundles with a next link, NDJSON
# --------------------------------------------------------------------------


def bundle(*resources: dict[str, Any], next_url: str = "", last_updated: str = "") -> bytes:
    data: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r} for r in resources],
    }
    if last_updated:
        data["meta"] = {"lastUpdated": last_updated}
    if next_url:
        data["link"] = [{"relation": "self", "url": "x"}, {"relation": "next", "url": next_url}]
    return orjson.dumps(data)


def fhir_child() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "p1",
        "meta": {
            "tag": [{"system": "https://hagukumi.jp/fhir/CodeSystem/patient-kind", "code": "child"}]
        },
        "identifier": [{"system": RESIDENT, "value": "2001"}],
        "name": [{"family": "前橋", "given": ["はな"]}],
        "birthDate": "2025-01-10",
        "gender": "female",
    }


def fhir_weight(key: str, kg: float, *, known: bool = False) -> dict[str, Any]:
    """A body weight of the child: by the file's Patient, or (known) by its
    resident number, for a person an earlier page brought."""
    subject = (
        {"identifier": {"system": RESIDENT, "value": "2001"}}
        if known
        else {"reference": "Patient/p1"}
    )
    return {
        "resourceType": "Observation",
        "identifier": [{"system": "urn:example:kenshin", "value": key}],
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": subject,
        "effectiveDateTime": "2025-05-01",
        "valueQuantity": {
            "value": kg,
            "unit": "kg",
            "system": "http://unitsofmeasure.org",
            "code": "kg",
        },
    }


def weights() -> int:
    return Resource.objects.filter(resource_type="Observation", deleted=False).count()


@pytest.fixture
def fhir_source(source: FeedSource) -> FeedSource:
    source.format = "municipal_fhir"
    source.save()
    return source


def test_it_follows_a_bundles_next_link_and_takes_its_last_updated_as_cursor(
    server: FeedServer, fhir_source: FeedSource
) -> None:
    fhir = "application/fhir+json"
    server.script(
        Reply(
            bundle(
                fhir_child(),
                fhir_weight("o1", 6.1),
                next_url=f"{server.url}?_page=2",
                last_updated="2026-04-01T09:00:00+09:00",
            ),
            content_type=fhir,
        ),
        Reply(
            bundle(fhir_weight("o2", 6.4, known=True), last_updated="2026-04-01T09:00:01+09:00"),
            content_type=fhir,
        ),
    )
    run = pull(fhir_source)
    assert run.status == FeedRun.Status.SUCCEEDED
    assert (run.pages, run.items, run.imported) == (2, 3, 3)
    assert fhir_source.cursor == "2026-04-01T09:00:01+09:00"
    assert weights() == 2
    assert server.seen[1].query == {"_page": ["2"]}
    # The same Bundle again writes nothing.
    before = store_state()
    server.script(
        Reply(
            bundle(fhir_child(), fhir_weight("o1", 6.1), last_updated="2026-04-01T09:00:01+09:00"),
            content_type=fhir,
        )
    )
    assert pull(fhir_source).status == FeedRun.Status.SUCCEEDED
    assert store_state() == before


def test_a_bundle_page_before_the_last_does_not_move_the_cursor_to_the_search_time(
    server: FeedServer, fhir_source: FeedSource
) -> None:
    # Page 1 says "searched at 10:00" and links page 2, whose entries are
    # older than 10:00: after a failure on page 2, a cursor of 10:00 would
    # skip them for good.
    fhir_source.cursor = "2026-04-01T08:00:00+09:00"
    fhir_source.save()
    fhir = "application/fhir+json"
    searched = "2026-04-01T10:00:00+09:00"
    page_1 = bundle(
        fhir_child(), fhir_weight("o1", 6.1), next_url="/feed?_page=2", last_updated=searched
    )
    page_2 = bundle(fhir_weight("o2", 6.4, known=True), last_updated=searched)
    server.script(Reply(page_1, content_type=fhir), Reply(status=502))
    run = pull(fhir_source)
    assert (run.status, run.pages) == (FeedRun.Status.FAILED, 1)
    assert weights() == 1  # page 1 is committed
    assert fhir_source.cursor == "2026-04-01T08:00:00+09:00"  # the cursor is not

    server.script(Reply(page_1, content_type=fhir), Reply(page_2, content_type=fhir))
    assert pull(fhir_source).status == FeedRun.Status.SUCCEEDED
    assert server.seen[-2].query == {"_since": ["2026-04-01T08:00:00+09:00"]}
    assert weights() == 2
    assert fhir_source.cursor == searched


def test_a_malformed_or_cut_bundle_commits_nothing(
    server: FeedServer, fhir_source: FeedSource
) -> None:
    whole = bundle(fhir_child(), fhir_weight("o1", 6.1), last_updated="2026-04-01T09:00:00+09:00")
    server.script(
        Reply(b'{"resourceType": "Bundle", "entry": [', content_type="application/fhir+json"),
        Reply(whole, content_type="application/fhir+json", cut=len(whole) - 5),
        Reply(b'{"resourceType": "Patient"}', content_type="application/fhir+json"),
    )
    for expected in ("not valid JSON", "cut short", "not a FHIR Bundle"):
        run = pull(fhir_source)
        assert run.status == FeedRun.Status.FAILED
        assert expected in english(run)
    assert fhir_source.cursor == ""
    assert weights() == 0


def test_it_reads_ndjson_pages_and_refuses_a_truncated_one(
    server: FeedServer, fhir_source: FeedSource
) -> None:
    resources = [fhir_child(), fhir_weight("n1", 6.1), fhir_weight("n2", 6.2)]
    lines = b"".join(orjson.dumps(r) + b"\n" for r in resources)
    ndjson = "application/fhir+ndjson"
    headers = {"X-Item-Count": "3", "X-Next-Cursor": "n3"}
    server.script(
        Reply(lines[:-20], content_type=ndjson, headers=headers),  # last line cut
        Reply(lines[: lines.index(b"\n") + 1], content_type=ndjson, headers=headers),  # lines lost
        Reply(lines, content_type=ndjson, headers=headers),
    )
    for _ in range(2):
        failed = pull(fhir_source)
        assert failed.status == FeedRun.Status.FAILED
    assert fhir_source.cursor == ""
    assert weights() == 0
    run = pull(fhir_source)
    assert run.status == FeedRun.Status.SUCCEEDED
    assert fhir_source.cursor == "n3"
    assert weights() == 2


def test_a_fhir_page_reports_resources_the_format_refuses(
    server: FeedServer, fhir_source: FeedSource
) -> None:
    anonymous = fhir_weight("o2", 6.2)
    del anonymous["identifier"]  # a record must say who it is at its source
    server.script(
        Reply(
            bundle(
                fhir_child(), fhir_weight("o1", 6.1), anonymous, last_updated="2026-04-01T00:00:00Z"
            ),
            content_type="application/fhir+json",
        )
    )
    run = pull(fhir_source)
    assert (run.status, run.items, run.imported, run.errors) == ("succeeded", 3, 2, 1)
    assert BatchError.objects.get(batch__feed_run=run).line == 3
    assert weights() == 1


# --------------------------------------------------------------------------
# Where a feed may go
# --------------------------------------------------------------------------


def test_it_refuses_plain_http_to_hosts_not_allowed(
    server: FeedServer, source: FeedSource, settings: Any
) -> None:
    settings.FEED_ALLOW_HTTP_HOSTS = []
    run = pull(source)
    assert run.status == FeedRun.Status.FAILED
    assert "https" in english(run)
    assert server.seen == []  # nothing was sent, the auth header least of all
    with pytest.raises(ValidationError):
        feeds.url_check("http://kenshin.example.jp/feed")
    feeds.url_check("https://kenshin.example.jp/feed")
    with pytest.raises(ValidationError):
        feeds.url_check("https://user:pw@kenshin.example.jp/feed")
    with pytest.raises(ValidationError):
        feeds.url_check("file:///etc/passwd")


def test_it_follows_a_redirect_on_the_same_server_only(
    server: FeedServer, source: FeedSource, settings: Any
) -> None:
    port = server.httpd.server_address[1]
    settings.FEED_ALLOW_HTTP_HOSTS = ["127.0.0.1", "localhost"]
    server.script(
        Reply(status=302, headers={"Location": "/moved"}),
        csv_page(checkup("1001", "6.10"), next_cursor="c1"),
        Reply(status=302, headers={"Location": f"http://localhost:{port}/elsewhere"}),
    )
    assert pull(source).status == FeedRun.Status.SUCCEEDED
    assert server.seen[1].path == "/moved"
    run = pull(source)
    assert run.status == FeedRun.Status.FAILED
    assert "another server" in english(run)
    assert len(server.seen) == 3  # the other server was never asked
    assert source.cursor == "c1"


def test_a_next_page_link_to_another_server_fails_the_run(
    server: FeedServer, source: FeedSource
) -> None:
    server.script(
        csv_page(checkup("1001", "6.10"), next_cursor="c1", next_page="https://evil.example/feed")
    )
    run = pull(source)
    assert run.status == FeedRun.Status.FAILED
    assert source.cursor == "c1"
    assert len(server.seen) == 1


def test_it_refuses_a_page_larger_than_the_limit(
    server: FeedServer, source: FeedSource, settings: Any
) -> None:
    settings.FEED_MAX_PAGE_MB = 1
    big = b"key,value\n" + b"".join(b"k%07d,1\n" % i for i in range(120_000))
    server.script(Reply(big, headers={"X-Item-Count": "120000", "X-Next-Cursor": "c1"}))
    run = pull(source)
    assert run.status == FeedRun.Status.FAILED
    assert "larger than 1 MB" in english(run)


# --------------------------------------------------------------------------
# Failures in a row: retries, the alert, the reset
# --------------------------------------------------------------------------


def test_a_failed_run_is_retried_after_1_5_and_25_minutes_then_no_more(
    server: FeedServer,
    source: FeedSource,
    django_capture_on_commit_callbacks: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from phr import tasks

    scheduled: list[tuple[list[Any], dict[str, Any], int]] = []
    monkeypatch.setattr(
        tasks.feed_pull,
        "apply_async",
        lambda args, kwargs, countdown: scheduled.append((args, kwargs, countdown)),
    )
    for attempt in range(4):
        server.script(Reply(status=500))
        job = feeds.feed_pull_start(source_id=source.pk, attempt=attempt)
        assert job is not None
        with django_capture_on_commit_callbacks(execute=True):
            job_run(job_id=job.pk)
    runs = list(FeedRun.objects.filter(source=source).order_by("pk"))
    assert [countdown for _args, _kwargs, countdown in scheduled] == [60, 300, 1500]
    assert [kwargs for _args, kwargs, _countdown in scheduled] == [
        {"retry_of": runs[0].pk, "attempt": 1},
        {"retry_of": runs[1].pk, "attempt": 2},
        {"retry_of": runs[2].pk, "attempt": 3},
    ]
    assert all(args == [source.pk] for args, _kwargs, _countdown in scheduled)


def test_a_retry_is_dropped_when_another_run_started_since(source: FeedSource) -> None:
    failed = FeedRun.objects.create(source=source, status=FeedRun.Status.FAILED)
    FeedRun.objects.create(source=source, status=FeedRun.Status.SUCCEEDED)
    assert feeds.feed_pull_start(source_id=source.pk, retry_of=failed.pk, attempt=1) is None


def test_it_queues_one_pull_at_a_time_and_none_for_a_disabled_source(
    source: FeedSource,
) -> None:
    from phr.tasks import feed_pull

    assert feeds.feed_pull_start(source_id=source.pk) is not None
    assert feeds.feed_pull_start(source_id=source.pk) is None  # one is queued
    assert feed_pull(source.pk) is False
    Job.objects.filter(kind=feeds.JOB_KIND).update(status=Job.Status.DONE)
    source.enabled = False
    source.save()
    assert feed_pull(source.pk) is False  # the schedule skips a disabled source
    assert feeds.feed_run_now(source=source, by=None) is not None  # staff may still run it


def test_staff_get_one_alert_after_three_failures_in_a_row_until_a_run_succeeds(
    server: FeedServer,
    source: FeedSource,
    municipal_officer: Any,
    other_municipal_officer: Any,
    django_capture_on_commit_callbacks: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(feeds, "_schedule_retry", lambda *args: None)
    former = f.UserFactory(email="former@example.jp")
    f.Membership.objects.create(
        user=former,
        organization=source.organization,
        role=f.Role.MUNICIPAL_STAFF,
        valid_from=timezone.localdate().replace(year=2020),
        valid_to=timezone.localdate().replace(year=2021),
    )

    def fail() -> FeedRun:
        server.script(Reply(b"name: Hanako Maebashi", status=500))
        with django_capture_on_commit_callbacks(execute=True):
            return pull(source)

    fail()
    fail()
    assert mail.outbox == []
    fail()
    assert source.consecutive_failures == 3
    assert source.alerted_at is not None
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == [municipal_officer.email]  # not another town's, not a former member
    assert "健診システム" in message.subject
    assert "HTTP 500" in message.body
    assert "Hanako" not in message.body  # nothing from the page's content
    assert f"/municipal/feeds/{source.pk}/" in message.body
    fail()
    assert len(mail.outbox) == 1  # once, until a run succeeds

    server.script(csv_page(checkup("1001", "6.10"), next_cursor="c1"))
    assert pull(source).status == FeedRun.Status.SUCCEEDED
    assert (source.consecutive_failures, source.alerted_at) == (0, None)
    for _ in range(3):
        fail()
    assert len(mail.outbox) == 2


def test_the_alert_speaks_the_recipients_language(
    server: FeedServer,
    source: FeedSource,
    settings: Any,
    django_capture_on_commit_callbacks: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(feeds, "_schedule_retry", lambda *args: None)
    settings.FEED_ALERT_AFTER = 1
    f.make_member(f.Role.MUNICIPAL_STAFF, source.organization, email="ja@example.jp")
    f.make_member(f.Role.MUNICIPAL_STAFF, source.organization, email="en@example.jp", language="en")
    server.script(Reply(status=500))
    with django_capture_on_commit_callbacks(execute=True):
        pull(source)
    by_address = {m.to[0]: m for m in mail.outbox}
    assert "HTTP 500" in by_address["en@example.jp"].body
    assert "keeps failing" in by_address["en@example.jp"].subject
    assert "keeps failing" not in by_address["ja@example.jp"].subject


def test_a_run_given_up_by_the_sweeper_counts_as_a_failure(source: FeedSource) -> None:
    from phr.jobs import sweep_expired_leases

    job = Job.objects.create(
        kind=feeds.JOB_KIND,
        payload={"source_id": source.pk, "attempt": 3},
        status=Job.Status.RUNNING,
        attempts=5,
        max_attempts=5,
        lease_until=timezone.now() - timedelta(seconds=1),
    )
    run = FeedRun.objects.create(source=source, job=job)
    Job.objects.filter(pk=job.pk).update(cursor={"run_id": run.pk})
    sweep_expired_leases()
    run.refresh_from_db()
    source.refresh_from_db()
    assert run.status == FeedRun.Status.FAILED
    assert "given up" in english(run)
    assert source.consecutive_failures == 1


# --------------------------------------------------------------------------
# Sources and their schedules
# --------------------------------------------------------------------------


def test_a_source_keeps_its_schedule_in_a_beat_periodic_task(source: FeedSource) -> None:
    feeds.feed_source_save(
        source=source, schedule=feeds.Schedule(every_minutes=15), auth_header=None, by=None
    )
    task = source.periodic_task
    assert task is not None
    assert (task.task, task.args, task.enabled) == ("phr.tasks.feed_pull", f"[{source.pk}]", True)
    assert (task.interval.every, task.interval.period, task.crontab) == (15, "minutes", None)
    assert feeds.feed_schedule(source) == feeds.Schedule(every_minutes=15)
    assert source.auth_header == AUTH  # None keeps the stored header

    source.enabled = False
    feeds.feed_source_save(
        source=source,
        schedule=feeds.Schedule(daily_at=time_of_day(6, 30)),
        auth_header="Bearer new",
        by=None,
    )
    task.refresh_from_db()
    assert task.interval is None
    assert (task.crontab.hour, task.crontab.minute, str(task.crontab.timezone)) == (
        "6",
        "30",
        "Asia/Tokyo",
    )
    assert task.enabled is False
    assert feeds.feed_schedule(source) == feeds.Schedule(daily_at=time_of_day(6, 30))
    source.refresh_from_db()
    assert source.auth_header == "Bearer new"


def test_a_source_must_point_to_https_and_use_a_format_of_its_organization(
    source: FeedSource, settings: Any
) -> None:
    settings.FEED_ALLOW_HTTP_HOSTS = []
    every = feeds.Schedule(every_minutes=60)
    with pytest.raises(ValidationError):
        feeds.feed_source_save(source=source, schedule=every, auth_header=None, by=None)
    source.url = "https://kenshin.example.jp/feed"
    source.format = "no-such-format"
    with pytest.raises(ValidationError):
        feeds.feed_source_save(source=source, schedule=every, auth_header=None, by=None)
    source.format = "infant_checkup"
    source.organization = f.ClinicFactory()
    with pytest.raises(ValidationError):
        feeds.feed_source_save(source=source, schedule=every, auth_header=None, by=None)


# --------------------------------------------------------------------------
# A real Celery worker on Redis
# --------------------------------------------------------------------------


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_pulls_on_the_beat_task_and_retries_a_failed_run(
    server: FeedServer, source: FeedSource, start_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from phr.tasks import feed_pull

    # The worker is another process: it reads the feed settings from its
    # environment (a 1-second retry instead of a minute).
    monkeypatch.setenv("FEED_ALLOW_HTTP_HOSTS", "127.0.0.1")
    monkeypatch.setenv("FEED_RETRY_SECONDS", "1")
    monkeypatch.setenv("FEED_TIMEOUT_SECONDS", "5")
    start_worker()
    server.script(
        Reply(status=500),
        csv_page(checkup("1001"), checkup("1002"), next_cursor="c1", next_page="/feed?page=2"),
        csv_page(checkup("1003"), next_cursor="c2"),
    )
    feed_pull.delay(source.pk)  # what beat sends on the schedule
    wait_for(lambda: FeedRun.objects.filter(status=FeedRun.Status.SUCCEEDED).exists(), 60)
    failed, succeeded = FeedRun.objects.filter(source=source).order_by("pk")
    assert failed.status == FeedRun.Status.FAILED
    assert (succeeded.pages, succeeded.items, succeeded.imported) == (2, 3, 3)
    assert succeeded.started_at - failed.finished_at >= timedelta(seconds=1)
    source.refresh_from_db()
    assert (source.cursor, source.consecutive_failures) == ("c2", 0)
    assert checkups() == {"1001", "1002", "1003"}
    assert [s.authorization for s in server.seen] == [AUTH] * 3


# --------------------------------------------------------------------------
# The staff pages
# --------------------------------------------------------------------------


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def form_data(**changes: Any) -> dict[str, Any]:
    data = {
        "name": "予防接種システム",
        "url": "https://yobou.example.jp/feed",
        "auth_header": "Bearer first-secret",
        "format": "infant_checkup",
        "cursor_param": "_since",
        "schedule": "every",
        "every_minutes": "30",
        "daily_at": "",
        "enabled": "on",
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def test_staff_add_a_feed_with_its_schedule_and_never_see_its_header_again(
    municipal_officer: Any, municipality: Organization
) -> None:
    client = client_for(municipal_officer)
    assert client.get(reverse("municipal:feed_new")).status_code == 200
    response = client.post(reverse("municipal:feed_new"), form_data())
    source = FeedSource.objects.get(name="予防接種システム")
    assert response.status_code == 302
    assert response["Location"] == reverse("municipal:feed_detail", args=[source.pk])
    assert (source.organization, source.auth_header) == (municipality, "Bearer first-secret")
    assert source.created_by == municipal_officer
    assert feeds.feed_schedule(source) == feeds.Schedule(every_minutes=30)

    edit = reverse("municipal:feed_edit", args=[source.pk])
    for url in (edit, reverse("municipal:feed_detail", args=[source.pk])):
        assert "first-secret" not in client.get(url).content.decode()
    # Blank keeps the stored header; a new schedule replaces the old one.
    client.post(edit, form_data(auth_header="", schedule="daily", daily_at="06:30"))
    source.refresh_from_db()
    assert source.auth_header == "Bearer first-secret"
    assert feeds.feed_schedule(source) == feeds.Schedule(daily_at=time_of_day(6, 30))
    client.post(edit, form_data(auth_header="Bearer second"))
    source.refresh_from_db()
    assert source.auth_header == "Bearer second"
    client.post(edit, form_data(auth_header="", clear_auth_header="on"))
    source.refresh_from_db()
    assert source.auth_header == ""


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"url": "http://yobou.example.jp/feed"}, "url"),
        ({"cursor_param": "a b"}, "cursor_param"),
        ({"auth_header": "Bearer x\r\nX-Evil: 1"}, "auth_header"),
        ({"schedule": "daily", "daily_at": ""}, "daily_at"),
        ({"every_minutes": "1"}, "every_minutes"),
        ({"format": "no-such-format"}, "format"),
    ],
)
def test_the_feed_form_refuses_bad_input(
    municipal_officer: Any, changes: dict[str, str], field: str
) -> None:
    response = client_for(municipal_officer).post(
        reverse("municipal:feed_new"), form_data(**changes)
    )
    assert response.status_code == 200
    assert field in response.context["form"].errors
    assert not FeedSource.objects.exists()


def test_run_now_queues_one_pull_and_the_page_lists_the_runs(
    municipal_officer: Any, source: FeedSource, server: FeedServer
) -> None:
    client = client_for(municipal_officer)
    run_url = reverse("municipal:feed_run", args=[source.pk])
    assert client.get(run_url).status_code == 405
    assert client.post(run_url).status_code == 302
    assert client.post(run_url).status_code == 302
    assert Job.objects.filter(kind=feeds.JOB_KIND).count() == 1  # the second was refused
    Job.objects.filter(kind=feeds.JOB_KIND).delete()

    server.script(csv_page(checkup("1001", "6.10"), checkup("1002", "x"), next_cursor="c1"))
    run = pull(source)
    server.script(Reply(status=500))
    failed = pull(source)
    html = client.get(reverse("municipal:feed_detail", args=[source.pk])).content.decode()
    batch = run.batches.get()
    assert reverse("municipal:batch", args=[batch.pk]) in html
    assert reverse("municipal:batch_errors_csv", args=[batch.pk]) in html
    assert f'id="run-{failed.pk}"' in html
    assert "HTTP 500" in html
    listing = client.get(reverse("municipal:feed_list")).content.decode()
    assert source.name in listing


def test_another_municipalitys_feed_is_a_404(
    other_municipal_officer: Any, staff_without_mfa: Any, stranger: Any, source: FeedSource
) -> None:
    urls = [
        reverse(name, args=[source.pk])
        for name in ("municipal:feed_detail", "municipal:feed_edit", "municipal:feed_run")
    ]
    other = client_for(other_municipal_officer)
    # (A verb the page does not take is a 405 for everyone, before any lookup.)
    assert [other.get(url).status_code for url in urls] == [404, 404, 405]
    assert [other.post(url, form_data()).status_code for url in urls] == [405, 404, 404]
    assert source.name not in other.get(reverse("municipal:feed_list")).content.decode()
    assert client_for(stranger).get(reverse("municipal:feed_list")).status_code == 404
    # Staff without an authenticator are sent to set one up first.
    response = client_for(staff_without_mfa).get(reverse("municipal:feed_list"))
    assert response.status_code == 302
    assert not Job.objects.exists()
    source.refresh_from_db()
    assert source.auth_header == AUTH
