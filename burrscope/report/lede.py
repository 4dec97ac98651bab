"""The report's first screen: the pooled scores, each beside the number of images it rests on and, for a
proportion, its 95 % Wilson interval, so that "recall 1.000" on six burrs reads as the rough estimate it is.

Plain data for the template, as in `sections`: a tile is a `label`, a `value`, a `detail` and an `n`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from burrscope.evaluation.intervals import wilson_interval
from burrscope.evaluation.scores import error_counts
from burrscope.report.sections import Namer, num


@dataclass(frozen=True)
class Counts:
    """The pooled out-of-fold predictions, counted; the class counts are None unless there are two classes."""

    images: int
    correct: int
    positives: int | None = None
    missed: int | None = None  # positives predicted negative
    negatives: int | None = None
    false_alarms: int | None = None  # negatives predicted positive


def count(predictions: pd.DataFrame, classes: Sequence[str]) -> Counts:
    """The pooled predictions, counted; missed burrs and false alarms as the aggregate stage counts them."""
    correct = int((predictions["label"] == predictions["predicted"]).sum())
    errors = error_counts(predictions, list(classes))
    if errors is None:
        return Counts(len(predictions), correct)
    positives = int((predictions["label"] == classes[-1]).sum())
    return Counts(len(predictions), correct, positives, errors["missed"], len(predictions) - positives,
                  errors["false_alarms"])  # fmt: skip


def percent(share: float) -> str:
    return f"{100 * share:.1f} %"


def interval(successes: int, trials: int, as_percent: bool = False) -> str:
    """ "95 % CI 0.902 to 0.997" for successes of trials, or "1.9 %, 95 % CI 0.3 % to 9.8 %"."""
    low, high = wilson_interval(successes, trials)
    if as_percent:
        return f"{percent(successes / trials)}, 95 % CI {percent(low)} to {percent(high)}"
    return f"95 % CI {low:.3f} to {high:.3f}"


def tiles(summary: Mapping[str, Any], counts: Counts, classes: Sequence[str], name: Namer) -> list[dict[str, str]]:
    """Recall, misses and false alarms of the positive class first (two classes), then accuracy and the scores
    that are not a simple proportion (no interval for those)."""
    overall, n = summary["overall"], counts.images
    shown: list[tuple[str, str, str, str]] = []
    if counts.positives and counts.negatives and counts.missed is not None and counts.false_alarms is not None:
        positive, negative = name(classes[-1]), name(classes[0])
        found = counts.positives - counts.missed
        of_positives, of_negatives = f"n = {counts.positives} {positive}", f"n = {counts.negatives} {negative}"
        shown += [
            (f"Recall of {positive}", num(found / counts.positives), interval(found, counts.positives), of_positives),
            (
                f"{positive} missed",
                f"{counts.missed} of {counts.positives}",
                interval(counts.missed, counts.positives, as_percent=True),
                of_positives,
            ),
            (
                f"{negative} flagged as {positive}",
                f"{counts.false_alarms} of {counts.negatives}",
                interval(counts.false_alarms, counts.negatives, as_percent=True),
                of_negatives,
            ),
        ]
    shown.append(("Accuracy", num(counts.correct / n), interval(counts.correct, n), f"n = {n} images"))
    balanced = num(overall.get("balanced_accuracy"))
    shown.append(("Balanced accuracy", balanced, "mean of per-class recall", f"n = {n} images"))
    if "roc_auc" in overall and counts.positives is not None:
        n_roc = f"n = {counts.positives} {name(classes[-1])}, {counts.negatives} {name(classes[0])}"
        shown.append(("ROC-AUC", num(overall["roc_auc"]), "over every threshold", n_roc))
    return [{"label": label, "value": value, "detail": detail, "n": n} for label, value, detail, n in shown]


def lede(summary: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], model: str) -> dict[str, Any]:
    """The pooled scores (roc_auc None if not scored), the data, the model and the exact weights it started from.

    `optimistic` is True when any fold kept its best epoch (train.keep: best), chosen on its held-out images:
    every held-out score is then biased upwards, and the report says so wherever it shows one.
    """
    overall = summary["overall"]
    weights = sorted({(run["weights"]["name"], run["weights"]["sha256"]) for run in runs}, key=str)
    return {
        "accuracy": num(overall["accuracy"]),
        "balanced_accuracy": num(overall["balanced_accuracy"]),
        "roc_auc": num(overall["roc_auc"]) if "roc_auc" in overall else None,
        "n_images": summary["n_images"],
        "folds": len(runs),
        "model": model,
        "weights": [name + (f", sha256 {sha[:12]}" if sha else "") for name, sha in weights],
        "optimistic": any(run.get("keep") == "best" for run in runs),
    }
