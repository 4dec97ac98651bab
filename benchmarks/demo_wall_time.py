"""Wall time of the README's main command, `dvc repro`, on the demo data, per stage and per kind of work; then of the
experiment loop after it, `dvc exp run -S lr=1e-4`, per stage.

Copies the repository into a fresh temp git repo (benchmarks/workspace.py copy_repo: nothing cached), runs
`dvc repro` there and timestamps each "Running stage" line DVC prints. Then splits the total into process
start and imports, data stages, training and evaluation, logging, report and the rest, from:
- each train fold's `timing` in its run log, logs/train/fold_<k>.json (seconds per phase: startup, data, train,
  eval, logging, checkpoint; any keys present are used, `_s` suffixes or not);
- for the other stages, the median wall time of `python -m stages.<name> --help` (interpreter and imports).
What the train folds' timing doesn't cover (DVC hashing and caching their outputs) and DVC's own start
before the first stage are shown as such; for the other stages, DVC's share is inside the stage's part. Usage:

    python benchmarks/demo_wall_time.py                       # the demo's settings; prints Markdown tables
    python benchmarks/demo_wall_time.py --set epochs=1        # shrunken, to try it out
    python benchmarks/demo_wall_time.py --experiment lr=3e-4  # another experiment after the first run
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from workspace import (
    add_set_option,
    commit_all,
    parse_overrides,
    timed_repro,
    timed_run,
    tool_env,
    workspace_copy,
)

DATA_STAGES = ("normalise", "composite", "resize", "split")
# train's timing phases -> the part of the split they belong to; unknown phases get a part of their own.
PHASE_PARTS = {
    "startup": "process start and imports",
    "data": "training and evaluation",
    "train": "training and evaluation",
    "eval": "training and evaluation",
    "logging": "logging (MLflow)",
    "checkpoint": "train: saving checkpoints and outputs",
}
# Stages that run stages.train, and their output folder under results/train ({item}: the foreach item).
TRAIN_STAGES = {"train": "fold_{item}", "final": "final"}
UNACCOUNTED = "DVC itself (start, hashing and caching outputs) and the rest"


def startup_seconds(root: Path, module: str) -> float:
    """Median wall time of `python -m stages.<module> --help`: the interpreter plus the stage's imports."""
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", f"stages.{module}", "--help"],
            cwd=root,
            env=tool_env(),
            capture_output=True,
            check=True,
        )
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def fold_timing(root: Path, stage: str) -> dict[str, float]:
    """Seconds per phase from a training stage's run log `timing` (keys without `_s`); {} when absent."""
    name, _, item = stage.partition("@")
    path = root / "logs/train" / f"{TRAIN_STAGES[name].format(item=item)}.json"
    timing = json.loads(path.read_text()).get("timing") if path.exists() else None
    return {key.removesuffix("_s"): float(value) for key, value in (timing or {}).items() if value is not None}


def split_total(root: Path, stages: list[tuple[str, float]], total: float) -> dict[str, float]:
    """Seconds per part of the work; the parts add up to `total`."""
    parts: defaultdict[str, float] = defaultdict(float)
    startups: dict[str, float] = {}
    for stage, seconds in stages:
        module = stage.split("@")[0]
        if module in TRAIN_STAGES:
            timing = fold_timing(root, stage)
            if not timing:
                parts[f"{module} (no `timing` in its run log: start-up and logging included)"] += seconds
                continue
            shares = [(PHASE_PARTS.get(phase, f"train: {phase}"), part_s) for phase, part_s in timing.items()]
        else:
            if module not in startups:  # a stage that is no module of its own: start-up not split off
                startups[module] = startup_seconds(root, module) if (root / f"stages/{module}.py").exists() else 0.0
            part = f"data stages ({', '.join(DATA_STAGES)})" if module in DATA_STAGES else module
            shares = [(PHASE_PARTS["startup"], startups[module]), (part, seconds - startups[module])]
        for part, part_seconds in shares:
            parts[part] += part_seconds
        parts[UNACCOUNTED] += seconds - sum(part_seconds for _, part_seconds in shares)  # DVC hashing, caching
    parts[UNACCOUNTED] += total - sum(seconds for _, seconds in stages)  # DVC starting, checking the graph
    return dict(parts)


def print_stages(stages: list[tuple[str, float]], total: float, command: str) -> None:
    print("| stage | wall time (s) |\n|---|---|")
    for name, seconds in stages:
        print(f"| {name} | {seconds:.1f} |")
    print(f"| **total `{command}`** | **{total:.1f}** |\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_set_option(parser)
    parser.add_argument("--experiment", default="lr=1e-4", metavar="KEY=VALUE", help="the experiment's -S")
    args = parser.parse_args()
    settings = parse_overrides(args.set)
    experiment = ["dvc", "exp", "run", "-S", args.experiment]
    with workspace_copy(settings) as root:
        stages, total = timed_repro(root)
        parts = split_total(root, stages, total)
        commit_all(root, "the demo's results")
        loop, loop_total = timed_run(root, experiment, r"Running stage '([^']+)'")
    print(f"settings: {settings or 'params.yaml as committed (the demo)'}\n")
    print_stages(stages, total, "dvc repro")
    print("| part of the work | seconds | share |\n|---|---|---|")
    for part, seconds in sorted(parts.items(), key=lambda item: -item[1]):
        print(f"| {part} | {seconds:.1f} | {seconds / total:.0%} |")
    print(f"\nThen the experiment loop, `{' '.join(experiment)}`:\n")
    print_stages(loop, loop_total, " ".join(experiment))


if __name__ == "__main__":
    main()
