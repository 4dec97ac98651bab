"""Two more experiments end to end, each on its own copy of conftest's `pipeline_run`: the learning curve is one
experiment away and retrains no fold, and a queued experiment logs to the workspace's MLflow store.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import copy_project, mlflow_runs, output, stages_run, user_env

pytestmark = pytest.mark.e2e


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
    # Only the export reruns, to register the model under the new name: the queue's own cost is what this waits on.
    queued = ["dvc", "exp", "run", "--queue", "-S", "mlflow.registered_model=burrscope-queued", "--name", "queued"]
    output(queued, project, env)
    output(["dvc", "queue", "start"], project, env)
    deadline = time.monotonic() + 600
    while re.search(r"\b(Queued|Running)\b", status := output(["dvc", "queue", "status"], project, env)):
        assert time.monotonic() < deadline, status
        time.sleep(5)  # each look is a `dvc` process: over half a second of CPU the other test files need
    assert re.search(r"queued\b[^\n]*\bSuccess", status), status
    new = [r for r in mlflow_runs(project / "mlflow.db") if r not in before]
    assert [r[1] for r in new] == ["export"]
    assert not list((project / ".dvc/tmp").rglob("mlflow.db"))
