"""A fold ready to train: device and numerics, the seeded model, its examples and strategy; scoring its held-out
images; and what a trained fold hands on (FoldResult)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from burrscope.models.device import Runtime, pin_cpu_numerics, select_device
from burrscope.models.factory import Built, build_model
from burrscope.params import Recipe
from burrscope.runlog import Stopwatch
from burrscope.training import resume
from burrscope.training.fold_data import FINAL_ITEM, FoldData, load_fold
from burrscope.training.loop import logit_scores, recall_f1_auc
from burrscope.training.probe import LinearProbe
from burrscope.training.strategies import STRATEGIES, Strategy


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
    """A fold ready to train: its recipe, device, network, examples, strategy and random streams."""

    recipe: Recipe
    device: torch.device
    runtime: Runtime
    cpu_capability: str | None
    built: Built
    data: FoldData
    strategy: Strategy | LinearProbe
    generator: torch.Generator
    fingerprint: str


def prepare(
    images_dir: Path,
    folds: pd.DataFrame,
    fold: int | str,
    recipe: Recipe,
    *,
    stopwatch: Stopwatch,
    train_fraction: float = 1.0,
) -> Setup:
    """Device and numerics first (before any CUDA or CPU work), then the seeded model, the examples (a share of the
    training rows with `train_fraction`) and the strategy (which caches frozen features once, for the strategies
    that freeze part of the network)."""
    device = select_device(recipe.device)
    configure_determinism(recipe.deterministic, recipe.cudnn_benchmark, device)
    cpu_capability = pin_cpu_numerics(recipe.cpu_threads) if device.type == "cpu" else None
    runtime = Runtime.of(device, recipe.amp, recipe.channels_last)
    seed = recipe.seed + (0 if fold == FINAL_ITEM else int(fold))
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    with stopwatch("data"):
        built = build_model(recipe.model, len(set(folds["label"])), recipe.pretrained, recipe.img_size)
        runtime.prepare(built.model)
        data = load_fold(images_dir, folds, fold, train_fraction=train_fraction, seed=recipe.seed)
        images = [x for x in (data.train_x, data.val_x) if x is not None]
        expected = resume.fingerprint(recipe, folds, fold, device, images=images)
        data = data.placed(device)
    with stopwatch("train"):
        strategy = (LinearProbe if recipe.finetune == "probe" else STRATEGIES[recipe.finetune])(
            built, data, recipe, runtime
        )
    return Setup(recipe, device, runtime, cpu_capability, built, data, strategy, generator, expected)


def validate(
    setup: Setup,
    row: dict[str, float],
    average: torch.nn.Module | None,
    stopwatch: Stopwatch,
    *,
    every_view: bool = True,
) -> torch.Tensor:
    """Score the held-out fold into `row` (val_loss, val_accuracy, and for MLflow val_recall, val_f1, val_roc_auc,
    which history.csv leaves out); its class probabilities. `every_view` False: the images as they are only."""
    with stopwatch("eval"):
        logits = setup.strategy.validation_logits(average, every_view)
        val_loss, val_accuracy, probabilities = logit_scores(logits, setup.data.val_y)
        row |= {"val_loss": val_loss, "val_accuracy": val_accuracy, **recall_f1_auc(probabilities, setup.data.val_y)}
    return probabilities


def report_epoch(fold: int | str, epochs: int, row: dict[str, float], seconds: float) -> None:
    line = (
        f"fold {fold} epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f}"
    )
    if "val_loss" in row:
        line += f"  | val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f}"
    print(f"{line}  ({seconds:.1f} s)", flush=True)
