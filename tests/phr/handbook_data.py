"""Records for the handbook tests and benchmark, built by the same
builders the demo and the importers use (phr/demo.py), written through the
record store with the provenance of their real source."""

from __future__ import annotations

import uuid
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from phr import demo, store, terminology
from phr.models import Organization, Patient, Provenance
from phr.services import provenance_create
from phr.terminology import CATEGORY_SYSTEM, Category

UCUM = "http://unitsofmeasure.org"


def write_items(
    items: list[tuple[dict[str, Any], store.Source]],
    *,
    origin: str,
    organization: Organization | None = None,
) -> None:
    provenance = provenance_create(origin=origin, organization=organization)
    store.records_write_bulk(items, provenance=provenance)


def child_records(
    *,
    child: Patient,
    birth: date,
    anchor: date,
    municipality: Organization,
    vaccinations: int | None = None,
) -> None:
    """Birth data, the infant checkups and the routine vaccinations held by
    `anchor`, from the municipality (as phr/demo.py seeds them)."""
    items = demo.child_birth_items(child=child.pk, birth=birth)
    items += demo.checkup_items(
        child=child.pk, birth=birth, anchor=anchor, municipality=municipality
    )
    write_items(items, origin=Provenance.Origin.MUNICIPALITY, organization=municipality)
    write_items(
        demo.vaccination_items(child=child.pk, birth=birth, anchor=anchor)[:vaccinations],
        origin=Provenance.Origin.MUNICIPALITY,
        organization=municipality,
    )


def later_checkups(
    *, child: Patient, birth: date, municipality: Organization
) -> list[tuple[dict[str, Any], store.Source]]:
    """The 3-year and 5-year checkups (the demo seeds up to 18 months), as
    the infant checkup format writes them: an Encounter with height,
    weight, the urine test at 3 years and the judgement."""
    from municipal_data.formats import common

    items: list[tuple[dict[str, Any], store.Source]] = []
    system = f"urn:test:checkups:{child.pk}"
    for code, name, months, height, weight in (
        ("3y", "3歳児健診", 37, Decimal("95.0"), Decimal("14.1")),
        ("5y", "5歳児健診", 61, Decimal("109.5"), Decimal("18.3")),
    ):
        day = demo.add_months(birth, months)
        source = store.Source(system, code)
        encounter_id = str(store.source_resource_id("Encounter", source))
        items.append(
            (
                common.encounter(
                    subject=str(child.pk),
                    when=day,
                    category=Category.INFANT_CHECKUPS,
                    types=[
                        {
                            "coding": [
                                {"system": common.CHECKUP_TYPE_SYSTEM, "code": code,
                                 "display": name}
                            ],
                            "text": name,
                        }
                    ],
                    provider=common.municipality_ref(municipality.code),
                ),
                source,
            )
        )  # fmt: skip
        values: list[tuple[str, str, dict[str, Any]]] = [
            ("body_height", "vital-signs", {"valueQuantity": common.quantity(height, "cm")}),
            ("body_weight", "vital-signs", {"valueQuantity": common.quantity(weight, "kg")}),
            ("urine_protein", "laboratory",
             {"valueCodeableConcept": common.coded(common.URINE_DIPSTICK_SYSTEM, "negative",
                                                   common.DIPSTICK_CODES)}),
            ("checkup_judgement", "exam",
             {"valueCodeableConcept": common.coded(common.JUDGEMENT_SYSTEM, "no-findings",
                                                   common.FINDING_CODES)}),
        ]  # fmt: skip
        for key, obs_category, value in values:
            items.append(
                (
                    common.observation(
                        key,
                        subject=str(child.pk),
                        when=day,
                        category=Category.INFANT_CHECKUPS,
                        obs_category=obs_category,
                        encounter=encounter_id,
                        **value,
                    ),
                    store.Source(system, f"{code}|{key}"),
                )
            )
    return items


