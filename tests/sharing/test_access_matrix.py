"""The access matrix: every route of the project, for every persona and
verb, with a session and (for the FHIR API) with a bearer token, against a
declared expectation table (ASVS 4.1.1, 4.2.1, 13.2.1; the Oxide omicron
pattern in reference/security.md A6).

How it works:

- ROUTES is read from Django's resolver (get_resolver): the admin, allauth's
  /accounts/ pages, i18n, the OpenAPI schema, the FHIR API and our pages.
- EXPECTATIONS maps each route pattern, as the resolver spells it, to a
  Rule. A route the resolver has and the table lacks fails
  `test_route_is_as_declared[<route>]` with a message saying to add it, so
  no endpoint ships without a decided rule; an entry no route matches
  fails `test_the_table_names_no_missing_route`.
- One world (two families, four clinics, two municipalities, an emergency
  service, two research institutions with research projects approved and
  under review, a finished export and its download links; consents active,
  revoked and expired; a DV block; a break-glass window) is built once for
  the module, and every request that may write runs in a savepoint that is
  rolled back.
- Lists and reads are compared, by record id, with tests/sharing/oracle.py,
  a separate and deliberately simple statement of the rules.

Adding a route is one line in EXPECTATIONS (or in ADMIN_MODELS for a new
ModelAdmin), for example:

    "sharing/clinics/": page(AUTH, GET=S(user=200)),
    "emergency/summary/<uuid:patient_id>/": patient_page(SUMMARY_ALLOWED),
    "sharing/revoke/": scoped(lambda w: {"consent": w.ids["clinic_consent"]}, DECIDE_FOR_CHILD),
    "sharing/with-me/": listing(lambda w, p: consented_to(w, p)),

Rule kinds (constructor → what is checked for every persona):
- page(PUBLIC, …): anyone; the declared status per audience; never patient data.
- page(AUTH, …): signed-in users (anonymous → login); never patient data.
- staff(…): the Django admin: platform admins with MFA get the declared
  status; anyone else goes to the admin login (staff without MFA: MFA set-up).
- patient_page(allowed): a patient id in the path: the personas allowed per
  patient get the page with exactly the records the oracle lets them see,
  everyone else 404.
- listing(shows): a page naming patients (the family overview, the Sharing
  page, the access history, "shared with me"): exactly `shows(persona)`.
- scoped(params, personas): the object travels in the body or query string
  (Sharing actions): `ok` for those personas, 404 for everyone else, 405
  for other verbs.
- Rule(FHIR_…): the FHIR API, against the oracle, with a session and a token
  (FHIR_EVERYTHING: Patient/{id}/$everything, its entries by record id).
- cases(Case(…), …): several paths of one route (each patient's, an object
  of the world's, valid and empty bodies, a re-authenticated session with
  fresh=True), each with statuses per audience like page(); `shows` bounds
  the patients a page may name, `after` looks at what a write did inside
  its savepoint. family_form(…) makes the cases of a family's own form:
  its writers (FAMILY_OF, purpose personal) get the status, others 404.
- custom(check): a check of its own (the export's Bundle and print page,
  compared by record id and marker with what each persona sees as herself).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from typing import Any
from unittest import mock

import pytest
from allauth.account.models import EmailAddress
from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.http import HttpResponse
from django.test import Client, override_settings
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

from clinics.models import ClinicInvitation
from municipal_data.linking import link_code_issue
from municipal_data.models import MatchReview
from phr import family as family_service
from phr import handbook_services, medications, services, store, terminology
from phr.authentication import api_token_create
from phr.fhir import to_fhir
from phr.indexing import SUPPORTED_TYPES
from phr.models import (
    AuditEvent,
    Batch,
    BatchError,
    Guardianship,
    Organization,
    Patient,
    Provenance,
    Reminder,
    Resource,
    Role,
    User,
)
from phr.selectors import JAPAN
from phr.terminology import LOCAL, Category
from sharing.emergency import card_create
from sharing.models import BreakGlass, Consent, ConsentPurpose
from sharing.services import (
    access_report_create,
    consent_grant,
    consent_revoke,
    dv_block_set,
    emergency_preference_set,
)
from tests import factories as f
from tests.sharing import oracle
from vitals import alerts as vital_alerts
from vitals import apple_health, device_writes
from vitals import devices as vital_devices
from vitals import records as vital_records

pytestmark = pytest.mark.django_db

FHIR_JSON = "application/fhir+json"
LOGIN_URL = "/accounts/login/"
MFA_SETUP_URL = "/accounts/2fa/totp/activate/"
ADMIN_LOGIN_URL = "/admin/login/"

# --------------------------------------------------------------------------
# Personas
# --------------------------------------------------------------------------

ANONYMOUS = "anonymous"
PERSONAS = (
    ANONYMOUS,
    "mother",  # the adult patient; guardian of the child
    "father",  # the child's other guardian: not the mother's own records
    "blocked_guardian",  # a guardian of the child under a DV block
    "grandmother",  # a person the mother shares her vitals with
    "neighbour",  # the other family's mother (the other tenant, IDOR)
    "clinician",  # clinic with a care consent for the child; submitted the mother's checkups
    "unconsented_clinician",
    "revoked_clinician",  # their clinic's consent was revoked
    "expired_clinician",  # their clinic's consent ran out
    "municipal_officer",  # the family's municipality
    "other_municipal_officer",  # the neighbour's municipality
    "staff_without_mfa",  # municipal staff of the family's town, no authenticator
    "responder",  # emergency service: an open break-glass window, a family opt-in
    "researcher",  # an institute named in a research consent; its research projects
    "other_researcher",  # another research institution's (its own projects only)
    "stranger",
    "platform_admin",  # with MFA
    "admin_without_mfa",
)
# Staff without an authenticator: pages send them to set one up; the API
# answers them like anyone with no access.
NEEDS_MFA = frozenset({"staff_without_mfa", "admin_without_mfa"})
# Paths those staff still reach (phr.middleware.StaffMfaSetupMiddleware).
MFA_EXEMPT = ("accounts/", "i18n/", "fhir/", "fhir", "api/", "vitals/devices/api/")
PATIENTS = ("mother_patient", "child", "neighbour_child")
# Those who decide who sees the child's records (its guardians, not blocked).
DECIDE_FOR_CHILD = frozenset({"mother", "father"})
# Staff of a clinic (each persona's own clinic): the clinic portal's users.
CLINIC_STAFF = ("clinician", "unconsented_clinician", "revoked_clinician", "expired_clinician")
# The oracle can reproduce known deviations of the policy point (none now).
MIMIC = oracle.KNOWN_DEVIATIONS

# --------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------

PUBLIC = "public"
AUTH = "auth"
STAFF = "staff"
PATIENT = "patient"
LISTING = "listing"
SCOPED = "scoped"
FHIR_METADATA = "fhir-metadata"
FHIR_TYPE = "fhir-type"
FHIR_INSTANCE = "fhir-instance"
FHIR_HISTORY = "fhir-history"
FHIR_VERSION = "fhir-version"
FHIR_UNKNOWN = "fhir-unknown"
FHIR_EVERYTHING = "fhir-everything"
CASES = "cases"
CUSTOM = "custom"

Statuses = dict[str, int]


def S(**audiences: int) -> Statuses:
    """Status by audience. An audience is a persona name, or one of:
    `needs_mfa` (staff without MFA), `admin` (platform admin with MFA),
    `mfa` / `no_mfa` (signed in, with or without an authenticator), `user`
    (anyone signed in), `anonymous`, `anyone`. The most specific wins."""
    return audiences


@dataclass(frozen=True)
class Rule:
    kind: str
    # verb → audience → status (page kinds); FHIR and PATIENT kinds decide
    # per record from the oracle.
    verbs: dict[str, Statuses] = field(default_factory=dict)
    # Where the path has regex groups, the path to request (or a function
    # of the world giving it).
    sample: str | Callable[[World], str] = ""
    # PATIENT: who may open each patient's page, and which of the patient's
    # records it may show a persona (None: every record the oracle lists,
    # exactly; else at most these, and at least their allergies).
    allowed: dict[str, frozenset[str]] = field(default_factory=dict)
    reach: Callable[[World, str, Patient], set[uuid.UUID]] | None = None
    # LISTING: the patients (by world name) each persona's page names.
    shows: Callable[[World, str], set[str]] | None = None
    # SCOPED: the request's parameters (query string or POST body), the
    # personas it is for, and the status they get (others: 404).
    params: Callable[[World], dict[str, str]] | None = None
    verb: str = "POST"
    ok: int = 302
    for_personas: frozenset[str] = frozenset()
    # PATIENT with a reach: the records the page must show (besides the
    # allergies in reach).
    must: Callable[[World, str, Patient], set[uuid.UUID]] | None = None
    # CASES: requests to several paths of the route (one per patient, per
    # object, valid and invalid bodies …).
    cases: tuple[Case, ...] = ()
    # CUSTOM: a check of its own (the export's bundle and print page).
    check: Callable[[World, str, Rule, Failures], None] | None = None


@dataclass(frozen=True)
class Case:
    """One path of a route and the status per audience and verb, like
    page(): those turned away go to the login page (or MFA set-up), and no
    page shows a patient outside `shows(world, persona)`."""

    sample: Callable[[World], str]
    verbs: dict[str, Statuses]
    # The POST body (an empty one without it).
    body: Callable[[World], dict[str, Any]] | None = None
    # The patients (by world name) the page may name to a persona.
    shows: Callable[[World, str], set[str]] | None = None
    fresh: bool = False  # a re-authenticated session
    kind: str = AUTH
    # Where the signed-in personas' redirects must point (a part of the URL).
    redirect_to: str = ""
    # Looks at the savepoint before its rollback: a problem, or None.
    after: Callable[[World, str, HttpResponse], str | None] | None = None


def page(kind: str, sample: str = "", **verbs: Statuses) -> Rule:
    return Rule(kind, verbs=verbs, sample=sample)


def patient_page(
    allowed: dict[str, frozenset[str]],
    reach: Callable[[World, str, Patient], set[uuid.UUID]] | None = None,
    *,
    must: Callable[[World, str, Patient], set[uuid.UUID]] | None = None,
    **verbs: Statuses,
) -> Rule:
    return Rule(PATIENT, verbs=verbs or {"GET": S()}, allowed=allowed, reach=reach, must=must)


def listing(
    shows: Callable[[World, str], set[str]],
    sample: str | Callable[[World], str] = "",
    **verbs: Statuses,
) -> Rule:
    """A page naming some patients (a family's, those shared with me …):
    exactly `shows(world, persona)` of them; 200 unless `verbs` says else.
    Anonymous goes to the login page unless `verbs` says else."""
    return Rule(LISTING, verbs=verbs or {"GET": S(user=200)}, shows=shows, sample=sample)


def scoped(
    params: Callable[[World], dict[str, str]],
    for_personas: frozenset[str],
    *,
    verb: str = "POST",
    ok: int = 302,
) -> Rule:
    """A page or action whose object travels in the query string or POST
    body: `ok` for `for_personas`, 404 for everyone else signed in (the
    object missing and not theirs alike); other verbs 405."""
    return Rule(SCOPED, params=params, for_personas=for_personas, verb=verb, ok=ok)


def municipal(sample: Callable[[World], str], **ok: int) -> Rule:
    """A page or action about one object of the town (a batch, a match
    review), its id in the path: the town's staff get `ok` per verb;
    everyone else signed in a 404 (the other town's staff too: not theirs
    looks like missing); a verb not in `ok` answers 405 to everyone."""
    verbs = {verb: S(user=404, municipal_officer=status) for verb, status in ok.items()}
    for verb in ("GET", "POST"):
        verbs.setdefault(verb, S(user=405))
    return page(AUTH, sample, **verbs)  # type: ignore[arg-type]


def cases(*paths: Case) -> Rule:
    return Rule(CASES, cases=paths)


def custom(check: Callable[[World, str, Rule, Failures], None]) -> Rule:
    return Rule(CUSTOM, check=check)


def staff(sample: str = "", **verbs: int) -> Rule:
    """A Django admin route: `verbs` gives the platform admin's status;
    everyone else is sent to the admin login (or to MFA setup)."""
    return Rule(STAFF, verbs={v: S(admin=s) for v, s in verbs.items()}, sample=sample)


# Who may open a person's page (and read that person at all), per patient.
# Checked against the oracle too (test_the_patient_table_agrees_with_the_oracle).
PERSON_PAGE_ALLOWED = {
    "mother_patient": frozenset(
        {"mother", "grandmother", "clinician", "municipal_officer", "platform_admin"}
    ),
    "child": frozenset({"mother", "father", "clinician", "municipal_officer", "platform_admin"}),
    # The neighbour's child moved from the family's town, which still sees
    # the checkup it submitted then.
    "neighbour_child": frozenset(
        {"neighbour", "municipal_officer", "other_municipal_officer", "platform_admin"}
    ),
}

# Who may open a person's emergency summary: the family (personal), and for
# the emergency purpose a responder with an open break-glass window (the
# mother) or the family's opt-in (the child), and the grandmother, whom an
# emergency consent names. Checked against the oracle too.
SUMMARY_ALLOWED = {
    # The grandmother's emergency consent is a stray row (a person is only a
    # care grantee): it opens nothing.
    "mother_patient": frozenset({"mother", "responder"}),
    "child": frozenset({"mother", "father", "responder"}),
    "neighbour_child": frozenset({"neighbour"}),
}


def summary_reach(world: World, persona: str, patient: Patient) -> set[uuid.UUID]:
    reach = oracle.emergency_summary_reach(world.snapshot, world.user_id(persona), patient.pk)
    return reach or set()


# --- The family's own pages (issue 6): the handbook, the medication
# notebook, family and leaving, notifications. ------------------------------

# Who is the family of each patient for the family's own pages (purpose
# personal: the patient herself, a child's guardians not DV-blocked) —
# never someone she shares with, a clinic, the town or an admin.
FAMILY_OF = {
    "mother_patient": frozenset({"mother"}),
    "child": frozenset({"mother", "father"}),
    "neighbour_child": frozenset({"neighbour"}),
}
# Who may open a person's medication notebook: anyone the policy point lets
# see her medications (checked against the oracle too).
NOTEBOOK_ALLOWED = {
    "mother_patient": frozenset({"mother", "municipal_officer", "platform_admin"}),
    # The clinic's care consent covers medications.
    "child": frozenset({"mother", "father", "clinician", "municipal_officer", "platform_admin"}),
    # The old town submitted a checkup, no medicine: only her new town.
    "neighbour_child": frozenset({"neighbour", "other_municipal_officer", "platform_admin"}),
}
# Signed-in users who are staff (clinic, town, emergency, research, the
# platform): the family's own forms refuse them.
STAFF_PERSONAS = frozenset(
    {*CLINIC_STAFF, "municipal_officer", "other_municipal_officer", "responder", "researcher"}
    | {"other_researcher", "platform_admin"}
)

CHILDREN = ("child", "neighbour_child")
HANDBOOK_TYPES = frozenset({"Encounter", "EpisodeOfCare", "Immunization"})
NOTEBOOK_TYPES = frozenset({"MedicationDispense", "MedicationStatement", "AllergyIntolerance"})


def _dates(world: World) -> dict[uuid.UUID, Any]:
    return dict(Resource.objects.values_list("id", "date_start"))


def handbook_reach(world: World, persona: str, patient: Patient) -> set[uuid.UUID]:
    """What a handbook may show (and, complete, must show): of the records
    the persona sees, the patient's checkups and pregnancies (Encounter,
    EpisodeOfCare), vaccinations, observations of the handbook's
    categories (a child's checkups and school checkups, a mother's
    pregnancy and prenatal checkups), the family's notes, medicines, and
    home measurements of the last 90 days — never allergies, conditions or
    flags."""
    seen = oracle.listable(world.snapshot, world.user_id(persona), mimic=MIMIC)
    child = patient.kind == Patient.Kind.CHILD
    categories = (
        {Category.INFANT_CHECKUPS, Category.SCHOOL_CHECKUPS, Category.PREGNANCY}
        if child
        else {Category.PREGNANCY, Category.PRENATAL_CHECKUPS}
    )
    recent = timezone.now() - timedelta(days=90)
    dates = _dates(world)
    reach = set()
    for rec in world.snapshot.records:
        if rec.id not in seen or patient.pk not in rec.compartments:
            continue
        observation = rec.resource_type == "Observation"
        if (
            rec.resource_type in HANDBOOK_TYPES
            or rec.resource_type in ("MedicationDispense", "MedicationStatement")
            or (observation and rec.category in categories)
            or (observation and rec.id in _notes(world))
            or (
                observation
                and rec.category == Category.VITALS
                and dates.get(rec.id) is not None
                and dates[rec.id] >= recent
            )
        ):
            reach.add(rec.id)
    return reach


def handbook_must(world: World, persona: str, patient: Patient) -> set[uuid.UUID]:
    """All of the reach, but a pregnancy (shown by its dates and provider,
    not by its type's text). A mother's result no prenatal visit holds (the
    clinic's fundal height, the HIV test) is listed too, by date."""
    reach = handbook_reach(world, persona, patient)
    rows = Resource.objects.filter(id__in=reach).values_list("id", "resource_type")
    return {rid for rid, resource_type in rows if resource_type != "EpisodeOfCare"}


def handbook_print_must(world: World, persona: str, patient: Patient) -> set[uuid.UUID]:
    """The print page, laid out like the paper handbook, leaves out the
    home measurements (templates/phr/handbook/_home.html "not printing")."""
    must = handbook_must(world, persona, patient)
    vitals = Resource.objects.filter(id__in=must, category=Category.VITALS)
    return must - set(vitals.values_list("id", flat=True))


def _notes(world: World) -> set[uuid.UUID]:
    return {world.records["child_note"]}


def notebook_reach(world: World, persona: str, patient: Patient) -> set[uuid.UUID]:
    """The notebook: every medicine and allergy of the person the persona sees."""
    seen = oracle.listable(world.snapshot, world.user_id(persona), mimic=MIMIC)
    return {
        rec.id
        for rec in world.snapshot.records
        if rec.id in seen and patient.pk in rec.compartments and rec.resource_type in NOTEBOOK_TYPES
    }


def _for(patient_name: str, path: str) -> Callable[[World], str]:
    """A path of the route with the patient's id (and `{note}`,
    `{statement}` filled in from the world)."""

    def sample(world: World) -> str:
        return path.format(
            patient=world.patients[patient_name].pk,
            note=world.records["child_note"],
            statement=world.records["child_statement"],
            vaccination=world.records["child_vaccination"],
            reported=world.records["child_reported_vaccination"],
            **{k: v for k, v in world.ids.items() if k != "patient"},
        )

    return sample


def _only(patient_name: str) -> Callable[[World, str], set[str]]:
    return lambda world, persona: {patient_name}


def family_form(
    path: str,
    *,
    ok: dict[str, int],
    body: Callable[[World], dict[str, Any]] | None = None,
    writers: dict[str, frozenset[str]] = FAMILY_OF,
    patients: tuple[str, ...] = PATIENTS,
) -> list[Case]:
    """A family's form of each patient's: its writers get `ok` per verb,
    everyone else signed in 404 (whoever may only read the person too)."""
    return [
        Case(
            _for(name, path),
            {
                verb: S(user=404, **dict.fromkeys(writers[name], status))
                for verb, status in ok.items()
            },
            body=body,
            shows=_only(name),
        )
        for name in patients
    ]


def _school_checkup(world: World) -> dict[str, Any]:
    from municipal_data.formats import school_checkup as school

    birth = date(2018, 6, 1)
    day = handbook_services.today() - timedelta(days=30)
    grade = school.index_code(school.expected_grade_index(birth, day))
    return {"date": day.isoformat(), "grade": grade, "body_height": "120.4"}


def _note_body(world: World) -> dict[str, Any]:
    return {"date": "2026-10-04", "text": "mk-note-posted"}


def _medicine_body(world: World) -> dict[str, Any]:
    return {"name": "mk-med-posted", "start": "2026-10-05", "taking": "on"}


def _jahis_body(world: World) -> dict[str, Any]:
    from pathlib import Path

    import phr

    sample = Path(phr.__file__).parent / "reference_data" / "jahis_tc_sample_utf8.txt"
    return {"text": sample.read_text(encoding="utf-8"), "via": "paste"}


def _invite_body(world: World) -> dict[str, Any]:
    return {
        "children": [world.ids["child"]],
        "email": "second-guardian@matrix.example.jp",
        "relationship": "father",
        "language": "ja",
    }


def _child_body(world: World) -> dict[str, Any]:
    return {
        "family": "照合",
        "given": "新",
        "family_kana": "ショウゴウ",
        "given_kana": "シン",
        "birth_date": "2026-01-05",
        "sex": "female",
        "relationship": "mother",
    }


def _invitation_state(world: World, persona: str, response: HttpResponse) -> str | None:
    from sharing.models import GuardianInvitation

    invitation = GuardianInvitation.objects.get(pk=world.ids["guardian_invitation"])
    accepted = invitation.accepted_by_id is not None
    if accepted != (response.status_code == 302 and persona == "grandmother"):
        return f"invitation accepted: {accepted}"
    return None


def _revoked_only_by_inviter(world: World, persona: str, response: HttpResponse) -> str | None:
    from sharing.models import GuardianInvitation

    invitation = GuardianInvitation.objects.get(pk=world.ids["guardian_invitation"])
    revoked = invitation.status != GuardianInvitation.Status.ACTIVE
    mine = persona == "mother" and response.status_code == 302
    return None if revoked == mine else f"invitation revoked: {revoked}"


def _read_only_by_owner(world: World, persona: str, response: HttpResponse) -> str | None:
    read = Reminder.objects.get(pk=world.ids["mother_reminder"]).read_at is not None
    mine = persona == "mother" and response.status_code == 302
    return None if read == mine else f"the mother's reminder read: {read}"


def _left(world: World, persona: str, response: HttpResponse) -> str | None:
    """Leaving removes the account of whoever left, and only hers."""
    gone = {
        p
        for p, user in world.users.items()
        if user is not None and not User.objects.filter(pk=user.pk, is_active=True).exists()
    }
    left = response.status_code == 302 and redirect_target(response).endswith("/family/left/")
    wanted = {persona} if left else set()
    return None if gone == wanted else f"accounts gone: {sorted(gone)}"


def _reminders_of(world: World, persona: str) -> set[str]:
    return {"mother": {"child"}, "neighbour": {"neighbour_child"}}.get(persona, set())


# --- Vitals (issue 7): the family's quick entry, devices, imports, charts
# and alerts. Written and read as the family (purpose personal): the
# person herself and a child's guardians (FAMILY_OF); whoever she shares
# with, clinics, the town and admins get 404. ---------------------------------

CHART_CATEGORIES = {
    Patient.Kind.CHILD: frozenset(
        {Category.VITALS, Category.INFANT_CHECKUPS, Category.SCHOOL_CHECKUPS}
    ),
    Patient.Kind.ADULT: frozenset(
        {Category.VITALS, Category.PREGNANCY, Category.PRENATAL_CHECKUPS}
    ),
}


def _observations(
    world: World, persona: str, patient: Patient, categories: frozenset[str]
) -> set[uuid.UUID]:
    seen = oracle.listable(world.snapshot, world.user_id(persona), mimic=MIMIC)
    return {
        rec.id
        for rec in world.snapshot.records
        if rec.id in seen
        and patient.pk in rec.compartments
        and rec.resource_type == "Observation"
        and rec.category in categories
    }


def vitals_reach(world: World, persona: str, patient: Patient) -> set[uuid.UUID]:
    """The quick-entry page: the person's home measurements the persona
    sees (all of them: the world has fewer than its 30 recent)."""
    return _observations(world, persona, patient, frozenset({Category.VITALS}))


def vitals_must(world: World, persona: str, patient: Patient) -> set[uuid.UUID]:
    """What the quick-entry page must list: of the reach, the readings
    taken at an instant. A measurement dated by day only (valid FHIR, as
    the world's older ones are) is not a reading the page understands
    (vitals.records.reading_of) and is left out of the recent entries."""
    reach = vitals_reach(world, persona, patient)
    rows = Resource.objects.filter(id__in=reach).values_list("id", "content")
    return {rid for rid, content in rows if "T" in str(content.get("effectiveDateTime", ""))}


def chart_reach(world: World, persona: str, patient: Patient) -> set[uuid.UUID]:
    """A chart: measurements (home, checkups; a mother's pregnancy ones)
    the persona sees, never an allergy, a condition or another result."""
    return _observations(world, persona, patient, CHART_CATEGORIES[patient.kind])


def alert_reach(world: World, persona: str, patient: Patient) -> set[uuid.UUID]:
    """A person's alerts: the alert Flags the persona sees and the readings
    they list."""
    seen = oracle.listable(world.snapshot, world.user_id(persona), mimic=MIMIC)
    flags = {
        rec.id
        for rec in world.snapshot.records
        if rec.id in seen and patient.pk in rec.compartments and rec.resource_type == "Flag"
    }
    return flags | (alert_must(world, persona, patient) if flags else set())


def alert_must(world: World, persona: str, patient: Patient) -> set[uuid.UUID]:
    """The readings of the world's alert, where the persona sees them."""
    seen = oracle.listable(world.snapshot, world.user_id(persona), mimic=MIMIC)
    readings = {world.records["mother_bp"], world.records["mother_bp_second"]}
    if world.patients["mother_patient"].pk != patient.pk:
        return set()
    return readings & seen


def _entry_body(slug: str, **values: str) -> Callable[[World], dict[str, Any]]:
    def body(world: World) -> dict[str, Any]:
        when = (timezone.localtime(timezone.now(), JAPAN) - timedelta(hours=1)).strftime(
            "%Y-%m-%dT%H:%M"
        )
        return {f"{slug}-taken_at": when, **{f"{slug}-{k}": v for k, v in values.items()}}

    return body


def _bp_edit_body(world: World) -> dict[str, Any]:
    return {
        "blood-pressure-systolic": "146",
        "blood-pressure-diastolic": "95",
        "blood-pressure-taken_at": world.ids["mother_bp_time"],
    }


def _csv_body(world: World) -> dict[str, Any]:
    from django.core.files.uploadedfile import SimpleUploadedFile

    when = (timezone.localtime(timezone.now(), JAPAN) - timedelta(hours=2)).isoformat()
    data = f"timestamp,type,value,unit\n{when},temperature,36.6,Cel\n".encode()
    return {"file": SimpleUploadedFile("vitals.csv", data, content_type="text/csv")}


def _bad_file_body(name: str) -> Callable[[World], dict[str, Any]]:
    def body(world: World) -> dict[str, Any]:
        from django.core.files.uploadedfile import SimpleUploadedFile

        return {"file": SimpleUploadedFile(name, b"not, what, it, should be\x00", "text/plain")}

    return body


def _export_body(world: World) -> dict[str, Any]:
    from django.core.files.uploadedfile import SimpleUploadedFile

    xml = b'<?xml version="1.0" encoding="UTF-8"?>\n<HealthData locale="ja_JP"></HealthData>\n'
    return {"file": SimpleUploadedFile("export.xml", xml, content_type="text/xml")}


def _device_body(world: World) -> dict[str, Any]:
    return {"name": "Matrix thermometer", "kind": "device"}


def _author_only(path: str, **ok: int) -> list[Case]:
    """A hand entry of the mother's: hers alone (not the father's)."""
    return family_form(
        path, ok=ok, writers={"mother_patient": frozenset({"mother"})}, patients=("mother_patient",)
    )


def _nobodys(path: str, patient: str, *verbs: str) -> Case:
    """A path that is nobody's (another person's object under it): 404."""
    return Case(_for(patient, path), {verb: S(user=404) for verb in verbs})


# --- Research (issue 8): the portal (sharing/research_urls.py) and the
# family's research choices (sharing/research_consent_urls.py). -------------

# The world's research projects (_research_world), by key: their titles.
PROJECTS = {
    "project_a": "mk-project-a",  # approved twice; a finished export, a link, a revoked link
    "project_b": "mk-project-b",  # approved twice (covers the other town); an export, a link
    "project_c": "mk-project-c",  # under review, covers the family's town
    "project_d": "mk-project-d",  # under review, covers the other town only
}
# Whose institution applied: its researchers alone see the project, its
# exports and links (another institution's: 404, as if missing).
PROJECT_OWNER = {
    "project_a": "researcher",
    "project_b": "other_researcher",
    "project_c": "researcher",
    "project_d": "other_researcher",
}
# Who may review each project: platform admins with MFA, and privacy
# officers with MFA of a municipality it covers (the town's officer: A and
# C); never anyone of the applying institution.
PROJECT_REVIEWERS = {
    "project_a": frozenset({"platform_admin", "municipal_officer"}),
    "project_b": frozenset({"platform_admin"}),
    "project_c": frozenset({"platform_admin", "municipal_officer"}),
    "project_d": frozenset({"platform_admin"}),
}
RESEARCHERS = frozenset(PROJECT_OWNER.values())
REVIEWERS = frozenset({"platform_admin", "municipal_officer"})
EXPORT_OF = {"export_a": "project_a", "export_b": "project_b"}
MISSING_UUID = "00000000-0000-4000-8000-000000000000"


def _research(path: str) -> Callable[[World], str]:
    """A portal path with the world's research ids filled in."""
    return lambda world: path.format(**world.ids)


def _projects_named(response: HttpResponse) -> set[str]:
    text = body_text(response)
    return {key for key, title in PROJECTS.items() if title in text}


def _names_projects(
    shows: Callable[[str], set[str]], *, exact: bool = True
) -> Callable[[World, str, HttpResponse], str | None]:
    """An `after`: a page names (by title) exactly the projects `shows`
    gives the persona (at most them when not `exact`), a refusal none."""

    def after(world: World, persona: str, response: HttpResponse) -> str | None:
        named = _projects_named(response)
        wanted = shows(persona) if response.status_code == 200 else set()
        ok = named == wanted if exact else named <= wanted
        return None if ok else f"projects named {sorted(named)}, expected {sorted(wanted)}"

    return after


def _index_projects(persona: str) -> set[str]:
    """The portal's home lists the projects of one's own institution."""
    return {key for key, owner in PROJECT_OWNER.items() if owner == persona}


def _review_projects(persona: str) -> set[str]:
    """The review queue (C and D, waiting for a first approval) and one's
    own decisions (A and B): those the persona may review."""
    return {key for key, reviewers in PROJECT_REVIEWERS.items() if persona in reviewers}


def _owner_pages(path: str, key: str, *, exact: bool = True, **ok: int) -> Case:
    """A page of one project (or its export): its institution's researchers
    get `ok`, everyone else signed in 404; other verbs 405."""
    verbs = {verb: S(user=404, **{PROJECT_OWNER[key]: status}) for verb, status in ok.items()}
    for verb in ("GET", "POST"):
        verbs.setdefault(verb, S(user=405))
    return Case(_research(path), verbs, after=_names_projects(lambda p: {key}, exact=exact))


def _acted(persona: str, response: HttpResponse) -> bool:
    """A 302 that is the action done (not the login page or MFA set-up)."""
    signed_in = persona != ANONYMOUS and persona not in NEEDS_MFA
    return signed_in and response.status_code == 302


def _exports_requested(
    key: str, *, writes: bool = True
) -> Callable[[World, str, HttpResponse], str | None]:
    """An export is queued for the project only on a researcher's 302 (and
    never without a fresh re-authentication: `writes` False)."""

    def after(world: World, persona: str, response: HttpResponse) -> str | None:
        from sharing.models import ResearchExport

        queued = ResearchExport.objects.filter(
            project_id=world.ids[key], status=ResearchExport.Status.QUEUED
        )
        made = {e.requested_by_id for e in queued}
        wanted = {world.user_id(persona)} if writes and _acted(persona, response) else set()
        return None if made == wanted else f"exports queued by {made}"

    return after


def _links_made(
    export: str, *, writes: bool = True
) -> Callable[[World, str, HttpResponse], str | None]:
    """A download link is made for the export only on a researcher's 302
    (never without a fresh re-authentication: `writes` False)."""

    def after(world: World, persona: str, response: HttpResponse) -> str | None:
        from sharing.models import ResearchDownload

        known = [world.ids[k] for k in ("link_a", "link_b", "link_revoked")]
        new = ResearchDownload.objects.filter(export_id=world.ids[export]).exclude(pk__in=known)
        made = list(new.values_list("created_by_id", flat=True))
        wanted = [world.user_id(persona)] if writes and _acted(persona, response) else []
        return None if made == wanted else f"new links by {made}"

    return after


def _link_revoked(link: str) -> Callable[[World, str, HttpResponse], str | None]:
    def after(world: World, persona: str, response: HttpResponse) -> str | None:
        from sharing.models import ResearchDownload

        revoked = ResearchDownload.objects.get(pk=world.ids[link]).revoked_at is not None
        return None if revoked == _acted(persona, response) else f"link revoked: {revoked}"

    return after


def _zip_served(world: World, persona: str, response: HttpResponse) -> str | None:
    """A download that is served is the release zip, one use counted."""
    if response.status_code != 200:
        return None
    content = b"".join(response.streaming_content)  # type: ignore[attr-defined]
    if response["Content-Type"] != "application/zip" or not content.startswith(b"PK"):
        return f"not a zip: {response['Content-Type']}"
    return None


def _reviewed(key: str, *, writes: bool = True) -> Callable[[World, str, HttpResponse], str | None]:
    """A decision is recorded on the project only on a reviewer's 302
    (never without a fresh re-authentication: `writes` False)."""

    def after(world: World, persona: str, response: HttpResponse) -> str | None:
        from sharing.models import ResearchApproval

        by = set(
            ResearchApproval.objects.filter(project_id=world.ids[key]).values_list(
                "reviewer_id", flat=True
            )
        )
        wanted = {world.user_id(persona)} if writes and _acted(persona, response) else set()
        return None if by == wanted else f"decisions by {by}"

    return after


def _apply_body(world: World) -> dict[str, Any]:
    return {
        "title": "mk-project-new",
        "ethics_approval_number": "ETH-MATRIX-NEW",
        "purpose": "matrix: a new application",
        "categories": [Category.INFANT_CHECKUPS],
        "cohort_kind": "child",
        "municipalities": [world.ids["town"]],
        "birth_year_from": "2020",
        "birth_year_to": "2025",
        "period_start": "2020-01-01",
        "period_end": "2026-06-30",
    }


def _applied(world: World, persona: str, response: HttpResponse) -> str | None:
    from sharing.models import ResearchProject

    by = set(
        ResearchProject.objects.filter(title="mk-project-new").values_list(
            "applicant_id", flat=True
        )
    )
    wanted = {world.user_id(persona)} if _acted(persona, response) else set()
    return None if by == wanted else f"applications by {by}"


def _export_request_body(world: World) -> dict[str, Any]:
    """Project A's approval, as the export form offers it."""
    return {
        "birth_year_from": "2015",
        "birth_year_to": str(timezone.localdate().year),
        "municipalities": [world.ids["town"]],
        "cohort_kind": "both",
        "categories": [Category.INFANT_CHECKUPS, Category.VACCINATIONS],
        "formats": ["csv", "ndjson"],
    }


def _approve_body(world: World) -> dict[str, Any]:
    expires = timezone.localdate() + timedelta(days=180)
    return {"decision": "approve", "expires_on": expires.isoformat(), "note": ""}


def _research_choice_body(name: str) -> Callable[[World], dict[str, Any]]:
    return lambda world: {
        "patient": str(world.patients[name].pk),
        "categories": [Category.VACCINATIONS, Category.INFANT_CHECKUPS],
        "choice": "consent",
    }


def _choices_made(name: str, choice: str) -> Callable[[World, str, HttpResponse], str | None]:
    """The person's research choices change only on a decider's 302, and
    are hers (decided_by)."""

    def after(world: World, persona: str, response: HttpResponse) -> str | None:
        from sharing.models import ResearchChoice

        rows = ResearchChoice.objects.filter(patient=world.patients[name])
        by = {(r.decided_by_id, r.choice) for r in rows}
        wanted = {(world.user_id(persona), choice)} if _acted(persona, response) else set()
        return None if by == wanted else f"choices for {name}: {by}"

    return after


def _decider_cases(
    path: str,
    body: Callable[[str], Callable[[World], dict[str, Any]]],
    choice: str,
) -> list[Case]:
    """One person's research choice, the person in the body: those who
    decide for her (FAMILY_OF: the adult herself, a child's guardians not
    DV-blocked) get 302, everyone else 404."""
    return [
        Case(
            lambda w, p=path: p,
            {"POST": S(user=404, **dict.fromkeys(FAMILY_OF[name], 302))},
            body=body(name),
            redirect_to="/sharing/research/#research-",
            after=_choices_made(name, choice),
        )
        for name in PATIENTS
    ]


# The Django admin's per-model routes, generated for each registered model
# ("app_label/model_name"). A new ModelAdmin adds six routes: add its line.
ADMIN_MODEL_ROUTES = {
    "": staff(GET=200, POST=200),  # changelist (POST: an action with nothing selected)
    "add/": staff(GET=200, POST=200),  # POST without data: the form with errors
    "<path:object_id>/history/": staff(GET=200, POST=200),
    "<path:object_id>/delete/": staff(GET=200, POST=200),  # POST without "post": asks again
    "<path:object_id>/change/": staff(GET=200, POST=200),
    "<path:object_id>/": staff(GET=302, POST=302),  # redirects to change/
}
ADMIN_MODELS: dict[str, dict[str, Rule]] = {
    "auth/group": {},
    "django_celery_beat/periodictask": {},
    "django_celery_beat/clockedschedule": {},
    "django_celery_beat/crontabschedule": {},
    "django_celery_beat/solarschedule": {},
    "django_celery_beat/intervalschedule": {},
    "account/emailaddress": {},
    "mfa/authenticator": {},
    "phr/user": {},
    "phr/organization": {},
    "phr/membership": {},
    "phr/guardianship": {},
    "phr/residency": {},
    "phr/apitoken": {},
    # A municipality's research regime (control data, audited).
    "sharing/researchregime": {},
    # A note for a merge decision: viewed and deleted, never added or edited.
    "clinics/patientmatchreview": {
        "add/": staff(GET=403, POST=403),
        "<path:object_id>/change/": staff(GET=200, POST=403),
    },
    # Every field of a job is read-only: an empty POST saves and redirects.
    "phr/job": {
        "add/": staff(GET=200, POST=302),
        "<path:object_id>/change/": staff(GET=200, POST=302),
    },
}

# The admin's per-app index lists the registered app labels in a regex;
# the table names it once.
ADMIN_APP_INDEX = "admin/^(?P<app_label>…)/$"

EXPECTATIONS: dict[str, Rule] = {
    # --- language switch: anyone, a redirect back ----------------------------
    "i18n/setlang/": page(PUBLIC, GET=S(anyone=302, needs_mfa=302), POST=S(anyone=302)),
    # --- allauth: sign-in and account pages -----------------------------------
    "accounts/login/": page(
        PUBLIC, GET=S(anonymous=200, user=302), POST=S(anonymous=200, user=302)
    ),
    # Signed out already: allauth sends one home.
    "accounts/logout/": page(PUBLIC, GET=S(anonymous=302, user=200), POST=S(anyone=302)),
    "accounts/inactive/": page(PUBLIC, GET=S(anyone=200)),
    "accounts/signup/": page(
        PUBLIC, GET=S(anonymous=200, user=302), POST=S(anonymous=200, user=302)
    ),
    "accounts/reauthenticate/": page(AUTH, GET=S(user=200), POST=S(user=200)),
    "accounts/email/": page(AUTH, GET=S(user=200), POST=S(user=302)),
    "accounts/confirm-email/": page(PUBLIC, GET=S(anyone=200)),
    "accounts/password/change/": page(AUTH, GET=S(user=200), POST=S(user=200)),
    "accounts/password/set/": page(AUTH, GET=S(user=302), POST=S(user=302)),
    "accounts/password/reset/": page(PUBLIC, GET=S(anyone=200), POST=S(anyone=200)),
    "accounts/login/code/confirm/": page(PUBLIC, GET=S(anyone=302), POST=S(anyone=302)),
    "accounts/^confirm-email/(?P<key>[-:\\w]+)/$": page(
        PUBLIC, "accounts/confirm-email/not-a-key/", GET=S(anyone=200), POST=S(anyone=404)
    ),
    "accounts/password/reset/key/done/": page(PUBLIC, GET=S(anyone=200)),
    "accounts/^password/reset/key/(?P<uidb36>[0-9A-Za-z]+)-(?P<key>.+)/$": page(
        PUBLIC,
        "accounts/password/reset/key/1-not-a-key/",
        GET=S(anyone=200),
        POST=S(anyone=200),
    ),
    "accounts/password/reset/done/": page(PUBLIC, GET=S(anyone=200)),
    "accounts/2fa/": page(AUTH, GET=S(user=200)),
    "accounts/2fa/authenticate/": page(PUBLIC, GET=S(anyone=302), POST=S(anyone=302)),
    "accounts/2fa/reauthenticate/": page(
        AUTH, GET=S(mfa=200, no_mfa=302), POST=S(mfa=200, no_mfa=302)
    ),
    # Activation asks for a fresh re-authentication first.
    "accounts/2fa/totp/activate/": page(AUTH, GET=S(user=302), POST=S(user=302)),
    "accounts/2fa/totp/deactivate/": page(
        AUTH, GET=S(mfa=302, no_mfa=404), POST=S(mfa=302, no_mfa=404)
    ),
    # None of the personas has recovery codes: allauth answers 404.
    "accounts/2fa/recovery-codes/": page(AUTH, GET=S(user=404)),
    "accounts/2fa/recovery-codes/generate/": page(AUTH, GET=S(user=302), POST=S(user=302)),
    "accounts/2fa/recovery-codes/download/": page(AUTH, GET=S(user=404)),
    # --- Django admin: platform admins with MFA -------------------------------
    "admin/": staff(GET=200),
    "admin/login/": page(
        PUBLIC,
        GET=S(anonymous=200, user=200, needs_mfa=302, admin=302),
        POST=S(anonymous=200, user=200, needs_mfa=302, admin=200),
    ),
    "admin/logout/": staff(GET=405, POST=200),
    "admin/password_change/": staff(GET=200, POST=200),
    "admin/password_change/done/": staff(GET=200),
    "admin/autocomplete/": staff(GET=403),  # needs a model and a field to answer
    "admin/jsi18n/": staff(GET=200),
    "admin/r/<path:content_type_id>/<path:object_id>/": staff(GET=404),  # no view_on_site
    "admin/phr/user/<id>/password/": staff(GET=200, POST=200),
    ADMIN_APP_INDEX: staff("admin/phr/", GET=200),
    "admin/(?P<url>.*)$": staff("admin/no-such-page/", GET=404),
    # --- OpenAPI schema of our JSON APIs: signed-in users ---------------------
    "api/schema/": page(AUTH, GET=S(anonymous=401, user=200), POST=S(anonymous=401, user=405)),
    # --- FHIR R4 API ----------------------------------------------------------
    # POST of a transaction or batch Bundle at the base URL, with and without
    # the slash (the matrix's empty POST body: 400 as JSON, 415 as a form).
    "fhir": page(AUTH, GET=S(anonymous=401, user=405), POST=S(anonymous=401, user=415)),
    "fhir/": page(AUTH, GET=S(anonymous=401, user=405), POST=S(anonymous=401, user=400)),
    "fhir/metadata": Rule(FHIR_METADATA),
    "fhir/<str:resource_type>": Rule(FHIR_TYPE),
    "fhir/<str:resource_type>/<str:resource_id>": Rule(FHIR_INSTANCE),
    "fhir/<str:resource_type>/<str:resource_id>/_history": Rule(FHIR_HISTORY),
    "fhir/<str:resource_type>/<str:resource_id>/_history/<str:version_id>": Rule(FHIR_VERSION),
    "fhir/^.*$": Rule(FHIR_UNKNOWN),
    # --- the family's pages ---------------------------------------------------
    "": listing(lambda w, p: own_family(w, p)),
    "people/<uuid:patient_id>/": patient_page(PERSON_PAGE_ALLOWED),
    # --- Sharing (sharing/urls.py): ids travel in bodies and query strings -----
    "sharing/": listing(lambda w, p: own_family(w, p), POST=S(user=405)),
    "sharing/grant/": page(  # POST only; re-authentication first, whoever asks
        AUTH, GET=S(anyone=405), POST=S(anonymous=302, user=302)
    ),
    "sharing/revoke/": scoped(lambda w: {"consent": w.ids["clinic_consent"]}, DECIDE_FOR_CHILD),
    "sharing/emergency/": scoped(
        lambda w: {"patient": w.ids["child"], "share_summary": "on", "contact_note": "祖母"},
        DECIDE_FOR_CHILD,
    ),
    "sharing/clinics/": page(AUTH, "sharing/clinics/?q=Matrix", GET=S(user=200)),
    "sharing/why/": scoped(
        lambda w: {"patient": w.ids["child"], "grantee": f"org:{w.ids['clinic']}"},
        DECIDE_FOR_CHILD,
        verb="GET",
        ok=200,
    ),
    "sharing/history/": listing(lambda w, p: accessed_by_others(w, p)),
    "sharing/history/report/": scoped(
        lambda w: {"audit_event": w.ids["block_event"], "note": "?"}, DECIDE_FOR_CHILD
    ),
    "sharing/reports/": listing(
        lambda w, p: {"child"} if p == "municipal_officer" else set(),
        GET=S(user=404, municipal_officer=200),
    ),
    "sharing/reports/close/": scoped(
        lambda w: {"report": w.ids["report"], "resolution": "checked"},
        frozenset({"municipal_officer"}),
    ),
    "sharing/with-me/": listing(lambda w, p: consented_to(w, p)),
    # --- Family link codes (municipal_data/link_views.py): the town's staff
    # with MFA; another town's code is a 404; the letter shows the code only
    # right after issuing (the world's was issued earlier: no code, no names).
    "municipal/link-codes/": listing(
        lambda w, p: {"child"} if p == "municipal_officer" else set(),
        GET=S(user=404, municipal_officer=200, other_municipal_officer=200),
        POST=S(user=404, municipal_officer=405, other_municipal_officer=405),
    ),
    "municipal/link-codes/issue/": page(  # POST without a number: the form with errors
        AUTH,
        GET=S(user=404, municipal_officer=200, other_municipal_officer=200),
        POST=S(user=404, municipal_officer=400, other_municipal_officer=400),
    ),
    "municipal/link-codes/<int:link_code_id>/revoke/": page(
        AUTH,
        lambda w: f"municipal/link-codes/{w.ids['link_code']}/revoke/",
        GET=S(user=404, municipal_officer=405, other_municipal_officer=405),
        POST=S(user=404, municipal_officer=302),
    ),
    "municipal/link-codes/<int:link_code_id>/letter/": page(
        AUTH,
        lambda w: f"municipal/link-codes/{w.ids['link_code']}/letter/",
        GET=S(user=404, municipal_officer=200),
        POST=S(user=404, municipal_officer=405, other_municipal_officer=405),
    ),
    # A parent's link code form (municipal_data/link_urls.py): anyone signed
    # in; a POST without a code is the form with errors; "done" without a
    # fresh link goes to the family page.
    "link/": page(AUTH, GET=S(user=200), POST=S(user=400)),
    "link/done/": page(AUTH, GET=S(user=302), POST=S(user=405)),
    # --- Municipal staff pages (municipal_data/urls.py): municipal staff with
    # MFA only; a batch or review of another town is a 404 ---------------------
    "municipal/": listing(
        lambda w, p: set(),  # aggregate figures only
        GET=S(user=404, municipal_officer=200, other_municipal_officer=200),
        POST=S(user=405),
    ),
    "municipal/upload/": page(  # POST without a file: the form with errors
        AUTH,
        GET=S(user=404, municipal_officer=200, other_municipal_officer=200),
        POST=S(user=404, municipal_officer=200, other_municipal_officer=200),
    ),
    "municipal/batches/": listing(
        lambda w, p: set(),
        GET=S(user=404, municipal_officer=200, other_municipal_officer=200),
        POST=S(user=405),
    ),
    "municipal/batches/<int:batch_id>/": municipal(
        lambda w: f"municipal/batches/{w.ids['batch']}/", GET=200
    ),
    "municipal/batches/<int:batch_id>/progress/": municipal(
        lambda w: f"municipal/batches/{w.ids['batch']}/progress/", GET=200
    ),
    "municipal/batches/<int:batch_id>/errors.csv": municipal(
        lambda w: f"municipal/batches/{w.ids['batch']}/errors.csv", GET=200
    ),
    "municipal/batches/<int:batch_id>/confirm/": municipal(
        lambda w: f"municipal/batches/{w.ids['batch']}/confirm/", POST=302
    ),
    "municipal/batches/<int:batch_id>/cancel/": municipal(
        lambda w: f"municipal/batches/{w.ids['batch']}/cancel/", POST=302
    ),
    # The queue shows the row from the file and what the child's record says.
    "municipal/reviews/": listing(
        lambda w, p: {"child"} if p == "municipal_officer" else set(),
        GET=S(user=404, municipal_officer=200, other_municipal_officer=200),
        POST=S(user=405),
    ),
    "municipal/reviews/<int:review_id>/decide/": municipal(  # no decision: back to the queue
        lambda w: f"municipal/reviews/{w.ids['match_review']}/decide/", POST=302
    ),
    # --- Feeds (municipal_data/feed_views.py): the town's staff with MFA;
    # another town's feed is a 404; empty POSTs answer with the form's errors.
    "municipal/feeds/": listing(
        lambda w, p: set(),
        GET=S(user=404, municipal_officer=200, other_municipal_officer=200),
        POST=S(user=405),
    ),
    "municipal/feeds/new/": page(
        AUTH,
        GET=S(user=404, municipal_officer=200, other_municipal_officer=200),
        POST=S(user=404, municipal_officer=200, other_municipal_officer=200),
    ),
    "municipal/feeds/<int:source_id>/": municipal(
        lambda w: f"municipal/feeds/{w.ids['feed_source']}/", GET=200
    ),
    "municipal/feeds/<int:source_id>/edit/": municipal(
        lambda w: f"municipal/feeds/{w.ids['feed_source']}/edit/", GET=200, POST=200
    ),
    "municipal/feeds/<int:source_id>/run/": municipal(
        lambda w: f"municipal/feeds/{w.ids['feed_source']}/run/", POST=302
    ),
    # --- Clinic portal (clinics/urls.py): clinic staff with MFA; a patient the
    # policy point does not let the clinic see and another clinic's token are
    # a 404. The list names the child (consent); the mother's records came
    # from the clinic, her name did not, so it names no one else.
    "clinic/": listing(
        lambda w, p: {"child"} if p == "clinician" else set(),
        GET=S(user=404, **dict.fromkeys(CLINIC_STAFF, 200)),
        POST=S(user=405),
    ),
    "clinic/patients/<uuid:patient_id>/": patient_page(
        {
            "mother_patient": frozenset({"clinician"}),  # records the clinic submitted
            "child": frozenset({"clinician"}),  # the clinic's care consent
            "neighbour_child": frozenset(),
        }
    ),
    "clinic/tokens/": page(
        AUTH, GET=S(user=404, **dict.fromkeys(CLINIC_STAFF, 200)), POST=S(user=405)
    ),
    "clinic/tokens/create/": page(  # re-authentication first
        AUTH, GET=S(user=405), POST=S(user=404, **dict.fromkeys(CLINIC_STAFF, 302))
    ),
    "clinic/tokens/<int:token_id>/revoke/": page(
        AUTH,
        lambda w: f"clinic/tokens/{w.ids['clinic_token']}/revoke/",
        GET=S(user=405),
        POST=S(user=404, clinician=302),
    ),
    # The clinic's invitations: its staff see their own clinic's (the one
    # invitation, of the mother, names no one: the clinic may not see her
    # name). Revoking it is the clinician's (302); a new code is refused
    # with a message (302: she has an account). Another clinic's: 404.
    "clinic/invitations/": page(
        AUTH, GET=S(user=404, **dict.fromkeys(CLINIC_STAFF, 200)), POST=S(user=405)
    ),
    "clinic/invitations/<int:invitation_id>/reissue/": page(
        AUTH,
        lambda w: f"clinic/invitations/{w.ids['clinic_invitation']}/reissue/",
        GET=S(user=405),
        POST=S(user=404, clinician=302),
    ),
    "clinic/invitations/<int:invitation_id>/revoke/": page(
        AUTH,
        lambda w: f"clinic/invitations/{w.ids['clinic_invitation']}/revoke/",
        GET=S(user=405),
        POST=S(user=404, clinician=302),
    ),
    # Visit entry and delivery (clinics/entry_views.py) write, so they ask
    # sharing.access.may_write: no one holds a consent for the mother's
    # pregnancy or checkups (records the clinic submitted give no right to
    # add more) and the child is no pregnancy: 404 for all.
    "clinic/patients/<uuid:patient_id>/visits/new/": page(
        AUTH,
        lambda w: f"clinic/patients/{w.patients['mother_patient'].pk}/visits/new/",
        GET=S(user=404),
        POST=S(user=404),
    ),
    "clinic/patients/<uuid:patient_id>/delivery/": page(
        AUTH,
        lambda w: f"clinic/patients/{w.patients['mother_patient'].pk}/delivery/",
        GET=S(user=404),
        POST=S(user=404),
    ),
    # Registering a new pregnant patient: clinic staff; an empty POST is the
    # form with errors. Her invitation page: anyone signed in.
    "clinic/register/": page(
        AUTH,
        GET=S(user=404, **dict.fromkeys(CLINIC_STAFF, 200)),
        POST=S(user=404, **dict.fromkeys(CLINIC_STAFF, 400)),
    ),
    "clinic/join/": page(AUTH, GET=S(user=200), POST=S(user=400)),
    # --- Emergency access (sharing/emergency_urls.py) --------------------------
    "emergency/summary/<uuid:patient_id>/": patient_page(SUMMARY_ALLOWED, summary_reach),
    "emergency/summary/<uuid:patient_id>.json": patient_page(SUMMARY_ALLOWED, summary_reach),
    # Responders with MFA only; the search answers "one/no match" (an empty
    # POST: 400), open and break-glass need a match in the session first.
    "emergency/find/": page(AUTH, GET=S(user=404, responder=200), POST=S(user=404, responder=400)),
    "emergency/open/": page(AUTH, GET=S(user=404, responder=405), POST=S(user=404, responder=302)),
    "emergency/break-glass/": page(
        AUTH, GET=S(user=404, responder=405), POST=S(user=404, responder=302)
    ),
    # The privacy officer's review queue of break-glass uses (the mother's):
    # it names the responder and the reason, never the patient.
    "emergency/reviews/": listing(
        lambda w, p: set(),
        GET=S(user=404, municipal_officer=200),
        POST=S(user=404, municipal_officer=404),
    ),
    "emergency/card/": listing(lambda w, p: own_family(w, p), POST=S(user=404)),
    # A card's link opens the child's summary for anyone holding it, no
    # login; an unknown token gets the same "not valid" page (404).
    "emergency/^c/(?P<token>[^/]{1,200})/$": listing(
        lambda w, p: {"child"},
        sample=lambda w: f"emergency/c/{w.ids['card_token']}/",
        GET=S(anyone=200),
    ),
    # --- The handbook (phr/handbook_urls.py): the family's page (purpose
    # personal); whoever the family shares with, clinics, the town and
    # admins have their own pages and get 404. It shows checkups,
    # vaccinations, pregnancies, notes, medicines and recent home
    # measurements, all of them, and never an allergy, condition or flag.
    "handbook/<uuid:patient_id>/": patient_page(FAMILY_OF, handbook_reach, must=handbook_must),
    "handbook/<uuid:patient_id>/print/": patient_page(
        FAMILY_OF, handbook_reach, must=handbook_print_must
    ),
    # School checkups and birth data: a child's guardians only (an adult:
    # 404 for all); an empty POST is the form with errors (400).
    "handbook/<uuid:patient_id>/school-checkups/new/": cases(
        *family_form(
            "handbook/{patient}/school-checkups/new/",
            ok={"GET": 200, "POST": 400},
            patients=CHILDREN,
        ),
        *family_form(
            "handbook/{patient}/school-checkups/new/",
            ok={"POST": 302},
            body=_school_checkup,
            patients=("neighbour_child",),
        ),
        Case(
            _for("mother_patient", "handbook/{patient}/school-checkups/new/"),
            {"GET": S(user=404), "POST": S(user=404)},
        ),
    ),
    "handbook/<uuid:patient_id>/birth/": cases(
        *family_form(
            "handbook/{patient}/birth/",
            ok={"GET": 200, "POST": 400},
            patients=CHILDREN,
        ),
        *family_form(
            "handbook/{patient}/birth/",
            ok={"POST": 302},
            body=lambda w: {"birth_weight": "3012"},
            patients=("child",),
        ),
        Case(
            _for("mother_patient", "handbook/{patient}/birth/"),
            {"GET": S(user=404), "POST": S(user=404)},
        ),
    ),
    # A vaccination given elsewhere, reported by a child's guardian (an
    # adult: 404); deleting one is its reporter's, and the town's record
    # stays with the town (404 for everyone).
    "handbook/<uuid:patient_id>/vaccinations/new/": cases(
        *family_form(
            "handbook/{patient}/vaccinations/new/",
            ok={"GET": 200, "POST": 400},
            patients=CHILDREN,
        ),
        *family_form(
            "handbook/{patient}/vaccinations/new/",
            ok={"POST": 302},
            body=lambda w: {
                "dose": "hib:2",
                "date": "2025-12-10",
                "report_origin": "record",
                "confirm_ages": "on",
            },
            patients=("child",),
        ),
        Case(
            _for("mother_patient", "handbook/{patient}/vaccinations/new/"),
            {"GET": S(user=404), "POST": S(user=404)},
        ),
    ),
    "handbook/<uuid:patient_id>/vaccinations/<uuid:record_id>/delete/": cases(
        *family_form(
            "handbook/{patient}/vaccinations/{reported}/delete/",
            ok={"POST": 302},
            writers={"child": frozenset({"mother"})},
            patients=("child",),
        ),
        Case(
            _for("child", "handbook/{patient}/vaccinations/{vaccination}/delete/"),
            {"GET": S(anyone=405), "POST": S(user=404)},
        ),
    ),
    # A note: the person herself, a child's guardians.
    "handbook/<uuid:patient_id>/notes/new/": cases(
        *family_form(
            "handbook/{patient}/notes/new/", ok={"GET": 200, "POST": 302}, body=_note_body
        ),
        *family_form("handbook/{patient}/notes/new/", ok={"POST": 400}),
    ),
    # The mother's note on the child: hers alone (not the father's); under
    # another patient's path it is nobody's.
    "handbook/<uuid:patient_id>/notes/<uuid:note_id>/edit/": cases(
        *family_form(
            "handbook/{patient}/notes/{note}/edit/",
            ok={"GET": 200, "POST": 302},
            body=_note_body,
            writers={"child": frozenset({"mother"})},
            patients=("child",),
        ),
        *family_form(
            "handbook/{patient}/notes/{note}/edit/",
            ok={"POST": 400},
            writers={"child": frozenset({"mother"})},
            patients=("child",),
        ),
        Case(
            _for("mother_patient", "handbook/{patient}/notes/{note}/edit/"),
            {"GET": S(user=404), "POST": S(user=404)},
        ),
    ),
    "handbook/<uuid:patient_id>/notes/<uuid:note_id>/delete/": cases(
        *family_form(
            "handbook/{patient}/notes/{note}/delete/",
            ok={"POST": 302},
            writers={"child": frozenset({"mother"})},
            patients=("child",),
        ),
        Case(_for("child", "handbook/{patient}/notes/{note}/delete/"), {"GET": S(anyone=405)}),
        Case(
            _for("mother_patient", "handbook/{patient}/notes/{note}/delete/"), {"POST": S(user=404)}
        ),
    ),
    # --- The medication notebook (phr/medication_urls.py): read by whoever
    # the policy point lets see the person's medicines; imports and entries
    # by the family alone (purpose personal); an entry edited by its author.
    "medications/<uuid:patient_id>/": patient_page(
        NOTEBOOK_ALLOWED, notebook_reach, must=notebook_reach
    ),
    # An import shows its report (200); "discard" the scanned parts: back
    # (302); no text and no file: the form with errors (400).
    "medications/<uuid:patient_id>/import/": cases(
        *family_form(
            "medications/{patient}/import/", ok={"GET": 200, "POST": 200}, body=_jahis_body
        ),
        *family_form("medications/{patient}/import/", ok={"POST": 400}),
        *family_form(
            "medications/{patient}/import/",
            ok={"POST": 302},
            body=lambda w: {"action": "discard"},
        ),
    ),
    "medications/<uuid:patient_id>/new/": cases(
        *family_form(
            "medications/{patient}/new/", ok={"GET": 200, "POST": 302}, body=_medicine_body
        ),
        *family_form("medications/{patient}/new/", ok={"POST": 400}),  # the form with errors
    ),
    "medications/<uuid:patient_id>/statements/<uuid:resource_id>/edit/": cases(
        *family_form(
            "medications/{patient}/statements/{statement}/edit/",
            ok={"GET": 200, "POST": 302},
            body=_medicine_body,
            writers={"child": frozenset({"mother"})},
            patients=("child",),
        ),
        *family_form(  # the form with errors
            "medications/{patient}/statements/{statement}/edit/",
            ok={"POST": 400},
            writers={"child": frozenset({"mother"})},
            patients=("child",),
        ),
        Case(
            _for("mother_patient", "medications/{patient}/statements/{statement}/edit/"),
            {"GET": S(user=404), "POST": S(user=404)},
        ),
    ),
    # --- Family (phr/family_urls.py) ------------------------------------------
    # Each user's own family: the other guardian the child only, staff nobody.
    "family/": listing(lambda w, p: own_family(w, p), POST=S(anyone=405)),
    # Inviting hands children's records on: re-authentication first; then
    # a guardian invites for her children (302), anyone else's form is
    # refused (400: none of the children is theirs).
    "family/invite/": cases(
        Case(
            lambda w: "family/invite/",
            {"GET": S(anyone=405), "POST": S(user=302)},
            body=_invite_body,
            redirect_to="reauthenticate",
        ),
        Case(
            lambda w: "family/invite/",
            {"POST": S(user=400, mother=302, father=302)},
            body=_invite_body,
            shows=lambda w, p: own_family(w, p),
            fresh=True,
        ),
    ),
    "family/invitations/revoke/": cases(
        Case(
            lambda w: "family/invitations/revoke/",
            {"GET": S(anyone=405), "POST": S(user=404, mother=302)},
            body=lambda w: {"invitation": w.ids["guardian_invitation"]},
            after=_revoked_only_by_inviter,
        ),
    ),
    # The emailed link: anyone may read who invites (404 for a token no
    # longer usable); accepting is the invited address's (400 for others).
    "family/invitation/": cases(
        Case(
            lambda w: f"family/invitation/?token={w.ids['invitation_token']}",
            {"GET": S(anyone=200)},
        ),
        Case(lambda w: "family/invitation/?token=not-a-token", {"GET": S(anyone=404)}),
        Case(
            lambda w: "family/invitation/",
            {"POST": S(anonymous=302, user=400, grandmother=302)},
            body=lambda w: {"token": w.ids["invitation_token"]},
            after=_invitation_state,
        ),
    ),
    # A child born elsewhere: the family's (staff: 403).
    "family/children/add/": cases(
        Case(
            lambda w: "family/children/add/",
            {
                "GET": S(user=200, **dict.fromkeys(STAFF_PERSONAS, 403)),
                "POST": S(user=400, **dict.fromkeys(STAFF_PERSONAS, 403)),
            },
        ),
        Case(
            lambda w: "family/children/add/",
            {"POST": S(user=302, **dict.fromkeys(STAFF_PERSONAS, 403))},
            body=_child_body,
        ),
    ),
    "family/export/": page(AUTH, GET=S(user=200), POST=S(anyone=405)),
    "family/export/bundle.json": custom(lambda *args: check_export_bundle(*args)),
    "family/export/print/": custom(lambda *args: check_export_print(*args)),
    # Leaving: the page for all; the deletion after re-authentication and
    # the tick (400 without), never for staff (403); then the goodbye page.
    "family/leave/": cases(
        Case(
            lambda w: "family/leave/",
            {"GET": S(user=200), "POST": S(anyone=405)},
            shows=lambda w, p: own_family(w, p),
        ),
    ),
    "family/leave/confirm/": cases(
        Case(
            lambda w: "family/leave/confirm/",
            {"GET": S(anyone=405), "POST": S(user=302)},
            body=lambda w: {"confirm": "on"},
            redirect_to="reauthenticate",
            after=_left,
        ),
        Case(
            lambda w: "family/leave/confirm/",
            {"POST": S(user=302, **dict.fromkeys(STAFF_PERSONAS, 403))},
            body=lambda w: {"confirm": "on"},
            fresh=True,
            redirect_to="/family/left/",
            after=_left,
        ),
        Case(
            lambda w: "family/leave/confirm/",
            {"POST": S(user=400, **dict.fromkeys(STAFF_PERSONAS, 403))},
            shows=lambda w, p: own_family(w, p),
            fresh=True,
        ),
    ),
    "family/left/": page(PUBLIC, GET=S(anyone=200), POST=S(anyone=405)),
    # --- Notifications (phr/reminder_urls.py): one's own only --------------------
    "notifications/": listing(_reminders_of, POST=S(anyone=405)),
    "notifications/read/": cases(
        Case(
            lambda w: "notifications/read/",
            {"GET": S(anyone=405), "POST": S(user=302)},
            body=lambda w: {"reminder": w.ids["mother_reminder"]},
            after=_read_only_by_owner,
        ),
    ),
    "notifications/settings/": cases(
        Case(
            lambda w: "notifications/settings/",
            {"GET": S(user=200), "POST": S(user=302)},
            body=lambda w: {"email_enabled": "on", "vaccinations": "on"},
        ),
    ),
    # --- Vitals (issue 7; vitals/*_urls.py) --------------------------------
    # Quick entry: the family's page (purpose personal), showing the
    # person's home measurements; POST 405 (anonymous too: the method is
    # checked first).
    "vitals/<uuid:patient_id>/": patient_page(
        FAMILY_OF, vitals_reach, must=vitals_must, GET=S(), POST=S(anyone=405)
    ),
    # One form's measurement: the family writes (302), a form with errors
    # is 400; a form of the other kind of person (a child's head for the
    # mother, a fetal movement count for a child) is 404; GET 405.
    "vitals/<uuid:patient_id>/add/<slug:slug>/": cases(
        *family_form(
            "vitals/{patient}/add/blood-pressure/",
            ok={"POST": 302},
            body=_entry_body("blood-pressure", systolic="118", diastolic="76", pulse="72"),
            patients=("mother_patient",),
        ),
        *family_form(
            "vitals/{patient}/add/weight/",
            ok={"POST": 302},
            body=_entry_body("weight", value="8.4", unit="kg"),
            patients=("child",),
        ),
        *family_form(
            "vitals/{patient}/add/weight/",
            ok={"POST": 302},
            body=_entry_body("weight", value="23.5", unit="kg"),
            patients=("neighbour_child",),
        ),
        *family_form(
            "vitals/{patient}/add/temperature/", ok={"POST": 400}, body=_entry_body("temperature")
        ),
        *family_form(
            "vitals/{patient}/add/blood-pressure/", ok={"POST": 400}, patients=("mother_patient",)
        ),
        _nobodys("vitals/{patient}/add/head/", "mother_patient", "POST"),
        _nobodys("vitals/{patient}/add/fetal-movement/", "child", "POST"),
        Case(_for("mother_patient", "vitals/{patient}/add/weight/"), {"GET": S(anyone=405)}),
    ),
    # An entry: its author's (the mother's blood pressure); a device's
    # reading and an entry under another person are nobody's; delete GET 405.
    "vitals/<uuid:patient_id>/entries/<uuid:record_id>/edit/": cases(
        *_author_only("vitals/{patient}/entries/{mother_bp}/edit/", GET=200),
        Case(
            _for("mother_patient", "vitals/{patient}/entries/{mother_bp}/edit/"),
            {"POST": S(user=404, mother=302)},
            body=_bp_edit_body,
            shows=_only("mother_patient"),
        ),
        *_author_only("vitals/{patient}/entries/{mother_bp}/edit/", POST=400),
        _nobodys(
            "vitals/{patient}/entries/{mother_device_weight}/edit/", "mother_patient", "GET", "POST"
        ),
        _nobodys("vitals/{patient}/entries/{mother_bp}/edit/", "child", "GET", "POST"),
    ),
    "vitals/<uuid:patient_id>/entries/<uuid:record_id>/delete/": cases(
        *_author_only("vitals/{patient}/entries/{mother_bp}/delete/", POST=302),
        _nobodys(
            "vitals/{patient}/entries/{mother_device_weight}/delete/", "mother_patient", "POST"
        ),
        _nobodys("vitals/{patient}/entries/{mother_bp}/delete/", "child", "POST"),
        Case(
            _for("mother_patient", "vitals/{patient}/entries/{mother_bp}/delete/"),
            {"GET": S(anyone=405)},
        ),
    ),
    # Devices: the family's. Registering a device mints a token that writes
    # the person's record: a stale session confirms access first (302),
    # a re-authenticated one sees the token once (200) or the form's errors.
    "vitals/devices/<uuid:patient_id>/": cases(
        *family_form("vitals/devices/{patient}/", ok={"GET": 200}),
        *[
            replace(c, redirect_to="reauthenticate")
            for c in family_form("vitals/devices/{patient}/", ok={"POST": 302}, body=_device_body)
        ],
        *[
            replace(c, fresh=True)
            for c in family_form("vitals/devices/{patient}/", ok={"POST": 200}, body=_device_body)
        ],
        *[
            replace(c, fresh=True)
            for c in family_form("vitals/devices/{patient}/", ok={"POST": 400})
        ],
    ),
    # Revoking: the family's, for a device of that person (the mother's
    # device under the child's path: nobody's).
    "vitals/devices/<uuid:patient_id>/<uuid:device_id>/revoke/": cases(
        *family_form(
            "vitals/devices/{patient}/{device}/revoke/",
            ok={"POST": 302},
            patients=("mother_patient",),
        ),
        *family_form(
            "vitals/devices/{patient}/{child_device}/revoke/", ok={"POST": 302}, patients=("child",)
        ),
        _nobodys("vitals/devices/{patient}/{device}/revoke/", "child", "POST"),
        Case(
            _for("mother_patient", "vitals/devices/{patient}/{device}/revoke/"),
            {"GET": S(anyone=405)},
        ),
    ),
    "vitals/devices/<uuid:patient_id>/csv/": cases(
        *family_form("vitals/devices/{patient}/csv/", ok={"GET": 200, "POST": 200}, body=_csv_body),
        *family_form(
            "vitals/devices/{patient}/csv/", ok={"POST": 400}, body=_bad_file_body("vitals.csv")
        ),
    ),
    # The device endpoints take a device's token only.
    "vitals/devices/api/Observation": custom(lambda *args: check_device_api(*args)),
    "vitals/devices/api/Bundle": custom(lambda *args: check_device_api(*args)),
    "vitals/devices/api/omh": custom(lambda *args: check_device_api(*args)),
    # Apple Health imports: the family's; an upload goes to its job's page,
    # a file that is no export is the form with errors; a job is seen
    # under its own person only.
    "vitals/imports/<uuid:patient_id>/": cases(
        *[
            replace(c, redirect_to="/vitals/imports/")
            for c in family_form(
                "vitals/imports/{patient}/", ok={"GET": 200, "POST": 302}, body=_export_body
            )
        ],
        *family_form(
            "vitals/imports/{patient}/", ok={"POST": 400}, body=_bad_file_body("export.xml")
        ),
    ),
    "vitals/imports/<uuid:patient_id>/<int:job_id>/": cases(
        *family_form(
            "vitals/imports/{patient}/{import_job}/", ok={"GET": 200}, patients=("mother_patient",)
        ),
        _nobodys("vitals/imports/{patient}/{import_job}/", "child", "GET"),
        Case(
            _for("mother_patient", "vitals/imports/{patient}/{import_job}/"),
            {"POST": S(anyone=405)},
        ),
    ),
    "vitals/imports/<uuid:patient_id>/<int:job_id>/progress/": cases(
        *family_form(
            "vitals/imports/{patient}/{import_job}/progress/",
            ok={"GET": 200},
            patients=("mother_patient",),
        ),
        _nobodys("vitals/imports/{patient}/{import_job}/progress/", "child", "GET"),
        Case(
            _for("mother_patient", "vitals/imports/{patient}/{import_job}/progress/"),
            {"POST": S(anyone=405)},
        ),
    ),
    # Charts: the family's, like the handbook; measurements only.
    "vitals/charts/<uuid:patient_id>/": patient_page(
        FAMILY_OF, chart_reach, GET=S(), POST=S(anyone=405)
    ),
    "vitals/charts/<uuid:patient_id>/data.json": patient_page(
        FAMILY_OF, chart_reach, GET=S(), POST=S(anyone=405)
    ),
    # Alerts: one's own family's (the list names them), each person's with
    # the readings that raised it.
    "vitals/alerts/": listing(lambda w, p: own_family(w, p), POST=S(user=405)),
    "vitals/alerts/<uuid:patient_id>/": patient_page(
        FAMILY_OF, alert_reach, must=alert_must, GET=S(), POST=S(user=405)
    ),
    # --- The research portal (issue 8; sharing/research_urls.py) --------------
    # Researchers (with MFA) of the project's institution and eligible
    # reviewers only; everyone else 404, another institution's project,
    # export or link as if missing. Staff without MFA: MFA set-up first.
    # Export requests, download links and review decisions need a fresh
    # re-authentication (found first: a stranger's is a 404, not a "confirm
    # access"); an application does not. No page names a patient.
    #
    # The home: researchers (their institution's projects) and reviewers
    # (the queue's size; no project listed) — sharing/research_views.index.
    "research/": cases(
        Case(
            lambda w: "research/",
            {
                "GET": S(user=404, **dict.fromkeys(RESEARCHERS | REVIEWERS, 200)),
                "POST": S(user=405),
            },
            after=_names_projects(_index_projects),
        ),
    ),
    # Applying: researchers; an empty form is 400, a complete one creates
    # the project (theirs) and goes to its page.
    "research/apply/": cases(
        Case(
            lambda w: "research/apply/",
            {
                "GET": S(user=404, **dict.fromkeys(RESEARCHERS, 200)),
                "POST": S(user=404, **dict.fromkeys(RESEARCHERS, 400)),
            },
            after=_applied,
        ),
        Case(
            lambda w: "research/apply/",
            {"POST": S(user=404, **dict.fromkeys(RESEARCHERS, 302))},
            body=_apply_body,
            redirect_to="/research/projects/",
            after=_applied,
        ),
    ),
    "research/projects/<uuid:project_id>/": cases(
        *[_owner_pages(f"research/projects/{{{key}}}/", key, GET=200) for key in PROJECTS],
        Case(lambda w: f"research/projects/{MISSING_UUID}/", {"GET": S(user=404)}),
    ),
    # The export form: under review (C) it shows why an export is refused.
    "research/projects/<uuid:project_id>/export/": cases(
        *[_owner_pages(f"research/projects/{{{key}}}/export/", key, GET=200) for key in PROJECTS],
    ),
    "research/projects/<uuid:project_id>/export/create/": cases(
        Case(
            _research("research/projects/{project_a}/export/create/"),
            {"GET": S(user=405), "POST": S(user=404, researcher=302)},
            body=_export_request_body,
            redirect_to="reauthenticate",
            after=_exports_requested("project_a", writes=False),
        ),
        Case(
            _research("research/projects/{project_a}/export/create/"),
            {"POST": S(user=404, researcher=302)},
            body=_export_request_body,
            fresh=True,
            redirect_to="/research/exports/",
            after=_exports_requested("project_a"),
        ),
        # Nothing chosen: refused with the reason (400), nothing queued.
        Case(
            _research("research/projects/{project_a}/export/create/"),
            {"POST": S(user=404, researcher=400)},
            fresh=True,
            after=_exports_requested("project_a"),
        ),
        # Before the second approval (C is under review): refused.
        Case(
            _research("research/projects/{project_c}/export/create/"),
            {"POST": S(user=404, researcher=400)},
            body=_export_request_body,
            fresh=True,
            after=_exports_requested("project_c"),
        ),
        Case(
            _research("research/projects/{project_b}/export/create/"),
            {"POST": S(user=404, other_researcher=400)},
            fresh=True,
            after=_exports_requested("project_b"),
        ),
    ),
    "research/exports/<uuid:export_id>/": cases(
        _owner_pages("research/exports/{export_a}/", "project_a", GET=200),
        _owner_pages("research/exports/{export_b}/", "project_b", GET=200),
        Case(lambda w: f"research/exports/{MISSING_UUID}/", {"GET": S(user=404)}),
    ),
    "research/exports/<uuid:export_id>/progress/": cases(
        _owner_pages("research/exports/{export_a}/progress/", "project_a", exact=False, GET=200),
        _owner_pages("research/exports/{export_b}/progress/", "project_b", exact=False, GET=200),
        Case(lambda w: f"research/exports/{MISSING_UUID}/progress/", {"GET": S(user=404)}),
    ),
    "research/exports/<uuid:export_id>/links/": cases(
        Case(
            _research("research/exports/{export_a}/links/"),
            {"GET": S(user=405), "POST": S(user=404, researcher=302)},
            redirect_to="reauthenticate",
            after=_links_made("export_a", writes=False),
        ),
        Case(
            _research("research/exports/{export_a}/links/"),
            {"POST": S(user=404, researcher=302)},
            fresh=True,
            redirect_to="/research/exports/",
            after=_links_made("export_a"),
        ),
        Case(
            _research("research/exports/{export_b}/links/"),
            {"POST": S(user=404, other_researcher=302)},
            fresh=True,
            redirect_to="/research/exports/",
            after=_links_made("export_b"),
        ),
    ),
    "research/links/<int:link_id>/revoke/": cases(
        Case(
            _research("research/links/{link_a}/revoke/"),
            {"GET": S(user=405), "POST": S(user=404, researcher=302)},
            redirect_to="/research/exports/",
            after=_link_revoked("link_a"),
        ),
        Case(
            _research("research/links/{link_b}/revoke/"),
            {"POST": S(user=404, other_researcher=302)},
            after=_link_revoked("link_b"),
        ),
        Case(lambda w: "research/links/999999999/revoke/", {"POST": S(user=404)}),
    ),
    # A link: the release zip for the institution's researchers while it is
    # valid (410 with the reason once revoked); 404 for anyone else and for
    # an unknown token.
    "research/download/<str:token>/": cases(
        Case(
            _research("research/download/{token_a}/"),
            {"GET": S(user=404, researcher=200), "POST": S(user=405)},
            after=_zip_served,
        ),
        Case(
            _research("research/download/{token_b}/"),
            {"GET": S(user=404, other_researcher=200)},
            after=_zip_served,
        ),
        Case(_research("research/download/{token_revoked}/"), {"GET": S(user=404, researcher=410)}),
        Case(lambda w: "research/download/not-a-token/", {"GET": S(user=404)}),
    ),
    # Reviews: platform admins and privacy officers with MFA; the queue and
    # one's decisions name only projects one may review (the town's officer
    # not B or D, which cover only the other town).
    "research/reviews/": cases(
        Case(
            lambda w: "research/reviews/",
            {"GET": S(user=404, **dict.fromkeys(REVIEWERS, 200)), "POST": S(user=405)},
            after=_names_projects(_review_projects),
        ),
    ),
    "research/reviews/<uuid:project_id>/": cases(
        *[
            Case(
                _research(f"research/reviews/{{{key}}}/"),
                {
                    "GET": S(user=404, **dict.fromkeys(PROJECT_REVIEWERS[key], 200)),
                    "POST": S(user=405),
                },
                after=_names_projects(lambda p, k=key: {k} if p in PROJECT_REVIEWERS[k] else set()),
            )
            for key in PROJECTS
        ],
        Case(lambda w: f"research/reviews/{MISSING_UUID}/", {"GET": S(user=404)}),
    ),
    # Deciding: re-authentication first; an approval of C or D by whoever
    # may review it; a second decision by the same reviewer (A, B) and a
    # form without a decision are 400.
    "research/reviews/<uuid:project_id>/decide/": cases(
        Case(
            _research("research/reviews/{project_c}/decide/"),
            {"GET": S(user=405), "POST": S(user=404, **dict.fromkeys(REVIEWERS, 302))},
            body=_approve_body,
            redirect_to="reauthenticate",
            after=_reviewed("project_c", writes=False),
        ),
        *[
            Case(
                _research(f"research/reviews/{{{key}}}/decide/"),
                {"POST": S(user=404, **dict.fromkeys(PROJECT_REVIEWERS[key], 302))},
                body=_approve_body,
                fresh=True,
                redirect_to="/research/reviews/",
                after=_reviewed(key),
            )
            for key in ("project_c", "project_d")
        ],
        Case(
            _research("research/reviews/{project_c}/decide/"),
            {"POST": S(user=404, **dict.fromkeys(REVIEWERS, 400))},
            fresh=True,
            after=_reviewed("project_c"),
        ),
        *[
            Case(
                _research(f"research/reviews/{{{key}}}/decide/"),
                {"POST": S(user=404, **dict.fromkeys(PROJECT_REVIEWERS[key], 400))},
                body=_approve_body,
                fresh=True,
            )
            for key in ("project_a", "project_b")
        ],
    ),
    # --- The family's research choices (sharing/research_consent_urls.py) ----
    # The page names exactly the people one decides for (staff: nobody).
    "sharing/research/": listing(lambda w, p: own_family(w, p), POST=S(user=405)),
    "sharing/research/choose/": cases(
        *_decider_cases("sharing/research/choose/", _research_choice_body, "consent"),
        # No kind of record chosen: the page with the error (the family named).
        Case(
            lambda w: "sharing/research/choose/",
            {"GET": S(user=405), "POST": S(user=404, **dict.fromkeys(DECIDE_FOR_CHILD, 400))},
            body=lambda w: {"patient": w.ids["child"], "choice": "consent"},
            shows=lambda w, p: own_family(w, p),
            after=_choices_made("child", "consent"),
        ),
    ),
    "sharing/research/withdraw/": cases(
        *_decider_cases(
            "sharing/research/withdraw/",
            lambda name: lambda w: {"patient": str(w.patients[name].pk)},
            "refuse",
        ),
        Case(
            lambda w: "sharing/research/withdraw/",
            {"GET": S(user=405), "POST": S(user=404)},
            body=lambda w: {"patient": MISSING_UUID},
        ),
    ),
    # --- FHIR Patient/$everything (phr/fhir_api.py EverythingView) --------------
    "fhir/Patient/<str:resource_id>/$everything": Rule(FHIR_EVERYTHING),
}
for _model, _overrides in ADMIN_MODELS.items():
    for _suffix, _rule in {**ADMIN_MODEL_ROUTES, **_overrides}.items():
        EXPECTATIONS[f"admin/{_model}/{_suffix}"] = _rule


# Cells that answer wrongly today: skipped by the matrix, each pinned by a
# strict xfail test. Empty: the ones found were fixed.
KNOWN_BROKEN: dict[tuple[str, str, str], str] = {}


# --------------------------------------------------------------------------
# The routes, from the resolver
# --------------------------------------------------------------------------


def _walk(patterns: list[Any], prefix: str = "") -> Iterator[tuple[str, URLPattern]]:
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern), pattern


def _table_key(route: str) -> str:
    # The admin's app index regex lists every app with a ModelAdmin.
    if route.startswith("admin/^(?P<app_label>"):
        return ADMIN_APP_INDEX
    return route


def project_routes() -> list[str]:
    return sorted({_table_key(route) for route, _ in _walk(get_resolver().url_patterns)})


ROUTES = project_routes()


# --------------------------------------------------------------------------
# The world
# --------------------------------------------------------------------------


@dataclass
class World:
    users: dict[str, User | None]
    patients: dict[str, Patient]
    records: dict[str, uuid.UUID]
    markers: dict[uuid.UUID, str]  # what the person page shows of a record
    sessions: dict[str, str]
    tokens: dict[str, str]
    admin_objects: dict[str, str]
    # Strings that identify the patients: names and resident numbers.
    phi: dict[str, list[str]]
    snapshot: oracle.World
    # Ids the SCOPED rules send (consents, audit rows, reports …).
    ids: dict[str, str] = field(default_factory=dict)

    def user_id(self, persona: str) -> int | None:
        user = self.users[persona]
        return None if user is None else user.pk

    def has_mfa(self, persona: str) -> bool:
        user_id = self.user_id(persona)
        return user_id is not None and user_id in self.snapshot.mfa


def _write(
    resource: dict[str, Any], *, origin: str, organization: Organization | None = None
) -> uuid.UUID:
    provenance = services.provenance_create(origin=origin, organization=organization)
    rid, _, _ = store.record_write(resource, provenance=provenance)
    return rid


def _ref(patient: Patient) -> dict[str, str]:
    return {"reference": f"Patient/{patient.pk}"}


def _quantity_observation(
    patient: Patient, code: str, value: float, unit: str, category: str | None = None
) -> dict[str, Any]:
    return f.observation(patient, code=code, value=value, unit=unit, category=category)


def build_world() -> World:
    now = timezone.now()
    town = f.MunicipalityFactory(name="鈴蘭町")
    other_town = f.MunicipalityFactory(name="桔梗村")
    clinic = f.ClinicFactory(name="Matrix Clinic")
    other_clinic, revoked_clinic, expired_clinic = (f.ClinicFactory() for _ in range(3))
    ems = Organization.objects.create(
        kind=Organization.Kind.EMERGENCY, code="EMS-MATRIX", name="Matrix EMS"
    )
    institute = Organization.objects.create(
        kind=Organization.Kind.RESEARCH, code="RES-MATRIX", name="Matrix Institute"
    )

    users: dict[str, User | None] = {ANONYMOUS: None}
    for name in ("mother", "father", "blocked_guardian", "grandmother", "neighbour", "stranger"):
        users[name] = f.UserFactory(email=f"{name}@matrix.example.jp")
    users["clinician"] = f.make_member(Role.CLINIC_STAFF, clinic)
    users["unconsented_clinician"] = f.make_member(Role.CLINIC_STAFF, other_clinic)
    users["revoked_clinician"] = f.make_member(Role.CLINIC_STAFF, revoked_clinic)
    users["expired_clinician"] = f.make_member(Role.CLINIC_STAFF, expired_clinic)
    users["municipal_officer"] = f.make_member(Role.MUNICIPAL_STAFF, town)
    # The town's privacy officer (reports of suspicious access go to her).
    users["municipal_officer"].memberships.update(is_privacy_officer=True)
    users["other_municipal_officer"] = f.make_member(Role.MUNICIPAL_STAFF, other_town)
    users["staff_without_mfa"] = f.make_member(Role.MUNICIPAL_STAFF, town, mfa=False)
    users["responder"] = f.make_member(Role.EMERGENCY_RESPONDER, ems)
    users["researcher"] = f.make_member(Role.RESEARCHER, institute)
    other_institute = Organization.objects.create(
        kind=Organization.Kind.RESEARCH, code="RES-MATRIX-2", name="Matrix Other Institute"
    )
    users["other_researcher"] = f.make_member(Role.RESEARCHER, other_institute)
    admins = {"platform_admin": True, "admin_without_mfa": False}
    for name, mfa in admins.items():
        admin = f.UserFactory(is_staff=True, is_superuser=True, is_platform_admin=True)
        if mfa:
            f.enable_totp(admin)
        users[name] = admin
    people = {k: v for k, v in users.items() if v is not None}

    mother_patient = f.make_patient(
        kind=Patient.Kind.ADULT, family="鈴蘭", given="葵衣", account=people["mother"]
    )
    child = f.make_patient(family="鈴蘭", given="陽翔太")
    # Of school age (the handbook's school checkup form takes her results).
    neighbour_child = f.make_patient(family="桔梗", given="蓮司", birth_date=date(2018, 6, 1))
    patients = {
        "mother_patient": mother_patient,
        "child": child,
        "neighbour_child": neighbour_child,
    }
    services.residency_add(patient=mother_patient, municipality=town, resident_number="RN-M-4711")
    services.residency_add(patient=child, municipality=town, resident_number="RN-C-4712")
    services.residency_add(
        patient=neighbour_child,
        municipality=town,
        resident_number="RN-N-4713",
        valid_from=date(2024, 1, 1),
    )
    # The neighbour's child moved away last year; its old town keeps what it submitted.
    neighbour_child.residencies.filter(municipality=town).update(valid_to=date(2025, 3, 31))
    services.residency_add(
        patient=neighbour_child,
        municipality=other_town,
        resident_number="RN-N-4714",
        valid_from=date(2025, 4, 1),
    )
    relationship = Guardianship.Relationship
    services.guardianship_add(
        guardian=people["mother"], child=child, relationship=relationship.MOTHER
    )
    services.guardianship_add(
        guardian=people["father"], child=child, relationship=relationship.FATHER
    )
    services.guardianship_add(
        guardian=people["blocked_guardian"], child=child, relationship=relationship.OTHER
    )
    services.guardianship_add(
        guardian=people["neighbour"], child=neighbour_child, relationship=relationship.MOTHER
    )
    dv_block_set(
        patient=child, blocked_user=people["blocked_guardian"], by=people["municipal_officer"]
    )

    mother = people["mother"]
    clinic_consent = consent_grant(
        patient=child,
        by=mother,
        purpose=ConsentPurpose.CARE,
        categories=[Category.VACCINATIONS, Category.ALLERGIES_CONDITIONS, Category.MEDICATIONS],
        grantee_org=clinic,
    )
    # An emergency consent naming a person: no listable access, and (per
    # sharing/fhir.py) not readable by its grantee as a FHIR Consent.
    Consent.objects.create(  # the service refuses this; a stray row must grant nothing
        patient=mother_patient,
        granted_by=mother,
        purpose=ConsentPurpose.EMERGENCY,
        categories=[Category.ALLERGIES_CONDITIONS],
        grantee_user=people["grandmother"],
    )
    consent_grant(
        patient=mother_patient,
        by=mother,
        purpose=ConsentPurpose.CARE,
        categories=[Category.VITALS],
        grantee_user=people["grandmother"],
    )
    revoked = consent_grant(
        patient=child,
        by=mother,
        purpose=ConsentPurpose.CARE,
        categories=list(Category.values),
        grantee_org=revoked_clinic,
    )
    consent_revoke(consent=revoked, by=mother)
    consent_grant(
        patient=child,
        by=mother,
        purpose=ConsentPurpose.CARE,
        categories=list(Category.values),
        grantee_org=expired_clinic,
        starts_at=now - timedelta(days=30),
        ends_at=now - timedelta(days=1),
    )
    consent_grant(
        patient=child,
        by=mother,
        purpose=ConsentPurpose.RESEARCH,
        categories=list(Category.values),
        grantee_org=institute,
    )
    emergency_preference_set(patient=child, by=mother, share_summary=True)
    # The mother reports the DV block's audit row as suspicious (it is the
    # one access to the child by someone else): the officer's queue has it.
    block_event = AuditEvent.objects.get(action="dv_block.set", patient_id=child.pk)
    report = access_report_create(audit_event_id=block_event.pk, patient=child, by=mother)
    BreakGlass.objects.create(
        responder=people["responder"],
        organization=ems,
        patient=mother_patient,
        reason=BreakGlass.Reason.OBSTETRIC,
        justification="matrix: unconscious at the station",
        ends_at=now + timedelta(hours=4),
        review_municipality=town,
    )
    _card, card_token = card_create(patient=child, by=mother)
    # A family link code for the child (the town's list names the child).
    link_code, _letter_code = link_code_issue(
        municipality=town, child=child, by=people["municipal_officer"]
    )
    # The town's upload (validated, one bad row) and a row of it waiting for
    # a match review against the child (the municipal pages).
    batch = Batch.objects.create(
        organization=town,
        format="infant_checkup",
        filename="matrix.csv",
        path="batches/matrix.csv",
        sha256="0" * 64,
        size=100,
        status=Batch.Status.VALIDATED,
        summary={"rows": 2, "valid": 1, "invalid": 1, "review": 1},
    )
    BatchError.objects.create(
        batch=batch,
        line=3,
        column="受診日",
        value="2026-13-01",
        code="date",
        message_ja="存在しない日付です",
        message_en="no such date",
    )
    match_review = MatchReview.objects.create(
        municipality=town,
        batch=batch,
        format="infant_checkup",
        line=2,
        row_key="RN-C-4712|1m|2026-01-10",
        row_hash="0" * 64,
        resident_number="RN-C-4712",
        patient=child,
        row={"resident_number": "RN-C-4712", "given_name": "陽翔太", "birth_date": "2025-09-03"},
        differences=[{"field": "birth_date", "file": "2025-09-03", "record": "2025-09-01"}],
    )
    # The town's feed source with a failed run (the feed pages).
    from phr.models import FeedRun, FeedSource

    feed_source = FeedSource.objects.create(
        organization=town, name="Matrix feed", url="https://feed.example.jp/", format="vaccination"
    )
    FeedRun.objects.create(source=feed_source, status=FeedRun.Status.FAILED, error="HTTP 500")
    # The clinic's API token for its own system (the clinic portal's pages).
    clinic_token, _secret = api_token_create(
        user=people["clinician"], name="Matrix EHR", organization=clinic
    )
    # An invitation of the clinic (the portal's invitations page), made as a
    # row: the world's mother has an account already, so the clinic may
    # revoke the code but not issue her a new one.
    clinic_invitation = ClinicInvitation.objects.create(
        clinic=clinic,
        patient=patients["mother_patient"],
        code_hash="0" * 64,
        prefix="MTRX",
        issued_by=people["clinician"],
        expires_at=timezone.now() + timedelta(days=30),
    )

    origin = Provenance.Origin
    records: dict[str, uuid.UUID] = {}
    markers: dict[uuid.UUID, str] = {}

    def add(name: str, resource: dict[str, Any], marker: str, **how: Any) -> None:
        rid = _write(resource, **how)
        records[name] = rid
        markers[rid] = marker

    # The child: a vaccination and a checkup from the town, a home weight, an
    # allergy the clinic recorded, and a deleted home temperature.
    add(
        "child_vaccination",
        {
            "resourceType": "Immunization",
            "status": "completed",
            "vaccineCode": {"text": "mk-vaccine-hib"},
            "patient": _ref(child),
            "occurrenceDateTime": "2026-01-10",
        },
        "mk-vaccine-hib",
        origin=origin.MUNICIPALITY,
        organization=town,
    )
    add(
        "child_checkup",
        _quantity_observation(child, "9843-4", 41.37, "cm", Category.INFANT_CHECKUPS),
        "41.37",
        origin=origin.MUNICIPALITY,
        organization=town,
    )
    add(
        "child_home_weight",
        _quantity_observation(child, "29463-7", 8.213, "kg"),
        "8.213",
        origin=origin.SELF,
    )
    add(
        "child_allergy",
        {
            "resourceType": "AllergyIntolerance",
            "patient": _ref(child),
            "code": {"text": "mk-allergy-egg"},
            "recordedDate": "2026-02-01",
        },
        "mk-allergy-egg",
        origin=origin.CLINIC,
        organization=clinic,
    )
    deleted = _quantity_observation(child, "8310-5", 37.91, "Cel")
    add("child_deleted", deleted, "37.91", origin=origin.SELF)
    store.record_delete(
        resource_type="Observation",
        resource_id=records["child_deleted"],
        provenance=services.provenance_create(
            origin=origin.SELF, user=mother, activity=Provenance.Activity.DELETE
        ),
    )
    # The mother: her own temperature, a pregnancy, and the clinic's
    # prenatal checkup and (clinic-only) HIV test.
    add(
        "mother_temperature",
        _quantity_observation(mother_patient, "8310-5", 36.77, "Cel"),
        "36.77",
        origin=origin.SELF,
    )
    add(
        "mother_pregnancy",
        {
            "resourceType": "EpisodeOfCare",
            "status": "active",
            "type": [{"text": "mk-pregnancy"}],
            "patient": _ref(mother_patient),
            "period": {"start": "2026-03-01"},
        },
        "mk-pregnancy",
        origin=origin.CLINIC,
        organization=clinic,
    )
    add(
        "mother_fundal_height",
        _quantity_observation(mother_patient, "11881-0", 28.43, "cm"),
        "28.43",
        origin=origin.CLINIC,
        organization=clinic,
    )
    hiv = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOCAL, "code": "hiv-antibody"}]},
        "subject": _ref(mother_patient),
        "effectiveDateTime": "2026-04-01",
        "valueString": "mk-hiv-negative",
    }
    add("mother_hiv", hiv, "mk-hiv-negative", origin=origin.CLINIC, organization=clinic)
    # The neighbour's child: a checkup its old town submitted before the
    # move, and a home weight.
    add(
        "neighbour_checkup",
        _quantity_observation(neighbour_child, "9843-4", 39.55, "cm", Category.INFANT_CHECKUPS),
        "39.55",
        origin=origin.MUNICIPALITY,
        organization=town,
    )
    add(
        "neighbour_home_weight",
        _quantity_observation(neighbour_child, "29463-7", 7.771, "kg"),
        "7.771",
        origin=origin.SELF,
    )
    # The child's medication notebook: a pharmacy's dispensing, and a
    # medicine the mother entered herself (only she may edit it).
    add(
        "child_dispense",
        {
            "resourceType": "MedicationDispense",
            "status": "completed",
            "medicationCodeableConcept": {"text": "mk-med-dispensed"},
            "subject": _ref(child),
            "whenHandedOver": "2026-10-01",
        },
        "mk-med-dispensed",
        origin=origin.PHARMACY,
    )
    records["child_statement"] = medications.statement_save(
        patient=child, user=mother, name="mk-med-own", start=date(2026, 10, 2)
    )
    markers[records["child_statement"]] = "mk-med-own"
    # A dose given elsewhere that the mother reported (only she deletes it).
    records["child_reported_vaccination"] = handbook_services.vaccination_record(
        user=mother,
        patient=child,
        dose=handbook_services.ReportedDose(vaccine="hib", dose_number=1, day=date(2025, 11, 5)),
    )
    # A parent's note in the child's handbook, written by the mother.
    records["child_note"] = handbook_services.note_write(
        user=mother, patient=child, day=date(2026, 10, 3), text="mk-note-first-steps"
    )
    markers[records["child_note"]] = "mk-note-first-steps"
    # The mother invites the grandmother (her verified address) as a
    # guardian of the child; the invitation is open.
    EmailAddress.objects.create(
        user=people["grandmother"],
        email=people["grandmother"].email,
        verified=True,
        primary=True,
    )
    invitation, invitation_token = family_service.guardian_invitation_issue(
        inviter=mother,
        children=[child],
        email=people["grandmother"].email,
        relationship=Guardianship.Relationship.OTHER,
    )
    # Reminders: the mother's about the child, the neighbour's about hers.
    reminders = {
        name: Reminder.objects.create(
            user=people[guardian],
            patient=patients[patient_name],
            item_key=f"matrix-{name}",
            stage=Reminder.Stage.DUE_SOON,
            kind=Reminder.Kind.VACCINATION,
            label=f"mk-reminder-{name}",
            due_from=date(2026, 12, 1),
        )
        for name, guardian, patient_name in (
            ("mother", "mother", "child"),
            ("neighbour", "neighbour", "neighbour_child"),
        )
    }
    vitals_ids = _vitals_world(people, patients, records, markers)
    research_ids = _research_world(people, town=town, other_town=other_town)
    for name, patient in patients.items():
        records[name] = patient.pk

    sessions: dict[str, str] = {}
    tokens: dict[str, str] = {}
    for name, user in people.items():
        client = Client()
        client.force_login(user)
        sessions[name] = client.cookies[settings.SESSION_COOKIE_NAME].value
        tokens[name] = api_token_create(user=user, name=f"matrix {name}")[1]

    admin_objects = _admin_objects(people)
    return World(
        users=users,
        patients=patients,
        records=records,
        markers=markers,
        sessions=sessions,
        tokens=tokens,
        admin_objects=admin_objects,
        phi={
            "mother_patient": ["鈴蘭 葵衣", "葵衣", "RN-M-4711"],
            "child": ["陽翔太", "RN-C-4712"],
            "neighbour_child": ["桔梗 蓮司", "蓮司", "RN-N-4713", "RN-N-4714"],
        },
        snapshot=oracle.load_world(),
        ids={
            "child": str(child.pk),
            "clinic": str(clinic.pk),
            "clinic_consent": str(clinic_consent.pk),
            "block_event": str(block_event.pk),
            "report": str(report.pk),
            "card_token": card_token,
            "link_code": str(link_code.pk),
            "batch": str(batch.pk),
            "match_review": str(match_review.pk),
            "feed_source": str(feed_source.pk),
            "clinic_token": str(clinic_token.pk),
            "clinic_invitation": str(clinic_invitation.pk),
            "guardian_invitation": str(invitation.pk),
            "invitation_token": invitation_token,
            "mother_reminder": str(reminders["mother"].pk),
            **vitals_ids,
            **research_ids,
        },
    )


