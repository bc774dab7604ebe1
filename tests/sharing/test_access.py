"""The access rules of the foundation, persona by persona."""

from __future__ import annotations

from typing import Any

import pytest

from phr.models import AuditEvent, Provenance, Resource
from sharing.access import access_patient, audit_reveal, decide, visible_records
from tests import factories as f

pytestmark = pytest.mark.django_db


def visible_ids(user: Any) -> set[Any]:
    return set(Resource.objects.filter(visible_records(user)).values_list("id", flat=True))


def test_it_lets_the_mother_see_her_own_and_her_childs_records(
    mother: Any, mother_patient: Any, child: Any
) -> None:
    own = f.write_observation(mother_patient)
    childs = f.write_observation(child)
    assert {own, childs} <= visible_ids(mother)


def test_it_shows_the_father_the_child_but_not_the_mothers_own_records(
    father: Any, mother_patient: Any, child: Any
) -> None:
    # An adult's records are hers: the other guardian sees only the child.
    own = f.write_observation(mother_patient)
    childs = f.write_observation(child)
    seen = visible_ids(father)
    assert childs in seen
    assert own not in seen
    assert mother_patient.pk not in seen  # her Patient resource too
    assert not decide(father, mother_patient)


def test_it_hides_everything_from_a_stranger(stranger: Any, child: Any) -> None:
    f.write_observation(child)
    assert visible_ids(stranger) == set()
    assert not decide(stranger, child)


def test_it_shows_municipal_staff_their_residents_but_not_clinic_only_items(
    municipal_officer: Any, child: Any
) -> None:
    weight = f.write_observation(child)
    hiv = f.write_observation(
        child,
        system="https://hagukumi.jp/fhir/CodeSystem/item",
        code="hiv-antibody",
        value=0,
        unit="1",
    )
    seen = visible_ids(municipal_officer)
    assert weight in seen
    assert hiv not in seen


def test_it_hides_residents_from_another_municipality(
    other_municipal_officer: Any, child: Any
) -> None:
    f.write_observation(child)
    assert visible_ids(other_municipal_officer) == set()
    assert not decide(other_municipal_officer, child)


def test_it_shows_municipal_staff_what_their_municipality_submitted_after_a_move(
    municipal_officer: Any, municipality: Any
) -> None:
    moved_away = f.make_patient()  # no current residency here
    submitted = f.write_observation(
        moved_away, organization=municipality, origin=Provenance.Origin.MUNICIPALITY
    )
    other = f.write_observation(moved_away)
    seen = visible_ids(municipal_officer)
    assert submitted in seen
    assert other not in seen


def test_it_shows_clinic_staff_only_what_their_clinic_submitted(
    clinician: Any, clinic: Any, child: Any
) -> None:
    ours = f.write_observation(child, organization=clinic, origin=Provenance.Origin.CLINIC)
    theirs = f.write_observation(child)
    seen = visible_ids(clinician)
    assert ours in seen
    assert theirs not in seen


def test_it_shows_staff_without_mfa_no_patient_data(staff_without_mfa: Any, child: Any) -> None:
    f.write_observation(child)
    assert visible_ids(staff_without_mfa) == set()
    decision = decide(staff_without_mfa, child)
    assert not decision
    assert decision.rule == "staff_without_mfa"


def test_it_raises_404_alike_for_missing_and_forbidden_patients(
    stranger: Any, child: Any
) -> None:
    import uuid

    from django.http import Http404

    with pytest.raises(Http404):
        access_patient(stranger, child.pk)
    with pytest.raises(Http404):
        access_patient(stranger, uuid.uuid4())
    with pytest.raises(Http404):
        access_patient(stranger, "not-a-uuid")


def test_it_writes_one_audit_row_per_patient_revealed(mother: Any, child: Any) -> None:
    second = f.make_patient(given="なつ")
    from phr.services import guardianship_add

    guardianship_add(guardian=mother, child=second, relationship="mother")
    before = AuditEvent.objects.count()
    audit_reveal(mother, [child.pk, second.pk, child.pk], categories=["vitals"])
    rows = list(AuditEvent.objects.order_by("-id")[:2])
    assert AuditEvent.objects.count() == before + 2
    assert {r.patient_id for r in rows} == {child.pk, second.pk}
    assert all(r.actor_id == mother.pk and r.purpose == "personal" for r in rows)
