"""Additivity of an explanation, checked against a probability as it reaches a client.

A served probability is a double: near 0 or 1 its logit is ill-conditioned (dlogit/dp =
1/(p(1-p))), so one rounding of p moves logit(p) by about eps/(p(1-p)). At p = 1 - 1.3e-7
(logit 15.8) that is 1.7e-9, more than a fixed 1e-9, which is how a Hypothesis draw once
failed a correct answer. The tolerance below is 1e-9 plus a few such roundings, nothing more.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable


def logit_tolerance(probability: float) -> float:
    """How far logit(probability) may sit from the exact log-odds for rounding alone."""
    return 1e-9 + 8 * sys.float_info.epsilon / (probability * (1 - probability))


def assert_additive(base: float, contributions: Iterable[float], probability: float) -> None:
    """base + sum(contributions) == logit(probability), to the probability's own precision."""
    assert 0.0 < probability < 1.0, probability
    logit = math.log(probability) - math.log1p(-probability)
    gap = abs(base + math.fsum(contributions) - logit)
    assert gap < logit_tolerance(probability), (
        f"base + sum(contributions) == logit(probability): gap {gap:.2e} at p = {probability!r}"
    )
