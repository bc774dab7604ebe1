"""The documented municipal file formats (docs/formats/), by key.

Each format is a `municipal_data.records.MunicipalFormat`: its columns
(phr.tabular.Column), `to_record` (a parsed row → MunicipalRecord, with
row-level errors) and `resources` (a record → its FHIR resources, each
with a stable item name).
"""

from __future__ import annotations

from municipal_data.formats import infant_checkup, pregnancy, school_checkup, vaccination
from municipal_data.records import MunicipalFormat

FORMATS: dict[str, MunicipalFormat] = {
    module.FORMAT.key: module.FORMAT
    for module in (infant_checkup, vaccination, pregnancy, school_checkup)
}

# The key columns of each format: the only cells a deletion row needs.
KEY_COLUMNS: dict[str, tuple[str, ...]] = {
    module.FORMAT.key: module.KEY_COLUMNS
    for module in (infant_checkup, vaccination, pregnancy, school_checkup)
}

__all__ = ["FORMATS", "KEY_COLUMNS"]
