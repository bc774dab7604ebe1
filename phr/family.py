"""The family's own control over its account (issue 6, part 8): a second
guardian invited by email, a child born elsewhere added by hand, and
leaving (docs/decisions/0016-family-and-leaving.md).

This module sits on the upper floor, beside phr's views and FHIR API: it
calls the ground floor's services (phr.services, phr.store) and the policy
point (sharing.access), and keeps its invitations in a sharing table
(sharing.GuardianInvitation). phr's models and services never import it.

- Invitations: a guardian names an email and some of her children; the
  email carries a link with a 256-bit token (only its SHA-256 is stored).
  Accepting needs an account whose *verified* email is the invited one;
  it makes that account a guardian of those children (phr.services.
  guardianship_add) — never of the inviter herself. Single use, expiring
  (GUARDIAN_INVITATION_DAYS, default 14), revocable by the inviter.
- A child born elsewhere: a Patient row, its JP Core Patient resource with
  a SELF provenance and the user's guardianship. No residency and no
  municipal register row, so a family link code later merges the
  municipal record with it (municipal_data.linking._merge_own_children).
- Leaving: self-entered records deleted (hard, history included), records
  held by a municipality or a clinic kept with them, consents the user
  granted revoked, guardianships ended, the account made anonymous and
  unusable; the audit trail stays.
"""

from __future__ import annotations

import hashlib
import secrets
import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _

from phr.audit import AuditEntry, audit_write, audit_write_many
from phr.models import (
    ApiToken,
    Guardianship,
    Patient,
    PatientLink,
    Provenance,
    Resource,
    ResourceHistory,
    User,
)
from phr.roles import is_staff_user
from phr.selectors import JAPAN, person_name
from phr.services import guardianship_add, patient_create, patient_resource, provenance_create
from sharing.access import Purpose, blocked_patients, forget_grants
from sharing.models import Consent, DvBlock, EmergencyCard, GuardianInvitation

INVITATION_DAYS_DEFAULT = 14
TOKEN_BYTES = 32  # 256 bits: a link, never typed

# --------------------------------------------------------------------------
# What a person reads when an invitation cannot be used
# --------------------------------------------------------------------------

UNUSABLE = _(
    "This invitation can no longer be used: it has expired, was withdrawn or was already "
    "accepted. Ask the person who invited you to send a new one."
)
WRONG_EMAIL = _(
    "This invitation was sent to another email address (%(masked)s). Sign in with the account "
    "of that address, or add and confirm that address in your account settings first."
)
OWN_INVITATION = _("You cannot accept your own invitation.")


class InvitationError(Exception):
    """An acceptance was refused; `message` is what the person may read."""

    def __init__(self, message: Promise | str) -> None:
        super().__init__(str(message))
        self.message = message


def invitation_days() -> int:
    return int(getattr(settings, "GUARDIAN_INVITATION_DAYS", INVITATION_DAYS_DEFAULT))


def token_hash(token: str) -> str:
    return hashlib.sha256((token or "").strip().encode("utf-8", "replace")).hexdigest()


def mask_email(email: str) -> str:
    """h***@example.jp: enough to recognise one's own address."""
    local, _sep, domain = email.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"


def invitation_url(token: str) -> str:
    return f"{settings.SITE_URL.rstrip('/')}{reverse('family:invitation')}?token={token}"


# --------------------------------------------------------------------------
# Whom a user may invite for: the children she is guardian of today
# --------------------------------------------------------------------------


def guarded_children(user: Any) -> list[Patient]:
    """The children under the user's active guardianship (not DV-blocked),
    oldest guardianship first, each once."""
    blocked = set(blocked_patients(user))
    seen: dict[uuid.UUID, Patient] = {}
    for guardianship in (
        Guardianship.objects.active()
        .filter(guardian=user)
        .select_related("child")
        .order_by("child__created_at", "pk")
    ):
        if guardianship.child_id not in blocked:
            seen.setdefault(guardianship.child_id, guardianship.child)
    return list(seen.values())


