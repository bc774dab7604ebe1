"""The one access-policy point: who may see which patient's records, and why.

Every read of patient data — pages, the FHIR API, exports, admin actions,
tasks acting for a user — asks this module:

- `visible_records(user, purpose=None)` → a Q filter for phr.Resource
  (lists and searches filter in SQL);
- `readable_record(user, rows, purpose=None)` → the one row of a read by
  id, or None (loaded once, decided in Python by the same grants);
- `decide(user, patient, category=…, purpose=…)` → a Decision (yes/no, the
  rule, a reason a person can read);
- `access_patient(user, patient_id, …)` → the Patient or Http404, audited;
- `audit_reveal(user, patient_ids, …)` → one audit row per patient revealed.

Deny by default. "Does not exist" and "not allowed" look the same.

Rules in force (docs/decisions/0002-access.md):
- self: an adult sees her own records (all categories);
- guardian: a guardian sees the children under an active guardianship; an
  adult's records are hers alone — a partner sees them only by consent
  (sharing issue);
- municipal staff: their current residents' records and what their own
  municipality submitted, never clinic-only items;
- clinic staff: what their own clinic submitted (consent grants come with
  the sharing issue);
- platform admin: everything, for operations, audited;
- staff (any organization role or admin) without MFA: nothing.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.contrib.postgres.expressions import ArraySubquery
from django.db import connection
from django.db.models import BigIntegerField, Q, QuerySet
from django.db.models.expressions import RawSQL
from django.http import Http404
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from phr.audit import AuditEntry, audit_write_many
from phr.models import Patient, Residency, Resource, Role
from phr.roles import active_memberships, is_staff_user
from phr.terminology import Category, Sensitivity

__all__ = [
    "Category",
    "Decision",
    "Explanation",
    "Purpose",
    "access_patient",
    "audit_blocked_attempt",
    "audit_denied",
    "audit_reveal",
    "decide",
    "explain",
    "redact_for",
    "research_cohort",
    "visible_records",
]


class Purpose:
    PERSONAL = "personal"  # self or guardian
    CARE = "care"
    EMERGENCY = "emergency"
    PUBLIC_HEALTH = "public_health"  # municipal duty
    RESEARCH = "research"
    OPERATIONS = "operations"  # platform administration

    ALL = (PERSONAL, CARE, EMERGENCY, PUBLIC_HEALTH, RESEARCH, OPERATIONS)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: str
    reason: str
    purpose: str = ""
    role: str = ""
    organization_id: int | None = None
    consent_id: uuid.UUID | None = None
    break_glass_id: int | None = None
    categories: tuple[str, ...] | None = None
    until: Any = None

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True)
class Explanation:
    """The answer to "why can (or can't) they see this?"."""

    decision: Decision
    granted_by: list[Decision]


DENY = Decision(False, "default_deny", str(_("No rule or consent allows this.")))
NO_MFA = Decision(
    False, "staff_without_mfa", str(_("Staff must set up two-factor authentication."))
)
DV_BLOCKED = Decision(False, "dv_block", str(_("Access is blocked for this person.")))
CONSENT_REVOKED = Decision(False, "consent_revoked", str(_("The family revoked the consent.")))
CONSENT_EXPIRED = Decision(False, "consent_expired", str(_("The consent has expired.")))
CATEGORY_NOT_GRANTED = Decision(
    False, "category_not_granted", str(_("The consent does not include these records."))
)


# What an emergency grant (prior consent or break-glass) reaches: the
# IPS-like emergency dataset only.
EMERGENCY_CATEGORIES = (
    Category.PREGNANCY,
    Category.ALLERGIES_CONDITIONS,
    Category.MEDICATIONS,
)
# Blood type is a prenatal lab result but belongs to the emergency summary.
BLOOD_TYPE_TOKENS = ["http://loinc.org|882-1", "http://loinc.org|883-9", "http://loinc.org|10331-7"]


def emergency_scope() -> Q:
    """The emergency dataset as a filter (its twin for one loaded row:
    in_emergency_scope)."""
    return (
        Q(category__in=EMERGENCY_CATEGORIES)
        | Q(resource_type__in=("Patient", "Flag"))
        | Q(tokens__overlap=BLOOD_TYPE_TOKENS)
    )


def in_emergency_scope(row: Resource) -> bool:
    """emergency_scope() for one loaded row."""
    return (
        row.category in EMERGENCY_CATEGORIES
        or row.resource_type in ("Patient", "Flag")
        or not set(BLOOD_TYPE_TOKENS).isdisjoint(row.tokens)
    )


@dataclass
class _Grant:
    """One rule's reach: patients (by compartment: named ones, and the
    current residents of a municipality) and/or submitting organizations,
    limited to some categories and scope, minus excluded sensitivities and
    DV-blocked patients.

    A grant is asked in two forms that say the same thing: `q()` filters
    lists in SQL, `admits()` decides one loaded row in Python (a read by
    id). tests/sharing/test_access_read_by_id.py checks they agree."""

    rule: str
    purpose: str
    role: str
    organization_id: int | None = None
    # Patients by id as text (str(uuid), as uuid::text writes it): a clinic
    # holding hundreds of consents gets them from the facts statement
    # without building a UUID object for each on every request.
    patient_ids: list[str] = field(default_factory=list)
    # municipal: the current residents of this municipality (a subquery in
    # SQL, asked patient by patient in Python — never listed in full)
    residents_of: int | None = None
    submitter_org_ids: list[int] = field(default_factory=list)
    everything: bool = False
    exclude_sensitivity: tuple[str, ...] = ()
    # None: every category; else only these (the patient resource itself is
    # always visible to a grant that reaches the patient).
    categories: tuple[str, ...] | None = None
    # emergency grants: the emergency dataset only (emergency_scope)
    summary_only: bool = False
    blocked: tuple[uuid.UUID, ...] = ()
    # consent grants: which consent covers each patient (ids as text), and
    # when it ends (when it does). Plain dicts of strings, not a tuple per
    # patient: hundreds of consents then cost the garbage collector nothing.
    consent_of: dict[str, str] = field(default_factory=dict)
    consent_until: dict[str, Any] = field(default_factory=dict)
    break_glass_id: int | None = None
    ends_at: Any = None
    # Emergency grants do not list patients: they serve one found patient's
    # emergency summary (purpose="emergency" asked explicitly).
    listable: bool = True
    # residents_of: what was asked already in this request
    _resident: dict[uuid.UUID, bool] = field(default_factory=dict, repr=False)

    @cached_property
    def patient_set(self) -> frozenset[str]:
        """patient_ids as a set (read once the grant is built)."""
        return frozenset(self.patient_ids)

    def names(self, patient_id: uuid.UUID) -> bool:
        """Is this patient one of patient_ids?"""
        return str(patient_id) in self.patient_set

    def q(self) -> Q:
        if self.everything:
            # Not Q(): Django drops an empty Q when OR-ing it onto another.
            reach = Q(pk__isnull=False)
        else:
            reach = Q(pk__in=[])
            if self.patient_ids:
                reach |= Q(compartments__overlap=self.patient_ids)
            if self.residents_of is not None:
                residents = Residency.objects.current().filter(municipality_id=self.residents_of)
                reach |= Q(compartments__overlap=ArraySubquery(residents.values("patient_id")))
            if self.submitter_org_ids:
                reach |= Q(provenance__agent_org_id__in=self.submitter_org_ids)
        if self.categories is not None:
            reach &= Q(category__in=self.categories) | Q(resource_type="Patient")
        if self.summary_only:
            reach &= emergency_scope()
        if self.exclude_sensitivity:
            reach &= ~Q(sensitivity__in=self.exclude_sensitivity)
        if self.blocked:
            reach &= ~Q(compartments__overlap=list(self.blocked))
        return reach

    def admits(self, row: Resource, submitter_org_id: int | None) -> bool:
        """q() for one loaded row, whose provenance names `submitter_org_id`."""
        if self.categories is not None and not (
            row.category in self.categories or row.resource_type == "Patient"
        ):
            return False
        if self.summary_only and not in_emergency_scope(row):
            return False
        if row.sensitivity in self.exclude_sensitivity:
            return False
        if self.blocked and not self.blocked_set.isdisjoint(row.compartments):
            return False
        return (
            self.everything
            or any(self.names(p) for p in row.compartments)
            or submitter_org_id in self.submitter_org_ids
            or self.residents_among(row.compartments)
        )

    @cached_property
    def blocked_set(self) -> frozenset[uuid.UUID]:
        return frozenset(self.blocked)

    def residents_among(self, patient_ids: list[uuid.UUID]) -> bool:
        """Is one of these patients a current resident of `residents_of`?
        (One query for the patients not asked about yet in this request.)"""
        if self.residents_of is None:
            return False
        unknown = [p for p in patient_ids if p not in self._resident]
        if unknown:
            found = set(
                Residency.objects.current()
                .filter(municipality_id=self.residents_of, patient_id__in=unknown)
                .values_list("patient_id", flat=True)
            )
            for patient_id in unknown:
                self._resident[patient_id] = patient_id in found
        return any(self._resident[p] for p in patient_ids)

    def allows(self, category: str | None, sensitivity: str) -> bool:
        if sensitivity in self.exclude_sensitivity:
            return False
        return category is None or self.categories is None or category in self.categories


@dataclass(frozen=True)
class _Facts:
    """What the rules need to know about one user, read in one statement
    (_FACTS_SQL): the patients DV-blocked for them, their own patient, the
    children in their active guardianships, whether they have a TOTP
    authenticator, their active memberships (organization, role) and the
    consents in force naming them or one of those organizations. Patients
    other than the blocked ones, and consent ids, are kept as text (see
    _Grant.patient_ids)."""

    blocked: tuple[uuid.UUID, ...] = ()
    own: str | None = None
    children: tuple[str, ...] = ()
    mfa: bool = False
    memberships: tuple[tuple[int, str], ...] = ()
    # Consents alike but for their patient, grouped: (grantee organization
    # or None, purpose, categories, [patient], [consent id], [ends_at]), the
    # lists in the order the consents were given.
    consents: tuple[tuple[int | None, str, list[str], list[str], list[str], list[Any]], ...] = ()
    # The next instant a consent naming them starts or ends (None: none will).
    horizon: Any = None
    # The access epoch they were read at; None when this transaction has
    # changed access facts itself (then they are not to be cached).
    epoch: int | None = None


# The six facts in one round trip; each branch is the query the ORM would
# run (the querysets named in the comments), tagged with what it is; then
# how long they hold (the next consent start or end) and the access epoch
# they were read at (in the same snapshot: see _GrantCache).
# Parameters: $1 the user, $2 today and $3 now (as the querysets compute
# them: timezone.localdate(), timezone.now()), $4 allauth's TOTP type.
# Columns: kind, patient, organization, role or purpose, categories, and for
# consents, grouped by grantee, purpose and categories (the groups in the
# order of their first consent): their patients, ids and ends. Planning its
# six branches costs more than running them, so it is prepared once per
# database connection (_facts_rows).
_FACTS_SQL = """
WITH membership AS (  -- Membership.objects.active().filter(user=user)
    SELECT id, organization_id, role FROM phr_membership
    WHERE user_id = $1 AND valid_from <= $2 AND (valid_to IS NULL OR valid_to >= $2)
), consent AS (  -- consents not revoked, to the user or one of their organizations
    SELECT * FROM sharing_consent WHERE grantee_user_id = $1 AND revoked_at IS NULL
    UNION ALL  -- (one grantee each: the two halves never share a row)
    SELECT * FROM sharing_consent
    WHERE grantee_org_id IN (SELECT organization_id FROM membership) AND revoked_at IS NULL
)
SELECT 'blocked', patient_id::text, NULL::bigint, NULL::text, NULL::varchar[], NULL::text[],
       NULL::text[], NULL::timestamptz[]
