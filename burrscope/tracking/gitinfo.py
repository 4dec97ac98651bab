"""What git says about the working tree, read-only and best effort: for MLflow's tags and the report's header."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

GIT_TIMEOUT_S = 10
# What a pipeline run writes into the tree (DVC also adds a .gitignore beside its outputs): left out when asking whether
# the code and data differ from their commit, since DVC rewrites them during the very run that asks.
PIPELINE_OUTPUTS = ("dvc.lock", "results", "reports")
WRITTEN_BY_DVC = ":(top,exclude,glob)**/.gitignore"
# What every stage may read besides the data: the library, the stage commands and the params. The report depends on
# all of it (codegraph.NAME_THE_INPUTS_COMMIT), so not dvc.yaml, which DVC refuses as a dependency: a commit that
# changes a stage's definition reruns that stage, and the report too when the stage's outputs change.
PIPELINE_INPUTS = ("burrscope", "stages", "params.yaml")


def git(cwd: str, *args: str) -> str | None:
    """A git command's output, or None where git is missing or the folder is no repository."""
    # --no-optional-locks: `git status` would otherwise refresh the index, a write a reader has no business doing.
    try:
        done = subprocess.run(
            ["git", "--no-optional-locks", *args], cwd=cwd, capture_output=True, text=True, timeout=GIT_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.rstrip() if done.returncode == 0 else None  # porcelain lines start with a space


def inputs(*args: str) -> list[str]:
    """`args` followed by the pathspec of everything but the pipeline's own outputs: the code, data and params."""
    return [*args, "--", ":(top)", *(f":(top,exclude){path}" for path in PIPELINE_OUTPUTS), WRITTEN_BY_DVC]


def inputs_changed(cwd: str, data: Sequence[str]) -> bool | None:
    """Whether what the pipeline reads differs from its commit; None outside a repository."""
    status = git(cwd, *read_by_pipeline("status", "--porcelain", "--untracked-files=no", data=data))
    return None if status is None else bool(status)


def changed_files(cwd: str) -> list[str] | None:
    """Tracked files that differ from the commit, pipeline outputs aside; None outside a repository."""
    status = git(cwd, *inputs("status", "--porcelain", "--untracked-files=no"))
    return None if status is None else sorted(line[3:] for line in status.splitlines())


def read_by_pipeline(*args: str, data: Sequence[str]) -> list[str]:
    """`args` followed by the pathspec of what the pipeline reads: PIPELINE_INPUTS and the `data` paths inside the
    repository (params data.raw_dir and data.labels), each with the .dvc file DVC may track it by."""
    paths = [
        *PIPELINE_INPUTS,
        *(f"{path}{suffix}" for path in data if not Path(path).is_absolute() for suffix in ("", ".dvc")),
    ]
    return [*args, "--", *(f":(top){path}" for path in paths), WRITTEN_BY_DVC]


def inputs_commit(cwd: str, data: Sequence[str]) -> tuple[str, int] | None:
    """(hash, commit time) of the last commit that changed what the pipeline reads, so that a commit of its results
    (dvc.lock, results/, reports/) or of anything it never reads (docs, tests, benchmarks) keeps naming the commit the
    outputs were made from; None without one."""
    found = git(cwd, *read_by_pipeline("log", "-1", "--format=%H %ct", data=data))
    if not found:
        return None
    full, seconds = found.split()
    return full, int(seconds)


def without_credentials(url: str) -> str:
    """`url` without a user or password in its address (scp-like git@host:path is left alone: it names no secret)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc or not parts.scheme:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
