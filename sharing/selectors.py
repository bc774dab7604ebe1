"""Reads for the Sharing pages: who can see what now and why, the access
history a family sees, the privacy officer's queue, and what others have
shared with me.

Nothing here decides access to records: patients a user may decide for
come from `sharing.services.may_decide_for`, what a grantee may see from
`sharing.access` (decide / explain / visible_records). These functions
only gather and shape; the views audit what they reveal.
"""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.core.paginator import Page, Paginator
from django.db.models import Q, QuerySet
from django.http import Http404
from django.utils import timezone
from django.utils.translation import get_language, gettext, gettext_lazy, pgettext_lazy

from phr.models import (
    AuditEvent,
    Guardianship,
    Membership,
    Organization,
    Patient,
    Residency,
    Resource,
    Role,
    User,
)
from phr.roles import active_memberships, has_mfa
from phr.selectors import person_name
from phr.terminology import Category
from sharing.access import Explanation, blocked_patients, decide, explain, visible_records
from sharing.models import AccessReport, Consent, ConsentPurpose, DvBlock, EmergencyPreference
from sharing.services import may_decide_for

# Dates are shown as Japanese calendar days, whatever the server's zone.
JAPAN = ZoneInfo("Asia/Tokyo")
HISTORY_PAGE_SIZE = 30
REPORTS_PAGE_SIZE = 30
PAST_CONSENTS_SHOWN = 10
CLINIC_SEARCH_LIMIT = 20

# Why someone may see a person's records, said to the family (third
# person; sharing.access.RULE_REASONS speaks to the viewer).
RULE_WORDS = {
    "self": gettext_lazy("The person herself."),
    "guardian": gettext_lazy("A guardian of the child."),
    "consent": gettext_lazy("Your family's consent to this organization."),
    "consent_person": gettext_lazy("Your family's consent to this person."),
    "municipal": gettext_lazy(
        "Municipal duty: the municipality you live in, for mother and child health services."
    ),
    "clinic_submitted": gettext_lazy("Only the records this clinic submitted itself."),
    "break_glass": gettext_lazy(
        "Emergency access without consent (break-glass); the municipality reviews every use."
    ),
    "emergency_preference": gettext_lazy(
        "Your emergency setting: emergency services may see the emergency summary."
    ),
    "platform_admin": gettext_lazy("Platform administration (every access is recorded)."),
}
DENIAL_WORDS = {
    "category_not_granted": gettext_lazy("Not included in the consent."),
    "consent_revoked": gettext_lazy("The consent was revoked."),
    "consent_expired": gettext_lazy("The consent has expired."),
    "dv_block": gettext_lazy("Sharing with this person is blocked."),
    "staff_without_mfa": gettext_lazy("Staff without two-factor authentication see nothing."),
    "default_deny": gettext_lazy("No rule or consent allows it."),
}
# Rules worth a second look in the access history.
HIGHLIGHTED_RULES = frozenset({"break_glass"})

