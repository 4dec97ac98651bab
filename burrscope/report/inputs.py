"""What the report shows, read from the stage outputs and checked against each other."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from burrscope.classes import prob_column
from burrscope.errors import DataError
from burrscope.tables import (
    AUDIT_SUMMARY,
    CALIBRATION,
    CALIBRATION_COLUMNS,
    CURVE,
    CURVE_COLUMNS,
    FOLD_METRICS,
    HEATMAP_COLUMNS,
    HEATMAPS,
    HISTORY,
    HISTORY_COLUMNS,
    ISSUE_COLUMNS,
    ISSUES,
    MANIFEST_COLUMNS,
    PREDICTION_COLUMNS,
    PREDICTIONS,
    RERUN,
    ROC,
    SUMMARY,
    THRESHOLD_COLUMNS,
    THRESHOLDS,
    VERDICT,
    read_table,
)


@dataclass(frozen=True)
class ReportInputs:
    """The report stage's input paths, in its command line's order."""

    manifest_csv: Path
    images_dir: Path
    train_dir: Path
    explain_dir: Path
    aggregate_dir: Path
    audit_dir: Path
    curve_dir: Path


@dataclass(frozen=True)
class AuditOutputs:
    """The audit stage's findings (issues.csv, scores as floats) and counts (summary.json)."""

    issues: pd.DataFrame
    summary: dict[str, Any]


@dataclass(frozen=True)
class StageOutputs:
    """What the report shows, read from the stage outputs and checked against each other.

    `manifest` holds the kept images (width and height as ints), `skipped` the ones normalise left out.
    `roc` and `thresholds` are None unless there are two classes. `explained` is every fold's heatmaps.csv with
    `fold`, `path` (of the overlay), `is_correct` and `p_explained` (the probability of the explained class).
    `curve` is the learning curve (one row, the full run, unless curve.fractions is set) and `verdict` what the
    curve stage concluded from it.
    """

    summary: dict[str, Any]
    classes: list[str]
    predictions: pd.DataFrame
    manifest: pd.DataFrame
    skipped: pd.DataFrame
    runs: list[dict[str, Any]]
    histories: list[pd.DataFrame]
    roc: pd.DataFrame | None
    thresholds: pd.DataFrame | None
    calibration: pd.DataFrame
    explained: pd.DataFrame
    audit: AuditOutputs
    curve: pd.DataFrame
    verdict: dict[str, Any]


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} not found; {RERUN}.") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err}); {RERUN}.") from None


def read_manifest(manifest_csv: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The kept images (sizes as ints) and the skipped ones."""
    manifest = read_table(manifest_csv, MANIFEST_COLUMNS)
    skipped = manifest[manifest["skipped"] != ""]
    kept = manifest[manifest["skipped"] == ""].copy()
    for column in ("width", "height"):
        values = pd.to_numeric(kept[column], errors="coerce")
        if values.isna().any():
            raise DataError(f"{manifest_csv}: column {column!r} holds a non-number for a kept image; {RERUN}.")
        kept[column] = values.astype(int)
    return kept, skipped


def read_thresholds(thresholds_csv: Path) -> pd.DataFrame:
    thresholds = read_table(
        thresholds_csv, THRESHOLD_COLUMNS, numeric=["threshold", "flagged", "missed", "false_alarms"]
    )
    for column in ("precision", "recall"):  # empty where undefined: nothing flagged, or no positives
        thresholds[column] = [float(value) if value else math.nan for value in thresholds[column]]
    return thresholds


def read_heatmaps(explain_dir: Path, folds: int) -> pd.DataFrame:
    """Every fold's heatmaps.csv, with `fold`, `path`, `is_correct` and `p_explained` added."""
    parts = []
    for fold in range(folds):
        folder = explain_dir / f"fold_{fold}"
        part = read_table(folder / HEATMAPS, HEATMAP_COLUMNS)
        parts.append(part.assign(fold=fold, path=[folder / name for name in part["heatmap"]]))
    explained = pd.concat(parts, ignore_index=True)
    explained["is_correct"] = explained["correct"].str.lower() == "true"
    missing = {prob_column(label) for label in explained["explained"]} - set(explained.columns)
    if missing:
        raise DataError(f"{explain_dir}/fold_*/heatmaps.csv lacks {sorted(missing)}; {RERUN}.")
    # The probability the explain stage weighted the map by (burrscope.inference.explain.confidence_weighted).
    explained["p_explained"] = [row[prob_column(row["explained"])] for _, row in explained.iterrows()]
    return explained


def read_audit(audit_dir: Path) -> AuditOutputs:
    return AuditOutputs(
        issues=read_table(audit_dir / ISSUES, ISSUE_COLUMNS, numeric=["score"]),
        summary=read_json(audit_dir / AUDIT_SUMMARY),
    )


def load_outputs(inputs: ReportInputs, folds: int) -> StageOutputs:
    """Read what the report shows; DataError, naming the file and the fix, if any of it is missing or stale."""
    train_dir, aggregate_dir = inputs.train_dir, inputs.aggregate_dir
    summary = read_json(aggregate_dir / SUMMARY)
    covered = list(summary.get("per_fold", {}))
    if covered != [f"fold_{fold}" for fold in range(folds)]:
        raise DataError(f"{aggregate_dir / SUMMARY} covers {covered}, but split.folds is {folds}; {RERUN}.")
    classes = summary["classes"]
    binary = len(classes) == 2
    probs = [prob_column(label) for label in classes]
    manifest, skipped = read_manifest(inputs.manifest_csv)
    return StageOutputs(
        summary=summary,
        classes=classes,
        predictions=read_table(aggregate_dir / PREDICTIONS, [*PREDICTION_COLUMNS, *probs], numeric=probs),
        manifest=manifest,
        skipped=skipped,
        runs=[read_json(train_dir / f"fold_{fold}" / FOLD_METRICS) for fold in range(folds)],
        histories=[
            read_table(train_dir / f"fold_{fold}" / HISTORY, HISTORY_COLUMNS, numeric=HISTORY_COLUMNS)
            for fold in range(folds)
        ],
        roc=read_table(aggregate_dir / ROC, ["fpr", "tpr"], numeric=["fpr", "tpr"]) if binary else None,
        # summary["threshold"] is None with more classes, where no threshold applies.
        thresholds=read_thresholds(aggregate_dir / THRESHOLDS) if summary["threshold"] is not None else None,
        calibration=read_table(aggregate_dir / CALIBRATION, CALIBRATION_COLUMNS, numeric=CALIBRATION_COLUMNS),
        explained=read_heatmaps(inputs.explain_dir, folds),
        audit=read_audit(inputs.audit_dir),
        curve=read_table(inputs.curve_dir / CURVE, CURVE_COLUMNS, numeric=CURVE_COLUMNS),
        verdict=read_json(inputs.curve_dir / VERDICT),
    )
