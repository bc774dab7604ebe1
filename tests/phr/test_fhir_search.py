"""The FHIR search parser on its own: values, dates and page sizes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from django.test.utils import override_settings

from phr.fhir_search import SearchError, page_size, parse_date_value, split_or, split_token
from phr.indexing import LOCAL_TZ

JST = timezone(timedelta(hours=9))


def test_it_splits_alternatives_on_unescaped_commas_only() -> None:
    assert split_or(r"a,b\,c") == ["a", "b,c"]
    assert split_token("http://loinc.org|29463-7") == ("http://loinc.org", "29463-7")
    assert split_token("29463-7") == (None, "29463-7")
    assert split_token(r"urn:x\|y|1") == ("urn:x|y", "1")


@pytest.mark.parametrize(
    ("value", "prefix", "first", "last"),
    [
        # a date is a Japanese calendar day (or month, or year)
        (
            "2026",
            "eq",
            datetime(2026, 1, 1, tzinfo=LOCAL_TZ),
            datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=LOCAL_TZ),
        ),
        (
            "lt2026-02",
            "lt",
            datetime(2026, 2, 1, tzinfo=LOCAL_TZ),
            datetime(2026, 2, 28, 23, 59, 59, 999999, tzinfo=LOCAL_TZ),
        ),
        (
            "ge2026-01-15",
            "ge",
            datetime(2026, 1, 15, tzinfo=LOCAL_TZ),
            datetime(2026, 1, 15, 23, 59, 59, 999999, tzinfo=LOCAL_TZ),
        ),
        # minutes and seconds cover the whole minute or second; the offset's
        # colon is not a time separator
        (
            "2026-01-15T10:30+09:00",
            "eq",
            datetime(2026, 1, 15, 10, 30, tzinfo=JST),
            datetime(2026, 1, 15, 10, 30, 59, 999999, tzinfo=JST),
        ),
        (
            "2026-01-15T10:30:05Z",
            "eq",
            datetime(2026, 1, 15, 10, 30, 5, tzinfo=UTC),
            datetime(2026, 1, 15, 10, 30, 5, 999999, tzinfo=UTC),
        ),
        # a time without an offset is Japan time, as the index stores it
        (
            "sa2026-01-15T10:30:05",
            "sa",
            datetime(2026, 1, 15, 10, 30, 5, tzinfo=LOCAL_TZ),
            datetime(2026, 1, 15, 10, 30, 5, 999999, tzinfo=LOCAL_TZ),
        ),
        # fractional seconds: one instant
        (
            "2026-01-15T10:30:05.25Z",
            "eq",
            datetime(2026, 1, 15, 10, 30, 5, 250000, tzinfo=UTC),
            datetime(2026, 1, 15, 10, 30, 5, 250000, tzinfo=UTC),
        ),
        # an unencoded "+" arrives as a space
        (
            "2026-01-15T10:30:05 09:00",
            "eq",
            datetime(2026, 1, 15, 10, 30, 5, tzinfo=JST),
            datetime(2026, 1, 15, 10, 30, 5, 999999, tzinfo=JST),
        ),
    ],
)
def test_it_turns_a_date_into_the_interval_its_precision_implies(
    value: str, prefix: str, first: datetime, last: datetime
) -> None:
    assert parse_date_value(value) == (prefix, first, last)


@pytest.mark.parametrize("value", ["ap2026", "2026-13", "2026-02-30", "15/01/2026", "xx2026"])
def test_it_refuses_dates_it_cannot_read(value: str) -> None:
    with pytest.raises(SearchError):
        parse_date_value(value)


@override_settings(FHIR_PAGE_SIZE=50, FHIR_MAX_PAGE_SIZE=500)
def test_it_defaults_and_caps_the_page_size() -> None:
    assert page_size([]) == 50
    assert page_size(["0"]) == 0
    assert page_size(["10000"]) == 500
    for bad in (["-1"], ["ten"], ["1", "2"]):
        with pytest.raises(SearchError):
            page_size(bad)
