"""Where the campaign runs: a template workspace (the working tree's code and demo data, the fast params, one git
commit) and trial copies of it, each with its own DVC cache, MLflow store and feature cache; the uninterrupted runs
each fault is compared with; and how a trial is judged."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from workspace import copy_repo, set_params, tool_env

from faultkit.outcome import Snapshot, Trial, differences, leftovers, mlflow_runs, snapshot
from faultkit.procs import Finished, run

# One epoch on 64 px inputs in two folds, a checkpoint after every epoch (so that kills find one to resume from).
FAST = {"epochs": 1, "resize.img_size": 64, "split.folds": 2, "split.fold_ids": [0, 1], "train.checkpoint_every_s": 0}
DVC, SNAKEMAKE = "dvc", "snakemake"


@dataclass(frozen=True)
class Plan:
    """What the campaign runs: `kills` DVC kills and `snakemake_kills` Snakemake kills at moments drawn from `seed`;
    `cache_damage`, the feature-cache entries damaged, one fresh run each (the last run also meets a corrupted
    checkpoint); params `settings`; `per_class` demo images per class (None: all); `target`, a stage to stop at
    (None: the whole pipeline); `only`, the fault kinds to run (empty: all)."""

    kills: int = 20
    snakemake_kills: int = 20
    cache_damage: tuple[str, ...] = ("truncated", "corrupted")
    seed: int = 21
    settings: Mapping[str, Any] = field(default_factory=lambda: dict(FAST))
    per_class: int | None = None
    target: str | None = None
    only: tuple[str, ...] = ()

    def rng(self, kind: str) -> random.Random:
        """Each fault kind its own stream, so that its moments do not depend on which other kinds run."""
        return random.Random(f"{self.seed}:{kind}")


def environment(**extra: str) -> dict[str, str]:
    """This venv's tools first on PATH, none of the caller's MLflow, DVC, Snakemake or feature-cache settings nor
    PYTHONPATH (each workspace runs its own code), and a git identity for experiment commits."""
    env = {k: v for k, v in tool_env().items() if not k.startswith(("BURRSCOPE_", "SNAKEMAKE_", "PYTHONPATH"))}
    env |= {"DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "faults", "GIT_COMMITTER_NAME": "faults"}
    env |= {"GIT_AUTHOR_EMAIL": "faults@example.com", "GIT_COMMITTER_EMAIL": "faults@example.com"}
    return env | extra


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, env=environment(), check=True, capture_output=True)


def keep_first_images(root: Path, per_class: int) -> None:
    """The demo cut down to its first `per_class` images of each class (images without a row removed)."""
    data = yaml.safe_load((root / "params.yaml").read_text())["data"]
    labels = pd.read_csv(root / data["labels"], dtype=str)
    kept = labels.groupby("label", group_keys=False).head(per_class)
    for path in (root / data["raw_dir"]).iterdir():
        if path.name not in set(kept["file"]):
            path.unlink()
    kept.to_csv(root / data["labels"], index=False)


@dataclass
class Baseline:
    """An uninterrupted run: where it ran, what it left, how long it took and what it printed."""

    root: Path
    snapshot: Snapshot
    run: Finished


class Lab:
    """The campaign's folder: the template, trial copies, the uninterrupted runs, and the commands of each tool."""

    def __init__(self, folder: Path, plan: Plan, *, keep: bool = False) -> None:
        self.folder, self.plan, self.keep = folder, plan, keep
        self.template = folder / "template"
        self.template.mkdir(parents=True)
        copy_repo(self.template)
        set_params(self.template, plan.settings)
        if plan.per_class:
            keep_first_images(self.template, plan.per_class)
        git(self.template, "add", "-A")
        git(self.template, "commit", "-q", "-m", "fault campaign template")
        self.uninterrupted: Baseline | None = None
        self.baseline_made = threading.Lock()  # fault kinds may run in threads (tests/test_faults.py): one makes it
        self.log = folder / "campaign.log"

    def trial(self, name: str, source: Path | None = None) -> Path:
        """A fresh copy of the template (or of `source`, a finished workspace)."""
        root = self.folder / name
        shutil.copytree(source or self.template, root, symlinks=True)
        return root

    def command(self, tool: str) -> list[str]:
        """`dvc repro` or `snakemake --cores 2`, for the plan's target if it has one."""
        if tool == DVC:
            return ["dvc", "repro", *([self.plan.target] if self.plan.target else [])]
        return ["snakemake", "--cores", "2", *([self.snakemake_target()] if self.plan.target else [])]

    def snakemake_target(self) -> str:
        """The target stage's first output, as Snakemake takes a target: a file."""
        stage = yaml.safe_load((self.template / "dvc.yaml").read_text())["stages"][self.plan.target]
        first = stage["outs"][0]
        return first if isinstance(first, str) else next(iter(first))

    def run(self, command: list[str], root: Path, **options: Any) -> Finished:
        env = options.pop("env", None) or environment()
        return run(command, root, env, log=self.log, **options)

    def baseline(self) -> Baseline:
        """The uninterrupted `dvc repro` that the faults are compared with (the MLflow server's makes its own),
        Snakemake's kills too (the two tools run the same commands and write the same bytes): made once, by the first
        fault kind that asks, and kept for the copies some faults start from."""
        with self.baseline_made:
            if self.uninterrupted is None:
                root = self.trial("baseline")
                finished = self.run(self.command(DVC), root)
                if finished.returncode != 0:
                    sys.exit(f"the uninterrupted dvc repro failed; see {self.log}")
                self.uninterrupted = Baseline(root, snapshot(root), finished)
                print(f"baseline: {' '.join(self.command(DVC))} took {finished.seconds:.1f} s", file=sys.stderr)
            return self.uninterrupted

    def judge(
        self, root: Path, *, tool: str, injected: bool, recovered: bool, same_params: bool = True, **extra: Any
    ) -> Trial:
        """A trial's verdict: its outputs against the uninterrupted run's, partial files, stuck MLflow runs. dvc.lock
        is compared too where DVC ran the trial with the same params (its outputs' hashes are in the files')."""
        expected = extra.pop("baseline", None) or self.baseline().snapshot
        found = differences(expected, snapshot(root), lock=tool == DVC and same_params)
        found += [f"{name} left behind" for name in leftovers(root)]
        uri = extra.pop("uri", None) or f"sqlite:///{root / 'mlflow.db'}"
        experiment = yaml.safe_load((root / "params.yaml").read_text())["mlflow"]["experiment"]
        stuck = mlflow_runs(uri, experiment).stuck
        return Trial(injected, recovered, found, stuck, extra.pop("notes", []))

    def discard(self, root: Path) -> None:
        """A finished trial's copy removed, unless the campaign keeps everything."""
        if not self.keep:
            shutil.rmtree(root, ignore_errors=True)
