"""Cross-validation folds: every photo assigned to one, stratified by label, never splitting a group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from burrscope.classes import class_order
from burrscope.data.naming import output_name
from burrscope.errors import DataError
from burrscope.files import write_text_atomic
from burrscope.tables import FOLD_COLUMNS

FIX = "lower split.folds (and split.fold_ids) in params.yaml or add images"


def fold_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Columns file, label[, group] from a manifest; `file` is the name the composite/resize stages write.

    Rows the normalise stage skipped (a reason in `skipped`: data.on_bad_image: skip) have no image: left out.
    """
    if "skipped" in manifest.columns:
        manifest = manifest[manifest.skipped.fillna("") == ""]
    columns = ["label", "group"] if "group" in manifest.columns else ["label"]
    return manifest[columns].assign(file=manifest.normalised_name.map(output_name))[["file", *columns]]


def _check(table: pd.DataFrame, folds: int, grouped: bool) -> None:
    """Refuse splits that would leave some fold without a class (its scores would be undefined)."""
    duplicates = sorted(set(table.file[table.file.duplicated()]))
    if duplicates:
        raise DataError(f"manifest lists {', '.join(duplicates)} more than once; rerun the normalise stage.")
    if grouped and (table.group == "").any():
        missing = ", ".join(table.file[table.group == ""])
        raise DataError(f"no group for {missing}; fill in every group in the labels CSV or none.")
    counts = table.groupby("label").size()
    if len(counts) < 2:
        raise DataError(
            f"every photo has label {counts.index[0]!r}; a classifier needs at least two classes: "
            "add photos of another class or fix the labels CSV."
        )
    unit = "photo"
    if grouped:
        if table.group.nunique() < folds:
            raise DataError(f"only {table.group.nunique()} groups for split.folds={folds} folds; {FIX}.")
        counts, unit = table.groupby("label").group.nunique(), "group"
    short = [f"{label!r} has {counts[label]} {unit}(s)" for label in class_order(counts.index) if counts[label] < folds]
    if short:
        raise DataError(f"too few to give each of split.folds={folds} folds every class: {'; '.join(short)}; {FIX}.")


def assign_folds(table: pd.DataFrame, folds: int, seed: int) -> pd.DataFrame:
    """`table` (file, label[, group]) sorted by file with a `fold` column; deterministic for a seed.

    Stratified k-fold; when groups are given, every photo of a group lands in the same fold.
    """
    table = table.sort_values("file", ignore_index=True)  # the split must not depend on row order
    grouped = "group" in table.columns and bool((table.group != "").any())
    _check(table, folds, grouped)
    if grouped:
        splits = StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(table, table.label, table.group)
    else:
        splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(table, table.label)
    fold = np.empty(len(table), dtype=int)
    for k, (_, validation) in enumerate(splits):
        fold[validation] = k
    table = table.assign(fold=fold)
    # Groups can be too lopsided to stratify even when the counts above allow it.
    gaps = [
        f"fold {k} has no {label!r}"
        for k in range(folds)
        for label in class_order(table.label)
        if not ((table.fold == k) & (table.label == label)).any()
    ]
    if gaps:
        raise DataError(f"groups are too uneven to stratify: {'; '.join(gaps)}; {FIX}.")
    columns = [*FOLD_COLUMNS, "group"] if "group" in table.columns else FOLD_COLUMNS
    return table[columns]


def split(manifest_csv: Path, folds_csv: Path, folds: int, seed: int) -> pd.DataFrame:
    """Read the manifest, assign folds and write them to folds_csv."""
    try:
        manifest = pd.read_csv(manifest_csv, dtype=str, keep_default_na=False)
    except FileNotFoundError as err:
        raise DataError(f"{manifest_csv}: manifest not found; run the normalise stage first.") from err
    assigned = assign_folds(fold_table(manifest), folds, seed)
    write_text_atomic(folds_csv, assigned.to_csv(index=False, lineterminator="\n"))
    return assigned
