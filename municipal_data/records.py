"""What a municipal format hands the import pipeline for one valid row.

A format (municipal_data/formats/<name>.py) reads its columns into a
`MunicipalRecord`: who the row is about (the child or the mother, by
municipality code + resident number, with the identifying fields used to
check a match), the mother when the row names her, the row's change flag,
and its key — the identity of the row at its source, unique within the
format and municipality (e.g. resident number + checkup kind + date). The
importer matches or creates the people, then asks the format for the FHIR
resources of the row, each with an item name; every resource's source
identifier is (format system, key + "#" + item), so the same row always
writes the same records, a corrected row writes new versions of them, and
a deletion finds them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

from phr.tabular import Column, Row

Change = Literal["add", "update", "delete"]


@dataclass(frozen=True)
class Person:
    """A resident as the municipal system knows them."""

    kind: Literal["child", "mother"]
    municipality_code: str
    resident_number: str
    family: str = ""
    given: str = ""
    family_kana: str = ""
    given_kana: str = ""
    birth_date: date | None = None
    sex: str | None = None  # "male" | "female"
    mch_handbook_number: str = ""
    # A family that moved here: where they were registered before, and since when here.
    previous_municipality_code: str = ""
    previous_resident_number: str = ""
    moved_in: date | None = None


@dataclass
class MunicipalRecord:
    line: int
    change: Change
    key: str
    subject: Person
    mother: Person | None = None
    values: dict[str, Any] = field(default_factory=dict)


# (item name, FHIR resource as a dict) — item names are stable per row.
Items = list[tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class MunicipalFormat:
    """A documented upload/feed format of a municipality."""

    key: str  # "infant_checkup", "vaccination", "pregnancy", "school_checkup"
    label_ja: str
    label_en: str
    category: str  # the data category of its records (docs/dataset.md)
    columns: tuple[Column, ...]
    # Row (already parsed cell by cell) -> record; adds row-level errors to
    # the row (row.error(...)) and returns None when the row cannot be used.
    to_record: Callable[[Row, str], MunicipalRecord | None]
    # record + the matched patients' ids -> the row's resources.
    resources: Callable[[MunicipalRecord, str, str | None], Items]

    def source_system(self, municipality_code: str) -> str:
        return f"urn:hagukumi:municipality:{municipality_code}:{self.key}"
