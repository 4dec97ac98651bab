"""The pipeline end to end, as a user runs it: DVC and Snakemake in temp git copies of the repo, tiny params.

One `dvc repro` makes the committed project every test here starts from (conftest's `pipeline_run`); a test that
changes it works on a copy. Each further pipeline run checks what no cheaper test can: a forced rerun leaves git
clean, an experiment reruns exactly the training and links its MLflow runs, a queued one logs to the workspace's
store, and Snakemake's jobs really run (tests/test_graphs.py proves the two graphs identical without running them).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import REPO, copy_project, make_project, mlflow_runs, output, stages_run, user_env

from burrscope.tables import HEADLINE_METRICS

pytestmark = pytest.mark.e2e

PER_CLASS = 6
FOLD_STAGES = {"train@0", "train@1", "explain@0", "explain@1"}
AFTER_TRAINING = {"aggregate", "audit", "curve", "report", "export"}
STAGES = {"normalise", "composite", "resize", "split", *FOLD_STAGES, *AFTER_TRAINING}
DATA_OUTPUTS = ["data/interim/manifest.csv", "data/processed/folds.csv"]


def test_dvc_repro_produces_every_output(pipeline_run: Path) -> None:
    assert stages_run((pipeline_run.parent / "repro.log").read_text()) == STAGES
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
    assert stages_run(output(["dvc", "repro", "-f"], project, user_env(project))) == STAGES
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


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium to run the page's scripts")
def test_the_plots_page_draws_every_plot_in_a_browser_cut_off_from_the_network(
    pipeline_run: Path, tmp_path: Path
) -> None:
    output(["dvc", "plots", "show", "--out", str(tmp_path)], pipeline_run, user_env(pipeline_run))
    browser = [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", "--virtual-time-budget=10000",
        "--dump-dom", (tmp_path / "index.html").as_uri(),
    ]  # fmt: skip
    dom = subprocess.run(browser, capture_output=True, text=True, timeout=120, check=True).stdout
    assert dom.count("<canvas") == len(plot_titles(pipeline_run))  # vega-embed drew each plot


@pytest.fixture(scope="module")
def experimented(pipeline_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy of the project after `dvc exp run` of a new lr with the final model on top; (root, its output)."""
    project = copy_project(pipeline_run, tmp_path_factory.mktemp("experiment") / "project")
    command = ["dvc", "exp", "run", "-S", "lr=0.002", "-S", "predict.final=[all]", "--name", "lr-final"]
    return project, output(command, project, user_env(project))


def test_an_experiment_retrains_only_and_links_its_mlflow_runs_to_one_parent(
    experimented: tuple[Path, str], pipeline_run: Path
) -> None:
    project, printed = experimented
    assert stages_run(printed) == {*FOLD_STAGES, "final@all", *AFTER_TRAINING}
    assert "lr-final" in output(["dvc", "exp", "show", "--csv"], project, user_env(project))
    new = [r for r in mlflow_runs(project / "mlflow.db") if r not in mlflow_runs(pipeline_run / "mlflow.db")]
    parents = [r for r in new if r[2] is None]
    assert [p[1] for p in parents] == ["lr-final"]
    children = [r for r in new if r[2] is not None]
    assert sorted(c[1] for c in children) == ["export", "final", "fold-0", "fold-1"]
    assert {c[2] for c in children} == {parents[0][0]}


def test_the_final_model_is_what_export_and_predict_use(experimented: tuple[Path, str]) -> None:
    project, _ = experimented
    exported = json.loads((project / "results/export/export.json").read_text())
    assert [c["path"] for c in exported["source_checkpoints"]] == ["results/train/final/model.pt"]
    raw = sorted((project / "data/demo/images").iterdir())[:3]
    printed = output([sys.executable, "-m", "stages.predict", *map(str, raw)], project, user_env(project))
    assert "the final model" in printed and all(path.name in printed for path in raw)


