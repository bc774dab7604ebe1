"""The device endpoints, under /vitals/devices/api/, for a registered
device's token only (vitals.devices.DeviceTokenAuthentication):

- ``POST Observation`` one vital-sign Observation (FHIR R4 JSON);
- ``POST Bundle`` a transaction (all or nothing) or batch (each entry on
  its own) of vital-sign Observations;
- ``POST omh`` an Open mHealth data point, or a JSON array of them
  (omh:blood-pressure:3.x, omh:body-weight:2.x, omh:heart-rate:2.x).

A device writes vitals for the one person it was registered for, and
reads nothing: an Observation's subject, if given, must be that person;
the answers hold only what the device sent (as stored). Re-sending the
same reading adds nothing (the record's identity is device + person +
kind + instant, vitals.records.vital_identity). Every error is an
OperationOutcome naming the element (as the FHIR API's, phr.fhir_api);
an unknown or revoked token gets 401.
"""

from __future__ import annotations

from typing import Any

import orjson
from rest_framework import exceptions, permissions, throttling
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from phr.fhir import FhirValidationError, operation_outcome, to_fhir, validate_resource
from phr.fhir_api import (
    FhirError,
    FhirJsonRenderer,
    fhir_exception_handler,
)
from phr.models import Resource
from vitals import device_formats, device_writes, records
from vitals.devices import DeviceTokenAuthentication
from vitals.models import Device

MAX_BYTES = 5 * 1024 * 1024
MAX_ENTRIES = 1000
_REASONS = {400: "Bad Request", 403: "Forbidden", 413: "Payload Too Large"}
_JSON_TYPES = frozenset({"application/json", "application/fhir+json", "application/json+fhir"})


class IsDevice(permissions.BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.auth, Device)


class DeviceRateThrottle(throttling.SimpleRateThrottle):
    """The API's rate, per device (devices have no user id)."""

    scope = "user"

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        if not isinstance(request.auth, Device):
            return None
        return self.cache_format % {"scope": "device", "ident": request.auth.pk}


def _problems_error(exc: device_formats.PayloadError, prefix: str = "") -> FhirError:
    issues = [(prefix + p.field, f"{p.text} (value: {p.value})" if p.value else p.text)
              for p in exc.problems]  # fmt: skip
    return FhirError(400, issues[0][1], issues=issues)


def _read_json(request: Request) -> Any:
    media_type = (request.content_type or "").split(";", 1)[0].strip().lower()
    if media_type not in _JSON_TYPES:
        raise exceptions.UnsupportedMediaType(media_type or "(none)")
    raw = request._request.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise FhirError(413, "The body is larger than 5 MB", code="too-costly")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise FhirError(400, f"The body is not JSON (cut off?): {exc}", code="structure") from None


class DeviceView(APIView):
    authentication_classes = [DeviceTokenAuthentication]
    permission_classes = [IsDevice]
    throttle_classes = [DeviceRateThrottle]
    renderer_classes = [FhirJsonRenderer]
    # The body is read by _read_json (size cap first, then orjson).
    parser_classes: list[Any] = []
    schema = None
    metadata_class = None

    def get_exception_handler(self) -> Any:
        return fhir_exception_handler

    @property
    def device(self) -> Device:
        device = self.request.auth
        assert isinstance(device, Device)
        return device

    def observation_reading(self, body: Any, prefix: str = "") -> records.Reading:
        """A posted Observation, checked: valid FHIR, about this device's
        person, a vital sign we know."""
        if not isinstance(body, dict) or body.get("resourceType") != "Observation":
            raise FhirError(
                400, "The resource must be an Observation", path=prefix + "resourceType"
            )
        try:
            validate_resource(body)
        except FhirValidationError as exc:
            raise FhirError(
                400, str(exc), issues=[(prefix + p, r) for p, r in exc.issues]
            ) from None
        subject = body.get("subject")
        if subject is not None:
            expected = f"Patient/{self.device.patient_id}"
            if not isinstance(subject, dict) or subject.get("reference") != expected:
                # Said the same way whether or not that other person exists.
                raise FhirError(
                    403,
                    "This device writes only for the person it was registered for; "
                    f"leave out subject or use {{'reference': '{expected}'}}",
                    code="forbidden",
                    path=prefix + "Observation.subject",
                )
        try:
            return device_formats.reading_from_observation(body)
        except device_formats.PayloadError as exc:
            raise _problems_error(exc, prefix) from None

    def write(
        self, readings: list[records.Reading], wheres: list[str], api: str
    ) -> device_writes.DeviceWrite:
        try:
            return device_writes.write_from_device(
                device=self.device, readings=readings, wheres=wheres, api=api
            )
        except device_formats.PayloadError as exc:
            raise _problems_error(exc) from None
        except device_writes.RegistrantLostAccess:
            raise FhirError(
                403,
                "The person who registered this device may no longer record this "
                "person's vitals; register the device again",
                code="forbidden",
            ) from None

    def stored(self, written: records.Written) -> dict[str, Any]:
        return to_fhir(Resource.objects.get(pk=written.id))


