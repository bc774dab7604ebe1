"""Services for identities: patients, guardianship, residency, provenance.

Every write that matters goes through a service (STYLE.md): keyword-only
arguments, `<entity>_<verb>` names, ValidationError for bad input.
"""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

from django.db import transaction
from django.utils import timezone

from phr import store
from phr.models import Guardianship, Organization, Patient, Provenance, Residency, User

RESIDENT_NUMBER_SYSTEM = "urn:hagukumi:resident-number:{municipality_code}"
MCH_HANDBOOK_SYSTEM = "urn:hagukumi:mch-handbook:{municipality_code}"


def provenance_create(
    *,
    origin: str,
    user: User | None = None,
    organization: Organization | None = None,
    source: str = "",
    activity: str = Provenance.Activity.WRITE,
    job_id: int | None = None,
) -> Provenance:
    return Provenance.objects.create(
        origin=origin,
        agent_user=user,
        agent_org=organization,
        source=source,
        activity=activity,
        job_id=job_id,
    )


def patient_resource(
    *,
    family: str,
    given: str,
    family_kana: str = "",
    given_kana: str = "",
    birth_date: date | None = None,
    gender: str | None = None,
    identifiers: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """A JP Core-shaped Patient: kanji name, and kana as a second name with
    the IDE/SYL representation extension (JP Core JP_Patient)."""
    names: list[dict[str, Any]] = [{"use": "official", "family": family, "given": [given]}]
    if family_kana or given_kana:
        names.append(
            {
                "use": "official",
                "extension": [
                    {
                        "url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation",
                        "valueCode": "SYL",
                    }
                ],
                "family": family_kana,
                "given": [given_kana],
            }
        )
        names[0]["extension"] = [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation",
                "valueCode": "IDE",
            }
        ]
    resource: dict[str, Any] = {"resourceType": "Patient", "name": names}
    if identifiers:
        resource["identifier"] = identifiers
    if gender:
        resource["gender"] = gender
    if birth_date:
        resource["birthDate"] = birth_date.isoformat()
    return resource


@transaction.atomic
def patient_create(
    *,
    kind: str,
    resource: dict[str, Any],
    provenance: Provenance,
    account: User | None = None,
    patient_id: uuid.UUID | None = None,
) -> Patient:
    """Create the identity row and its FHIR Patient resource together."""
    patient = Patient.objects.create(id=patient_id or uuid.uuid4(), kind=kind, account=account)
    store.record_write(resource, provenance=provenance, resource_id=patient.id)
    return patient


def guardianship_add(
    *, guardian: User, child: Patient, relationship: str, valid_from: date | None = None
) -> Guardianship:
    """The guardian's active guardianship of the child, made if there is
    none. An ended one is never handed back: a guardian invited again after
    her guardianship ended starts a new period (from `valid_from`, default
    today), rather than getting the old row and no access."""
    rows = Guardianship.objects.filter(guardian=guardian, child=child, relationship=relationship)
    if valid_from is None:
        current = rows.active().order_by("valid_from").first()
        if current is not None:
            return current
        valid_from = timezone.localdate()
    guardianship, _ = Guardianship.objects.get_or_create(
        guardian=guardian, child=child, relationship=relationship, valid_from=valid_from
    )
    return guardianship


def residency_add(
    *,
    patient: Patient,
    municipality: Organization,
    resident_number: str = "",
    valid_from: date | None = None,
) -> Residency:
    extra = {"valid_from": valid_from} if valid_from else {}
    residency, _ = Residency.objects.get_or_create(
        patient=patient, municipality=municipality, resident_number=resident_number, **extra
    )
    return residency
