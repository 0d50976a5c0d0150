# The verbs a person types. `make up` runs the platform; `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: up test lint lock lock-upgrade clean

# Every package at the version, and with the file hashes, that requirements/dev.lock pins (the
# runtime dependencies and the local, test, dev and deploy extras); then the project itself,
# linked to src/. pip check fails when pyproject.toml asks for what the lock lacks: `make lock`.
$(INSTALLED): pyproject.toml requirements/dev.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "ProgNetwork needs Python 3.11 or newer (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes --requirement requirements/dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@$(BIN)/python -m pip check || { echo "requirements/dev.lock does not satisfy pyproject.toml: make lock" >&2; exit 1; }
	@touch $@

up: $(INSTALLED)
	$(BIN)/prog up

# pytest exits 5 when it collected nothing: a suite that runs nothing proves nothing.
test: $(INSTALLED)
	@$(BIN)/python -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$status

# Schemathesis against every service's OpenAPI (part of `make test` with 300 cases a service;
# this runs only the fuzzing, with more cases: make fuzz FUZZ_CASES=3000).
FUZZ_CASES ?= 2000
.PHONY: fuzz
fuzz: $(INSTALLED)
	FUZZ_CASES_PER_SERVICE=$(FUZZ_CASES) $(BIN)/python -m pytest tests/e2e/test_fuzz.py -s $(PYTEST_ARGS)

# Build every service image and run each against this machine's PostgreSQL and Redis (podman);
# then compose.yaml with its monitoring profile, on those images and Debian-built stand-ins for
# the third-party ones (scripts/test-compose.sh; only when every service was built: no SERVICES).
.PHONY: test-images
test-images:
	scripts/test-images.sh $(SERVICES)
	$(if $(SERVICES),,scripts/test-compose.sh)

# Benchmarks print a ratio against a baseline measured in the same run (not part of `make test`).
.PHONY: bench-gateway
bench-gateway: $(INSTALLED)
	$(BIN)/python bench/gateway.py

# GET /v1/users/me on the user service against a bare FastAPI + PyJWT + asyncpg endpoint.
.PHONY: bench-users
bench-users: $(INSTALLED)
	$(BIN)/python bench/users.py

.PHONY: bench-streaming
bench-streaming: $(INSTALLED)
	$(BIN)/python bench/streaming.py

# 32 writers appending events (sequenced, checked by a reader) against plain inserts (about a minute).
.PHONY: bench-events
bench-events: $(INSTALLED)
	$(BIN)/python bench/events.py

# Event-log retention over 1 M generated events: archived and removed per second (a few minutes).
.PHONY: bench-retention
bench-retention: $(INSTALLED)
	$(BIN)/python bench/retention.py

# Backups of 1 M events: create, verify and restore times and sizes (about 5 minutes).
.PHONY: bench-backup
bench-backup: $(INSTALLED)
	$(BIN)/python bench/backup.py

# The disaster-recovery drill, in full (about 3 minutes; not part of `make test`, which runs a short
# one): a throwaway PostgreSQL cluster archiving with deploy/pgbackrest is destroyed under load and
# restored; prints the timeline and the measured RTO and RPO. Installs pgbackrest if missing.
.PHONY: drill-dr
drill-dr: $(INSTALLED)
	sh scripts/install-dr-tools.sh
	$(BIN)/prog dr drill --duration 120

# Fault drills (drills/): each starts a platform of its own on its own PostgreSQL and Redis,
# breaks it on purpose and prints a timeline and one JSON line (README, "Drills").
.PHONY: drill-restart drill-outage
drill-restart: $(INSTALLED)
	$(BIN)/python drills/restart.py

drill-outage: $(INSTALLED)
	$(BIN)/python drills/outage.py

# ruff's rules (security included), the formatter's verdict on src/ and mypy over the package
# (pyproject.toml configures all three). Each runs, so one pass shows every finding; any one
# failing fails the target.
lint: $(INSTALLED)
	@status=0; \
	$(BIN)/ruff check src tests bench drills || status=1; \
	$(BIN)/ruff format --check src || status=1; \
	$(BIN)/mypy || status=1; \
	exit $$status

# Re-resolve requirements/runtime.lock and dev.lock (uv, at the version the dev extra pins) after
# changing pyproject.toml; every pin that still fits stays. `make lock PACKAGES="fastapi starlette"`
# also upgrades those, `make lock-upgrade` every package. See scripts/lock.sh.
lock:
	VENV=$(VENV) PYTHON=$(PYTHON) scripts/lock.sh $(PACKAGES)

lock-upgrade:
	VENV=$(VENV) PYTHON=$(PYTHON) scripts/lock.sh --upgrade

clean:
	rm -rf $(VENV) .pytest_cache
