"""MLflow tracking: one parent run per pipeline run, one child run per fold, linked across processes.

The folds run as separate processes (and, under Snakemake, side by side), so they cannot share an active
run. Each fold finds-or-creates the parent under a file lock, keyed by what defines the pipeline run (the
DVC experiment name, the params and the fold assignment), and logs into its own child run through
MlflowClient, which ignores a leftover MLFLOW_RUN_ID (mlflow#15713). Aggregate logs the summary to the
parent and closes it. The final model (trained on every image) and the export stage may run after that:
they attach their child runs to the latest parent with the key, closed or not, and never reopen it.

Tracking must never cost a trained fold. An unreachable store (a bad MLFLOW_TRACKING_URI, a server that is
down, a sqlite file in a folder that cannot be created) stops the fold before training, with one line naming
the URI. If MLflow fails later, while logging epochs or artifacts, the fold warns once, stops talking to
MLflow, still writes its outputs and records the failure in its metrics.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from stages.errors import UserError

if TYPE_CHECKING:  # models imports torch, which aggregate must not pay for
    from stages.models import Weights

PIPELINE_KEY_TAG = "burrscope_pipeline_key"
PARENT_RUN_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
# DVC runs `--temp` and `--queue` experiments in a copy under <workspace>/.dvc/tmp/exps/.
DVC_EXP_TMP = (".dvc", "tmp", "exps")
BATCH_LIMIT = 100  # MLflow accepts at most 100 params per log_batch call
# MLflow's own defaults (7 retries with exponential backoff, 120 s per request) spend minutes on a dead
# server. The start-up probe tries once; epoch and artifact logging ride out a short blip. A user's own
# MLFLOW_HTTP_REQUEST_* settings win.
PROBE_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
LOGGING_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


class TrackingUnavailable(UserError):
    """The MLflow tracking store cannot be reached or opened."""


def workspace_root(cwd: Path | None = None) -> Path:
    """The main DVC workspace, even from inside a temp experiment copy, so runs land in one store."""
    cwd = (cwd or Path.cwd()).resolve()
    parts = cwd.parts
    for i in range(len(parts) - len(DVC_EXP_TMP) + 1):
        if parts[i : i + len(DVC_EXP_TMP)] == DVC_EXP_TMP:
            return Path(*parts[:i])
    return cwd


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"


def shown_uri(uri: str) -> str:
    """The URI without any user:password, fit for messages."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def _reason(err: BaseException) -> str:
    """An exception as one short line: MLflow's messages can run to many lines of HTTP detail."""
    text = " ".join(str(err).split()) or "no details"
    return f"{type(err).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


