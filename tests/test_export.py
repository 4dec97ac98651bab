"""Export: TorchScript and ONNX compute what the PyTorch models compute; the MLflow model serves raw image bytes."""

from __future__ import annotations

import base64
import copy
import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch
import yaml
from helpers import copy_definition, user_env
from mlflow.tracking import MlflowClient
from PIL import Image

from burrscope.files import sha256_file
from burrscope.inference import export as export_module
from burrscope.inference import export_cache
from burrscope.inference.ensemble import load_ensemble, predict, preprocess
from burrscope.inference.export import Probabilities, member, parity_images, write_exports
from burrscope.inference.torchscript import load_torchscript, trace_template
from burrscope.models.factory import build_model
from burrscope.params import Params
from burrscope.tables import EXPORT_SUMMARY, ONNX, TORCHSCRIPT
from burrscope.tracking.fold_run import FoldRun
from burrscope.tracking.parent_run import log_aggregate
from burrscope.tracking.store import PARENT_RUN_TAG
from stages import export as export_stage

pytestmark = pytest.mark.cli  # every test runs the export stage's main(), or reads what it wrote

SIZE = 32
BACKGROUND = (20, 40, 60)
FOLDS = ("fold_0", "fold_1")
TEMPLATES = "template-cache"  # the export cache that the `exported` fixture fills, in the workspace


@pytest.fixture(scope="module")
def export_params(tiny_params: Callable[..., Params]) -> Callable[..., Params]:
    """tiny_params for these models: their background, and a threshold that is not the default."""
    return lambda **changes: tiny_params(
        composite={"background": list(BACKGROUND)}, predict={"threshold": 0.4, **changes}
    )


def run_export(workspace: Path, cwd: Path, params: Params, out: Path) -> dict:
    """The export stage's main() in `cwd`, with `params` as its params.yaml; the export.json it wrote, with the run
    log it wrote in `cwd`/logs as `run_log` (the parity it measured and MLflow's outcome)."""
    (cwd / "params.yaml").write_text(yaml.safe_dump(params.raw))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        args = [workspace / "folds.csv", workspace / "images", workspace / "train", out]
        mp.setattr(sys, "argv", ["export", *map(str, args)])
        export_stage.main()
    run_log = json.loads((cwd / "logs" / "export.json").read_text())
    return {**json.loads((out / EXPORT_SUMMARY).read_text()), "run_log": run_log}


def save_checkpoint(path: Path, seed: int) -> None:
    """A random-init EfficientNet-Lite0 in the checkpoint format the train stage writes.

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
    torch.save(
        {
            "model": "efficientnet_lite0",
            "classes": ["0", "1"],
            "img_size": SIZE,
            "background": list(BACKGROUND),
            "mean": list(built.normalisation.mean),
            "std": list(built.normalisation.std),
            "epoch": 1,
            "state_dict": built.model.state_dict(),
        },
        path,
    )


@pytest.fixture(scope="module")
def workspace(module_folder: Callable[[str], Path]) -> Path:
    """RGBA cut-outs of several sizes, their processed images, folds.csv, two fold models and a final model."""
    root = module_folder("export")
    rng = np.random.default_rng(0)
    (root / "raw").mkdir()
    (root / "images").mkdir()
    for i in range(6):
        rgba = rng.integers(0, 256, (int(rng.integers(30, 80)), int(rng.integers(30, 80)), 4), dtype=np.uint8)
        rgba[..., 3] = np.where(rng.random(rgba.shape[:2]) < 0.5, 0, 255)  # colours hidden under alpha 0
        Image.fromarray(rgba, "RGBA").save(root / "raw" / f"part_{i}.png")
        processed = preprocess(root / "raw" / f"part_{i}.png", BACKGROUND, SIZE).permute(1, 2, 0).numpy()
        Image.fromarray(processed).save(root / "images" / f"part_{i}.png")
    pd.DataFrame(
        {"file": [f"part_{i}.png" for i in range(6)], "label": ["0", "1"] * 3, "fold": [0, 0, 0, 1, 1, 1]}
    ).to_csv(root / "folds.csv", index=False)
    for seed, name in enumerate((*FOLDS, "final")):
        save_checkpoint(root / "train" / name / "model.pt", seed)
    return root


@pytest.fixture(scope="module")
def exported(workspace: Path, export_params: Callable[..., Params]) -> tuple[Path, dict]:
    """The fold ensemble exported into a temp sqlite store whose pipeline parent aggregate has already closed, with
    its templates cached in TEMPLATES (warm_cache copies them)."""
    params = export_params()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workspace)
        mp.setenv(export_cache.CACHE_ENV, str(workspace / TEMPLATES))
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "DVC_EXP_NAME"):
            mp.delenv(name, raising=False)
        with FoldRun(params, workspace / "folds.csv", 0) as run:
            run.finish(build_model("efficientnet_lite0", 2, False, SIZE).weights, [])
        parent, _ = log_aggregate(params, workspace / "folds.csv", {}, [])
        summary = run_export(workspace, workspace, params, workspace / "export")
    assert parent == run.connection.client.get_run(run.run_id).data.tags[PARENT_RUN_TAG]
    summary["parent_of_folds"] = parent
    return workspace / "export", summary


def warm_cache(workspace: Path, exported: tuple[Path, dict], cache: Path) -> Path:
    """A copy of the cache that `exported` left: the templates of these models' structure, cached."""
    shutil.copytree(workspace / TEMPLATES, cache)
    return cache


