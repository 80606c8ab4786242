"""Check a case-control model on the population it will be used on: train the myeloma model on the
matched sample, replay the champion over the whole simulated population's evaluation period
(`myeloma_population.parquet`), and compare its risks with the simulator's `true_risk`: O/E by
10-year age band and by sex, and the PPV the model claims at its red threshold (from the
sample, controls weighted 1/r_s, with its 95% CI) against the population's PPV there: realised
(the people at or above it who have myeloma, which is what the sample's cases can show) and
expected (their mean true risk). The figures are computed here with pandas, not by the
evaluation code.

Run: `.venv/bin/python benchmarks/case_control_population.py [--n 4000000] [--seed 7]` (the
`make run` population and seed; about 3 minutes and 5 GB of memory).
The slow test `tests/training/test_case_control_population.py` asserts the issue's bounds on it.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from models.spec import load_spec
from training.cohorts.simulator import run_simulation
from training.fit.train import TrainOptions, train_model
from training.registry.promote import promote
from training.registry.runs import log_training
from training.registry.store import Tracking
from training.replay.options import ReplayOptions
from training.replay.run import replay

BANDS = [(40, 50, "40-49"), (50, 60, "50-59"), (60, 70, "60-69"), (70, 80, "70-79"),
         (80, 200, "80+")]  # fmt: skip


def population_check(root: Path, n: int, seed: int) -> dict[str, Any]:
    """Simulate, train, register, promote, replay over the population; the figures."""
    cohort = root / "cohort"
    run_simulation(cohort="myeloma", n=n, seed=seed, out=cohort)
    spec = load_spec("myeloma")
    result = train_model(spec, TrainOptions(cohort, n_boot=200))
    tracking = Tracking(root / "var")
    logged = log_training(result, tracking)
    promoted, _ = promote(tracking, spec, logged.version, override_reason="population check")
    if not promoted:
        raise RuntimeError("the override did not promote the model")
    out = root / "replay"
    replay(
        tracking,
        ["myeloma@champion"],
        ReplayOptions(cohort / "myeloma_population.parquet", out, period="evaluate", n_boot=50),
    )
    scores = pd.concat(pd.read_parquet(p) for p in sorted(out.glob("**/scores*.parquet")))
    population = pd.read_parquet(
        cohort / "myeloma_population.parquet",
        columns=["referral_id", "age", "sex", "true_risk", "cancer"],
    )
    rows = scores[["referral_id", "probability"]].merge(population, on="referral_id")
    rows = rows[rows["probability"].notna()]
    groups = {label: (rows["age"] >= low) & (rows["age"] < high) for low, high, label in BANDS}
    groups |= {sex: rows["sex"] == sex for sex in ("female", "male")}
    table = pd.DataFrame(
        [
            {
                "group": name,
                "people": int(mask.sum()),
                "mean true risk": float(rows.loc[mask, "true_risk"].mean()),
                "mean predicted": float(rows.loc[mask, "probability"].mean()),
                "O/E": float(
                    rows.loc[mask, "true_risk"].sum() / rows.loc[mask, "probability"].sum()
                ),
            }
            for name, mask in groups.items()
        ]
    )
    red = result.predictor.thresholds.rule_in
    red_block = result.evaluation["thresholds"].get("red") or {}
    claim = red_block.get("ppv") or {}
    actual = realised = None
    if red is not None:
        above = rows["probability"] >= red
        actual = float(rows.loc[above, "true_risk"].mean())
        realised = float(rows.loc[above, "cancer"].mean())
    return {
        "result": result,
        "scored": len(rows),
        "table": table,
        "red": red,
        "claimed_ppv": claim.get("estimate"),
        "claimed_ppv_ci": (claim.get("low"), claim.get("high")),
        "population_ppv": actual,
        "population_ppv_realised": realised,
        "people_above_red": int((rows["probability"] >= red).sum()) if red is not None else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=4_000_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = population_check(Path(tmp), args.n, args.seed)
    print(f"myeloma population {args.n:,} (seed {args.seed}); evaluation period replayed: "
          f"{figures['scored']:,} people scored")  # fmt: skip
    print(figures["table"].to_string(index=False, float_format=lambda v: f"{v:.5f}"))
    if figures["red"] is not None:
        low, high = figures["claimed_ppv_ci"]
        print(
            f"red threshold {figures['red']:.5f}: PPV claimed from the weighted sample "
            f"{figures['claimed_ppv']:.5f} [95% CI {low:.5f}, {high:.5f}]; the population's PPV "
            f"there {figures['population_ppv']:.5f} (mean true risk; realised "
            f"{figures['population_ppv_realised']:.5f})"
        )
    sampling = figures["result"].provenance["case_control"]
    print(
        f"strata {sampling['strata']}, overall sampling fraction "
        f"{sampling['overall_sampling_fraction']:.5f}, borrowed: {sampling['borrowed']}"
    )


if __name__ == "__main__":
    main()
