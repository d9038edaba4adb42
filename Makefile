# Two commands for a fresh machine: `make run` and `make test`.
# Each installs what it needs into .venv from this project's own files.
# `make check` lints and type-checks; `make fuzz` runs the schemathesis fuzzer of
# `make test` with thousands of cases (FUZZ_EXAMPLES per operation); `make bench`
# the benchmarks.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test check fuzz install install-test install-check bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The stamps re-install whenever pyproject.toml changes. `make run` needs the
# receiver extra; the test extra pulls it in too.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[receiver]'
	touch $@

$(VENV)/.installed-test: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

$(VENV)/.installed-check: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[test,check]'
	touch $@ $(VENV)/.installed-test $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test
install-check: $(VENV)/.installed-check

run: install
	$(BIN)/otaship serve

# Lint and types over the package, the tests and the benchmarks (pyproject.toml
# configures both).
check: install-check
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test: install-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# tests/receiver/http/test_fuzz.py runs 30 cases per operation inside `make test`; this runs
# it alone with FUZZ_EXAMPLES per operation, the same fixed seed.
FUZZ_EXAMPLES ?= 400
fuzz: install-test
	OTASHIP_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest tests/receiver/http/test_fuzz.py $(PYTEST_ARGS)

# The benchmark suite (bench/): never part of `make test`. It needs the test
# extras (real ESP32 images, the services helpers) and installs Debian's wrk and
# nginx itself when they are missing. BENCH_ARGS=--quick, --only check,...
bench: install-test
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) otaship-data .pytest_cache
