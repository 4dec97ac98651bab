"""A pipeline run's MLflow parent, found read-only for the report's header, and a link to it in the MLflow UI."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import pandas as pd

from burrscope.params import Params

MLFLOW_UI = "http://127.0.0.1:5000"  # `mlflow ui`'s default address, for a store that is not a server


def utc(seconds: float) -> str:
    """A time as the report prints it, to the minute."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True)
class PipelineRunLink:
    """Where `mlflow ui` shows a pipeline run: its experiment's runs, filtered to the parent that carries its key."""

    experiment_id: str
    key: str
    url: str


def ui_url(tracking_uri: str, experiment_id: str, search_filter: str) -> str:
    """The experiment's runs that match `search_filter`, on the tracking server itself (without credentials), else
    where `mlflow ui` serves it, in the UI's model-training view (MLflow 3 opens in its GenAI view unless told)."""
    parts = urlsplit(tracking_uri)
    base = MLFLOW_UI
    if parts.scheme in {"http", "https"}:
        base = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1], query="", fragment="")).rstrip("/")
    query = urlencode({"searchFilter": search_filter, "workflowType": "machine_learning"})
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"


def pipeline_run_link(params: Params, assignment: pd.DataFrame) -> PipelineRunLink | None:
    """The pipeline run in `mlflow ui`, if its parent is in the store, looked up read-only by its key from the
    (file, label, fold) `assignment`; None, with a warning if the store failed, when it cannot be found.

    The link filters the experiment's runs to the parents with the key (one, unless the same params and folds ran
    again): names that stay the same when the pipeline runs again, as a run id would not, so that a rerun writes the
    same report, byte for byte."""
    from mlflow.tracking import MlflowClient  # mlflow takes seconds to import: only when a run is looked for

    from burrscope.tracking import store as tracking

    root = tracking.workspace_root()
    uri = tracking.tracking_uri(root)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None  # opening a store that is not there would create it
    key = tracking.pipeline_key(params.recipe, assignment)
    try:
        with tracking.env_defaults(tracking.PROBE_LIMITS):
            client = MlflowClient(uri)
            experiment = client.get_experiment_by_name(params.mlflow.experiment)
            if experiment is None:
                return None
            connection = tracking.Connection(root, uri, client, experiment.experiment_id)
            if connection.latest_parent(key) is None:
                return None
    except Exception as err:  # any store, any failure: the report is written without the link
        print(f"warning: report: MLflow run not looked up ({tracking.reason(err)})", file=sys.stderr)
        return None
    search = f"tags.{tracking.PIPELINE_KEY_TAG} = '{key}'"
    return PipelineRunLink(experiment.experiment_id, key, ui_url(uri, experiment.experiment_id, search))
