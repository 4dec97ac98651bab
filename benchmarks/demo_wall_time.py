"""Wall time of the README's main command, `dvc repro`, on the demo data, split per stage.

Copies the repository's committed files into a fresh temp git repo (so nothing is cached), runs
`dvc repro` there and timestamps each "Running stage" line DVC prints. Usage:

    python benchmarks/demo_wall_time.py            # prints a Markdown table
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def copy_repo(dest: Path) -> None:
    # -z: unquoted names (git escapes the demo's Chinese file names otherwise)
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in names.split("\0"):
        # The committed outputs and lock stay behind, so every stage runs.
        if (REPO / name).is_file() and name != "dvc.lock" and not name.startswith(("results/", "reports/")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)


def tool_env() -> dict[str, str]:
    """This venv's dvc and python first on PATH; no MLflow/DVC settings leaking in from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def timed_repro(root: Path) -> tuple[list[tuple[str, float]], float]:
    """(stage, seconds) in run order, and the total wall time of `dvc repro`."""
    env = tool_env()
    started = time.perf_counter()
    marks: list[tuple[str, float]] = []
    with subprocess.Popen(["dvc", "repro"], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stderr.write(line)
            found = re.search(r"Running stage '([^']+)'", line)
            if found:
                marks.append((found.group(1), time.perf_counter()))
    total = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"dvc repro failed with exit code {proc.returncode}")
    ends = [t for _, t in marks[1:]] + [started + total]
    return [(name, end - start) for (name, start), end in zip(marks, ends, strict=True)], total


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        copy_repo(root)
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)  # .dvc/ came with the committed files
        stages, total = timed_repro(root)
    print("| stage | wall time (s) |\n|---|---|")
    for name, seconds in stages:
        print(f"| {name} | {seconds:.1f} |")
    print(f"| **total `dvc repro`** | **{total:.1f}** |")


if __name__ == "__main__":
    main()