# What an audited action showed, when the row names no data category.
ACTION_WORDS = {
    "view.family": gettext_lazy("the family page (names and birth dates)"),
    "view.timeline": gettext_lazy("the records page"),
    "view.sharing": gettext_lazy("the Sharing page"),
    "view.access_history": gettext_lazy("the access history"),
    "view.shared_with_me": gettext_lazy("the list of records shared with them"),
    "view.access_reports": gettext_lazy("a report about a suspicious access"),
    "fhir.read": gettext_lazy("records, through the API"),
    "fhir.search": gettext_lazy("a search, through the API"),
    "fhir.history": gettext_lazy("a record's history, through the API"),
    "fhir.write": gettext_lazy("a change to the records, through the API"),
    "fhir.delete": gettext_lazy("a deletion of a record, through the API"),
    "consent.grant": gettext_lazy("a new sharing consent"),
    "consent.revoke": gettext_lazy("the end of a sharing consent"),
    "emergency.preference": gettext_lazy("the emergency setting"),
    "access_report.close": gettext_lazy("the handling of a report"),
    "emergency.summary": gettext_lazy("the emergency summary"),
    "emergency.search": gettext_lazy("an emergency search that found this person"),
    "break_glass.start": gettext_lazy("emergency access without consent (break-glass)"),
    "break_glass.review": gettext_lazy("the review of an emergency access"),
    "emergency.card_open": gettext_lazy("the emergency summary, opened with the emergency card"),
    "emergency.card_create": gettext_lazy("a new emergency card"),
    "emergency.card_revoke": gettext_lazy("the end of an emergency card"),
    "view.emergency_cards": gettext_lazy("the list of emergency cards"),
    "link_code.issue": gettext_lazy("a new family link code"),
    "link_code.revoke": gettext_lazy("the end of a family link code"),
    "link_code.redeem": gettext_lazy("an account linked with the family link code"),
    "view.link_codes": gettext_lazy("the list of family link codes"),
    "view.link_code_letter": gettext_lazy("the letter with a family link code"),
    "view.match_review": gettext_lazy("a record the municipality checks against an uploaded row"),
    "match_review.accept": gettext_lazy(
        "an uploaded row accepted into the record (birth date or sex corrected)"
    ),
    "match_review.reject": gettext_lazy("an uploaded row kept out of the record"),
    # The family's own pages (issue 6)
    "view.handbook": gettext_lazy("the MCH handbook"),
    "view.handbook_print": gettext_lazy("the MCH handbook, for printing"),
    "handbook.birth": gettext_lazy("birth data entered in the MCH handbook"),
    "handbook.birth_data": gettext_lazy("birth data entered in the MCH handbook"),
    "handbook.school_checkup": gettext_lazy("a school checkup entered in the MCH handbook"),
    "handbook.vaccination": gettext_lazy("a vaccination entered in the MCH handbook"),
    "handbook.vaccination_delete": gettext_lazy(
        "the deletion of a vaccination entered in the MCH handbook"
    ),
    "handbook.note": gettext_lazy("a note in the MCH handbook"),
    "handbook.note_edit": gettext_lazy("a change to a note in the MCH handbook"),
    "handbook.note_delete": gettext_lazy("the deletion of a note in the MCH handbook"),
    "view.medications": gettext_lazy("the medication notebook"),
    "medications.import": gettext_lazy("medicines imported into the medication notebook"),
    "medications.add": gettext_lazy("a medicine entered in the medication notebook"),
    "medications.edit": gettext_lazy("a change to a medicine in the medication notebook"),
    "view.notifications": gettext_lazy("the reminders about vaccinations and checkups"),
    "export.bundle": gettext_lazy("a download of all records (FHIR)"),
    "export.print": gettext_lazy("all records, for printing"),
    "fhir.everything": gettext_lazy("all of a person's records, through the API"),
    "guardian_invitation.issue": gettext_lazy("an invitation to a second guardian"),
    "guardian_invitation.revoke": gettext_lazy("the withdrawal of an invitation to a guardian"),
    "guardian_invitation.accept": gettext_lazy("a second guardian who accepted an invitation"),
    "family.child_add": gettext_lazy("a child added by the family"),
    "account.leave": gettext_lazy("an account closed"),
    # Vitals (issue 7)
    "vitals.view": gettext_lazy("the home measurements"),
    "vitals.write": gettext_lazy("a home measurement entered"),
    "vitals.edit": gettext_lazy("a change to a home measurement"),
    "vitals.delete": gettext_lazy("the deletion of a home measurement"),
    "view.vitals.devices": gettext_lazy("the list of devices and apps that send vitals"),
    "vitals.device.register": gettext_lazy("a device or app registered to send vitals"),
    "vitals.device.revoke": gettext_lazy("the end of a device's or app's token"),
    "vitals.device.write": gettext_lazy("vitals sent by a registered device or app"),
    "view.vitals.csv_import": gettext_lazy("the page for importing vitals from a CSV file"),
    "vitals.csv_import": gettext_lazy("vitals imported from a CSV file"),
    "vitals.import": gettext_lazy("an Apple Health export imported"),
    "vitals.import.apple_health": gettext_lazy("an Apple Health export imported"),
    "vitals.import.view": gettext_lazy("the result of an Apple Health import"),
    "view.vitals_charts": gettext_lazy("the growth and vitals charts"),
    "view.vitals_chart_data": gettext_lazy(
        "the numbers behind the growth and vitals charts (JSON)"
    ),
    "view.alerts": gettext_lazy("the vitals alerts"),
    # Research (issue 8)
    "research.export": gettext_lazy(
        "an anonymized research release (no names, no exact dates, no identifiers)"
    ),
    "research_consent.set": gettext_lazy("a research participation choice"),
    # The research portal's own actions carry no patient (they never show
    # in a family's history); named for the audit views all the same.
    "research.apply": gettext_lazy("a research project application"),
    "research.approve": gettext_lazy("a research project approval"),
    "research.reject": gettext_lazy("a research project rejection"),
    "research.export_request": gettext_lazy("a request for an anonymized release"),
    "research.link": gettext_lazy("a download link for a release"),
    "research.link_revoke": gettext_lazy("a revoked download link"),
    "research.download": gettext_lazy("a download of an anonymized release"),
    "view.research_consent": gettext_lazy("the research participation page"),
}
# System bookkeeping, not an access by anyone: kept out of the history.
# The daily reminder job's read as the guardian ("reminder.check"), too:
# otherwise each guardian would see the other's daily check.
HIDDEN_ACTIONS = (
    "break_glass.alert",
    "reminder.check",
    # The alert rules' evaluation as the family (vitals/alerts.py) and the
    # family's own registered devices sending readings: system work on the
    # family's behalf, one row per reading batch, not an access by others.
    "alert.evaluate",
    "vitals.device.write",
)
ROLE_WORDS = {
    Role.CLINIC_STAFF: pgettext_lazy("who accessed", "clinic staff"),
    Role.MUNICIPAL_STAFF: pgettext_lazy("who accessed", "municipal staff"),
    Role.EMERGENCY_RESPONDER: pgettext_lazy("who accessed", "emergency responder"),
    Role.RESEARCHER: pgettext_lazy("who accessed", "researcher"),
    "guardian": pgettext_lazy("who accessed", "guardian"),
    "person": pgettext_lazy("who accessed", "person you share with"),
    "patient": pgettext_lazy("who accessed", "the person herself"),
    "device": pgettext_lazy("who accessed", "registered device or app"),
}
STAFF_ROLES = frozenset({*Role.values, "admin"})


