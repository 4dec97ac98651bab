"""Predict: raw cut-outs through the training preprocessing reproduce the folds' out-of-fold probabilities."""

from __future__ import annotations

import argparse
import io
import math
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import REPO
from PIL import Image

from burrscope.console import progress_bar
from burrscope.data.naming import output_name
from burrscope.errors import DataError, UserError
from burrscope.inference.ensemble import (
    chosen_checkpoints,
    collect_images,
    find_checkpoints,
    load_ensemble,
    predict,
    valid_threshold,
)
from burrscope.inference.explain import explain_paths, overlay_writer
from burrscope.params import Params
from burrscope.training.fold import train_fold
from burrscope.training.outputs import write_fold_outputs
from stages.predict import main

pytestmark = pytest.mark.usefixtures("one_thread")  # this module's tiny tensors run faster on one thread

BACKGROUND = (0, 0, 0)


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
def trained(
    module_folder: Callable[[str], Path],
    tiny_params: Callable[..., Params],
    composite_folder: Callable[..., int],
    resize_folder: Callable[..., int],
    one_thread: None,
) -> tuple[Path, Path, pd.DataFrame]:
    """Raw folder of 8 cut-outs (sizes 40-90 px, several modes), run through composite, resize and 2 folds."""
    root = module_folder("predict")
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
    recipe = tiny_params(epochs=1, composite={"background": list(BACKGROUND)}).recipe
    composite_folder(raw, root / "composited", BACKGROUND)
    resize_folder(root / "composited", root / "images", BACKGROUND, recipe.img_size)
    folds = table[["file", "label", "fold"]]
    models = root / "results" / "train"
    for fold in (0, 1):
        write_fold_outputs(models / f"fold_{fold}", train_fold(root / "images", folds, fold, recipe), recipe)
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
        assert (got["agreement"] == 1).all() and (got["spread"] == 0).all()  # one model agrees with itself


