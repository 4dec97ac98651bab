"""Export: TorchScript and ONNX compute what the PyTorch models compute; the MLflow model serves raw image bytes."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from stages import export as export_stage
from stages.export import ONNX, SUMMARY, TORCHSCRIPT, ExportError, Probabilities, export
from stages.models import build_model
from stages.predict import load_ensemble, predict, preprocess
from stages.tracking import FoldRun, log_aggregate

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
BACKGROUND = (20, 40, 60)
FOLDS = ("fold_0", "fold_1")


def tiny_params() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["resize"]["img_size"] = SIZE
    params["composite"]["background"] = list(BACKGROUND)
    params["predict"]["threshold"] = 0.4
    return params


def save_checkpoint(path: Path, seed: int) -> None:
    """A random-init EfficientNet-Lite0 in the checkpoint format stages/train.py writes.

    Its batch norms are calibrated on random images: with their initial statistics the activations fade to
    nothing through the blocks, and every input would get the same probabilities.
    """
    torch.manual_seed(seed)
    built = build_model("efficientnet_lite0", 2, False, SIZE)
    for module in built.model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the calibration batch
    with torch.no_grad():
        built.model.train()(torch.rand(16, 3, SIZE, SIZE) * torch.rand(16, 1, 1, 1))
    path.parent.mkdir(parents=True)
    torch.save({"model": "efficientnet_lite0", "classes": ["0", "1"], "img_size": SIZE, "background": list(BACKGROUND),
                "mean": list(built.normalisation.mean), "std": list(built.normalisation.std), "epoch": 1,
                "state_dict": built.model.state_dict()}, path)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RGBA cut-outs of several sizes, their processed images, folds.csv, two fold models and a final model."""
    root = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(0)
    (root / "raw").mkdir()
    (root / "images").mkdir()
    for i in range(6):
        rgba = rng.integers(0, 256, (int(rng.integers(30, 80)), int(rng.integers(30, 80)), 4), dtype=np.uint8)
        rgba[..., 3] = np.where(rng.random(rgba.shape[:2]) < 0.5, 0, 255)  # colours hidden under alpha 0
        Image.fromarray(rgba, "RGBA").save(root / "raw" / f"part_{i}.png")
        processed = preprocess(root / "raw" / f"part_{i}.png", BACKGROUND, SIZE).permute(1, 2, 0).numpy()
        Image.fromarray(processed).save(root / "images" / f"part_{i}.png")
    pd.DataFrame({"file": [f"part_{i}.png" for i in range(6)], "label": ["0", "1"] * 3,
                  "fold": [0, 0, 0, 1, 1, 1]}).to_csv(root / "folds.csv", index=False)
    for seed, name in enumerate((*FOLDS, "final")):
        save_checkpoint(root / "train" / name / "model.pt", seed)
    return root


