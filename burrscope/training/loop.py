"""What every fine-tuning strategy shares: one epoch of optimiser steps, the optimiser and its schedule, the
weight average, and the scores of held-out logits.

As in timm, `train_one_epoch` knows nothing of how a strategy turns batch indices into logits (whole images through
the whole network, or cached features through the layers left to train); setup.validate scores the held-out fold
with `logit_scores` and `recall_f1_auc`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from burrscope.models.device import Runtime
from burrscope.models.factory import Normalisation

WARMUP_START = 0.01  # warmup starts at lr / 100


def lr_factor(step: int, steps: int, warmup_steps: int, schedule: str) -> float:
    """The multiple of `lr` for optimiser step `step` (from 0) of `steps`: linear warmup, then constant or cosine."""
    if step < warmup_steps:
        return WARMUP_START + (1 - WARMUP_START) * step / warmup_steps
    if schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, steps - warmup_steps)))


def make_optimiser(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; biases and norm scales are not decayed (as timm does).

    With weight_decay 0, AdamW takes exactly Adam's steps. Fused, on every device: on CUDA it updates every parameter
    in a few kernel launches instead of several per tensor (at small batches the launches, not the arithmetic, take
    the time); on a CPU it takes square roots with the processor's exact instruction, where the per-tensor path
    calls MKL's vector maths, whose last bit depends on the CPU.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        [
            {"params": [p for p in trainable if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0},
        ],
        lr=lr,
        fused=True,
    )


class WeightAverage:
    """An exponential moving average of the trainable weights, updated after every step.

    Buffers (BatchNorm running statistics) are copied rather than averaged: they already are running averages.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay
        self.pairs = [
            (mine, theirs)
            for mine, theirs in zip(self.model.parameters(), model.parameters(), strict=True)
            if theirs.requires_grad
        ]
        self.buffers = list(zip(self.model.buffers(), model.buffers(), strict=True))

    @torch.no_grad()
    def update(self) -> None:
        for mine, theirs in self.pairs:
            mine.lerp_(theirs, 1 - self.decay)
        for mine, theirs in self.buffers:
            mine.copy_(theirs)


def balanced_weights(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Per-class loss weights n / (classes x n_c), as scikit-learn's "balanced": every class weighs the same in
    total, however rare it is."""
    counts = torch.bincount(labels.cpu(), minlength=classes).double()
    return (len(labels) / (classes * counts.clamp_min(1))).float()


def logit_scores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """Mean loss, accuracy and class probabilities of V x N x C logits: V views of each of N images.

    One view: cross-entropy of the logits. Several (test-time augmentation): the probabilities are the mean
    softmax over the views, and the loss is their negative log-likelihood. Never label-smoothed, so the loss
    compares across recipes.
    """
    logits = logits.float()
    if len(logits) == 1:
        loss = nn.functional.cross_entropy(logits[0], labels).item()
        probabilities = logits[0].softmax(1)
    else:
        probabilities = logits.softmax(2).mean(0)
        loss = nn.functional.nll_loss(probabilities.clamp_min(1e-12).log(), labels).item()
    accuracy = (probabilities.argmax(1) == labels).float().mean().item()
    return loss, accuracy, probabilities.cpu()


def roc_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve: the chance that a positive outscores a negative, ties counting half
    (Mann-Whitney U from average ranks); NaN without both kinds."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return math.nan
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2)[inverse]  # tied scores share their average rank
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _mean_defined(values: list[float]) -> float:
    """The mean of the values that are not NaN; NaN if none is."""
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan


def recall_f1_auc(probabilities: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """val_recall, val_f1 and (two classes) val_roc_auc of a fold's held-out probabilities, defined as
    evaluation.scores.score_predictions defines them for aggregate, here in numpy: importing that module would make
    every edit of aggregate's scoring retrain the folds (it would join their DVC deps).

    Labels are the argmax, as in the fold's predictions.csv. Two classes: of the positive (last) class; more:
    macro averages over the classes with a defined value. Undefined scores (no positives) are left out.
    """
    truth, probs = labels.cpu().numpy(), probabilities.float().cpu().numpy()
    predicted = probs.argmax(1)
    recalls, f1s = [], []
    for c in [probs.shape[1] - 1] if probs.shape[1] == 2 else range(probs.shape[1]):
        actual, called = truth == c, predicted == c
        hits = int((actual & called).sum())
        recalls.append(hits / actual.sum() if actual.any() else math.nan)
        f1s.append(2 * hits / (actual.sum() + called.sum()) if actual.any() or called.any() else math.nan)
    values = {"val_recall": _mean_defined(recalls), "val_f1": _mean_defined(f1s)}
    if probs.shape[1] == 2:
        values["val_roc_auc"] = roc_auc(truth == 1, probs[:, 1])
    return {name: value for name, value in values.items() if not math.isnan(value)}


@torch.inference_mode()
def image_logits(
    model: nn.Module, images: torch.Tensor, normalisation: Normalisation, runtime: Runtime
) -> torch.Tensor:
    """Logits of uint8 images, in the runtime's batches, with no autograd bookkeeping."""
    model.eval()
    with runtime.autocast():
        return torch.cat(
            [
                model(runtime.inputs(runtime.unit(images[i : i + runtime.eval_batch]), normalisation))
                for i in range(0, len(images), runtime.eval_batch)
            ]
        )


@dataclass
class Steps:
    """What every optimiser step needs besides the batch: the optimiser, its schedule and the weight average."""

    optimiser: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    lr: float
    total: int  # optimiser steps in the whole run
    warmup: int
    schedule: str
    label_smoothing: float
    class_weights: torch.Tensor | None  # per class, on the device: train.class_weights
    average: WeightAverage | None


def train_one_epoch(
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor,
    order: torch.Tensor,
    batch_size: int,
    *,
    first_step: int,
    steps: Steps,
    runtime: Runtime,
) -> dict[str, float]:
    """Optimiser steps over `order` (indices of training examples) in batches; mean loss and accuracy.

    `logits_of(idx)` runs the model on the examples `idx`, augmentation included. Loss and accuracy are summed
    on the device and read once at the end: reading a value every step would stall a GPU.
    """
    device = runtime.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for step, start in enumerate(range(0, len(order), batch_size), start=first_step):
        idx = order[start : start + batch_size]
        batch_labels = labels[idx].to(device, non_blocking=True)
        for group in steps.optimiser.param_groups:
            group["lr"] = steps.lr * lr_factor(step, steps.total, steps.warmup, steps.schedule)
        with runtime.autocast():
            logits = logits_of(idx)
        loss = nn.functional.cross_entropy(
            logits.float(), batch_labels, weight=steps.class_weights, label_smoothing=steps.label_smoothing
        )
        steps.optimiser.zero_grad(set_to_none=True)
        steps.scaler.scale(loss).backward()
        steps.scaler.step(steps.optimiser)
        steps.scaler.update()
        if steps.average is not None:
            steps.average.update()
        loss_sum += loss.detach().double() * len(idx)
        correct += (logits.argmax(1) == batch_labels).sum()
    return {"train_loss": loss_sum.item() / len(order), "train_accuracy": correct.item() / len(order)}
