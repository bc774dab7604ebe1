"""What tests/phr/test_export.py, test_everything.py and test_family.py
share: a family with records from every kind of source, and clients."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from allauth.account.models import EmailAddress
from django.test import Client
from django.urls import reverse
from fhir.resources.R4B import get_fhir_model_class

from phr import services, store
from phr.models import Organization, Patient, Provenance, User
from phr.terminology import Category
from sharing.models import ConsentPurpose
from sharing.services import consent_grant
from tests import factories as f


def client_for(user: Any) -> Client:
    """A session with no recent authentication (sensitive actions ask)."""
    client = Client()
    client.force_login(user)
    return client


def logged_in(user: Any) -> Client:
    """A client that logged in through the form just now (a recent login
    counts for sensitive actions)."""
    EmailAddress.objects.update_or_create(
        user=user, email=user.email, defaults={"verified": True, "primary": True}
    )
    client = Client()
    response = client.post(reverse("account_login"), {"login": user.email, "password": f.PASSWORD})
    assert response.status_code == 302, response.content
    return client


def write(
    resource: dict[str, Any],
    *,
    origin: str,
    organization: Organization | None = None,
    user: User | None = None,
) -> uuid.UUID:
    provenance = services.provenance_create(origin=origin, organization=organization, user=user)
    rid, _, _ = store.record_write(resource, provenance=provenance)
    return rid


def immunization(patient: Patient, when: str = "2025-11-10") -> dict[str, Any]:
    return {
        "resourceType": "Immunization",
        "status": "completed",
        "vaccineCode": {"text": "ヒブ"},
        "patient": {"reference": f"Patient/{patient.pk}"},
        "occurrenceDateTime": when,
    }


@dataclass
class Records:
    child_weight: uuid.UUID  # municipal, infant checkup measurement
    child_vaccine: uuid.UUID  # municipal, vaccination
    child_note: uuid.UUID  # the mother typed it (self)
    mother_bp: uuid.UUID  # the mother typed it (self)
    mother_clinic: uuid.UUID  # a clinic's prenatal record
    strangers: uuid.UUID  # another family's record

    @property
    def childs(self) -> set[uuid.UUID]:
        return {self.child_weight, self.child_vaccine, self.child_note}

    @property
    def mothers(self) -> set[uuid.UUID]:
        return {self.mother_bp, self.mother_clinic}


def make_records(
    *,
    mother: User,
    mother_patient: Patient,
    child: Patient,
    municipality: Organization,
    clinic: Organization,
) -> Records:
    other_child = f.make_patient(given="よそ")
    return Records(
        child_weight=write(
            f.observation(child, value=7.9, when="2026-01-15T23:30:00Z"),
            origin=Provenance.Origin.MUNICIPALITY,
            organization=municipality,
        ),
        child_vaccine=write(
            immunization(child), origin=Provenance.Origin.MUNICIPALITY, organization=municipality
        ),
        child_note=write(
            f.observation(child, code="8310-5", value=37.2, unit="Cel", when="2026-02-01"),
            origin=Provenance.Origin.SELF,
            user=mother,
        ),
        mother_bp=write(
            f.observation(
                mother_patient, code="8480-6", value=118, unit="mm[Hg]", when="2026-02-10"
            ),
            origin=Provenance.Origin.SELF,
            user=mother,
        ),
        mother_clinic=write(
            f.observation(
                mother_patient,
                code="29463-7",
                value=55.0,
                category=Category.PRENATAL_CHECKUPS,
                when="2026-03-01",
            ),
            origin=Provenance.Origin.CLINIC,
            organization=clinic,
        ),
        strangers=write(f.observation(other_child), origin=Provenance.Origin.SELF),
    )


def share_vaccinations(mother: User, child: Patient, clinic: Organization) -> None:
    consent_grant(
        patient=child,
        by=mother,
        purpose=ConsentPurpose.CARE,
        categories=[Category.VACCINATIONS],
        grantee_org=clinic,
    )


def validate(resource: dict[str, Any]) -> None:
    """Raise unless valid FHIR R4B (a Bundle with every entry in it)."""
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def streamed_json(response: Any) -> dict[str, Any]:
    assert response.streaming
    result: dict[str, Any] = json.loads(b"".join(response.streaming_content))
    return result


def entry_ids(bundle: dict[str, Any], resource_type: str | None = None) -> set[str]:
    return {
        e["resource"]["id"]
        for e in bundle.get("entry", ())
        if resource_type is None or e["resource"]["resourceType"] == resource_type
    }


def record_ids(bundle: dict[str, Any]) -> set[str]:
    """The entries that are records (not the Provenance beside them)."""
    return {
        e["resource"]["id"]
        for e in bundle.get("entry", ())
        if e["resource"]["resourceType"] != "Provenance"
    }
