"""The learning curve: balanced accuracy against the training photos per fold, and what it says about more photos.

Each point pools the out-of-fold predictions of every fold trained on the same share of its training images and
scored on its whole held-out fold, so all points are scored on the same images; the last point is the pipeline's
own cross-validation (results/aggregate). A point's interval comes from a stratified bootstrap over those images
(the folds' models taken as fixed, as for the report's Wilson intervals). The last step's gain is bootstrapped
paired: each resample scores the same images at both points, so that what the two share (hard images, the folds)
cancels, and the verdict follows that gain's interval, not the point estimates.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from burrscope.classes import class_order, prob_column
from burrscope.errors import DataError
from burrscope.evaluation.scores import apply_threshold
from burrscope.files import write_text_atomic
from burrscope.tables import (
    CURVE,
    CURVE_COLUMNS,
    CURVE_SIZES,
    FOLD_COLUMNS,
    PREDICTION_COLUMNS,
    PREDICTIONS,
    RERUN,
    VERDICT,
    read_table,
)

BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95
# A gain whose whole interval lies within this of zero has levelled off: smaller than the difference that one
# photo in fifty makes, and smaller than a user would act on.
LEVEL_BAND = 0.02
OFF = (
    "The learning curve is off (params curve.fractions is []). `dvc exp run -S 'curve.fractions=[0.25,0.5,0.75]'` "
    "trains on smaller shares of each fold's photos, to show whether more photos would help."
)


@dataclass(frozen=True)
class Point:
    """Predictions of every held-out image by folds trained on `fraction` of their training images."""

    fraction: float
    train_images: float  # per fold, averaged over the folds
    predictions: pd.DataFrame  # FOLD_COLUMNS, predicted, prob_<class>: one row per image


def correctness(points: list[Point], classes: list[str], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """P x N: whether each point's decision (at `threshold`) is right for each image, images in one order; the
    images' labels. DataError unless every point predicts the same images."""
    files = sorted(points[-1].predictions["file"])
    rows = []
    for point in points:
        table = point.predictions.set_index("file")
        if sorted(table.index) != files:
            raise DataError(
                f"the learning curve's point at {point.fraction:g} predicts other images than the full run "
                f"(its folds were trained on another folds.csv); {RERUN}."
            )
        decided = apply_threshold(table.loc[files].reset_index(), classes, threshold)
        rows.append(decided["correct"].to_numpy())
    labels = points[-1].predictions.set_index("file").loc[files, "label"].to_numpy()
    return np.array(rows, dtype=float), labels


def balanced_accuracy(correct: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per row of `correct` (P x N): the mean over classes of the share of that class's images decided right."""
    return np.mean([correct[:, labels == label].mean(axis=1) for label in np.unique(labels)], axis=0)


def bootstrap(correct: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """P x B balanced accuracies of the points on B resamples; each resample draws every class's images with
    replacement, as many as it has, and is shared by all points (so differences between points are paired)."""
    rng = np.random.default_rng(seed)
    recalls = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        draws = members[rng.integers(0, len(members), size=(BOOTSTRAP_SAMPLES, len(members)))]
        recalls.append(correct[:, draws].mean(axis=2))
    return np.mean(recalls, axis=0)


def interval(samples: np.ndarray) -> tuple[float, float]:
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail], axis=-1)
    return float(low), float(high)


def curve_table(points: list[Point], classes: list[str], *, threshold: float, seed: int) -> pd.DataFrame:
    """One row per point, fewest photos first: its fraction, photos per fold, balanced accuracy and interval."""
    correct, labels = correctness(points, classes, threshold)
    resampled = bootstrap(correct, labels, seed)
    rows = [
        {
            "fraction": point.fraction,
            "train_images": round(point.train_images, 1),
            "balanced_accuracy": round(float(value), 4),
            **dict(zip(("low", "high"), (round(bound, 4) for bound in interval(samples)), strict=True)),
        }
        for point, value, samples in zip(points, balanced_accuracy(correct, labels), resampled, strict=True)
    ]
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def pair(first: float, second: float) -> tuple[str, str]:
    """Two scores to two decimals, or three where two would print them equal."""
    digits = 2 if round(first, 2) != round(second, 2) else 3
    return f"{first:.{digits}f}", f"{second:.{digits}f}"


