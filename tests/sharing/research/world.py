"""A research world for the release proofs (issue 8, part 6).

`build_world()` writes N families through the project's own services and
record builders, as the clinics, the municipalities and the families write
them:

- the mother: registered by a clinic (her Patient written first by the
  clinic, so the clinic may write for her: sharing.access.may_write), with
  her name in kanji and kana, address, phone, email, resident number, MCH
  handbook number, insurance number and clinic patient number; a resident
  of one of the world's municipalities;
- her pregnancy: the episode, the due date and prenatal visits built by
  clinics.prenatal (with the clinic's free-text notes), written in bulk
  through phr.store; the delivery recorded by clinics.services.delivery_record,
  which creates the child(ren) with their birth data (some twins; birth
  weights and gestational ages across the range, with rare extremes);
- each child: named and numbered by the municipality (resident and MCH
  handbook numbers), infant checkups and vaccinations built by the
  municipal formats (municipal_data.formats) as an upload row gives them;
- home vitals from registered devices (vitals.devices, vitals.records),
  and a parent's note for the mother and each child (phr.handbook_services);
- research choices (sharing.models.ResearchChoice) per family: consented
  to all categories, to some, consented then withdrawn, never consented;
  and families of a municipality outside every project.

Every direct identifier written is kept in `World.identifiers` for the
scan, and the persons' facts in `World.persons`, so a test knows what a
release must and must not hold without reading the exporter's code.

Features only excluded persons have (the "markers", MARKERS): withdrawn,
never consented and outside mothers and children each have a home vitals
kind no one else has; mothers who consented only to some categories have
step counts (vitals, not consented), their children a Japanese
encephalitis dose (vaccinations, not consented). No released row may
carry one of them.
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from django.utils import timezone as dj_timezone

from clinics import prenatal
from clinics import services as clinic_services
from municipal_data.formats import infant_checkup, vaccination
from municipal_data.records import MunicipalRecord, Person
from phr import handbook_services, services, store
from phr.identifiers import municipality_check_digit
from phr.models import Organization, Patient, Provenance, Resource, Role, User
from phr.terminology import Category
from sharing.models import ResearchApproval, ResearchChoice, ResearchProject
from tests import factories
from vitals import devices as vital_devices
from vitals import records as vital_records

JST = timezone(timedelta(hours=9))

# The categories a research project may ask for here (all but the ones the
# release has no table for).
RESEARCH_CATEGORIES = (
    Category.PREGNANCY,
    Category.PRENATAL_CHECKUPS,
    Category.INFANT_CHECKUPS,
    Category.VACCINATIONS,
    Category.VITALS,
)
# What a family of mode "some" consents to: the mother her pregnancy and
# prenatal checkups (not her vitals), the child the checkups (not the
# vaccinations, not the vitals).
SOME_MOTHER = (Category.PREGNANCY, Category.PRENATAL_CHECKUPS)
SOME_CHILD = (Category.INFANT_CHECKUPS,)

MODES = ("all", "some", "withdrawn", "never")

# Marker features (see the module's docstring): by mode, the home vitals
# kind only its mothers and only its children have. A release must hold
# no row of them; a release of a cohort that wrongly included them would.
MARKERS: dict[str, tuple[str, str | None]] = {
    "withdrawn": (vital_records.BLOOD_GLUCOSE, vital_records.BODY_TEMPERATURE),
    "never": (vital_records.HEART_RATE, vital_records.BODY_LENGTH),
    "outside": (vital_records.FETAL_MOVEMENT, vital_records.HEAD_CIRCUMFERENCE),
    # vitals are not among the categories "some" consented to
    "some": (vital_records.STEP_COUNT, None),
}
# and the children of "some" (vaccinations not consented): 日本脳炎 from 6 months
MARKER_CHILD_SOME_VACCINE = "je"

# Rare, distinctive names: each written in kanji and in katakana.
FAMILY_NAMES = (
    ("鷹栖", "タカス"),
    ("勅使河原", "テシガワラ"),
    ("小鳥遊", "タカナシ"),
    ("月見里", "ヤマナシ"),
    ("東海林", "ショウジ"),
    ("御手洗", "ミタライ"),
    ("百目鬼", "ドウメキ"),
    ("九十九", "ツクモ"),
    ("五百旗頭", "イオキベ"),
    ("薬袋", "ミナイ"),
    ("十八女", "サカリ"),
    ("忽那", "クツナ"),
    ("纐纈", "コウケツ"),
    ("廿楽", "ツヅラ"),
    ("四十物", "アイモノ"),
    ("栗花落", "ツユリ"),
)
MOTHER_GIVEN = (
    ("澪音", "ミオネ"),
    ("琥珀", "コハク"),
    ("紬希", "ツムギ"),
    ("雫玖", "シズク"),
    ("瑠璃葉", "ルリハ"),
    ("翠霞", "スイカ"),
    ("朱鷺子", "トキコ"),
    ("絃葉", "イトハ"),
    ("菫璃", "スミレ"),
    ("灯莉", "アカリ"),
    ("鈴蘭", "スズラン"),
    ("千颯", "チハヤ"),
)
CHILD_GIVEN = (
    ("颯蓮", "ソウレン"),
    ("翔瑛", "ショウエイ"),
    ("湊斗", "ミナト"),
    ("蒼逸", "ソウイツ"),
    ("璃久", "リク"),
    ("椛音", "モミネ"),
    ("芽吹", "メブキ"),
    ("陽葵", "ヒマリ"),
    ("詩乃", "シノ"),
    ("結蘭", "ユラン"),
    ("暁仁", "アキヒト"),
    ("凪紗", "ナギサ"),
)
STREETS = ("鷺ノ宮通り", "風待坂", "雲雀ヶ丘", "藤袴町", "柊木台", "蛍川原", "萩ノ辻", "葵ヶ森")
NOTE_WORDS = ("蒼穹", "ゆずりは", "瑠璃鶲", "霧雨", "稲穂", "ひなげし", "琥珀糖", "白詰草")

# 出生: (gestation days, birth weight g) for singletons. Most are term and of
# ordinary weight; a few preterm; rare extremes at both ends.
TERM_DAYS = (262, 266, 270, 273, 276, 278, 280, 282, 284, 287, 289)
EXTREMES = ((176, 690), (298, 4620))  # 25w1d 690 g; 42w4d 4620 g


@dataclass
class PersonFacts:
    """What the world knows of one person (never read from the release)."""

    patient_id: uuid.UUID
    kind: str  # "mother" | "child"
    family: int  # index of the family
    mode: str  # "all" | "some" | "withdrawn" | "never" | "outside"
    municipality_code: str
    birth_date: date
    sex: str  # "female" | "male"
    birth_weight_g: int | None = None  # children
    gestation_days: int | None = None  # children: at birth
    babies: int | None = None  # children: of the delivery; mothers: of theirs
    delivery_days: int | None = None  # mothers: gestation at the delivery
    lmp: date | None = None  # mothers
    consented: tuple[str, ...] = ()  # categories in force (the newest choice)


@dataclass
class World:
    municipalities: list[Organization]  # the ones a project may cover
    outside: Organization  # a municipality no project covers
    clinic: Organization
    clinic_staff: User
    persons: dict[uuid.UUID, PersonFacts] = field(default_factory=dict)
    # every direct identifier string written, by kind: name, kana, number,
    # address, email, phone, note, device, uuid
    identifiers: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    accounts: dict[uuid.UUID, User] = field(default_factory=dict)  # mother id → her account
    children_of: dict[uuid.UUID, list[uuid.UUID]] = field(default_factory=dict)

    def ids(self, *, mode: str | None = None, kind: str | None = None) -> set[uuid.UUID]:
        return {
            p.patient_id
            for p in self.persons.values()
            if (mode is None or p.mode == mode) and (kind is None or p.kind == kind)
        }

    @property
    def consented(self) -> set[uuid.UUID]:
        """In a project's municipality and consented to at least one category."""
        return self.ids(mode="all") | self.ids(mode="some")

    @property
    def withdrawn(self) -> set[uuid.UUID]:
        return self.ids(mode="withdrawn")

    @property
    def never(self) -> set[uuid.UUID]:
        return self.ids(mode="never")

    @property
    def outside_ids(self) -> set[uuid.UUID]:
        return self.ids(mode="outside")

    @property
    def municipality_ids(self) -> list[int]:
        return [m.pk for m in self.municipalities]

    def store_ids(self) -> set[str]:
        """The store's own ids (patients and every resource of theirs)."""
        ids = {str(pid) for pid in self.persons}
        rows = Resource.objects.filter(compartments__overlap=list(self.persons)).values_list(
            "id", flat=True
        )
        return ids | {str(r) for r in rows}


