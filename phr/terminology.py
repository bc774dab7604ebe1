"""The data dictionary, loaded from docs/dataset.md.

One table of items (codes, unit, plausible range, data category,
sensitivity) that forms, importers, the indexer, access rules and exports
read. The markdown table in docs/dataset.md is the source of truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path

from django.db import models
from django.utils.translation import gettext_lazy as _

LOINC = "http://loinc.org"
LOCAL = "https://hagukumi.jp/fhir/CodeSystem/item"
UCUM = "http://unitsofmeasure.org"
CATEGORY_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/data-category"
SENSITIVITY_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/sensitivity"

DATASET_PATH = Path(__file__).resolve().parent.parent / "docs" / "dataset.md"


class Category(models.TextChoices):
    PREGNANCY = "pregnancy", _("pregnancy")
    PRENATAL_CHECKUPS = "prenatal_checkups", _("prenatal checkups")
    INFANT_CHECKUPS = "infant_checkups", _("infant checkups")
    SCHOOL_CHECKUPS = "school_checkups", _("school checkups")
    VACCINATIONS = "vaccinations", _("vaccinations")
    MEDICATIONS = "medications", _("medications")
    VITALS = "vitals", _("vitals")
    ALLERGIES_CONDITIONS = "allergies_conditions", _("allergies and conditions")


class Sensitivity(models.TextChoices):
    NORMAL = "normal", _("normal")
    CLINIC_ONLY = "clinic_only", _("clinic only")


TYPE_CATEGORY: dict[str, str] = {
    "Immunization": Category.VACCINATIONS,
    "MedicationDispense": Category.MEDICATIONS,
    "MedicationStatement": Category.MEDICATIONS,
    "AllergyIntolerance": Category.ALLERGIES_CONDITIONS,
    "Condition": Category.ALLERGIES_CONDITIONS,
    "EpisodeOfCare": Category.PREGNANCY,
}


@dataclass(frozen=True)
class Item:
    key: str
    ja: str
    en: str
    loinc: str
    local: str
    unit: str
    min: Decimal | None
    max: Decimal | None
    category: str
    sensitivity: str
    notes: str

    @property
    def coding(self) -> dict[str, str]:
        """The primary coding for this item (LOINC when we have one)."""
        if self.loinc:
            return {"system": LOINC, "code": self.loinc, "display": self.en}
        return {"system": LOCAL, "code": self.local, "display": self.en}

    @property
    def tokens(self) -> list[str]:
        out = []
        if self.loinc:
            out.append(f"{LOINC}|{self.loinc}")
        if self.local:
            out.append(f"{LOCAL}|{self.local}")
        return out

    def label(self, language: str) -> str:
        return self.ja if language.startswith("ja") else self.en


def _decimal(text: str) -> Decimal | None:
    return Decimal(text) if text else None


def parse_dataset(text: str) -> dict[str, Item]:
    items: dict[str, Item] = {}
    header: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None if not line.strip() else header
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if set("".join(cells)) <= {"-", ":"}:
            continue
        row = dict(zip(header, cells, strict=True))
        category = row["category"]
        if category not in Category.values:
            raise ValueError(f"docs/dataset.md: item {row['key']}: unknown category {category!r}")
        if row["sensitivity"] not in Sensitivity.values:
            raise ValueError(f"docs/dataset.md: item {row['key']}: unknown sensitivity")
        if not (row["loinc"] or row["local"]):
            raise ValueError(f"docs/dataset.md: item {row['key']} has no code")
        items[row["key"]] = Item(
            key=row["key"],
            ja=row["ja"],
            en=row["en"],
            loinc=row["loinc"],
            local=row["local"],
            unit=row["unit"],
            min=_decimal(row["min"]),
            max=_decimal(row["max"]),
            category=category,
            sensitivity=row["sensitivity"],
            notes=row["notes"],
        )
    return items


@cache
def items() -> dict[str, Item]:
    return parse_dataset(DATASET_PATH.read_text(encoding="utf-8"))


@cache
def _by_token() -> dict[str, Item]:
    return {token: item for item in items().values() for token in item.tokens}


def item(key: str) -> Item:
    return items()[key]


def item_for_coding(system: str | None, code: str | None) -> Item | None:
    if not system or not code:
        return None
    return _by_token().get(f"{system}|{code}")


def choices(*, category: str | None = None) -> list[tuple[str, str]]:
    return [
        (i.key, i.en) for i in items().values() if category is None or i.category == category
    ]
