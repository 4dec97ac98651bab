"""Train one fold: fine-tune an ImageNet-pretrained CNN on the other folds, predict the held-out one.

`fold` may also be `all`: the final model, trained on every image with no validation set. It writes model.pt,
metrics.json and history.csv (validation columns empty) but no predictions.csv, and keeps the last epoch
(train.keep=best needs a validation set to pick from).

With `finetune: head` the backbone stays frozen: its pooled features are computed once per image and flip/turn
variant, and only the classifier trains, on those cached features. The saved model is still the whole network.

After every epoch the fold saves `checkpoint.pt` (model, optimiser, RNG states, history, best-so-far) into its
output folder, atomically. A rerun after a crash or a kill resumes from it when it was made from the same
params, fold assignment, images and training code, and then ends exactly as an uninterrupted run would on
CPU. The checkpoint is deleted once the fold's outputs are written.

metrics.json records where the time went (`timing`, seconds): startup (process start to training, imports
included), data (decoding images, building the model), train (optimiser steps; with `finetune: head` also the
one backbone pass), eval, logging (MLflow) and checkpoint (saving checkpoints and outputs).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from stages import models
from stages.classes import class_order, prob_column
from stages.errors import UserError, user_errors
from stages.explain import explain_fold
from stages.files import atomic_path, write_text_atomic
from stages.models import Built, Normalisation, build_model
from stages.params import load_params
from stages.tables import HISTORY_COLUMNS, read_table

EVAL_BATCH = 128
CHECKPOINT_NAME = "checkpoint.pt"
HEATMAPS_DIR = "heatmaps"
FINAL = "all"  # the fold argument that trains the final model on every image
WARMUP_START = 0.01  # warmup starts at lr / 100
PHASES = ("startup", "data", "train", "eval", "logging", "checkpoint")


class TrainError(UserError):
    """The fold cannot be trained as configured."""


def select_device(preference: str) -> torch.device:
    """`auto` takes CUDA when present; asking for CUDA without it is an error, not a silent CPU run."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise TrainError("train.device is `cuda` but no CUDA device is visible to torch "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}). "
                         "Set train.device to `auto` or `cpu`, or install a CUDA build of torch.")
    if preference == "cpu":
        return torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def configure_determinism(deterministic: bool, device: torch.device) -> None:
    """`train.deterministic`: deterministic kernels and no cuDNN autotuning, or cuDNN's fastest on CUDA.

    CPU training is reproducible either way. On CUDA, torch flags the backward of global average pooling
    (in every backbone here) as lacking a deterministic kernel; with a 1x1 output each input gets exactly one
    addition, so it is reproducible in practice, and `warn_only` lets it run with a warning instead of failing.
    """
    if deterministic:
        # cuBLAS reads this when CUDA first creates its handle, so it must be set before any CUDA work.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic


def fingerprint(params: dict[str, Any], folds: pd.DataFrame, fold: int | str, device: torch.device,
                images: list[torch.Tensor]) -> str:
    """What a checkpoint must have been made from to be resumed: params, fold assignment, fold, images, code."""
    digest = hashlib.sha256()
    for module in (__file__, models.__file__):  # training code that changed since the checkpoint: start over
        digest.update(Path(module).read_bytes())
    settings = {"params": {k: v for k, v in params.items() if k != "mlflow"}, "fold": fold,
                "device": device.type, "torch": torch.__version__}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(folds[["file", "label", "fold"]].to_csv(index=False).encode())
    for tensor in images:
        digest.update(tensor.contiguous().cpu().numpy().data)
    return digest.hexdigest()


def load_checkpoint(path: Path, expected: str) -> dict[str, Any] | None:
    """The checkpoint at `path` if it can be resumed from; otherwise None, saying why it is ignored."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a kill mid-save; one writer per fold
        stale.unlink(missing_ok=True)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a checkpoint is only ever a shortcut: never let a bad one stop training
        print(f"ignoring {path}: it cannot be read ({type(err).__name__}); training from the start", flush=True)
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != expected:
        print(f"ignoring {path}: it was made with other params, folds, images or code; training from the start",
              flush=True)
        return None
    return state


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


class Stopwatch:
    """Seconds spent per phase (PHASES), summed over the fold."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - started


