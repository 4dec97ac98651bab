"""Augmentation of whole batches of float images: random flips, quarter turns and brightness/contrast jitter."""

from __future__ import annotations

import torch

from burrscope.params import Augment


def augment(batch: torch.Tensor, generator: torch.Generator, settings: Augment) -> torch.Tensor:
    """Random flips, 90-degree turns and brightness/contrast jitter of float images in [0, 1].

    Square inputs keep their shape under every turn, so no pixel is ever cropped. The random draws come
    from a CPU generator, so the same seed gives the same augmentation on any device; they reach the GPU
    asynchronously, and no step reads a value back, so augmenting never waits for the GPU.
    """
    n = batch.shape[0]

    def draw(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator).to(batch.device, non_blocking=True)

    if settings.flip:
        batch = torch.where((draw(n) < 0.5).view(n, 1, 1, 1), batch.flip(3), batch)
        batch = torch.where((draw(n) < 0.5).view(n, 1, 1, 1), batch.flip(2), batch)
    if settings.rot90:
        turns = torch.randint(0, 4, (n,), generator=generator).to(batch.device, non_blocking=True).view(n, 1, 1, 1)
        turned = batch
        for k in (1, 2, 3):
            turned = torch.where(turns == k, torch.rot90(batch, k, dims=(2, 3)), turned)
        batch = turned.contiguous()  # torch.where keeps rot90's transposed strides: other conv kernels, other rounding
    if settings.jitter > 0:
        brightness = 1 + (draw(n) * 2 - 1) * settings.jitter
        contrast = 1 + (draw(n) * 2 - 1) * settings.jitter
        mean = batch.mean(dim=(1, 2, 3), keepdim=True)
        batch = ((batch - mean) * contrast.view(n, 1, 1, 1) + mean) * brightness.view(n, 1, 1, 1)
        batch = batch.clamp(0, 1)
    return batch
