"""Grad-CAM heatmaps: where in the padded model input a network looks when it scores a class.

Grad-CAM (Selvaraju et al., 2017) weights each channel of the last convolutional feature map by the mean
gradient of the class score over it, keeps the positive part of the weighted sum and scales it to [0, 1].
For two classes the positive class ("1", burr) is explained whatever was predicted, so a heatmap always
shows where the network looks for burrs; for more classes, the predicted class.

Scaled to its own peak, the map of a part the model is sure has no burr (P(burr) 0.002) is as red as that of
a burr it is sure of: the scaling hides how much evidence there was. So the overlays the explain stage writes
show the map times the probability of the class it explains (`confidence_weighted`): where the model saw
little of the class, the photo shows through almost unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from burrscope.classes import prob_column
from burrscope.data.naming import png_names
from burrscope.errors import DataError, UserError
from burrscope.files import atomic_dir, atomic_path
from burrscope.inference.ensemble import load_ensemble
from burrscope.models.factory import Normalisation, standardise
from burrscope.models.tensors import load_images
from burrscope.tables import HEATMAPS, MODEL, PREDICTION_COLUMNS, PREDICTIONS, RERUN, read_table

EXPLAIN_BATCH = 16  # the backward pass keeps every activation: bound the memory per step
COLOUR_MAP = "jet"
MAX_ALPHA = 0.6  # weight of the colour where the heat is 1; where it is 0 the photo shows unchanged
# Class name of the architecture -> its last feature map, for the backbones stages.models builds.
# EfficientNet's head activation (`_swish`) is one module shared with the stem, so its hook would fire twice:
# take the batch norm before it. A model of that class name without the attribute falls back (timm's EfficientNet).
KNOWN_LAYERS = {"EfficientNet": "_bn1", "ResNet": "layer4", "MobileNetV2": "features"}


def target_layer(model: nn.Module) -> nn.Module:
    """The module whose output is the last convolutional feature map: known backbones by name, else the last Conv2d."""
    attribute = KNOWN_LAYERS.get(type(model).__name__)
    if attribute is not None and isinstance(getattr(model, attribute, None), nn.Module):
        return getattr(model, attribute)
    convolutions = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convolutions:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer: Grad-CAM needs a convolutional feature map.")
    return convolutions[-1]


def gradcam(model: nn.Module, inputs: torch.Tensor, class_indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """N x H x W maps on the CPU, each scaled to [0, 1], of standardised N x 3 x H x W `inputs`, one class per image.

    The model is run in eval mode (its mode is restored after), so batch norm statistics never move; only the
    feature map's gradient is computed, so no parameter gets a `.grad`.
    """
    captured: list[torch.Tensor] = []
    handle = target_layer(model).register_forward_hook(lambda module, args, output: captured.append(output))
    was_training = model.training
    model.eval()
    try:
        # A caller inside inference_mode or no_grad still gets gradients; the fresh leaf changes nothing in the model.
        with torch.inference_mode(False), torch.enable_grad():
            leaf = inputs.detach().clone().requires_grad_(True)
            logits = model(leaf)
            targets = torch.as_tensor(class_indices, device=logits.device).view(-1, 1)
            (gradient,) = torch.autograd.grad(logits.gather(1, targets).sum(), captured[-1])
    finally:
        handle.remove()
        model.train(was_training)
    activation = captured[-1].detach()
    cam = (gradient.mean(dim=(2, 3), keepdim=True) * activation).sum(1, keepdim=True).relu()
    cam = nn.functional.interpolate(cam, size=inputs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    low, high = cam.amin(dim=(1, 2), keepdim=True), cam.amax(dim=(1, 2), keepdim=True)
    return ((cam - low) / (high - low).clamp_min(1e-12)).cpu()  # a flat map (no evidence anywhere) stays 0


def ensemble_gradcam(
    models: Sequence[nn.Module], inputs: torch.Tensor, class_indices: Sequence[int] | torch.Tensor
) -> torch.Tensor:
    """Mean of the models' Grad-CAM maps (each in [0, 1]), as predict averages the models' probabilities."""
    return torch.stack([gradcam(model, inputs, class_indices) for model in models]).mean(0)


def confidence_weighted(heat: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """N x H x W maps (each scaled to its own peak) times the N probabilities of the classes they explain.

    Multiplying keeps each map's shape and peak where they were and puts the maps on one scale, the model's own
    confidence, so a faint map means the class was hardly seen anywhere.
    """
    return heat * np.asarray(probabilities, dtype=heat.dtype)[:, None, None]


def explained_classes(predicted: Sequence[str], classes: Sequence[str]) -> list[str]:
    """The class each heatmap explains: the positive (last) one for two classes, else the predicted one."""
    if len(classes) == 2:
        return [classes[-1]] * len(predicted)
    return [str(label) for label in predicted]


def overlay(image: np.ndarray, heat: np.ndarray) -> Image.Image:
    """`heat` (H x W, in [0, 1]) in colour over `image` (uint8 H x W x 3), more opaque where it is hotter."""
    if image.shape[:2] != heat.shape:
        raise ValueError(f"heatmap of shape {heat.shape} does not fit an image of shape {image.shape}")
    from matplotlib import colormaps  # only the colour table: no plotting backend is loaded

    heat = np.clip(heat, 0, 1)[..., None]
    colour = colormaps[COLOUR_MAP](heat[..., 0])[..., :3]
    blended = image / 255 * (1 - MAX_ALPHA * heat) + colour * MAX_ALPHA * heat
    return Image.fromarray(np.round(blended * 255).astype(np.uint8), "RGB")


def margin(table: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """How far each row's decision was from going the other way: its top probability minus the runner-up's."""
    probs = np.sort(table[[prob_column(label) for label in classes]].to_numpy(dtype=float), axis=1)
    return probs[:, -1] - probs[:, -2]


def chosen_rows(table: pd.DataFrame, correct: int, classes: list[str]) -> list[int]:
    """Positions, in order, of every misclassified row plus the `correct` correctly classified ones that teach most:
    with two classes positives (burrs) first, where a heatmap has something to show; within that, the lowest margin
    first, the images the model nearly got wrong. A confident negative's heatmap is nearly blank."""
    right = (table["label"].astype(str) == table["predicted"].astype(str)).to_numpy()
    positive = (table["label"].astype(str) == classes[-1]).to_numpy() if len(classes) == 2 else np.zeros(len(table))
    candidates = np.flatnonzero(right)
    order = np.lexsort((candidates, margin(table, classes)[candidates], ~positive[candidates].astype(bool)))
    return sorted([*np.flatnonzero(~right).tolist(), *candidates[order][:correct].tolist()])