def seconds_since_process_start() -> float | None:
    """How long this process has run, Python's own start-up and imports included; None where /proc is missing."""
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        # Field 22, start time in clock ticks after boot; the command name (field 2) may hold spaces and ")".
        started = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - started / os.sysconf("SC_CLK_TCK"))


def load_images(images_dir: Path, files: list[str]) -> torch.Tensor:
    """All of a fold's images as one uint8 N x 3 x S x S tensor, decoded once rather than every epoch."""
    arrays = []
    for name in files:
        path = images_dir / name
        if not path.is_file():
            raise TrainError(f"{path} is listed in the folds CSV but missing; rerun the resize stage.")
        with Image.open(path) as img:
            arrays.append(np.asarray(img.convert("RGB")))
    sizes = {a.shape for a in arrays}
    if len(sizes) != 1:
        raise TrainError(f"{images_dir} holds images of several sizes {sorted(sizes)}; rerun the resize stage.")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def place(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """The fold's uint8 images on the GPU when training there, so batches never cross the bus.

    If they would take more than half the free GPU memory, they stay in pinned host memory instead, from which
    each batch is copied. Pinning only helps copies to a GPU: on CPU the tensors stay as they are.
    """
    if device.type != "cuda":
        return tensors
    free, _ = torch.cuda.mem_get_info(device)
    if sum(t.nbytes for t in tensors) < free // 2:
        return [t.to(device) for t in tensors]
    return [t.pin_memory() for t in tensors]


@dataclass(frozen=True)
class Speed:
    """How inputs meet the model on CUDA: mixed precision (train.amp) and NHWC layout (train.channels_last)."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    @classmethod
    def of(cls, device: torch.device, train: dict[str, Any]) -> Speed:
        if device.type != "cuda":
            return cls(device)
        amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if train["amp"] else None
        return cls(device, amp_dtype, train["channels_last"])

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def unit(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 images, wherever they are, as floats in [0, 1] on the device."""
        return batch.to(self.device, non_blocking=True).float() / 255

    def inputs(self, batch: torch.Tensor, normalisation: Normalisation) -> torch.Tensor:
        """Float images in [0, 1] on the device -> the model's input."""
        batch = normalise(batch, normalisation)
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch

    def prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


def augment(batch: torch.Tensor, generator: torch.Generator, flip: bool, rot90: bool,
            jitter: float) -> torch.Tensor:
    """Random flips, 90-degree turns and brightness/contrast jitter of float images in [0, 1].

    Square inputs keep their shape under every turn, so no pixel is ever cropped. The random draws come
    from a CPU generator, so the same seed gives the same augmentation on any device; they reach the GPU
    asynchronously, and no step reads a value back, so augmenting never waits for the GPU.
    """
    n = batch.shape[0]

    def draw(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator).to(batch.device, non_blocking=True)

    if flip:
        batch = torch.where((draw(n) < 0.5).view(n, 1, 1, 1), batch.flip(3), batch)
        batch = torch.where((draw(n) < 0.5).view(n, 1, 1, 1), batch.flip(2), batch)
    if rot90:
        turns = torch.randint(0, 4, (n,), generator=generator).to(batch.device, non_blocking=True).view(n, 1, 1, 1)
        turned = batch
        for k in (1, 2, 3):
            turned = torch.where(turns == k, torch.rot90(batch, k, dims=(2, 3)), turned)
        batch = turned.contiguous()  # torch.where keeps rot90's transposed strides: other conv kernels, other rounding
    if jitter > 0:
        brightness = 1 + (draw(n) * 2 - 1) * jitter
        contrast = 1 + (draw(n) * 2 - 1) * jitter
        mean = batch.mean(dim=(1, 2, 3), keepdim=True)
        batch = ((batch - mean) * contrast.view(n, 1, 1, 1) + mean) * brightness.view(n, 1, 1, 1)
        batch = batch.clamp(0, 1)
    return batch


def views(flip: bool, rot90: bool) -> list[tuple[bool, int]]:
    """The (mirror, quarter turns) variants that flip/rot90 augmentation produces, each equally likely.

    Random horizontal and vertical flips give the identity, the two mirrors and their product, a half turn;
    with random quarter turns on top, all 8 symmetries of the square.
    """
    if flip and rot90:
        return [(mirror, turns) for mirror in (False, True) for turns in range(4)]
    if flip:
        return [(False, 0), (True, 0), (True, 2), (False, 2)]
    if rot90:
        return [(False, turns) for turns in range(4)]
    return [(False, 0)]


def normalise(batch: torch.Tensor, normalisation: Normalisation) -> torch.Tensor:
    """Scale float images in [0, 1] as the backbone's pretraining did; only ever applied to model inputs."""
    mean = torch.tensor(normalisation.mean, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(normalisation.std, device=batch.device).view(1, 3, 1, 1)
    return (batch - mean) / std


def scores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """Mean cross-entropy (never label-smoothed, so comparable across recipes), accuracy, class probabilities."""
    logits = logits.float()
    loss = nn.functional.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    return loss, accuracy, logits.softmax(1).cpu()


@torch.inference_mode()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, normalisation: Normalisation,
             speed: Speed | None = None) -> tuple[float, float, torch.Tensor]:
    """Mean loss, accuracy and class probabilities, in large batches with no autograd bookkeeping."""
    speed = speed or Speed(labels.device)
    model.eval()
    with speed.autocast():
        logits = torch.cat([model(speed.inputs(speed.unit(images[i : i + EVAL_BATCH]), normalisation))
                            for i in range(0, len(images), EVAL_BATCH)])
    return scores(logits, labels)


@torch.inference_mode()
def pooled_features(model: nn.Module, head: str, images: torch.Tensor, normalisation: Normalisation,
                    variants: list[tuple[bool, int]], speed: Speed) -> torch.Tensor:
    """V x N x F: what the classifier `head` receives, for each image under each variant; one backbone pass each."""
    captured: list[torch.Tensor] = []
    hook = model.get_submodule(head).register_forward_pre_hook(lambda _, args: captured.append(args[0].float()))
    model.eval()
    try:
        with speed.autocast():
            for mirror, turns in variants:
                for i in range(0, len(images), EVAL_BATCH):
                    batch = speed.unit(images[i : i + EVAL_BATCH])
                    model(speed.inputs(torch.rot90(batch.flip(3) if mirror else batch, turns, dims=(2, 3)),
                                       normalisation))
    finally:
        hook.remove()
    return torch.cat(captured).unflatten(0, (len(variants), len(images)))


def lr_factor(step: int, steps: int, warmup_steps: int, schedule: str) -> float:
    """The multiple of `lr` for optimiser step `step` (from 0) of `steps`: linear warmup, then constant or cosine."""
    if step < warmup_steps:
        return WARMUP_START + (1 - WARMUP_START) * step / warmup_steps
    if schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, steps - warmup_steps)))


