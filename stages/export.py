"""Export the chosen model (fold ensemble or final model) as TorchScript and ONNX, and register it in MLflow.

Both files take what data/processed/images holds, as float32 N x 3 x S x S RGB in [0, 1] (composited, padded
and resized, divided by 255), apply the backbone's normalisation, run every model and return the mean of
their softmax, N x C. Before anything is written both are checked against the PyTorch models on processed
images; a larger difference than TOLERANCE stops the stage with nothing written. MLflow comes after the
files, as in training: a tracking failure is a warning recorded in export.json, never a lost export.

The registered MLflow model takes raw image file bytes instead (any format, mode and size) and applies the
training preprocessing itself: see RawImageClassifier.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import sys
import tempfile
import time
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from PIL import Image
from torch import nn

from stages import tracking
from stages.classes import decide, prob_column
from stages.errors import DataError, UserError, user_errors
from stages.files import atomic_dir, sha256_file, write_text_atomic
from stages.params import load_params
from stages.predict import BATCH, Ensemble, chosen_checkpoints, load_ensemble, preprocess
from stages.tables import read_table
from stages.train import normalise

# Runtimes reorder the same float32 arithmetic: for 5 EfficientNet-Lite0 at 224 px ONNX Runtime differs by 3e-6,
# TorchScript by 0. 1e-4 is far above that and far below any difference that could move a decision.
TOLERANCE = 1e-4
PARITY_IMAGES = 16
# torch.export treats a dimension of size 0 or 1 as fixed, so the example batch must be larger to stay dynamic.
EXAMPLE_BATCH = 2
EXAMPLE_PX = 64  # side of the small raw PNGs that serve as the MLflow input example
INPUT, OUTPUT = "image", "probabilities"
TORCHSCRIPT, ONNX, SUMMARY = "model.ts", "model.onnx", "export.json"
CODE_DIR = Path(__file__).resolve().parent  # the `stages` package, shipped with the MLflow model
# What RawImageClassifier and the stages code it runs import, pinned to this environment's versions. MLflow's own
# inference would load the model in a subprocess and still miss torch and list this repository as a package.
SERVING_PACKAGES = ("mlflow", "cloudpickle", "torch", "numpy", "pandas", "pillow", "anyascii", "pyyaml")


class ExportError(UserError):
    """An exported file does not compute what the PyTorch models compute."""


class Probabilities(nn.Module):
    """The models' mean softmax of images in [0, 1], normalised as in training."""

    def __init__(self, ensemble: Ensemble) -> None:
        super().__init__()
        self.models = nn.ModuleList(ensemble.models)
        self.normalisation = ensemble.normalisation

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        inputs = normalise(images, self.normalisation)
        return torch.stack([model(inputs).softmax(1) for model in self.models]).mean(0)


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
            raise DataError(f"{path} is {pixels.shape[1]}x{pixels.shape[0]} px but the models take {img_size} px: "
                            "the images and models come from different runs; re-run the pipeline.")
        batch.append(torch.from_numpy(pixels.copy()).permute(2, 0, 1))
    return torch.stack(batch).float() / 255


def export_torchscript(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        # Mean and std are constants by design; TorchScript is deprecated but still what torch.jit.load serves.
        warnings.filterwarnings("ignore", "torch.tensor results are registered as constants")
        warnings.filterwarnings("ignore", r"`torch\.jit\.trace(_method)?` is deprecated")
        # check_trace re-traces and compares graphs, 20 times slower than tracing; check_parity compares outputs.
        torch.jit.trace(module, example, check_trace=False).save(str(path))


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    # The torch.export-based exporter (needs onnxscript): the TorchScript-based one is deprecated since 2.9.
    # external_data=False keeps the weights inside the one file (the 2 GB protobuf limit is far off).
    torch.onnx.export(module, (example,), str(path), dynamo=True, external_data=False, verbose=False,
                      input_names=[INPUT], output_names=[OUTPUT],
                      dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))


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
        raise ExportError(f"{name} differs from the PyTorch models by {difference:.3g} on {len(expected)} processed "
                          f"images (tolerance {TOLERANCE}); nothing was written. This is an exporter problem, not "
                          f"your data: report it with the torch version ({torch.__version__}); meanwhile "
                          "`python -m stages.predict` predicts with the checkpoints themselves.")
    return difference


