"""The audit's findings as one table (tables.ISSUE_COLUMNS) and their counts: what issues.csv and summary.json hold.

The stage never changes a label: a label row suggests the most probable class, and the person decides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from burrscope.audit.confident import label_issues
from burrscope.audit.neighbours import Pair, near_duplicates, outliers, unit_rows
from burrscope.classes import class_order, prob_column
from burrscope.data.naming import output_name
from burrscope.errors import DataError
from burrscope.params import AuditConfig
from burrscope.tables import (
    FOLD_COLUMNS,
    ISSUE_COLUMNS,
    ISSUE_TYPES,
    MANIFEST_COLUMNS,
    PREDICTION_COLUMNS,
    RERUN,
    read_table,
)

DECIMALS = 4  # scores as issues.csv writes them


@dataclass(frozen=True)
class Photos:
    """Every photo the audit looks at, one row each, by file: file, label, fold, original_name, prob_<class>."""

    table: pd.DataFrame
    classes: list[str]


@dataclass(frozen=True)
class Findings:
    """The issues table, the near-duplicate pairs (rows of `Photos.table`) and the summary (summary.json): the
    rows of each issue, audit_<issue>, and the pairs in two folds, audit_duplicates_across_folds."""

    issues: pd.DataFrame
    pairs: list[Pair]
    summary: dict[str, int]


def read_photos(predictions_csv: Path, folds_csv: Path, manifest_csv: Path) -> Photos:
    """The pooled out-of-fold predictions joined to their original names; DataError unless every photo of the fold
    table is predicted once and named in the manifest."""
    folds = read_table(folds_csv, FOLD_COLUMNS, numeric=["fold"])
    classes = class_order(folds["label"])
    probs = [prob_column(label) for label in classes]
    predictions = read_table(predictions_csv, [*PREDICTION_COLUMNS, *probs], numeric=["fold", *probs])
    if sorted(predictions["file"]) != sorted(folds["file"]) or predictions["file"].duplicated().any():
        raise DataError(f"{predictions_csv} does not predict each photo of {folds_csv} exactly once; {RERUN}.")
    manifest = read_table(manifest_csv, MANIFEST_COLUMNS)
    manifest = manifest[manifest["skipped"] == ""]
    originals = dict(zip(manifest["normalised_name"].map(output_name), manifest["original_name"], strict=True))
    unnamed = sorted(set(predictions["file"]) - set(originals))
    if unnamed:
        raise DataError(f"{manifest_csv} has no entry for {unnamed[:3]}, which were predicted; {RERUN}.")
    table = predictions[[*FOLD_COLUMNS, *probs]].assign(original_name=predictions["file"].map(originals))
    return Photos(table.sort_values("file", ignore_index=True), classes)


def label_rows(photos: Photos) -> pd.DataFrame:
    """A row per probable label error: score 1 - P(given label), the most probable class suggested."""
    table, classes = photos.table, photos.classes
    probabilities = table[[prob_column(label) for label in classes]].to_numpy(float)
    given = np.array([classes.index(label) for label in table["label"]])
    found = label_issues(given, probabilities)
    return pd.DataFrame(
        {
            "file": table["file"].to_numpy()[found],
            "issue": "label",
            "score": 1 - probabilities[found, given[found]],
            "suggested_label": [classes[i] for i in probabilities[found].argmax(axis=1)],
            "other_file": "",
        },
        index=found,
    )


def duplicate_rows(photos: Photos, pairs: Sequence[Pair]) -> pd.DataFrame:
    """A row per near-duplicate pair, on its first photo (by file name): score the cosine similarity."""
    files = photos.table["file"].to_numpy()
    return pd.DataFrame(
        {
            "file": [files[pair.first] for pair in pairs],
            "issue": "near_duplicate",
            "score": [pair.similarity for pair in pairs],
            "suggested_label": "",
            "other_file": [files[pair.second] for pair in pairs],
        },
        index=[pair.first for pair in pairs],
    )


def outlier_rows(photos: Photos, found: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """A row per outlier: score the robust z-score of its mean distance to its nearest neighbours."""
    return pd.DataFrame(
        {
            "file": photos.table["file"].to_numpy()[found],
            "issue": "outlier",
            "score": scores[found],
            "suggested_label": "",
            "other_file": "",
        },
        index=found,
    )


def crosses_folds(photos: Photos, pair: Pair) -> bool:
    folds = photos.table["fold"]
    return bool(folds.iloc[pair.first] != folds.iloc[pair.second])


def find_issues(photos: Photos, features: np.ndarray, settings: AuditConfig) -> Findings:
    """Label issues, near-duplicate pairs and outliers of the photos (features: N x F, rows as `photos.table`)."""
    unit = unit_rows(features)
    pairs = near_duplicates(unit, settings.duplicate_similarity)
    isolated, scores = outliers(unit, settings.outlier_neighbours, settings.outlier_z)
    parts = [label_rows(photos), duplicate_rows(photos, pairs), outlier_rows(photos, isolated, scores)]
    found = pd.concat([part for part in parts if len(part)] or parts[:1])
    rows = photos.table.iloc[found.index]
    issues = found.assign(
        original_name=rows["original_name"].to_numpy(),
        given_label=rows["label"].to_numpy(),
        fold=rows["fold"].to_numpy(),
        score=found["score"].astype(float).round(DECIMALS),
    )
    # Rows by issue (ISSUE_TYPES' order: scores of different issues do not compare), the most suspect first.
    issues = issues.assign(_type=issues["issue"].map(ISSUE_TYPES.index))
    issues = issues.sort_values(["_type", "score", "file"], ascending=[True, False, True], kind="stable")
    # Named as MLflow names them too, so that `dvc exp show` (which shows a metric by its key alone) says whose.
    summary = {f"audit_{kind}": int((issues["issue"] == kind).sum()) for kind in ISSUE_TYPES}
    summary["audit_duplicates_across_folds"] = sum(crosses_folds(photos, pair) for pair in pairs)
    return Findings(issues[ISSUE_COLUMNS].reset_index(drop=True), pairs, summary)


def summary_line(summary: Mapping[str, Any], photos: int) -> str:
    """What the stage prints: the counts of summary.json in one line."""
    return (
        f"audit of {photos} photos: {summary['audit_label']} probable label error(s), "
        f"{summary['audit_near_duplicate']} near-duplicate pair(s) ({summary['audit_duplicates_across_folds']} "
        f"across folds), {summary['audit_outlier']} outlier(s)"
    )
