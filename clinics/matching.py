"""Matching a Patient that a clinic's system sends (a POST /fhir Bundle,
phr/fhir_bundle.py, or a clinic feed page, clinics/fhir_feed.py) to a
person already known here, by identifier (docs/decisions/0011-fhir-bundles
.md, "Matching a clinic's Patient").

- Candidates are the persons whose stored Patient resource carries one of
  the incoming Patient's identifiers (system and value, exactly: the MCH
  handbook number and resident number the municipality stored, the
  identifiers an earlier Bundle or feed page gave), merges followed to the
  record that survived.
- Only persons the sending clinic may know count: the policy point decides
  (sharing.access.may_know: an active care consent naming the clinic, or a
  patient the clinic registered). Everyone else is left out without a
  trace, so a clinic without a right to her gets exactly what an unknown
  identifier gets.
- One candidate: the incoming Patient is linked to her (`patient_link`):
  no new identity, the clinic's identifiers are added to her Patient
  resource (nothing else it sent about her is applied), so the next send
  finds her directly. Several: nothing is guessed; the caller registers a
  new person as before and notes the question (`review_note`) for someone
  to decide with the merge service (phr.identity.patient_merge).
"""

from __future__ import annotations

import uuid
from typing import Any

from clinics.models import PatientAlias, PatientMatchReview
from phr import store
from phr.models import Organization, Patient, Provenance, Resource
from phr.services import provenance_create
from sharing.access import Decision, audit_reveal, may_know

# More Patient resources than this carrying one of the identifiers sent is
# not an identifier that names a person; the first ones are enough to know
# the answer is "several" (or "none the clinic may know").
MAX_CANDIDATE_ROWS = 50


def identifiers_of(resource: dict[str, Any]) -> list[dict[str, Any]]:
    """A Patient's identifiers that name something: both system and value."""
    return [
        identifier
        for identifier in resource.get("identifier") or ()
        if isinstance(identifier, dict)
        and isinstance(identifier.get("system"), str)
        and isinstance(identifier.get("value"), str)
        and identifier["system"]
        and identifier["value"]
    ]


def _token(identifier: dict[str, Any]) -> str:
    return f"{identifier['system']}|{identifier['value']}"


def identifier_tokens(resource: dict[str, Any], *, source: store.Source | None = None) -> list[str]:
    """system|value of the Patient's identifiers (and of the identifier a
    condition named, `source`), in order, once each."""
    tokens = [_token(i) for i in identifiers_of(resource)]
    if source is not None:
        tokens.append(f"{source.system}|{source.value}")
    return list(dict.fromkeys(tokens))


def clinic_patient_id(clinic_id: int, source: store.Source) -> uuid.UUID:
    """The id a clinic registers a new Patient at: from its identifier, as
    every source id (0004), and from the clinic, so that whether the id is
    taken depends on this clinic's own registrations only — never on
    another clinic's record of a person with the same identifier."""
    return uuid.uuid5(
        store.SOURCE_NAMESPACE, f"Patient|clinic:{clinic_id}|{source.system}|{source.value}"
    )


def _survivor(patient_id: uuid.UUID, merged_into: dict[uuid.UUID, uuid.UUID | None]) -> uuid.UUID:
    seen = {patient_id}
    while (following := merged_into.get(patient_id)) is not None and following not in seen:
        seen.add(following)
        patient_id = following
    return patient_id


