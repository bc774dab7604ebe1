"""A handbook page runs the same number of SQL queries whatever the number
of records: a child with five years of records (30 vaccinations, 200
dispensings, 2,000 home measurements) and one with a tenth of them."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
import time_machine
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from phr.models import Guardianship
from phr.services import guardianship_add
from tests import factories as f
from tests.phr import handbook_data as data

pytestmark = pytest.mark.django_db

BIRTH = date(2021, 10, 1)


def _child(mother: Any, municipality: Any, scale: float) -> Any:
    child = f.make_patient(given=f"子{scale}", birth_date=BIRTH)
    # From birth, not from today: the requests below run on a fixed day.
    guardianship_add(
        guardian=mother,
        child=child,
        relationship=Guardianship.Relationship.MOTHER,
        valid_from=BIRTH,
    )
    counts = data.five_years(child=child, birth=BIRTH, municipality=municipality, scale=scale)
    assert counts["vitals"] == round(2000 * scale)
    return child


def _queries(client: Client, url: str) -> int:
    client.get(url)  # the user's grants are kept between requests: warm them
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200
    return len(captured.captured_queries)


def test_the_page_asks_as_many_queries_for_a_big_record_as_for_a_small_one(
    mother: Any, municipality: Any
) -> None:
    small = _child(mother, municipality, 0.1)
    big = _child(mother, municipality, 1.0)
    client = Client()
    client.force_login(mother)
    with time_machine.travel("2026-11-26 10:00 +0900", tick=False):
        for name in ("handbook:book", "handbook:print"):
            few = _queries(client, reverse(name, args=[small.pk]))
            many = _queries(client, reverse(name, args=[big.pk]))
            assert few == many, (name, few, many)
            # 14 for the handbook itself + the vitals alert banner's (issue 7).
            assert many <= 16, many
