# session-service: the two commands of the README are `make demo` and `make test`.
# Each installs what is missing first (the virtualenv; system packages with apt-get
# when run as root, else it stops and prints the exact command to run).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PHP_PACKAGES := php-cli php-curl php-msgpack php-mysql php-symfony-http-foundation
PYTEST_ARGS ?=

.PHONY: help venv system-php mariadb test lint run demo bench-store clean

help:
	@echo "make demo        run the whole stack and show sessions surviving any node"
	@echo "make test        install what is missing and run every test"
	@echo "make run         start the session service on the embedded SQLite default"
	@echo "make lint        ruff and mypy"
	@echo "make bench-store store and service benchmark against MariaDB (bench/store.py)"

$(PY):
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { scripts/require-packages.sh python3-venv && $(PYTHON) -m venv $(VENV); }

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

system-php:
	@scripts/require-packages.sh $(PHP_PACKAGES)

mariadb: venv
	@PYTHON=$(PY) scripts/ensure-mariadb.sh

test: venv system-php mariadb
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

run: venv
	@mkdir -p var
	@test -s var/token || $(PY) -c "import secrets; print(secrets.token_urlsafe(24))" > var/token
	@echo "session service on http://127.0.0.1:$${SESSION_SERVICE_PORT:-7070}  (SQLite: $${SESSION_DB_URL:-var/sessions.db})"
	@echo "token: $$(cat var/token)   e.g. curl -H 'Authorization: Bearer $$(cat var/token)' http://127.0.0.1:$${SESSION_SERVICE_PORT:-7070}/readyz"
	SESSION_SERVICE_TOKENS="default:$$(cat var/token)" $(VENV)/bin/session-service serve

bench-store: venv mariadb
	$(PY) bench/store.py

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