FROM sharing_dvblock  -- DvBlock.objects.active().filter(blocked_user=user)
WHERE blocked_user_id = $1 AND lifted_at IS NULL
UNION ALL
(SELECT 'own', id::text, NULL, NULL, NULL, NULL, NULL, NULL
 FROM phr_patient WHERE account_id = $1 ORDER BY id LIMIT 1)
UNION ALL
(SELECT 'child', child_id::text, NULL, NULL, NULL, NULL, NULL, NULL
 FROM phr_guardianship  -- Guardianship.objects.active().filter(guardian=user)
 WHERE guardian_id = $1 AND valid_from <= $2 AND (valid_to IS NULL OR valid_to >= $2)
 ORDER BY id)
UNION ALL
SELECT 'mfa', NULL, NULL, NULL, NULL, NULL, NULL, NULL
WHERE EXISTS (SELECT FROM mfa_authenticator WHERE user_id = $1 AND type = $4)
UNION ALL
(SELECT 'membership', NULL, organization_id, role, NULL, NULL, NULL, NULL
 FROM membership ORDER BY id)
UNION ALL
(SELECT 'consents', NULL, grantee_org_id, purpose, categories,
        array_agg(patient_id::text ORDER BY created_at, id),
        array_agg(id::text ORDER BY created_at, id),
        array_agg(ends_at ORDER BY created_at, id)
 FROM consent  -- Consent.objects.active()
 WHERE starts_at <= $3 AND (ends_at IS NULL OR ends_at > $3)
 GROUP BY grantee_org_id, purpose, categories
 ORDER BY min(created_at), grantee_org_id, purpose, categories)
