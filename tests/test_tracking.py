"""MLflow tracking: fold runs from separate processes meet under one parent, in the tracked_workspace's store."""

from __future__ import annotations

import dataclasses
import http.server
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import free_port, with_lr, with_registered_model
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from burrscope.models.factory import Weights
from burrscope.params import Params, Recipe
from burrscope.tracking.fold_run import FoldRun
from burrscope.tracking.parent_run import log_aggregate
from burrscope.tracking.registry import log_export
from burrscope.tracking.store import (
    PARENT_RUN_TAG,
    Recorder,
    flatten,
    pipeline_key,
    run_params,
    tracking_uri,
    workspace_root,
)

WEIGHTS = Weights("test weights", "ab" * 32, None)
FOLDS = 2


def parent_of(run: FoldRun) -> str:
    """The parent run a fold's run was filed under."""
    return run.connection.client.get_run(run.run_id).data.tags[PARENT_RUN_TAG]


def test_workspace_root_escapes_dvc_temp_experiment_copies(tmp_path: Path) -> None:
    inside = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    inside.mkdir(parents=True)
    assert workspace_root(inside) == (tmp_path / "repo").resolve()
    assert workspace_root(tmp_path / "repo") == (tmp_path / "repo").resolve()


def test_tracking_defaults_to_sqlite_at_the_root_and_honours_the_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(tmp_path) == "http://127.0.0.1:5000"


def test_flatten_names_nested_keys_with_dots() -> None:
    assert flatten({"lr": 0.1, "train": {"augment": {"flip": True}}}) == {"lr": "0.1", "train.augment.flip": "True"}


def test_run_params_are_the_recipe_and_the_number_of_folds(recipe: Recipe) -> None:
    params = run_params(recipe, FOLDS)
    assert params == {**flatten(recipe.as_params()), "split.folds": "2"}
    assert params["lr"] == str(recipe.lr) and params["train.augment.flip"] == str(recipe.augment.flip)


