"""Wall time of the README's main command, `dvc repro`, on the demo data, split per stage.

Copies the repository's committed files into a fresh temp git repo (so nothing is cached), runs
`dvc repro` there and timestamps each "Running stage" line DVC prints. Usage:

    python benchmarks/demo_wall_time.py            # prints a Markdown table
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from workspace import copy_repo, timed_repro


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        copy_repo(root)
        stages, total = timed_repro(root)
    print("| stage | wall time (s) |\n|---|---|")
    for name, seconds in stages:
        print(f"| {name} | {seconds:.1f} |")
    print(f"| **total `dvc repro`** | **{total:.1f}** |")


if __name__ == "__main__":
    main()
