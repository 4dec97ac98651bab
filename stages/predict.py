"""Predict new parts with the trained fold models: raw cut-outs in, one row of class probabilities per image out.

Each image goes through exactly the training preprocessing (composite onto the background, pad to a square,
resize, scale, normalise) with the settings stored in the checkpoints, and the fold models' softmax
probabilities are averaged (params `predict.final: [all]` uses the one final model instead). The label is
decided by `predict.threshold` on the positive class (two classes) or the most probable class. `agreement` is the
fraction of models whose own decision is the ensemble's. With `--explain DIR`, each image's Grad-CAM heatmap
(averaged over the models) is written over its padded model input as a PNG in DIR.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from stages.classes import decide, prob_column
from stages.errors import DataError, UserError, user_errors
from stages.explain import ensemble_gradcam, explained_classes, overlay, overlay_names
from stages.files import atomic_path, write_text_atomic
from stages.imageops import IMAGE_EXTENSIONS, RGB, composite_on_background, list_images, prepare_input
from stages.models import Normalisation, build_model
from stages.normalise import BadImage, inspect_image
from stages.params import load_params
from stages.train import normalise, select_device

BATCH = 32
DEFAULT_THRESHOLD = 0.5  # for two classes, the same call as the most probable class
BAR_WIDTH = 30
# What the preprocessing and the output columns depend on: every fold model must have been trained with the same.
SHARED_KEYS = ("classes", "img_size", "background", "mean", "std")
FOLD_DIR = re.compile(r"fold_(\d+)")


@dataclass
class Ensemble:
    models: list[nn.Module]
    paths: list[Path]
    names: list[str]
    classes: list[str]
    img_size: int
    background: RGB
    normalisation: Normalisation
    device: torch.device


def find_checkpoints(models_dir: Path) -> list[Path]:
    """Every `fold_<k>/model.pt` under models_dir, in fold order (fold_10 after fold_2)."""
    found = [p for p in Path(models_dir).glob("fold_*/model.pt") if FOLD_DIR.fullmatch(p.parent.name)]
    if not found:
        raise UserError(f"no trained models found (no {models_dir}/fold_*/model.pt); run the pipeline first "
                        "(`dvc repro` or `snakemake`), or point --models at a folder holding fold_*/model.pt.")
    return sorted(found, key=lambda p: int(FOLD_DIR.fullmatch(p.parent.name).group(1)))


FINAL_DIR = "final"  # the `final` stage's model: <train dir>/final/model.pt


def chosen_checkpoints(models_dir: Path, final: list[str]) -> list[Path]:
    """The models that predict and export use: the final model when params `predict.final` is [all], else the folds."""
    if not final:
        return find_checkpoints(models_dir)
    path = Path(models_dir) / FINAL_DIR / "model.pt"
    if not path.is_file():
        raise UserError(f"predict.final is [all] but {path} does not exist; run the pipeline (`dvc repro` or "
                        "`snakemake`) to train the final model, or set predict.final to [] to use the fold models.")
    return [path]


def load_ensemble(paths: Sequence[Path], device: torch.device | None = None) -> Ensemble:
    """The models saved at `paths` (any subset of folds), ready for inference; their settings must agree."""
    if not paths:
        raise UserError("no model checkpoints given.")
    device = device or torch.device("cpu")
    models, names, shared = [], [], None
    for path in paths:
        try:
            # weights_only: a checkpoint is data, never code to run.
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise DataError(f"{path}: cannot load model checkpoint ({type(err).__name__}: {err}); "
                            "re-run training (`dvc repro`).") from None
        missing = [k for k in ("model", "state_dict", *SHARED_KEYS) if k not in checkpoint]
        if missing:
            raise DataError(f"{path}: checkpoint lacks {missing}; it was not written by this pipeline's "
                            "train stage; re-run training (`dvc repro`).")
        settings = {k: checkpoint[k] for k in SHARED_KEYS}
        if shared is None:
            shared = settings
        elif settings != shared:
            differ = [k for k in SHARED_KEYS if settings[k] != shared[k]]
            raise DataError(f"{path} was trained with other {', '.join(differ)} than {paths[0]} "
                            f"({[settings[k] for k in differ]} vs {[shared[k] for k in differ]}); the fold models "
                            "come from different runs: re-run the pipeline so they match.")
        # pretrained=False: no ImageNet weights to load, the state dict overwrites every parameter anyway.
        model = build_model(checkpoint["model"], len(checkpoint["classes"]), False, checkpoint["img_size"]).model
        try:
            model.load_state_dict(checkpoint["state_dict"])
        except RuntimeError as err:
            raise DataError(f"{path}: weights do not fit model {checkpoint['model']!r} ({err}); "
                            "re-run training (`dvc repro`).") from None
        models.append(model.to(device).eval())
        names.append(checkpoint["model"])
    assert shared is not None
    return Ensemble(models, [Path(p) for p in paths], names, list(shared["classes"]), int(shared["img_size"]),
                    tuple(int(c) for c in shared["background"]),
                    Normalisation(tuple(shared["mean"]), tuple(shared["std"])), device)


def collect_images(inputs: Sequence[Path]) -> list[Path]:
    """Image files named directly, plus the images in each folder named (listed as the pipeline lists them)."""
    images: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            images.extend(list_images(item))
        elif not item.exists():
            raise DataError(f"{item}: no such file or folder.")
        elif item.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(f"{item}: not an image (accepted: {' '.join(sorted(IMAGE_EXTENSIONS))}).")
        else:
            images.append(item)
    if not images:
        raise DataError("no images to predict; name image files or folders.")
    return images


def preprocess(path: Path, background: RGB, img_size: int) -> torch.Tensor:
    """uint8 3 x S x S model input of a raw file, through the same functions the composite and resize stages use."""
    try:
        # The normalise stage's full decode check: the same reasons for a broken file as in the pipeline.
        inspect_image(path)
        with Image.open(path) as img:
            pixels = np.asarray(prepare_input(composite_on_background(img, background), background, img_size))
    except BadImage as err:
        raise DataError(f"{path}: {err}; re-export or remove it.") from None
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read image ({err}); re-export or remove it.") from None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


@torch.inference_mode()
def model_probabilities(models: Sequence[nn.Module], inputs: torch.Tensor) -> torch.Tensor:
    """M x N x C softmax probabilities of each model, on the CPU."""
    return torch.stack([model(inputs).softmax(1) for model in models]).cpu()


def write_overlays(ensemble: Ensemble, batch: torch.Tensor, inputs: torch.Tensor, labels: list[str],
                   paths: Sequence[Path]) -> None:
    """One PNG per image at `paths`: the models' mean Grad-CAM of the explained class over the uint8 `batch`."""
    targets = [ensemble.classes.index(label) for label in explained_classes(labels, ensemble.classes)]
    heat = ensemble_gradcam(ensemble.models, inputs, targets).numpy()
    for image, heat_map, path in zip(batch.permute(0, 2, 3, 1).cpu().numpy(), heat, paths, strict=True):
        with atomic_path(path) as tmp:
            overlay(image, heat_map).save(tmp, format="PNG")


