"""Export the chosen model (fold ensemble or final model) as TorchScript and ONNX, each checked against PyTorch.

Both files take what data/processed/images holds, as float32 N x 3 x S x S RGB in [0, 1] (composited, padded
and resized, divided by 255), apply the backbone's normalisation, run every model and return the mean of
their softmax, N x C. Before anything is written both are checked against the PyTorch models on processed
images; a larger difference than TOLERANCE stops the stage with nothing written.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from PIL import Image
from torch import nn

from burrscope.errors import DataError, UserError
from burrscope.files import atomic_dir, sha256_file, write_text_atomic
from burrscope.inference.ensemble import Ensemble
from burrscope.models.factory import standardise
from burrscope.models.symmetries import mean_softmax
from burrscope.tables import EXPORT_SUMMARY, ONNX, TORCHSCRIPT, read_table

# Runtimes reorder the same float32 arithmetic: for 5 EfficientNet-Lite0 at 224 px ONNX Runtime differs by 3e-6,
# TorchScript by 0. 1e-4 is far above that and far below any difference that could move a decision.
TOLERANCE = 1e-4
PARITY_IMAGES = 16
# torch.export treats a dimension of size 0 or 1 as fixed, so the example batch must be larger to stay dynamic.
EXAMPLE_BATCH = 2
INPUT, OUTPUT = "image", "probabilities"
UNREPRODUCIBLE_RECORDS = (".debug_pkl", "/.data/serialization_id")
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can hold, as torch's own archives use
STACK_TRACE = "pkg.torch.onnx.stack_trace"


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


def parity_images(folds_csv: Path, images_dir: Path, img_size: int, limit: int = PARITY_IMAGES) -> torch.Tensor:
    """Up to `limit` processed images listed in folds_csv, as float32 N x 3 x S x S in [0, 1]."""
    files = read_table(folds_csv, ["file"])["file"].head(limit)
    if files.empty:
        raise DataError(f"{folds_csv} lists no images to check the export on; re-run the pipeline.")
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


def reproducible_archive(archive: bytes) -> bytes:
    """A TorchScript archive without what differs between two saves of the same model: the debug records
    (`*.debug_pkl`: Python stack traces that name this checkout's and this venv's files; torch.jit.load does without
    them) and `.data/serialization_id`, which hashes them. The rest is copied in order, stored, dated 1980."""
    source, rebuilt = zipfile.ZipFile(io.BytesIO(archive)), io.BytesIO()
    with zipfile.ZipFile(rebuilt, "w", zipfile.ZIP_STORED) as target:
        for record in source.infolist():
            if not record.filename.endswith(UNREPRODUCIBLE_RECORDS):
                target.writestr(zipfile.ZipInfo(record.filename, ZIP_EPOCH), source.read(record))
    return rebuilt.getvalue()


def export_torchscript(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        # Mean and std are constants by design; TorchScript is deprecated but still what torch.jit.load serves.
        warnings.filterwarnings("ignore", "torch.tensor results are registered as constants")
        warnings.filterwarnings("ignore", r"`torch\.jit\.trace(_method)?` is deprecated")
        warnings.filterwarnings("ignore", r"`torch\.jit\.save` is deprecated")
        # check_trace re-traces and compares graphs, 20 times slower than tracing; check_parity compares outputs.
        archive = io.BytesIO()
        torch.jit.save(torch.jit.trace(module, example, check_trace=False), archive)
    path.write_bytes(reproducible_archive(archive.getvalue()))


def without_stack_traces(model: onnx.ModelProto) -> onnx.ModelProto:
    """The ONNX model without the Python stack trace the exporter records on each node: it names this checkout's
    files, so the same model exported from two clones would differ."""
    for node in [*model.graph.node, *(node for function in model.functions for node in function.node)]:
        kept = [entry for entry in node.metadata_props if entry.key != STACK_TRACE]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    return model


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    # The torch.export-based exporter (needs onnxscript): the TorchScript-based one is deprecated since 2.9.
    program = torch.onnx.export(
        module,
        (example,),
        dynamo=True,
        verbose=False,
        input_names=[INPUT],
        output_names=[OUTPUT],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
    )
    # One file with the weights inside (the 2 GB protobuf limit is far off), serialised field by field in order.
    path.write_bytes(without_stack_traces(program.model_proto).SerializeToString(deterministic=True))


def load_torchscript(path: Path | str) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.load` is deprecated")
        return torch.jit.load(str(path), map_location="cpu").eval()


@torch.inference_mode()
def run_torchscript(path: Path, images: torch.Tensor) -> np.ndarray:
    return load_torchscript(path)(images).numpy()


def run_onnx(path: Path, images: torch.Tensor) -> np.ndarray:
    import onnxruntime  # only the parity check runs ONNX

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT], {INPUT: images.numpy()})[0]


def check_parity(name: str, got: np.ndarray, expected: np.ndarray) -> float:
    """Max abs difference of an exported file's probabilities from the PyTorch module's; refuses above TOLERANCE."""
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


def write_exports(
    ensemble: Ensemble, images: torch.Tensor, threshold: float, out_dir: Path
) -> tuple[dict[str, Any], dict[str, float]]:
    """model.ts, model.onnx and export.json in out_dir, all or nothing: nothing is written if parity fails; the
    summary written, and each file's largest difference from PyTorch."""
    module = Probabilities(ensemble).eval()
    with torch.inference_mode():
        expected = module(images).numpy()
    example = torch.rand(EXAMPLE_BATCH, *images.shape[1:], generator=torch.Generator().manual_seed(0))
    with atomic_dir(out_dir) as tmp:
        # TorchScript is checked before the ONNX export, which takes far longer: a refusal comes early.
        export_torchscript(module, example, tmp / TORCHSCRIPT)
        differences = {TORCHSCRIPT: check_parity(TORCHSCRIPT, run_torchscript(tmp / TORCHSCRIPT, images), expected)}
        export_onnx(module, example, tmp / ONNX)
        differences[ONNX] = check_parity(ONNX, run_onnx(tmp / ONNX, images), expected)
        summary = describe(ensemble, threshold, len(images), tmp)
        write_text_atomic(tmp / EXPORT_SUMMARY, json.dumps(summary, indent=2) + "\n")
    return summary, differences
