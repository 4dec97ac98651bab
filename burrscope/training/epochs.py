"""The epoch loop of the gradient strategies: resumable from a checkpoint, keeping the last or the best epoch, and
re-scoring the kept weights on every view of the held-out images (train.tta) at the end."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from burrscope.params import Recipe
from burrscope.runlog import Stopwatch
from burrscope.training import resume
from burrscope.training.loop import Steps, WeightAverage, balanced_weights, make_optimiser, train_one_epoch
from burrscope.training.setup import FoldResult, Setup, report_epoch, validate

EpochHook = Callable[[int, dict[str, float]], None]


def epoch_size(images: int, batch_size: int) -> tuple[int, int]:
    """(examples used per epoch, optimiser steps per epoch). A lone last example would make BatchNorm fail (one
    value per channel): it is left out of that epoch (the shuffle brings it back in the next)."""
    usable = images - (1 if images % batch_size == 1 and images > 1 else 0)
    return usable, math.ceil(usable / batch_size)


def make_steps(setup: Setup, recipe: Recipe, steps_per_epoch: int) -> Steps:
    """The optimiser, its schedule, the class weights and the weight average (train.ema_decay) of the whole run."""
    model, data, device = setup.built.model, setup.data, setup.device
    average = WeightAverage(model, recipe.ema_decay) if recipe.ema_decay > 0 else None
    return Steps(
        make_optimiser(model, recipe.lr, recipe.weight_decay),
        torch.amp.GradScaler(device.type, enabled=setup.runtime.amp_dtype is torch.float16),
        recipe.lr,
        recipe.epochs * steps_per_epoch,
        recipe.warmup_epochs * steps_per_epoch,
        recipe.schedule,
        recipe.label_smoothing,
        None if recipe.class_weights == "none" else balanced_weights(data.train_y, len(data.classes)).to(device),
        average,
    )


class Checkpoints:
    """The fold's resume point: saved after an epoch once `every_s` seconds have passed since the last save (0:
    after every epoch), and resumed from at the start when it was made from the same inputs (resume.fingerprint)."""

    def __init__(self, path: Path | None, every_s: float, setup: Setup, steps: Steps) -> None:
        self.path, self.every_s, self.setup, self.steps = path, every_s, setup, steps
        self.saved = time.perf_counter()

    def resume(self) -> resume.Progress | None:
        """The progress of a matching checkpoint, its states restored into the model, steps and generator."""
        setup = self.setup
        state = resume.load_checkpoint(self.path, setup.fingerprint) if self.path is not None else None
        if state is None:
            return None
        progress = resume.restore(state, setup.built.model, self.steps, setup.generator, device=setup.device)
        epochs = f"{state['epoch']}/{setup.recipe.epochs}"
        print(f"fold {setup.data.fold}: resuming from {self.path} after epoch {epochs}", flush=True)
        self.saved = time.perf_counter()
        return progress

    def after_epoch(self, progress: resume.Progress, stopwatch: Stopwatch) -> None:
        if self.path is None or time.perf_counter() - self.saved < self.every_s:
            return
        setup = self.setup
        with stopwatch("checkpoint"):
            state = resume.snapshot(
                setup.fingerprint,
                progress,
                setup.built.model,
                self.steps,
                generator=setup.generator,
                device=setup.device,
            )
            resume.save_checkpoint(self.path, state)
        self.saved = time.perf_counter()


def keep_if_best(progress: resume.Progress, row: dict[str, float], kept: torch.nn.Module) -> None:
    """train.keep: best: remember this epoch's weights and predictions if its held-out loss is the lowest yet."""
    if progress.best is None or row["val_loss"] < progress.best["val_loss"]:
        progress.best = {
            "val_loss": row["val_loss"],
            "epoch": int(row["epoch"]),
            "probabilities": progress.probabilities,
            "state_dict": {k: v.detach().cpu().clone() for k, v in kept.state_dict().items()},
        }


