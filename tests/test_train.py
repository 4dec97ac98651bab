"""Training: augmentation, device choice, a tiny fold end to end, and what it writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from stages import train
from stages.predict import load_ensemble
from stages.train import FINAL, TrainError, augment, load_images, normalise, select_device, train_fold, write_outputs

REPO = Path(__file__).resolve().parents[1]


def tiny_params(**changes: object) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update({"epochs": 2, "batch_size": 4, **changes})
    params["resize"]["img_size"] = 32
    params["train"]["device"] = "cpu"
    return params


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """12 padded 32 px inputs: class 1 carries a bright notch at the edge, class 0 does not."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        label = i % 2
        pixels = np.zeros((32, 32, 3), np.uint8)
        pixels[12:20, 4:28] = rng.integers(90, 140, (8, 24, 3))
        if label:
            pixels[9:12, 25:28] = 255
        name = f"img_{i}.png"
        Image.fromarray(pixels).save(tmp_path / name)
        rows.append({"file": name, "label": str(label), "fold": i % 3})
    return tmp_path, pd.DataFrame(rows)


@st.composite
def batches(draw: st.DrawFn) -> torch.Tensor:
    n, side = draw(st.integers(1, 5)), draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**16))
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


@settings(max_examples=40, deadline=None)
@given(batch=batches(), seed=st.integers(0, 1000), flip=st.booleans(), rot90=st.booleans())
def test_geometric_augmentation_only_moves_pixels(batch: torch.Tensor, seed: int, flip: bool, rot90: bool) -> None:
    out = augment(batch, torch.Generator().manual_seed(seed), flip=flip, rot90=rot90, jitter=0.0)
    assert out.shape == batch.shape
    # Flips and quarter turns of a square never crop: each image keeps exactly its pixel values.
    for before, after in zip(batch, out, strict=True):
        assert torch.equal(before.flatten().sort().values, after.flatten().sort().values)
    if not (flip or rot90):
        assert torch.equal(out, batch)


@settings(max_examples=30, deadline=None)
@given(batch=batches(), seed=st.integers(0, 1000), jitter=st.floats(0.01, 0.5))
def test_jitter_stays_in_range_and_is_seeded(batch: torch.Tensor, seed: int, jitter: float) -> None:
    first = augment(batch, torch.Generator().manual_seed(seed), flip=True, rot90=True, jitter=jitter)
    again = augment(batch, torch.Generator().manual_seed(seed), flip=True, rot90=True, jitter=jitter)
    assert torch.equal(first, again)
    assert first.min() >= 0 and first.max() <= 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(TrainError, match=r"train\.device is `cuda` but no CUDA device"):
        select_device("cuda")
    assert select_device("auto") == torch.device("cpu")


def test_tiny_fold_trains_predicts_and_is_reproducible(tiny_dataset: tuple[Path, pd.DataFrame]) -> None:
    images, folds = tiny_dataset
    params = tiny_params()
    epochs_seen: list[int] = []
    result, built, classes = train_fold(images, folds, 1, params, on_epoch=lambda e, _: epochs_seen.append(e))
    assert classes == ["0", "1"]
    assert epochs_seen == [1, 2] and [row["epoch"] for row in result.history] == [1, 2]
    assert result.probabilities.shape == (4, 2)
    assert torch.allclose(result.probabilities.sum(1), torch.ones(4))
    assert result.metrics["weights"]["sha256"] == built.weights.sha256 is not None
    # Same data, params and seed on CPU: bit-identical probabilities, weights, history and metrics.
    again, _, _ = train_fold(images, folds, 1, params)
    assert torch.equal(result.probabilities, again.probabilities)
    assert result.history == again.history and result.metrics == again.metrics
    assert result.state_dict.keys() == again.state_dict.keys()
    assert all(torch.equal(result.state_dict[k], again.state_dict[k]) for k in result.state_dict)


def test_keep_best_returns_the_epoch_with_the_lowest_validation_loss(tiny_dataset: tuple[Path, pd.DataFrame]) -> None:
    images, folds = tiny_dataset
    params = tiny_params(epochs=3)
    params["train"]["keep"] = "best"
    result, _, _ = train_fold(images, folds, 0, params)
    losses = [row["val_loss"] for row in result.history]
    assert result.epoch_kept == 1 + int(np.argmin(losses))
    assert result.metrics["val_loss"] == min(losses)


def test_unknown_fold_is_a_clear_error(tiny_dataset: tuple[Path, pd.DataFrame]) -> None:
    images, folds = tiny_dataset
    with pytest.raises(TrainError, match="fold 7 has no images"):
        train_fold(images, folds, 7, tiny_params())


