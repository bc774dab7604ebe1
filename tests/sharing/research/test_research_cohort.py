"""sharing.access.research_cohort: who may be in an anonymized release, and
with which categories (issue 8, part 2; docs/decisions/0023-research-consent.md).

Personas: the mother (pregnant, resident of `municipality`), her child
(born 2025-09-01, the father is a second guardian), a family of another
municipality, and opt-out municipalities with and without a published
notice."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from django.utils import timezone

from phr import identity
from phr.models import Patient, Residency
from phr.terminology import Category
from sharing.access import research_cohort
from sharing.models import ResearchChoice, ResearchRegime
from tests import factories
from tests.sharing.research.consent_people import (
    child_of,
    choose,
    delete_record,
    mother_in,
    regime,
    write_pregnancy,
)

pytestmark = pytest.mark.django_db

CONSENT = ResearchChoice.Choice.CONSENT
REFUSE = ResearchChoice.Choice.REFUSE
ALL = [c.value for c in Category]
TODAY = date(2026, 11, 26)


def cohort(municipalities: list[Any], **kwargs: Any) -> dict[Any, frozenset[str]]:
    args: dict[str, Any] = {
        "categories": ALL,
        "cohort_kind": "both",
        "birth_year_from": 2020,
        "birth_year_to": 2026,
    }
    args.update(kwargs)
    return research_cohort(municipality_ids=[m.pk for m in municipalities], **args)


@pytest.fixture
def family(municipality: Any) -> tuple[Patient, Patient]:
    mother = mother_in(municipality)
    return mother, child_of(mother, municipality)


def test_opt_in_never_consented_is_absent(family: Any, municipality: Any) -> None:
    assert cohort([municipality]) == {}
    # an explicit opt-in regime is the same as none
    regime(municipality, ResearchRegime.Kind.OPT_IN, published_on=TODAY - timedelta(days=30))
    assert cohort([municipality]) == {}


def test_consent_per_category(family: Any, municipality: Any) -> None:
    mother, child = family
    choose(mother, Category.PREGNANCY, CONSENT, by=mother.account)
    choose(mother, Category.PRENATAL_CHECKUPS, CONSENT, by=mother.account)
    choose(child, Category.VACCINATIONS, CONSENT, by=mother.account)
    found = cohort([municipality])
    assert found == {
        mother.pk: frozenset({Category.PREGNANCY, Category.PRENATAL_CHECKUPS}),
        child.pk: frozenset({Category.VACCINATIONS}),
    }
    # only the categories asked about
    found = cohort([municipality], categories=[Category.VACCINATIONS, Category.VITALS])
    assert found == {child.pk: frozenset({Category.VACCINATIONS})}


def test_withdrawal_excludes_and_the_newest_choice_wins(family: Any, municipality: Any) -> None:
    mother, child = family
    start = timezone.now() - timedelta(days=10)
    for category in (Category.PREGNANCY, Category.VITALS):
        choose(mother, category, CONSENT, by=mother.account, at=start)
    choose(child, Category.INFANT_CHECKUPS, CONSENT, by=mother.account, at=start)
    # the mother withdraws vitals only; the child's consent is withdrawn entirely
    choose(mother, Category.VITALS, REFUSE, by=mother.account, at=start + timedelta(days=1))
    choose(child, Category.INFANT_CHECKUPS, REFUSE, by=mother.account, at=start + timedelta(days=2))
    found = cohort([municipality])
    assert found == {mother.pk: frozenset({Category.PREGNANCY})}
    assert child.pk not in found
    # consenting again later brings the category back
    choose(child, Category.INFANT_CHECKUPS, CONSENT, by=mother.account)
    assert cohort([municipality])[child.pk] == frozenset({Category.INFANT_CHECKUPS})


def test_at_ignores_choices_made_later(family: Any, municipality: Any) -> None:
    mother, _ = family
    now = timezone.now()
    choose(mother, Category.PREGNANCY, CONSENT, by=mother.account, at=now - timedelta(days=5))
    choose(mother, Category.PREGNANCY, REFUSE, by=mother.account, at=now - timedelta(days=1))
    assert cohort([municipality]) == {}
    before = cohort([municipality], at=now - timedelta(days=3))
    assert before == {mother.pk: frozenset({Category.PREGNANCY})}


def test_opt_out_includes_by_default_unless_refused(family: Any, municipality: Any) -> None:
    mother, child = family
    regime(municipality, ResearchRegime.Kind.OPT_OUT, published_on=timezone.localdate())
    found = cohort([municipality])
    assert found == {mother.pk: frozenset(ALL), child.pk: frozenset(ALL)}
    # refusing one category removes it; refusing all removes the person
    choose(mother, Category.VITALS, REFUSE, by=mother.account)
    for category in ALL:
        choose(child, category, REFUSE, by=mother.account)
    found = cohort([municipality])
    assert found == {mother.pk: frozenset(ALL) - {Category.VITALS}}


def test_opt_out_before_its_notice_is_published_includes_nobody(
    family: Any, municipality: Any
) -> None:
    mother, _ = family
    tomorrow = timezone.localdate() + timedelta(days=1)
    regime(municipality, ResearchRegime.Kind.OPT_OUT, published_on=tomorrow)
    assert cohort([municipality]) == {}
    regime(municipality, ResearchRegime.Kind.OPT_OUT, published_on=None)
    assert cohort([municipality]) == {}
    # an explicit consent still counts
    choose(mother, Category.PREGNANCY, CONSENT, by=mother.account)
    assert cohort([municipality]) == {mother.pk: frozenset({Category.PREGNANCY})}
    # and the notice applies from its day on
    regime(municipality, ResearchRegime.Kind.OPT_OUT, published_on=tomorrow)
    assert cohort([municipality], at=timezone.now() + timedelta(days=1))[mother.pk] == frozenset(
        ALL
    )


def test_residents_of_another_municipality_are_absent(family: Any, municipality: Any) -> None:
    other = factories.MunicipalityFactory()
    regime(other, ResearchRegime.Kind.OPT_OUT, published_on=date(2020, 1, 1))
    outsider = mother_in(other)
    outsider_child = child_of(outsider, other)
    choose(outsider, Category.PREGNANCY, CONSENT, by=outsider.account)
    mother, _ = family
    choose(mother, Category.PREGNANCY, CONSENT, by=mother.account)
    assert set(cohort([municipality])) == {mother.pk}
    # the other municipality's own release: its residents, by its regime
    assert set(cohort([other])) == {outsider.pk, outsider_child.pk}
    assert set(cohort([municipality, other])) == {mother.pk, outsider.pk, outsider_child.pk}


def test_a_family_that_moved_away_is_absent(family: Any, municipality: Any) -> None:
    mother, _ = family
    choose(mother, Category.PREGNANCY, CONSENT, by=mother.account)
    other = factories.MunicipalityFactory()
    today = timezone.localdate()
    Residency.objects.filter(patient=mother, municipality=municipality).update(
        valid_from=today - timedelta(days=400), valid_to=today - timedelta(days=1)
    )
    Residency.objects.create(patient=mother, municipality=other, valid_from=today)
    assert cohort([municipality]) == {}
    assert set(cohort([other])) == {mother.pk}
    # still registered in both: the newest residency is her municipality
    Residency.objects.filter(patient=mother, municipality=municipality).update(valid_to=None)
    assert cohort([municipality]) == {}
    assert set(cohort([other])) == {mother.pk}


def test_birth_year_and_kind_filters(family: Any, municipality: Any) -> None:
    mother, child = family  # the mother born 1992, the child 2025
    regime(municipality, ResearchRegime.Kind.OPT_OUT, published_on=date(2024, 4, 1))
    older = child_of(mother, municipality, birth=date(2021, 3, 3))
    assert set(cohort([municipality], cohort_kind="child")) == {child.pk, older.pk}
    assert set(cohort([municipality], cohort_kind="pregnancy")) == {mother.pk}
    assert set(cohort([municipality], cohort_kind="both")) == {mother.pk, child.pk, older.pk}
    only_2025 = cohort(
        [municipality], cohort_kind="child", birth_year_from=2025, birth_year_to=2025
    )
    assert set(only_2025) == {child.pk}
    only_2021 = cohort([municipality], birth_year_from=2021, birth_year_to=2024)
    assert set(only_2021) == {mother.pk, older.pk}
    assert set(cohort([municipality], cohort_kind="child", birth_year_from=2026)) == set()


def test_pregnancy_cohort_needs_a_pregnancy_episode(municipality: Any) -> None:
    regime(municipality, ResearchRegime.Kind.OPT_OUT, published_on=date(2024, 4, 1))
    mother = mother_in(municipality)
    never_pregnant = factories.make_patient(kind=Patient.Kind.ADULT, birth_date=date(1990, 1, 1))
    factories_residency(never_pregnant, municipality)
    assert set(cohort([municipality], cohort_kind="pregnancy")) == {mother.pk}
    # a deleted episode does not count
    episode = write_pregnancy(never_pregnant)
    assert set(cohort([municipality], cohort_kind="pregnancy")) == {mother.pk, never_pregnant.pk}
    delete_record("EpisodeOfCare", episode)
    assert set(cohort([municipality], cohort_kind="pregnancy")) == {mother.pk}


def test_merged_patients_are_absent(family: Any, municipality: Any) -> None:
    mother, child = family
    regime(municipality, ResearchRegime.Kind.OPT_OUT, published_on=date(2024, 4, 1))
    duplicate = child_of(mother, municipality, birth=date(2025, 9, 1))
    assert duplicate.pk in cohort([municipality])
    admin = factories.UserFactory(is_platform_admin=True)
    identity.patient_merge(survivor=child, merged=duplicate, by=admin, reason="same child")
    found = cohort([municipality])
    assert duplicate.pk not in found
    assert child.pk in found


def test_unknown_arguments_are_refused(municipality: Any) -> None:
    with pytest.raises(ValueError, match="cohort kind"):
        cohort([municipality], cohort_kind="everyone")
    with pytest.raises(ValueError, match="categories"):
        cohort([municipality], categories=["names"])
    assert cohort([]) == {}
    assert cohort([municipality], categories=[]) == {}


def test_one_query_whatever_the_number_of_patients(
    municipality: Any, django_assert_num_queries: Any
) -> None:
    regime(municipality, ResearchRegime.Kind.OPT_OUT, published_on=date(2024, 4, 1))
    mothers = [mother_in(municipality) for _ in range(8)]
    children = [child_of(m, municipality) for m in mothers]
    for m in mothers[:3]:
        choose(m, Category.VITALS, REFUSE, by=m.account)
    with django_assert_num_queries(1):
        found = cohort([municipality])
    assert set(found) == {p.pk for p in mothers + children}
    assert all(Category.VITALS not in found[m.pk] for m in mothers[:3])


def factories_residency(patient: Patient, municipality: Any) -> None:
    from phr.services import residency_add

    residency_add(patient=patient, municipality=municipality)