UNION ALL  -- the next instant a consent starts or ends: the facts hold until then
SELECT 'horizon', NULL, NULL, NULL, NULL, NULL, NULL,
       ARRAY[min(LEAST(CASE WHEN starts_at > $3 THEN starts_at END,
                       CASE WHEN ends_at > $3 THEN ends_at END))]
FROM consent
UNION ALL  -- the access epoch these facts were read at (NULL: not to be cached)
SELECT 'epoch', CASE WHEN current_setting('hagukumi.access_changed', true) = '1' THEN NULL
                     ELSE xact::text END,
       NULL, NULL, NULL, NULL, NULL, NULL
FROM sharing_access_epoch
"""
_FACTS_STATEMENT = "hagukumi_access_facts"


# The same statement with client-side parameters, for connections that must
# not hold prepared statements (ACCESS_FACTS_PREPARED off: a PgBouncer in
# transaction-pooling mode hands each transaction a different server
# connection, where a PREPAREd name does not exist).
_FACTS_SQL_PLAIN = re.sub(r"\$([1-4])", lambda m: f"%(p{m.group(1)})s", _FACTS_SQL)


def _facts_rows(user: Any) -> list[tuple[Any, ...]]:
    """Run the facts statement for `user`, preparing it first on a new
    database connection. (A prepared statement lives as long as its
    connection, whatever happens to transactions; a reconnection is a new
    raw connection object, so it is prepared again.)"""
    from allauth.mfa.models import Authenticator

    parameters = [user.pk, timezone.localdate(), timezone.now(), Authenticator.Type.TOTP.value]
    with connection.cursor() as cursor:
        if not getattr(settings, "ACCESS_FACTS_PREPARED", True):
            cursor.execute(
                _FACTS_SQL_PLAIN, {f"p{n}": value for n, value in enumerate(parameters, 1)}
            )
            return cursor.fetchall()
        if getattr(connection, "_hagukumi_facts_prepared_on", None) is not connection.connection:
            cursor.execute(
                f"PREPARE {_FACTS_STATEMENT} (bigint, date, timestamptz, text) AS {_FACTS_SQL}"
            )
            connection._hagukumi_facts_prepared_on = connection.connection
        cursor.execute(f"EXECUTE {_FACTS_STATEMENT} (%s, %s, %s, %s)", parameters)
        return cursor.fetchall()


def _current_epoch() -> int | None:
    """The access epoch now (NULL inside a transaction that changed access
    facts): one small statement, in place of the facts statement when this
    process holds the user's grants (_GrantCache)."""
    with connection.cursor() as cursor:
        cursor.execute(_EPOCH_SQL)
        row = cursor.fetchone()
    return row[0] if row else None


def _facts(user: Any) -> _Facts:
    """The user's facts, read once per request (cached on the user object);
    taken from this process's grant cache when the access epoch says they
    still hold (asked once per request)."""
    cached: _Facts | None = getattr(user, "_hagukumi_facts", None)
    if cached is not None:
        return cached
    if not getattr(user, "_hagukumi_epoch_asked", False) and _GRANT_CACHE.holds(user):
        user._hagukumi_epoch_asked = True
        if _GRANT_CACHE.take(user, _current_epoch()):
            return user._hagukumi_facts  # type: ignore[no-any-return]
    blocked, children, memberships, consents = [], [], [], []
    own, mfa, horizon, epoch = None, False, None, None
    for kind, patient, org, word, categories, patients, ids, ends in _facts_rows(user):
        if kind == "consents":
            consents.append((org, word, categories, patients, ids, ends))
        elif kind == "blocked":
            blocked.append(uuid.UUID(patient))
        elif kind == "own":
            own = patient
        elif kind == "child":
            children.append(patient)
        elif kind == "mfa":
            mfa = True
        elif kind == "membership":
            memberships.append((org, word))
        elif kind == "horizon":
            horizon = ends[0]
        elif kind == "epoch":
            epoch = None if patient is None else int(patient)
    facts = _Facts(
        blocked=tuple(blocked),
        own=own,
        children=tuple(children),
        mfa=mfa,
        memberships=tuple(memberships),
        consents=tuple(consents),
        horizon=horizon,
        epoch=epoch,
    )
    user._hagukumi_facts = facts
    return facts


def staff_organization_ids(user: Any, role: str) -> list[int]:
    """The organizations where this user is active staff in `role` — none
    without MFA (phr.roles.organizations_for and has_mfa, read from the
    user's facts: no query of its own when the grants are cached)."""
    if not getattr(user, "is_authenticated", False):
        return []
    facts = _facts(user)
    if not facts.mfa:
        return []
    return [org for org, member_role in facts.memberships if member_role == role]


def blocked_patients(user: Any) -> tuple[uuid.UUID, ...]:
    """Patients this user must learn nothing of (DV等支援措置)."""
    if not getattr(user, "is_authenticated", False):
        return ()
    return _facts(user).blocked


def _consent_grants(facts: _Facts) -> list[_Grant]:
    from sharing.models import ConsentPurpose

    merged: dict[tuple[Any, ...], _Grant] = {}
    # Staff without MFA get nothing through their organizations.
    roles = dict(facts.memberships) if facts.mfa else {}
    blocked = {str(p) for p in facts.blocked}
    # The role an organization's consent needs, by purpose: research
    # consents give no identified access.
    expected = {
        ConsentPurpose.CARE: Role.CLINIC_STAFF,
        ConsentPurpose.EMERGENCY: Role.EMERGENCY_RESPONDER,
    }
    for org_id, purpose, categories, patients, consent_ids, ends in facts.consents:
        if org_id is None:  # to the user in person (the statement asked for no other)
            if purpose != ConsentPurpose.CARE:
                continue  # a person is only ever a care grantee
            rule, role = "consent_person", "person"
        else:
            role = roles.get(org_id)
            if role is None or expected.get(purpose) != role:
                continue
            rule = "consent"
        emergency = purpose == ConsentPurpose.EMERGENCY
        cats = tuple(sorted(categories))
        # Consents alike but for their patient become one grant (one
        # compartment-overlap branch with an array of patients), so a
        # clinic holding hundreds of consents does not make a query with
        # hundreds of branches.
        key = (rule, role, org_id, cats, emergency)
        grant = merged.get(key)
        if grant is None:
            grant = merged[key] = _Grant(
                rule,
                Purpose.EMERGENCY if emergency else Purpose.CARE,
                role,
                organization_id=org_id,
                categories=cats,
                summary_only=emergency,
                listable=not emergency,
            )
        for patient_id, consent_id, ends_at in zip(patients, consent_ids, ends, strict=True):
            if patient_id in blocked or patient_id in grant.consent_of:
                continue  # blocked; or an earlier consent covers the patient
            grant.patient_ids.append(patient_id)
            grant.consent_of[patient_id] = consent_id
            if ends_at is not None:
                grant.consent_until[patient_id] = ends_at
    return list(merged.values())


