"""Shared fixtures. Celery runs eagerly here unless a test is marked
`worker` (those start a real worker process on REDIS_URL)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from config.celery import app as celery_app


@pytest.fixture(autouse=True)
def _celery_eager(request: pytest.FixtureRequest) -> Iterator[None]:
    eager = request.node.get_closest_marker("worker") is None
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = eager
    celery_app.conf.task_eager_propagates = True
    yield
    celery_app.conf.task_always_eager = previous
