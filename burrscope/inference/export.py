"""Export the chosen model (fold ensemble or final model) as TorchScript and ONNX, each checked against PyTorch.

Both files take what data/processed/images holds, as float32 N x 3 x S x S RGB in [0, 1] (composited, padded
and resized, divided by 255), apply the backbone's normalisation, run every model and return the mean of
their softmax, N x C. Before anything is written both are checked against the PyTorch models on processed
images; a larger difference than TOLERANCE stops the stage with nothing written.

The graphs are made from one model and laid out again for each (burrscope.inference.torchscript, .onnx_graph): a
template that depends on the model's structure, not its weights, cached between exports (.export_cache).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from PIL import Image
from torch import nn

from burrscope.errors import DataError, UserError
from burrscope.files import atomic_dir, sha256_file, write_text_atomic
from burrscope.inference import export_cache
from burrscope.inference.ensemble import Ensemble
from burrscope.inference.export_cache import Templates
from burrscope.inference.onnx_graph import TEMPLATE_PREFIX, check_template, compose_onnx, export_template, run_onnx
from burrscope.inference.torchscript import INPUT, OUTPUT, compose_torchscript, run_torchscript, trace_template
from burrscope.models.factory import standardise
from burrscope.models.symmetries import mean_softmax
from burrscope.tables import EXPORT_SUMMARY, ONNX, TORCHSCRIPT, read_table

# Runtimes reorder the same float32 arithmetic: for 5 EfficientNet-Lite0 at 224 px ONNX Runtime differs by 1e-7 to
# 3e-6, TorchScript by 2e-11 (from the reference, which runs channels last). 1e-4 is far above that and far below any
# difference that could move a decision.
TOLERANCE = 1e-4
# Parity is checked on one processed image of each class, at least two, in one batch. In eval mode an image's
# probabilities depend on that image alone (batch norm uses its running statistics; no layer mixes the images of a
# batch) and every image goes through the same operations: the graphs have no branch that an image could take or
# miss. More images would run the same arithmetic again, and the differences a runtime makes (rounding in other
# kernels, 1e-7 to 1e-6 here) show alike on every image. One per class covers each class's kind of output; a batch
# of two or more, never of the example's size, checks that the files neither mix the images of a batch nor kept the
# example's batch size. Each image costs views x models forward passes in PyTorch, TorchScript and ONNX Runtime:
# 16 images took 216 of the stage's 302 s.
PARITY_BATCH = 2
# The batch the templates are traced on. torch.export treats a dimension of size 0 or 1 as fixed, so it must be larger
# to stay dynamic; parity is then checked on another size.
EXAMPLE_BATCH = 3


class ExportError(UserError):
    """An exported file does not compute what the PyTorch models compute."""


class Probabilities(nn.Module):
    """The models' mean softmax of images in [0, 1], normalised as in training, over the ensemble's views."""

    def __init__(self, ensemble: Ensemble) -> None:
        super().__init__()
        self.models = nn.ModuleList(ensemble.models)
        self.normalisation = ensemble.normalisation
        self.views = ensemble.views

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        inputs = standardise(images, self.normalisation)
        return torch.stack([mean_softmax(model, inputs, self.views) for model in self.models]).mean(0)


def parity_images(folds_csv: Path, images_dir: Path, img_size: int, classes: list[str]) -> torch.Tensor:
    """The first processed image of each class in folds_csv, topped up with the next ones listed to PARITY_BATCH
    and to another number than EXAMPLE_BATCH, as float32 N x 3 x S x S in [0, 1]."""
    table = read_table(folds_csv, ["file", "label"])
    if table.empty:
        raise DataError(f"{folds_csv} lists no images to check the export on; re-run the pipeline.")
    firsts = table.drop_duplicates("label").set_index("label")["file"]
    files = [firsts[label] for label in classes if label in firsts.index]
    count = max(len(files), PARITY_BATCH)
    count += count == EXAMPLE_BATCH
    files += [name for name in table["file"] if name not in files][: count - len(files)]
    batch = []
    for name in files:
        path = images_dir / name
        try:
            with Image.open(path) as img:
                pixels = np.asarray(img.convert("RGB"))
        except OSError as err:
            raise DataError(f"{path}: cannot read processed image ({err}); re-run the pipeline.") from None
        if pixels.shape[:2] != (img_size, img_size):
            raise DataError(
                f"{path} is {pixels.shape[1]}x{pixels.shape[0]} px but the models take {img_size} px: "
                "the images and models come from different runs; re-run the pipeline."
            )
        batch.append(torch.from_numpy(pixels.copy()).permute(2, 0, 1))
    return torch.stack(batch).float() / 255


@torch.inference_mode()
def reference_probabilities(ensemble: Ensemble, images: torch.Tensor) -> np.ndarray:
    """What the exported files must compute, Probabilities of the PyTorch models, one image and one view at a time:
    the mean over the views of the models' probabilities under each view is the same mean, as an image's output
    depends on that image alone in eval mode. On copies of the models laid out channels last (the same arithmetic in
    the layout the CPU convolution kernels run fastest in) and in batches of one, whose layer outputs the allocator
    reuses instead of asking the kernel for fresh pages each time: half the time of one batch, here."""
    laid_out = [copy.deepcopy(model).to(memory_format=torch.channels_last) for model in ensemble.models]
    per_view = [Probabilities(dataclasses.replace(ensemble, models=laid_out, views=[view])) for view in ensemble.views]
    inputs = images.contiguous(memory_format=torch.channels_last)
    return torch.cat([torch.stack([view(image) for view in per_view]).mean(0) for image in inputs.split(1)]).numpy()


def check_parity(name: str, got: np.ndarray, expected: np.ndarray) -> float:
    """Max abs difference of an exported file's probabilities from the PyTorch module's; refuses above TOLERANCE."""
    if got.shape != expected.shape:
        raise ExportError(
            f"{name} returns {got.shape} probabilities for {len(expected)} processed images, the PyTorch models "
            f"{expected.shape}; nothing was written. This is an exporter problem: report it with the torch version "
            f"({torch.__version__}); meanwhile `python -m stages.predict` predicts with the checkpoints themselves."
        )
    difference = float(np.abs(got - expected).max())
    if not difference <= TOLERANCE:  # NaN fails too
        raise ExportError(
            f"{name} differs from the PyTorch models by {difference:.3g} on {len(expected)} processed "
            f"images (tolerance {TOLERANCE}); nothing was written. This is an exporter problem, not "
            f"your data: report it with the torch version ({torch.__version__}); meanwhile "
            "`python -m stages.predict` predicts with the checkpoints themselves."
        )
    return difference


def describe(ensemble: Ensemble, threshold: float, images: int, out_dir: Path) -> dict[str, Any]:
    """What export.json records: how to feed the files, what they hold, where they come from, how they were checked.

    The same models give the same record, byte for byte: the differences found by the check (they vary with the CPU
    that ran it, in the last bits) go to the run log and MLflow."""
    size = ensemble.img_size
    return {
        "classes": ensemble.classes,
        # decide(): with two classes the last is called when its probability reaches the threshold.
        "positive_class": ensemble.classes[-1] if len(ensemble.classes) == 2 else None,
        "threshold": threshold,
        "img_size": size,
        "background": list(ensemble.background),
        "normalisation": {
            "mean": list(ensemble.normalisation.mean),
            "std": list(ensemble.normalisation.std),
            "applied": "inside the exported model",
        },
        "input": {
            "name": INPUT,
            "dtype": "float32",
            "shape": ["batch", 3, size, size],
            "channels": "RGB",
            "range": [0, 1],
            "preprocessing": "composited onto `background`, padded to a square with it, "
            "resized (Lanczos) to img_size, divided by 255: what data/processed/images holds",
        },
        "output": {
            "name": OUTPUT,
            "dtype": "float32",
            "shape": ["batch", len(ensemble.classes)],
            "columns": ensemble.classes,
            "meaning": "mean softmax of the models",
        },
        "source_checkpoints": [
            {"path": str(p), "model": name, "sha256": sha256_file(p)}
            for p, name in zip(ensemble.paths, ensemble.names, strict=True)
        ],
        "files": {
            name: {"sha256": sha256_file(out_dir / name), "bytes": (out_dir / name).stat().st_size}
            for name in (TORCHSCRIPT, ONNX)
        },
        "parity": {"images": images, "tolerance": TOLERANCE, "checked": [TORCHSCRIPT, ONNX]},
    }


def member(ensemble: Ensemble) -> Probabilities:
    """One model's probabilities (the ensemble's first), from which the templates are made."""
    return Probabilities(dataclasses.replace(ensemble, models=ensemble.models[:1])).eval()


def build_templates(ensemble: Ensemble, image_shape: torch.Size) -> Templates:
    example = torch.rand(EXAMPLE_BATCH, *image_shape, generator=torch.Generator().manual_seed(0))
    return Templates(trace_template(member(ensemble), example), export_template(member(ensemble), example))


@contextlib.contextmanager
def one_thread_per_kernel() -> Iterator[None]:
    """torch's kernels on one thread each while inside: on a loaded 2-core machine the threads of one kernel wait
    on each other and run 2 to 4 times slower than one thread (measured); write_checked runs two at a time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def write_onnx(
    graph: onnx.ModelProto, weights: list[dict[str, torch.Tensor]], images: torch.Tensor, path: Path
) -> np.ndarray:
    path.write_bytes(compose_onnx(graph, weights))
    return run_onnx(path, images)


