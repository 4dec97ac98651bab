"""What git says about the working tree, read-only and best effort: for MLflow's tags and the report's header."""

from __future__ import annotations

import subprocess
from urllib.parse import urlsplit, urlunsplit

GIT_TIMEOUT_S = 10
# What a pipeline run writes into the tree (DVC also adds a .gitignore beside its outputs): left out when asking whether
# the code and data differ from their commit, since DVC rewrites them during the very run that asks.
PIPELINE_OUTPUTS = ("dvc.lock", "results", "reports")
WRITTEN_BY_DVC = ":(top,exclude,glob)**/.gitignore"


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


def changed_files(cwd: str) -> list[str] | None:
    """Tracked files that differ from the commit, pipeline outputs aside; None outside a repository."""
    status = git(cwd, *inputs("status", "--porcelain", "--untracked-files=no"))
    return None if status is None else sorted(line[3:] for line in status.splitlines())


def inputs_commit(cwd: str) -> tuple[str, int] | None:
    """(hash, commit time) of the last commit that changed the pipeline's inputs, so a commit of results alone (the
    dvc.lock, results/ and reports/ they made) keeps naming the commit they were made from; None without one."""
    found = git(cwd, *inputs("log", "-1", "--format=%H %ct"))
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