def dispense(patient: Patient, day: date, n: int, pharmacy: str = "はぐくみ薬局") -> dict[str, Any]:
    return {
        "resourceType": "MedicationDispense",
        "meta": {"tag": [{"system": CATEGORY_SYSTEM, "code": Category.MEDICATIONS}]},
        "status": "completed",
        "medicationCodeableConcept": {
            "coding": [{"system": "urn:oid:1.2.392.100495.20.2.74", "code": f"62{n:08d}"}],
            "text": f"カルボシステインシロップ {n}",
        },
        "subject": {"reference": f"Patient/{patient.pk}"},
        "performer": [{"actor": {"display": pharmacy}}],
        "quantity": {"value": 30, "unit": "mL", "system": UCUM, "code": "mL"},
        "daysSupply": {"value": 5, "unit": "d", "system": UCUM, "code": "d"},
        "whenHandedOver": day.isoformat(),
    }


def home_weight(patient: Patient, day: date, n: int, kg: float) -> dict[str, Any]:
    item = terminology.item("body_weight")
    return {
        "resourceType": "Observation",
        "meta": {"tag": [{"system": CATEGORY_SYSTEM, "code": Category.VITALS}]},
        "status": "final",
        "code": {"coding": [item.coding], "text": item.ja},
        "subject": {"reference": f"Patient/{patient.pk}"},
        "effectiveDateTime": f"{day.isoformat()}T07:{n % 60:02d}:00+09:00",
        "valueQuantity": {"value": kg, "unit": "kg", "system": UCUM, "code": "kg"},
    }


def immunization(patient: Patient, day: date, code: str, dose: int) -> dict[str, Any]:
    return {
        "resourceType": "Immunization",
        "meta": {"tag": [{"system": CATEGORY_SYSTEM, "code": Category.VACCINATIONS}]},
        "status": "completed",
        "vaccineCode": {
            "coding": [{"system": demo.VACCINE_SYSTEM, "code": code}],
            "text": code,
        },
        "patient": {"reference": f"Patient/{patient.pk}"},
        "occurrenceDateTime": day.isoformat(),
        "protocolApplied": [{"doseNumberPositiveInt": dose}],
    }


def five_years(
    *,
    child: Patient,
    birth: date,
    municipality: Organization,
    scale: float = 1.0,
    dispensings: int = 200,
    vitals: int = 2000,
    vaccinations: int = 30,
) -> dict[str, int]:
    """A child with five years of records: the infant checkups (the demo
    child's up to 18 months, then 3 and 5 years), `vaccinations` doses (the
    demo child's routine doses, then influenza doses from a clinic),
    `dispensings` from a pharmacy and `vitals` home weights from a device —
    the last three times `scale`."""
    anchor = birth + timedelta(days=5 * 365)
    wanted = round(vaccinations * scale)
    child_records(
        child=child, birth=birth, anchor=anchor, municipality=municipality, vaccinations=wanted
    )
    write_items(
        later_checkups(child=child, birth=birth, municipality=municipality),
        origin=Provenance.Origin.MUNICIPALITY,
        organization=municipality,
    )
    routine = demo.vaccination_items(child=child.pk, birth=birth, anchor=anchor)
    seeded = min(len(routine), wanted)
    extra = max(wanted - seeded, 0)
    shots = [
        (
            immunization(child, birth + timedelta(days=400 + 30 * n), "influenza", n + 1),
            store.Source("urn:bench:vaccination", f"{child.pk}|{n}"),
        )
        for n in range(extra)
    ]
    write_items(shots, origin=Provenance.Origin.CLINIC)
    n_dispense = round(dispensings * scale)
    meds = [
        (
            dispense(child, birth + timedelta(days=30 + (n * 1800) // max(n_dispense, 1)), n),
            store.Source("urn:bench:dispense", f"{child.pk}|{n}"),
        )
        for n in range(n_dispense)
    ]
    write_items(meds, origin=Provenance.Origin.PHARMACY)
    n_vitals = round(vitals * scale)
    weights = [
        (
            home_weight(
                child,
                birth + timedelta(days=(n * 1825) // max(n_vitals, 1)),
                n,
                round(3.0 + 15 * n / max(n_vitals, 1), 1),
            ),
            store.Source("urn:bench:vitals", f"{child.pk}|{n}"),
        )
        for n in range(n_vitals)
    ]
    write_items(weights, origin=Provenance.Origin.DEVICE)
    return {
        "vaccinations": seeded + extra,
        "dispensings": n_dispense,
        "vitals": n_vitals,
    }


def new_id() -> uuid.UUID:
    return uuid.uuid4()
