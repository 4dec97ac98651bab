"""How close the pipeline's training comes to the limit, and how far a naive loop falls behind.

For one fold, with the same model, data, epochs, batch size and augmentation, times:

  bare      tensors already in memory (on the device): augment, forward, backward, step; eval in large batches
  pipeline  stages.train.train_fold, from the PNGs on disk to the fold's probabilities (no process start)
  naive     a seed-style loop: a Dataset opening each PNG with PIL in __getitem__, torchvision transforms,
            DataLoader(num_workers=0), evaluation with gradients on, a log line written every batch

and prints images/s (training images per second of the whole loop) and the ratios pipeline/bare (target <= 1.10)
and naive/pipeline. On CUDA, bare is the GPU's throughput for this model; pipeline/bare is then the fraction of
it the pipeline reaches. Usage (defaults: the demo data, fold 0, 2 epochs, params.yaml's model and image size):

    python benchmarks/train_loop.py [--images data/processed/images --folds data/processed/folds.csv]
                                    [--fold 0] [--epochs 2] [--img-size 224]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from PIL import Image
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stages import train  # noqa: E402
from stages.classes import class_order  # noqa: E402
from stages.models import build_model  # noqa: E402
from stages.params import load_params  # noqa: E402


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare(images_dir: Path, folds: pd.DataFrame, fold: int, params: dict[str, Any]) -> float:
    """Seconds for the same steps and evaluations as train_fold, on tensors already in memory."""
    device = train.select_device(params["train"]["device"])
    speed = train.Speed.of(device, params["train"])
    classes = class_order(folds["label"])
    rows = folds[folds["fold"] != fold], folds[folds["fold"] == fold]
    x = [train.load_images(images_dir, list(r["file"])).to(device) for r in rows]
    y = [torch.tensor([classes.index(c) for c in r["label"]], device=device) for r in rows]
    torch.manual_seed(params["seed"])
    generator = torch.Generator().manual_seed(params["seed"])
    built = build_model(params["model"], len(classes), params["pretrained"], params["resize"]["img_size"])
    model = speed.prepare(built.model)
    optimiser = torch.optim.Adam(model.parameters(), lr=params["lr"])
    scaler = torch.amp.GradScaler(device.type, enabled=speed.amp_dtype is torch.float16)
    batch = params["batch_size"]
    usable = len(x[0]) - (1 if len(x[0]) % batch == 1 else 0)  # as train_fold: no lone last sample
    synchronise(device)
    started = time.perf_counter()
    for _ in range(params["epochs"]):
        model.train()
        order = torch.randperm(len(x[0]), generator=generator).to(device)
        for start in range(0, usable, batch):
            idx = order[start : min(start + batch, usable)]
            with speed.autocast():
                inputs = train.augment(x[0][idx].float() / 255, generator, **params["train"]["augment"])
                loss = nn.functional.cross_entropy(model(speed.inputs(inputs, built.normalisation)).float(), y[0][idx])
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
        train.evaluate(model, x[1], y[1], built.normalisation, speed)
    synchronise(device)
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


def naive(images_dir: Path, folds: pd.DataFrame, fold: int, params: dict[str, Any], log: Path) -> float:
    from torchvision import transforms

    device = train.select_device(params["train"]["device"])
    classes = class_order(folds["label"])
    torch.manual_seed(params["seed"])
    built = build_model(params["model"], len(classes), params["pretrained"], params["resize"]["img_size"])
    model = built.model.to(device)
    jitter = params["train"]["augment"]["jitter"]
    normalise = transforms.Normalize(built.normalisation.mean, built.normalisation.std)
    augmenting = transforms.Compose([
        transforms.RandomHorizontalFlip(), transforms.RandomVerticalFlip(),
        transforms.RandomChoice([transforms.RandomRotation((a, a)) for a in (0, 90, 180, 270)]),
        transforms.ColorJitter(brightness=jitter, contrast=jitter), transforms.ToTensor(), normalise])
    plain = transforms.Compose([transforms.ToTensor(), normalise])
    loaders = [torch.utils.data.DataLoader(PngDataset(images_dir, rows, classes, t), batch_size=params["batch_size"],
                                           shuffle=shuffle, num_workers=0, drop_last=shuffle)
               for rows, t, shuffle in ((folds[folds["fold"] != fold], augmenting, True),
                                        (folds[folds["fold"] == fold], plain, False))]
    optimiser = torch.optim.Adam(model.parameters(), lr=params["lr"])
    logger = logging.getLogger("naive")
    logger.addHandler(logging.FileHandler(log))
    logger.setLevel(logging.INFO)
    synchronise(device)
    started = time.perf_counter()
    for epoch in range(params["epochs"]):
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


def resized(images_dir: Path, files: list[str], size: int, dest: Path) -> Path:
    """Copies of the images at `size` px, when a shorter run than the processed size is wanted."""
    for name in files:
        with Image.open(images_dir / name) as img:
            img.convert("RGB").resize((size, size), Image.Resampling.LANCZOS).save(dest / name)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=REPO / "data/processed/images")
    parser.add_argument("--folds", type=Path, default=REPO / "data/processed/folds.csv")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--img-size", type=int, help="resize the inputs first (default: as they are)")
    parser.add_argument("--skip-naive", action="store_true", help="time only bare and pipeline")
    args = parser.parse_args()

    params = load_params(REPO / "params.yaml")
    folds = pd.read_csv(args.folds, dtype={"label": str})
    with tempfile.TemporaryDirectory() as tmp:
        images = args.images
        if args.img_size:
            images = resized(args.images, list(folds["file"]), args.img_size, Path(tmp))
        with Image.open(images / folds["file"].iloc[0]) as img:
            params["resize"]["img_size"] = img.width
        params["epochs"] = args.epochs
        device = train.select_device(params["train"]["device"])
        n_train = int((folds["fold"] != args.fold).sum())
        print(f"{params['model']} on {device}, fold {args.fold}: {n_train} training images, "
              f"{len(folds) - n_train} held out, {params['resize']['img_size']} px, batch {params['batch_size']}, "
              f"{args.epochs} epochs", flush=True)

        seconds = {"bare": bare(images, folds, args.fold, params)}
        started = time.perf_counter()
        result, _, _ = train.train_fold(images, folds, args.fold, params)
        synchronise(device)
        seconds["pipeline"] = time.perf_counter() - started
        if not args.skip_naive:
            seconds["naive"] = naive(images, folds, args.fold, params, Path(tmp) / "naive.log")

    print("| loop | seconds | training images/s |\n|---|---|---|")
    for name, s in seconds.items():
        print(f"| {name} | {s:.1f} | {n_train * args.epochs / s:.1f} |")
    print("pipeline timing (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result.timing.items() if v))
    ratio = seconds["pipeline"] / seconds["bare"]
    print(f"pipeline/bare: {ratio:.2f} (target <= 1.10)"
          + (f"; the pipeline reaches {1 / ratio:.0%} of this GPU's throughput" if device.type == "cuda" else ""))
    if "naive" in seconds:
        print(f"naive/pipeline: {seconds['naive'] / seconds['pipeline']:.2f}")


if __name__ == "__main__":
    main()
