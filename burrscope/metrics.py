"""Cross-validated metrics: the folds' out-of-fold predictions pooled, scored, and tabulated for the report.

Predicted labels are decided here, from the pooled probabilities, with params `predict.threshold` (two classes),
so the CV metrics describe the operating point that predict will use. Besides the summary: its headline (what
`dvc exp show` lists), a confusion table, the ROC curve, precision and recall at several thresholds, a calibration
(reliability) table, and every fold's training history in one table.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from burrscope.classes import class_order, decide, prob_column
from burrscope.errors import DataError
from burrscope.files import write_text_atomic
from burrscope.tables import (
    CALIBRATION_COLUMNS,
    FOLD_COLUMNS,
    HEADLINE_METRICS,
    HISTORY_COLUMNS,
    METRICS,
    POOLED_HISTORY_COLUMNS,
    PREDICTION_COLUMNS,
    THRESHOLD_COLUMNS,
    read_table,
)


def _some(names: Iterable[str]) -> str:
    """A few names for an error message: enough to find the problem without flooding the terminal."""
    names = sorted(names)
    shown = ", ".join(repr(name) for name in names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def load_predictions(folds_csv: Path, train_dir: Path, folds: int) -> tuple[pd.DataFrame, list[str]]:
    """Pool fold_0..fold_{folds-1} predictions, checking that each image is predicted once, by its own fold.

    Folders of other folds (left over from a run with more folds) are never read.
    """
    assigned = read_table(folds_csv, FOLD_COLUMNS, numeric=["fold"])
    classes = class_order(assigned["label"])
    if len(classes) < 2:
        raise DataError(f"{folds_csv} holds only label(s) {classes}; a classifier needs at least two classes.")
    duplicated = assigned["file"][assigned["file"].duplicated()]
    if not duplicated.empty:
        raise DataError(f"{folds_csv} lists {_some(set(duplicated))} more than once; re-run the split stage.")
    empty = sorted(set(range(folds)) - set(assigned["fold"]))
    stray = sorted(set(assigned["fold"]) - set(range(folds)))
    if empty or stray:
        raise DataError(
            f"{folds_csv} does not split into split.folds = {folds} folds (folds without images: {empty}, "
            f"unexpected folds: {stray}); re-run the split stage (fewer folds if there are too few images)."
        )
    probs = [prob_column(label) for label in classes]
    parts = []
    for fold in range(folds):
        path = train_dir / f"fold_{fold}" / "predictions.csv"
        part = read_table(path, [*PREDICTION_COLUMNS, *probs], numeric=["fold", *probs])
        _check_fold(part, assigned[assigned["fold"] == fold], fold, classes, path)
        parts.append(part[[*PREDICTION_COLUMNS, *probs]])
    return pd.concat(parts).sort_values("file", ignore_index=True), classes


def load_histories(train_dir: Path, folds: int) -> pd.DataFrame:
    """fold_0..fold_{folds-1}'s history.csv in one table with a `fold` column, so one plot can draw every fold.

    As in load_predictions, folders of other folds (left over from a run with more folds) are never read.
    """
    parts = [
        read_table(train_dir / f"fold_{fold}" / "history.csv", HISTORY_COLUMNS, numeric=HISTORY_COLUMNS).assign(
            fold=fold
        )
        for fold in range(folds)
    ]
    return pd.concat(parts, ignore_index=True)[POOLED_HISTORY_COLUMNS]


def apply_threshold(pooled: pd.DataFrame, classes: list[str], threshold: float) -> pd.DataFrame:
    """`predicted` and `correct` decided from the probabilities as predict decides them (the folds used argmax)."""
    decided = pooled.copy()
    decided["predicted"] = decide(decided[[prob_column(c) for c in classes]].to_numpy(), classes, threshold)
    decided["correct"] = decided["label"] == decided["predicted"]
    return decided


def _check_fold(part: pd.DataFrame, assigned: pd.DataFrame, fold: int, classes: list[str], path: Path) -> None:
    """Raise unless `part` predicts exactly the images of `assigned` (fold's slice of folds.csv)."""
    truth = dict(zip(assigned["file"], assigned["label"], strict=True))
    files = set(part["file"])
    problems = {
        "rows of other folds": set(part.loc[part["fold"] != fold, "file"]),
        "images predicted twice": set(part["file"][part["file"].duplicated()]),
        "images of this fold without a prediction": truth.keys() - files,
        "images that folds.csv does not put in this fold": files - truth.keys(),
        "labels that differ from folds.csv": {
            name for name, label in zip(part["file"], part["label"], strict=True) if truth.get(name, label) != label
        },
        "predicted labels outside the classes": set(part.loc[~part["predicted"].isin(classes), "file"]),
    }
    found = [f"{what}: {_some(names)}" for what, names in problems.items() if names]
    probs = {prob_column(label) for label in classes}
    extra = [column for column in part.columns if column.startswith("prob_") and column not in probs]
    if extra:
        found.append(f"probability columns {extra} for classes that folds.csv lacks")
    if found:
        raise DataError(
            f"fold {fold}: {path} does not match folds.csv ({'; '.join(found)}); "
            f"re-run training for fold {fold} after the split stage."
        )


def score(table: pd.DataFrame, classes: list[str]) -> dict[str, float]:
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
    per_fold = [score(pooled[pooled["fold"] == fold], classes) for fold in range(folds)]
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
        "overall": rounded(score(pooled, classes)),
        "mean": rounded(mean),
        "std": rounded(std),
        "per_fold": {
            f"fold_{fold}": {"n_images": int(sizes[fold]), **rounded(metrics)} for fold, metrics in enumerate(per_fold)
        },
        "n_images": len(pooled),
        "classes": classes,
    }


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