def _vitals_world(
    people: dict[str, User],
    patients: dict[str, Patient],
    records: dict[str, uuid.UUID],
    markers: dict[uuid.UUID, str],
) -> dict[str, str]:
    """Issue 7's objects: the pregnant mother's two high home blood
    pressures (hand-entered) and the alert Flag they raise, a device of
    hers with a reading it sent, a device of the child, and an Apple
    Health import job of hers (queued; it never runs here)."""
    mother, mother_patient, child = people["mother"], patients["mother_patient"], patients["child"]
    now = timezone.now()
    # A due date making today 30 weeks (the pregnancy rules need one), as
    # the mother entered it in her handbook.
    due = timezone.localdate(timezone=JAPAN) + timedelta(days=280 - 30 * 7)
    _write(
        {
            "resourceType": "Observation",
            "meta": {"tag": [{"system": terminology.CATEGORY_SYSTEM, "code": Category.PREGNANCY}]},
            "status": "final",
            "code": {"coding": [terminology.item("edd").coding]},
            "subject": _ref(mother_patient),
            "effectiveDateTime": (due - timedelta(days=210)).isoformat(),
            "valueDateTime": due.isoformat(),
        },
        origin=Provenance.Origin.SELF,
    )
    taken = {"mother_bp": now - timedelta(days=2), "mother_bp_second": now - timedelta(days=1)}
    for name, (systolic, diastolic) in (("mother_bp", (147, 96)), ("mother_bp_second", (151, 97))):
        [written] = vital_records.vitals_write(
            user=mother,
            patient=mother_patient,
            readings=[
                vital_records.reading(
                    vital_records.BLOOD_PRESSURE,
                    systolic=systolic,
                    diastolic=diastolic,
                    taken_at=taken[name].replace(second=0, microsecond=0),
                )
            ],
        )
        records[name] = written.id
        markers[written.id] = f"{systolic}/{diastolic}"
    device, secret = vital_devices.device_register(
        patient=mother_patient, by=mother, name="Matrix BP monitor", kind="device"
    )
    child_device, _child_secret = vital_devices.device_register(
        patient=child, by=people["father"], name="Matrix baby scale", kind="device"
    )
    sent = device_writes.write_from_device(
        device=device,
        readings=[
            vital_records.reading(
                vital_records.BODY_WEIGHT, "58.91", taken_at=now - timedelta(hours=3)
            )
        ],
        wheres=["$"],
        api="matrix",
    )
    records["mother_device_weight"] = sent.written[0].id
    markers[sent.written[0].id] = "58.91"
    job = apple_health.import_enqueue(
        patient=mother_patient,
        user=mother,
        path="vitals/apple-health/matrix/export.xml",
        filename="export.xml",
        size=100,
    )
    result = vital_alerts.alerts_evaluate(patient_id=mother_patient.pk)
    flag = (
        Resource.objects.filter(resource_type="Flag", compartments__contains=[mother_patient.pk])
        .exclude(id__in=records.values())
        .get()
    )
    assert result.episodes, "the two high readings raise no alert"
    records["mother_alert"] = flag.id
    bp_time = timezone.localtime(taken["mother_bp"], JAPAN).strftime("%Y-%m-%dT%H:%M")
    return {
        "mother_bp": str(records["mother_bp"]),
        "mother_bp_time": bp_time,
        "mother_device_weight": str(records["mother_device_weight"]),
        "device": str(device.pk),
        "device_token": secret,
        "child_device": str(child_device.pk),
        "import_job": str(job.pk),
    }


