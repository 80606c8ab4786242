"""What a drift segment is compared with, the flag thresholds, and the standing differences
between labs: pure functions on the model's reference statistics (`models.reference`).

A reference made with the calibration rows' labs holds, besides the pooled statistics, each lab's
own (`by_lab`: missing rate and shares in the pooled bins, and the rows behind them). Labs differ
for standing reasons (lab_c measures plasma viscosity instead of ESR; assays and catchments
differ), so a segment is compared with the reference that makes drift mean change over time:

- one lab: that lab's own reference (`own lab`); the pooled one when the lab has none (too few
  calibration rows, a lab new since training, or a model saved before per-lab references:
  `pooled`);
- all labs together: the mixture of the labs' references weighted by the segment's own lab
  composition (`lab mix`): a change in which labs send the referrals is not drift, while a large
  change at one lab still shows. The missing rate is mixed by the segment's rows per lab, the
  observed-value shares by its observed values per lab (missingness is judged on its own).

A mixture's sampling noise is that of a weighted sum of independent references: its effective
rows are 1 / sum(w_r^2 / n_r) over the distinct references r it mixes (labs falling back to the
pooled reference count as one).

`standing_differences` lists what the per-lab references show between labs in the calibration
period, with the same thresholds as drift: a table to read once, not a flag per year.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats as scipy_stats

from models.reference import psi

FloatArray = npt.NDArray[np.float64]
SCORE = "score"  # the feature name under which the score's counts are kept
PSI_MODERATE = 0.1
PSI_MAJOR = 0.25
MISSINGNESS_CHANGE = 0.1
MIN_ROWS = 100
NOISE_P_VALUE = 0.001  # a flag also needs the change to be this unlikely without drift
OWN_LAB, POOLED, LAB_MIX = "own lab", "pooled", "lab mix"
NOT_MEASURED = 0.999  # a missing rate at least this high: the lab does not measure it
STANDING_COLUMNS = [
    "feature", "kind", "lab", "missing_rate", "pooled_missing_rate", "missing_difference",
    "psi_vs_pooled", "what",
]  # fmt: skip


@dataclass(frozen=True)
class Expected:
    """What one segment of one feature is compared with."""

    shares: FloatArray  # observed-value shares (value bins only; NaN: no observed values)
    missing_rate: float
    n: float  # reference rows behind the missing rate (effective rows for a mixture)
    n_observed: float  # reference observed values behind the shares (effective likewise)
    source: str  # OWN_LAB, POOLED or LAB_MIX


def observed_shares(shares: Sequence[float]) -> FloatArray:
    """Reference value-bin shares renormalised over the observed values (missing bin dropped)."""
    values = np.asarray(shares[:-1], dtype=np.float64)
    total = values.sum()
    return values / total if total > 0 else np.full(len(values), np.nan)


def feature_stats(reference: Mapping[str, Any], lab: str | None = None) -> dict[str, Any]:
    """The pooled statistics of every feature and of the score (under `SCORE`), or with `lab`
    that lab's own (empty when it has none)."""
    source = reference if lab is None else reference.get("by_lab", {}).get(lab, {})
    stats: dict[str, Any] = dict(source.get("features", {}))
    if "score" in source:
        stats[SCORE] = source["score"]
    return stats


def expected_for(stats: Mapping[str, Any], source: str) -> Expected:
    """A reference entry (`n`, `missing_rate`, `shares`) as an `Expected`."""
    missing = float(stats.get("missing_rate", 0.0))
    n = float(stats.get("n", 0))
    return Expected(observed_shares(stats["shares"]), missing, n, n * (1 - missing), source)


def lab_expected(reference: Mapping[str, Any], feature: str, lab: str) -> Expected:
    """One lab's segment: its own reference, else the pooled one."""
    own = feature_stats(reference, lab).get(feature)
    if own is not None:
        return expected_for(own, OWN_LAB)
    return expected_for(feature_stats(reference)[feature], POOLED)


def lab_mix(
    reference: Mapping[str, Any], feature: str, labs: Mapping[str, Sequence[int]]
) -> Expected:
    """All labs together: the labs' references mixed by the segment's composition. `labs` gives
    each lab's (rows, observed values) in the segment."""
    pooled = expected_for(feature_stats(reference)[feature], POOLED)
    parts: dict[str, tuple[Expected, float, float]] = {}  # one entry per distinct reference
    for lab, (lab_rows, lab_observed) in labs.items():
        own = lab_expected(reference, feature, lab)
        key = lab if own.source == OWN_LAB else POOLED
        _, r, o = parts.get(key, (own, 0.0, 0.0))
        parts[key] = (own, r + lab_rows, o + lab_observed)
    if not parts or set(parts) == {POOLED}:
        return pooled
    rows = np.array([p[1] for p in parts.values()], dtype=np.float64)
    observed = np.array([p[2] for p in parts.values()], dtype=np.float64)
    refs = [p[0] for p in parts.values()]
    # A lab never seen measuring this feature has no shares of its own: the pooled ones stand in.
    values = [r if np.isfinite(r.shares).all() else pooled for r in refs]
    value_weights = observed if observed.sum() > 0 else rows
    mixed = value_weights @ np.array([r.shares for r in values]) / value_weights.sum()
    missing = float(rows @ np.array([r.missing_rate for r in refs]) / rows.sum())
    return Expected(
        mixed,
        missing,
        _effective_rows(rows, np.array([r.n for r in refs])),
        _effective_rows(value_weights, np.array([r.n_observed for r in values])),
        LAB_MIX,
    )