def local_date(moment: datetime) -> date:
    return timezone.localtime(moment, JAPAN).date()


def last_day(ends_at: datetime | None) -> date | None:
    """The last Japanese calendar day a period covers (its end is
    exclusive): a consent ending at midnight on 1 June runs "until 31 May"."""
    if ends_at is None:
        return None
    return local_date(ends_at - timedelta(microseconds=1))


def end_of_day(day: date) -> datetime:
    """The exclusive end of a period that runs through `day` in Japan."""
    return datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=JAPAN)


def in_language(message: str) -> str:
    """The services' messages read "日本語 / English": the half for the
    active language."""
    if " / " not in message:
        return message
    ja, en = message.split(" / ", 1)
    return ja if (get_language() or "ja").startswith("ja") else en


def category_labels(codes: Iterable[str]) -> list[str]:
    labels = []
    for code in codes:
        try:
            labels.append(str(Category(code).label))
        except ValueError:
            labels.append(code)
    return labels


def organization_name(organization: Organization) -> str:
    if organization.name_en and not (get_language() or "ja").startswith("ja"):
        return organization.name_en
    return organization.name


def person_label(user: User) -> str:
    return user.display_name or user.email


# --------------------------------------------------------------------------
# The people a user decides for
# --------------------------------------------------------------------------


def decidable_patients(user: Any) -> list[Patient]:
    """The user's own Patient and the children she is an active guardian
    of, kept only where `may_decide_for` agrees (a DV block removes a
    child): the people whose sharing she manages. Me first, then children
    in the order they were registered."""
    if not getattr(user, "is_authenticated", False):
        return []
    own = list(Patient.objects.filter(account=user))
    children = list(
        Patient.objects.filter(
            pk__in=Guardianship.objects.active().filter(guardian=user).values("child_id")
        ).order_by("created_at")
    )
    seen: set[uuid.UUID] = set()
    people = []
    for patient in own + children:
        if patient.pk in seen or not may_decide_for(user, patient):
            continue
        seen.add(patient.pk)
        people.append(patient)
    return people


def decidable_patient(user: Any, patient_id: Any) -> Patient:
    """One patient the user decides for, or Http404 (missing and not
    theirs look the same)."""
    try:
        pid = uuid.UUID(str(patient_id))
    except ValueError:
        raise Http404 from None
    for patient in decidable_patients(user):
        if patient.pk == pid:
            return patient
    raise Http404