def fold_ensemble(workspace: Path) -> Probabilities:
    return Probabilities(load_ensemble([workspace / "train" / fold / "model.pt" for fold in FOLDS])).eval()


def test_exports_match_the_ensemble_on_another_batch_size(workspace: Path, exported: tuple[Path, dict]) -> None:
    out, summary = exported
    assert sorted(p.name for p in out.iterdir()) == [EXPORT_SUMMARY, ONNX, TORCHSCRIPT]
    images = torch.rand(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))  # exported with 2, checked on 6
    with torch.inference_mode():
        expected = fold_ensemble(workspace)(images).numpy()
        scripted = load_torchscript(out / TORCHSCRIPT)(images).numpy()
    session = onnxruntime.InferenceSession(str(out / ONNX), providers=["CPUExecutionProvider"])
    (onnx,) = session.run(None, {"image": images.numpy()})
    assert expected.shape == (5, 2) and not np.allclose(expected, expected[0])  # the images are told apart
    np.testing.assert_allclose(scripted, expected, atol=1e-5)
    np.testing.assert_allclose(onnx, expected, atol=1e-5)
    written = json.loads((out / EXPORT_SUMMARY).read_text())
    assert written["parity"] == {"images": 2, "tolerance": 1e-4, "checked": [TORCHSCRIPT, ONNX]}  # one per class
    assert max(summary["run_log"]["parity"].values()) <= 1e-4 and summary["run_log"]["templates"] == "built"
    assert [Path(c["path"]).parent.name for c in written["source_checkpoints"]] == list(FOLDS)
    assert written["files"][ONNX]["sha256"] == sha256_file(out / ONNX)
    assert (written["classes"], written["positive_class"], written["threshold"]) == (["0", "1"], "1", 0.4)
    assert summary["run_log"]["mlflow"]["status"] == "ok"
    assert "mlflow" not in written  # run ids and versions differ from run to run: export.json is committed


def test_registered_model_sits_under_the_closed_pipeline_parent(
    workspace: Path, exported: tuple[Path, dict], export_params: Callable[..., Params]
) -> None:
    _, summary = exported
    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    version = client.get_model_version(export_params().mlflow.registered_model, summary["run_log"]["mlflow"]["version"])
    assert version.run_id == summary["run_log"]["mlflow"]["run_id"]
    run = client.get_run(version.run_id)
    assert run.info.run_name == "export" and run.info.status == "FINISHED"
    assert run.data.tags[PARENT_RUN_TAG] == summary["parent_of_folds"]
    assert client.get_run(summary["parent_of_folds"]).info.status == "FINISHED"  # not reopened


