"""For commands a person runs: argument checks, and progress as one redrawn bar on a terminal or short log lines."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

BAR_WIDTH = 30


def warn(message: str) -> None:
    """One `warning: ...` line on stderr, so that a stage's stdout stays its results."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def progress_bar(stream: TextIO, what: str = "predict") -> Callable[[int, int], None]:
    """Progress on `stream`: one redrawn bar on a terminal, else a plain line per tenth done (logs stay short)."""
    terminal = stream.isatty()
    shown = -1

    def report(done: int, total: int) -> None:
        nonlocal shown
        if terminal:
            filled = BAR_WIDTH * done // total
            end = "\n" if done == total else ""
            stream.write(f"\r{what}: [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total} images{end}")
        elif 10 * done // total != shown:
            shown = 10 * done // total
            stream.write(f"{what}: {done}/{total} images\n")
        stream.flush()

    return report


def path_arguments(description: str, *names: str) -> argparse.Namespace:
    """The command line of a stage whose arguments are all paths, in the order of `names`; `description` (the
    stage's docstring) says what each is."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in names:
        parser.add_argument(name, type=Path)
    return parser.parse_args()


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value