def _survivors(patient_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """Each identity's surviving record (merged_into followed), once each;
    ids without an identity row are dropped."""
    merged_into: dict[uuid.UUID, uuid.UUID | None] = {}
    asking = list(patient_ids)
    while asking:
        found = dict(Patient.objects.filter(pk__in=asking).values_list("pk", "merged_into_id"))
        merged_into.update(found)
        asking = [p for p in found.values() if p is not None and p not in merged_into]
    return list(dict.fromkeys(_survivor(p, merged_into) for p in patient_ids if p in merged_into))


def patients_known_to(
    user: Any, *, clinic: Organization, tokens: list[str]
) -> list[tuple[uuid.UUID, Decision]]:
    """The persons carrying one of `tokens` as a Patient.identifier whom
    `user`, writing for `clinic`, may know, each with the policy point's
    decision, in a stable order. Whoever the clinic may not know is left
    out: the answer is the same as if she were not here."""
    if not tokens:
        return []
    wanted = set(tokens)
    rows = (
        Resource.objects.filter(resource_type="Patient", deleted=False, tokens__overlap=tokens)
        .order_by("id")
        .values_list("id", "content")[:MAX_CANDIDATE_ROWS]
    )
    # The index holds every coding-like element (a telecom's system and
    # value too): only the resource's identifiers count.
    carrying = [
        rid for rid, content in rows if wanted & {_token(i) for i in identifiers_of(content)}
    ]
    known = []
    for patient_id in sorted(_survivors(carrying), key=str):
        decision = may_know(user, patient_id, clinic_id=clinic.pk)
        if decision:
            known.append((patient_id, decision))
    return known


def patient_link(
    *,
    patient_id: uuid.UUID,
    identifiers: list[dict[str, Any]],
    user: Any,
    decision: Decision,
    provenance: Provenance,
    source: str,
    action: str,
) -> bool:
    """Link a clinic system's Patient to her: add its identifiers that her
    stored Patient resource lacks (her identifiers, links and every other
    element stay as stored), and audit the link. Returns whether her
    resource changed (a resend changes nothing).

    The new version is the clinic's (`provenance`) only when the clinic
    registered her; under a consent it is the system's, without the
    clinic as its submitter, so that the clinic_submitted rule does not let
    the clinic read her Patient resource after the consent ends."""
    row = Resource.objects.get(pk=patient_id, resource_type="Patient")
    content = dict(row.content)
    stored = identifiers_of(content)
    have = {_token(i) for i in stored}
    added = []
    for identifier in identifiers_of({"identifier": identifiers}):
        if _token(identifier) not in have:
            have.add(_token(identifier))
            added.append(identifier)
    changed = False
    if added:
        content["identifier"] = [*(content.get("identifier") or []), *added]
        if decision.rule != "clinic_registered":
            provenance = provenance_create(
                origin=Provenance.Origin.SYSTEM,
                user=user if getattr(user, "pk", None) else None,
                activity=Provenance.Activity.MERGE,
                source=f"{source}:link"[:200],
            )
        _, _, changed = store.record_write(content, provenance=provenance, resource_id=patient_id)
    audit_reveal(
        user,
        [patient_id],
        action=action,
        # Only ids and codes in the audit log: the systems, not the values.
        detail={
            "source": source,
            "identifier_systems": sorted(
                {i["system"] for i in identifiers_of({"identifier": identifiers})}
            ),
            "added": len(added),
        },
    )
    return changed


def review_note(
    *,
    clinic: Organization,
    registered_id: uuid.UUID,
    candidates: list[uuid.UUID],
    tokens: list[str],
    source: str,
) -> PatientMatchReview:
    """Note a registration whose identifiers named several persons the
    clinic may know (once per registration)."""
    review, _ = PatientMatchReview.objects.get_or_create(
        registered_id=registered_id,
        defaults={
            "clinic": clinic,
            "candidates": candidates,
            "identifiers": tokens,
            "source": source[:200],
        },
    )
    return review


def aliases_for(clinic: Organization, alias_ids: list[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
    """The persons these ids (a clinic system's own ids for patients,
    derived) were linked to earlier, for this clinic only."""
    if not alias_ids:
        return {}
    return dict(
        PatientAlias.objects.filter(organization=clinic, alias__in=alias_ids).values_list(
            "alias", "patient_id"
        )
    )


def alias_record(
    *, clinic: Organization, alias: uuid.UUID, patient_id: uuid.UUID, source: store.Source
) -> None:
    """Remember (idempotently) that this clinic's id `alias` stands for her."""
    alias_row, created = PatientAlias.objects.get_or_create(
        organization=clinic,
        alias=alias,
        defaults={
            "patient_id": patient_id,
            "source_system": source.system[:300],
            "source_value": source.value[:200],
        },
    )
    if not created and alias_row.patient_id != patient_id:
        # Matched to someone else now (e.g. after a merge was undone).
        PatientAlias.objects.filter(pk=alias_row.pk).update(patient_id=patient_id)


__all__ = [
    "alias_record",
    "aliases_for",
    "clinic_patient_id",
    "identifier_tokens",
    "identifiers_of",
    "patient_link",
    "patients_known_to",
    "review_note",
]
