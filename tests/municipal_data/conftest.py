"""Uploaded files of these tests go to a temporary folder, not the
project's media/ (a worker process started by a test gets the same
folder: start_worker passes settings.MEDIA_ROOT on)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _media_root(settings: Any, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = tmp_path
