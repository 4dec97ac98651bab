"""A learning-curve point: every fold trained on the same share of its training images, scored on its whole
held-out fold, so that the point is comparable with the pipeline's own cross-validation."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from burrscope.files import write_text_atomic
from burrscope.params import Recipe
from burrscope.tables import CURVE_SIZES, PREDICTIONS
from burrscope.training.fold import train_fold
from burrscope.training.outputs import predictions_table


def train_fraction(
    images_dir: Path, folds: pd.DataFrame, fraction: float, recipe: Recipe
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Every fold of `folds` trained on `fraction` of its training images (the same seed as its full run): their
    held-out predictions pooled, and each fold's number of training images."""
    tables, sizes = [], {}
    for fold in sorted(set(folds["fold"])):
        result = train_fold(images_dir, folds, fold, recipe, train_fraction=fraction)
        tables.append(predictions_table(result))
        sizes[str(fold)] = len(result.data.train_rows)
    return pd.concat(tables, ignore_index=True), sizes


def write_fraction(out_dir: Path, fraction: float, predictions: pd.DataFrame, sizes: dict[str, int]) -> None:
    """predictions.csv, then sizes.json: the point is complete once sizes.json exists."""
    write_text_atomic(out_dir / PREDICTIONS, predictions.to_csv(index=False))
    write_text_atomic(out_dir / CURVE_SIZES, json.dumps({"fraction": fraction, "train_images": sizes}, indent=2) + "\n")
