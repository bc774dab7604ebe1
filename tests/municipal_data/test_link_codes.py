"""Family link codes (issue: municipal data, part 5): staff issue a code
per family; a parent enters it with a child's birth date and the records
the municipality uploaded before any account existed appear for her.

Personas: the town's officer (municipal staff with MFA), another town's
officer, the parent who redeems (the mother), the father, a stranger."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import pytest
import time_machine
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.test import Client, override_settings
from django.utils import timezone

from municipal_data import linking
from municipal_data.models import LinkCode, MotherChild
from phr import services, store
from phr.models import (
    AuditEvent,
    Guardianship,
    Organization,
    Patient,
    PatientLink,
    Provenance,
    Resource,
    Role,
    User,
)
from sharing.access import decide
from sharing.models import DvBlock
from sharing.services import dv_block_lift, dv_block_set
from tests import factories as f

pytestmark = pytest.mark.django_db

MOTHER_BORN = date(1994, 4, 2)
FIRST_BORN = date(2023, 5, 10)
SECOND_BORN = date(2025, 9, 1)


@pytest.fixture(autouse=True)
def _fresh_rate_limits() -> Iterator[None]:
    # allauth counts attempts in the cache: every test starts from zero.
    cache.clear()
    yield
    cache.clear()


# --------------------------------------------------------------------------
# A municipal family, as the importer leaves it: Patients with residencies,
# the register's mother-child pairs, records in the store, no account.
# --------------------------------------------------------------------------


@dataclass
class Family:
    town: Organization
    mother: Patient
    first: Patient
    second: Patient
    records: dict[str, Any]


def _municipal_record(patient: Patient, town: Organization, resource: dict[str, Any]) -> Any:
    provenance = services.provenance_create(
        origin=Provenance.Origin.MUNICIPALITY, organization=town, source="upload:test"
    )
    rid, _, _ = store.record_write(resource, provenance=provenance)
    return rid


@pytest.fixture
def town(db: None) -> Organization:
    return f.MunicipalityFactory(name="若葉町")


@pytest.fixture
def officer(town: Organization) -> User:
    return f.make_member(Role.MUNICIPAL_STAFF, town)


@pytest.fixture
def family(town: Organization) -> Family:
    mother = f.make_patient(
        kind=Patient.Kind.ADULT, family="若葉", given="咲良", birth_date=MOTHER_BORN
    )
    first = f.make_patient(family="若葉", given="湊斗", birth_date=FIRST_BORN)
    second = f.make_patient(family="若葉", given="陽菜", birth_date=SECOND_BORN)
    for patient, number in ((mother, "100001"), (first, "100002"), (second, "100003")):
        services.residency_add(patient=patient, municipality=town, resident_number=number)
    for child in (first, second):
        MotherChild.objects.create(mother=mother, child=child, municipality=town)
    records = {
        "first_weight": _municipal_record(first, town, f.observation(first, value=11.2)),
        "second_weight": _municipal_record(second, town, f.observation(second, value=4.4)),
        "second_vaccine": _municipal_record(
            second,
            town,
            {
                "resourceType": "Immunization",
                "status": "completed",
                "vaccineCode": {"text": "ヒブ"},
                "patient": {"reference": f"Patient/{second.pk}"},
                "occurrenceDateTime": "2025-11-10",
            },
        ),
        "mother_bp": _municipal_record(
            mother, town, f.observation(mother, code="8480-6", value=118, unit="mm[Hg]")
        ),
    }
    return Family(town=town, mother=mother, first=first, second=second, records=records)


@pytest.fixture
def parent(db: None) -> User:
    return f.UserFactory(email="sakura@example.jp")


@pytest.fixture
def father(db: None) -> User:
    return f.UserFactory(email="father@example.jp")


def issue(family: Family, officer: User, **which: Patient) -> tuple[LinkCode, str]:
    which = which or {"mother": family.mother}
    return linking.link_code_issue(municipality=family.town, by=officer, **which)


def signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def redeem_form(client: Client, code: str, born: date, who: str = "mother") -> Any:
    return client.post("/link/", {"code": code, "birth_date": born.isoformat(), "who": who})


def fhir_ids(client: Client, resource_type: str, patient: Patient) -> set[str]:
    response = client.get(f"/fhir/{resource_type}?patient={patient.pk}&_count=100")
    assert response.status_code == 200
    body = response.json()
    assert body["total"] == len(body.get("entry", ()))
    return {entry["resource"]["id"] for entry in body.get("entry", ())}


def redeem_audits(**filters: Any) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action="link_code.redeem", **filters).order_by("id"))


# --------------------------------------------------------------------------
# Codes
# --------------------------------------------------------------------------

CODE_PATTERN = re.compile(
    r"^[23456789ABCDEFGHJKLMNPQRSTUVWXYZ]{4}(-[23456789ABCDEFGHJKLMNPQRSTUVWXYZ]{4}){3}$"
)


def test_it_makes_typeable_codes_with_at_least_80_bits() -> None:
    # No 0/O/1/I, 16 symbols of 32: 80 bits from `secrets`.
    assert not set("0O1I") & set(linking.ALPHABET)
    assert len(set(linking.ALPHABET)) ** linking.CODE_LENGTH >= 2**80
    codes = {linking.code_display(linking.code_generate()) for _ in range(2000)}
    assert len(codes) == 2000
    assert all(CODE_PATTERN.match(code) for code in codes)


def test_it_reads_codes_as_parents_type_them() -> None:
    # Full-width characters (a Japanese keyboard), lower case, spaces and
    # every kind of dash are the same code.
    assert linking.code_normalise("７kq2－ABCD ｅｆｇｈ‐jklm") == "7KQ2ABCDEFGHJKLM"
    assert linking.code_normalise(" 7kq2 abcd efgh jklm ") == "7KQ2ABCDEFGHJKLM"
    assert linking.code_normalise("7KQ2ーABCDーEFGHーJKLM") == "7KQ2ABCDEFGHJKLM"
    assert linking.code_hash("７ｋｑ２-abcd-efgh-jklm") == linking.code_hash("7KQ2ABCDEFGHJKLM")


def test_it_stores_only_a_hash_of_the_code(family: Family, officer: User) -> None:
    link, code = issue(family, officer)
    assert CODE_PATTERN.match(code)
    plain = code.replace("-", "")
    assert link.code_hash == hashlib.sha256(plain.encode()).hexdigest()
    assert link.prefix == plain[:4]
    assert link.expires_at - link.issued_at == timedelta(days=90)  # LINK_CODE_DAYS
    # Nowhere at rest: not in the code's row, not in the audit log.
    with connection.cursor() as cursor:
        for table in ("municipal_data_linkcode", "phr_auditevent"):
            cursor.execute(f"SELECT row_to_json(t)::text FROM {table} AS t")  # noqa: S608
            dumped = "\n".join(row[0] for row in cursor.fetchall())
            assert plain not in dumped, table
            assert code not in dumped, table
            # not even the part after the prefix staff see
            assert plain[4:] not in dumped, table


@override_settings(LINK_CODE_DAYS=14)
def test_it_takes_the_validity_from_the_setting(family: Family, officer: User) -> None:
    link, _ = issue(family, officer)
    assert link.expires_at - link.issued_at == timedelta(days=14)


# --------------------------------------------------------------------------
# The mother redeems
# --------------------------------------------------------------------------


def test_it_links_the_mother_and_her_children_and_their_records_appear(
    family: Family, officer: User, parent: User
) -> None:
    _link, code = issue(family, officer)
    client = signed_in(parent)
    # Before: nothing on the family page, nothing through the API.
    assert "湊斗" not in client.get("/").content.decode()
    assert fhir_ids(client, "Observation", family.second) == set()

    response = redeem_form(client, code, SECOND_BORN)
    assert response.status_code == 302
    assert response["Location"] == "/link/done/"
    done = client.get("/link/done/").content.decode()
    assert all(name in done for name in ("咲良", "湊斗", "陽菜"))
    assert 'href="/"' in done

    home = client.get("/").content.decode()
    assert all(name in home for name in ("若葉 咲良", "若葉 湊斗", "若葉 陽菜"))
    records = family.records
    assert fhir_ids(client, "Observation", family.second) == {str(records["second_weight"])}
    assert fhir_ids(client, "Immunization", family.second) == {str(records["second_vaccine"])}
    assert fhir_ids(client, "Observation", family.first) == {str(records["first_weight"])}
    assert fhir_ids(client, "Observation", family.mother) == {str(records["mother_bp"])}

    family.mother.refresh_from_db()
    assert family.mother.account == parent
    relationships = set(
        Guardianship.objects.active()
        .filter(guardian=parent)
        .values_list("child_id", "relationship")
    )
    assert relationships == {
        (family.first.pk, Guardianship.Relationship.MOTHER),
        (family.second.pk, Guardianship.Relationship.MOTHER),
    }


def test_it_marks_the_code_used_and_audits_each_person_linked(
    family: Family, officer: User, parent: User
) -> None:
    link, code = issue(family, officer)
    linking.link_code_redeem(user=parent, code=code, child_birth_date=FIRST_BORN)
    link.refresh_from_db()
    assert link.used_by == parent
    assert link.used_at is not None
    assert link.status == LinkCode.Status.USED
    rows = redeem_audits(outcome="success")
    assert {r.patient_id for r in rows} == {family.mother.pk, family.first.pk, family.second.pk}
    assert all(r.actor_id == parent.pk and r.detail["link_code"] == link.pk for r in rows)
    # The family sees the municipality's issuing of the code in its access
    # history, in words.
    history = signed_in(parent).get("/sharing/history/").content.decode()
    assert "家族連携コード" in history or "family link code" in history


def test_it_accepts_the_code_as_typed_on_a_japanese_keyboard(
    family: Family, officer: User, parent: User
) -> None:
    _link, code = issue(family, officer)
    typed = code.lower().translate(
        str.maketrans(
            "-abcdefghjklmnpqrstuvwxyz23456789",
            "ー" + "ａｂｃｄｅｆｇｈｊｋｌｍｎｐｑｒｓｔｕｖｗｘｙｚ２３４５６７８９",
        )
    )
    result = linking.link_code_redeem(user=parent, code=typed, child_birth_date=FIRST_BORN)
    assert result.mother == family.mother


def test_a_code_is_single_use(family: Family, officer: User, parent: User, father: User) -> None:
    _link, code = issue(family, officer)
    linking.link_code_redeem(user=parent, code=code, child_birth_date=FIRST_BORN)
    with pytest.raises(linking.LinkCodeError) as refused:
        linking.link_code_redeem(
            user=father, code=code, child_birth_date=FIRST_BORN, role=linking.ROLE_GUARDIAN
        )
    assert refused.value.message == linking.UNUSABLE
    assert not Guardianship.objects.filter(guardian=father).exists()


# --------------------------------------------------------------------------
# Refusals, counting and enumeration
# --------------------------------------------------------------------------


def test_it_refuses_a_wrong_birth_date_counts_it_and_audits_it(
    family: Family, officer: User, parent: User
) -> None:
    link, code = issue(family, officer)
    # The mother's birth date does not open a family that has children.
    for wrong in (date(2024, 1, 1), MOTHER_BORN):
        with pytest.raises(linking.LinkCodeError) as refused:
            linking.link_code_redeem(user=parent, code=code, child_birth_date=wrong)
        assert refused.value.message == linking.WRONG
    link.refresh_from_db()
    assert link.failed_attempts == 2
    assert link.used_at is None
    denied = redeem_audits(outcome="denied")
    assert [d.detail["reason"] for d in denied] == ["birth_date", "birth_date"]
    assert [d.detail["failed_attempts"] for d in denied] == [1, 2]
    assert all(d.patient_id == family.mother.pk and d.actor_id == parent.pk for d in denied)
    assert not Guardianship.objects.filter(guardian=parent).exists()
    family.mother.refresh_from_db()
    assert family.mother.account is None


def test_it_locks_a_code_after_five_wrong_attempts(
    family: Family, officer: User, parent: User
) -> None:
    link, code = issue(family, officer)
    for _ in range(LinkCode.MAX_FAILURES):
        with pytest.raises(linking.LinkCodeError):
            linking.link_code_redeem(user=parent, code=code, child_birth_date=date(2020, 1, 1))
    assert redeem_audits(outcome="denied")[-1].detail["locked"] is True
    # Now even the right birth date is refused: staff issue a new code.
    with pytest.raises(linking.LinkCodeError) as refused:
        linking.link_code_redeem(user=parent, code=code, child_birth_date=FIRST_BORN)
    assert refused.value.message == linking.UNUSABLE
    link.refresh_from_db()
    assert link.status == LinkCode.Status.LOCKED


def test_it_says_the_same_for_a_missing_code_and_a_wrong_birth_date(
    family: Family, officer: User, parent: User
) -> None:
    # Enumeration: a guesser cannot tell a code that exists from one that
    # does not.
    _link, code = issue(family, officer)
    client = signed_in(parent)
    missing = redeem_form(client, "ABCD-EFGH-JKLM-NPQR", FIRST_BORN)
    malformed = redeem_form(client, "not a code at all", FIRST_BORN)
    wrong_date = redeem_form(client, code, date(2019, 3, 3))
    assert missing.status_code == malformed.status_code == wrong_date.status_code == 400

    def errors(response: Any) -> str:
        return re.findall(r'<ul class="errorlist"[^>]*>.*?</ul>', response.content.decode())[0]

    assert errors(missing) == errors(malformed) == errors(wrong_date)
    assert "コードまたは生年月日" in errors(missing)
    reasons = [a.detail["reason"] for a in redeem_audits(outcome="denied")]
    assert reasons == ["not_found", "not_found", "birth_date"]


@pytest.mark.parametrize("how", ["expired", "used", "revoked"])
def test_it_refuses_a_code_that_can_no_longer_be_used(
    family: Family, officer: User, parent: User, father: User, how: str
) -> None:
    link, code = issue(family, officer)
    moment = timezone.now()
    if how == "used":
        linking.link_code_redeem(
            user=father, code=code, child_birth_date=FIRST_BORN, role=linking.ROLE_GUARDIAN
        )
    elif how == "revoked":
        linking.link_code_revoke(link_code=link, by=officer)
    else:
        moment += timedelta(days=91)
    with time_machine.travel(moment, tick=False), pytest.raises(linking.LinkCodeError) as refused:
        linking.link_code_redeem(user=parent, code=code, child_birth_date=FIRST_BORN)
    assert refused.value.message == linking.UNUSABLE
    assert redeem_audits(outcome="denied")[-1].detail["reason"] == how
    family.mother.refresh_from_db()
    assert family.mother.account is None


def test_it_answers_the_sixth_attempt_in_a_quarter_hour_with_429(
    family: Family, officer: User, parent: User
) -> None:
    # ACCOUNT_RATE_LIMITS["link_code"] "5/15m/user,…" (allauth's limiter,
    # like failed logins).
    link, code = issue(family, officer)
    client = signed_in(parent)
    for _ in range(5):
        assert redeem_form(client, code, date(2020, 2, 2)).status_code == 400
    response = redeem_form(client, code, FIRST_BORN)
    assert response.status_code == 429
    assert redeem_audits(outcome="denied")[-1].detail["reason"] == "rate_limited"
    link.refresh_from_db()
    assert link.used_at is None
    # A quarter of an hour later the account may try again (the code itself
    # locked after five wrong birth dates).
    with time_machine.travel(timezone.now() + timedelta(minutes=16)):
        assert redeem_form(client, code, FIRST_BORN).status_code == 400


@override_settings(ACCOUNT_RATE_LIMITS={"link_code": "5/15m/user,2/15m/ip"})
def test_it_limits_attempts_per_address_too(family: Family, parent: User, father: User) -> None:
    first, second = signed_in(parent), signed_in(father)
    assert redeem_form(first, "ABCD-EFGH-JKLM-NPQR", FIRST_BORN).status_code == 400
    assert redeem_form(second, "ABCD-EFGH-JKLM-NPQR", FIRST_BORN).status_code == 400
    assert redeem_form(second, "ABCD-EFGH-JKLM-NPQR", FIRST_BORN).status_code == 429


def test_an_incomplete_form_is_not_an_attempt(parent: User) -> None:
    client = signed_in(parent)
    for _ in range(8):
        assert client.post("/link/", {"code": "ABCD"}).status_code == 400
    assert not redeem_audits()


# --------------------------------------------------------------------------
# Other guardians, DV blocks
# --------------------------------------------------------------------------


def test_a_father_gets_the_children_and_never_the_mothers_records(
    family: Family, officer: User, father: User
) -> None:
    _link, code = issue(family, officer)
    client = signed_in(father)
    assert redeem_form(client, code, FIRST_BORN, who="father").status_code == 302
    assert set(
        Guardianship.objects.active()
        .filter(guardian=father)
        .values_list("child_id", "relationship")
    ) == {
        (family.first.pk, Guardianship.Relationship.FATHER),
        (family.second.pk, Guardianship.Relationship.FATHER),
    }
    family.mother.refresh_from_db()
    assert family.mother.account is None  # an adult's records are hers
    assert not decide(father, family.mother)
    home = client.get("/").content.decode()
    assert "湊斗" in home
    assert "陽菜" in home
    assert "咲良" not in home
    assert fhir_ids(client, "Observation", family.first) == {str(family.records["first_weight"])}
    assert fhir_ids(client, "Observation", family.mother) == set()
    # The mother, who redeems later with a code of her own, keeps her record.
    rows = redeem_audits(outcome="success")
    assert {r.patient_id for r in rows} == {family.first.pk, family.second.pk}


def test_another_guardian_is_never_recorded_as_the_mother(
    family: Family, officer: User, father: User
) -> None:
    _link, code = issue(family, officer)
    with pytest.raises(ValueError, match="another guardian"):
        linking.link_code_redeem(
            user=father,
            code=code,
            child_birth_date=FIRST_BORN,
            role=linking.ROLE_GUARDIAN,
            relationship=Guardianship.Relationship.MOTHER,
        )
    assert not Guardianship.objects.filter(guardian=father).exists()


def test_another_guardian_cannot_use_a_pregnancy_code(
    town: Organization, officer: User, father: User
) -> None:
    expecting = f.make_patient(kind=Patient.Kind.ADULT, given="真央", birth_date=MOTHER_BORN)
    services.residency_add(patient=expecting, municipality=town, resident_number="200001")
    link, code = linking.link_code_issue(municipality=town, mother=expecting, by=officer)
    with pytest.raises(linking.LinkCodeError) as refused:
        linking.link_code_redeem(
            user=father, code=code, child_birth_date=MOTHER_BORN, role=linking.ROLE_GUARDIAN
        )
    assert refused.value.message == linking.NO_CHILD
    link.refresh_from_db()
    # Code and birth date were right: not a guess, not counted, still usable.
    assert link.failed_attempts == 0
    assert link.status == LinkCode.Status.ACTIVE


def test_a_pregnancy_code_opens_with_the_mothers_birth_date(
    town: Organization, officer: User, parent: User
) -> None:
    # A family with no child yet: the second factor is the mother's birth
    # date (the letter says so).
    expecting = f.make_patient(kind=Patient.Kind.ADULT, given="真央", birth_date=MOTHER_BORN)
    services.residency_add(patient=expecting, municipality=town, resident_number="200001")
    _link, code = linking.link_code_issue(municipality=town, mother=expecting, by=officer)
    result = linking.link_code_redeem(user=parent, code=code, child_birth_date=MOTHER_BORN)
    assert result.mother == expecting
    assert result.children == []
    expecting.refresh_from_db()
    assert expecting.account == parent


def test_a_dv_blocked_guardian_is_refused_and_learns_nothing(
    family: Family, officer: User, father: User
) -> None:
    # DV等支援措置 against the younger child: the right code and birth date
    # get the same answer as a wrong guess, and link nobody.
    dv_block_set(patient=family.second, blocked_user=father, by=officer)
    link, code = issue(family, officer)
    client = signed_in(father)
    blocked = redeem_form(client, code, FIRST_BORN, who="father")
    guess = redeem_form(client, "ABCD-EFGH-JKLM-NPQR", FIRST_BORN, who="father")
    assert blocked.status_code == guess.status_code == 400
    assert blocked.content.decode().count("コードまたは生年月日") == 1
    assert re.findall(r'class="errorlist".*?</ul>', blocked.content.decode(), re.S) == re.findall(
        r'class="errorlist".*?</ul>', guess.content.decode(), re.S
    )
    assert not Guardianship.objects.filter(guardian=father).exists()
    audit = redeem_audits(outcome="denied")[0]
    assert audit.detail["reason"] == "dv_block"
    assert audit.detail["rule"] == "dv_block"
    link.refresh_from_db()
    assert link.failed_attempts == 1
    assert link.used_at is None


def test_a_guardian_blocked_from_the_mother_gets_no_child_either(
    family: Family, officer: User, father: User
) -> None:
    dv_block_set(patient=family.mother, blocked_user=father, by=officer)
    _link, code = issue(family, officer)
    with pytest.raises(linking.LinkCodeError) as refused:
        linking.link_code_redeem(
            user=father, code=code, child_birth_date=FIRST_BORN, role=linking.ROLE_GUARDIAN
        )
    assert refused.value.message == linking.WRONG
    assert not Guardianship.objects.filter(guardian=father).exists()


# --------------------------------------------------------------------------
# Records the family made itself
# --------------------------------------------------------------------------


def test_it_merges_a_child_the_parent_recorded_herself(
    family: Family, officer: User, parent: User
) -> None:
    own_child = f.make_patient(family="若葉", given="ひな", birth_date=SECOND_BORN)
    services.guardianship_add(
        guardian=parent, child=own_child, relationship=Guardianship.Relationship.MOTHER
    )
    home_weight = f.write_observation(own_child, value=4.9)
    _link, code = issue(family, officer)
    linking.link_code_redeem(user=parent, code=code, child_birth_date=SECOND_BORN)

    own_child.refresh_from_db()
    assert own_child.merged_into == family.second
    assert PatientLink.objects.filter(survivor=family.second, merged=own_child).exists()
    # One record per child: the home weight now sits with the municipal one.
    assert family.second.pk in Resource.objects.get(pk=home_weight).compartments
    client = signed_in(parent)
    assert fhir_ids(client, "Observation", family.second) == {
        str(family.records["second_weight"]),
        str(home_weight),
    }
    children = (
        Guardianship.objects.active().filter(guardian=parent).values_list("child_id", flat=True)
    )
    assert sorted(map(str, children)) == sorted([str(family.first.pk), str(family.second.pk)])
    assert client.get("/").content.decode().count("person-card") == 3  # her and two children


def hand_made_child(
    family: Family, parent: User, *, added: date | None = None, **others: User
) -> Patient:
    """The younger child as the family recorded it before the code came:
    her own record, her guardianship, and one per other guardian (as an
    accepted invitation leaves it)."""
    own_child = f.make_patient(family="若葉", given="ひな", birth_date=SECOND_BORN)
    services.guardianship_add(
        guardian=parent,
        child=own_child,
        relationship=Guardianship.Relationship.MOTHER,
        valid_from=added,
    )
    for guardian in others.values():
        services.guardianship_add(
            guardian=guardian,
            child=own_child,
            relationship=Guardianship.Relationship.FATHER,
            valid_from=added,
        )
    return own_child


def active_children(guardian: User) -> list[tuple[uuid.UUID, str]]:
    return sorted(
        Guardianship.objects.active()
        .filter(guardian=guardian)
        .values_list("child_id", "relationship"),
        key=str,
    )


def test_a_second_guardian_of_a_hand_made_child_follows_it_into_the_municipal_record(
    family: Family, officer: User, parent: User, father: User
) -> None:
    own_child = hand_made_child(family, parent, father=father)
    home_weight = f.write_observation(own_child, value=4.9)
    _link, code = issue(family, officer)
    linking.link_code_redeem(user=parent, code=code, child_birth_date=SECOND_BORN)

    # His guardianship moved with the records: the same row, now of the
    # municipal record; none is left on the merged one.
    assert active_children(father) == [(family.second.pk, Guardianship.Relationship.FATHER)]
    assert not Guardianship.objects.filter(child=own_child).exists()
    client = signed_in(father)
    assert fhir_ids(client, "Observation", family.second) == {
        str(family.records["second_weight"]),
        str(home_weight),
    }
    # Only that child: not the elder one he was never guardian of, nor the
    # mother's records.
    assert not decide(father, family.first)
    assert not decide(father, family.mother)
    assert fhir_ids(client, "Observation", family.mother) == set()
    # Audited like her own linking: by her, on the municipal record, naming him.
    moved = [r for r in redeem_audits(outcome="success") if r.detail.get("guardian") == father.pk]
    assert len(moved) == 1
    assert moved[0].actor_id == parent.pk
    assert moved[0].patient_id == family.second.pk
    assert moved[0].detail["moved"] is True
    assert moved[0].detail["merged"] == str(own_child.pk)


@pytest.mark.parametrize("blocked_from", ["second", "mother"])
def test_a_dv_blocked_guardian_of_a_hand_made_child_does_not_follow_it(
    family: Family, officer: User, parent: User, father: User, blocked_from: str
) -> None:
    # DV等支援措置 against him, from the child's municipal record or from
    # the mother: the merge must not open the municipal record to him.
    own_child = hand_made_child(family, parent, father=father)
    dv_block_set(patient=getattr(family, blocked_from), blocked_user=father, by=officer)
    _link, code = issue(family, officer)
    linking.link_code_redeem(user=parent, code=code, child_birth_date=SECOND_BORN)

    own_child.refresh_from_db()
    assert own_child.merged_into == family.second  # the family's merge still happens
    assert active_children(parent) == sorted(
        [
            (family.first.pk, Guardianship.Relationship.MOTHER),
            (family.second.pk, Guardianship.Relationship.MOTHER),
        ],
        key=str,
    )
    # His row stays on the merged record, whose records have all moved.
    assert active_children(father) == [(own_child.pk, Guardianship.Relationship.FATHER)]
    assert not Guardianship.objects.filter(guardian=father, child=family.second).exists()
    assert not decide(father, family.second)
    assert fhir_ids(signed_in(father), "Observation", family.second) == set()
    denied = redeem_audits(outcome="denied")
    assert [(r.patient_id, r.detail["guardian"], r.detail["rule"]) for r in denied] == [
        (family.second.pk, father.pk, "dv_block")
    ]
    # Lifting the block later gives him nothing of the municipal record.
    dv_block_lift(block=DvBlock.objects.get(blocked_user=father), by=officer)
    assert not decide(User.objects.get(pk=father.pk), family.second)


def test_a_guardian_who_has_the_municipal_record_already_keeps_one_row(
    family: Family, officer: User, parent: User, father: User
) -> None:
    # He redeemed a code of his own last month; she recorded the child by
    # hand and invited him before that. Her own guardianship is older
    # than today, too.
    earlier = timezone.localdate() - timedelta(days=30)
    before = timezone.localdate() - timedelta(days=60)
    own_child = hand_made_child(family, parent, added=before, father=father)
    services.guardianship_add(
        guardian=father,
        child=family.second,
        relationship=Guardianship.Relationship.FATHER,
        valid_from=earlier,
    )
    _link, code = issue(family, officer)
    linking.link_code_redeem(user=parent, code=code, child_birth_date=SECOND_BORN)

    rows = list(Guardianship.objects.filter(guardian=father))
    assert [(r.child_id, r.valid_from, r.valid_to) for r in rows] == [
        (family.second.pk, earlier, None)
    ]
    # And the one who redeemed: her moved row, no second one from the code.
    mine = Guardianship.objects.filter(guardian=parent, child=family.second)
    assert [(r.valid_from, r.relationship) for r in mine] == [
        (before, Guardianship.Relationship.MOTHER)
    ]
    assert not Guardianship.objects.filter(child=own_child).exists()
    kept = [r for r in redeem_audits(outcome="success") if r.detail.get("guardian") == father.pk]
    assert [(r.detail["moved"], r.detail["guardianship"]) for r in kept] == [(False, rows[0].pk)]


def test_a_hand_made_child_recorded_with_another_relationship_still_links_once(
    family: Family, officer: User, parent: User
) -> None:
    # She recorded the child today as "other guardian", then redeems as the
    # mother: her moved row is the guardianship, now as the mother; the code
    # adds no second one.
    own_child = f.make_patient(family="若葉", given="ひな", birth_date=SECOND_BORN)
    services.guardianship_add(
        guardian=parent, child=own_child, relationship=Guardianship.Relationship.OTHER
    )
    _link, code = issue(family, officer)
    linking.link_code_redeem(user=parent, code=code, child_birth_date=SECOND_BORN)
    assert active_children(parent) == sorted(
        [
            (family.first.pk, Guardianship.Relationship.MOTHER),
            (family.second.pk, Guardianship.Relationship.MOTHER),
        ],
        key=str,
    )
    assert not Guardianship.objects.filter(child=own_child).exists()


def test_an_ended_row_of_the_municipal_record_from_the_same_day_becomes_one_with_it(
    family: Family, officer: User, parent: User, father: User
) -> None:
    started = timezone.localdate() - timedelta(days=20)
    hand_made_child(family, parent, added=started, father=father)
    ended = Guardianship.objects.create(
        guardian=father,
        child=family.second,
        relationship=Guardianship.Relationship.FATHER,
        valid_from=started,
        valid_to=started + timedelta(days=5),
    )
    _link, code = issue(family, officer)
    linking.link_code_redeem(user=parent, code=code, child_birth_date=SECOND_BORN)

    rows = list(Guardianship.objects.filter(guardian=father))
    assert [(r.pk, r.child_id, r.valid_from, r.valid_to) for r in rows] == [
        (ended.pk, family.second.pk, started, None)
    ]
    assert decide(father, family.second)


def test_it_keeps_apart_a_hand_made_child_that_differs(
    family: Family, officer: User, parent: User
) -> None:
    # Same birth date, other sex: not the same child. Nothing is merged.
    other = f.make_patient(given="蒼", birth_date=SECOND_BORN)
    content = Resource.objects.get(pk=other.pk).content
    store.record_write(
        {**content, "resourceType": "Patient", "gender": "male"},
        provenance=services.provenance_create(origin=Provenance.Origin.SELF),
        resource_id=other.pk,
    )
    store.record_write(
        {
            **Resource.objects.get(pk=family.second.pk).content,
            "resourceType": "Patient",
            "gender": "female",
        },
        provenance=services.provenance_create(origin=Provenance.Origin.SYSTEM),
        resource_id=family.second.pk,
    )
    services.guardianship_add(
        guardian=parent, child=other, relationship=Guardianship.Relationship.MOTHER
    )
    _link, code = issue(family, officer)
    result = linking.link_code_redeem(user=parent, code=code, child_birth_date=SECOND_BORN)
    assert result.merged == []
    other.refresh_from_db()
    assert other.merged_into is None


def test_it_merges_the_mothers_own_record_into_the_municipal_one(
    family: Family, officer: User, parent: User
) -> None:
    own = f.make_patient(
        kind=Patient.Kind.ADULT, given="さくら", birth_date=MOTHER_BORN, account=parent
    )
    temperature = f.write_observation(own, code="8310-5", value=36.6, unit="Cel")
    _link, code = issue(family, officer)
    linking.link_code_redeem(user=parent, code=code, child_birth_date=FIRST_BORN)
    own.refresh_from_db()
    family.mother.refresh_from_db()
    assert own.merged_into == family.mother
    assert own.account is None
    assert family.mother.account == parent
    assert fhir_ids(signed_in(parent), "Observation", family.mother) == {
        str(family.records["mother_bp"]),
        str(temperature),
    }


def test_it_refuses_when_her_own_record_disagrees(
    family: Family, officer: User, parent: User
) -> None:
    own = f.make_patient(
        kind=Patient.Kind.ADULT, given="さくら", birth_date=date(1990, 1, 1), account=parent
    )
    link, code = issue(family, officer)
    with pytest.raises(linking.LinkCodeError) as refused:
        linking.link_code_redeem(user=parent, code=code, child_birth_date=FIRST_BORN)
    assert refused.value.message == linking.CONFLICT
    own.refresh_from_db()
    family.mother.refresh_from_db()
    assert own.account == parent
    assert own.merged_into is None
    assert family.mother.account is None
    assert not Guardianship.objects.filter(guardian=parent).exists()
    link.refresh_from_db()
    assert link.status == LinkCode.Status.ACTIVE
    assert link.failed_attempts == 0
    assert redeem_audits(outcome="denied")[0].detail["reason"] == "conflict"


def test_it_refuses_a_mother_record_that_has_another_account(
    family: Family, officer: User, parent: User
) -> None:
    someone = f.UserFactory()
    Patient.objects.filter(pk=family.mother.pk).update(account=someone)
    _link, code = issue(family, officer)
    with pytest.raises(linking.LinkCodeError) as refused:
        linking.link_code_redeem(user=parent, code=code, child_birth_date=FIRST_BORN)
    assert refused.value.message == linking.TAKEN
    assert not Guardianship.objects.filter(guardian=parent).exists()


# --------------------------------------------------------------------------
# Issuing
# --------------------------------------------------------------------------


def test_a_code_for_a_child_whose_mother_is_known_is_the_familys(
    family: Family, officer: User
) -> None:
    link, _ = issue(family, officer, child=family.first)
    assert link.mother == family.mother
    assert link.child == family.first
    assert linking.link_code_family(link).ids == [
        family.mother.pk,
        family.first.pk,
        family.second.pk,
    ]


def test_a_code_for_a_child_alone_links_that_child(
    town: Organization, officer: User, father: User
) -> None:
    child = f.make_patient(given="律", birth_date=FIRST_BORN)
    services.residency_add(patient=child, municipality=town, resident_number="300001")
    link, code = linking.link_code_issue(municipality=town, child=child, by=officer)
    assert link.mother is None
    result = linking.link_code_redeem(
        user=father, code=code, child_birth_date=FIRST_BORN, role=linking.ROLE_GUARDIAN
    )
    assert result.children == [child]
    assert decide(father, child)


def test_only_the_towns_staff_issue_codes_for_its_residents(
    family: Family,
    officer: User,
    stranger: User,
    other_municipal_officer: User,
    staff_without_mfa: User,
) -> None:
    from django.core.exceptions import PermissionDenied, ValidationError

    for user in (stranger, other_municipal_officer):
        with pytest.raises(PermissionDenied):
            issue(family, user)
    # Staff without an authenticator hold no staff role.
    staff_without_mfa.memberships.update(organization=family.town)
    with pytest.raises(PermissionDenied):
        issue(family, staff_without_mfa)
    # A person who moved away is not the town's to issue for.
    family.mother.residencies.update(valid_to=date(2024, 1, 1), valid_from=date(2020, 1, 1))
    with pytest.raises(ValidationError):
        issue(family, officer)


# --------------------------------------------------------------------------
# Staff pages
# --------------------------------------------------------------------------


def test_staff_issue_a_code_by_resident_number_and_see_the_letter_once(
    family: Family, officer: User
) -> None:
    client = signed_in(officer)
    assert client.get("/municipal/link-codes/issue/").status_code == 200
    response = client.post(
        "/municipal/link-codes/issue/",
        {"municipality": family.town.pk, "resident_number": "１００００１"},  # full-width
    )
    link = LinkCode.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/municipal/link-codes/{link.pk}/letter/"
    assert link.mother == family.mother

    letter = client.get(response["Location"])
    html = letter.content.decode()
    code = re.search(r'class="letter-code">([^<]+)<', html).group(1)  # type: ignore[union-attr]
    assert CODE_PATTERN.match(code)
    assert linking.code_hash(code) == link.code_hash
    # The QR code opens the parent's form with the code filled in.
    assert letter.context["url"] == f"{settings.SITE_URL.rstrip('/')}/link/?code={code}"
    assert 'src="data:image/svg+xml;base64,' in html  # the QR code
    assert "若葉 咲良" in html
    assert "母子健康手帳" in html
    assert "Hagukumi" in html
    assert 'style="' not in html  # CSP: no inline styles
    assert letter["Referrer-Policy"] == "same-origin"
    assert AuditEvent.objects.filter(action="view.link_code_letter").count() == 3

    # Shown once: a reload says how to give the family a new letter.
    again = client.get(response["Location"]).content.decode()
    assert code not in again
    assert "letter-code" not in again
    assert link.prefix in again


def test_the_letter_qr_code_opens_the_form_pre_filled(
    family: Family, officer: User, parent: User
) -> None:
    _link, code = issue(family, officer)
    response = signed_in(parent).get(f"/link/?code={code.lower()}")
    assert response.status_code == 200
    assert f'value="{code}"' in response.content.decode()
    assert response["Referrer-Policy"] == "same-origin"


def test_staff_see_their_towns_codes_with_the_family_and_audit_it(
    family: Family, officer: User, other_municipal_officer: User
) -> None:
    link, _ = issue(family, officer)
    html = signed_in(officer).get("/municipal/link-codes/").content.decode()
    assert link.prefix in html
    assert "若葉 咲良" in html
    assert "100002" in html
    shown = AuditEvent.objects.filter(action="view.link_codes", actor_id=officer.pk)
    assert {e.patient_id for e in shown} == {family.mother.pk, family.first.pk, family.second.pk}
    assert signed_in(officer).get(f"/municipal/link-codes/?prefix={link.prefix.lower()}")
    other = signed_in(other_municipal_officer)
    assert link.prefix not in other.get("/municipal/link-codes/").content.decode()
    assert other.get(f"/municipal/link-codes/{link.pk}/letter/").status_code == 404
    assert other.post(f"/municipal/link-codes/{link.pk}/revoke/").status_code == 404


def test_staff_see_no_name_of_a_family_that_moved_away(family: Family, officer: User) -> None:
    link, _ = issue(family, officer)
    for patient in (family.mother, family.first, family.second):
        patient.residencies.update(valid_from=date(2020, 1, 1), valid_to=date(2024, 1, 1))
    html = signed_in(officer).get("/municipal/link-codes/").content.decode()
    assert link.prefix in html
    assert "咲良" not in html
    assert "湊斗" not in html


def test_staff_revoke_a_code(family: Family, officer: User, parent: User) -> None:
    link, code = issue(family, officer)
    response = signed_in(officer).post(f"/municipal/link-codes/{link.pk}/revoke/")
    assert response.status_code == 302
    link.refresh_from_db()
    assert link.status == LinkCode.Status.REVOKED
    assert link.revoked_by == officer
    assert AuditEvent.objects.filter(action="link_code.revoke", patient_id=family.mother.pk)
    with pytest.raises(linking.LinkCodeError):
        linking.link_code_redeem(user=parent, code=code, child_birth_date=FIRST_BORN)


def test_the_staff_pages_are_404_for_everyone_else(
    family: Family, officer: User, parent: User, staff_without_mfa: User
) -> None:
    link, _ = issue(family, officer)
    client = signed_in(parent)
    for url in (
        "/municipal/link-codes/",
        "/municipal/link-codes/issue/",
        f"/municipal/link-codes/{link.pk}/letter/",
    ):
        assert client.get(url).status_code == 404, url
    assert client.post(f"/municipal/link-codes/{link.pk}/revoke/").status_code == 404
    # Staff without MFA are sent to set it up first.
    response = signed_in(staff_without_mfa).get("/municipal/link-codes/")
    assert response.status_code == 302
    assert "/accounts/2fa/" in response["Location"]


def test_the_family_page_leads_to_the_link_form(parent: User) -> None:
    html = signed_in(parent).get("/").content.decode()
    assert 'href="/link/"' in html
    assert "母子健康手帳と一緒に受け取ったコードを入力" in html


def test_the_link_form_needs_a_login() -> None:
    response = Client().get("/link/?code=ABCD-EFGH-JKLM-NPQR")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/link/")
