"""What reruns cost: no-op `dvc repro` and `snakemake --cores 4`, and `dvc repro` after `lr` changes.

In a fresh copy of the repository (benchmarks/workspace.py copy_repo): one complete `dvc repro`, then a
second one (nothing to do), then `lr` changed in params.yaml and `dvc repro` again (the copy has no git
commit, which `dvc exp run -S lr=...` needs; it reruns the same stages), then Snakemake: a first run over
DVC's outputs (which may rerun jobs: Snakemake keeps its own records) and a second one (nothing to do).
Prints the settings used and Markdown tables. Usage:

    python benchmarks/rerun_costs.py                                            # the demo's settings (~25 min)
    python benchmarks/rerun_costs.py --set epochs=1 --set resize.img_size=64    # shrunken (a few minutes)
"""

from __future__ import annotations

import argparse

from workspace import add_set_option, parse_overrides, set_params, timed_repro, timed_run, workspace_copy

# Snakemake prints `Job <n>: <rule message>` per job it starts (`localrule all:` for the target).
SNAKEMAKE_JOB = r"^(?:Job \d+: |localrule )(.+?):?$"


def ran(names: list[str]) -> str:
    return ", ".join(names) if names else "nothing"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_set_option(parser)
    parser.add_argument("--lr", type=float, default=1e-4, help="the changed learning rate (default 1e-4)")
    args = parser.parse_args()
    settings = parse_overrides(args.set)

    with workspace_copy(settings) as root:
        first, first_total = timed_repro(root)
        noop, noop_total = timed_repro(root)
        set_params(root, {"lr": args.lr})
        changed, changed_total = timed_repro(root)
        snake = ["snakemake", "--cores", "4"]
        snake_first, snake_first_total = timed_run(root, snake, SNAKEMAKE_JOB)
        snake_noop, snake_noop_total = timed_run(root, snake, SNAKEMAKE_JOB)

    print(f"settings: {settings or 'params.yaml as committed (the demo: 120 images, 5 folds)'}\n")
    print("| step | command | wall time (s) | what ran |\n|---|---|---|---|")
    rows = [
        ("first complete run", "dvc repro", first_total, [name for name, _ in first]),
        ("nothing changed", "dvc repro", noop_total, [name for name, _ in noop]),
        (f"`lr` changed to {args.lr:g}", "dvc repro", changed_total, [name for name, _ in changed]),
        ("first Snakemake run after DVC's", " ".join(snake), snake_first_total, [name for name, _ in snake_first]),
        ("nothing changed", " ".join(snake), snake_noop_total, [name for name, _ in snake_noop]),
    ]
    for step, command, seconds, names in rows:
        print(f"| {step} | `{command}` | {seconds:.1f} | {ran(names)} |")
    print(f"\nStages rerun after `lr` changed to {args.lr:g}:\n\n| stage | wall time (s) |\n|---|---|")
    for name, seconds in changed:
        print(f"| {name} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
