"""A pipeline run's MLflow parent, found read-only (for the report's header), with its page in the MLflow UI."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pandas as pd

from burrscope.params import Params

MLFLOW_UI = "http://127.0.0.1:5000"  # `mlflow ui`'s default address, for a store that is not a server


def utc(seconds: float) -> str:
    """A time as the report prints it, to the minute."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True)
class MlflowRun:
    run_id: str
    experiment_id: str
    started: str  # UTC, to the minute
    url: str  # the run's page in the MLflow UI


def ui_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page: on the tracking server itself (without credentials), else where `mlflow ui` serves it; in
    the UI's model-training view (MLflow 3 opens in its GenAI view unless told, or unless the experiment says)."""
    parts = urlsplit(tracking_uri)
    base = MLFLOW_UI
    if parts.scheme in {"http", "https"}:
        base = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1], query="", fragment="")).rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def mlflow_parent(params: Params, assignment: pd.DataFrame) -> MlflowRun | None:
    """The pipeline run's MLflow parent, found read-only by its key from the (file, label, fold) `assignment`;
    None, with a warning if the store failed, when it cannot be found."""
    from mlflow.tracking import MlflowClient  # mlflow takes seconds to import: only when a run is looked for

    from burrscope.tracking import store as tracking

    root = tracking.workspace_root()
    uri = tracking.tracking_uri(root)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None  # opening a store that is not there would create it
    try:
        with tracking.env_defaults(tracking.PROBE_LIMITS):
            client = MlflowClient(uri)
            experiment = client.get_experiment_by_name(params.mlflow.experiment)
            if experiment is None:
                return None
            connection = tracking.Connection(root, uri, client, experiment.experiment_id)
            run_id = connection.latest_parent(tracking.pipeline_key(params.recipe, assignment))
            if run_id is None:
                return None
            started = client.get_run(run_id).info.start_time / 1000
    except Exception as err:  # any store, any failure: the report is written without the link
        print(f"warning: report: MLflow run not looked up ({tracking.reason(err)})", file=sys.stderr)
        return None
    return MlflowRun(run_id, experiment.experiment_id, utc(started), ui_url(uri, experiment.experiment_id, run_id))
