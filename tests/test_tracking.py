"""MLflow tracking: fold runs from separate processes meet under one parent, in the tracked_workspace's store."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
from helpers import with_lr, with_registered_model
from mlflow.tracking import MlflowClient

from burrscope.models.factory import Weights
from burrscope.params import Params, Recipe
from burrscope.tracking.fold_run import FoldRun
from burrscope.tracking.parent_run import log_aggregate
from burrscope.tracking.registry import log_export
from burrscope.tracking.store import (
    PARENT_RUN_TAG,
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
    tracked_workspace: Path, params: Params, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    parent, status = log_aggregate(params, tracked_workspace / "folds.csv", {"x": 1.0}, [])
    assert parent is None
    assert status.startswith("failed: logging the cross-validated summary: MLflow tracking at http://127.0.0.1:9 is")
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
    tracked_workspace: Path, params: Params, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    outcome = log_export(
        with_registered_model(params, "burrscope-test"), tracked_workspace / "folds.csv", model={}, tags={}
    )
    when = "failed: logging and registering the model: "
    assert outcome["status"].startswith(f"{when}MLflow tracking at http://127.0.0.1:9 is unreachable")
    assert "fix MLFLOW_TRACKING_URI" in outcome["status"] and "run_id" not in outcome
    assert outcome["registered_model"] == "burrscope-test"
    assert "warning: MLflow failed" in capsys.readouterr().err
