"""How close the pipeline's training comes to the bare loop, and how far a naive loop falls behind.

For one fold, with the same model, data, epochs, batch size, fine-tuning strategy and augmentation, times:

  bare      tensors already in memory (on the device): the strategy's own work (for `partial` and `head`,
            the frozen part's features once), then augment/forward/backward/step; evaluation in large batches
  pipeline  burrscope.training.fold.train_fold, from the PNGs on disk to the fold's probabilities (no process
            start, no MLflow)
  naive     a seed-style loop over the whole network: a Dataset opening each PNG with PIL in __getitem__,
            torchvision transforms, DataLoader(num_workers=0), evaluation with gradients on, a log line per batch

and prints training images per second of the whole loop, and pipeline / bare (the share of the bare loop's
throughput the pipeline reaches). Usage (defaults: the demo's processed images, fold 0, 2 epochs, params.yaml):

    python benchmarks/train_loop.py [--images data/processed/images --folds data/processed/folds.csv]
                                    [--fold 0] [--epochs 2] [--batch-sizes 8,32,128] [--set finetune=full]
                                    [--skip-naive] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from PIL import Image
from torch import nn
from workspace import REPO, add_set_option, assign, parse_overrides

from burrscope.params import Recipe, read_params_file
from burrscope.runlog import Stopwatch
from burrscope.training.fold import train_fold
from burrscope.training.loop import Steps, logit_scores, make_optimiser, train_one_epoch
from burrscope.training.probe import LinearProbe
from burrscope.training.setup import prepare
from burrscope.training.strategies import STRATEGIES


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare(images_dir: Path, folds: pd.DataFrame, fold: int, recipe: Recipe) -> float:
    """Seconds for the strategy's feature pass, its optimiser steps and evaluations, tensors already in memory."""
    # The images decoded and placed, the model built, outside the clock; the strategy's own work inside it.
    setup = prepare(images_dir, folds, fold, replace(recipe, finetune="full"), stopwatch=Stopwatch())
    synchronise(setup.device)
    started = time.perf_counter()
    strategy = (LinearProbe if recipe.finetune == "probe" else STRATEGIES[recipe.finetune])(
        setup.built, setup.data, recipe, setup.runtime
    )
    if isinstance(strategy, LinearProbe):
        strategy.fit()
        logit_scores(strategy.validation_logits(None), setup.data.val_y)
    else:
        data, batch = setup.data, recipe.batch_size
        steps_per_epoch = math.ceil(len(data.train_x) / batch)
        steps = Steps(
            make_optimiser(setup.built.model, recipe.lr, 0.0),
            torch.amp.GradScaler(setup.device.type, enabled=setup.runtime.amp_dtype is torch.float16),
            recipe.lr,
            recipe.epochs * steps_per_epoch,
            0,
            "constant",
            0.0,
            None,
            None,
        )
        for epoch in range(recipe.epochs):
            order = torch.randperm(len(data.train_x), generator=setup.generator)
            strategy.start_epoch(setup.generator)
            order = order.to(data.train_x.device)[: len(data.train_x) - (len(data.train_x) % batch == 1)]
            train_one_epoch(
                lambda idx: strategy.train_logits(idx, setup.generator),
                data.train_y,
                order,
                batch,
                first_step=epoch * steps_per_epoch,
                steps=steps,
                runtime=setup.runtime,
            )
            logit_scores(strategy.validation_logits(None, every_view=False), data.val_y)  # as each epoch in a fold
    synchronise(setup.device)
    return time.perf_counter() - started


class PngDataset(torch.utils.data.Dataset):
    """The usual first version: every item read from disk and transformed on its own, every epoch."""

    def __init__(self, images_dir: Path, rows: pd.DataFrame, classes: list[str], transform: Any) -> None:
        self.paths = [images_dir / f for f in rows["file"]]
        self.labels = [classes.index(c) for c in rows["label"]]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.open(self.paths[i]).convert("RGB")), self.labels[i]