def test_ensemble_averages_probabilities_and_reports_agreement(trained: tuple[Path, Path, pd.DataFrame]) -> None:
    raw, models, _ = trained
    paths = find_checkpoints(models)
    assert [p.parent.name for p in paths] == ["fold_0", "fold_1"]
    images = collect_images([raw])
    both = predict(load_ensemble(paths), images)
    singles = [predict(load_ensemble([p]), images) for p in paths]
    assert list(both.columns) == ["file", "predicted", "prob_0", "prob_1", "agreement", "spread"]
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
    return subprocess.run(
        [sys.executable, "-m", "stages.predict", *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=120
    )


@pytest.mark.cli
def test_cli_on_a_folder_writes_the_csv(trained: tuple[Path, Path, pd.DataFrame], tmp_path: Path) -> None:
    raw, models, table = trained
    out = tmp_path / "predictions.csv"
    done = run_cli(raw, "--models", models, "--out", out, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    written = pd.read_csv(out, dtype={"predicted": str})
    assert list(written.columns) == ["file", "predicted", "prob_0", "prob_1", "agreement", "spread"]
    assert list(written["file"]) == [str(raw / name) for name in sorted(table["raw"])]
    assert "8/8 images" in done.stderr and "part_0.png" in done.stdout


@pytest.mark.cli
def test_cli_names_a_corrupt_file_without_a_traceback(trained: tuple[Path, Path, pd.DataFrame], tmp_path: Path) -> None:
    raw, models, _ = trained
    shutil.copy(raw / "part_0.png", tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    done = run_cli(tmp_path, "--models", models)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "broken.png" in error[0]


@pytest.mark.cli
def test_cli_without_models_says_to_run_the_pipeline(trained: tuple[Path, Path, pd.DataFrame], tmp_path: Path) -> None:
    raw, _, _ = trained
    done = run_cli(raw / "part_0.png", "--models", tmp_path / "nothing")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "no trained models found" in done.stderr and "dvc repro" in done.stderr


def test_a_lowered_threshold_calls_the_positive_class_below_one_half(trained: tuple[Path, Path, pd.DataFrame]) -> None:
    raw, models, _ = trained
    ensemble = load_ensemble(find_checkpoints(models))
    images = collect_images([raw])
    default = predict(ensemble, images)
    doubtful = default[default["prob_1"] < 0.5]
    assert len(doubtful) and (doubtful["predicted"] == "0").all()  # the premise: some image scores below 0.5
    lowered = predict(ensemble, images, threshold=doubtful["prob_1"].min() * 0.999)
    assert (lowered["predicted"] == "1").all()
    pd.testing.assert_frame_equal(lowered[["prob_0", "prob_1"]], default[["prob_0", "prob_1"]])
    strict = predict(ensemble, images, threshold=0.999)
    assert list(strict["predicted"]) == ["1" if p >= 0.999 else "0" for p in default["prob_1"]]


@pytest.mark.parametrize("threshold", [0, 1, -0.1, 1.5, math.nan])
def test_a_threshold_outside_0_1_is_refused(threshold: float) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"^must be between 0 and 1 \(exclusive\), not "):
        valid_threshold(str(threshold))
    assert valid_threshold("0.3") == 0.3


def run_main(monkeypatch: pytest.MonkeyPatch, cwd: Path, *args: object) -> None:
    """The CLI in this process (no second torch import): params.yaml is read from `cwd`."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["predict", *map(str, args)])
    main()


@pytest.mark.cli
def test_cli_refuses_a_bad_threshold(
    trained: tuple[Path, Path, pd.DataFrame], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    raw, models, _ = trained
    with pytest.raises(SystemExit) as exit_:
        run_main(monkeypatch, REPO, raw, "--models", models, "--threshold", "1")
    assert exit_.value.code == 2  # argparse's usage error, before anything is read
    assert "argument --threshold: must be between 0 and 1 (exclusive), not 1" in capsys.readouterr().err


@pytest.mark.cli
def test_cli_refuses_to_write_heatmaps_among_the_input_photos(
    trained: tuple[Path, Path, pd.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, models, _ = trained
    before = sorted(raw.iterdir())
    with pytest.raises(SystemExit, match=r"^error: --explain .* is a folder of input images"):
        run_main(monkeypatch, REPO, raw / "part_0.png", "--models", models, "--explain", raw)
    assert sorted(raw.iterdir()) == before


def test_explain_writes_one_overlay_per_input_of_the_model_input_size(
    trained: tuple[Path, Path, pd.DataFrame], tmp_path: Path
) -> None:
    raw, models, _ = trained
    for folder in ("a", "b"):  # the same name in two folders must not share a heatmap
        (tmp_path / folder).mkdir()
        shutil.copy(raw / "part_0.png", tmp_path / folder / "part_0.png")
    images = [*collect_images([raw]), tmp_path / "a" / "part_0.png", tmp_path / "b" / "part_0.png"]
    ensemble = load_ensemble(find_checkpoints(models))
    heatmaps = explain_paths(tmp_path / "heat", images)
    writer = overlay_writer(ensemble.models, ensemble.classes, heatmaps)
    explained = predict(ensemble, images, batch_size=4, on_batch=writer)
    plain = predict(ensemble, images, batch_size=4)
    pd.testing.assert_frame_equal(explained, plain)  # explaining changes no prediction
    assert len(set(heatmaps)) == len(images)
    assert sorted(p.name for p in (tmp_path / "heat").iterdir()) == sorted(p.name for p in heatmaps)
    for path in heatmaps:
        with Image.open(path) as png:
            assert png.size == (ensemble.img_size, ensemble.img_size) and png.mode == "RGB"
    assert heatmaps[-1].read_bytes() == heatmaps[-2].read_bytes() == heatmaps[0].read_bytes()  # same input


def test_progress_is_one_redrawn_line_on_a_terminal_and_a_line_per_tenth_in_a_log() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    log, terminal = io.StringIO(), Terminal()
    for stream in (log, terminal):
        report = progress_bar(stream)
        for done in range(1, 101):
            report(done, 100)
    lines = log.getvalue().splitlines()
    assert len(lines) == 11 and lines[-1] == "predict: 100/100 images" and "\r" not in log.getvalue()
    assert terminal.getvalue().count("\n") == 1 and terminal.getvalue().endswith("] 100/100 images\n")
    assert terminal.getvalue().count("\r") == 100


def test_missing_final_model_is_a_clear_error(trained: tuple[Path, Path, pd.DataFrame]) -> None:
    _, models, _ = trained
    assert chosen_checkpoints(models, []) == find_checkpoints(models)
    with pytest.raises(UserError, match=r"predict.final is \[all\] but .*final/model.pt does not exist.*dvc repro"):
        chosen_checkpoints(models, ["all"])


@pytest.mark.cli
def test_cli_uses_the_final_model_and_threshold_from_params(
    trained: tuple[Path, Path, pd.DataFrame],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    raw, models, _ = trained
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["predict"] = {"final": ["all"], "threshold": 0.3}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copytree(models, tmp_path / "train")
    (tmp_path / "train" / "final").mkdir()
    shutil.copy(models / "fold_0" / "model.pt", tmp_path / "train" / "final" / "model.pt")  # a stand-in final model
    run_main(
        monkeypatch, tmp_path, raw, "--models", "train", "--out", "out.csv", "--explain", "heat", "--device", "cpu"
    )
    assert "the final model" in capsys.readouterr().err
    written = pd.read_csv(tmp_path / "out.csv", dtype={"predicted": str})
    alone = predict(load_ensemble([models / "fold_0" / "model.pt"]), collect_images([raw]))
    np.testing.assert_allclose(written["prob_1"], alone["prob_1"], atol=1e-5)
    assert list(written["predicted"]) == ["1" if p >= 0.3 else "0" for p in written["prob_1"]]
    assert all((tmp_path / p).is_file() for p in written["heatmap"])
