"""MLflow tracking: fold runs from separate processes meet under one parent, in the workspace's store."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from stages.models import Weights
from stages.tracking import FoldRun, flatten, log_aggregate, log_export, tracking_uri, workspace_root

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = Weights("test weights", "ab" * 32, None)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "DVC_EXP_NAME"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "folds.csv").write_text("file,label,fold\na.png,0,0\nb.png,1,1\n")
    return tmp_path


def params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


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


def test_folds_share_one_parent_which_aggregate_completes(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVC_EXP_NAME", "lr-sweep-1")
    # A stale MLFLOW_RUN_ID must not hijack the runs (mlflow#15713).
    monkeypatch.setenv("MLFLOW_RUN_ID", "0123456789abcdef")
    folds_csv = workspace / "folds.csv"
    run_ids = []
    for fold in (0, 1):
        with FoldRun(params(), folds_csv, fold) as run:
            run.log_epoch(1, {"train_loss": 0.5, "val_loss": 0.6})
            run.log_epoch(2, {"train_loss": 0.4, "val_loss": 0.5})
            (workspace / f"history_{fold}.csv").write_text("epoch\n1\n")
            assert run.finish(WEIGHTS, [workspace / f"history_{fold}.csv"]) == "ok"
        run_ids.append(run.run_id)
    assert run.parent_id is not None
    parent = log_aggregate(params(), folds_csv, {"cv_accuracy_mean": 0.9}, [])
    assert parent == run.parent_id

    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    parent_run = client.get_run(parent)
    assert parent_run.info.run_name == "lr-sweep-1"
    assert parent_run.info.status == "FINISHED"
    assert parent_run.data.metrics == {"cv_accuracy_mean": 0.9}
    assert parent_run.data.params["lr"] == str(params()["lr"])
    for fold, run_id in enumerate(run_ids):
        child = client.get_run(run_id)
        assert child.info.run_name == f"fold-{fold}"
        assert child.data.tags["mlflow.parentRunId"] == parent
        assert child.data.tags["weights.sha256"] == WEIGHTS.sha256
        assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [1, 2]
        assert [a.path for a in client.list_artifacts(run_id)] == [f"history_{fold}.csv"]
    experiment = client.get_experiment(parent_run.info.experiment_id)
    assert experiment.artifact_location == (workspace / "mlartifacts").as_uri()


def test_a_new_pipeline_run_gets_a_new_parent(workspace: Path) -> None:
    folds_csv = workspace / "folds.csv"
    with FoldRun(params(), folds_csv, 0) as first:
        first.finish(WEIGHTS, [])
    log_aggregate(params(), folds_csv, {}, [])
    changed = params() | {"lr": 0.123}
    with FoldRun(changed, folds_csv, 0) as second:
        second.finish(WEIGHTS, [])
    assert second.parent_id != first.parent_id


def test_a_failing_fold_is_marked_failed(workspace: Path) -> None:
    with pytest.raises(RuntimeError), FoldRun(params(), workspace / "folds.csv", 0) as run:
        raise RuntimeError("out of memory")
    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    assert client.get_run(run.run_id).info.status == "FAILED"


def test_aggregate_without_trained_folds_logs_nothing(workspace: Path) -> None:
    assert log_aggregate(params(), workspace / "folds.csv", {"x": 1.0}, []) is None


def test_the_final_model_joins_the_closed_parent_but_a_rerun_fold_gets_a_new_one(workspace: Path) -> None:
    folds_csv = workspace / "folds.csv"
    with FoldRun(params(), folds_csv, 0) as fold:
        fold.finish(WEIGHTS, [])
    log_aggregate(params(), folds_csv, {}, [])
    with FoldRun(params(), folds_csv, "final") as final:
        final.finish(WEIGHTS, [])
    assert final.parent_id == fold.parent_id
    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    run = client.get_run(final.run_id)
    assert (run.info.run_name, run.data.tags["fold"], run.data.params["fold"]) == ("final", "final", "final")
    assert client.get_run(fold.parent_id).info.status == "FINISHED"  # joined, not reopened
    with FoldRun(params(), folds_csv, "0") as rerun:  # a fold number as text is still a fold
        rerun.finish(WEIGHTS, [])
    assert rerun.parent_id != fold.parent_id
    assert client.get_run(rerun.run_id).info.run_name == "fold-0"


def test_export_to_an_unreachable_store_is_a_recorded_failure(workspace: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    outcome = log_export(params(), workspace / "folds.csv", {}, {})
    assert outcome["status"].startswith("failed: MLflow tracking at http://127.0.0.1:9 is unreachable")
    assert "fix MLFLOW_TRACKING_URI" in outcome["status"] and "run_id" not in outcome
    assert "warning: MLflow failed" in capsys.readouterr().err
