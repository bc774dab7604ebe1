"""No patient data in application logs (ASVS 7.1.1/7.1.2, 8.3.5): a family
whose names and resident number are canaries goes through reads, writes and
errors — pages, the FHIR API with a session and a token, a failing FHIR
write, 404s, a refused write, a revoked consent — with every logger at
DEBUG, and the canaries never appear in a log record's message, arguments
or exception text.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client

from phr import services
from phr.authentication import api_token_create
from phr.models import Guardianship, Patient, Provenance, User
from phr.terminology import Category
from sharing.models import ConsentPurpose
from sharing.services import consent_grant, consent_revoke
from tests import factories as f

pytestmark = pytest.mark.django_db

FAMILY = "カナリア"
GIVEN = "ツグミ"
RESIDENT_NUMBER = "CANARY-123456"
NOTE = "CANARY-NOTE-7f3a"  # free text a parent typed
CANARIES = (FAMILY, GIVEN, RESIDENT_NUMBER, NOTE)
FHIR_JSON = "application/fhir+json"


@pytest.fixture
def every_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog at DEBUG for the root logger and every named logger, including
    those that do not propagate to the root."""
    caplog.set_level(logging.DEBUG)
    changed: list[tuple[logging.Logger, int, bool]] = []
    for name in list(logging.root.manager.loggerDict):
        logger = logging.getLogger(name)
        changed.append((logger, logger.level, logger.propagate))
        logger.setLevel(logging.DEBUG)
        if not logger.propagate:
            logger.addHandler(caplog.handler)
    yield caplog
    for logger, level, _propagate in changed:
        logger.setLevel(level)
        if caplog.handler in logger.handlers:
            logger.removeHandler(caplog.handler)


def record_text(record: logging.LogRecord) -> str:
    parts = [str(record.msg), repr(record.args)]
    with contextlib.suppress(TypeError, ValueError):  # a malformed record still counts
        parts.append(record.getMessage())
    if record.exc_info:
        parts.append(logging.Formatter().formatException(record.exc_info))
    if record.exc_text:
        parts.append(record.exc_text)
    return "\n".join(parts)


def assert_no_canary(caplog: pytest.LogCaptureFixture) -> None:
    leaks = [
        f"{record.name} {record.levelname}: {record_text(record)[:300]}"
        for record in caplog.records
        if any(canary in record_text(record) for canary in CANARIES)
    ]
    assert not leaks, "patient data in the logs:\n" + "\n".join(leaks)


@pytest.fixture
def canary_family(municipality: Any, clinic: Any) -> dict[str, Any]:
    mother = f.UserFactory(email="canary@example.jp", display_name=f"{FAMILY} {GIVEN}")
    patient = f.make_patient(kind=Patient.Kind.ADULT, family=FAMILY, given=GIVEN, account=mother)
    services.residency_add(
        patient=patient, municipality=municipality, resident_number=RESIDENT_NUMBER
    )
    child = f.make_patient(family=FAMILY, given="ヒナ")
    services.guardianship_add(
        guardian=mother, child=child, relationship=Guardianship.Relationship.MOTHER
    )
    services.residency_add(
        patient=child, municipality=municipality, resident_number=RESIDENT_NUMBER + "-2"
    )
    record = f.write_observation(
        child, origin=Provenance.Origin.MUNICIPALITY, organization=municipality
    )
    return {"mother": mother, "patient": patient, "child": child, "record": record}


def client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_no_canary_reaches_the_logs(
    every_log: pytest.LogCaptureFixture,
    canary_family: dict[str, Any],
    clinic: Any,
    clinician: User,
    municipal_officer: User,
    stranger: User,
) -> None:
    mother = canary_family["mother"]
    patient, child = canary_family["patient"], canary_family["child"]
    family = client_for(mother)
    # Reads: pages and the API, with a session and with a token.
    assert family.get("/").status_code == 200
    assert family.get(f"/people/{child.pk}/").status_code == 200
    assert family.get(f"/fhir/Patient/{patient.pk}").status_code == 200
    _, secret = api_token_create(user=municipal_officer, name="town system")
    token = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    search = token.get(
        "/fhir/Patient",
        {"identifier": RESIDENT_NUMBER},  # PHI in a query string
    )
    assert search.status_code == 200
    assert token.get("/fhir/Observation", {"patient": str(child.pk)}).status_code == 200
    # Writes: a record with a note, the mother's own name changed back and forth.
    observation = f.observation(child)
    observation["note"] = [{"text": NOTE}]
    created = family.post("/fhir/Observation", json.dumps(observation), content_type=FHIR_JSON)
    assert created.status_code == 201
    own = family.get(f"/fhir/Patient/{patient.pk}").json()
    own["name"][0]["given"] = [GIVEN, GIVEN]
    put = family.put(f"/fhir/Patient/{patient.pk}", json.dumps(own), content_type=FHIR_JSON)
    assert put.status_code == 200
    # Errors: a failing FHIR write (invalid, and not JSON), a refused write, 404s.
    invalid = dict(observation, status=NOTE, valueQuantity={"value": FAMILY})
    failed = family.post("/fhir/Observation", json.dumps(invalid), content_type=FHIR_JSON)
    assert failed.status_code == 400
    broken = family.post("/fhir/Observation", f'{{"note": "{NOTE}", ', content_type=FHIR_JSON)
    assert broken.status_code == 400
    outsider = client_for(stranger)
    refused = outsider.post("/fhir/Observation", json.dumps(observation), content_type=FHIR_JSON)
    assert refused.status_code == 403
    assert outsider.get(f"/fhir/Patient/{patient.pk}").status_code == 404
    assert outsider.get(f"/people/{child.pk}/").status_code == 404
    assert family.get(f"/fhir/Observation/{FAMILY}").status_code == 404
    bad_search = family.get("/fhir/Patient", {"name:fuzzy": FAMILY})
    assert bad_search.status_code == 400
    # Consent: granted, used by the clinic, revoked (the grantee is emailed).
    consent = consent_grant(
        patient=child,
        by=mother,
        purpose=ConsentPurpose.CARE,
        categories=[Category.VITALS],
        grantee_org=clinic,
    )
    assert client_for(clinician).get(f"/people/{child.pk}/").status_code == 200
    consent_revoke(consent=consent, by=mother)
    # Login failures with the family's email, and the API without credentials.
    Client().post("/accounts/login/", {"login": mother.email, "password": FAMILY})
    assert Client().get(f"/fhir/Patient/{patient.pk}").status_code == 401

    # Django logs the 4xx responses (django.request): the capture works.
    assert any(r.name == "django.request" for r in every_log.records)
    assert_no_canary(every_log)


def test_the_capture_would_see_a_canary(every_log: pytest.LogCaptureFixture) -> None:
    # The control case: a canary logged by any logger is caught.
    logging.getLogger("phr.fhir_api").debug("writing %s", RESIDENT_NUMBER)
    with pytest.raises(AssertionError, match="patient data in the logs"):
        assert_no_canary(every_log)
