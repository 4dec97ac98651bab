# Shared by every rule: the validated config, and each stage's inputs, outputs, params and command as
# burrscope/pipeline/graph.py defines them (dvc.yaml is written from the same definitions).
import shutil
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# This file is workflow/rules/common.smk. The repository's own package, not an installed copy elsewhere,
# answers the questions below.
ROOT = (
    Path(workflow.current_basedir.get_path_or_uri(secret_free=True))
    .resolve()
    .parents[1]
)
sys.path.insert(0, str(ROOT))

from burrscope.params import SCHEMA_PATH, lookup
from burrscope.pipeline import graph
from burrscope.pipeline.codegraph import stage_code

validate(config, str(SCHEMA_PATH))

# Folds share one GPU one at a time (profiles/default caps `gpu` at 1); CPU-only folds run side by side.
GPU = 1 if config["train"]["device"] != "cpu" and shutil.which("nvidia-smi") else 0


def all_cores():
    """--cores, for rules whose threads follow it; 1 for a command that runs no job and takes no --cores, such as
    `snakemake --unlock`, which Snakemake's own message prescribes after a kill (reading workflow.cores then fails).
    """
    try:
        return workflow.cores
    except WorkflowError:
        return 1


def inputs(stage):
    """The stage's data inputs, and as `code` the files its command runs: Snakemake does not track edits to
    them by itself."""
    return {
        **graph.snakemake_inputs(graph.BY_NAME[stage], config),
        "code": stage_code(ROOT, graph.BY_NAME[stage].module),
    }


def outputs(stage):
    return {
        name: directory(output.path) if output.folder else output.path
        for name, output in graph.BY_NAME[stage].outputs.items()
    }


def tracked(stage):
    """The params.yaml values the stage reads, so Snakemake reruns it when they change, as DVC does."""
    return {key: lookup(config, key) for key in graph.BY_NAME[stage].params}


def command(stage):
    """The stage's command (dvc.yaml's), its output kept in the rule's log too."""
    return graph.snakemake_command(graph.BY_NAME[stage], config) + " 2>&1 | tee {log}"


wildcard_constraints:
    fold=r"\d+",
    fraction=r"0?\.\d+",
