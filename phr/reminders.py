"""Reminders: the daily job that tells guardians about vaccinations and
checkups coming due within 14 days or overdue, by email and in the
notification list, once per (guardian, child, item, stage).

How "once" holds (docs/decisions/0015-reminders.md):

- A `Reminder` row is created per (user, patient, item_key, stage) under a
  unique constraint, each in its own short transaction: a second run, or
  two runs at once, cannot create it again. The row is the in-app
  notification.
- Its email is claimed by a guarded UPDATE (pending → sending) committed
  *before* the SMTP call, and recorded as sent after it. A run that finds
  nothing pending sends nothing. A worker that dies between the two leaves
  the row `sending`; after SENDING_TIMEOUT a later run marks it `unknown`
  and never sends it again (at most once: a sent email cannot be unsent,
  and the notification list still shows the reminder).
- Guardians are processed one at a time; a failure for one is logged (ids
  only) and the others go on; a re-run continues where the rows say.

What is due is computed by phr.schedules *as the guardian*: the schedule
reads only the records sharing.access lets that guardian see, and each
computation is audited with the guardian's grant (action reminder.check).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.db import transaction
from django.db.models import F, QuerySet
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone, translation

from phr.models import Guardianship, NotificationSettings, Patient, Reminder, User
from phr.selectors import JAPAN, patient_resources
from phr.terminology import Category
from sharing.access import Purpose, audit_reveal, decide

logger = logging.getLogger(__name__)

# Items due within this many days are reminded of as "due soon".
WINDOW_DAYS = 14
# A claim (email `sending`) older than this belongs to a worker that died
# between claiming and recording: it is marked `unknown`, never re-sent.
SENDING_TIMEOUT = timedelta(minutes=30)
# A mail server refusing a reminder this many times (one try per run) gives up.
MAX_EMAIL_ATTEMPTS = 3
# The SMTP call must end well within SENDING_TIMEOUT.
SMTP_TIMEOUT_SECONDS = 60

# The records a schedule reads: what the audit row names.
READ_CATEGORIES = (Category.VACCINATIONS, Category.INFANT_CHECKUPS)

STAGE_OF_STATUS = {"overdue": Reminder.Stage.OVERDUE}


# --------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------


def settings_for(user: Any) -> NotificationSettings:
    """The user's reminder settings; the defaults (everything on), unsaved,
    when they never changed them."""
    found = NotificationSettings.objects.filter(user=user).first()
    return found or NotificationSettings(user=user)


def settings_save(
    *,
    user: User,
    email_enabled: bool,
    in_app_enabled: bool,
    vaccinations: bool,
    checkups: bool,
) -> NotificationSettings:
    saved, _created = NotificationSettings.objects.update_or_create(
        user=user,
        defaults={
            "email_enabled": email_enabled,
            "in_app_enabled": in_app_enabled,
            "vaccinations": vaccinations,
            "checkups": checkups,
            "updated_at": timezone.now(),
        },
    )
    return saved


def _kind_wanted(prefs: NotificationSettings, kind: str) -> bool:
    if kind == Reminder.Kind.VACCINATION:
        return prefs.vaccinations
    if kind == Reminder.Kind.CHECKUP:
        return prefs.checkups
    return False


# --------------------------------------------------------------------------
# The in-app list
# --------------------------------------------------------------------------


def notifications_queryset(user: Any) -> QuerySet[Reminder]:
    """The user's own reminders shown in the list, newest first."""
    return Reminder.objects.filter(user=user, in_app=True).order_by("-created_at", "-id")


def unread_count(user: Any) -> int:
    """For a badge in the navigation."""
    if not getattr(user, "is_authenticated", False):
        return 0
    return notifications_queryset(user).filter(read_at=None).count()


def notifications_mark_read(*, user: Any, reminder_ids: Iterable[int] | None = None) -> int:
    """Mark the user's reminders read (all of them when `reminder_ids` is
    None). Another user's ids change nothing."""
    rows = notifications_queryset(user).filter(read_at=None)
    if reminder_ids is not None:
        rows = rows.filter(pk__in=list(reminder_ids))
    return rows.update(read_at=timezone.now())


def given_name(content: dict[str, Any] | None) -> str:
    """The given name of a FHIR Patient (its first name entry): what a
    reminder calls the child — the least that still says who is meant."""
    for name in (content or {}).get("name") or []:
        if isinstance(name, dict) and name.get("given"):
            return " ".join(str(g) for g in name["given"])
    return ""


