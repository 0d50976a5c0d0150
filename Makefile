# The verbs a person types. `make up` runs the platform; `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: up test lint lock clean

$(INSTALLED): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "ProgNetwork needs Python 3.11 or newer (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[local,test,dev,deploy]"
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

# Build every service image and run each against this machine's PostgreSQL and Redis (podman).
.PHONY: test-images
test-images:
	scripts/test-images.sh $(SERVICES)

# Benchmarks print a ratio against a baseline measured in the same run (not part of `make test`).
.PHONY: bench-gateway
bench-gateway: $(INSTALLED)
	$(BIN)/python bench/gateway.py

.PHONY: bench-streaming
bench-streaming: $(INSTALLED)
	$(BIN)/python bench/streaming.py

lint: $(INSTALLED)
	$(BIN)/ruff check src tests

# Re-pin every dependency after changing pyproject.toml.
lock: $(INSTALLED)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^pip==' > requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache
