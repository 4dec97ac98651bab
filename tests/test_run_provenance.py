"""What `mlflow ui` shows of a pipeline run: where each run came from (git, user, source, DVC experiment), the data
it used (datasets), one row of scores per epoch, system metrics, and the parent's summary and report."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from burrscope.models.factory import Weights
from burrscope.params import Params
from burrscope.tracking.fold_run import FoldRun
from burrscope.tracking.parent_run import decision_metrics, log_aggregate, log_report
from burrscope.tracking.provenance import git_tags
from burrscope.tracking.store import PARENT_RUN_TAG, PIPELINE_KEY_TAG

WEIGHTS = Weights("test weights", "ab" * 32, None)
FOLDS = 2
FOLDS_CSV = "file,label,fold\na.png,0,0\nb.png,1,0\nc.png,0,1\nd.png,1,1\ne.png,1,1\n"
LABELS_CSV = "file,label\nA.png,0\nB.png,1\nC.png,0\nD.png,1\nE.png,1\n"
DVC_ENV = {"DVC_EXP_NAME": "lr-sweep-1", "DVC_EXP_BASELINE_REV": "0123abc" * 5 + "01234", "DVC_STAGE": "train@0"}


def git(root: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t"}
    env |= {"GIT_COMMITTER_EMAIL": "t@example.com", "PATH": "/usr/bin:/bin", "HOME": str(root)}
    return subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def workspace(tracked_workspace: Path) -> Path:
    """The tracked workspace as a committed git repository holding folds.csv, a labels CSV and a tracked pipeline
    output."""
    tmp_path = tracked_workspace
    (tmp_path / "folds.csv").write_text(FOLDS_CSV)
    (tmp_path / "labels.csv").write_text(LABELS_CSV)
    (tmp_path / "code.py").write_text("print('the stage')\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "metrics.json").write_text("{}\n")
    (tmp_path / ".gitignore").write_text("mlflow.db\nmlartifacts/\n.mlflow.lock\n")
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "remote", "add", "origin", "https://user:secret@example.org/burrscope.git")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "start")
    git_tags.cache_clear()  # asked once per process and folder; each test changes the tree
    return tmp_path


def client_of(workspace: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")


def train_folds(params: Params, workspace: Path, epochs: int = 2) -> list[str]:
    """Both folds' runs, as the train stage logs them (scores of every epoch, with the epoch in the row)."""
    ids = []
    for fold in range(FOLDS):
        with FoldRun(params, workspace / "folds.csv", fold, workspace / "labels.csv") as run:
            for epoch in range(1, epochs + 1):
                row = {"epoch": epoch, "train_loss": 1 / epoch, "val_loss": 2 / epoch, "val_roc_auc": 0.5 + epoch / 10}
                run.log_epoch(epoch, row)
            assert run.finish(WEIGHTS, []) == "ok"
        ids.append(run.run_id)
    return ids


def parent_of(client: MlflowClient, run_id: str) -> Run:
    return client.get_run(client.get_run(run_id).data.tags[PARENT_RUN_TAG])


