"""The one progress partial the three background jobs share
(templates/includes/job_progress.html): polls while the job runs, shows the
count or the percent, and stops polling with a link to the result."""

from __future__ import annotations

from django.template.loader import render_to_string
from django.utils import translation


def progress(*, running: bool, done: int, total: int) -> dict[str, object]:
    return {
        "running": running,
        "done": done,
        "total": total,
        "percent": done * 100 // total if total else 0,
    }


def _render(progress: dict[str, object], **extra: str) -> str:
    context = {
        "progress": progress,
        "progress_id": "x-progress",
        "poll_url": "/poll/",
        "page_url": "/page/",
        "running_text": "Working…",
        "done_text": "Done.",
        "result_text": "Show it",
        **extra,
    }
    return render_to_string("includes/job_progress.html", context)


def test_running_with_a_total_polls_and_shows_the_percent() -> None:
    html = _render(progress(running=True, done=3, total=4))
    assert 'id="x-progress"' in html
    assert 'hx-get="/poll/"' in html
    assert 'hx-trigger="every 2s"' in html
    assert "Working…" in html
    assert "75%" in html
    assert '<progress value="3" max="4"' in html
    assert 'href="/page/"' in html


def test_a_count_text_replaces_the_percent() -> None:
    html = _render(progress(running=True, done=3, total=4), count_text="3 of 4 rows")
    status = html.split('role="status">', 1)[1].split("</p>", 1)[0]
    assert "3 of 4 rows" in status
    assert "%" not in status


def test_without_a_total_the_bar_is_indeterminate() -> None:
    html = _render(progress(running=True, done=0, total=0))
    assert "<progress aria-label=" in html
    assert "%" not in html.split("<progress", 1)[0]


def test_finished_it_stops_polling_and_links_the_result() -> None:
    with translation.override("ja"):
        html = _render(progress(running=False, done=4, total=4))
    assert "hx-get" not in html
    assert 'id="x-progress"' in html
    assert '<a href="/page/">Show it</a>' in html
