"""What a frozen part of the network makes of every image under every view, computed once and cached on disk.

`partial`, `head` and `probe` train on the outputs of a frozen part (the trunk, or the whole backbone up to its
pooled features). That part, its weights and the images are the same in every fold, in the final model and in
every experiment that changes only what trains after it, so the first process to need them computes them for
all the fold table's images and the others load them. The cache key hashes everything the outputs depend on:
the images, the frozen part's weights and code, the views, the device, precision and CPU numerics, torch's
version. Entries are written whole (atomically) under a file lock, so folds running side by side compute them
once, and sealed with their digest: an entry truncated or corrupted on disk is named in a warning and computed
again, never used. They live in <workspace>/.burrscope-cache/ (or $BURRSCOPE_CACHE); deleting it costs only time.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from filelock import FileLock
from torch import nn

from burrscope.console import warn
from burrscope.files import CorruptFile, workspace_root
from burrscope.models.device import Runtime
from burrscope.models.factory import Normalisation
from burrscope.models.symmetries import View, apply_view
from burrscope.training.resume import load_sealed, save_sealed, training_code_digest

CACHE_ENV = "BURRSCOPE_CACHE"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or workspace_root() / ".burrscope-cache") / "features"


@torch.inference_mode()
def compute(
    frozen: nn.Module, images: torch.Tensor, normalisation: Normalisation, variants: Sequence[View], *, runtime: Runtime
) -> torch.Tensor:
    """V x N x ...: `frozen` on the model inputs of uint8 `images` under each variant, in the runtime's batches."""
    frozen.eval()
    batch = runtime.eval_batch
    with runtime.autocast():
        return torch.stack(
            [
                torch.cat(
                    [
                        frozen(runtime.inputs(apply_view(runtime.unit(images[i : i + batch]), view), normalisation))
                        for i in range(0, len(images), batch)
                    ]
                )
                for view in variants
            ]
        )


def cache_key(frozen: nn.Module, images: torch.Tensor, variants: Sequence[View], runtime: Runtime) -> str:
    digest = hashlib.sha256(training_code_digest().encode())
    settings = {
        "variants": [list(v) for v in variants],
        "device": runtime.device.type,
        "amp": str(runtime.amp_dtype),
        "channels_last": runtime.channels_last,
        "torch": torch.__version__,
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for name, tensor in sorted(frozen.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    digest.update(images.contiguous().cpu().numpy().data)
    return digest.hexdigest()


def frozen_features(
    frozen: nn.Module, images: torch.Tensor, normalisation: Normalisation, variants: Sequence[View], *, runtime: Runtime
) -> torch.Tensor:
    """compute()'s result for these images, from the cache when another process made it, on the runtime's device."""
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{cache_key(frozen, images, variants, runtime)}.pt"
    with FileLock(f"{path}.lock"):
        if path.is_file():
            try:
                return load_sealed(path, runtime.device)
            except CorruptFile as err:
                warn(f"ignoring the feature cache entry {err}; computing the frozen features again")
            except Exception as err:  # a cache entry is only a shortcut: recompute rather than fail
                warn(
                    f"ignoring the feature cache entry {path}: it cannot be read ({type(err).__name__}); computing "
                    "the frozen features again"
                )
        features = compute(frozen, images, normalisation, variants, runtime=runtime)
        save_sealed(features.cpu(), path)
        return features
