"""Train one fold: fine-tune on the other folds, predict the held-out one; or the final model, on every image.

After every epoch the fold can save a checkpoint (resume.py) and report the epoch's row to `on_epoch` (MLflow).
The final model (fold `all`) has no validation set: it keeps the last epoch and writes no predictions.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch

from burrscope.params import Recipe
from burrscope.runlog import Stopwatch
from burrscope.training.epochs import EpochHook, run_epochs
from burrscope.training.probe import LinearProbe
from burrscope.training.setup import FoldResult, Setup, prepare, report_epoch, validate


def train_fold(
    images_dir: Path,
    folds: pd.DataFrame,
    fold: int | str,
    recipe: Recipe,
    *,
    on_epoch: EpochHook | None = None,
    checkpoint: Path | None = None,
    stopwatch: Stopwatch | None = None,
    checkpoint_every_s: float = 0.0,
    train_fraction: float = 1.0,
) -> FoldResult:
    """Train on every fold but `fold`, evaluating on `fold` after each epoch; `all`: on every image.

    With `checkpoint`, the state after an epoch is saved there (after every epoch, or once `checkpoint_every_s`
    seconds have passed since the last save), and a matching checkpoint found at the start is resumed from: its
    epochs are replayed to `on_epoch`, then training continues where it stopped. `finetune: probe` fits in
    closed form: one row of history, no checkpoint. `train_fraction` below 1 trains on that share of the
    training images (fold_data.training_subset), for the learning curve.
    """
    stopwatch = stopwatch or Stopwatch()
    setup = prepare(images_dir, folds, fold, recipe, stopwatch=stopwatch, train_fraction=train_fraction)
    if isinstance(setup.strategy, LinearProbe):
        return fit_probe_fold(setup, on_epoch, stopwatch)
    return run_epochs(
        setup, on_epoch=on_epoch, checkpoint=checkpoint, stopwatch=stopwatch, checkpoint_every_s=checkpoint_every_s
    )


def fit_probe_fold(setup: Setup, on_epoch: EpochHook | None, stopwatch: Stopwatch) -> FoldResult:
    """`finetune: probe`: the classifier layer fitted in closed form, as the fold's one epoch."""
    assert isinstance(setup.strategy, LinearProbe)
    started = time.perf_counter()
    with stopwatch("train"):
        row = {"epoch": 1, **setup.strategy.fit()}
    probabilities = torch.empty(0) if setup.data.final else validate(setup, row, None, stopwatch)
    report_epoch(setup.data.fold, 1, row, time.perf_counter() - started)
    print(
        f"fold {setup.data.fold}: probe C = {setup.strategy.chosen_c:g}, chosen by inner cross-validation", flush=True
    )
    if on_epoch is not None:
        with stopwatch("logging"):
            on_epoch(1, row)
    state_dict = {k: v.detach().cpu() for k, v in setup.built.model.state_dict().items()}
    return FoldResult(
        [row], probabilities, state_dict, 1, setup.built, setup.data, 0, setup.device, setup.cpu_capability
    )
