"""MLflow tracking: one parent run per pipeline run, one child run per fold, linked across processes.

The folds run as separate processes (and, under Snakemake, side by side), so they cannot share an active
run. Each fold finds-or-creates the parent under a file lock, keyed by what defines the pipeline run (the
DVC experiment name, the training recipe and the fold assignment), and logs into its own child run
(fold_run.py) through MlflowClient, which ignores a leftover MLFLOW_RUN_ID (mlflow#15713). Aggregate logs the
summary to the parent and closes it; the report adds itself (parent_run.py). The final model (trained on every
image) and the export stage may run after that: they attach their child runs to the latest parent with the key,
closed or not, and never reopen it. Every run records where it came from and what it read (provenance.py).

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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
from mlflow.entities import DatasetInput, Param, RunStatus
from mlflow.tracking import MlflowClient

from burrscope.errors import UserError
from burrscope.files import workspace_root
from burrscope.params import Recipe
from burrscope.tables import FOLD_COLUMNS, read_table
from burrscope.tracking import artifact_store
from burrscope.tracking.provenance import run_tags

PIPELINE_KEY_TAG = "burrscope_pipeline_key"
PARENT_RUN_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
CLOSED_TAG = "burrscope.closed"  # why a run left RUNNING was closed by another process
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"  # a kind MLflow's UI knows
BATCH_LIMIT = 100  # MLflow accepts at most 100 params per log_batch call
# MLflow's own defaults (7 retries with exponential backoff, 120 s per request) spend minutes on a dead
# server. The start-up probe tries once. Epoch and artifact logging ride out a server restart: 5 retries wait
# 0 + 4 + 8 + 16 + 32 s (MLflow's backoff factor 2), a minute, where scripts/mlflow_server.sh restarts in 30 s on
# a busy 2-core machine; a store down for longer costs each stage that minute once. A user's own
# MLFLOW_HTTP_REQUEST_* settings win.
PROBE_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
LOGGING_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
T = TypeVar("T")


class TrackingUnavailable(UserError):
    """The MLflow tracking store cannot be reached or opened."""


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"


def shown_uri(uri: str) -> str:
    """The URI without any user:password, fit for messages."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def reason(err: BaseException) -> str:
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


def fold_assignment(folds: Path | pd.DataFrame) -> pd.DataFrame:
    """The (file, label, fold) table: read from folds.csv, or taken from any table that has those columns."""
    return read_table(folds, FOLD_COLUMNS, numeric=["fold"]) if isinstance(folds, Path) else folds


def pipeline_key(recipe: Recipe, folds: Path | pd.DataFrame) -> str:
    """Same for every fold and the later stages of one pipeline run; different when it is trained otherwise.

    Made of the recipe (TRAINING_KEYS), the fold assignment and the DVC experiment name. Using the models
    differently (the threshold, the final-model choice, the registry name) keeps the key. The assignment counts
    as its sorted (file, label, fold) rows, not folds.csv's bytes, so the report finds the parent from the pooled
    predictions (which carry the same rows) without reading folds.csv.
    """
    table = fold_assignment(folds)
    rows = sorted(f"{file}\t{label}\t{int(fold)}" for file, label, fold in table[FOLD_COLUMNS].itertuples(index=False))
    digest = hashlib.sha256(json.dumps(recipe.as_params(), sort_keys=True).encode())
    digest.update("\n".join(rows).encode())
    digest.update(os.environ.get("DVC_EXP_NAME", "").encode())
    return digest.hexdigest()[:16]