def naive(images_dir: Path, folds: pd.DataFrame, fold: int, recipe: Recipe, *, log: Path) -> float:
    from torchvision import transforms

    from burrscope.classes import class_order
    from burrscope.models.device import select_device
    from burrscope.models.factory import build_model

    device = select_device(recipe.device)
    classes = class_order(folds["label"])
    torch.manual_seed(recipe.seed)
    built = build_model(recipe.model, len(classes), recipe.pretrained, recipe.img_size)
    model = built.model.to(device)
    jitter = recipe.augment.jitter
    normalise = transforms.Normalize(built.normalisation.mean, built.normalisation.std)
    augmenting = transforms.Compose(
        [
            transforms.RandomHorizontalFlip(),
            transforms.RandomVerticalFlip(),
            transforms.RandomChoice([transforms.RandomRotation((a, a)) for a in (0, 90, 180, 270)]),
            transforms.ColorJitter(brightness=jitter, contrast=jitter),
            transforms.ToTensor(),
            normalise,
        ]
    )
    plain = transforms.Compose([transforms.ToTensor(), normalise])
    loaders = [
        torch.utils.data.DataLoader(
            PngDataset(images_dir, rows, classes, t),
            batch_size=recipe.batch_size,
            shuffle=shuffle,
            num_workers=0,
            drop_last=shuffle,
        )
        for rows, t, shuffle in (
            (folds[folds["fold"] != fold], augmenting, True),
            (folds[folds["fold"] == fold], plain, False),
        )
    ]
    optimiser = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    logger = logging.getLogger("naive")
    logger.addHandler(logging.FileHandler(log))
    logger.setLevel(logging.INFO)
    synchronise(device)
    started = time.perf_counter()
    for epoch in range(recipe.epochs):
        model.train()
        for step, (inputs, labels) in enumerate(loaders[0]):
            loss = nn.functional.cross_entropy(model(inputs.to(device)), labels.to(device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            logger.info("epoch %d step %d loss %.4f", epoch, step, loss.item())
        model.eval()
        for inputs, labels in loaders[1]:  # gradients on: the autograd graph is built for nothing
            loss = nn.functional.cross_entropy(model(inputs.to(device)), labels.to(device))
            logger.info("epoch %d val loss %.4f", epoch, loss.item())
    synchronise(device)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=REPO / "data/processed/images")
    parser.add_argument("--folds", type=Path, default=REPO / "data/processed/folds.csv")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-sizes", default="", help="comma-separated (default: params.yaml's batch_size)")
    parser.add_argument("--skip-naive", action="store_true", help="time only bare and pipeline")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    add_set_option(parser)
    args = parser.parse_args()

    params = assign(read_params_file(REPO / "params.yaml"), parse_overrides(args.set))
    folds = pd.read_csv(args.folds, dtype={"label": str})
    with Image.open(args.images / folds["file"].iloc[0]) as img:
        img_size = img.width
    recipe = replace(Recipe.from_params(params), epochs=args.epochs, img_size=img_size)
    sizes = [int(b) for b in args.batch_sizes.split(",") if b] or [recipe.batch_size]
    n_train = int((folds["fold"] != args.fold).sum())
    rows = []
    for batch in sizes:
        run = replace(recipe, batch_size=batch)
        seconds = {"bare": bare(args.images, folds, args.fold, run)}
        stopwatch = Stopwatch()
        started = time.perf_counter()
        train_fold(args.images, folds, args.fold, run, stopwatch=stopwatch)
        seconds["pipeline"] = time.perf_counter() - started
        if not args.skip_naive:
            with tempfile.TemporaryDirectory() as tmp:
                seconds["naive"] = naive(
                    args.images, folds, args.fold, replace(run, finetune="full"), log=Path(tmp) / "naive.log"
                )
        rate = {name: n_train * run.epochs / s for name, s in seconds.items()}
        rows.append(
            {
                "batch_size": batch,
                "seconds": seconds,
                "images_per_s": rate,
                "pipeline_share_of_bare": rate["pipeline"] / rate["bare"],
                "pipeline_phases": stopwatch.rounded(),
            }
        )
    device = "cuda" if torch.cuda.is_available() and recipe.device != "cpu" else "cpu"
    print(
        f"{recipe.model}, finetune {recipe.finetune}, {device}, fold {args.fold}: {n_train} training images, "
        f"{img_size} px, {recipe.epochs} epochs"
    )
    print("| batch | bare img/s | pipeline img/s | naive img/s (full) | pipeline / bare |\n|---|---|---|---|---|")
    for row in rows:
        rate = row["images_per_s"]
        print(
            f"| {row['batch_size']} | {rate['bare']:.1f} | {rate['pipeline']:.1f} | "
            f"{rate.get('naive', float('nan')):.1f} | {row['pipeline_share_of_bare']:.0%} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"device": device, "recipe": recipe.as_params(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
