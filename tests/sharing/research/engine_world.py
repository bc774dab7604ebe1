"""A small world for the release builder's tests: mothers and children of
one municipality with pregnancies (a New Year visit pair), deliveries,
births, checkups, vaccinations, home vitals, a clinic-only result, free
text and lot numbers that must never leave."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from phr import services, store
from phr.models import Organization, Patient, Provenance
from phr.terminology import CATEGORY_SYSTEM, LOCAL, LOINC
from sharing.models import ResearchProject
from tests import factories as f

EPISODE_TYPE_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/episode-type"
SECRET_NOTE = "秘密のメモ SECRET-NOTE-7731"
LOT = "LOT-SECRET-4412"
SERIES = "定期接種 SERIES-SECRET-9"
ALL = frozenset({"pregnancy", "prenatal_checkups", "infant_checkups", "vaccinations", "vitals"})


@dataclass
class World:
    municipality: Organization
    mothers: list[Patient] = field(default_factory=list)
    children: list[Patient] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    numbers: list[str] = field(default_factory=list)
    births: dict[uuid.UUID, date] = field(default_factory=dict)

    def cohort(self, categories: frozenset[str] = ALL) -> dict[uuid.UUID, frozenset[str]]:
        return {p.pk: categories for p in self.mothers + self.children}


def _write(resource: dict[str, Any], category: str | None = None) -> uuid.UUID:
    if category:
        resource["meta"] = {"tag": [{"system": CATEGORY_SYSTEM, "code": category}]}
    prov = services.provenance_create(origin=Provenance.Origin.SYSTEM)
    rid, _, _ = store.record_write(resource, provenance=prov)
    return rid


def _obs(
    patient: Patient, system: str, code: str, day: date, category: str, **value: Any
) -> uuid.UUID:
    return _write(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": system, "code": code}]},
            "subject": {"reference": f"Patient/{patient.pk}"},
            "effectiveDateTime": day.isoformat(),
            **value,
        },
        category,
    )


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {
        "valueQuantity": {
            "value": value,
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit,
        }
    }


def project(**fields: Any) -> ResearchProject:
    institution = Organization.objects.create(
        kind=Organization.Kind.RESEARCH, code=f"R{uuid.uuid4().hex[:8]}", name="研究所"
    )
    defaults: dict[str, Any] = {
        "organization": institution,
        "applicant": f.UserFactory(),
        "title": "Birth weight and growth",
        "ethics_approval_number": "ETH-2026-001",
        "purpose": "research",
        "categories": sorted(ALL),
        "cohort_kind": "both",
        "birth_year_from": 1980,
        "birth_year_to": 2026,
        "period_start": date(2020, 1, 1),
        "period_end": date(2026, 12, 31),
        "k": 5,
        "status": ResearchProject.Status.APPROVED,
        "expires_on": date(2030, 1, 1),
        "pseudonym_salt": os.urandom(32),
    }
    defaults.update(fields)
    return ResearchProject.objects.create(**defaults)


FAMILIES = [
    "高崎",
    "前橋",
    "桐生",
    "伊勢崎",
    "太田",
    "沼田",
    "館林",
    "渋川",
    "藤岡",
    "富岡",
    "安中",
    "みどり",
]
KANA = [
    "タカサキ",
    "マエバシ",
    "キリュウ",
    "イセサキ",
    "オオタ",
    "ヌマタ",
    "タテバヤシ",
    "シブカワ",
    "フジオカ",
    "トミオカ",
    "アンナカ",
    "ミドリ",
]


def build(pairs: int = 12, *, municipality: Organization | None = None) -> World:
    municipality = municipality or f.MunicipalityFactory()
    world = World(municipality=municipality)
    due = date(2024, 1, 10)
    lmp = due - timedelta(days=280)
    for n in range(pairs):
        family, kana = FAMILIES[n % 12], KANA[n % 12]
        resident = f"{7100200 + n}"
        world.names += [family, kana, f"{family}花子{n}", f"ハナコ{n}"]
        world.numbers.append(resident)
        mother_resource = services.patient_resource(
            family=family,
            given=f"花子{n}",
            family_kana=kana,
            given_kana=f"ハナコ{n}",
            birth_date=date(1990, 3, 1 + n),
            gender="female",
            identifiers=[{"system": "urn:test:mch-handbook", "value": f"MCH-{resident}"}],
        )
        prov = services.provenance_create(origin=Provenance.Origin.SYSTEM)
        account = f.UserFactory(email=f"mother{n}.{uuid.uuid4().hex[:6]}@example.jp")
        mother = services.patient_create(
            kind=Patient.Kind.ADULT, resource=mother_resource, provenance=prov, account=account
        )
        services.residency_add(patient=mother, municipality=municipality, resident_number=resident)
        world.mothers.append(mother)
        world.numbers.append(f"MCH-{resident}")
        _write(
            {
                "resourceType": "EpisodeOfCare",
                "status": "finished",
                "type": [{"coding": [{"system": EPISODE_TYPE_SYSTEM, "code": "pregnancy"}]}],
                "patient": {"reference": f"Patient/{mother.pk}"},
                "period": {"start": lmp.isoformat(), "end": "2024-01-05"},
            },
            "pregnancy",
        )
        _obs(mother, LOINC, "11778-8", date(2023, 6, 1), "pregnancy", valueDateTime=due.isoformat())
        # visits at 37 weeks (in 2023) and 38 weeks (in 2024): together
        # the calendar years would pin the last period to a week
        _obs(
            mother,
            LOINC,
            "29463-7",
            date(2023, 12, 24),
            "prenatal_checkups",
            **_quantity(60.1 + n / 10, "kg"),
        )
        _obs(
            mother,
            LOINC,
            "29463-7",
            date(2024, 1, 2),
            "prenatal_checkups",
            **_quantity(60.5 + n / 10, "kg"),
        )
        _obs(
            mother,
            LOCAL,
            "hiv-antibody",
            date(2023, 7, 1),
            "prenatal_checkups",
            valueCodeableConcept={"coding": [{"system": "urn:test", "code": "HIVNEG-CODE"}]},
        )
        _obs(
            mother,
            LOCAL,
            "prenatal-note",
            date(2023, 8, 1),
            "prenatal_checkups",
            valueString=SECRET_NOTE,
        )
        # the delivery
        birth = date(2024, 1, 5)
        _obs(mother, LOINC, "49051-6", birth, "pregnancy", **_quantity(38, "wk"))
        _obs(mother, LOCAL, "birth-count", birth, "pregnancy", valueInteger=1)
        _obs(
            mother,
            LOCAL,
            "delivery-mode",
            birth,
            "pregnancy",
            valueCodeableConcept={
                "coding": [
                    {
                        "system": "https://hagukumi.jp/fhir/CodeSystem/delivery-mode",
                        "code": "spontaneous",
                    }
                ]
            },
        )
        # her home blood pressure after the birth
        _obs(mother, LOINC, "8310-5", date(2024, 6, 1), "vitals", **_quantity(36.5, "Cel"))
        # the child
        child_resource = services.patient_resource(
            family=family,
            given=f"はると{n}",
            birth_date=birth,
            gender="male" if n % 2 else "female",
        )
        prov = services.provenance_create(origin=Provenance.Origin.SYSTEM)
        child = services.patient_create(
            kind=Patient.Kind.CHILD, resource=child_resource, provenance=prov
        )
        services.residency_add(
            patient=child, municipality=municipality, resident_number=f"C{resident}"
        )
        services.guardianship_add(
            guardian=account, child=child, relationship="mother", valid_from=birth
        )
        world.children.append(child)
        world.births[child.pk] = birth
        world.names.append(f"はると{n}")
        world.numbers.append(f"C{resident}")
        _obs(child, LOINC, "8339-4", birth, "infant_checkups", **_quantity(3000 + 10 * n, "g"))
        _obs(child, LOINC, "49051-6", birth, "infant_checkups", **_quantity(38, "wk"))
        _obs(
            child,
            LOINC,
            "29463-7",
            date(2024, 2, 6),
            "infant_checkups",
            **_quantity(4.2 + n / 20, "kg"),
        )
        _obs(
            child, LOINC, "29463-7", date(2019, 2, 6), "infant_checkups", **_quantity(9.9, "kg")
        )  # before the period: never released
        _write(
            {
                "resourceType": "Immunization",
                "status": "completed",
                "patient": {"reference": f"Patient/{child.pk}"},
                "vaccineCode": {
                    "coding": [
                        {"system": "https://hagukumi.jp/fhir/CodeSystem/vaccine", "code": "hepb"}
                    ]
                },
                "occurrenceDateTime": "2024-03-05",
                "lotNumber": LOT,
                "protocolApplied": [{"doseNumberPositiveInt": 1, "series": SERIES}],
            },
            "vaccinations",
        )
        for day in (date(2024, 4, 1), date(2024, 4, 2), date(2024, 4, 3)):
            _obs(child, LOINC, "8310-5", day, "vitals", **_quantity(36.8, "Cel"))
    return world
