# One virtual environment per checkout; every target that needs it depends on it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
VAR    ?= $(or $(TRIAGE_HOME),var)

# No usage telemetry leaves this machine (BentoML and MLflow report usage by default).
export BENTOML_DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

.PHONY: venv lock run test test-slow ci lint bench clean

# Built fresh from the lock, never resolved: every package at the version in uv.lock, checked
# against its sha256 (requirements/*.lock are exported from uv.lock, see `lock`). Without build
# isolation, what is built from source (pyspark, which PyPI ships as source only, and the project
# itself, editable) is built by the pinned setuptools of tools.lock, not by whatever is newest.
LOCKS  := requirements/tools.lock requirements/dev.lock
PIP_LOCKED := $(BIN)/python -m pip install --quiet --require-hashes --no-deps --no-build-isolation

$(STAMP): pyproject.toml uv.lock $(LOCKS)
	$(PYTHON) -m venv --clear $(VENV)
	$(PIP_LOCKED) -r requirements/tools.lock
	$(PIP_LOCKED) -r requirements/dev.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

venv: $(STAMP)

## Re-lock after editing pyproject.toml's dependencies (or `make lock LOCK_ARGS="--upgrade-package
## NAME"`), then export the pip files from uv.lock; the next `make` rebuilds .venv from them.
## A file whose export did not change is left untouched, so nothing is rebuilt for nothing.
EXPORT := $(BIN)/uv export --frozen --format requirements-txt --no-emit-project
lock: $(BIN)/uv
	$(BIN)/uv lock $(LOCK_ARGS)
	$(EXPORT) --extra dev --extra spark --extra postgres > requirements/dev.lock.new
	$(EXPORT) --extra postgres > requirements/serving.lock.new
	for f in requirements/dev.lock requirements/serving.lock; do \
	  cmp -s $$f.new $$f && rm $$f.new || mv $$f.new $$f; done

$(BIN)/uv: requirements/tools.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_LOCKED) -r requirements/tools.lock

## The main job on embedded defaults: simulate, validate, train, promote, release and serve.
## MLflow: SQLite in $(VAR), or the store/server of MLFLOW_TRACKING_URI when set.
run: $(STAMP)
	$(BIN)/python -m training.main_job --workdir $(VAR)

lint: $(STAMP)
	$(BIN)/ruff check models training serving tests benchmarks
	$(BIN)/ruff format --check models training serving tests benchmarks
	$(BIN)/mypy

## Fast tier: lint, type check and the default pytest selection.
test: lint
	$(BIN)/pytest -q

## Slow tier (marked `slow`); exit code 5 means no slow test is collected, which is fine.
test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow || [ $$? -eq 5 ]

## What CI runs: the fast tier (the README's test command), then the slow tier.
ci: test test-slow

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_validate.py
	$(BIN)/python benchmarks/bench_simulate.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_serve.py
	$(BIN)/python benchmarks/bench_replay.py
	$(BIN)/python benchmarks/bench_omop.py
	$(BIN)/python benchmarks/bench_monitor.py

clean:
	rm -rf $(VENV) $(VAR) .pytest_cache .mypy_cache .ruff_cache .hypothesis