def _release_zip(export: Any) -> None:
    """A finished export's folder as the release builder leaves it:
    MEDIA_ROOT/research/<id>/release.zip (a small one: the matrix checks
    who may fetch it, tests/sharing/research/ what is in a real one)."""
    import zipfile
    from pathlib import Path

    directory = f"research/{export.pk}"
    folder = Path(settings.MEDIA_ROOT) / directory
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / "release.zip", "w") as archive:
        archive.writestr("release_report.json", json.dumps({"export_id": str(export.pk)}))
    export.directory = directory
    export.save(update_fields=["directory"])


def _research_world(
    people: dict[str, User], *, town: Organization, other_town: Organization
) -> dict[str, str]:
    """Issue 8's objects, made through sharing.research's services: four
    projects (PROJECTS) — the institute's A, approved by the platform admin
    and the town's privacy officer, with a finished export, a download
    link and a revoked one; the other institute's B, approved by the
    platform admin and a second admin, covering the other town only, with
    a finished export and a link; the institute's C and the other
    institute's D under review, C covering the family's town, D the other
    town only (whose officer is no persona: the town's officer is the
    uncovered reviewer of B and D)."""
    from sharing import research
    from sharing.models import CohortKind, ResearchExport

    admin, officer = people["platform_admin"], people["municipal_officer"]
    second_admin = f.UserFactory(is_platform_admin=True, email="second-admin@matrix.example.jp")
    f.enable_totp(second_admin)
    expires_on = research.today() + timedelta(days=365)
    projects = {}
    for key, municipality in (
        ("project_a", town),
        ("project_b", other_town),
        ("project_c", town),
        ("project_d", other_town),
    ):
        projects[key] = research.project_apply(
            user=people[PROJECT_OWNER[key]],
            title=PROJECTS[key],
            ethics_approval_number=f"ETH-MATRIX-{key}",
            purpose="matrix: infant growth and vaccination timing",
            categories=[Category.INFANT_CHECKUPS, Category.VACCINATIONS],
            cohort_kind=CohortKind.BOTH,
            municipalities=[municipality],
            birth_year_from=2015,
            birth_year_to=research.today().year,
            period_start=date(2015, 1, 1),
            period_end=date(2026, 12, 31),
            publish=False,
        )
    for key, second in (("project_a", officer), ("project_b", second_admin)):
        research.project_review(
            user=admin, project=projects[key], decision="approve", expires_on=expires_on
        )
        research.project_review(user=second, project=projects[key], decision="approve")
    ids = {key: str(project.pk) for key, project in projects.items()}
    for name, key in (("a", "project_a"), ("b", "project_b")):
        project = projects[key]
        export = ResearchExport.objects.create(
            project=project,
            requested_by=people[PROJECT_OWNER[key]],
            filters=research.default_filters(project),
            status=ResearchExport.Status.DONE,
            report={"cohort_size": 120, "released_persons": 118, "k": 5, "achieved_k": 6},
            finished_at=timezone.now(),
        )
        _release_zip(export)
        link, token = research.create_download(user=people[PROJECT_OWNER[key]], export=export)
        ids.update({f"export_{name}": str(export.pk), f"link_{name}": str(link.pk)})
        ids[f"token_{name}"] = token
    revoked, revoked_token = research.create_download(
        user=people["researcher"], export=ResearchExport.objects.get(pk=ids["export_a"])
    )
    research.revoke_download(user=people["researcher"], download=revoked)
    ids["link_revoked"] = str(revoked.pk)
    ids["token_revoked"] = revoked_token
    ids["town"] = str(town.pk)
    return ids