def test_outputs_are_complete_and_the_checkpoint_loads_safely(
    tiny_dataset: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    images, folds = tiny_dataset
    params = tiny_params(epochs=1)
    result, built, classes = train_fold(images, folds, 2, params)
    out = tmp_path / "fold_2"
    write_outputs(out, result, built, classes, folds[folds["fold"] == 2], params)
    predictions = pd.read_csv(out / "predictions.csv", dtype={"label": str, "predicted": str})
    assert list(predictions.columns) == ["file", "label", "fold", "predicted", "prob_0", "prob_1"]
    assert set(predictions["file"]) == set(folds.loc[folds["fold"] == 2, "file"])
    assert list(pd.read_csv(out / "history.csv").columns) == [
        "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["weights"]["name"].startswith("efficientnet-lite0 ImageNet")
    checkpoint = torch.load(out / "model.pt", weights_only=True)
    assert checkpoint["classes"] == ["0", "1"] and checkpoint["img_size"] == 32
    built.model.load_state_dict(checkpoint["state_dict"])


def count_backbone_images(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Batch sizes through the stem of every model train_fold builds, as they happen."""
    seen: list[int] = []
    build = train.build_model

    def counted(*args: object) -> train.Built:
        built = build(*args)
        built.model._conv_stem.register_forward_hook(lambda _m, inputs, _o: seen.append(len(inputs[0])))
        return built

    monkeypatch.setattr(train, "build_model", counted)
    return seen


def test_head_finetuning_trains_on_cached_features_and_saves_the_whole_model(
    tiny_dataset: tuple[Path, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, folds = tiny_dataset
    params = tiny_params(epochs=60, lr=0.05, finetune="head")
    seen = count_backbone_images(monkeypatch)
    result, built, classes = train_fold(images, folds, 1, params)
    # One backbone pass per training image and each of its 8 flips/turns, one per held-out image, none after.
    assert sum(seen) == 8 * 8 + 4
    pretrained = torch.load(built.weights.path, map_location="cpu", weights_only=True)
    frozen = [k for k in pretrained if not k.startswith("_fc.")]
    assert all(torch.equal(result.state_dict[k], pretrained[k]) for k in frozen)  # BN statistics included
    assert result.history[-1]["train_accuracy"] == 1.0
    assert result.history[-1]["val_loss"] < 0.5 < result.history[0]["val_loss"]

    out = tmp_path / "fold_1"
    write_outputs(out, result, built, classes, folds[folds["fold"] == 1], params)
    predictions = pd.read_csv(out / "predictions.csv")
    ensemble = load_ensemble([out / "model.pt"])
    inputs = normalise(load_images(images, list(predictions["file"])).float() / 255, ensemble.normalisation)
    with torch.inference_mode():
        probabilities = ensemble.models[0](inputs).softmax(1)
    assert torch.allclose(probabilities, torch.tensor(predictions[["prob_0", "prob_1"]].to_numpy()).float(),
                          atol=1e-5)


def test_head_finetuning_caches_only_the_variants_augmentation_can_make(
    tiny_dataset: tuple[Path, pd.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    images, folds = tiny_dataset
    params = tiny_params(epochs=1, finetune="head")
    params["train"]["augment"].update({"rot90": False, "jitter": 0.0})
    seen = count_backbone_images(monkeypatch)
    train_fold(images, folds, 1, params)
    assert sum(seen) == 8 * 4 + 4  # identity, two mirrors and the half turn


def test_views_are_the_symmetries_of_the_square() -> None:
    square = torch.arange(9.0).view(1, 1, 3, 3)

    def seen(flip: bool, rot90: bool) -> set[tuple[float, ...]]:
        return {tuple(torch.rot90(square.flip(3) if m else square, k, dims=(2, 3)).flatten().tolist())
                for m, k in train.views(flip, rot90)}

    assert len(seen(True, True)) == 8 and len(seen(True, False)) == len(seen(False, True)) == 4
    assert tuple(square.flip(2).flatten().tolist()) in seen(True, False)  # the vertical mirror
    assert seen(False, False) == {tuple(range(9))}


def test_final_model_trains_on_every_image_without_validation(
    tiny_dataset: tuple[Path, pd.DataFrame], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, folds = tiny_dataset
    params = tiny_params(epochs=2)
    params["train"]["keep"] = "best"
    result, built, classes = train_fold(images, folds, FINAL, params)
    assert "keeping the last epoch" in capsys.readouterr().out
    assert result.metrics["n_train"] == 12 and result.metrics["n_val"] == 0
    assert result.epoch_kept == 2 and result.metrics["keep"] == "last" and result.metrics["val_loss"] is None
    out = tmp_path / "final"
    paths = write_outputs(out, result, built, classes, folds[:0], params)
    assert sorted(p.name for p in paths) == sorted(p.name for p in out.iterdir()) == [
        "history.csv", "metrics.json", "model.pt"]
    history = pd.read_csv(out / "history.csv")
    assert history[["val_loss", "val_accuracy"]].isna().all().all() and history["train_loss"].notna().all()
    load_ensemble([out / "model.pt"])
