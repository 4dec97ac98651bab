"""Tracking into an MLflow server on PostgreSQL (scripts/mlflow_server.sh), as a team or a cluster would.

Five folds log at once (`snakemake --cores 4` on a tiny 5-fold copy, then the export stage registers the model),
and everything the folds wrote to disk is found in the server: params, every epoch's metrics, the artifacts, served
through the server itself (mlflow-artifacts:). A worker of the server that stalls for seconds, as on a busy machine,
keeps serving. Then the server is stopped while a fold trains, and a fold is started while it is down.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml
from helpers import Server, make_project, run, run_log, user_env
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from burrscope.tracking.store import PARENT_RUN_TAG, PIPELINE_KEY_TAG

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

FOLDS, EPOCHS = 5, 2
FOLD_ARTIFACTS = {"model.pt", "history.csv", "predictions.csv"}  # what the train stage logs, from its outputs
TRAIN = ["python", "-m", "stages.train", "data/processed/images", "data/processed/folds.csv"]
INTERRUPTED_EPOCHS = 30  # long enough to stop the server after the second epoch, with many still to come


@dataclass
class Tracked:
    root: Path
    server: Server
    experiment: str
    registered_model: str
    env: dict[str, str]

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.server.uri)

    def runs(self) -> list[Run]:
        experiment = self.client.get_experiment_by_name(self.experiment)
        assert experiment is not None, f"no experiment {self.experiment} in the server"
        return self.client.search_runs([experiment.experiment_id], max_results=1000)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tracked(mlflow_server: Server, module_folder: Callable[[str], Path]) -> Tracked:
    # Names of their own, so that runs left in the server's database by earlier test runs never count.
    tag = uuid.uuid4().hex[:8]
    experiment, registered_model = f"burrscope-test-{tag}", f"burrscope-test-{tag}"
    mlflow = {"experiment": experiment, "registered_model": registered_model}
    # Two epochs, so that each fold's metric history has more than one point to lose.
    root = make_project(module_folder("mlflow_server"), folds=FOLDS, epochs=EPOCHS, mlflow=mlflow)
    server = mlflow_server
    env = user_env(root, MLFLOW_TRACKING_URI=server.uri)
    started = time.monotonic()
    run(["snakemake", "--cores", "4", "results/export/export.json"], root, env, timeout=1200)
    print(f"5 folds and the export against the server: {time.monotonic() - started:.0f} s")
    return Tracked(root, server, experiment, registered_model, env)


def test_five_folds_logging_at_once_lose_nothing(tracked: Tracked, tmp_path: Path) -> None:
    runs = tracked.runs()
    parents = [r for r in runs if PIPELINE_KEY_TAG in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get(PARENT_RUN_TAG) == parent.info.run_id]
    folds = {r.data.tags["fold"]: r for r in children if "fold" in r.data.tags}
    assert sorted(folds) == [str(k) for k in range(FOLDS)]
    assert len(runs) == 1 + FOLDS + 1 and len(children) == FOLDS + 1  # the parent, the folds, the export
    for fold, child in folds.items():
        out = tracked.root / f"results/train/fold_{fold}"
        assert run_log(tracked.root, f"train/fold_{fold}")["mlflow"] == "ok", fold
        assert child.info.status == "FINISHED" and child.info.run_name == f"fold-{fold}"
        # Every param the parent carries, and the fold.
        assert child.data.params == {**parent.data.params, "fold": fold}
        assert {"lr", "epochs", "model", "split.folds"} <= set(child.data.params)
        history = pd.read_csv(out / "history.csv")
        assert list(history["epoch"]) == list(range(1, EPOCHS + 1))
        for name in history.columns.drop("epoch"):
            logged = sorted((m.step, m.value) for m in tracked.client.get_metric_history(child.info.run_id, name))
            assert logged == list(zip(history["epoch"], history[name], strict=True)), (fold, name)
        assert child.info.artifact_uri.startswith("mlflow-artifacts:/")
        assert {a.path for a in tracked.client.list_artifacts(child.info.run_id)} == FOLD_ARTIFACTS
        download = tmp_path / f"fold_{fold}"
        download.mkdir()
        for name in FOLD_ARTIFACTS:
            local = Path(tracked.client.download_artifacts(child.info.run_id, name, str(download)))
            assert sha256(local) == sha256(out / name), (fold, name)


def test_the_exported_model_is_registered_in_the_server(
    tracked: Tracked, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.artifacts

    exported = run_log(tracked.root, "export")["mlflow"]
    assert exported["status"] == "ok" and exported["tracking_uri"] == tracked.server.uri
    assert exported["registered_model_uri"] == f"models:/{tracked.registered_model}/1"
    versions = tracked.client.search_model_versions(f"name = '{tracked.registered_model}'")
    assert [(v.version, v.run_id) for v in versions] == [("1", exported["run_id"])]
    # The registered model's files come back through the server, the TorchScript twin byte for byte.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked.server.uri)  # models:/ URIs resolve through the registry
    model = Path(mlflow.artifacts.download_artifacts(exported["registered_model_uri"], dst_path=str(tmp_path)))
    assert (model / "MLmodel").is_file()
    assert sha256(model / "artifacts/model.ts") == sha256(tracked.root / "results/export/model.ts")


def server_workers(server: Server) -> list[int]:
    """The pids of the server's uvicorn workers: the processes that its uvicorn on the server's port spawned."""
    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if command[1:3] == ["-m", "uvicorn"] and "--port" in command and str(server.port) in command:
            children = process.children()
            return sorted(c.pid for c in children if "multiprocessing.spawn" in " ".join(c.cmdline()))
    raise AssertionError(f"no uvicorn serves port {server.port}")


def test_a_worker_that_stalls_for_seconds_is_not_killed_with_its_requests(tracked: Tracked) -> None:
    """uvicorn kills a worker that leaves its health ping unanswered for its `--timeout-worker-healthcheck`, 5 s by
    default, aborting the requests it serves. A worker starting up or serving its first request on a 2-core
    machine busy training can be that slow: a fold's first request was aborted, and the fold refused to train (the
    fault campaign's MLflow-server trial, in CI). scripts/mlflow_server.sh gives a worker a minute. Runs before the
    tests below stop the server."""
    workers = server_workers(tracked.server)
    assert len(workers) == 2, workers  # the script's default
    stalled = psutil.Process(workers[0])
    stalled.suspend()  # SIGSTOP: no answer to anything, as a starved process
    try:
        time.sleep(12)
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):  # killed while stalled: the assertion below says so
            stalled.resume()
    time.sleep(1)
    assert server_workers(tracked.server) == workers, "uvicorn killed the stalled worker"
    assert tracked.client.get_experiment_by_name(tracked.experiment) is not None


@dataclass
class Interrupted:
    result: subprocess.CompletedProcess[str]
    out: Path
    epochs_logged: int


def fold_run(tracked: Tracked, fold: str, epochs: str) -> Run | None:
    """The running child run of `fold` in the pipeline run trained for `epochs` epochs, if it has started."""
    for candidate in tracked.runs():
        if candidate.data.tags.get("fold") == fold and candidate.data.params.get("epochs") == epochs:
            return candidate
    return None


@pytest.fixture(scope="module")
def interrupted(tracked: Tracked) -> Interrupted:
    """Fold 0 trained again for more epochs, with the server stopped (by its script) once it has logged two: between
    two of its epochs, as the fold is paused until the server is down."""
    epochs = INTERRUPTED_EPOCHS
    params = yaml.safe_load((tracked.root / "params.yaml").read_text())
    params["epochs"] = epochs
    (tracked.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = tracked.root / "results/interrupted/fold_0"
    with (tracked.root / "interrupted.log").open("w+") as log:
        # One thread, as Snakemake would give a fold here: two spinning OpenMP threads on a busy machine crawl.
        env = {**tracked.env, "OMP_NUM_THREADS": "1"}
        process = subprocess.Popen([*TRAIN, "0", str(out)], cwd=tracked.root, env=env, stdout=log, stderr=log)
        logged = 0
        deadline = time.monotonic() + 300
        while logged < 2:
            assert process.poll() is None, "the fold ended before the server could be stopped"
            assert time.monotonic() < deadline, "the fold logged no two epochs within 300 s"
            time.sleep(0.5)
            found = fold_run(tracked, "0", str(epochs))
            if found is not None:
                logged = len(tracked.client.get_metric_history(found.info.run_id, "val_loss"))
        # Paused while the server stops: `stop` waits for the script's start/stop lock, which the fault campaign's
        # server trial may hold for a minute on a busy machine, and the fold must not finish in the meantime.
        fold = psutil.Process(process.pid)
        fold.suspend()
        try:
            tracked.server.stop()
        finally:
            fold.resume()
        process.wait(timeout=600)
        log.seek(0)
        output = log.read()
    return Interrupted(subprocess.CompletedProcess(process.args, process.returncode, output, ""), out, logged)


def test_stopping_the_server_mid_run_keeps_the_folds_outputs_and_says_so(
    interrupted: Interrupted, tracked: Tracked
) -> None:
    result = interrupted.result
    assert result.returncode == 0, result.stdout
    for name in ("model.pt", "history.csv", "predictions.csv"):
        assert (interrupted.out / name).is_file(), name
    assert len(pd.read_csv(interrupted.out / "history.csv")) == INTERRUPTED_EPOCHS  # training went on to the end
    status = run_log(tracked.root, f"train/{interrupted.out.name}")["mlflow"]
    # Epochs went to the server until it stopped; the first one after that is the recorded failure.
    failed_at = re.match(r"failed: logging epoch (\d+): ", status)
    assert failed_at and int(failed_at[1]) > interrupted.epochs_logged >= 2, status
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning: MLflow failed")]
    assert len(warnings) == 1, result.stdout
    assert "the fold's outputs are still written" in warnings[0]


def test_an_unreachable_server_stops_a_fold_before_training(interrupted: Interrupted, tracked: Tracked) -> None:
    out = tracked.root / "results/unreachable/fold_1"
    started = time.monotonic()
    result = run([*TRAIN, "1", str(out)], tracked.root, {**tracked.env, "OMP_NUM_THREADS": "1"}, check=False)
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: MLflow tracking at {tracked.server.uri} is unreachable"), lines[0]
    assert not out.exists() or not any(out.iterdir())
    assert time.monotonic() - started < 120