def test_the_pipeline_key_changes_with_the_recipe_the_folds_and_the_experiment_name(
    tracked_workspace: Path, recipe: Recipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    folds_csv = tracked_workspace / "folds.csv"
    key = pipeline_key(recipe, folds_csv)
    assert pipeline_key(dataclasses.replace(recipe), folds_csv) == key
    assert pipeline_key(dataclasses.replace(recipe, lr=recipe.lr * 2), folds_csv) != key
    (tracked_workspace / "other.csv").write_text("file,label,fold\na.png,0,1\nb.png,1,0\n")
    assert pipeline_key(recipe, tracked_workspace / "other.csv") != key
    monkeypatch.setenv("DVC_EXP_NAME", "lr-sweep-2")
    assert pipeline_key(recipe, folds_csv) != key


def test_the_pooled_predictions_give_the_pipeline_key_that_folds_csv_gives(
    tracked_workspace: Path, recipe: Recipe
) -> None:
    """The report finds the parent from aggregate's predictions.csv: the same rows, reordered, with more columns."""
    folds = pd.read_csv(tracked_workspace / "folds.csv", dtype={"label": str})
    pooled = folds.iloc[::-1].assign(predicted="1")
    assert pipeline_key(recipe, pooled) == pipeline_key(recipe, tracked_workspace / "folds.csv")
    assert pipeline_key(recipe, pooled.assign(fold=1 - pooled["fold"])) != pipeline_key(
        recipe, tracked_workspace / "folds.csv"
    )


def test_folds_share_one_parent_which_aggregate_completes(
    tracked_workspace: Path, params: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DVC_EXP_NAME", "lr-sweep-1")
    # A stale MLFLOW_RUN_ID must not hijack the runs (mlflow#15713).
    monkeypatch.setenv("MLFLOW_RUN_ID", "0123456789abcdef")
    folds_csv = tracked_workspace / "folds.csv"
    runs = []
    for fold in (0, 1):
        with FoldRun(params, folds_csv, fold) as run:
            run.log_epoch(1, {"train_loss": 0.5, "val_loss": 0.6})
            run.log_epoch(2, {"train_loss": 0.4, "val_loss": 0.5})
            (tracked_workspace / f"history_{fold}.csv").write_text("epoch\n1\n")
            assert run.finish(WEIGHTS, [tracked_workspace / f"history_{fold}.csv"]) == "ok"
        runs.append(run)
    assert parent_of(runs[0]) == parent_of(runs[1])
    parent, status = log_aggregate(params, folds_csv, {"cv_accuracy_mean": 0.9}, [])
    assert (parent, status) == (parent_of(runs[0]), "ok")

    client = MlflowClient(f"sqlite:///{tracked_workspace / 'mlflow.db'}")
    parent_run = client.get_run(parent)
    assert parent_run.info.run_name == "lr-sweep-1"
    assert parent_run.info.status == "FINISHED"
    assert parent_run.data.metrics == {"cv_accuracy_mean": 0.9}
    assert parent_run.data.params == run_params(params.recipe, FOLDS)
    for fold, run in enumerate(runs):
        child = client.get_run(run.run_id)
        assert child.info.run_name == f"fold-{fold}"
        assert child.data.tags[PARENT_RUN_TAG] == parent
        assert child.data.tags["weights.sha256"] == WEIGHTS.sha256
        assert child.data.params == {**run_params(params.recipe, FOLDS), "fold": str(fold)}
        assert [m.step for m in client.get_metric_history(run.run_id, "val_loss")] == [1, 2]
        assert [a.path for a in client.list_artifacts(run.run_id)] == [f"history_{fold}.csv"]
    # Artifacts live in mlartifacts/ at the root, named by a location that holds no folder (artifact_store.py).
    experiment = client.get_experiment(parent_run.info.experiment_id)
    assert experiment.artifact_location == "mlflow-artifacts:/"
    assert (tracked_workspace / "mlartifacts" / runs[0].run_id / "artifacts" / "history_0.csv").is_file()


def test_a_new_pipeline_run_gets_a_new_parent(tracked_workspace: Path, params: Params) -> None:
    folds_csv = tracked_workspace / "folds.csv"
    with FoldRun(params, folds_csv, 0) as first:
        first.finish(WEIGHTS, [])
    log_aggregate(params, folds_csv, {}, [])
    changed = with_lr(params, 0.123)
    with FoldRun(changed, folds_csv, 0) as second:
        second.finish(WEIGHTS, [])
    assert parent_of(second) != parent_of(first)


def test_a_failing_fold_is_marked_failed(tracked_workspace: Path, params: Params) -> None:
    with pytest.raises(RuntimeError), FoldRun(params, tracked_workspace / "folds.csv", 0) as run:
        raise RuntimeError("out of memory")
    client = MlflowClient(f"sqlite:///{tracked_workspace / 'mlflow.db'}")
    assert client.get_run(run.run_id).info.status == "FAILED"


def test_aggregate_without_trained_folds_logs_nothing(tracked_workspace: Path, params: Params) -> None:
    assert log_aggregate(params, tracked_workspace / "folds.csv", {"x": 1.0}, []) == (None, "ok")


def test_aggregate_with_an_unreachable_store_reports_the_failure_without_raising(
    tracked_workspace: Path, params: Params, unreachable_mlflow: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parent, status = log_aggregate(params, tracked_workspace / "folds.csv", {"x": 1.0}, [])
    assert parent is None
    assert status.startswith(f"failed: logging the cross-validated summary: MLflow tracking at {unreachable_mlflow} is")
    assert status.endswith("fix MLFLOW_TRACKING_URI (or start its server), or unset it to track into sqlite:///"
                           f"{tracked_workspace / 'mlflow.db'}.")  # fmt: skip
    assert capsys.readouterr().err.count("warning: MLflow failed") == 1


def test_the_final_model_joins_the_closed_parent_but_a_rerun_fold_gets_a_new_one(
    tracked_workspace: Path, params: Params
) -> None:
    folds_csv = tracked_workspace / "folds.csv"
    with FoldRun(params, folds_csv, 0) as fold:
        fold.finish(WEIGHTS, [])
    log_aggregate(params, folds_csv, {}, [])
    with FoldRun(params, folds_csv, "final") as final:
        final.finish(WEIGHTS, [])
    assert parent_of(final) == parent_of(fold)
    client = MlflowClient(f"sqlite:///{tracked_workspace / 'mlflow.db'}")
    run = client.get_run(final.run_id)
    assert (run.info.run_name, run.data.tags["fold"], run.data.params["fold"]) == ("final", "final", "final")
    assert client.get_run(parent_of(fold)).info.status == "FINISHED"  # joined, not reopened
    with FoldRun(params, folds_csv, "0") as rerun:  # a fold number as text is still a fold
        rerun.finish(WEIGHTS, [])
    assert parent_of(rerun) != parent_of(fold)
    assert client.get_run(rerun.run_id).info.run_name == "fold-0"


def test_export_to_an_unreachable_store_is_a_recorded_failure(
    tracked_workspace: Path, params: Params, unreachable_mlflow: str, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = log_export(
        with_registered_model(params, "burrscope-test"), tracked_workspace / "folds.csv", model={}, tags={}
    )
    when = "failed: logging and registering the model: "
    assert outcome["status"].startswith(f"{when}MLflow tracking at {unreachable_mlflow} is unreachable")
    assert "fix MLFLOW_TRACKING_URI" in outcome["status"] and "run_id" not in outcome
    assert outcome["registered_model"] == "burrscope-test"
    assert "warning: MLflow failed" in capsys.readouterr().err


def test_a_killed_exports_run_is_closed_by_the_export_that_reruns(tracked_workspace: Path, params: Params) -> None:
    """SIGKILL mid-export leaves its run RUNNING (no handler runs); the rerun marks it KILLED, saying why."""
    folds_csv = tracked_workspace / "folds.csv"
    with FoldRun(params, folds_csv, 0) as fold:
        fold.finish(WEIGHTS, [])
    log_aggregate(params, folds_csv, {}, [])
    connection = fold.connection
    killed = connection.create_run("export", "stages/export.py", {PARENT_RUN_TAG: parent_of(fold)}, [])
    other = connection.create_run("export", "stages/export.py", {PARENT_RUN_TAG: "another pipeline run"}, [])
    outcome = log_export(params, folds_csv, model={}, tags={})  # logging the model then fails: no model given
    assert outcome["status"].startswith("failed: logging and registering the model")
    client = MlflowClient(f"sqlite:///{tracked_workspace / 'mlflow.db'}")
    closed = client.get_run(killed)
    assert closed.info.status == "KILLED" and "closed by its rerun" in closed.data.tags["burrscope.closed"]
    assert client.get_run(other).info.status == "RUNNING"  # another pipeline run's export is not this one's to close
    assert client.get_run(fold.run_id).info.status == "FINISHED"


def test_a_store_whose_creation_was_killed_is_created_again(
    tracked_workspace: Path, params: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow builds a new sqlite store through dozens of migrations, seconds in all: a fold killed meanwhile must
    not leave a half-made mlflow.db that every later run fails to open ("table ... already exists")."""
    import mlflow.store.db.utils as db_utils

    real = db_utils._initialize_tables

    def killed_midway(engine: object) -> None:
        with engine.begin() as connection:  # the first tables exist, the rest never will
            connection.exec_driver_sql("CREATE TABLE datasets (dataset_uuid VARCHAR(36))")
        raise KeyboardInterrupt

    monkeypatch.setattr(db_utils, "_initialize_tables", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        FoldRun(params, tracked_workspace / "folds.csv", 0)
    assert not (tracked_workspace / "mlflow.db").exists()
    monkeypatch.setattr(db_utils, "_initialize_tables", real)
    with FoldRun(params, tracked_workspace / "folds.csv", 0) as fold:
        assert fold.finish(WEIGHTS, []) == "ok"
    assert sorted(p.name for p in tracked_workspace.iterdir() if p.name.endswith(".tmp")) == []


def test_aggregate_closes_a_fold_run_its_stage_left_running(tracked_workspace: Path, params: Params) -> None:
    """A fold whose store went away while it logged cannot close its run; aggregate, which starts only once every
    fold's stage has ended, marks it FAILED, and leaves the final model's run (which may still train) alone."""
    folds_csv = tracked_workspace / "folds.csv"
    cut_off = FoldRun(params, folds_csv, 0)  # never finished nor closed: what the lost store left
    with FoldRun(params, folds_csv, 1) as fold:
        fold.finish(WEIGHTS, [])
    final = FoldRun(params, folds_csv, "final")
    parent, status = log_aggregate(params, folds_csv, {"cv_accuracy_mean": 0.9}, [])
    assert status == "ok"
    client = MlflowClient(f"sqlite:///{tracked_workspace / 'mlflow.db'}")
    closed = client.get_run(cut_off.run_id)
    assert closed.info.status == "FAILED" and "closed by aggregate" in closed.data.tags["burrscope.closed"]
    assert client.get_run(fold.run_id).info.status == "FINISHED"
    assert client.get_run(final.run_id).info.status == "RUNNING"
    assert client.get_run(parent).info.status == "FINISHED"


def test_logging_rides_out_a_tracking_server_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server is down (connections refused) for 12 s, as a restart of scripts/mlflow_server.sh takes 30 s on a
    busy machine: an epoch's metrics still reach it."""
    for name in (
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
        "MLFLOW_HTTP_REQUEST_TIMEOUT",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    ):
        monkeypatch.delenv(name, raising=False)
    received: list[bytes] = []

    class Tracking(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # MLflow's REST call: runs/log-batch
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *_: object) -> None:
            pass

    port = free_port()

    def come_back() -> None:
        time.sleep(12)
        server = http.server.HTTPServer(("127.0.0.1", port), Tracking)
        server.timeout = 60
        server.handle_request()

    threading.Thread(target=come_back, daemon=True).start()
    recorder = Recorder("nothing")
    client = MlflowClient(f"http://127.0.0.1:{port}")
    recorder.attempt("logging epoch 1", lambda: client.log_batch("0" * 32, metrics=[Metric("val_loss", 0.5, 0, 1)]))
    assert recorder.status == "ok" and received