def _effective_rows(weights: FloatArray, rows: FloatArray) -> float:
    """Effective rows of a weighted mixture of independent references: 1 / sum(w^2 / n)."""
    w = weights / weights.sum()
    used = w > 0
    if (rows[used] <= 0).any():
        return 0.0
    return float(1.0 / np.sum(w[used] ** 2 / rows[used]))


def noise_threshold(p_values: Iterable[float]) -> float:
    """The p-value below which a difference counts as beyond sampling noise: `NOISE_P_VALUE`
    shared among the tests made (the finite p-values; Bonferroni). A table holds thousands of
    tests (features x labs x years, values and missingness): at p < 0.001 each, a few would
    cross by chance in every replay."""
    tests = int(np.isfinite(np.asarray(list(p_values), dtype=np.float64)).sum())
    return NOISE_P_VALUE / max(tests, 1)


def psi_flag(value: float, p_value: float = 0.0, alpha: float = NOISE_P_VALUE) -> str:
    """`major` above 0.25, `moderate` above 0.1, else empty; empty too when the PSI is within
    sampling noise (`p_value` >= `alpha`, see `noise_threshold`) or NaN."""
    if not np.isfinite(value) or not p_value < alpha:
        return ""
    if value > PSI_MAJOR:
        return "major"
    return "moderate" if value > PSI_MODERATE else ""


def psi_p_value(value: float, n: int, n_reference: float, bins: int) -> float:
    """How likely a PSI at least this large is without drift: n_eff * PSI ~ chi2(bins - 1)."""
    if not np.isfinite(value) or n <= 0 or bins < 2:
        return float("nan")
    n_eff = 1.0 / (1.0 / n + (1.0 / n_reference if n_reference > 0 else 0.0))
    return float(scipy_stats.chi2.sf(n_eff * value, bins - 1))


def proportion_p_value(rate: float, n: int, reference_rate: float, n_reference: float) -> float:
    """Two-sided p-value of a difference between two proportions (normal approximation)."""
    if n <= 0 or not np.isfinite(rate):
        return float("nan")
    pooled = (rate * n + reference_rate * n_reference) / (n + n_reference)
    variance = pooled * (1 - pooled) * (1.0 / n + (1.0 / n_reference if n_reference > 0 else 0))
    if variance <= 0:
        return 1.0 if rate == reference_rate else 0.0
    return float(2 * scipy_stats.norm.sf(abs(rate - reference_rate) / np.sqrt(variance)))


def standing_differences(
    reference: Mapping[str, Any], kinds: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """The differences between labs in the calibration period: per feature (and score) and lab
    with its own reference, the lab's missing rate and value distribution against the pooled
    ones, kept where they differ beyond the drift thresholds (missing rates by more than
    `MISSINGNESS_CHANGE`, or a PSI flag), and beyond sampling noise (`noise_threshold` over the
    table's tests; the lab against the pooled rows as if independent: an approximation, since
    the lab is part of them)."""
    kinds = {**(kinds or {}), SCORE: "score"}
    pooled = feature_stats(reference)
    found: list[tuple[str, str, Expected, Expected]] = []
    for feature, stats in pooled.items():
        everyone = expected_for(stats, POOLED)
        for lab in reference.get("by_lab", {}):
            own = feature_stats(reference, lab).get(feature)
            if own is not None:
                found.append((feature, lab, expected_for(own, OWN_LAB), everyone))
    tests = [_standing_tests(own, everyone) for _, _, own, everyone in found]
    alpha = noise_threshold(p for t in tests for p in (t[1], t[3]))
    rows = [
        {"feature": feature, "kind": kinds.get(feature, "feature"), "lab": lab, **row}
        for (feature, lab, own, everyone), test in zip(found, tests, strict=True)
        if (row := _standing_row(own, everyone, test, alpha)) is not None
    ]
    numbers = ["missing_rate", "pooled_missing_rate", "missing_difference", "psi_vs_pooled"]
    return pd.DataFrame(rows, columns=STANDING_COLUMNS).astype(dict.fromkeys(numbers, float))


def _standing_tests(lab: Expected, pooled: Expected) -> tuple[float, float, float, float]:
    """A lab against the pooled reference: missing-rate difference and its p-value, PSI of the
    observed values and its p-value."""
    difference = lab.missing_rate - pooled.missing_rate
    missing_p = proportion_p_value(lab.missing_rate, int(lab.n), pooled.missing_rate, pooled.n)
    value = (
        psi(pooled.shares.tolist(), lab.shares.tolist())
        if lab.n_observed >= MIN_ROWS and np.isfinite(pooled.shares).all()
        else float("nan")
    )
    value_p = psi_p_value(value, int(lab.n_observed), pooled.n_observed, len(pooled.shares))
    return difference, missing_p, value, value_p


def _standing_row(
    lab: Expected, pooled: Expected, tests: tuple[float, float, float, float], alpha: float
) -> dict[str, Any] | None:
    """One lab's difference from the pooled reference, or None when within the thresholds."""
    difference, missing_p, value, value_p = tests
    missingness = abs(difference) > MISSINGNESS_CHANGE and missing_p < alpha
    distribution = bool(psi_flag(value, value_p, alpha))
    if not (missingness or distribution):
        return None
    rates = f"missing {lab.missing_rate:.0%} vs {pooled.missing_rate:.0%}"
    what = []
    if missingness and lab.missing_rate >= NOT_MEASURED:
        what.append(f"not measured here ({rates})")
    elif missingness:
        what.append(f"measured {'less' if difference > 0 else 'more'} often ({rates})")
    if distribution:
        what.append(f"distribution differs (PSI {value:.2f})")
    return {
        "missing_rate": lab.missing_rate,
        "pooled_missing_rate": pooled.missing_rate,
        "missing_difference": difference,
        "psi_vs_pooled": value,
        "what": "; ".join(what),
    }
