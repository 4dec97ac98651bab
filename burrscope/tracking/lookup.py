"""A pipeline run's MLflow parent, found read-only for the report's header, and links to it in the MLflow UI.

The header links the parent's own page through a small page beside the report (run_page_name), which the report
stage writes once it has logged the report to the parent: a run id changes every run, so it cannot be in the report,
whose bytes DVC tracks. The header's second link, the experiment's runs filtered by the pipeline key, works anywhere.
"""

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
    """Where `mlflow ui` shows a pipeline run: `page`, beside the report, opens the parent's own page; `url` is its
    experiment's runs, filtered to the parents that carry its key."""

    experiment_id: str
    key: str
    url: str

    @property
    def page(self) -> str:
        return run_page_name(self.key)


def run_page_name(key: str) -> str:
    """The file beside the report that opens the pipeline run's parent in `mlflow ui` (git-ignored, no DVC output)."""
    return f"mlflow-run-{key}.html"


def ui_base(tracking_uri: str) -> str:
    """The MLflow UI of a store: the tracking server itself (without credentials), else where `mlflow ui` serves."""
    parts = urlsplit(tracking_uri)
    if parts.scheme not in {"http", "https"}:
        return MLFLOW_UI
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1], query="", fragment="")).rstrip("/")


# MLflow 3's UI opens an experiment in its GenAI view unless told otherwise.
TRAINING_VIEW = {"workflowType": "machine_learning"}


def ui_url(tracking_uri: str, experiment_id: str, search_filter: str) -> str:
    """The experiment's runs that match `search_filter`, in the UI's model-training view."""
    query = urlencode({"searchFilter": search_filter} | TRAINING_VIEW)
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs?{query}"


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """A run's own page (its params, metrics and artifacts), in the UI's model-training view."""
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}?{urlencode(TRAINING_VIEW)}"


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
