# The two commands: `make up` (set up + run the embedded service) and `make test` (set up + run the suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rnnlab-installed

.PHONY: setup up test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# CPU torch first, pinned, so the project's torch>=2.4 range never pulls a multi-GB CUDA wheel.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

up: setup
	$(BIN)/rnnlab up

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check app worker tests bench
	$(BIN)/ruff format --check app worker tests bench
	$(BIN)/mypy app worker

bench: setup
	$(BIN)/python bench/engine_vs_raw.py
	$(BIN)/python bench/job_overhead.py

clean:
	rm -rf $(VENV) .rnnlab