class ObservationView(DeviceView):
    def post(self, request: Request) -> Response:
        reading = self.observation_reading(_read_json(request))
        result = self.write([reading], ["Observation"], "fhir-observation")
        written = result.written[0]
        body = self.stored(written)
        return Response(
            body,
            status=201 if written.created else 200,
            headers={
                "Location": f"Observation/{written.id}/_history/{body['meta']['versionId']}",
                "ETag": f'W/"{body["meta"]["versionId"]}"',
            },
        )


def _status(written: records.Written) -> str:
    return "201 Created" if written.created else "200 OK"


class BundleView(DeviceView):
    def post(self, request: Request) -> Response:
        body = _read_json(request)
        if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
            raise FhirError(400, "The body must be a Bundle", path="Bundle.resourceType")
        kind = body.get("type")
        if kind not in ("transaction", "batch"):
            raise FhirError(
                400, f"Bundle.type must be transaction or batch, not {kind!r}", path="Bundle.type"
            )
        entries = body.get("entry") or []
        if not isinstance(entries, list) or not entries:
            raise FhirError(400, "The Bundle has no entries", path="Bundle.entry")
        if len(entries) > MAX_ENTRIES:
            raise FhirError(
                413, f"At most {MAX_ENTRIES} entries per Bundle", code="too-costly",
                path="Bundle.entry",
            )  # fmt: skip
        readings: dict[int, records.Reading] = {}
        errors: dict[int, FhirError] = {}
        for index, entry in enumerate(entries):
            prefix = f"Bundle.entry[{index}]."
            try:
                if not isinstance(entry, dict):
                    raise FhirError(400, "An entry must be an object", path=prefix.rstrip("."))
                method = (entry.get("request") or {}).get("method", "POST")
                if method != "POST":
                    raise FhirError(
                        400, f"Devices only create (POST), not {method}",
                        path=prefix + "request.method",
                    )  # fmt: skip
                reading = self.observation_reading(entry.get("resource"), prefix + "resource.")
                readings[index] = records.reading_check(reading)
            except FhirError as exc:
                errors[index] = exc
            except records.VitalError as exc:
                errors[index] = FhirError(
                    400, f"{exc.ja} / {exc.en}", path=f"{prefix}resource ({exc.field})"
                )
        if kind == "transaction" and errors:
            issues = [issue for exc in errors.values() for issue in exc.issues]
            status = max(exc.status_code for exc in errors.values())
            raise FhirError(status, issues[0][1], issues=issues)
        order = sorted(readings)
        response_entries: dict[int, dict[str, Any]] = {}
        if order:
            result = self.write(
                [readings[i] for i in order], [f"Bundle.entry[{i}]" for i in order], kind
            )
            versions = _versions([w.id for w in result.written])
            for index, written in zip(order, result.written, strict=True):
                response_entries[index] = {
                    "response": {
                        "status": _status(written),
                        "location": f"Observation/{written.id}/_history/{versions[written.id]}",
                    }
                }
        for index, exc in errors.items():
            response_entries[index] = {
                "response": {
                    "status": f"{exc.status_code} {_REASONS.get(exc.status_code, 'Error')}",
                    "outcome": operation_outcome(exc.issues, code=exc.code),
                }
            }
        return Response(
            {
                "resourceType": "Bundle",
                "type": f"{kind}-response",
                "entry": [response_entries[i] for i in range(len(entries))],
            },
            status=200,
        )


def _versions(ids: list[Any]) -> dict[Any, int]:
    return dict(Resource.objects.filter(pk__in=ids).values_list("pk", "version"))


class OpenMHealthView(DeviceView):
    def post(self, request: Request) -> Response:
        payload = _read_json(request)
        try:
            readings = device_formats.readings_from_omh(payload)
        except device_formats.PayloadError as exc:
            raise _problems_error(exc) from None
        many = isinstance(payload, list)
        wheres = [f"$[{i}]" if many else "$" for i in range(len(readings))]
        result = self.write(readings, wheres, "open-mhealth")
        return Response(
            {
                "resourceType": "Bundle",
                "type": "batch-response",
                "entry": [
                    {"response": {"status": _status(w), "location": f"Observation/{w.id}"}}
                    for w in result.written
                ],
            },
            status=201 if result.created else 200,
        )
