"""What a trained fold leaves: model.pt, history.csv, predictions.csv (a fold, not the final model) and, last,
metrics.json, its record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from burrscope.classes import prob_column
from burrscope.files import atomic_path, write_text_atomic
from burrscope.models.factory import Weights
from burrscope.params import Recipe
from burrscope.tables import FOLD_COLUMNS, HISTORY, HISTORY_COLUMNS, MODEL, PREDICTIONS
from burrscope.training.setup import FoldResult


def predictions_table(result: FoldResult) -> pd.DataFrame:
    """The held-out images with their fold, the argmax class and each class's probability."""
    table = result.data.val_rows[FOLD_COLUMNS].reset_index(drop=True).copy()
    classes = result.data.classes
    table["predicted"] = [classes[i] for i in result.probabilities.argmax(1).tolist()]
    for i, label in enumerate(classes):
        table[prob_column(label)] = result.probabilities[:, i].numpy().round(6)
    return table


def write_fold_outputs(out_dir: Path, result: FoldResult, recipe: Recipe) -> list[Path]:
    """model.pt, history.csv and, for a fold (not the final model), predictions.csv; their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    normalisation = result.built.normalisation
    checkpoint = {
        "model": recipe.model,
        "classes": result.data.classes,
        "img_size": recipe.img_size,
        "background": list(recipe.background),
        "mean": list(normalisation.mean),
        "std": list(normalisation.std),
        "tta": recipe.tta,
        "epoch": result.epoch_kept,
        "state_dict": result.state_dict,
    }
    paths = [out_dir / name for name in ((MODEL, HISTORY) if result.data.final else (MODEL, HISTORY, PREDICTIONS))]
    # Saved through a file object: given a path, torch.save names the archive inside after the (random) temp file,
    # and identical models would differ byte for byte (and in DVC's hash) from run to run.
    with atomic_path(paths[0]) as tmp, tmp.open("wb") as stream:
        torch.save(checkpoint, stream)
    write_text_atomic(paths[1], pd.DataFrame(result.history, columns=HISTORY_COLUMNS).to_csv(index=False))
    if not result.data.final:
        write_text_atomic(paths[2], predictions_table(result).to_csv(index=False))
    return paths


def fold_metrics(result: FoldResult, recipe: Recipe) -> dict[str, Any]:
    """metrics.json's record of the fold: the scores of its held-out predictions (predictions.csv: the kept epoch,
    averaged over every view with train.tta), sizes, device and weights. The same inputs give the same record:
    what differs from run to run (seconds, MLflow's outcome, a resume) goes to the run log (burrscope.runlog)."""
    weights: Weights = result.built.weights
    probabilities, labels = result.probabilities, result.data.val_y.cpu()
    held_out = not result.data.final
    return {
        "fold": result.data.fold,
        "keep": "last" if result.data.final else recipe.keep,
        "epoch_kept": result.epoch_kept,
        "tta": recipe.tta,
        # None: the final model has no held-out images.
        "val_loss": torch.nn.functional.nll_loss(probabilities.clamp_min(1e-12).log(), labels).item()
        if held_out
        else None,
        "val_accuracy": (probabilities.argmax(1) == labels).float().mean().item() if held_out else None,
        "n_train": len(result.data.train_rows),
        "n_val": len(result.data.val_rows),
        "device": str(result.device),
        "cpu": None
        if result.cpu_capability is None
        else {"capability": result.cpu_capability, "threads": torch.get_num_threads()},
        "weights": {"name": weights.name, "sha256": weights.sha256},
    }


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(metrics, indent=2) + "\n")
