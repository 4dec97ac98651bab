"""The report's "Check these photos first" section and its banner, from fake audit outputs beside the fake stage
outputs of tests/test_report.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
from helpers import TOY
from test_report import IMG, fake_inputs, workspace

from burrscope.params import load_params
from burrscope.report.build import build_report
from burrscope.report.inputs import ReportInputs
from burrscope.tables import AUDIT_SUMMARY, ISSUE_COLUMNS, ISSUES

BANNER = "Flattered cross-validation."


@pytest.fixture
def inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ReportInputs:
    """The fake outputs of tests/test_report.py, whose audit found nothing, named as the stage's command names it."""
    monkeypatch.chdir(tmp_path)
    for name in ("DVC_EXP_NAME", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    workspace(tmp_path)
    made = fake_inputs(tmp_path, TOY)
    return dataclasses.replace(made, audit_dir=Path("results/audit"))


def fake_audit(inputs: ReportInputs, *, crossing: bool) -> list[str]:
    """issues.csv and summary.json: the first photo's label doubted, and the second a near-duplicate of another
    in its fold 0, or in fold 1 when `crossing`; the files of the pooled predictions."""
    predictions = pd.read_csv(inputs.aggregate_dir / "predictions.csv", dtype=str)
    files, folds = predictions["file"].tolist(), predictions["fold"].tolist()
    assert folds == ["0", "0", "1", "1", "1", "1", "0", "0"]  # a b e f g h, then c and d renamed teil_1*
    other = 2 if crossing else 6
    rows = [
        [files[0], "<i>Grat</i> 1.PNG", "label", 0.8, "0", "1", folds[0], ""],
        [files[1], "photo 1.png", "near_duplicate", 0.991, "0", "", folds[1], files[other]],
    ]
    pd.DataFrame(rows, columns=ISSUE_COLUMNS).to_csv(inputs.audit_dir / ISSUES, index=False)
    summary = {"audit_label": 1, "audit_near_duplicate": 1, "audit_outlier": 0}
    summary["audit_duplicates_across_folds"] = int(crossing)
    (inputs.audit_dir / AUDIT_SUMMARY).write_text(json.dumps(summary))
    return files


def page(root: Path, inputs: ReportInputs) -> str:
    return build_report(inputs, load_params(root / "params.yaml").raw)


def test_the_section_shows_label_suspects_and_pairs_and_the_banner_when_pairs_cross(
    tmp_path: Path, inputs: ReportInputs
) -> None:
    files = fake_audit(inputs, crossing=True)
    html = page(tmp_path, inputs)
    assert '<h2 id="check-first">Check these photos first</h2>' in html
    assert "Labels to check (1)" in html and "Near-duplicate pairs (1)" in html and "Outliers" not in html
    # TOY's first photo: labelled 0 (ok), P(0) 0.8 and P(1) 0.2 out of fold
    assert 'labelled <span class="bad">ok</span> → suggested <span class="good">burr</span>' in html
    assert "out of fold: P(ok) 0.800 · P(burr) 0.200" in html
    assert "&lt;i&gt;Grat&lt;/i&gt; 1.PNG" in html and "<i>Grat</i>" not in html  # escaped
    assert f"{files[1]} · fold 0 · labelled ok" in html and f"{files[2]} · fold 1 · labelled ok" in html
    assert 'cosine similarity 0.991 · <span class="bad">in two folds</span>' in html
    banner = html.index(BANNER)
    assert banner < html.index("<h2")  # near the top: before the first section
    assert "cp results/audit/labels_with_groups.csv data/demo/labels_grouped.csv" in html


def test_no_banner_when_pairs_share_a_fold(tmp_path: Path, inputs: ReportInputs) -> None:
    fake_audit(inputs, crossing=False)
    html = page(tmp_path, inputs)
    assert BANNER not in html and "cosine similarity 0.991 · same fold" in html


def test_the_section_adds_one_picture_per_suspect_and_two_per_pair(tmp_path: Path, inputs: ReportInputs) -> None:
    without = page(tmp_path, inputs)  # tests/test_report.py's audit found nothing
    fake_audit(inputs, crossing=True)
    assert len(IMG.findall(page(tmp_path, inputs))) == len(IMG.findall(without)) + 1 + 2