def _send_invitation(invitation_id: int, token: str) -> None:
    invitation = GuardianInvitation.objects.select_related("inviter").get(pk=invitation_id)
    inviter = invitation.inviter
    context = {
        "inviter": inviter.display_name or inviter.email,
        "children": invitation.children.count(),
        "url": invitation_url(token),
        "expires_at": timezone.localtime(invitation.expires_at, JAPAN),
        "email": invitation.email,
    }
    # The email names the inviter and how many children; no names, nothing
    # clinical: the link alone shows nothing until the invitee signs in.
    with translation.override(invitation.language):
        subject = render_to_string("phr/family/invitation_email_subject.txt", context).strip()
        body = render_to_string("phr/family/invitation_email.txt", context)
    send_mail(subject=subject, message=body, from_email=None, recipient_list=[invitation.email])


def guardian_invitation_issue(
    *,
    inviter: User,
    children: list[Patient],
    email: str,
    relationship: str,
    language: str = "",
) -> tuple[GuardianInvitation, str]:
    """Invite `email` to become guardian of `children` (each one the
    inviter's child today). Returns the row and the token, which only the
    email carries. Raises ValidationError for bad input."""
    email = (email or "").strip().lower()
    errors: dict[str, Any] = {}
    if not children:
        errors["children"] = _("Choose at least one child.")
    mine = {c.pk for c in guarded_children(inviter)}
    if any(child.pk not in mine for child in children):
        raise PermissionDenied
    if not email or "@" not in email:
        errors["email"] = _("Enter an email address.")
    elif email == inviter.email.lower():
        errors["email"] = _("You cannot invite yourself.")
    if relationship not in GuardianInvitation.Relationship.values:
        errors["relationship"] = _("Choose the relationship.")
    language = language if language in dict(settings.LANGUAGES) else (inviter.language or "ja")
    if errors:
        raise ValidationError(errors)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    now = timezone.now()
    with transaction.atomic():
        invitation = GuardianInvitation.objects.create(
            inviter=inviter,
            email=email,
            relationship=relationship,
            language=language,
            token_hash=token_hash(token),
            created_at=now,
            expires_at=now + timedelta(days=invitation_days()),
        )
        invitation.children.set(children)
        audit_write_many(
            AuditEntry(
                action="guardian_invitation.issue",
                outcome="success",
                actor_id=inviter.pk,
                actor_role="guardian",
                patient_id=child.pk,
                purpose=Purpose.PERSONAL,
                detail={"invitation": invitation.pk, "relationship": relationship},
            )
            for child in children
        )
        transaction.on_commit(lambda: _send_invitation(invitation.pk, token))
    return invitation, token


def guardian_invitation_revoke(*, invitation: GuardianInvitation, by: User) -> GuardianInvitation:
    """The inviter withdraws an unanswered invitation. Twice, or after it
    was accepted, changes nothing. The guarded UPDATE waits for an
    acceptance holding the row, so an invitation is never both."""
    if invitation.inviter_id != by.pk:
        raise PermissionDenied
    with transaction.atomic():
        revoked = GuardianInvitation.objects.filter(
            pk=invitation.pk, accepted_at=None, revoked_at=None
        ).update(revoked_at=timezone.now())
        if revoked:
            audit_write_many(
                AuditEntry(
                    action="guardian_invitation.revoke",
                    outcome="success",
                    actor_id=by.pk,
                    actor_role="guardian",
                    patient_id=child_id,
                    purpose=Purpose.PERSONAL,
                    detail={"invitation": invitation.pk},
                )
                for child_id in invitation.children.values_list("pk", flat=True)
            )
    invitation.refresh_from_db()
    return invitation


