"""A fold's MLflow run, under its pipeline run's parent: params and datasets at the start, one row of scores per
epoch (the epoch is the step), system metrics while it trains, artifacts and status at the end."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow.entities import DatasetInput, Metric, RunStatus, RunTag

from burrscope.params import Params
from burrscope.tracking.provenance import fold_inputs, labels_input
from burrscope.tracking.store import (
    PARENT_RUN_TAG,
    PIPELINE_KEY_TAG,
    PROBE_LIMITS,
    Recorder,
    TrackingUnavailable,
    connect,
    env_defaults,
    fold_assignment,
    pipeline_key,
    reason,
    run_params,
    shown_uri,
    unreachable_advice,
    workspace_lock,
)

if TYPE_CHECKING:  # models imports torch; the type is all this module needs
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    from burrscope.models.factory import Weights

SOURCE = "stages/train.py"
STEP = "epoch"  # a history row's epoch is the step its scores are logged at, never a metric of its own
# With MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=true (MLflow's own switch), MLflow samples CPU, memory, disk, network (and
# GPU with nvidia-ml-py) on a thread. Off by default: its `system/*` metrics would lead every comparison of the folds,
# ahead of their held-out scores. 5 s still draws a curve for a fold of a minute; MLflow's
# MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it.
SYSTEM_METRICS_INTERVAL_S = 5.0
SWITCHED_ON = ("true", "1")


def start_system_metrics(run_id: str, uri: str) -> SystemMetricsMonitor | None:
    """MLflow's system metrics monitor on `run_id` when asked for (the fluent API would start one only for runs it
    starts itself); None otherwise."""
    if os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").lower() not in SWITCHED_ON:
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    # Its INFO lines ("Started monitoring", "Skip logging GPU metrics") would repeat in every fold's output.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, tracking_uri=uri)
    monitor.start()
    return monitor


class FoldRun:
    """A fold's child run: params and datasets at start, metrics once per epoch, artifacts and status at the end.

    `fold` is a fold number (0, "3"), or a label such as "final" for a model trained outside the
    cross-validation, whose run is named after it and joins the parent even once aggregate has closed it.
    `labels_csv`, when given, is logged as a dataset beside the fold assignment. Creating it is the reachability
    check: it raises TrackingUnavailable before any training.
    """

    def __init__(self, params: Params, folds_csv: Path, fold: int | str, labels_csv: Path | None = None) -> None:
        recipe, folds = params.recipe, params.folds
        self.connection = connect(params.mlflow.experiment)
        self.monitor: SystemMetricsMonitor | None = None
        label = str(fold)
        cross_validation = label.isdigit()
        table = fold_assignment(folds_csv)
        key = pipeline_key(recipe, table)
        root = self.connection.root
        try:
            labels = labels_input(labels_csv, root)
            with env_defaults(PROBE_LIMITS):
                with workspace_lock(root):
                    parent_inputs = [*labels, *fold_inputs(table, folds_csv, None, root)]
                    parent_id = self._parent(key, run_params(recipe, folds), cross_validation, parent_inputs)
                # Only parents carry the pipeline key, so the search above never finds a fold.
                self.connection.close_killed_attempts(parent_id, "fold", label)
                self.run_id = self.connection.create_run(
                    f"fold-{label}" if cross_validation else label,
                    SOURCE,
                    {PARENT_RUN_TAG: parent_id, "fold": label},
                    [*labels, *fold_inputs(table, folds_csv, label, root)],
                )
                self.connection.log_params(self.run_id, {**run_params(recipe, folds), "fold": label})
        except Exception as err:
            raise TrackingUnavailable(
                f"MLflow tracking at {shown_uri(self.connection.uri)} failed while opening "
                f"the fold's run ({reason(err)}); nothing was trained: "
                f"{unreachable_advice(self.connection.root)}."
            ) from err
        self.recorder = Recorder(
            f"Training goes on and the fold's outputs are still written; its MLflow run {self.run_id} stays incomplete"
        )
        # Started last: a failure above leaves no sampling thread behind. MLflow's monitor warns about its own
        # failures and stops; it never fails the fold.
        self.monitor = start_system_metrics(self.run_id, self.connection.uri)

    def _parent(self, key: str, params: Mapping[str, str], cross_validation: bool, inputs: list[DatasetInput]) -> str:
        """The running parent with the key, else (outside cross-validation) the latest closed one, else a new one.

        A fold finding only a closed parent is a rerun of the whole pipeline, which gets a new parent; the final
        model may legitimately train after aggregate has closed its parent.
        """
        connection = self.connection
        found = connection.latest_parent(key) if not cross_validation else connection.find_parent(key, True)
        if found:
            return found
        name = os.environ.get("DVC_EXP_NAME") or time.strftime("pipeline-%Y%m%d-%H%M%S")
        parent_id = connection.create_run(name, SOURCE, {PIPELINE_KEY_TAG: key}, inputs, pipeline=True)
        connection.log_params(parent_id, params)
        return parent_id

    @property
    def status(self) -> str:
        return self.recorder.status

    def _stop_monitor(self) -> None:
        """Before the run closes: the monitor stops by itself once its run is no longer RUNNING, losing its last
        samples, and its final flush logs them."""
        if self.monitor is not None:
            self.monitor.finish()
            self.monitor = None

    def _terminate(self, status: int) -> None:
        """Best effort: a store that just failed may well fail again, and that must not cost anything."""
        self._stop_monitor()
        try:
            with env_defaults(PROBE_LIMITS):
                self.connection.client.set_terminated(self.run_id, RunStatus.to_string(status))
        except Exception:  # already reported, or about to be replaced by the error that got us here
            pass

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """One history row: every score at step `epoch` (the row's own `epoch` is the step, not a metric)."""
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items() if k != STEP]
        self.recorder.attempt(
            f"logging epoch {epoch}", lambda: self.connection.client.log_batch(self.run_id, metrics=batch)
        )
        if self.recorder.failure:
            self._terminate(RunStatus.FAILED)

    def finish(self, weights: Weights, artifacts: list[Path], seconds: Mapping[str, float] | None = None) -> str:
        """Log the weights, the artifacts and the `seconds` spent per phase (as tags `seconds.<phase>`: the scores,
        not the clock, are what fold comparisons chart), and close the run; the final `status`."""
        client = self.connection.client
        self._stop_monitor()

        def log() -> None:
            tags = [RunTag("weights.name", weights.name), RunTag("weights.sha256", weights.sha256 or "none")]
            tags += [RunTag(f"seconds.{phase}", str(value)) for phase, value in (seconds or {}).items()]
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
        self._stop_monitor()
