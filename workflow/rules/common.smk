# What every rule shares: the validated config, each stage's code inputs and the params it tracks.
import shutil
import sys
from pathlib import Path

from snakemake.utils import validate

# This file is workflow/rules/common.smk. The repository's own package, not an installed copy elsewhere,
# answers the questions below.
ROOT = Path(workflow.current_basedir.get_path_or_uri(secret_free=True)).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from burrscope.codegraph import stage_code
from burrscope.params import TRAINING_KEYS, lookup

validate(config, str(ROOT / "burrscope" / "params.schema.json"))

FOLDS = config["split"]["fold_ids"]
# `predict.final: [all]` adds the final model, trained on every image (dvc.yaml: a foreach over the same list).
FINAL = config["predict"]["final"]
# Folds share one GPU one at a time (profiles/default caps `gpu` at 1); CPU-only folds run side by side.
GPU = 1 if config["train"]["device"] != "cpu" and shutil.which("nvidia-smi") else 0


def code(stage):
    """The files `python -m stages.<stage>` runs and reads: Snakemake does not track edits to them by itself."""
    return stage_code(ROOT, stage)


def tracked(*keys):
    """The params.yaml values a stage reads, so Snakemake reruns it when they change, as DVC does."""
    return {key: lookup(config, key) for key in keys}


def fold_outputs(fold):
    return [f"results/train/fold_{fold}/{name}" for name in ("model.pt", "predictions.csv", "metrics.json",
                                                             "history.csv")]


# What sits in results/train, which the stages after training depend on as a whole (as DVC sees that folder).
TRAIN_OUTPUTS = [path for fold in FOLDS for path in fold_outputs(fold)]
TRAIN_OUTPUTS += [f"results/train/final/{name}" for name in ("model.pt", "metrics.json", "history.csv") if FINAL]
EXPLAIN_OUTPUTS = [f"results/explain/fold_{fold}" for fold in FOLDS]


wildcard_constraints:
    fold=r"\d+",