def decidable_consent(user: Any, consent_id: Any) -> Consent:
    """A consent of a patient the user decides for, or Http404."""
    try:
        pk = uuid.UUID(str(consent_id))
    except ValueError:
        raise Http404 from None
    ids = [p.pk for p in decidable_patients(user)]
    consent = (
        Consent.objects.filter(pk=pk, patient_id__in=ids)
        .select_related("patient", "grantee_org", "grantee_user")
        .first()
    )
    if consent is None:
        raise Http404
    return consent


def patient_names(user: Any, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Names of the patients among `ids` whose Patient record `user` may
    see (through the policy point)."""
    rows = Resource.objects.filter(
        visible_records(user), resource_type="Patient", id__in=list(ids)
    ).values_list("id", "content")
    return {pid: person_name(content) for pid, content in rows}


# --------------------------------------------------------------------------
# Who can see what now
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsentRow:
    consent_id: uuid.UUID
    grantee_key: str  # "org:<id>" or "user:<id>", for the "why?" page
    grantee_name: str
    grantee_detail: str  # a clinic's 医療機関コード, a person's email
    is_organization: bool
    categories: list[str]
    since: date
    until: date | None
    status: str
    granted_by: str


@dataclass(frozen=True)
class StandingRule:
    who: str
    what: str
    grantee_key: str = ""


@dataclass
class PersonSharing:
    patient: Patient
    name: str
    is_me: bool
    consents: list[ConsentRow] = field(default_factory=list)
    past: list[ConsentRow] = field(default_factory=list)
    rules: list[StandingRule] = field(default_factory=list)
    emergency: EmergencyPreference | None = None


def grantee_key(consent: Consent) -> str:
    if consent.grantee_org_id is not None:
        return f"org:{consent.grantee_org_id}"
    return f"user:{consent.grantee_user_id}"


def consent_row(consent: Consent, *, viewer: Any) -> ConsentRow:
    if consent.grantee_org_id is not None:
        org = consent.grantee_org
        name, detail, is_org = organization_name(org), org.code, True
    else:
        name, detail, is_org = person_label(consent.grantee_user), consent.grantee_user.email, False
    granted_by = (
        gettext("you")
        if consent.granted_by_id == getattr(viewer, "pk", None)
        else person_label(consent.granted_by)
    )
    return ConsentRow(
        consent_id=consent.pk,
        grantee_key=grantee_key(consent),
        grantee_name=name,
        grantee_detail=detail,
        is_organization=is_org,
        categories=category_labels(consent.categories),
        since=local_date(consent.starts_at),
        until=last_day(consent.ends_at),
        status=consent.status,
        granted_by=granted_by,
    )


def _guardians(patient: Patient) -> list[Guardianship]:
    blocked = set(
        DvBlock.objects.active().filter(patient=patient).values_list("blocked_user_id", flat=True)
    )
    return [
        g
        for g in Guardianship.objects.active().filter(child=patient).select_related("guardian")
        if g.guardian_id not in blocked and g.guardian.is_active
    ]


def submitting_clinics(patient: Patient) -> list[Organization]:
    """Clinics that submitted some of the patient's records (they see what
    they submitted: the clinic_submitted rule)."""
    return list(
        Organization.objects.filter(
            kind=Organization.Kind.CLINIC,
            pk__in=Resource.objects.filter(
                compartments__overlap=[patient.pk], deleted=False
            ).values("provenance__agent_org_id"),
        ).order_by("name")
    )


def _standing_rules(
    patient: Patient, *, viewer: Any, emergency: EmergencyPreference | None
) -> list[StandingRule]:
    rules: list[StandingRule] = []
    everything = gettext("All records")
    if patient.kind == Patient.Kind.ADULT and patient.account_id is not None:
        who = gettext("You") if patient.account_id == viewer.pk else person_label(patient.account)
        rules.append(StandingRule(who, everything))
    for guardianship in _guardians(patient):
        relation = guardianship.get_relationship_display()
        if guardianship.guardian_id == viewer.pk:
            who = gettext("You (guardian, %(relation)s)") % {"relation": relation}
        else:
            who = gettext("%(name)s (guardian, %(relation)s)") % {
                "name": person_label(guardianship.guardian),
                "relation": relation,
            }
        rules.append(StandingRule(who, everything, f"user:{guardianship.guardian_id}"))
    residency = (
        Residency.objects.current().filter(patient=patient).select_related("municipality").first()
    )
    if residency is not None:
        rules.append(
            StandingRule(
                gettext("%(name)s (the municipality you live in)")
                % {"name": organization_name(residency.municipality)},
                gettext(
                    "Records for its mother and child health services, except test results "
                    "only clinics may see"
                ),
                f"org:{residency.municipality_id}",
            )
        )
    for clinic in submitting_clinics(patient):
        rules.append(
            StandingRule(
                organization_name(clinic),
                gettext("Only the records this clinic submitted itself"),
                f"org:{clinic.pk}",
            )
        )
    if emergency is not None and emergency.share_summary:
        rules.append(
            StandingRule(
                gettext("Emergency services"),
                gettext(
                    "The emergency summary (blood type, allergies, medicines, pregnancy), "
                    "because you allowed it below"
                ),
            )
        )
    rules.append(
        StandingRule(
            gettext("Emergency services, in a life-threatening emergency"),
            gettext(
                "The emergency summary only, with a recorded reason (break-glass); "
                "you are told, and the municipality reviews every use"
            ),
        )
    )
    return rules


def sharing_overview(*, user: Any) -> list[PersonSharing]:
    """For each person the user decides for: the consents in force (and
    those starting later), the latest ended ones, the standing rules, and
    the emergency preference."""
    people = decidable_patients(user)
    names = patient_names(user, [p.pk for p in people])
    consents: dict[uuid.UUID, list[Consent]] = {}
    for consent in (
        Consent.objects.filter(patient__in=people)
        .select_related("granted_by", "grantee_org", "grantee_user")
        .order_by("-created_at")
    ):
        consents.setdefault(consent.patient_id, []).append(consent)
    preferences = {p.patient_id: p for p in EmergencyPreference.objects.filter(patient__in=people)}
    overview = []
    for patient in people:
        emergency = preferences.get(patient.pk)
        person = PersonSharing(
            patient=patient,
            name=names.get(patient.pk, ""),
            is_me=patient.account_id == user.pk,
            rules=_standing_rules(patient, viewer=user, emergency=emergency),
            emergency=emergency,
        )
        for consent in consents.get(patient.pk, []):
            row = consent_row(consent, viewer=user)
            if row.status in (Consent.Status.ACTIVE, Consent.Status.PENDING):
                person.consents.append(row)
            elif len(person.past) < PAST_CONSENTS_SHOWN:
                person.past.append(row)
        overview.append(person)
    return overview


# --------------------------------------------------------------------------
# "Why can they see this?"
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class WhyRow:
    category: str
    label: str
    allowed: bool
    rule: str
    reason: str
    until: date | None = None


@dataclass
class WhyAnswer:
    patient_id: uuid.UUID
    grantee_name: str
    patient_name: str
    rows: list[WhyRow]


def _parties(patient: Patient) -> set[str]:
    """Everyone the Sharing page names for this patient (the only grantees
    the "why?" page answers about)."""
    keys = {grantee_key(c) for c in Consent.objects.filter(patient=patient)}
    keys |= {f"user:{g.guardian_id}" for g in _guardians(patient)}
    if patient.account_id is not None:
        keys.add(f"user:{patient.account_id}")
    keys |= {
        f"org:{r.municipality_id}" for r in Residency.objects.current().filter(patient=patient)
    }
    keys |= {f"org:{c.pk}" for c in submitting_clinics(patient)}
    return keys


def _reason(rule: str, allowed: bool) -> str:
    words = RULE_WORDS if allowed else DENIAL_WORDS
    return str(words.get(rule, DENIAL_WORDS["default_deny"] if not allowed else rule))


def _explained(explanation: Explanation, category: str) -> WhyRow:
    decision = explanation.decision
    return WhyRow(
        category,
        str(Category(category).label),
        decision.allowed,
        decision.rule,
        _reason(decision.rule, decision.allowed),
        last_day(decision.until) if decision.allowed else None,
    )


def _member_for_explain(organization: Organization) -> User | None:
    """An active member with MFA: explain() answers for a person, so an
    organization is explained through one of its members."""
    for membership in (
        Membership.objects.active()
        .filter(organization=organization, user__is_active=True)
        .select_related("user")
        .order_by("pk")
    ):
        if has_mfa(membership.user):
            return membership.user
    return None


def _organization_rows(organization: Organization, patient: Patient) -> list[WhyRow]:
    """Built from the consent rows (what each allows, until when); other
    rules (municipal duty, records the clinic submitted) from explain() on
    one of its members, counting only grants made to the organization."""
    consents = list(Consent.objects.filter(patient=patient, grantee_org=organization))
    in_force = [c for c in consents if c.status == Consent.Status.ACTIVE]
    member = _member_for_explain(organization)
    rows = []
    for category in Category.values:
        label = str(Category(category).label)
        covering = [c for c in in_force if category in c.categories]
        if covering:
            until = (
                None
                if any(c.ends_at is None for c in covering)
                else last_day(max(c.ends_at for c in covering if c.ends_at is not None))
            )
            rows.append(WhyRow(category, label, True, "consent", _reason("consent", True), until))
            continue
        if member is not None:
            explanation = explain(member, patient, category=category)
            own = [d for d in explanation.granted_by if d.organization_id == organization.pk]
            if own:
                rows.append(WhyRow(category, label, True, own[0].rule, _reason(own[0].rule, True)))
                continue
        latest = max(consents, key=lambda c: c.created_at, default=None)
        if latest is None:
            rule = "default_deny"
        elif latest.status == Consent.Status.REVOKED:
            rule = "consent_revoked"
        elif latest.status == Consent.Status.EXPIRED:
            rule = "consent_expired"
        else:
            rule = "category_not_granted"
        rows.append(WhyRow(category, label, False, rule, _reason(rule, False)))
    return rows


def why(*, user: Any, patient_id: Any, grantee: str) -> WhyAnswer:
    """Why `grantee` ("org:<id>" or "user:<id>") may or may not see each
    kind of the patient's records. Http404 unless the user decides for
    the patient and the grantee is one the Sharing page names for them."""
    patient = decidable_patient(user, patient_id)
    if grantee not in _parties(patient):
        raise Http404
    kind, _, pk = grantee.partition(":")
    names = patient_names(user, [patient.pk])
    if kind == "org":
        organization = Organization.objects.get(pk=int(pk))
        return WhyAnswer(
            patient.pk,
            organization_name(organization),
            names.get(patient.pk, ""),
            _organization_rows(organization, patient),
        )
    person = User.objects.get(pk=int(pk))
    rows = [
        _explained(explain(person, patient, category=category), category)
        for category in Category.values
    ]
    return WhyAnswer(patient.pk, person_label(person), names.get(patient.pk, ""), rows)


# --------------------------------------------------------------------------
# Clinics to share with
# --------------------------------------------------------------------------


def find_clinics(query: str) -> list[Organization]:
    """Clinics by 医療機関コード (10 digits; full-width digits too) or by a
    part of the name (Japanese or English)."""
    text = unicodedata.normalize("NFKC", query or "").strip()
    if not text:
        return []
    clinics = Organization.objects.filter(kind=Organization.Kind.CLINIC)
    if text.isdigit():
        return list(clinics.filter(code__startswith=text).order_by("code")[:CLINIC_SEARCH_LIMIT])
    return list(
        clinics.filter(Q(name__icontains=text) | Q(name_en__icontains=text)).order_by("name")[
            :CLINIC_SEARCH_LIMIT
        ]
    )


def clinic_by_code(code: str) -> Organization | None:
    text = unicodedata.normalize("NFKC", code or "").strip()
    return Organization.objects.filter(kind=Organization.Kind.CLINIC, code=text).first()


# --------------------------------------------------------------------------
# Access history
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryRow:
    id: int
    occurred_at: datetime  # in Japan
    patient_id: uuid.UUID | None
    patient_name: str
    who: str
    organization: str
    what: str
    why: str
    rule: str
    highlighted: bool
    reported: bool


def history_queryset(user: Any) -> QuerySet[AuditEvent]:
    """Every successful audited access to the people the user decides for,
    by anyone but the user, newest first."""
    ids = [p.pk for p in decidable_patients(user)]
    return (
        AuditEvent.objects.filter(patient_id__in=ids, outcome=AuditEvent.Outcome.SUCCESS)
        .exclude(actor_id=user.pk)
        .exclude(action__in=HIDDEN_ACTIONS)
        .order_by("-occurred_at", "-id")
    )


def history_event(user: Any, event_id: Any) -> AuditEvent:
    """One row of the user's access history, or Http404."""
    try:
        pk = int(str(event_id))
    except ValueError:
        raise Http404 from None
    event = history_queryset(user).filter(id=pk).first()
    if event is None:
        raise Http404
    return event


