"""The symmetries of the square that augmentation draws from, and that cached features and TTA enumerate."""

from __future__ import annotations

from collections.abc import Callable

import torch

View = tuple[bool, int]  # (mirrored left-right, quarter turns counter-clockwise)


def views(flip: bool, rot90: bool) -> list[View]:
    """The (mirror, quarter turns) variants that flip/rot90 augmentation produces, each equally likely.

    Random horizontal and vertical flips give the identity, the two mirrors and their product, a half turn;
    with random quarter turns on top, all 8 symmetries of the square.
    """
    if flip and rot90:
        return [(mirror, turns) for mirror in (False, True) for turns in range(4)]
    if flip:
        return [(False, 0), (True, 0), (True, 2), (False, 2)]
    if rot90:
        return [(False, turns) for turns in range(4)]
    return [(False, 0)]


def apply_view(batch: torch.Tensor, view: View) -> torch.Tensor:
    """`batch` (N x C x H x W) mirrored left-right if asked, then turned by the view's quarter turns."""
    mirror, turns = view
    return torch.rot90(batch.flip(3) if mirror else batch, turns, dims=(2, 3))


IDENTITY: View = (False, 0)


def tta_views(tta: bool) -> list[View]:
    """The views a model's predictions are averaged over: all 8 symmetries of the square with test-time
    augmentation, else the image as it is."""
    return views(True, True) if tta else [IDENTITY]


def mean_softmax(
    model: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, variants: list[View]
) -> torch.Tensor:
    """N x C: `model`'s softmax probabilities of N x 3 x S x S `inputs`, averaged over `variants` of each.

    One forward pass over all variants stacked along the batch: fewer, larger kernel calls, and an exported graph
    (inference/export.py) one model long instead of one per variant, which exports several times faster.
    """
    stacked = torch.cat([apply_view(inputs, view) for view in variants])
    return model(stacked).float().softmax(1).unflatten(0, (len(variants), -1)).mean(0)