# --------------------------------------------------------------------------
# Numbers: long, distinctive, unique in the world
# --------------------------------------------------------------------------


class _Numbers:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.seen: set[str] = set()

    def digits(self, n: int, *, lead: str = "") -> str:
        while True:
            tail = "".join(self.rng.choice("0123456789") for _ in range(n - len(lead)))
            value = lead + tail
            # no long runs of one digit: nothing a count or a date could be
            if value not in self.seen and not any(c * 4 in value for c in "0123456789"):
                self.seen.add(value)
                return value


def _municipality(code_head: str, name: str) -> Organization:
    code = code_head + municipality_check_digit(code_head)
    org = Organization.objects.filter(kind=Organization.Kind.MUNICIPALITY, code=code).first()
    if org is None:
        org = Organization(kind=Organization.Kind.MUNICIPALITY, code=code, name=name)
        org.full_clean()
        org.save()
    return org


# --------------------------------------------------------------------------
# The world
# --------------------------------------------------------------------------


def _modes(families: int, mix: dict[str, int] | None) -> list[str]:
    """One mode per family: `mix` gives counts of the excluded modes; the
    rest consent to all."""
    mix = dict(mix or {"some": max(1, families // 10), "withdrawn": 2, "never": 2})
    out: list[str] = []
    for mode in ("some", "withdrawn", "never"):
        out += [mode] * mix.get(mode, 0)
    out += ["all"] * (families - len(out))
    return out


def build_world(
    *,
    families: int = 80,
    municipalities: int = 2,
    outside_families: int = 2,
    mix: dict[str, int] | None = None,
    twins: int = 1,
    extremes: bool = True,
    birth_year: int = 2025,
    mother_birth_years: tuple[int, ...] = (1991, 1992, 1993),
    seed: int = 20261126,
    vitals: bool = True,
    notes: bool = True,
) -> World:
    """Write the world; see the module's docstring. `families` are in the
    project municipalities (their modes from `mix`, the rest "all"),
    `outside_families` more (all consented) in a municipality outside any
    project. `twins` families have twins; with `extremes` one family's
    baby is very preterm and very light and one's post-term and heavy.

    The defaults give about 165 persons of whom about 155 take part: the
    twins' and the extremes' families (7 persons) are the rare ones a
    release must generalize or suppress (under 5%). Worlds built in one
    test database need different seeds (the seed picks the codes of the
    municipalities and the numbers)."""
    rng = random.Random(seed)
    numbers = _Numbers(rng)
    salt = rng.randrange(100, 900)
    munis = [
        _municipality(f"10{salt + i:03d}", f"{STREETS[i][:2]}町") for i in range(municipalities)
    ]
    outside = _municipality(f"13{salt:03d}", "遠方村")
    clinic = factories.ClinicFactory()
    staff = factories.make_member(Role.CLINIC_STAFF, clinic)
    world = World(municipalities=munis, outside=outside, clinic=clinic, clinic_staff=staff)

    modes = _modes(families, mix)
    rng.shuffle(modes)
    modes += ["outside"] * outside_families
    total = len(modes)
    twin_families = set(rng.sample(range(total - outside_families), min(twins, total)))
    extreme_families: dict[int, tuple[int, int]] = {}
    if extremes:
        rest = [i for i in range(total - outside_families) if i not in twin_families]
        for pair, index in zip(EXTREMES, rng.sample(rest, 2), strict=True):
            extreme_families[index] = pair

    staged_clinic: list[store.Staged] = []
    staged_municipal: dict[str, list[store.Staged]] = defaultdict(list)
    choices: list[ResearchChoice] = []
    today = dj_timezone.localdate()
    for index, mode in enumerate(modes):
        municipality = outside if mode == "outside" else munis[index % len(munis)]
        _family(
            world,
            rng=rng,
            numbers=numbers,
            index=index,
            mode=mode,
            municipality=municipality,
            twins=index in twin_families,
            extreme=extreme_families.get(index),
            birth_year=birth_year,
            mother_birth_years=mother_birth_years,
            today=today,
            staged_clinic=staged_clinic,
            staged_municipal=staged_municipal,
            choices=choices,
            vitals=vitals,
            notes=notes,
        )
    if staged_clinic:
        provenance = services.provenance_create(
            origin=Provenance.Origin.CLINIC, organization=clinic, source="clinic:prenatal-visit"
        )
        store.write_staged(store_dedupe(staged_clinic), provenance=provenance, copy=True)
    for code, staged in staged_municipal.items():
        org = Organization.objects.get(kind=Organization.Kind.MUNICIPALITY, code=code)
        provenance = services.provenance_create(
            origin=Provenance.Origin.MUNICIPALITY, organization=org, source="municipal:upload"
        )
        store.write_staged(store_dedupe(staged), provenance=provenance, copy=True)
    ResearchChoice.objects.bulk_create(choices)
    return world


def store_dedupe(items: list[store.Staged]) -> list[store.Staged]:
    seen: dict[uuid.UUID, store.Staged] = {}
    for item in items:
        seen[item.id] = item
    return list(seen.values())


def _name(rng: random.Random, index: int, table: tuple[tuple[str, str], ...]) -> tuple[str, str]:
    return table[(index + rng.randrange(len(table))) % len(table)]


def _family(
    world: World,
    *,
    rng: random.Random,
    numbers: _Numbers,
    index: int,
    mode: str,
    municipality: Organization,
    twins: bool,
    extreme: tuple[int, int] | None,
    birth_year: int,
    mother_birth_years: tuple[int, ...],
    today: date,
    staged_clinic: list[store.Staged],
    staged_municipal: dict[str, list[store.Staged]],
    choices: list[ResearchChoice],
    vitals: bool,
    notes: bool,
) -> None:
    ids = world.identifiers
    clinic = world.clinic
    family, family_kana = FAMILY_NAMES[index % len(FAMILY_NAMES)]
    given, given_kana = _name(rng, index, MOTHER_GIVEN)
    resident = numbers.digits(12, lead="9")
    mch = f"{municipality.code}-{birth_year - 1}-{numbers.digits(6, lead='7')}"
    insurance = f"{numbers.digits(4, lead='6')}-{numbers.digits(9, lead='8')}"
    clinic_number = numbers.digits(11, lead="5")
    phone = f"090-{numbers.digits(4, lead='7')}-{numbers.digits(4, lead='3')}"
    email = f"mother{index:03d}.{numbers.digits(7, lead='2')}@example-family.jp"
    street = STREETS[rng.randrange(len(STREETS))]
    block = f"{rng.randrange(2, 9)}丁目{rng.randrange(11, 60)}番{rng.randrange(3, 30)}号"
    address = f"群馬県{municipality.name}{street}{block}"
    postal = f"{numbers.digits(3, lead='3')}-{numbers.digits(4, lead='8')}"
    mother_birth = date(
        mother_birth_years[index % len(mother_birth_years)],
        rng.randrange(1, 13),
        rng.randrange(1, 29),
    )
    ids["name"] |= {family, given, f"{family}{given}", f"{family} {given}"}
    ids["kana"] |= {
        family_kana,
        given_kana,
        f"{family_kana}{given_kana}",
        f"{family_kana} {given_kana}",
    }
    ids["number"] |= {resident, mch, insurance, clinic_number, postal}
    ids["phone"].add(phone)
    ids["email"].add(email)
    ids["address"] |= {address, f"{street}{block}"}

    resource = services.patient_resource(
        family=family,
        given=given,
        family_kana=family_kana,
        given_kana=given_kana,
        birth_date=mother_birth,
        gender="female",
        identifiers=[
            {
                "system": services.RESIDENT_NUMBER_SYSTEM.format(
                    municipality_code=municipality.code
                ),
                "value": resident,
            },
            {
                "system": services.MCH_HANDBOOK_SYSTEM.format(municipality_code=municipality.code),
                "value": mch,
            },
            {"system": clinic_services.clinic_patient_system(clinic), "value": clinic_number},
            {"system": "urn:hagukumi:insurance-number", "value": insurance},
        ],
    )
    resource["telecom"] = [
        {"system": "phone", "value": phone, "use": "mobile"},
        {"system": "email", "value": email},
    ]
    resource["address"] = [
        {"text": address, "postalCode": postal, "state": "群馬県", "city": municipality.name}
    ]
    registered = services.provenance_create(
        origin=Provenance.Origin.CLINIC,
        user=world.clinic_staff,
        organization=clinic,
        source="clinic:register",
    )
    mother = services.patient_create(
        kind=Patient.Kind.ADULT, resource=resource, provenance=registered
    )
    services.residency_add(
        patient=mother,
        municipality=municipality,
        resident_number=resident,
        valid_from=date(2015, 4, 1),
    )

    # The birth: the babies, their weights and the gestation.
    born = date(birth_year, 1, 1) + timedelta(days=rng.randrange(0, 365))
    if index % 9 == 4:  # some births right at the New Year
        born = date(birth_year, 12, 31) - timedelta(days=rng.randrange(0, 3))
    elif index % 9 == 7:
        born = date(birth_year, 1, 1) + timedelta(days=rng.randrange(0, 3))
    if extreme is not None:
        gestation, weights = extreme[0], [extreme[1]]
    elif twins:
        gestation = rng.choice((245, 250, 252, 255, 258))
        weights = [rng.randrange(1900, 2500, 10), rng.randrange(1900, 2500, 10)]
    else:
        gestation = rng.choice(TERM_DAYS)
        weights = [rng.randrange(2650, 3800, 10)]
    born = min(born, today - timedelta(days=40))
    lmp = born - timedelta(days=gestation)
    due = lmp + timedelta(days=prenatal.PREGNANCY_DAYS)
    # twins of one sex here (identical twins): a pair of two sexes would
    # be two classes of one
    sexes = [rng.choice(("male", "female"))] * len(weights)

    # The pregnancy and its visits (clinic records, written in bulk below).
    ref = clinic_services.clinic_ref(clinic)
    episode_source = store.Source(
        prenatal.prenatal_system(clinic.code), prenatal.episode_source_value(mother.pk, due)
    )
    episode_id = store.source_resource_id("EpisodeOfCare", episode_source)
    staged_clinic.append(
        store.stage(
            prenatal.pregnancy_episode(patient_id=mother.pk, due_date=due, clinic=ref),
            source=episode_source,
        )
    )
    staged_clinic.append(
        store.stage(
            prenatal.due_date_observation(
                patient_id=mother.pk, due_date=due, recorded_on=lmp + timedelta(weeks=9)
            ),
            source=store.Source(
                prenatal.prenatal_system(clinic.code), prenatal.due_date_source_value(episode_id)
            ),
        )
    )
    pre_weight = Decimal(rng.randrange(460, 640)) / 10
    height = Decimal(rng.randrange(1520, 1700)) / 10
    for number, weeks in enumerate(
        w for w in (9, 12, 16, 20, 24, 28, 32, 35, 37) if w * 7 < gestation
    ):
        visit_day = lmp + timedelta(days=weeks * 7 + rng.randrange(0, 5))
        note = ""
        if number == 0:
            token = f"{NOTE_WORDS[index % len(NOTE_WORDS)]}{numbers.digits(5, lead='4')}"
            note = f"{family}{given}さん、初診。{token}の件を相談"
            ids["note"] |= {note, token}
        visit = prenatal.Visit(
            visit_date=visit_day,
            due_date=due,
            systolic=rng.randrange(100, 128),
            diastolic=rng.randrange(58, 80),
            weight=pre_weight + Decimal(max(0, weeks - 12)) * Decimal("0.3"),
            fundal_height=Decimal(max(weeks - 2, 8)) if weeks >= 16 else None,
            fetal_heart_rate=rng.randrange(125, 155) if weeks >= 12 else None,
            pre_pregnancy_weight=pre_weight if number == 0 else None,
            height=height if number == 0 else None,
            notes=note,
        )
        for resource, source in prenatal.visit_resources(
            visit=visit, patient_id=mother.pk, clinic=ref, episode_id=episode_id
        ):
            staged_clinic.append(store.stage(resource, source=source))
    # The delivery: the clinic's own service, which needs the episode stored.
    store.write_staged(store_dedupe(staged_clinic), provenance=registered, copy=False)
    staged_clinic.clear()
    delivery = prenatal.Delivery(
        born_at=datetime(born.year, born.month, born.day, 10, 30, tzinfo=JST),
        gestation_days=gestation,
        mode=rng.choice(("spontaneous", "spontaneous", "vacuum", "cesarean-emergency"))
        if len(weights) == 1
        else "cesarean-planned",
        labor_minutes=rng.randrange(120, 900),
        blood_loss_ml=rng.randrange(150, 700),
        transfusion=False,
        babies=tuple(
            prenatal.Baby(
                sex=sex,
                weight_g=weight,
                length_cm=Decimal(rng.randrange(330, 530)) / 10,
                apgar_1=rng.randrange(6, 10),
                apgar_5=rng.randrange(8, 11),
            )
            for sex, weight in zip(sexes, weights, strict=True)
        ),
    )
    result = clinic_services.delivery_record(user=world.clinic_staff, mother=mother, data=delivery)

    # Her account (after the clinic's records: she links it later), and
    # guardianship of the children.
    # no password (a hash costs 0.2 s each): these accounts never sign in
    account = User(email=email, display_name=f"{family} {given}")
    account.set_unusable_password()
    account.save()
    mother.account = account
    mother.save(update_fields=["account"])
    world.accounts[mother.pk] = account
    consented = _consented(mode, "mother")
    world.persons[mother.pk] = PersonFacts(
        patient_id=mother.pk,
        kind="mother",
        family=index,
        mode=mode,
        municipality_code=municipality.code,
        birth_date=mother_birth,
        sex="female",
        babies=len(weights),
        delivery_days=gestation,
        lmp=lmp,
        consented=consented,
    )
    _choices(choices, mother, account, mode, consented)

    children: list[Patient] = []
    for number, outcome in enumerate(result.babies):
        child = outcome.child
        children.append(child)
        services.guardianship_add(
            guardian=account, child=child, relationship="mother", valid_from=born
        )
        c_given, c_given_kana = _name(rng, index + number * 5, CHILD_GIVEN)
        c_resident = numbers.digits(12, lead="9")
        c_mch = f"{municipality.code}-{born.year}-{numbers.digits(6, lead='7')}"
        ids["name"] |= {c_given, f"{family}{c_given}", f"{family} {c_given}"}
        ids["kana"] |= {
            c_given_kana,
            f"{family_kana}{c_given_kana}",
            f"{family_kana} {c_given_kana}",
        }
        ids["number"] |= {c_resident, c_mch}
        municipal = services.provenance_create(
            origin=Provenance.Origin.MUNICIPALITY,
            organization=municipality,
            source="municipal:register",
        )
        store.record_write(
            services.patient_resource(
                family=family,
                given=c_given,
                family_kana=family_kana,
                given_kana=c_given_kana,
                birth_date=born,
                gender=sexes[number],
                identifiers=[
                    {
                        "system": services.RESIDENT_NUMBER_SYSTEM.format(
                            municipality_code=municipality.code
                        ),
                        "value": c_resident,
                    },
                    {
                        "system": services.MCH_HANDBOOK_SYSTEM.format(
                            municipality_code=municipality.code
                        ),
                        "value": c_mch,
                    },
                ],
            ),
            provenance=municipal,
            resource_id=child.pk,
        )
        services.residency_add(
            patient=child, municipality=municipality, resident_number=c_resident, valid_from=born
        )
        person = Person(
            kind="child",
            municipality_code=municipality.code,
            resident_number=c_resident,
            family=family,
            given=c_given,
            family_kana=family_kana,
            given_kana=c_given_kana,
            birth_date=born,
            sex=sexes[number],
            mch_handbook_number=c_mch,
        )
        staged_municipal[municipality.code] += _checkups(
            rng, person, child.pk, born, weights[number], gestation, today
        )
        staged_municipal[municipality.code] += _vaccinations(
            person, child.pk, born, today, some=mode == "some"
        )
        c_consented = _consented(mode, "child")
        world.persons[child.pk] = PersonFacts(
            patient_id=child.pk,
            kind="child",
            family=index,
            mode=mode,
            municipality_code=municipality.code,
            birth_date=born,
            sex=sexes[number],
            birth_weight_g=weights[number],
            gestation_days=gestation,
            babies=len(weights),
            consented=c_consented,
        )
        _choices(choices, child, account, mode, c_consented)
    world.children_of[mother.pk] = [c.pk for c in children]

    if vitals:
        _vitals(world, rng, numbers, mother, children, account, mode, lmp, born, today)
    if notes:
        for patient in (mother, *children):
            token = f"{NOTE_WORDS[(index + 3) % len(NOTE_WORDS)]}{numbers.digits(6, lead='4')}"
            text = f"{family}家の記録：{token}、{given}より"
            ids["note"] |= {text, token}
            handbook_services.note_write(
                user=account, patient=patient, day=born + timedelta(days=20), text=text
            )


def _consented(mode: str, kind: str) -> tuple[str, ...]:
    if mode in ("all", "outside"):
        return tuple(RESEARCH_CATEGORIES)
    if mode == "some":
        return SOME_MOTHER if kind == "mother" else SOME_CHILD
    return ()


def _choices(
    out: list[ResearchChoice], patient: Patient, user: User, mode: str, consented: tuple[str, ...]
) -> None:
    decided = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)
    if mode == "never":
        return
    categories = RESEARCH_CATEGORIES if mode == "withdrawn" else consented
    for category in categories:
        out.append(
            ResearchChoice(
                patient=patient,
                category=category,
                choice=ResearchChoice.Choice.CONSENT,
                decided_by=user,
                decided_at=decided,
            )
        )
    if mode == "some":  # and said no to the others
        for category in RESEARCH_CATEGORIES:
            if category not in consented:
                out.append(
                    ResearchChoice(
                        patient=patient,
                        category=category,
                        choice=ResearchChoice.Choice.REFUSE,
                        decided_by=user,
                        decided_at=decided,
                    )
                )
    if mode == "withdrawn":
        for category in RESEARCH_CATEGORIES:
            out.append(
                ResearchChoice(
                    patient=patient,
                    category=category,
                    choice=ResearchChoice.Choice.REFUSE,
                    decided_by=user,
                    decided_at=decided + timedelta(days=120),
                )
            )


# --------------------------------------------------------------------------
# Municipal records of a child
# --------------------------------------------------------------------------

# (checkup code, age in days) — inside each checkup's accepted months
CHECKUPS = (("1m", 33), ("3-4m", 110), ("6-7m", 200), ("9-10m", 290), ("18m", 555))
# (vaccine code, dose number, age in days)
DOSES = (
    ("hepb", 1, 62),
    ("dtap-ipv-hib", 1, 63),
    ("pcv20", 1, 63),
    ("rv1", 1, 63),
    ("hepb", 2, 92),
    ("dtap-ipv-hib", 2, 93),
    ("pcv20", 2, 93),
    ("rv1", 2, 93),
    ("dtap-ipv-hib", 3, 124),
    ("pcv20", 3, 124),
    ("bcg", 1, 160),
    ("hepb", 3, 220),
    ("dtap-ipv-hib", 4, 320),
    ("pcv20", 4, 370),
    ("mr", 1, 372),
    ("varicella", 1, 380),
    ("varicella", 2, 560),
)


def _growth(age_days: int, birth_weight_g: int) -> tuple[Decimal, Decimal, Decimal]:
    months = age_days / 30.4375
    weight = birth_weight_g / 1000 + min(months, 3) * 0.95 + max(0.0, min(months, 12) - 3) * 0.4
    weight += max(0.0, months - 12) * 0.2
    length = (
        49
        + min(months, 3) * 3.7
        + max(0.0, min(months, 12) - 3) * 1.4
        + max(0.0, months - 12) * 0.9
    )
    head = 33.5 + min(months, 6) * 1.6 + max(0.0, months - 6) * 0.3
    return (
        Decimal(f"{weight:.2f}"),
        Decimal(f"{length:.1f}"),
        Decimal(f"{head:.1f}"),
    )


def _checkups(
    rng: random.Random,
    person: Person,
    child_id: uuid.UUID,
    born: date,
    birth_weight_g: int,
    gestation: int,
    today: date,
) -> list[store.Staged]:
    fmt = infant_checkup.FORMAT
    system = fmt.source_system(person.municipality_code)
    out: list[store.Staged] = []
    for code, age in CHECKUPS:
        day = born + timedelta(days=age + rng.randrange(0, 6))
        if day > today:
            continue
        weight, length, head = _growth(age, birth_weight_g)
        values: dict[str, Any] = {
            "kind": code,
            "date": day,
            "body_weight": weight,
            "body_height": length,
            "head_circumference": head,
        }
        if code == "1m":  # the municipality's birth data, as the upload row gives them
            values["birth_weight"] = Decimal(birth_weight_g)
            values["gestational_age"] = (gestation // 7, gestation % 7)
        key = f"{person.resident_number}|{code}|{day.isoformat()}"
        record = MunicipalRecord(line=1, change="add", key=key, subject=person, values=values)
        for item, resource in fmt.resources(record, str(child_id), None):
            out.append(store.stage(resource, source=store.Source(system, f"{key}#{item}")))
    return out


def _vaccinations(
    person: Person, child_id: uuid.UUID, born: date, today: date, *, some: bool
) -> list[store.Staged]:
    fmt = vaccination.FORMAT
    system = fmt.source_system(person.municipality_code)
    doses = list(DOSES)
    if some:
        doses.append((MARKER_CHILD_SOME_VACCINE, 1, 200))
    out: list[store.Staged] = []
    for code, number, age in doses:
        day = born + timedelta(days=age)
        if day > today:
            continue
        v = vaccination.VACCINES[code]
        values = {
            "vaccine": code,
            "dose_number": number,
            "series_label": v.series_of(number).label,
            "date": day,
            "lot_number": f"LOT{day:%y%m}{number}",
        }
        key = f"{person.resident_number}|{code}|{number}"
        record = MunicipalRecord(line=1, change="add", key=key, subject=person, values=values)
        for item, resource in fmt.resources(record, str(child_id), None):
            out.append(store.stage(resource, source=store.Source(system, f"{key}#{item}")))
    return out


# --------------------------------------------------------------------------
# Home vitals from registered devices
# --------------------------------------------------------------------------


def _vitals(
    world: World,
    rng: random.Random,
    numbers: _Numbers,
    mother: Patient,
    children: list[Patient],
    account: User,
    mode: str,
    lmp: date,
    born: date,
    today: date,
) -> None:
    now = dj_timezone.now()

    def at(day: date) -> datetime:
        return datetime(day.year, day.month, day.day, 7, rng.randrange(0, 59), tzinfo=JST)

    def register(patient: Patient, label: str) -> vital_records.DeviceRef:
        name = f"{label} HGK-{numbers.digits(9, lead='8')}"
        device, secret = vital_devices.device_register(
            patient=patient, by=account, name=name, kind="device"
        )
        world.identifiers["device"] |= {name, str(device.pk), secret, device.token_prefix}
        return vital_records.DeviceRef(id=str(device.pk), display=name)

    readings: list[tuple[Patient, vital_records.DeviceRef, vital_records.Reading]] = []
    cuff = register(mother, "血圧計")
    for week in range(16, 41, 2):
        day = lmp + timedelta(days=week * 7 + rng.randrange(0, 7))
        if day >= born:
            break
        readings.append(
            (
                mother,
                cuff,
                vital_records.reading(
                    vital_records.BLOOD_PRESSURE,
                    taken_at=at(day),
                    systolic=rng.randrange(102, 130),
                    diastolic=rng.randrange(60, 84),
                ),
            )
        )
        readings.append(
            (
                mother,
                cuff,
                vital_records.reading(
                    vital_records.BODY_WEIGHT,
                    Decimal(rng.randrange(520, 700)) / 10,
                    taken_at=at(day) + timedelta(minutes=2),
                ),
            )
        )
    for week in (2, 6, 10):  # after the birth: her own age counts then
        day = born + timedelta(days=week * 7)
        if day < today:
            readings.append(
                (
                    mother,
                    cuff,
                    vital_records.reading(
                        vital_records.BLOOD_PRESSURE,
                        taken_at=at(day),
                        systolic=rng.randrange(100, 125),
                        diastolic=rng.randrange(60, 80),
                    ),
                )
            )
    mother_marker, child_marker = MARKERS.get(mode, (None, None))
    if mother_marker is not None:
        for week in (20, 24, 28):
            day = lmp + timedelta(days=week * 7)
            taken = at(day) + timedelta(minutes=5)
            if mother_marker == vital_records.STEP_COUNT:
                start = datetime(day.year, day.month, day.day, tzinfo=JST)
                value = vital_records.reading(
                    mother_marker,
                    Decimal(rng.randrange(3000, 9000)),
                    taken_at=start,
                    until=start + timedelta(days=1),
                )
            else:
                number = {
                    vital_records.BLOOD_GLUCOSE: rng.randrange(80, 140),
                    vital_records.HEART_RATE: rng.randrange(64, 96),
                    vital_records.FETAL_MOVEMENT: rng.randrange(10, 40),
                }[mother_marker]
                value = vital_records.reading(mother_marker, Decimal(number), taken_at=taken)
            readings.append((mother, cuff, value))
    for child in children:
        scale = register(child, "ベビースケール")
        birth_weight = world.persons[child.pk].birth_weight_g or 3000
        for week in range(1, 27, 2):
            day = born + timedelta(days=week * 7 + rng.randrange(0, 7))
            if day >= today:
                break
            grams = birth_weight + week * 170 + rng.randrange(-60, 60)
            readings.append(
                (
                    child,
                    scale,
                    vital_records.reading(
                        vital_records.BODY_WEIGHT,
                        Decimal(grams),
                        unit="g",
                        taken_at=at(day),
                    ),
                )
            )
        if child_marker is not None:
            number = {
                vital_records.BODY_TEMPERATURE: Decimal("36.8"),
                vital_records.BODY_LENGTH: Decimal("55.5"),
                vital_records.HEAD_CIRCUMFERENCE: Decimal("38.5"),
            }[child_marker]
            for week in (6, 8):
                taken = at(born + timedelta(days=week * 7)) + timedelta(minutes=3)
                readings.append(
                    (child, scale, vital_records.reading(child_marker, number, taken_at=taken))
                )
    readings = [r for r in readings if r[2].taken_at < now]
    by_device: dict[str, list[store.Staged]] = defaultdict(list)
    devices: dict[str, vital_records.DeviceRef] = {}
    for patient, device, value in readings:
        devices[device.id] = device
        by_device[device.id].append(
            vital_records.vital_staged(
                patient_id=patient.pk, reading=value, source=device.source, device=device
            )
        )
    for device_id, staged in by_device.items():
        provenance = vital_records.vitals_provenance(user=account, device=devices[device_id])
        vital_records.vitals_write_staged(staged, provenance=provenance, copy=True, notify=False)


# --------------------------------------------------------------------------
# A project over the world
# --------------------------------------------------------------------------


def approved_project(
    world: World,
    *,
    publish: bool = False,
    categories: tuple[str, ...] = RESEARCH_CATEGORIES,
    cohort_kind: str = "both",
    municipalities: list[Organization] | None = None,
    birth_years: tuple[int, int] = (2020, 2026),
    period: tuple[date, date] = (date(2023, 1, 1), date(2026, 12, 31)),
    title: str = "周産期と乳児の発育",
) -> ResearchProject:
    """A project through the portal's own services (sharing.research): a
    researcher of a new institution applies (k 5, or 10 when `publish`),
    two platform admins approve. `project.applicant` is the researcher."""
    from sharing import research

    institution = factories.ClinicFactory(
        kind=Organization.Kind.RESEARCH, code=f"RES-{uuid.uuid4().hex[:8]}"
    )
    researcher = factories.make_member(Role.RESEARCHER, institution)
    project = research.project_apply(
        user=researcher,
        title=title,
        ethics_approval_number=f"ETH-{uuid.uuid4().hex[:6]}",
        purpose="低出生体重と発育の関連",
        categories=categories,
        cohort_kind=cohort_kind,
        municipalities=municipalities or world.municipalities,
        birth_year_from=birth_years[0],
        birth_year_to=birth_years[1],
        period_start=period[0],
        period_end=period[1],
        publish=publish,
        organization=institution,
    )
    for _ in range(2):
        admin = factories.UserFactory(is_platform_admin=True)
        factories.enable_totp(admin)
        research.project_review(
            user=admin,
            project=project,
            decision=ResearchApproval.Decision.APPROVE,
            expires_on=dj_timezone.localdate() + timedelta(days=180),
        )
    project.refresh_from_db()
    return project
