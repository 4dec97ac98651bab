"""Commands as the campaign runs them: to the end, or killed outright (SIGKILL) at a chosen moment together with
every process they started, their output kept with the time each line appeared."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

# What DVC and Snakemake print when a stage (job) starts: Snakemake names a rule by its `message` where it has one
# ("Job 7: Training fold 1"; every rule of workflow/ has), else as `rule train:`.
DVC_STAGE = re.compile(r"Running stage '([^']+)'")
SNAKEMAKE_JOB = re.compile(r"^\s*(?:(?:local)?rule (\w+):|Job \d+: (.+?))\s*$")
Lines = list[tuple[float, str]]  # each output line, with the seconds since the start at which it appeared
Watcher = Callable[[float, Lines], None]  # called with the seconds so far and the lines so far


@dataclass
class Finished:
    """A command's end: exit status (negative: killed by that signal), output, seconds it ran, and each output
    line with the seconds since the start at which it appeared."""

    returncode: int
    lines: Lines
    seconds: float
    killed: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "".join(line for _, line in self.lines)

    def marks(self, pattern: re.Pattern[str] = DVC_STAGE) -> list[tuple[str, float]]:
        """(what started, seconds since the start) for every line matching `pattern` (the group that matched names
        it)."""
        return [(found[found.lastindex or 0], at) for at, line in self.lines if (found := pattern.search(line))]

    def moment_in(self, draw: float, stages: Callable[[str], bool] = lambda name: True) -> tuple[str, float]:
        """A moment in the DVC stages that `stages` accepts, as (stage, seconds after it started): `draw` in [0, 1)
        of their time in this run. Another run, whose pace differs, counts the seconds from that stage's start."""
        marks = [*self.marks(DVC_STAGE), ("end", self.seconds)]
        spans = [(name, end - start) for (name, start), (_, end) in itertools.pairwise(marks) if stages(name)]
        left = draw * sum(seconds for _, seconds in spans)
        for name, seconds in spans:
            if left < seconds:
                return name, left
            left -= seconds
        return spans[-1]

    def running_at(self, moment: float, pattern: re.Pattern[str] = DVC_STAGE) -> str:
        """The stage that had started last at `moment` (`start` before any)."""
        started = [name for name, at in self.marks(pattern) if at <= moment]
        return started[-1] if started else "start"


def session_members(session: int) -> list[psutil.Process]:
    members = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == session:
                members.append(process)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


def kill_session(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the command and everything it started (its own session, whatever process group each joined), as a
    time limit, a closed lid or a pulled plug would end them: no handler runs."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # first the group, so that nothing in it starts more
    for _ in range(50):
        members = session_members(proc.pid)
        if not members:
            break
        for member in members:
            with contextlib.suppress(psutil.Error):
                member.kill()
        time.sleep(0.05)
    proc.wait()


def watch(proc: subprocess.Popen[str], started: float, limit: float, *, during: Watcher | None, lines: Lines) -> bool:
    """Wait for `proc`, killing it (and all it started) at `limit` seconds or when `during` raises StopIteration;
    whether it was killed."""
    while proc.poll() is None:
        elapsed = time.monotonic() - started
        stop = elapsed >= limit
        if during is not None and not stop:
            try:
                during(elapsed, lines)
            except StopIteration:
                stop = True
        if stop:
            kill_session(proc)
            return True
        time.sleep(0.02)
    return False


def run(
    command: list[str],
    root: Path,
    env: Mapping[str, str],
    *,
    log: Path,
    kill_at: float | None = None,
    timeout: float = 3600,
    during: Watcher | None = None,
) -> Finished:
    """Run `command` in `root` in a session of its own, its output copied to `log`; with `kill_at`, SIGKILL it and
    all it started after that many seconds if it still runs. `during(seconds, lines so far)` is called about every
    20 ms while it runs (a fault to inject, a file to watch); it kills the command by raising StopIteration."""
    started = time.monotonic()
    lines: Lines = []
    proc = subprocess.Popen(
        command, cwd=root, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, errors="replace",
    )  # fmt: skip

    def read() -> None:
        assert proc.stdout is not None
        with log.open("a", encoding="utf-8") as copy:
            copy.write(f"$ {' '.join(command)}\n")
            for line in proc.stdout:
                lines.append((time.monotonic() - started, line))
                copy.write(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    limit = min(kill_at if kill_at is not None else timeout, timeout)
    killed = watch(proc, started, limit, during=during, lines=lines)
    seconds = time.monotonic() - started
    reader.join(timeout=30)
    timed_out = killed and kill_at is None and seconds >= timeout
    return Finished(
        proc.returncode, lines, seconds, killed=killed, notes=[f"timed out after {timeout:.0f} s"] * timed_out
    )