def invitation_for_token(token: str) -> GuardianInvitation | None:
    """The invitation a link names, or None (looked up by hash, compared
    again in constant time)."""
    if not token or len(token) > 200:
        return None
    digest = token_hash(token)
    invitation = (
        GuardianInvitation.objects.select_related("inviter").filter(token_hash=digest).first()
    )
    if invitation is None or not secrets.compare_digest(invitation.token_hash, digest):
        return None
    return invitation


def has_verified_email(user: User, email: str) -> bool:
    from allauth.account.models import EmailAddress

    return EmailAddress.objects.filter(user=user, email__iexact=email, verified=True).exists()


@dataclass
class Accepted:
    invitation: GuardianInvitation
    children: list[Patient]


def _refuse(user: User, invitation: GuardianInvitation | None, reason: str) -> None:
    audit_write(
        action="guardian_invitation.accept",
        outcome="denied",
        actor_id=user.pk,
        purpose=Purpose.PERSONAL,
        detail={"reason": reason, **({"invitation": invitation.pk} if invitation else {})},
    )


def guardian_invitation_accept(*, user: User, token: str) -> Accepted:
    """Make `user` a guardian of the invitation's children, or raise
    InvitationError with what the person may read. Refusals are audited.

    Refused: an unknown token, an expired, withdrawn or used invitation, an
    account without the invited email verified, the inviter herself, a
    person DV-blocked from one of the children (told only "can no longer be
    used"), and an inviter who is no longer guardian of any of them."""
    digest = token_hash(token)
    with transaction.atomic():
        invitation = (
            GuardianInvitation.objects.select_for_update()
            .select_related("inviter")
            .filter(token_hash=digest)
            .first()
        )
        refusal: tuple[str, Promise | str] | None = None
        if invitation is None or not secrets.compare_digest(invitation.token_hash, digest):
            refusal = ("not_found", UNUSABLE)
        elif invitation.status != GuardianInvitation.Status.ACTIVE:
            refusal = (invitation.status, UNUSABLE)
        elif invitation.inviter_id == user.pk:
            refusal = ("own", OWN_INVITATION)
        elif not has_verified_email(user, invitation.email):
            refusal = ("email", WRONG_EMAIL % {"masked": mask_email(invitation.email)})
        children: list[Patient] = []
        if refusal is None:
            assert invitation is not None
            # Only children the inviter still guards (a guardianship that
            # ended, or a block set since, takes the child out).
            still = {c.pk for c in guarded_children(invitation.inviter)}
            children = [c for c in invitation.children.order_by("created_at") if c.pk in still]
            blocked = DvBlock.objects.active().filter(
                blocked_user=user, patient__in=[c.pk for c in children]
            )
            if blocked.exists():
                refusal = ("dv_block", UNUSABLE)
            elif not children:
                refusal = ("no_child", UNUSABLE)
        if refusal is None:
            assert invitation is not None
            already = set(
                Guardianship.objects.active()
                .filter(guardian=user, child__in=children)
                .values_list("child_id", flat=True)
            )
            for child in children:
                # A guardian already (a second invitation): nothing to add.
                if child.pk not in already:
                    guardianship_add(
                        guardian=user, child=child, relationship=invitation.relationship
                    )
            invitation.accepted_at = timezone.now()
            invitation.accepted_by = user
            invitation.save(update_fields=["accepted_at", "accepted_by"])
            audit_write_many(
                AuditEntry(
                    action="guardian_invitation.accept",
                    outcome="success",
                    actor_id=user.pk,
                    actor_role="guardian",
                    patient_id=child.pk,
                    purpose=Purpose.PERSONAL,
                    detail={"invitation": invitation.pk},
                )
                for child in children
            )
    if refusal is not None:
        _refuse(user, invitation, refusal[0])
        raise InvitationError(refusal[1])
    forget_grants(user)
    return Accepted(invitation=invitation, children=children)  # type: ignore[arg-type]


