"""Settings come from the environment and fail loudly on bad values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_int, env_list, env_secret
from phr.terminology import Category, item, items, parse_dataset

ROOT = Path(__file__).resolve().parents[2]


def test_it_reads_typed_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_BOOL", "yes")
    monkeypatch.setenv("X_INT", "42")
    monkeypatch.setenv("X_LIST", "a, b,,c")
    assert env_bool("X_BOOL", False) is True
    assert env_int("X_INT", 0) == 42
    assert env_list("X_LIST", []) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("name", "value", "reader"),
    [
        ("X_BOOL", "maybe", lambda: env_bool("X_BOOL", False)),
        ("X_INT", "4k", lambda: env_int("X_INT", 0)),
        ("X_INT", "1", lambda: env_int("X_INT", 0, minimum=2)),
        ("X_SECRET", "short", lambda: env_secret("X_SECRET", required=True, dev_default="")),
    ],
)
def test_it_fails_loudly_on_bad_values(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, reader: object
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ImproperlyConfigured):
        reader()  # type: ignore[operator]


def test_it_requires_a_secret_key_when_debug_is_off() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DEBUG")}
    env["DATABASE_URL"] = "postgres://postgres@127.0.0.1:5432/postgres"
    result = subprocess.run(
        [sys.executable, "-c", "import django, os; "
         "os.environ['DJANGO_SETTINGS_MODULE']='config.settings'; django.setup()"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_it_keeps_time_in_utc_and_shows_it_in_tokyo() -> None:
    from django.conf import settings

    assert settings.USE_TZ is True
    assert settings.TIME_ZONE == "Asia/Tokyo"
    assert settings.LANGUAGE_CODE == "ja"


def test_the_data_dictionary_loads_from_docs() -> None:
    loaded = items()
    assert item("bp_systolic").loinc == "8480-6"
    assert item("hiv_antibody").sensitivity == "clinic_only"
    assert {i.category for i in loaded.values()} <= set(Category.values)


def test_the_data_dictionary_refuses_an_unknown_category() -> None:
    table = (
        "| key | ja | en | loinc | local | unit | min | max | category | sensitivity | notes |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
        "| x | x | x | 1-1 | | kg | | | gossip | normal | |\n"
    )
    with pytest.raises(ValueError, match="unknown category"):
        parse_dataset(table)
