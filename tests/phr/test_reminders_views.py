"""The notification list and reminder settings, persona by persona: a user
sees and marks only their own reminders; a child the user may no longer
see drops out of the list; anonymous users go to the login page."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser
from django.test import Client
from django.urls import reverse
from django.utils import timezone, translation

from phr.models import AuditEvent, NotificationSettings, Reminder
from sharing.services import dv_block_set

pytestmark = pytest.mark.django_db

LIST = "/notifications/"
READ = "/notifications/read/"
SETTINGS = "/notifications/settings/"


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def reminder(user: Any, patient: Any, key: str = "vaccine:hib:1", **fields: Any) -> Reminder:
    values = {
        "stage": Reminder.Stage.DUE_SOON,
        "kind": Reminder.Kind.VACCINATION,
        "label": "Hib 1回目",
        "due_from": date(2026, 12, 1),
        "due_until": date(2027, 2, 28),
        "email_status": Reminder.Email.SENT,
        **fields,
    }
    return Reminder.objects.create(user=user, patient=patient, item_key=key, **values)


def test_urls_are_where_the_issue_says() -> None:
    assert reverse("reminder:list") == LIST
    assert reverse("reminder:read") == READ
    assert reverse("reminder:settings") == SETTINGS


@pytest.mark.parametrize("url", [LIST, SETTINGS])
def test_anonymous_users_are_sent_to_the_login_page(url: str) -> None:
    response = Client().get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))


def test_anonymous_posts_change_nothing(mother: Any, child: Any) -> None:
    mine = reminder(mother, child)
    response = Client().post(READ, {"reminder": mine.pk})
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))
    mine.refresh_from_db()
    assert mine.read_at is None


def test_the_guardian_sees_her_reminders_newest_first_with_unread_marked(
    mother: Any, child: Any
) -> None:
    older = reminder(mother, child, "vaccine:hib:1", label="Hib 1回目")
    newer = reminder(
        mother,
        child,
        "checkup:1m",
        label="1か月児健診",
        kind=Reminder.Kind.CHECKUP,
        stage=Reminder.Stage.OVERDUE,
    )
    Reminder.objects.filter(pk=older.pk).update(created_at=newer.created_at.replace(year=2025))
    body = client_for(mother).get(LIST).content.decode()
    assert body.index("1か月児健診") < body.index("Hib 1回目")
    assert "はる" in body  # the child's given name
    assert body.count("notification notification-unread") == 2
    assert "期限切れ" in body or "overdue" in body


def test_the_list_is_audited_as_the_guardian_seeing_the_child(mother: Any, child: Any) -> None:
    reminder(mother, child)
    client_for(mother).get(LIST)
    event = AuditEvent.objects.filter(action="view.notifications").get()
    assert (event.actor_id, event.patient_id) == (mother.pk, child.pk)
    assert event.detail["rule"] == "guardian"


def test_users_see_only_their_own_reminders(
    mother: Any, father: Any, child: Any, stranger: Any, clinician: Any
) -> None:
    reminder(mother, child, label="ははの通知")
    reminder(father, child, label="ちちの通知")
    assert "ははの通知" in client_for(mother).get(LIST).content.decode()
    fathers = client_for(father).get(LIST).content.decode()
    assert "ちちの通知" in fathers
    assert "ははの通知" not in fathers
    for other in (stranger, clinician):
        body = client_for(other).get(LIST).content.decode()
        assert "の通知" not in body
        assert "はる" not in body


def test_marking_read_touches_only_the_users_own(mother: Any, father: Any, child: Any) -> None:
    mine = reminder(mother, child)
    his = reminder(father, child)
    # The father posts the id of the mother's reminder: nothing happens to it.
    response = client_for(father).post(READ, {"reminder": mine.pk})
    assert response.status_code == 302
    mine.refresh_from_db()
    assert mine.read_at is None
    client_for(mother).post(READ, {"reminder": mine.pk})
    mine.refresh_from_db()
    his.refresh_from_db()
    assert mine.read_at is not None
    assert his.read_at is None
    assert "notification-unread" not in client_for(mother).get(LIST).content.decode()


def test_mark_all_read(mother: Any, father: Any, child: Any) -> None:
    reminder(mother, child, "a")
    reminder(mother, child, "b")
    his = reminder(father, child, "a")
    client_for(mother).post(READ, {"all": "on"})
    assert not Reminder.objects.filter(user=mother, read_at=None).exists()
    his.refresh_from_db()
    assert his.read_at is None


def test_a_bad_mark_read_request_says_what_is_wrong(mother: Any, child: Any) -> None:
    response = client_for(mother).post(READ, {"reminder": "x"}, follow=True)
    assert response.status_code == 200
    with translation.override("ja"):
        assert "既読にする通知を選んでください" in response.content.decode()


def test_mark_read_is_post_only(mother: Any) -> None:
    assert client_for(mother).get(READ).status_code == 405


def test_a_dv_blocked_guardian_no_longer_sees_the_childs_reminders(
    father: Any, child: Any, municipal_officer: Any
) -> None:
    reminder(father, child, label="ちちの通知")
    assert "ちちの通知" in client_for(father).get(LIST).content.decode()
    dv_block_set(patient=child, blocked_user=father, by=municipal_officer)
    body = client_for(father).get(LIST).content.decode()
    assert "ちちの通知" not in body
    assert "はる" not in body


def test_settings_default_on_and_are_saved_per_user(mother: Any, father: Any) -> None:
    client = client_for(mother)
    page = client.get(SETTINGS).content.decode()
    assert 'name="email_enabled"' in page
    assert "checked" in page
    response = client.post(SETTINGS, {"in_app_enabled": "on", "vaccinations": "on"})
    assert response.status_code == 302
    saved = NotificationSettings.objects.get(user=mother)
    assert (saved.email_enabled, saved.in_app_enabled, saved.vaccinations, saved.checkups) == (
        False,
        True,
        True,
        False,
    )
    assert not NotificationSettings.objects.filter(user=father).exists()


def test_the_list_says_when_in_app_reminders_are_off(mother: Any) -> None:
    NotificationSettings.objects.create(user=mother, in_app_enabled=False)
    with translation.override("ja"):
        body = client_for(mother).get(LIST).content.decode()
    assert "オフ" in body


def test_pages_are_in_english_for_english_users(mother: Any, child: Any) -> None:
    mother.language = "en"
    mother.save()
    reminder(mother, child, label="Hib dose 1")
    body = client_for(mother).get(LIST, headers={"accept-language": "en"}).content.decode()
    assert "Mark as read" in body


def test_the_navigation_link_counts_only_the_users_unread(
    mother: Any, father: Any, child: Any
) -> None:
    from django.template.loader import render_to_string
    from django.test import RequestFactory

    reminder(mother, child, "a")
    reminder(mother, child, "b", read_at=timezone.now())
    reminder(father, child, "a")
    request = RequestFactory().get("/")
    request.user = mother
    html = render_to_string("phr/notifications/_nav_link.html", request=request)
    assert 'href="/notifications/"' in html
    assert "notifications-badge" in html
    assert "1</span></a>" in html
    request.user = AnonymousUser()
    assert "notifications-badge" not in render_to_string(
        "phr/notifications/_nav_link.html", request=request
    )
