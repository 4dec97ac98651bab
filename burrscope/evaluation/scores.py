"""Scores of pooled out-of-fold predictions: labels decided at the threshold, the metrics pooled and per fold with
their mean and spread, the burrs missed and false alarms, and calibration."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from burrscope.classes import decide, prob_column
from burrscope.evaluation.curves import calibration_table, confidence
from burrscope.tables import METRICS


def apply_threshold(pooled: pd.DataFrame, classes: list[str], threshold: float) -> pd.DataFrame:
    """`predicted` and `correct` decided from the probabilities as predict decides them (the folds used argmax)."""
    decided = pooled.copy()
    decided["predicted"] = decide(decided[[prob_column(c) for c in classes]].to_numpy(), classes, threshold)
    decided["correct"] = decided["label"] == decided["predicted"]
    return decided


def score_predictions(table: pd.DataFrame, classes: list[str]) -> dict[str, float]:
    """Metrics of one set of predictions, leaving out any that are undefined on it.

    Binary: precision/recall/F1 of the positive (last) class and ROC-AUC of its probability.
    Multi-class: macro averages over classes, and no ROC-AUC.
    Undefined means e.g. ROC-AUC or recall of a fold without positives; dropping it beats a made-up 0.
    """
    truth, predicted = table["label"], table["predicted"]
    binary = len(classes) == 2
    averaging: dict[str, Any] = (
        {"average": "binary", "pos_label": classes[-1]} if binary else {"average": "macro", "labels": classes}
    )
    with warnings.catch_warnings():
        # A fold lacking a class makes sklearn warn; balanced accuracy then averages the classes present.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        values = {
            "accuracy": skm.accuracy_score(truth, predicted),
            "balanced_accuracy": skm.balanced_accuracy_score(truth, predicted),
            # zero_division=nan marks the undefined cases (and macro averages skip those classes).
            "precision": skm.precision_score(truth, predicted, zero_division=np.nan, **averaging),
            "recall": skm.recall_score(truth, predicted, zero_division=np.nan, **averaging),
            "f1": skm.f1_score(truth, predicted, zero_division=np.nan, **averaging),
        }
    if binary and truth.nunique() == 2:
        values["roc_auc"] = skm.roc_auc_score(truth == classes[-1], table[prob_column(classes[-1])])
    return {name: float(value) for name, value in values.items() if not np.isnan(value)}


def summarise(pooled: pd.DataFrame, classes: list[str], folds: int) -> dict[str, Any]:
    """Pooled out-of-fold metrics, per-fold metrics, and their mean and std across folds."""
    per_fold = [score_predictions(pooled[pooled["fold"] == fold], classes) for fold in range(folds)]
    mean, std = {}, {}
    for name in METRICS:
        # Only the folds where the metric is defined; std is the sample std (ddof=1): the folds are a
        # sample of the splits one could have drawn, and the sample std is what CV reports usually quote.
        values = [metrics[name] for metrics in per_fold if name in metrics]
        if values:
            mean[name] = float(np.mean(values))
        if len(values) > 1:
            std[name] = float(np.std(values, ddof=1))

    def rounded(metrics: dict[str, float]) -> dict[str, float]:
        return {name: round(value, 4) for name, value in metrics.items()}

    sizes = pooled["fold"].value_counts()
    return {
        "overall": rounded(score_predictions(pooled, classes)),
        "mean": rounded(mean),
        "std": rounded(std),
        "per_fold": {
            f"fold_{fold}": {"n_images": int(sizes[fold]), **rounded(metrics)} for fold, metrics in enumerate(per_fold)
        },
        "n_images": len(pooled),
        "classes": classes,
    }


def error_counts(decided: pd.DataFrame, classes: list[str]) -> dict[str, int] | None:
    """The positive class's mistakes at the chosen threshold: positives called negative (`missed`, the burrs a
    screen lets through) and negatives called positive (`false_alarms`). None unless binary."""
    if len(classes) != 2:
        return None
    positive = decided["label"] == classes[1]
    called = decided["predicted"] == classes[1]
    return {"missed": int((positive & ~called).sum()), "false_alarms": int((~positive & called).sum())}


def calibration_summary(pooled: pd.DataFrame, classes: list[str]) -> dict[str, float]:
    """Expected calibration error (count-weighted gap of the reliability diagram) and the Brier score."""
    table = calibration_table(pooled, classes)
    predicted, outcome = confidence(pooled, classes)
    ece = float((table["count"] * (table["mean_predicted"] - table["fraction_positive"]).abs()).sum() / len(pooled))
    return {"ece": round(ece, 4), "brier": round(float(np.mean((predicted - outcome) ** 2)), 4)}
