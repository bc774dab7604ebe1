"""Vitals alerts on real Celery workers (Redis broker, the test database):
a committed vitals write reaches the alerts_evaluate task through
vitals_written and the task writes the Flag; the task delivered many times
to two workers at once still leaves one Flag, in one version.

Marked `worker`: skipped without REDIS_URL (run with
REDIS_URL=redis://127.0.0.1:6379/5)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from phr.models import Patient, ResourceHistory
from tests.conftest import wait_for
from tests.vitals.test_alerts_flow import alert_flags, days_ago, home_bp, pregnant
from vitals.tasks import alerts_evaluate

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

TASK = "vitals.tasks.alerts_evaluate"


def _forget_alert_messages() -> None:
    """Remove this task's messages from the shared broker (queued, and
    unacked ones a stopped worker leaves), so no other test's worker runs
    them against another database."""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    for raw in client.lrange("celery", 0, -1):
        if json.loads(raw).get("headers", {}).get("task") == TASK:
            client.lrem("celery", 0, raw)
    for tag, raw in client.hgetall("unacked").items():
        if json.loads(raw)[0].get("headers", {}).get("task") == TASK:
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)


def _pending() -> int:
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    return sum(
        json.loads(raw).get("headers", {}).get("task") == TASK
        for raw in client.lrange("celery", 0, -1)
    )


def _unacked() -> int:
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    return sum(
        json.loads(raw)[0].get("headers", {}).get("task") == TASK
        for raw in client.hgetall("unacked").values()
    )


@pytest.fixture(autouse=True)
def _no_alert_messages_left() -> Iterator[None]:
    _forget_alert_messages()
    yield
    _forget_alert_messages()


def test_a_committed_write_reaches_the_worker_and_raises_the_flag(
    start_worker: Any, mother: Any, mother_patient: Patient
) -> None:
    pregnant(mother_patient)
    start_worker()
    # Each write commits (no surrounding transaction): vitals_written →
    # the receiver queues the task on Redis → the worker evaluates.
    home_bp(mother, mother_patient, days_ago(2), 166, 104)
    wait_for(lambda: len(alert_flags(mother_patient)) == 1)
    (flag,) = alert_flags(mother_patient)
    assert flag.status == "active"
    assert flag.content["code"]["coding"][0]["code"] == "bp-severe"


def test_many_deliveries_to_two_workers_leave_one_flag_in_one_version(
    start_worker: Any, mother: Any, mother_patient: Patient
) -> None:
    pregnant(mother_patient)
    # Each write queues the task once; then eight more copies, all waiting
    # before two workers start and take them at the same time.
    home_bp(mother, mother_patient, days_ago(3), 142, 88)
    home_bp(mother, mother_patient, days_ago(1), 145, 94)
    for _ in range(8):
        alerts_evaluate.delay(str(mother_patient.pk))
    assert _pending() == 10
    start_worker()
    start_worker()
    wait_for(lambda: _pending() == 0 and _unacked() == 0)
    (flag,) = alert_flags(mother_patient)
    assert ResourceHistory.objects.filter(resource_id=flag.id).count() == 1
