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

.PHONY: venv run test test-slow ci lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,spark,postgres]"
	touch $(STAMP)

venv: $(STAMP)

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

clean:
	rm -rf $(VENV) $(VAR) .pytest_cache .mypy_cache .ruff_cache .hypothesis