def predict(ensemble: Ensemble, paths: Sequence[Path], batch_size: int = BATCH,
            progress: Callable[[int, int], None] | None = None, *, threshold: float = DEFAULT_THRESHOLD,
            explain_dir: Path | None = None) -> pd.DataFrame:
    """One row per path: `file`, `predicted`, `prob_<class>` (mean of the models' softmax), `agreement`.

    With `explain_dir`, each image's heatmap overlay is written there and its path is in a `heatmap` column.
    """
    heatmaps = [Path(explain_dir) / name for name in overlay_names(paths)] if explain_dir is not None else []
    probabilities, predicted, agreement = [], [], []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        batch = torch.stack([preprocess(p, ensemble.background, ensemble.img_size) for p in chunk])
        # Exactly as training evaluates: uint8 -> float in [0, 1] -> the backbone's normalisation.
        inputs = normalise(batch.to(ensemble.device).float() / 255, ensemble.normalisation)
        per_model = model_probabilities(ensemble.models, inputs)
        mean = per_model.mean(0)
        labels = decide(mean.numpy(), ensemble.classes, threshold)
        votes = np.array([decide(p.numpy(), ensemble.classes, threshold) for p in per_model])  # M x N
        probabilities.append(mean)
        predicted.extend(labels)
        agreement.append((votes == np.array(labels)).mean(0))
        if heatmaps:
            write_overlays(ensemble, batch, inputs, labels, heatmaps[start : start + batch_size])
        if progress is not None:
            progress(start + len(chunk), len(paths))
    probs = torch.cat(probabilities).numpy()
    table = pd.DataFrame({"file": [str(p) for p in paths], "predicted": predicted})
    for i, label in enumerate(ensemble.classes):
        table[prob_column(label)] = probs[:, i].astype(float)
    table["agreement"] = np.concatenate(agreement).astype(float)
    if heatmaps:
        table["heatmap"] = [str(p) for p in heatmaps]
    return table


