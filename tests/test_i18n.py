"""The Japanese catalog is complete and compiled, and pages speak Japanese
by default and English on request."""

from __future__ import annotations

import gettext
import shutil
import subprocess
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

LOCALE = Path(settings.BASE_DIR) / "locale" / "ja" / "LC_MESSAGES"
PO = LOCALE / "django.po"
MO = LOCALE / "django.mo"

needs_msgfmt = pytest.mark.skipif(
    shutil.which("msgfmt") is None, reason="gettext's msgfmt is not installed"
)


@needs_msgfmt
def test_it_has_every_japanese_message_translated_and_none_fuzzy() -> None:
    result = subprocess.run(
        ["msgfmt", "--check", "--statistics", "-o", "/dev/null", str(PO)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # e.g. "141 translated messages." — anything else names the problem.
    assert "untranslated" not in result.stderr, result.stderr
    assert "fuzzy" not in result.stderr, result.stderr
    assert "translated message" in result.stderr


def _catalog(path: Path) -> dict[object, str]:
    with path.open("rb") as handle:
        catalog: dict[object, str] = dict(gettext.GNUTranslations(handle)._catalog)  # type: ignore[attr-defined]
    return catalog


@needs_msgfmt
def test_it_commits_a_compiled_catalog_that_matches_the_po_file(tmp_path: Path) -> None:
    # Someone who edits the .po must also run compilemessages: Django reads
    # only the .mo.
    fresh = tmp_path / "django.mo"
    subprocess.run(["msgfmt", "-o", str(fresh), str(PO)], check=True)
    assert _catalog(MO) == _catalog(fresh)


@pytest.mark.django_db
def test_it_speaks_japanese_by_default_and_english_after_switching() -> None:
    client = Client()
    html = client.get(reverse("account_login")).content.decode()
    assert '<html lang="ja">' in html
    assert "ログイン" in html
    assert "はぐくみ" in html

    response = client.post(
        reverse("set_language"), {"language": "en", "next": reverse("account_login")}
    )
    assert response.status_code == 302
    html = client.get(reverse("account_login")).content.decode()
    assert '<html lang="en">' in html
    assert "Sign In" in html
    assert "Hagukumi" in html
    assert "ログイン" not in html

    client.post(reverse("set_language"), {"language": "ja", "next": "/"})
    assert '<html lang="ja">' in client.get(reverse("account_login")).content.decode()