def explain_fold(
    model: nn.Module,
    images: torch.Tensor,
    normalisation: Normalisation,
    table: pd.DataFrame,
    *,
    classes: list[str],
    correct: int,
    out_dir: Path,
) -> pd.DataFrame:
    """Heatmaps of a fold's held-out images: every misclassified one plus `correct` correct ones (chosen_rows).

    `images` is the fold's uint8 N x 3 x S x S tensor, `table` its predictions table (same row order).
    Writes one overlay PNG per explained image, its map weighted by the table's probability of the explained
    class (`confidence_weighted`), and `heatmaps.csv` (file, label, predicted, prob_<class> for every class,
    explained, correct, heatmap) into `out_dir`, all at once: a killed run leaves no partial folder.
    """
    if len(table) != len(images):
        raise ValueError(f"predictions table has {len(table)} rows but {len(images)} images were given")
    rows = chosen_rows(table, correct, classes)
    chosen = table.iloc[rows].reset_index(drop=True)
    explained = explained_classes(list(chosen["predicted"].astype(str)), classes)
    targets = [classes.index(label) for label in explained]
    device = next(model.parameters()).device
    heat = [
        gradcam(
            model,
            standardise(images[rows[i : i + EXPLAIN_BATCH]].to(device).float() / 255, normalisation),
            targets[i : i + EXPLAIN_BATCH],
        )
        for i in range(0, len(rows), EXPLAIN_BATCH)
    ]
    heat_maps = torch.cat(heat).numpy() if heat else np.empty((0, *images.shape[-2:]))
    result = chosen[["file", "label", "predicted", *map(prob_column, classes)]].copy()
    confidence = [float(result[prob_column(label)].iloc[i]) for i, label in enumerate(explained)]
    heat_maps = confidence_weighted(heat_maps, np.array(confidence))
    result["explained"] = explained
    result["correct"] = chosen["label"].astype(str) == chosen["predicted"].astype(str)
    result["heatmap"] = png_names(list(chosen["file"]))
    pixels = images[rows].permute(0, 2, 3, 1).cpu().numpy()
    with atomic_dir(out_dir) as tmp:
        for name, image, heat_map in zip(result["heatmap"], pixels, heat_maps, strict=True):
            overlay(image, heat_map).save(tmp / name)
        result.to_csv(tmp / HEATMAPS, index=False)
    return result


