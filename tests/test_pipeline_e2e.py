"""The pipeline end to end, as a user runs it: DVC and Snakemake in a temp git copy of the repo, tiny params."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from burrscope.tables import HEADLINE_METRICS

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
PER_CLASS = 6
TINY = {"epochs": 1, "batch_size": 4, "resize": {"img_size": 32}, "split": {"folds": 2, "fold_ids": [0, 1]}}
FOLD_STAGES = {"train@0", "train@1", "explain@0", "explain@1"}
AFTER_TRAINING = {"aggregate", "report", "export"}
STAGES = {"normalise", "composite", "resize", "split", *FOLD_STAGES, *AFTER_TRAINING}
DATA_OUTPUTS = ["data/interim/manifest.csv", "data/processed/folds.csv"]


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def env_for(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    # The venv's tools (dvc, snakemake, python) first, as after activating it.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "test"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "test@example.com"
    return env


def deep_update(target: dict, changes: dict) -> None:
    for key, value in changes.items():
        if isinstance(value, dict):
            deep_update(target[key], value)
        else:
            target[key] = value


def make_project(root: Path) -> Path:
    """The repo's tracked files, a few demo images per class and tiny params, committed to a fresh git repo."""
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], REPO).split("\0")
    listed = [name for name in listed if name and (REPO / name).is_file()]
    for name in listed:
        # Neither the demo run's outputs and lock nor the full demo data: this project starts from nothing.
        if not name.startswith(("data/", "tests/", "results/", "reports/", ".dvc/")) and name != "dvc.lock":
            copy_into(root, name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    labels = pd.read_csv(REPO / params["data"]["labels"], dtype=str)
    subset = labels.groupby("label", group_keys=False).head(PER_CLASS)
    raw = root / params["data"]["raw_dir"]
    raw.mkdir(parents=True)
    for name in subset["file"]:
        shutil.copy2(REPO / params["data"]["raw_dir"] / name, raw / name)
    subset.to_csv(root / params["data"]["labels"], index=False)
    deep_update(params, TINY)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = env_for(root)
    run(["git", "init", "-q", "-b", "main"], root, env)
    run(["dvc", "init", "-q"], root, env)
    # DVC's settings and plot templates (the offline plots page) only now: `dvc init` refuses an existing .dvc.
    for name in listed:
        if name == ".dvc/config" or name.startswith(".dvc/plots/"):
            copy_into(root, name)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "tiny project"], root, env)
    return root


def copy_into(root: Path, name: str) -> None:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / name, root / name)


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def mlflow_runs(db: Path) -> list[tuple[str, str, str | None]]:
    """(run id, run name, parent run id) of every run in the store."""
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT r.run_uuid, r.name, t.value FROM runs r LEFT JOIN tags t "
            "ON t.run_uuid = r.run_uuid AND t.key = 'mlflow.parentRunId'"
        ).fetchall()


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_project(tmp_path_factory.mktemp("dvc"))
    output = run(["dvc", "repro"], root, env_for(root))
    assert stages_run(output) == STAGES
    return root


def test_dvc_repro_produces_every_output(dvc_project: Path) -> None:
    for fold in (0, 1):
        for name in ("model.pt", "metrics.json", "history.csv", "predictions.csv"):
            assert (dvc_project / f"results/train/fold_{fold}/{name}").is_file()
        explained = dvc_project / f"results/explain/fold_{fold}"  # the explain stage's Grad-CAM overlays
        heatmaps = pd.read_csv(explained / "heatmaps.csv")
        assert len(heatmaps) and all((explained / name).is_file() for name in heatmaps["heatmap"])
    for name in ("metrics.json", "headline.json", "confusion.csv", "roc.csv", "thresholds.csv", "calibration.csv",
                 "history.csv", "predictions.csv"):  # fmt: skip
        assert (dvc_project / "results/aggregate" / name).is_file()
    html = (dvc_project / "reports/report.html").read_text()
    assert "<html" in html.lower() and "data:image/png;base64," in html and "Where the models look" in html
    assert len(pd.read_csv(dvc_project / "results/aggregate/predictions.csv")) == 2 * PER_CLASS
    exported = json.loads((dvc_project / "results/export/export.json").read_text())
    assert [Path(c["path"]).parent.name for c in exported["source_checkpoints"]] == ["fold_0", "fold_1"]
    assert max(exported["parity"]["max_abs_diff"].values()) <= exported["parity"]["tolerance"]
    assert exported["mlflow"]["registered_model_uri"].startswith("models:/burrscope-burr-classifier/")


