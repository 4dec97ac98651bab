"""A fold's examples: its training and held-out rows of the fold table, decoded once, placed where they train.

For the learning curve a fold may train on a share of its training rows (`training_subset`); the rest are kept
as `unused`, so that the frozen features of the whole table, which every fold and experiment shares, stay cached.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch

from burrscope.classes import class_order
from burrscope.errors import DataError
from burrscope.models.tensors import load_images
from burrscope.params import FINAL_ITEM


@dataclass(frozen=True)
class FoldData:
    """uint8 N x 3 x S x S images and class indices; `val_x` is None for the final model, `unused_x` None unless
    the fold trains on a subset."""

    fold: int | str
    classes: list[str]
    train_rows: pd.DataFrame
    val_rows: pd.DataFrame
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor | None
    val_y: torch.Tensor
    unused_rows: pd.DataFrame
    unused_x: torch.Tensor | None = None

    @property
    def final(self) -> bool:
        return self.fold == FINAL_ITEM

    def placed(self, device: torch.device) -> FoldData:
        """The images on the GPU when training there, so batches never cross the bus; labels where images are.

        If they would take more than half the free GPU memory, they stay in pinned host memory instead, from which
        each batch is copied. Pinning only helps copies to a GPU: on the CPU nothing moves.
        """
        if device.type != "cuda":
            return self
        images = [x for x in (self.train_x, self.val_x, self.unused_x) if x is not None]
        free, _ = torch.cuda.mem_get_info(device)
        fits = sum(x.nbytes for x in images) < free // 2

        def place(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.to(device) if fits else x.pin_memory()

        train_x = place(self.train_x)
        assert train_x is not None
        return replace(
            self,
            train_x=train_x,
            train_y=self.train_y.to(train_x.device),
            val_x=place(self.val_x),
            val_y=self.val_y.to(device),
            unused_x=place(self.unused_x),
        )


def all_images(data: FoldData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every image of the fold table (training, held-out and unused) in the table's order, and where the fold's
    training and held-out images sit in it: what a cache shared by all folds is keyed and indexed by."""
    index = torch.tensor([*data.train_rows.index, *data.val_rows.index, *data.unused_rows.index])
    order = torch.argsort(index)
    combined = torch.cat([x for x in (data.train_x, data.val_x, data.unused_x) if x is not None])
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    n_train, n_val = len(data.train_rows), len(data.val_rows)
    return combined[order.to(combined.device)], rank[:n_train], rank[n_train : n_train + n_val]


def fold_rows(folds: pd.DataFrame, fold: int | str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, held-out rows) of the fold table; FINAL_ITEM trains on every row and holds none out."""
    if fold == FINAL_ITEM:
        return folds, folds[:0]
    if fold not in set(folds["fold"]):
        raise DataError(f"fold {fold} has no images in the folds CSV (folds present: {sorted(set(folds['fold']))}).")
    return folds[folds["fold"] != fold], folds[folds["fold"] == fold]


def subset_rank(file: str, seed: int) -> str:
    """An image's place in the order subsets are drawn in: a hash of seed and file name, so the order is the same
    in every fold and for every fraction, and a smaller subset is part of every larger one (nested)."""
    return hashlib.sha256(f"{seed}:{file}".encode()).hexdigest()


def training_subset(rows: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, left out): `fraction` of the rows of each class, at least one, the first in subset_rank order.

    Stratified, so each subset keeps the classes' proportions; nested, so a curve's points differ only by the
    images added. The kept rows stay in table order."""
    if not 0 < fraction <= 1:
        raise ValueError(f"a training fraction must be in (0, 1], not {fraction}")
    kept = []
    for _, group in rows.groupby("label", sort=True):
        ranked = sorted(group.index, key=lambda i: subset_rank(group.at[i, "file"], seed))
        kept += ranked[: max(1, math.ceil(fraction * len(ranked) - 1e-9))]
    chosen = rows.index.isin(kept)
    return rows[chosen], rows[~chosen]


def load_fold(
    images_dir: Path, folds: pd.DataFrame, fold: int | str, *, train_fraction: float = 1.0, seed: int = 0
) -> FoldData:
    """The fold's images and labels on the CPU; classes are those of the whole fold table. With `train_fraction`
    below 1 it trains on training_subset(..., seed) of its training rows."""
    classes = class_order(folds["label"])
    index = {label: i for i, label in enumerate(classes)}
    train_rows, val_rows = fold_rows(folds, fold)
    train_rows, unused_rows = training_subset(train_rows, train_fraction, seed)

    def labels(rows: pd.DataFrame) -> torch.Tensor:
        return torch.tensor([index[label] for label in rows["label"]], dtype=torch.int64)

    val_x = load_images(images_dir, list(val_rows["file"])) if len(val_rows) else None
    return FoldData(
        fold,
        classes,
        train_rows,
        val_rows,
        load_images(images_dir, list(train_rows["file"])),
        labels(train_rows),
        val_x,
        labels(val_rows),
        unused_rows,
        load_images(images_dir, list(unused_rows["file"])) if len(unused_rows) else None,
    )
