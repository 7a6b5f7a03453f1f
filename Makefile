# churnlab: `make workbook` runs the pipeline, `make test` checks everything.
# Both set themselves up: they use the active virtual or conda environment if there is
# one, otherwise they create .venv with python3 (3.11 or newer) and install the project.

SHELL := /bin/bash
PYTHON ?= python3

ifdef VIRTUAL_ENV
ENV_DIR := $(VIRTUAL_ENV)
else ifdef CONDA_PREFIX
ENV_DIR := $(CONDA_PREFIX)
else
ENV_DIR := $(CURDIR)/.venv
endif
PY := $(ENV_DIR)/bin/python
BIN := $(ENV_DIR)/bin
STAMP := $(ENV_DIR)/.churnlab-installed

.PHONY: setup workbook test test-fast test-load lint format lab mlflow-ui bench clean class-server

setup: $(STAMP)

$(STAMP): pyproject.toml
	@if [ ! -x "$(PY)" ]; then \
	  $(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
	    || { echo "churnlab needs Python 3.11 or newer as $(PYTHON)"; exit 2; }; \
	  echo "creating $(ENV_DIR)"; $(PYTHON) -m venv "$(ENV_DIR)"; \
	fi
	@echo "installing churnlab and its dev tools into $(ENV_DIR)"
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	@touch "$(STAMP)"

workbook: $(STAMP)
	$(BIN)/churnlab workbook $(ARGS)

# `make test`: the suite on TEST_WORKERS pytest-xdist workers (--dist loadgroup: the tests
# sharing a server or the workbook run stay on one worker) while strict nbval re-runs the
# committed notebooks beside it; nbval's output follows the suite's, and both must pass.
# It first names the system programs it did not find (their tests skip; under CI=true they
# fail) and the one apt-get line that adds them. The load tests (marked `load`) run at a
# size that still proves their point; `make test-load` runs them at full size (LOAD_SIZES).
TEST_WORKERS ?= 2
NBVAL := $(PY) -m pytest --nbval notebooks/ --nbval-current-env --nbval-sanitize-with notebooks/nbval.cfg
#: the full size of each load test (README, Tests): `make test` uses the tests' own defaults
#: (a class of 6, 8 s of wrk, 3 switches, 300 fuzzing cases, 12 students' stories)
LOAD_SIZES := CHURNLAB_CLASS_SIZE=30 CHURNLAB_LOAD_SECONDS=30 CHURNLAB_POLL_SWITCHES=10 \
	CHURNLAB_WEBHOOK_SWITCHES=4 CHURNLAB_FUZZ_CASES=1500 CHURNLAB_STORY_NAMES=50

test: $(STAMP)
	@$(PY) tests/support.py
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	@log=$$(mktemp); trap 'rm -f "$$log"' EXIT; \
	$(NBVAL) >"$$log" 2>&1 & notebooks=$$!; \
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS); suite=$$?; \
	wait $$notebooks; nbval=$$?; cat "$$log"; \
	[ $$suite -eq 0 ] && [ $$nbval -eq 0 ]

# the tests not marked slow, on the same two workers (no server, browser, PostgreSQL, notebook
# or load run: what to run while working)
test-fast: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup -x -q -m "not slow" $(PYTEST_ARGS)

# the load tests at full size: thirty students, 32 clients for 30 s, 10 and 4 switches
# under load, 1,500 fuzzing cases, 50 students' stories (.ci/run runs it after `make test`)
test-load: $(STAMP)
	@$(PY) tests/support.py
	$(LOAD_SIZES) $(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup -m load $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format .

# `make lab ARGS="--port 8890 --no-browser"`: ARGS go to JupyterLab. As root (a container, a
# cloud notebook) JupyterLab refuses to start without --allow-root, so the target adds it.
lab: $(STAMP)
	@root=""; if [ "$$(id -u)" = "0" ]; then root="--allow-root"; \
	  echo "make lab: running as root (a container or a cloud notebook): adding --allow-root"; fi; \
	cd notebooks && exec $(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 $$root $(ARGS)

mlflow-ui: $(STAMP)
	$(BIN)/churnlab ui

# A class's registry: mlflow basic-auth on PostgreSQL with served artifacts, in ./class-server
# (docs/class-server.md). Then: churnlab class-add-students students.csv
class-server: $(STAMP)
	$(BIN)/churnlab class-server $(ARGS)

# Speed against `mlflow models serve`, and the workbook's wall time (needs Debian's wrk);
# thirty students doing the workbook at once on one class server (needs PostgreSQL);
# prints the tables and writes reports/bench/*.json. Not part of `make test`. Last, the load
# tests at full size, one after another (no other test beside them), print their figures.
bench: $(STAMP)
	@command -v wrk >/dev/null || { echo "bench needs wrk: apt-get install -y wrk"; exit 2; }
	$(PY) -m benchmarks.serving $(BENCH_ARGS)
	$(PY) -m benchmarks.follow
	$(PY) -m benchmarks.pipeline
	$(PY) -m benchmarks.batch
	$(PY) -m benchmarks.class
	$(LOAD_SIZES) $(PY) -m pytest -m load -q -s

clean:
	rm -rf .churnlab reports/*.html reports/executed reports/bench