def make_optimiser(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; biases and norm scales are not decayed (as timm does).

    With weight_decay 0, AdamW takes exactly Adam's steps.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW([{"params": [p for p in trainable if p.ndim > 1], "weight_decay": weight_decay},
                              {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0}], lr=lr)


class WeightAverage:
    """An exponential moving average of the trainable weights, updated after every step.

    Buffers (BatchNorm running statistics) are copied rather than averaged: they already are running averages.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay
        self.pairs = [(mine, theirs) for mine, theirs in zip(self.model.parameters(), model.parameters(), strict=True)
                      if theirs.requires_grad]
        self.buffers = list(zip(self.model.buffers(), model.buffers(), strict=True))

    @torch.no_grad()
    def update(self) -> None:
        for mine, theirs in self.pairs:
            mine.lerp_(theirs, 1 - self.decay)
        for mine, theirs in self.buffers:
            mine.copy_(theirs)


@dataclass
class FoldResult:
    history: list[dict[str, float]]
    probabilities: torch.Tensor
    state_dict: dict[str, torch.Tensor]
    epoch_kept: int
    metrics: dict[str, Any]
    timing: dict[str, float] = field(default_factory=dict)  # seconds per PHASES entry, for metrics.json


def train_fold(images_dir: Path, folds: pd.DataFrame, fold: int | str, params: dict[str, Any],
               on_epoch: Callable[[int, dict[str, float]], None] | None = None,
               checkpoint: Path | None = None,
               ) -> tuple[FoldResult, Built, list[str]]:
    """Fine-tune on every fold but `fold`, evaluating on `fold` after each epoch; `fold` FINAL: on every image.

    With `checkpoint`, the state after every epoch is saved there, and a matching checkpoint found at the
    start is resumed from: its epochs are replayed to `on_epoch`, then training continues where it stopped.
    """
    final = fold == FINAL
    if not final and fold not in set(folds["fold"]):
        raise TrainError(f"fold {fold} has no images in the folds CSV (folds present: {sorted(set(folds['fold']))}).")
    train_params = params["train"]
    classes = class_order(folds["label"])
    index = {c: i for i, c in enumerate(classes)}
    train_rows, val_rows = (folds, folds[:0]) if final else (folds[folds["fold"] != fold], folds[folds["fold"] == fold])
    device = select_device(train_params["device"])
    configure_determinism(train_params["deterministic"], device)  # before any CUDA work
    speed = Speed.of(device, train_params)
    seed = params["seed"] + (0 if final else fold)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    stopwatch = Stopwatch()

    with stopwatch("data"):
        built = build_model(params["model"], len(classes), params["pretrained"], params["resize"]["img_size"])
        model, normalisation = speed.prepare(built.model), built.normalisation
        loaded = [load_images(images_dir, list(rows["file"])) for rows in (train_rows, val_rows) if len(rows)]
        expected = fingerprint(params, folds, fold, device, loaded)
        loaded = place(loaded, device)
        train_x, val_x = loaded[0], None if final else loaded[1]
        store = train_x.device  # labels and batch indices live where the images do
        train_y = torch.tensor([index[c] for c in train_rows["label"]], device=store)
        val_y = torch.tensor([index[c] for c in val_rows["label"]], device=device)

    head_only = params["finetune"] == "head"
    head = model.get_submodule(built.head)
    augment_params = train_params["augment"]
    if head_only:
        model.requires_grad_(False)
        head.requires_grad_(True)
        variants = views(augment_params["flip"], augment_params["rot90"])
        with stopwatch("train"):
            # Brightness/contrast jitter cannot reach cached features: with `finetune: head` it does not apply.
            train_features = pooled_features(model, built.head, train_x, normalisation, variants, speed)
            val_features = (None if final else
                            pooled_features(model, built.head, val_x, normalisation, [(False, 0)], speed)[0])
        runner = model  # only the frozen backbone would be worth compiling, and it ran once already
    else:
        runner = torch.compile(model) if train_params["compile"] else model
    optimiser = make_optimiser(model, params["lr"], train_params["weight_decay"])
    scaler = torch.amp.GradScaler(device.type, enabled=speed.amp_dtype is torch.float16)
    average = WeightAverage(model, train_params["ema_decay"]) if train_params["ema_decay"] > 0 else None
    kept = average.model if average is not None else model  # what is evaluated and saved

    def validate() -> tuple[float, float, torch.Tensor]:
        if head_only:
            with torch.inference_mode():
                return scores(kept.get_submodule(built.head)(val_features), val_y)
        return evaluate(runner if average is None else kept, val_x, val_y, normalisation, speed)

    batch_size, epochs = params["batch_size"], params["epochs"]
    # A lone last sample would make BatchNorm fail (one value per channel): fold it into the next epoch.
    usable = len(train_x) - (1 if len(train_x) % batch_size == 1 and len(train_x) > 1 else 0)
    steps_per_epoch = math.ceil(usable / batch_size)
    warmup_steps = train_params["warmup_epochs"] * steps_per_epoch
    keep = "last" if final else train_params["keep"]
    if final and train_params["keep"] == "best":
        print("final model: train.keep=best needs a validation set; keeping the last epoch", flush=True)
    history: list[dict[str, float]] = []
    best: dict[str, Any] | None = None
    probabilities = torch.empty(0)
    state = load_checkpoint(checkpoint, expected) if checkpoint is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scaler.load_state_dict(state["scaler"])
        if average is not None:
            average.model.load_state_dict(state["average"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        history, best, probabilities = state["history"], state["best"], state["probabilities"]
        print(f"fold {fold}: resuming from {checkpoint} after epoch {state['epoch']}/{epochs}", flush=True)
        if on_epoch is not None:  # so a new tracking run still carries the whole curve
            with stopwatch("logging"):
                for row in history:
                    on_epoch(int(row["epoch"]), row)
    resumed_from = len(history)
    for epoch in range(resumed_from + 1, epochs + 1):
        started = time.perf_counter()
        with stopwatch("train"):
            model.train(not head_only)  # with a frozen backbone, its BatchNorm statistics stay frozen too
            order = torch.randperm(len(train_x), generator=generator)
            if head_only:
                variant = torch.randint(0, len(variants), (len(train_x),), generator=generator).to(store)
            order = order.to(store, non_blocking=True)
            # Summed on the device and read once per epoch: reading a value every step would stall the GPU.
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            for step, start in enumerate(range(0, usable, batch_size), start=(epoch - 1) * steps_per_epoch):
                idx = order[start : min(start + batch_size, usable)]
                labels = train_y[idx].to(device, non_blocking=True)
                for group in optimiser.param_groups:
                    group["lr"] = params["lr"] * lr_factor(step, epochs * steps_per_epoch, warmup_steps,
                                                           train_params["schedule"])
                with speed.autocast():
                    if head_only:
                        logits = head(train_features[variant[idx], idx])
                    else:
                        images = augment(speed.unit(train_x[idx]), generator, **augment_params)
                        logits = runner(speed.inputs(images, normalisation))
                loss = nn.functional.cross_entropy(logits.float(), labels,
                                                   label_smoothing=train_params["label_smoothing"])
                optimiser.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimiser)
                scaler.update()
                if average is not None:
                    average.update()
                loss_sum += loss.detach().double() * len(idx)
                correct += (logits.argmax(1) == labels).sum()
            row = {"epoch": epoch, "train_loss": loss_sum.item() / usable, "train_accuracy": correct.item() / usable}
        summary = (f"fold {fold} epoch {epoch}/{epochs}  train loss {row['train_loss']:.4f} "
                   f"acc {row['train_accuracy']:.3f}")
        if not final:
            with stopwatch("eval"):
                val_loss, val_accuracy, probabilities = validate()
            row |= {"val_loss": val_loss, "val_accuracy": val_accuracy}
            summary += f"  | val loss {val_loss:.4f} acc {val_accuracy:.3f}"
        history.append(row)
        print(f"{summary}  ({time.perf_counter() - started:.1f} s)", flush=True)
        if keep == "best" and (best is None or row["val_loss"] < best["val_loss"]):
            best = {"val_loss": row["val_loss"], "epoch": epoch, "probabilities": probabilities,
                    "state_dict": {k: v.detach().cpu().clone() for k, v in kept.state_dict().items()}}
        if checkpoint is not None:
            with stopwatch("checkpoint"):
                save_checkpoint(checkpoint, {
                    "fingerprint": expected, "epoch": epoch, "history": history, "best": best,
                    "probabilities": probabilities, "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                    "scaler": scaler.state_dict(), "average": None if average is None else average.model.state_dict(),
                    "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else []})
        if on_epoch is not None:
            with stopwatch("logging"):
                on_epoch(epoch, row)

    if best is not None:
        epoch_kept, state_dict, probabilities = best["epoch"], best["state_dict"], best["probabilities"]
    else:
        epoch_kept, state_dict = epochs, kept.state_dict()
    state_dict = {k: v.detach().cpu() for k, v in state_dict.items()}
    kept_row = history[epoch_kept - 1]
    metrics = {
        "fold": fold, "keep": keep, "epoch_kept": epoch_kept,
        "val_loss": kept_row.get("val_loss"), "val_accuracy": kept_row.get("val_accuracy"),  # None: final model
        "n_train": len(train_rows), "n_val": len(val_rows), "device": str(device),
        "weights": {"name": built.weights.name, "sha256": built.weights.sha256},
        "resumed_from_epoch": resumed_from,
    }
    result = FoldResult(history, probabilities, state_dict, epoch_kept, metrics, stopwatch.seconds)
    return result, built, classes


def predictions_table(val_rows: pd.DataFrame, probabilities: torch.Tensor, classes: list[str]) -> pd.DataFrame:
    table = val_rows[["file", "label", "fold"]].reset_index(drop=True).copy()
    table["predicted"] = [classes[i] for i in probabilities.argmax(1).tolist()]
    for i, label in enumerate(classes):
        table[prob_column(label)] = probabilities[:, i].numpy().round(6)
    return table


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(metrics, indent=2) + "\n")


def write_outputs(out_dir: Path, result: FoldResult, built: Built, classes: list[str], val_rows: pd.DataFrame,
                  params: dict[str, Any]) -> list[Path]:
    """model.pt, metrics.json, history.csv and, for a fold (not the final model), predictions.csv."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = ("model.pt", "metrics.json", "history.csv") + (() if result.metrics["fold"] == FINAL else
                                                           ("predictions.csv",))
    paths = [out_dir / n for n in names]
    checkpoint = {"model": params["model"], "classes": classes, "img_size": params["resize"]["img_size"],
                  "background": params["composite"]["background"],
                  "mean": list(built.normalisation.mean), "std": list(built.normalisation.std),
                  "epoch": result.epoch_kept, "state_dict": result.state_dict}
    with atomic_path(paths[0]) as tmp:
        torch.save(checkpoint, tmp)
    write_metrics(paths[1], result.metrics)
    write_text_atomic(paths[2], pd.DataFrame(result.history, columns=HISTORY_COLUMNS).to_csv(index=False))
    if len(paths) > 3:
        write_text_atomic(paths[3], predictions_table(val_rows, result.probabilities, classes).to_csv(index=False))
    return paths