@contextmanager
def _env_defaults(values: Mapping[str, str]) -> Iterator[None]:
    """Set env vars (MLflow's HTTP retries and timeouts) for the calls inside, unless the user has set them."""
    added = [name for name in values if name not in os.environ]
    os.environ.update({name: values[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"train": {"augment": {"flip": True}}} -> {"train.augment.flip": "True"}."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def run_defining(params: Mapping[str, Any]) -> dict[str, Any]:
    """The params that define a pipeline run: all but how its models are used afterwards.

    Changing the decision threshold, the final-model choice or the registry name reruns only the stages after
    training, which must still find the parent run their folds logged to.
    """
    defining = {key: value for key, value in params.items() if key != "predict"}
    defining["mlflow"] = {key: value for key, value in params["mlflow"].items() if key != "registered_model"}
    return defining


def pipeline_key(params: Mapping[str, Any], folds_csv: Path) -> str:
    """Same for every fold and the aggregate of one pipeline run; different when params or folds change."""
    digest = hashlib.sha256(json.dumps(run_defining(params), sort_keys=True).encode())
    digest.update(Path(folds_csv).read_bytes())
    digest.update(os.environ.get("DVC_EXP_NAME", "").encode())
    return digest.hexdigest()[:16]


@contextmanager
def _workspace_lock(root: Path) -> Iterator[None]:
    from filelock import FileLock

    with FileLock(root / ".mlflow.lock"):
        yield


def _experiment_id(client: MlflowClient, name: str, root: Path) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # With the default local store, pin artifacts to the workspace, not to a temp experiment copy.
    location = None if os.environ.get("MLFLOW_TRACKING_URI") else (root / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


def _log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    items = [Param(k, v) for k, v in sorted(params.items())]
    for start in range(0, len(items), BATCH_LIMIT):
        client.log_batch(run_id, params=items[start : start + BATCH_LIMIT])


def _find_parent(client: MlflowClient, experiment_id: str, key: str, running_only: bool) -> str | None:
    query = f"tags.{PIPELINE_KEY_TAG} = '{key}'"
    if running_only:
        query += " and attributes.status = 'RUNNING'"
    runs = client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def _parent_run(client: MlflowClient, experiment_id: str, key: str, params: Mapping[str, Any],
                cross_validation: bool) -> str:
    """The running parent with the key, else (outside cross-validation) the latest closed one, else a new one.

    A fold finding only a closed parent is a rerun of the whole pipeline, which gets a new parent; the final
    model may legitimately train after aggregate has closed its parent.
    """
    found = (_find_parent(client, experiment_id, key, running_only=True)
             or (None if cross_validation else _find_parent(client, experiment_id, key, running_only=False)))
    if found:
        return found
    name = os.environ.get("DVC_EXP_NAME") or time.strftime("pipeline-%Y%m%d-%H%M%S")
    run = client.create_run(experiment_id, run_name=name, tags={PIPELINE_KEY_TAG: key})
    _log_params(client, run.info.run_id, flatten(run_defining(params)))
    return run.info.run_id


def _close_killed_attempts(client: MlflowClient, experiment_id: str, parent_id: str, fold: str) -> None:
    """A fold killed outright (SIGKILL, power loss) leaves its run RUNNING; its rerun marks it KILLED.

    DVC and Snakemake never run one fold of one pipeline run twice at once, so a RUNNING sibling is dead.
    """
    query = f"tags.`{PARENT_RUN_TAG}` = '{parent_id}' and tags.fold = '{fold}' and attributes.status = 'RUNNING'"
    for run in client.search_runs([experiment_id], query):
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))


def _unreachable_advice(root: Path) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return ("fix MLFLOW_TRACKING_URI (or start its server), "
                f"or unset it to track into sqlite:///{root / 'mlflow.db'}")
    return f"make {root} writable, or set MLFLOW_TRACKING_URI to a reachable tracking server"


class FoldRun:
    """A fold's child run: params at start, metrics once per epoch, artifacts and status at the end.

    `fold` is a fold number (0, "3"), or a label such as "final" for a model trained outside the
    cross-validation, whose run is named after it and joins the parent even once aggregate has closed it.
    Creating it is the reachability check: it raises TrackingUnavailable before any training. After that,
    an MLflow error never propagates: the first one is printed as a warning, kept in `status`, and the run
    stops logging.
    """

    def __init__(self, params: Mapping[str, Any], folds_csv: Path, fold: int | str) -> None:
        root = workspace_root()
        key = pipeline_key(params, folds_csv)
        uri = tracking_uri(root)
        label = str(fold)
        cross_validation = label.isdigit()
        self.failure: str | None = None
        try:
            with _env_defaults(PROBE_LIMITS):
                # Under the lock: the first client to open a new sqlite store creates its tables, and folds
                # starting side by side would race to do it.
                with _workspace_lock(root):
                    self.client = MlflowClient(uri)
                    experiment_id = _experiment_id(self.client, params["mlflow"]["experiment"], root)
                    self.parent_id = _parent_run(self.client, experiment_id, key, params, cross_validation)
                # Only parents carry the pipeline key, so the search above never finds a fold.
                _close_killed_attempts(self.client, experiment_id, self.parent_id, label)
                tags = {PARENT_RUN_TAG: self.parent_id, "fold": label}
                name = f"fold-{label}" if cross_validation else label
                self.run_id = self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
                _log_params(self.client, self.run_id, {**flatten(run_defining(params)), "fold": label})
        except Exception as err:  # any store, any failure: the message below is what the user can act on
            raise TrackingUnavailable(f"MLflow tracking at {shown_uri(uri)} is unreachable ({_reason(err)}); "
                                      f"nothing was trained: {_unreachable_advice(root)}.") from err

    @property
    def status(self) -> str:
        """`ok`, or `failed: <when>: <why>` once any MLflow call has failed."""
        return self.failure or "ok"

    def _failed(self, when: str, err: BaseException) -> None:
        self.failure = f"failed: {when}: {_reason(err)}"
        print(f"warning: MLflow {self.failure}. Training goes on and the fold's outputs are still written; "
              f"its MLflow run {self.run_id} stays incomplete.", file=sys.stderr, flush=True)
        self._terminate(RunStatus.FAILED)

    def _terminate(self, status: int) -> None:
        """Best effort: a store that just failed may well fail again, and that must not cost anything."""
        try:
            with _env_defaults(PROBE_LIMITS):
                self.client.set_terminated(self.run_id, RunStatus.to_string(status))
        except Exception:  # already reported, or about to be replaced by the error that got us here
            pass

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        if self.failure:
            return
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items()]
        try:
            with _env_defaults(LOGGING_LIMITS):
                self.client.log_batch(self.run_id, metrics=batch)
        except Exception as err:
            self._failed(f"logging epoch {epoch}", err)

    def finish(self, weights: Weights, artifacts: list[Path]) -> str:
        """Log the weights and artifacts and close the run; the final `status`."""
        if self.failure:
            return self.status
        tags = [RunTag("weights.name", weights.name), RunTag("weights.sha256", weights.sha256 or "none")]
        try:
            with _env_defaults(LOGGING_LIMITS):
                self.client.log_batch(self.run_id, tags=tags)
                for path in artifacts:
                    self.client.log_artifact(self.run_id, str(path))
                self.client.set_terminated(self.run_id, RunStatus.to_string(RunStatus.FINISHED))
        except Exception as err:
            self._failed("logging artifacts", err)
        return self.status

    def __enter__(self) -> FoldRun:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        # Any failure, a Ctrl-C included, leaves the child marked FAILED rather than RUNNING forever.
        if exc_type is not None and not self.failure:
            self._terminate(RunStatus.FAILED)


