"""Inference with trained models: the fold ensemble (or final model), and exactly the training preprocessing.

Each raw image goes through the pipeline's own functions (composite onto the background, pad to a square,
resize) with the settings stored in the checkpoints, then each backbone's normalisation; the models' softmax
probabilities are averaged. Labels are decided by `predict.threshold` on the positive class (two classes) or
the most probable class. Training is never imported: a checkpoint is data, read with weights_only.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from burrscope.classes import decide, prob_column
from burrscope.data.folders import IMAGE_EXTENSIONS, list_images
from burrscope.data.images import RGB, BadImage, composite_on_background, inspect_image, prepare_input
from burrscope.errors import DataError, UserError
from burrscope.models.factory import Normalisation, build_model, standardise
from burrscope.models.symmetries import View, mean_softmax, tta_views
from burrscope.tables import FINAL_MODEL_DIR, MODEL

BATCH = 32
DEFAULT_THRESHOLD = 0.5  # for two classes, the same call as the most probable class
# What the preprocessing and the output columns depend on: every fold model must have been trained with the same.
SHARED_KEYS = ("classes", "img_size", "background", "mean", "std", "tta")
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
    views: list[View]  # each model's softmax is averaged over these (test-time augmentation: all 8)

    def description(self, final: bool) -> str:
        """What predicts, for a person: `final` if it is the final model (predict.final), else the folds'."""
        which = "the final model" if final else f"an ensemble of {len(self.models)} fold models"
        return f"{which} ({', '.join(sorted(set(self.names)))}) on {self.device}"


def find_checkpoints(models_dir: Path) -> list[Path]:
    """Every `fold_<k>/model.pt` under models_dir, in fold order (fold_10 after fold_2)."""
    found = [p for p in Path(models_dir).glob(f"fold_*/{MODEL}") if FOLD_DIR.fullmatch(p.parent.name)]
    if not found:
        raise UserError(
            f"no trained models found (no {models_dir}/fold_*/model.pt); run the pipeline first "
            "(`dvc repro` or `snakemake`), or point --models at a folder holding fold_*/model.pt."
        )
    return sorted(found, key=lambda p: int(FOLD_DIR.fullmatch(p.parent.name).group(1)))


def chosen_checkpoints(models_dir: Path, final: list[str]) -> list[Path]:
    """The models that predict and export use: the final model when params `predict.final` is [all], else the folds."""
    if not final:
        return find_checkpoints(models_dir)
    path = Path(models_dir) / FINAL_MODEL_DIR / MODEL
    if not path.is_file():
        raise UserError(
            f"predict.final is [all] but {path} does not exist; run the pipeline (`dvc repro` or "
            "`snakemake`) to train the final model, or set predict.final to [] to use the fold models."
        )
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
            raise DataError(
                f"{path}: cannot load model checkpoint ({type(err).__name__}: {err}); re-run training (`dvc repro`)."
            ) from None
        # Checkpoints from before test-time augmentation have no `tta`: they were evaluated without it.
        missing = [k for k in ("model", "state_dict", *SHARED_KEYS) if k not in checkpoint and k != "tta"]
        if missing:
            raise DataError(
                f"{path}: checkpoint lacks {missing}; it was not written by this pipeline's "
                "train stage; re-run training (`dvc repro`)."
            )
        settings = {k: checkpoint.get(k, False) if k == "tta" else checkpoint[k] for k in SHARED_KEYS}
        if shared is None:
            shared = settings
        elif settings != shared:
            differ = [k for k in SHARED_KEYS if settings[k] != shared[k]]
            raise DataError(
                f"{path} was trained with other {', '.join(differ)} than {paths[0]} "
                f"({[settings[k] for k in differ]} vs {[shared[k] for k in differ]}); the fold models "
                "come from different runs: re-run the pipeline so they match."
            )
        # pretrained=False: no ImageNet weights to load, the state dict overwrites every parameter anyway.
        model = build_model(checkpoint["model"], len(checkpoint["classes"]), False, checkpoint["img_size"]).model
        try:
            model.load_state_dict(checkpoint["state_dict"])
        except RuntimeError as err:
            raise DataError(
                f"{path}: weights do not fit model {checkpoint['model']!r} ({err}); re-run training (`dvc repro`)."
            ) from None
        models.append(model.to(device).eval())
        names.append(checkpoint["model"])
    assert shared is not None
    return Ensemble(
        models,
        [Path(p) for p in paths],
        names,
        list(shared["classes"]),
        int(shared["img_size"]),
        tuple(int(c) for c in shared["background"]),
        Normalisation(tuple(shared["mean"]), tuple(shared["std"])),
        device,
        tta_views(bool(shared["tta"])),
    )


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
def model_probabilities(models: Sequence[nn.Module], inputs: torch.Tensor, variants: list[View]) -> torch.Tensor:
    """M x N x C softmax probabilities of each model (averaged over the variants of each input), on the CPU."""
    return torch.stack([mean_softmax(model, inputs, variants) for model in models]).cpu()


def predict(
    ensemble: Ensemble,
    paths: Sequence[Path],
    batch_size: int = BATCH,
    progress: Callable[[int, int], None] | None = None,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    on_batch: Callable[[int, torch.Tensor, torch.Tensor, list[str]], None] | None = None,
) -> pd.DataFrame:
    """One row per path: `file`, `predicted`, `prob_<class>` (mean of the models' softmax), `agreement` (the share of
    models whose own decision is the ensemble's) and `spread` (the standard deviation over the models of their
    probability of the predicted class: 0 for one model, up to 0.5).

    `on_batch(start, images, inputs, labels)` sees every batch: its offset in `paths`, the uint8 images, the
    model inputs and the decided labels (the predict command writes its heatmaps from them).
    """
    probabilities, predicted, agreement, spread = [], [], [], []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        batch = torch.stack([preprocess(p, ensemble.background, ensemble.img_size) for p in chunk])
        # Exactly as training evaluates: uint8 -> float in [0, 1] -> the backbone's normalisation.
        inputs = standardise(batch.to(ensemble.device).float() / 255, ensemble.normalisation)
        per_model = model_probabilities(ensemble.models, inputs, ensemble.views)
        mean = per_model.mean(0)
        labels = decide(mean.numpy(), ensemble.classes, threshold)
        votes = np.array([decide(p.numpy(), ensemble.classes, threshold) for p in per_model])  # M x N
        probabilities.append(mean)
        predicted.extend(labels)
        agreement.append((votes == np.array(labels)).mean(0))
        chosen = torch.tensor([ensemble.classes.index(label) for label in labels])
        spread.append(per_model[:, torch.arange(len(labels)), chosen].std(0, unbiased=False).numpy())
        if on_batch is not None:
            on_batch(start, batch, inputs, labels)
        if progress is not None:
            progress(start + len(chunk), len(paths))
    probs = torch.cat(probabilities).numpy()
    table = pd.DataFrame({"file": [str(p) for p in paths], "predicted": predicted})
    for i, label in enumerate(ensemble.classes):
        table[prob_column(label)] = probs[:, i].astype(float)
    table["agreement"] = np.concatenate(agreement).astype(float)
    table["spread"] = np.concatenate(spread).astype(float)
    return table


def valid_threshold(text: str) -> float:
    """--threshold, if the positive class can be both predicted and not (params.schema.json's range)."""
    threshold = float(text)
    if not 0 < threshold < 1:  # also refuses NaN
        raise argparse.ArgumentTypeError(
            f"must be between 0 and 1 (exclusive), not {text}; the positive class is "
            "predicted when its probability reaches it, e.g. 0.3 for more recall"
        )
    return threshold