def _admin_objects(people: dict[str, User]) -> dict[str, str]:
    """One object of each model the admin shows, for its object routes."""
    from allauth.account.models import EmailAddress
    from allauth.mfa.models import Authenticator
    from django.contrib.auth.models import Group
    from django_celery_beat.models import (
        ClockedSchedule,
        CrontabSchedule,
        IntervalSchedule,
        PeriodicTask,
        SolarSchedule,
    )

    from clinics.models import PatientMatchReview
    from phr.models import ApiToken, Job, Membership, Patient, Residency
    from sharing.models import ResearchRegime

    mother = people["mother"]
    interval = IntervalSchedule.objects.create(every=10, period=IntervalSchedule.MINUTES)
    objects = {
        "auth/group": Group.objects.create(name="matrix"),
        "django_celery_beat/periodictask": PeriodicTask.objects.create(
            name="matrix", task="phr.tasks.noop", interval=interval
        ),
        "django_celery_beat/clockedschedule": ClockedSchedule.objects.create(
            clocked_time=timezone.now()
        ),
        "django_celery_beat/crontabschedule": CrontabSchedule.objects.create(),
        "django_celery_beat/solarschedule": SolarSchedule.objects.create(
            event="sunrise", latitude=36.39, longitude=139.06
        ),
        "django_celery_beat/intervalschedule": interval,
        "account/emailaddress": EmailAddress.objects.create(
            user=mother, email=mother.email, verified=True, primary=True
        ),
        "mfa/authenticator": Authenticator.objects.filter(user=people["clinician"]).first(),
        "phr/user": mother,
        "phr/organization": Organization.objects.filter(kind="clinic").first(),
        "phr/membership": Membership.objects.first(),
        "phr/guardianship": Guardianship.objects.first(),
        "phr/residency": Residency.objects.first(),
        "phr/apitoken": ApiToken.objects.first(),
        "phr/job": Job.objects.create(kind="matrix"),
        "sharing/researchregime": ResearchRegime.objects.create(
            municipality=Organization.objects.get(
                kind=Organization.Kind.MUNICIPALITY, name="桔梗村"
            ),
            kind=ResearchRegime.Kind.OPT_IN,
        ),
        "clinics/patientmatchreview": PatientMatchReview.objects.create(
            clinic=Organization.objects.filter(kind="clinic").first(),
            registered=f.make_patient(given="照合"),
            candidates=[Patient.objects.first().pk],
            identifiers=["urn:oid:1.2.392.100495.20.3.51.1|matrix"],
            source="fhir-bundle:transaction",
        ),
    }
    return {name: str(obj.pk) for name, obj in objects.items()}


