"""A small documented search over LightGBM tree shape, judged on the calibration period only.

TreeSHAP cost grows with tree depth, so the specs' default shape is the simplest one whose
discrimination cannot be told apart from the best. Each shape is fitted with the real pipeline's
steps (load, validate, temporal split, early stopping on the training patients held out) on
several simulated referral cohorts (one per seed); its AUC is measured on the **calibration
period** (never the evaluation period, which stays untouched for the model's report). The shapes
are compared with the best one by the paired difference in AUC on the same calibration-period
patients (patient-level bootstrap), seed by seed.

Run: `.venv/bin/python benchmarks/search_hyperparams.py [--n 200000] [--spec any_cancer]
[--seeds 11 12 13] [--n-boot 1000]`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from models.calibration import expit
from models.predictor import spec_feature_frame
from models.spec import ModelSpec, load_spec
from training.cohorts.reader import open_cohort
from training.cohorts.simulator import run_simulation
from training.evaluation.metrics import auc, paired_auc_difference
from training.fit.family import fit_booster
from training.fit.train import select_population, split_periods, validate_cohort

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


def calibration_scores(spec: ModelSpec, cohort: Path) -> dict[tuple[int, int], dict]:  # type: ignore[type-arg]
    """Each shape's calibration-period margins, trees and explanation cost on one cohort."""
    source = open_cohort(cohort, 90, spec=spec)
    frame = validate_cohort(select_population(source.read(), spec), spec, source.digest()).frame
    periods = split_periods(frame, spec, spec.seed)
    x = {k: spec_feature_frame(spec, v) for k, v in periods.items()}
    y = {k: v[spec.outcome.column].to_numpy(np.int64) for k, v in periods.items()}
    out = {}
    for leaves, depth in SHAPES:
        shaped = with_shape(spec, leaves, depth)
        model = fit_booster(x["train"], y["train"], x["stop"], y["stop"], shaped, spec.seed, 0)
        sample = x["calibrate"].to_numpy(np.float64)[:2000]
        started = time.perf_counter()
        model.booster_.predict(sample, pred_contrib=True, num_threads=1)
        explain_ms = (time.perf_counter() - started) * 1000 / len(sample)
        out[(leaves, depth)] = {
            # AUC is rank-based: the uncalibrated probability ranks rows as the margin does.
            "margin": expit(model.predict(x["calibrate"], raw_score=True)),
            "trees": int(model.best_iteration_ or 0),
            "explain_ms": explain_ms,
        }
    out[(0, 0)] = {"y": y["calibrate"], "patients": periods["calibrate"]["patient_id"].to_numpy()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--spec", default="any_cancer")
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args()
    spec = load_spec(args.spec)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            folder = Path(tmp) / str(seed)
            run_simulation(cohort="referrals", n=args.n, seed=seed, out=folder)
            runs.append(calibration_scores(spec, folder))
    print(f"spec {args.spec}, {args.n:,} simulated referrals per seed, seeds {args.seeds}")
    print("AUC on the calibration period (never the evaluation period), mean over seeds")
    mean_auc = {
        shape: float(np.mean([auc(r[(0, 0)]["y"], r[shape]["margin"]) for r in runs]))
        for shape in SHAPES
    }
    best = max(SHAPES, key=lambda s: mean_auc[s])
    print(f"best by mean AUC: num_leaves {best[0]}, max_depth {best[1]}")
    print("leaves depth trees  AUC     explain ms/row  AUC - best [95% CI] per seed")
    for shape in SHAPES:
        diffs = []
        for r in runs:
            truth = r[(0, 0)]
            d = paired_auc_difference(
                truth["y"], r[shape]["margin"], r[best]["margin"], truth["patients"],
                n_boot=args.n_boot, seed=0,
            )  # fmt: skip
            diffs.append(f"{d['estimate']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]")
        trees = int(np.mean([r[shape]["trees"] for r in runs]))
        explain = float(np.mean([r[shape]["explain_ms"] for r in runs]))
        print(
            f"{shape[0]:6d} {shape[1]:5d} {trees:5d}  {mean_auc[shape]:.4f}  {explain:.3f}"
            f"           {'; '.join(diffs)}"
        )
    print(
        "A shape is indistinguishable from the best when every seed's interval covers 0; "
        "prefer the shallowest such shape (cheaper exact explanations)."
    )


if __name__ == "__main__":
    main()
