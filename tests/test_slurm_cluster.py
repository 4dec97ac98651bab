"""The pipeline on a real SLURM cluster: scripts/local_slurm.sh brings up munged, MariaDB, slurmdbd, slurmctld and
slurmd on this machine, and Snakemake submits every job with sbatch through snakemake-executor-plugin-slurm, using
profiles/slurm with profiles/slurm-local on top (no GPU here) and the documented partition and account override.

Two runs go side by side, since a SLURM run mostly waits for its next status check: a tiny 2-fold project through
SLURM up to `aggregate`, and a project with a corrupt image. The first one's outputs are compared with the same
project's `dvc repro` (conftest's `pipeline_run`). The stages after `aggregate` submit as `aggregate` does and add
only minutes of status checks: tests/test_scale_out_profiles.py checks that the profile runs the whole graph.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import add_corrupt_image, fold_metrics, make_project, user_env

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

ACCOUNT, PARTITION = "burrscope", "local"  # what scripts/local_slurm.sh sets up
SLURM = ["snakemake", "--profile", "profiles/slurm", "--profile", "profiles/slurm-local"]
OVERRIDE = ["--default-resources", f"slurm_account={ACCOUNT}", f"slurm_partition={PARTITION}"]
TARGET = "aggregate"
# Every job up to TARGET in the tiny 2-fold graph, as the plugin comments it: rule and wildcards.
JOBS = {
    "rule_normalise",
    "rule_composite",
    "rule_resize",
    "rule_split",
    "rule_train_wildcards_0",
    "rule_train_wildcards_1",
    "rule_aggregate",
}
SAME_BYTES = [
    "data/interim/manifest.csv",
    "data/processed/folds.csv",
    *(f"results/train/fold_{k}/{name}" for k in (0, 1) for name in ("model.pt", "predictions.csv", "history.csv")),
    *(f"results/aggregate/{name}" for name in ("metrics.json", "predictions.csv", "confusion.csv", "roc.csv")),
]


@dataclass
class Finished:
    root: Path
    returncode: int
    output: str
    seconds: float

    def slurm_ids(self) -> list[str]:
        return re.findall(r"has been submitted with SLURM jobid (\d+)", self.output)


@dataclass
class Runs:
    slurm: Finished
    failing: Finished


def sacct(ids: list[str]) -> list[dict[str, str]]:
    fields = ["JobID", "JobName", "State", "Comment", "Account", "Partition", "AllocCPUS"]
    command = ["sacct", "--allocations", "--noheader", "--parsable2", f"--jobs={','.join(ids)}"]
    listed = subprocess.run([*command, f"--format={','.join(fields)}"], capture_output=True, text=True, check=True)
    return [dict(zip(fields, line.split("|"), strict=True)) for line in listed.stdout.splitlines() if line]


@pytest.fixture(scope="module")
def runs(slurm_cluster: None, module_folder: Callable[[str], Path]) -> Iterator[Runs]:
    roots = {name: make_project(module_folder(name)) for name in ("slurm", "failing")}
    add_corrupt_image(roots["failing"])
    commands = {name: [*SLURM, TARGET, *OVERRIDE] for name in roots}  # --default-resources takes every word after it
    logs = {name: roots[name].parent / f"{name}.out" for name in commands}
    started = time.monotonic()
    processes = {}
    for name, command in commands.items():
        with logs[name].open("w") as log:  # a file, not a pipe: nobody reads a pipe while the others run
            env = user_env(roots[name])
            processes[name] = subprocess.Popen(command, cwd=roots[name], env=env, stdout=log, stderr=log)
    finished: dict[str, Finished] = {}
    try:
        while len(finished) < len(processes):
            assert time.monotonic() - started < 1200, f"running after 20 minutes: {set(processes) - set(finished)}"
            for name, process in processes.items():
                if name not in finished and process.poll() is not None:
                    output = logs[name].read_text()
                    finished[name] = Finished(roots[name], process.returncode, output, time.monotonic() - started)
            time.sleep(1)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()  # Snakemake cancels its SLURM jobs (scancel) on SIGTERM
                process.wait(timeout=120)
    print({name: round(run.seconds) for name, run in finished.items()})
    yield Runs(**finished)


def test_the_pipeline_runs_through_slurm_and_sacct_lists_every_job(runs: Runs) -> None:
    assert runs.slurm.returncode == 0, runs.slurm.output
    ids = runs.slurm.slurm_ids()
    assert len(ids) == len(JOBS)
    jobs = sacct(ids)
    assert {job["Comment"] for job in jobs} == JOBS
    assert {job["State"] for job in jobs} == {"COMPLETED"}
    # The override reached sbatch, and profiles/slurm-local's one CPU per job did too.
    assert {(job["Account"], job["Partition"], job["AllocCPUS"]) for job in jobs} == {(ACCOUNT, PARTITION, "1")}
    assert all(job["JobName"].startswith("burrscope_") for job in jobs)


def test_slurm_outputs_equal_a_local_runs(runs: Runs, pipeline_run: Path) -> None:
    assert runs.slurm.returncode == 0, runs.slurm.output
    for name in SAME_BYTES:
        assert (runs.slurm.root / name).read_bytes() == (pipeline_run / name).read_bytes(), name
    for fold in (0, 1):
        name = f"results/train/fold_{fold}/metrics.json"
        assert fold_metrics(runs.slurm.root / name) == fold_metrics(pipeline_run / name), name


def test_a_failing_slurm_job_shows_the_stages_own_error(runs: Runs) -> None:
    failing = runs.failing
    assert failing.returncode != 0
    # The stage's one-line message and its detail, printed by Snakemake from the job's log (show-failed-logs).
    assert re.search(r"^error: .*need fixing", failing.output, flags=re.M), failing.output
    assert re.search(r"^\s+broken\.png: truncated or corrupt image data", failing.output, flags=re.M)
    assert "logs/normalise.log" in failing.output
    jobs = sacct(failing.slurm_ids())
    assert [(job["Comment"], job["State"]) for job in jobs] == [("rule_normalise", "FAILED")]
    assert not (failing.root / "data/interim/manifest.csv").exists()
