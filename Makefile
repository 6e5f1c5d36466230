# SigDL: `make run` runs the whole loop on embedded defaults, `make test` runs lint + tests.
# Both create .venv and install what they need; nothing has to be installed by hand.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
# Tests and benchmarks read MNIST / Fashion-MNIST from here; the product never needs it.
SHARED_DATA ?= $(abspath ../shared/datasets)

.PHONY: help install dev run test lint format protos bench-train bench-ddp clean

help:
	@echo "make run    - install into $(VENV) and run the loop on embedded defaults"
	@echo "make test   - install dev extras, run ruff and the whole test suite"
	@echo "make lint | format | protos | bench-train | bench-ddp | clean"

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed
	$(PIP) install -e '.[dev]'
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.dev-installed

run: install
	$(VENV)/bin/sigdl run

lint: dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	SIGDL_DATA=$(SHARED_DATA) $(PY) -m pytest -q -m "not slow" -p no:cacheprovider

# The Python stubs of services/protos/sigdl/v1/*.proto (committed; a test fails when stale).
protos: dev
	$(PY) -m services.protos.generate

# Full-length trainings for the accuracy baselines (about 10-30 min each on 2 cores).
bench-train: dev
	SIGDL_DATA=$(SHARED_DATA) $(PY) benchmarks/baselines.py

bench-ddp: dev
	SIGDL_DATA=$(SHARED_DATA) $(PY) benchmarks/ddp_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
