"""Training recipe options: learning-rate schedule, weight decay, label smoothing, EMA of the weights."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from burrscope.models.device import Runtime
from burrscope.models.tensors import load_images
from burrscope.params import Params
from burrscope.training import epochs as epochs_module
from burrscope.training.fold import train_fold
from burrscope.training.loop import WeightAverage, image_logits, logit_scores, lr_factor, make_optimiser
from burrscope.training.outputs import fold_metrics

Notch = tuple[Path, pd.DataFrame]


def test_lr_factor_warms_up_linearly_then_follows_the_schedule() -> None:
    assert [lr_factor(s, 10, 4, "constant") for s in range(10)] == pytest.approx(
        [0.01, 0.2575, 0.505, 0.7525, 1, 1, 1, 1, 1, 1]
    )
    cosine = [lr_factor(s, 10, 2, "cosine") for s in range(10)]
    assert cosine[:3] == pytest.approx([0.01, 0.505, 1.0])
    assert cosine[6] == pytest.approx(0.5)  # halfway through the 8 steps after the warmup
    assert all(a > b for a, b in itertools.pairwise(cosine[2:])) and 0 < cosine[-1] < 0.05
    assert lr_factor(0, 10, 0, "cosine") == 1.0 and lr_factor(5, 10, 0, "constant") == 1.0


def test_train_fold_sets_the_scheduled_lr_before_every_step(
    notch: Notch, tiny_params: Callable[..., Params], monkeypatch: pytest.MonkeyPatch
) -> None:
    images, folds = notch
    used: list[float] = []
    step = torch.optim.AdamW.step

    def recording(self: torch.optim.AdamW, *args: object, **kwargs: object) -> object:
        used.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    # The schedule is the same whatever trains; head steps are cheap.
    recipe = tiny_params(finetune="head", train={"schedule": "cosine", "warmup_epochs": 1}).recipe
    train_fold(images, folds, 0, recipe)
    # 8 training images, batch 4: 2 steps per epoch, 1 epoch of warmup out of 2.
    assert used == pytest.approx([recipe.lr * f for f in (0.01, 0.505, 1.0, 0.5)])


def test_adamw_without_decay_takes_adams_steps_and_decay_shrinks_only_weights() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    twin = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    twin.load_state_dict(model.state_dict())
    inputs, labels = torch.randn(8, 4), torch.randint(0, 2, (8,))
    pairs = ((model, make_optimiser(model, 0.01, 0.0)), (twin, torch.optim.Adam(twin.parameters(), 0.01, fused=True)))
    for net, optimiser in pairs:
        for _ in range(3):
            optimiser.zero_grad()
            nn.functional.cross_entropy(net(inputs), labels).backward()
            optimiser.step()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values(), strict=True))

    # With zero gradients, AdamW's decoupled decay alone moves the weights: each step multiplies by 1 - lr * wd.
    model.eval()  # BatchNorm statistics stay put
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimiser = make_optimiser(model, 0.1, 0.5)
    for _ in range(4):
        optimiser.zero_grad()
        (0 * model(inputs).sum()).backward()
        optimiser.step()
    for key, value in model.state_dict().items():
        expected = before[key] * 0.95**4 if key.endswith("weight") and value.ndim > 1 else before[key]
        assert torch.allclose(value, expected), key  # biases and BatchNorm scales are not decayed


def test_label_smoothing_smooths_the_training_loss_only(
    notch: Notch, tiny_params: Callable[..., Params], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With lr 0 both runs see the same weights: only the training loss's formula differs."""
    images, folds = notch
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []
    cross_entropy = nn.functional.cross_entropy

    def capturing(logits: torch.Tensor, labels: torch.Tensor, **kwargs: float) -> torch.Tensor:
        if logits.requires_grad:
            captured.append((logits.detach(), labels))
        return cross_entropy(logits, labels, **kwargs)

    monkeypatch.setattr(nn.functional, "cross_entropy", capturing)
    runs = {}
    for smoothing in (0.0, 0.2):
        captured.clear()
        recipe = tiny_params(epochs=1, batch_size=8, train={"label_smoothing": smoothing}).recipe
        runs[smoothing] = train_fold(images, folds, 0, dataclasses.replace(recipe, lr=0.0)).history[0]
    ((logits, labels),) = captured  # 8 training images in one batch: one step
    log_p = logits.log_softmax(1)
    nll, uniform = -log_p.gather(1, labels[:, None]).mean().item(), -log_p.mean().item()
    assert runs[0.0]["train_loss"] == pytest.approx(nll, rel=1e-5)
    assert runs[0.2]["train_loss"] == pytest.approx(0.8 * nll + 0.2 * uniform, rel=1e-5)
    assert runs[0.2]["train_loss"] != pytest.approx(runs[0.0]["train_loss"])
    assert runs[0.2]["val_loss"] == runs[0.0]["val_loss"]  # validation loss is never smoothed


def test_weight_average_moves_towards_the_weights_and_copies_buffers() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.75)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(4.0)
    model(torch.randn(5, 3))  # training mode: BatchNorm running statistics move
    average.update()
    assert torch.allclose(average.model[0].weight, start + 1.0)  # 0.75 * w + 0.25 * (w + 4)
    assert torch.equal(average.model[1].running_mean, model[1].running_mean)
    assert not any(p.requires_grad for p in average.model.parameters())


def test_ema_weights_are_what_is_evaluated_and_kept(
    notch: Notch, tiny_params: Callable[..., Params], monkeypatch: pytest.MonkeyPatch
) -> None:
    images, folds = notch
    made: list[WeightAverage] = []

    class Recorded(WeightAverage):
        def __init__(self, model: nn.Module, decay: float) -> None:
            super().__init__(model, decay)
            self.raw = model
            made.append(self)

    monkeypatch.setattr(epochs_module, "WeightAverage", Recorded)
    recipe = tiny_params(lr=0.01, train={"ema_decay": 0.5, "tta": False}).recipe
    result = train_fold(images, folds, 2, recipe)
    (average,) = made
    assert average.decay == 0.5
    kept, raw = average.model.state_dict(), average.raw.state_dict()
    assert all(torch.equal(result.state_dict[k], kept[k]) for k in kept)
    moved = [k for k in raw if k.endswith("weight") and not torch.equal(raw[k], kept[k])]
    assert len(moved) > 10  # the average lags the raw weights
    assert all(torch.equal(raw[k], kept[k]) for k in raw if "running_" in k)  # BatchNorm statistics copied
    val = folds[folds["fold"] == 2]
    labels = torch.tensor(val["label"].astype(int).to_numpy())
    val_images = load_images(images, list(val["file"]))
    cpu = Runtime(torch.device("cpu"))

    def probabilities_of(model: nn.Module) -> torch.Tensor:
        logits = image_logits(model, val_images, result.built.normalisation, cpu)
        return logit_scores(logits[None], labels)[2]  # one view: the images as they are (no test-time augmentation)

    assert torch.equal(probabilities_of(average.model), result.probabilities)
    assert not torch.equal(probabilities_of(average.raw), result.probabilities)
    # One view: the history's loss is the logits' cross-entropy, the metrics' the log of their softmax: the same
    # number, rounded apart in the last float32 digits.
    assert math.isclose(result.history[-1]["val_loss"], fold_metrics(result, recipe)["val_loss"], rel_tol=1e-6)
