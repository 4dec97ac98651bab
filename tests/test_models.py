"""The model factory: real pretrained weights, recorded; clear errors when they cannot be had."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from stages import models
from stages.files import sha256_file
from stages.models import RANDOM_INIT, WeightsUnavailable, build_model


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
    with pytest.raises(models.UserError, match="unknown model 'vgg99'; choose one of"):
        build_model("vgg99", num_classes=2, pretrained=True, img_size=64)
