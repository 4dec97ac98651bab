"""Train one fold: fine-tune an ImageNet-pretrained CNN on the other folds, predict the held-out one.

After every epoch the fold saves `checkpoint.pt` (model, optimiser, RNG states, history, best-so-far) into its
output folder, atomically. A rerun after a crash or a kill resumes from it when it was made from the same
params, fold assignment, images and training code, and then ends exactly as an uninterrupted run would on
CPU. The checkpoint is deleted once the fold's outputs are written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
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
from stages.files import atomic_path, write_text_atomic
from stages.models import Built, Normalisation, build_model
from stages.params import load_params
from stages.tables import HISTORY_COLUMNS, read_table

EVAL_BATCH = 64
CHECKPOINT_NAME = "checkpoint.pt"


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


def fingerprint(params: dict[str, Any], folds: pd.DataFrame, fold: int, device: torch.device,
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


def augment(batch: torch.Tensor, generator: torch.Generator, flip: bool, rot90: bool,
            jitter: float) -> torch.Tensor:
    """Random flips, 90-degree turns and brightness/contrast jitter of float images in [0, 1].

    Square inputs keep their shape under every turn, so no pixel is ever cropped. The random draws come
    from a CPU generator, so the same seed gives the same augmentation on any device.
    """
    n = batch.shape[0]

    def draw(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator).to(batch.device)

    if flip:
        batch = torch.where((draw(n) < 0.5).view(n, 1, 1, 1), batch.flip(3), batch)
        batch = torch.where((draw(n) < 0.5).view(n, 1, 1, 1), batch.flip(2), batch)
    if rot90:
        turns = torch.randint(0, 4, (n,), generator=generator).to(batch.device)
        batch = batch.clone()
        for k in (1, 2, 3):
            chosen = turns == k
            if chosen.any():
                batch[chosen] = torch.rot90(batch[chosen], k, dims=(2, 3))
    if jitter > 0:
        brightness = 1 + (draw(n) * 2 - 1) * jitter
        contrast = 1 + (draw(n) * 2 - 1) * jitter
        mean = batch.mean(dim=(1, 2, 3), keepdim=True)
        batch = ((batch - mean) * contrast.view(n, 1, 1, 1) + mean) * brightness.view(n, 1, 1, 1)
        batch = batch.clamp(0, 1)
    return batch


def normalise(batch: torch.Tensor, normalisation: Normalisation) -> torch.Tensor:
    """Scale float images in [0, 1] as the backbone's pretraining did; only ever applied to model inputs."""
    mean = torch.tensor(normalisation.mean, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(normalisation.std, device=batch.device).view(1, 3, 1, 1)
    return (batch - mean) / std


@torch.inference_mode()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             normalisation: Normalisation) -> tuple[float, float, torch.Tensor]:
    """Mean loss, accuracy and class probabilities, with no autograd bookkeeping."""
    model.eval()
    logits = torch.cat([model(normalise(images[i : i + EVAL_BATCH].float() / 255, normalisation))
                        for i in range(0, len(images), EVAL_BATCH)])
    loss = nn.functional.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    return loss, accuracy, logits.softmax(1).cpu()


@dataclass
class FoldResult:
    history: list[dict[str, float]]
    probabilities: torch.Tensor
    state_dict: dict[str, torch.Tensor]
    epoch_kept: int
    metrics: dict[str, Any]


