"""The bulk path works under DEBUG too (make run), where Django wraps the
cursor in its debug wrapper."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection

from phr import services, store
from phr.models import Provenance
from tests import factories as f

pytestmark = pytest.mark.django_db


def test_it_writes_in_bulk_through_the_debug_cursor(child: Any) -> None:
    connection.force_debug_cursor = True
    try:
        prov = services.provenance_create(origin=Provenance.Origin.SYSTEM)
        items = [
            (f.observation(child, value=3 + i), store.Source("urn:debug", str(i)))
            for i in range(3)
        ]
        result = store.records_write_bulk(items, provenance=prov)
    finally:
        connection.force_debug_cursor = False
    assert len(result.created) == 3
