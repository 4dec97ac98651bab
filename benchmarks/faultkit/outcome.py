"""What a run leaves, compared with an uninterrupted run's: every output file's hash and DVC's lock, the pooled
metrics, partial files (a temp of an atomic write, a checkpoint) and MLflow runs stuck in RUNNING; and the tally
each fault kind prints."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from burrscope.pipeline.graph import outputs_in

# Where the stages write (DVC's and Snakemake's outputs alike); logs/ holds timings, which differ from run to run.
OUTPUT_AREAS = ("data/interim", "data/processed", "results", "reports")
POOLED_METRICS = ("results/aggregate/metrics.json", "results/aggregate/headline.json")
SKIPPED_DIRS = {".git", ".dvc", ".snakemake"}
BOOKKEEPING = {".gitignore", ".snakemake_timestamp"}  # files DVC and Snakemake add beside the outputs


def partial(name: str) -> bool:
    """A name no finished output has: the temp of an atomic write (burrscope/files.py), a fold's resume point."""
    return (name.startswith(".") and ".tmp" in name) or name == "checkpoint.pt"


@dataclass
class Snapshot:
    """A workspace's outputs: sha256 per file of every output the stages declare (the tools' own bookkeeping left
    out: DVC's .gitignore files, and the timestamp Snakemake may leave in a folder it wrote), dvc.lock, the pooled
    metrics."""

    files: dict[str, str]
    lock: dict[str, Any] | None
    metrics: dict[str, Any]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def declared_outputs(root: Path) -> list[Path]:
    """The outputs the stages declare (burrscope/pipeline/graph.py) for the workspace's params.yaml, which DVC
    tracks: not what else lands beside them, such as the page beside the report that opens its MLflow run, whose id
    is new every run (git-ignored bookkeeping, like logs/)."""
    config = yaml.safe_load((root / "params.yaml").read_text())
    return [root / path for area in OUTPUT_AREAS for path in outputs_in(area, config)]


def snapshot(root: Path) -> Snapshot:
    files = {}
    for output in declared_outputs(root):
        for path in sorted([output, *output.rglob("*")] if output.is_dir() else [output]):
            if path.is_file() and path.name not in BOOKKEEPING and not partial(path.name):
                files[str(path.relative_to(root))] = sha256(path)
    lock = yaml.safe_load((root / "dvc.lock").read_text()) if (root / "dvc.lock").is_file() else None
    metrics = {name: json.loads((root / name).read_text()) for name in POOLED_METRICS if (root / name).is_file()}
    return Snapshot(files, lock, metrics)


def differences(expected: Snapshot, actual: Snapshot, *, lock: bool = True) -> list[str]:
    """What differs, one short phrase each; empty when identical."""
    found = []
    for name in sorted(expected.files.keys() | actual.files.keys()):
        if name not in actual.files:
            found.append(f"{name} missing")
        elif name not in expected.files:
            found.append(f"{name} extra")
        elif expected.files[name] != actual.files[name]:
            found.append(f"{name} differs")
    if lock and expected.lock != actual.lock:
        stages = (expected.lock or {}).get("stages", {}), (actual.lock or {}).get("stages", {})
        changed = sorted(
            name for name in stages[0].keys() | stages[1].keys() if stages[0].get(name) != stages[1].get(name)
        )
        found.append(f"dvc.lock differs in {', '.join(changed) or 'its layout'}")
    if expected.metrics != actual.metrics:
        found.append("pooled metrics differ")
    return found


def leftovers(root: Path) -> list[str]:
    """Partial files anywhere in the workspace, the feature cache included (not in DVC's or Snakemake's own
    folders, which they manage)."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS or folder != str(root)]
        found += [str(Path(folder, name).relative_to(root)) for name in [*dirs, *files] if partial(name)]
    return sorted(found)


@dataclass
class Runs:
    """The MLflow runs of an experiment: those stuck in RUNNING, and how many a fault ended otherwise."""

    stuck: list[str]
    killed: int
    failed: int


def experiment_runs(client: Any, experiment: str) -> list[Any] | None:
    """Every run of the experiment in the client's store; None when no run made the experiment."""
    found = client.get_experiment_by_name(experiment)
    return None if found is None else client.search_runs([found.experiment_id], max_results=5000)


def mlflow_runs(uri: str, experiment: str) -> Runs:
    from mlflow.tracking import MlflowClient

    runs = experiment_runs(MlflowClient(uri), experiment) or []
    statuses = [r.info.status for r in runs]
    stuck = [f"{r.info.run_name} ({r.info.run_id[:8]})" for r in runs if r.info.status == "RUNNING"]
    return Runs(stuck, statuses.count("KILLED"), statuses.count("FAILED"))


@dataclass
class Trial:
    """One fault injected and the run finished after it."""

    injected: bool
    recovered: bool
    differences: list[str]
    stuck: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return self.recovered and not self.differences


@dataclass
class Tally:
    """A fault kind's line: trials injected, recovered, with outputs identical, runs stuck."""

    kind: str
    trials: list[Trial] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def counts(self) -> tuple[int, int, int, int]:
        injected = [t for t in self.trials if t.injected]
        return (
            len(injected),
            sum(t.recovered for t in injected),
            sum(t.identical for t in injected),
            sum(len(t.stuck) for t in injected),
        )

    def line(self) -> str:
        injected, recovered, identical, stuck = self.counts
        text = f"{injected} injected, {recovered} recovered, outputs identical in {identical}, stuck runs {stuck}"
        return f"{self.kind}: {text}" + (f" ({'; '.join(self.notes)})" if self.notes else "")


def total_line(tallies: list[Tally]) -> str:
    injected, recovered, identical, stuck = (sum(t.counts[i] for t in tallies) for i in range(4))
    return f"faults: {injected} injected, {recovered} recovered, outputs identical in {identical}, stuck runs {stuck}"
