"""How a fold's network meets its examples: which layers train, and how batch indices become logits.

`full` runs augmented images through the whole network. `partial` freezes the trunk (stem and early blocks,
batch-norm statistics included), runs it once per image and flip/turn variant, and trains the last blocks and
the head on the feature maps it cached: in eval mode that is exactly the whole network, at a fraction of the
cost per epoch. `head` does the same with the classifier alone, on pooled features. Brightness/contrast
jitter cannot reach cached features, so it applies to `full` only.

Every strategy's `validation_logits` gives V x N x C logits of the held-out images, one slice per view
(train.tta: the 8 flips and quarter turns, the image as it is first; else that one), or of the first view only.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from burrscope.models.blocks import split
from burrscope.models.device import Runtime
from burrscope.models.factory import Built
from burrscope.models.symmetries import View, apply_view, tta_views, views
from burrscope.params import Recipe
from burrscope.training.augment import augment
from burrscope.training.features import frozen_features
from burrscope.training.fold_data import FoldData, all_images
from burrscope.training.loop import image_logits


class FullFineTune:
    """Every layer trains, on augmented images."""

    def __init__(self, built: Built, data: FoldData, recipe: Recipe, runtime: Runtime) -> None:
        self.model, self.normalisation = built.model, built.normalisation
        self.data, self.recipe, self.runtime = data, recipe, runtime
        self.runner = torch.compile(self.model) if recipe.compile else self.model
        self.val_views = tta_views(recipe.tta)

    def start_epoch(self, generator: torch.Generator) -> None:
        self.model.train()

    def train_logits(self, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        images = augment(self.runtime.unit(self.data.train_x[idx]), generator, self.recipe.augment)
        return self.runner(self.runtime.inputs(images, self.normalisation))

    def validation_logits(self, average: nn.Module | None, every_view: bool = True) -> torch.Tensor:
        model = self.runner if average is None else average
        return torch.stack(
            [
                image_logits(model, apply_view(self.data.val_x, view), self.normalisation, self.runtime)
                for view in (self.val_views if every_view else self.val_views[:1])
            ]
        )


def cached_features(
    frozen: nn.Module, built: Built, data: FoldData, train_views: list[View], *, val_views: list[View], runtime: Runtime
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(V x N_train x ..., V' x N_val x ... or None): `frozen`'s outputs for the fold's training images under
    `train_views` and its held-out images under `val_views`, from the features of every image (features.py)."""
    variants = list(dict.fromkeys([*train_views, *val_views]))
    images, train_at, val_at = all_images(data)
    features = frozen_features(frozen, images, built.normalisation, variants, runtime=runtime)

    def pick(wanted: list[View], at: torch.Tensor) -> torch.Tensor:
        return features[[variants.index(view) for view in wanted]][:, at.to(features.device)]

    return pick(train_views, train_at), None if data.val_x is None else pick(val_views, val_at)


class _CachedFeatures:
    """Shared by `partial` and `head`: a frozen part runs once per image and view; `tail` trains on its output.

    Each epoch draws one view per training image, uniformly, as random flips and turns would.
    """

    def __init__(
        self,
        frozen: nn.Module,
        tail_of: Callable[[nn.Module], nn.Module],
        built: Built,
        data: FoldData,
        *,
        recipe: Recipe,
        runtime: Runtime,
    ) -> None:
        # tail_of(model): the trainable part of `model`, or of its weight average, sharing that model's parameters.
        self.model, self.frozen, self.tail, self.tail_of = built.model, frozen, tail_of(built.model), tail_of
        self.model.requires_grad_(False)
        self.tail.requires_grad_(True)
        self.variants = views(recipe.augment.flip, recipe.augment.rot90)
        self.train_features, self.val_features = cached_features(
            frozen, built, data, self.variants, val_views=tta_views(recipe.tta), runtime=runtime
        )
        self.store, self.batch = data.train_x.device, runtime.eval_batch
        self.variant = torch.empty(0, dtype=torch.int64)

    def start_epoch(self, generator: torch.Generator) -> None:
        self.frozen.eval()  # its batch-norm statistics stay those its cached features were computed with
        self.tail.train()
        self.variant = torch.randint(0, len(self.variants), (self.train_features.shape[1],), generator=generator).to(
            self.store
        )

    def train_logits(self, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.tail(self.train_features[self.variant[idx], idx])

    @torch.inference_mode()
    def validation_logits(self, average: nn.Module | None, every_view: bool = True) -> torch.Tensor:
        tail = self.tail if average is None else self.tail_of(average)
        tail.eval()
        return torch.stack(
            [
                torch.cat([tail(features[i : i + self.batch]) for i in range(0, len(features), self.batch)])
                for features in (self.val_features if every_view else self.val_features[:1])
            ]
        )


class PartialFineTune(_CachedFeatures):
    """The last `train.trainable_blocks` blocks and the head train, on the frozen trunk's cached feature maps."""

    def __init__(self, built: Built, data: FoldData, recipe: Recipe, runtime: Runtime) -> None:
        trunk, _ = split(built.model, recipe.trainable_blocks)
        super().__init__(
            trunk, lambda model: split(model, recipe.trainable_blocks)[1], built, data, recipe=recipe, runtime=runtime
        )


class PooledFeatures(nn.Module):
    """The backbone up to the classifier `head`'s input (pooled features), as one module.

    It runs a copy of the model whose head is an identity (the head is every supported model's last layer), so
    its output is the head's input. The head is initialised anew in every fold; left in, its weights would be
    part of this module's state, which keys the feature cache, and every fold would compute the same features
    again (minutes per fold on 600 images on a CPU).
    """

    def __init__(self, model: nn.Module, head: str) -> None:
        super().__init__()
        self.model = copy.deepcopy(model)
        self.model.set_submodule(head, nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).float()


class HeadOnly(_CachedFeatures):
    """Only the classifier trains, on the frozen backbone's cached pooled features of every variant."""

    def __init__(self, built: Built, data: FoldData, recipe: Recipe, runtime: Runtime) -> None:
        super().__init__(
            PooledFeatures(built.model, built.head),
            lambda model: model.get_submodule(built.head),
            built,
            data,
            recipe=recipe,
            runtime=runtime,
        )


Strategy = FullFineTune | PartialFineTune | HeadOnly
STRATEGIES: dict[str, type[Strategy]] = {"full": FullFineTune, "partial": PartialFineTune, "head": HeadOnly}