def unreachable_advice(root: Path) -> str:
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

    def close_killed_attempts(self, parent_id: str, tag: str, value: str) -> None:
        """Mark KILLED the RUNNING runs under `parent_id` whose `tag` is `value`: what a stage killed outright
        (SIGKILL, a time limit, power loss) leaves, closed by the stage's rerun, before it starts its own run.

        DVC and Snakemake never run one stage of one pipeline run twice at once, so such a run is dead.
        """
        query = (
            f"tags.`{PARENT_RUN_TAG}` = '{parent_id}' and tags.`{tag}` = '{value}' and attributes.status = 'RUNNING'"
        )
        for run in self.client.search_runs([self.experiment_id], query):
            self.client.set_tag(run.info.run_id, CLOSED_TAG, "left RUNNING by a killed stage; closed by its rerun")
            self.client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))

    def close_ended_folds(self, parent_id: str) -> None:
        """Mark FAILED the fold runs under `parent_id` still RUNNING when aggregate starts: every fold's stage has
        ended by then, so such a run lost its store while logging and its stage could not close it either."""
        query = f"tags.`{PARENT_RUN_TAG}` = '{parent_id}' and attributes.status = 'RUNNING'"
        for run in self.client.search_runs([self.experiment_id], query):
            if run.data.tags.get("fold", "").isdigit():  # not the final model, which may train after aggregate
                self.client.set_tag(
                    run.info.run_id, CLOSED_TAG, "left RUNNING by its fold's stage; closed by aggregate"
                )
                self.client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))

    def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        items = [Param(k, v) for k, v in sorted(params.items())]
        for start in range(0, len(items), BATCH_LIMIT):
            self.client.log_batch(run_id, params=items[start : start + BATCH_LIMIT])

    def create_run(
        self, name: str, source: str, tags: Mapping[str, str], inputs: list[DatasetInput], *, pipeline: bool = False
    ) -> str:
        """A new run with `tags`, where it came from (`source`: the script, git, user, DVC; `pipeline`: a parent,
        provenance.run_tags) and its datasets."""
        provenance = run_tags(source, self.root, pipeline)
        run = self.client.create_run(self.experiment_id, run_name=name, tags={**provenance, **tags})
        if inputs:
            self.client.log_inputs(run.info.run_id, datasets=inputs)
        return run.info.run_id


@contextmanager
def workspace_lock(root: Path) -> Iterator[None]:
    from filelock import FileLock

    with FileLock(root / ".mlflow.lock"):
        yield


def connect(experiment: str) -> Connection:
    """The workspace's tracking store and experiment (created if new); TrackingUnavailable names the URI and fix."""
    root = workspace_root()
    uri = tracking_uri(root)
    # The default local store keeps artifacts where `mlflow ui` serves them, by locations that name no folder
    # (artifact_store.py): a temp experiment copy logs into the workspace, and a moved workspace keeps them. A
    # user's own store (MLFLOW_TRACKING_URI) places them as it is configured to.
    default_store = not os.environ.get("MLFLOW_TRACKING_URI")
    artifact_store.register()
    try:
        # Under the lock: the first client to open a new sqlite store creates its tables, and folds starting
        # side by side would race to do it.
        with env_defaults(PROBE_LIMITS), workspace_lock(root):
            if default_store and not (root / "mlflow.db").exists():
                artifact_store.create_store(root / "mlflow.db")
            client = MlflowClient(uri)
            found = client.get_experiment_by_name(experiment)
            if found is not None:
                experiment_id = found.experiment_id
            else:
                location = artifact_store.DEFAULT_ARTIFACT_ROOT if default_store else None
                experiment_id = client.create_experiment(experiment, artifact_location=location)
            if found is None or EXPERIMENT_KIND not in found.tags:
                # `mlflow ui` then opens the experiment and its runs as model training, not as GenAI evaluation.
                client.set_experiment_tag(experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
    except Exception as err:  # any store, any failure: the message below is what the user can act on
        raise TrackingUnavailable(
            f"MLflow tracking at {shown_uri(uri)} is unreachable ({reason(err)}): {unreachable_advice(root)}."
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
            self.failure = f"failed: {when}: {err if isinstance(err, UserError) else reason(err)}"
            print(f"warning: MLflow {self.failure}. {self.consequence}.", file=sys.stderr, flush=True)
            return None
