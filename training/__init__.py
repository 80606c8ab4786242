"""How a triage model is built and judged, in wings: cohorts (read and simulate), fit, evaluation,
registry (MLflow) and replay; `cli` and `main_job` are the front doors."""
