"""The Wilson score interval the report's headline numbers carry, against published values."""

from __future__ import annotations

import pytest

from burrscope.evaluation.intervals import wilson_interval


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [
        # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (score interval without correction).
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_the_wilson_interval_matches_newcombes_published_values(
    successes: int, trials: int, low: float, high: float
) -> None:
    interval = wilson_interval(successes, trials)
    assert interval.low == pytest.approx(low, abs=5e-5) and interval.high == pytest.approx(high, abs=5e-5)


def test_the_interval_of_failures_mirrors_the_interval_of_successes() -> None:
    # So "1 of 54 burrs missed" and "recall 53 of 54" carry the same uncertainty.
    recall, missed = wilson_interval(53, 54), wilson_interval(1, 54)
    assert recall.low == pytest.approx(1 - missed.high) and recall.high == pytest.approx(1 - missed.low)


def test_all_or_nothing_stays_inside_zero_and_one_with_nonzero_width() -> None:
    assert wilson_interval(0, 5).low == 0 and 0 < wilson_interval(0, 5).high < 1
    assert wilson_interval(5, 5).high == 1 and 0 < wilson_interval(5, 5).low < 1


def test_a_higher_confidence_gives_a_wider_interval() -> None:
    narrow, wide = wilson_interval(40, 50, 0.90), wilson_interval(40, 50, 0.99)
    assert wide.low < narrow.low and narrow.high < wide.high


@pytest.mark.parametrize(("successes", "trials", "confidence"), [(3, 0, 0.95), (-1, 5, 0.95), (6, 5, 0.95), (1, 5, 1)])
def test_counts_that_are_not_a_proportion_are_refused(successes: int, trials: int, confidence: float) -> None:
    with pytest.raises(ValueError):
        wilson_interval(successes, trials, confidence)
