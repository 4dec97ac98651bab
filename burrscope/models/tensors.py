"""Processed model inputs (the resize stage's PNGs) as one uint8 tensor, for training and inference alike."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from burrscope.errors import DataError


def load_images(images_dir: Path, files: Sequence[str]) -> torch.Tensor:
    """The images as one uint8 N x 3 x S x S tensor, decoded once rather than every epoch."""
    arrays = []
    for name in files:
        path = Path(images_dir) / name
        if not path.is_file():
            raise DataError(f"{path} is listed in the folds CSV but missing; rerun the resize stage.")
        with Image.open(path) as img:
            arrays.append(np.asarray(img.convert("RGB")))
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise DataError(f"{images_dir} holds images of several sizes {sorted(sizes)}; rerun the resize stage.")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
