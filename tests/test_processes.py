"""The process list is written once, in the Procfile; docker-compose.yml,
the Dockerfile, docs/operations.md and the Makefile must say the same thing.

None of these tests needs a database: they read the files as text, YAML and
the settings module.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
APP_PROCESSES = ("web", "worker", "beat")
# The Procfile's `release` line runs in this docker-compose service.
RELEASE_SERVICE = "migrate"
# Read from the environment by code we do not own; not Hagukumi settings.
FOREIGN_VARIABLES = {"XDG_RUNTIME_DIR", "DJANGO_SETTINGS_MODULE"}
ENV_HELPER_CALL = re.compile(r"\benv_(?:str|bool|int|list|secret)\(\s*\"([A-Z][A-Z0-9_]*)\"")
OS_ENVIRON_READ = re.compile(r"os\.environ(?:\.get)?[\[(]\s*\"([A-Z][A-Z0-9_]*)\"")


def procfile() -> dict[str, str]:
    processes: dict[str, str] = {}
    for line in (ROOT / "Procfile").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, separator, command = line.partition(":")
        assert separator, f"Procfile line without 'name:': {line!r}"
        assert name not in processes, f"Procfile names {name!r} twice"
        processes[name.strip()] = command.strip()
    return processes


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def compose_command(service: dict[str, Any]) -> str:
    command = service.get("command")
    assert isinstance(command, str), "an app service's command is its Procfile line, as a string"
    return command


def test_it_lists_the_release_web_worker_and_beat_processes_in_the_procfile() -> None:
    assert set(procfile()) == {"release", *APP_PROCESSES}


def test_it_runs_each_procfile_line_word_for_word_in_docker_compose() -> None:
    services = compose()["services"]
    for name in APP_PROCESSES:
        assert compose_command(services[name]) == procfile()[name], name


def test_it_runs_the_release_line_as_a_one_shot_migrate_service() -> None:
    services = compose()["services"]
    assert compose_command(services[RELEASE_SERVICE]) == procfile()["release"]
    assert services[RELEASE_SERVICE].get("restart") == "no"


def test_it_starts_web_worker_and_beat_only_after_migrations_succeeded() -> None:
    services = compose()["services"]
    for name in APP_PROCESSES:
        depends_on = services[name]["depends_on"]
        assert depends_on[RELEASE_SERVICE] == {"condition": "service_completed_successfully"}
        assert depends_on["db"] == {"condition": "service_healthy"}
        assert depends_on["redis"] == {"condition": "service_healthy"}


def test_it_builds_every_app_service_from_the_same_image() -> None:
    services = compose()["services"]
    images = {services[name]["image"] for name in (*APP_PROCESSES, RELEASE_SERVICE)}
    assert len(images) == 1
    for name in (*APP_PROCESSES, RELEASE_SERVICE):
        assert services[name]["build"] == "."


def test_it_uses_the_postgres_17_and_redis_7_images() -> None:
    services = compose()["services"]
    assert services["db"]["image"] == "postgres:17"
    assert services["redis"]["image"] == "redis:7"


def test_it_gives_every_app_service_the_production_environment() -> None:
    services = compose()["services"]
    for name in (*APP_PROCESSES, RELEASE_SERVICE):
        environment = services[name]["environment"]
        for variable in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "ALLOWED_HOSTS"):
            assert environment.get(variable), f"{name} lacks {variable}"
        assert "DEBUG" not in environment, f"{name} must run with DEBUG off"


def test_it_keeps_secrets_out_of_docker_compose() -> None:
    services = compose()["services"]
    secret_key = services["web"]["environment"]["SECRET_KEY"]
    assert re.fullmatch(r"\$\{SECRET_KEY:\?[^}]*\}", secret_key), secret_key
    password = services["db"]["environment"]["POSTGRES_PASSWORD"]
    assert re.fullmatch(r"\$\{POSTGRES_PASSWORD:\?[^}]*\}", password), password
    for name in (*APP_PROCESSES, RELEASE_SERVICE):
        url = services[name]["environment"]["DATABASE_URL"]
        assert "${POSTGRES_PASSWORD}" in url, f"{name}: the password comes from the environment"


def test_it_serves_the_web_line_when_the_image_runs_alone() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.MULTILINE)
    cmd = re.search(r"^CMD (.+)$", dockerfile, re.MULTILINE)
    assert cmd is not None
    assert cmd.group(1) == f'["sh", "-c", "exec {procfile()["web"]}"]'


def test_it_documents_each_procfile_command_verbatim_in_operations_md() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    for name, command in procfile().items():
        assert command in operations, f"docs/operations.md lacks the {name} command: {command}"


def test_it_documents_every_environment_variable_that_settings_read() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    read = set()
    for module in ("settings.py", "devdb.py", "env.py", "celery.py"):
        source = (ROOT / "config" / module).read_text(encoding="utf-8")
        read |= set(ENV_HELPER_CALL.findall(source)) | set(OS_ENVIRON_READ.findall(source))
    missing = sorted(read - FOREIGN_VARIABLES - set(re.findall(r"`([A-Z][A-Z0-9_]*)`", operations)))
    assert "DATABASE_URL" in read
    assert not missing, f"add a row for each to the table in docs/operations.md: {missing}"


def test_it_names_the_wsgi_application_and_beat_scheduler_that_settings_declare() -> None:
    processes = procfile()
    module, _, attribute = settings.WSGI_APPLICATION.rpartition(".")
    assert processes["web"].startswith(f"gunicorn {module}:{attribute} ")
    assert processes["beat"].endswith(f" --scheduler {settings.CELERY_BEAT_SCHEDULER}")
    assert processes["worker"].startswith("celery -A config worker ")


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_it_migrates_seeds_and_serves_in_order_on_make_run() -> None:
    # -n prints the recipe without running it; the venv step may or may not
    # appear depending on the stamp, the three steps after it always do.
    printed = subprocess.run(
        ["make", "-n", "run"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PORT": "8000", "VENV": ".venv"},
    ).stdout.splitlines()
    tail = [line for line in printed if "manage.py" in line]
    assert tail == [
        ".venv/bin/python manage.py migrate --noinput",
        ".venv/bin/python manage.py seed_demo --if-empty",
        ".venv/bin/python manage.py runserver 127.0.0.1:8000",
    ]


def test_it_makes_the_ci_script_strict_and_executable() -> None:
    script = ROOT / ".ci" / "run"
    assert os.access(script, os.X_OK)
    text = script.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    for step in ("make migrations-check", "make deploy-check", "make test", "make run"):
        assert step in text, step