def headline(summary: dict[str, Any]) -> dict[str, float]:
    """HEADLINE_METRICS with their pooled values in the summary; those undefined here are left out, as in score."""
    pooled = {**summary["overall"], **(summary["errors"] or {}), **summary["calibration"]}
    return {name: pooled[name] for name in HEADLINE_METRICS if name in pooled}


def write_outputs(
    out_dir: Path,
    pooled: pd.DataFrame,
    summary: dict[str, Any],
    tables: dict[str, pd.DataFrame],
) -> list[Path]:
    """Write metrics.json, headline.json, predictions.csv, confusion.csv and `tables` (name -> table) as CSVs;
    their paths."""
    texts = {
        # allow_nan=False: a NaN would make the JSON invalid for the report and for `dvc metrics show`.
        "metrics.json": json.dumps(summary, indent=2, allow_nan=False) + "\n",
        "headline.json": json.dumps(headline(summary), indent=2, allow_nan=False) + "\n",
        "confusion.csv": pooled[["label", "predicted"]].rename(columns={"label": "actual"}).to_csv(index=False),
        **{f"{name}.csv": table.to_csv(index=False) for name, table in tables.items()},
        "predictions.csv": pooled.to_csv(index=False),
    }
    for name, text in texts.items():
        write_text_atomic(out_dir / name, text)
    return [out_dir / name for name in texts]


def aggregate(
    pooled: pd.DataFrame,
    classes: list[str],
    folds: int,
    threshold: float,
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, pd.DataFrame]]:
    """Decided predictions, the metrics summary and the report's tables (roc, thresholds, calibration)."""
    decided = apply_threshold(pooled, classes, threshold)
    summary = summarise(decided, classes, folds)
    summary["threshold"] = threshold if len(classes) == 2 else None
    summary["errors"] = error_counts(decided, classes)
    summary["calibration"] = calibration_summary(decided, classes)
    tables = {
        "roc": roc_table(decided, classes),
        "thresholds": threshold_table(decided, classes, threshold),
        "calibration": calibration_table(decided, classes),
    }
    return decided, summary, tables


def parent_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """Flat names for the MLflow parent run: cv_<metric>_mean / _std across folds, oof_<metric> pooled."""
    flat = {f"oof_{name}": value for name, value in summary["overall"].items()}
    flat.update({f"cv_{name}_mean": value for name, value in summary["mean"].items()})
    flat.update({f"cv_{name}_std": value for name, value in summary["std"].items()})
    return flat


def format_summary(summary: dict[str, Any], folds: int) -> str:
    lines = [
        f"pooled out-of-fold accuracy {summary['overall']['accuracy']:.3f} on {summary['n_images']} images; "
        f"mean ± sample std over {folds} folds:"
    ]
    for name, value in summary["mean"].items():
        spread = f" ± {summary['std'][name]:.3f}" if name in summary["std"] else " (defined on one fold only)"
        lines.append(f"  {name:<18} {value:.3f}{spread}")
    return "\n".join(lines)