def explain_folds(images_dir: Path, train_dir: Path, folds: int, *, correct: int, out_dir: Path) -> list[pd.DataFrame]:
    """explain_fold for every fold's model, train_dir/fold_<k>/model.pt, on its held-out images (the rows of its
    predictions.csv, read from `images_dir`), into out_dir/fold_<k>; each fold's table, in fold order. `out_dir` is
    written all at once: a killed run leaves no partial folder."""
    explained = []
    with atomic_dir(out_dir) as tmp:
        for fold in range(folds):
            fold_dir = train_dir / f"fold_{fold}"
            ensemble = load_ensemble([fold_dir / MODEL])
            probs = [prob_column(label) for label in ensemble.classes]
            table = read_table(fold_dir / PREDICTIONS, [*PREDICTION_COLUMNS, *probs], numeric=["fold", *probs])
            if table.empty:
                raise DataError(f"{fold_dir / PREDICTIONS} holds no held-out image; {RERUN}.")
            images = load_images(images_dir, list(table["file"]))
            explained.append(
                explain_fold(
                    ensemble.models[0],
                    images,
                    ensemble.normalisation,
                    table,
                    classes=ensemble.classes,
                    correct=correct,
                    out_dir=tmp / f"fold_{fold}",
                )
            )
    return explained


def overlay_writer(
    models: Sequence[nn.Module], classes: list[str], paths: Sequence[Path]
) -> Callable[[int, torch.Tensor, torch.Tensor, list[str]], None]:
    """For inference.predict's `on_batch`: writes each image's overlay of the models' mean Grad-CAM (of the class
    `explained_classes` picks) over its uint8 model input, to the path at its index in `paths`."""

    def write(start: int, images: torch.Tensor, inputs: torch.Tensor, labels: list[str]) -> None:
        targets = [classes.index(label) for label in explained_classes(labels, classes)]
        heat = ensemble_gradcam(models, inputs, targets).numpy()
        pixels = images.permute(0, 2, 3, 1).cpu().numpy()
        for image, heat_map, path in zip(pixels, heat, paths[start : start + len(images)], strict=True):
            with atomic_path(path) as tmp:
                overlay(image, heat_map).save(tmp, format="PNG")

    return write


def explain_paths(explain_dir: Path, images: Sequence[Path]) -> list[Path]:
    """Where predict writes each image's overlay: a distinct PNG name per input, never beside the inputs
    (an input named like an overlay would be overwritten)."""
    if explain_dir.resolve() in {path.resolve().parent for path in images}:
        raise UserError(
            f"--explain {explain_dir} is a folder of input images, whose files the heatmap PNGs could "
            "overwrite; choose another folder (it is created if needed)."
        )
    return [explain_dir / name for name in png_names(images)]
