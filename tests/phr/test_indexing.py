"""The search index derived from the JSON (phr.indexing), and its rebuild.

These tests pin what each search column means, so that a change made to
speed the indexer up cannot quietly change what a query finds.
"""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from hypothesis import given
from hypothesis import strategies as st

from phr import indexing, store, terminology
from phr.models import Provenance, Resource

MOTHER = uuid.UUID("11111111-1111-4111-8111-111111111111")
CHILD = uuid.UUID("22222222-2222-4222-8222-222222222222")
MUNICIPAL_ROWS = "urn:hagukumi:municipality:102016:infant-checkup"


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def observation(**extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": terminology.LOINC, "code": "29463-7"}]},
        "subject": {"reference": f"Patient/{MOTHER}"},
    }
    resource.update(extra)
    return resource


# --- compartments -------------------------------------------------------------


def test_it_puts_a_patient_in_its_own_compartment() -> None:
    # A Patient belongs to itself: whoever may see the patient sees her demographics.
    fields = indexing.index({"resourceType": "Patient"}, resource_id=MOTHER)
    assert fields.compartments == [MOTHER]


@pytest.mark.parametrize(
    ("resource_type", "element"),
    [
        ("Observation", "subject"),
        ("Encounter", "subject"),
        ("EpisodeOfCare", "patient"),
        ("Immunization", "patient"),
        ("MedicationDispense", "subject"),
        ("MedicationStatement", "subject"),
        ("AllergyIntolerance", "patient"),
        ("Condition", "subject"),
        ("Flag", "subject"),
    ],
)
def test_it_takes_the_compartment_from_the_types_patient_reference(
    resource_type: str, element: str
) -> None:
    # The compartment is the key of every access filter: each type names its
    # patient in one element, and only that element counts.
    resource = {
        "resourceType": resource_type,
        element: {"reference": f"Patient/{CHILD}"},
        "performer": [{"reference": f"Patient/{MOTHER}"}],
    }
    assert indexing.index(resource).compartments == [CHILD]


def test_it_leaves_the_compartment_empty_for_a_reference_that_is_not_a_patient_uuid() -> None:
    # A Group subject or a non-UUID id is nobody's record: better no
    # compartment (visible to no family) than a wrong one.
    assert indexing.index(observation(subject={"reference": "Group/1"})).compartments == []
    assert indexing.index(observation(subject={"reference": "Patient/abc"})).compartments == []
    assert indexing.index(observation(subject={"display": "Hanako"})).compartments == []


# --- tokens and references ------------------------------------------------------


def test_it_indexes_every_coding_as_system_code_and_bare_code() -> None:
    # Tokens serve code= searches with and without a system, as Medplum does.
    fields = indexing.index(
        observation(
            code={
                "coding": [
                    {"system": terminology.LOINC, "code": "29463-7"},
                    {"system": terminology.LOCAL, "code": "body-weight"},
                ]
            },
            interpretation=[{"coding": [{"system": "urn:interp", "code": "N"}]}],
        )
    )
    assert {
        f"{terminology.LOINC}|29463-7",
        "|29463-7",
        f"{terminology.LOCAL}|body-weight",
        "|body-weight",
        "urn:interp|N",
        "|N",
    } <= set(fields.tokens)


def test_it_indexes_identifiers_as_tokens() -> None:
    # identifier= searches and identity matching read the same token array.
    fields = indexing.index(
        {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.21", "value": "A-0001"}],
        },
        resource_id=MOTHER,
    )
    assert "urn:oid:1.2.392.100495.20.3.21|A-0001" in fields.tokens
    assert "|A-0001" in fields.tokens


def test_it_keeps_tokens_and_refs_sorted_and_unique() -> None:
    # Sorted, de-duplicated arrays make the derived columns deterministic,
    # so reindexing an unchanged row writes the same values.
    coding = {"system": terminology.LOINC, "code": "29463-7"}
    fields = indexing.index(
        observation(
            code={"coding": [coding, coding]},
            performer=[{"reference": "Organization/2"}, {"reference": "Organization/1"}],
        )
    )
    assert fields.tokens == sorted(set(fields.tokens))
    assert fields.refs == ["Organization/1", "Organization/2", f"Patient/{MOTHER}"]


