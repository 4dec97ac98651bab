"""Grad-CAM: the heatmap's peak lands on the region that decides the class, and explaining changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from burrscope.data.naming import png_names
from burrscope.inference.explain import (
    chosen_rows,
    confidence_weighted,
    ensemble_gradcam,
    explain_fold,
    explained_classes,
    gradcam,
    overlay,
    target_layer,
)
from burrscope.models import factory as models
from burrscope.models.factory import Normalisation, build_model, standardise
from burrscope.tables import HEATMAPS

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE, PATCH = 32, 6
NORMALISATION = Normalisation((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def patch_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """uint8 noise images; class 1 carries a bright chequered square at a random place (its corner returned)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 140, (n, 3, SIZE, SIZE)).astype(np.uint8)
    labels = np.arange(n) % 2
    corners = rng.integers(0, SIZE - PATCH + 1, (n, 2))
    chequer = np.where(np.add.outer(np.arange(PATCH), np.arange(PATCH)) % 2 == 0, 255, 180).astype(np.uint8)
    for i in np.flatnonzero(labels):
        y, x = corners[i]
        images[i, :, y : y + PATCH, x : x + PATCH] = chequer
    return torch.from_numpy(images), torch.from_numpy(labels), corners


def tiny_cnn() -> nn.Module:
    """Full-resolution convolutions, global average pooling, a linear head: the shape of our backbones, in small."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 2),
    )


@pytest.fixture(scope="module")
def trained(one_thread: None) -> nn.Module:
    torch.manual_seed(0)
    images, labels, _ = patch_task(256, seed=1)
    model = tiny_cnn()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    inputs = standardise(images.float() / 255, NORMALISATION)
    for step in range(40):
        batch = torch.arange(step * 32, step * 32 + 32) % len(images)
        loss = nn.functional.cross_entropy(model(inputs[batch]), labels[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.zero_grad(set_to_none=True)  # as a loaded checkpoint: no gradients anywhere
    return model.eval()


def held_out(n: int = 40) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    images, labels, corners = patch_task(n, seed=2)
    return images, standardise(images.float() / 255, NORMALISATION), labels, corners


def test_the_heatmap_peak_lands_on_the_patch_that_decides_the_class(trained: nn.Module) -> None:
    _, inputs, labels, corners = held_out()
    with torch.no_grad():
        accuracy = (trained(inputs).argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.95  # the task is learnt, so the patch is what decides the class
    positives = np.flatnonzero(labels.numpy())
    heat = gradcam(trained, inputs[positives], [1] * len(positives))
    margin = 2
    for map_, (y, x) in zip(heat, corners[positives], strict=True):
        peak_y, peak_x = divmod(int(map_.argmax()), SIZE)
        assert y - margin <= peak_y < y + PATCH + margin and x - margin <= peak_x < x + PATCH + margin


def test_maps_fit_the_input_and_explaining_leaves_the_model_as_it_was(trained: nn.Module) -> None:
    _, inputs, _, _ = held_out(6)
    requires_grad = [p.requires_grad for p in trained.parameters()]
    with torch.no_grad():
        before = trained(inputs)
    with torch.inference_mode():  # as predict calls it: gradients are still computed
        heat = gradcam(trained, inputs, [1] * 6)
    with torch.no_grad():
        after = trained(inputs)
    assert heat.shape == (6, SIZE, SIZE)
    assert heat.amin().item() >= 0 and heat.amax().item() <= 1
    # Each map is scaled on its own: a patch image peaks at 1, a noise image has no burr evidence and stays 0.
    assert heat.flatten(1).amax(1).tolist() == [0, 1, 0, 1, 0, 1]
    assert torch.equal(before, after)
    assert all(not m._forward_hooks and not m._backward_hooks for m in trained.modules())
    assert [p.requires_grad for p in trained.parameters()] == requires_grad
    assert all(p.grad is None for p in trained.parameters())
    assert not trained.training


def test_a_frozen_model_is_explained_all_the_same(trained: nn.Module) -> None:
    _, inputs, _, _ = held_out(4)
    expected = gradcam(trained, inputs, [1] * 4)
    try:
        trained.requires_grad_(False)  # as with `finetune: head`: no parameter needs a gradient
        torch.testing.assert_close(gradcam(trained, inputs, [1] * 4), expected)
        assert not any(p.requires_grad for p in trained.parameters())
    finally:
        trained.requires_grad_(True)


def test_ensemble_map_is_the_mean_of_the_models_maps(trained: nn.Module) -> None:
    _, inputs, _, _ = held_out(4)
    torch.manual_seed(1)
    other = tiny_cnn().eval()
    both = ensemble_gradcam([trained, other], inputs, [1] * 4)
    expected = (gradcam(trained, inputs, [1] * 4) + gradcam(other, inputs, [1] * 4)) / 2
    torch.testing.assert_close(both, expected)


def mobilenet_v2() -> nn.Module:
    if "mobilenet_v2" in models.ARCHITECTURES:
        return build_model("mobilenet_v2", 2, False, 64).model
    return torchvision.models.mobilenet_v2(weights=None, num_classes=2)


@pytest.mark.parametrize(
    ("build", "layer"),
    [
        (lambda: build_model("efficientnet_lite0", 2, False, 64).model, "_bn1"),
        (lambda: build_model("resnet18", 2, False, 64).model, "layer4"),
        (mobilenet_v2, "features"),
    ],
)
def test_target_layer_is_the_last_feature_map_of_each_backbone(build: Callable[[], nn.Module], layer: str) -> None:
    model = build().eval()
    assert target_layer(model) is getattr(model, layer)
    heat = gradcam(model, torch.randn(2, 3, 64, 64), [1, 1])
    assert heat.shape == (2, 64, 64) and heat.min() >= 0 and heat.max() <= 1


def test_a_model_of_another_kind_falls_back_to_its_last_convolution() -> None:
    model = tiny_cnn()
    assert target_layer(model) is model[4]
    with pytest.raises(ValueError, match="no Conv2d"):
        target_layer(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)))


def test_explained_class_is_the_positive_one_for_two_classes_else_the_predicted_one() -> None:
    assert explained_classes(["0", "1", "0"], ["0", "1"]) == ["1", "1", "1"]
    assert explained_classes(["b", "c"], ["a", "b", "c"]) == ["b", "c"]


def test_overlay_keeps_the_photo_where_there_is_no_heat() -> None:
    image = np.random.default_rng(0).integers(0, 256, (8, 10, 3)).astype(np.uint8)
    heat = np.zeros((8, 10))
    heat[2, 3] = 1
    result = np.asarray(overlay(image, heat))
    changed = np.argwhere((result != image).any(2))
    assert result.shape == image.shape and changed.tolist() == [[2, 3]]
    with pytest.raises(ValueError, match="does not fit"):
        overlay(image, np.zeros((10, 8)))


def test_overlay_png_names_are_unique_even_for_one_stem_in_two_folders() -> None:
    # The normalise stage's names: safe ASCII stems; in sorted order the first keeps the stem, later ones get _2, _3.
    assert png_names(["a/part.png", "b/part.png", "b/part.jpg", "c/X 1.tif"]) == [
        "part.png",
        "part_3.png",
        "part_2.png",
        "x_1.png",
    ]


def fold_table(labels: torch.Tensor, predicted: list[int]) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "file": [f"img_{i}.png" for i in range(len(labels))],
            "label": [str(v) for v in labels.tolist()],
            "fold": 0,
            "predicted": [str(v) for v in predicted],
        }
    )
    table["prob_1"] = [0.9 if p else 0.1 for p in predicted]
    table["prob_0"] = 1 - table["prob_1"]
    return table


def test_explain_fold_writes_every_misclassified_image_and_some_correct_ones(
    trained: nn.Module, tmp_path: Path
) -> None:
    images, _, labels, _ = held_out(12)
    predicted = labels.tolist()
    wrong = [1, 4, 9]
    for i in wrong:
        predicted[i] = 1 - predicted[i]
    table = fold_table(labels, predicted)
    out = tmp_path / "heatmaps"
    out.mkdir()
    (out / "stale.png").write_bytes(b"from an earlier run")
    result = explain_fold(trained, images, NORMALISATION, table, classes=["0", "1"], correct=4, out_dir=out)

    assert set(wrong) <= {int(f[4:-4]) for f in result["file"]}
    assert len(result) == len(wrong) + 4 and result["correct"].sum() == 4
    assert list(result.columns) == ["file", "label", "predicted", "prob_0", "prob_1", "explained", "correct", "heatmap"]
    assert (result["explained"] == "1").all()  # two classes: where the network looks for burrs
    written = pd.read_csv(out / HEATMAPS, dtype={"label": str, "predicted": str, "explained": str})
    pd.testing.assert_frame_equal(written, result)
    assert sorted(p.name for p in out.iterdir()) == sorted([*result["heatmap"], HEATMAPS])
    for name in result["heatmap"]:
        with Image.open(out / name) as png:
            assert png.size == (SIZE, SIZE) and png.mode == "RGB"
    assert not list(tmp_path.glob(".*.tmp"))
    again = explain_fold(
        trained, images, NORMALISATION, table, classes=["0", "1"], correct=4, out_dir=tmp_path / "again"
    )
    assert list(again["file"]) == list(result["file"])


def test_a_confident_negative_gets_a_faint_overlay_where_its_own_peak_would_be_saturated(
    trained: nn.Module, tmp_path: Path
) -> None:
    images, inputs, labels, _ = held_out(4)
    burr = int(np.flatnonzero(labels.numpy())[0])  # an image whose own-peak map has a saturated hot spot
    assert gradcam(trained, inputs[burr : burr + 1], [1]).amax().item() == 1
    table = fold_table(labels[burr : burr + 1], [0])
    # As if the model were sure there is no burr ("sure"), then the same map backed by a confident burr call.
    for out, probabilities in (("sure", [0.998, 0.002]), ("burr", [0.02, 0.98])):
        table[["prob_0", "prob_1"]] = [probabilities]
        explain_fold(
            trained,
            images[burr : burr + 1],
            NORMALISATION,
            table,
            classes=["0", "1"],
            correct=0,
            out_dir=tmp_path / out,
        )
    photo = images[burr].permute(1, 2, 0).numpy().astype(int)
    with Image.open(tmp_path / "sure" / "img_0.png") as faint, Image.open(tmp_path / "burr" / "img_0.png") as hot:
        faint_change, hot_change = (np.abs(np.asarray(png, int) - photo).max() for png in (faint, hot))
    assert faint_change <= 1 and hot_change > 60  # at most rounding where the model saw no burr


def test_weighting_by_confidence_keeps_each_maps_peak_where_it_was() -> None:
    heat = np.random.default_rng(0).random((3, 5, 6)).astype(np.float32)
    weighted = confidence_weighted(heat, np.array([0.002, 0.5, 1.0]))
    assert weighted.dtype == heat.dtype and weighted.shape == heat.shape
    assert weighted.reshape(3, -1).argmax(1).tolist() == heat.reshape(3, -1).argmax(1).tolist()
    np.testing.assert_allclose(weighted.reshape(3, -1).max(1), heat.reshape(3, -1).max(1) * [0.002, 0.5, 1.0])


def test_a_run_killed_midway_leaves_the_previous_folder_whole(
    trained: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, _, labels, _ = held_out(4)
    table = fold_table(labels, [1, 1, 0, 0])
    out = tmp_path / "heatmaps"
    explain_fold(trained, images, NORMALISATION, table, classes=["0", "1"], correct=2, out_dir=out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = []

    def dies_on_the_second_image(image: np.ndarray, heat: np.ndarray) -> Image.Image:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return overlay(image, heat)

    monkeypatch.setattr("burrscope.inference.explain.overlay", dies_on_the_second_image)
    with pytest.raises(KeyboardInterrupt):
        explain_fold(trained, images, NORMALISATION, table, classes=["0", "1"], correct=2, out_dir=out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["heatmaps"]
    with pytest.raises(ValueError, match="3 rows but 4 images"):
        explain_fold(trained, images, NORMALISATION, table.iloc[:3], classes=["0", "1"], correct=2, out_dir=out)


def test_the_correct_images_shown_are_burrs_first_then_those_the_model_nearly_got_wrong() -> None:
    """Cards on burrs (their heatmaps show something) and on the lowest margins, not on confident good parts."""
    table = pd.DataFrame(
        {
            "file": [f"{name}.png" for name in ("sure_ok", "wrong", "doubtful_ok", "sure_burr", "doubtful_burr")],
            "label": ["0", "0", "0", "1", "1"],
            "predicted": ["0", "1", "0", "1", "1"],
            "prob_1": [0.02, 0.7, 0.45, 0.97, 0.6],
        }
    ).assign(prob_0=lambda t: 1 - t["prob_1"])
    assert chosen_rows(table, 1, ["0", "1"]) == [1, 4]  # the mistake, then the burr nearest the threshold
    assert chosen_rows(table, 3, ["0", "1"]) == [1, 2, 3, 4]  # both burrs, then the doubtful good part
    assert chosen_rows(table, 9, ["0", "1"]) == [0, 1, 2, 3, 4]