def test_second_dvc_repro_reruns_nothing(dvc_project: Path) -> None:
    output = run(["dvc", "repro"], dvc_project, env_for(dvc_project))
    assert stages_run(output) == set()
    assert "Data and pipelines are up to date" in run(["dvc", "status"], dvc_project, env_for(dvc_project))


def test_dvc_metrics_show_lists_the_headline_figures_only(dvc_project: Path) -> None:
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], dvc_project, env_for(dvc_project)))
    (workspace,) = shown.values()  # one revision, the workspace (DVC names it "")
    files = workspace["data"]
    assert list(files) == ["results/aggregate/headline.json"]  # not the 50-odd figures of metrics.json
    headline = files["results/aggregate/headline.json"]["data"]
    assert list(headline) == HEADLINE_METRICS
    metrics = json.loads((dvc_project / "results/aggregate/metrics.json").read_text())
    assert headline["accuracy"] == metrics["overall"]["accuracy"] and headline["ece"] == metrics["calibration"]["ece"]


def plot_titles(root: Path) -> list[str]:
    return [
        props["title"] for entry in yaml.safe_load((root / "dvc.yaml").read_text())["plots"] for props in entry.values()
    ]


def test_dvc_plots_show_writes_every_plot_into_a_page_that_fetches_nothing(dvc_project: Path) -> None:
    output = run(["dvc", "plots", "show"], dvc_project, env_for(dvc_project))
    assert "failed to load" not in output  # every plot's data file is there
    page = (dvc_project / "dvc_plots" / "index.html").read_text()
    assert not re.search(r"<script[^>]*\ssrc=", page)  # vega comes inlined, not from DVC's CDN
    assert all(json.dumps(title) in page for title in plot_titles(dvc_project))


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium to run the page's scripts")
def test_the_plots_page_draws_every_plot_in_a_browser_cut_off_from_the_network(
    dvc_project: Path, tmp_path: Path
) -> None:
    run(["dvc", "plots", "show", "--out", str(tmp_path)], dvc_project, env_for(dvc_project))
    browser = [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", "--virtual-time-budget=10000",
        "--dump-dom", (tmp_path / "index.html").as_uri(),
    ]  # fmt: skip
    dom = subprocess.run(browser, capture_output=True, text=True, timeout=120, check=True).stdout
    assert dom.count("<canvas") == len(plot_titles(dvc_project))  # vega-embed drew each plot


def test_dvc_exp_run_reruns_training_only_and_links_mlflow_runs(dvc_project: Path) -> None:
    env = env_for(dvc_project)
    run(["git", "add", "-A"], dvc_project, env)
    run(["git", "commit", "-q", "-m", "first run"], dvc_project, env)
    before = mlflow_runs(dvc_project / "mlflow.db")

    output = run(["dvc", "exp", "run", "-S", "lr=0.002", "--name", "lr-test"], dvc_project, env)
    assert stages_run(output) == {*FOLD_STAGES, *AFTER_TRAINING}
    assert "lr-test" in run(["dvc", "exp", "show", "--csv"], dvc_project, env)

    new = [r for r in mlflow_runs(dvc_project / "mlflow.db") if r not in before]
    parents = [r for r in new if r[2] is None]
    assert [p[1] for p in parents] == ["lr-test"]
    children = [r for r in new if r[2] is not None]
    assert sorted(c[1] for c in children) == ["export", "fold-0", "fold-1"]
    assert {c[2] for c in children} == {parents[0][0]}


