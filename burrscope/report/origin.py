"""Where a report's numbers come from: the git commit, the DVC experiment and the MLflow parent run.

No clock is read, so the same outputs, commit and tracking store give the same page, byte for byte. The date
shown is the MLflow parent run's start, when the pipeline run began, and the commit's date beside the commit;
each is labelled as what it is. The time of rendering, or an output's modification time, would differ between
two renderings of the same results (DVC restores outputs from its cache with new times).

Everything here is read-only and best effort: without git or MLflow the report says so and is written.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pandas as pd

from burrscope.gitinfo import changed_files, git
from burrscope.params import Recipe

MLFLOW_UI = "http://127.0.0.1:5000"  # `mlflow ui`'s default address, for a store that is not a server


@dataclass(frozen=True)
class MlflowRun:
    run_id: str
    experiment_id: str
    started: str  # UTC, to the minute
    url: str  # the run's page in the MLflow UI


@dataclass(frozen=True)
class Origin:
    """What the header says about the run; None where it could not be found."""

    commit: str | None  # short hash, "+dirty" when tracked files other than pipeline outputs differ from it
    commit_date: str | None  # UTC date of the commit
    experiment: str | None  # DVC_EXP_NAME, which `dvc exp run` sets
    mlflow: MlflowRun | None


def utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")


def git_commit() -> tuple[str | None, str | None]:
    """(short hash, with "+dirty" as MLflow's git tags count it; the commit's date), or (None, None)."""
    found, changed = git(".", "log", "-1", "--format=%H %ct"), changed_files(".")
    if not found or changed is None:  # no git, not a repository, no commit yet
        return None, None
    full, seconds = found.split()
    return full[:8] + ("+dirty" if changed else ""), utc(int(seconds))[:10]


def ui_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page: on the tracking server itself (without credentials), else where `mlflow ui` serves it."""
    parts = urlsplit(tracking_uri)
    base = MLFLOW_UI
    if parts.scheme in {"http", "https"}:
        base = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1], query="", fragment="")).rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def mlflow_parent(recipe: Recipe, assignment: pd.DataFrame) -> MlflowRun | None:
    """The pipeline run's MLflow parent, found read-only by its key from the (file, label, fold) `assignment`;
    None, with a warning if the store failed, when it cannot be found."""
    from mlflow.tracking import MlflowClient  # mlflow takes seconds to import: only when a run is looked for

    from burrscope import tracking

    root = tracking.workspace_root()
    uri = tracking.tracking_uri(root)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None  # opening a store that is not there would create it
    try:
        with tracking.env_defaults(tracking.PROBE_LIMITS):
            client = MlflowClient(uri)
            experiment = client.get_experiment_by_name(recipe.experiment)
            if experiment is None:
                return None
            connection = tracking.Connection(root, uri, client, experiment.experiment_id)
            run_id = connection.latest_parent(tracking.pipeline_key(recipe, assignment))
            if run_id is None:
                return None
            started = client.get_run(run_id).info.start_time / 1000
    except Exception as err:  # any store, any failure: the report is written without the link
        print(f"warning: report: MLflow run not looked up ({tracking.reason(err)})", file=sys.stderr)
        return None
    return MlflowRun(run_id, experiment.experiment_id, utc(started), ui_url(uri, experiment.experiment_id, run_id))


def find_origin(recipe: Recipe, assignment: pd.DataFrame) -> Origin:
    """The origin of the outputs in the current directory, as the report stage sees it."""
    commit, commit_date = git_commit()
    return Origin(commit, commit_date, os.environ.get("DVC_EXP_NAME") or None, mlflow_parent(recipe, assignment))