def check_threshold(threshold: float) -> float:
    """--threshold as given, if the positive class can be both predicted and not (params.schema.json's range)."""
    if not 0 < threshold < 1:  # also refuses NaN
        raise UserError(f"--threshold must be between 0 and 1 (exclusive), got {threshold}; the positive class is "
                        "predicted when its probability reaches it, e.g. --threshold 0.3 for more recall.")
    return threshold


def check_explain_dir(explain_dir: Path, images: Sequence[Path]) -> None:
    """Overlays are named after the inputs: writing them beside the inputs could overwrite a photo."""
    inputs = {p.resolve().parent for p in images}
    if explain_dir.resolve() in inputs:
        raise UserError(f"--explain {explain_dir} is a folder of input images, whose files the heatmap PNGs could "
                        "overwrite; choose another folder (it is created if needed).")


def progress_bar(stream: TextIO) -> Callable[[int, int], None]:
    """Progress on `stream`: one redrawn bar on a terminal, else a plain line per tenth done (logs stay short)."""
    terminal = stream.isatty()
    shown = -1

    def report(done: int, total: int) -> None:
        nonlocal shown
        if terminal:
            filled = BAR_WIDTH * done // total
            end = "\n" if done == total else ""
            stream.write(f"\rpredict: [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total} images{end}")
        elif 10 * done // total != shown:
            shown = 10 * done // total
            stream.write(f"predict: {done}/{total} images\n")
        stream.flush()

    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("inputs", type=Path, nargs="+", help="raw image files and/or flat folders of them")
    parser.add_argument("--models", type=Path, default=Path("results/train"),
                        help="folder holding fold_*/model.pt and, with predict.final: [all], final/model.pt "
                             "(default: results/train)")
    parser.add_argument("--out", type=Path, help="also write the predictions to this CSV")
    parser.add_argument("--threshold", type=float,
                        help="two classes: predict the positive class from this probability on "
                             "(default: predict.threshold in params.yaml)")
    parser.add_argument("--explain", type=Path, metavar="DIR",
                        help="write a Grad-CAM heatmap PNG per image into DIR (adds a `heatmap` column)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--batch-size", type=int, default=BATCH)
    args = parser.parse_args()

    with user_errors():
        if args.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {args.batch_size}.")
        params = load_params()["predict"]
        threshold = params["threshold"] if args.threshold is None else check_threshold(args.threshold)
        images = collect_images(args.inputs)  # before loading models: a typo fails at once
        if args.explain is not None:
            check_explain_dir(args.explain, images)
        ensemble = load_ensemble(chosen_checkpoints(args.models, params["final"]), select_device(args.device))
        which = "the final model" if params["final"] else f"an ensemble of {len(ensemble.models)} fold models"
        print(f"predict: {len(images)} images, {which} ({', '.join(sorted(set(ensemble.names)))}) on "
              f"{ensemble.device}, threshold {threshold}", file=sys.stderr, flush=True)
        table = predict(ensemble, images, args.batch_size, progress_bar(sys.stderr), threshold=threshold,
                        explain_dir=args.explain).round(6)
        if args.out is not None:
            write_text_atomic(args.out, table.to_csv(index=False))
    print(table.to_string(index=False))
    if args.out is not None:
        print(f"predict: wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
