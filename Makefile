# Hagukumi PHR: the developer's and CI's entry points.
#
#   make run    a fresh machine (Python 3.11+, make) to a running site on
#               http://127.0.0.1:8000/ (embedded PostgreSQL, eager Celery,
#               mail on the console)
#   make test   ruff, then the pytest suite (PYTEST_ARGS="-k foo" to narrow)
#
# The production processes are in the Procfile; see docs/operations.md.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MANAGE := $(PY) manage.py
# Written after a successful `pip install -r requirements.txt`; make
# reinstalls only when requirements.txt is newer than it.
STAMP := $(VENV)/.requirements-installed
PORT ?= 8000
PYTEST_ARGS ?=

# check --deploy runs with production-like settings. The key is a fixed,
# public placeholder that only satisfies the length check: never use it.
DEPLOY_DATABASE_URL := $(or $(DATABASE_URL),postgres://postgres@127.0.0.1:5432/postgres)
DEPLOY_SECRET_KEY := deploy-check-placeholder-NOT-A-SECRET-7Gq2vXk9pL4mZt8RwY3c
DEPLOY_ALLOWED_HOSTS := phr.example.jp

.PHONY: help venv run test lint bench stop messages migrations-check deploy-check

help:
	@echo "make run               set up .venv, migrate, seed the demo data, serve on http://127.0.0.1:$(PORT)/"
	@echo "make test              ruff check, then pytest (PYTEST_ARGS=... passes arguments on)"
	@echo "make lint              ruff check"
	@echo "make bench             the benchmarks in bench/ (store, access, import, FHIR bundles, handbook, charts, Apple Health, research release)"
	@echo "make stop              stop the embedded development PostgreSQL"
	@echo "make messages          makemessages -l ja and compilemessages"
	@echo "make migrations-check  fail if a model change has no migration"
	@echo "make deploy-check      manage.py check --deploy with production-like settings"

# --- the virtualenv ------------------------------------------------------------
$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "Hagukumi needs Python 3.11 or newer (PYTHON=$(PYTHON))" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt | $(PY)
	$(PY) -m pip install --disable-pip-version-check --quiet -r requirements.txt
	@touch $@

venv: $(STAMP)

# --- development -------------------------------------------------------------
run: export DEBUG := 1
run: venv
	$(MANAGE) migrate --noinput
	$(MANAGE) seed_demo --if-empty
	$(MANAGE) runserver 127.0.0.1:$(PORT)

test: export DEBUG := 1
test: venv
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

bench: export DEBUG := 1
bench: venv
	$(PY) bench/bench_store.py
	$(PY) bench/bench_access.py
	$(PY) bench/bench_import.py
	$(PY) bench/bench_fhir_bundle.py
	$(PY) bench/bench_handbook.py
	$(PY) bench/bench_charts.py
	$(PY) bench/bench_apple_health.py
	$(PY) bench/bench_research_export.py

stop: venv
	$(PY) -m config.devdb stop

messages: export DEBUG := 1
messages: venv
	$(MANAGE) makemessages -l ja --ignore=.venv --ignore=.pgdata --ignore=staticfiles \
		--ignore=media --ignore=node_modules --ignore=phr/reference_data
	$(MANAGE) compilemessages --ignore=.venv --ignore=.pgdata --ignore=node_modules

# --- checks CI runs --------------------------------------------------------------
migrations-check: export DEBUG := 1
migrations-check: venv
	$(MANAGE) makemigrations --check --dry-run

deploy-check: export DEBUG := 0
deploy-check: export SECRET_KEY := $(DEPLOY_SECRET_KEY)
deploy-check: export ALLOWED_HOSTS := $(DEPLOY_ALLOWED_HOSTS)
deploy-check: export DATABASE_URL := $(DEPLOY_DATABASE_URL)
deploy-check: venv
	$(MANAGE) check --deploy --fail-level WARNING
