"""A stranger gets 404 for another family on every page and API route, and
empty lists (ASVS 4.2.1, IDOR). The matrix is built from the URL
resolver, so a new route with an id in its path must be added here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from phr.indexing import SUPPORTED_TYPES
from phr.models import Resource
from tests import factories as f

pytestmark = pytest.mark.django_db

# Routes whose path parameters we know how to fill, and how.
KNOWN_PARAMETERS = {
    "patient_id",
    "resource_type",
    "resource_id",
    "version_id",
}
IGNORED_PREFIXES = ("admin/", "accounts/", "i18n/", "api/schema")


def _walk(patterns: list[Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern), pattern


def routes_with_ids() -> list[str]:
    found = []
    for route, pattern in _walk(get_resolver().url_patterns):
        if route.startswith(IGNORED_PREFIXES) or "^" in route:
            continue
        params = set(pattern.pattern.converters)
        if not params or params == {"resource_type"}:
            continue  # no id in the path: a list, covered by the empty-list test
        unknown = params - KNOWN_PARAMETERS
        assert not unknown, f"route {route} has parameters {unknown}: add it to this matrix"
        found.append(route)
    return found


def _fill(route: str, *, resource_type: str, resource_id: str, patient_id: str) -> str:
    return "/" + (
        route.replace("<uuid:patient_id>", patient_id)
        .replace("<str:resource_type>", resource_type)
        .replace("<str:resource_id>", resource_id)
        .replace("<str:version_id>", "1")
    )


def test_it_finds_the_routes_it_must_check() -> None:
    routes = routes_with_ids()
    assert any("people" in r for r in routes)
    assert any(r.startswith("fhir/") for r in routes)


def test_a_stranger_gets_404_on_every_route_for_another_familys_records(
    stranger: Any, mother_patient: Any, child: Any
) -> None:
    f.write_observation(child)
    f.write_observation(mother_patient)
    client = APIClient()
    client.force_login(stranger)
    checked = 0
    for route in routes_with_ids():
        targets = [("Patient", child.pk), ("Patient", mother_patient.pk)]
        targets += [
            (row.resource_type, row.pk)
            for row in Resource.objects.exclude(resource_type="Patient")
        ]
        for resource_type, resource_id in targets:
            url = _fill(
                route,
                resource_type=resource_type,
                resource_id=str(resource_id),
                patient_id=str(resource_id if resource_type == "Patient" else child.pk),
            )
            response = client.get(url)
            assert response.status_code == 404, url
            checked += 1
    assert checked >= 6


def test_a_stranger_sees_empty_lists_for_every_type(stranger: Any, child: Any) -> None:
    f.write_observation(child)
    client = APIClient()
    client.force_login(stranger)
    for resource_type in sorted(SUPPORTED_TYPES):
        response = client.get(f"/fhir/{resource_type}")
        assert response.status_code == 200
        body = response.json()
        assert body["total"] == 0
        assert body.get("entry", []) == []
        if resource_type != "Patient":
            response = client.get(f"/fhir/{resource_type}?patient={child.pk}")
            assert response.json()["total"] == 0


def test_the_owner_reaches_the_same_routes(mother: Any, child: Any) -> None:
    # The control case: the same URLs work for the family, so the 404s
    # above are about access, not broken URLs.
    f.write_observation(child)
    client = APIClient()
    client.force_login(mother)
    for route in routes_with_ids():
        url = _fill(
            route, resource_type="Patient", resource_id=str(child.pk), patient_id=str(child.pk)
        )
        assert client.get(url).status_code == 200, url
