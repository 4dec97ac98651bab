"""Where a report's numbers come from: the git commit, the DVC experiment and the MLflow parent run.

No clock is read, so the same outputs, commit and tracking store give the same page, byte for byte. The date
shown is the MLflow parent run's start, when the pipeline run began, and the commit's date beside the commit;
each is labelled as what it is. The time of rendering, or an output's modification time, would differ between
two renderings of the same results (DVC restores outputs from its cache with new times).

Everything here is read-only and best effort: without git or MLflow the report says so and is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from burrscope.params import Params
from burrscope.tracking.gitinfo import changed_files, git
from burrscope.tracking.lookup import MlflowRun, mlflow_parent, utc

DEMO_IMAGES = Path("data/demo/images")  # where scripts/make_demo_data.py writes the demo's cut-outs


@dataclass(frozen=True)
class Origin:
    """What the header says about the run; None where it could not be found."""

    commit: str | None  # short hash, "+dirty" when tracked files other than pipeline outputs differ from it
    commit_date: str | None  # UTC date of the commit
    experiment: str | None  # DVC_EXP_NAME, which `dvc exp run` sets
    mlflow: MlflowRun | None
    demo: bool = False  # the images are the generated demo (scripts/make_demo_data.py), not photos


def git_commit() -> tuple[str | None, str | None]:
    """(short hash, with "+dirty" as MLflow's git tags count it; the commit's date), or (None, None)."""
    found, changed = git(".", "log", "-1", "--format=%H %ct"), changed_files(".")
    if not found or changed is None:  # no git, not a repository, no commit yet
        return None, None
    full, seconds = found.split()
    return full[:8] + ("+dirty" if changed else ""), utc(int(seconds))[:10]


def find_origin(params: Params, assignment: pd.DataFrame) -> Origin:
    """The origin of the outputs in the current directory, as the report stage sees it."""
    commit, commit_date = git_commit()
    experiment = os.environ.get("DVC_EXP_NAME") or None
    demo = Path(params.data.raw_dir) == DEMO_IMAGES
    return Origin(commit, commit_date, experiment, mlflow_parent(params, assignment), demo)
