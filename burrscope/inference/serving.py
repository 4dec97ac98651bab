"""The registered MLflow model: raw image file bytes in, the decided label and each class's probability out.

It ships the TorchScript export and only the modules this one imports (burrscope.tracking.registry copies them), never
the training code or the stages.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import tempfile
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

from burrscope.classes import decide, prob_column
from burrscope.errors import DataError
from burrscope.inference.ensemble import BATCH, preprocess
from burrscope.inference.torchscript import INPUT, load_torchscript
from burrscope.tables import EXPORT_SUMMARY, TORCHSCRIPT

EXAMPLE_PX = 64  # side of the small raw PNGs that serve as the MLflow input example
# What RawImageClassifier and the modules it runs import, pinned to this environment's versions. MLflow's own
# inference would load the model in a subprocess and still miss torch and list this repository as a package.
SERVING_PACKAGES = ("mlflow", "cloudpickle", "torch", "numpy", "pandas", "pillow", "anyascii", "pyyaml")


def file_bytes(row: object, value: object) -> bytes:
    """An `image` cell as file bytes: bytes as they are, text as base64 (CSV input is not decoded by MLflow)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error:
            pass
    raise DataError(
        f"row {row}: column {INPUT!r} holds {type(value).__name__} {str(value)[:40]!r}, not an image "
        "file's bytes; send the raw file bytes, base64-encoded in JSON or CSV."
    )


class RawImageClassifier(mlflow.pyfunc.PythonModel):
    """Raw image file bytes in (column `image`), the decided label and each class's probability out.

    Each image goes through the pipeline's own preprocessing (burrscope.inference.ensemble.preprocess: composite,
    pad, resize), then the TorchScript model. export.json, an artifact beside it, gives the classes, threshold,
    img_size and background (as an artifact rather than model_config, which MLflow would log again as params).
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.model = load_torchscript(context.artifacts["torchscript"])
        self.config = json.loads(Path(context.artifacts["export"]).read_text(encoding="utf-8"))

    @torch.inference_mode()
    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
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


def mlflow_model(summary: dict[str, Any], out_dir: Path, images: torch.Tensor, code_dir: Path) -> dict[str, Any]:
    """log_model's arguments for the registered model: the TorchScript file, its settings, the code it runs
    (`code_dir`, from registry.ship_code)."""
    classes = summary["classes"]
    outputs = [ColSpec("string", "predicted"), *(ColSpec("double", prob_column(c)) for c in classes)]
    return {
        "python_model": RawImageClassifier(),
        "artifacts": {"torchscript": str(out_dir / TORCHSCRIPT), "export": str(out_dir / EXPORT_SUMMARY)},
        "code_paths": [str(code_dir)],
        "pip_requirements": [f"{name}=={version(name)}" for name in SERVING_PACKAGES],
        "signature": ModelSignature(inputs=Schema([ColSpec("binary", INPUT)]), outputs=Schema(outputs)),
        "input_example": input_example(images),
    }
