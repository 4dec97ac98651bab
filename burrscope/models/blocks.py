"""A backbone's forward pass as consecutive blocks, so that it can be cut into a frozen trunk and a trainable tail.

`network_blocks(model)` lists, for each architecture models.py builds, the stem, every block, and the head
(pooling and classifier) as modules sharing the model's own parameters. Run one after another they compute
exactly `model(x)`, in train mode too (EfficientNet's drop-connect rates are those of its own forward).
`finetune: partial` trains the last `train.trainable_blocks` blocks and the head on the trunk's cached outputs.
"""

from __future__ import annotations

import torch
from torch import nn

from burrscope.errors import UserError


class Chain(nn.Module):
    """Modules applied one after another: a slice of a network's blocks."""

    def __init__(self, steps: list[nn.Module]) -> None:
        super().__init__()
        self.steps = nn.ModuleList(steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            x = step(x)
        return x


class _DropConnectBlock(nn.Module):
    """An EfficientNet MBConv block with the drop-connect rate its network's forward gives it (by position)."""

    def __init__(self, block: nn.Module, rate: float) -> None:
        super().__init__()
        self.block, self.rate = block, rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, drop_connect_rate=self.rate)


class _Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), -1)


def _efficientnet(net: nn.Module) -> list[nn.Module]:
    rate, count = net._global_params.drop_connect_rate, len(net._blocks)
    stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
    blocks = [_DropConnectBlock(block, rate * i / count if rate else rate) for i, block in enumerate(net._blocks)]
    head = nn.Sequential(net._conv_head, net._bn1, net._swish, net._avg_pooling, _Flatten(), net._dropout, net._fc)
    return [stem, *blocks, head]


def _resnet(net: nn.Module) -> list[nn.Module]:
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    return [stem, net.layer1, net.layer2, net.layer3, net.layer4, nn.Sequential(net.avgpool, _Flatten(), net.fc)]


def _mobilenet_v2(net: nn.Module) -> list[nn.Module]:
    head = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), _Flatten(), net.classifier)
    return [*net.features, head]


LAYOUTS = {"EfficientNet": _efficientnet, "ResNet": _resnet, "MobileNetV2": _mobilenet_v2}


def network_blocks(model: nn.Module) -> list[nn.Module]:
    """[stem, block, ..., block, head] of `model`, sharing its parameters; a UserError for unknown architectures."""
    layout = LAYOUTS.get(type(model).__name__)
    if layout is None:
        raise UserError(
            f"finetune: partial does not know how to cut {type(model).__name__} into blocks; use "
            "finetune: full or head, or one of the models efficientnet_lite0, mobilenet_v2, resnet18/34."
        )
    return layout(model)


def split(model: nn.Module, trainable_blocks: int) -> tuple[Chain, Chain]:
    """(trunk, tail): the stem and all blocks but the last `trainable_blocks`, and those blocks with the head."""
    blocks = network_blocks(model)
    inner = len(blocks) - 2  # neither stem nor head
    if not 0 <= trainable_blocks <= inner:
        raise UserError(
            f"train.trainable_blocks is {trainable_blocks}, but {type(model).__name__} has {inner} blocks "
            f"between its stem and its head: choose 0 to {inner}."
        )
    cut = len(blocks) - 1 - trainable_blocks
    return Chain(blocks[:cut]), Chain(blocks[cut:])