def test_it_indexes_the_status() -> None:
    assert indexing.index(observation(status="amended")).status == "amended"
    assert indexing.index({"resourceType": "Patient"}, resource_id=MOTHER).status == ""


def _reference_tokens_and_refs(node: Any) -> tuple[set[str], set[str]]:
    """The token rule stated plainly (recursively), to check the indexer's
    optimized walk against: every dict with a string system and a string
    code (or, without a code, a string value) is a token; every string
    reference is a ref."""
    tokens: set[str] = set()
    refs: set[str] = set()
    if isinstance(node, dict):
        code = node.get("code", node.get("value"))
        if isinstance(node.get("system"), str) and isinstance(code, str):
            tokens |= {f"{node['system']}|{code}", f"|{code}"}
        if isinstance(node.get("reference"), str):
            refs.add(node["reference"])
        children: list[Any] = list(node.values())
    elif isinstance(node, list):
        children = node
    else:
        children = []
    for child in children:
        more_tokens, more_refs = _reference_tokens_and_refs(child)
        tokens |= more_tokens
        refs |= more_refs
    return tokens, refs


_scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from(["a", "b", "x|y"])
_element = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(
        st.sampled_from(["system", "code", "value", "reference", "coding", "x"]),
        children,
        max_size=4,
    ),
    max_leaves=12,
)


@given(element=_element)
def test_it_finds_every_coding_and_reference_at_any_depth(element: Any) -> None:
    # Tokens and refs come from anywhere in the resource, however deep.
    fields = indexing.index({"resourceType": "Observation", "extension": [element]})
    tokens, refs = _reference_tokens_and_refs(element)
    assert fields.tokens == sorted(tokens)
    assert fields.refs == sorted(refs)


# --- category and sensitivity -------------------------------------------------------


def test_it_takes_the_category_from_the_dictionary_item_of_the_code() -> None:
    # A body weight is "vitals" by default (docs/dataset.md).
    assert indexing.index(observation()).category == "vitals"


def test_it_prefers_the_category_tag_the_writer_set() -> None:
    # The same code measured at an infant checkup belongs to infant_checkups:
    # the writer knew the context, so its meta.tag wins over the dictionary.
    tagged = observation(
        meta={"tag": [{"system": terminology.CATEGORY_SYSTEM, "code": "infant_checkups"}]}
    )
    assert indexing.index(tagged).category == "infant_checkups"


def test_it_falls_back_to_the_category_of_the_resource_type() -> None:
    # Resource types without a dictionary code take their category from the type.
    immunization = {
        "resourceType": "Immunization",
        "patient": {"reference": f"Patient/{CHILD}"},
        "vaccineCode": {"coding": [{"system": "urn:oid:1.2.392.200119.4.403.1", "code": "X"}]},
    }
    assert indexing.index(immunization).category == "vaccinations"
    assert indexing.index({"resourceType": "EpisodeOfCare"}).category == "pregnancy"
    # A patient has no category.
    assert indexing.index({"resourceType": "Patient"}, resource_id=MOTHER).category == ""


def test_it_labels_an_hiv_result_clinic_only_from_the_dictionary() -> None:
    # HIV and syphilis results are clinic-only whatever the writer said.
    hiv = observation(code={"coding": [{"system": terminology.LOCAL, "code": "hiv-antibody"}]})
    assert indexing.index(hiv).sensitivity == "clinic_only"
    assert indexing.index(hiv).category == "prenatal_checkups"


def test_it_never_lets_a_label_lower_the_dictionarys_sensitivity() -> None:
    # A "normal" security label on an HIV result must not make it visible to
    # municipal staff.
    hiv = observation(
        code={"coding": [{"system": terminology.LOCAL, "code": "hiv-antibody"}]},
        meta={"security": [{"system": terminology.SENSITIVITY_SYSTEM, "code": "normal"}]},
    )
    assert indexing.index(hiv).sensitivity == "clinic_only"


def test_it_lets_a_label_raise_the_sensitivity() -> None:
    # A writer may mark an ordinary item clinic-only; the label only raises.
    raised = observation(
        meta={"security": [{"system": terminology.SENSITIVITY_SYSTEM, "code": "clinic_only"}]}
    )
    assert indexing.index(raised).sensitivity == "clinic_only"
    assert indexing.index(observation()).sensitivity == "normal"


