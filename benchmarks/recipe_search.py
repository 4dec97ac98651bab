"""Search training recipes with DVC's own tools: queued experiments over a grid, compared with `dvc exp show`.

Makes a fresh copy of the repository (benchmarks/workspace.py) whose params point at a data folder read in
place, commits it (queued experiments run in a temp clone of the commit), then queues one experiment per grid
point with `dvc exp run --queue -S key=value ...`, runs the queue with `dvc queue start`, waits for it, and
prints `dvc exp show` as a table sorted by pooled balanced accuracy. Usage:

    python benchmarks/recipe_search.py --data ../shared/datasets/magnetic_tile \\
        --grid "train.trainable_blocks=3,5,8" --grid "resize.img_size=224,320" [--set epochs=20] [--keep ../search]

Every combination of the --grid values is one experiment; --set applies to all of them. A recipe picked this
way is picked on the same folds it is scored on: its score is optimistic. Re-score the winner on another split
(`--set seed=43`) before quoting it.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import subprocess
import sys
import time
from pathlib import Path

import yaml
from workspace import add_set_option, parse_overrides, tool_env, workspace_copy

SHOWN = ("accuracy", "balanced_accuracy", "recall", "roc_auc")


def dvc(root: Path, *args: str) -> str:
    done = subprocess.run(["dvc", *args], cwd=root, env=tool_env(), capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"dvc {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def grid_points(grids: list[str]) -> list[dict[str, object]]:
    """Every combination of `key=v1,v2,...` values, as {key: value} with YAML-parsed values."""
    axes = [(key, [yaml.safe_load(v) for v in values.split(",")]) for key, values in (g.split("=", 1) for g in grids)]
    return [
        dict(zip([key for key, _ in axes], combo, strict=True))
        for combo in itertools.product(*(values for _, values in axes))
    ]


def wait_for_queue(root: Path, poll_s: float = 30) -> None:
    """Until no queued or running experiment is left."""
    while any(word in dvc(root, "queue", "status") for word in ("Queued", "Running")):
        time.sleep(poll_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder with images/ and labels.csv")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="repeatable")
    parser.add_argument("--keep", type=Path, help="search in this new folder and keep it (default: a temp folder)")
    add_set_option(parser)
    args = parser.parse_args()
    points = grid_points(args.grid) or [{}]
    settings = {
        "data.raw_dir": str((args.data / "images").resolve()),
        "data.labels": "search_labels.csv",
        **parse_overrides(args.set),
    }
    with workspace_copy(settings, args.keep) as root:
        labels = (args.data / "labels.csv").read_text(encoding="utf-8")
        (root / "search_labels.csv").write_text(labels, encoding="utf-8")
        subprocess.run(["git", "add", "-A"], cwd=root, check=True)
        subprocess.run(
            [
                "git",
                "-c",
                "user.name=search",
                "-c",
                "user.email=search@localhost",
                "commit",
                "-qm",
                "recipe search baseline",
            ],
            cwd=root,
            check=True,
        )
        for point in points:
            dvc(root, "exp", "run", "--queue", *[f"-S{key}={value}" for key, value in point.items()])
        started = time.perf_counter()
        dvc(root, "queue", "start", "--jobs", "1")
        wait_for_queue(root)
        table = dvc(
            root,
            "exp",
            "show",
            "--csv",
            "--only-changed",
            "--sort-by",
            "overall.balanced_accuracy",
            "--sort-order",
            "desc",
        )
        hours = (time.perf_counter() - started) / 3600
    rows = list(csv.DictReader(io.StringIO(table)))
    keys = sorted({key for point in points for key in point})
    print(f"{len(points)} experiments on {args.data} in {hours:.1f} h; fixed: {parse_overrides(args.set) or 'none'}")
    print("| experiment | " + " | ".join(keys) + " | " + " | ".join(SHOWN) + " |")
    print("|---" * (1 + len(keys) + len(SHOWN)) + "|")
    for row in rows:
        if row.get("Experiment") in (None, "", "workspace"):
            continue
        cells = [row.get(key, "") for key in keys] + [row.get(f"overall.{m}", "") for m in SHOWN]
        print(f"| {row['Experiment']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
