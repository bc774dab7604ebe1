"""An independent checker of research releases (issue 8, part 6).

Deliberately NOT the exporter's code: nothing here imports
sharing/anonymize.py or sharing/research_export.py. It reads a release
folder with the standard library only (csv, json, zipfile) and answers
three questions an attacker would ask:

1. k: the release's tables joined by pid; each person's quasi-identifier
   vector from the FIXED list below (docs/decisions/0022-research.md,
   rule 5), with, for mothers, the multiset of (gestational weeks at
   delivery, babies) of her pregnancies in pregnancies.csv. k is the size
   of the smallest class.
2. Dates: for each person, the birth dates consistent with birth_ym (or
   its generalized form YYYY-Qn, YYYY-Hn, YYYY) and with every
   (age_weeks, calendar_year) released about her in infant_checkups,
   vaccinations and vitals_weekly; for each pregnancy, the last menstrual
   period dates consistent with every (gestational_weeks, calendar_year)
   in prenatal_visits, pregnancies and vitals_weekly — and the same facts
   read from the FHIR files' extensions, since an attacker reads both. An
   event at w completed weeks in year Y puts the start date in
   [1 Jan Y − 7w − 6, 31 Dec Y − 7w]. The smallest count of candidate
   days is what the release gives away. Any full date in a table or a
   FHIR file, or a year-month outside a birth period, is a problem.
3. Identifiers: every output file (CSV, NDJSON, JSON, and each member of
   release.zip) scanned for each name in kanji and kana (katakana and
   hiragana, with and without spaces), each number in ASCII and
   full-width digits and with or without hyphens, addresses, emails,
   phones, free text, device identifiers and the store's own UUIDs.
"""

from __future__ import annotations

import csv
import io
import json
import re
import unicodedata
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

# The quasi-identifiers of persons.csv (rule 5), fixed here on purpose.
PERSON_QIS = (
    "kind",
    "sex",
    "birth_ym",
    "area",
    "birth_weight_band",
    "gestational_weeks_at_birth",
    "babies",
)
# and, for mothers, from pregnancies.csv:
PREGNANCY_QIS = ("gestational_weeks_at_delivery", "babies")

TABLES = (
    "persons",
    "pregnancies",
    "prenatal_visits",
    "infant_checkups",
    "vaccinations",
    "vitals_weekly",
)

EARLIEST = date(1900, 1, 1)
LATEST = date(2100, 12, 31)


# --------------------------------------------------------------------------
# Reading a release
# --------------------------------------------------------------------------


def read_table(directory: Path, table: str) -> list[dict[str, str]]:
    path = Path(directory) / "csv" / f"{table}.csv"
    if not path.exists():
        return []
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def read_tables(directory: Path) -> dict[str, list[dict[str, str]]]:
    return {table: read_table(directory, table) for table in TABLES}


# The FHIR files carry the same facts as extensions
# (docs/formats/research_release.md): research-<name>.
EXTENSION = "https://hagukumi.jp/fhir/StructureDefinition/research-"


def _extensions(resource: dict[str, object]) -> dict[str, str]:
    out: dict[str, str] = {}
    for ext in resource.get("extension") or []:  # type: ignore[attr-defined]
        url = str(ext.get("url", ""))
        if url.startswith(EXTENSION):
            value = next((v for k, v in ext.items() if k.startswith("value")), "")
            out[url.removeprefix(EXTENSION)] = "" if value is None else str(value)
    return out


def _pid(reference: object) -> str:
    text = str((reference or {}).get("reference", "")) if isinstance(reference, dict) else ""
    return text.removeprefix("Patient/")


def read_fhir_facts(directory: Path) -> dict[str, list[dict[str, str]]]:
    """What the NDJSON files say about dates, as rows like the CSV
    tables' (an attacker reads both): birth periods, events at an age,
    events at a gestational age, pregnancies."""
    facts: dict[str, list[dict[str, str]]] = defaultdict(list)
    fhir = Path(directory) / "fhir"
    if not fhir.exists():
        return facts
    for path in sorted(fhir.glob("*.ndjson")):
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                resource = json.loads(line)
                ext = _extensions(resource)
                kind = resource.get("resourceType")
                year = ext.get("calendar-year", "")
                if kind == "Patient":
                    period = ext.get("birth-period") or str(resource.get("birthDate") or "")
                    facts["births"].append({"pid": str(resource.get("id")), "birth_ym": period})
                elif kind == "EpisodeOfCare":
                    facts["pregnancies"].append(
                        {
                            "pid": _pid(resource.get("patient")),
                            "pregnancy_no": ext.get("pregnancy-number", ""),
                            "calendar_year": year,
                            "gestational_weeks_at_delivery": ext.get(
                                "gestational-weeks-at-delivery", ""
                            ),
                        }
                    )
                else:
                    pid = _pid(resource.get("subject") or resource.get("patient"))
                    if "age-weeks" in ext:
                        facts["ages"].append(
                            {"pid": pid, "age_weeks": ext["age-weeks"], "calendar_year": year}
                        )
                    if "gestational-weeks" in ext:
                        facts["gestation"].append(
                            {
                                "pid": pid,
                                "pregnancy_no": ext.get("pregnancy-number", ""),
                                "gestational_weeks": ext["gestational-weeks"],
                                "calendar_year": year,
                            }
                        )
    return facts


