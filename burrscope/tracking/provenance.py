"""Where a run came from: the code (git), who ran which command, the DVC experiment, and the data (MLflow datasets).

`mlflow.start_run` fills in user, source and git tags itself; the pipeline creates its runs with MlflowClient (the
folds run as separate processes, see tracking.py), which records none of them, so they are made here. Git is asked
through its command line: the workspace always has it, and it needs no package.
"""

from __future__ import annotations

import getpass
import os
import warnings
from functools import cache
from pathlib import Path

import pandas as pd
from mlflow.entities import DatasetInput, InputTag
from mlflow.entities import SourceType as MlflowSourceType
from mlflow.utils.mlflow_tags import (
    MLFLOW_DATASET_CONTEXT,
    MLFLOW_GIT_BRANCH,
    MLFLOW_GIT_COMMIT,
    MLFLOW_GIT_DIRTY,
    MLFLOW_GIT_REPO_URL,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
    MLFLOW_USER,
)

from burrscope.tracking.gitinfo import changed_files, git, without_credentials

CHANGED_TAG = "git.changed"  # which tracked files differ from the commit, when mlflow.source.git.dirty is true
CHANGED_LIMIT = 500  # characters: enough to name what differs, well below MLflow's tag size limit
# DVC sets these for `dvc exp run` (dvc.env); DVC_STAGE for every stage it runs.
DVC_TAGS = {"DVC_EXP_NAME": "dvc.exp_name", "DVC_EXP_BASELINE_REV": "dvc.exp_baseline_rev", "DVC_STAGE": "dvc.stage"}
PIPELINE = "dvc.yaml"  # a parent's source under DVC: the whole pipeline run, not one stage
LABELS, FOLDS = "labels", "folds"  # dataset names


@cache
def git_tags(cwd: str) -> dict[str, str]:
    """Commit, branch, remote and whether tracked files (pipeline outputs aside) differ from the commit.

    Asked once per process and folder: a stage's code does not change while it runs. In a DVC temp experiment
    copy this is the copy's HEAD, the experiment's baseline, and its changed params make it dirty.
    """
    commit = git(cwd, "rev-parse", "HEAD")
    if not commit:
        return {}
    tags = {MLFLOW_GIT_COMMIT: commit}
    branch = git(cwd, "rev-parse", "--abbrev-ref", "HEAD")
    if branch and branch != "HEAD":  # HEAD: detached, no branch
        tags[MLFLOW_GIT_BRANCH] = branch
    remote = git(cwd, "config", "--get", "remote.origin.url")
    if remote:
        tags[MLFLOW_GIT_REPO_URL] = without_credentials(remote)
    changed = changed_files(cwd)
    if changed is not None:
        tags[MLFLOW_GIT_DIRTY] = str(bool(changed)).lower()
        if changed:
            tags[CHANGED_TAG] = ", ".join(changed)[:CHANGED_LIMIT]
    return tags


def user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no USER/LOGNAME: MLflow shows "unknown" then
        return None


def run_tags(source: str, root: Path | None = None, pipeline: bool = False) -> dict[str, str]:
    """The tags every run gets: `source` (the stage's script, e.g. stages/train.py), its type, user, git, DVC.

    `pipeline`: the run is a parent, which stands for the whole pipeline run: its source is dvc.yaml when DVC runs
    it, and it names no stage (the stage that happened to create it is only its first).
    """
    if pipeline and os.environ.get("DVC_STAGE"):
        source = PIPELINE
    tags = {MLFLOW_SOURCE_NAME: source, MLFLOW_SOURCE_TYPE: MlflowSourceType.to_string(MlflowSourceType.LOCAL)}
    if name := user():
        tags[MLFLOW_USER] = name
    tags.update(git_tags(str(root or Path.cwd())))
    dvc = {name: tag for name, tag in DVC_TAGS.items() if not (pipeline and name == "DVC_STAGE")}
    tags.update({tag: os.environ[name] for name, tag in dvc.items() if os.environ.get(name)})
    return tags


def _dataset(table: pd.DataFrame, name: str, source: str, context: str) -> DatasetInput:
    import mlflow.data  # only where datasets are logged

    with warnings.catch_warnings():
        # MLflow warns that a path matches both its local source types ("" and "file", one class), and that the
        # integer `fold` column could not hold missing values: neither applies to a table that is only described.
        warnings.simplefilter("ignore")
        dataset = mlflow.data.from_pandas(table, source=source, name=name, targets="label")._to_mlflow_entity()
    return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])


def _shown(path: Path, root: Path) -> str:
    """A path as the run records it: relative to the workspace when inside it, so a moved workspace still matches."""
    path = Path(os.path.abspath(path))
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def labels_input(labels_csv: Path | None, root: Path) -> list[DatasetInput]:
    """The labels CSV as a dataset, or nothing when it cannot be read as a plain CSV (it only describes the run)."""
    if labels_csv is None:
        return []
    try:
        table = pd.read_csv(labels_csv, dtype=str, keep_default_na=False)
    except (OSError, ValueError):  # missing, or a spreadsheet export that only burrscope.data.labels reads
        return []
    if "label" not in table.columns:
        return []
    return [_dataset(table, LABELS, _shown(labels_csv, root), "source")]


def fold_inputs(folds: pd.DataFrame, folds_csv: Path, fold: str | None, root: Path) -> list[DatasetInput]:
    """The fold assignment: whole (the parent, None), or as fold `fold` trains and validates on it; all of it
    trains the final model (a `fold` that is not a number)."""
    source = _shown(folds_csv, root)
    if fold is None:
        return [_dataset(folds, FOLDS, source, "cross-validation")]
    if not fold.isdigit():
        return [_dataset(folds, FOLDS, source, "training")]
    held_out = folds["fold"] == int(fold)
    return [
        _dataset(folds[~held_out].reset_index(drop=True), FOLDS, source, "training"),
        _dataset(folds[held_out].reset_index(drop=True), FOLDS, source, "validation"),
    ]
