"""FHIR at the boundary: validation of resources from outside, and the
FHIR JSON of stored rows.

Anything that comes from outside (a FHIR Bundle, a device payload) is
checked with fhir.resources' R4B models before it reaches the store
(`validate_resource`); a failure is reported as an OperationOutcome whose
issues name the offending element with a FHIRPath-like expression
("Observation.valueQuantity.value"). Records our own mappers build are
valid by construction and are not re-validated on the hot path
(ARCHITECTURE.md, "Valid at the boundary").

fhir.resources checks structure (required elements, types, unknown
elements, choice types), not codes or value sets: check the codes we rely
on ourselves. It reports a missing required element only once the
elements present are sound, so a client may have to fix in two rounds.

`to_fhir` turns a stored row (phr.Resource or phr.ResourceHistory) back into
the resource as a client sees it: the store keeps `id`, `meta.versionId`
and `meta.lastUpdated` in columns, not in the JSON (store.canonical_content).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from phr.indexing import SUPPORTED_TYPES
from phr.models import Resource, ResourceHistory

# (element path, reason): e.g. ("Observation.valueQuantity.value", "…").
Issue = tuple[str, str]

# The resource types the store accepts are the ones accepted at the
# boundary: validating a type we could not store would only defer the error.
ACCEPTED_TYPES = SUPPORTED_TYPES

# fhir.resources reports a choice-type clash (valueQuantity and valueString
# both present) on the resource itself, naming the candidates in the text;
# we recover "value[x]" from it so the path points at the element.
_CHOICE_NAMES = re.compile(r"\[([^\]]*)\]")
_CHOICE_CLASH = "Any of one field value is expected"


class FhirValidationError(Exception):
    """A resource from outside that is not valid FHIR R4(B).

    `issues` lists (element path, reason) pairs; `operation_outcome(issues)`
    renders them for an API response.
    """

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = issues
        summary = "; ".join(f"{path}: {reason}" for path, reason in issues[:5])
        if len(issues) > 5:
            summary += f"; … ({len(issues)} issues)"
        super().__init__(summary)


def _path(resource_type: str, loc: tuple[int | str, ...]) -> str:
    """pydantic's loc tuple as a FHIRPath-like expression:
    ("name", 1, "given", 0) → "Patient.name[1].given[0]"."""
    path = resource_type
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}"
    return path


def _choice_element(message: str) -> str | None:
    """The "value[x]" element a choice-type error is about, if the message
    lists its candidates (["valueBoolean", "valueQuantity", …])."""
    match = _CHOICE_NAMES.search(message)
    if match is None:
        return None
    names = [name.strip().strip("'\"") for name in match.group(1).split(",")]
    names = [name for name in names if name]
    if len(names) < 2:
        return None
    prefix = names[0]
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    # The common prefix of valueBoolean, valueQuantity … is "value"; stop at
    # a lower-case prefix so "valueC…" siblings do not eat into the name.
    while prefix and not prefix[-1].islower():
        prefix = prefix[:-1]
    return f"{prefix}[x]" if prefix else None


def _reason(error: dict[str, Any]) -> str:
    if error.get("type") == "json_invalid":
        # pydantic tried to parse a string where an object belongs.
        return "Input should be a JSON object"
    message = str(error.get("msg", "invalid"))
    return message.removeprefix("Value error, ").strip()


def _nul_paths(node: Any, path: str) -> Iterator[str]:
    """Element paths of strings holding U+0000, which FHIR forbids and
    PostgreSQL's jsonb cannot store."""
    if isinstance(node, str):
        if "\x00" in node:
            yield path
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _nul_paths(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _nul_paths(value, f"{path}[{index}]")


def validate_resource(resource: object) -> None:
    """Raise FhirValidationError unless `resource` is a valid R4(B) resource
    of a type the store supports."""
    if not isinstance(resource, dict):
        raise FhirValidationError([("", "A resource must be a JSON object")])
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        raise FhirValidationError([("resourceType", "resourceType is required")])
    if resource_type not in ACCEPTED_TYPES:
        raise FhirValidationError(
            [(resource_type, f"Unsupported resource type {resource_type!r}")]
        )
    nul_paths = list(_nul_paths(resource, resource_type))
    if nul_paths:
        raise FhirValidationError(
            [(path, "Text may not contain the NUL character (U+0000)") for path in nul_paths]
        )
    model = get_fhir_model_class(resource_type)
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        issues: list[Issue] = []
        for error in exc.errors():
            loc = tuple(error.get("loc") or ())
            reason = _reason(dict(error))
            path = _path(resource_type, loc)
            if reason.startswith(_CHOICE_CLASH):
                element = _choice_element(reason)
                if element is not None:
                    path = f"{path}.{element}"
            issues.append((path, reason))
        raise FhirValidationError(issues) from exc


def operation_outcome(issues: list[Issue], *, code: str = "invalid") -> dict[str, Any]:
    """An OperationOutcome with one error issue per (path, reason)."""
    out: list[dict[str, Any]] = []
    for path, reason in issues:
        issue: dict[str, Any] = {"severity": "error", "code": code, "diagnostics": reason}
        if path:
            issue["expression"] = [path]
        out.append(issue)
    return {"resourceType": "OperationOutcome", "issue": out}


def fhir_instant(moment: datetime) -> str:
    """A FHIR instant in UTC ("2025-04-01T01:02:03.456789Z")."""
    text = moment.astimezone(UTC).isoformat(timespec="microseconds")
    return text.removesuffix("+00:00") + "Z"


def to_fhir(row: Resource | ResourceHistory) -> dict[str, Any]:
    """The FHIR JSON of a stored version: resourceType, id, meta (versionId
    and lastUpdated merged into the stored meta), then the rest.

    A tombstone renders its last content; the caller decides what a deleted
    record means for its reader (a FHIR read answers 410 Gone).
    """
    content: dict[str, Any] = row.content
    resource_id = row.resource_id if isinstance(row, ResourceHistory) else row.pk
    stored_meta = content.get("meta")
    meta: dict[str, Any] = {
        "versionId": str(row.version),
        "lastUpdated": fhir_instant(row.last_updated),
    }
    if isinstance(stored_meta, dict):
        meta.update(
            (k, v) for k, v in stored_meta.items() if k not in ("versionId", "lastUpdated")
        )
    out: dict[str, Any] = {
        "resourceType": content.get("resourceType", row.resource_type),
        "id": str(resource_id),
        "meta": meta,
    }
    for key, value in content.items():
        if key not in ("resourceType", "id", "meta"):
            out[key] = value
    return out