def test_pyfunc_model_predicts_raw_rgba_bytes_as_predict_does(
    workspace: Path,
    exported: tuple[Path, dict],
    export_params: Callable[..., Params],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    params = export_params()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workspace / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"models:/{params.mlflow.registered_model}/latest")
    raw = sorted((workspace / "raw").iterdir())
    got = model.predict(pd.DataFrame({"image": [p.read_bytes() for p in raw]}))
    ensemble = load_ensemble([workspace / "train" / fold / "model.pt" for fold in FOLDS])
    expected = predict(ensemble, raw, threshold=params.predict.threshold)
    assert list(got.columns) == ["predicted", "prob_0", "prob_1"]
    np.testing.assert_allclose(got[["prob_0", "prob_1"]], expected[["prob_0", "prob_1"]], atol=1e-5)
    assert list(got["predicted"]) == list(expected["predicted"])
    # CSV input reaches the model as text, which it takes as base64.
    as_text = model.predict(pd.DataFrame({"image": [base64.b64encode(raw[0].read_bytes()).decode()]}))
    np.testing.assert_allclose(as_text[["prob_0", "prob_1"]], got[["prob_0", "prob_1"]].head(1), atol=1e-5)
    # The modules it runs travel with the model, so it loads where the repository is not installed; neither
    # the stages nor the training code come along.
    local = Path(mlflow.artifacts.download_artifacts(exported[1]["run_log"]["mlflow"]["model_uri"]))
    shipped = {p.relative_to(local / "code").as_posix() for p in (local / "code").rglob("*.py")}
    assert {"burrscope/inference/serving.py", "burrscope/inference/ensemble.py", "burrscope/__init__.py"} <= shipped
    assert not any(name.startswith(("stages/", "burrscope/training/")) for name in shipped)


def test_final_model_is_exported_and_an_unreachable_store_costs_no_file(
    workspace: Path,
    exported: tuple[Path, dict],
    tmp_path: Path,
    export_params: Callable[..., Params],
    monkeypatch: pytest.MonkeyPatch,
    unreachable_mlflow: str,
) -> None:
    # The final model is built as the folds are: their templates serve it.
    monkeypatch.setenv(export_cache.CACHE_ENV, str(warm_cache(workspace, exported, tmp_path / "cache")))
    summary = run_export(workspace, tmp_path, export_params(final=["all"]), tmp_path / "out")
    assert [Path(c["path"]).parent.name for c in summary["source_checkpoints"]] == ["final"]
    assert summary["run_log"]["templates"] == "cached"
    status = summary["run_log"]["mlflow"]["status"]
    assert status.startswith(f"failed: logging and registering the model: MLflow tracking at {unreachable_mlflow} is")
    assert "fix MLFLOW_TRACKING_URI" in status
    images = torch.rand(3, 3, SIZE, SIZE)
    with torch.inference_mode():
        expected = Probabilities(load_ensemble([workspace / "train" / "final" / "model.pt"]))(images)
        np.testing.assert_allclose(load_torchscript(tmp_path / "out" / TORCHSCRIPT)(images), expected, atol=1e-5)