# Dates that must never be in a data file: a full date anywhere, a
# year-month outside a birth period.
_FULL_DATE = re.compile(r"(?<![0-9])(?:19|20)[0-9]{2}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])")
_YEAR_MONTH = re.compile(r"(?<![0-9])(?:19|20)[0-9]{2}-(?:0[1-9]|1[0-2])(?![0-9])")


def date_leaks(directory: Path) -> list[str]:
    """Full dates in any table or FHIR file; year-months in event tables
    and event resources (only a birth period may have one)."""
    out: list[str] = []
    directory = Path(directory)
    for path in sorted(directory.glob("csv/*.csv")) + sorted(directory.glob("fhir/*.ndjson")):
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(directory).as_posix()
        if path.name == "data_dictionary.csv":
            continue
        if m := _FULL_DATE.search(text):
            out.append(f"{name}: a full date {m.group()!r}")
        if path.name not in ("persons.csv", "Patient.ndjson") and (m := _YEAR_MONTH.search(text)):
            out.append(f"{name}: a year-month {m.group()!r}")
    return out


# --------------------------------------------------------------------------
# 1. k
# --------------------------------------------------------------------------


def qi_vectors(tables: Mapping[str, list[dict[str, str]]]) -> dict[str, tuple[object, ...]]:
    """pid → its quasi-identifier vector over all tables joined by pid."""
    pregnancies: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in tables.get("pregnancies", []):
        pregnancies[row["pid"]].append(tuple(row.get(c, "") for c in PREGNANCY_QIS))  # type: ignore[arg-type]
    vectors: dict[str, tuple[object, ...]] = {}
    for row in tables["persons"]:
        vector: tuple[object, ...] = tuple(row.get(c, "") for c in PERSON_QIS)
        if row.get("kind") == "mother":
            vector += (tuple(sorted(pregnancies.get(row["pid"], []))),)
        else:
            vector += ((),)
        vectors[row["pid"]] = vector
    return vectors


def equivalence_classes(vectors: Mapping[str, tuple[object, ...]]) -> Counter[tuple[object, ...]]:
    return Counter(vectors.values())


# --------------------------------------------------------------------------
# 2. Dates
# --------------------------------------------------------------------------

Interval = tuple[date, date]