def train_fold(images_dir: Path, folds: pd.DataFrame, fold: int, params: dict[str, Any],
               on_epoch: Callable[[int, dict[str, float]], None] | None = None,
               checkpoint: Path | None = None,
               ) -> tuple[FoldResult, Built, list[str]]:
    """Fine-tune on every fold but `fold`, evaluating on `fold` after each epoch.

    With `checkpoint`, the state after every epoch is saved there, and a matching checkpoint found at the
    start is resumed from: its epochs are replayed to `on_epoch`, then training continues where it stopped.
    """
    if fold not in set(folds["fold"]):
        raise TrainError(f"fold {fold} has no images in the folds CSV (folds present: {sorted(set(folds['fold']))}).")
    classes = class_order(folds["label"])
    index = {c: i for i, c in enumerate(classes)}
    train_rows, val_rows = folds[folds["fold"] != fold], folds[folds["fold"] == fold]
    device = select_device(params["train"]["device"])
    configure_determinism(params["train"]["deterministic"], device)  # before any CUDA work
    seed = params["seed"] + fold
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)

    built = build_model(params["model"], len(classes), params["pretrained"], params["resize"]["img_size"])
    model, normalisation = built.model.to(device), built.normalisation
    train_x = load_images(images_dir, list(train_rows["file"]))
    val_x = load_images(images_dir, list(val_rows["file"]))
    expected = fingerprint(params, folds, fold, device, [train_x, val_x])
    train_x, val_x = train_x.to(device), val_x.to(device)
    train_y = torch.tensor([index[c] for c in train_rows["label"]], device=device)
    val_y = torch.tensor([index[c] for c in val_rows["label"]], device=device)

    optimiser = torch.optim.Adam(model.parameters(), lr=params["lr"])
    augment_params = params["train"]["augment"]
    batch_size, epochs = params["batch_size"], params["epochs"]
    history: list[dict[str, float]] = []
    best: dict[str, Any] | None = None
    probabilities = torch.empty(0)
    state = load_checkpoint(checkpoint, expected) if checkpoint is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        history, best, probabilities = state["history"], state["best"], state["probabilities"]
        print(f"fold {fold}: resuming from {checkpoint} after epoch {state['epoch']}/{epochs}", flush=True)
        if on_epoch is not None:  # so a new tracking run still carries the whole curve
            for row in history:
                on_epoch(int(row["epoch"]), row)
    resumed_from = len(history)
    for epoch in range(resumed_from + 1, epochs + 1):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_x), generator=generator).to(device)
        # A lone last sample would make BatchNorm fail (one value per channel): fold it into the next epoch.
        usable = len(order) - (1 if len(order) % batch_size == 1 and len(order) > 1 else 0)
        loss_sum, correct = 0.0, 0
        for start in range(0, usable, batch_size):
            idx = order[start : min(start + batch_size, usable)]
            inputs = augment(train_x[idx].float() / 255, generator, **augment_params)
            logits = model(normalise(inputs, normalisation))
            loss = nn.functional.cross_entropy(logits, train_y[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == train_y[idx]).sum().item()
        val_loss, val_accuracy, probabilities = evaluate(model, val_x, val_y, normalisation)
        row = {"epoch": epoch, "train_loss": loss_sum / usable, "train_accuracy": correct / usable,
               "val_loss": val_loss, "val_accuracy": val_accuracy}
        history.append(row)
        print(f"fold {fold} epoch {epoch}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f}"
              f"  | val loss {val_loss:.4f} acc {val_accuracy:.3f}  ({time.perf_counter() - started:.1f} s)",
              flush=True)
        if params["train"]["keep"] == "best" and (best is None or val_loss < best["val_loss"]):
            best = {"val_loss": val_loss, "epoch": epoch, "probabilities": probabilities,
                    "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        if checkpoint is not None:
            save_checkpoint(checkpoint, {
                "fingerprint": expected, "epoch": epoch, "history": history, "best": best,
                "probabilities": probabilities, "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else []})
        if on_epoch is not None:
            on_epoch(epoch, row)

    if best is not None:
        epoch_kept, state_dict, probabilities = best["epoch"], best["state_dict"], best["probabilities"]
    else:
        epoch_kept, state_dict = epochs, model.state_dict()
    state_dict = {k: v.detach().cpu() for k, v in state_dict.items()}
    metrics = {
        "fold": fold, "keep": params["train"]["keep"], "epoch_kept": epoch_kept,
        "val_loss": history[epoch_kept - 1]["val_loss"], "val_accuracy": history[epoch_kept - 1]["val_accuracy"],
        "n_train": len(train_rows), "n_val": len(val_rows), "device": str(device),
        "weights": {"name": built.weights.name, "sha256": built.weights.sha256},
        "resumed_from_epoch": resumed_from,
    }
    return FoldResult(history, probabilities, state_dict, epoch_kept, metrics), built, classes


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
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / n for n in ("model.pt", "metrics.json", "history.csv", "predictions.csv")]
    checkpoint = {"model": params["model"], "classes": classes, "img_size": params["resize"]["img_size"],
                  "background": params["composite"]["background"],
                  "mean": list(built.normalisation.mean), "std": list(built.normalisation.std),
                  "epoch": result.epoch_kept, "state_dict": result.state_dict}
    with atomic_path(paths[0]) as tmp:
        torch.save(checkpoint, tmp)
    write_metrics(paths[1], result.metrics)
    write_text_atomic(paths[2], pd.DataFrame(result.history, columns=HISTORY_COLUMNS).to_csv(index=False))
    write_text_atomic(paths[3], predictions_table(val_rows, result.probabilities, classes).to_csv(index=False))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("images_dir", type=Path, help="resized model inputs (data/processed/images)")
    parser.add_argument("folds_csv", type=Path, help="fold assignment (data/processed/folds.csv)")
    parser.add_argument("fold", type=int, help="the fold held out for validation")
    parser.add_argument("out_dir", type=Path, help="writes model.pt, metrics.json, history.csv, predictions.csv")
    args = parser.parse_args()

    from stages.tracking import FoldRun

    with user_errors():
        params = load_params()
        folds = read_table(args.folds_csv, ["file", "label", "fold"], numeric=["fold"])
        select_device(params["train"]["device"])  # fail before MLflow records a run
        checkpoint = args.out_dir / CHECKPOINT_NAME
        # Opening the run checks that MLflow is reachable: an unreachable store fails here, before training.
        with FoldRun(params, args.folds_csv, args.fold) as run:
            started = time.perf_counter()
            result, built, classes = train_fold(args.images_dir, folds, args.fold, params, on_epoch=run.log_epoch,
                                                checkpoint=checkpoint)
            result.metrics["seconds"] = round(time.perf_counter() - started, 1)
            result.metrics["mlflow"] = run.status
            # Outputs first, MLflow after: a tracking failure from here on costs the record, never the fold.
            paths = write_outputs(args.out_dir, result, built, classes, folds[folds["fold"] == args.fold], params)
            checkpoint.unlink(missing_ok=True)
            if run.finish(built.weights, paths) != result.metrics["mlflow"]:
                result.metrics["mlflow"] = run.status
                write_metrics(paths[1], result.metrics)


if __name__ == "__main__":
    main()
