"""Training: augmentation, device choice, a tiny fold end to end, and what it writes."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from burrscope.errors import DataError
from burrscope.inference.ensemble import load_ensemble, model_probabilities
from burrscope.models.device import DeviceError, select_device
from burrscope.models.factory import Built, standardise
from burrscope.models.symmetries import views
from burrscope.models.tensors import load_images
from burrscope.params import FINAL_ITEM, Augment, Params
from burrscope.training import setup as fold_setup
from burrscope.training.augment import augment
from burrscope.training.fold import train_fold
from burrscope.training.outputs import fold_metrics, write_fold_outputs, write_metrics

Notch = tuple[Path, pd.DataFrame]


@st.composite
def batches(draw: st.DrawFn) -> torch.Tensor:
    n, side = draw(st.integers(1, 5)), draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**16))
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


@settings(max_examples=40, deadline=None)
@given(batch=batches(), seed=st.integers(0, 1000), flip=st.booleans(), rot90=st.booleans())
def test_geometric_augmentation_only_moves_pixels(batch: torch.Tensor, seed: int, flip: bool, rot90: bool) -> None:
    out = augment(batch, torch.Generator().manual_seed(seed), Augment(flip=flip, rot90=rot90, jitter=0.0))
    assert out.shape == batch.shape
    # Flips and quarter turns of a square never crop: each image keeps exactly its pixel values.
    for before, after in zip(batch, out, strict=True):
        assert torch.equal(before.flatten().sort().values, after.flatten().sort().values)
    if not (flip or rot90):
        assert torch.equal(out, batch)


@settings(max_examples=30, deadline=None)
@given(batch=batches(), seed=st.integers(0, 1000), jitter=st.floats(0.01, 0.5))
def test_jitter_stays_in_range_and_is_seeded(batch: torch.Tensor, seed: int, jitter: float) -> None:
    settings_ = Augment(flip=True, rot90=True, jitter=jitter)
    first = augment(batch, torch.Generator().manual_seed(seed), settings_)
    again = augment(batch, torch.Generator().manual_seed(seed), settings_)
    assert torch.equal(first, again)
    assert first.min() >= 0 and first.max() <= 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(DeviceError, match=r"train\.device is `cuda` but no CUDA device"):
        select_device("cuda")
    assert select_device("auto") == torch.device("cpu")


def test_tiny_fold_trains_predicts_and_is_reproducible(notch: Notch, tiny_params: Callable[..., Params]) -> None:
    images, folds = notch
    recipe = tiny_params().recipe
    epochs_seen: list[int] = []
    result = train_fold(images, folds, 1, recipe, on_epoch=lambda e, _: epochs_seen.append(e))
    assert result.data.classes == ["0", "1"]
    assert epochs_seen == [1, 2] and [row["epoch"] for row in result.history] == [1, 2]
    assert result.probabilities.shape == (4, 2)
    assert torch.allclose(result.probabilities.sum(1), torch.ones(4))
    metrics = fold_metrics(result, recipe)
    assert metrics["weights"]["sha256"] == result.built.weights.sha256 is not None
    # Same data, recipe and seed on CPU: bit-identical probabilities, weights, history and metrics.
    again = train_fold(images, folds, 1, recipe)
    assert torch.equal(result.probabilities, again.probabilities)
    assert result.history == again.history and metrics == fold_metrics(again, recipe)
    assert result.state_dict.keys() == again.state_dict.keys()
    assert all(torch.equal(result.state_dict[k], again.state_dict[k]) for k in result.state_dict)


def test_keep_best_returns_the_epoch_with_the_lowest_validation_loss(
    notch: Notch, tiny_params: Callable[..., Params]
) -> None:
    images, folds = notch
    recipe = tiny_params(epochs=3, train={"keep": "best", "tta": False}).recipe
    result = train_fold(images, folds, 0, recipe)
    losses = [row["val_loss"] for row in result.history]
    assert result.epoch_kept == 1 + int(np.argmin(losses))
    # Recomputed from the kept epoch's saved probabilities: the same loss up to float32 rounding.
    assert fold_metrics(result, recipe)["val_loss"] == pytest.approx(min(losses), rel=1e-6)


def test_unknown_fold_is_a_clear_error(notch: Notch, tiny_params: Callable[..., Params]) -> None:
    images, folds = notch
    with pytest.raises(DataError, match="fold 7 has no images"):
        train_fold(images, folds, 7, tiny_params().recipe)


def test_outputs_are_complete_and_the_checkpoint_loads_safely(
    notch: Notch, tiny_params: Callable[..., Params], tmp_path: Path
) -> None:
    images, folds = notch
    recipe = tiny_params(epochs=1).recipe
    result = train_fold(images, folds, 2, recipe)
    out = tmp_path / "fold_2"
    paths = write_fold_outputs(out, result, recipe)
    write_metrics(out / "metrics.json", fold_metrics(result, recipe))
    assert [p.name for p in paths] == ["model.pt", "history.csv", "predictions.csv"]
    predictions = pd.read_csv(out / "predictions.csv", dtype={"label": str, "predicted": str})
    assert list(predictions.columns) == ["file", "label", "fold", "predicted", "prob_0", "prob_1"]
    assert set(predictions["file"]) == set(folds.loc[folds["fold"] == 2, "file"])
    assert list(pd.read_csv(out / "history.csv").columns) == [
        "epoch",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
    ]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["weights"]["name"].startswith("efficientnet-lite0 ImageNet")
    checkpoint = torch.load(out / "model.pt", weights_only=True)
    assert checkpoint["classes"] == ["0", "1"] and checkpoint["img_size"] == 32
    result.built.model.load_state_dict(checkpoint["state_dict"])


def count_backbone_images(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Batch sizes through the stem of every model train_fold builds, as they happen."""
    seen: list[int] = []
    build = fold_setup.build_model

    def counted(*args: object) -> Built:
        built = build(*args)
        built.model._conv_stem.register_forward_hook(lambda _m, inputs, _o: seen.append(len(inputs[0])))
        return built

    monkeypatch.setattr(fold_setup, "build_model", counted)
    return seen


