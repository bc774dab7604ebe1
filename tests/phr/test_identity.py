"""Identity: match by identifier, merge reversibly, link a pregnancy to
its child, purge lawfully."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import PermissionDenied

from phr import services, store
from phr.identity import (
    PREGNANCY_CHILD_EXTENSION,
    patient_find_by_identifier,
    patient_merge,
    patient_purge,
    patient_unmerge,
    pregnancy_link_child,
)
from phr.models import AuditEvent, Patient, Provenance, Resource, ResourceHistory
from tests import factories as f

pytestmark = pytest.mark.django_db

SYSTEM = "urn:hagukumi:resident-number:102016"


def _patient_with_identifier(value: str, given: str = "はな") -> Patient:
    resource = services.patient_resource(
        family="前橋", given=given, identifiers=[{"system": SYSTEM, "value": value}]
    )
    prov = services.provenance_create(origin=Provenance.Origin.MUNICIPALITY)
    return services.patient_create(kind=Patient.Kind.CHILD, resource=resource, provenance=prov)


def test_it_matches_patients_by_identifier_never_by_name() -> None:
    hana = _patient_with_identifier("0001")
    _patient_with_identifier("0002", given="はな")  # same name, another person
    assert patient_find_by_identifier(system=SYSTEM, value="0001") == hana
    assert patient_find_by_identifier(system=SYSTEM, value="9999") is None


def test_it_merges_two_records_of_one_person_and_can_undo_it() -> None:
    admin = f.UserFactory(is_platform_admin=True)
    municipal = _patient_with_identifier("0003")
    parent_added = f.make_patient(given="はる")
    moved = f.write_observation(parent_added)
    link = patient_merge(survivor=municipal, merged=parent_added, by=admin, reason="same child")

    row = Resource.objects.get(pk=moved)
    assert row.compartments == [municipal.pk]
    assert row.version == 2
    assert Resource.objects.get(pk=parent_added.pk).content["link"][0]["type"] == "replaced-by"
    assert patient_find_by_identifier(system=SYSTEM, value="0003") == municipal
    assert AuditEvent.objects.filter(action="patient.merge", patient_id=municipal.pk).exists()

    patient_unmerge(link=link, by=admin)
    row.refresh_from_db()
    assert row.compartments == [parent_added.pk]
    assert row.version == 3
    assert "link" not in Resource.objects.get(pk=municipal.pk).content
    parent_added.refresh_from_db()
    assert parent_added.merged_into is None


def test_it_links_a_pregnancy_to_the_child_born_of_it(mother_patient: Any, child: Any) -> None:
    prov = services.provenance_create(origin=Provenance.Origin.CLINIC)
    episode = {
        "resourceType": "EpisodeOfCare",
        "status": "finished",
        "patient": {"reference": f"Patient/{mother_patient.pk}"},
    }
    episode_id, _, _ = store.record_write(episode, provenance=prov)
    pregnancy_link_child(episode_id=episode_id, child=child, provenance=prov)
    _, version, changed = pregnancy_link_child(episode_id=episode_id, child=child, provenance=prov)
    assert (version, changed) == (2, False)  # linking twice changes nothing
    extensions = Resource.objects.get(pk=episode_id).content["extension"]
    assert extensions == [
        {"url": PREGNANCY_CHILD_EXTENSION, "valueReference": {"reference": f"Patient/{child.pk}"}}
    ]


def test_it_purges_a_patients_records_and_history_and_audits_it(child: Any) -> None:
    admin = f.UserFactory(is_platform_admin=True)
    other = f.make_patient(given="あお")
    f.write_observation(child, source_value="a")
    f.write_observation(child, source_value="a", value=9.9)  # a second version
    kept = f.write_observation(other)
    child_id = child.pk
    removed = patient_purge(patient=child, by=admin, reason="APPI 35条 request")
    assert removed == 2  # the Patient resource and the observation
    assert not Resource.objects.filter(compartments__overlap=[child_id]).exists()
    assert not ResourceHistory.objects.filter(resource_id=child_id).exists()
    assert Resource.objects.filter(pk=kept).exists()
    assert AuditEvent.objects.filter(action="patient.purge", patient_id=child_id).exists()


def test_it_lets_only_platform_admins_purge(mother: Any, child: Any) -> None:
    with pytest.raises(PermissionDenied):
        patient_purge(patient=child, by=mother, reason="no")
