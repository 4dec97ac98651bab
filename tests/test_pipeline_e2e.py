"""The pipeline end to end, as a user runs it: `dvc repro` in a temp git copy of the repo, tiny params.

One `dvc repro` makes the committed project every e2e test starts from (conftest's `pipeline_run`); a test that
changes it works on a copy. Here: what that run wrote, that a second run reruns nothing, that a forced rerun leaves git
clean, and what `dvc metrics show` and `dvc plots show` make of it. Experiments are in test_experiments_e2e.py and
Snakemake's run in test_snakemake_e2e.py, so that pytest-xdist runs the three files side by side.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import PER_CLASS, PIPELINE_STAGES, copy_project, output, stages_run, user_env

from burrscope.tables import HEADLINE_METRICS

pytestmark = pytest.mark.e2e


def test_dvc_repro_produces_every_output(pipeline_run: Path) -> None:
    assert stages_run((pipeline_run.parent / "repro.log").read_text()) == PIPELINE_STAGES
    for fold in (0, 1):
        for name in ("model.pt", "metrics.json", "history.csv", "predictions.csv"):
            assert (pipeline_run / f"results/train/fold_{fold}/{name}").is_file()
        explained = pipeline_run / f"results/explain/fold_{fold}"  # the explain stage's Grad-CAM overlays
        heatmaps = pd.read_csv(explained / "heatmaps.csv")
        assert len(heatmaps) and all((explained / name).is_file() for name in heatmaps["heatmap"])
    for name in ("metrics.json", "headline.json", "confusion.csv", "roc.csv", "thresholds.csv", "calibration.csv",
                 "history.csv", "predictions.csv"):  # fmt: skip
        assert (pipeline_run / "results/aggregate" / name).is_file()
    html = (pipeline_run / "reports/report.html").read_text()
    assert "<html" in html.lower() and "data:image/png;base64," in html and "Where the models look" in html
    assert len(pd.read_csv(pipeline_run / "results/aggregate/predictions.csv")) == 2 * PER_CLASS
    exported = json.loads((pipeline_run / "results/export/export.json").read_text())
    assert [Path(c["path"]).parent.name for c in exported["source_checkpoints"]] == ["fold_0", "fold_1"]
    measured = json.loads((pipeline_run / "logs/export.json").read_text())["parity"]  # the run's log, untracked
    assert max(measured.values()) <= exported["parity"]["tolerance"]


def test_second_dvc_repro_reruns_nothing(pipeline_run: Path) -> None:
    env = user_env(pipeline_run)
    assert stages_run(output(["dvc", "repro"], pipeline_run, env)) == set()
    assert "Data and pipelines are up to date" in output(["dvc", "status"], pipeline_run, env)


def test_a_forced_rerun_at_the_same_commit_leaves_git_clean(pipeline_run: Path, tmp_path: Path) -> None:
    """Every tracked output (dvc.lock, metrics, histories, export.json) is rewritten byte for byte: timings, run
    ids and registry versions live in MLflow and in untracked logs, and the exports are deterministic."""
    project = copy_project(pipeline_run, tmp_path / "copy")
    assert stages_run(output(["dvc", "repro", "-f"], project, user_env(project))) == PIPELINE_STAGES
    changed = output(["git", "status", "--porcelain"], project)
    assert changed == "", output(["git", "diff"], project)


def test_dvc_metrics_show_lists_the_headline_figures_and_the_audits_counts_only(pipeline_run: Path) -> None:
    shown = json.loads(output(["dvc", "metrics", "show", "--json"], pipeline_run, user_env(pipeline_run)))
    (workspace,) = shown.values()  # one revision, the workspace (DVC names it "")
    files = workspace["data"]
    # not the 50-odd figures of metrics.json
    assert list(files) == ["results/aggregate/headline.json", "results/audit/summary.json"]
    assert list(files["results/audit/summary.json"]["data"]) == [
        "audit_label", "audit_near_duplicate", "audit_outlier", "audit_duplicates_across_folds"
    ]  # fmt: skip
    headline = files["results/aggregate/headline.json"]["data"]
    assert list(headline) == HEADLINE_METRICS
    metrics = json.loads((pipeline_run / "results/aggregate/metrics.json").read_text())
    assert headline["accuracy"] == metrics["overall"]["accuracy"] and headline["ece"] == metrics["calibration"]["ece"]


def plot_titles(root: Path) -> list[str]:
    return [
        props["title"] for entry in yaml.safe_load((root / "dvc.yaml").read_text())["plots"] for props in entry.values()
    ]


def test_dvc_plots_show_writes_every_plot_into_a_page_that_fetches_nothing(pipeline_run: Path, tmp_path: Path) -> None:
    printed = output(["dvc", "plots", "show", "--out", str(tmp_path)], pipeline_run, user_env(pipeline_run))
    assert "failed to load" not in printed  # every plot's data file is there
    page = (tmp_path / "index.html").read_text()
    assert not re.search(r"<script[^>]*\ssrc=", page)  # vega comes inlined, not from DVC's CDN
    assert all(json.dumps(title) in page for title in plot_titles(pipeline_run))


def test_the_plots_page_draws_every_plot_in_a_browser_cut_off_from_the_network(
    pipeline_run: Path, chromium: str, tmp_path: Path
) -> None:
    output(["dvc", "plots", "show", "--out", str(tmp_path)], pipeline_run, user_env(pipeline_run))
    browser = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", "--virtual-time-budget=10000",
        "--dump-dom", (tmp_path / "index.html").as_uri(),
    ]  # fmt: skip
    dom = subprocess.run(browser, capture_output=True, text=True, timeout=120, check=True).stdout
    assert dom.count("<canvas") == len(plot_titles(pipeline_run))  # vega-embed drew each plot
