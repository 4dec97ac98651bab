"""Resumable training: a checkpoint after every epoch, resumed only when made from exactly the same inputs.

A rerun after a crash or a kill resumes from it when it was made from the same recipe, fold assignment,
images and training code, and then ends exactly as an uninterrupted run would on the CPU.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from burrscope.console import warn
from burrscope.files import CorruptFile, atomic_path, remove_stale_temps, seal, unseal
from burrscope.params import Recipe
from burrscope.pipeline.codegraph import PROJECT_ROOT, code_files
from burrscope.tables import FOLD_COLUMNS
from burrscope.training.loop import Steps

TRAINING_MODULE = "burrscope.training.fold"


def training_code_digest() -> str:
    """sha256 over the source of everything the training runs: code that changed since a checkpoint restarts it."""
    digest = hashlib.sha256()
    for name in code_files(PROJECT_ROOT, TRAINING_MODULE):
        digest.update(name.encode())
        digest.update((PROJECT_ROOT / name).read_bytes())
    return digest.hexdigest()


def fingerprint(
    recipe: Recipe, folds: pd.DataFrame, fold: int | str, device: torch.device, *, images: list[torch.Tensor]
) -> str:
    """What a checkpoint must have been made from to be resumed: recipe, fold assignment, fold, images, code."""
    digest = hashlib.sha256(training_code_digest().encode())
    settings = {"recipe": recipe.as_params(), "fold": fold, "device": device.type, "torch": torch.__version__}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(folds[FOLD_COLUMNS].to_csv(index=False).encode())
    for tensor in images:
        digest.update(tensor.contiguous().cpu().numpy().data)
    return digest.hexdigest()


def save_sealed(value: Any, path: Path) -> None:
    """torch.save `value` to `path` atomically, sealed with its digest (files.seal): a checkpoint or a cache entry
    corrupted on disk later is detected instead of loaded (torch's zip reader checks no checksum)."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(seal(buffer.getvalue()))


def load_sealed(path: Path, map_location: str | torch.device) -> Any:
    """What save_sealed wrote to `path`; CorruptFile if its bytes changed since."""
    payload = unseal(path.read_bytes(), path)
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)


def load_checkpoint(path: Path, expected: str) -> dict[str, Any] | None:
    """The checkpoint at `path` if it can be resumed from; otherwise None, with a warning saying why it is ignored."""
    remove_stale_temps(path)  # left by a kill mid-save; one writer per fold
    if not path.is_file():
        return None
    try:
        state = load_sealed(path, "cpu")
    except CorruptFile as err:
        warn(f"ignoring {err}; training from the start")
        return None
    except Exception as err:  # a checkpoint is only ever a shortcut: never let a bad one stop training
        warn(f"ignoring {path}: it cannot be read ({type(err).__name__}); training from the start")
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != expected:
        warn(f"ignoring {path}: it was made with other params, folds, images or code; training from the start")
        return None
    return state


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    save_sealed(state, path)


@dataclass
class Progress:
    """Where a fold's training stands after an epoch: its curve, its best epoch so far, its latest predictions."""

    history: list[dict[str, float]]
    best: dict[str, Any] | None
    probabilities: torch.Tensor


def snapshot(
    fingerprint_: str,
    progress: Progress,
    model: torch.nn.Module,
    steps: Steps,
    *,
    generator: torch.Generator,
    device: torch.device,
) -> dict[str, Any]:
    """Everything the next epoch depends on, RNG states included."""
    return {
        "fingerprint": fingerprint_,
        "epoch": len(progress.history),
        "history": progress.history,
        "best": progress.best,
        "probabilities": progress.probabilities,
        "model": model.state_dict(),
        "optimiser": steps.optimiser.state_dict(),
        "scaler": steps.scaler.state_dict(),
        "average": None if steps.average is None else steps.average.model.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
    }


def restore(
    state: dict[str, Any], model: torch.nn.Module, steps: Steps, generator: torch.Generator, *, device: torch.device
) -> Progress:
    """Put a snapshot's states back; the progress it recorded."""
    model.load_state_dict(state["model"])
    steps.optimiser.load_state_dict(state["optimiser"])
    steps.scaler.load_state_dict(state["scaler"])
    if steps.average is not None:
        steps.average.model.load_state_dict(state["average"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda":
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return Progress(state["history"], state["best"], state["probabilities"])
