"""The fine-tuning strategies beyond `full`: partial on a frozen trunk, the linear probe, test-time augmentation,
class weights and the frozen-feature cache they share."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from conftest import Notch
from faultkit.storage import flip_a_tensor_byte  # benchmarks/ is on the path (pyproject.toml)
from sklearn.linear_model import LogisticRegression

from burrscope.errors import UserError
from burrscope.inference.ensemble import load_ensemble
from burrscope.models.blocks import Chain, network_blocks, split
from burrscope.models.device import Runtime
from burrscope.models.factory import build_model
from burrscope.models.symmetries import apply_view, mean_softmax, tta_views, views
from burrscope.params import Params, ParamsError, validate_params
from burrscope.training import features, probe
from burrscope.training.fold import train_fold
from burrscope.training.loop import balanced_weights, image_logits
from burrscope.training.outputs import write_fold_outputs
from burrscope.training.resume import load_sealed
from burrscope.training.strategies import PooledFeatures

pytestmark = pytest.mark.usefixtures("one_thread")
NETWORKS = {
    "efficientnet_lite0": lambda: build_model("efficientnet_lite0", 2, False, 64).model,
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(weights=None, num_classes=2),
    "resnet18": lambda: torchvision.models.resnet18(weights=None, num_classes=2),
}


@pytest.mark.parametrize("name", NETWORKS)
def test_every_cut_of_a_backbone_computes_the_whole_network(name: str) -> None:
    torch.manual_seed(0)
    model = NETWORKS[name]().eval()
    x = torch.rand(2, 3, 64, 64)
    inner = len(network_blocks(model)) - 2
    with torch.no_grad():
        whole = model(x)
        assert torch.equal(Chain(network_blocks(model))(x), whole)
        for trainable in (0, 1, inner // 2, inner):
            trunk, tail = split(model, trainable)
            assert torch.equal(tail(trunk(x)), whole), trainable


def test_more_trainable_blocks_than_the_backbone_has_is_a_clear_error() -> None:
    with pytest.raises(UserError, match=r"train.trainable_blocks is 99, but ResNet has 4 blocks .* choose 0 to 4"):
        split(NETWORKS["resnet18"](), 99)


def held_out_probabilities(model: torch.nn.Module, images: torch.Tensor, normalisation: object) -> torch.Tensor:
    logits = image_logits(model.eval(), images, normalisation, Runtime(torch.device("cpu")))
    return logits.softmax(1)


def test_a_partial_fold_is_the_whole_network_it_saves(
    notch: Notch, tiny_params: Callable[..., Params], tmp_path: Path
) -> None:
    """The held-out predictions made from cached trunk features are those of the saved network on the images."""
    recipe = tiny_params(finetune="partial", train={"tta": False, "trainable_blocks": 4}).recipe
    result = train_fold(notch.images, notch.folds, 0, recipe)
    write_fold_outputs(tmp_path, result, recipe)
    model = load_ensemble([tmp_path / "model.pt"]).models[0]
    got = held_out_probabilities(model, result.data.val_x, result.built.normalisation)
    torch.testing.assert_close(got, result.probabilities, rtol=0, atol=1e-6)
    pretrained = build_model(recipe.model, 2, True, recipe.img_size).model
    trunk_saved, trunk_pretrained = split(model, 4)[0], split(pretrained, 4)[0]
    for (name, saved), (_, before) in zip(
        trunk_saved.state_dict().items(), trunk_pretrained.state_dict().items(), strict=True
    ):
        assert torch.equal(saved, before), name  # the frozen trunk, batch-norm statistics included, never moved


def test_test_time_augmentation_averages_exactly_the_eight_symmetries_of_the_square() -> None:
    image = torch.arange(3 * 4 * 4, dtype=torch.float32).view(1, 3, 4, 4)
    variants = tta_views(True)
    assert variants[0] == (False, 0) and tta_views(False) == [(False, 0)]
    assert len({apply_view(image, v).numpy().tobytes() for v in variants}) == 8
    explicit = [image, image.rot90(1, (2, 3)), image.rot90(2, (2, 3)), image.rot90(3, (2, 3))]
    explicit += [x.flip(3) for x in explicit]
    assert {x.numpy().tobytes() for x in explicit} == {apply_view(image, v).numpy().tobytes() for v in variants}
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2))
    expected = torch.stack([model(x).softmax(1) for x in explicit]).mean(0)
    torch.testing.assert_close(mean_softmax(model, image, variants), expected)
    assert views(True, False) == [(False, 0), (True, 0), (True, 2), (False, 2)]


def test_balanced_class_weights_make_every_class_weigh_the_same() -> None:
    weights = balanced_weights(torch.tensor([0, 0, 0, 1]), 2)
    torch.testing.assert_close(weights, torch.tensor([4 / 6, 4 / 2]))
    counts = torch.tensor([3.0, 1.0])
    assert torch.allclose(weights * counts, torch.full((2,), 2.0))


def test_frozen_features_are_computed_once_then_loaded_and_a_corrupt_entry_never_trusted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(features.CACHE_ENV, str(tmp_path))
    calls = []
    real = features.compute
    monkeypatch.setattr(features, "compute", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    torch.manual_seed(0)
    trunk = split(NETWORKS["resnet18"]().eval(), 2)[0]
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    normalisation = build_model("resnet18", 2, False, 32).normalisation
    runtime = Runtime(torch.device("cpu"))
    first = features.frozen_features(trunk, images, normalisation, tta_views(True), runtime=runtime)
    again = features.frozen_features(trunk, images, normalisation, tta_views(True), runtime=runtime)
    assert len(calls) == 1 and torch.equal(first, again) and first.shape[:2] == (8, 3)
    features.frozen_features(trunk, images.flip(0), normalisation, tta_views(True), runtime=runtime)
    features.frozen_features(trunk, images, normalisation, tta_views(False), runtime=runtime)
    assert len(calls) == 3  # other images, other views: other entries
    (entry,) = [p for p in (tmp_path / "features").glob("*.pt") if torch.equal(load_sealed(p, "cpu"), first)]
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])  # truncated
    assert torch.equal(features.frozen_features(trunk, images, normalisation, tta_views(True), runtime=runtime), first)
    assert len(calls) == 4  # a broken entry is recomputed, never trusted
    flip_a_tensor_byte(entry)  # corrupted: still a torch file that loads
    capsys.readouterr()
    assert torch.equal(features.frozen_features(trunk, images, normalisation, tta_views(True), runtime=runtime), first)
    assert len(calls) == 5
    warned = f"warning: ignoring the feature cache entry {entry}: its bytes do not match the sha256 written with them"
    assert warned in capsys.readouterr().err
    assert torch.equal(load_sealed(entry, "cpu"), first)  # and replaced


def test_folds_whose_heads_differ_share_one_pooled_feature_entry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Each fold initialises its head anew; `head` and `probe` folds must still find the first fold's features."""
    monkeypatch.setenv(features.CACHE_ENV, str(tmp_path))
    calls = []
    real = features.compute
    monkeypatch.setattr(features, "compute", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    built = build_model("resnet18", 2, False, 32)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    runtime = Runtime(torch.device("cpu"))
    pooled = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        built.model.fc.reset_parameters()
        frozen = PooledFeatures(built.model.eval(), built.head)
        pooled.append(features.frozen_features(frozen, images, built.normalisation, tta_views(False), runtime=runtime))
    assert len(calls) == 1 and torch.equal(pooled[0], pooled[1])
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(built.model.fc(PooledFeatures(built.model, built.head)(x)), built.model(x))


def probe_weights(notch: Notch, recipe: object, folds: pd.DataFrame) -> tuple[np.ndarray, float]:
    result = train_fold(notch.images, folds, 0, recipe)
    head = result.built.model.get_submodule(result.built.head)
    return head.weight.detach().numpy().copy(), result.history[0]["train_loss"]


def test_the_probe_never_sees_the_held_out_fold(
    notch: Notch, tiny_params: Callable[..., Params], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relabelling the held-out images changes nothing the probe fits; a probe that leaked them would change."""
    recipe = tiny_params(finetune="probe").recipe
    relabelled = notch.folds.assign(
        label=np.where(notch.folds["fold"] == 0, 1 - notch.folds["label"].astype(int), notch.folds["label"])
    )
    relabelled["label"] = relabelled["label"].astype(str)
    honest = probe_weights(notch, recipe, notch.folds)
    np.testing.assert_array_equal(probe_weights(notch, recipe, relabelled)[0], honest[0])

    fit = probe.LinearProbe.fit

    def leaky(self: probe.LinearProbe) -> dict[str, float]:  # trains on the held-out images too
        self.train_features = torch.cat([self.train_features, self.val_features], dim=1)
        self.data = dataclasses.replace(self.data, train_y=torch.cat([self.data.train_y, self.data.val_y]))
        return fit(self)

    monkeypatch.setattr(probe.LinearProbe, "fit", leaky)
    assert not np.array_equal(probe_weights(notch, recipe, relabelled)[0], probe_weights(notch, recipe, notch.folds)[0])


def test_the_probe_layer_computes_the_fitted_regression() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 10)
    feats = rng.normal(size=(2, 20, 5)) + labels[None, :, None]
    weight, bias, c = probe.fit_probe(feats, labels, 2, seed=0)
    rows = feats.reshape(40, 5)
    mean, std = rows.mean(0), rows.std(0) + 1e-6
    reference = LogisticRegression(C=c, max_iter=probe.MAX_ITER).fit((rows - mean) / std, np.tile(labels, 2))
    logits = rows @ weight.T + bias
    ours = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    # The same regression to the solver's tolerance: the standardisation is folded into the layer's weights.
    np.testing.assert_allclose(ours, reference.predict_proba((rows - mean) / std), atol=1e-3)
    assert c in probe.CS
    in_parallel = probe.fit_probe(feats, labels, 2, seed=0, jobs=2)
    assert np.array_equal(in_parallel[0], weight) and in_parallel[2] == c  # inner folds side by side: same fit


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"finetune": "some"}, "finetune: 'some' is not one of"),
        ({"train": {"class_weights": "inverse"}}, "train.class_weights: 'inverse' is not one of"),
        ({"train": {"trainable_blocks": -1}}, "train.trainable_blocks: -1 is less than the minimum of 0"),
        ({"train": {"tta": "yes"}}, "train.tta: 'yes' is not of type 'boolean'"),
    ],
)
def test_new_params_are_validated_with_the_key_named(
    tiny_params: Callable[..., Params], change: dict, message: str
) -> None:
    raw = dict(tiny_params().raw)
    for key, value in change.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    with pytest.raises(ParamsError, match=message):
        validate_params(raw)
