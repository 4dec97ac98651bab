"""Fault 3: two experiments run at once by `dvc queue start -j 2`, sharing the feature cache, against the same two
run one after the other."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import yaml

from burrscope.tracking.provenance import DVC_TAGS
from faultkit.kills import progress
from faultkit.lab import DVC, Lab, environment, git
from faultkit.outcome import Tally, Trial, snapshot

# Two experiments that share the frozen trunk's features (only what trains after it differs).
EXPERIMENTS = {"faults-a": "lr=0.002", "faults-b": "lr=0.0005"}
EXP_TAG = DVC_TAGS["DVC_EXP_NAME"]  # the MLflow tag that names a run's DVC experiment


def queue_status(lab: Lab, root: Path) -> dict[str, str]:
    """Each experiment's status in `dvc queue status` (Queued, Running, Success, Failed)."""
    shown = subprocess.run(["dvc", "queue", "status"], cwd=root, env=environment(), capture_output=True, text=True)
    found = {}
    for line in shown.stdout.splitlines():
        for name in EXPERIMENTS:
            if f" {name} " in f" {line} ":
                found[name] = next((w for w in ("Running", "Queued", "Success", "Failed") if w in line), "?")
    return found


def ran_at_once(root: Path) -> bool:
    """Whether the experiments' MLflow runs overlap in time: each experiment's runs (tagged with its DVC name) span
    from the first start to the last end. Polling `dvc queue status` misses short runs; these times do not."""
    from mlflow.tracking import MlflowClient

    experiment = yaml.safe_load((root / "params.yaml").read_text())["mlflow"]["experiment"]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], max_results=5000) if found else []
    spans = []
    for name in EXPERIMENTS:
        times = [(r.info.start_time, r.info.end_time) for r in runs if r.data.tags.get(EXP_TAG) == name]
        if not times or any(end is None for _, end in times):
            return False
        spans.append((min(start for start, _ in times), max(end for _, end in times)))
    (first_start, first_end), (second_start, second_end) = spans
    return first_start < second_end and second_start < first_end


def queued_run(lab: Lab, name: str, jobs: int) -> tuple[Path, bool, bool]:
    """Both experiments queued in a committed copy of the uninterrupted run, without its feature cache, and run by
    `dvc queue start -j jobs`; the copy, whether they ran at once, and whether both succeeded."""
    root = lab.trial(name, source=lab.baseline().root)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "the uninterrupted run's results")
    shutil.rmtree(root / ".burrscope-cache", ignore_errors=True)
    target = [lab.plan.target] if lab.plan.target else []  # as far as the uninterrupted run went
    for experiment, setting in EXPERIMENTS.items():
        lab.run(["dvc", "exp", "run", "--queue", "-n", experiment, "-S", setting, *target], root)
    lab.run(["dvc", "queue", "start", "-j", str(jobs)], root)
    status = {}
    deadline = time.monotonic() + 20 * lab.baseline().run.seconds
    while time.monotonic() < deadline:
        time.sleep(5)  # each look is a `dvc` process: over half a second of CPU the experiments need
        status = queue_status(lab, root)
        if len(status) == len(EXPERIMENTS) and not {"Running", "Queued"} & set(status.values()):
            break
    # Into the campaign's log, to tell a run that differs from a wrong experiment applied: each one's params and
    # metrics, and the queue's account of the runs.
    lab.run(["dvc", "queue", "status"], root)
    lab.run(["dvc", "exp", "show", "--no-pager", "--md"], root)
    return root, ran_at_once(root), set(status.values()) == {"Success"} and len(status) == len(EXPERIMENTS)


def queued_experiments(lab: Lab) -> Tally:
    """Two experiments at once (`-j 2`) must give what the same two give one after the other (`-j 1`)."""
    tally = Tally("dvc queue start -j 2")
    alone_root, _, alone_ok = queued_run(lab, "queue-j1", 1)
    alone = {}
    for experiment in EXPERIMENTS:
        lab.run(["dvc", "exp", "apply", experiment], alone_root)
        alone[experiment] = snapshot(alone_root)
    root, at_once, together_ok = queued_run(lab, "queue-j2", 2)
    found, stuck = [], []
    for experiment in EXPERIMENTS:
        lab.run(["dvc", "exp", "apply", experiment], root)
        trial = lab.judge(root, tool=DVC, injected=True, recovered=together_ok, baseline=alone[experiment])
        found += [f"{experiment}: {difference}" for difference in trial.differences]
        stuck = trial.stuck
    notes = [] if at_once else ["the two experiments never ran at the same time"]
    notes += [] if alone_ok else ["the experiments one after the other failed"]
    tally.trials.append(Trial(at_once, together_ok and alone_ok, found, stuck, notes))
    tally.notes += notes
    verdict = "identical" if not found else "DIFFERENT: " + ", ".join(found[:5])
    progress(f"queue: {'at once' if at_once else 'one after the other'}; {verdict}")
    lab.discard(alone_root)
    lab.discard(root)
    return tally
