"""The daily reminder job, end to end: real children with birth dates, real
Immunization records, the real schedule engine (phr.schedules), a clock
moved with time_machine — and the job run twice, with one guardian failing,
with a worker dying between claiming an email and recording it.

What is due is the schedule engine's answer, asked the same way the job
asks it (as the guardian); these tests check what the job does with it:
one reminder and one mention in one email per item and stage, in the
guardian's language, only to the child's own guardians, as their settings
say."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine
from allauth.account.models import EmailAddress
from django.conf import settings
from django.core import mail
from django.utils import translation

from config.celery import app as celery_app
from phr import reminders, services, store
from phr.models import AuditEvent, Guardianship, NotificationSettings, Patient, Provenance, Reminder
from phr.reminders import reminders_run
from phr.schedules import child_schedule
from phr.services import guardianship_add
from phr.tasks import send_reminders
from sharing.services import dv_block_set
from tests import factories as f

pytestmark = pytest.mark.django_db

JAPAN = ZoneInfo("Asia/Tokyo")
VACCINE_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/vaccine"
BIRTH = date(2026, 10, 1)
# Seven weeks old: the doses from 生後2月 (reached 2026-11-30) are due
# within 14 days, rotavirus (from 出生6週0日後) is due already.
TODAY = date(2026, 11, 20)


def morning(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 8, 0, tzinfo=JAPAN)


@pytest.fixture
def clock() -> Iterator[Any]:
    with time_machine.travel(morning(TODAY), tick=False) as traveller:
        yield traveller


def parent_user(email: str, *, language: str = "ja") -> Any:
    """A parent who confirmed their email address (as signing up requires)."""
    user = f.UserFactory(email=email, language=language)
    EmailAddress.objects.create(user=user, email=email, verified=True, primary=True)
    return user


def family(email: str, given: str, *, birth: date = BIRTH, language: str = "ja") -> Any:
    parent = parent_user(email, language=language)
    child = f.make_patient(given=given, family="前橋", birth_date=birth)
    guardianship_add(
        guardian=parent,
        child=child,
        relationship=Guardianship.Relationship.MOTHER,
        valid_from=birth,
    )
    return parent, child


def give_vaccine(child: Patient, code: str, on: date, dose: int = 1) -> uuid.UUID:
    provenance = services.provenance_create(origin=Provenance.Origin.CLINIC)
    rid, _version, _changed = store.record_write(
        {
            "resourceType": "Immunization",
            "status": "completed",
            "vaccineCode": {"coding": [{"system": VACCINE_SYSTEM, "code": code}]},
            "patient": {"reference": f"Patient/{child.pk}"},
            "occurrenceDateTime": on.isoformat(),
            "protocolApplied": [{"doseNumberPositiveInt": dose}],
        },
        provenance=provenance,
    )
    return rid


def stage(item: Any, today: date) -> str | None:
    """The issue's mapping: overdue → overdue; due or upcoming within 14
    days → due soon."""
    if item.status == "overdue":
        return "overdue"
    if item.status in ("due", "upcoming") and item.due_from <= today + timedelta(days=14):
        return "due_soon"
    return None


def due(user: Any, child: Patient, today: date) -> dict[tuple[str, str], Any]:
    """What the schedule says is due for this child, asked as the job asks."""
    with translation.override(user.language):
        items = child_schedule(user=user, patient=child, today=today).due_items(within_days=14)
    return {(i.key, s): i for i in items if (s := stage(i, today))}


def keys(user: Any, child: Patient | None = None) -> set[tuple[str, str]]:
    rows = Reminder.objects.filter(user=user)
    if child is not None:
        rows = rows.filter(patient=child)
    return set(rows.values_list("item_key", "stage"))


def mentions(message: Any, label: str) -> int:
    return str(message.body).count(f"・{label} —")


# --------------------------------------------------------------------------
# Once per item and stage
# --------------------------------------------------------------------------


def test_the_beat_entry_runs_the_job_every_morning_at_eight_in_japan() -> None:
    from django_celery_beat.schedulers import ModelEntry

    entry = ModelEntry.from_entry(
        "reminders-daily", app=celery_app, **settings.CELERY_BEAT_SCHEDULE["reminders-daily"]
    )
    crontab = entry.model.crontab
    assert entry.model.task == "phr.tasks.send_reminders"
    assert (crontab.minute, crontab.hour, crontab.day_of_week) == ("0", "8", "*")
    assert str(crontab.timezone) == "Asia/Tokyo"
    # 07:59 in Japan is not yet due; the next run is at 08:00 Japan time.
    schedule = crontab.schedule
    last_run = datetime(2026, 11, 19, 8, 0, tzinfo=JAPAN)
    with time_machine.travel(datetime(2026, 11, 20, 7, 59, tzinfo=JAPAN), tick=False):
        assert not schedule.is_due(last_run).is_due
    with time_machine.travel(datetime(2026, 11, 20, 8, 0, 30, tzinfo=JAPAN), tick=False):
        assert schedule.is_due(last_run).is_due


def test_running_twice_sends_one_email_and_makes_one_notification_per_item(clock: Any) -> None:
    mother, child = family("haha@example.jp", "はる")
    expected = due(mother, child, TODAY)
    # Seven weeks old: the vaccinations from 生後2月 are due within two weeks.
    assert ("vaccine:dtap-ipv-hib:1", "due_soon") in expected
    assert len([k for k, s in expected if k.startswith("vaccine:") and s == "due_soon"]) >= 3

    first = reminders_run()
    second = reminders_run()

    assert first.created == len(expected)
    assert second.created == 0
    assert second.emails == 0
    assert keys(mother) == set(expected)
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["haha@example.jp"]
    assert message.subject == "【はぐくみ】予防接種・健診のお知らせ"
    assert "はる" in message.body
    assert "前橋" not in message.body  # the given name only
    for item in expected.values():
        assert mentions(message, str(item.label)) == 1
    assert set(Reminder.objects.values_list("email_status", flat=True)) == {"sent"}
    assert not Reminder.objects.filter(email_sent_at=None).exists()


def test_the_email_names_the_date_window_and_links_to_the_childs_handbook(clock: Any) -> None:
    mother, child = family("haha@example.jp", "はる")
    reminders_run()
    body = mail.outbox[0].body
    item = next(i for (_k, s), i in due(mother, child, TODAY).items() if s == "due_soon")
    assert item.due_until is not None
    start, end = item.due_from, item.due_until
    window = f"{start.year}年{start.month}月{start.day}日～{end.year}年{end.month}月{end.day}日"
    assert window in body
    assert f"{settings.SITE_URL}/handbook/{child.pk}/" in body
    assert f"{settings.SITE_URL}/notifications/settings/" in body


def test_an_item_becoming_overdue_is_reminded_once_more(clock: Any) -> None:
    mother, child = family("haha@example.jp", "はる")
    reminders_run()
    sent_soon = keys(mother)
    # The first day on which something reminded of as due soon is overdue.
    day = TODAY
    for _ in range(800):
        day += timedelta(days=1)
        now_due = due(mother, child, day)
        overdue = {k for k, s in now_due if s == "overdue"} & {
            k for k, s in sent_soon if s == "due_soon"
        }
        if overdue:
            break
    else:
        pytest.fail("nothing reminded of became overdue")
    clock.move_to(morning(day))
    mail.outbox.clear()
    reminders_run()
    reminders_run()

    assert len(mail.outbox) == 1
    for key in overdue:
        assert (key, "overdue") in keys(mother)
        assert (key, "due_soon") in keys(mother)  # the earlier one stays
        label = str(now_due[(key, "overdue")].label)
        assert mentions(mail.outbox[0], label) == 1
    assert "期限切れ" in mail.outbox[0].body
    # An overdue item says how long it can still be done.
    last = now_due[(next(iter(overdue)), "overdue")].due_until
    assert f"{last.year}年{last.month}月{last.day}日まで受けられます" in mail.outbox[0].body
    # Every overdue item has exactly one overdue reminder.
    assert {k for k, s in keys(mother) if s == "overdue"} == {
        k for k, s in now_due if s == "overdue"
    } | {k for k, s in sent_soon if s == "overdue"}


def test_a_dose_given_is_not_reminded_of(clock: Any) -> None:
    mother, child = family("haha@example.jp", "はる")
    before = due(mother, child, TODAY)
    rota = [k for k, _s in before if k.startswith("vaccine:rotavirus:")]
    assert rota, before
    # The rotavirus dose is given (reported by the clinic) before the job runs.
    give_vaccine(child, "rv1", TODAY - timedelta(days=1))
    after = due(mother, child, TODAY)
    assert not [k for k, _s in after if k == rota[0]]
    reminders_run()
    assert keys(mother) == set(after)
    assert rota[0] not in {k for k, _s in keys(mother)}


def test_a_pending_email_for_an_item_done_meanwhile_is_not_sent(clock: Any) -> None:
    mother, child = family("haha@example.jp", "はる")
    # The mail server refuses the first try: the reminders stay pending.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(settings, "EMAIL_BACKEND", "tests.phr.test_reminders.RefusingBackend")
        first = reminders_run()
    assert first.reminders_emailed == 0
    assert set(Reminder.objects.values_list("email_status", flat=True)) == {"pending"}
    rota = next(k for k, _s in keys(mother) if k.startswith("vaccine:rotavirus:"))
    give_vaccine(child, "rv1", TODAY)
    reminders_run()
    assert len(mail.outbox) == 1
    skipped = Reminder.objects.get(user=mother, item_key=rota)
    assert skipped.email_status == "skipped"
    assert mentions(mail.outbox[0], skipped.label) == 0
    # Still in the list: it was due when it was made.
    assert skipped.in_app


class RefusingBackend:
    """A mail server that refuses everything."""

    def __init__(self, **_kwargs: Any) -> None:
        pass

    def __enter__(self) -> RefusingBackend:
        return self

    def __exit__(self, *_exc: object) -> None:
        return None

    def send_messages(self, _messages: Any) -> int:
        import smtplib

        raise smtplib.SMTPServerDisconnected("refused")


def test_a_mail_server_that_keeps_refusing_gives_up_after_three_tries(clock: Any) -> None:
    mother, _child = family("haha@example.jp", "はる")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(settings, "EMAIL_BACKEND", "tests.phr.test_reminders.RefusingBackend")
        for _ in range(4):
            reminders_run()
    rows = Reminder.objects.filter(user=mother)
    assert set(rows.values_list("email_status", flat=True)) == {"failed"}
    assert set(rows.values_list("email_attempts", flat=True)) == {3}
    reminders_run()
    assert mail.outbox == []


# --------------------------------------------------------------------------
# Who gets what
# --------------------------------------------------------------------------


def test_each_guardian_gets_their_own_in_their_language(clock: Any) -> None:
    mother, child = family("haha@example.jp", "はる")
    father = parent_user("father@example.jp", language="en")
    guardianship_add(guardian=father, child=child, relationship="father", valid_from=BIRTH)
    reminders_run()
    by_address = {m.to[0]: m for m in mail.outbox}
    assert set(by_address) == {"haha@example.jp", "father@example.jp"}
    english = by_address["father@example.jp"]
    assert english.subject == "[Hagukumi] Vaccinations and checkups coming up"
    assert "due soon" in english.body
    for item in due(father, child, TODAY).values():
        assert mentions(english, str(item.label)) == 1
    assert keys(father) == keys(mother)
    labels_en = set(Reminder.objects.filter(user=father).values_list("label", flat=True))
    labels_ja = set(Reminder.objects.filter(user=mother).values_list("label", flat=True))
    assert labels_en != labels_ja


def test_strangers_and_other_families_get_nothing_of_this_child(clock: Any) -> None:
    mother, child = family("haha@example.jp", "はる")
    other_mother, other_child = family("other@example.jp", "なつ", birth=date(2026, 9, 25))
    stranger = f.UserFactory(email="stranger@example.jp")
    reminders_run()
    assert keys(stranger) == set()
    assert set(Reminder.objects.filter(user=mother).values_list("patient", flat=True)) == {child.pk}
    assert set(Reminder.objects.filter(user=other_mother).values_list("patient", flat=True)) == {
        other_child.pk
    }
    by_address = {m.to[0]: m for m in mail.outbox}
    assert set(by_address) == {"haha@example.jp", "other@example.jp"}
    assert "なつ" not in by_address["haha@example.jp"].body
    assert "はる" not in by_address["other@example.jp"].body


def test_children_without_a_guardian_account_are_skipped(clock: Any) -> None:
    orphan = f.make_patient(given="あき", birth_date=BIRTH)  # the municipality's record only
    ended_parent, ended_child = family("ended@example.jp", "ふゆ")
    Guardianship.objects.filter(guardian=ended_parent).update(valid_to=TODAY - timedelta(days=1))
    result = reminders_run()
    assert result.guardians == 0
    assert not Reminder.objects.filter(patient__in=[orphan, ended_child]).exists()
    assert mail.outbox == []


def test_a_dv_blocked_guardian_is_not_reminded(clock: Any, municipality: Any) -> None:
    _mother, child = family("haha@example.jp", "はる")
    father = parent_user("father@example.jp")
    guardianship_add(guardian=father, child=child, relationship="father", valid_from=BIRTH)
    services.residency_add(patient=child, municipality=municipality, resident_number="C-9")
    officer = f.make_member(f.Role.MUNICIPAL_STAFF, municipality)
    dv_block_set(patient=child, blocked_user=father, by=officer)
    reminders_run()
    assert keys(father) == set()
    assert [m.to for m in mail.outbox] == [["haha@example.jp"]]


# --------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------


def test_email_off_still_lists_the_reminders(clock: Any) -> None:
    mother, child = family("haha@example.jp", "はる")
    NotificationSettings.objects.create(user=mother, email_enabled=False)
    reminders_run()
    assert mail.outbox == []
    assert keys(mother) == set(due(mother, child, TODAY))
    assert set(Reminder.objects.values_list("email_status", "in_app")) == {("skipped", True)}
    # Turning email on later does not mail old reminders.
    NotificationSettings.objects.filter(user=mother).update(email_enabled=True)
    reminders_run()
    assert mail.outbox == []


def test_an_unconfirmed_address_gets_no_mail_but_the_list_does(clock: Any) -> None:
    mother, child = family("haha@example.jp", "はる")
    EmailAddress.objects.filter(user=mother).update(verified=False)
    reminders_run()
    assert mail.outbox == []
    assert reminders.notifications_queryset(mother).count() == len(due(mother, child, TODAY))


def test_in_app_off_mails_but_does_not_list(clock: Any) -> None:
    mother, _child = family("haha@example.jp", "はる")
    NotificationSettings.objects.create(user=mother, in_app_enabled=False)
    reminders_run()
    assert len(mail.outbox) == 1
    assert not reminders.notifications_queryset(mother).exists()
    assert Reminder.objects.filter(user=mother).exists()


def test_both_channels_off_makes_nothing(clock: Any) -> None:
    mother, _child = family("haha@example.jp", "はる")
    NotificationSettings.objects.create(user=mother, email_enabled=False, in_app_enabled=False)
    reminders_run()
    assert mail.outbox == []
    assert keys(mother) == set()
    assert not AuditEvent.objects.filter(action="reminder.check").exists()


def test_per_kind_settings(clock: Any) -> None:
    mother, child = family("haha@example.jp", "はる")
    expected = due(mother, child, TODAY)
    NotificationSettings.objects.create(user=mother, vaccinations=False)
    reminders_run()
    kinds = {item.kind for item in expected.values()}
    made = set(Reminder.objects.filter(user=mother).values_list("kind", flat=True))
    assert "vaccination" not in made
    assert made == kinds - {"vaccination"}


# --------------------------------------------------------------------------
# Failures: one guardian failing, a worker dying between claim and send
# --------------------------------------------------------------------------


def test_a_failure_for_one_guardian_does_not_stop_the_others_and_a_rerun_resends_nothing(
    clock: Any,
) -> None:
    parents = [family(f"p{i}@example.jp", f"子{i}")[0] for i in range(3)]
    broken = parents[1]
    real = reminders.due_for_guardian

    def failing(*, user: Any, **kwargs: Any) -> Any:
        if user.pk == broken.pk:
            raise RuntimeError("the schedule could not be read")
        return real(user=user, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reminders, "due_for_guardian", failing)
        result = reminders_run()
    assert result.errors == 1
    assert result.failed_guardians == [broken.pk]
    assert sorted(m.to[0] for m in mail.outbox) == ["p0@example.jp", "p2@example.jp"]

    mail.outbox.clear()
    rerun = reminders_run()
    assert rerun.errors == 0
    assert [m.to[0] for m in mail.outbox] == ["p1@example.jp"]
    for parent in parents:
        assert Reminder.objects.filter(user=parent).exists()
        assert not Reminder.objects.filter(user=parent).exclude(email_status="sent").exists()


class Killed(BaseException):
    """Stands for the worker process dying: nothing after it runs."""


class DyingBackend(RefusingBackend):
    def send_messages(self, _messages: Any) -> int:
        raise Killed


def test_a_worker_dying_between_claim_and_send_never_sends_twice(clock: Any) -> None:
    mother, child = family("haha@example.jp", "はる")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(settings, "EMAIL_BACKEND", "tests.phr.test_reminders.DyingBackend")
        with pytest.raises(Killed):
            reminders_run()
    claimed = Reminder.objects.filter(user=mother)
    assert set(claimed.values_list("email_status", flat=True)) == {"sending"}

    # The task is delivered again at once: the claimed reminders are not sent.
    reminders_run()
    assert mail.outbox == []
    # Half an hour later they are marked unknown — still not sent — and
    # stay in the notification list.
    clock.shift(timedelta(minutes=31))
    result = reminders_run()
    assert result.unknown == claimed.count()
    assert set(claimed.values_list("email_status", flat=True)) == {"unknown"}
    assert mail.outbox == []
    assert reminders.notifications_queryset(mother).count() == len(due(mother, child, TODAY))


# --------------------------------------------------------------------------
# Audit and the task
# --------------------------------------------------------------------------


def test_each_computation_is_audited_as_the_guardians_read_by_the_system(clock: Any) -> None:
    mother, child = family("haha@example.jp", "はる")
    result = reminders_run()
    event = AuditEvent.objects.get(action="reminder.check")
    assert event.detail["run"] == result.run
    assert (event.actor_id, event.patient_id, event.outcome) == (mother.pk, child.pk, "success")
    assert event.detail["rule"] == "guardian"
    assert event.detail["by"] == "system"
    assert sorted(event.categories) == ["infant_checkups", "vaccinations"]


def test_the_celery_task_runs_the_job(clock: Any) -> None:
    mother, child = family("haha@example.jp", "はる")
    send_reminders.delay()
    assert keys(mother) == set(due(mother, child, TODAY))
    assert len(mail.outbox) == 1


def test_the_job_logs_no_names_or_items_also_when_a_guardian_fails(
    clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    mother, child = family("haha@example.jp", "カナリア")
    broken, _other = family("broken@example.jp", "ツグミ")
    labels = [str(i.label) for i in due(mother, child, TODAY).values()]
    real = reminders.due_for_guardian

    def failing(*, user: Any, **kwargs: Any) -> Any:
        if user.pk == broken.pk:
            raise RuntimeError("failed")
        return real(user=user, **kwargs)

    caplog.set_level("DEBUG")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reminders, "due_for_guardian", failing)
        reminders_run()
    logged = "\n".join(
        f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records if r.name.startswith("phr")
    )
    assert f"guardian {broken.pk} failed" in logged
    for canary in ("カナリア", "ツグミ", "前橋", "haha@example.jp", *labels):
        assert canary not in logged


def test_the_management_command_runs_the_job_and_refuses_a_bad_date(clock: Any) -> None:
    from io import StringIO

    from django.core.management import CommandError, call_command

    mother, child = family("haha@example.jp", "はる")
    out = StringIO()
    call_command("send_reminders", stdout=out)
    assert f"{len(due(mother, child, TODAY))} new reminders" in out.getvalue()
    assert len(mail.outbox) == 1
    call_command("send_reminders", stdout=out)
    assert len(mail.outbox) == 1
    with pytest.raises(CommandError, match="expected YYYY-MM-DD"):
        call_command("send_reminders", "--date", "26/11/2026")
