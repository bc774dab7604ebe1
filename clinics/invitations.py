"""The clinic's invitations as the portal shows them (/clinic/invitations/).

A clinic that registered a pregnant patient gave her a code to link her own
account (clinics/services.py: patient_register, invitation_issue,
invitation_redeem). This module reads them for the portal: one row per
patient invited, her latest code's state, and whether the clinic may still
issue her a new one. Only a code's prefix and hash are stored, so a code is
never shown here — a new one is shown once, by the page answering the
reissue.

Names are read through the policy point (phr.selectors.patient_resources
with purpose "care"): a patient whose record the clinic may no longer see
(she linked an account and her record is the municipality's) is listed
without a name, as the portal's other pages do. The views audit what they
show.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from django.core.paginator import Page, Paginator
from django.http import Http404
from django.utils import timezone

from clinics.models import ClinicInvitation
from phr.models import Organization, Patient
from phr.selectors import patient_resources, person_name
from phr.terminology import Category
from sharing.access import Purpose, may_write

PAGE_SIZE = 50


@dataclass(frozen=True)
class InvitationRow:
    invitation: ClinicInvitation
    status: str  # ClinicInvitation.Status
    patient_id: uuid.UUID  # her record now (the survivor of a merge)
    name: str  # "" when the clinic may not see her name
    # The clinic still writes for her because it registered her (she has
    # no account yet): only then is a new code of use.
    can_reissue: bool

    @property
    def status_label(self) -> str:
        return str(ClinicInvitation.Status(self.status).label)

    @property
    def can_revoke(self) -> bool:
        return self.status == ClinicInvitation.Status.ACTIVE


def survivor(patient: Patient) -> Patient:
    while patient.merged_into_id is not None:
        patient = patient.merged_into  # type: ignore[assignment]
    return patient


def may_reissue(user: Any, clinic: Organization, patient: Patient) -> bool:
    """The rule services.invitation_issue applies: the clinic registered
    her and she has not linked an account (sharing.access.may_write)."""
    decision = may_write(user, patient, category=Category.PREGNANCY)
    return decision.rule == "clinic_registered" and decision.organization_id == clinic.pk


def _latest_per_patient(clinic: Organization) -> list[ClinicInvitation]:
    """The clinic's latest invitation of each patient, newest first (an
    earlier code of hers was revoked when the later one was issued)."""
    latest = (
        ClinicInvitation.objects.filter(clinic=clinic)
        .order_by("patient_id", "-issued_at", "-pk")
        .distinct("patient_id")
        .values_list("pk", flat=True)
    )
    return list(
        ClinicInvitation.objects.filter(pk__in=list(latest))
        .select_related("patient", "patient__merged_into", "issued_by")
        .order_by("-issued_at", "-pk")
    )


def _rows(
    user: Any, clinic: Organization, invitations: list[ClinicInvitation]
) -> list[InvitationRow]:
    now = timezone.now()
    people = {inv.pk: survivor(inv.patient) for inv in invitations}
    contents = patient_resources(
        user=user, patient_ids=[p.pk for p in people.values()], purpose=Purpose.CARE
    )
    return [
        InvitationRow(
            invitation=inv,
            status=inv.status_at(now),
            patient_id=people[inv.pk].pk,
            name=person_name(contents.get(people[inv.pk].pk)),
            can_reissue=inv.used_at is None and may_reissue(user, clinic, people[inv.pk]),
        )
        for inv in invitations
    ]


@dataclass
class InvitationPage:
    page: Page  # type: ignore[type-arg]
    rows: list[InvitationRow]

    @property
    def patient_ids(self) -> list[uuid.UUID]:
        return [row.patient_id for row in self.rows]


def clinic_invitations(*, user: Any, clinic: Organization, page_number: Any = 1) -> InvitationPage:
    """One page of the clinic's invitations: the latest of each patient."""
    page = Paginator(_latest_per_patient(clinic), PAGE_SIZE).get_page(page_number)
    return InvitationPage(page=page, rows=_rows(user, clinic, list(page.object_list)))


def latest_for(clinic: Organization, patient: Patient) -> ClinicInvitation | None:
    """The clinic's latest invitation of this patient (or of a record
    merged into hers), for the patient page."""
    ids = {patient.pk, *patient.merged_from.values_list("pk", flat=True)}
    return (
        ClinicInvitation.objects.filter(clinic=clinic, patient_id__in=ids)
        .order_by("-issued_at", "-pk")
        .first()
    )


def clinic_invitation(clinics: list[Organization], invitation_id: Any) -> ClinicInvitation:
    """An invitation of one of these clinics (the user's), or Http404 —
    another clinic's and a missing one alike."""
    try:
        pk = int(str(invitation_id))
    except ValueError:
        raise Http404 from None
    invitation = (
        ClinicInvitation.objects.filter(pk=pk, clinic__in=clinics)
        .select_related("clinic", "patient")
        .first()
    )
    if invitation is None:
        raise Http404
    return invitation
