"""Synthetic municipal files: realistic, fictional and valid infant
checkup CSVs of any size, written as a stream (for the import benchmark,
the crash test with a real worker, and demos). Deterministic for a seed.

Each child has four checkups (1か月, 3～4か月, 1歳6か月, 3歳), so N rows
are N/4 children and about as many mothers; a row carries the four body
measurements, the judgement and one more finding (the 1-month row the
birth weight and gestational age instead, the 3-year row the urine test):
an Encounter and six Observations.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import date, timedelta
from typing import IO

HEADER = (
    "異動区分,市町村コード,宛名番号,氏名（姓）,氏名（名）,カナ氏名（姓）,カナ氏名（名）,"
    "生年月日,性別,健診区分,受診日,受診時月齢,出生時体重,在胎週数,身長,体重,頭囲,胸囲,"
    "判定,栄養状態,尿蛋白,尿糖,尿潜血,母の宛名番号,母の氏名,母のカナ氏名,母の生年月日"
)

FAMILIES = (
    ("赤城", "アカギ"), ("榛名", "ハルナ"), ("利根", "トネ"), ("広瀬", "ヒロセ"),
    ("高崎", "タカサキ"), ("前橋", "マエバシ"), ("桐生", "キリュウ"), ("富岡", "トミオカ"),
)  # fmt: skip
CHILDREN = (
    ("陽翔", "ハルト", "1"), ("蓮", "レン", "1"), ("湊", "ミナト", "1"),
    ("陽葵", "ヒマリ", "2"), ("凛", "リン", "2"), ("結菜", "ユイナ", "2"),
)  # fmt: skip
MOTHERS = (("美咲", "ミサキ"), ("花子", "ハナコ"), ("愛", "アイ"), ("彩", "アヤ"))

# kind, days after birth, completed months, weight kg, height cm, head cm, chest cm
CHECKUPS = (
    ("1か月", 35, 1, 4.3, 54.0, 37.0, 36.5),
    ("3～4か月", 110, 3, 6.6, 62.0, 41.0, 41.5),
    ("1歳6か月", 558, 18, 10.4, 80.5, 46.5, 47.5),
    ("3歳", 1115, 36, 14.0, 94.5, 49.0, 51.0),
)


def _months(born: date, on: date) -> int:
    months = (on.year - born.year) * 12 + on.month - born.month
    return months - 1 if on.day < born.day else months


def infant_checkup_lines(
    rows: int, *, municipality_code: str = "102016", seed: int = 20260401
) -> Iterator[str]:
    """The header and `rows` data lines (no line ends)."""
    rnd = random.Random(seed)  # noqa: S311 - synthetic data, not secrets
    yield HEADER
    children = (rows + len(CHECKUPS) - 1) // len(CHECKUPS)
    written = 0
    first_birth = date(2019, 1, 1)
    for index in range(children):
        family, family_kana = FAMILIES[index % len(FAMILIES)]
        given, given_kana, sex = CHILDREN[rnd.randrange(len(CHILDREN))]
        mother, mother_kana = MOTHERS[rnd.randrange(len(MOTHERS))]
        born = first_birth + timedelta(days=rnd.randrange(4 * 365))
        mother_born = born - timedelta(days=rnd.randrange(20 * 365, 40 * 365))
        child_number = f"{1_000_000_000 + index:010d}"
        mother_number = f"{2_000_000_000 + index:010d}"
        birth_weight = rnd.randrange(2600, 3800)
        weeks = rnd.randrange(37, 42)
        growth = rnd.uniform(0.93, 1.07)
        for kind, days, _months_nominal, weight, height, head, chest in CHECKUPS:
            if written == rows:
                return
            seen_on = born + timedelta(days=days + rnd.randrange(0, 14))
            cells = [
                "1",
                municipality_code,
                child_number,
                family,
                given,
                family_kana,
                given_kana,
                born.isoformat(),
                sex,
                kind,
                seen_on.isoformat(),
                str(_months(born, seen_on)),
                str(birth_weight) if kind == "1か月" else "",
                f"{weeks}週{rnd.randrange(7)}日" if kind == "1か月" else "",
                f"{height * growth:.1f}",
                f"{weight * growth * rnd.uniform(0.95, 1.05):.2f}",
                f"{head * rnd.uniform(0.97, 1.03):.1f}",
                f"{chest * rnd.uniform(0.96, 1.04):.1f}",
                "所見なし" if rnd.random() < 0.9 else "所見あり",
                "" if kind in ("1か月", "3歳") else "所見なし",
                "−" if kind == "3歳" else "",
                "−" if kind == "3歳" else "",
                "" if kind != "3歳" else "−",
                mother_number,
                f"{family} {mother}",
                f"{family_kana} {mother_kana}",
                mother_born.isoformat(),
            ]
            written += 1
            yield ",".join(cells)


def write_infant_checkup_csv(
    target: IO[bytes], rows: int, *, municipality_code: str = "102016", seed: int = 20260401
) -> int:
    """Write a UTF-8 (BOM) CSV of `rows` data rows to a binary stream; return
    the bytes written."""
    size = target.write("\ufeff".encode())
    buffer: list[str] = []
    for line in infant_checkup_lines(rows, municipality_code=municipality_code, seed=seed):
        buffer.append(line)
        if len(buffer) >= 1000:
            size += target.write(("\r\n".join(buffer) + "\r\n").encode())
            buffer.clear()
    if buffer:
        size += target.write(("\r\n".join(buffer) + "\r\n").encode())
    return size
