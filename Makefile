# Two commands on a fresh machine: `make demo` (the main job end to end on the embedded
# default) and `make test`. Both bootstrap uv and the locked environment when missing.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := python3 -m uv
endif
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export GX_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true

DEMO_DATES ?= 2013-01-01:2013-01-31
PYTEST_ARGS ?=
PYTEST_WORKERS ?= 2

.PHONY: demo test lint env clean-demo airflow airflow-stop bench serve

env: $(VENV)/.synced

# uv from PyPI if missing, the locked environment, then one byte-compile pass
# (PYTHONDONTWRITEBYTECODE is set on these machines; compiled imports are ~2x faster).
$(VENV)/.synced: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@start=$$SECONDS; $(UV) sync --frozen && echo "uv sync:$$((SECONDS - start))" > $(VENV)/.timings
	@start=$$SECONDS; $(VENV)/bin/python -m compileall -q -j 0 $(VENV)/lib pipelines > /dev/null || true; \
	  echo "byte-compile:$$((SECONDS - start))" >> $(VENV)/.timings
	@touch $@

demo: env
	DEMO_DATES=$(DEMO_DATES) bash scripts/demo.sh

# Airflow on 127.0.0.1:8080 with this project's DAGs (SQLite + LocalExecutor); Ctrl-C stops it
airflow: env
	bash scripts/airflow.sh

airflow-stop:
	-kill -TERM $$(cat airflow-home/pids 2>/dev/null) 2>/dev/null

bench: env
	$(VENV)/bin/python bench/dag_parse.py
	$(VENV)/bin/python bench/train_full_year.py
	$(VENV)/bin/python bench/validate_year.py
	$(VENV)/bin/python bench/monitor_day.py
	$(VENV)/bin/python bench/backfill_range.py
	$(VENV)/bin/python bench/serve_load.py   # needs a champion: run `make demo` first

# the champion behind the REST API on 127.0.0.1:8000 (after `make demo`)
serve: env
	$(VENV)/bin/mlops serve --port 8000

# two workers (pytest-xdist), handed one test at a time in the order tests/conftest.py gives (the
# long ones first), except that the tests sharing a costly fixture go together to one worker;
# PYTEST_WORKERS=0 runs everything in one process
test: env
	$(VENV)/bin/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS)

lint: env
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy pipelines

clean-demo:
	rm -rf data/incoming data/quarantine data/validated data/validated.dvc data/window data/features \
	  models reports plots metrics.json mlflow.db mlartifacts .mlops dvc.lock data/predictions
