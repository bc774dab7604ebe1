"""Reads for the digital MCH handbook (母子健康手帳): the handbook of a child
and of a mother's pregnancies, shaped like the paper handbook's pages.

Every query here is filtered by `sharing.access.visible_records(user,
purpose)`: these functions never decide who may see what, they only shape
what the policy point lets through (the views authorize and audit with
`access_patient`). A handbook page runs a fixed number of queries whatever
the number of records (tests/phr/test_handbook_queries.py): the checkups,
vaccinations and notes in one, the latest medicines in one, the latest home
measurements in one — never one query per record.

Where an item came from is its Provenance (municipality, clinic, pharmacy,
device, the family); the organization's name, or the name the record
itself carries (a school, a vaccinating clinic written as text).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from django.db.models import F, Q
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe
from django.utils.translation import get_language, gettext, pgettext_lazy

from phr import selectors, terminology
from phr.indexing import fhir_local_date, patient_id_from_reference
from phr.models import Patient, Provenance, Resource
from phr.selectors import JAPAN, SOURCE_LABELS, PregnancySummary
from phr.terminology import Category
from sharing.access import Purpose, visible_records

# The handbook is the family's own book: it shows what the family's own
# grants (self, guardian) let them see (docs/decisions/0014-handbook.md).
PURPOSE = Purpose.PERSONAL

# Codes the family's own records carry (phr/handbook_services.py writes them).
HANDBOOK_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/handbook"
NOTE_CODE = "parent-note"
NOTE_TOKEN = f"{HANDBOOK_SYSTEM}|{NOTE_CODE}"

CHECKUP_TYPE_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/infant-checkup"
SCHOOL_CHECKUP_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/school-checkup"
SCHOOL_GRADE_SYSTEM = "https://hagukumi.jp/fhir/CodeSystem/school-grade"
ENCOUNTER_TYPE_DELIVERY = "delivery"

# The infant checkups of the paper handbook, in its order
# (../shared/reference/data/infant_checkups_jp.csv; the codes of
# municipal_data/formats/infant_checkup.py and phr/demo.py).
CHECKUP_KINDS = (
    ("1m", pgettext_lazy("checkup", "1-month checkup")),
    ("3-4m", pgettext_lazy("checkup", "3–4-month checkup")),
    ("6-7m", pgettext_lazy("checkup", "6–7-month checkup")),
    ("9-10m", pgettext_lazy("checkup", "9–10-month checkup")),
    ("18m", pgettext_lazy("checkup", "18-month checkup")),
    ("3y", pgettext_lazy("checkup", "3-year checkup")),
    ("5y", pgettext_lazy("checkup", "5-year checkup")),
)
_KIND_ORDER = {code: n for n, (code, _label) in enumerate(CHECKUP_KINDS)}

# Birth data (出産の状態 / 出生時の記録), in the paper handbook's order.
BIRTH_ITEMS = (
    "gestational_age",
    "birth_weight",
    "body_length",
    "head_circumference",
    "chest_circumference",
    "apgar_1min",
    "apgar_5min",
)
# A checkup's measurements first (身長, 体重, 頭囲, 胸囲 as the MHLW minimum set
# orders them), findings after, the overall judgement last.
ITEM_ORDER = {
    key: n
    for n, key in enumerate(
        (
            "gestational_age",
            "body_length",
            "body_height",
            "body_weight",
            "head_circumference",
            "chest_circumference",
            "bp_panel",
            "fundal_height",
            "abdominal_circumference",
            "edema",
            "school_vision_right",
            "school_vision_left",
            "school_vision_right_corrected",
            "school_vision_left_corrected",
            "hearing_right",
            "hearing_left",
            "caries_untreated",
            "caries_treated",
            "missing_permanent_teeth",
            "urine_protein",
            "urine_glucose",
            "urine_occult_blood",
        )
    )
}
LAST = 1000
JUDGEMENT_ORDER = 2000

MEDICINES_SHOWN = 20
HOME_MEASUREMENTS_SHOWN = 10
HOME_MEASUREMENTS_DAYS = 90
MEDICINE_TYPES = ("MedicationDispense", "MedicationStatement")


# --------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where a record came from."""

    origin: str  # a Provenance.Origin value
    label: str
    organization: str

    @property
    def parent_entered(self) -> bool:
        return self.origin == Provenance.Origin.SELF

    @property
    def badge(self) -> str:
        """The source as the page shows it (templates/phr/handbook/
        _source.html, built here: a page shows a few hundred of them and an
        include per item would cost more than the rest of the row)."""
        html = format_html(
            '<span class="hb-source"><span class="badge badge-{}"><span class="visually-hidden">'
            "{}: </span>{}</span>",
            self.origin,
            gettext("Source"),
            self.label,
        )
        if self.organization:
            html += format_html(' <span class="hb-org">{}</span>', self.organization)
        if self.parent_entered:
            html += format_html(
                ' <span class="hb-parent-entered">{}</span>', gettext("Entered by a parent")
            )
        return mark_safe(html + "</span>")  # noqa: S308 (every part escaped by format_html)


