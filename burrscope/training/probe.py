"""`finetune: probe`: a logistic regression on the frozen backbone's pooled features, the floor every recipe must beat.

Each training image contributes its pooled features under every flip/turn the augmentation allows, and the
regularisation strength C is chosen by an inner cross-validation on the training folds alone, split by image
(all views of one image fall on one side), scored by log loss. The fitted regression becomes the network's
classifier layer, so model.pt, predict and export are those of any other fold. lr, epochs and the optimiser
settings do not apply.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from burrscope.models.device import Runtime
from burrscope.models.factory import Built
from burrscope.models.symmetries import tta_views, views
from burrscope.params import Recipe
from burrscope.training.fold_data import FoldData
from burrscope.training.strategies import PooledFeatures, cached_features

CS = np.logspace(-4, 2, 13)  # candidate inverse regularisation strengths
INNER_FOLDS = 5
MAX_ITER = 2000


def inner_splits(labels: np.ndarray, variants: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified splits of the rows of `variants` views of each of N images (rows view-major, image-minor),
    by image: every view of an image falls on the same side. `labels` holds one label per image."""
    # scikit-learn takes a second to import: only for this recipe, not in every fold's start-up.
    from sklearn.model_selection import StratifiedGroupKFold

    folds = min(INNER_FOLDS, int(np.bincount(labels).min()))
    if folds < 2:
        raise ValueError("the probe's inner cross-validation needs at least 2 training images of each class")
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    groups = np.tile(np.arange(len(labels)), variants)
    return list(splitter.split(groups, np.tile(labels, variants), groups))


def fit_probe(
    features: np.ndarray, labels: np.ndarray, classes: int, seed: int, *, balanced: bool = False, jobs: int = 1
) -> tuple[np.ndarray, np.ndarray, float]:
    """(weight C x F, bias C, chosen C) of a logistic regression on V x N x F features of N training images.

    The weights act on raw features: the standardisation the regression was fitted on is folded into them.
    `balanced` weighs each class by the inverse of its share (train.class_weights). The inner folds are fitted
    `jobs` at a time (the result does not depend on it).
    """
    from sklearn.linear_model import LogisticRegressionCV

    variants, n, width = features.shape
    rows = features.reshape(variants * n, width).astype(np.float64)
    mean, std = rows.mean(0), rows.std(0) + 1e-6
    model = LogisticRegressionCV(
        Cs=CS,
        cv=inner_splits(labels, variants, seed),
        scoring="neg_log_loss",
        max_iter=MAX_ITER,
        class_weight="balanced" if balanced else None,
        l1_ratios=(0.0,),  # a pure L2 penalty
        use_legacy_attributes=False,
        n_jobs=jobs,
    )
    # float32 halves the memory traffic that bounds each L-BFGS step (4x faster with 2 jobs on 600 images)
    model.fit(((rows - mean) / std).astype(np.float32), np.tile(labels, variants))
    coef, intercept = model.coef_ / std, model.intercept_ - (model.coef_ / std) @ mean
    if classes == 2:  # sklearn gives one logit z for the positive class: softmax([0, z]) is its sigmoid
        coef, intercept = np.vstack([np.zeros(width), coef]), np.concatenate([[0.0], intercept])
    return coef, intercept, float(model.C_)


class LinearProbe:
    """The classifier layer fitted in closed form on cached pooled features; the backbone never changes."""

    def __init__(self, built: Built, data: FoldData, recipe: Recipe, runtime: Runtime) -> None:
        self.model, self.head = built.model, built.model.get_submodule(built.head)
        self.data, self.seed, self.balanced = data, recipe.seed, recipe.class_weights == "balanced"
        self.train_features, self.val_features = cached_features(
            PooledFeatures(built.model, built.head),
            built,
            data,
            views(recipe.augment.flip, recipe.augment.rot90),
            val_views=tta_views(recipe.tta),
            runtime=runtime,
        )

    def fit(self) -> dict[str, float]:
        """Fit the classifier layer; the training loss and accuracy of the fitted layer over all views."""
        if not isinstance(self.head, nn.Linear):
            raise ValueError(f"finetune: probe needs a linear classifier layer, not {type(self.head).__name__}")
        labels = self.data.train_y.cpu()
        weight, bias, self.chosen_c = fit_probe(
            self.train_features.float().cpu().numpy(),
            labels.numpy(),
            self.head.out_features,
            self.seed,
            balanced=self.balanced,
            jobs=torch.get_num_threads(),  # the CPU budget train.cpu_threads set for this fold
        )
        with torch.no_grad():
            self.head.weight.copy_(torch.as_tensor(weight, dtype=self.head.weight.dtype))
            self.head.bias.copy_(torch.as_tensor(bias, dtype=self.head.bias.dtype))
            logits = self.head(self.train_features.to(self.head.weight.dtype)).cpu()
        targets = labels.repeat(len(logits))
        flat = logits.flatten(0, 1).float()
        return {
            "train_loss": nn.functional.cross_entropy(flat, targets).item(),
            "train_accuracy": (flat.argmax(1) == targets).float().mean().item(),
        }

    @torch.inference_mode()
    def validation_logits(self, average: nn.Module | None, every_view: bool = True) -> torch.Tensor:
        features = self.val_features if every_view else self.val_features[:1]
        return self.head(features.to(self.head.weight.dtype))
