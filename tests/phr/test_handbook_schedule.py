"""The handbook's schedule sections: the next vaccinations (due and
overdue first, with the recommended window and the earliest day), the
checkup schedule (done / due) and the vaccination table by series, as
phr.schedules computes them — the handbook only shows them."""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Any

import pytest
import time_machine
from django.test import Client
from django.urls import reverse

from phr import store
from phr.models import Provenance
from tests.phr import handbook_data as data

pytestmark = pytest.mark.django_db

BIRTH = date(2025, 9, 1)  # the child fixture's birth date


@pytest.fixture(autouse=True)
def _today() -> Any:
    with time_machine.travel("2026-11-26 10:00 +0900", tick=False):
        yield


def page_of(user: Any, child: Any) -> str:
    client = Client()
    client.force_login(user)
    response = client.get(reverse("handbook:book", args=[child.pk]))
    assert response.status_code == 200
    return response.content.decode()


def next_items(html: str) -> list[tuple[str, str]]:
    """(series, status) of the next-vaccination items, in page order."""
    section = html[html.index('id="next-vaccinations"') : html.index('id="checkup-schedule"')]
    return re.findall(r'data-series="([^"]+)" data-status="([^"]+)"', section)


def test_it_lists_the_next_vaccinations_due_and_overdue_first(mother: Any, child: Any) -> None:
    # A child of 1 year 2 months with no vaccination recorded: the MR first
    # dose (1歳から2歳まで, immunization_schedule_jp.csv) is due now, the
    # infant series started at 2 months are overdue or past.
    html = page_of(mother, child)
    items = next_items(html)
    assert ("mr", "due") in items
    statuses = [status for _series, status in items]
    urgency = {"overdue": 0, "due": 1, "upcoming": 2}
    assert statuses == sorted(statuses, key=urgency.__getitem__)
    mr = html[html.index('data-series="mr" data-status="due"') :]
    mr = mr[: mr.index("</li>")]
    # The recommended window starts at the first birthday's eve (民法:
    # 1歳 is reached the day before the birthday) and the earliest day is shown.
    assert 'class="hb-earliest" datetime="2026-08-31"' in mr
    assert 'class="hb-window-from"' in mr


def test_it_shows_the_checkup_schedule_done_and_due(
    mother: Any, child: Any, municipality: Any
) -> None:
    data.child_records(
        child=child, birth=BIRTH, anchor=BIRTH + timedelta(days=420), municipality=municipality
    )
    html = page_of(mother, child)
    section = html[html.index('id="checkup-schedule"') :]
    assert re.search(r'data-checkup="1m" data-status="done"', section)
    assert re.search(r'data-checkup="18m" data-status="upcoming"', section)


def test_a_dose_reported_by_two_sources_is_one_dose_with_both_sources(
    mother: Any, child: Any, municipality: Any
) -> None:
    day = date(2026, 9, 2)
    write = data.write_items
    write(
        [(data.immunization(child, day, "mr", 1), store.Source("urn:t:muni", "mr1"))],
        origin=Provenance.Origin.MUNICIPALITY,
        organization=municipality,
    )
    write(
        [
            (
                data.immunization(child, day + timedelta(days=1), "mr", 1),
                store.Source("urn:t:p", "1"),
            )
        ],
        origin=Provenance.Origin.SELF,
    )
    html = page_of(mother, child)
    table = html[html.index('class="hb-table hb-vaccinations hb-series-table"') :]
    row = table[table.index('data-series="mr"') :]
    row = row[: row.index("</tr>")]
    assert row.count('class="hb-dose"') == 1
    assert "badge-municipality" in row
    assert "badge-self" in row
    assert ("mr", "due") not in next_items(html)