# --- dates --------------------------------------------------------------------------


def test_it_reads_a_date_as_the_japanese_day() -> None:
    # "2025-04-01" is that day in Japan: [2025-03-31T15:00Z, 2025-04-01T15:00Z),
    # never shifted by the server's timezone.
    fields = indexing.index(observation(effectiveDateTime="2025-04-01"))
    assert fields.date_start == utc(2025, 3, 31, 15)
    assert fields.date_end == utc(2025, 4, 1, 15)
    assert fields.date_precision == "day"


def test_it_reads_a_birth_date_as_a_day_not_an_instant() -> None:
    patient = {"resourceType": "Patient", "birthDate": "2025-01-31"}
    fields = indexing.index(patient, resource_id=CHILD)
    assert (fields.date_start, fields.date_end) == (utc(2025, 1, 30, 15), utc(2025, 1, 31, 15))
    assert fields.date_precision == "day"


@pytest.mark.parametrize(
    ("value", "start", "end", "precision"),
    [
        ("2025", utc(2024, 12, 31, 15), utc(2025, 12, 31, 15), "year"),
        ("2025-02", utc(2025, 1, 31, 15), utc(2025, 2, 28, 15), "month"),
        ("2025-12", utc(2025, 11, 30, 15), utc(2025, 12, 31, 15), "month"),
    ],
)
def test_it_reads_years_and_months_as_japanese_intervals(
    value: str, start: datetime, end: datetime, precision: str
) -> None:
    fields = indexing.index(observation(effectiveDateTime=value))
    assert (fields.date_start, fields.date_end, fields.date_precision) == (start, end, precision)


@pytest.mark.parametrize(
    ("value", "moment"),
    [
        ("2025-04-01T09:30:00+09:00", utc(2025, 4, 1, 0, 30)),
        ("2025-04-01T09:30:00Z", utc(2025, 4, 1, 9, 30)),
        ("2025-04-01T09:30:00-05:00", utc(2025, 4, 1, 14, 30)),
        # A time without an offset (not valid FHIR, but seen in feeds) is Japan time.
        ("2025-04-01T09:30:00", utc(2025, 4, 1, 0, 30)),
    ],
)
def test_it_reads_a_datetime_with_its_offset_as_an_instant(value: str, moment: datetime) -> None:
    fields = indexing.index(observation(effectiveDateTime=value))
    assert fields.date_start == moment
    assert fields.date_end == moment
    assert fields.date_precision == "instant"


def test_it_reads_a_period_from_its_start_to_the_end_of_its_end() -> None:
    # An encounter on two days covers both days, to the end of the last.
    encounter = {
        "resourceType": "Encounter",
        "subject": {"reference": f"Patient/{MOTHER}"},
        "period": {"start": "2025-04-01", "end": "2025-04-02"},
    }
    fields = indexing.index(encounter)
    assert (fields.date_start, fields.date_end) == (utc(2025, 3, 31, 15), utc(2025, 4, 2, 15))
    assert fields.date_precision == "day"


def test_it_leaves_an_open_instant_period_open() -> None:
    # A pregnancy still running has no end.
    episode = {
        "resourceType": "EpisodeOfCare",
        "patient": {"reference": f"Patient/{MOTHER}"},
        "period": {"start": "2025-04-01T10:00:00+09:00"},
    }
    fields = indexing.index(episode)
    assert fields.date_start == utc(2025, 4, 1, 1)
    assert fields.date_end is None


def test_it_takes_the_first_date_element_present() -> None:
    # effective[x] is the clinically meaningful date; issued only when it is missing.
    both = observation(effectiveDateTime="2025-04-01", issued="2025-05-01T00:00:00Z")
    assert indexing.index(both).date_start == utc(2025, 3, 31, 15)
    only_issued = observation(issued="2025-05-01T00:00:00Z")
    assert indexing.index(only_issued).date_start == utc(2025, 5, 1)


# --- quantities ---------------------------------------------------------------------