def write_checked(templates: Templates, ensemble: Ensemble, images: torch.Tensor, folder: Path) -> dict[str, float]:
    """model.ts and model.onnx in `folder`, made from the templates with the ensemble's weights, and each file's
    largest difference from the PyTorch models; raises ExportError above TOLERANCE (ValueError or RuntimeError if
    the templates do not take these weights)."""
    weights = [model.state_dict() for model in ensemble.models]
    graph = onnx.load_from_string(templates.onnx)
    for state in weights:
        check_template(graph, state)
    members = [{TEMPLATE_PREFIX + name: tensor for name, tensor in state.items()} for state in weights]
    # Two at a time, on a core each: the PyTorch models then the ONNX file beside the TorchScript file.
    with one_thread_per_kernel(), ThreadPoolExecutor(1) as beside:
        expected = beside.submit(reference_probabilities, ensemble, images)
        onnx_output = beside.submit(write_onnx, graph, weights, images, folder / ONNX)
        (folder / TORCHSCRIPT).write_bytes(compose_torchscript(templates.torchscript, members))
        torchscript_output = run_torchscript(folder / TORCHSCRIPT, images)
        differences = {TORCHSCRIPT: check_parity(TORCHSCRIPT, torchscript_output, expected.result())}
        differences[ONNX] = check_parity(ONNX, onnx_output.result(), expected.result())
    return differences


