"""What stages hand to each other: the files in their output folders, the columns of their tables, one careful reader.

The folders themselves are the pipeline's (burrscope.pipeline.graph, which dvc.yaml and the Snakefile are made from);
the names of the files inside them are here, for the stage that writes them and every stage that reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from burrscope.errors import DataError

# A fold's training outputs (results/train/fold_<k>/); the final model, trained on every image, has no predictions.
MODEL, PREDICTIONS, FOLD_METRICS, HISTORY = "model.pt", "predictions.csv", "metrics.json", "history.csv"
FOLD_FILES = (MODEL, PREDICTIONS, FOLD_METRICS, HISTORY)
FINAL_FILES = (MODEL, FOLD_METRICS, HISTORY)
FINAL_MODEL_DIR = "final"  # the final model's folder beside fold_<k>/, and its MLflow run's name
CHECKPOINT = "checkpoint.pt"  # a fold's resume point, deleted once its outputs are written
HEATMAPS = "heatmaps.csv"  # the explain stage's table beside its overlay PNGs
# The aggregate stage's outputs: the summary, the headline that DVC lists, the pooled predictions, and the data of
# each plot (`dvc plots show`, the report).
SUMMARY, HEADLINE = "metrics.json", "headline.json"
CONFUSION, ROC, THRESHOLDS, CALIBRATION, POOLED_HISTORY = (
    "confusion.csv", "roc.csv", "thresholds.csv", "calibration.csv", "history.csv"
)  # fmt: skip
# The learning curve's files: a point's folder (results/curve/fractions/<fraction>/) holds the pooled predictions and
# the training photos per fold; the curve stage writes the table and what it says.
CURVE_SIZES, CURVE, VERDICT = "sizes.json", "curve.csv", "verdict.json"
CURVE_COLUMNS = ["fraction", "train_images", "balanced_accuracy", "low", "high"]
# The audit stage's outputs (results/audit/): the findings, most suspect first; their counts (a DVC metric); and the
# user's labels CSV with a `group` column that joins near-duplicate photos.
ISSUES, AUDIT_SUMMARY, GROUPED_LABELS = "issues.csv", "summary.json", "labels_with_groups.csv"
# The export stage's files.
TORCHSCRIPT, ONNX, EXPORT_SUMMARY = "model.ts", "model.onnx", "export.json"

# The normalise stage's manifest; a labelled `group` column follows when the labels CSV has one.
MANIFEST_COLUMNS = [
    "original_name", "normalised_name", "label", "sha256", "width", "height", "mode", "collision", "skipped"
]  # fmt: skip
# The split stage's fold assignment (then `group`, when given), and what every predictions table starts with.
FOLD_COLUMNS = ["file", "label", "fold"]
PREDICTION_COLUMNS = [*FOLD_COLUMNS, "predicted"]  # then prob_<class> per class (classes.prob_column)
HISTORY_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"]
POOLED_HISTORY_COLUMNS = ["fold", *HISTORY_COLUMNS]  # every fold's history in one table, for one plot
HEATMAP_COLUMNS = ["file", "label", "predicted", "explained", "correct", "heatmap"]
# Scores of a set of predictions, as metrics.json, MLflow and the report name them, with the report's headings.
METRICS = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced acc.",
    "precision": "Precision",
    "recall": "Recall",
    "f1": "F1",
    "roc_auc": "ROC-AUC",
}
# The few pooled figures `dvc exp show` and `dvc metrics show` list (the aggregate's headline.json), in this order,
# each named as in metrics.json: scores of METRICS, burrs `missed` at predict.threshold, calibration error `ece`.
HEADLINE_METRICS = ["accuracy", "balanced_accuracy", "recall", "missed", "roc_auc", "ece"]
THRESHOLD_COLUMNS = ["threshold", "precision", "recall", "flagged", "missed", "false_alarms"]
CALIBRATION_COLUMNS = ["bin_lower", "bin_upper", "mean_predicted", "fraction_positive", "count"]
# One row per finding of the audit stage. `score` is higher for a more suspect row, on a scale of its `issue`:
# label, 1 - the out-of-fold probability of the given label; near_duplicate, the pair's cosine similarity;
# outlier, the robust z-score of its mean distance to its nearest neighbours. Rows come by issue in ISSUE_TYPES'
# order (scores of different issues do not compare), each issue's most suspect first. `suggested_label` is the
# most probable class (label rows only); `other_file` the photo a near-duplicate pairs with; `fold` is `file`'s.
ISSUE_COLUMNS = ["file", "original_name", "issue", "score", "given_label", "suggested_label", "fold", "other_file"]
ISSUE_TYPES = ("label", "near_duplicate", "outlier")
RERUN = "re-run the pipeline (`dvc repro` or `snakemake`) so that every stage's output is current"


def read_table(path: Path, required: Sequence[str], numeric: Sequence[str] = ()) -> pd.DataFrame:
    """Read a CSV as text, so labels such as "0" or "NA" stay verbatim, then convert `numeric` columns."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"{path} not found; {RERUN}.") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        raise DataError(f"{path} is not a readable CSV ({err}); {RERUN}.") from None
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise DataError(f"{path} lacks column(s) {missing} (it has {list(table.columns)}); {RERUN}.")
    for column in numeric:
        values = pd.to_numeric(table[column], errors="coerce")
        if values.isna().any():
            row = int(values.isna().to_numpy().argmax())
            raise DataError(
                f"{path}: column {column!r} holds {table[column].iloc[row]!r} on line {row + 2}, not a number; {RERUN}."
            )
        table[column] = values
    return table


def grouped_copy(labels_csv: str | Path) -> Path:
    """Where to copy labels_with_groups.csv to use it: beside the labels CSV (data.labels) as <name>_grouped.csv.
    data.labels cannot name the audit's own output: the first stage reads it, so the pipeline would be a cycle."""
    labels_csv = Path(labels_csv)
    return labels_csv.with_name(f"{labels_csv.stem}_grouped.csv")