def test_it_indexes_a_quantity_as_an_exact_decimal_with_its_code() -> None:
    # Decimal from the JSON text, not a float: 3.1 stays 3.1.
    fields = indexing.index(
        observation(valueQuantity={"value": 3.1, "unit": "kg", "system": terminology.UCUM,
                                   "code": "kg"})
    )
    assert fields.quantity_value == Decimal("3.1")
    assert fields.quantity_code == "kg"


def test_it_falls_back_to_the_unit_when_a_quantity_has_no_code() -> None:
    fields = indexing.index(observation(valueQuantity={"value": 120, "unit": "mmHg"}))
    assert fields.quantity_value == Decimal("120")
    assert fields.quantity_code == "mmHg"


def test_it_leaves_the_quantity_empty_without_a_value_quantity() -> None:
    fields = indexing.index(observation(valueString="陰性"))
    assert fields.quantity_value is None
    assert fields.quantity_code == ""


# --- reindex ------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_restores_corrupted_search_columns_on_reindex() -> None:
    # The JSON is the record and the index can always be rebuilt from it:
    # manage.py reindex puts back whatever a bad write did to the columns.
    provenance = Provenance.objects.create(origin=Provenance.Origin.SYSTEM, source="test")
    resource_id, _, _ = store.record_write(
        observation(
            effectiveDateTime="2025-04-01",
            valueQuantity={"value": 61.5, "unit": "kg", "system": terminology.UCUM, "code": "kg"},
        ),
        provenance=provenance,
        source=store.Source(MUNICIPAL_ROWS, "row-1"),
    )
    patient_id, _, _ = store.record_write(
        {"resourceType": "Patient", "birthDate": "2025-01-31"},
        provenance=provenance,
        source=store.Source(MUNICIPAL_ROWS, "patient-1"),
    )
    columns = [
        "compartments", "tokens", "refs", "status", "category", "sensitivity",
        "date_start", "date_end", "date_precision", "quantity_value", "quantity_code",
    ]
    expected = {
        row["id"]: row for row in Resource.objects.values("id", *columns)
    }
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE phr_resource SET compartments = '{}', tokens = '{}', refs = '{}', "
            "status = 'x', category = 'x', sensitivity = 'normal', date_start = NULL, "
            "date_end = NULL, date_precision = '', quantity_value = 0, quantity_code = ''"
        )
    assert Resource.objects.get(id=resource_id).compartments == []

    out = io.StringIO()
    call_command("reindex", stdout=out)

    assert "2" in out.getvalue()
    restored = {row["id"]: row for row in Resource.objects.values("id", *columns)}
    assert restored == expected
    assert restored[resource_id]["compartments"] == [MOTHER]
    assert restored[resource_id]["quantity_value"] == Decimal("61.5")
    assert restored[patient_id]["compartments"] == [patient_id]
    assert restored[patient_id]["date_start"] == utc(2025, 1, 30, 15)


def test_it_ignores_unknown_category_and_sensitivity_codes() -> None:
    # An odd label must not fail a chunk or change access: the dictionary
    # and the type decide instead.
    resource = {
        "resourceType": "Immunization",
        "meta": {
            "tag": [{"system": terminology.CATEGORY_SYSTEM, "code": "x" * 40}],
            "security": [{"system": terminology.SENSITIVITY_SYSTEM, "code": "public"}],
        },
        "status": "completed",
    }
    fields = indexing.index(resource)
    assert (fields.category, fields.sensitivity) == ("vaccinations", "normal")


def test_it_does_not_index_units_as_tokens_or_huge_quantities() -> None:
    resource = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "valueQuantity": {
            "value": 1e13,
            "unit": "kg",
            "system": "http://unitsofmeasure.org",
            "code": "kg",
        },
    }
    fields = indexing.index(resource)
    assert "http://unitsofmeasure.org|kg" not in fields.tokens
    assert fields.quantity_value is None
    assert fields.quantity_code == "kg"


def test_it_leaves_an_ongoing_period_open() -> None:
    # An active pregnancy that started on a date has no end yet.
    resource = {
        "resourceType": "EpisodeOfCare",
        "status": "active",
        "period": {"start": "2026-06-01"},
    }
    fields = indexing.index(resource)
    assert fields.date_end is None
    assert fields.date_precision == "day"