class Skewed(Probabilities):
    """Off by 1e-3: the kind of drift parity must catch. Its weights are named as Probabilities names them."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return super().forward(images) + 1e-3


def skewed(module: Probabilities) -> Skewed:
    drifting = copy.deepcopy(module)
    drifting.__class__ = Skewed
    return drifting


def test_failed_parity_refuses_and_leaves_nothing(
    workspace: Path, tmp_path: Path, export_params: Callable[..., Params], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        export_module, "trace_template", lambda module, example: trace_template(skewed(module), example)
    )
    monkeypatch.setattr(export_stage, "register", lambda *_: pytest.fail("MLflow after a refusal"))
    monkeypatch.setenv(export_cache.CACHE_ENV, str(tmp_path / "cwd" / "cache"))
    (tmp_path / "cwd").mkdir()
    with pytest.raises(SystemExit) as exit_:  # one model (the final one): half the work
        run_export(workspace, tmp_path / "cwd", export_params(final=["all"]), tmp_path / "out")
    assert str(exit_.value.code).startswith(
        "error: model.ts differs from the PyTorch models by 0.001 on 2 processed images"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["cwd"]
    assert not list((tmp_path / "cwd" / "cache").rglob("*.onnx"))  # templates that failed are never cached


def export_folds(workspace: Path, out: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, str]:
    """The fold ensemble exported into `out` with the export cache in `cache`: the files' bytes, and where the
    templates came from."""
    monkeypatch.setenv(export_cache.CACHE_ENV, str(cache))
    ensemble = load_ensemble([workspace / "train" / fold / "model.pt" for fold in FOLDS])
    images = parity_images(workspace / "folds.csv", workspace / "images", SIZE, ensemble.classes)
    _, _, templates = write_exports(ensemble, images, 0.4, out)
    return {name: (out / name).read_bytes() for name in (TORCHSCRIPT, ONNX, EXPORT_SUMMARY)}, templates


def test_exports_are_the_same_bytes_from_any_cache_process_and_checkout(
    workspace: Path,
    exported: tuple[Path, dict],
    export_params: Callable[..., Params],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, templates = export_folds(
        workspace, tmp_path / "warm", warm_cache(workspace, exported, tmp_path / "cache"), monkeypatch
    )
    assert templates == "cached"
    assert {name: (exported[0] / name).read_bytes() for name in first} == first  # the stage's, from a cold cache
    # Built again in this process, which has made TorchScript types of those names before.
    assert export_folds(workspace, tmp_path / "cold", tmp_path / "empty cache", monkeypatch) == (first, "built")
    # The stage in a fresh process from a copy of the code elsewhere, whose file paths the exporters see.
    elsewhere = tmp_path / "another checkout"
    elsewhere.mkdir()
    copy_definition(elsewhere)
    (elsewhere / "params.yaml").write_text(yaml.safe_dump(export_params().raw))
    env = user_env(elsewhere, PYTHONPATH=str(elsewhere), MLFLOW_TRACKING_URI=f"sqlite:///{elsewhere / 'mlflow.db'}")
    env[export_cache.CACHE_ENV] = str(elsewhere / "cache")
    args = [workspace / "folds.csv", workspace / "images", workspace / "train", tmp_path / "elsewhere"]
    command = [sys.executable, "-m", "stages.export", *map(str, args)]
    done = subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert {name: (tmp_path / "elsewhere" / name).read_bytes() for name in first} == first


def test_a_corrupted_or_stale_cache_entry_is_rebuilt_never_trusted(
    workspace: Path, exported: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = warm_cache(workspace, exported, tmp_path / "cache")
    first, _ = export_folds(workspace, tmp_path / "out", cache, monkeypatch)
    (entry,) = (cache / "export").iterdir()
    with (entry / export_cache.ONNX_TEMPLATE).open("ab") as template:
        template.write(b"\0")
    rebuilt, templates = export_folds(workspace, tmp_path / "out", cache, monkeypatch)
    assert rebuilt == first
    assert templates == "rebuilt: the cached ones were corrupted (its files do not hash as its manifest says)"
    assert export_cache.load(entry.name)[1] == "cached"
    # Whole but wrong: a template that computes something else, its manifest made to match. Only parity can tell.
    ensemble = load_ensemble([workspace / "train" / fold / "model.pt" for fold in FOLDS])
    drifting = trace_template(skewed(member(ensemble)), torch.rand(2, 3, SIZE, SIZE))
    (entry / export_cache.TORCHSCRIPT_TEMPLATE).write_bytes(drifting)
    manifest = json.loads((entry / export_cache.MANIFEST).read_text())
    manifest["sha256"][export_cache.TORCHSCRIPT_TEMPLATE] = sha256_file(entry / export_cache.TORCHSCRIPT_TEMPLATE)
    (entry / export_cache.MANIFEST).write_text(json.dumps(manifest))
    assert export_cache.load(entry.name)[1] == "cached"
    rebuilt, templates = export_folds(workspace, tmp_path / "out", cache, monkeypatch)
    assert rebuilt == first
    assert templates.startswith("rebuilt: the cached ones failed (ExportError: model.ts differs from the PyTorch")
    assert (entry / export_cache.TORCHSCRIPT_TEMPLATE).read_bytes() != drifting  # replaced by a good one


def test_parity_refuses_a_file_that_returns_another_shape() -> None:
    """A file that kept the example's batch size, or mixed the images of a batch, returns other rows."""
    with pytest.raises(export_module.ExportError, match=r"model.onnx returns \(3, 2\) probabilities for 2"):
        export_module.check_parity(ONNX, np.zeros((3, 2), np.float32), np.zeros((2, 2), np.float32))


def test_a_full_disk_costs_the_export_cache_its_entry_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The cache is a shortcut: a write that fills the disk is a warning, and the export goes on."""
    monkeypatch.setenv(export_cache.CACHE_ENV, str(tmp_path))

    def full(path: Path, _: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(Path, "write_bytes", full)
    export_cache.store("key", export_cache.Templates(b"graph", b"graph"), {})
    assert "warning: could not cache the export templates" in capsys.readouterr().out
    assert not any((tmp_path / "export").iterdir())
