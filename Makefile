# The two quickstart commands: `make demo` and `make test`. Both create .venv and install the
# project with its dev extras (chdb, pytest, mypy) from pyproject.toml on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install services demo test typecheck lint unit bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Seed a demo dataset, vectorize every domain through the Celery pipeline (in-process, embedded
# ClickHouse, SQLite; offline providers unless OPENAI_API_KEY is set), print counts and searches.
demo: install
	ENTITY_VECTORS_LOG_LEVEL=$${ENTITY_VECTORS_LOG_LEVEL:-WARNING} $(BIN)/python manage.py demo

# PostgreSQL and Redis for the tests and the benchmark: started if installed but not running (one
# line saying what to install if not). The servers of DATABASE_URL and CELERY_BROKER_URL if set.
services:
	@scripts/services.sh

# Type check, lint, then the whole suite (PostgreSQL and Redis, started by `services`).
test: services install typecheck lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

typecheck: install
	$(BIN)/mypy entity_vectors

# Ruff, and the layering contract (pyproject.toml [tool.importlinter]): a lower layer never imports
# a higher one, and no modules import each other in a circle.
lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# Benchmark figures (provider-bound efficiency, pipeline, flush, memory, RSS, no-op, search,
# freshness); sizes are parameters: make bench BENCH_ARGS="--only search --search-vectors 20000".
# Needs PostgreSQL and Redis on localhost (a scratch database, Redis database 13), started like
# `make test`'s; it ignores DATABASE_URL and the Celery URLs, so the check does too.
bench: install
	@env -u DATABASE_URL -u CELERY_BROKER_URL -u CELERY_RESULT_BACKEND scripts/services.sh
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)
