"""The family's pages: who sees which person, what the timeline shows, and
the protections every page carries (audit, idle timeout, headers)."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from phr import selectors, services, store
from phr.models import AuditEvent, Provenance, User
from tests import factories as f

pytestmark = pytest.mark.django_db

LOINC = "http://loinc.org"


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def person_url(patient: Any) -> str:
    return reverse("phr:person", args=[patient.pk])


def write(resource: dict[str, Any], *, origin: str, organization: Any = None) -> uuid.UUID:
    provenance = services.provenance_create(origin=origin, organization=organization)
    rid, _, _ = store.record_write(resource, provenance=provenance)
    return rid


def immunization(patient: Any, *, when: str = "2025-11-01", dose: int = 1) -> dict[str, Any]:
    return {
        "resourceType": "Immunization",
        "status": "completed",
        "vaccineCode": {"text": "ヒブ", "coding": [{"system": "urn:test:vaccine", "code": "hib"}]},
        "patient": {"reference": f"Patient/{patient.pk}"},
        "occurrenceDateTime": when,
        "protocolApplied": [{"doseNumberPositiveInt": dose}],
    }


def pregnancy(patient: Any) -> dict[str, Any]:
    return {
        "resourceType": "EpisodeOfCare",
        "status": "active",
        "patient": {"reference": f"Patient/{patient.pk}"},
        "period": {"start": "2025-10-01"},
    }


def due_date(patient: Any, when: str = "2026-05-10") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "11778-8"}]},
        "subject": {"reference": f"Patient/{patient.pk}"},
        "effectiveDateTime": "2025-10-20",
        "valueDateTime": when,
    }


@pytest.fixture
def childs_records(child: Any, municipality: Any, clinic: Any) -> dict[str, uuid.UUID]:
    """A checkup weight from the municipality, a vaccination from a clinic
    and a temperature the family measured."""
    return {
        "weight": f.write_observation(
            child,
            origin=Provenance.Origin.MUNICIPALITY,
            organization=municipality,
            value=8.2,
            when="2026-01-15",
            category="infant_checkups",
        ),
        "vaccination": write(
            immunization(child), origin=Provenance.Origin.CLINIC, organization=clinic
        ),
        "temperature": f.write_observation(
            child, code="8310-5", value=37.2, unit="Cel", when="2026-02-03T08:30:00+09:00"
        ),
    }


# --------------------------------------------------------------------------
# Home: わたしの家族
# --------------------------------------------------------------------------


def test_it_sends_anonymous_visitors_to_the_login_page(client: Client) -> None:
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))


def test_it_shows_the_mother_her_family_with_her_pregnancy_and_due_date(
    mother: Any, mother_patient: Any, child: Any
) -> None:
    write(pregnancy(mother_patient), origin=Provenance.Origin.CLINIC)
    write(due_date(mother_patient), origin=Provenance.Origin.CLINIC)

    response = client_for(mother).get("/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "わたしの家族" in html
    assert "前橋 花子" in html
    assert "前橋 はる" in html
    assert person_url(mother_patient) in html
    assert person_url(child) in html
    assert "出産予定日" in html
    assert "2026年5月10日" in html


def test_it_reads_a_due_date_carried_on_the_pregnancy_itself(
    mother: Any, mother_patient: Any
) -> None:
    episode = pregnancy(mother_patient)
    episode["extension"] = [
        {"url": "https://hagukumi.jp/fhir/StructureDefinition/due-date", "valueDate": "2026-06-01"}
    ]
    write(episode, origin=Provenance.Origin.CLINIC)

    summary = selectors.pregnancy_summary(user=mother, patient=mother_patient)

    assert summary is not None
    assert summary.due_date is not None
    assert summary.due_date.isoformat() == "2026-06-01"


def test_it_shows_no_pregnancy_once_it_has_ended(mother: Any, mother_patient: Any) -> None:
    episode = pregnancy(mother_patient)
    episode["status"] = "finished"
    write(episode, origin=Provenance.Origin.CLINIC)
    assert selectors.pregnancy_summary(user=mother, patient=mother_patient) is None


def test_it_shows_the_father_only_the_child(father: Any, mother_patient: Any, child: Any) -> None:
    response = client_for(father).get("/")
    html = response.content.decode()
    assert response.status_code == 200
    assert person_url(child) in html
    # The mother's own records (even her name) are hers.
    assert person_url(mother_patient) not in html
    assert "前橋 花子" not in html


def test_it_audits_each_person_the_family_page_shows(
    mother: Any, mother_patient: Any, child: Any
) -> None:
    client_for(mother).get("/")
    shown = set(
        AuditEvent.objects.filter(actor=mother, action="view.family").values_list(
            "patient_id", flat=True
        )
    )
    assert shown == {mother_patient.pk, child.pk}


def test_it_shows_staff_without_a_family_that_their_portal_comes_later(
    clinician: Any,
) -> None:
    response = client_for(clinician).get("/")
    assert response.status_code == 200
    assert "ポータル" in response.content.decode()


# --------------------------------------------------------------------------
# Person page: the timeline
# --------------------------------------------------------------------------


@pytest.mark.parametrize("viewer", ["mother", "father"])
def test_it_shows_a_guardian_the_childs_timeline_with_source_badges(
    request: pytest.FixtureRequest, viewer: str, child: Any, childs_records: Any
) -> None:
    user = request.getfixturevalue(viewer)

    response = client_for(user).get(person_url(child))

    assert response.status_code == 200
    html = response.content.decode()
    assert "前橋 はる" in html
    assert "体重" in html
    assert "8.2 kg" in html
    assert "ヒブ" in html
    assert "1回目" in html
    assert "体温" in html
    assert "37.2 ℃" in html
    assert 'class="badge badge-municipality"' in html
    assert "市区町村" in html
    assert 'class="badge badge-clinic"' in html
    assert "医療機関" in html
    assert 'class="badge badge-self"' in html
    assert "本人・家族" in html
    # Newest first: February's temperature before January's weight.
    assert html.index("2026年2月3日") < html.index("2026年1月15日") < html.index("2025年11月1日")


def test_it_lets_the_mother_see_her_own_timeline(mother: Any, mother_patient: Any) -> None:
    write(pregnancy(mother_patient), origin=Provenance.Origin.CLINIC)
    response = client_for(mother).get(person_url(mother_patient))
    assert response.status_code == 200
    assert "妊娠" in response.content.decode()


def test_it_gives_the_father_a_404_on_the_mothers_own_page(
    father: Any, mother_patient: Any
) -> None:
    # An adult's records are hers: the child's other guardian sees nothing.
    f.write_observation(mother_patient)
    assert client_for(father).get(person_url(mother_patient)).status_code == 404


def _comparable(html: str) -> str:
    """A page without its per-request CSRF tokens and without the address
    asked for (the language switch returns to it), for comparing pages."""
    html = re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "", html)
    html = re.sub(r'"X-CSRFToken": "[^"]+"', "", html)
    return re.sub(r"/people/[0-9a-f-]+/", "/people/…/", html)


def test_it_gives_a_stranger_the_same_404_as_for_a_patient_that_does_not_exist(
    stranger: Any, mother_patient: Any, child: Any, childs_records: Any
) -> None:
    client = client_for(stranger)
    missing = client.get(reverse("phr:person", args=[uuid.uuid4()]))
    assert missing.status_code == 404
    for patient in (mother_patient, child):
        response = client.get(person_url(patient))
        assert response.status_code == 404
        # Nothing tells "not yours" from "does not exist".
        assert _comparable(response.content.decode()) == _comparable(missing.content.decode())


def test_it_writes_one_audit_row_for_the_person_viewed(
    mother: Any, child: Any, childs_records: Any
) -> None:
    client_for(mother).get(person_url(child))
    rows = AuditEvent.objects.filter(action="view.timeline")
    assert rows.count() == 1
    row = rows.get()
    assert row.patient_id == child.pk
    assert row.actor_id == mother.pk
    assert row.outcome == "success"


def test_it_groups_instants_by_their_day_in_japan(mother: Any, child: Any) -> None:
    # 16:30 UTC on the 14th is 01:30 on the 15th in Japan; a date-only value
    # is a Japanese calendar day already.
    f.write_observation(child, value=8.0, when="2026-01-14T16:30:00Z")
    f.write_observation(child, code="8302-2", value=72, unit="cm", when="2026-01-15")

    page = selectors.timeline(user=mother, patient=child)

    assert [day.day.isoformat() for day in page.days if day.day] == ["2026-01-15"]
    assert {entry.time for entry in page.days[0].entries} == {"01:30", ""}


def test_it_pages_the_timeline_with_a_more_link_that_htmx_follows(
    mother: Any, child: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(selectors, "TIMELINE_PAGE_SIZE", 2)
    for day in ("2026-01-01", "2026-01-02", "2026-01-03"):
        f.write_observation(child, when=day)
    client = client_for(mother)

    first = client.get(person_url(child)).content.decode()
    assert "2026年1月3日" in first
    assert "2026年1月2日" in first
    assert "2026年1月1日" not in first
    assert 'hx-get="?offset=2"' in first

    more = client.get(person_url(child) + "?offset=2", headers={"HX-Request": "true"})
    fragment = more.content.decode()
    assert "2026年1月1日" in fragment
    assert "<html" not in fragment  # only the next entries, for htmx to swap in
    assert "offset=" not in fragment  # nothing older


def test_it_shows_a_clear_label_for_records_without_a_known_code(mother: Any, child: Any) -> None:
    write(
        {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": f"Patient/{child.pk}"},
            "period": {"start": "2026-01-20"},
        },
        origin=Provenance.Origin.MUNICIPALITY,
    )
    html = client_for(mother).get(person_url(child)).content.decode()
    assert "健診・受診" in html


# --------------------------------------------------------------------------
# Protections on every page
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("minutes", "logged_out"), [(31, True), (29, False)])
def test_it_logs_a_parent_out_after_30_idle_minutes(
    mother: Any, mother_patient: Any, minutes: int, logged_out: bool
) -> None:
    start = timezone.now()
    with time_machine.travel(start, tick=False) as clock:
        client = client_for(mother)
        assert client.get("/").status_code == 200
        clock.shift(timedelta(minutes=minutes))
        response = client.get("/")
    if logged_out:
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("account_login"))
        assert "_auth_user_id" not in client.session
    else:
        assert response.status_code == 200


def test_it_logs_staff_out_after_15_idle_minutes(clinician: Any) -> None:
    start = timezone.now()
    with time_machine.travel(start, tick=False) as clock:
        client = client_for(clinician)
        assert client.get("/").status_code == 200
        clock.shift(timedelta(minutes=16))
        response = client.get("/")
    assert response.status_code == 302
    assert "_auth_user_id" not in client.session


def test_it_sends_security_headers_on_pages(mother: Any, mother_patient: Any) -> None:
    response = client_for(mother).get("/")
    csp = response["Content-Security-Policy"]
    assert "default-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert response["X-Frame-Options"] == "DENY"
    assert response["Cache-Control"] == "no-store"


def test_it_uses_no_inline_scripts_or_styles_on_its_pages(
    mother: Any, child: Any, childs_records: Any
) -> None:
    # The CSP forbids them: a page that used one would break in the browser.
    for url in ("/", person_url(child), reverse("account_login")):
        html = client_for(mother).get(url).content.decode()
        assert " style=" not in html
        assert "<style" not in html
        for script in re.findall(r"<script[^>]*>", html):
            assert "src=" in script or 'type="application/json"' in script


def test_it_asks_htmx_to_navigate_to_login_when_an_idle_session_ends(
    mother: Any, mother_patient: Any
) -> None:
    # A 302 would make htmx swap the login page into a fragment.
    start = timezone.now()
    with time_machine.travel(start, tick=False) as clock:
        client = client_for(mother)
        assert client.get("/").status_code == 200
        clock.shift(timedelta(minutes=31))
        response = client.get("/", HTTP_HX_REQUEST="true")
    assert response.status_code == 204
    assert response["HX-Redirect"].startswith(reverse("account_login"))


def test_the_staff_mfa_redirect_runs_after_the_idle_timeout(settings: Any) -> None:
    middleware = list(settings.MIDDLEWARE)
    assert middleware.index("phr.middleware.StaffMfaSetupMiddleware") > middleware.index(
        "phr.middleware.IdleTimeoutMiddleware"
    )


def test_it_sends_staff_without_mfa_to_set_up_an_authenticator(
    staff_without_mfa: Any,
) -> None:
    client = client_for(staff_without_mfa)
    for url in ("/", reverse("phr:person", args=[uuid.uuid4()])):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"] == reverse("mfa_activate_totp")
    # htmx is told to load the set-up page rather than swap it into a fragment.
    response = client.get("/", headers={"HX-Request": "true"})
    assert response["HX-Redirect"] == reverse("mfa_activate_totp")
    # Account pages, static files and the language switch stay reachable.
    assert client.get(reverse("account_logout")).status_code == 200
    assert client.post("/i18n/setlang/", {"language": "en", "next": "/"}).status_code == 302


def test_it_lets_staff_with_mfa_and_parents_through(clinician: Any, mother: Any) -> None:
    assert client_for(clinician).get("/").status_code == 200
    assert client_for(mother).get("/").status_code == 200


def test_it_renders_the_demo_familys_pages_for_the_demo_parent() -> None:
    # The demo data (manage.py seed_demo) is what newcomers see first.
    from django.core.management import call_command

    from phr.demo import PARENT_EMAIL

    call_command("seed_demo", verbosity=0)
    parent = User.objects.get(email=PARENT_EMAIL)
    client = client_for(parent)
    family = selectors.family(user=parent)
    assert family.me is not None
    assert family.pregnancy is not None
    assert family.pregnancy.due_date is not None
    assert len(family.children) == 1

    mother_page = client.get(reverse("phr:person", args=[family.me.patient_id])).content.decode()
    assert "妊婦健康診査" in mother_page
    assert "mmHg" in mother_page  # a blood pressure panel, as "120/70 mmHg"
    assert 'class="badge badge-clinic"' in mother_page
    due = family.pregnancy.due_date
    assert "分娩予定日</span>" in mother_page
    assert f"{due.year}年{due.month}月{due.day}日" in mother_page  # a date, not ISO text

    child_page = client.get(reverse("phr:person", args=[family.children[0].patient_id]))
    html = child_page.content.decode()
    assert "健診" in html
    assert "回目" in html  # vaccination doses
