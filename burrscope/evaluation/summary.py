"""The aggregate stage's work: the pooled predictions scored at `predict.threshold`, the summary and its headline,
the plot tables, written all at once; and the summary as a few lines for the terminal."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from burrscope.evaluation.curves import calibration_table, confusion_table, roc_table, threshold_table
from burrscope.evaluation.scores import apply_threshold, calibration_summary, error_counts, summarise
from burrscope.files import write_text_atomic
from burrscope.tables import (
    CALIBRATION,
    CONFUSION,
    HEADLINE,
    HEADLINE_METRICS,
    PREDICTIONS,
    ROC,
    SUMMARY,
    THRESHOLDS,
)


def aggregate(
    pooled: pd.DataFrame,
    classes: list[str],
    folds: int,
    threshold: float,
    *,
    name: Callable[[str], str] = str,
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, pd.DataFrame]]:
    """Decided predictions, the metrics summary and the plot tables (by the file name each is written to); the
    confusion table calls the classes what `name` (params data.class_names) calls them."""
    decided = apply_threshold(pooled, classes, threshold)
    summary = summarise(decided, classes, folds)
    summary["threshold"] = threshold if len(classes) == 2 else None
    summary["errors"] = error_counts(decided, classes)
    summary["calibration"] = calibration_summary(decided, classes)
    tables = {
        CONFUSION: confusion_table(decided, name),
        ROC: roc_table(decided, classes),
        THRESHOLDS: threshold_table(decided, classes, threshold),
        CALIBRATION: calibration_table(decided, classes),
    }
    return decided, summary, tables


def headline_figures(summary: dict[str, Any]) -> dict[str, float]:
    """HEADLINE_METRICS with their pooled values in the summary; those undefined here are left out, as in score."""
    pooled = {**summary["overall"], **(summary["errors"] or {}), **summary["calibration"]}
    return {name: pooled[name] for name in HEADLINE_METRICS if name in pooled}


def write_aggregate_outputs(
    out_dir: Path,
    pooled: pd.DataFrame,
    summary: dict[str, Any],
    tables: dict[str, pd.DataFrame],
) -> list[Path]:
    """Write metrics.json, headline.json, predictions.csv and `tables` (file name -> table) as CSVs; their paths."""
    texts = {
        # allow_nan=False: a NaN would make the JSON invalid for the report and for `dvc metrics show`.
        SUMMARY: json.dumps(summary, indent=2, allow_nan=False) + "\n",
        HEADLINE: json.dumps(headline_figures(summary), indent=2, allow_nan=False) + "\n",
        **{name: table.to_csv(index=False) for name, table in tables.items()},
        PREDICTIONS: pooled.to_csv(index=False),
    }
    for name, text in texts.items():
        write_text_atomic(out_dir / name, text)
    return [out_dir / name for name in texts]


def format_summary(summary: dict[str, Any], folds: int) -> str:
    lines = [
        f"pooled out-of-fold accuracy {summary['overall']['accuracy']:.3f} on {summary['n_images']} images; "
        f"mean ± sample std over {folds} folds:"
    ]
    for name, value in summary["mean"].items():
        spread = f" ± {summary['std'][name]:.3f}" if name in summary["std"] else " (defined on one fold only)"
        lines.append(f"  {name:<18} {value:.3f}{spread}")
    return "\n".join(lines)