def test_every_run_names_its_commit_branch_remote_user_source_and_dvc_experiment(
    workspace: Path, params: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in DVC_ENV.items():
        monkeypatch.setenv(name, value)
    commit = git(workspace, "rev-parse", "HEAD")
    client = client_of(workspace)
    folds = train_folds(params, workspace)
    for run in [parent_of(client, folds[0]), *map(client.get_run, folds)]:
        tags = run.data.tags
        assert tags["mlflow.source.git.commit"] == commit
        assert tags["mlflow.source.git.branch"] == "main"
        assert tags["mlflow.source.git.repoURL"] == "https://example.org/burrscope.git"  # never the password
        assert tags["mlflow.source.git.dirty"] == "false"
        assert tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL"
        assert tags["dvc.exp_name"] == "lr-sweep-1" and tags["dvc.exp_baseline_rev"] == DVC_ENV["DVC_EXP_BASELINE_REV"]
    # Under DVC the parent stands for the whole pipeline, not the stage that created it; each fold for its stage.
    parent = parent_of(client, folds[0]).data.tags
    assert parent["mlflow.source.name"] == "dvc.yaml" and "dvc.stage" not in parent
    fold = client.get_run(folds[0]).data.tags
    assert fold["mlflow.source.name"] == "stages/train.py" and fold["dvc.stage"] == "train@0"


def test_a_run_from_changed_code_says_the_tree_was_dirty_and_what_changed(workspace: Path, params: Params) -> None:
    (workspace / "code.py").write_text("print('edited')\n")
    (fold,) = train_folds(params, workspace)[:1]
    tags = client_of(workspace).get_run(fold).data.tags
    assert tags["mlflow.source.git.dirty"] == "true" and tags["git.changed"] == "code.py"


def test_outputs_an_earlier_stage_rewrote_do_not_make_the_tree_dirty(workspace: Path, params: Params) -> None:
    (workspace / "results" / "metrics.json").write_text('{"accuracy": 1}\n')
    (fold,) = train_folds(params, workspace)[:1]
    assert client_of(workspace).get_run(fold).data.tags["mlflow.source.git.dirty"] == "false"


def test_outside_git_a_run_still_names_its_user_and_source(
    tmp_path: Path, params: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "folds.csv").write_text(FOLDS_CSV)
    with FoldRun(params, tmp_path / "folds.csv", 0) as run:
        run.finish(WEIGHTS, [])
    tags = client_of(tmp_path).get_run(run.run_id).data.tags
    assert "mlflow.source.git.commit" not in tags
    assert tags["mlflow.user"] and tags["mlflow.source.name"] == "stages/train.py"


def datasets(run: Run) -> list[tuple[str, str, int, str]]:
    """(name, context, rows, source) of each dataset the run logged, sorted."""
    found = []
    for entry in run.inputs.dataset_inputs:
        context = {tag.key: tag.value for tag in entry.tags}["mlflow.data.context"]
        rows = json.loads(entry.dataset.profile)["num_rows"]
        found.append((entry.dataset.name, context, rows, json.loads(entry.dataset.source)["uri"]))
    return sorted(found)


def test_the_parent_and_each_fold_log_the_labels_and_their_fold_assignment_as_datasets(
    workspace: Path, params: Params
) -> None:
    client = client_of(workspace)
    folds = train_folds(params, workspace)
    parent = parent_of(client, folds[0])
    labels = ("labels", "source", 5, "labels.csv")  # paths relative to the workspace: they survive moving it
    assert datasets(parent) == [("folds", "cross-validation", 5, "folds.csv"), labels]
    # Fold 0 holds out its 2 images and trains on fold 1's 3; fold 1 the other way round.
    assert datasets(client.get_run(folds[0])) == [
        ("folds", "training", 3, "folds.csv"),
        ("folds", "validation", 2, "folds.csv"),
        labels,
    ]
    assert datasets(client.get_run(folds[1])) == [
        ("folds", "training", 2, "folds.csv"),
        ("folds", "validation", 3, "folds.csv"),
        labels,
    ]
    digests = {entry.dataset.digest for entry in client.get_run(folds[0]).inputs.dataset_inputs}
    assert len(digests) == 3  # training, validation and labels tell apart by content


def test_a_labels_file_pandas_cannot_read_leaves_only_the_folds(workspace: Path, params: Params) -> None:
    (workspace / "labels.csv").write_bytes(b"\xff\xfe\x00garbage")
    (fold, _) = train_folds(params, workspace)
    assert [name for name, *_ in datasets(client_of(workspace).get_run(fold))] == ["folds", "folds"]


def test_each_score_is_logged_at_its_epoch_as_step_and_the_epoch_is_no_metric(workspace: Path, params: Params) -> None:
    client = client_of(workspace)
    (fold, _) = train_folds(params, workspace, epochs=3)
    assert "epoch" not in client.get_run(fold).data.metrics
    history = client.get_metric_history(fold, "val_roc_auc")
    assert [(m.step, round(m.value, 6)) for m in history] == [(1, 0.6), (2, 0.7), (3, 0.8)]


def test_fold_runs_sample_system_metrics_while_they_train_when_asked_to(
    workspace: Path, params: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true")  # MLflow's own switch
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # and its override of the interval
    with FoldRun(params, workspace / "folds.csv", 0) as run:
        time.sleep(1.5)
        run.finish(WEIGHTS, [])
    client = client_of(workspace)
    names = set(client.get_run(run.run_id).data.metrics)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= names
    assert client.get_run(run.run_id).info.status == "FINISHED"  # stopped before the run closed, not after


@pytest.mark.parametrize("switch", [None, "false"])
def test_system_metrics_are_off_unless_asked_for(
    workspace: Path, params: Params, monkeypatch: pytest.MonkeyPatch, switch: str | None
) -> None:
    """The folds' comparison in `mlflow ui` leads with their held-out scores, not CPU utilisation."""
    if switch is None:
        monkeypatch.delenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", switch)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    with FoldRun(params, workspace / "folds.csv", 0) as run:
        assert run.monitor is None
        time.sleep(0.5)
        run.finish(WEIGHTS, [])
    assert not client_of(workspace).get_run(run.run_id).data.metrics


def write_aggregate(folder: Path, errors: bool = True) -> Path:
    """What the aggregate stage writes that decision_metrics reads: metrics.json and thresholds.csv."""
    folder.mkdir(exist_ok=True)
    summary = {"threshold": 0.4, "calibration": {"ece": 0.05, "brier": 0.02}}
    if errors:
        summary["errors"] = {"missed": 1, "false_alarms": 2}
    (folder / "metrics.json").write_text(json.dumps(summary))
    table = "threshold,precision,recall,flagged,missed,false_alarms\n0.3,0.5,1.0,0.8,0,5\n0.4,0.6,0.9,0.6,3,4\n"
    (folder / "thresholds.csv").write_text(table)
    return folder


def test_the_parent_gets_the_threshold_calibration_and_the_burrs_missed_and_false_alarms(
    workspace: Path, params: Params
) -> None:
    client = client_of(workspace)
    folds = train_folds(params, workspace)
    aggregate_dir = write_aggregate(workspace / "aggregate")
    parent, status = log_aggregate(
        params, workspace / "folds.csv", {"oof_accuracy": 0.9}, [], aggregate_dir=aggregate_dir
    )
    assert status == "ok" and parent == parent_of(client, folds[0]).info.run_id
    assert client.get_run(parent).data.metrics == {
        "oof_accuracy": 0.9,
        "predict.threshold": 0.4,
        "oof_ece": 0.05,
        "oof_brier": 0.02,
        "oof_missed": 1.0,
        "oof_false_alarms": 2.0,
    }


def test_without_errors_in_metrics_json_the_counts_come_from_the_thresholds_table(tmp_path: Path) -> None:
    found = decision_metrics(write_aggregate(tmp_path / "aggregate", errors=False))
    assert (found["oof_missed"], found["oof_false_alarms"]) == (3.0, 4.0)  # the 0.4 row


def test_more_than_two_classes_give_calibration_but_no_threshold_or_counts(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text(json.dumps({"threshold": None, "errors": None, "calibration": {"ece": 0.1}}))
    assert decision_metrics(tmp_path) == {"oof_ece": 0.1}


def test_the_report_is_logged_to_the_parent_found_from_the_pooled_predictions(workspace: Path, params: Params) -> None:
    client = client_of(workspace)
    folds = train_folds(params, workspace)
    # aggregate's predictions.csv: the rows of folds.csv, in another order, with more columns.
    pooled = pd.read_csv(workspace / "folds.csv").sort_values("file", ascending=False).assign(predicted="0")
    pooled.to_csv(workspace / "predictions.csv", index=False)
    (workspace / "report.html").write_text("<html><body>report</body></html>")
    parent, status = log_report(params, workspace / "predictions.csv", workspace / "report.html")
    assert status == "ok" and parent == parent_of(client, folds[0]).info.run_id
    assert [a.path for a in client.list_artifacts(parent)] == ["report.html"]
    # Beside the report, the page its header links (by the pipeline key) sends the browser on to the parent's page.
    (page,) = workspace.glob("mlflow-run-*.html")
    experiment = client.get_run(parent).info.experiment_id
    target = f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{parent}?workflowType=machine_learning"
    assert f'<meta http-equiv="refresh" content="0; url={target}">' in page.read_text()
    assert page.name == f"mlflow-run-{client.get_run(parent).data.tags[PIPELINE_KEY_TAG]}.html"


def test_a_report_mlflow_cannot_take_is_a_warning_not_a_lost_report(
    workspace: Path, params: Params, unreachable_mlflow: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (workspace / "report.html").write_text("<html></html>")
    parent, status = log_report(params, workspace / "folds.csv", workspace / "report.html")
    assert parent is None and status.startswith(f"failed: logging the report: MLflow tracking at {unreachable_mlflow}")
    assert capsys.readouterr().err.count("warning: MLflow failed") == 1
    assert (workspace / "report.html").is_file() and not list(workspace.glob("mlflow-run-*.html"))