@pytest.fixture(scope="module")
def exported(workspace: Path) -> tuple[Path, dict]:
    """The fold ensemble exported into a temp sqlite store whose pipeline parent aggregate has already closed."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workspace)
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "DVC_EXP_NAME"):
            mp.delenv(name, raising=False)
        with FoldRun(tiny_params(), workspace / "folds.csv", 0) as run:
            run.finish(build_model("efficientnet_lite0", 2, False, SIZE).weights, [])
        log_aggregate(tiny_params(), workspace / "folds.csv", {}, [])
        summary = export(workspace / "folds.csv", workspace / "images", workspace / "train", workspace / "export",
                         tiny_params())
    summary["parent_of_folds"] = run.parent_id
    return workspace / "export", summary


def fold_ensemble(workspace: Path) -> Probabilities:
    return Probabilities(load_ensemble([workspace / "train" / fold / "model.pt" for fold in FOLDS])).eval()


def test_exports_match_the_ensemble_on_another_batch_size(workspace: Path, exported: tuple[Path, dict]) -> None:
    out, summary = exported
    assert sorted(p.name for p in out.iterdir()) == [SUMMARY, ONNX, TORCHSCRIPT]
    images = torch.rand(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))  # exported with 2, checked on 6
    with torch.inference_mode():
        expected = fold_ensemble(workspace)(images).numpy()
        scripted = torch.jit.load(str(out / TORCHSCRIPT))(images).numpy()
    session = onnxruntime.InferenceSession(str(out / ONNX), providers=["CPUExecutionProvider"])
    (onnx,) = session.run(None, {"image": images.numpy()})
    assert expected.shape == (5, 2) and not np.allclose(expected, expected[0])  # the images are told apart
    np.testing.assert_allclose(scripted, expected, atol=1e-5)
    np.testing.assert_allclose(onnx, expected, atol=1e-5)
    written = json.loads((out / SUMMARY).read_text())
    assert written["parity"]["images"] == 6 and max(written["parity"]["max_abs_diff"].values()) <= 1e-4
    assert [Path(c["path"]).parent.name for c in written["source_checkpoints"]] == list(FOLDS)
    assert written["files"][ONNX]["sha256"] == export_stage.sha256_file(out / ONNX)
    assert (written["classes"], written["positive_class"], written["threshold"]) == (["0", "1"], "1", 0.4)
    assert written["mlflow"] == summary["mlflow"] and summary["mlflow"]["status"] == "ok"


def test_registered_model_sits_under_the_closed_pipeline_parent(workspace: Path, exported: tuple[Path, dict]) -> None:
    _, summary = exported
    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    version = client.get_model_version(tiny_params()["mlflow"]["registered_model"], summary["mlflow"]["version"])
    assert version.run_id == summary["mlflow"]["run_id"]
    run = client.get_run(version.run_id)
    assert run.info.run_name == "export" and run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == summary["parent_of_folds"]
    assert client.get_run(summary["parent_of_folds"]).info.status == "FINISHED"  # not reopened


def test_pyfunc_model_predicts_raw_rgba_bytes_as_predict_does(workspace: Path, exported: tuple[Path, dict],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workspace / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"models:/{tiny_params()['mlflow']['registered_model']}/latest")
    raw = sorted((workspace / "raw").iterdir())
    got = model.predict(pd.DataFrame({"image": [p.read_bytes() for p in raw]}))
    ensemble = load_ensemble([workspace / "train" / fold / "model.pt" for fold in FOLDS])
    expected = predict(ensemble, raw, threshold=tiny_params()["predict"]["threshold"])
    assert list(got.columns) == ["predicted", "prob_0", "prob_1"]
    np.testing.assert_allclose(got[["prob_0", "prob_1"]], expected[["prob_0", "prob_1"]], atol=1e-5)
    assert list(got["predicted"]) == list(expected["predicted"])
    # CSV input reaches the model as text, which it takes as base64.
    as_text = model.predict(pd.DataFrame({"image": [base64.b64encode(raw[0].read_bytes()).decode()]}))
    np.testing.assert_allclose(as_text[["prob_0", "prob_1"]], got[["prob_0", "prob_1"]].head(1), atol=1e-5)
    # The stages code travels with the model, so it loads where the repository is not installed.
    local = Path(mlflow.artifacts.download_artifacts(exported[1]["mlflow"]["model_uri"]))
    assert (local / "code" / "stages" / "predict.py").is_file()


def test_final_model_is_exported_and_an_unreachable_store_costs_no_file(workspace: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    params = tiny_params()
    params["predict"]["final"] = ["all"]
    summary = export(workspace / "folds.csv", workspace / "images", workspace / "train", tmp_path / "out", params)
    assert [Path(c["path"]).parent.name for c in summary["source_checkpoints"]] == ["final"]
    assert summary["mlflow"]["status"].startswith("failed: MLflow tracking at http://127.0.0.1:9 is unreachable")
    assert json.loads((tmp_path / "out" / SUMMARY).read_text())["mlflow"] == summary["mlflow"]
    images = torch.rand(3, 3, SIZE, SIZE)
    with torch.inference_mode():
        expected = Probabilities(load_ensemble([workspace / "train" / "final" / "model.pt"]))(images)
        np.testing.assert_allclose(torch.jit.load(str(tmp_path / "out" / TORCHSCRIPT))(images), expected, atol=1e-5)


def test_failed_parity_refuses_and_leaves_nothing(workspace: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    class Skewed(torch.nn.Module):
        """Off by 1e-3: the kind of drift parity must catch."""

        def __init__(self, module: Probabilities) -> None:
            super().__init__()
            self.module = module

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.module(images) + 1e-3

    exact = export_stage.export_torchscript
    monkeypatch.setattr(export_stage, "export_torchscript", lambda module, *args: exact(Skewed(module), *args))
    monkeypatch.setattr(export_stage.tracking, "log_export", lambda *_: pytest.fail("MLflow after a refusal"))
    params = tiny_params()
    params["predict"]["final"] = ["all"]  # one model: half the work
    with pytest.raises(ExportError, match=r"model\.ts differs from the PyTorch models by 0\.001 on 6 processed"):
        export(workspace / "folds.csv", workspace / "images", workspace / "train", tmp_path / "out", params)
    assert list(tmp_path.iterdir()) == []