def one_epoch(setup: Setup, steps: Steps, epoch: int, *, usable: int, steps_per_epoch: int) -> dict[str, Any]:
    """Shuffle, draw the epoch's views, and take the epoch's optimiser steps; its history row so far."""
    data, generator = setup.data, setup.generator
    order = torch.randperm(len(data.train_x), generator=generator)
    setup.strategy.start_epoch(generator)
    order = order.to(data.train_x.device, non_blocking=True)[:usable]
    scores = train_one_epoch(
        lambda idx: setup.strategy.train_logits(idx, generator),
        data.train_y,
        order,
        setup.recipe.batch_size,
        first_step=(epoch - 1) * steps_per_epoch,
        steps=steps,
        runtime=setup.runtime,
    )
    return {"epoch": epoch, **scores}


def run_epochs(
    setup: Setup,
    *,
    on_epoch: EpochHook | None,
    checkpoint: Path | None,
    stopwatch: Stopwatch,
    checkpoint_every_s: float,
) -> FoldResult:
    """The epoch loop, resumable from `checkpoint`; each finished epoch's row goes to `on_epoch`."""
    data, recipe = setup.data, setup.recipe
    usable, steps_per_epoch = epoch_size(len(data.train_x), recipe.batch_size)
    steps = make_steps(setup, recipe, steps_per_epoch)
    average = steps.average
    kept = average.model if average is not None else setup.built.model  # what is evaluated and saved
    keep = "last" if data.final else recipe.keep
    if data.final and recipe.keep == "best":
        print("final model: train.keep=best needs a validation set; keeping the last epoch", flush=True)

    checkpoints = Checkpoints(checkpoint, checkpoint_every_s, setup, steps)
    progress = checkpoints.resume() or resume.Progress([], None, torch.empty(0))
    resumed_from = len(progress.history)
    if on_epoch is not None and resumed_from:  # so a new tracking run still carries the whole curve
        with stopwatch("logging"):
            for row in progress.history:
                on_epoch(int(row["epoch"]), row)
    for epoch in range(resumed_from + 1, recipe.epochs + 1):
        started = time.perf_counter()
        with stopwatch("train"):
            row = one_epoch(setup, steps, epoch, usable=usable, steps_per_epoch=steps_per_epoch)
        if not data.final:  # each epoch's curve point on the images as they are; test-time augmentation once, below
            progress.probabilities = validate(
                setup, row, None if average is None else kept, stopwatch, every_view=False
            )
        progress.history.append(row)
        report_epoch(data.fold, recipe.epochs, row, time.perf_counter() - started)
        if keep == "best":
            keep_if_best(progress, row, kept)
        checkpoints.after_epoch(progress, stopwatch)
        if on_epoch is not None:
            with stopwatch("logging"):
                on_epoch(epoch, row)
    return kept_result(setup, progress, kept, resumed_from=resumed_from, stopwatch=stopwatch)


def kept_result(
    setup: Setup, progress: resume.Progress, kept: torch.nn.Module, *, resumed_from: int, stopwatch: Stopwatch
) -> FoldResult:
    """The fold's result from the kept epoch (best or last), its held-out predictions averaged over every view when
    train.tta is on."""
    recipe = setup.recipe
    if progress.best is not None:
        epoch_kept, state_dict = progress.best["epoch"], progress.best["state_dict"]
        probabilities = progress.best["probabilities"]
    else:
        epoch_kept, state_dict, probabilities = recipe.epochs, kept.state_dict(), progress.probabilities
    state_dict = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
    if recipe.tta and not setup.data.final:
        kept.load_state_dict(state_dict)
        probabilities = validate(setup, {}, None if kept is setup.built.model else kept, stopwatch)
    return FoldResult(
        progress.history,
        probabilities,
        state_dict,
        epoch_kept,
        setup.built,
        setup.data,
        resumed_from,
        setup.device,
        setup.cpu_capability,
    )
