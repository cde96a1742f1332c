# Hangar: `make demo` runs the platform with an example app; `make test` runs the tests.
# Both install what they need first (Debian packages and a virtual environment).

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: deps apt venv check fmt test test-fast demo demo-clean install-units bench lock clean

deps: apt venv

apt:
	@scripts/apt-deps.sh

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet --require-hashes -r requirements.lock
	$(VENV)/bin/pip install --quiet --no-deps -e .
	touch $(STAMP)

check: venv
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fmt: venv
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

# --durations keeps the suite's slowest tests in view, run after run.
test: deps
	$(VENV)/bin/pytest --durations=25 $(PYTEST_ARGS)

test-fast: venv
	$(VENV)/bin/pytest -m "not slow and not postgres" --durations=10 $(PYTEST_ARGS)

demo: deps
	@scripts/demo.sh

# Stop what the demo left running (machines, HAProxy, firewall, mounts) and delete .demo/.
demo-clean: venv
	@scripts/demo-clean.sh

# systemd units for `hangar server run` and `hangar agent run` (docs/install.md).
install-units: venv
	@scripts/install-units.sh

# BENCH_ARGS=--quick runs each at tiny sizes: a check that they run, not a measurement.
bench: deps
	$(PY) benchmarks/api_throughput.py $(BENCH_ARGS)
	$(PY) benchmarks/machine_start.py $(BENCH_ARGS)
	$(PY) benchmarks/secrets_at_scale.py $(BENCH_ARGS)
	$(PY) benchmarks/volumes.py $(BENCH_ARGS)
	$(PY) benchmarks/edge_throughput.py $(BENCH_ARGS)
	$(PY) benchmarks/network_paths.py $(BENCH_ARGS)
	$(PY) benchmarks/telemetry.py $(BENCH_ARGS)
	$(PY) benchmarks/volumes.py $(BENCH_ARGS)
	$(PY) benchmarks/identity.py $(BENCH_ARGS)

# Re-pin every dependency (with hashes) after editing pyproject.toml.
lock: venv
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 \
		--generate-hashes --no-header -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
