"""Feed pulls: records an outside system (a municipal health system, a
clinic EHR) gives us page by page, since a cursor, on a schedule.

The protocol is docs/formats/feeds.md. In short: we GET the source's URL
with `?<cursor_param>=<cursor>`; the server answers with the items changed
since then (CSV, a FHIR Bundle or FHIR NDJSON), the cursor to ask with next
time, and possibly a link to the next page.

A pull is a "feed.pull" job (phr/jobs.py: a row with a lease) that records
a FeedRun. Each page is stored as a Batch (the raw bytes, with their
checksum, for provenance and diagnosis), read whole with its format, and
then committed in ONE transaction: the bad rows as BatchErrors, the valid
rows through the format's apply (the idempotent store), the source's new
cursor, the run's counters and the job's checkpoint. So the cursor never
moves past data that was not committed, a page read twice writes nothing
new, and a worker killed mid-run resumes at the next page.

A page that cannot be fetched or read whole (an error status, a timeout, a
wrong content type, malformed or truncated content, a count that does not
match) commits nothing and fails the run. A failed run is retried after
FEED_RETRY_SECONDS; after FEED_ALERT_AFTER failed runs in a row the
organization's staff get one mail, and no other until a run succeeds.

This module is generic: municipal_data and clinics bring the formats and
the screens.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from datetime import time as time_of_day
from typing import IO, Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import orjson
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import transaction
from django.urls import NoReverseMatch, reverse
from django.utils import timezone, translation
from django.utils.translation import gettext, gettext_noop
from django.utils.translation import gettext_lazy as _

from phr.jobs import JobContext, LeaseLost, job_enqueue, job_handler
from phr.models import (
    ROLE_ORGANIZATION_KIND,
    Batch,
    BatchError,
    FeedRun,
    FeedSource,
    Job,
    Membership,
    Organization,
    Provenance,
    User,
)
from phr.pipeline import (
    PipelineFormat,
    add_counts,
    batch_receive,
    error_rows,
    format_get,
)
from phr.services import provenance_create
from phr.tabular import FileError, Row

logger = logging.getLogger(__name__)

JOB_KIND = "feed.pull"
# A run stops (and fails) rather than follow more pages than this: a server
# whose next-page links never end is broken.
MAX_PAGES_PER_RUN = 1000
READ_BLOCK = 64 * 1024
# How much longer than FEED_TIMEOUT_SECONDS a whole page may take to arrive.
PAGE_DEADLINE_FACTOR = 10

CSV_TYPES = frozenset({"text/csv"})
BUNDLE_TYPES = frozenset({"application/fhir+json", "application/json"})
NDJSON_TYPES = frozenset({"application/fhir+ndjson", "application/x-ndjson", "application/ndjson"})
CSV, BUNDLE, NDJSON = "csv", "bundle", "ndjson"
SUFFIX = {CSV: ".csv", BUNDLE: ".json", NDJSON: ".ndjson"}


class FeedError(Exception):
    """A page that cannot be used, and why — in words staff may read (never
    anything from the page's content, which may hold patient data).

    `message` is an English msgid (marked with gettext_noop) and `params`
    its values: the run stores both and shows them in the reader's
    language."""

    def __init__(self, message: str, *, texts: dict[str, str] | None = None, **params: Any) -> None:
        super().__init__(message % params if params else message)
        self.message = message
        self.params = params
        # Already in both languages (a format's own Japanese and English).
        self.texts = texts

    def stored(self) -> str:
        if self.texts:
            return json.dumps(self.texts, ensure_ascii=False)
        return json.dumps({"message": self.message, "params": self.params}, ensure_ascii=False)


def error_text(stored: str) -> str:
    """A run's stored error in the current language."""
    if not stored:
        return ""
    try:
        data = json.loads(stored)
    except ValueError:
        return stored
    if not isinstance(data, dict):
        return stored
    if "message" in data:
        return gettext(data["message"]) % (data.get("params") or {})
    if "ja" in data and "en" in data:  # a FileError of the format
        return str(
            data["ja"] if (translation.get_language() or "ja").startswith("ja") else data["en"]
        )
    return stored


def _in(language: str, error: FeedError) -> str:
    with translation.override(language):
        return error_text(error.stored())


def _file_error(error: FileError) -> str:
    return json.dumps({"code": error.code, "ja": error.ja, "en": error.en}, ensure_ascii=False)


# --------------------------------------------------------------------------
# Where a feed may point
# --------------------------------------------------------------------------


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def url_check(url: str) -> None:
    """A feed URL is https, or http to a host FEED_ALLOW_HTTP_HOSTS lists
    (a test server). Raises ValidationError."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if not host or parts.scheme not in ("https", "http"):
        raise ValidationError(_("Enter an https:// address."), code="scheme")
    if parts.username or parts.password:
        raise ValidationError(
            _("Put the credentials in the authorization header, not in the address."),
            code="credentials",
        )
    allowed = {h.lower() for h in settings.FEED_ALLOW_HTTP_HOSTS}
    if parts.scheme == "http" and host not in allowed:
        raise ValidationError(_("Feeds must use https://."), code="scheme")


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to the same scheme, host and port: the
    Authorization header must not travel to another server."""

    def __init__(self, origin: tuple[str, str, int | None]) -> None:
        self.origin = origin

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        if _origin(urljoin(req.full_url, newurl)) != self.origin:
            raise FeedError(gettext_noop("The server redirected the feed to another server."))
        return super().redirect_request(req, fp, code, msg, headers, newurl)


# --------------------------------------------------------------------------
# Fetching a page
# --------------------------------------------------------------------------


@dataclass
class Page:
    """One page as fetched: its kind, bytes, and what the server said about
    it. `items` is the number of records the server says the page holds."""

    url: str
    kind: str
    body: bytes
    items: int
    next_cursor: str  # "" keeps the source's cursor
    next_page: str


@dataclass(frozen=True)
class CursorRule:
    """How a format's feed writes its cursor and reads the next one, when
    not as the protocol's default (`<cursor_param>=<cursor>`; X-Next-Cursor
    or Bundle.meta.lastUpdated). A FHIR server searched with
    `_lastUpdated=gt<instant>` (clinics/fhir_feed.py) needs the prefix, and
    its next cursor is the newest meta.lastUpdated of the page's entries:
    the search time would pass entries of later pages not yet committed."""

    prefix: str = ""
    # (page body, the source's cursor) -> the cursor after this page, or ""
    # to keep the protocol's.
    next_cursor: Callable[[bytes, str], str] | None = None


# Registered by the apps that bring the formats, by format key.
CURSOR_RULES: dict[str, CursorRule] = {}


def page_url(source: FeedSource, cursor: str) -> str:
    """The first page of a pull: the source's URL with the cursor added."""
    if not cursor:
        return source.url
    rule = CURSOR_RULES.get(source.format)
    parts = urlsplit(source.url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    query = [(k, v) for k, v in query if k != source.cursor_param]
    query.append((source.cursor_param, (rule.prefix if rule else "") + cursor))
    return urlunsplit(parts._replace(query=urlencode(query)))


def page_kinds(format_key: str) -> frozenset[str]:
    """The page kinds a format reads: FHIR formats (their key names fhir)
    read Bundles and NDJSON, the others CSV."""
    return frozenset({BUNDLE, NDJSON}) if "fhir" in format_key else frozenset({CSV})


def _kind_of(content_type: str) -> str | None:
    if content_type in CSV_TYPES:
        return CSV
    if content_type in BUNDLE_TYPES:
        return BUNDLE
    if content_type in NDJSON_TYPES:
        return NDJSON
    return None


def _accept(kinds: frozenset[str]) -> str:
    types = []
    if CSV in kinds:
        types.append("text/csv")
    if BUNDLE in kinds:
        types += ["application/fhir+json", "application/fhir+ndjson"]
    return ", ".join(types)


def _read_body(response: http.client.HTTPResponse, limit: int, deadline: float) -> bytes:
    declared = response.headers.get("Content-Length")
    length: int | None = None
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise FeedError(gettext_noop("The page has an invalid Content-Length.")) from None
        if length > limit:
            raise FeedError(
                gettext_noop("The page is larger than %(mb)s MB."), mb=settings.FEED_MAX_PAGE_MB
            )
    blocks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > deadline:
            raise FeedError(gettext_noop("The page took too long to arrive."))
        block = response.read(READ_BLOCK)
        if not block:
            break
        size += len(block)
        if size > limit:
            raise FeedError(
                gettext_noop("The page is larger than %(mb)s MB."), mb=settings.FEED_MAX_PAGE_MB
            )
        blocks.append(block)
    # http.client returns a short body without complaint when the server
    # closes the connection early: compare with what it announced.
    if length is not None and size != length:
        raise FeedError(
            gettext_noop("The page was cut short (%(got)s of %(length)s bytes)."),
            got=size,
            length=length,
        )
    return b"".join(blocks)


def fetch(source: FeedSource, url: str, kinds: frozenset[str]) -> tuple[bytes, str, Any, str]:
    """GET one page: (body, content type, headers, URL after redirects).
    Raises FeedError for anything but a whole 200 answer."""
    try:
        url_check(url)
    except ValidationError:
        raise FeedError(gettext_noop("The feed address must use https://.")) from None
    if _origin(url) != _origin(source.url):
        raise FeedError(gettext_noop("The next-page link points to another server."))
    timeout = float(settings.FEED_TIMEOUT_SECONDS)
    limit = settings.FEED_MAX_PAGE_MB * 1024 * 1024
    headers = {"Accept": _accept(kinds), "User-Agent": "Hagukumi-feed/1"}
    if source.auth_header:
        headers["Authorization"] = source.auth_header
    opener = urllib.request.build_opener(
        _SameOriginRedirects(_origin(source.url)),
        urllib.request.HTTPSHandler(context=ssl.create_default_context()),
    )
    # url_check() above allows only https (and http to listed hosts).
    request = urllib.request.Request(url, headers=headers, method="GET")  # noqa: S310
    deadline = time.monotonic() + timeout * PAGE_DEADLINE_FACTOR
    try:
        with opener.open(request, timeout=timeout) as response:
            if response.status != 200:
                raise FeedError(
                    gettext_noop("The server answered HTTP %(status)s."), status=response.status
                )
            content_type = response.headers.get_content_type()
            body = _read_body(response, limit, deadline)
            return body, content_type, response.headers, response.url
    except FeedError:
        raise
    except urllib.error.HTTPError as error:
        error.close()
        raise FeedError(
            gettext_noop("The server answered HTTP %(status)s."), status=error.code
        ) from None
    except urllib.error.URLError as error:
        if isinstance(error.reason, (TimeoutError, socket.timeout)):
            raise FeedError(
                gettext_noop("The server did not answer within %(seconds)s seconds."),
                seconds=settings.FEED_TIMEOUT_SECONDS,
            ) from None
        if isinstance(error.reason, ssl.SSLError):
            raise FeedError(gettext_noop("The secure connection failed (certificate?).")) from None
        reason = error.reason if isinstance(error.reason, str) else type(error.reason).__name__
        raise FeedError(
            gettext_noop("Could not connect to the server (%(reason)s)."), reason=reason[:100]
        ) from None
    except TimeoutError:
        raise FeedError(
            gettext_noop("The server did not answer within %(seconds)s seconds."),
            seconds=settings.FEED_TIMEOUT_SECONDS,
        ) from None
    except http.client.IncompleteRead:
        raise FeedError(gettext_noop("The page was cut short.")) from None
    except (http.client.HTTPException, OSError) as error:
        raise FeedError(
            gettext_noop("The connection failed (%(reason)s)."), reason=type(error).__name__
        ) from None


def _declared_count(headers: Any) -> int | None:
    value = headers.get("X-Item-Count")
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit():
        raise FeedError(gettext_noop("The page's X-Item-Count is not a number."))
    return int(value)


def _next_page(headers: Any, url: str) -> str:
    link = (headers.get("X-Next-Page") or "").strip()
    return urljoin(url, link) if link else ""


def page_parse(
    url: str,
    body: bytes,
    content_type: str,
    headers: Any,
    kinds: frozenset[str],
    base: str = "",
) -> Page:
    """Check a fetched page against the protocol; raises FeedError for a
    wrong content type, missing headers, malformed or truncated content."""
    kind = _kind_of(content_type)
    if kind is None or kind not in kinds:
        raise FeedError(
            gettext_noop("The page has the content type %(type)s, which this feed does not read."),
            type=content_type[:80],
        )
    declared = _declared_count(headers)
    next_cursor = (headers.get("X-Next-Cursor") or "").strip()
    if kind == BUNDLE:
        return _bundle_page(url, base or url, body, headers, declared, next_cursor)
    # CSV and NDJSON pages are lines: only a count and a final line break
    # show that none was lost at the end.
    if declared is None:
        raise FeedError(gettext_noop("The page has no X-Item-Count header."))
    if body.strip() and not body.endswith(b"\n"):
        raise FeedError(gettext_noop("The page's last line is incomplete (no final line break)."))
    if kind == NDJSON:
        lines = [line for line in body.split(b"\n") if line.strip()]
        for number, line in enumerate(lines, start=1):
            try:
                resource = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise FeedError(
                    gettext_noop("Line %(line)s of the page is not JSON."), line=number
                ) from None
            if not isinstance(resource, dict):
                raise FeedError(
                    gettext_noop("Line %(line)s of the page is not a FHIR resource."), line=number
                )
        if len(lines) != declared:
            raise FeedError(
                gettext_noop("The page holds %(got)s items, but X-Item-Count says %(declared)s."),
                got=len(lines),
                declared=declared,
            )
    if not next_cursor:
        raise FeedError(gettext_noop("The page has no X-Next-Cursor header."))
    return Page(url, kind, body, declared, next_cursor, _next_page(headers, base or url))


def _bundle_page(
    url: str, base: str, body: bytes, headers: Any, declared: int | None, next_cursor: str
) -> Page:
    try:
        bundle = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise FeedError(
            gettext_noop("The page is not valid JSON (malformed or cut short).")
        ) from None
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise FeedError(gettext_noop("The page is not a FHIR Bundle."))
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise FeedError(gettext_noop("The page is not a FHIR Bundle."))
    # Every entry is an item: a transaction's DELETE entry has no resource.
    items = len(entries)
    if declared is not None and declared != items:
        raise FeedError(
            gettext_noop("The page holds %(got)s items, but X-Item-Count says %(declared)s."),
            got=items,
            declared=declared,
        )
    links = bundle.get("link") or []
    next_link = ""
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
            next_link = urljoin(base, str(link["url"]))
    if not next_cursor and next_link:
        # meta.lastUpdated is the time of the search: the entries of the
        # next pages are older, so it is a cursor only once the last page is
        # in. Until then this page's data is committed, the cursor stays.
        return Page(url, BUNDLE, body, items, "", next_link)
    if not next_cursor:
        meta = bundle.get("meta") if isinstance(bundle.get("meta"), dict) else {}
        next_cursor = str(meta.get("lastUpdated") or "").strip()
    if not next_cursor:
        raise FeedError(
            gettext_noop("The Bundle has neither meta.lastUpdated nor an X-Next-Cursor header.")
        )
    return Page(url, BUNDLE, body, items, next_cursor, next_link)


def _instant(value: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def cursor_after(current: str, offered: str) -> str:
    """The cursor to store: the server's, except that a timestamp never
    goes back (a page served again carries an older one). Other cursors
    are opaque tokens and are taken as given."""
    old, new = _instant(current), _instant(offered)
    if old is not None and new is not None and new < old:
        return current
    return offered


# --------------------------------------------------------------------------
# Starting a pull
# --------------------------------------------------------------------------


def feed_busy(source: FeedSource) -> bool:
    """A pull of this source is queued or running."""
    return Job.objects.filter(
        kind=JOB_KIND,
        status__in=(Job.Status.QUEUED, Job.Status.RUNNING),
        payload__source_id=source.pk,
    ).exists()


def feed_pull_start(
    *,
    source_id: int,
    by: User | None = None,
    manual: bool = False,
    retry_of: int | None = None,
    attempt: int = 0,
) -> Job | None:
    """Queue a pull of the source, unless one is queued or running, the
    source is disabled (a manual "run now" pulls anyway), or — for a retry —
    another run started after the one that failed."""
    with transaction.atomic():
        source = FeedSource.objects.select_for_update().filter(pk=source_id).first()
        if source is None or (not source.enabled and not manual):
            return None
        if retry_of is not None and source.runs.filter(pk__gt=retry_of).exists():
            return None
        if feed_busy(source):
            return None
        return job_enqueue(
            kind=JOB_KIND,
            payload={"source_id": source.pk, "attempt": attempt, "retry_of": retry_of},
            created_by=by,
            organization=source.organization,
        )


# --------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------


def _origin_of(organization: Organization) -> str:
    if organization.kind == Organization.Kind.MUNICIPALITY:
        return Provenance.Origin.MUNICIPALITY
    return Provenance.Origin.CLINIC


def _begin(ctx: JobContext, source: FeedSource) -> tuple[FeedRun, Provenance]:
    """The run and its provenance: new, or the ones a crashed worker left."""
    run_id = ctx.cursor.get("run_id")
    if run_id is not None:
        run = FeedRun.objects.get(pk=run_id)
        # A page stored but not committed before the crash is fetched again.
        run.batches.filter(status=Batch.Status.RECEIVED).update(
            status=Batch.Status.FAILED, finished_at=timezone.now()
        )
        return run, Provenance.objects.get(pk=ctx.cursor["provenance_id"])
    with transaction.atomic():
        run = FeedRun.objects.create(source=source, job=ctx.job, cursor_before=source.cursor)
        provenance = provenance_create(
            origin=_origin_of(source.organization),
            organization=source.organization,
            source=f"feed:{source.pk}:{run.pk}",
            job_id=ctx.job.pk,
        )
        ctx.checkpoint(
            cursor={"run_id": run.pk, "provenance_id": provenance.pk, "next_page": "", "seen": []}
        )
    return run, provenance


def _read_rows(fmt: PipelineFormat, batch: Batch, body: bytes) -> list[Row]:
    with io.BytesIO(body) as data:
        rows, _encoding = fmt.read(batch, data, 0)
        return list(rows)


def _import_page(
    ctx: JobContext,
    source: FeedSource,
    run: FeedRun,
    provenance: Provenance,
    fmt: PipelineFormat,
    page: Page,
    asked_with: str,
    number: int,
) -> None:
    """Store the page, read it whole, and commit it with the new cursor."""
    filename = f"feed-{source.pk}-run-{run.pk}-page-{number}{SUFFIX[page.kind]}"
    batch: Batch | None = None
    if page.items:
        batch = batch_receive(
            organization=source.organization,
            format_key=source.format,
            chunks=[page.body],
            filename=filename,
            feed_run=run,
            validate=False,
        )
    # The rows are read from the bytes in memory (the same bytes the batch
    # stored, under its checksum). An empty page is not kept as a batch, but
    # is still read, to be sure it is empty.
    reading = batch or Batch(
        organization=source.organization, format=source.format, filename=filename
    )
    try:
        # FHIR pages were parsed already: one without entries holds nothing.
        empty = not page.body.strip() or (page.kind != CSV and not page.items)
        rows = [] if empty else _read_rows(fmt, reading, page.body)
        if len(rows) != page.items:
            raise FeedError(
                gettext_noop("The page holds %(got)s items; the server announced %(declared)s."),
                got=len(rows),
                declared=page.items,
            )
    except FileError as error:
        if batch is not None:
            _reject(batch, json.loads(_file_error(error)))
        raise _unreadable(error) from None
    except FeedError as error:
        if batch is not None:
            _reject(batch, {"code": "feed", "ja": _in("ja", error), "en": _in("en", error)})
        raise
    valid = [row for row in rows if row.ok]
    invalid = len(rows) - len(valid)
    with transaction.atomic():
        locked = FeedSource.objects.select_for_update().get(pk=source.pk)
        if locked.cursor != asked_with:
            # Another pull moved the cursor meanwhile: this page may be stale.
            raise FeedError(gettext_noop("Another run of this feed moved its cursor meanwhile."))
        counts = {"rows": len(rows), "valid": len(valid), "invalid": invalid}
        if batch is not None:
            BatchError.objects.bulk_create(error_rows(batch, rows))
            applied = fmt.apply(batch, valid, provenance) if valid else {}
            add_counts(counts, applied)
            Batch.objects.filter(pk=batch.pk).update(
                status=Batch.Status.IMPORTED,
                summary=counts,
                result=counts,
                confirmed_at=timezone.now(),
                finished_at=timezone.now(),
            )
        if page.next_cursor:  # "" keeps the cursor (a Bundle page before the last)
            locked.cursor = cursor_after(locked.cursor, page.next_cursor)
        locked.save(update_fields=["cursor"])
        source.cursor = locked.cursor
        run.pages += 1
        run.items += len(rows)
        run.imported += len(valid)
        run.errors += invalid
        run.cursor_after = locked.cursor
        run.save(update_fields=["pages", "items", "imported", "errors", "cursor_after"])
        seen = [*ctx.cursor.get("seen", []), page.url][-MAX_PAGES_PER_RUN:]
        ctx.checkpoint(
            cursor={**ctx.cursor, "next_page": page.next_page, "seen": seen},
            progress_done=run.items,
        )


# FileError codes whose message names no cell of the file (only expected
# columns, an encoding, a size): the run and the alert mail may quote them.
QUOTABLE_FILE_ERRORS = frozenset({"missing_columns", "empty", "encoding", "csv", "too_large"})


def _unreadable(error: FileError) -> FeedError:
    if error.code not in QUOTABLE_FILE_ERRORS:
        return FeedError(
            gettext_noop("The page could not be read as a whole (%(code)s); its batch shows why."),
            code=error.code,
        )
    message = gettext_noop("The page could not be read: %(reason)s")
    texts = {
        "ja": _in("ja", FeedError(message, reason=error.ja)),
        "en": _in("en", FeedError(message, reason=error.en)),
    }
    return FeedError(message, texts=texts, reason=error.en)


def _reject(batch: Batch, error: dict[str, str]) -> None:
    Batch.objects.filter(pk=batch.pk).update(
        status=Batch.Status.REJECTED, file_error=error, finished_at=timezone.now()
    )


def feed_pull_failed(job: Job) -> None:
    """A pull failed for good (an error, or the sweeper gave up): fail its
    run, count the failure, alert the staff after FEED_ALERT_AFTER in a row
    (once), and schedule the next retry."""
    run_id = (job.cursor or {}).get("run_id")
    run = FeedRun.objects.filter(pk=run_id).first() if run_id else None
    source_id = (job.payload or {}).get("source_id")
    if run is None and source_id is None:
        return
    now = timezone.now()
    with transaction.atomic():
        source = FeedSource.objects.select_for_update().filter(pk=source_id).first()
        if source is None:
            return
        error = Job.objects.filter(pk=job.pk).values_list("error", flat=True).first() or ""
        if run is None:  # it failed before a run was recorded
            run = FeedRun.objects.create(source=source, job=job, cursor_before=source.cursor)
        stored = FeedRun.objects.filter(pk=run.pk).values_list("error", flat=True).first()
        if not stored:
            stored = FeedError(
                gettext_noop("The worker stopped; the run was given up.")
                if not error or error.startswith("gave up")
                else gettext_noop("An internal error stopped the run; the worker's log has more.")
            ).stored()
        failed = FeedRun.objects.filter(pk=run.pk, status=FeedRun.Status.RUNNING).update(
            status=FeedRun.Status.FAILED,
            error=stored,
            finished_at=now,
            cursor_after=source.cursor,
        )
        if not failed:
            return  # already recorded
        source.consecutive_failures += 1
        alert = source.consecutive_failures >= settings.FEED_ALERT_AFTER and not source.alerted_at
        if alert:
            source.alerted_at = now
        source.save(update_fields=["consecutive_failures", "alerted_at"])
        attempt = int((job.payload or {}).get("attempt") or 0)
        delays = [int(s) for s in settings.FEED_RETRY_SECONDS]
        # robust: a mail server that fails must not stop the retry.
        source_id, run_id = source.pk, run.pk

        def alert_staff() -> None:
            _alert(source_id, run_id)

        def retry() -> None:
            _schedule_retry(source_id, run_id, attempt + 1, delays[attempt])

        if alert:
            transaction.on_commit(alert_staff, robust=True)
        if attempt < len(delays):
            transaction.on_commit(retry, robust=True)
    logger.warning(
        "feed %s run %s failed (%s in a row)", source.pk, run.pk, source.consecutive_failures
    )


def _schedule_retry(source_id: int, run_id: int, attempt: int, delay: int) -> None:
    from phr.tasks import feed_pull

    feed_pull.apply_async(
        args=[source_id], kwargs={"retry_of": run_id, "attempt": attempt}, countdown=delay
    )


@job_handler(JOB_KIND, on_failure=feed_pull_failed)
def feed_pull(ctx: JobContext) -> dict[str, Any]:
    source = FeedSource.objects.select_related("organization").get(pk=ctx.payload["source_id"])
    run, provenance = _begin(ctx, source)
    try:
        fmt = format_get(source.format)
        kinds = page_kinds(source.format)
        url = ctx.cursor.get("next_page") or page_url(source, source.cursor)
        seen = set(ctx.cursor.get("seen", []))
        number = run.pages
        while True:
            if url in seen or number >= MAX_PAGES_PER_RUN:
                raise FeedError(gettext_noop("The server's next-page links go round in a circle."))
            asked_with = source.cursor
            body, content_type, headers, final_url = fetch(source, url, kinds)
            page = page_parse(url, body, content_type, headers, kinds, base=final_url)
            rule = CURSOR_RULES.get(source.format)
            if rule is not None and rule.next_cursor is not None:
                page.next_cursor = rule.next_cursor(page.body, source.cursor) or page.next_cursor
            number += 1
            _import_page(ctx, source, run, provenance, fmt, page, asked_with, number)
            seen.add(url)
            if not page.next_page:
                break
            url = page.next_page
    except LeaseLost:
        raise
    except FeedError as error:
        FeedRun.objects.filter(pk=run.pk).update(error=error.stored())
        raise
    except ValidationError as error:  # an unknown format
        FeedRun.objects.filter(pk=run.pk).update(
            error=FeedError(gettext_noop("The feed's format is not available.")).stored()
        )
        raise FeedError(gettext_noop("The feed's format is not available.")) from error
    with transaction.atomic():
        FeedRun.objects.filter(pk=run.pk).update(
            status=FeedRun.Status.SUCCEEDED, finished_at=timezone.now(), error=""
        )
        FeedSource.objects.filter(pk=source.pk).update(consecutive_failures=0, alerted_at=None)
    run.refresh_from_db()
    logger.info("feed %s run %s: %s pages, %s items", source.pk, run.pk, run.pages, run.items)
    return {
        "run_id": run.pk,
        "pages": run.pages,
        "items": run.items,
        "imported": run.imported,
        "errors": run.errors,
    }


# --------------------------------------------------------------------------
# Alerts
# --------------------------------------------------------------------------


def alert_recipients(organization: Organization) -> list[User]:
    """The organization's active staff (municipal staff of a municipality,
    clinic staff of a clinic) with an email address."""
    roles = [role for role, kind in ROLE_ORGANIZATION_KIND.items() if kind == organization.kind]
    users = {
        m.user
        for m in Membership.objects.active()
        .filter(organization=organization, role__in=roles, user__is_active=True)
        .select_related("user")
    }
    return sorted((u for u in users if u.email), key=lambda u: u.pk)


def _feed_link(source: FeedSource) -> str:
    """The feed's page for its organization's staff (the app that brings
    the screens names it "<app>:feed_detail")."""
    app = "municipal" if source.organization.kind == Organization.Kind.MUNICIPALITY else "clinics"
    try:
        path = reverse(f"{app}:feed_detail", args=[source.pk])
    except NoReverseMatch:
        return ""
    return settings.SITE_URL.rstrip("/") + path


def _alert(source_id: int, run_id: int) -> int:
    """Mail the staff which feed fails and why: no patient data (the error
    never quotes a page's content)."""
    source = FeedSource.objects.select_related("organization").get(pk=source_id)
    run = FeedRun.objects.get(pk=run_id)
    sent = 0
    try:
        for user in alert_recipients(source.organization):
            with translation.override(user.language or "ja"):
                subject = gettext("Feed “%(name)s” keeps failing") % {"name": source.name}
                body = gettext(
                    "The feed “%(name)s” of %(organization)s has failed %(count)s times in a "
                    "row. Nothing of the failed pages was imported, and the feed will go on "
                    "from where the last good page ended once the problem is fixed.\n\n"
                    "Last error: %(error)s\n"
                    "Last attempt: %(when)s\n\n"
                    "You will get no other mail about this feed until a run succeeds.\n"
                    "%(link)s\n"
                ) % {
                    "name": source.name,
                    "organization": source.organization.name,
                    "count": source.consecutive_failures,
                    "error": error_text(run.error),
                    "when": timezone.localtime(
                        run.finished_at or timezone.now(), ZoneInfo(settings.TIME_ZONE)
                    ).strftime("%Y-%m-%d %H:%M"),
                    "link": _feed_link(source),
                }
                sent += send_mail(subject, body, None, [user.email])
    except Exception:
        # Try again at the next failure rather than never.
        FeedSource.objects.filter(pk=source_id).update(alerted_at=None)
        raise
    return sent


# --------------------------------------------------------------------------
# Sources and their schedules (django-celery-beat)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """Every N minutes, or daily at a time of day (Japan time)."""

    every_minutes: int | None = None
    daily_at: time_of_day | None = None

    def __post_init__(self) -> None:
        if (self.every_minutes is None) == (self.daily_at is None):
            raise ValueError("a schedule is every N minutes or daily at a time, not both")


def feed_schedule(source: FeedSource) -> Schedule | None:
    task = source.periodic_task
    if task is None:
        return None
    if task.interval is not None:
        return Schedule(every_minutes=task.interval.every)
    if task.crontab is not None:
        try:
            return Schedule(daily_at=time_of_day(int(task.crontab.hour), int(task.crontab.minute)))
        except ValueError:
            return None
    return None


def _schedule_task(source: FeedSource, schedule: Schedule) -> None:
    from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

    interval = crontab = None
    if schedule.every_minutes is not None:
        interval, _created = IntervalSchedule.objects.get_or_create(
            every=schedule.every_minutes, period=IntervalSchedule.MINUTES
        )
    else:
        assert schedule.daily_at is not None
        crontab, _created = CrontabSchedule.objects.get_or_create(
            minute=str(schedule.daily_at.minute),
            hour=str(schedule.daily_at.hour),
            day_of_week="*",
            day_of_month="*",
            month_of_year="*",
            timezone=ZoneInfo(settings.TIME_ZONE),
        )
    task = source.periodic_task or PeriodicTask(name=f"feed-pull:{source.pk}")
    task.task = "phr.tasks.feed_pull"
    task.args = json.dumps([source.pk])
    task.kwargs = "{}"
    task.interval = interval
    task.crontab = crontab
    task.enabled = source.enabled
    task.description = f"Feed pull: {source.name}"[:200]
    task.save()
    if source.periodic_task_id != task.pk:
        source.periodic_task = task
        source.save(update_fields=["periodic_task"])


def feed_source_save(
    *, source: FeedSource, schedule: Schedule, auth_header: str | None, by: User | None
) -> FeedSource:
    """Create or update a source and its schedule together. `auth_header`
    None keeps the stored one (it is never shown back)."""
    url_check(source.url)
    fmt = format_get(source.format)
    if source.organization.kind not in fmt.organization_kinds:
        raise ValidationError(_("This organization does not send this format."), code="format")
    with transaction.atomic():
        if auth_header is not None:
            source.auth_header = auth_header
        if source.pk is None:
            source.created_by = by
        source.save()
        _schedule_task(source, schedule)
    return source


def feed_run_now(*, source: FeedSource, by: User) -> Job | None:
    """Staff asked for a pull now (also of a disabled source)."""
    return feed_pull_start(source_id=source.pk, by=by, manual=True)
