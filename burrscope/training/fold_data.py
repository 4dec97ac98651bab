"""A fold's examples: its training and held-out rows of the fold table, decoded once, placed where they train."""

from __future__ import annotations

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
    """uint8 N x 3 x S x S images and class indices; `val_x` is None for the final model."""

    fold: int | str
    classes: list[str]
    train_rows: pd.DataFrame
    val_rows: pd.DataFrame
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor | None
    val_y: torch.Tensor

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
        images = [x for x in (self.train_x, self.val_x) if x is not None]
        free, _ = torch.cuda.mem_get_info(device)
        fits = sum(x.nbytes for x in images) < free // 2
        images = [x.to(device) if fits else x.pin_memory() for x in images]
        train_x, val_x = images[0], (images[1] if len(images) > 1 else None)
        return replace(
            self, train_x=train_x, train_y=self.train_y.to(train_x.device), val_x=val_x, val_y=self.val_y.to(device)
        )


def all_images(data: FoldData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every image of the fold table (training and held-out) in the table's order, and where the fold's training
    and held-out images sit in it: what a cache shared by all folds is keyed and indexed by."""
    index = torch.tensor([*data.train_rows.index, *data.val_rows.index])
    order = torch.argsort(index)
    combined = data.train_x if data.val_x is None else torch.cat([data.train_x, data.val_x])
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    n_train = len(data.train_rows)
    return combined[order.to(combined.device)], rank[:n_train], rank[n_train:]


def fold_rows(folds: pd.DataFrame, fold: int | str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, held-out rows) of the fold table; FINAL_ITEM trains on every row and holds none out."""
    if fold == FINAL_ITEM:
        return folds, folds[:0]
    if fold not in set(folds["fold"]):
        raise DataError(f"fold {fold} has no images in the folds CSV (folds present: {sorted(set(folds['fold']))}).")
    return folds[folds["fold"] != fold], folds[folds["fold"] == fold]


def load_fold(images_dir: Path, folds: pd.DataFrame, fold: int | str) -> FoldData:
    """The fold's images and labels on the CPU; classes are those of the whole fold table."""
    classes = class_order(folds["label"])
    index = {label: i for i, label in enumerate(classes)}
    train_rows, val_rows = fold_rows(folds, fold)

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
    )
