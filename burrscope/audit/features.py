"""What the frozen ImageNet backbone makes of each photo: its pooled features, the input of the classifier layer.

They come through the workspace's frozen-feature cache (burrscope.training.features), so a rerun of the audit
with other audit params loads them instead of running the backbone again. They are computed on the CPU with the
training's CPU numerics (train.cpu_threads), for the photo as it is (no flips or turns), so the same photos give
the same features, and the same findings, on any machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from burrscope.models.device import Runtime, pin_cpu_numerics
from burrscope.models.factory import build_model
from burrscope.models.symmetries import IDENTITY
from burrscope.models.tensors import load_images
from burrscope.params import Recipe
from burrscope.training.features import frozen_features
from burrscope.training.strategies import PooledFeatures


def pooled_features(images_dir: Path, files: Sequence[str], recipe: Recipe, classes: int) -> np.ndarray:
    """N x F float32 pooled features of the model inputs `files` in `images_dir`, in that order.

    The backbone is `recipe.model` with the weights `recipe.pretrained` says; `classes` sizes its classifier
    layer, which the features stop short of.
    """
    pin_cpu_numerics(recipe.cpu_threads)  # before any torch work: the libraries read it at their first operation
    torch.manual_seed(recipe.seed)  # pretrained: false draws the backbone's weights
    runtime = Runtime.of(torch.device("cpu"), recipe.amp, recipe.channels_last)
    built = build_model(recipe.model, classes, pretrained=recipe.pretrained, img_size=recipe.img_size)
    runtime.prepare(built.model)
    images = load_images(images_dir, list(files))
    features = frozen_features(
        PooledFeatures(built.model, built.head), images, built.normalisation, [IDENTITY], runtime=runtime
    )
    return features[0].float().cpu().numpy()
