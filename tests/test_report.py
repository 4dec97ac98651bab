"""Report stage: a self-contained, escaped, deterministic HTML page built from fake pipeline outputs."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

import markupsafe
import pandas as pd
import pytest
import yaml
from helpers import MULTICLASS, REPO, TOY, fake_training
from mlflow.tracking import MlflowClient
from PIL import Image

from burrscope.evaluation.curve import Point, write_curve
from burrscope.evaluation.pooled import load_predictions
from burrscope.evaluation.summary import aggregate, write_aggregate_outputs
from burrscope.params import load_params
from burrscope.report.build import build_report
from burrscope.report.figures import calibration_figure, roc_figure
from burrscope.report.inputs import ReportInputs
from burrscope.tables import AUDIT_SUMMARY, ISSUE_COLUMNS, ISSUES
from burrscope.tracking.lookup import run_url, ui_url
from burrscope.tracking.store import PIPELINE_KEY_TAG, pipeline_key
from stages.report import main

HOSTILE_FILE = "<b>&\"x'.png"  # a legal file name on disk
HOSTILE_ORIGINAL = "<script>x</script>.png"
IMG = re.compile(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+"')

Inputs = ReportInputs


def workspace(root: Path, folds: int = 2) -> dict[str, str]:
    """A params.yaml for `folds` folds in `root` (stages read it from the cwd); the env to run stages there."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["split"] = {"folds": folds, "fold_ids": list(range(folds))}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return {**os.environ, "PYTHONPATH": str(REPO)}


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
    """Manifest, model inputs, training, explain, aggregate and audit outputs for `predictions`.

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
    write_aggregate_outputs(aggregate_dir, *aggregate(pooled, classes, folds, threshold=0.5))
    explain_dir = root / "results" / "explain"
    fake_heatmaps(explain_dir, predictions)
    audit_dir = root / "results" / "audit"  # an audit that found nothing (tests/test_audit_report.py: findings)
    audit_dir.mkdir(parents=True)
    pd.DataFrame(columns=ISSUE_COLUMNS).to_csv(audit_dir / ISSUES, index=False)
    counts = ["audit_label", "audit_near_duplicate", "audit_outlier", "audit_duplicates_across_folds"]
    (audit_dir / AUDIT_SUMMARY).write_text(json.dumps(dict.fromkeys(counts, 0)))
    curve_dir = root / "results" / "curve"  # the curve stage's outputs without curve.fractions: the full run only
    write_curve(curve_dir, [Point(1.0, len(pooled) / 2, pooled)], classes, threshold=0.5, seed=0)
    return Inputs(manifest_csv, images_dir, train_dir, explain_dir, aggregate_dir, audit_dir, curve_dir)


@pytest.fixture(autouse=True)
def in_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stages run in the workspace, where the report looks for git and MLflow: here, neither is found."""
    monkeypatch.chdir(tmp_path)
    for name in ("DVC_EXP_NAME", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def binary(tmp_path: Path) -> Inputs:
    workspace(tmp_path)
    toy = TOY.assign(file=TOY["file"].replace("b.png", HOSTILE_FILE))  # b.png is misclassified
    return fake_inputs(tmp_path, toy)


def report(tmp_path: Path, inputs: Inputs) -> str:
    return build_report(inputs, load_params(tmp_path / "params.yaml").raw)


def test_the_learning_curve_section_says_how_to_switch_it_on_or_what_it_found(tmp_path: Path, binary: Inputs) -> None:
    page = report(tmp_path, binary)
    switch_on = "<code>dvc exp run -S &#39;curve.fractions=[0.25,0.5,0.75]&#39;</code>"  # a command, shown as code
    assert "Would more photos help?" in page and switch_on in page and 'alt="learning curve"' not in page
    full = pd.read_csv(binary.aggregate_dir / "predictions.csv", dtype={"label": str, "predicted": str})
    half = full.assign(prob_1=0.9, prob_0=0.1)  # every image called a burr: balanced accuracy 0.5
    write_curve(binary.curve_dir, [Point(0.5, 2, half), Point(1.0, 4, full)], ["0", "1"], threshold=0.5, seed=0)
    page = report(tmp_path, binary)
    sentence = json.loads((binary.curve_dir / "verdict.json").read_text())["sentence"]
    assert sentence.startswith("From 2 to 4 training photos per fold") and str(markupsafe.escape(sentence)) in page
    assert 'alt="learning curve"' in page


def test_report_shows_fold_table_figures_and_every_mistake(tmp_path: Path, binary: Inputs) -> None:
    page = report(tmp_path, binary)
    # b, f, g misclassified, each beside its heatmap; the figures; the correct heatmap of each fold beside its input
    assert len(IMG.findall(page)) == 2 * 3 + 4 + 2 * 2
    assert "Misclassified images (3)" in page and "Where the models look on images they got right (2)" in page
    # The per-fold table, from the hand-computed values in test_aggregate, with its n: images and burrs per fold.
    assert (
        "<td>0</td><td>4</td><td>2</td><td>0.750</td><td>0.750</td><td>0.667</td><td>1.000</td><td>0.800</td>" in page
    )
    assert "<td>mean ± std</td><td></td><td></td><td>0.625 ± 0.177</td>" in page
    assert "<td>pooled</td><td>8</td><td>4</td><td>0.625</td><td>0.625</td><td>0.600</td><td>0.750</td>" in page
    assert "<th>Fold</th><th>Images</th><th>burr images</th><th>Accuracy</th>" in page
    assert "ROC-AUC 0.750 on 8 images (4 ok, 4 burr), 2-fold cross-validation" in page
    assert "sha256 abababababab" in page
    # Data summary: one name renamed by a collision, two non-ASCII originals, sizes from the manifest.
    assert "<td>Renamed because names collided</td><td>1</td>" in page
    assert "<td>Non-ASCII original names</td><td>2</td>" in page
    assert "<td>Width (px)</td><td>400 to 470</td>" in page
    assert "fold 0: 4 trained on, 4 held out; fold 1: 4 trained on, 4 held out" in page


def test_the_first_screen_leads_with_recall_and_missed_burrs_with_their_n_and_intervals(
    tmp_path: Path, binary: Inputs
) -> None:
    page = report(tmp_path, binary)
    tile = r'<div class="tile"><span class="label">(.*?)</span><b>(.*?)</b><small>(.*?)</small><small class="n">(.*?)<'
    tiles = re.findall(tile, page)
    # 3 of the 4 burrs found (g missed), 2 of the 4 good parts flagged (b, f); Wilson intervals of 3/4, 1/4, 2/4, 5/8.
    assert tiles == [
        ("Recall of burr", "0.750", "95 % CI 0.301 to 0.954", "n = 4 burr"),
        ("burr missed", "1 of 4", "25.0 %, 95 % CI 4.6 % to 69.9 %", "n = 4 burr"),
        ("ok flagged as burr", "2 of 4", "50.0 %, 95 % CI 15.0 % to 85.0 %", "n = 4 ok"),
        ("Accuracy", "0.625", "95 % CI 0.306 to 0.863", "n = 8 images"),
        ("Balanced accuracy", "0.625", "mean of per-class recall", "n = 8 images"),
        ("ROC-AUC", "0.750", "over every threshold", "n = 4 burr, 4 ok"),
    ]
    assert "called burr at P(burr) ≥ 0.5 (predict.threshold)" in page


def test_params_are_folded_away_below_the_headline(tmp_path: Path, binary: Inputs) -> None:
    page = report(tmp_path, binary)
    folded = page[page.index('<details class="params">') : page.index("</details>")]
    assert page.index('class="tiles"') < page.index('<details class="params">')
    lr = load_params(tmp_path / "params.yaml").raw["lr"]  # whatever the repository's params.yaml holds
    assert f"\nlr: {lr}\n" in folded and "  background: [0, 0, 0]\n" in folded and "    flip: true\n" in folded


def test_class_names_replace_labels_everywhere_and_unlisted_labels_show_as_they_are(
    tmp_path: Path, binary: Inputs
) -> None:
    page = report(tmp_path, binary)  # the repository's params.yaml names 0 ok and 1 burr
    assert "<tr><td>ok</td><td>0</td><td>4</td><td>50%</td></tr>" in page  # the data section's class table
    assert "<th>burr missed</th><th>ok flagged</th>" in page  # the threshold table
    assert 'true <span class="good">ok</span> → predicted <span class="bad">burr</span>' in page
    assert "P(true) 0.400 · P(burr) 0.600" in page and "heat of class burr, P(burr) 0.100" in page
    assert "precision, recall and F1 of class &#39;burr&#39;" in page
    params = load_params(tmp_path / "params.yaml").raw
    params["data"]["class_names"] = {1: "burr"}
    page = build_report(binary, params)
    assert "<tr><td>0</td><td>0</td><td>4</td><td>50%</td></tr>" in page and "<th>0 flagged</th>" in page
    assert 'true <span class="good">0</span> → predicted <span class="bad">burr</span>' in page


def test_class_names_are_escaped(tmp_path: Path, binary: Inputs) -> None:
    params = load_params(tmp_path / "params.yaml").raw
    params["data"]["class_names"] = {0: "<ok>", 1: "burr&<x>"}
    page = build_report(binary, params)
    assert '<span class="label">Recall of burr&amp;&lt;x&gt;</span>' in page
    assert "<td>&lt;ok&gt;</td><td>0</td>" in page and "<th>burr&amp;&lt;x&gt; missed</th>" in page
    assert 'true <span class="good">&lt;ok&gt;</span> → predicted <span class="bad">burr&amp;&lt;x&gt;</span>' in page
    assert "<ok>" not in page and "burr&<x>" not in page


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


def test_every_mistake_is_shown_beside_its_heatmap_at_full_size_on_click(tmp_path: Path, binary: Inputs) -> None:
    big = binary.images_dir / "f.png"  # a misclassified input larger than a card shows it
    Image.new("RGB", (300, 300), (10, 20, 30)).save(big)
    page = report(tmp_path, binary)
    mistakes = page[page.index('<h2 id="misclassified">') : page.index('<h2 id="where-models-look">')]
    cards = re.findall(r'<figure class="card zoom" id="(mistake-\d)">\n<a class="pair" href="#\1"', mistakes)
    assert cards == ["mistake-1", "mistake-2", "mistake-3"]  # each card opens itself, full screen, by CSS alone
    assert mistakes.count('alt="heatmap of ') == 3 and mistakes.count('<a class="close" href="#misclassified">') == 3
    assert ".zoom:target" in page and "<script" not in page
    embedded = [
        Image.open(io.BytesIO(base64.b64decode(uri)))
        for uri in re.findall(r'src="data:image/png;base64,([^"]+)"', mistakes)
    ]
    assert (300, 300) in [image.size for image in embedded]  # the full resolution, not a thumbnail
    # The gallery after it holds the explained images that are not mistakes: the first correct one of each fold.
    gallery = page[page.index('<h2 id="where-models-look">') :]
    assert re.findall(r'predicted <span class="(good|bad)">', gallery) == ["good", "good"]
    assert "heat of class burr, P(burr) 0.200" in gallery and "Reading a heatmap" in page


def test_a_mistake_the_explain_stage_did_not_pick_is_shown_without_a_heatmap(tmp_path: Path, binary: Inputs) -> None:
    heatmaps = binary.explain_dir / "fold_1" / "heatmaps.csv"
    table = pd.read_csv(heatmaps, dtype=str)
    table[table["file"] != "g.png"].to_csv(heatmaps, index=False)  # as if g were decided otherwise at training
    page = report(tmp_path, binary)
    assert page.count("No heatmap: the explain stage picks mistakes") == 1
    assert page.count('alt="heatmap of ') == 2 + 2


def test_train_keep_best_marks_every_held_out_score_as_optimistic(tmp_path: Path, binary: Inputs) -> None:
    assert 'class="flag"' not in report(tmp_path, binary) and "Optimistic scores" not in report(tmp_path, binary)
    for fold in (0, 1):
        metrics_json = binary.train_dir / f"fold_{fold}" / "metrics.json"
        metrics = json.loads(metrics_json.read_text())
        metrics_json.write_text(json.dumps(metrics | {"keep": "best", "epoch_kept": 2 + fold}))
    page = report(tmp_path, binary)
    assert "<b>Optimistic scores.</b> With <code>train.keep: best</code>" in page
    assert page.count("optimistic</em></small>") == 6  # every tile
    assert page.count("optimistic</em></figcaption>") == 4  # confusion, ROC, calibration, training curves
    cross_validation = page[page.index("<h2>Cross-validation</h2>") : page.index("<h2>Decision threshold</h2>")]
    assert "Optimistic: each fold's epoch was picked" in cross_validation
    assert "<th>Epoch picked on held-out</th>" in cross_validation
    assert "<td>0</td><td>4</td><td>2</td><td>2</td><td>0.750</td>" in cross_validation
    assert "<td>1</td><td>4</td><td>2</td><td>3</td><td>0.500</td>" in cross_validation


def test_the_calibration_plot_keeps_its_corner_points_whole() -> None:
    calibration = pd.DataFrame(
        {
            "bin_lower": [0.0, 0.9],
            "bin_upper": [0.1, 1.0],
            "mean_predicted": [0.0, 1.0],
            "fraction_positive": [0.0, 1.0],
            "count": [50, 50],
        }
    )
    ax = calibration_figure(calibration, {"ece": 0.0, "brier": 0.0}, "P(burr)").axes[0]
    dots = ax.collections[0]
    assert not dots.get_clip_on()
    assert ax.get_xlim()[0] < 0 < 1 < ax.get_xlim()[1] and ax.get_ylim()[0] < 0 < 1 < ax.get_ylim()[1]


def test_the_calibration_line_never_crosses_empty_bins() -> None:
    calibration = pd.DataFrame(
        {
            "bin_lower": [0.0, 0.1, 0.7, 0.9],
            "bin_upper": [0.1, 0.2, 0.8, 1.0],
            "mean_predicted": [0.02, 0.15, 0.76, 0.97],
            "fraction_positive": [0.0, 0.1, 1.0, 1.0],
            "count": [50, 5, 3, 40],
        }
    )
    ax = calibration_figure(calibration, {"ece": 0.0, "brier": 0.0}, "P(burr)").axes[0]
    joined = [list(line.get_xdata()) for line in ax.get_lines()[1:]]  # the first line is the diagonal
    assert joined == [[0.02, 0.15], [0.76], [0.97]]  # 0.2 to 0.7 and 0.8 to 0.9 hold nothing


def test_the_roc_curve_stands_off_the_frame_beside_the_chance_diagonal() -> None:
    roc = pd.DataFrame({"fpr": [0.0, 0.0, 1.0], "tpr": [0.0, 1.0, 1.0]})  # a perfect score runs along two edges
    ax = roc_figure(roc, 1.0, "burr").axes[0]
    assert ax.get_xlim()[0] < 0 and ax.get_ylim()[1] > 1
    assert [line.get_label() for line in ax.get_lines()] == ["chance", "pooled out-of-fold"]


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
    assert "<td>&lt;ok&gt;</td><td>&lt;ok&gt;</td><td>4</td><td>50%</td>" in page  # the data section's class table
    assert "<th>burr&amp;&lt;x&gt; missed</th>" in page  # the threshold table's heading
    assert 'true <span class="good">&lt;ok&gt;</span> → predicted <span class="bad">burr&amp;&lt;x&gt;</span>' in page
    assert "<ok>" not in page and "burr&<x>" not in page


@pytest.mark.cli
def test_report_is_deterministic_across_processes(tmp_path: Path, binary: Inputs) -> None:
    env = workspace(tmp_path)
    command = [sys.executable, "-m", "stages.report", *map(str, dataclasses.astuple(binary)), "reports/report.html"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert done.stdout.startswith("report: reports/report.html")
    written = (tmp_path / "reports" / "report.html").read_bytes()
    assert written == report(tmp_path, binary).encode()  # this process too: other hash seed, same bytes
    assert len(written) < 1_000_000


def test_multiclass_report_has_no_roc(tmp_path: Path) -> None:
    workspace(tmp_path)
    page = report(tmp_path, fake_inputs(tmp_path, MULTICLASS))
    assert "not applicable" in page and "ROC-AUC" not in page
    # c, e misclassified, beside their heatmaps; confusion, calibration, training curves; one correct per fold
    assert len(IMG.findall(page)) == 2 * 2 + 3 + 2 * 2
    assert "applies to two classes only" in page
    assert "P(true) 0.300 · P(burr) 0.500" in page  # multi-class: probability of the predicted class, "1" named
    assert "heat of class 2, P(2) 0.100" in page  # "2" has no name in params: shown as it is


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
    monkeypatch.setattr(sys, "argv", ["report", *map(str, dataclasses.astuple(binary)), "report.html"])
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


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


@pytest.fixture
def committed(tmp_path: Path, binary: Inputs, monkeypatch: pytest.MonkeyPatch) -> Inputs:
    """The workspace as a git repository: params.yaml and a dvc.lock committed on 1 May 2024."""
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "test")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "test@example.com")
        monkeypatch.setenv(f"GIT_{role}_DATE", "2024-05-01T12:00:00Z")
    (tmp_path / ".gitignore").write_text("data/\nresults/\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "params")
    return binary


def header(page: str) -> str:
    return page[page.index('<p class="provenance">') : page.index('<p class="lede">')]


def test_the_header_names_the_inputs_commit_its_date_and_the_dvc_experiment(
    tmp_path: Path, committed: Inputs, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout[:8]
    monkeypatch.setenv("DVC_EXP_NAME", "lower-lr")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")  # DVC rewrites it during the very run
    page = report(tmp_path, committed)
    top = header(page)
    assert f"from commit <code>{commit}</code> of 2024-05-01" in top and "DVC experiment <code>lower-lr</code>" in top
    assert "no MLflow run" in top
    # Committing the results the run made leaves the report naming the commit they were computed from.
    git(tmp_path, "add", "dvc.lock")
    git(tmp_path, "commit", "-q", "-m", "results")
    assert report(tmp_path, committed) == page
    # So does a commit of what the pipeline never reads, such as the docs.
    (tmp_path / "NOTES.md").write_text("what the run showed\n")
    git(tmp_path, "add", "NOTES.md")
    git(tmp_path, "commit", "-q", "-m", "notes")
    assert report(tmp_path, committed) == page
    (tmp_path / "params.yaml").write_text((tmp_path / "params.yaml").read_text() + "\n")
    assert f"commit <code>{commit}+dirty</code>" in header(report(tmp_path, committed))
    assert not (tmp_path / "mlflow.db").exists()  # looking for a run never creates a store


def test_the_header_links_the_pipeline_runs_mlflow_parent(tmp_path: Path, binary: Inputs) -> None:
    params = load_params(tmp_path / "params.yaml")
    recipe = params.recipe
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment(params.mlflow.experiment)
    folds_csv = tmp_path / "data" / "processed" / "folds.csv"
    tags = {PIPELINE_KEY_TAG: pipeline_key(recipe, folds_csv)}  # as the folds' runs file their parent
    client.create_run(experiment, start_time=1714645860000, tags=tags, run_name="pipeline")
    client.create_run(experiment, start_time=1714645990000, tags={PIPELINE_KEY_TAG: "another pipeline run"})
    folds_csv.unlink()  # the report finds the parent from the fold assignment its pooled predictions carry
    page = report(tmp_path, binary)
    top = header(page)
    assert "git commit unknown" in top
    search = urllib.parse.urlencode({"searchFilter": f"tags.{PIPELINE_KEY_TAG} = '{tags[PIPELINE_KEY_TAG]}'"})
    link = f"http://127.0.0.1:5000/#/experiments/{experiment}/runs?{search}&amp;workflowType=machine_learning"
    # The run's own page, through the page the stage writes beside the report once it knows the run id; and the
    # experiment's runs with the key, which works wherever the report is opened.
    run_page = f"mlflow-run-{tags[PIPELINE_KEY_TAG]}.html"
    assert f'<a href="{run_page}">MLflow pipeline run</a> (<a href="{link}">every run with key</a>' in top
    # The same pipeline run again (a new parent, as a rerun makes): the same report, byte for byte.
    client.create_run(experiment, start_time=1714649999000, tags=tags, run_name="rerun")
    assert report(tmp_path, binary) == page


def test_an_unreachable_mlflow_server_leaves_the_report_without_a_run(
    tmp_path: Path, binary: Inputs, unreachable_mlflow: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "no MLflow run" in header(report(tmp_path, binary))
    assert "warning: report: MLflow run not looked up" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("uri", "base"),
    [
        ("sqlite:////work/mlflow.db", "http://127.0.0.1:5000"),
        ("postgresql://u:p@db/mlflow", "http://127.0.0.1:5000"),
        ("https://user:secret@mlflow.example.org:8443/", "https://mlflow.example.org:8443"),
    ],
)
def test_the_run_link_points_at_the_tracking_server_or_mlflow_ui_without_credentials(uri: str, base: str) -> None:
    assert (
        ui_url(uri, "3", "tags.k = 'v'")
        == f"{base}/#/experiments/3/runs?searchFilter=tags.k+%3D+%27v%27&workflowType=machine_learning"
    )
    assert run_url(uri, "3", "ab12") == f"{base}/#/experiments/3/runs/ab12?workflowType=machine_learning"


def test_the_header_says_when_the_images_are_the_generated_demo(tmp_path: Path, binary: Inputs) -> None:
    params = load_params(tmp_path / "params.yaml").raw
    assert params["data"]["raw_dir"] == "data/demo/images"
    page = build_report(binary, params)
    assert "<b>Demo data.</b>" in page[: page.index('<p class="provenance">')]  # first, under the title
    params["data"]["raw_dir"] = "data/raw"
    assert "Demo data" not in build_report(binary, params)
