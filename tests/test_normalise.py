"""Name normalisation, the manifest, and the CLI wiring of all four data stages chained together."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import REPO
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from burrscope.data.labels import read_labels
from burrscope.data.manifest import build_manifest, normalise_folder
from burrscope.data.naming import assign_names, normalise_name, normalise_stem
from burrscope.errors import DataError
from burrscope.files import sha256_file
from burrscope.tables import MANIFEST_COLUMNS


@pytest.mark.parametrize(
    ("original", "expected"),
    [
        ("IMG_3 (2).PNG", "img_3_2.png"),
        ("零件 7.png", "ling_jian_7.png"),
        ("零件7.png", "ling_jian_7.png"),
        ("毛刺_左侧.JPG", "mao_ci_zuo_ce.jpg"),
        ("Größe\u2013Ø12 café.tiff", "grosse_o12_cafe.tiff"),  # en dash
        ("cafe\u0301.png", "cafe.png"),  # decomposed accent, as macOS may store it
        ("__--.png", "image.png"),
        ("x.tar.webp", "x_tar.webp"),
    ],
)
def test_normalise_name_examples(original: str, expected: str) -> None:
    assert normalise_name(original) == expected


@given(st.text(max_size=300))
def test_normalise_stem_is_clean_and_idempotent(stem: str) -> None:
    clean = normalise_stem(stem)
    assert clean and len(clean) <= 100
    assert clean.isascii() and all(c.islower() or c.isdigit() or c == "_" for c in clean)
    assert not clean.startswith("_") and not clean.endswith("_") and "__" not in clean
    assert normalise_stem(clean) == clean


def test_collisions_are_on_the_stem_and_independent_of_order() -> None:
    names = ["a.png", "A.jpg", "a_2.png", "b.png", "a .PNG", "零件.png", "ling jian.png"]
    expected = {
        "A.jpg": ("a.jpg", "a"),  # first in str order keeps the stem
        "a .PNG": ("a_3.png", "a"),  # a_2 is some other file's own name, so it is skipped
        "a.png": ("a_4.png", "a"),
        "a_2.png": ("a_2.png", ""),
        "b.png": ("b.png", ""),
        "ling jian.png": ("ling_jian.png", "ling_jian"),
        "零件.png": ("ling_jian_2.png", "ling_jian"),
    }
    for attempt in range(5):
        shuffled = random.Random(attempt).sample(names, len(names))
        assert dict(zip(shuffled, assign_names(shuffled), strict=True)) == expected


def png(path: Path, size: tuple[int, int] = (3, 2), mode: str = "RGBA") -> None:
    Image.new(mode, size).save(path)


def write_labels(path: Path, rows: list[str], header: str = "file,label") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    folder = tmp_path / "raw"
    folder.mkdir()
    png(folder / "IMG_3 (2).PNG", (5, 4))
    png(folder / "零件 7.png", (2, 6), "RGB")
    png(folder / "a.png")
    Image.new("RGB", (4, 4)).save(folder / "a.jpg")
    (folder / ".DS_Store").write_bytes(b"junk")
    (folder / "Thumbs.db").write_bytes(b"junk")
    return folder


def test_build_manifest(raw: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "\ufefffile,label,group\nIMG_3 (2).PNG,1,g1\n零件 7.png,0,g2\na.png, 1 ,g1\na.jpg,0,g3\n", encoding="utf-8"
    )
    manifest = build_manifest(raw, labels)
    assert list(manifest.columns) == [*MANIFEST_COLUMNS, "group"]
    assert manifest.to_dict("records") == [
        {"original_name": "a.jpg", "normalised_name": "a.jpg", "label": "0", "sha256": sha256_file(raw / "a.jpg"),
         "width": 4, "height": 4, "mode": "RGB", "collision": "a", "skipped": "", "group": "g3"},
        {"original_name": "a.png", "normalised_name": "a_2.png", "label": "1", "sha256": sha256_file(raw / "a.png"),
         "width": 3, "height": 2, "mode": "RGBA", "collision": "a", "skipped": "", "group": "g1"},
        {"original_name": "IMG_3 (2).PNG", "normalised_name": "img_3_2.png", "label": "1",
         "sha256": sha256_file(raw / "IMG_3 (2).PNG"), "width": 5, "height": 4, "mode": "RGBA", "collision": "",
         "skipped": "", "group": "g1"},
        {"original_name": "零件 7.png", "normalised_name": "ling_jian_7.png", "label": "0",
         "sha256": sha256_file(raw / "零件 7.png"), "width": 2, "height": 6, "mode": "RGB", "collision": "",
         "skipped": "", "group": "g2"},
    ]  # fmt: skip


def test_raw_size_ignores_exif_rotation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "raw").mkdir()
    Image.new("RGB", (5, 3)).save(tmp_path / "raw" / "r.png", exif=exif.tobytes())
    labels = write_labels(tmp_path / "labels.csv", ["r.png,1"])
    assert build_manifest(tmp_path / "raw", labels)[["width", "height"]].values.tolist() == [[5, 3]]


def test_normalise_copies_bytes_and_leaves_raw_untouched(raw: Path, tmp_path: Path) -> None:
    labels = write_labels(tmp_path / "labels.csv", ["IMG_3 (2).PNG,1", "零件 7.png,0", "a.png,1", "a.jpg,0"])
    before = {p.name: sha256_file(p) for p in raw.iterdir()}
    manifest = normalise_folder(raw, labels, tmp_path / "out", tmp_path / "manifest.csv")
    assert {p.name: sha256_file(p) for p in raw.iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(manifest.normalised_name)
    for row in manifest.itertuples():
        assert sha256_file(tmp_path / "out" / row.normalised_name) == row.sha256 == before[row.original_name]
    written = pd.read_csv(tmp_path / "manifest.csv", dtype=str, keep_default_na=False)
    assert list(written.columns) == MANIFEST_COLUMNS
    assert written.normalised_name.tolist() == sorted(written.normalised_name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv", "manifest.csv", "out", "raw"]  # no temps


def problems_for(raw: Path, tmp_path: Path, rows: list[str], header: str = "file,label") -> str:
    with pytest.raises(DataError) as info:
        build_manifest(raw, write_labels(tmp_path / "labels.csv", rows, header))
    return str(info.value)


def test_every_labels_problem_is_listed(raw: Path, tmp_path: Path) -> None:
    message = problems_for(
        raw, tmp_path, ["img_3 (2).png,1", "a.png,", "a.jpg,0", "a.jpg,1", "gone.png,1", "", "a.jpg,0"]
    )
    # Line numbers are those a spreadsheet shows: header is line 1, the blank line still counts.
    assert "line 3 (a.png): empty label" in message
    assert "a.jpg: listed 3 times, lines 4, 5, 8; keep one" in message
    assert "line 6 (gone.png): no such image" in message
    assert "零件 7.png: image has no labels row" in message
    # A case-only mismatch is matched to its image (tests/test_labels.py), so it is no problem.
    assert "img_3 (2).png" not in message and "IMG_3 (2).PNG" not in message


def test_groups_all_or_none(raw: Path, tmp_path: Path) -> None:
    rows = ["IMG_3 (2).PNG,1,g", "零件 7.png,0,", "a.png,1,g", "a.jpg,0,h"]
    message = problems_for(raw, tmp_path, rows, header="file,label,group")
    assert "line 3 (零件 7.png): empty group" in message


def test_labels_file_problems(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no label column.*found file, class"):
        read_labels(write_labels(tmp_path / "l.csv", ["a.png,1"], header="file,class"))
    (tmp_path / "gbk.csv").write_bytes("file,label\n零件.png,1\n".encode("gbk"))
    with pytest.raises(DataError, match="save it as 'CSV UTF-8'"):
        read_labels(tmp_path / "gbk.csv")
    with pytest.raises(DataError, match="labels file not found"):
        read_labels(tmp_path / "nope.csv")


def test_unreadable_images_and_subfolders(raw: Path, tmp_path: Path) -> None:
    rows = ["IMG_3 (2).PNG,1", "零件 7.png,0", "a.png,1", "a.jpg,0", "broken.png,1"]
    (raw / "broken.png").write_bytes(b"not a png")
    assert "broken.png: not an image Pillow can read" in problems_for(raw, tmp_path, rows)
    (raw / "more").mkdir()
    assert "more/ (sub-folder" in problems_for(raw, tmp_path, rows)


# --- CLI wiring: the four stages chained as DVC/Snakemake run them, from a folder holding params.yaml.


def run_stage(cwd: Path, stage: str, *args: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", f"stages.{stage}", *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["seed"] = 3
    params["composite"]["background"] = [255, 255, 255]
    params["resize"]["img_size"] = 16
    params["split"].update(folds=2, fold_ids=[0, 1])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    return tmp_path


@pytest.mark.cli
def test_cli_chain(workdir: Path) -> None:
    raw = workdir / "raw"
    raw.mkdir()
    rows = []
    for i in range(6):
        rgba = np.zeros((4 + i, 9, 4), np.uint8)
        rgba[..., 0] = 255  # red hidden under alpha 0 must not survive compositing
        Image.fromarray(rgba, "RGBA").save(raw / f"零件 {i}.PNG")
        rows.append(f"零件 {i}.PNG,{i % 2}")
    labels = write_labels(workdir / "labels.csv", rows)
    stages = [
        ("normalise", raw, labels, workdir / "norm", workdir / "manifest.csv"),
        ("composite", workdir / "norm", workdir / "comp"),
        ("resize", workdir / "comp", workdir / "model_in"),
        ("split", workdir / "manifest.csv", workdir / "folds.csv"),
    ]
    for stage, *args in stages:
        result = run_stage(workdir, stage, *args)
        assert result.returncode == 0, result.stderr
    folds = pd.read_csv(workdir / "folds.csv", dtype=str)
    # The split names exactly the files the image stages wrote, so training finds every one.
    assert sorted(p.name for p in (workdir / "model_in").iterdir()) == folds.file.tolist()
    assert folds.file.tolist()[0] == "ling_jian_0.png"
    with Image.open(workdir / "model_in" / "ling_jian_0.png") as img:
        assert img.mode == "RGB" and img.size == (16, 16)
        assert (np.asarray(img) == 255).all()


@pytest.mark.cli
@pytest.mark.parametrize("stage", ["normalise", "composite", "resize", "split"])
def test_cli_bad_input_is_one_line(workdir: Path, stage: str) -> None:
    missing = workdir / "missing"
    args = {"normalise": 4, "composite": 2, "resize": 2, "split": 2}[stage]
    result = run_stage(workdir, stage, *[missing] * (args - 1), workdir / "out")
    assert result.returncode != 0
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (workdir / "out").exists()


@pytest.mark.cli
def test_cli_bad_params_is_reported(workdir: Path) -> None:
    (workdir / "params.yaml").write_text("seed: -1\n", encoding="utf-8")
    result = run_stage(workdir, "composite", workdir / "in", workdir / "out")
    assert result.returncode != 0 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_data_stages_do_not_import_torch_or_mlflow() -> None:
    code = (
        "import sys, stages.normalise, stages.composite, stages.resize, stages.split; "
        "heavy = {'torch', 'mlflow'} & set(sys.modules); assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
