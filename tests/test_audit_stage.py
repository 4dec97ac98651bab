"""The audit stage end to end: its main() on real demo photos through the pipeline's own data stages, the
EfficientNet-Lite0 backbone's features at 64 px, and faked fold outputs (two labels the models doubt, two planted
near-duplicates in other folds than their photos)."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import REPO, TINY_PROJECT, fake_training, merged
from PIL import Image, ImageEnhance

from burrscope.data.labels import read_labels
from burrscope.data.manifest import normalise_folder
from burrscope.data.naming import output_name
from burrscope.evaluation.pooled import load_predictions
from burrscope.evaluation.summary import aggregate, write_aggregate_outputs
from burrscope.tables import ISSUE_COLUMNS
from stages.audit import main

pytestmark = pytest.mark.cli
PER_CLASS = 6
DOUBTED = 2  # photos whose given label the fake models put at P 0.1
COPIES = {"bright copy.png": 0, "small copy.png": 3}  # copy -> the photo (index in the labels) it copies


def brightened(img: Image.Image) -> Image.Image:
    *rgb, alpha = img.convert("RGBA").split()
    return Image.merge("RGBA", (*ImageEnhance.Brightness(Image.merge("RGB", rgb)).enhance(1.2).split(), alpha))


def smaller(img: Image.Image) -> Image.Image:
    return img.resize((img.width * 2 // 3, img.height * 2 // 3), Image.Resampling.LANCZOS)


def project(root: Path, composite: Callable[..., int], resize: Callable[..., int]) -> pd.DataFrame:
    """Demo photos and two planted copies through normalise, composite and resize into `root` (params.yaml: tiny,
    64 px, two folds); the fold table, each copy in the other fold than its photo."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = merged(merged(params, TINY_PROJECT), {"resize": {"img_size": 64}, "data": {"labels": "labels.csv"}})
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    demo = pd.read_csv(REPO / "data/demo/labels.csv", dtype=str)
    labels = demo.groupby("label", group_keys=False).head(PER_CLASS).reset_index(drop=True)
    raw = root / "raw"
    raw.mkdir()
    for name in labels["file"]:
        shutil.copy2(REPO / "data/demo/images" / name, raw / name)
    for copy, source in COPIES.items():
        with Image.open(raw / labels.loc[source, "file"]) as img:
            (brightened if copy.startswith("bright") else smaller)(img).save(raw / copy)
    copies = pd.DataFrame({"file": list(COPIES), "label": labels.loc[list(COPIES.values()), "label"].to_numpy()})
    pd.concat([labels, copies]).to_csv(root / "labels.csv", index=False)
    manifest = normalise_folder(raw, root / "labels.csv", root / "named", root / "manifest.csv", workers=1)
    composite(root / "named", root / "composited", (0, 0, 0), workers=1)
    resize(root / "composited", root / "data/processed/images", (0, 0, 0), 64, workers=1)
    table = manifest.assign(file=manifest["normalised_name"].map(output_name))[["original_name", "file", "label"]]
    table["fold"] = np.arange(len(table)) % 2
    for copy, source in COPIES.items():
        photo = table["original_name"] == labels.loc[source, "file"]
        table.loc[table["original_name"] == copy, "fold"] = 1 - table.loc[photo, "fold"].iloc[0]
    return table


def fake_outputs(root: Path, table: pd.DataFrame) -> list[str]:
    """Fold outputs and aggregate's pooled predictions for `table`: every label at P 0.9, but the first DOUBTED
    photos' labels at P 0.1; their files."""
    p_given = np.where(np.arange(len(table)) < DOUBTED, 0.1, 0.9)
    p_burr = np.where(table["label"] == "1", p_given, 1 - p_given)
    predictions = table.assign(predicted=np.where(p_burr >= 0.5, "1", "0"), prob_0=1 - p_burr, prob_1=p_burr)
    folds_csv, train_dir = fake_training(root, predictions[["file", "label", "fold", "predicted", "prob_0", "prob_1"]])
    pooled, classes = load_predictions(folds_csv, train_dir, 2)
    write_aggregate_outputs(root / "results/aggregate", *aggregate(pooled, classes, 2, 0.5))
    return table["file"].head(DOUBTED).tolist()


def test_the_stage_writes_its_findings_warns_and_leaves_the_labels_alone(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    composite_folder: Callable[..., int],
    resize_folder: Callable[..., int],
    unreachable_mlflow: str,  # the stage only warns
) -> None:
    table = project(tmp_path, composite_folder, resize_folder)
    doubted = fake_outputs(tmp_path, table)
    labels_before = (tmp_path / "labels.csv").read_bytes()
    monkeypatch.chdir(tmp_path)
    arguments = ["labels.csv", "manifest.csv", "data/processed/images", "data/processed/folds.csv"]
    monkeypatch.setattr(sys, "argv", ["audit", *arguments, "results/aggregate/predictions.csv", "results/audit"])
    main()
    printed = capsys.readouterr()

    assert (tmp_path / "labels.csv").read_bytes() == labels_before
    issues = pd.read_csv(tmp_path / "results/audit/issues.csv", dtype=str, keep_default_na=False)
    assert list(issues.columns) == ISSUE_COLUMNS
    assert set(issues.loc[issues["issue"] == "label", "file"].head(DOUBTED)) == set(doubted)
    pairs = issues[issues["issue"] == "near_duplicate"]
    files = dict(zip(table["original_name"], table["file"], strict=True))
    demo = read_labels(tmp_path / "labels.csv")["file"].tolist()
    planted = {frozenset((files[copy], files[demo[source]])) for copy, source in COPIES.items()}
    assert {frozenset((row.file, row.other_file)) for row in pairs.itertuples()} == planted
    summary = json.loads((tmp_path / "results/audit/summary.json").read_text())
    assert summary["audit_near_duplicate"] == summary["audit_duplicates_across_folds"] == 2
    assert summary["audit_label"] == (issues["issue"] == "label").sum()
    assert "2 near-duplicate pair(s) of photos sit in different folds" in printed.err
    assert printed.out.startswith(f"audit of {2 * PER_CLASS + 2} photos:")

    grouped = read_labels(tmp_path / "results/audit/labels_with_groups.csv")
    assert grouped[["file", "label"]].equals(read_labels(tmp_path / "labels.csv")[["file", "label"]])
    group = dict(zip(grouped["file"], grouped["group"], strict=True))
    for copy, source in COPIES.items():
        assert group[copy] == group[demo[source]]
    assert grouped["group"].nunique() == len(grouped) - len(COPIES)