@pytest.fixture(scope="module")
def world(
    django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """Built once for the module inside a transaction that is rolled back at
    the end; each test runs in a savepoint of it (pytest-django). Uploads
    (Apple Health exports) land in a temporary MEDIA_ROOT."""
    media = tmp_path_factory.mktemp("matrix-media")
    with (
        override_settings(MEDIA_ROOT=str(media)),
        django_db_blocker.unblock(),
        transaction.atomic(),
    ):
        yield build_world()
        transaction.set_rollback(True)


# --------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    persona: str
    verb: str
    url: str
    token: bool = False
    # A session that has just re-authenticated (phr.auth.sensitive_action
    # lets it through); the world's sessions are older than that.
    fresh: bool = False

    def __str__(self) -> str:
        how = "token" if self.token else "session"
        if self.fresh:
            how += ", re-authenticated"
        return f"{self.verb} /{self.url} as {self.persona} ({how})"


def call(
    world: World,
    c: Call,
    body: Any = None,
    inspect: Callable[[HttpResponse], Any] | None = None,
) -> HttpResponse:
    """Make one request, in a savepoint that is rolled back: writes, audit
    rows and session changes vanish, so every persona meets the same world
    (the access history of one request never shows another's). `inspect`
    runs inside the savepoint, before the rollback, to look at what the
    request wrote; its answer is the response's `inspected`."""
    if c.fresh:
        # vitals.device_views imported the function by name.
        with (
            mock.patch("phr.auth.recently_authenticated", return_value=True),
            mock.patch("vitals.device_views.recently_authenticated", return_value=True),
        ):
            return call(world, replace(c, fresh=False), body, inspect)
    client = Client()
    headers: dict[str, str] = {}
    if c.token:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {world.tokens[c.persona]}"
    elif c.persona != ANONYMOUS:
        client.cookies[settings.SESSION_COOKIE_NAME] = world.sessions[c.persona]
    url = "/" + c.url
    if c.url.startswith("emergency/c/"):
        # Card links are rate-limited per address (sharing.emergency_views):
        # the matrix opens one far more often than a person would.
        cache.delete("emergency:card-ip:127.0.0.1")
    method = getattr(client, c.verb.lower())
    with transaction.atomic():
        if body is None:
            response = method(url, **headers)
        elif c.verb == "GET":
            response = method(url, data=body, **headers)
        elif isinstance(body, dict) and c.url.startswith("fhir/"):
            response = method(url, data=json.dumps(body), content_type=FHIR_JSON, **headers)
        else:
            response = method(url, data=body, **headers)
        if inspect is not None:
            response.inspected = inspect(response)  # type: ignore[attr-defined]
        transaction.set_rollback(True)
    return response


def audiences(world: World, persona: str) -> list[str]:
    """The audience keys of a persona, most specific first (see S())."""
    if persona == ANONYMOUS:
        return [ANONYMOUS, "anyone"]
    keys = [persona]
    if persona in NEEDS_MFA:
        keys.append("needs_mfa")
    if persona == "platform_admin":
        keys.append("admin")
    keys += ["mfa" if world.has_mfa(persona) else "no_mfa", "user", "anyone"]
    return keys


def expected_status(world: World, rule: Rule, verb: str, persona: str) -> int | None:
    statuses = rule.verbs.get(verb, {})
    for key in audiences(world, persona):
        if key in statuses:
            return statuses[key]
    return None


class Failures:
    """Collects every wrong cell of a route, so one run shows them all."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.checked = 0

    def expect(self, condition: bool, c: Call | str, message: str) -> None:
        self.checked += 1
        if not condition:
            self.problems.append(f"{c}: {message}")

    def status(self, response: HttpResponse, c: Call, expected: int | set[int]) -> bool:
        wanted = expected if isinstance(expected, set) else {expected}
        self.expect(response.status_code != 500, c, "500 Internal Server Error")
        ok = response.status_code in wanted
        self.expect(ok, c, f"status {response.status_code}, expected {sorted(wanted)}")
        return ok

    def assert_none(self) -> None:
        assert not self.problems, "\n".join(
            [f"{len(self.problems)} wrong cell(s) of {self.checked}:", *self.problems[:60]]
        )


def body_text(response: HttpResponse) -> str:
    content = getattr(response, "content", b"")
    return content.decode(errors="replace") if content else ""


def phi_in(world: World, response: HttpResponse, patients: tuple[str, ...] = PATIENTS) -> list[str]:
    text = body_text(response)
    return [s for p in patients for s in world.phi[p] if s in text]


def redirect_target(response: HttpResponse) -> str:
    return str(response.headers.get("Location", ""))


# --------------------------------------------------------------------------
# Checks per rule kind
# --------------------------------------------------------------------------


def check_page(world: World, route: str, rule: Rule, out: Failures) -> None:
    """PUBLIC, AUTH and STAFF pages: the declared status per audience, no
    patient data in any body, and the right redirect for those turned away."""
    url = (
        rule.sample(world) if callable(rule.sample) else (rule.sample or _fill_admin(world, route))
    )
    for verb in rule.verbs:
        for persona in PERSONAS:
            if (route, verb, persona) in KNOWN_BROKEN:
                continue
            c = Call(persona, verb, url)
            response = call(world, c, body={} if verb == "POST" else None)
            expected = _page_status(world, rule, verb, url, persona)
            out.status(response, c, expected)
            # The admin shows control data (e.g. resident numbers) to
            # platform admins; nobody else sees a patient on these pages.
            if not (rule.kind == STAFF and persona == "platform_admin"):
                leaked = phi_in(world, response)
                out.expect(not leaked, c, f"patient data: {leaked}")
            elif verb == "GET" and response.status_code == 200:
                problem = _admin_page_problem(world, url, response)
                out.expect(problem is None, c, str(problem))
            if response.status_code == 302 and rule.kind in (AUTH, STAFF):
                _check_turned_away(world, rule, c, response, out)


def _admin_page_problem(world: World, url: str, response: HttpResponse) -> str | None:
    """The platform admin's page is the one asked for: a model's pages link
    to the object the URL names (its change list lists it), an add page
    carries the model's form."""
    match = re.match(r"admin/([a-z_]+)/([a-z_]+)/(.*)$", url)
    if match is None or f"{match.group(1)}/{match.group(2)}" not in world.admin_objects:
        return None
    app, model, rest = match.groups()
    text = body_text(response)
    if rest == "add/":
        return None if f'id="{model}_form"' in text else f"no {model} form"
    pk = world.admin_objects[f"{app}/{model}"]
    link = f"/admin/{app}/{model}/{pk}/"
    return None if link in text else f"no link to {link}"


def _page_status(world: World, rule: Rule, verb: str, url: str, persona: str) -> int:
    if rule.kind == STAFF:
        if persona == "platform_admin":
            return rule.verbs[verb]["admin"]
        if persona in NEEDS_MFA:
            return 302  # to MFA setup
        return 302  # to the admin login
    if persona in NEEDS_MFA and not url.startswith(MFA_EXEMPT):
        return 302  # every page but these sends them to set up MFA first
    if rule.kind == AUTH and persona == ANONYMOUS:
        found = expected_status(world, rule, verb, persona)
        return 302 if found is None else found  # to the login page, unless declared
    found = expected_status(world, rule, verb, persona)
    assert found is not None, f"{rule}: no status for {verb} as {persona}"
    return found


def _check_turned_away(
    world: World, rule: Rule, c: Call, response: HttpResponse, out: Failures
) -> None:
    """Those turned away go to the login page, the admin login, or (staff
    without an authenticator) to setting one up."""
    target = redirect_target(response)
    if rule.kind == STAFF:
        if c.persona == "platform_admin":
            return
        wanted = MFA_SETUP_URL if c.persona in NEEDS_MFA else ADMIN_LOGIN_URL
        if c.url == "admin/logout/" and c.persona not in NEEDS_MFA:
            wanted = "/admin/"  # Django sends a stranger's logout to the index (→ login)
    elif c.persona == ANONYMOUS:
        wanted = LOGIN_URL
    elif c.persona in NEEDS_MFA and not c.url.startswith(MFA_EXEMPT):
        wanted = MFA_SETUP_URL
    else:
        return
    out.expect(target.startswith(wanted), c, f"redirects to {target}, not {wanted}")


def _fill_admin(world: World, route: str) -> str:
    """An admin route with its object id filled in (other routes have none)."""
    match = re.match(r"admin/([a-z_]+/[a-z_]+)/", route)
    url = route
    if match and match.group(1) in world.admin_objects:
        url = url.replace("<path:object_id>", world.admin_objects[match.group(1)])
    if "<id>" in url:
        url = url.replace("<id>", world.admin_objects["phr/user"])
    if "<path:content_type_id>" in url:
        from django.contrib.contenttypes.models import ContentType

        content_type = ContentType.objects.get_for_model(Organization)
        url = url.replace("<path:content_type_id>", str(content_type.pk)).replace(
            "<path:object_id>", world.admin_objects["phr/organization"]
        )
    assert "<" not in url, f"cannot fill {route}: add a sample path to its rule"
    return url


def check_listing(world: World, route: str, rule: Rule, out: Failures) -> None:
    """A page naming patients names exactly those its rule gives each persona."""
    assert rule.shows is not None
    url = rule.sample(world) if callable(rule.sample) else (rule.sample or route)
    for verb in rule.verbs:
        for persona in PERSONAS:
            c = Call(persona, verb, url)
            response = call(world, c, body={} if verb == "POST" else None)
            if persona == ANONYMOUS and expected_status(world, rule, verb, persona) is None:
                out.status(response, c, 302)
                out.expect(redirect_target(response).startswith(LOGIN_URL), c, "not to login")
                continue
            if persona in NEEDS_MFA:
                out.status(response, c, 302)
                out.expect(redirect_target(response).startswith(MFA_SETUP_URL), c, "not to MFA")
                continue
            expected = expected_status(world, rule, verb, persona)
            assert expected is not None, f"{route}: no status for {verb} as {persona}"
            if not out.status(response, c, expected):
                continue
            named = rule.shows(world, persona) if response.status_code == 200 else set()
            for patient in PATIENTS:
                shown = bool(phi_in(world, response, (patient,)))
                out.expect(
                    shown == (patient in named),
                    c,
                    f"{patient} {'shown' if shown else 'missing'}",
                )


def _names_of(world: World, patient_ids: set[Any]) -> set[str]:
    return {name for name, p in world.patients.items() if p.pk in patient_ids}


def own_family(world: World, persona: str) -> set[str]:
    """The family overview and the Sharing page: one's own record and the
    children one is an active guardian of, DV-blocked ones excepted."""
    return _names_of(world, oracle.decides_for(world.snapshot, world.user_id(persona)))


def accessed_by_others(world: World, persona: str) -> set[str]:
    """The access history: the people of one's family whose records someone
    else accessed."""
    family = oracle.decides_for(world.snapshot, world.user_id(persona))
    accessed = (
        AuditEvent.objects.filter(patient_id__in=family, outcome="success")
        .exclude(actor_id=world.user_id(persona))
        .values_list("patient_id", flat=True)
    )
    return _names_of(world, set(accessed))


def consented_to(world: World, persona: str) -> set[str]:
    """ "Shared with me": patients whose care consents in force name me or my
    clinic."""
    return _names_of(world, oracle.consented_patients(world.snapshot, world.user_id(persona)))


def check_scoped(world: World, route: str, rule: Rule, out: Failures) -> None:
    """The object is in the body or query: the rule's personas get `ok`,
    everyone else signed in a 404 (missing and not theirs alike), other
    verbs 405; anonymous goes to the login page."""
    assert rule.params is not None
    params = rule.params(world)
    for verb in ("GET", "POST"):
        for persona in PERSONAS:
            c = Call(persona, verb, route)
            response = call(world, c, body=params)
            if persona == ANONYMOUS:
                out.status(response, c, 302)
                out.expect(redirect_target(response).startswith(LOGIN_URL), c, "not to login")
            elif persona in NEEDS_MFA:
                out.status(response, c, 302)
            elif verb != rule.verb:
                out.status(response, c, 405)
            elif persona in rule.for_personas:
                out.status(response, c, rule.ok)
            else:
                out.status(response, c, 404)
                leaked = phi_in(world, response)
                out.expect(not leaked, c, f"patient data in a 404: {leaked}")


def check_patient_page(world: World, route: str, rule: Rule, out: Failures) -> None:
    """A patient id in the path: the declared personas get the page with
    exactly the records the oracle lets them see; everyone else a 404."""
    param = re.search(r"<uuid:(\w+)>", route)
    assert param is not None, route
    listable = {p: oracle.listable(world.snapshot, world.user_id(p), mimic=MIMIC) for p in PERSONAS}
    for patient_name, patient in world.patients.items():
        url = route.replace(param.group(0), str(patient.pk))
        allowed = rule.allowed[patient_name]
        for verb in rule.verbs:
            if rule.verbs[verb]:
                # A verb with declared statuses (e.g. POST 405 for anyone):
                # like page(), the same for every patient.
                _check_patient_page_verb(world, rule, verb, url, out)
                continue
            for persona in PERSONAS:
                c = Call(persona, verb, url)
                response = call(world, c)
                if persona == ANONYMOUS:
                    out.status(response, c, 302)
                    continue
                if persona in NEEDS_MFA:
                    out.status(response, c, 302)
                    out.expect(redirect_target(response).startswith(MFA_SETUP_URL), c, "not MFA")
                    continue
                if persona not in allowed:
                    out.status(response, c, 404)
                    out.expect(not phi_in(world, response), c, "patient data in a 404")
                    continue
                if not out.status(response, c, 200):
                    continue
                text = body_text(response)
                reach = (
                    listable[persona] if rule.reach is None else rule.reach(world, persona, patient)
                )
                must = None if rule.must is None else rule.must(world, persona, patient)
                for rid, marker in world.markers.items():
                    rec = next(r for r in world.snapshot.records if r.id == rid)
                    if patient.pk not in rec.compartments:
                        continue
                    shown = marker in text
                    if rid not in reach:
                        out.expect(not shown, c, f"record {_name(world, rid)} shown")
                    elif (
                        rule.reach is None
                        or rec.resource_type == "AllergyIntolerance"
                        or (must is not None and rid in must)
                    ):
                        out.expect(shown, c, f"record {_name(world, rid)} missing")
                out.expect(
                    all(s not in text for p in PATIENTS if p != patient_name for s in world.phi[p]),
                    c,
                    "another patient's data on the page",
                )


def _check_patient_page_verb(world: World, rule: Rule, verb: str, url: str, out: Failures) -> None:
    page_rule = Rule(AUTH, verbs=rule.verbs)
    for persona in PERSONAS:
        c = Call(persona, verb, url)
        response = call(world, c, body={} if verb == "POST" else None)
        out.status(response, c, _page_status(world, page_rule, verb, url, persona))
        out.expect(not phi_in(world, response), c, "patient data")
        if response.status_code == 302:
            _check_turned_away(world, page_rule, c, response, out)


def _name(world: World, rid: uuid.UUID) -> str:
    return next((n for n, r in world.records.items() if r == rid), str(rid))


# --- FHIR ----------------------------------------------------------------------

FHIR_SAMPLES: dict[str, Any] = {
    "Observation": lambda p: f.observation(p, code="29463-7", value=9.9, unit="kg"),
    "Encounter": lambda p: {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": _ref(p),
    },
    "EpisodeOfCare": lambda p: {
        "resourceType": "EpisodeOfCare",
        "status": "active",
        "patient": _ref(p),
    },
    "Immunization": lambda p: {
        "resourceType": "Immunization",
        "status": "completed",
        "vaccineCode": {"text": "BCG"},
        "patient": _ref(p),
        "occurrenceDateTime": "2026-05-01",
    },
    "MedicationDispense": lambda p: {
        "resourceType": "MedicationDispense",
        "status": "completed",
        "medicationCodeableConcept": {"text": "カロナール"},
        "subject": _ref(p),
    },
    "MedicationStatement": lambda p: {
        "resourceType": "MedicationStatement",
        "status": "active",
        "medicationCodeableConcept": {"text": "葉酸"},
        "subject": _ref(p),
    },
    "AllergyIntolerance": lambda p: {
        "resourceType": "AllergyIntolerance",
        "patient": _ref(p),
        "code": {"text": "小麦"},
    },
    "Condition": lambda p: {
        "resourceType": "Condition",
        "subject": _ref(p),
        "code": {"text": "貧血"},
    },
    "Flag": lambda p: {
        "resourceType": "Flag",
        "status": "active",
        "code": {"text": "要観察"},
        "subject": _ref(p),
    },
}


def _auth_modes(persona: str) -> tuple[bool, ...]:
    """Session, and bearer token (anonymous has no token)."""
    return (False,) if persona == ANONYMOUS else (False, True)


# Reads and searches run with a session and with a token for every record;
# writes, history and vread with a token for these records only (both
# paths share the views: this proves the token path reaches the same
# decisions without doubling the run time).
TOKEN_TARGETS = frozenset({"child", "child_home_weight", "child_deleted", "mother_hiv"})


def _runs(persona: str, target: str, *, every_record: bool = False) -> tuple[bool, ...]:
    if every_record or target in TOKEN_TARGETS:
        return _auth_modes(persona)
    return (False,)


def _fhir_denied_anonymous(out: Failures, c: Call, response: HttpResponse) -> None:
    out.status(response, c, 401)
    out.expect(response.json().get("resourceType") == "OperationOutcome", c, "not an outcome")


def _writable(world: World, persona: str, patient_id: uuid.UUID) -> bool:
    """Families write into their own and their children's compartments."""
    user_id = world.user_id(persona)
    snap = world.snapshot
    if user_id is None:
        return False
    if snap.own_patient.get(user_id) == patient_id:
        return True
    return any(
        g["guardian_id"] == user_id and g["child_id"] == patient_id
        for g in snap.guardianships
        if (user_id, patient_id) not in snap.blocks
    )


def check_fhir_metadata(world: World, route: str, rule: Rule, out: Failures) -> None:
    for persona in PERSONAS:
        for token in _auth_modes(persona):
            c = Call(persona, "GET", route, token)
            response = call(world, c)
            if out.status(response, c, 200):
                out.expect(
                    response.json()["resourceType"] == "CapabilityStatement", c, "no statement"
                )
            out.expect(not phi_in(world, response), c, "patient data")
            c = Call(persona, "POST", route, token)
            out.status(call(world, c, body={"resourceType": "Basic"}), c, 405)


# The record store's types, and Consent (a projection of sharing.Consent rows).
CONSENT = "Consent"
FHIR_TYPES = (*sorted(SUPPORTED_TYPES), CONSENT)


def _expected_ids(
    world: World, persona: str, resource_type: str, patient: Patient | None = None
) -> set[uuid.UUID]:
    """What a search of this type (for this patient) must return, by the oracle."""
    snap, user_id = world.snapshot, world.user_id(persona)
    if resource_type == CONSENT:
        readable = oracle.readable_consents(snap, user_id, mimic=MIMIC)
        return {
            c["id"]
            for c in snap.consents
            if c["id"] in readable and (patient is None or c["patient_id"] == patient.pk)
        }
    visible = oracle.listable(snap, user_id, mimic=MIMIC)
    return {
        r.id
        for r in snap.records
        if r.resource_type == resource_type
        and r.id in visible
        and (patient is None or patient.pk in r.compartments)
    }


def check_fhir_type(world: World, route: str, rule: Rule, out: Failures) -> None:
    """Search returns exactly the oracle's records (or consents) of the type,
    ids and total, also per patient; create is for families, in their own
    compartments, and never for Patient or Consent."""
    for persona in PERSONAS:
        for token in _auth_modes(persona):
            searches = [(t, None) for t in FHIR_TYPES]
            searches += [(t, p) for t in ("Observation", CONSENT) for p in world.patients.values()]
            for resource_type, patient in searches:
                url = route.replace("<str:resource_type>", resource_type) + "?_count=500"
                if patient is not None:
                    url += f"&patient={patient.pk}"
                c = Call(persona, "GET", url, token)
                response = call(world, c)
                if persona == ANONYMOUS:
                    _fhir_denied_anonymous(out, c, response)
                    continue
                if not out.status(response, c, 200):
                    continue
                body = response.json()
                got = {uuid.UUID(e["resource"]["id"]) for e in body.get("entry", ())}
                wanted = _expected_ids(world, persona, resource_type, patient)
                out.expect(
                    got == wanted, c, f"ids {_names(world, got)} != oracle {_names(world, wanted)}"
                )
                out.expect(body["total"] == len(wanted), c, f"total {body['total']}")
        _check_fhir_create(world, route, persona, out)


def _check_fhir_create(world: World, route: str, persona: str, out: Failures) -> None:
    for token in _auth_modes(persona):
        c = Call(persona, "POST", route.replace("<str:resource_type>", CONSENT), token)
        response = call(world, c, body={"resourceType": CONSENT, "status": "active"})
        out.status(response, c, 401 if persona == ANONYMOUS else 405)
    for resource_type in sorted(SUPPORTED_TYPES):
        url = route.replace("<str:resource_type>", resource_type)
        targets = ("child",) if resource_type != "Observation" else PATIENTS
        for patient_name in targets:
            patient = world.patients[patient_name]
            # With a token too for Observations (the token path shares the view).
            modes = _auth_modes(persona) if resource_type == "Observation" else (False,)
            for token in modes:
                c = Call(persona, "POST", url, token)
                if resource_type == "Patient":
                    body: dict[str, Any] = {"resourceType": "Patient", "name": [{"family": "x"}]}
                else:
                    body = FHIR_SAMPLES[resource_type](patient)
                response = call(world, c, body=body)
                if persona == ANONYMOUS:
                    _fhir_denied_anonymous(out, c, response)
                elif resource_type == "Patient":
                    out.status(response, c, 405)
                elif _writable(world, persona, patient.pk):
                    if out.status(response, c, 201):
                        out.expect(response.json()["resourceType"] == resource_type, c, "body")
                else:
                    out.status(response, c, 403)
                    out.expect(not phi_in(world, response), c, "patient data")


def _names(world: World, ids: set[uuid.UUID]) -> list[str]:
    return sorted(_name(world, rid) for rid in ids)


def _instance_targets(world: World) -> list[tuple[str, oracle.Rec]]:
    return [(_name(world, rec.id), rec) for rec in world.snapshot.records]


def check_fhir_instance(world: World, route: str, rule: Rule, out: Failures) -> None:
    """Read: 200 with the record for those the oracle lets see it (410 for a
    deleted one), 404 for everyone else, word for word the same as a
    missing id. Update and delete: families only (403 when seen but not
    theirs, 404 when not seen)."""
    snap = world.snapshot
    rows = {row.id: row for row in Resource.objects.all()}
    missing = _missing_body(world, route)
    for persona in PERSONAS:
        user_id = world.user_id(persona)
        seen = oracle.listable(snap, user_id, include_deleted=True, mimic=MIMIC)
        for name, rec in _instance_targets(world):
            url = route.replace("<str:resource_type>", rec.resource_type).replace(
                "<str:resource_id>", str(rec.id)
            )
            patient_id = next(iter(rec.compartments))
            verbs: list[tuple[str, Any]] = [
                ("GET", None),
                ("PUT", to_fhir(rows[rec.id])),
                ("DELETE", None),
                ("POST", {}),
            ]
            for verb, body in verbs:
                for token in _runs(persona, name, every_record=verb == "GET"):
                    c = Call(persona, verb, url, token)
                    response = call(world, c, body=body)
                    if persona == ANONYMOUS:
                        _fhir_denied_anonymous(out, c, response)
                        continue
                    if verb == "POST":
                        out.status(response, c, 405)
                        continue
                    if verb == "DELETE" and rec.resource_type == "Patient":
                        out.status(response, c, 405)
                        continue
                    if rec.id not in seen:
                        out.status(response, c, 404)
                        out.expect(
                            _same_words(response, missing, rec.id),
                            c,
                            "a withheld record's 404 differs from a missing one's",
                        )
                        continue
                    if verb == "GET":
                        if rec.deleted:
                            out.status(response, c, 410)
                        elif out.status(response, c, 200):
                            out.expect(response.json()["id"] == str(rec.id), c, f"not {name}")
                        continue
                    if not _writable(world, persona, patient_id):
                        out.status(response, c, 403)
                        continue
                    out.status(response, c, 200 if verb == "PUT" else 204)
    _check_consent_reads(world, route, missing, out)


def _check_consent_reads(world: World, route: str, missing: str, out: Failures) -> None:
    """A Consent reads as its oracle says (404 like a missing id otherwise);
    it is never written through the API (405)."""
    for persona in PERSONAS:
        readable = oracle.readable_consents(world.snapshot, world.user_id(persona), mimic=MIMIC)
        for consent in world.snapshot.consents:
            url = route.replace("<str:resource_type>", CONSENT).replace(
                "<str:resource_id>", str(consent["id"])
            )
            for verb in ("GET", "PUT", "DELETE"):
                for token in _auth_modes(persona):
                    c = Call(persona, verb, url, token)
                    body = {"resourceType": CONSENT, "id": str(consent["id"])}
                    response = call(world, c, body=body if verb == "PUT" else None)
                    if persona == ANONYMOUS:
                        _fhir_denied_anonymous(out, c, response)
                    elif verb != "GET":
                        out.status(response, c, 405)
                    elif consent["id"] not in readable:
                        out.status(response, c, 404)
                        out.expect(
                            _same_words(response, missing, consent["id"]), c, "404 words differ"
                        )
                    elif out.status(response, c, 200):
                        out.expect(response.json()["id"] == str(consent["id"]), c, "not it")


def _normalized_404(text: str, rid: str) -> str:
    # Only the id and the type name may differ ("Observation/{id} is not known").
    return re.sub(r"\b[A-Z][A-Za-z]+/\{id\}", "T/{id}", text.replace(rid, "{id}"))


def _missing_body(world: World, route: str) -> str:
    """The 404 body for an id that does not exist (read as the mother)."""
    missing = "00000000-0000-4000-8000-000000000000"
    url = route.replace("<str:resource_type>", "Observation").replace("<str:resource_id>", missing)
    response = call(world, Call("mother", "GET", url))
    assert response.status_code == 404
    return _normalized_404(body_text(response), missing)


def _same_words(response: HttpResponse, missing: str, rid: uuid.UUID) -> bool:
    if response.request["REQUEST_METHOD"] != "GET":
        return True
    return _normalized_404(body_text(response), str(rid)) == missing


def check_fhir_history(world: World, route: str, rule: Rule, out: Failures) -> None:
    _check_fhir_versions(world, route, out, version=None)
    _check_no_consent_versions(world, route, out)


def check_fhir_version(world: World, route: str, rule: Rule, out: Failures) -> None:
    _check_fhir_versions(world, route, out, version="1")
    _check_no_consent_versions(world, route, out)
    _check_fhir_versions(world, route, out, version="999", personas=("mother", "platform_admin"))


def _check_fhir_versions(
    world: World,
    route: str,
    out: Failures,
    *,
    version: str | None,
    personas: tuple[str, ...] = PERSONAS,
) -> None:
    """History and vread follow the current row's visibility."""
    snap = world.snapshot
    for persona in personas:
        seen = oracle.listable(snap, world.user_id(persona), include_deleted=True, mimic=MIMIC)
        for name, rec in _instance_targets(world):
            url = route.replace("<str:resource_type>", rec.resource_type).replace(
                "<str:resource_id>", str(rec.id)
            )
            if version is not None:
                url = url.replace("<str:version_id>", version)
            for verb in ("GET", "POST"):
                for token in _runs(persona, name):
                    c = Call(persona, verb, url, token)
                    response = call(world, c, body={} if verb == "POST" else None)
                    if persona == ANONYMOUS:
                        _fhir_denied_anonymous(out, c, response)
                    elif verb == "POST":
                        out.status(response, c, 405)
                    elif rec.id not in seen or version == "999":
                        out.status(response, c, 404)
                        out.expect(not phi_in(world, response), c, "patient data")
                    elif out.status(response, c, 200):
                        body = response.json()
                        if version is None:
                            urls = {e["fullUrl"].rsplit("/", 1)[-1] for e in body["entry"]}
                            out.expect(urls == {str(rec.id)}, c, f"history of {name}: {urls}")
                        else:
                            out.expect(body["id"] == str(rec.id), c, f"not {name}")


def _check_no_consent_versions(world: World, route: str, out: Failures) -> None:
    # Consents have no versions in the API: 404 for everyone, readable or not.
    consent_id = str(world.snapshot.consents[0]["id"])
    url = route.replace("<str:resource_type>", CONSENT).replace("<str:resource_id>", consent_id)
    url = url.replace("<str:version_id>", "1")
    for persona in PERSONAS:
        c = Call(persona, "GET", url)
        response = call(world, c)
        out.status(response, c, 401 if persona == ANONYMOUS else 404)


def check_fhir_unknown(world: World, route: str, rule: Rule, out: Failures) -> None:
    for persona in PERSONAS:
        for token in _auth_modes(persona):
            for verb in ("GET", "POST", "PUT", "DELETE"):
                c = Call(persona, verb, "fhir/Observation/a/b/c/d", token)
                response = call(world, c, body={} if verb != "GET" else None)
                if persona == ANONYMOUS:
                    _fhir_denied_anonymous(out, c, response)
                else:
                    out.status(response, c, 404)


def check_cases(world: World, route: str, rule: Rule, out: Failures) -> None:
    """Each case's path, verb by verb, for every persona: the declared
    status, the right redirect for those turned away, no patient the
    persona may not see named, and the case's own look at what was written."""
    for case in rule.cases:
        url = case.sample(world)
        page_rule = Rule(case.kind, verbs=case.verbs)
        for verb in case.verbs:
            for persona in PERSONAS:
                c = Call(persona, verb, url, fresh=case.fresh and persona != ANONYMOUS)
                body = None
                if verb == "POST":
                    body = case.body(world) if case.body is not None else {}
                after = case.after
                inspect = None if after is None else (lambda r, p=persona, a=after: a(world, p, r))
                response = call(world, c, body=body, inspect=inspect)
                out.status(response, c, _page_status(world, page_rule, verb, url, persona))
                allowed = case.shows(world, persona) if case.shows is not None else set()
                leaked = phi_in(world, response, tuple(p for p in PATIENTS if p not in allowed))
                out.expect(not leaked, c, f"patient data: {leaked}")
                if response.status_code == 302:
                    _check_turned_away(world, page_rule, c, response, out)
                    signed_in = persona != ANONYMOUS and persona not in NEEDS_MFA
                    if case.redirect_to and signed_in:
                        target = redirect_target(response)
                        out.expect(case.redirect_to in target, c, f"redirects to {target}")
                if after is not None:
                    problem = getattr(response, "inspected", None)
                    out.expect(problem is None, c, str(problem))


def _personal_records(world: World, persona: str) -> set[uuid.UUID]:
    """What a person sees as herself (purpose personal): every live record
    of her own and of the children she decides for."""
    family = oracle.decides_for(world.snapshot, world.user_id(persona))
    return {r.id for r in world.snapshot.records if not r.deleted and r.compartments & family}


def _check_export_stale(world: World, url: str, out: Failures) -> None:
    """Without a fresh re-authentication: to "confirm access" first (the
    login page for anonymous, MFA set-up for staff without it); GET only."""
    rule = page(AUTH, GET=S(user=302), POST=S(anyone=405))
    for verb in ("GET", "POST"):
        for persona in PERSONAS:
            c = Call(persona, verb, url)
            response = call(world, c, body={} if verb == "POST" else None)
            out.status(response, c, _page_status(world, rule, verb, url, persona))
            out.expect(not phi_in(world, response), c, "patient data before re-authentication")
            if response.status_code == 302:
                _check_turned_away(world, rule, c, response, out)
                if persona != ANONYMOUS and persona not in NEEDS_MFA:
                    target = redirect_target(response)
                    out.expect("reauthenticate" in target, c, f"redirects to {target}")


def check_export_bundle(world: World, route: str, rule: Rule, out: Failures) -> None:
    """ "Download everything" as a FHIR Bundle: re-authentication first;
    then each persona's Bundle holds exactly the records she sees as
    herself — her own and her children's (the other guardian: the child
    only; staff and strangers: nothing), each with its Provenance."""
    _check_export_stale(world, route, out)
    for persona in PERSONAS:
        if persona == ANONYMOUS or persona in NEEDS_MFA:
            continue
        c = Call(persona, "GET", route, fresh=True)
        response = call(world, c)
        if not out.status(response, c, 200):
            continue
        body = json.loads(b"".join(response.streaming_content))  # type: ignore[attr-defined]
        out.expect(body.get("resourceType") == "Bundle", c, "not a Bundle")
        resources = [e["resource"] for e in body.get("entry", ())]
        got = {uuid.UUID(r["id"]) for r in resources if r["resourceType"] != "Provenance"}
        wanted = _personal_records(world, persona)
        out.expect(got == wanted, c, f"{_names(world, got)} != {_names(world, wanted)}")
        provenance_targets = {
            target["reference"].split("/")[1]
            for r in resources
            if r["resourceType"] == "Provenance"
            for target in r.get("target", ())
        }
        out.expect(
            {str(rid) for rid in got} <= provenance_targets, c, "a record without its Provenance"
        )


def check_export_print(world: World, route: str, rule: Rule, out: Failures) -> None:
    """The same records as a page to print: every record of the persona's
    family shown (by its marker) and nothing else, no other patient named."""
    _check_export_stale(world, route, out)
    for persona in PERSONAS:
        if persona == ANONYMOUS or persona in NEEDS_MFA:
            continue
        c = Call(persona, "GET", route, fresh=True)
        response = call(world, c)
        if not out.status(response, c, 200):
            continue
        text = body_text(response)
        wanted = _personal_records(world, persona)
        for rid, marker in world.markers.items():
            shown = marker in text
            out.expect(shown == (rid in wanted), c, f"{_name(world, rid)} shown: {shown}")
        family = own_family(world, persona)
        for patient in PATIENTS:
            named = bool(phi_in(world, response, (patient,)))
            out.expect(named == (patient in family), c, f"{patient} named: {named}")


# --- The device endpoints (vitals/device_api.py) -------------------------------


def _device_observation(patient: Patient | None, kg: str = "58.7") -> dict[str, Any]:
    resource = f.observation(
        patient or Patient(), code="29463-7", value=float(kg), unit="kg",
        when=(timezone.now() - timedelta(minutes=30)).isoformat(),
    )  # fmt: skip
    if patient is None:
        del resource["subject"]
    return resource


def _device_bodies(world: World, route: str) -> dict[str, tuple[Any, int]]:
    """For each endpoint: a body for the device's own person (and its
    status), one naming another person as the subject (403; Open mHealth
    names no subject), and one that is not the format (400)."""
    mother, child = world.patients["mother_patient"], world.patients["child"]
    if route.endswith("Observation"):
        return {
            "own": (_device_observation(mother), 201),
            "no subject": (_device_observation(None, "58.8"), 201),
            "other": (_device_observation(child), 403),
            "bad": ({"resourceType": "Patient"}, 400),
        }
    if route.endswith("Bundle"):

        def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
            entries = [{"resource": r, "request": {"method": "POST", "url": "Observation"}}
                       for r in resources]  # fmt: skip
            return {"resourceType": "Bundle", "type": "transaction", "entry": entries}

        return {
            "own": (bundle(_device_observation(mother)), 200),
            "other": (bundle(_device_observation(mother), _device_observation(child, "9.1")), 403),
            "bad": ({"resourceType": "Bundle", "type": "history"}, 400),
        }
    point = {
        "header": {
            "id": str(uuid.uuid4()),
            "creation_date_time": timezone.now().isoformat(),
            "schema_id": {"namespace": "omh", "name": "body-weight", "version": "2.0"},
        },
        "body": {
            "body_weight": {"value": 58.6, "unit": "kg"},
            "effective_time_frame": {"date_time": timezone.now().isoformat()},
        },
    }
    return {"own": (point, 201), "bad": ({"header": {}}, 400)}


def _device_request(
    world: World, verb: str, url: str, body: Any, secret: str
) -> tuple[HttpResponse, set[uuid.UUID]]:
    """One request with a device token, in a savepoint rolled back; and
    the patients whose records it wrote."""
    client = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    with transaction.atomic():
        before = set(Resource.objects.values_list("id", flat=True))
        if verb == "GET":
            response = client.get("/" + url)
        else:
            response = client.post("/" + url, data=json.dumps(body), content_type=FHIR_JSON)
        written = Resource.objects.exclude(id__in=before).values_list("compartments", flat=True)
        patients = {pid for compartments in written for pid in compartments}
        transaction.set_rollback(True)
    return response, patients


def check_device_api(world: World, route: str, rule: Rule, out: Failures) -> None:
    """A device's token only: anonymous, every persona's session and API
    token get 401 whatever they send; the world's device (the mother's)
    writes for her (201/200), is refused another person as the subject
    (403, nothing written), gets 400 for what is not the format, and 405
    for GET."""
    bodies = _device_bodies(world, route)
    for persona in PERSONAS:
        for token in _auth_modes(persona):
            for verb in ("GET", "POST"):
                for body, _status in bodies.values():
                    c = Call(persona, verb, route, token)
                    response = call(world, c, body=body if verb == "POST" else None)
                    # An API (MFA_EXEMPT): no session of anyone, staff
                    # without MFA included, is a device.
                    out.status(response, c, 401)
                    out.expect(not phi_in(world, response), c, "patient data")
                    if verb == "GET":
                        break
    mother = world.patients["mother_patient"].pk
    secret = world.ids["device_token"]
    for name, (body, status) in bodies.items():
        where = f"POST /{route} as the mother's device ({name})"
        response, patients = _device_request(world, "POST", route, body, secret)
        out.status(response, where, status)  # type: ignore[arg-type]
        wanted = {mother} if status in (200, 201) else set()
        out.expect(patients == wanted, where, f"wrote records of {_names_of(world, patients)}")
        out.expect(not phi_in(world, response), where, "patient data")
    where = f"GET /{route} as the mother's device"
    response, _ = _device_request(world, "GET", route, None, secret)
    out.status(response, where, 405)  # type: ignore[arg-type]
    where = f"POST /{route} with a revoked device token"
    with transaction.atomic():
        from vitals.models import Device

        Device.objects.filter(pk=world.ids["device"]).update(revoked_at=timezone.now())
        response, patients = _device_request(world, "POST", route, bodies["own"][0], secret)
        transaction.set_rollback(True)
    out.status(response, where, 401)  # type: ignore[arg-type]
    out.expect(not patients, where, "wrote records")
    if route.endswith("Observation"):
        # The device's token opens nothing else: not the FHIR API (401),
        # not a page of its person (a visitor without a session: login).
        for url, status in (
            ("fhir/Observation", 401),
            (f"fhir/Patient/{mother}", 401),
            (f"vitals/{mother}/", 302),
            (f"vitals/charts/{mother}/data.json", 302),
        ):
            where = f"GET /{url} with the mother's device token"
            response, _ = _device_request(world, "GET", url, None, secret)
            out.status(response, where, status)  # type: ignore[arg-type]
            out.expect(not phi_in(world, response), where, "patient data")


def check_fhir_everything(world: World, route: str, rule: Rule, out: Failures) -> None:
    """Patient/{id}/$everything: the patient's records the oracle lets the
    caller see (a clinic: the Patient and the granted categories), each
    with its Provenance; a patient one may not see is a 404 like a missing
    one; anonymous 401; with a session and with a token alike."""
    snap = world.snapshot
    missing = "00000000-0000-4000-8000-000000000000"
    for persona in PERSONAS:
        seen = oracle.listable(snap, world.user_id(persona), mimic=MIMIC)
        for token in _auth_modes(persona):
            for patient_name in (*PATIENTS, None):
                pid = world.patients[patient_name].pk if patient_name else missing
                url = route.replace("<str:resource_id>", str(pid))
                c = Call(persona, "GET", url + "?_count=500", token)
                response = call(world, c)
                if persona == ANONYMOUS:
                    _fhir_denied_anonymous(out, c, response)
                    continue
                if patient_name is None or world.patients[patient_name].pk not in seen:
                    out.status(response, c, 404)
                    out.expect(not phi_in(world, response), c, "patient data in a 404")
                    continue
                if not out.status(response, c, 200):
                    continue
                body = response.json()
                entries = body.get("entry", ())
                got = {
                    uuid.UUID(e["resource"]["id"])
                    for e in entries
                    if e["resource"]["resourceType"] != "Provenance"
                }
                wanted = {
                    r.id
                    for r in snap.records
                    if r.id in seen and world.patients[patient_name].pk in r.compartments
                }
                out.expect(got == wanted, c, f"{_names(world, got)} != {_names(world, wanted)}")
                out.expect(body.get("total") == len(wanted), c, f"total {body.get('total')}")
                others = tuple(p for p in PATIENTS if p != patient_name)
                out.expect(not phi_in(world, response, others), c, "another patient's data")
            c = Call(persona, "POST", route.replace("<str:resource_id>", str(pid)), False)
            response = call(world, c, body={})
            out.status(response, c, 401 if persona == ANONYMOUS else 405)


def check_custom(world: World, route: str, rule: Rule, out: Failures) -> None:
    assert rule.check is not None
    rule.check(world, route, rule, out)


CHECKS = {
    CASES: check_cases,
    CUSTOM: check_custom,
    FHIR_EVERYTHING: check_fhir_everything,
    PUBLIC: check_page,
    AUTH: check_page,
    STAFF: check_page,
    PATIENT: check_patient_page,
    LISTING: check_listing,
    SCOPED: check_scoped,
    FHIR_METADATA: check_fhir_metadata,
    FHIR_TYPE: check_fhir_type,
    FHIR_INSTANCE: check_fhir_instance,
    FHIR_HISTORY: check_fhir_history,
    FHIR_VERSION: check_fhir_version,
    FHIR_UNKNOWN: check_fhir_unknown,
}


# --------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
def test_route_is_as_declared(world: World, route: str) -> None:
    rule = EXPECTATIONS.get(route)
    assert rule is not None, (
        f"The route {route!r} has no rule in tests/sharing/test_access_matrix.py "
        "EXPECTATIONS. Decide who may use it (page PUBLIC/AUTH, staff, patient_page "
        "with the personas allowed per patient, listing, scoped, or a FHIR kind; see the "
        "module docstring) and add one line for it."
    )
    out = Failures()
    CHECKS[rule.kind](world, route, rule, out)
    assert out.checked, f"{route}: nothing was checked"
    out.assert_none()


def test_the_table_names_no_missing_route() -> None:
    stale = sorted(set(EXPECTATIONS) - set(ROUTES))
    assert not stale, f"EXPECTATIONS names routes the project no longer has: {stale}"


def test_the_patient_table_agrees_with_the_oracle(world: World) -> None:
    # The personas declared per patient are the ones the oracle (and the
    # policy point) let see the patient at all.
    for patient_name, patient in world.patients.items():
        by_oracle = {
            p for p in PERSONAS if oracle.may_see(world.snapshot, world.user_id(p), patient.pk)
        }
        assert by_oracle == set(PERSON_PAGE_ALLOWED[patient_name]), patient_name


def test_the_notebook_table_agrees_with_the_oracle(world: World) -> None:
    # Who may open a medication notebook: who may see the person's medicines.
    for patient_name, patient in world.patients.items():
        by_oracle = {
            p
            for p in PERSONAS
            if oracle.may_see(
                world.snapshot, world.user_id(p), patient.pk, category=Category.MEDICATIONS
            )
        }
        assert by_oracle == set(NOTEBOOK_ALLOWED[patient_name]), patient_name


def test_the_family_table_agrees_with_the_oracle(world: World) -> None:
    # The family's own pages: the people each persona decides for.
    for patient_name, patient in world.patients.items():
        by_oracle = {
            p
            for p in PERSONAS
            if patient.pk in oracle.decides_for(world.snapshot, world.user_id(p))
        }
        assert by_oracle == set(FAMILY_OF[patient_name]), patient_name


def test_the_writes_of_the_matrix_left_the_world_as_it_was(world: World) -> None:
    # Leaving, accepting an invitation, revoking it, notes and imports all
    # ran in rolled-back savepoints: every account is there, the
    # invitation open, the note and the reminder as they were.
    from sharing.models import GuardianInvitation

    for persona, user in world.users.items():
        if user is not None:
            assert User.objects.filter(pk=user.pk, is_active=True).exists(), persona
    invitation = GuardianInvitation.objects.get(pk=world.ids["guardian_invitation"])
    assert invitation.status == GuardianInvitation.Status.ACTIVE
    assert Resource.objects.get(pk=world.records["child_note"]).deleted is False
    assert Reminder.objects.get(pk=world.ids["mother_reminder"]).read_at is None
    # Research: no application, export, link, decision or choice was kept,
    # and the links are as they were (unused, one revoked).
    from sharing.models import (
        ResearchApproval,
        ResearchChoice,
        ResearchDownload,
        ResearchExport,
        ResearchProject,
    )

    assert ResearchProject.objects.count() == len(PROJECTS)
    assert ResearchExport.objects.count() == len(EXPORT_OF)
    assert ResearchApproval.objects.count() == 4
    assert not ResearchChoice.objects.exists()
    links = {str(d.pk): d for d in ResearchDownload.objects.all()}
    assert set(links) == {world.ids[k] for k in ("link_a", "link_b", "link_revoked")}
    assert all(d.uses == 0 for d in links.values())
    assert [k for k, d in links.items() if d.revoked_at] == [world.ids["link_revoked"]]
    response = call(world, Call("mother", "GET", "family/"))
    assert response.status_code == 200


def test_the_summary_table_agrees_with_the_oracle(world: World) -> None:
    for patient_name, patient in world.patients.items():
        by_oracle = {
            p
            for p in PERSONAS
            if oracle.emergency_summary_reach(world.snapshot, world.user_id(p), patient.pk)
            is not None
        }
        assert by_oracle == set(SUMMARY_ALLOWED[patient_name]), patient_name


def test_an_unknown_or_revoked_bearer_token_gets_401_on_every_fhir_route(world: World) -> None:
    out = Failures()
    rid = world.records["child_checkup"]
    for url in (
        "fhir/Observation",
        f"fhir/Observation/{rid}",
        f"fhir/Observation/{rid}/_history",
        f"fhir/Observation/{rid}/_history/1",
    ):
        client = Client()
        response = client.get("/" + url, HTTP_AUTHORIZATION="Bearer hgk_not-a-token")
        out.status(response, f"GET /{url} with an unknown token", 401)  # type: ignore[arg-type]
    out.assert_none()


def test_the_admin_answers_a_membership_without_a_role_with_a_form_error(world: World) -> None:
    c = Call("platform_admin", "POST", "admin/phr/membership/add/")
    response = call(world, c, body={})
    assert response.status_code == 200


def test_the_family_pages_answer_only_get(world: World) -> None:
    child = world.ids["child"]
    statuses = {
        (verb, url): call(world, Call("mother", verb, url)).status_code
        for verb in ("POST", "PUT", "DELETE")
        for url in ("", f"people/{child}/")
    }
    assert set(statuses.values()) == {405}, statuses


def test_a_django_staff_user_without_mfa_is_sent_to_mfa_setup_by_the_admin(
    world: World,
) -> None:
    user = f.UserFactory(is_staff=True)
    client = Client()
    client.force_login(user)
    response = client.get("/admin/")
    assert response.status_code == 302
    assert redirect_target(response).startswith(MFA_SETUP_URL)
