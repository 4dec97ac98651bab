"""MLflow tracking: one parent run per pipeline run, one child run per fold, linked across processes.

The folds run as separate processes (and, under Snakemake, side by side), so they cannot share an active
run. Each fold finds-or-creates the parent under a file lock, keyed by what defines the pipeline run (the
DVC experiment name, the training recipe and the fold assignment), and logs into its own child run through
MlflowClient, which ignores a leftover MLFLOW_RUN_ID (mlflow#15713). Aggregate logs the summary to the
parent and closes it. The final model (trained on every image) and the export stage may run after that:
they attach their child runs to the latest parent with the key, closed or not, and never reopen it.

One failure policy, for every caller: `connect` is the reachability check and raises TrackingUnavailable
(the train stage calls it before training, so an unreachable store costs nothing). Everything logged after
a stage's outputs exist goes through `Recorder`, which turns any MLflow failure into one warning and a
`failed: ...` status for the stage to record: tracking never costs a finished output.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from burrscope.errors import UserError
from burrscope.params import Recipe

if TYPE_CHECKING:  # models imports torch, which aggregate must not pay for
    from burrscope.models import Weights

PIPELINE_KEY_TAG = "burrscope_pipeline_key"
PARENT_RUN_TAG = "mlflow.parentRunId"
# DVC runs `--temp` and `--queue` experiments in a copy under <workspace>/.dvc/tmp/exps/.
DVC_EXP_TMP = (".dvc", "tmp", "exps")
BATCH_LIMIT = 100  # MLflow accepts at most 100 params per log_batch call
# MLflow's own defaults (7 retries with exponential backoff, 120 s per request) spend minutes on a dead
# server. The start-up probe tries once; epoch and artifact logging ride out a short blip. A user's own
# MLFLOW_HTTP_REQUEST_* settings win.
PROBE_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
LOGGING_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
T = TypeVar("T")


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
def env_defaults(values: Mapping[str, str]) -> Iterator[None]:
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


def run_params(recipe: Recipe, folds: int) -> dict[str, str]:
    """The params every run of a pipeline run carries: its recipe (TRAINING_KEYS) and the number of folds."""
    return {**flatten(recipe.as_params()), "split.folds": str(folds)}


def pipeline_key(recipe: Recipe, folds_csv: Path) -> str:
    """Same for every fold and the later stages of one pipeline run; different when it is trained otherwise.

    Made of the recipe (TRAINING_KEYS), the fold assignment and the DVC experiment name. Using the models
    differently (the threshold, the final-model choice, the registry name) keeps the key.
    """
    digest = hashlib.sha256(json.dumps(recipe.as_params(), sort_keys=True).encode())
    digest.update(Path(folds_csv).read_bytes())
    digest.update(os.environ.get("DVC_EXP_NAME", "").encode())
    return digest.hexdigest()[:16]


def _unreachable_advice(root: Path) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return (
            f"fix MLFLOW_TRACKING_URI (or start its server), or unset it to track into sqlite:///{root / 'mlflow.db'}"
        )
    return f"make {root} writable, or set MLFLOW_TRACKING_URI to a reachable tracking server"


@dataclass
class Connection:
    """An open MLflow client with this workspace's experiment, and where both live."""

    root: Path
    uri: str
    client: MlflowClient
    experiment_id: str

    def find_parent(self, key: str, running_only: bool) -> str | None:
        query = f"tags.{PIPELINE_KEY_TAG} = '{key}'"
        if running_only:
            query += " and attributes.status = 'RUNNING'"
        runs = self.client.search_runs(
            [self.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1
        )
        return runs[0].info.run_id if runs else None

    def latest_parent(self, key: str) -> str | None:
        """The running parent with the key, else the latest closed one, else None."""
        return self.find_parent(key, running_only=True) or self.find_parent(key, running_only=False)

    def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        items = [Param(k, v) for k, v in sorted(params.items())]
        for start in range(0, len(items), BATCH_LIMIT):
            self.client.log_batch(run_id, params=items[start : start + BATCH_LIMIT])


@contextmanager
def _workspace_lock(root: Path) -> Iterator[None]:
    from filelock import FileLock

    with FileLock(root / ".mlflow.lock"):
        yield


def connect(experiment: str) -> Connection:
    """The workspace's tracking store and experiment (created if new); TrackingUnavailable names the URI and fix."""
    root = workspace_root()
    uri = tracking_uri(root)
    try:
        # Under the lock: the first client to open a new sqlite store creates its tables, and folds starting
        # side by side would race to do it.
        with env_defaults(PROBE_LIMITS), _workspace_lock(root):
            client = MlflowClient(uri)
            found = client.get_experiment_by_name(experiment)
            if found is not None:
                experiment_id = found.experiment_id
            else:
                # With the default local store, pin artifacts to the workspace, not to a temp experiment copy.
                location = None if os.environ.get("MLFLOW_TRACKING_URI") else (root / "mlartifacts").as_uri()
                experiment_id = client.create_experiment(experiment, artifact_location=location)
    except Exception as err:  # any store, any failure: the message below is what the user can act on
        raise TrackingUnavailable(
            f"MLflow tracking at {shown_uri(uri)} is unreachable ({_reason(err)}): {_unreachable_advice(root)}."
        ) from err
    return Connection(root, uri, client, experiment_id)


class Recorder:
    """Runs MLflow calls after a stage's outputs exist: the first failure is warned about once and kept in
    `status`, and every later call is skipped."""

    def __init__(self, consequence: str) -> None:
        self.consequence = consequence  # what the warning adds, e.g. "the fold's outputs are still written"
        self.failure: str | None = None

    @property
    def status(self) -> str:
        """`ok`, or `failed: <when>: <why>` once any MLflow call has failed."""
        return self.failure or "ok"

    def attempt(self, when: str, action: Callable[[], T]) -> T | None:
        if self.failure:
            return None
        try:
            with env_defaults(LOGGING_LIMITS):
                return action()
        except Exception as err:  # any MLflow failure: report it, never let it cost an output
            # A UserError (TrackingUnavailable) is already one short line ending in its fix: keep it whole.
            self.failure = f"failed: {when}: {err if isinstance(err, UserError) else _reason(err)}"
            print(f"warning: MLflow {self.failure}. {self.consequence}.", file=sys.stderr, flush=True)
            return None


class FoldRun:
    """A fold's child run: params at start, metrics once per epoch, artifacts and status at the end.

    `fold` is a fold number (0, "3"), or a label such as "final" for a model trained outside the
    cross-validation, whose run is named after it and joins the parent even once aggregate has closed it.
    Creating it is the reachability check: it raises TrackingUnavailable before any training.
    """

    def __init__(self, recipe: Recipe, folds: int, folds_csv: Path, fold: int | str) -> None:
        self.connection = connect(recipe.experiment)
        label = str(fold)
        cross_validation = label.isdigit()
        key = pipeline_key(recipe, folds_csv)
        try:
            with env_defaults(PROBE_LIMITS):
                with _workspace_lock(self.connection.root):
                    parent_id = self._parent(key, run_params(recipe, folds), cross_validation)
                # Only parents carry the pipeline key, so the search above never finds a fold.
                self._close_killed_attempts(parent_id, label)
                run = self.connection.client.create_run(
                    self.connection.experiment_id,
                    run_name=f"fold-{label}" if cross_validation else label,
                    tags={PARENT_RUN_TAG: parent_id, "fold": label},
                )
                self.run_id = run.info.run_id
                self.connection.log_params(self.run_id, {**run_params(recipe, folds), "fold": label})
        except Exception as err:
            raise TrackingUnavailable(
                f"MLflow tracking at {shown_uri(self.connection.uri)} failed while opening "
                f"the fold's run ({_reason(err)}); nothing was trained: "
                f"{_unreachable_advice(self.connection.root)}."
            ) from err
        self.recorder = Recorder(
            f"Training goes on and the fold's outputs are still written; its MLflow run {self.run_id} stays incomplete"
        )

    def _parent(self, key: str, params: Mapping[str, str], cross_validation: bool) -> str:
        """The running parent with the key, else (outside cross-validation) the latest closed one, else a new one.

        A fold finding only a closed parent is a rerun of the whole pipeline, which gets a new parent; the final
        model may legitimately train after aggregate has closed its parent.
        """
        connection = self.connection
        found = connection.latest_parent(key) if not cross_validation else connection.find_parent(key, True)
        if found:
            return found
        name = os.environ.get("DVC_EXP_NAME") or time.strftime("pipeline-%Y%m%d-%H%M%S")
        run = connection.client.create_run(connection.experiment_id, run_name=name, tags={PIPELINE_KEY_TAG: key})
        connection.log_params(run.info.run_id, params)
        return run.info.run_id

    def _close_killed_attempts(self, parent_id: str, fold: str) -> None:
        """A fold killed outright (SIGKILL, power loss) leaves its run RUNNING; its rerun marks it KILLED.

        DVC and Snakemake never run one fold of one pipeline run twice at once, so a RUNNING sibling is dead.
        """
        query = f"tags.`{PARENT_RUN_TAG}` = '{parent_id}' and tags.fold = '{fold}' and attributes.status = 'RUNNING'"
        client = self.connection.client
        for run in client.search_runs([self.connection.experiment_id], query):
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))

    @property
    def status(self) -> str:
        return self.recorder.status

    def _terminate(self, status: int) -> None:
        """Best effort: a store that just failed may well fail again, and that must not cost anything."""
        try:
            with env_defaults(PROBE_LIMITS):
                self.connection.client.set_terminated(self.run_id, RunStatus.to_string(status))
        except Exception:  # already reported, or about to be replaced by the error that got us here
            pass

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items()]
        self.recorder.attempt(
            f"logging epoch {epoch}", lambda: self.connection.client.log_batch(self.run_id, metrics=batch)
        )
        if self.recorder.failure:
            self._terminate(RunStatus.FAILED)

    def finish(self, weights: Weights, artifacts: list[Path]) -> str:
        """Log the weights and artifacts and close the run; the final `status`."""
        client = self.connection.client

        def log() -> None:
            tags = [RunTag("weights.name", weights.name), RunTag("weights.sha256", weights.sha256 or "none")]
            client.log_batch(self.run_id, tags=tags)
            for path in artifacts:
                client.log_artifact(self.run_id, str(path))
            client.set_terminated(self.run_id, RunStatus.to_string(RunStatus.FINISHED))

        self.recorder.attempt("logging artifacts", log)
        if self.recorder.failure:
            self._terminate(RunStatus.FAILED)
        return self.status

    def __enter__(self) -> FoldRun:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        # Any failure, a Ctrl-C included, leaves the child marked FAILED rather than RUNNING forever.
        if exc_type is not None and not self.recorder.failure:
            self._terminate(RunStatus.FAILED)


def log_aggregate(
    recipe: Recipe, folds_csv: Path, metrics: Mapping[str, float], artifacts: list[Path]
) -> tuple[str | None, str]:
    """Log the cross-validated summary to this pipeline run's parent and close it; (its run id, status).

    Never raises: aggregate's outputs are written before this is called.
    """
    recorder = Recorder("The aggregate outputs are written; the parent run lacks the summary")

    def log() -> str | None:
        connection = connect(recipe.experiment)
        parent_id = connection.latest_parent(pipeline_key(recipe, folds_csv))
        if parent_id is None:
            return None
        now = int(time.time() * 1000)
        connection.client.log_batch(
            parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())]
        )
        for path in artifacts:
            connection.client.log_artifact(parent_id, str(path))
        connection.client.set_terminated(parent_id, RunStatus.to_string(RunStatus.FINISHED))
        return parent_id

    return recorder.attempt("logging the cross-validated summary", log), recorder.status