def verdict(points: list[Point], classes: list[str], *, threshold: float, seed: int) -> dict[str, Any]:
    """What the curve's last step says about more photos: its trend, the gain with its paired interval, and one
    sentence whose wording follows the interval."""
    if len(points) < 2:
        return {"trend": "off", "sentence": OFF}
    correct, labels = correctness(points[-2:], classes, threshold)
    before, after = balanced_accuracy(correct, labels)
    resampled = bootstrap(correct, labels, seed)
    low, high = interval(resampled[1] - resampled[0])
    gain = float(after - before)
    if low > 0:
        trend = "rising"
    elif high < 0:
        trend = "falling"
    elif abs(low) <= LEVEL_BAND and abs(high) <= LEVEL_BAND:
        trend = "flat"
    else:
        trend = "unclear"
    photos = (math.floor(points[-2].train_images + 0.5), math.floor(points[-1].train_images + 0.5))
    shown = pair(float(before), float(after))
    start = f"From {photos[0]} to {photos[1]} training photos per fold, balanced accuracy"
    span = f"(gain {gain:+.3f}, {CONFIDENCE:.0%} interval {low:+.3f} to {high:+.3f})"
    sentence = {
        "rising": f"{start} rose from {shown[0]} to {shown[1]} {span} and has not levelled off: more photos are "
        "likely to help.",
        "flat": f"{start} barely moved, from {shown[0]} to {shown[1]} {span}: the curve has levelled off, so more "
        "photos like these are unlikely to help much; the labels and the hardest photos are the better place to look.",
        "falling": f"{start} fell from {shown[0]} to {shown[1]} {span}: more photos did not help here, which points "
        "to label noise or photos unlike the rest more than to a lack of photos.",
        "unclear": f"{start} went from {shown[0]} to {shown[1]}, but the {CONFIDENCE:.0%} interval of the gain "
        f"({low:+.3f} to {high:+.3f}) holds both no gain and a real one: too few held-out photos to tell whether "
        "more would help.",
    }[trend]
    return {"trend": trend, "gain": round(gain, 4), "low": round(low, 4), "high": round(high, 4), "sentence": sentence}


def fraction_dir(fractions_dir: Path, fraction: float) -> Path:
    """Where the curve_point stage for `fraction` writes: named as DVC names the stage's item (0.25)."""
    return fractions_dir / str(fraction)


def load_points(folds_csv: Path, fractions_dir: Path, fractions: list[float], full_predictions: Path) -> list[Point]:
    """The curve's points, fewest photos first: each of `fractions` from its folder, then the full run's."""
    folds = read_table(folds_csv, FOLD_COLUMNS, numeric=["fold"])
    probabilities = [prob_column(label) for label in class_order(folds["label"])]
    columns = [*PREDICTION_COLUMNS, *probabilities]
    held_out = folds["fold"].value_counts()
    points = [
        Point(
            1.0,
            float(np.mean([len(folds) - n for n in held_out])),
            read_table(full_predictions, columns, numeric=probabilities),
        )
    ]
    for fraction in sorted(fractions, reverse=True):
        folder = fraction_dir(fractions_dir, fraction)
        if not (folder / CURVE_SIZES).is_file():
            raise DataError(f"{folder}: no learning-curve point for curve.fractions entry {fraction}; {RERUN}.")
        train_images = json.loads((folder / CURVE_SIZES).read_text())["train_images"]
        predictions = read_table(folder / PREDICTIONS, columns, numeric=probabilities)
        points.append(Point(fraction, float(np.mean(list(train_images.values()))), predictions))
    return points[::-1]


def write_curve(out_dir: Path, points: list[Point], classes: list[str], *, threshold: float, seed: int) -> str:
    """curve.csv and verdict.json in `out_dir`; the verdict's sentence."""
    found = verdict(points, classes, threshold=threshold, seed=seed)
    write_text_atomic(out_dir / CURVE, curve_table(points, classes, threshold=threshold, seed=seed).to_csv(index=False))
    write_text_atomic(out_dir / VERDICT, json.dumps(found, indent=2) + "\n")
    return found["sentence"]
