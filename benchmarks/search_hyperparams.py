"""A small documented search over LightGBM tree shape: AUC, calibration and explanation cost.

TreeSHAP cost grows with tree depth, so the specs' default shape is chosen where discrimination and
calibration plateau and explanations stay cheap. Trains each candidate with the real pipeline on a
simulated referral cohort (temporal split from the spec) and prints one row per shape.
Run: `.venv/bin/python benchmarks/search_hyperparams.py [--n 200000] [--spec any_cancer]`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from models.spec import ModelSpec, load_spec
from training.cohorts.simulator import run_simulation
from training.fit.train import TrainOptions, train_model

SHAPES = [  # (num_leaves, max_depth)
    (4, 2),
    (7, 3),
    (15, 4),
    (31, 5),
    (63, -1),
]


def with_shape(spec: ModelSpec, leaves: int, depth: int) -> ModelSpec:
    data = spec.model_dump(mode="json")
    data["lightgbm"] |= {"num_leaves": leaves, "max_depth": depth, "n_estimators": 2000}
    return ModelSpec.model_validate(data)


def explain_ms_per_row(result, rows: int = 2000) -> float:  # type: ignore[no-untyped-def]
    sample = result.periods["evaluate"].head(rows)
    x = result.predictor.feature_frame(sample).to_numpy(np.float64)
    booster = result.predictor.booster
    started = time.perf_counter()
    booster.predict(x, pred_contrib=True, num_threads=1)
    return (time.perf_counter() - started) * 1000 / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--spec", default="any_cancer")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_simulation(cohort="referrals", n=args.n, seed=args.seed, out=Path(tmp))
        cohort = next(Path(tmp).glob("*_wide.parquet"))
        base = load_spec(args.spec)
        print(f"spec {args.spec}, {args.n:,} simulated referrals, evaluation period 2017-2019")
        print("leaves depth trees  AUC    oracle  gap     slope  O/E    explain ms/row")
        for leaves, depth in SHAPES:
            spec = with_shape(base, leaves, depth)
            result = train_model(spec, TrainOptions(cohort=cohort, n_boot=20))
            ev = result.evaluation
            oracle = ev.get("oracle", {})
            print(
                f"{leaves:6d} {depth:5d} {result.provenance['best_iteration']:5d}  "
                f"{ev['auc']['estimate']:.4f} {oracle.get('oracle_auc', float('nan')):.4f} "
                f"{oracle.get('auc_gap', float('nan')):+.4f} "
                f"{ev['calibration']['slope']:.3f}  {ev['calibration']['observed_expected']:.3f}  "
                f"{explain_ms_per_row(result):.3f}"
            )


if __name__ == "__main__":
    main()