def alike(ensemble: Ensemble) -> None:
    """Refuse models of different architectures or weight shapes: the files lay out one model's graph for each."""
    shapes = [{name: tuple(tensor.shape) for name, tensor in model.state_dict().items()} for model in ensemble.models]
    if len(set(ensemble.names)) > 1 or any(shape != shapes[0] for shape in shapes):
        raise UserError(
            f"the models {[str(p) for p in ensemble.paths]} differ in architecture ({sorted(set(ensemble.names))}) "
            "or in the shapes of their weights; export takes models trained by one run of the pipeline."
        )


def write_exports(
    ensemble: Ensemble, images: torch.Tensor, threshold: float, out_dir: Path
) -> tuple[dict[str, Any], dict[str, float], str]:
    """model.ts, model.onnx and export.json in out_dir, all or nothing: nothing is written if parity fails; the
    summary written, each file's largest difference from PyTorch, and where the templates came from: `cached`,
    `built` (none cached), or why the cached ones were rebuilt."""
    alike(ensemble)
    facts = export_cache.structure(ensemble, EXAMPLE_BATCH)
    key = export_cache.template_key(facts)
    templates, found = export_cache.load(key)
    with atomic_dir(out_dir) as tmp:
        differences = None
        if templates is not None:
            try:
                differences = write_checked(templates, ensemble, images, tmp)
            except Exception as err:  # a cache entry is only a shortcut: build the templates again rather than fail
                found = f"rebuilt: the cached ones failed ({type(err).__name__}: {str(err)[:200]})"
                export_cache.discard(key)
        elif found != "none":
            found = f"rebuilt: the cached ones were {found}"
        if differences is None:
            templates = build_templates(ensemble, images.shape[1:])
            differences = write_checked(templates, ensemble, images, tmp)  # raises before anything is cached
            export_cache.store(key, templates, facts)
            found = "built" if found == "none" else found
        summary = describe(ensemble, threshold, len(images), tmp)
        write_text_atomic(tmp / EXPORT_SUMMARY, json.dumps(summary, indent=2) + "\n")
    return summary, differences, found