def with_role(name: str, role: Any) -> str:
    return gettext("%(name)s (%(role)s)") % {"name": name, "role": role}


def _who(event: AuditEvent, actors: dict[int, User], orgs: dict[int, Organization]) -> str:
    role = ROLE_WORDS.get(event.actor_role, "")
    if event.organization_id is not None and event.organization_id in orgs:
        # Staff are shown by organization and role, never by their own
        # name or email.
        name = organization_name(orgs[event.organization_id])
        return with_role(name, role) if role else name
    actor = actors.get(event.actor_id) if event.actor_id is not None else None
    if event.actor_role == "admin" or (actor is not None and actor.is_platform_admin):
        return gettext("Hagukumi operations staff")
    if event.actor_role == "card":
        return gettext("Someone holding the emergency card")
    if actor is None:
        return gettext("The system")
    if event.actor_role in STAFF_ROLES:
        return str(role)
    return with_role(person_label(actor), role) if role else person_label(actor)


def describe_events(
    events: list[AuditEvent], *, viewer: Any, names: dict[uuid.UUID, str]
) -> list[HistoryRow]:
    """Audit rows in plain words: who, which organization, which records,
    why and when (in Japan)."""
    actors = {u.pk: u for u in User.objects.filter(pk__in={e.actor_id for e in events})}
    orgs = {
        o.pk: o for o in Organization.objects.filter(pk__in={e.organization_id for e in events})
    }
    consent_ids = set()
    for event in events:
        try:
            consent_ids.add(uuid.UUID(str((event.detail or {}).get("consent"))))
        except ValueError:
            continue
    consents = {c.pk: c for c in Consent.objects.filter(pk__in=consent_ids)}
    reported = set(
        AccessReport.objects.filter(
            reported_by_id=getattr(viewer, "pk", None), audit_event_id__in=[e.id for e in events]
        ).values_list("audit_event_id", flat=True)
    )
    rows = []
    for event in events:
        detail = event.detail or {}
        rule = str(detail.get("rule", ""))
        categories = list(event.categories or [])
        consent = None
        try:
            consent = consents.get(uuid.UUID(str(detail.get("consent"))))
        except ValueError:
            consent = None
        if not categories and consent is not None and rule in ("consent", "consent_person"):
            # A page read under a consent showed what the consent covers.
            categories = list(consent.categories)
        action = str(ACTION_WORDS.get(event.action, gettext("the records")))
        what = action
        if categories:
            what = f"{action}: {'、'.join(category_labels(categories))}"
        why_text = str(RULE_WORDS.get(rule, "")) if rule else ""
        organization = (
            organization_name(orgs[event.organization_id]) if event.organization_id in orgs else ""
        )
        rows.append(
            HistoryRow(
                id=event.id,
                occurred_at=timezone.localtime(event.occurred_at, JAPAN),
                patient_id=event.patient_id,
                patient_name=names.get(event.patient_id, "") if event.patient_id else "",
                who=_who(event, actors, orgs),
                organization=organization,
                what=what,
                why=why_text,
                rule=rule,
                highlighted=event.break_glass or rule in HIGHLIGHTED_RULES,
                reported=event.id in reported,
            )
        )
    return rows