@dataclass(frozen=True)
class InvitationRow:
    invitation: GuardianInvitation
    status: str
    children: list[str]  # names, as the inviter sees them

    @property
    def status_label(self) -> str:
        return str(GuardianInvitation.Status(self.status).label)

    @property
    def can_revoke(self) -> bool:
        return self.status == GuardianInvitation.Status.ACTIVE


def invitations_sent(
    *, user: User, names: dict[uuid.UUID, str], limit: int = 50
) -> list[InvitationRow]:
    """The user's invitations, newest first, with the children's names as
    `names` (what the family page may show) gives them."""
    now = timezone.now()
    rows = []
    for invitation in (
        GuardianInvitation.objects.filter(inviter=user)
        .prefetch_related("children")
        .order_by("-created_at", "-pk")[:limit]
    ):
        rows.append(
            InvitationRow(
                invitation=invitation,
                status=invitation.status_at(now),
                children=[names.get(c.pk, "") for c in invitation.children.all()],
            )
        )
    return rows


# --------------------------------------------------------------------------
# A child born elsewhere
# --------------------------------------------------------------------------

_HIRAGANA = {chr(c): chr(c + 0x60) for c in range(0x3041, 0x3097)}


def kana_normalise(text: str) -> str:
    """Kana as JP Core writes names: full-width katakana (NFKC folds
    half-width kana; hiragana become katakana); spaces trimmed."""
    folded = unicodedata.normalize("NFKC", text or "").strip()
    return "".join(_HIRAGANA.get(ch, ch) for ch in folded)


def is_katakana(text: str) -> bool:
    return bool(text) and all("\u30a0" <= ch <= "\u30ff" or ch in " \u3000" for ch in text)


SEXES = ("female", "male")


@transaction.atomic
def child_add(
    *,
    user: User,
    family: str,
    given: str,
    family_kana: str,
    given_kana: str,
    birth_date: date,
    sex: str,
    relationship: str,
) -> Patient:
    """A child born elsewhere (another town, abroad, before the family
    joined): the Patient with its JP Core Patient resource, written with a
    SELF provenance, and the user's guardianship. Raises ValidationError
    (field → message) for bad input; nothing is written then."""
    errors: dict[str, Any] = {}
    family, given = family.strip(), given.strip()
    family_kana, given_kana = kana_normalise(family_kana), kana_normalise(given_kana)
    if not family:
        errors["family"] = _("Enter the family name.")
    if not given:
        errors["given"] = _("Enter the given name.")
    for key, value in (("family_kana", family_kana), ("given_kana", given_kana)):
        if not value:
            errors[key] = _("Enter the name in kana.")
        elif not is_katakana(value):
            errors[key] = _("Use kana only (for example ハナコ or はなこ), not %(value)s.") % {
                "value": value[:20]
            }
    today = timezone.localdate(timezone=JAPAN)
    if birth_date > today:
        errors["birth_date"] = _("The birth date cannot be in the future.")
    elif birth_date < date(today.year - 20, today.month, 1):
        errors["birth_date"] = _("This service keeps records of children up to 20 years old.")
    if sex not in (*SEXES, ""):
        errors["sex"] = _("Choose the sex.")
    if relationship not in Guardianship.Relationship.values:
        errors["relationship"] = _("Choose the relationship.")
    if is_staff_user(user):
        raise PermissionDenied
    if errors:
        raise ValidationError(errors)
    provenance = provenance_create(
        origin=Provenance.Origin.SELF, user=user, source="family:add-child"
    )
    resource = patient_resource(
        family=family,
        given=given,
        family_kana=family_kana,
        given_kana=given_kana,
        birth_date=birth_date,
        gender=sex or None,
    )
    child = patient_create(kind=Patient.Kind.CHILD, resource=resource, provenance=provenance)
    guardianship_add(guardian=user, child=child, relationship=relationship)
    audit_write(
        action="family.child_add",
        actor_id=user.pk,
        actor_role="guardian",
        patient_id=child.pk,
        purpose=Purpose.PERSONAL,
    )
    forget_grants(user)
    return child


