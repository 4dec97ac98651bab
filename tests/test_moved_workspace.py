"""A moved workspace (`mv repo repo2`) keeps its MLflow artifacts: the store names none of its folders, a process
reading the sqlite file finds them beside it, and `mlflow ui` started in the new place shows and serves them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow.artifacts
import mlflow.pyfunc
import pandas as pd
import pytest
from helpers import free_port, with_registered_model
from mlflow.tracking import MlflowClient

from burrscope.models.factory import Weights
from burrscope.params import Params
from burrscope.tracking.fold_run import FoldRun
from burrscope.tracking.parent_run import log_aggregate
from burrscope.tracking.registry import log_export

pytestmark = pytest.mark.cli  # starts `mlflow ui`, a command line

NAME = "burrscope-moved"
UI_START_S = 180  # `mlflow ui` imports the whole server; on a busy CI runner that takes a while


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context: object, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return model_input


def track_a_pipeline_run(root: Path, params: Params) -> dict[str, str]:
    """A fold with an artifact, the parent summarised with one, an exported and registered model; their ids."""
    (root / "folds.csv").write_text("file,label,fold\na.png,0,0\nb.png,1,1\n")
    (root / "history.csv").write_text("epoch,val_loss\n1,0.5\n")
    (root / "metrics.json").write_text('{"accuracy": 1.0}\n')
    with FoldRun(params, root / "folds.csv", 0) as run:
        assert run.finish(Weights("w", None, None), [root / "history.csv"]) == "ok"
    parent, status = log_aggregate(params, root / "folds.csv", {"oof_balanced_accuracy": 1.0}, [root / "metrics.json"])
    assert status == "ok"
    model = {"python_model": Echo(), "pip_requirements": ["mlflow"]}
    outcome = log_export(
        with_registered_model(params, NAME), root / "folds.csv", model=model, tags={}, parity={"model.ts": 0.0}
    )
    assert outcome["status"] == "ok"
    return {"fold": run.run_id, "parent": parent, "model_id": outcome["model_uri"].removeprefix("models:/")}


def text_in_store(database: Path) -> str:
    """Every text value in the sqlite store, one per line."""
    with sqlite3.connect(database) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        values = [value for table in tables for row in db.execute(f'SELECT * FROM "{table}"') for value in row]
    return "\n".join(value for value in values if isinstance(value, str))


@contextmanager
def mlflow_ui(cwd: Path) -> Iterator[str]:
    """`mlflow ui` as a user starts it in `cwd` (its defaults: ./mlflow.db, artifacts served from ./mlartifacts)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    command = [str(Path(sys.executable).parent / "mlflow"), "ui", "--port", str(port), "--workers", "1"]
    # Its own session: the uvicorn workers it spawns stop with it.
    server = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + UI_START_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "mlflow ui did not start"
                time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def test_after_moving_the_workspace_its_artifacts_still_load_and_mlflow_ui_serves_them(
    tmp_path: Path, tiny_params: Callable[..., Params], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "DVC_EXP_NAME"):
        monkeypatch.delenv(name, raising=False)
    old, new = tmp_path / "repo", tmp_path / "repo2"
    old.mkdir()
    monkeypatch.chdir(old)
    ids = track_a_pipeline_run(old, tiny_params())
    monkeypatch.chdir(tmp_path)
    shutil.move(old, new)

    # Nothing recorded names the old folder: not the store, not the model's MLmodel.
    assert str(old) not in text_in_store(new / "mlflow.db")
    (mlmodel,) = new.glob("mlartifacts/**/MLmodel")
    assert str(old) not in mlmodel.read_text() and "artifact_path: mlflow-artifacts:/" in mlmodel.read_text()

    # A process reading the sqlite file directly (artifact_store's plugin): artifacts and the registered model.
    uri = f"sqlite:///{new / 'mlflow.db'}"
    local = MlflowClient(uri).download_artifacts(ids["fold"], "history.csv", str(tmp_path))
    assert Path(local).read_text() == "epoch,val_loss\n1,0.5\n"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    assert model.predict(pd.DataFrame({"x": [7]}))["x"].tolist() == [7]

    # `mlflow ui` in the moved workspace: what its pages list and download.
    with mlflow_ui(new) as url:
        listed = json.loads(get(f"{url}/ajax-api/2.0/mlflow/artifacts/list?run_uuid={ids['fold']}"))
        assert [f["path"] for f in listed["files"]] == ["history.csv"]
        assert get(f"{url}/get-artifact?path=history.csv&run_uuid={ids['fold']}") == b"epoch,val_loss\n1,0.5\n"
        assert get(f"{url}/get-artifact?path=metrics.json&run_uuid={ids['parent']}") == b'{"accuracy": 1.0}\n'
        model_files = f"{url}/ajax-api/2.0/mlflow/logged-models/{ids['model_id']}/artifacts"
        listed = json.loads(get(f"{model_files}/directories?artifact_directory_path="))
        assert "MLmodel" in {f["path"] for f in listed["files"]}
        assert get(f"{model_files}/files?artifact_file_path=MLmodel") == mlmodel.read_bytes()
