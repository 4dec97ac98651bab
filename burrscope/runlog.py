"""A stage run's bookkeeping: where its wall time goes (seconds per phase, from the moment the process started), and
its record under logs/ (seconds, MLflow's outcome, a resumed checkpoint).

Such facts differ from run to run of the same inputs, so they never go into a tracked output: rerunning an unchanged
commit must leave `git status` clean. logs/ is git-ignored; MLflow keeps them too.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from burrscope.files import write_text_atomic

LOG_DIR = Path("logs")  # relative to the workspace, where every stage runs


def seconds_since_process_start() -> float | None:
    """How long this process has run, Python's own start-up and imports included; None where /proc is missing."""
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        # Field 22, start time in clock ticks after boot; the command name (field 2) may hold spaces and ")".
        started = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - started / os.sysconf("SC_CLK_TCK"))


class Stopwatch:
    """Seconds spent per phase, summed over a stage; phases appear in the order they first ran.

    Created at the top of a stage, it books everything before it (interpreter start, imports) as `startup`.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {"startup": seconds_since_process_start() or 0.0}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - started

    def rounded(self) -> dict[str, float]:
        return {phase: round(seconds, 3) for phase, seconds in self.seconds.items()}


def write_run_log(name: str, record: dict[str, Any]) -> Path:
    """logs/<name>.json: this run's bookkeeping, replacing the last run's."""
    path = LOG_DIR / f"{name}.json"
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")
    return path
