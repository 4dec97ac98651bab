"""Confidence intervals for the proportions the report leads with: accuracy, recall, the share of burrs missed.

The Wilson score interval (Wilson, 1927) rather than the textbook normal ("Wald") one: with a few dozen images
and a proportion near 0 or 1, where a good classifier sits, Wald's interval collapses to zero width at 0 of n
and spills past 1, while Wilson's keeps its nominal coverage (Newcombe, 1998; Brown, Cai and DasGupta, 2001).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import NamedTuple


class Interval(NamedTuple):
    low: float
    high: float


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> Interval:
    """The Wilson score interval of `successes` of `trials`; ValueError for counts that are not a proportion.

    It covers the sampling of the images only: the folds' models are taken as fixed.
    """
    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials > 0, not {successes} of {trials}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), not {confidence}")
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    share = successes / trials
    scale = 1 + z * z / trials
    centre = (share + z * z / (2 * trials)) / scale
    half = z / scale * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials))
    # Clamped: at 0 of n or n of n the bound is exactly 0 or 1, but rounding can leave it a hair outside.
    return Interval(max(0.0, centre - half), min(1.0, centre + half))