def child_names(*, user: Any, patient_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Given names of the children this user may still see (a child whose
    guardianship ended or who is DV-blocked from the user is absent)."""
    ids = list(dict.fromkeys(patient_ids))
    allowed = [pid for pid in ids if decide(user, pid, purpose=Purpose.PERSONAL)]
    resources = patient_resources(user=user, patient_ids=allowed, purpose=Purpose.PERSONAL)
    return {pid: given_name(resources.get(pid)) for pid in allowed}


# --------------------------------------------------------------------------
# The daily job
# --------------------------------------------------------------------------


@dataclass
class RunResult:
    # Names the run in its audit rows (detail.run), so operations can tell
    # two runs apart (a task delivered twice, or a re-run).
    run: str = ""
    guardians: int = 0
    created: int = 0
    emails: int = 0
    reminders_emailed: int = 0
    skipped: int = 0
    failed: int = 0
    unknown: int = 0
    errors: int = 0
    failed_guardians: list[int] = field(default_factory=list)

    def add(self, other: RunResult) -> None:
        for name in ("created", "emails", "reminders_emailed", "skipped", "failed", "unknown"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def japan_today() -> date:
    return timezone.localdate(timezone=JAPAN)


def guardian_ids(*, today: date) -> list[int]:
    """Users with an active guardianship of a child today, in id order."""
    return list(
        Guardianship.objects.active(at=_noon(today))
        .filter(
            guardian__is_active=True,
            child__kind=Patient.Kind.CHILD,
            child__merged_into__isnull=True,
        )
        .order_by("guardian_id")
        .values_list("guardian_id", flat=True)
        .distinct()
    )


def _noon(day: date) -> datetime:
    # Guardianship.active(at=) takes a moment and reads its local date.
    return datetime(day.year, day.month, day.day, 12, tzinfo=JAPAN)


def reminders_run(*, today: date | None = None) -> RunResult:
    """The daily job: every guardian, one at a time. A failure for one
    guardian is logged (by id) and counted; the others go on."""
    day = today or japan_today()
    result = RunResult(run=uuid.uuid4().hex[:12])
    for guardian_id in guardian_ids(today=day):
        result.guardians += 1
        try:
            result.add(reminders_for_guardian(guardian_id=guardian_id, today=day, run=result.run))
        except Exception:
            # Ids only: never a name or a schedule item in the log.
            logger.exception("reminders: guardian %s failed", guardian_id)
            result.errors += 1
            result.failed_guardians.append(guardian_id)
    logger.info(
        "reminders run %s: %s guardians, %s new reminders, %s emails, %s errors, %s unknown",
        result.run,
        result.guardians,
        result.created,
        result.emails,
        result.errors,
        result.unknown,
    )
    return result


def stage_of(item: Any, today: date) -> str | None:
    """phr.schedules DueItem → the reminder stage, or None when it is not
    (yet) one to remind of."""
    if item.status in STAGE_OF_STATUS:
        return STAGE_OF_STATUS[item.status]
    if item.status in ("due", "upcoming") and item.due_from <= today + timedelta(days=WINDOW_DAYS):
        return Reminder.Stage.DUE_SOON
    return None


def _children(user: User, day: date) -> list[Patient]:
    return [
        g.child
        for g in Guardianship.objects.active(at=_noon(day))
        .filter(guardian=user, child__kind=Patient.Kind.CHILD, child__merged_into__isnull=True)
        .select_related("child")
        .order_by("child_id")
    ]


def due_for_guardian(
    *, user: User, today: date, prefs: NotificationSettings, run: str = ""
) -> dict[tuple[uuid.UUID, str, str], Any]:
    """What this guardian should be reminded of today: (child id, item
    key, stage) → DueItem, labels in the guardian's language. Computed as
    the guardian; each child's computation audited."""
    from phr.schedules import child_schedule

    due: dict[tuple[uuid.UUID, str, str], Any] = {}
    for child in _children(user, today):
        # The guardian's own grant must still reach the child (a DV block
        # or an ended guardianship stops reminders through this channel too).
        if not decide(user, child, purpose=Purpose.PERSONAL):
            continue
        with translation.override(user.language or "ja"):
            items = child_schedule(user=user, patient=child, today=today).due_items(
                within_days=WINDOW_DAYS
            )
        audit_reveal(
            user,
            [child.pk],
            categories=READ_CATEGORIES,
            action="reminder.check",
            purpose=Purpose.PERSONAL,
            detail={"by": "system", "job": "reminders", "run": run},
        )
        for item in items:
            stage = stage_of(item, today)
            if stage is None or not _kind_wanted(prefs, item.kind):
                continue
            due[(child.pk, item.key, stage)] = item
    return due


def reminders_for_guardian(*, guardian_id: int, today: date, run: str = "") -> RunResult:
    """One guardian's reminders: create the rows that do not exist yet,
    then send the guardian one email with every reminder still waiting to
    be mailed and still due. Each step is its own small transaction."""
    result = RunResult()
    user = User.objects.filter(pk=guardian_id, is_active=True).first()
    if user is None:
        return result
    result.unknown += _expire_stale_claims(user)
    prefs = settings_for(user)
    if not (prefs.email_enabled or prefs.in_app_enabled):
        due: dict[tuple[uuid.UUID, str, str], Any] = {}
    else:
        due = due_for_guardian(user=user, today=today, prefs=prefs, run=run)
    # Most days everything due was reminded of already: one read finds the
    # rows that exist; only the missing ones are made (and a concurrent run
    # making one at the same moment is still settled by the constraint).
    made = set(Reminder.objects.filter(user=user).values_list("patient_id", "item_key", "stage"))
    missing = {k: item for k, item in due.items() if k not in made}
    email = bool(missing) and prefs.email_enabled and email_verified(user)
    for (child_id, key, stage), item in missing.items():
        result.created += _reminder_create(
            user=user,
            child_id=child_id,
            key=key,
            stage=stage,
            item=item,
            email=email,
            in_app=prefs.in_app_enabled,
        )
    sent, skipped, failed = _send_pending(user=user, due=due, today=today)
    result.reminders_emailed += sent
    result.emails += 1 if sent else 0
    result.skipped += skipped
    result.failed += failed
    return result


def email_verified(user: User) -> bool:
    """Mail only an address the user has confirmed: a reminder names a child
    and a vaccination, and a mistyped address must not receive it."""
    from allauth.account.models import EmailAddress

    return bool(user.email) and (
        EmailAddress.objects.filter(user=user, email__iexact=user.email, verified=True).exists()
    )


def _reminder_create(
    *,
    user: User,
    child_id: uuid.UUID,
    key: str,
    stage: str,
    item: Any,
    email: bool,
    in_app: bool,
) -> int:
    """1 if this run made the reminder, 0 if it already existed (made by an
    earlier or a concurrent run: the unique constraint decides)."""
    with transaction.atomic():
        _row, created = Reminder.objects.get_or_create(
            user=user,
            patient_id=child_id,
            item_key=key,
            stage=stage,
            defaults={
                "kind": item.kind,
                "label": str(item.label)[:200],
                "due_from": item.due_from,
                "due_until": item.due_until,
                "in_app": in_app,
                "email_status": Reminder.Email.PENDING if email else Reminder.Email.SKIPPED,
            },
        )
    return int(created)


def _expire_stale_claims(user: User) -> int:
    """Claims a dead worker left behind: their email may or may not have
    gone out, so they are never sent again — marked `unknown` and logged."""
    stale = Reminder.objects.filter(
        user=user,
        email_status=Reminder.Email.SENDING,
        email_claimed_at__lt=timezone.now() - SENDING_TIMEOUT,
    ).update(email_status=Reminder.Email.UNKNOWN, email_error="interrupted while sending")
    if stale:
        logger.warning(
            "reminders: %s emails of user %s were interrupted while sending; not re-sent",
            stale,
            user.pk,
        )
    return stale


def _send_pending(
    *, user: User, due: dict[tuple[uuid.UUID, str, str], Any], today: date
) -> tuple[int, int, int]:
    """Claim the user's pending reminders that are still due and mail them
    in one message. Returns (sent, skipped, failed) reminder counts."""
    pending = list(
        Reminder.objects.filter(user=user, email_status=Reminder.Email.PENDING).values_list(
            "pk", "patient_id", "item_key", "stage"
        )
    )
    if not pending:
        return 0, 0, 0
    still_due = [pk for pk, pid, key, stage in pending if (pid, key, stage) in due]
    gone = [pk for pk, pid, key, stage in pending if (pid, key, stage) not in due]
    skipped = 0
    if gone:
        # Done meanwhile, no longer visible to this guardian, turned off, or
        # moved on to the next stage: a stale reminder is not mailed.
        skipped = Reminder.objects.filter(pk__in=gone, email_status=Reminder.Email.PENDING).update(
            email_status=Reminder.Email.SKIPPED, email_error="no longer due when sending"
        )
    if not still_due:
        return 0, skipped, 0
    # The claim commits before the SMTP call. FOR UPDATE waits for a
    # concurrent claimer and re-reads the row: whoever comes second finds
    # it no longer pending.
    now = timezone.now()
    with transaction.atomic():
        claimed = list(
            Reminder.objects.select_for_update()
            .filter(pk__in=still_due, email_status=Reminder.Email.PENDING)
            .values_list("pk", flat=True)
        )
        Reminder.objects.filter(pk__in=claimed).update(
            email_status=Reminder.Email.SENDING,
            email_claimed_at=now,
            email_attempts=F("email_attempts") + 1,
        )
    if not claimed:
        return 0, skipped, 0
    rows = list(Reminder.objects.filter(pk__in=claimed).order_by("patient_id", "due_from", "pk"))
    try:
        message = reminder_email(user=user, reminders=rows, today=today)
        if message is None:
            # No child left to name (access ended between the two steps).
            Reminder.objects.filter(pk__in=claimed).update(
                email_status=Reminder.Email.SKIPPED, email_error="child no longer visible"
            )
            return 0, skipped + len(claimed), 0
        with get_connection(timeout=SMTP_TIMEOUT_SECONDS) as connection:
            connection.send_messages([message])
    except Exception as error:
        # Refused or not reachable: nothing went out. Try again next run,
        # up to MAX_EMAIL_ATTEMPTS.
        logger.warning("reminders: email to user %s failed: %s", user.pk, type(error).__name__)
        reason = type(error).__name__[:200]
        Reminder.objects.filter(pk__in=claimed, email_attempts__lt=MAX_EMAIL_ATTEMPTS).update(
            email_status=Reminder.Email.PENDING, email_error=reason
        )
        failed = Reminder.objects.filter(
            pk__in=claimed, email_status=Reminder.Email.SENDING
        ).update(email_status=Reminder.Email.FAILED, email_error=reason)
        return 0, skipped, failed
    Reminder.objects.filter(pk__in=claimed, email_status=Reminder.Email.SENDING).update(
        email_status=Reminder.Email.SENT, email_sent_at=timezone.now(), email_error=""
    )
    return len(claimed), skipped, 0


# --------------------------------------------------------------------------
# The email
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Line:
    label: str
    stage: str
    due_from: date
    due_until: date | None


@dataclass(frozen=True)
class _ChildGroup:
    name: str
    url: str
    lines: list[_Line]


def _site(path: str) -> str:
    return settings.SITE_URL.rstrip("/") + path


def reminder_email(*, user: User, reminders: list[Reminder], today: date) -> EmailMessage | None:
    """One message for a guardian's reminders, in the guardian's language:
    each child's given name, the item, its stage and date window, and links
    to the child's handbook, the notification list and the settings. No other
    health data."""
    names = child_names(user=user, patient_ids=[r.patient_id for r in reminders])
    groups: list[_ChildGroup] = []
    for pid in dict.fromkeys(r.patient_id for r in reminders):
        if pid not in names:
            continue
        groups.append(
            _ChildGroup(
                name=names[pid],
                url=_site(reverse("handbook:book", args=[pid])),
                lines=[
                    _Line(r.label, r.stage, r.due_from, r.due_until)
                    for r in reminders
                    if r.patient_id == pid
                ],
            )
        )
    if not groups:
        return None
    context = {
        "groups": groups,
        "today": today,
        "overdue": Reminder.Stage.OVERDUE,
        "list_url": _site(reverse("reminder:list")),
        "settings_url": _site(reverse("reminder:settings")),
    }
    with translation.override(user.language or "ja"):
        subject = " ".join(render_to_string("phr/email/reminder_subject.txt", context).split())
        body = render_to_string("phr/email/reminder_body.txt", context)
    return EmailMessage(subject=subject, body=body, to=[user.email])
