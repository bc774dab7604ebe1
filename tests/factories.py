"""factory_boy factories for control data, and helpers that write
clinical records through the real store."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

import factory
from allauth.mfa.models import Authenticator

from phr import services, store
from phr.identifiers import municipality_check_digit, with_luhn_digit
from phr.models import Membership, Organization, Patient, Provenance, Role, User
from phr.terminology import CATEGORY_SYSTEM

PASSWORD = "correct horse battery staple 2026"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@example.jp")
    display_name = factory.Sequence(lambda n: f"User {n}")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def _save(self, create: bool, extracted: Any, **kwargs: Any) -> None:
        if create:
            self.save()


def municipality_code(n: int) -> str:
    first = f"10{n % 1000:03d}"
    return first + municipality_check_digit(first)


class MunicipalityFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization

    kind = Organization.Kind.MUNICIPALITY
    code = factory.Sequence(lambda n: municipality_code(n + 300))
    name = factory.Sequence(lambda n: f"Town {n}")
    prefecture = "10"


class ClinicFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization

    kind = Organization.Kind.CLINIC
    code = factory.Sequence(lambda n: with_luhn_digit(f"101{n:06d}"))
    name = factory.Sequence(lambda n: f"Clinic {n}")
    prefecture = "10"


def enable_totp(user: User) -> Authenticator:
    """Give a user an active TOTP authenticator (as allauth stores it)."""
    from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret

    return TOTP.activate(user, generate_totp_secret()).instance


def make_member(
    role: str, organization: Organization, *, mfa: bool = True, **user_fields: Any
) -> User:
    user = UserFactory(**user_fields)
    Membership.objects.create(user=user, organization=organization, role=role)
    if mfa:
        enable_totp(user)
    return user


def make_patient(
    *,
    kind: str = Patient.Kind.CHILD,
    family: str = "前橋",
    given: str = "はな",
    birth_date: date | None = None,
    account: User | None = None,
    provenance: Provenance | None = None,
) -> Patient:
    prov = provenance or services.provenance_create(origin=Provenance.Origin.SYSTEM)
    resource = services.patient_resource(
        family=family, given=given, birth_date=birth_date or date(2025, 9, 1)
    )
    return services.patient_create(kind=kind, resource=resource, provenance=prov, account=account)


def observation(
    patient: Patient,
    *,
    code: str = "29463-7",
    value: float = 8.2,
    unit: str = "kg",
    when: str = "2026-01-15",
    category: str | None = None,
    system: str = "http://loinc.org",
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": f"Patient/{patient.pk}"},
        "effectiveDateTime": when,
        "valueQuantity": {
            "value": value,
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit,
        },
    }
    if category:
        resource["meta"] = {"tag": [{"system": CATEGORY_SYSTEM, "code": category}]}
    return resource


def write_observation(
    patient: Patient,
    *,
    organization: Organization | None = None,
    origin: str = Provenance.Origin.SELF,
    source_value: str | None = None,
    **kwargs: Any,
) -> uuid.UUID:
    prov = services.provenance_create(origin=origin, organization=organization)
    source = store.Source("urn:test", source_value) if source_value else None
    rid, _, _ = store.record_write(observation(patient, **kwargs), provenance=prov, source=source)
    return rid


__all__ = [
    "PASSWORD",
    "ClinicFactory",
    "MunicipalityFactory",
    "Role",
    "UserFactory",
    "enable_totp",
    "make_member",
    "make_patient",
    "observation",
    "write_observation",
]
