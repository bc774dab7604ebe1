"""The Sharing pages: who can see what and why, grant (after a recent
login), revoke, the emergency setting, the access history with "report as
suspicious", the privacy officer's queue and "shared with me" — persona by
persona."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from allauth.account.models import EmailAddress
from django.core.cache import cache
from django.http import HttpResponse
from django.test import Client
from django.urls import reverse

from phr.models import AuditEvent, Membership, Provenance
from phr.terminology import Category
from sharing.models import AccessReport, Consent, ConsentPurpose, EmergencyPreference
from sharing.services import consent_grant, consent_revoke, dv_block_set
from tests import factories as f

pytestmark = pytest.mark.django_db

JAPAN = ZoneInfo("Asia/Tokyo")
INDEX = "/sharing/"


@pytest.fixture(autouse=True)
def _fresh_rate_limits() -> Iterator[None]:
    # allauth counts login attempts in the cache.
    cache.clear()
    yield
    cache.clear()


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def logged_in(user: Any) -> Client:
    """A client that logged in through the form just now: sensitive_action
    counts a login in the last five minutes as a recent authentication."""
    EmailAddress.objects.update_or_create(
        user=user, email=user.email, defaults={"verified": True, "primary": True}
    )
    client = Client()
    response = client.post(reverse("account_login"), {"login": user.email, "password": f.PASSWORD})
    assert response.status_code == 302, response.content
    return client


def text(response: HttpResponse) -> str:
    return response.content.decode()


def grant_clinic(mother: Any, patient: Any, clinic: Any, **extra: Any) -> Consent:
    return consent_grant(
        patient=patient,
        by=mother,
        purpose=ConsentPurpose.CARE,
        categories=extra.pop("categories", [Category.VACCINATIONS]),
        grantee_org=clinic,
        **extra,
    )


def grant_form(patient: Any, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"kind": "clinic", "patient": str(patient.pk)}
    data.update(fields)
    return data


@pytest.fixture
def officer(municipal_officer: Any) -> Any:
    """The family's municipality's privacy officer."""
    Membership.objects.filter(user=municipal_officer).update(is_privacy_officer=True)
    return municipal_officer


@pytest.fixture
def other_officer(other_municipal_officer: Any) -> Any:
    Membership.objects.filter(user=other_municipal_officer).update(is_privacy_officer=True)
    return other_municipal_officer


# --------------------------------------------------------------------------
# Who can see what now
# --------------------------------------------------------------------------


def test_it_shows_each_persons_consents_and_standing_rules(
    mother: Any, mother_patient: Any, child: Any, father: Any, clinic: Any, municipality: Any
) -> None:
    # Ends at midnight in Japan on 1 June: shared "until 31 May".
    grant_clinic(
        mother,
        child,
        clinic,
        categories=[Category.VACCINATIONS, Category.INFANT_CHECKUPS],
        ends_at=datetime(2031, 6, 1, tzinfo=JAPAN),
    )
    html = text(client_for(mother).get(INDEX))
    assert f'id="person-{child.pk}"' in html
    assert f'id="person-{mother_patient.pk}"' in html
    assert clinic.name in html
    assert clinic.code in html
    assert "予防接種" in html
    assert "乳幼児健診" in html
    assert "2031年5月31日" in html
    # The standing rules, in plain Japanese: the guardians and the town.
    assert "father@example.jp" in html or "User" in html
    assert "保護者" in html
    assert municipality.name in html
    assert "お住まいの市区町村" in html
    assert "なぜ見られるの？" in html


def test_it_writes_one_audit_row_per_person_shown(
    mother: Any, mother_patient: Any, child: Any
) -> None:
    client_for(mother).get(INDEX)
    shown = AuditEvent.objects.filter(actor=mother, action="view.sharing")
    assert sorted(str(e.patient_id) for e in shown) == sorted(
        [str(mother_patient.pk), str(child.pk)]
    )


def test_it_shows_the_father_the_child_but_not_the_mother(
    father: Any, mother_patient: Any, child: Any
) -> None:
    # He is the child's guardian; the mother's own records are hers.
    html = text(client_for(father).get(INDEX))
    assert f'id="person-{child.pk}"' in html
    assert f'id="person-{mother_patient.pk}"' not in html


def test_it_needs_a_login(client: Client) -> None:
    response = client.get(INDEX)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))


# --------------------------------------------------------------------------
# Grant
# --------------------------------------------------------------------------


def test_it_grants_a_clinic_access_to_vaccinations_through_the_form(
    mother: Any, child: Any, clinic: Any, clinician: Any
) -> None:
    client = logged_in(mother)
    response = client.post(
        "/sharing/grant/",
        grant_form(child, clinic=clinic.code, categories=[Category.VACCINATIONS]),
    )
    assert response.status_code == 302
    assert response["Location"] == f"{INDEX}#person-{child.pk}"
    consent = Consent.objects.get()
    assert consent.patient == child
    assert consent.grantee_org == clinic
    assert consent.categories == [Category.VACCINATIONS]
    assert consent.purpose == ConsentPurpose.CARE
    assert consent.ends_at is None
    assert consent.granted_by == mother
    page = text(client.get(INDEX))
    assert "共有しました" in page
    assert clinic.name in page


def test_it_finds_the_clinic_by_name_and_ends_after_the_chosen_day(
    mother: Any, child: Any, clinic: Any
) -> None:
    client = logged_in(mother)
    response = client.post(
        "/sharing/grant/",
        grant_form(
            child,
            clinic=clinic.name,
            categories=[Category.VACCINATIONS, Category.MEDICATIONS],
            ends_on="2031-05-31",
        ),
    )
    assert response.status_code == 302
    consent = Consent.objects.get()
    # Shared through 31 May in Japan: it ends at midnight starting 1 June.
    assert consent.ends_at == datetime(2031, 6, 1, tzinfo=JAPAN)
    assert sorted(consent.categories) == [Category.MEDICATIONS, Category.VACCINATIONS]


def test_it_takes_the_clinic_picked_from_the_search_results(
    mother: Any, child: Any, clinic: Any, other_clinic: Any
) -> None:
    client = logged_in(mother)
    response = client.post(
        "/sharing/grant/",
        grant_form(child, clinic="Clinic", clinic_id=other_clinic.pk, categories=["vitals"]),
    )
    assert response.status_code == 302
    assert Consent.objects.get().grantee_org == other_clinic


def test_it_searches_clinics_by_name_or_code_and_shows_the_code(
    mother: Any, clinic: Any, other_clinic: Any
) -> None:
    client = client_for(mother)
    fragment = text(
        client.get("/sharing/clinics/", {"clinic": clinic.name}, headers={"HX-Request": "true"})
    )
    assert clinic.code in fragment
    assert 'type="radio"' in fragment
    assert other_clinic.code not in fragment
    page = text(client.get("/sharing/clinics/", {"q": clinic.code[:6]}))
    assert clinic.code in page
    assert "<html" in page


def test_it_asks_a_stale_session_to_confirm_the_password_before_granting(
    mother: Any, child: Any, clinic: Any
) -> None:
    client = client_for(mother)  # no authentication recorded in this session
    response = client.post(
        "/sharing/grant/", grant_form(child, clinic=clinic.code, categories=["vaccinations"])
    )
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_reauthenticate"))
    assert not Consent.objects.exists()
    # Confirming the password replays the grant.
    response = client.post(response["Location"], {"password": f.PASSWORD})
    assert Consent.objects.filter(patient=child, grantee_org=clinic).exists()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"categories": []}, "共有する記録の種類を1つ以上選んでください。"),
        ({"ends_on": "2020-01-31"}, "終了日は開始日より後にしてください。"),
        ({"ends_on": "2031-13-45"}, "日付を正しく入力してください。"),
        ({"clinic": "1019999999"}, "医療機関が見つかりません"),
        ({"clinic": "存在しない医院"}, "医療機関が見つかりません"),
        ({"clinic": ""}, "医療機関の名前か医療機関コードを入力してください。"),
        (
            {"kind": "person", "email": "nobody@example.jp"},
            "このメールアドレスのアカウントはありません",
        ),
    ],
    ids=[
        "no categories",
        "end before start",
        "not a date",
        "unknown code",
        "unknown name",
        "no clinic",
        "unknown person",
    ],
)
def test_it_refuses_bad_grants_with_a_clear_message_and_writes_nothing(
    mother: Any, child: Any, clinic: Any, fields: dict[str, Any], message: str
) -> None:
    client = logged_in(mother)
    data = grant_form(child, clinic=clinic.code, categories=[Category.VACCINATIONS])
    data.update(fields)
    response = client.post("/sharing/grant/", data)
    assert response.status_code == 200
    html = text(response)
    assert message in html
    assert 'class="errorlist field-errors"' in html
    assert " / " not in html.split('class="errorlist field-errors"')[1].split("</ul>")[0]
    # The form stays open, next to the person it was for.
    assert "open>" in html
    assert not Consent.objects.exists()


def test_it_shows_the_english_half_of_a_service_message_in_english(
    mother: Any, child: Any, clinic: Any
) -> None:
    client = logged_in(mother)
    client.post(reverse("set_language"), {"language": "en", "next": "/"})
    response = client.post("/sharing/grant/", grant_form(child, clinic=clinic.code))
    assert "Choose at least one kind of record." in text(response)
    assert "共有する記録の種類" not in text(response)


def test_it_shares_the_mothers_records_with_her_partner_by_email(
    mother: Any, mother_patient: Any, father: Any
) -> None:
    client = logged_in(mother)
    response = client.post(
        "/sharing/grant/",
        {
            "kind": "person",
            "patient": str(mother_patient.pk),
            "email": father.email.upper(),
            "categories": [Category.VITALS],
        },
    )
    assert response.status_code == 302
    consent = Consent.objects.get()
    assert consent.grantee_user == father
    assert consent.patient == mother_patient


def test_the_father_cannot_see_or_grant_for_the_mother(
    mother: Any, mother_patient: Any, father: Any, clinic: Any
) -> None:
    consent = grant_clinic(mother, mother_patient, clinic, categories=[Category.VITALS])
    client = logged_in(father)
    response = client.post(
        "/sharing/grant/", grant_form(mother_patient, clinic=clinic.code, categories=["vitals"])
    )
    assert response.status_code == 404
    assert client.post("/sharing/revoke/", {"consent": str(consent.pk)}).status_code == 404
    why = client.get(
        "/sharing/why/", {"patient": str(mother_patient.pk), "grantee": f"org:{clinic.pk}"}
    )
    assert why.status_code == 404
    assert Consent.objects.count() == 1
    assert Consent.objects.get().revoked_at is None


def test_a_stranger_gets_404_for_someone_elses_person(
    stranger: Any, child: Any, clinic: Any
) -> None:
    client = logged_in(stranger)
    response = client.post(
        "/sharing/grant/", grant_form(child, clinic=clinic.code, categories=["vaccinations"])
    )
    assert response.status_code == 404
    assert not Consent.objects.exists()


# --------------------------------------------------------------------------
# Revoke
# --------------------------------------------------------------------------


def test_it_revokes_with_one_post_and_revoking_twice_is_fine(
    mother: Any, child: Any, clinic: Any, clinician: Any
) -> None:
    consent = grant_clinic(mother, child, clinic)
    client = client_for(mother)  # one click, no re-authentication
    response = client.post("/sharing/revoke/", {"consent": str(consent.pk)})
    assert response.status_code == 302
    consent.refresh_from_db()
    first = consent.revoked_at
    assert first is not None
    assert consent.revoked_by == mother
    assert client.post("/sharing/revoke/", {"consent": str(consent.pk)}).status_code == 302
    consent.refresh_from_db()
    assert consent.revoked_at == first
    html = text(client.get(INDEX))
    assert "共有をやめました" in html
    assert "終わった共有" in html


def test_a_stranger_cannot_revoke_someone_elses_consent(
    mother: Any, child: Any, clinic: Any, stranger: Any
) -> None:
    consent = grant_clinic(mother, child, clinic)
    client = client_for(stranger)
    assert client.post("/sharing/revoke/", {"consent": str(consent.pk)}).status_code == 404
    assert client.post("/sharing/revoke/", {"consent": "not-a-uuid"}).status_code == 404
    consent.refresh_from_db()
    assert consent.revoked_at is None


def test_revoke_only_answers_post(mother: Any, child: Any, clinic: Any) -> None:
    consent = grant_clinic(mother, child, clinic)
    response = client_for(mother).get("/sharing/revoke/", {"consent": str(consent.pk)})
    assert response.status_code == 405


# --------------------------------------------------------------------------
# Why can they see this?
# --------------------------------------------------------------------------


def test_it_explains_what_a_clinic_can_see_and_why(
    mother: Any, child: Any, clinic: Any, clinician: Any
) -> None:
    grant_clinic(mother, child, clinic, ends_at=datetime(2031, 6, 1, tzinfo=JAPAN))
    response = client_for(mother).get(
        "/sharing/why/", {"patient": str(child.pk), "grantee": f"org:{clinic.pk}"}
    )
    assert response.status_code == 200
    html = text(response)
    rows = {
        cell.split("</th>")[0]: cell.split("</th>")[1]
        for cell in html.split('<th scope="row">')[1:]
    }
    assert "はい" in rows["予防接種"]
    assert "2031年5月31日" in rows["予防接種"]
    assert "家族の同意" in rows["予防接種"]
    assert "いいえ" in rows["乳幼児健診"]
    assert "同意に含まれていません" in rows["乳幼児健診"]


def test_it_explains_a_guardian_and_a_revoked_consent(
    mother: Any, child: Any, father: Any, clinic: Any
) -> None:
    consent = grant_clinic(mother, child, clinic)
    consent_revoke(consent=consent, by=mother)
    client = client_for(mother)
    guardian = text(
        client.get("/sharing/why/", {"patient": str(child.pk), "grantee": f"user:{father.pk}"})
    )
    assert "この子の保護者です" in guardian
    revoked = text(
        client.get("/sharing/why/", {"patient": str(child.pk), "grantee": f"org:{clinic.pk}"})
    )
    assert "同意は取り消されました" in revoked


def test_it_answers_why_only_about_grantees_the_page_names(
    mother: Any, child: Any, stranger: Any, other_clinic: Any
) -> None:
    client = client_for(mother)
    for grantee in (f"user:{stranger.pk}", f"org:{other_clinic.pk}", "org:x", ""):
        response = client.get("/sharing/why/", {"patient": str(child.pk), "grantee": grantee})
        assert response.status_code == 404, grantee


# --------------------------------------------------------------------------
# Emergency setting
# --------------------------------------------------------------------------


def test_it_saves_the_emergency_setting(mother: Any, child: Any, stranger: Any) -> None:
    client = client_for(mother)
    response = client.post(
        "/sharing/emergency/",
        {"patient": str(child.pk), "share_summary": "on", "contact_note": "父 090-0000-0000"},
    )
    assert response.status_code == 302
    preference = EmergencyPreference.objects.get(patient=child)
    assert preference.share_summary is True
    assert preference.contact_note == "父 090-0000-0000"
    assert "救急隊" in text(client.get(INDEX))
    response = client_for(stranger).post(
        "/sharing/emergency/", {"patient": str(child.pk), "share_summary": ""}
    )
    assert response.status_code == 404
    assert EmergencyPreference.objects.get(patient=child).share_summary is True


# --------------------------------------------------------------------------
# Access history
# --------------------------------------------------------------------------


def test_the_history_lists_a_clinics_read_with_the_reason_and_not_my_own_views(
    mother: Any, child: Any, clinic: Any, clinician: Any
) -> None:
    f.write_observation(child, category=Category.VACCINATIONS)
    grant_clinic(mother, child, clinic)
    mother_client = client_for(mother)
    mother_client.get(reverse("phr:person", args=[child.pk]))  # her own view
    # A real read by the clinic, through the person page.
    assert client_for(clinician).get(reverse("phr:person", args=[child.pk])).status_code == 200

    html = text(mother_client.get("/sharing/history/"))
    assert clinic.name in html
    assert "医療機関の職員" in html
    assert "家族の同意" in html
    assert "予防接種" in html
    # Staff are named by their organization, not by their email.
    assert clinician.email not in html
    # Her own views are not listed.
    assert mother.email not in html.split("<main")[1]
    history = AuditEvent.objects.filter(patient_id=child.pk, outcome="success")
    assert history.filter(actor=mother, action="view.timeline").exists()
    assert html.count('class="access-row') == history.exclude(actor=mother).count()


def test_the_history_lists_newest_first_and_pages(
    mother: Any, child: Any, clinic: Any, clinician: Any
) -> None:
    from sharing import selectors

    grant_clinic(mother, child, clinic)
    client = client_for(clinician)
    for _ in range(selectors.HISTORY_PAGE_SIZE + 2):
        client.get(reverse("phr:person", args=[child.pk]))
    result = selectors.access_history(user=mother)
    assert result.page.paginator.num_pages == 2
    times = [row.occurred_at for row in result.rows]
    assert times == sorted(times, reverse=True)
    assert client_for(mother).get("/sharing/history/", {"page": 2}).status_code == 200


def test_a_dv_blocked_father_sees_nothing_of_the_child_in_the_history(
    mother: Any, child: Any, father: Any, clinic: Any, clinician: Any, municipal_officer: Any
) -> None:
    grant_clinic(mother, child, clinic)
    client_for(clinician).get(reverse("phr:person", args=[child.pk]))
    assert clinic.name in text(client_for(father).get("/sharing/history/"))
    dv_block_set(patient=child, blocked_user=father, by=municipal_officer)
    html = text(client_for(father).get("/sharing/history/"))
    assert clinic.name not in html
    assert "access-row" not in html
    event = AuditEvent.objects.filter(patient_id=child.pk, actor=clinician).first()
    assert event is not None
    response = client_for(father).post("/sharing/history/report/", {"audit_event": event.id})
    assert response.status_code == 404
    assert f'id="person-{child.pk}"' not in text(client_for(father).get(INDEX))


# --------------------------------------------------------------------------
# Report as suspicious → the privacy officer's queue
# --------------------------------------------------------------------------


def test_a_report_reaches_the_towns_privacy_officer_only(
    mother: Any,
    child: Any,
    clinic: Any,
    clinician: Any,
    officer: Any,
    other_officer: Any,
    municipality: Any,
) -> None:
    grant_clinic(mother, child, clinic)
    client_for(clinician).get(reverse("phr:person", args=[child.pk]))
    event = AuditEvent.objects.get(patient_id=child.pk, actor=clinician, action="view.timeline")

    client = client_for(mother)
    response = client.post(
        "/sharing/history/report/", {"audit_event": event.id, "note": "通っていない医院です"}
    )
    assert response.status_code == 302
    assert "個人情報保護の担当者" in text(client.get(response["Location"]))
    report = AccessReport.objects.get()
    assert report.municipality == municipality
    assert report.patient == child
    assert "報告済み" in text(client.get("/sharing/history/"))

    queue = text(client_for(officer).get("/sharing/reports/"))
    assert "通っていない医院です" in queue
    assert clinic.name in queue
    assert f"#{event.id}" in queue
    assert "はる" in queue  # the child's name: a current resident of the town

    assert "通っていない医院です" not in text(client_for(other_officer).get("/sharing/reports/"))
    response = client_for(other_officer).post(
        "/sharing/reports/close/", {"report": report.pk, "resolution": "x"}
    )
    assert response.status_code == 404


def test_the_officer_closes_a_report_with_a_resolution(
    mother: Any, child: Any, clinic: Any, clinician: Any, officer: Any
) -> None:
    grant_clinic(mother, child, clinic)
    client_for(clinician).get(reverse("phr:person", args=[child.pk]))
    event = AuditEvent.objects.get(patient_id=child.pk, actor=clinician, action="view.timeline")
    client_for(mother).post("/sharing/history/report/", {"audit_event": event.id})
    report = AccessReport.objects.get()

    client = client_for(officer)
    response = client.post("/sharing/reports/close/", {"report": report.pk, "resolution": " "})
    assert response.status_code == 200
    assert "対応の内容を書いてください。" in text(response)
    report.refresh_from_db()
    assert report.status == AccessReport.Status.OPEN

    response = client.post(
        "/sharing/reports/close/",
        {"report": report.pk, "resolution": "同意に基づく閲覧でした。ご家族に説明済み。"},
    )
    assert response.status_code == 302
    report.refresh_from_db()
    assert report.status == AccessReport.Status.CLOSED
    assert report.handled_by == officer
    assert "通報の確認" in text(client.get("/sharing/reports/"))
    assert "未対応の報告はありません" in text(client.get("/sharing/reports/"))


def test_the_queue_is_404_for_anyone_but_privacy_officers(
    mother: Any, municipal_officer: Any, clinician: Any, stranger: Any, staff_without_mfa: Any
) -> None:
    for user in (mother, municipal_officer, clinician, stranger):
        assert client_for(user).get("/sharing/reports/").status_code == 404
    Membership.objects.filter(user=staff_without_mfa).update(is_privacy_officer=True)
    assert client_for(staff_without_mfa).get("/sharing/reports/").status_code in (302, 404)


def test_one_can_report_only_rows_of_ones_own_history(
    mother: Any, child: Any, stranger: Any, clinic: Any, clinician: Any
) -> None:
    grant_clinic(mother, child, clinic)
    client_for(clinician).get(reverse("phr:person", args=[child.pk]))
    event = AuditEvent.objects.get(patient_id=child.pk, actor=clinician, action="view.timeline")
    own = AuditEvent.objects.filter(actor=mother).first()
    assert (
        client_for(stranger).post("/sharing/history/report/", {"audit_event": event.id}).status_code
        == 404
    )
    if own is not None:
        # Her own actions are not in her history: nothing to report.
        assert (
            client_for(mother).post("/sharing/history/report/", {"audit_event": own.id}).status_code
            == 404
        )
    assert not AccessReport.objects.exists()


# --------------------------------------------------------------------------
# Shared with me
# --------------------------------------------------------------------------


def test_shared_with_me_lists_only_consented_patients_and_audits_them(
    mother: Any,
    mother_patient: Any,
    child: Any,
    clinic: Any,
    clinician: Any,
    unconsented_clinician: Any,
) -> None:
    other_child = f.make_patient(given="なつ")
    f.write_observation(other_child, origin=Provenance.Origin.CLINIC, organization=clinic)
    grant_clinic(mother, child, clinic, ends_at=datetime(2031, 6, 1, tzinfo=JAPAN))
    html = text(client_for(clinician).get("/sharing/with-me/"))
    assert reverse("phr:person", args=[child.pk]) in html
    assert "はる" in html
    assert "予防接種" in html
    assert "2031年5月31日" in html
    # A patient the clinic only submitted records for is not "shared".
    assert str(other_child.pk) not in html
    assert str(mother_patient.pk) not in html
    listed = AuditEvent.objects.filter(actor=clinician, action="view.shared_with_me")
    assert [e.patient_id for e in listed] == [child.pk]
    assert listed.get().detail["rule"] == "consent"

    assert "はる" not in text(client_for(unconsented_clinician).get("/sharing/with-me/"))


def test_shared_with_me_is_empty_after_revocation(
    mother: Any, child: Any, clinic: Any, clinician: Any
) -> None:
    consent = grant_clinic(mother, child, clinic)
    consent_revoke(consent=consent, by=mother)
    html = text(client_for(clinician).get("/sharing/with-me/"))
    assert "はる" not in html
    assert client_for(clinician).get(reverse("phr:person", args=[child.pk])).status_code == 404


def test_shared_with_me_lists_a_person_consent(
    mother: Any, mother_patient: Any, father: Any, stranger: Any
) -> None:
    consent_grant(
        patient=mother_patient,
        by=mother,
        purpose=ConsentPurpose.CARE,
        categories=[Category.VITALS],
        grantee_user=father,
    )
    html = text(client_for(father).get("/sharing/with-me/"))
    assert reverse("phr:person", args=[mother_patient.pk]) in html
    assert "バイタル" in html or "体調" in html or "vitals" in html.lower()
    assert "花子" not in text(client_for(stranger).get("/sharing/with-me/"))


def test_dates_are_japanese_calendar_days(mother: Any, child: Any, clinic: Any) -> None:
    # 15:30 UTC on 31 May is already 1 June in Japan.
    start = datetime(2030, 5, 31, 15, 30, tzinfo=ZoneInfo("UTC"))
    grant_clinic(mother, child, clinic, starts_at=start, ends_at=start + timedelta(days=400))
    html = text(client_for(mother).get(INDEX))
    assert "2030年6月1日" in html


def test_users_get_a_sharing_link_in_the_header(mother: Any) -> None:
    html = text(client_for(mother).get("/"))
    assert 'href="/sharing/"' in html
