"""Predict: raw cut-outs through the training preprocessing reproduce the folds' out-of-fold probabilities."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from stages.composite import composite
from stages.errors import DataError, UserError
from stages.imageops import output_name
from stages.predict import collect_images, find_checkpoints, load_ensemble, predict
from stages.resize import resize
from stages.train import train_fold, write_outputs

REPO = Path(__file__).resolve().parents[1]
BACKGROUND = (0, 0, 0)


def tiny_params() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update({"epochs": 1, "batch_size": 4})
    params["resize"]["img_size"] = 32
    params["composite"]["background"] = list(BACKGROUND)
    params["train"]["device"] = "cpu"
    return params


def cut_out(rng: np.random.Generator, width: int, height: int, burr: bool) -> Image.Image:
    """An RGBA part (opaque grey blob, transparent elsewhere, random colours hidden under alpha 0)."""
    rgba = rng.integers(0, 256, (height, width, 4)).astype(np.uint8)
    rgba[..., 3] = 0
    rgba[height // 4 : 3 * height // 4, width // 6 : 5 * width // 6, :3] = rng.integers(90, 140, 3)
    rgba[height // 4 : 3 * height // 4, width // 6 : 5 * width // 6, 3] = 255
    if burr:
        rgba[height // 4 - 3 : height // 4, 5 * width // 6 - 4 : 5 * width // 6, :] = 255
    return Image.fromarray(rgba, "RGBA")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.DataFrame]:
    """Raw folder of 8 cut-outs (sizes 40-90 px, several modes), run through composite, resize and 2 folds."""
    root = tmp_path_factory.mktemp("predict")
    raw = root / "raw"
    raw.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        label = (i // 2) % 2
        img = cut_out(rng, int(rng.integers(40, 91)), int(rng.integers(40, 91)), bool(label))
        name = f"part_{i}.png"
        if i == 3:
            img = img.convert("LA")  # greyscale with alpha
        elif i == 5:
            img = img.convert("RGB").quantize(16)  # palette, saved below with one transparent index
        elif i == 6:
            img, name = img.convert("RGB"), f"part_{i}.jpg"  # no alpha at all, lossy format
        img.save(raw / name, **({"transparency": 0} if img.mode == "P" else {}))
        rows.append({"raw": name, "file": output_name(name), "label": str(label), "fold": i % 2})
    table = pd.DataFrame(rows)
    params = tiny_params()
    composite(raw, root / "composited", BACKGROUND)
    resize(root / "composited", root / "images", BACKGROUND, params["resize"]["img_size"])
    folds = table[["file", "label", "fold"]]
    models = root / "results" / "train"
    for fold in (0, 1):
        result, built, classes = train_fold(root / "images", folds, fold, params)
        write_outputs(models / f"fold_{fold}", result, built, classes, folds[folds["fold"] == fold], params)
    return raw, models, table


def test_raw_files_reproduce_each_folds_out_of_fold_probabilities(trained: tuple[Path, Path, pd.DataFrame]) -> None:
    raw, models, table = trained
    for fold in (0, 1):
        expected = pd.read_csv(models / f"fold_{fold}" / "predictions.csv", dtype={"label": str, "predicted": str})
        ensemble = load_ensemble([models / f"fold_{fold}" / "model.pt"])
        raw_names = dict(zip(table["file"], table["raw"], strict=True))
        got = predict(ensemble, [raw / raw_names[f] for f in expected["file"]], batch_size=3)
        for column in ("prob_0", "prob_1"):
            np.testing.assert_allclose(got[column], expected[column], atol=1e-5)
        assert list(got["predicted"]) == list(expected["predicted"])
        assert (got["agreement"] == 1).all()  # one model always agrees with itself


def test_ensemble_averages_probabilities_and_reports_agreement(trained: tuple[Path, Path, pd.DataFrame]) -> None:
    raw, models, _ = trained
    paths = find_checkpoints(models)
    assert [p.parent.name for p in paths] == ["fold_0", "fold_1"]
    images = collect_images([raw])
    both = predict(load_ensemble(paths), images)
    singles = [predict(load_ensemble([p]), images) for p in paths]
    assert list(both.columns) == ["file", "predicted", "prob_0", "prob_1", "agreement"]
    np.testing.assert_allclose(both[["prob_0", "prob_1"]].sum(axis=1), 1, atol=1e-6)
    mean = (singles[0][["prob_0", "prob_1"]] + singles[1][["prob_0", "prob_1"]]) / 2
    np.testing.assert_allclose(both[["prob_0", "prob_1"]], mean, atol=1e-6)
    votes = sum((s["predicted"] == both["predicted"]).astype(float) for s in singles) / 2
    np.testing.assert_allclose(both["agreement"], votes)
    assert both["agreement"].between(0, 1).all()


def test_checkpoints_from_different_runs_are_refused(trained: tuple[Path, Path, pd.DataFrame], tmp_path: Path) -> None:
    _, models, _ = trained
    shutil.copytree(models, tmp_path / "train")
    path = tmp_path / "train" / "fold_1" / "model.pt"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["img_size"] = 64
    torch.save(checkpoint, path)
    with pytest.raises(DataError, match="trained with other img_size"):
        load_ensemble(find_checkpoints(tmp_path / "train"))


def test_no_models_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no trained models found .*dvc repro"):
        find_checkpoints(tmp_path / "results" / "train")


def run_cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stages.predict", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_on_a_folder_writes_the_csv(trained: tuple[Path, Path, pd.DataFrame], tmp_path: Path) -> None:
    raw, models, table = trained
    out = tmp_path / "predictions.csv"
    done = run_cli(raw, "--models", models, "--out", out, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    written = pd.read_csv(out, dtype={"predicted": str})
    assert list(written.columns) == ["file", "predicted", "prob_0", "prob_1", "agreement"]
    assert list(written["file"]) == [str(raw / name) for name in sorted(table["raw"])]
    assert "8/8 images" in done.stderr and "part_0.png" in done.stdout


def test_cli_names_a_corrupt_file_without_a_traceback(trained: tuple[Path, Path, pd.DataFrame],
                                                      tmp_path: Path) -> None:
    raw, models, _ = trained
    shutil.copy(raw / "part_0.png", tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    done = run_cli(tmp_path, "--models", models)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "broken.png" in error[0]


def test_cli_without_models_says_to_run_the_pipeline(trained: tuple[Path, Path, pd.DataFrame], tmp_path: Path) -> None:
    raw, _, _ = trained
    done = run_cli(raw / "part_0.png", "--models", tmp_path / "nothing")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "no trained models found" in done.stderr and "dvc repro" in done.stderr
