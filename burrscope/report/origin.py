"""Where a report's numbers come from: the commit of the code and data, the DVC experiment, the MLflow run.

The same inputs give the same page, byte for byte, wherever and however often they run, because `dvc.lock` (which
git tracks) holds the report's hash. So the header names only what a rerun cannot change: no clock, no MLflow run
id (a link finds the run by its pipeline key instead), and as the commit the last one that changed the pipeline's
inputs, which a later commit of the results alone leaves as it is. MLflow records when each run started.

Everything here is read-only and best effort: without git or MLflow the report says so and is written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from burrscope.params import Params
from burrscope.tracking.gitinfo import inputs_changed, inputs_commit
from burrscope.tracking.lookup import PipelineRunLink, pipeline_run_link, utc

DEMO_IMAGES = Path("data/demo/images")  # where scripts/make_demo_data.py writes the demo's cut-outs


@dataclass(frozen=True)
class Origin:
    """What the header says about the run; None where it could not be found."""

    commit: str | None  # short hash of inputs_commit, "+dirty" when the inputs differ from it
    commit_date: str | None  # UTC date of that commit
    experiment: str | None  # DVC_EXP_NAME, which `dvc exp run` sets
    mlflow: PipelineRunLink | None
    demo: bool = False  # the images are the generated demo (scripts/make_demo_data.py), not photos


def git_commit(data: Sequence[str]) -> tuple[str | None, str | None]:
    """(short hash of the inputs' commit, with "+dirty" when what the pipeline reads differs from it; its date), or
    (None, None). `data`: the paths of the photos and the labels CSV."""
    found, changed = inputs_commit(".", data), inputs_changed(".", data)
    if not found or changed is None:  # no git, not a repository, no commit yet
        return None, None
    full, seconds = found
    return full[:8] + ("+dirty" if changed else ""), utc(seconds)[:10]


def find_origin(params: Params, assignment: pd.DataFrame) -> Origin:
    """The origin of the outputs in the current directory, as the report stage sees it."""
    commit, commit_date = git_commit([params.data.raw_dir, params.data.labels])
    experiment = os.environ.get("DVC_EXP_NAME") or None
    demo = Path(params.data.raw_dir) == DEMO_IMAGES
    return Origin(commit, commit_date, experiment, pipeline_run_link(params, assignment), demo)
