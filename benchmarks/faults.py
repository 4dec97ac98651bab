"""Issue 21's fault campaign: the pipeline, on fast params, killed and broken at seeded moments, and each time
finished again and compared with an uninterrupted run.

In temporary copies of the repository (the working tree's code, committed or not; benchmarks/workspace.py), with
fast params (1 epoch, 64 px, 2 folds, a checkpoint after every epoch), it first records an uninterrupted `dvc repro`,
then for each fault repeats the run with the fault injected (Snakemake's too), finishes it and compares every
output file's hash and dvc.lock, the pooled metrics, partial files left behind, and MLflow runs left RUNNING:

  1. `dvc repro` killed (SIGKILL to all it started) at --kills moments drawn uniformly over its duration, each
     in a fresh copy, then `dvc repro` again;
  2. the same under `snakemake --cores 2` (--snakemake-kills), then the same command again;
  3. two experiments run at once by `dvc queue start -j 2`, sharing the feature cache, against the same two run
     one after the other (`-j 1`);
  4. a second `dvc repro` started while one runs: refused with DVC's lock message, the first unaffected;
  5. the disk filling during an output write (results/ on a small tmpfs; root only), then space freed;
  6. a truncated and a corrupted feature-cache entry, and a corrupted checkpoint.pt;
  7. the MLflow server of scripts/mlflow_server.sh killed during the folds and restarted (root only).

Prints one line per fault kind and ends with the total line. Usage:

    python benchmarks/faults.py     # the defaults: 20 kills each (hours on 2 cores: a kill costs about a full run)
    python benchmarks/faults.py --kills 3 --snakemake-kills 1 --only dvc-kills,disk-full
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from faultkit.kills import kills, second_repro
from faultkit.lab import DVC, FAST, SNAKEMAKE, Lab, Plan
from faultkit.outcome import Tally, total_line
from faultkit.queued import queued_experiments
from faultkit.server import server_killed
from faultkit.storage import corrupt_files, disk_full
from workspace import add_set_option, parse_overrides

KINDS: dict[str, Callable[[Lab], Tally]] = {
    "dvc-kills": lambda lab: kills(lab, DVC, lab.plan.kills),
    "snakemake-kills": lambda lab: kills(lab, SNAKEMAKE, lab.plan.snakemake_kills),
    "queue": queued_experiments,
    "second-repro": second_repro,
    "disk-full": disk_full,
    "corrupt-files": corrupt_files,
    "mlflow-server": server_killed,
}


def campaign(plan: Plan, folder: Path, *, keep: bool = False) -> list[Tally]:
    """Every fault kind of the plan, in the order above; their tallies."""
    lab = Lab(folder, plan, keep=keep)
    return [run(lab) for name, run in KINDS.items() if not plan.only or name in plan.only]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20, help="killed `dvc repro` runs (default 20)")
    parser.add_argument("--snakemake-kills", type=int, help="killed `snakemake --cores 2` runs (default: --kills)")
    parser.add_argument("--seed", type=int, default=21, help="draws every moment and size (default 21)")
    parser.add_argument("--only", default="", help=f"comma-separated fault kinds, of: {', '.join(KINDS)}")
    parser.add_argument("--per-class", type=int, help="only the first N demo images of each class (default: all)")
    parser.add_argument("--target", help="a stage to stop at, e.g. aggregate (default: the whole pipeline)")
    parser.add_argument("--keep", type=Path, help="run in this new folder and keep every workspace there")
    add_set_option(parser)
    args = parser.parse_args()
    only = tuple(name for name in args.only.split(",") if name)
    unknown = set(only) - set(KINDS)
    if unknown:
        parser.error(f"unknown fault kinds: {', '.join(sorted(unknown))}")
    snakemake_kills = args.kills if args.snakemake_kills is None else args.snakemake_kills
    settings = FAST | parse_overrides(args.set)
    plan = replace(Plan(), kills=args.kills, snakemake_kills=snakemake_kills, seed=args.seed, settings=settings)
    plan = replace(plan, only=only, per_class=args.per_class, target=args.target)
    started = time.monotonic()
    print(f"fault campaign: seed {plan.seed}, params {settings}, {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="burrscope-faults-") as tmp:
        folder = args.keep or Path(tmp) / "campaign"
        tallies = campaign(plan, folder, keep=args.keep is not None)
    for tally in tallies:
        print(tally.line())
    print(f"wall time {time.monotonic() - started:.0f} s", file=sys.stderr)
    print(total_line(tallies))


if __name__ == "__main__":
    main()
