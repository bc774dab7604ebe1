"""Research consent (issue 8, part 2): the family's choices per person and
kind of record, withdrawal, the municipality's regime, the page at
/sharing/research/ and its summary on the Sharing page, and the audit.

Personas: the mother (adult, herself) with her child; the father, a second
guardian of the child; a stranger; a family of another municipality."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.core.cache import cache
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpResponse
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from phr.models import AuditEvent, Guardianship, Patient
from phr.terminology import Category
from sharing import research_consent
from sharing.access import research_cohort
from sharing.models import ResearchChoice, ResearchRegime
from sharing.research_consent import Reason
from sharing.services import dv_block_set
from tests import factories
from tests.sharing.research.consent_people import child_of, mother_in, regime, write_pregnancy

pytestmark = pytest.mark.django_db

INDEX = "/sharing/research/"
CONSENT = ResearchChoice.Choice.CONSENT
REFUSE = ResearchChoice.Choice.REFUSE
ALL = list(Category.values)


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


def client_for(user: Any, **kwargs: Any) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


def text(response: HttpResponse) -> str:
    return response.content.decode()


def states_of(patient: Patient) -> dict[str, research_consent.CategoryState]:
    return {s.category: s for s in research_consent.effective_states([patient])[patient.pk]}


def cohort_of(municipality: Any, **kwargs: Any) -> dict[Any, frozenset[str]]:
    return research_cohort(
        municipality_ids=[municipality.pk],
        categories=kwargs.pop("categories", ALL),
        cohort_kind=kwargs.pop("cohort_kind", "both"),
        birth_year_from=2000,
        birth_year_to=2030,
        **kwargs,
    )


@pytest.fixture
def pregnant(mother_patient: Patient) -> Patient:
    write_pregnancy(mother_patient)
    return mother_patient


# --------------------------------------------------------------------------
# Services
# --------------------------------------------------------------------------


def test_choices_per_category_for_herself_and_her_child(
    mother: Any, pregnant: Patient, child: Patient, municipality: Any
) -> None:
    research_consent.set_choices(
        user=mother,
        patient=pregnant,
        categories=[Category.PREGNANCY, Category.PRENATAL_CHECKUPS],
        choice=CONSENT,
    )
    research_consent.set_choice(
        user=mother, patient=child, category=Category.VACCINATIONS, choice=CONSENT
    )
    mine = states_of(pregnant)
    assert mine[Category.PREGNANCY].included
    assert mine[Category.PREGNANCY].reason == Reason.CHOICE
    assert mine[Category.PRENATAL_CHECKUPS].included
    assert not mine[Category.VITALS].included
    assert mine[Category.VITALS].reason == Reason.DEFAULT_OPT_IN
    childs = states_of(child)
    assert childs[Category.VACCINATIONS].included
    assert not childs[Category.INFANT_CHECKUPS].included
    # a child's page shows a child's kinds of record, an adult's an adult's
    assert Category.PREGNANCY not in childs
    assert Category.INFANT_CHECKUPS in childs
    assert Category.INFANT_CHECKUPS not in mine
    assert Category.PRENATAL_CHECKUPS in mine
    assert cohort_of(municipality) == {
        pregnant.pk: frozenset({Category.PREGNANCY, Category.PRENATAL_CHECKUPS}),
        child.pk: frozenset({Category.VACCINATIONS}),
    }


def test_the_father_decides_for_the_child_not_for_the_mother(
    father: Any, mother_patient: Patient, child: Patient
) -> None:
    research_consent.set_choice(
        user=father, patient=child, category=Category.INFANT_CHECKUPS, choice=CONSENT
    )
    assert states_of(child)[Category.INFANT_CHECKUPS].included
    assert ResearchChoice.objects.get(patient=child).decided_by == father
    with pytest.raises(PermissionDenied):
        research_consent.set_choice(
            user=father, patient=mother_patient, category=Category.PREGNANCY, choice=CONSENT
        )
    assert not ResearchChoice.objects.filter(patient=mother_patient).exists()


def test_a_stranger_cannot_choose(stranger: Any, mother_patient: Patient, child: Patient) -> None:
    for patient in (mother_patient, child):
        with pytest.raises(PermissionDenied):
            research_consent.set_choices(
                user=stranger, patient=patient, categories=[Category.VITALS], choice=CONSENT
            )
        with pytest.raises(PermissionDenied):
            research_consent.withdraw(user=stranger, patient=patient)
    assert not ResearchChoice.objects.exists()


def test_an_ended_guardianship_or_a_dv_block_ends_the_right_to_choose(
    mother: Any, father: Any, child: Patient, municipal_officer: Any
) -> None:
    dv_block_set(patient=child, blocked_user=father, by=municipal_officer)
    with pytest.raises(PermissionDenied):
        research_consent.set_choice(
            user=father, patient=child, category=Category.VITALS, choice=CONSENT
        )
    Guardianship.objects.filter(guardian=mother, child=child).update(
        valid_from=timezone.localdate() - timedelta(days=30),
        valid_to=timezone.localdate() - timedelta(days=1),
    )
    with pytest.raises(PermissionDenied):
        research_consent.set_choice(
            user=mother, patient=child, category=Category.VITALS, choice=CONSENT
        )


def test_withdrawal_excludes_from_later_exports_and_keeps_the_history(
    mother: Any, pregnant: Patient, child: Patient, municipality: Any
) -> None:
    research_consent.set_choices(user=mother, patient=pregnant, categories=ALL, choice=CONSENT)
    research_consent.set_choices(
        user=mother, patient=child, categories=[Category.VACCINATIONS], choice=CONSENT
    )
    assert set(cohort_of(municipality)) == {pregnant.pk, child.pk}
    # one kind of record
    research_consent.withdraw(user=mother, patient=pregnant, categories=[Category.VITALS])
    assert cohort_of(municipality)[pregnant.pk] == frozenset(ALL) - {Category.VITALS}
    # everything
    research_consent.withdraw(user=mother, patient=child)
    research_consent.withdraw(user=mother, patient=pregnant)
    assert cohort_of(municipality) == {}
    assert not any(s.included for s in states_of(child).values())
    assert {s.reason for s in states_of(child).values()} == {Reason.CHOICE}
    history = research_consent.history(pregnant)
    assert [h.choice for h in history if h.category == Category.VITALS] == [REFUSE, CONSENT]


def test_never_consented_under_opt_in_is_absent(
    mother: Any, pregnant: Patient, child: Patient, municipality: Any
) -> None:
    assert cohort_of(municipality) == {}
    assert all(
        not s.included and s.reason == Reason.DEFAULT_OPT_IN for s in states_of(child).values()
    )


def test_opt_out_includes_until_refused_once_the_notice_is_published(
    mother: Any, pregnant: Patient, child: Patient, municipality: Any
) -> None:
    today = timezone.localdate()
    regime(municipality, ResearchRegime.Kind.OPT_OUT, published_on=today + timedelta(days=3))
    assert cohort_of(municipality) == {}
    assert states_of(child)[Category.VITALS].reason == Reason.DEFAULT_OPT_IN
    regime(municipality, ResearchRegime.Kind.OPT_OUT, published_on=today)
    assert cohort_of(municipality) == {pregnant.pk: frozenset(ALL), child.pk: frozenset(ALL)}
    state = states_of(child)[Category.VITALS]
    assert state.included
    assert state.reason == Reason.OPT_OUT_NOTICE
    research_consent.set_choice(user=mother, patient=child, category=Category.VITALS, choice=REFUSE)
    assert cohort_of(municipality)[child.pk] == frozenset(ALL) - {Category.VITALS}
    research_consent.withdraw(user=mother, patient=child)
    assert set(cohort_of(municipality)) == {pregnant.pk}


def test_another_municipality_family_is_absent(
    mother: Any, pregnant: Patient, municipality: Any
) -> None:
    other = factories.MunicipalityFactory()
    outsider = mother_in(other)
    outsider_child = child_of(outsider, other)
    research_consent.set_choices(
        user=outsider.account, patient=outsider, categories=ALL, choice=CONSENT
    )
    research_consent.set_choices(
        user=outsider.account, patient=outsider_child, categories=ALL, choice=CONSENT
    )
    research_consent.set_choices(user=mother, patient=pregnant, categories=ALL, choice=CONSENT)
    assert set(cohort_of(municipality)) == {pregnant.pk}
    assert set(cohort_of(other)) == {outsider.pk, outsider_child.pk}
    # and the mother of one municipality decides nothing for the other's child
    with pytest.raises(PermissionDenied):
        research_consent.set_choice(
            user=mother, patient=outsider_child, category=Category.VITALS, choice=CONSENT
        )


def test_each_change_is_audited_and_an_unchanged_choice_writes_nothing(
    mother: Any, father: Any, mother_patient: Patient, child: Patient
) -> None:
    research_consent.set_choices(
        user=mother,
        patient=child,
        categories=[Category.VACCINATIONS, Category.VITALS],
        choice=CONSENT,
    )
    # the same again, plus one new kind: only the new one is written
    rows = research_consent.set_choices(
        user=father,
        patient=child,
        categories=[Category.VACCINATIONS, Category.INFANT_CHECKUPS],
        choice=CONSENT,
    )
    assert [r.category for r in rows] == [Category.INFANT_CHECKUPS]
    assert (
        research_consent.set_choice(
            user=father, patient=child, category=Category.VITALS, choice=CONSENT
        )
        is None
    )
    research_consent.withdraw(user=father, patient=child, categories=[Category.VITALS])
    mine = AuditEvent.objects.filter(action=research_consent.AUDIT_ACTION, patient_id=child.pk)
    events = list(mine.order_by("id"))
    assert [(e.actor_id, sorted(e.categories), e.detail["choice"]) for e in events] == [
        (mother.pk, sorted([Category.VACCINATIONS, Category.VITALS]), CONSENT),
        (father.pk, [Category.INFANT_CHECKUPS], CONSENT),
        (father.pk, [Category.VITALS], REFUSE),
    ]
    assert {e.patient_id for e in events} == {child.pk}
    assert {e.purpose for e in events} == {"research"}
    assert ResearchChoice.objects.filter(patient=child).count() == 4


def test_bad_input_is_refused_with_the_reason(mother: Any, child: Patient) -> None:
    with pytest.raises(ValidationError) as empty:
        research_consent.set_choices(user=mother, patient=child, categories=[], choice=CONSENT)
    assert "記録の種類を1つ以上選んでください" in str(empty.value)
    assert "Choose at least one kind of record" in str(empty.value)
    with pytest.raises(ValidationError) as unknown:
        research_consent.set_choices(
            user=mother, patient=child, categories=["names"], choice=CONSENT
        )
    assert "names" in str(unknown.value)
    with pytest.raises(ValidationError) as choice:
        research_consent.set_choices(
            user=mother, patient=child, categories=[Category.VITALS], choice="maybe"
        )
    assert "maybe" in str(choice.value)
    assert not ResearchChoice.objects.exists()


# --------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------


def test_the_page_in_japanese(
    mother: Any, mother_patient: Patient, child: Patient, municipality: Any
) -> None:
    research_consent.set_choice(
        user=mother, patient=child, category=Category.VACCINATIONS, choice=CONSENT
    )
    response = client_for(mother).get(INDEX, HTTP_ACCEPT_LANGUAGE="ja")
    assert response.status_code == 200
    body = text(response)
    assert "研究への協力" in body
    assert "前橋 花子" in body
    assert "前橋 はる" in body
    assert f'id="research-{mother_patient.pk}"' in body
    assert f'id="research-{child.pk}"' in body
    assert "オプトイン" in body  # the municipality's regime, explained
    assert "匿名" in body
    assert "すべての研究への協力をやめる" in body
    assert "すでに提供されたデータは取り消せません" in body
    assert "参加している" in body  # the child's vaccinations
    assert "csrfmiddlewaretoken" in body
    # one audit row per person shown
    viewed = AuditEvent.objects.filter(action="view.research_consent", actor_id=mother.pk)
    assert {e.patient_id for e in viewed} == {mother_patient.pk, child.pk}


def test_the_page_in_english(mother: Any, mother_patient: Patient, child: Patient) -> None:
    body = text(client_for(mother).get(INDEX, HTTP_ACCEPT_LANGUAGE="en"))
    assert "Research participation" in body
    assert "opt-in" in body
    assert "Withdraw from all research" in body
    assert "研究への協力" not in body


def test_the_page_explains_an_opt_out_notice(
    mother: Any, mother_patient: Patient, municipality: Any
) -> None:
    regime(
        municipality,
        ResearchRegime.Kind.OPT_OUT,
        published_on=timezone.localdate() - timedelta(days=10),
        url="https://city.example.jp/research-notice",
    )
    body = text(client_for(mother).get(INDEX, HTTP_ACCEPT_LANGUAGE="ja"))
    assert "オプトアウト" in body
    assert "https://city.example.jp/research-notice" in body
    assert "公表" in body
    assert "お住まいの自治体の公示（オプトアウト）" in body


def test_switches_consent_and_withdraw_through_the_page(
    mother: Any, mother_patient: Patient, child: Patient
) -> None:
    client = client_for(mother)
    response = client.post(
        reverse("research_consent:choose"),
        {
            "patient": str(child.pk),
            "categories": [Category.VACCINATIONS, Category.INFANT_CHECKUPS],
            "choice": CONSENT,
        },
    )
    assert response.status_code == 302
    assert response["Location"].endswith(f"#research-{child.pk}")
    assert states_of(child)[Category.INFANT_CHECKUPS].included
    assert states_of(child)[Category.VACCINATIONS].included
    # switch one off
    client.post(
        reverse("research_consent:choose"),
        {"patient": str(child.pk), "categories": Category.VACCINATIONS, "choice": REFUSE},
    )
    assert not states_of(child)[Category.VACCINATIONS].included
    # withdraw everything
    response = client.post(reverse("research_consent:withdraw"), {"patient": str(child.pk)})
    assert response.status_code == 302
    latest = research_consent.latest_choices([child.pk])
    assert {c for (_, c) in latest} == set(ALL)
    assert {row.choice for row in latest.values()} == {REFUSE}
    body = text(client.get(INDEX, HTTP_ACCEPT_LANGUAGE="ja"))
    assert "これまでの選択" in body  # the history


def test_a_form_without_a_kind_of_record_shows_the_error(mother: Any, child: Patient) -> None:
    response = client_for(mother).post(
        reverse("research_consent:choose"),
        {"patient": str(child.pk), "choice": CONSENT},
        HTTP_ACCEPT_LANGUAGE="ja",
    )
    assert response.status_code == 400
    assert "記録の種類を1つ以上選んでください" in text(response)
    assert not ResearchChoice.objects.exists()


def test_a_stranger_gets_404_and_sees_no_one(
    stranger: Any, mother_patient: Patient, child: Patient
) -> None:
    client = client_for(stranger)
    for patient in (mother_patient, child):
        response = client.post(
            reverse("research_consent:choose"),
            {"patient": str(patient.pk), "categories": Category.VITALS, "choice": CONSENT},
        )
        assert response.status_code == 404
        response = client.post(reverse("research_consent:withdraw"), {"patient": str(patient.pk)})
        assert response.status_code == 404
    assert not ResearchChoice.objects.exists()
    body = text(client.get(INDEX, HTTP_ACCEPT_LANGUAGE="ja"))
    assert str(child.pk) not in body
    assert "前橋" not in body


def test_the_father_gets_404_for_the_mother(
    father: Any, mother_patient: Patient, child: Patient
) -> None:
    client = client_for(father)
    response = client.post(
        reverse("research_consent:choose"),
        {"patient": str(mother_patient.pk), "categories": Category.VITALS, "choice": CONSENT},
    )
    assert response.status_code == 404
    response = client.post(
        reverse("research_consent:choose"),
        {"patient": str(child.pk), "categories": Category.VITALS, "choice": CONSENT},
    )
    assert response.status_code == 302
    body = text(client.get(INDEX, HTTP_ACCEPT_LANGUAGE="ja"))
    assert f'id="research-{child.pk}"' in body
    assert f'id="research-{mother_patient.pk}"' not in body


def test_posts_need_the_csrf_token(mother: Any, child: Patient) -> None:
    client = client_for(mother, enforce_csrf_checks=True)
    response = client.post(reverse("research_consent:withdraw"), {"patient": str(child.pk)})
    assert response.status_code == 403
    assert not ResearchChoice.objects.exists()


def test_anonymous_visitors_are_sent_to_log_in() -> None:
    response = Client().get(INDEX)
    assert response.status_code == 302
    assert "login" in response["Location"]


def test_the_sharing_page_summarizes_research_participation(
    mother: Any, mother_patient: Patient, child: Patient
) -> None:
    research_consent.set_choice(
        user=mother, patient=child, category=Category.VACCINATIONS, choice=CONSENT
    )
    body = text(client_for(mother).get("/sharing/", HTTP_ACCEPT_LANGUAGE="ja"))
    assert "研究への協力" in body
    assert f'href="{INDEX}#research-{child.pk}"' in body
    assert f'href="{INDEX}#research-{mother_patient.pk}"' in body
    assert "研究に協力していません" in body  # the mother chose nothing (opt-in)
    english = text(client_for(mother).get("/sharing/", HTTP_ACCEPT_LANGUAGE="en"))
    assert "Research participation" in english


# --------------------------------------------------------------------------
# The regime, set by a platform admin in the Django admin
# --------------------------------------------------------------------------


def test_a_platform_admin_sets_the_regime_and_it_is_audited(
    mother: Any, pregnant: Patient, municipality: Any, stranger: Any
) -> None:
    admin = factories.UserFactory(is_staff=True, is_superuser=True, is_platform_admin=True)
    factories.enable_totp(admin)
    published = timezone.localdate()
    response = client_for(admin).post(
        "/admin/sharing/researchregime/add/",
        {
            "municipality": municipality.pk,
            "kind": ResearchRegime.Kind.OPT_OUT,
            "notice_published_on": published.isoformat(),
            "notice_url": "https://city.example.jp/notice",
            "legal_basis": "行政機関等匿名加工情報",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    row = ResearchRegime.objects.get(municipality=municipality)
    assert row.kind == ResearchRegime.Kind.OPT_OUT
    assert row.notice_published_on == published
    event = AuditEvent.objects.get(action="research_regime.set")
    assert event.actor_id == admin.pk
    assert event.organization_id == municipality.pk
    assert event.detail["kind"] == ResearchRegime.Kind.OPT_OUT
    # the opt-out now applies to the municipality's residents
    assert set(cohort_of(municipality)) == {pregnant.pk}
    # a clinic is not a municipality: refused, nothing written
    clinic = factories.ClinicFactory()
    response = client_for(admin).post(
        "/admin/sharing/researchregime/add/",
        {"municipality": clinic.pk, "kind": ResearchRegime.Kind.OPT_OUT},
    )
    assert response.status_code == 200
    assert not ResearchRegime.objects.filter(municipality=clinic).exists()
    # a signed-in family member is not let in
    assert client_for(stranger).get("/admin/sharing/researchregime/").status_code == 302


def test_the_page_and_the_cohort_agree(
    mother: Any, pregnant: Patient, child: Patient, municipality: Any
) -> None:
    """What the family is told (effective_states) is what the cohort does,
    over random choices under each regime."""
    rng = random.Random(8)
    today = timezone.localdate()
    regimes = [
        None,
        (ResearchRegime.Kind.OPT_IN, today - timedelta(days=5)),
        (ResearchRegime.Kind.OPT_OUT, today - timedelta(days=5)),
        (ResearchRegime.Kind.OPT_OUT, today + timedelta(days=5)),
    ]
    for setting in regimes:
        if setting is None:
            ResearchRegime.objects.filter(municipality=municipality).delete()
        else:
            regime(municipality, setting[0], published_on=setting[1])
        for _ in range(3):
            for patient in (pregnant, child):
                kinds = rng.sample(ALL, rng.randrange(0, 4))
                if kinds:
                    research_consent.set_choices(
                        user=mother,
                        patient=patient,
                        categories=kinds,
                        choice=rng.choice([CONSENT, REFUSE]),
                    )
            cohort = cohort_of(municipality)
            for patient in (pregnant, child):
                states = research_consent.effective_states([patient])[patient.pk]
                told = {s.category for s in states if s.included}
                shown = {s.category for s in states}
                assert cohort.get(patient.pk, frozenset()) & shown == told, setting