def test_head_finetuning_trains_on_cached_features_and_saves_the_whole_model(
    notch: Notch, tiny_params: Callable[..., Params], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, folds = notch
    recipe = tiny_params(epochs=60, lr=0.05, finetune="head").recipe
    seen = count_backbone_images(monkeypatch)
    result = train_fold(images, folds, 1, recipe)
    # One backbone pass per image in each of its 8 flips/turns, for all folds at once (a shared cache), none after.
    assert sum(seen) == 12 * 8
    pretrained = torch.load(result.built.weights.path, map_location="cpu", weights_only=True)
    frozen = [k for k in pretrained if not k.startswith("_fc.")]
    assert all(torch.equal(result.state_dict[k], pretrained[k]) for k in frozen)  # BN statistics included
    assert result.history[-1]["train_accuracy"] == 1.0
    assert result.history[-1]["val_loss"] < 0.5 < result.history[0]["val_loss"]

    out = tmp_path / "fold_1"
    write_fold_outputs(out, result, recipe)
    predictions = pd.read_csv(out / "predictions.csv")
    ensemble = load_ensemble([out / "model.pt"])
    inputs = standardise(load_images(images, list(predictions["file"])).float() / 255, ensemble.normalisation)
    with torch.inference_mode():
        probabilities = model_probabilities(ensemble.models, inputs, ensemble.views)[0]  # with its 8 TTA views
    expected = torch.tensor(predictions[["prob_0", "prob_1"]].to_numpy()).float()
    assert torch.allclose(probabilities, expected, atol=1e-5)


def test_head_finetuning_caches_only_the_variants_augmentation_can_make(
    notch: Notch, tiny_params: Callable[..., Params], monkeypatch: pytest.MonkeyPatch
) -> None:
    images, folds = notch
    recipe = tiny_params(epochs=1, finetune="head", train={"tta": False}).recipe
    recipe = dataclasses.replace(recipe, augment=Augment(flip=True, rot90=False, jitter=0.0))
    seen = count_backbone_images(monkeypatch)
    train_fold(images, folds, 1, recipe)
    assert sum(seen) == 12 * 4  # every image as it is, in two mirrors and in the half turn


def test_views_are_the_symmetries_of_the_square() -> None:
    square = torch.arange(9.0).view(1, 1, 3, 3)

    def seen(flip: bool, rot90: bool) -> set[tuple[float, ...]]:
        return {
            tuple(torch.rot90(square.flip(3) if m else square, k, dims=(2, 3)).flatten().tolist())
            for m, k in views(flip, rot90)
        }

    assert len(seen(True, True)) == 8 and len(seen(True, False)) == len(seen(False, True)) == 4
    assert tuple(square.flip(2).flatten().tolist()) in seen(True, False)  # the vertical mirror
    assert seen(False, False) == {tuple(range(9))}


def test_final_model_trains_on_every_image_without_validation(
    notch: Notch, tiny_params: Callable[..., Params], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, folds = notch
    recipe = tiny_params(epochs=2, train={"keep": "best"}).recipe
    result = train_fold(images, folds, FINAL_ITEM, recipe)
    assert "keeping the last epoch" in capsys.readouterr().out
    metrics = fold_metrics(result, recipe)
    assert metrics["n_train"] == 12 and metrics["n_val"] == 0
    assert result.epoch_kept == 2 and metrics["keep"] == "last" and metrics["val_loss"] is None
    out = tmp_path / "final"
    paths = write_fold_outputs(out, result, recipe)
    assert sorted(p.name for p in paths) == sorted(p.name for p in out.iterdir()) == ["history.csv", "model.pt"]
    history = pd.read_csv(out / "history.csv")
    assert history[["val_loss", "val_accuracy"]].isna().all().all() and history["train_loss"].notna().all()
    load_ensemble([out / "model.pt"])