@dataclass
class HistoryPage:
    page: Page[AuditEvent]
    rows: list[HistoryRow]

    @property
    def patient_ids(self) -> list[uuid.UUID]:
        return list(dict.fromkeys(r.patient_id for r in self.rows if r.patient_id))


def access_history(*, user: Any, page_number: Any = 1) -> HistoryPage:
    paginator = Paginator(history_queryset(user), HISTORY_PAGE_SIZE)
    page = paginator.get_page(page_number)
    events = list(page.object_list)
    names = patient_names(user, {e.patient_id for e in events if e.patient_id})
    return HistoryPage(page, describe_events(events, viewer=user, names=names))


# --------------------------------------------------------------------------
# The privacy officer's queue
# --------------------------------------------------------------------------


def privacy_officer_municipalities(user: Any) -> list[Organization]:
    """Municipalities whose reports this user handles: an active municipal
    staff membership marked privacy officer, and MFA."""
    if not has_mfa(user):
        return []
    return [
        m.organization
        for m in active_memberships(user)
        if m.role == Role.MUNICIPAL_STAFF and m.is_privacy_officer
    ]


@dataclass(frozen=True)
class ReportRow:
    report: AccessReport
    patient_name: str
    reported_by: str
    access: HistoryRow | None


@dataclass
class ReportQueue:
    page: Page[AccessReport]
    rows: list[ReportRow]

    @property
    def patient_ids(self) -> list[uuid.UUID]:
        return list(dict.fromkeys(r.report.patient_id for r in self.rows if r.patient_name))


