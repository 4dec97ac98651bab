"""The CSV tables stages hand to each other: their shared columns, and one careful reader."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from burrscope.errors import DataError

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