def write_heatmaps(out_dir: Path, result: FoldResult, built: Built, classes: list[str], val_rows: pd.DataFrame,
                   images_dir: Path, params: dict[str, Any]) -> Path:
    """Grad-CAM of the kept weights on the held-out images: every mistake and train.explain_correct correct ones.

    On the CPU: a handful of images, and the GPU's memory may still hold the training state.
    """
    model = built.model.cpu()
    model.load_state_dict(result.state_dict)
    images = load_images(images_dir, list(val_rows["file"]))
    table = predictions_table(val_rows, result.probabilities, classes)
    out = out_dir / HEATMAPS_DIR
    explain_fold(model, images, built.normalisation, table, classes, params["train"]["explain_correct"], out,
                 params["seed"] + int(result.metrics["fold"]))
    return out


def fold_or_final(text: str) -> int | str:
    """The fold CLI argument: a fold number, or FINAL."""
    return FINAL if text == FINAL else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images_dir", type=Path, help="resized model inputs (data/processed/images)")
    parser.add_argument("folds_csv", type=Path, help="fold assignment (data/processed/folds.csv)")
    parser.add_argument("fold", type=fold_or_final, help=f"the fold held out for validation, or `{FINAL}`: the final "
                        "model, trained on every image")
    parser.add_argument("out_dir", type=Path, help="writes model.pt, metrics.json, history.csv, predictions.csv")
    args = parser.parse_args()

    from stages.tracking import FoldRun

    startup = seconds_since_process_start()  # Python, torch and MLflow imports included
    with user_errors():
        params = load_params()
        folds = read_table(args.folds_csv, ["file", "label", "fold"], numeric=["fold"])
        select_device(params["train"]["device"])  # fail before MLflow records a run
        checkpoint = args.out_dir / CHECKPOINT_NAME
        started = time.perf_counter()
        # Opening the run checks that MLflow is reachable: an unreachable store fails here, before training.
        with FoldRun(params, args.folds_csv, "final" if args.fold == FINAL else args.fold) as run:
            opened = time.perf_counter()
            result, built, classes = train_fold(args.images_dir, folds, args.fold, params, on_epoch=run.log_epoch,
                                                checkpoint=checkpoint)
            trained = time.perf_counter()
            timing = result.timing | {"startup": startup, "logging": result.timing["logging"] + opened - started}
            result.metrics["seconds"] = round(trained - opened, 1)
            result.metrics["mlflow"] = run.status
            result.metrics["timing"] = rounded(timing)
            # Outputs first, MLflow after: a tracking failure from here on costs the record, never the fold.
            val_rows = folds[folds["fold"] == args.fold]
            paths = write_outputs(args.out_dir, result, built, classes, val_rows, params)
            checkpoint.unlink(missing_ok=True)
            timing["checkpoint"] += time.perf_counter() - trained
            if args.fold != FINAL:
                explaining = time.perf_counter()
                write_heatmaps(args.out_dir, result, built, classes, val_rows, args.images_dir, params)
                timing["eval"] += time.perf_counter() - explaining
            written = time.perf_counter()
            run.finish(built.weights, paths)
            timing["logging"] += time.perf_counter() - written
            # Rewritten after the fact: the status may have changed, and the closing MLflow calls took time.
            result.metrics["mlflow"] = run.status
            result.metrics["timing"] = rounded(timing)
            write_metrics(paths[1], result.metrics)


def rounded(timing: dict[str, float | None]) -> dict[str, float | None]:
    return {phase: None if seconds is None else round(seconds, 3) for phase, seconds in timing.items()}


if __name__ == "__main__":
    main()