@dataclass(frozen=True)
class Item:
    """One measurement or finding."""

    id: uuid.UUID
    key: str  # the dictionary item key, or ""
    label: str
    value: str
    day: date | None
    source: Source


@dataclass
class Checkup:
    """One checkup (an Encounter) with what was measured and found at it."""

    id: uuid.UUID
    kind: str  # infant checkup code, "school", "prenatal", "delivery" or ""
    title: str
    day: date | None
    age: str
    provider: str
    source: Source
    items: list[Item] = field(default_factory=list)

    @property
    def parent_entered(self) -> bool:
        return self.source.parent_entered


@dataclass
class CheckupGroup:
    kind: str
    title: str
    checkups: list[Checkup] = field(default_factory=list)


@dataclass(frozen=True)
class Vaccination:
    id: uuid.UUID
    vaccine_code: str
    label: str
    dose: str
    day: date | None
    age: str
    performer: str
    lot: str
    source: Source
    editable: bool = False  # reported by the user who reads it (may delete it)


@dataclass(frozen=True)
class Medicine:
    id: uuid.UUID
    kind: str  # "dispensed" or "taken"
    label: str
    amount: str
    day: date | None
    by: str  # the pharmacy or prescriber named in the record
    source: Source


@dataclass(frozen=True)
class Note:
    id: uuid.UUID
    day: date | None
    text: str
    source: Source
    editable: bool  # written by the user who reads it


@dataclass(frozen=True)
class BirthRow:
    key: str
    label: str
    items: list[Item]


@dataclass(frozen=True)
class GrowthRow:
    """One day's body measurements (身体発育の記録), from any checkup."""

    day: date | None
    age: str
    height: str
    weight: str
    head: str
    sources: list[Source]


@dataclass
class ChildHandbook:
    person: selectors.Person
    birth: list[BirthRow]
    birth_missing: list[str]  # dictionary keys with nothing recorded
    infant_checkups: list[CheckupGroup]
    school_checkups: list[Checkup]
    other_checkups: list[Checkup]
    vaccinations: list[Vaccination]
    medicines: list[Medicine]
    more_medicines: bool
    home_measurements: list[Item]
    notes: list[Note]
    growth: list[GrowthRow] = field(default_factory=list)


@dataclass
class Visit:
    """A prenatal visit as the handbook's 妊娠中の経過 table shows it."""

    checkup: Checkup
    gestational_age: str
    weight: str
    blood_pressure: str
    others: list[Item]


@dataclass
class Pregnancy:
    id: uuid.UUID
    active: bool
    started: date | None
    ended: date | None
    due_date: date | None
    gestation_today: str
    organization: str
    source: Source
    visits: list[Visit] = field(default_factory=list)
    # Results of the pregnancy no visit holds (a clinic's fundal height or
    # HIV test sent without its Encounter), by date.
    results: list[Item] = field(default_factory=list)
    delivery: Checkup | None = None
    medicines: list[Medicine] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)


@dataclass
class MotherHandbook:
    person: selectors.Person
    pregnancies: list[Pregnancy]
    medicines: list[Medicine]
    more_medicines: bool
    home_measurements: list[Item]
    notes: list[Note]
    # Prenatal results outside every recorded pregnancy (or with no
    # pregnancy recorded): shown apart rather than dropped or guessed.
    other_results: list[Item] = field(default_factory=list)


# --------------------------------------------------------------------------
# Reading one record
# --------------------------------------------------------------------------


def _language() -> str:
    return get_language() or "ja"


