# Two commands for a fresh machine: `make run` and `make test`.
# Each installs what it needs into .venv from this project's own files.
# `make check` lints and type-checks; `make fuzz` runs the schemathesis fuzzer of
# `make test` with thousands of cases (FUZZ_EXAMPLES per operation); `make bench`
# the benchmarks.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# What installs the packages: uv, which pip puts into the venv first, so that
# python3 and make are all a machine needs. A cold `make run` reached a serving
# receiver in 41 s and 23 s with uv against 69 s and 41 s with pip (no cache,
# alternating runs on one 2-core machine). Where no uv wheel exists, pip does it.
INSTALLER := $(VENV)/.installer
# Read when a recipe runs, after $(INSTALLER) was made.
INSTALL = $(shell cat $(INSTALLER))
# Bytecode is compiled once, at install time (pip does it by default, uv only
# when asked), the project's own modules at install and before each test run
# (a run then recompiles in memory only what changed since): a machine with
# PYTHONDONTWRITEBYTECODE set never caches it otherwise, and every process
# recompiles everything it imports: importing the CLI cost 3.1 s of CPU
# against 1.3 s compiled, and the suite starts hundreds of such processes.
COMPILE = $(BIN)/python -m compileall -q -j 0

.PHONY: run test check fuzz install install-test install-check bench clean

$(BIN)/python:
	@echo "== creating $(VENV)"
	$(PYTHON) -m venv $(VENV)

$(INSTALLER): $(BIN)/python
	@echo "== installing uv into $(VENV) with pip"
	@if $(BIN)/python -m pip install --only-binary uv uv; then \
		echo '$(BIN)/uv pip install --compile-bytecode --python $(BIN)/python' > $@; \
	else \
		echo "== no uv for this machine: installing with pip"; \
		echo '$(BIN)/python -m pip install' > $@; \
	fi

# The stamps re-install whenever pyproject.toml changes. `make run` needs the
# receiver extra; the test extra pulls it in too.
$(VENV)/.installed: $(INSTALLER) pyproject.toml
	@echo "== installing otaship[receiver] into $(VENV)"
	$(INSTALL) -e '.[receiver]'
	@$(COMPILE) src
	touch $@

$(VENV)/.installed-test: $(INSTALLER) pyproject.toml
	@echo "== installing otaship[test] into $(VENV)"
	$(INSTALL) -e '.[test]'
	touch $@ $(VENV)/.installed

$(VENV)/.installed-check: $(INSTALLER) pyproject.toml
	@echo "== installing otaship[test,check] into $(VENV)"
	$(INSTALL) -e '.[test,check]'
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

# Four processes, on any core count: the suite mostly waits (on receivers
# starting, brokers, timeouts), and in one process it kept a 2-core machine's
# load average near 1 for over 40 minutes. TEST_WORKERS=0 runs it in this
# process (for a debugger).
TEST_WORKERS ?= 4
# The slowest tests are listed at the end, so that a CI run that grows long
# says where its time went.
test: install-test
	@$(COMPILE) src tests
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --durations=30 $(PYTEST_ARGS)

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
