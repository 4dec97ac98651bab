"""The folds' out-of-fold predictions and training histories, read and checked against folds.csv: every image
predicted once, by the fold that held it out."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from burrscope.classes import class_order, prob_column
from burrscope.errors import DataError
from burrscope.tables import (
    FOLD_COLUMNS,
    HISTORY,
    HISTORY_COLUMNS,
    POOLED_HISTORY_COLUMNS,
    PREDICTION_COLUMNS,
    PREDICTIONS,
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
        path = train_dir / f"fold_{fold}" / PREDICTIONS
        part = read_table(path, [*PREDICTION_COLUMNS, *probs], numeric=["fold", *probs])
        _check_fold(part, assigned[assigned["fold"] == fold], fold, classes, path=path)
        parts.append(part[[*PREDICTION_COLUMNS, *probs]])
    return pd.concat(parts).sort_values("file", ignore_index=True), classes


def load_histories(train_dir: Path, folds: int) -> pd.DataFrame:
    """fold_0..fold_{folds-1}'s history.csv in one table with a `fold` column, so one plot can draw every fold.

    As in load_predictions, folders of other folds (left over from a run with more folds) are never read.
    """
    parts = [
        read_table(train_dir / f"fold_{fold}" / HISTORY, HISTORY_COLUMNS, numeric=HISTORY_COLUMNS).assign(fold=fold)
        for fold in range(folds)
    ]
    return pd.concat(parts, ignore_index=True)[POOLED_HISTORY_COLUMNS]


def _check_fold(part: pd.DataFrame, assigned: pd.DataFrame, fold: int, classes: list[str], *, path: Path) -> None:
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