# --------------------------------------------------------------------------
# Leaving
# --------------------------------------------------------------------------

# Records that came in through the family's own account: typed in, sent by
# the family's device, imported from the family's medication notebook.
FAMILY_ORIGINS = (Provenance.Origin.SELF, Provenance.Origin.DEVICE, Provenance.Origin.PHARMACY)


def _written_only_by(user: User) -> Q:
    """A resource every version of which the user's account wrote (merges
    and unmerges, the service's own bookkeeping, do not count against)."""
    foreign = ResourceHistory.objects.filter(resource_id=OuterRef("pk")).exclude(
        Q(provenance__agent_org__isnull=True)
        & (
            Q(provenance__agent_user=user, provenance__origin__in=FAMILY_ORIGINS)
            | Q(provenance__activity__in=(Provenance.Activity.MERGE, Provenance.Activity.UNMERGE))
        )
    )
    return ~Exists(foreign)


@dataclass
class LeavePlan:
    """What leaving does, computed the same way for the page and the act."""

    own: Patient | None
    # Children whose records go with the user: no other guardian keeps them.
    leaving_children: list[Patient] = field(default_factory=list)
    # Children another guardian keeps: their records all stay.
    kept_children: list[Patient] = field(default_factory=list)
    deleted_ids: list[uuid.UUID] = field(default_factory=list)
    kept_count: int = 0
    # Patients whose identity goes too (nothing of theirs stays anywhere).
    purged_patients: list[Patient] = field(default_factory=list)


def _other_guardians(child: Patient, user: User) -> bool:
    return Guardianship.objects.active().filter(child=child).exclude(guardian=user).exists()


def leave_plan(*, user: User) -> LeavePlan:
    own = Patient.objects.filter(account=user).first()
    plan = LeavePlan(own=own)
    for child in guarded_children(user):
        if _other_guardians(child, user):
            plan.kept_children.append(child)
        else:
            plan.leaving_children.append(child)
    scope = ([own.pk] if own else []) + [c.pk for c in plan.leaving_children]
    if not scope:
        return plan
    in_scope = Resource.objects.filter(compartments__overlap=scope)
    if plan.kept_children:
        in_scope = in_scope.exclude(compartments__overlap=[c.pk for c in plan.kept_children])
    ours = set(in_scope.filter(_written_only_by(user)).values_list("pk", flat=True))
    # A person goes entirely when everything in their compartment goes,
    # their Patient resource included, and nothing else ties the identity
    # to the world (a municipal residency, a merge link). Otherwise their
    # Patient resource stays: it is who the kept records are about.
    people = ([own] if own else []) + plan.leaving_children
    for patient in people:
        everything = set(
            Resource.objects.filter(compartments__overlap=[patient.pk]).values_list("pk", flat=True)
        )
        if (
            everything <= ours
            and not patient.residencies.exists()
            and not PatientLink.objects.filter(Q(survivor=patient) | Q(merged=patient)).exists()
            and patient.merged_into_id is None
        ):
            plan.purged_patients.append(patient)
    purged = {p.pk for p in plan.purged_patients}
    staying = {p.pk for p in people} - purged
    plan.deleted_ids = sorted(ours - staying)
    plan.kept_count = (
        Resource.objects.filter(compartments__overlap=scope, deleted=False)
        .exclude(pk__in=plan.deleted_ids)
        .count()
    )
    return plan


@dataclass(frozen=True)
class LeaveResult:
    deleted_records: int
    kept_records: int
    consents_revoked: int
    guardianships_ended: int
    patients_removed: int


def _end_guardianships(user: User) -> int:
    today = timezone.localdate()
    yesterday = today - timedelta(days=1)
    ended = 0
    for row in Guardianship.objects.active().filter(guardian=user):
        if row.valid_from > yesterday:
            row.delete()  # began today: ending it leaves nothing to keep
        else:
            row.valid_to = yesterday
            row.save(update_fields=["valid_to"])
        ended += 1
    return ended


