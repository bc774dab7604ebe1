"""Small builders for the research-consent tests (issue 8, part 2): a
pregnancy episode in the record store, a family's research choice and a
municipality's regime, written as the services and the store write them."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from django.utils import timezone

from phr import services, store
from phr.models import Guardianship, Patient, Provenance
from sharing.models import ResearchChoice, ResearchRegime
from tests import factories

EPISODE_TYPE_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/episode-type"
# residents since well before any choice a test makes
SINCE = date(2024, 1, 1)


def write_pregnancy(patient: Patient, *, start: str = "2025-01-10") -> uuid.UUID:
    """A pregnancy EpisodeOfCare of `patient`, as a clinic records it."""
    provenance = services.provenance_create(origin=Provenance.Origin.SYSTEM)
    resource = {
        "resourceType": "EpisodeOfCare",
        "status": "active",
        "type": [{"coding": [{"system": EPISODE_TYPE_SYSTEM, "code": "pregnancy"}]}],
        "patient": {"reference": f"Patient/{patient.pk}"},
        "period": {"start": start},
    }
    rid, _, _ = store.record_write(resource, provenance=provenance)
    return rid


def delete_record(resource_type: str, resource_id: uuid.UUID) -> None:
    provenance = services.provenance_create(origin=Provenance.Origin.SYSTEM)
    store.record_delete(resource_type=resource_type, resource_id=resource_id, provenance=provenance)


def mother_in(municipality: Any, *, birth: date = date(1992, 4, 1), **user: Any) -> Patient:
    """An adult with an account, resident of `municipality`, pregnant once."""
    account = factories.UserFactory(**user)
    patient = factories.make_patient(
        kind=Patient.Kind.ADULT, given="花子", birth_date=birth, account=account
    )
    services.residency_add(patient=patient, municipality=municipality, valid_from=SINCE)
    write_pregnancy(patient)
    return patient


def child_of(mother: Patient, municipality: Any, *, birth: date = date(2025, 9, 1)) -> Patient:
    patient = factories.make_patient(given="はる", birth_date=birth)
    services.guardianship_add(
        guardian=mother.account, child=patient, relationship=Guardianship.Relationship.MOTHER
    )
    services.residency_add(patient=patient, municipality=municipality, valid_from=SINCE)
    return patient


def choose(
    patient: Patient,
    category: str,
    choice: str,
    *,
    by: Any,
    at: datetime | None = None,
) -> ResearchChoice:
    return ResearchChoice.objects.create(
        patient=patient,
        category=category,
        choice=choice,
        decided_by=by,
        decided_at=at or timezone.now(),
    )


def regime(
    municipality: Any, kind: str, *, published_on: date | None = None, url: str = ""
) -> ResearchRegime:
    row, _ = ResearchRegime.objects.update_or_create(
        municipality=municipality,
        defaults={
            "kind": kind,
            "notice_published_on": published_on,
            "notice_url": url,
            "legal_basis": "行政機関等匿名加工情報（個人情報保護法第114条）",
        },
    )
    return row