def describe(ensemble: Ensemble, threshold: float, parity: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """What export.json records: how to feed the files, what they hold, where they come from."""
    size = ensemble.img_size
    return {
        "classes": ensemble.classes,
        # decide(): with two classes the last is called when its probability reaches the threshold.
        "positive_class": ensemble.classes[-1] if len(ensemble.classes) == 2 else None,
        "threshold": threshold,
        "img_size": size,
        "background": list(ensemble.background),
        "normalisation": {"mean": list(ensemble.normalisation.mean), "std": list(ensemble.normalisation.std),
                          "applied": "inside the exported model"},
        "input": {"name": INPUT, "dtype": "float32", "shape": ["batch", 3, size, size], "channels": "RGB",
                  "range": [0, 1], "preprocessing": "composited onto `background`, padded to a square with it, "
                  "resized (Lanczos) to img_size, divided by 255: what data/processed/images holds"},
        "output": {"name": OUTPUT, "dtype": "float32", "shape": ["batch", len(ensemble.classes)],
                   "columns": ensemble.classes, "meaning": "mean softmax of the models"},
        "source_checkpoints": [{"path": str(p), "model": name, "sha256": sha256_file(p)}
                               for p, name in zip(ensemble.paths, ensemble.names, strict=True)],
        "files": {name: {"sha256": sha256_file(out_dir / name), "bytes": (out_dir / name).stat().st_size}
                  for name in (TORCHSCRIPT, ONNX)},
        "parity": parity,
    }


def write_exports(ensemble: Ensemble, images: torch.Tensor, threshold: float, out_dir: Path) -> dict[str, Any]:
    """model.ts, model.onnx and export.json in out_dir, all or nothing: nothing is written if parity fails."""
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
        parity = {"images": len(images), "tolerance": TOLERANCE, "max_abs_diff": differences}
        summary = describe(ensemble, threshold, parity, tmp)
        # Replaced once MLflow is done; "pending" stays only if the stage is killed in between.
        summary["mlflow"] = {"status": "pending"}
        write_text_atomic(tmp / SUMMARY, json.dumps(summary, indent=2) + "\n")
    return summary


def file_bytes(row: object, value: object) -> bytes:
    """An `image` cell as file bytes: bytes as they are, text as base64 (CSV input is not decoded by MLflow)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error:
            pass
    raise DataError(f"row {row}: column {INPUT!r} holds {type(value).__name__} {str(value)[:40]!r}, not an image "
                    "file's bytes; send the raw file bytes, base64-encoded in JSON or CSV.")


class RawImageClassifier(mlflow.pyfunc.PythonModel):
    """Raw image file bytes in (column `image`), the decided label and each class's probability out.

    Each image goes through the pipeline's own preprocessing (stages.predict.preprocess: composite, pad,
    resize), then the TorchScript model. model_config holds classes, threshold, img_size and background.
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.model = load_torchscript(context.artifacts["torchscript"])
        self.config = context.model_config

    @torch.inference_mode()
    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        background, size = tuple(self.config["background"]), self.config["img_size"]
        probabilities = []
        with tempfile.TemporaryDirectory() as tmp:
            rows = list(model_input["image"].items())
            for start in range(0, len(rows), BATCH):
                batch = []
                for index, data in rows[start : start + BATCH]:
                    # preprocess reads a file, and its error messages then name the input row.
                    path = Path(tmp) / f"row_{index}"
                    path.write_bytes(file_bytes(index, data))
                    batch.append(preprocess(path, background, size))
                probabilities.append(self.model(torch.stack(batch).float() / 255).numpy())
        probs = np.concatenate(probabilities) if probabilities else np.zeros((0, len(self.config["classes"])))
        classes = self.config["classes"]
        table = pd.DataFrame({"predicted": decide(probs, classes, self.config["threshold"])}, index=model_input.index)
        for i, label in enumerate(classes):
            table[prob_column(label)] = probs[:, i].astype(float)
        return table


def input_example(images: torch.Tensor) -> pd.DataFrame:
    """Two processed images shrunk to small PNG files: raw bytes as a client would send them."""
    files = []
    for image in images[:2]:
        pixels = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        buffer = io.BytesIO()
        Image.fromarray(pixels).resize((EXAMPLE_PX, EXAMPLE_PX), Image.Resampling.LANCZOS).save(buffer, "PNG")
        files.append(buffer.getvalue())
    return pd.DataFrame({INPUT: files})


def mlflow_model(summary: dict[str, Any], out_dir: Path, images: torch.Tensor) -> dict[str, Any]:
    """log_model's arguments for the registered model: the TorchScript file, its settings, the stages code."""
    classes = summary["classes"]
    outputs = [ColSpec("string", "predicted"), *(ColSpec("double", prob_column(c)) for c in classes)]
    return {
        "python_model": RawImageClassifier(),
        "artifacts": {"torchscript": str(out_dir / TORCHSCRIPT)},
        "model_config": {key: summary[key] for key in ("classes", "threshold", "img_size", "background")},
        "code_paths": [str(CODE_DIR)],
        "pip_requirements": [f"{name}=={version(name)}" for name in SERVING_PACKAGES],
        "signature": ModelSignature(inputs=Schema([ColSpec("binary", INPUT)]), outputs=Schema(outputs)),
        "input_example": input_example(images),
    }


def export(folds_csv: Path, images_dir: Path, train_dir: Path, out_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Write the exports, then log and register them in MLflow; the final contents of export.json."""
    ensemble = load_ensemble(chosen_checkpoints(train_dir, params["predict"]["final"]))
    images = parity_images(folds_csv, images_dir, ensemble.img_size)
    summary = write_exports(ensemble, images, params["predict"]["threshold"], out_dir)
    tags = {"export." + name: info["sha256"] for name, info in summary["files"].items()}
    summary["mlflow"] = tracking.log_export(params, folds_csv, mlflow_model(summary, out_dir, images), tags)
    # export.json is committed: name the default store relative to the workspace, not by this machine's path.
    root = f"sqlite:///{tracking.workspace_root()}/"
    summary["mlflow"]["tracking_uri"] = summary["mlflow"]["tracking_uri"].replace(root, "sqlite:///")
    write_text_atomic(out_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folds_csv", type=Path, help="fold assignment (data/processed/folds.csv)")
    parser.add_argument("images_dir", type=Path, help="processed model inputs (data/processed/images)")
    parser.add_argument("train_dir", type=Path, help="trained models (results/train)")
    parser.add_argument("out_dir", type=Path, help="writes model.ts, model.onnx, export.json")
    args = parser.parse_args()
    with user_errors():
        params = load_params()
        started = time.perf_counter()
        summary = export(args.folds_csv, args.images_dir, args.train_dir, args.out_dir, params)
    parity = ", ".join(f"{name} {diff:.2g}" for name, diff in summary["parity"]["max_abs_diff"].items())
    registered = summary["mlflow"].get("registered_model_uri") or "not registered"
    print(f"export: {len(summary['source_checkpoints'])} model(s) -> {args.out_dir}/{{{TORCHSCRIPT},{ONNX}}} "
          f"(max abs diff {parity}), {registered}, in {time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
