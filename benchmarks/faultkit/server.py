"""Fault 7: the MLflow server of scripts/mlflow_server.sh (PostgreSQL behind it) killed at a seeded moment while
the folds train, and restarted; the folds' outputs must survive and the rerun record complete runs."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from workspace import REPO, set_params

from faultkit.kills import errors, progress
from faultkit.lab import DVC, Lab, environment
from faultkit.outcome import Tally, experiment_runs, snapshot
from faultkit.procs import DVC_STAGE, Finished, Lines

STATE = Path(os.environ.get("BURRSCOPE_MLFLOW_STATE", "/var/lib/burrscope-mlflow"))  # scripts/mlflow_server.sh's


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_script(action: str, port: int) -> None:
    script = REPO / "scripts" / "mlflow_server.sh"
    subprocess.run(
        ["bash", str(script), action, str(port)], cwd=REPO, env=environment(), check=True, capture_output=True
    )


@contextlib.contextmanager
def mlflow_server() -> Iterator[int]:
    """A server of scripts/mlflow_server.sh on a free port, stopped afterwards; its port."""
    port = free_port()
    server_script("start", port)
    try:
        yield port
    finally:
        server_script("stop", port)


def kill_server(port: int) -> None:
    """SIGKILL the server and its workers (the script starts it in a session of its own)."""
    pid = int((STATE / f"mlflow-{port}.pid").read_text().strip())
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def finished_stages(run: Finished) -> set[str]:
    """The stages a (possibly failed) `dvc repro` completed: each but the last it started, and the last if it
    succeeded."""
    names = [name for name, _ in run.marks(DVC_STAGE)]
    return set(names if run.returncode == 0 else names[:-1])


FOLD_ARTIFACTS = {"model.pt", "history.csv", "predictions.csv"}  # what a fold's run logs


def incomplete_runs(uri: str, experiment: str, params: dict[str, Any], *, export: bool) -> list[str]:
    """What the latest pipeline run in the experiment lacks: a FINISHED parent with the pooled metrics, per fold a
    FINISHED run with every epoch's scores and its artifacts, and (with `export`) a FINISHED export run."""
    from mlflow.tracking import MlflowClient

    from burrscope.tracking.store import PARENT_RUN_TAG, PIPELINE_KEY_TAG

    client = MlflowClient(uri)
    runs = experiment_runs(client, experiment)
    if runs is None:
        return ["no run reached the server"]
    parents = sorted((r for r in runs if PIPELINE_KEY_TAG in r.data.tags), key=lambda r: r.info.start_time)
    if not parents:
        return ["no parent run"]
    parent = parents[-1]
    problems = [] if parent.info.status == "FINISHED" and "oof_accuracy" in parent.data.metrics else ["parent"]
    children = [r for r in runs if r.data.tags.get(PARENT_RUN_TAG) == parent.info.run_id]
    done = [r for r in children if r.info.status == "FINISHED"]
    for fold in map(str, params["split"]["fold_ids"]):
        complete = [
            r
            for r in done
            if r.data.tags.get("fold") == fold
            and len(client.get_metric_history(r.info.run_id, "val_loss")) == params["epochs"]
            and {a.path for a in client.list_artifacts(r.info.run_id)} >= FOLD_ARTIFACTS
        ]
        problems += [] if complete else [f"fold {fold}"]
    if export and not any(r.info.run_name == "export" for r in done):
        problems.append("export")
    return problems


def run_with_outage(
    lab: Lab, root: Path, port: int, *, moment: tuple[str, float], outage: float
) -> tuple[Finished, bool]:
    """`dvc repro` in `root` with the server killed `moment[1]` seconds into stage `moment[0]` and started again
    `outage` seconds later (or once the run ends, if sooner); its end, and whether the server was killed."""
    env = environment(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}")
    stage, offset = moment
    events: dict[str, float] = {}

    def inject(elapsed: float, lines: Lines) -> None:
        started = [at for at, line in lines if f"Running stage '{stage}'" in line]
        if "killed" not in events and started and elapsed >= started[0] + offset:
            kill_server(port)
            events["killed"] = elapsed
        elif "killed" in events and "restarted" not in events and elapsed >= events["killed"] + outage:
            server_script("start", port)
            events["restarted"] = elapsed

    first = lab.run(lab.command(DVC), root, env=env, during=inject)
    if "killed" in events and "restarted" not in events:
        server_script("start", port)
    return first, "killed" in events


def server_killed(lab: Lab) -> Tally:
    """Against a server of its own: an uninterrupted `dvc repro` tracked into it, then a run whose server is killed
    at a seeded moment while the folds train (a moment of the uninterrupted run's) and started again a seeded 1 to
    5 s later (the restart itself takes tens of seconds), then `dvc repro` again. Its outputs are compared with the
    uninterrupted server run's: both track into the same server under the same MLflow names, so that even the
    report, which names the experiment and links the store, must be the same bytes."""
    tally = Tally("MLflow server killed and restarted")
    if os.geteuid() != 0:
        tally.notes.append("skipped: scripts/mlflow_server.sh needs root")
        return tally
    # Runs of their own in the server's shared database: a fold joins a running parent of its pipeline key, and
    # runs of earlier campaigns must never count. The two runs below share the names: the first closes its parent.
    name = f"burrscope-faults-{uuid.uuid4().hex[:8]}"
    names = {"mlflow.experiment": name, "mlflow.registered_model": name}
    rng = lab.plan.rng("mlflow-server")
    draw, outage = rng.random(), rng.uniform(1, 5)
    with mlflow_server() as port:
        uri = f"http://127.0.0.1:{port}"
        env = environment(MLFLOW_TRACKING_URI=uri)
        reference = lab.trial("server-uninterrupted")
        set_params(reference, names)
        uninterrupted = lab.run(lab.command(DVC), reference, env=env)
        if uninterrupted.returncode != 0:
            tally.notes.append(f"the uninterrupted run against the server failed: {errors(uninterrupted.output)}")
            return tally
        moment = uninterrupted.moment_in(draw, lambda stage: stage.startswith("train@"))
        root = lab.trial("server-killed")
        set_params(root, names)
        first, injected = run_with_outage(lab, root, port, moment=moment, outage=outage)
        rerun = lab.run(lab.command(DVC), root, env=env)
        rerun_stages = {stage for stage, _ in rerun.marks(DVC_STAGE)}
        lost = sorted(s for s in finished_stages(first) if s.startswith("train@") and s in rerun_stages)
        params = yaml.safe_load((root / "params.yaml").read_text())
        missing = incomplete_runs(uri, name, params, export=lab.plan.target is None)
        # A first run that fails before the moment is a finding too: the server failed it with no fault injected.
        failed_early = not injected and first.returncode != 0
        notes = [f"the first run failed before the kill: {errors(first.output)}"] * failed_early
        notes += [f"trained again: {', '.join(lost)}"] * bool(lost)
        notes += [f"incomplete runs: {', '.join(missing)}"] * bool(missing)
        ok = rerun.returncode == 0 and not lost and not missing
        trial = lab.judge(
            root, tool=DVC, injected=injected, recovered=ok, uri=uri, notes=notes, baseline=snapshot(reference)
        )
    progress(
        f"MLflow server killed {moment[1]:.1f} s into {moment[0]}, down {outage:.1f} s and a restart: first run exit "
        f"{first.returncode}, rerun exit {rerun.returncode}; {'; '.join(notes) or 'complete runs'}"
    )
    tally.trials.append(trial)
    tally.notes += notes
    lab.discard(reference)
    lab.discard(root)
    return tally