def account_leave(*, user: User) -> LeaveResult:
    """Close the account (docs/decisions/0016-family-and-leaving.md):

    1. records the account wrote itself, about the user and the children
       no other guardian keeps, are deleted with their history; records a
       municipality or clinic holds stay with them (and the Patient they
       are about);
    2. consents the user granted are revoked (the grantees are told), and
       consents granted to the user end;
    3. invitations the user sent are withdrawn, emergency cards of the
       people leaving are revoked, API tokens revoked;
    4. guardianships end; the user's own record is no longer the account's;
    5. the account becomes anonymous and unusable (no email, no password,
       inactive) but its row stays, so the audit trail keeps pointing at
       a pseudonymous id instead of a name;
    6. one audit row says what was done (counts, never data).
    """
    if is_staff_user(user):
        raise PermissionDenied("Staff accounts are closed by their organization.")
    from allauth.account.models import EmailAddress
    from allauth.mfa.models import Authenticator

    from sharing.services import consent_revoke

    now = timezone.now()
    with transaction.atomic():
        plan = leave_plan(user=user)
        revoked = 0
        for consent in Consent.objects.filter(granted_by=user, revoked_at__isnull=True):
            consent_revoke(consent=consent, by=user)
            revoked += 1
        revoked += Consent.objects.filter(grantee_user=user, revoked_at__isnull=True).update(
            revoked_at=now, revoked_by=user
        )
        GuardianInvitation.objects.filter(inviter=user, accepted_at=None, revoked_at=None).update(
            revoked_at=now
        )
        leaving = ([plan.own.pk] if plan.own else []) + [c.pk for c in plan.leaving_children]
        EmergencyCard.objects.filter(patient_id__in=leaving, revoked_at=None).update(revoked_at=now)
        ApiToken.objects.filter(user=user, revoked_at=None).update(revoked_at=now)
        # The records, history included (a tombstone would keep the content).
        ResourceHistory.objects.filter(resource_id__in=plan.deleted_ids).delete()
        Resource.objects.filter(pk__in=plan.deleted_ids).delete()
        ended = _end_guardianships(user)
        if plan.own is not None:
            plan.own.account = None
            plan.own.save(update_fields=["account"])
        for patient in plan.purged_patients:
            patient.delete()
        EmailAddress.objects.filter(user=user).delete()
        Authenticator.objects.filter(user=user).delete()
        user.email = f"left-{user.pk}-{secrets.token_hex(6)}@deleted.invalid"
        user.display_name = ""
        user.is_active = False
        user.set_unusable_password()
        user.save(update_fields=["email", "display_name", "is_active", "password"])
        result = LeaveResult(
            deleted_records=len(plan.deleted_ids),
            kept_records=plan.kept_count,
            consents_revoked=revoked,
            guardianships_ended=ended,
            patients_removed=len(plan.purged_patients),
        )
        audit_write(
            action="account.leave",
            actor_id=user.pk,
            actor_role="patient" if plan.own else "guardian",
            patient_id=plan.own.pk if plan.own else None,
            purpose=Purpose.PERSONAL,
            detail={
                "deleted_records": result.deleted_records,
                "kept_records": result.kept_records,
                "consents_revoked": result.consents_revoked,
                "guardianships_ended": result.guardianships_ended,
                "patients_removed": result.patients_removed,
            },
        )
    forget_grants(user)
    return result


def child_names(*, user: Any, children: list[Patient]) -> dict[uuid.UUID, str]:
    """Names of these children as the user may see them."""
    from phr.selectors import patient_resources

    contents = patient_resources(user=user, patient_ids=[c.pk for c in children])
    return {c.pk: person_name(contents.get(c.pk)) for c in children}