def _emergency_grants(user: Any, facts: _Facts) -> list[_Grant]:
    from sharing.models import BreakGlass, EmergencyPreference

    grants: list[_Grant] = []
    responder_orgs = [org for org, role in facts.memberships if role == Role.EMERGENCY_RESPONDER]
    if not responder_orgs:
        return grants
    blocked = set(facts.blocked)
    for window in BreakGlass.objects.open().filter(responder=user):
        if window.patient_id in blocked:
            continue
        grants.append(
            _Grant(
                "break_glass",
                Purpose.EMERGENCY,
                Role.EMERGENCY_RESPONDER,
                organization_id=window.organization_id,
                patient_ids=[str(window.patient_id)],
                summary_only=True,
                break_glass_id=window.pk,
                ends_at=window.ends_at,
                listable=False,
            )
        )
    opted_in = list(
        EmergencyPreference.objects.filter(share_summary=True).values_list("patient_id", flat=True)
    )
    if opted_in:
        grants.append(
            _Grant(
                "emergency_preference",
                Purpose.EMERGENCY,
                Role.EMERGENCY_RESPONDER,
                organization_id=responder_orgs[0],
                patient_ids=[str(p) for p in opted_in if p not in blocked],
                summary_only=True,
                listable=False,
            )
        )
    return grants


def _grants(user: Any) -> list[_Grant]:
    """Every rule that gives this user some reach, computed once per request
    (cached on the user object) from the user's facts (one query), plus,
    for emergency responders, their break-glass windows and the families
    who opted in."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return []
    cached: list[_Grant] | None = getattr(user, "_hagukumi_grants", None)
    if cached is not None:
        return cached
    facts = _facts(user)
    cached = getattr(user, "_hagukumi_grants", None)  # the grant cache answered
    if cached is not None:
        return cached
    blocked = {str(p) for p in facts.blocked}
    grants: list[_Grant] = []
    if facts.own is not None:
        grants.append(_Grant("self", Purpose.PERSONAL, "patient", patient_ids=[facts.own]))
    children = [child for child in facts.children if child not in blocked]
    if children:
        grants.append(_Grant("guardian", Purpose.PERSONAL, "guardian", patient_ids=children))
    grants += _consent_grants(facts)
    # Staff — platform admins and members of an organization — hold staff
    # grants only with MFA (phr.roles.is_staff_user and has_mfa, from the
    # same facts: without an admin flag or a membership there is no staff
    # grant to give).
    if facts.mfa:
        if user.is_platform_admin:
            grants.append(
                _Grant(
                    "platform_admin",
                    Purpose.OPERATIONS,
                    "admin",
                    everything=True,
                    blocked=facts.blocked,
                )
            )
        for org_id, role in facts.memberships:
            if role == Role.MUNICIPAL_STAFF:
                grants.append(
                    _Grant(
                        "municipal",
                        Purpose.PUBLIC_HEALTH,
                        Role.MUNICIPAL_STAFF,
                        organization_id=org_id,
                        residents_of=org_id,
                        submitter_org_ids=[org_id],
                        exclude_sensitivity=(Sensitivity.CLINIC_ONLY,),
                        blocked=facts.blocked,
                    )
                )
            elif role == Role.CLINIC_STAFF:
                grants.append(
                    _Grant(
                        "clinic_submitted",
                        Purpose.CARE,
                        Role.CLINIC_STAFF,
                        organization_id=org_id,
                        submitter_org_ids=[org_id],
                        blocked=facts.blocked,
                    )
                )
        grants += _emergency_grants(user, facts)
    user._hagukumi_grants = grants
    _GRANT_CACHE.put(user, facts, grants)
    return grants


def forget_grants(user: Any) -> None:
    """Drop the per-request cache (after a grant, revoke or block changes)
    and this process's cached grants of the user."""
    for attribute in ("_hagukumi_grants", "_hagukumi_facts", "_hagukumi_epoch_asked"):
        if hasattr(user, attribute):
            delattr(user, attribute)
    if getattr(user, "pk", None) is not None:
        _GRANT_CACHE.forget(user)


@dataclass(frozen=True)
class _Cached:
    epoch: int
    today: Any
    horizon: Any
    flags: tuple[bool, bool]
    facts: _Facts
    grants: list[_Grant]