def log_aggregate(params: Mapping[str, Any], folds_csv: Path, metrics: Mapping[str, float],
                  artifacts: list[Path]) -> str | None:
    """Log the cross-validated summary to this pipeline run's parent and close it; its run id, or None."""
    root = workspace_root()
    key = pipeline_key(params, folds_csv)
    with _workspace_lock(root):
        client = MlflowClient(tracking_uri(root))
        experiment = client.get_experiment_by_name(params["mlflow"]["experiment"])
    if experiment is None:
        return None
    parent_id = (_find_parent(client, experiment.experiment_id, key, running_only=True)
                 or _find_parent(client, experiment.experiment_id, key, running_only=False))
    if parent_id is None:
        return None
    now = int(time.time() * 1000)
    client.log_batch(parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())])
    for path in artifacts:
        client.log_artifact(parent_id, str(path))
    client.set_terminated(parent_id, RunStatus.to_string(RunStatus.FINISHED))
    return parent_id


EXPORT_RUN = "export"


def log_export(params: Mapping[str, Any], folds_csv: Path, model: Mapping[str, Any],
               tags: Mapping[str, str]) -> dict[str, Any]:
    """Log a pyfunc model in an `export` child run of this pipeline run's parent and register it.

    `model` holds mlflow.pyfunc.log_model's arguments but its name and registry name. The parent is the latest
    with the pipeline key, closed or not, and is not reopened; without one the run stands alone. Never raises:
    the outcome, `status` "ok" or "failed: ...", is returned for export.json and a failure is also warned about.
    """
    import mlflow
    import mlflow.pyfunc  # only the export pays for the pyfunc machinery

    root = workspace_root()
    uri = tracking_uri(root)
    name = params["mlflow"]["registered_model"]
    outcome: dict[str, Any] = {"tracking_uri": shown_uri(uri), "registered_model": name}
    try:
        with _env_defaults(PROBE_LIMITS):
            with _workspace_lock(root):
                client = MlflowClient(uri)
                experiment_id = _experiment_id(client, params["mlflow"]["experiment"], root)
            parent_id = _find_parent(client, experiment_id, pipeline_key(params, folds_csv), running_only=False)
            run_tags = {**tags, **({PARENT_RUN_TAG: parent_id} if parent_id else {})}
            outcome["run_id"] = client.create_run(experiment_id, run_name=EXPORT_RUN, tags=run_tags).info.run_id
            outcome["parent_run_id"] = parent_id
    except Exception as err:
        outcome["status"] = (f"failed: MLflow tracking at {shown_uri(uri)} is unreachable ({_reason(err)}); "
                             f"to log and register the written export, {_unreachable_advice(root)} and rerun the stage")
    else:
        try:
            # log_model only logs into the fluent active run, found through the fluent tracking URI.
            with _env_defaults({**LOGGING_LIMITS, "MLFLOW_TRACKING_URI": uri}), \
                    mlflow.start_run(run_id=outcome["run_id"]):
                _log_params(client, outcome["run_id"], flatten(params))
                info = mlflow.pyfunc.log_model(name="model", registered_model_name=name, **model)
            outcome.update(status="ok", model_uri=info.model_uri, version=info.registered_model_version,
                           registered_model_uri=f"models:/{name}/{info.registered_model_version}")
        except Exception as err:
            outcome["status"] = f"failed: logging the model: {_reason(err)}"
    if outcome["status"] != "ok":
        print(f"warning: MLflow {outcome['status']}. The exported files are written; they are not registered.",
              file=sys.stderr, flush=True)
    return outcome