def _source(row: Resource, content: dict[str, Any], language: str) -> Source:
    provenance = row.provenance
    origin = provenance.origin if provenance else Provenance.Origin.SYSTEM
    label = str(SOURCE_LABELS.get(origin, SOURCE_LABELS[Provenance.Origin.SYSTEM]))
    organization = ""
    if provenance is not None and provenance.agent_org is not None:
        org = provenance.agent_org
        organization = org.name_en if (org.name_en and not language.startswith("ja")) else org.name
    if not organization:
        organization = _named_provider(content)
    return Source(origin, label, organization)


def _display(ref: Any) -> str:
    return str(ref.get("display") or "") if isinstance(ref, dict) else ""


def _named_provider(content: dict[str, Any]) -> str:
    """The organization a record names itself (a school, a clinic written as
    text, a pharmacy), when its provenance names none."""
    found = _display(content.get("serviceProvider")) or _display(
        content.get("managingOrganization")
    )
    if found:
        return found
    for performer in content.get("performer") or []:
        if isinstance(performer, dict):
            found = _display(performer.get("actor")) or _display(performer)
            if found:
                return found
    return ""


def _day(row: Resource) -> date | None:
    if row.date_start is None:
        return None
    return timezone.localtime(row.date_start, JAPAN).date()


def item_key(content: dict[str, Any]) -> str:
    """The dictionary key of a record's code, or ""."""
    for coding in (content.get("code") or {}).get("coding") or []:
        if isinstance(coding, dict):
            found = terminology.item_for_coding(coding.get("system"), coding.get("code"))
            if found is not None:
                return found.key
    return ""


def _is_note(row: Resource) -> bool:
    return NOTE_TOKEN in (row.tokens or [])


def _item(row: Resource, language: str) -> Item:
    content = row.content or {}
    return Item(
        id=row.id,
        key=item_key(content),
        label=selectors._label("Observation", content, language),
        value=_observation_value(content, language),
        day=_day(row),
        source=_source(row, content, language),
    )


def _observation_value(content: dict[str, Any], language: str) -> str:
    value = selectors._entry_value("Observation", content, language)
    # The infant checkup format writes 在胎39週2日 as 39 weeks and a note.
    if item_key(content) == "gestational_age" and "component" not in content:
        for note in content.get("note") or []:
            text = str((note or {}).get("text") or "")
            if text.startswith("在胎") and language.startswith("ja"):
                return text.removeprefix("在胎")
    return value


def _encounter_reference(content: dict[str, Any]) -> uuid.UUID | None:
    reference = str((content.get("encounter") or {}).get("reference") or "")
    if not reference.startswith("Encounter/"):
        return None
    try:
        return uuid.UUID(reference.removeprefix("Encounter/"))
    except ValueError:
        return None


