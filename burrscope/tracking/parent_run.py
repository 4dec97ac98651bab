"""What the stages after training add to a pipeline run's MLflow parent: aggregate's summary (then it closes the
parent), the audit's counts and findings, and the report (with the page beside it that opens the parent). Each runs
after its stage's outputs are written and never raises (tracking.Recorder)."""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from mlflow.entities import Metric, RunStatus

from burrscope.files import write_text_atomic
from burrscope.params import Params
from burrscope.tables import FOLD_COLUMNS, read_table
from burrscope.tracking.champion import THRESHOLD_METRIC, cross_validated, settle_parent
from burrscope.tracking.lookup import run_page_name, run_url
from burrscope.tracking.store import Connection, Recorder, connect, pipeline_key

COUNTS = ("missed", "false_alarms")  # at the threshold, as aggregate names them
NOTE = "mlflow.note.content"  # MLflow's run description


def decision_metrics(aggregate_dir: Path) -> dict[str, float]:
    """What aggregate wrote about deciding and calibration, as metrics for the parent: the threshold, the
    pooled ECE and Brier score, and the burrs missed and false alarms at that threshold (two classes only).

    The counts come from metrics.json's `errors`, or, where it has none, from thresholds.csv's row of the threshold.
    """
    summary = json.loads((aggregate_dir / "metrics.json").read_text())
    found = {f"oof_{name}": float(value) for name, value in (summary.get("calibration") or {}).items()}
    threshold = summary.get("threshold")
    if threshold is None:  # more than two classes: no threshold, and no missed burrs or false alarms
        return found
    found[THRESHOLD_METRIC] = float(threshold)
    errors = summary.get("errors")
    if errors is None:
        columns = ["threshold", *COUNTS]
        table = read_table(aggregate_dir / "thresholds.csv", columns, numeric=columns)
        chosen = table[(table["threshold"] - threshold).abs() < 1e-6]  # the table lists the chosen threshold too
        errors = {name: chosen[name].iloc[0] for name in COUNTS} if len(chosen) else {}
    return found | {f"oof_{name}": float(value) for name, value in errors.items() if name in COUNTS}


def parent_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """Flat names for the MLflow parent run: cv_<metric>_mean / _std across folds, oof_<metric> pooled."""
    flat = {f"oof_{name}": value for name, value in summary["overall"].items()}
    flat.update({f"cv_{name}_mean": value for name, value in summary["mean"].items()})
    flat.update({f"cv_{name}_std": value for name, value in summary["std"].items()})
    return flat


def log_aggregate(
    params: Params,
    folds_csv: Path,
    metrics: Mapping[str, float],
    artifacts: list[Path],
    *,
    aggregate_dir: Path | None = None,
) -> tuple[str | None, str]:
    """Log the cross-validated summary (and, from `aggregate_dir`, decision_metrics) to this pipeline run's parent,
    close it (and any of its fold runs left RUNNING), and settle the registered versions exported from it; (the
    parent's run id, status).

    Never raises: aggregate's outputs are written before this is called.
    """
    recorder = Recorder("The aggregate outputs are written; the parent run lacks the summary")

    def log() -> str | None:
        connection = connect(params.mlflow.experiment)
        parent_id = connection.latest_parent(pipeline_key(params.recipe, folds_csv))
        if parent_id is None:
            return None
        connection.close_ended_folds(parent_id)
        values = {**metrics, **(decision_metrics(aggregate_dir) if aggregate_dir is not None else {})}
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, 0) for k, v in sorted(values.items()) if not math.isnan(float(v))]
        connection.client.log_batch(parent_id, metrics=batch)
        description = cross_validated(values)
        if description:  # what the parent's page shows as its description, and the runs table beside its name
            connection.client.set_tag(parent_id, NOTE, description)
        for path in artifacts:
            connection.client.log_artifact(parent_id, str(path))
        connection.client.set_terminated(parent_id, RunStatus.to_string(RunStatus.FINISHED))
        # Export may have registered this run's model before these figures existed (it does not wait for
        # aggregate): its description and the champion alias are decided now.
        settle_parent(connection, parent_id)
        return parent_id

    return recorder.attempt("logging the cross-validated summary", log), recorder.status


class ParentRun(NamedTuple):
    connection: Connection
    key: str  # the pipeline key (store.pipeline_key)
    run_id: str | None  # None when the store holds no parent with the key


def parent_of_predictions(params: Params, predictions_csv: Path) -> ParentRun:
    """The tracking store and this pipeline run's parent, found from the fold assignment in aggregate's pooled
    predictions, which carry the same (file, label, fold) rows as folds.csv."""
    connection = connect(params.mlflow.experiment)
    assignment = read_table(predictions_csv, FOLD_COLUMNS, numeric=["fold"])
    key = pipeline_key(params.recipe, assignment)
    return ParentRun(connection, key, connection.latest_parent(key))


def run_page(url: str, run_id: str) -> str:
    """A page that sends the browser on to `url`, the run's page in `mlflow ui`."""
    target = html.escape(url)
    return (
        f'<!doctype html>\n<meta charset="utf-8">\n<meta http-equiv="refresh" content="0; url={target}">\n'
        f"<title>MLflow run {run_id}</title>\n"
        f'<p>Opening <a href="{target}">MLflow run {run_id}</a> (start <code>mlflow ui</code> first).</p>\n'
    )


def log_report(params: Params, predictions_csv: Path, report: Path) -> tuple[str | None, str]:
    """Log the `report` to this pipeline run's parent (MLflow previews HTML), then write the page beside it that
    its header links to open the parent (lookup.run_page_name); (the parent's id, status).

    The parent is found from aggregate's pooled predictions (parent_of_predictions). Never raises: the report is
    written before this is called.
    """
    recorder = Recorder("The report is written; the parent run lacks it")

    def log() -> str | None:
        connection, key, parent_id = parent_of_predictions(params, predictions_csv)
        if parent_id is None:
            return None
        connection.client.log_artifact(parent_id, str(report))
        url = run_url(connection.uri, connection.experiment_id, parent_id)
        write_text_atomic(report.with_name(run_page_name(key)), run_page(url, parent_id))
        return parent_id

    return recorder.attempt("logging the report", log), recorder.status


def log_audit(
    params: Params, predictions_csv: Path, summary: Mapping[str, int], issues_csv: Path
) -> tuple[str | None, str]:
    """Log the audit's counts (summary.json: audit_label, audit_near_duplicate, audit_outlier,
    audit_duplicates_across_folds) as metrics and `issues_csv` as an artifact to this pipeline run's parent;
    (its id, status). The parent is found from aggregate's pooled predictions (parent_of_predictions). Never
    raises: the findings are written before this is called."""
    recorder = Recorder("The audit's findings are written; the parent run lacks them")

    def log() -> str | None:
        connection, _, parent_id = parent_of_predictions(params, predictions_csv)
        if parent_id is None:
            return None
        now = int(time.time() * 1000)
        batch = [Metric(name, float(value), now, 0) for name, value in sorted(summary.items())]
        connection.client.log_batch(parent_id, metrics=batch)
        connection.client.log_artifact(parent_id, str(issues_csv), artifact_path="audit")
        return parent_id

    return recorder.attempt("logging the audit", log), recorder.status