def _last_day(year: int, month: int) -> date:
    return (date(year + month // 12, month % 12 + 1, 1)) - timedelta(days=1)


def birth_interval(text: str) -> Interval | None:
    """The days a released birth period stands for: YYYY-MM, YYYY-Qn,
    YYYY-Hn or YYYY; None for a blank or * (no constraint)."""
    text = (text or "").strip()
    if not text or text == "*":
        return None
    if m := re.fullmatch(r"(\d{4})-(\d{2})", text):
        year, month = int(m[1]), int(m[2])
        return date(year, month, 1), _last_day(year, month)
    if m := re.fullmatch(r"(\d{4})-Q([1-4])", text):
        year, q = int(m[1]), int(m[2])
        return date(year, 3 * q - 2, 1), _last_day(year, 3 * q)
    if m := re.fullmatch(r"(\d{4})-H([12])", text):
        year, h = int(m[1]), int(m[2])
        return date(year, 6 * h - 5, 1), _last_day(year, 6 * h)
    if m := re.fullmatch(r"(\d{4})", text):
        year = int(m[1])
        return date(year, 1, 1), date(year, 12, 31)
    raise ValueError(f"not a birth period: {text!r}")


def week_range(text: str) -> tuple[int, int] | None:
    """Released weeks: a number, or a coded range (<28, >=42, 28-31)."""
    text = (text or "").strip()
    if not text:
        return None
    if re.fullmatch(r"\d+", text):
        return int(text), int(text)
    if m := re.fullmatch(r"<\s*(\d+)", text):
        return 0, int(m[1]) - 1
    if m := re.fullmatch(r">=?\s*(\d+)", text):
        return int(m[1]), 45
    if m := re.fullmatch(r"(\d+)\s*-\s*(\d+)", text):
        return int(m[1]), int(m[2])
    return None


def event_interval(weeks: tuple[int, int], year: int) -> Interval:
    """Start dates (birth or LMP) consistent with an event at `weeks`
    completed weeks in calendar `year`."""
    low, high = weeks
    return (
        date(year, 1, 1) - timedelta(days=7 * high + 6),
        date(year, 12, 31) - timedelta(days=7 * low),
    )


def intersect(a: Interval | None, b: Interval | None) -> Interval | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a[0], b[0]), min(a[1], b[1])


def days(interval: Interval | None) -> int:
    if interval is None:
        return (LATEST - EARLIEST).days + 1
    return max(0, (interval[1] - interval[0]).days + 1)


def _year(text: str | None) -> int | None:
    text = (text or "").strip()
    return int(text) if re.fullmatch(r"\d{4}", text) else None


def birth_candidates(
    tables: Mapping[str, list[dict[str, str]]],
    fhir: Mapping[str, list[dict[str, str]]] | None = None,
) -> dict[str, int]:
    """pid → the number of birth dates consistent with the release (the
    CSV tables, and the FHIR files' facts when given)."""
    intervals: dict[str, Interval | None] = {
        row["pid"]: birth_interval(row.get("birth_ym", "")) for row in tables["persons"]
    }
    fhir = fhir or {}
    for row in fhir.get("births", []):
        if row["pid"] in intervals:
            intervals[row["pid"]] = intersect(
                intervals[row["pid"]], birth_interval(row["birth_ym"])
            )
    extra = {"fhir ages": fhir.get("ages", [])}
    for table in ("infant_checkups", "vaccinations", "vitals_weekly", "fhir ages"):
        for row in extra.get(table) or tables.get(table, []):
            weeks = week_range(row.get("age_weeks", ""))
            year = _year(row.get("calendar_year"))
            if weeks is None or year is None or row["pid"] not in intervals:
                continue
            intervals[row["pid"]] = intersect(intervals[row["pid"]], event_interval(weeks, year))
    return {pid: days(interval) for pid, interval in intervals.items()}


def lmp_candidates(
    tables: Mapping[str, list[dict[str, str]]],
    fhir: Mapping[str, list[dict[str, str]]] | None = None,
) -> dict[tuple[str, str], int]:
    """(pid, pregnancy_no) → the number of LMP dates consistent with the
    release (the CSV tables, and the FHIR files' facts when given).
    Vitals during a pregnancy (gestational_weeks) carry no pregnancy
    number: they count for a mother with one pregnancy only."""
    fhir = fhir or {}
    intervals: dict[tuple[str, str], Interval | None] = {}
    per_mother: dict[str, list[str]] = defaultdict(list)
    for row in [*tables.get("pregnancies", []), *fhir.get("pregnancies", [])]:
        key = (row["pid"], row["pregnancy_no"])
        if row["pregnancy_no"] not in per_mother[row["pid"]]:
            per_mother[row["pid"]].append(row["pregnancy_no"])
        weeks = week_range(row.get("gestational_weeks_at_delivery", ""))
        year = _year(row.get("calendar_year"))
        interval = event_interval(weeks, year) if weeks and year else None
        intervals[key] = intersect(intervals.get(key), interval)
    numbered = [r for r in fhir.get("gestation", []) if r.get("pregnancy_no")]
    unnumbered = [r for r in fhir.get("gestation", []) if not r.get("pregnancy_no")]
    for row in [*tables.get("prenatal_visits", []), *numbered]:
        key = (row["pid"], row["pregnancy_no"])
        weeks = week_range(row.get("gestational_weeks", ""))
        year = _year(row.get("calendar_year"))
        intervals.setdefault(key, None)
        if weeks is not None and year is not None:
            intervals[key] = intersect(intervals[key], event_interval(weeks, year))
    for row in [*tables.get("vitals_weekly", []), *unnumbered]:
        numbers = per_mother.get(row["pid"], [])
        weeks = week_range(row.get("gestational_weeks", ""))
        year = _year(row.get("calendar_year"))
        if len(numbers) == 1 and weeks is not None and year is not None:
            key = (row["pid"], numbers[0])
            intervals[key] = intersect(intervals.get(key), event_interval(weeks, year))
    return {key: days(interval) for key, interval in intervals.items()}


# --------------------------------------------------------------------------
# 3. Identifiers
# --------------------------------------------------------------------------

HYPHENS = "-‐‑‒–—―−－ー"
_BETWEEN_DIGITS = re.compile(rf"(?<=\d)[{HYPHENS}\s]+(?=\d)")
FULL_WIDTH = str.maketrans("0123456789-", "０１２３４５６７８９－")


def katakana_to_hiragana(text: str) -> str:
    return "".join(chr(ord(c) - 0x60) if "ァ" <= c <= "ヶ" else c for c in text)


def hiragana_to_katakana(text: str) -> str:
    return "".join(chr(ord(c) + 0x60) if "ぁ" <= c <= "ゖ" else c for c in text)


def _spacings(text: str) -> set[str]:
    parts = text.split()
    if len(parts) < 2:
        return {text}
    return {" ".join(parts), "".join(parts), "　".join(parts)}


def text_needles(kind: str, value: str) -> set[str]:
    """The spellings of a text identifier to look for."""
    value = value.strip()
    out: set[str] = set()
    for spelled in _spacings(value):
        out.add(spelled)
        if kind == "kana":
            out.add(katakana_to_hiragana(spelled))
            out.add(hiragana_to_katakana(spelled))
    if kind == "email":
        out |= {value.lower(), value.upper()}
    # short needles match words by accident: a name part of one kanji, a
    # kana part of two
    shortest = 3 if kind == "kana" else 2
    return {n for n in out if len(n.replace(" ", "").replace("　", "")) >= shortest}


def number_needles(value: str) -> set[str]:
    """A number as written, without its hyphens, and in full-width digits."""
    digits = re.sub(rf"[{HYPHENS}\s]", "", value)
    out = {value, digits, value.translate(FULL_WIDTH), digits.translate(FULL_WIDTH)}
    if "-" in value:
        for hyphen in HYPHENS:
            out.add(value.replace("-", hyphen))
    return out


@dataclass(frozen=True)
class Hit:
    file: str
    kind: str
    value: str
    spelled: str


def _normalized(text: str) -> str:
    """NFKC (full-width digits and letters, half-width kana → standard),
    and hyphens or spaces between digits removed."""
    return _BETWEEN_DIGITS.sub("", unicodedata.normalize("NFKC", text))


_CELL_BREAKS = re.compile(r'[,"\n\r{}\[\]\t]')
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HEX_RUN = re.compile(r"[0-9a-f]{32,}")


def compact(text: str) -> str:
    """The file's distinct cells (split at CSV and JSON punctuation, never
    inside a value), joined by NUL: a release repeats its cells many
    times, and an identifier lies inside one cell (a name split over two
    cells is found by its parts, which are needles of their own)."""
    return "\x00".join(sorted(set(_CELL_BREAKS.split(text))))


def uuid_tokens(lower: str) -> set[str]:
    """Every UUID in the text, as 32 hex digits: written with hyphens, or
    as any 32 digits of a longer hex run."""
    found = {m.group().replace("-", "") for m in _UUID.finditer(lower)}
    for m in _HEX_RUN.finditer(lower):
        run = m.group()
        found |= {run[i : i + 32] for i in range(len(run) - 31)}
    return found


def scan_text(name: str, text: str, identifiers: Mapping[str, Iterable[str]]) -> list[Hit]:
    hits: list[Hit] = []
    text = compact(text)
    lower = text.lower()
    normalized = _normalized(text)
    normalized_kana = katakana_to_hiragana(normalized)
    uuids = uuid_tokens(lower)
    for kind, values in identifiers.items():
        for value in values:
            if not value:
                continue
            if kind in ("number", "phone"):
                for needle in number_needles(value):
                    if needle in text:
                        hits.append(Hit(name, kind, value, needle))
                        break
                else:
                    digits = re.sub(rf"[{HYPHENS}\s]", "", unicodedata.normalize("NFKC", value))
                    if len(digits) >= 6 and digits in normalized:
                        hits.append(Hit(name, kind, value, f"{digits} (normalized)"))
                continue
            if kind == "uuid":
                if value.lower().replace("-", "") in uuids:
                    hits.append(Hit(name, kind, value, value))
                continue
            needles = text_needles(kind, value)
            found = next((n for n in needles if n in text or n.lower() in lower), None)
            if found is None:
                # after NFKC (half-width kana, full-width letters), and as hiragana
                for needle in needles:
                    n = unicodedata.normalize("NFKC", needle)
                    if n in normalized or (
                        kind == "kana" and katakana_to_hiragana(n) in normalized_kana
                    ):
                        found = f"{needle} (normalized)"
                        break
            if found is not None:
                hits.append(Hit(name, kind, value, found))
    return hits


def release_files(directory: Path) -> Iterable[tuple[str, str]]:
    """(name, text) of every file of the release, and of every member of
    release.zip (named zip:<member>)."""
    directory = Path(directory)
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        data = path.read_bytes()
        if path.suffix == ".zip":
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                for member in archive.namelist():
                    yield (
                        f"{relative}:{member}",
                        archive.read(member).decode("utf-8", errors="replace"),
                    )
        else:
            yield relative, data.decode("utf-8", errors="replace")


def scan_release(directory: Path, identifiers: Mapping[str, Iterable[str]]) -> list[Hit]:
    hits: list[Hit] = []
    for name, text in release_files(directory):
        hits += scan_text(name, text, identifiers)
    return hits


# --------------------------------------------------------------------------
# Everything together
# --------------------------------------------------------------------------


@dataclass
class Findings:
    persons: int
    k: int | None  # the smallest class; None for an empty release
    classes: Counter[tuple[object, ...]]
    birth_days: dict[str, int]
    lmp_days: dict[tuple[str, str], int]
    hits: list[Hit] = field(default_factory=list)
    orphans: dict[str, set[str]] = field(default_factory=dict)  # table → pids not in persons
    problems: list[str] = field(default_factory=list)

    @property
    def min_birth_days(self) -> int | None:
        return min(self.birth_days.values(), default=None)

    @property
    def min_lmp_days(self) -> int | None:
        return min(self.lmp_days.values(), default=None)

    def small_classes(self, k: int) -> list[tuple[tuple[object, ...], int]]:
        return [(vector, n) for vector, n in self.classes.items() if n < k]

    def failures(self, *, k: int, min_days: int) -> list[str]:
        """What is wrong, in words ([] when the release passes)."""
        out = list(self.problems)
        if self.k is not None and self.k < k:
            out.append(f"k={self.k} < {k}: classes {self.small_classes(k)}")
        pinned = {p: n for p, n in self.birth_days.items() if n < min_days}
        if pinned:
            out.append(f"birth dates pinned to fewer than {min_days} days: {pinned}")
        lmp = {p: n for p, n in self.lmp_days.items() if n < min_days}
        if lmp:
            out.append(f"LMP dates pinned to fewer than {min_days} days: {lmp}")
        for table, pids in self.orphans.items():
            if pids:
                out.append(f"{table}: rows of pids not in persons.csv: {sorted(pids)[:5]}")
        for hit in self.hits:
            out.append(f"identifier in {hit.file}: {hit.kind} {hit.value!r} as {hit.spelled!r}")
        return out


def check_release(
    directory: Path, *, identifiers: Mapping[str, Iterable[str]] | None = None
) -> Findings:
    directory = Path(directory)
    tables = read_tables(directory)
    problems: list[str] = []
    pids = [row["pid"] for row in tables["persons"]]
    if len(pids) != len(set(pids)):
        problems.append("persons.csv: a pid appears twice")
    known = set(pids)
    orphans = {
        table: {row["pid"] for row in rows} - known
        for table, rows in tables.items()
        if table != "persons"
    }
    vectors = qi_vectors(tables)
    classes = equivalence_classes(vectors)
    fhir = read_fhir_facts(directory)
    fhir_pids = {r["pid"] for rows in fhir.values() for r in rows}
    if fhir_pids - known:
        problems.append(
            f"fhir: resources of pids not in persons.csv: {sorted(fhir_pids - known)[:5]}"
        )
    problems += date_leaks(directory)
    try:
        births = birth_candidates(tables, fhir)
    except ValueError as exc:
        problems.append(str(exc))
        births = {}
    findings = Findings(
        persons=len(known),
        k=min(classes.values(), default=None),
        classes=classes,
        birth_days=births,
        lmp_days=lmp_candidates(tables, fhir),
        orphans=orphans,
        problems=problems,
    )
    if identifiers is not None:
        findings.hits = scan_release(directory, identifiers)
    return findings


def report_json(directory: Path) -> dict[str, object]:
    return json.loads((Path(directory) / "release_report.json").read_text(encoding="utf-8"))
