"""Identity: matching patients by identifiers, merging two records of one
person (reversibly), linking a pregnancy to the child born of it, and the
lawful purge.

Patients are matched by identifiers (resident number within a municipality
code, MCH handbook number, clinic patient number) — never by name.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from phr import store
from phr.audit import audit_write
from phr.models import Patient, PatientLink, Provenance, Resource, User
from phr.services import provenance_create

PREGNANCY_CHILD_EXTENSION = "https://hagukumi.jp/fhir/StructureDefinition/pregnancy-child"


def patient_find_by_identifier(*, system: str, value: str) -> Patient | None:
    """The one patient carrying this identifier (system|value), else None."""
    ids = list(
        Resource.objects.filter(
            resource_type="Patient", deleted=False, tokens__contains=[f"{system}|{value}"]
        ).values_list("id", flat=True)[:2]
    )
    if len(ids) != 1:
        return None
    patient = Patient.objects.filter(pk=ids[0]).first()
    while patient is not None and patient.merged_into_id is not None:
        patient = patient.merged_into
    return patient


def _repoint(content: dict[str, Any], old: uuid.UUID, new: uuid.UUID) -> dict[str, Any]:
    import orjson

    raw = orjson.dumps(content).replace(f"Patient/{old}".encode(), f"Patient/{new}".encode())
    result: dict[str, Any] = orjson.loads(raw)
    return result


def _set_links(patient_id: uuid.UUID, links: list[dict[str, Any]], provenance: Provenance) -> None:
    row = Resource.objects.get(pk=patient_id)
    content = dict(row.content)
    if links:
        content["link"] = links
    else:
        content.pop("link", None)
    store.record_write(content, provenance=provenance, resource_id=patient_id)


@transaction.atomic
def patient_merge(*, survivor: Patient, merged: Patient, by: User, reason: str) -> PatientLink:
    """Fold `merged` into `survivor`: re-point every record of `merged` (a
    new version each), mark the Patient resources with Patient.link, and
    keep the list of moved records so the merge can be undone."""
    if survivor.pk == merged.pk:
        raise ValidationError("A patient cannot be merged into itself.")
    if merged.merged_into_id is not None or survivor.merged_into_id is not None:
        raise ValidationError("One of these patients was already merged.")
    provenance = provenance_create(
        origin=Provenance.Origin.SYSTEM,
        user=by,
        activity=Provenance.Activity.MERGE,
        source=f"merge {merged.pk} -> {survivor.pk}",
    )
    moved: list[uuid.UUID] = []
    rows = (
        Resource.objects.filter(compartments__overlap=[merged.pk], deleted=False)
        .exclude(pk=merged.pk)
        .order_by("pk")
    )
    for row in rows.iterator():
        store.record_write(
            _repoint(row.content, merged.pk, survivor.pk), provenance=provenance, resource_id=row.pk
        )
        moved.append(row.pk)
    _set_links(
        survivor.pk,
        [{"other": {"reference": f"Patient/{merged.pk}"}, "type": "replaces"}],
        provenance,
    )
    _set_links(
        merged.pk,
        [{"other": {"reference": f"Patient/{survivor.pk}"}, "type": "replaced-by"}],
        provenance,
    )
    merged.merged_into = survivor
    merged.save(update_fields=["merged_into"])
    link = PatientLink.objects.create(
        survivor=survivor, merged=merged, moved=moved, reason=reason, created_by=by
    )
    audit_write(
        action="patient.merge",
        actor_id=by.pk,
        patient_id=survivor.pk,
        purpose="operations",
        detail={"merged": str(merged.pk), "moved": len(moved), "link": link.pk},
    )
    return link


@transaction.atomic
def patient_unmerge(*, link: PatientLink, by: User) -> PatientLink:
    """Undo a merge: the moved records point at the merged patient again."""
    if link.undone_at is not None:
        return link
    provenance = provenance_create(
        origin=Provenance.Origin.SYSTEM,
        user=by,
        activity=Provenance.Activity.UNMERGE,
        source=f"unmerge link {link.pk}",
    )
    for row in Resource.objects.filter(pk__in=link.moved, deleted=False).order_by("pk"):
        store.record_write(
            _repoint(row.content, link.survivor_id, link.merged_id),
            provenance=provenance,
            resource_id=row.pk,
        )
    _set_links(link.survivor_id, [], provenance)
    _set_links(link.merged_id, [], provenance)
    Patient.objects.filter(pk=link.merged_id).update(merged_into=None)
    link.undone_at = timezone.now()
    link.undone_by = by
    link.save(update_fields=["undone_at", "undone_by"])
    audit_write(
        action="patient.unmerge",
        actor_id=by.pk,
        patient_id=link.survivor_id,
        purpose="operations",
        detail={"merged": str(link.merged_id), "link": link.pk},
    )
    return link


def pregnancy_link_child(
    *, episode_id: uuid.UUID, child: Patient, provenance: Provenance
) -> tuple[uuid.UUID, int, bool]:
    """Record on the pregnancy (EpisodeOfCare) which child was born of it."""
    row = Resource.objects.get(pk=episode_id, resource_type="EpisodeOfCare")
    content = dict(row.content)
    extensions = [
        e for e in content.get("extension", []) if e.get("url") != PREGNANCY_CHILD_EXTENSION
    ]
    children = [
        e for e in row.content.get("extension", []) if e.get("url") == PREGNANCY_CHILD_EXTENSION
    ]
    reference = f"Patient/{child.pk}"
    if not any(e["valueReference"]["reference"] == reference for e in children):
        children.append(
            {"url": PREGNANCY_CHILD_EXTENSION, "valueReference": {"reference": reference}}
        )
    content["extension"] = extensions + children
    return store.record_write(content, provenance=provenance, resource_id=episode_id)


@transaction.atomic
def patient_purge(*, patient: Patient, by: User, reason: str) -> int:
    """Lawful deletion: remove every record of the patient, history
    included, and the identity row. Only a platform admin may; the audit
    row stays (it holds no clinical data)."""
    if not by.is_platform_admin:
        raise PermissionDenied("Only a platform administrator may purge records.")
    if not reason.strip():
        raise ValidationError("A purge needs its legal reason.")
    removed = store.records_purge(patient_id=patient.pk)
    patient_id = patient.pk
    PatientLink.objects.filter(survivor=patient).delete()
    PatientLink.objects.filter(merged=patient).delete()
    patient.delete()
    audit_write(
        action="patient.purge",
        actor_id=by.pk,
        actor_role="admin",
        patient_id=patient_id,
        purpose="operations",
        detail={"removed": removed, "reason": reason[:200]},
    )
    return removed
