"""Writes of the municipal staff pages: deciding a match review.

A row of an upload whose resident number is known but whose person does
not match (another birth date or sex) waits in the match-review queue
(municipal_data.importing). Staff of the municipality decide:

- accept — the file is right: the person's record takes the file's birth
  date and sex, and the row is imported into that person, exactly as the
  import would have done;
- reject — the row stays out of the record.

Both are audited.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from municipal_data import importing, selectors
from municipal_data.models import MatchReview
from phr import store, tabular
from phr.audit import audit_write
from phr.models import Provenance, Resource, Role, User
from phr.services import provenance_create
from sharing.access import Purpose, decide, forget_grants

# What a difference's field is called in the FHIR Patient.
PATIENT_FIELDS = {"birth_date": "birthDate", "sex": "gender"}


def _bilingual(ja: str, en: str) -> str:
    return f"{ja} / {en}"


def review_row(review: MatchReview, fmt: Any) -> tabular.Row:
    """The review's row as the import read it: the stored cells parsed
    again by the format's columns, and made into its MunicipalRecord."""
    columns = list(fmt.columns)
    header = tabular.Header(
        positions={column.key: index for index, column in enumerate(columns)},
        written={column.key: column.ja for column in columns},
        ignored=[],
        width=len(columns),
    )
    cells = [str((review.row or {}).get(column.key, "")) for column in columns]
    row = tabular.parse_row(review.line, cells, header, columns)
    if row.ok:
        row.record = fmt.to_record(row, review.municipality.code)
    if not row.ok or row.record is None:
        raise ValidationError(
            _bilingual(
                "この行は取り込めません（形式の確認で誤りが見つかりました）。",
                "The row cannot be imported: it no longer passes the format's checks.",
            ),
            code="row",
        )
    return row


def _update_patient(review: MatchReview, provenance: Provenance) -> None:
    """The person's record takes the file's values for what differed."""
    resource = Resource.objects.select_for_update().get(
        pk=review.patient_id, resource_type="Patient", deleted=False
    )
    content = {"resourceType": "Patient", **resource.content}
    for difference in review.differences or []:
        target = PATIENT_FIELDS.get(difference.get("field", ""))
        if target and difference.get("file"):
            content[target] = difference["file"]
    store.record_write(content, provenance=provenance, resource_id=review.patient_id)


def review_decide(*, review: MatchReview, user: User, accept: bool, note: str = "") -> MatchReview:
    """Accept (the file is right: update the person, import the row into
    them) or reject (keep the row out). Only staff (with MFA) of the
    review's municipality may decide, and accepting needs the person to be
    one sharing.access lets them see; otherwise PermissionDenied. A review
    already decided is returned unchanged. ValidationError when the row
    can no longer be imported (nothing is written then)."""
    municipality_ids = {m.pk for m in selectors.staff_municipalities(user)}
    if review.municipality_id not in municipality_ids:
        raise PermissionDenied
    if accept and not decide(user, review.patient_id, purpose=Purpose.PUBLIC_HEALTH):
        raise PermissionDenied
    with transaction.atomic():
        review = (
            MatchReview.objects.select_for_update(of=("self",))
            .select_related("municipality", "batch")
            .get(pk=review.pk)
        )
        if review.status != MatchReview.Status.OPEN:
            return review  # deciding twice changes nothing
        counts: dict[str, int] = {}
        if accept:
            counts = _accept(review, user)
        review.status = MatchReview.Status.ACCEPTED if accept else MatchReview.Status.REJECTED
        review.decided_by = user
        review.decided_at = timezone.now()
        review.note = (note or "").strip()[:500]
        review.save(update_fields=["status", "decided_by", "decided_at", "note"])
        audit_write(
            action="match_review.accept" if accept else "match_review.reject",
            actor_id=user.pk,
            actor_role=Role.MUNICIPAL_STAFF,
            organization_id=review.municipality_id,
            patient_id=review.patient_id,
            categories=[c for c in [selectors.category_of(review.format)] if c],
            purpose=Purpose.PUBLIC_HEALTH,
            detail={
                "rule": "municipal",
                "review": review.pk,
                "batch": review.batch_id,
                "line": review.line,
                **counts,
            },
        )
    # The person may now be a resident the user's grants did not list.
    forget_grants(user)
    return review


def _accept(review: MatchReview, user: User) -> dict[str, int]:
    fmt = selectors.municipal_format(review.format)
    if fmt is None or not selectors.replayable(review.format) or review.batch is None:
        raise ValidationError(
            _bilingual(
                "この行はここから取り込めません。ファイルを直して、もう一度アップロードしてください。",
                "This row cannot be imported from here: correct the file and upload it again.",
            ),
            code="format",
        )
    row = review_row(review, fmt)
    provenance = provenance_create(
        origin=Provenance.Origin.MUNICIPALITY,
        user=user,
        organization=review.municipality,
        source=f"review:{review.pk}:batch:{review.batch_id}",
    )
    _update_patient(review, provenance)
    counts = importing.apply(fmt, review.batch, [row], provenance)
    if counts.get("review"):
        # Someone else on the row (the mother of a child's row) does not
        # match either: nothing is imported, and the person decides again.
        raise ValidationError(
            _bilingual(
                "この行の別の人（母など）も記録と一致しません。取り込めませんでした。",
                "Another person on the row (e.g. the mother) does not match the record "
                "either; nothing was imported.",
            ),
            code="still_differs",
        )
    return {key: value for key, value in counts.items() if value}