def open_reports_queryset(user: Any) -> QuerySet[AccessReport]:
    municipalities = privacy_officer_municipalities(user)
    return (
        AccessReport.objects.filter(
            status=AccessReport.Status.OPEN, municipality__in=municipalities
        )
        .select_related("reported_by", "municipality")
        .order_by("-created_at", "-pk")
    )


def officer_report(user: Any, report_id: Any) -> AccessReport:
    """An open report of one of the officer's municipalities, or Http404."""
    try:
        pk = int(str(report_id))
    except ValueError:
        raise Http404 from None
    report = open_reports_queryset(user).filter(pk=pk).first()
    if report is None:
        raise Http404
    return report


def report_queue(*, user: Any, page_number: Any = 1) -> ReportQueue:
    """Open reports of the officer's municipalities, newest first, each
    with the audited access it is about. The patient's name is shown only
    where the policy point lets the officer see the patient."""
    page = Paginator(open_reports_queryset(user), REPORTS_PAGE_SIZE).get_page(page_number)
    reports = list(page.object_list)
    events = {
        e.id: e for e in AuditEvent.objects.filter(id__in=[r.audit_event_id for r in reports])
    }
    names = patient_names(user, {r.patient_id for r in reports})
    described = {
        row.id: row for row in describe_events(list(events.values()), viewer=None, names=names)
    }
    rows = [
        ReportRow(
            report=report,
            patient_name=names.get(report.patient_id, ""),
            reported_by=person_label(report.reported_by),
            access=described.get(report.audit_event_id),
        )
        for report in reports
    ]
    return ReportQueue(page, rows)


