"""The CSV tables stages hand to each other: their shared columns, and one careful reader."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from stages.errors import DataError

METRICS = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc")
CALIBRATION_COLUMNS = ["bin_lower", "bin_upper", "mean_predicted", "fraction_positive", "count"]
HISTORY_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"]
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
