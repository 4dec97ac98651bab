"""The tables behind the plots: the ROC curve, precision and recall by threshold, and the reliability diagram."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from burrscope.classes import prob_column
from burrscope.tables import CALIBRATION_COLUMNS, THRESHOLD_COLUMNS


def confusion_table(decided: pd.DataFrame, name: Callable[[str], str]) -> pd.DataFrame:
    """One row per image, its actual and predicted class by name: what DVC's confusion plot counts."""
    return pd.DataFrame({"actual": decided["label"].map(name), "predicted": decided["predicted"].map(name)})


def roc_table(pooled: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """ROC curve of the positive class on the pooled predictions; empty (header only) unless binary."""
    if len(classes) != 2:
        return pd.DataFrame(columns=["fpr", "tpr", "threshold"])
    fpr, tpr, threshold = skm.roc_curve(pooled["label"] == classes[-1], pooled[prob_column(classes[-1])])
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": threshold})


THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


CALIBRATION_BINS = 10


def threshold_table(pooled: pd.DataFrame, classes: list[str], chosen: float) -> pd.DataFrame:
    """Precision and recall of the positive class at several thresholds, the chosen one included.

    `flagged` is the share of images called positive, `missed` the positives below the threshold (the burrs a
    screen would let through) and `false_alarms` the negatives at or above it. Empty unless binary.
    """
    if len(classes) != 2:
        return pd.DataFrame(columns=THRESHOLD_COLUMNS)
    positive = (pooled["label"] == classes[1]).to_numpy()
    prob = pooled[prob_column(classes[1])].to_numpy()
    rows = []
    for threshold in sorted({*THRESHOLDS, chosen}):
        called = prob >= threshold
        hits = int((called & positive).sum())
        rows.append(
            {
                "threshold": threshold,
                "precision": hits / called.sum() if called.any() else np.nan,  # nothing flagged: undefined, not 0
                "recall": hits / positive.sum() if positive.any() else np.nan,
                "flagged": called.mean(),
                "missed": int((~called & positive).sum()),
                "false_alarms": int((called & ~positive).sum()),
            }
        )
    return pd.DataFrame(rows, columns=THRESHOLD_COLUMNS).round(4)


def confidence(pooled: pd.DataFrame, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """What calibration compares: the positive class's probability and whether the image is positive (two
    classes), or the top probability and whether that prediction is right (more classes)."""
    probs = pooled[[prob_column(c) for c in classes]].to_numpy()
    if len(classes) == 2:
        return probs[:, 1], (pooled["label"] == classes[1]).to_numpy()
    return probs.max(1), (pooled["label"] == np.asarray(classes)[probs.argmax(1)]).to_numpy()


def calibration_table(pooled: pd.DataFrame, classes: list[str], bins: int = CALIBRATION_BINS) -> pd.DataFrame:
    """Reliability diagram data: per equal-width probability bin, mean predicted vs observed frequency."""
    predicted, outcome = confidence(pooled, classes)
    # Bin b holds [b/bins, (b+1)/bins); a probability of exactly 1 belongs to the last bin.
    index = np.minimum((predicted * bins).astype(int), bins - 1)
    rows = [
        {
            "bin_lower": b / bins,
            "bin_upper": (b + 1) / bins,
            "mean_predicted": predicted[index == b].mean(),
            "fraction_positive": outcome[index == b].mean(),
            "count": int((index == b).sum()),
        }
        for b in range(bins)
        if (index == b).any()
    ]
    return pd.DataFrame(rows, columns=CALIBRATION_COLUMNS).round(4)
