"""Train one fold: fine-tune on the other folds, predict the held-out one; or the final model, on every image.

After every epoch the fold can save a checkpoint (resume.py) and report the epoch's row to `on_epoch` (MLflow).
The final model (fold FINAL) has no validation set: it keeps the last epoch and writes no predictions.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from burrscope.classes import prob_column
from burrscope.device import Runtime, pin_cpu_numerics, select_device
from burrscope.files import atomic_path, write_text_atomic
from burrscope.models import Built, Weights, build_model
from burrscope.params import Recipe
from burrscope.tables import FOLD_COLUMNS, HISTORY_COLUMNS
from burrscope.timing import Stopwatch
from burrscope.training import resume
from burrscope.training.data import FINAL, FoldData, load_fold
from burrscope.training.loop import (
    Steps,
    WeightAverage,
    balanced_weights,
    held_out_scores,
    make_optimiser,
    scores,
    train_one_epoch,
)
from burrscope.training.probe import LinearProbe
from burrscope.training.strategies import STRATEGIES, Strategy

OUTPUT_NAMES = ("model.pt", "history.csv", "predictions.csv")  # and metrics.json, written last


def configure_determinism(deterministic: bool, benchmark: bool, device: torch.device) -> None:
    """`train.deterministic`: deterministic kernels and no cuDNN autotuning; `train.cudnn_benchmark`: autotuning.

    (CPU reproducibility is pin_cpu_numerics'.) On CUDA, torch flags the backward of global average pooling
    (in every backbone here) as lacking a deterministic kernel; with a 1x1 output each input gets exactly one
    addition, so it is reproducible in practice, and `warn_only` lets it run with a warning instead of failing.
    """
    if deterministic:
        # cuBLAS reads this when CUDA first creates its handle, so it must be set before any CUDA work.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = device.type == "cuda" and benchmark and not deterministic


@dataclass
class FoldResult:
    history: list[dict[str, float]]
    probabilities: torch.Tensor  # held-out class probabilities of the kept epoch; empty for the final model
    state_dict: dict[str, torch.Tensor]
    epoch_kept: int
    built: Built
    data: FoldData
    resumed_from: int
    device: torch.device
    cpu_capability: str | None  # the vector instructions CPU kernels used; None on CUDA


@dataclass
class Setup:
    """A fold ready to train: its device, network, examples, strategy and random streams."""

    device: torch.device
    runtime: Runtime
    cpu_capability: str | None
    built: Built
    data: FoldData
    strategy: Strategy | LinearProbe
    generator: torch.Generator
    fingerprint: str


def prepare(images_dir: Path, folds: pd.DataFrame, fold: int | str, recipe: Recipe, stopwatch: Stopwatch) -> Setup:
    """Device and numerics first (before any CUDA or CPU work), then the seeded model, the examples and the
    strategy (which caches frozen features once, for the strategies that freeze part of the network)."""
    device = select_device(recipe.device)
    configure_determinism(recipe.deterministic, recipe.cudnn_benchmark, device)
    cpu_capability = pin_cpu_numerics(recipe.cpu_threads) if device.type == "cpu" else None
    runtime = Runtime.of(device, recipe.amp, recipe.channels_last)
    seed = recipe.seed + (0 if fold == FINAL else int(fold))
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    with stopwatch("data"):
        built = build_model(recipe.model, len(set(folds["label"])), recipe.pretrained, recipe.img_size)
        runtime.prepare(built.model)
        data = load_fold(images_dir, folds, fold)
        images = [x for x in (data.train_x, data.val_x) if x is not None]
        expected = resume.fingerprint(recipe, folds, fold, device, images)
        data = data.placed(device)
    with stopwatch("train"):
        strategy = (LinearProbe if recipe.finetune == "probe" else STRATEGIES[recipe.finetune])(
            built, data, recipe, runtime
        )
    return Setup(device, runtime, cpu_capability, built, data, strategy, generator, expected)


def train_fold(
    images_dir: Path,
    folds: pd.DataFrame,
    fold: int | str,
    recipe: Recipe,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    checkpoint: Path | None = None,
    stopwatch: Stopwatch | None = None,
    checkpoint_every_s: float = 0.0,
) -> FoldResult:
    """Train on every fold but `fold`, evaluating on `fold` after each epoch; FINAL: on every image.

    With `checkpoint`, the state after an epoch is saved there (after every epoch, or once `checkpoint_every_s`
    seconds have passed since the last save), and a matching checkpoint found at the start is resumed from: its
    epochs are replayed to `on_epoch`, then training continues where it stopped. `finetune: probe` fits in
    closed form: one row of history, no checkpoint.
    """
    stopwatch = stopwatch or Stopwatch()
    setup = prepare(images_dir, folds, fold, recipe, stopwatch)
    if isinstance(setup.strategy, LinearProbe):
        return fit_probe_fold(setup, on_epoch, stopwatch)
    return run_epochs(setup, recipe, on_epoch, checkpoint, stopwatch, checkpoint_every_s)


def validate(
    setup: Setup,
    row: dict[str, float],
    average: torch.nn.Module | None,
    stopwatch: Stopwatch,
    every_view: bool = True,
) -> torch.Tensor:
    """Score the held-out fold into `row` (val_loss, val_accuracy, and for MLflow val_recall, val_f1, val_roc_auc,
    which history.csv leaves out); its class probabilities. `every_view` False: the images as they are only."""
    with stopwatch("eval"):
        logits = setup.strategy.validation_logits(average, every_view)
        val_loss, val_accuracy, probabilities = scores(logits, setup.data.val_y)
        row |= {"val_loss": val_loss, "val_accuracy": val_accuracy, **held_out_scores(probabilities, setup.data.val_y)}
    return probabilities


def report_epoch(fold: int | str, epochs: int, row: dict[str, float], seconds: float) -> None:
    line = (
        f"fold {fold} epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f}"
    )
    if "val_loss" in row:
        line += f"  | val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f}"
    print(f"{line}  ({seconds:.1f} s)", flush=True)


def fit_probe_fold(
    setup: Setup, on_epoch: Callable[[int, dict[str, float]], None] | None, stopwatch: Stopwatch
) -> FoldResult:
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


def run_epochs(
    setup: Setup,
    recipe: Recipe,
    on_epoch: Callable[[int, dict[str, float]], None] | None,
    checkpoint: Path | None,
    stopwatch: Stopwatch,
    checkpoint_every_s: float,
) -> FoldResult:
    """The epoch loop of the gradient strategies, resumable from `checkpoint`."""
    data, model, generator, device = setup.data, setup.built.model, setup.generator, setup.device
    batch_size = recipe.batch_size
    # A lone last sample would make BatchNorm fail (one value per channel): fold it into the next epoch.
    usable = len(data.train_x) - (1 if len(data.train_x) % batch_size == 1 and len(data.train_x) > 1 else 0)
    steps_per_epoch = math.ceil(usable / batch_size)
    average = WeightAverage(model, recipe.ema_decay) if recipe.ema_decay > 0 else None
    steps = Steps(
        make_optimiser(model, recipe.lr, recipe.weight_decay, fused=device.type == "cuda"),
        torch.amp.GradScaler(device.type, enabled=setup.runtime.amp_dtype is torch.float16),
        recipe.lr,
        recipe.epochs * steps_per_epoch,
        recipe.warmup_epochs * steps_per_epoch,
        recipe.schedule,
        recipe.label_smoothing,
        None if recipe.class_weights == "none" else balanced_weights(data.train_y, len(data.classes)).to(device),
        average,
    )
    kept = average.model if average is not None else model  # what is evaluated and saved
    keep = "last" if data.final else recipe.keep
    if data.final and recipe.keep == "best":
        print("final model: train.keep=best needs a validation set; keeping the last epoch", flush=True)

    progress = resume.Progress([], None, torch.empty(0))
    state = resume.load_checkpoint(checkpoint, setup.fingerprint) if checkpoint is not None else None
    if state is not None:
        progress = resume.restore(state, model, steps, generator, device)
        print(f"fold {data.fold}: resuming from {checkpoint} after epoch {state['epoch']}/{recipe.epochs}", flush=True)
        if on_epoch is not None:  # so a new tracking run still carries the whole curve
            with stopwatch("logging"):
                for row in progress.history:
                    on_epoch(int(row["epoch"]), row)
    resumed_from = len(progress.history)
    saved = time.perf_counter()
    for epoch in range(resumed_from + 1, recipe.epochs + 1):
        started = time.perf_counter()
        with stopwatch("train"):
            order = torch.randperm(len(data.train_x), generator=generator)
            setup.strategy.start_epoch(generator)
            order = order.to(data.train_x.device, non_blocking=True)[:usable]
            row = {
                "epoch": epoch,
                **train_one_epoch(
                    lambda idx: setup.strategy.train_logits(idx, generator),
                    data.train_y,
                    order,
                    batch_size,
                    (epoch - 1) * steps_per_epoch,
                    steps,
                    setup.runtime,
                ),
            }
        if not data.final:  # each epoch's curve point on the images as they are; test-time augmentation once, below
            progress.probabilities = validate(setup, row, None if average is None else kept, stopwatch, False)
        progress.history.append(row)
        report_epoch(data.fold, recipe.epochs, row, time.perf_counter() - started)
        if keep == "best" and (progress.best is None or row["val_loss"] < progress.best["val_loss"]):
            progress.best = {
                "val_loss": row["val_loss"],
                "epoch": epoch,
                "probabilities": progress.probabilities,
                "state_dict": {k: v.detach().cpu().clone() for k, v in kept.state_dict().items()},
            }
        if checkpoint is not None and time.perf_counter() - saved >= checkpoint_every_s:
            with stopwatch("checkpoint"):
                resume.save_checkpoint(
                    checkpoint, resume.snapshot(setup.fingerprint, progress, model, steps, generator, device)
                )
            saved = time.perf_counter()
        if on_epoch is not None:
            with stopwatch("logging"):
                on_epoch(epoch, row)

    if progress.best is not None:
        epoch_kept, state_dict = progress.best["epoch"], progress.best["state_dict"]
        probabilities = progress.best["probabilities"]
    else:
        epoch_kept, state_dict, probabilities = recipe.epochs, kept.state_dict(), progress.probabilities
    state_dict = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
    if recipe.tta and not data.final:  # the kept weights' held-out predictions, averaged over every view
        kept.load_state_dict(state_dict)
        probabilities = validate(setup, {}, None if average is None else kept, stopwatch)
    return FoldResult(
        progress.history,
        probabilities,
        state_dict,
        epoch_kept,
        setup.built,
        data,
        resumed_from,
        device,
        setup.cpu_capability,
    )


def predictions_table(result: FoldResult) -> pd.DataFrame:
    """The held-out images with their fold, the argmax class and each class's probability."""
    table = result.data.val_rows[FOLD_COLUMNS].reset_index(drop=True).copy()
    classes = result.data.classes
    table["predicted"] = [classes[i] for i in result.probabilities.argmax(1).tolist()]
    for i, label in enumerate(classes):
        table[prob_column(label)] = result.probabilities[:, i].numpy().round(6)
    return table


def write_outputs(out_dir: Path, result: FoldResult, recipe: Recipe) -> list[Path]:
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
    paths = [out_dir / name for name in OUTPUT_NAMES[: 2 if result.data.final else 3]]
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
    averaged over every view with train.tta), sizes, device and weights."""
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
        "resumed_from_epoch": result.resumed_from,
    }


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(metrics, indent=2) + "\n")
