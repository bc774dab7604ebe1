"""The reminder job on real Celery workers (Redis broker, the test database),
mailing through a real SMTP connection to a sink in this process: two runs
at once, then a third, mail each reminder exactly once; a worker killed
while the mail server has its message never causes a second mail.

Marked `worker`: skipped without REDIS_URL (run with
REDIS_URL=redis://127.0.0.1:6379/5)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import pytest
from allauth.account.models import EmailAddress
from django.utils import translation

from phr.models import AuditEvent, Guardianship, Patient, Reminder
from phr.reminders import japan_today
from phr.schedules import child_schedule
from phr.services import guardianship_add
from phr.tasks import send_reminders
from tests import factories as f
from tests.conftest import wait_for
from tests.phr.smtp_sink import Sink, smtp_sink

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

TASK = "phr.tasks.send_reminders"


def _forget_reminder_messages() -> int:
    """Remove this job's messages from the broker: queued ones, and the
    unacked one a killed worker leaves (Redis would hand it to whichever
    worker runs in an hour — another test's, on another database). Only
    messages of this task are touched; the Redis database is shared."""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    removed = 0
    for raw in client.lrange("celery", 0, -1):
        if json.loads(raw).get("headers", {}).get("task") == TASK:
            removed += client.lrem("celery", 0, raw)
    for tag, raw in client.hgetall("unacked").items():
        message = json.loads(raw)[0]
        if message.get("headers", {}).get("task") == TASK:
            removed += client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)
    return removed


@pytest.fixture(autouse=True)
def _no_reminder_messages_left() -> Iterator[None]:
    _forget_reminder_messages()
    yield
    _forget_reminder_messages()


def family(email: str, given: str, birth: date) -> tuple[Any, Patient]:
    parent = f.UserFactory(email=email)
    EmailAddress.objects.create(user=parent, email=email, verified=True, primary=True)
    child = f.make_patient(given=given, birth_date=birth)
    guardianship_add(
        guardian=parent,
        child=child,
        relationship=Guardianship.Relationship.MOTHER,
        valid_from=birth,
    )
    return parent, child


def expected_labels(parent: Any, child: Patient, today: date) -> list[str]:
    """What the schedule says is due within 14 days or overdue (the job's
    own question, asked as the guardian)."""
    with translation.override(parent.language):
        items = child_schedule(user=parent, patient=child, today=today).due_items(within_days=14)
    return [str(i.label) for i in items]


def families(n: int) -> list[tuple[Any, Patient]]:
    # Seven weeks old today (in Japan, as the worker sees it): the doses from
    # 生後2月 are due within two weeks.
    birth = japan_today() - timedelta(days=50)
    return [family(f"parent{i}@example.jp", f"子{i}", birth) for i in range(n)]


def checks_done(people: list[tuple[Any, Patient]]) -> int:
    """How many children the runs have checked (one audit row each). The
    audit log is INSERT-only: earlier tests' rows stay, so count ours."""
    children = [child.pk for _parent, child in people]
    return AuditEvent.objects.filter(action="reminder.check", patient_id__in=children).count()


def run_spans(people: list[tuple[Any, Patient]]) -> dict[str, tuple[Any, Any]]:
    """Each run's first and last check (its audit rows carry the run id)."""
    spans: dict[str, tuple[Any, Any]] = {}
    children = [child.pk for _parent, child in people]
    for event in AuditEvent.objects.filter(action="reminder.check", patient_id__in=children):
        run = event.detail["run"]
        start, end = spans.get(run, (event.occurred_at, event.occurred_at))
        spans[run] = (min(start, event.occurred_at), max(end, event.occurred_at))
    return spans


def mentions(sink: Sink, address: str, label: str) -> int:
    return sum(str(m.get_content()).count(f"・{label} —") for m in sink.to(address))


def test_two_runs_at_once_and_a_third_mail_each_reminder_exactly_once(start_worker: Any) -> None:
    people = families(8)
    today = japan_today()
    expected = {parent.email: expected_labels(parent, child, today) for parent, child in people}
    assert all(len(labels) >= 3 for labels in expected.values())
    with smtp_sink() as sink:
        # A slow mail server keeps each run busy long enough for the other
        # worker to start and run alongside it.
        sink.delay = 0.5
        env = {"EMAIL_URL": f"smtp://127.0.0.1:{sink.port}"}
        start_worker(env=env)
        start_worker(env=env)
        # Two invocations at once, one on each worker.
        send_reminders.delay()
        send_reminders.delay()
        # Each run checks every child once (an audit row each): wait for both.
        wait_for(lambda: checks_done(people) == 2 * len(people), timeout=120)
        wait_for(lambda: not Reminder.objects.exclude(email_status="sent").exists())
        time.sleep(2)  # let the slower run finish its last guardian

        # The two runs really ran at the same time.
        first, second = sorted(run_spans(people).values())
        assert second[0] < first[1], (first, second)
        for parent, _child in people:
            assert len(sink.to(parent.email)) == 1, parent.email
            for label in expected[parent.email]:
                assert mentions(sink, parent.email, label) == 1, (parent.email, label)
        assert len(sink.messages) == len(people)
        rows = Reminder.objects.all()
        assert rows.count() == sum(len(labels) for labels in expected.values())
        assert set(rows.values_list("email_status", "email_attempts")) == {("sent", 1)}

        # A third run, later: nothing new, nothing sent.
        send_reminders.delay()
        wait_for(lambda: checks_done(people) == 3 * len(people), timeout=120)
        time.sleep(2)
        assert len(sink.messages) == len(people)
        assert Reminder.objects.count() == rows.count()


def test_a_worker_killed_while_sending_never_causes_a_second_mail(start_worker: Any) -> None:
    people = families(3)
    held = people[1][0]
    with smtp_sink() as sink:
        # The mail server takes the second guardian's message and never answers.
        sink.hold.add(held.email)
        env = {"EMAIL_URL": f"smtp://127.0.0.1:{sink.port}"}
        worker = start_worker(env=env)
        send_reminders.delay()
        wait_for(lambda: held.email in sink.held, timeout=120)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        claimed = Reminder.objects.filter(user=held)
        assert set(claimed.values_list("email_status", flat=True)) == {"sending"}

        # The task comes again (Redis redelivers an unacked task after its
        # visibility timeout; the next morning's beat sends a new one).
        sink.hold.clear()
        start_worker(env=env)
        send_reminders.delay()
        wait_for(
            lambda: not Reminder.objects.exclude(user=held).exclude(email_status="sent").exists()
            and Reminder.objects.filter(user=people[2][0]).exists(),
            timeout=120,
        )
        wait_for(lambda: checks_done(people) == 2 * len(people) - 1, timeout=60)
        time.sleep(2)

        # The interrupted guardian's reminders are not sent again (it may
        # have gone out); everyone else got exactly one mail.
        assert sink.to(held.email) == []
        assert set(claimed.values_list("email_status", flat=True)) == {"sending"}
        for parent, _child in (people[0], people[2]):
            assert len(sink.to(parent.email)) == 1


def _pool_children(pid: int) -> list[int]:
    children: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as handle:
            children.extend(int(c) for c in handle.read().split())
    return children


def test_a_pool_process_killed_while_sending_is_redelivered_and_mails_no_one_twice(
    start_worker: Any,
) -> None:
    """The prefork pool's child dies mid-task: Celery rejects the message
    (acks_late, reject_on_worker_lost) and runs the task again by itself.
    The second run mails those not yet mailed, and not the guardian whose
    mail was in flight."""
    people = families(3)
    held = people[1][0]
    with smtp_sink() as sink:
        sink.hold.add(held.email)
        env = {"EMAIL_URL": f"smtp://127.0.0.1:{sink.port}"}
        worker = start_worker(pool="prefork", env=env)
        send_reminders.delay()
        wait_for(lambda: held.email in sink.held, timeout=120)
        (child_pid,) = _pool_children(worker.pid)
        os.kill(child_pid, signal.SIGKILL)
        sink.hold.clear()

        # No new task is sent: the redelivered one finishes the run.
        wait_for(lambda: checks_done(people) == 2 + len(people), timeout=120)
        wait_for(lambda: len(sink.to(people[2][0].email)) == 1, timeout=60)
        time.sleep(2)
        assert sink.to(held.email) == []
        assert len(sink.to(people[0][0].email)) == 1
        assert len(sink.to(people[2][0].email)) == 1
        claimed = Reminder.objects.filter(user=held)
        assert set(claimed.values_list("email_status", flat=True)) == {"sending"}
        assert worker.poll() is None  # the worker itself lives on
