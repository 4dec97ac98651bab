"""Shared by the benchmarks: a fresh copy of the repository to run the pipeline in, and timed `dvc repro`."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from burrscope.params import lookup
from burrscope.pipeline.graph import KEPT

REPO = Path(__file__).resolve().parents[1]


def copy_repo(dest: Path) -> None:
    """The working tree's tracked and new (not ignored) files, without outputs or lock (so every stage runs; the
    KEPT files of the pipeline's definition stay), in a new git repo at `dest`: what is measured is the code as it
    stands, committed or not."""
    # -z: unquoted names (git escapes the demo's Chinese file names otherwise)
    listing = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    names = subprocess.run(listing, cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in names.split("\0"):
        made = name == "dvc.lock" or name.startswith(("results/", "reports/"))
        if (REPO / name).is_file() and (not made or name in KEPT):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)  # .dvc/ came with the committed files


def assign(params: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys (`data.raw_dir`) in a params mapping; the mapping."""
    for dotted, value in overrides.items():
        *parents, key = dotted.split(".")
        section = params
        for name in parents:
            section = section[name]
        section[key] = value
    return params


def set_params(root: Path, overrides: Mapping[str, Any]) -> None:
    """Set dotted keys (`data.raw_dir`) in the workspace's params.yaml."""
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(assign(yaml.safe_load(path.read_text()), overrides), sort_keys=False))


def dvc_commands(root: Path) -> dict[str, str]:
    """Each stage's command exactly as dvc.yaml writes it, `${...}` filled from params.yaml; a foreach stage
    gives one command per item, named as DVC names them (`train@0`). In dvc.yaml's order."""
    params = yaml.safe_load((root / "params.yaml").read_text())

    def fill(text: str, item: object = None) -> str:
        return re.sub(r"\$\{([^}]+)\}", lambda m: str(item if m[1] == "item" else lookup(params, m[1])), text)

    commands = {}
    for name, stage in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].items():
        if "foreach" in stage:
            for item in lookup(params, stage["foreach"].strip("${}")):
                commands[f"{name}@{item}"] = fill(stage["do"]["cmd"], item)
        else:
            commands[name] = fill(stage["cmd"])
    return commands


def tool_env() -> dict[str, str]:
    """This venv's dvc and python first on PATH; no MLflow/DVC settings leaking in from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def timed_run(root: Path, command: list[str], marker: str) -> tuple[list[tuple[str, float]], float]:
    """Run `command` in `root`, echoing its output to stderr; (name, seconds) per output line matching the
    regex `marker` (its group 1 names what started there and lasts until the next match), and the wall time.
    Exits if the command fails."""
    started = time.perf_counter()
    marks: list[tuple[str, float]] = []
    with subprocess.Popen(
        command, cwd=root, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stderr.write(line)
            found = re.search(marker, line)
            if found:
                marks.append((found.group(1), time.perf_counter()))
    total = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"{' '.join(command)} failed with exit code {proc.returncode}")
    ends = [t for _, t in marks[1:]] + ([started + total] if marks else [])  # nothing ran: no marks
    return [(name, end - start) for (name, start), end in zip(marks, ends, strict=True)], total


def timed_repro(root: Path) -> tuple[list[tuple[str, float]], float]:
    """(stage, seconds) in run order, and the total wall time of `dvc repro` in `root`."""
    return timed_run(root, ["dvc", "repro"], r"Running stage '([^']+)'")


def commit_all(root: Path, message: str) -> None:
    """Commit everything in the workspace, as a user does before `dvc exp run` (an experiment needs a baseline)."""
    who = {"GIT_AUTHOR_NAME": "benchmark", "GIT_AUTHOR_EMAIL": "benchmark@localhost"}
    env = {**tool_env(), **who, "GIT_COMMITTER_NAME": "benchmark", "GIT_COMMITTER_EMAIL": "benchmark@localhost"}
    subprocess.run(["git", "add", "-A"], cwd=root, env=env, check=True)
    subprocess.run(["git", "commit", "-q", "-m", message], cwd=root, env=env, check=True)


def add_set_option(parser: argparse.ArgumentParser) -> None:
    """`--set KEY=VALUE`, repeatable: params.yaml overrides for the benchmark's workspace."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a params.yaml key (dotted, YAML value), e.g. epochs=1 or finetune=head",
    )


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """{"epochs": 1} from ["epochs=1"]: values parsed as YAML, as params.yaml would hold them."""
    return {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in items)}


@contextmanager
def workspace_copy(settings: Mapping[str, Any], keep: Path | None = None) -> Iterator[Path]:
    """A fresh copy of the repository (copy_repo) with `settings` applied to its params.yaml: in a temp folder
    removed afterwards, or in the new folder `keep`, which stays."""
    with tempfile.TemporaryDirectory() as tmp:
        root = keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=keep is None)
        copy_repo(root)
        set_params(root, settings)
        yield root