# --------------------------------------------------------------------------
# Shared with me
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SharedPatient:
    patient_id: uuid.UUID
    name: str
    shared_with: str  # my organization's name, or "you"
    categories: list[str]
    until: date | None


def shared_with_me(*, user: Any) -> list[SharedPatient]:
    """Patients whose active care consents name my organization (clinic
    staff with MFA) or me, with the categories the policy point lets me
    see now and until when."""
    if not getattr(user, "is_authenticated", False):
        return []
    orgs = [m.organization_id for m in active_memberships(user)] if has_mfa(user) else []
    consents = (
        Consent.objects.active()
        .filter(purpose=ConsentPurpose.CARE)
        .filter(Q(grantee_user=user) | Q(grantee_org_id__in=orgs))
        .select_related("grantee_org")
        .order_by("created_at")
    )
    blocked = set(blocked_patients(user))
    by_patient: dict[uuid.UUID, list[Consent]] = {}
    for consent in consents:
        if consent.patient_id not in blocked:
            by_patient.setdefault(consent.patient_id, []).append(consent)
    allowed = [pid for pid in by_patient if decide(user, pid)]
    names = patient_names(user, allowed)
    shared = []
    for pid in allowed:
        rows = by_patient[pid]
        codes = sorted({c for consent in rows for c in consent.categories})
        # Only what the policy point says I may see now.
        visible = [c for c in Category.values if c in codes and decide(user, pid, category=c)]
        ends = [c.ends_at for c in rows]
        until = None if any(e is None for e in ends) else last_day(max(e for e in ends if e))
        holders = sorted(
            {organization_name(c.grantee_org) if c.grantee_org_id else gettext("you") for c in rows}
        )
        shared.append(
            SharedPatient(
                pid, names.get(pid, ""), "、".join(holders), category_labels(visible), until
            )
        )
    return sorted(shared, key=lambda s: s.name)