def test_the_exp_show_recipe_fits_the_headline_and_the_changed_params_in_120_columns(
    experimented: tuple[Path, str],
) -> None:
    """docs/tracking.md's recipe, after the experiment above: rich squeezes a plain `dvc exp show` to `…` at this
    width."""
    project, _ = experimented
    page = (REPO / "docs" / "tracking.md").read_text()
    recipe = re.search(r"^dvc exp show --only-changed(?:[^\n]*\\\n)*[^\n]*", page, flags=re.M)
    assert recipe, "docs/tracking.md lost its `dvc exp show --only-changed ...` recipe"
    command = [*shlex.split(recipe.group(0).replace("\\\n", " ")), "--no-pager"]  # as a terminal without a pager
    table = output(command, project, {**user_env(project), "COLUMNS": "120"}).splitlines()
    assert table[1].split() == ["Experiment", *HEADLINE_METRICS, "lr", "predict.final"]
    assert not [line for line in table if "…" in line or len(line) > 120]


def test_the_learning_curve_is_one_experiment_away_and_retrains_no_fold(pipeline_run: Path, tmp_path: Path) -> None:
    """The README's command for the curve, as written: one stage per point, then the curve, its plot and the
    report's section; no fold, aggregate or export reruns."""
    project = copy_project(pipeline_run, tmp_path / "project")
    env = user_env(project)
    printed = output(["dvc", "exp", "run", "-S", "curve.fractions=[0.5]"], project, env)
    assert stages_run(printed) == {"curve_point@0.5", "curve", "report"}
    curve = pd.read_csv(project / "results/curve/curve.csv")
    assert curve["fraction"].tolist() == [0.5, 1.0] and curve["train_images"].tolist() == [4.0, 6.0]  # 2 of 3 per class
    verdict = json.loads((project / "results/curve/verdict.json").read_text())
    assert verdict["sentence"].startswith("From 4 to 6 training photos per fold, balanced accuracy")
    html = (project / "reports/report.html").read_text()
    assert "Would more photos help?" in html and verdict["sentence"] in html and 'alt="learning curve"' in html
    plots = output(["dvc", "plots", "show", "--json"], project, env)
    assert "results/curve/curve.csv" in plots and "failed to load" not in plots


def test_a_queued_experiment_logs_to_the_workspace_store(pipeline_run: Path, tmp_path: Path) -> None:
    """`dvc queue` runs in a copy under .dvc/tmp/exps; its runs still land in the workspace's mlflow.db."""
    project = copy_project(pipeline_run, tmp_path / "project")
    env = user_env(project)
    before = mlflow_runs(project / "mlflow.db")
    output(["dvc", "exp", "run", "--queue", "-S", "predict.threshold=0.4", "--name", "queued"], project, env)
    output(["dvc", "queue", "start"], project, env)
    deadline = time.monotonic() + 600
    while re.search(r"\b(Queued|Running)\b", status := output(["dvc", "queue", "status"], project, env)):
        assert time.monotonic() < deadline, status
        time.sleep(2)
    assert re.search(r"queued\b[^\n]*\bSuccess", status), status
    new = [r for r in mlflow_runs(project / "mlflow.db") if r not in before]
    assert [r[1] for r in new] == ["export"]  # a new threshold retrains nothing: only the export is logged again
    assert not list((project / ".dvc/tmp").rglob("mlflow.db"))


def test_snakemake_produces_the_same_outputs_and_reruns_only_what_changed(pipeline_run: Path, tmp_path: Path) -> None:
    root = make_project(tmp_path / "snakemake", per_class=PER_CLASS)
    env = user_env(root)
    output(["snakemake", "--cores", "2"], root, env)
    same = [*DATA_OUTPUTS, "results/train/fold_0/model.pt", "results/aggregate/metrics.json"]
    images = sorted((pipeline_run / "data/processed/images").glob("*.png"))
    same += [str(path.relative_to(pipeline_run)) for path in images]
    for name in same:
        assert (root / name).read_bytes() == (pipeline_run / name).read_bytes(), name
    assert (root / "reports/report.html").is_file()

    assert "Nothing to be done" in output(["snakemake", "--cores", "2", "--dry-run"], root, env)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["lr"] = 0.002
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    plan = output(["snakemake", "--cores", "2", "--dry-run"], root, env)
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", plan, flags=re.M))
    expected = {
        "train": "2",
        "explain": "2",
        "aggregate": "1",
        "audit": "1",
        "curve": "1",
        "report": "1",
        "export": "1",
    }
    expected |= {"all": "1", "total": "10"}
    assert jobs == expected
