# The two commands: `make up` (set up + run the embedded service) and `make test` (set up + run the suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rnnlab-installed
TORCH_PIP_ARGS ?=

.PHONY: setup up test lint bench clean vendor

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned. It is a CPU build only where pip finds a CPU wheel on its own (a local
	# find-links directory, as on our build machines); on a normal Linux machine PyPI serves the
	# multi-GB CUDA build. For a CPU-only install there, pass pip options that point at PyTorch's
	# CPU wheel index: make setup TORCH_PIP_ARGS="--index-url <that index>".
	$(BIN)/python -m pip install --quiet $(TORCH_PIP_ARGS) torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

up: setup
	$(BIN)/rnnlab up

# The suite runs in PYTEST_WORKERS pytest-xdist processes (most of its time is spent waiting on worker
# subprocesses, servers and PostgreSQL, so more processes than cores still helps). Tests that share an
# expensive module fixture carry @pytest.mark.xdist_group for --dist loadgroup; with pytest 9.2 and
# pytest-xdist 3.8 the groups are silently ignored (pytest-xdist issue #1386), so each process that
# gets one of their tests builds the fixture itself. PYTEST_WORKERS=0 runs it serially in one process.
PYTEST_WORKERS ?= 4
test: setup
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check app worker rnnlab tests bench
	$(BIN)/ruff format --check app worker rnnlab tests bench
	$(BIN)/mypy app worker rnnlab

# Three of the benchmarks; the others run one at a time (README: Benchmarks lists every command).
bench: setup
	$(BIN)/python bench/engine_vs_raw.py
	$(BIN)/python bench/job_overhead.py
	$(BIN)/python bench/export_models.py

# The dashboard's charting library, vendored from the npm package (the page must work offline: no CDN).
ECHARTS_VERSION ?= 6.1.0
VENDOR_DIR := app/dashboard/static/vendor/echarts

vendor:
	rm -rf .vendor-tmp && mkdir -p .vendor-tmp
	cd .vendor-tmp && npm pack --silent echarts@$(ECHARTS_VERSION) && tar xzf echarts-$(ECHARTS_VERSION).tgz
	rm -rf $(VENDOR_DIR) && mkdir -p $(VENDOR_DIR)
	cp .vendor-tmp/package/dist/echarts.min.js .vendor-tmp/package/LICENSE .vendor-tmp/package/NOTICE $(VENDOR_DIR)/
	cp .vendor-tmp/package/licenses/LICENSE-d3 $(VENDOR_DIR)/
	echo "$(ECHARTS_VERSION)" > $(VENDOR_DIR)/VERSION
	rm -rf .vendor-tmp

clean:
	rm -rf $(VENV) .rnnlab
