"""Where a stage's wall time goes: seconds per phase, from the moment the process started."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