class _GrantCache:
    """Grants kept between requests, per process, and trusted only when
    nothing they depend on can have changed (docs/decisions/0002-access.md,
    "Grants cached between requests"):

    - the access epoch (sharing_access_epoch, moved by triggers when a
      consent, DV block, membership, guardianship, an account's patient or
      an MFA authenticator changes — at commit, so an epoch names one
      committed state) is the one the facts were read at; a read by id gets
      the current epoch in the statement that loads its row, so a
      revocation committed before that statement counts, as it does
      without the cache;
    - a transaction that changed such a fact itself does not use (or fill)
      the cache: the epoch is NULL for it;
    - the local date is the same (memberships and guardianships run by
      date), no consent has started or ended since (the horizon), and the
      user's active and platform-admin flags (read with the user each
      request) are the same;
    - emergency responders are never cached: their break-glass windows and
      the families' emergency preferences are outside the epoch.

    Bounded (settings.ACCESS_GRANT_CACHE_SIZE users, the oldest dropped
    first); thread-safe."""

    def __init__(self) -> None:
        self._entries: dict[tuple[Any, ...], _Cached] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(user: Any) -> tuple[Any, ...]:
        db = connection.settings_dict
        return (db.get("HOST"), db.get("PORT"), db.get("NAME"), user.pk)

    @staticmethod
    def _flags(user: Any) -> tuple[bool, bool]:
        return (bool(user.is_active), bool(getattr(user, "is_platform_admin", False)))

    def put(self, user: Any, facts: _Facts, grants: list[_Grant]) -> None:
        if facts.epoch is None or any(
            role == Role.EMERGENCY_RESPONDER for _org, role in facts.memberships
        ):
            return
        limit = getattr(settings, "ACCESS_GRANT_CACHE_SIZE", 1024)
        entry = _Cached(
            facts.epoch, timezone.localdate(), facts.horizon, self._flags(user), facts, grants
        )
        key = self._key(user)
        with self._lock:
            self._entries.pop(key, None)
            while self._entries and len(self._entries) >= limit:
                del self._entries[next(iter(self._entries))]
            if limit > 0:
                self._entries[key] = entry

    def holds(self, user: Any) -> bool:
        return self._key(user) in self._entries

    def take(self, user: Any, epoch: int | None) -> bool:
        """Put the cached facts and grants on `user` (for this request) if
        they hold at `epoch`, the epoch read with the row."""
        if epoch is None:
            return False
        entry = self._entries.get(self._key(user))
        if (
            entry is None
            or entry.epoch != epoch
            or entry.flags != self._flags(user)
            or entry.today != timezone.localdate()
            or (entry.horizon is not None and timezone.now() >= entry.horizon)
        ):
            return False
        user._hagukumi_facts = entry.facts
        # A municipal grant remembers which residents it asked about in
        # this request: a new request starts with none.
        user._hagukumi_grants = [
            replace(grant, _resident={}) if grant.residents_of is not None else grant
            for grant in entry.grants
        ]
        return True

    def forget(self, user: Any) -> None:
        with self._lock:
            self._entries.pop(self._key(user), None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_GRANT_CACHE = _GrantCache()


def _for_purpose(user: Any, purpose: str | None) -> list[_Grant]:
    """The grants that answer for `purpose`; for None, every listable one
    (emergency grants apply only when purpose="emergency" is asked)."""
    return [
        grant
        for grant in _grants(user)
        if (grant.listable if purpose is None else grant.purpose == purpose)
    ]


def visible_records(user: Any, purpose: str | None = None, *, include_deleted: bool = False) -> Q:
    """Filter for phr.Resource: what this user may read (for `purpose`,
    or for any listable purpose they hold when None). Tombstones are
    excluded unless `include_deleted` (a FHIR read answers 410 Gone to those
    who could see the record, 404 to everyone else). Emergency grants only
    apply when purpose="emergency" is asked for explicitly."""
    q = Q(pk__in=[])
    for grant in _for_purpose(user, purpose):
        q |= grant.q()
    return q if include_deleted else q & Q(deleted=False)


# The organization that submitted a row (its provenance's agent), as a
# scalar subquery on the row being read: constant SQL, no input in it.
_SUBMITTER = RawSQL(
    "SELECT agent_org_id FROM phr_provenance WHERE id = phr_resource.provenance_id",
    (),
    output_field=BigIntegerField(),
)


# The access epoch (see _GrantCache); NULL inside a transaction that
# changed access facts itself. Read with a row by id, or alone (_facts).
_EPOCH_SQL = (
    "SELECT CASE WHEN current_setting('hagukumi.access_changed', true) = '1' THEN NULL"
    " ELSE xact END FROM sharing_access_epoch"
)
_EPOCH = RawSQL(_EPOCH_SQL, (), output_field=BigIntegerField())  # noqa: S611 (constant SQL)


def readable_record(
    user: Any, rows: QuerySet[Resource], *, purpose: str | None = None
) -> Resource | None:
    """The first of `rows` (a filter by id) if `user` may read it for
    `purpose` — a tombstone included, as visible_records(include_deleted=
    True) would let it through — else None: missing and withheld alike.

    A read by id loads the row once and decides it in Python against the
    grants already computed (_Grant.admits, the twin of the SQL filter), so
    it does not carry every grant into its WHERE clause.

    When this process holds the user's grants from an earlier request
    (_GrantCache), the row comes with the current access epoch in the
    same statement, and the grants are used if it still matches — the
    read is then one statement; else they are computed as always."""
    if (
        not hasattr(user, "_hagukumi_grants")
        and getattr(user, "is_authenticated", False)
        and _GRANT_CACHE.holds(user)
    ):
        row = rows.annotate(submitter_org_id=_SUBMITTER, access_epoch=_EPOCH).first()
        if row is None:
            return None
        user._hagukumi_epoch_asked = True  # with the row: _facts need not ask again
        _GRANT_CACHE.take(user, row.access_epoch)
        grants = _for_purpose(user, purpose)
        if not grants:
            return None
    else:
        grants = _for_purpose(user, purpose)
        if not grants:
            return None
        if any(grant.submitter_org_ids for grant in grants):
            # In the same statement (a scalar subquery builds faster than a join).
            rows = rows.annotate(submitter_org_id=_SUBMITTER)
        row = rows.first()
        if row is None:
            return None
    submitter = getattr(row, "submitter_org_id", None)
    if any(grant.admits(row, submitter) for grant in grants):
        return row
    return None


def _grant_reaches(grant: _Grant, patient_id: uuid.UUID, category: str | None = None) -> bool:
    if patient_id in grant.blocked:
        return False
    if grant.everything or grant.names(patient_id):
        return True
    if grant.residents_among([patient_id]):
        return True
    if grant.submitter_org_ids:
        # Records this organization submitted about the patient (of the
        # category asked about, when one is).
        submitted = Resource.objects.filter(
            compartments__overlap=[patient_id],
            provenance__agent_org_id__in=grant.submitter_org_ids,
            deleted=False,
        ).exclude(sensitivity__in=grant.exclude_sensitivity)
        if category is not None:
            submitted = submitted.filter(category=category)
        return submitted.exists()
    return False


def _decision(grant: _Grant, patient_id: uuid.UUID | None = None) -> Decision:
    key = str(patient_id)
    covering = grant.consent_of.get(key) if patient_id is not None else None
    if covering is not None:
        consent_id, until = uuid.UUID(covering), grant.consent_until.get(key)
    else:
        consent_id, until = None, grant.ends_at
    return Decision(
        True,
        grant.rule,
        str(RULE_REASONS.get(grant.rule, grant.rule)),
        purpose=grant.purpose,
        role=grant.role,
        organization_id=grant.organization_id,
        consent_id=consent_id,
        break_glass_id=grant.break_glass_id,
        categories=grant.categories,
        until=until,
    )


def _staff_without_mfa(user: Any) -> bool:
    """phr.roles.is_staff_user(user) and not has_mfa(user), with the MFA
    fact already read for the grants."""
    if not getattr(user, "is_authenticated", False):
        return False
    return not _facts(user).mfa and is_staff_user(user)


def decide(
    user: Any,
    patient: Patient | uuid.UUID,
    *,
    category: str | None = None,
    purpose: str | None = None,
    sensitivity: str = Sensitivity.NORMAL,
) -> Decision:
    """May `user` see `patient`'s records of `category` (None: the patient
    at all) for `purpose`? The Decision names the rule that decided."""
    patient_id = patient.pk if isinstance(patient, Patient) else patient
    if patient_id in blocked_patients(user):
        return DV_BLOCKED
    # Staff without MFA hold no staff grant (see _grants); what they hold as
    # a parent or a named person still applies.
    for grant in _for_purpose(user, purpose):
        if not grant.allows(category, sensitivity):
            continue
        if _grant_reaches(grant, patient_id, category):
            return _decision(grant, patient_id)
    if _staff_without_mfa(user):
        return NO_MFA
    return DENY


def explain(user: Any, patient: Patient | uuid.UUID, *, category: str | None = None) -> Explanation:
    """Why `user` may or may not see `patient`'s `category` records: every
    rule or consent that grants it, or the reason for the denial (a DV
    block, missing MFA, a consent that expired or was revoked, or none)."""
    from sharing.models import Consent

    patient_id = patient.pk if isinstance(patient, Patient) else patient
    if patient_id in blocked_patients(user):
        return Explanation(DV_BLOCKED, [])
    granting = [
        _decision(g, patient_id)
        for g in _grants(user)
        if g.allows(category, Sensitivity.NORMAL) and _grant_reaches(g, patient_id, category)
    ]
    if granting:
        return Explanation(granting[0], granting)
    if _staff_without_mfa(user):
        return Explanation(NO_MFA, [])
    orgs = [m.organization_id for m in active_memberships(user)]
    lapsed = (
        Consent.objects.filter(patient_id=patient_id)
        .filter(Q(grantee_user=user) | Q(grantee_org_id__in=orgs))
        .order_by("-created_at")
        .first()
    )
    if lapsed is not None:
        status = lapsed.status
        if status == Consent.Status.REVOKED:
            return Explanation(CONSENT_REVOKED, [])
        if status == Consent.Status.EXPIRED:
            return Explanation(CONSENT_EXPIRED, [])
        if category is not None and category not in lapsed.categories:
            return Explanation(CATEGORY_NOT_GRANTED, [])
    return Explanation(DENY, [])


def address_hidden_for(user: Any, patient_id: uuid.UUID) -> bool:
    """Under a DV block (DV等支援措置) a person's address is hidden from
    everyone but the municipal staff who hold it."""
    from sharing.models import DvBlock

    if not DvBlock.objects.active().filter(patient_id=patient_id).exists():
        return False
    return not any(g.rule == "municipal" and _grant_reaches(g, patient_id) for g in _grants(user))


def redact_for(user: Any, resource: dict[str, Any]) -> dict[str, Any]:
    """The resource as this user may see it: a Patient's address removed
    when it is hidden from them."""
    if resource.get("resourceType") != "Patient" or "address" not in resource:
        return resource
    try:
        patient_id = uuid.UUID(str(resource.get("id")))
    except ValueError:
        return resource
    if not address_hidden_for(user, patient_id):
        return resource
    return {k: v for k, v in resource.items() if k != "address"}


RULE_REASONS = {
    "self": _("These are your own records."),
    "guardian": _("You are this child's guardian."),
    "municipal": _("Municipal duty: a resident, or records the municipality submitted."),
    "clinic_submitted": _("Records this clinic submitted."),
    "platform_admin": _("Platform administration."),
    "consent": _("The family consented to share these records with this organization."),
    "consent_person": _("The family consented to share these records with this person."),
    "break_glass": _("Emergency access (break-glass), reviewed afterwards."),
    "emergency_preference": _("The family lets emergency services see the emergency summary."),
}


def access_patient(
    user: Any,
    patient_id: uuid.UUID | str,
    *,
    category: str | None = None,
    purpose: str | None = None,
    action: str = "read",
) -> Patient:
    """Return the patient, or raise Http404, and write the audit row.

    "Doesn't exist" and "not yours" look the same on purpose, so nobody
    can probe which records exist.
    """
    try:
        pid = uuid.UUID(str(patient_id))
    except ValueError:
        raise Http404 from None
    patient = Patient.objects.filter(pk=pid).first()
    if patient is None:
        raise Http404
    decision = decide(user, patient, category=category, purpose=purpose)
    if not decision:
        audit_denied(user, pid, action=action, rule=decision.rule)
        raise Http404
    audit_reveal(
        user, [pid], categories=[category] if category else [], action=action, purpose=purpose
    )
    return patient


def audit_reveal(
    user: Any,
    patient_ids: Iterable[uuid.UUID],
    *,
    categories: Iterable[str] = (),
    action: str = "read",
    detail: dict[str, Any] | None = None,
    purpose: str | None = None,
) -> int:
    """One audit row per patient revealed by a response, naming the rule
    (role, organization, purpose, consent or break-glass) that allowed it."""
    cats = sorted(set(categories))
    entries = []
    for pid in dict.fromkeys(patient_ids):
        decision = decide(user, pid, purpose=purpose)
        why: dict[str, Any] = {"rule": decision.rule}
        if decision.consent_id is not None:
            why["consent"] = str(decision.consent_id)
        if decision.break_glass_id is not None:
            why["break_glass"] = decision.break_glass_id
        entries.append(
            AuditEntry(
                action=action,
                outcome="success",
                actor_id=getattr(user, "pk", None),
                actor_role=decision.role,
                organization_id=decision.organization_id,
                patient_id=pid,
                categories=cats,
                purpose=decision.purpose,
                break_glass=decision.break_glass_id is not None,
                detail={**why, **(detail or {})},
            )
        )
    return audit_write_many(entries)


def audit_denied(user: Any, patient_id: uuid.UUID | None, *, action: str, rule: str) -> None:
    """Failed authorizations are logged too (ASVS 7.2.2) — but never shown
    to families as an access, since nothing was revealed."""
    audit_write_many(
        [
            AuditEntry(
                action=action,
                outcome="denied",
                actor_id=getattr(user, "pk", None),
                patient_id=patient_id,
                detail={"rule": rule},
            )
        ]
    )


def audit_blocked_attempt(
    user: Any,
    *,
    action: str,
    patient_ids: Iterable[Any] = (),
    resource: tuple[str, str] | None = None,
) -> int:
    """A read that answered "not found" (or a search that named a person):
    when it was about a person DV-blocked for this user (DV等支援措置), the
    attempt is audited as denied (rule dv_block) — the user still gets the
    same answer as for a record that does not exist. `patient_ids` are the
    persons a search named; `resource` the (type, id) a read asked for.
    Returns the number of audit rows written. Costs nothing for a user
    without a block."""
    blocked = set(blocked_patients(user))
    if not blocked:
        return 0
    named: list[uuid.UUID] = []
    for value in patient_ids:
        text = str(value)
        text = text[len("Patient/") :] if text.startswith("Patient/") else text
        try:
            named.append(uuid.UUID(text))
        except ValueError:
            continue
    if resource is not None:
        try:
            rid = uuid.UUID(str(resource[1]))
        except ValueError:
            rid = None
        if rid is not None:
            compartments = (
                Resource.objects.filter(id=rid, resource_type=resource[0])
                .values_list("compartments", flat=True)
                .first()
            )
            named += list(compartments or ())
    hits = list(dict.fromkeys(p for p in named if p in blocked))
    for patient_id in hits:
        audit_denied(user, patient_id, action=action, rule=DV_BLOCKED.rule)
    return len(hits)


# --------------------------------------------------------------------------
# Writes by clinics (the clinics issue): who may add records for a patient
# --------------------------------------------------------------------------

CLINIC_REGISTERED = Decision(
    True,
    "clinic_registered",
    str(_("This clinic registered the patient, who has not linked an account yet.")),
)


# What a family records itself (purpose=personal writes): school checkup
# results the school did not send, birth data missing from the records, the
# parents' own notes (保護者の記録 / 妊婦の記録), home vitals and medicines,
# and vaccinations given elsewhere that the parent reports (before moving to
# this town, read off the paper handbook: an Immunization with primarySource
# false, docs/decisions/0014-handbook.md) — never a change to the
# municipality's or a clinic's records, which stay theirs. Never prenatal
# checkups: those are the clinic's examination results.
FAMILY_WRITABLE = (
    Category.SCHOOL_CHECKUPS,
    Category.INFANT_CHECKUPS,
    Category.PREGNANCY,
    Category.VITALS,
    Category.MEDICATIONS,
    Category.ALLERGIES_CONDITIONS,
    Category.VACCINATIONS,
)


def _may_write_personal(user: Any, patient_id: uuid.UUID, category: str) -> Decision:
    """The family's own writes: an adult for herself (rule self), a
    guardian for a child under an active guardianship (rule guardian), of
    the FAMILY_WRITABLE categories — the same grants that let them read."""
    if category not in FAMILY_WRITABLE:
        return DENY
    for grant in _for_purpose(user, Purpose.PERSONAL):
        if grant.rule in ("self", "guardian") and grant.names(patient_id):
            return _decision(grant, patient_id)
    return DENY


def may_write(
    user: Any, patient: Patient | uuid.UUID, *, category: str, purpose: str = Purpose.CARE
) -> Decision:
    """May `user`, as clinic staff, write `category` records for `patient`?
    (With purpose=Purpose.PERSONAL: may they, as the patient herself or a
    guardian, write the family's own `category` records? — see
    FAMILY_WRITABLE; no clinic rule answers then, and no family rule
    answers a care write.)

    Writing asks more than reading: the records a clinic submitted before
    (rule clinic_submitted) let it read them, never add more. Yes when
    - an active care consent names the user's clinic and covers
      `category` (rule consent: the patient shares with the clinic, or
      added it herself on the Sharing page), or
    - the user's clinic registered the patient — an adult whose Patient
      resource the clinic wrote first — and she has not linked an account
      yet (rule clinic_registered): once she has, her consents decide.
    No for staff without MFA, DV-blocked users and everyone else. The
    Decision's organization_id is the clinic the write is made for.
    """
    from phr.models import ResourceHistory
    from phr.roles import has_mfa, organizations_for

    patient_id = patient.pk if isinstance(patient, Patient) else patient
    if patient_id in blocked_patients(user):
        return DV_BLOCKED
    if purpose == Purpose.PERSONAL:
        return _may_write_personal(user, patient_id, category)
    for grant in _grants(user):
        if (
            grant.rule == "consent"
            and grant.role == Role.CLINIC_STAFF
            and grant.allows(category, Sensitivity.NORMAL)
            and _grant_reaches(grant, patient_id, category)
        ):
            return _decision(grant, patient_id)
    if is_staff_user(user) and not has_mfa(user):
        return NO_MFA
    clinics = [org.pk for org in organizations_for(user, Role.CLINIC_STAFF)]
    unlinked = Patient.objects.filter(
        pk=patient_id, kind=Patient.Kind.ADULT, account__isnull=True, merged_into__isnull=True
    )
    if clinics and unlinked.exists():
        registered_by = (
            ResourceHistory.objects.filter(
                resource_id=patient_id,
                resource_type="Patient",
                version=1,
                provenance__origin="clinic",
                provenance__agent_org_id__in=clinics,
            )
            .values_list("provenance__agent_org_id", flat=True)
            .first()
        )
        if registered_by is not None:
            return Decision(
                True,
                CLINIC_REGISTERED.rule,
                CLINIC_REGISTERED.reason,
                purpose=Purpose.CARE,
                role=Role.CLINIC_STAFF,
                organization_id=registered_by,
            )
    return DENY


# --------------------------------------------------------------------------
# Matching a clinic system's Patient (the clinics issue, part 5): whom a
# clinic may be told is known here
# --------------------------------------------------------------------------


def may_know(user: Any, patient: Patient | uuid.UUID, *, clinic_id: int) -> Decision:
    """May `user`, writing for clinic `clinic_id`, have a Patient its system
    sends matched to `patient` (by an identifier she carries)?

    Yes when an active care consent names that clinic (any categories: the
    consent lets the clinic read her Patient resource already, so a match
    reveals nothing new), or the clinic registered her and she has not
    linked an account yet (may_write's clinic_registered rule). No for
    DV-blocked users, staff without MFA and everyone else — who must learn
    nothing, so callers treat "no" exactly like a person who is not here."""
    patient_id = patient.pk if isinstance(patient, Patient) else patient
    if patient_id in blocked_patients(user):
        return DV_BLOCKED
    for grant in _grants(user):
        if (
            grant.rule == "consent"
            and grant.role == Role.CLINIC_STAFF
            and grant.organization_id == clinic_id
            and grant.names(patient_id)
        ):
            return _decision(grant, patient_id)
    # "" asks about no category: consents do not answer it, so only the
    # registration rule can (as fhir_bundle asks for the Patient itself).
    registered = may_write(user, patient_id, category="")
    if not registered:
        return registered  # the reason (no MFA, none)
    if registered.rule == CLINIC_REGISTERED.rule and registered.organization_id == clinic_id:
        return registered
    return DENY  # registered by another clinic of the user's


# --------------------------------------------------------------------------
# Research (issue 8): who may be in an anonymized release
# --------------------------------------------------------------------------

RESEARCH_COHORT_KINDS = ("pregnancy", "child", "both")
JAPAN = ZoneInfo("Asia/Tokyo")

_RESEARCH_COHORT_SQL = """
WITH listed AS (
    SELECT DISTINCT r.patient_id
    FROM phr_residency r
    WHERE r.municipality_id = ANY(%(municipalities)s)
      AND r.valid_from <= %(today)s AND (r.valid_to IS NULL OR r.valid_to >= %(today)s)
),
current_residence AS (
    -- a patient's municipality is her newest residency in force
    SELECT DISTINCT ON (r.patient_id) r.patient_id, r.municipality_id
    FROM phr_residency r JOIN listed ON listed.patient_id = r.patient_id
    WHERE r.valid_from <= %(today)s AND (r.valid_to IS NULL OR r.valid_to >= %(today)s)
    ORDER BY r.patient_id, r.valid_from DESC, r.id DESC
),
pregnant AS (
    SELECT DISTINCT s.patient_id
    FROM phr_resource e CROSS JOIN LATERAL unnest(e.compartments) AS s(patient_id)
    WHERE %(pregnancy)s AND e.resource_type = 'EpisodeOfCare' AND NOT e.deleted
      AND e.content->'type' @> '[{"coding": [{"code": "pregnancy"}]}]'::jsonb
),
born AS (
    SELECT res.id AS patient_id
    FROM phr_resource res
    WHERE %(child)s AND res.resource_type = 'Patient' AND NOT res.deleted
      AND res.content->>'birthDate' ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}$'
      AND substr(res.content->>'birthDate', 1, 4)::int BETWEEN %(year_from)s AND %(year_to)s
),
base AS (
    SELECT p.id, cr.municipality_id
    FROM current_residence cr JOIN phr_patient p ON p.id = cr.patient_id
    WHERE cr.municipality_id = ANY(%(municipalities)s)
      AND p.merged_into_id IS NULL
      AND (
          (p.kind = 'child' AND p.id IN (SELECT patient_id FROM born))
          OR (p.kind = 'adult' AND p.id IN (SELECT patient_id FROM pregnant))
      )
),
latest AS (
    -- the newest choice per patient and category decides (a sequential
    -- scan and one sort: cheaper than a lookup per patient)
    SELECT DISTINCT ON (c.patient_id, c.category) c.patient_id, c.category, c.choice
    FROM sharing_researchchoice c
    WHERE c.category = ANY(%(categories)s) AND c.decided_at <= %(at)s
    ORDER BY c.patient_id, c.category, c.decided_at DESC, c.id DESC
),
chosen AS (
    SELECT patient_id,
           array_agg(category) FILTER (WHERE choice = 'consent') AS consented,
           array_agg(category) FILTER (WHERE choice = 'refuse') AS refused
    FROM latest
    GROUP BY patient_id
)
-- opt-out in force: every category asked for but those refused;
-- otherwise (opt-in, no regime, notice not yet published): those consented
SELECT base.id,
       CASE WHEN regime.kind = 'opt_out' AND regime.notice_published_on <= %(today)s
            THEN ARRAY(
                SELECT unnest(%(categories)s::text[])
                EXCEPT SELECT unnest(chosen.refused)
            )
            ELSE chosen.consented
       END
FROM base
LEFT JOIN chosen ON chosen.patient_id = base.id
LEFT JOIN sharing_researchregime regime ON regime.municipality_id = base.municipality_id
"""


def research_cohort(
    *,
    municipality_ids: Sequence[int],
    categories: Sequence[str],
    cohort_kind: str,
    birth_year_from: int,
    birth_year_to: int,
    at: datetime | None = None,
) -> dict[uuid.UUID, frozenset[str]]:
    """The patients who may be in an anonymized research release at `at`
    (now by default) and, per patient, the categories they may contribute.

    - Residence: the patient's newest residency in force is in one of
      `municipality_ids` (a resident of another municipality is absent).
    - Cohort: "child" → children born (FHIR Patient.birthDate, a full date)
      in [birth_year_from, birth_year_to]; "pregnancy" → adults with at
      least one pregnancy EpisodeOfCare in the store (not deleted);
      "both" → the union. Merged patients (Patient.merged_into) are out.
    - Per category: the newest ResearchChoice (made by `at`) decides —
      consent in, refuse out; without one, the municipality's
      ResearchRegime: opt-out whose notice was published on or before
      today (Asia/Tokyo) → in; opt-in or no regime → out
      (docs/decisions/0023-research-consent.md).
    - A patient with no category left is absent.

    This decides release eligibility for anonymized data only: it grants
    no identified access (no Decision; the researcher reads nothing here).
    One SQL statement, whatever the number of patients (about 4 s for
    120,000 patients with 320,000 choices on a shared development machine)."""
    if cohort_kind not in RESEARCH_COHORT_KINDS:
        raise ValueError(f"unknown cohort kind {cohort_kind!r}")
    unknown = sorted(set(categories) - set(Category.values))
    if unknown:
        raise ValueError(f"unknown categories {unknown!r}")
    wanted = sorted(set(categories))
    municipalities = sorted({int(m) for m in municipality_ids})
    if not wanted or not municipalities:
        return {}
    moment = at or timezone.now()
    params = {
        "municipalities": municipalities,
        "categories": wanted,
        "today": timezone.localdate(moment, timezone=JAPAN),
        "at": moment,
        "pregnancy": cohort_kind in ("pregnancy", "both"),
        "child": cohort_kind in ("child", "both"),
        "year_from": int(birth_year_from),
        "year_to": int(birth_year_to),
    }
    with connection.cursor() as cursor:
        cursor.execute(_RESEARCH_COHORT_SQL, params)
        return {
            patient_id if isinstance(patient_id, uuid.UUID) else uuid.UUID(str(patient_id)): (
                frozenset(found)
            )
            for patient_id, found in cursor.fetchall()
            if found  # no category left: absent
        }