def test_the_readme_exp_show_recipe_fits_the_headline_and_the_changed_param_in_120_columns(
    dvc_project: Path,
) -> None:
    """README's recipe, after the experiment above: rich squeezes a plain `dvc exp show` to `…` at this width."""
    readme = (REPO / "README.md").read_text()
    recipe = re.search(r"^dvc exp show --only-changed(?:[^\n]*\\\n)*[^\n]*", readme, flags=re.M)
    assert recipe, "README lost its `dvc exp show --only-changed ...` recipe"
    command = [*shlex.split(recipe.group(0).replace("\\\n", " ")), "--no-pager"]  # as a terminal without a pager
    table = run(command, dvc_project, {**env_for(dvc_project), "COLUMNS": "120"}).splitlines()
    assert table[1].split() == ["Experiment", *HEADLINE_METRICS, "lr"]  # the experiment changed lr alone
    assert not [line for line in table if "…" in line or len(line) > 120]


def test_temp_experiment_logs_to_the_workspace_store(dvc_project: Path) -> None:
    env = env_for(dvc_project)
    before = mlflow_runs(dvc_project / "mlflow.db")
    run(["dvc", "exp", "run", "--temp", "-S", "lr=0.003", "--name", "lr-temp"], dvc_project, env)
    new = [r for r in mlflow_runs(dvc_project / "mlflow.db") if r not in before]
    assert sorted(r[1] for r in new) == ["export", "fold-0", "fold-1", "lr-temp"]
    assert not list((dvc_project / ".dvc/tmp").rglob("mlflow.db"))


def test_queued_experiment_logs_to_the_workspace_store(dvc_project: Path) -> None:
    env = env_for(dvc_project)
    before = mlflow_runs(dvc_project / "mlflow.db")
    run(["dvc", "exp", "run", "--queue", "-S", "lr=0.004", "--name", "lr-queued"], dvc_project, env)
    run(["dvc", "queue", "start"], dvc_project, env)
    deadline = time.monotonic() + 600
    while re.search(r"\b(Queued|Running)\b", status := run(["dvc", "queue", "status"], dvc_project, env)):
        assert time.monotonic() < deadline, status
        time.sleep(2)
    assert re.search(r"lr-queued\b[^\n]*\bSuccess", status), status
    new = [r for r in mlflow_runs(dvc_project / "mlflow.db") if r not in before]
    assert sorted(r[1] for r in new) == ["export", "fold-0", "fold-1", "lr-queued"]


def test_final_model_is_trained_exported_and_used_by_predict(dvc_project: Path) -> None:
    # Last of the DVC tests: the exp run leaves predict.final: [all] in the workspace.
    env = env_for(dvc_project)
    output = run(["dvc", "exp", "run", "-S", "predict.final=[all]", "--name", "final-model"], dvc_project, env)
    assert stages_run(output) == {"final@all", *AFTER_TRAINING}  # no fold is retrained
    exported = json.loads((dvc_project / "results/export/export.json").read_text())
    assert [c["path"] for c in exported["source_checkpoints"]] == ["results/train/final/model.pt"]
    raw = sorted((dvc_project / "data/demo/images").iterdir())[:3]
    printed = run([sys.executable, "-m", "stages.predict", *map(str, raw)], dvc_project, env)
    assert "the final model" in printed and all(path.name in printed for path in raw)


def test_snakemake_produces_the_same_outputs_and_reruns_only_what_changed(
    dvc_project: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = make_project(tmp_path_factory.mktemp("snakemake"))
    env = env_for(root)
    run(["snakemake", "--cores", "2"], root, env)
    for name in DATA_OUTPUTS:
        assert (root / name).read_bytes() == (dvc_project / name).read_bytes(), name
    images = sorted((dvc_project / "data/processed/images").glob("*.png"))
    # Snakemake also drops a hidden .snakemake_timestamp into folder outputs; stages skip hidden files.
    assert sorted((root / "data/processed/images").glob("*.png")) == [root / p.relative_to(dvc_project) for p in images]
    for path in images:
        assert (root / path.relative_to(dvc_project)).read_bytes() == path.read_bytes(), path.name
    assert (root / "reports/report.html").is_file()

    assert "Nothing to be done" in run(["snakemake", "--cores", "2", "--dry-run"], root, env)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["lr"] = 0.002
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    plan = run(["snakemake", "--cores", "2", "--dry-run"], root, env)
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", plan, flags=re.M))
    expected = {"train": "2", "explain": "2", "aggregate": "1", "report": "1", "export": "1", "all": "1", "total": "8"}
    assert jobs == expected
