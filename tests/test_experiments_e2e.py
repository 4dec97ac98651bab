"""An experiment end to end, on a copy of conftest's `pipeline_run`: `dvc exp run` reruns exactly the training and
links its MLflow runs to one parent, export and predict use its final model, and docs/tracking.md's `dvc exp show`
recipe fits it in 120 columns. The learning curve and a queued experiment are in test_curve_and_queue_e2e.py.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import AFTER_TRAINING, FOLD_STAGES, REPO, copy_project, mlflow_runs, output, stages_run, user_env

from burrscope.tables import HEADLINE_METRICS

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def experimented(pipeline_run: Path, module_folder: Callable[[str], Path]) -> tuple[Path, str]:
    """A copy of the project after `dvc exp run` of a new lr with the final model on top; (root, its output)."""
    project = copy_project(pipeline_run, module_folder("experiment") / "project")
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