def _type_codings(content: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for concept in content.get("type") or []:
        if isinstance(concept, dict):
            out += [c for c in concept.get("coding") or [] if isinstance(c, dict)]
    return out


def _checkup_kind(row: Resource) -> str:
    content = row.content or {}
    for coding in _type_codings(content):
        if coding.get("system") == CHECKUP_TYPE_SYSTEM:
            return str(coding.get("code") or "")
        if coding.get("system") == SCHOOL_CHECKUP_SYSTEM:
            return "school"
        if coding.get("code") == ENCOUNTER_TYPE_DELIVERY:
            return "delivery"
    if row.category == Category.SCHOOL_CHECKUPS:
        return "school"
    if row.category == Category.PRENATAL_CHECKUPS:
        return "prenatal"
    return ""


def _kind_title(kind: str) -> str:
    for code, label in CHECKUP_KINDS:
        if code == kind:
            return str(label)
    return ""


def _checkup(row: Resource, birth: date | None, language: str) -> Checkup:
    content = row.content or {}
    kind = _checkup_kind(row)
    day = _day(row)
    title = selectors._label("Encounter", content, language)
    if kind in _KIND_ORDER and not language.startswith("ja"):
        title = _kind_title(kind)
    return Checkup(
        id=row.id,
        kind=kind,
        title=title,
        day=day,
        age=selectors.age_text(birth, day) if birth and day and day >= birth else "",
        provider=_named_provider(content) or _source(row, content, language).organization,
        source=_source(row, content, language),
    )


def _vaccination(row: Resource, birth: date | None, language: str, user: Any = None) -> Vaccination:
    content = row.content or {}
    code = ""
    for coding in (content.get("vaccineCode") or {}).get("coding") or []:
        if isinstance(coding, dict) and coding.get("code"):
            code = str(coding["code"])
            break
    dose = ""
    for protocol in content.get("protocolApplied") or []:
        if not isinstance(protocol, dict):
            continue
        number = protocol.get("doseNumberPositiveInt") or protocol.get("doseNumberString")
        series = str(protocol.get("series") or "")
        if number:
            dose = gettext("dose %(number)s") % {"number": number}
            dose = f"{series} {dose}".strip()
            break
    day = _day(row)
    return Vaccination(
        id=row.id,
        vaccine_code=code,
        label=selectors._label("Immunization", content, language),
        dose=dose,
        day=day,
        age=selectors.age_text(birth, day) if birth and day and day >= birth else "",
        performer=_named_provider(content),
        lot=str(content.get("lotNumber") or ""),
        source=_source(row, content, language),
        editable=_own(row, user),
    )


def _medicine(row: Resource, language: str) -> Medicine:
    content = row.content or {}
    dispensed = row.resource_type == "MedicationDispense"
    amount = selectors._quantity(content.get("quantity"))
    supply = (content.get("daysSupply") or {}).get("value")
    if supply is not None:
        days = gettext("%(days)s days") % {"days": selectors._number(supply)}
        amount = f"{amount} / {days}" if amount else days
    if not amount:
        amount = "、".join(
            str(d.get("text")) for d in content.get("dosage") or [] if isinstance(d, dict)
        )
    return Medicine(
        id=row.id,
        kind="dispensed" if dispensed else "taken",
        label=selectors._label(row.resource_type, content, language),
        amount=amount,
        day=_day(row),
        by=_named_provider(content),
        source=_source(row, content, language),
    )


def _own(row: Resource, user: Any) -> bool:
    """Written (this version) by `user` herself: the family's own entry."""
    provenance = row.provenance
    return (
        user is not None
        and provenance is not None
        and provenance.origin == Provenance.Origin.SELF
        and provenance.agent_user_id == getattr(user, "pk", None)
    )


def _note(row: Resource, user: Any, language: str) -> Note:
    content = row.content or {}
    provenance = row.provenance
    return Note(
        id=row.id,
        day=_day(row),
        text=str(content.get("valueString") or ""),
        source=_source(row, content, language),
        editable=provenance is not None
        and provenance.origin == Provenance.Origin.SELF
        and provenance.agent_user_id == getattr(user, "pk", None),
    )


def _sort_items(items: list[Item]) -> None:
    def order(item: Item) -> tuple[int, str]:
        if item.key == "checkup_judgement":
            return JUDGEMENT_ORDER, ""
        return ITEM_ORDER.get(item.key, LAST), item.label

    items.sort(key=order)


# --------------------------------------------------------------------------
# Queries (a fixed number per page)
# --------------------------------------------------------------------------


def _visible(user: Any, patient: Patient) -> Any:
    return Resource.objects.filter(
        visible_records(user, PURPOSE), compartments__overlap=[patient.pk]
    ).select_related("provenance", "provenance__agent_org")


def _newest_first(queryset: Any) -> Any:
    return queryset.order_by(F("date_start").desc(nulls_last=True), "-last_updated", "id")


def _medicines(user: Any, patient: Patient, language: str) -> tuple[list[Medicine], bool]:
    rows = list(
        _newest_first(_visible(user, patient).filter(resource_type__in=MEDICINE_TYPES))[
            : MEDICINES_SHOWN + 1
        ]
    )
    return [_medicine(r, language) for r in rows[:MEDICINES_SHOWN]], len(rows) > MEDICINES_SHOWN


def _home_measurements(user: Any, patient: Patient, language: str) -> list[Item]:
    """The latest measurements taken at home or by a device, of the last
    HOME_MEASUREMENTS_DAYS (the growth and pregnancy charts show them all):
    the window keeps the rows read bounded however many a device sent
    over the years."""
    since = timezone.now() - timedelta(days=HOME_MEASUREMENTS_DAYS)
    rows = _newest_first(
        _visible(user, patient).filter(
            resource_type="Observation", category=Category.VITALS, date_start__gte=since
        )
    )[:HOME_MEASUREMENTS_SHOWN]
    return [_item(r, language) for r in rows]


def _book_rows(user: Any, patient: Patient, categories: tuple[str, ...]) -> list[Resource]:
    """The checkups, their findings, vaccinations, pregnancies and the
    family's notes: what a handbook lists in full (bounded by the care a
    person gets, not by the number of home measurements)."""
    wanted = Q(resource_type__in=("Encounter", "EpisodeOfCare", "Immunization")) | Q(
        resource_type="Observation", category__in=categories
    )
    wanted |= Q(resource_type="Observation", tokens__contains=[NOTE_TOKEN])
    rows = (
        _visible(user, patient)
        .filter(wanted)
        .order_by(F("date_start").asc(nulls_last=True), "last_updated", "id")
    )
    return list(rows)


# --------------------------------------------------------------------------
# The child's handbook
# --------------------------------------------------------------------------

CHILD_CATEGORIES = (Category.INFANT_CHECKUPS, Category.SCHOOL_CHECKUPS, Category.PREGNANCY)


def child_handbook(*, user: Any, patient: Patient) -> ChildHandbook:
    """A child's handbook: birth data, checkups by kind and date,
    vaccinations, the latest medicines and home measurements, the
    family's notes."""
    language = _language()
    person = selectors.person(user=user, patient=patient)
    birth = person.birth_date
    rows = _book_rows(user, patient, CHILD_CATEGORIES)
    encounters: dict[uuid.UUID, Checkup] = {}
    observations: list[tuple[Resource, Item]] = []
    vaccinations: list[Vaccination] = []
    notes: list[Note] = []
    for row in rows:
        if row.resource_type == "Encounter":
            encounters[row.id] = _checkup(row, birth, language)
        elif row.resource_type == "Immunization":
            vaccinations.append(_vaccination(row, birth, language, user))
        elif row.resource_type == "Observation":
            if _is_note(row):
                notes.append(_note(row, user, language))
            else:
                observations.append((row, _item(row, language)))
    birth_items: dict[str, list[Item]] = {key: [] for key in BIRTH_ITEMS}
    loose: list[Item] = []
    for row, item in observations:
        if item.key in birth_items and (
            item.key in ("birth_weight", "gestational_age", "apgar_1min", "apgar_5min")
            or (birth is not None and item.day == birth)
        ):
            birth_items[item.key].append(item)
            continue
        encounter = encounters.get(_encounter_reference(row.content or {}) or uuid.UUID(int=0))
        if encounter is not None:
            encounter.items.append(item)
        else:
            loose.append(item)
    for checkup in encounters.values():
        _sort_items(checkup.items)
    groups: dict[str, CheckupGroup] = {}
    school: list[Checkup] = []
    other: list[Checkup] = []
    for checkup in encounters.values():
        if checkup.kind == "school":
            school.append(checkup)
        elif checkup.kind in _KIND_ORDER:
            group = groups.setdefault(
                checkup.kind, CheckupGroup(checkup.kind, _kind_title(checkup.kind))
            )
            group.checkups.append(checkup)
        else:
            other.append(checkup)
    ordered_groups = sorted(groups.values(), key=lambda g: _KIND_ORDER[g.kind])
    medicines, more = _medicines(user, patient, language)
    item_labels = terminology.items()
    birth_rows = [
        BirthRow(key, item_labels[key].label(language), found)
        for key, found in birth_items.items()
        if found
    ]
    # Measurements of a checkup without its Encounter (e.g. an item sent
    # alone) still show, as a checkup of their own day.
    for item in loose:
        other.append(
            Checkup(
                id=item.id,
                kind="",
                title=item.label,
                day=item.day,
                age=selectors.age_text(birth, item.day) if birth and item.day else "",
                provider=item.source.organization,
                source=item.source,
                items=[item],
            )
        )
    return ChildHandbook(
        person=person,
        birth=birth_rows,
        birth_missing=[k for k in ("gestational_age", "birth_weight", "body_length",
                                   "head_circumference") if not birth_items[k]],
        infant_checkups=ordered_groups,
        school_checkups=school,
        other_checkups=sorted(other, key=lambda c: (c.day or date.min)),
        vaccinations=vaccinations,
        medicines=medicines,
        more_medicines=more,
        home_measurements=_home_measurements(user, patient, language),
        notes=sorted(notes, key=lambda n: (n.day or date.min), reverse=True),
        growth=_growth(birth, birth_rows, list(encounters.values())),
    )  # fmt: skip


HEIGHT_KEYS = ("body_length", "body_height")


def _growth(
    birth: date | None, birth_rows: list[BirthRow], checkups: list[Checkup]
) -> list[GrowthRow]:
    """Height (or length), weight and head circumference by day: at birth,
    then at every checkup — infant, school, parent-entered alike —, oldest
    first (the paper handbook's 身体発育 page; the charts draw them)."""
    rows: list[GrowthRow] = []
    at_birth = {row.key: row.items[0] for row in birth_rows if row.items}
    if any(k in at_birth for k in ("birth_weight", "body_length", "head_circumference")):
        rows.append(
            GrowthRow(
                day=birth,
                age=gettext("at birth"),
                height=at_birth["body_length"].value if "body_length" in at_birth else "",
                weight=at_birth["birth_weight"].value if "birth_weight" in at_birth else "",
                head=at_birth["head_circumference"].value
                if "head_circumference" in at_birth
                else "",
                sources=list({i.source: None for i in at_birth.values()}),
            )
        )
    for checkup in sorted(checkups, key=lambda c: c.day or date.min):
        found = {item.key: item for item in checkup.items}
        height = next((found[k] for k in HEIGHT_KEYS if k in found), None)
        weight, head = found.get("body_weight"), found.get("head_circumference")
        if height is None and weight is None and head is None:
            continue
        rows.append(
            GrowthRow(
                day=checkup.day,
                age=checkup.age,
                height=height.value if height else "",
                weight=weight.value if weight else "",
                head=head.value if head else "",
                sources=[checkup.source],
            )
        )
    return rows


# --------------------------------------------------------------------------
# The mother's handbook (her pregnancies)
# --------------------------------------------------------------------------

MOTHER_CATEGORIES = (Category.PREGNANCY, Category.PRENATAL_CHECKUPS)


def _episode_due_date(content: dict[str, Any]) -> date | None:
    return selectors._due_date_in_extensions(content)


def _period(content: dict[str, Any]) -> tuple[date | None, date | None]:
    period = content.get("period") or {}
    return fhir_local_date(period.get("start")), fhir_local_date(period.get("end"))


def _episode_of(content: dict[str, Any]) -> uuid.UUID | None:
    for ref in content.get("episodeOfCare") or []:
        reference = str((ref or {}).get("reference") or "")
        if reference.startswith("EpisodeOfCare/"):
            try:
                return uuid.UUID(reference.removeprefix("EpisodeOfCare/"))
            except ValueError:
                return None
    return None


def _within(day: date | None, start: date | None, end: date | None) -> bool:
    if day is None:
        return False
    return (start is None or day >= start) and (end is None or day <= end)


def gestation_text(days: int | None) -> str:
    if days is None:
        return ""
    return gettext("%(weeks)d weeks %(days)d days") % {"weeks": days // 7, "days": days % 7}


def mother_handbook(*, user: Any, patient: Patient, today: date | None = None) -> MotherHandbook:
    """A mother's handbook: each pregnancy (active first) with its due date,
    gestational age today, prenatal visits (weight, blood pressure and the
    rest), the results no visit holds (by date, in the pregnancy they fall
    in, else apart), the delivery, the medicines of the pregnancy; her
    notes."""
    today = today or timezone.localdate(timezone=JAPAN)
    language = _language()
    person = selectors.person(user=user, patient=patient)
    rows = _book_rows(user, patient, MOTHER_CATEGORIES)
    # Pregnancies must belong to her (an EpisodeOfCare of her own).
    pregnancies: dict[uuid.UUID, Pregnancy] = {}
    edd: list[tuple[date | None, date]] = []  # (recorded on, due date)
    encounters: dict[uuid.UUID, tuple[Resource, Checkup]] = {}
    observations: list[tuple[Resource, Item]] = []
    notes: list[Note] = []
    for row in rows:
        content = row.content or {}
        if row.resource_type == "EpisodeOfCare":
            if patient_id_from_reference((content.get("patient") or {}).get("reference")) != (
                patient.pk
            ):
                continue
            started, ended = _period(content)
            pregnancies[row.id] = Pregnancy(
                id=row.id,
                active=row.status == "active",
                started=started,
                ended=ended,
                due_date=_episode_due_date(content),
                gestation_today="",
                organization=_named_provider(content),
                source=_source(row, content, language),
            )
        elif row.resource_type == "Encounter":
            encounters[row.id] = (row, _checkup(row, None, language))
        elif row.resource_type == "Observation":
            if _is_note(row):
                notes.append(_note(row, user, language))
                continue
            item = _item(row, language)
            if item.key == "edd":
                due = fhir_local_date(content.get("valueDateTime"))
                if due is not None:
                    edd.append((item.day, due))
                continue
            observations.append((row, item))
    loose: list[Item] = []  # in date order (_book_rows)
    for row, item in observations:
        found = encounters.get(_encounter_reference(row.content or {}) or uuid.UUID(int=0))
        if found is not None:
            found[1].items.append(item)
        else:
            loose.append(item)
    # Each pregnancy: its due date (on the episode, else the latest
    # estimate recorded during it), its visits and delivery.
    for pregnancy in pregnancies.values():
        if pregnancy.due_date is None:
            during = [
                due
                for recorded, due in edd
                if _within(recorded, pregnancy.started, pregnancy.ended)
            ]
            if during:
                pregnancy.due_date = during[-1]
        if pregnancy.active:
            summary = PregnancySummary(pregnancy.id, pregnancy.started, pregnancy.due_date)
            pregnancy.gestation_today = gestation_text(summary.gestation_days(today))
    for row, checkup in encounters.values():
        _sort_items(checkup.items)
        episode = _episode_of(row.content or {})
        target = pregnancies.get(episode) if episode else None
        if target is None:
            target = next(
                (p for p in pregnancies.values() if _within(checkup.day, p.started, p.ended)),
                None,
            )
        if target is None:
            continue
        if checkup.kind == "delivery":
            target.delivery = checkup
        else:
            target.visits.append(_visit(checkup, target))
    other_results: list[Item] = []
    for item in loose:
        home = next(
            (p for p in pregnancies.values() if _within(item.day, p.started, p.ended)), None
        )
        (home.results if home is not None else other_results).append(item)
    medicines, more = _medicines(user, patient, language)
    for pregnancy in pregnancies.values():
        end = pregnancy.ended or today
        pregnancy.medicines = [m for m in medicines if _within(m.day, pregnancy.started, end)]
        pregnancy.notes = [n for n in notes if _within(n.day, pregnancy.started, end)]
    ordered = sorted(
        pregnancies.values(),
        key=lambda p: (not p.active, -(p.started or date.min).toordinal()),
    )
    return MotherHandbook(
        person=person,
        pregnancies=ordered,
        medicines=medicines,
        more_medicines=more,
        home_measurements=_home_measurements(user, patient, language),
        notes=sorted(notes, key=lambda n: (n.day or date.min), reverse=True),
        other_results=other_results,
    )


def _visit(checkup: Checkup, pregnancy: Pregnancy) -> Visit:
    by_key = {item.key: item for item in checkup.items}
    gestational = by_key.get("gestational_age")
    if gestational is None and pregnancy.due_date and checkup.day:
        summary = PregnancySummary(pregnancy.id, pregnancy.started, pregnancy.due_date)
        age = gestation_text(summary.gestation_days(checkup.day))
    else:
        age = gestational.value if gestational else ""
    shown = {"gestational_age", "body_weight", "bp_panel"}
    return Visit(
        checkup=checkup,
        gestational_age=age,
        weight=by_key["body_weight"].value if "body_weight" in by_key else "",
        blood_pressure=by_key["bp_panel"].value if "bp_panel" in by_key else "",
        others=[item for item in checkup.items if item.key not in shown],
    )


def note_of(*, user: Any, patient: Patient, note_id: uuid.UUID) -> Resource | None:
    """One of the family's notes about `patient` that `user` may see, or
    None."""
    return (
        _visible(user, patient)
        .filter(id=note_id, resource_type="Observation", tokens__contains=[NOTE_TOKEN])
        .first()
    )


def vaccination_of(*, user: Any, patient: Patient, record_id: uuid.UUID) -> Resource | None:
    """One Immunization of `patient` that `user` may see, or None."""
    return _visible(user, patient).filter(id=record_id, resource_type="Immunization").first()


def birth_items_recorded(*, user: Any, patient: Patient) -> dict[str, list[Item]]:
    """The birth data already recorded for a child (any source), by
    dictionary key: what the birth-data form need not ask for."""
    handbook_rows = _visible(user, patient).filter(
        resource_type="Observation", category=Category.INFANT_CHECKUPS
    )
    person = selectors.person(user=user, patient=patient)
    language = _language()
    found: dict[str, list[Item]] = {}
    for row in handbook_rows:
        item = _item(row, language)
        if item.key in ("birth_weight", "gestational_age") or (
            item.key in BIRTH_ITEMS
            and person.birth_date is not None
            and item.day == person.birth_date
        ):
            found.setdefault(item.key, []).append(item)
    return found


# --------------------------------------------------------------------------
# The schedule (phr.schedules computes it; this only shapes it for the page)
# --------------------------------------------------------------------------

STATUS_LABELS = {
    "overdue": pgettext_lazy("schedule", "Overdue"),
    "due": pgettext_lazy("schedule", "Due now"),
    "upcoming": pgettext_lazy("schedule", "Upcoming"),
    "complete": pgettext_lazy("schedule", "Complete"),
    "no_longer_eligible": pgettext_lazy("schedule", "No longer eligible"),
    "not_applicable": pgettext_lazy("schedule", "Not applicable"),
    "done": pgettext_lazy("schedule", "Done"),
    "missed": pgettext_lazy("schedule", "Missed"),
}
# Due and overdue first: what needs doing now.
_URGENCY = {"overdue": 0, "due": 1, "upcoming": 2}


def status_label(status: str) -> str:
    return str(STATUS_LABELS.get(status, status))


@dataclass(frozen=True)
class NextVaccination:
    series: str
    vaccine: str
    label: str  # the dose ("5種混合 1期初回 2回目")
    status: str
    status_label: str
    earliest: date
    window_from: date | None
    window_until: date | None
    last_day: date


@dataclass(frozen=True)
class DoseRow:
    number: int | None
    day: date
    age: str
    sources: list[Source]
    notes: tuple[str, ...]


@dataclass(frozen=True)
class SeriesRow:
    series: str
    label: str
    status: str
    status_label: str
    doses: list[DoseRow]
    next: NextVaccination | None


@dataclass(frozen=True)
class CheckupRow:
    code: str
    label: str
    status: str
    status_label: str
    window_from: date
    window_until: date
    last_day: date
    done_on: date | None


@dataclass(frozen=True)
class ScheduleView:
    next_vaccinations: list[NextVaccination]
    series: list[SeriesRow]
    checkups: list[CheckupRow]
    unplaced: int  # vaccinations the schedule could not place (shown in the list)


def _dose_source(source: Any) -> Source:
    origin = str(getattr(source, "origin", "") or Provenance.Origin.SYSTEM)
    label = str(SOURCE_LABELS.get(origin, SOURCE_LABELS[Provenance.Origin.SYSTEM]))
    organization = str(getattr(source, "organization", "") or getattr(source, "performer", ""))
    return Source(origin, label, organization)


def schedule_view(schedule: Any) -> ScheduleView:
    """phr.schedules.ChildSchedule as the handbook shows it: the next
    vaccinations (overdue and due first, then upcoming), every series with
    its doses (one row per dose, every source that reported it), and the
    checkups with done / due."""
    birth = schedule.birth_date
    upcoming: list[NextVaccination] = []
    series: list[SeriesRow] = []
    for plan in schedule.vaccines:
        nxt = plan.next_dose
        shown = None
        if nxt is not None and plan.status in _URGENCY:
            shown = NextVaccination(
                series=plan.series,
                vaccine=plan.label,
                label=nxt.label,
                status=plan.status,
                status_label=status_label(plan.status),
                earliest=nxt.earliest,
                window_from=nxt.window_from,
                window_until=nxt.window_until,
                last_day=nxt.last_day,
            )
            upcoming.append(shown)
        series.append(
            SeriesRow(
                series=plan.series,
                label=plan.label,
                status=plan.status,
                status_label=status_label(plan.status),
                doses=[
                    DoseRow(
                        number=dose.number,
                        day=dose.on,
                        age=selectors.age_text(birth, dose.on) if birth else "",
                        sources=[_dose_source(s) for s in dose.sources],
                        notes=tuple(dose.notes),
                    )
                    for dose in plan.doses
                ],
                next=shown,
            )
        )
    upcoming.sort(key=lambda n: (_URGENCY[n.status], n.window_from or n.earliest, n.series))
    checkups = [
        CheckupRow(
            code=plan.code,
            label=plan.label,
            status=plan.status,
            status_label=status_label(plan.status),
            window_from=plan.window_from,
            window_until=plan.window_until,
            last_day=plan.last_day,
            done_on=next((v.on for v in plan.visits if v.on is not None), None),
        )
        for plan in schedule.checkups
    ]
    return ScheduleView(upcoming, series, checkups, len(schedule.unplaced))
