"""dvc.yaml, made from the pipeline's stages (graph.py) and the code each one runs (codegraph.py).

What only DVC has, the plots that `dvc plots show` draws and the exported model's artifact entry, is defined here.
`python -m burrscope.pipeline.generated` writes the file.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import yaml

from burrscope.pipeline.codegraph import PROJECT_ROOT, stage_code
from burrscope.pipeline.graph import AGGREGATE, CURVE_DIR, EXPORT, STAGES, Output, Stage
from burrscope.tables import CALIBRATION, CONFUSION, CURVE, ONNX, POOLED_HISTORY, ROC, THRESHOLDS

HEADER = """\
# The Burrscope pipeline for DVC. Written by `python -m burrscope.pipeline.generated` from burrscope/pipeline/graph.py,
# which the Snakemake rules in workflow/ read too: edit that file and rerun the command (the tests fail while this one
# is stale). Each stage's code deps are exactly the files its command runs (burrscope/pipeline/codegraph.py).
"""
PLOTS_NOTE = """\
# What `dvc plots show` draws, into a page that carries vega itself (.dvc/config: plots.html_template), so it works
# offline, with the project's templates in .dvc/plots/: counts and class names on the confusion matrix, the chance
# diagonal beside the ROC curve, precision and recall in two colours on a 0 to 1 axis, one dot per non-empty
# calibration bin (never a line across empty ones), one line per fold, the learning curve with its intervals. None
# smooths the points, as DVC's default `linear` does (loess), which would start a ROC curve that rises to 0.96 at
# fpr 0 near 0.5.
"""
ARTIFACTS: dict[str, Any] = {
    "burr-classifier": {
        "path": f"{EXPORT}/{ONNX}",
        "type": "model",
        "desc": "The chosen Burrscope model (fold ensemble, or the final model with predict.final: [all]) as ONNX: "
        "float32 N x 3 x S x S RGB in [0, 1], composited, padded and resized as the pipeline does; outputs class "
        "probabilities. results/export/export.json gives the classes, input size, threshold and TorchScript twin.",
        "labels": ["burr", "classifier", "onnx"],
    }
}
PLOTS: list[dict[str, Any]] = [
    {
        f"{AGGREGATE}/{CONFUSION}": {
            "template": "confusion_counts",
            "title": "Confusion matrix of the pooled out-of-fold predictions, at predict.threshold",
            "x": "predicted",
            "y": "actual",
        }
    },
    {
        f"{AGGREGATE}/{ROC}": {
            "template": "roc",
            "title": "ROC curve of the positive class, pooled out-of-fold, beside chance",
            "x": "fpr",
            "y": "tpr",
            "x_label": "false positive rate",
            "y_label": "true positive rate (recall)",
        }
    },
    {
        f"{AGGREGATE}/{THRESHOLDS}": {
            "template": "precision_recall",
            "title": "Precision and recall of the positive class against the decision threshold",
            "x": "threshold",
            "y": ["precision", "recall"],
            "x_label": "decision threshold",
            "y_label": "precision, recall",
        }
    },
    {
        f"{AGGREGATE}/{CALIBRATION}": {
            "template": "reliability",
            "title": "Calibration: observed share of positives against mean predicted probability, per bin",
            "x": "mean_predicted",
            "y": "fraction_positive",
            "x_label": "mean predicted probability of the positive class",
            "y_label": "observed share of positives",
        }
    },
    {
        f"{AGGREGATE}/{POOLED_HISTORY}": {
            "template": "per_fold",
            "title": "Validation loss per epoch, every fold",
            "x": "epoch",
            "y": "val_loss",
            "y_label": "validation loss",
        }
    },
    {
        f"{CURVE_DIR}/{CURVE}": {
            "template": "learning_curve",
            "title": "Learning curve: pooled balanced accuracy against training photos per fold (curve.fractions)",
            "x": "train_images",
            "y": "balanced_accuracy",
            "x_label": "training photos per fold",
            "y_label": "balanced accuracy, 95 % bootstrap interval",
        }
    },
]


def dvc_path(path: str, item: str = "fold") -> str:
    """A graph path as dvc.yaml writes it: `{<item>}` (a stage's foreach entry, `{fold}` by default) is foreach's
    `${item}`, `{data.raw_dir}` a params value."""
    return re.sub(rf"\{{({item}|[a-z_]+\.[a-z_.]+)\}}", lambda m: "${item}" if m[1] == item else f"${{{m[1]}}}", path)


def output_entry(output: Output, item: str) -> str | dict[str, Any]:
    # DVC keeps no run-cache entry for a stage with a persistent output: its one switch for a stage whose outputs it
    # caches. (Persistent also means not deleted before the stage runs, which the stages' atomic writes never need.)
    options = {"cache": False} if not output.cache else {}
    if not output.from_run_cache:
        options["persist"] = True
    path = dvc_path(output.path, item)
    return {path: options} if options else path


def stage_entry(stage: Stage, root: Path) -> dict[str, Any]:
    """The stage's dvc.yaml mapping: command, data and code deps, params, outputs and metrics."""
    entry: dict[str, Any] = {
        "cmd": dvc_path(stage.command_line(), stage.item),
        "deps": [dvc_path(path, stage.item) for path in stage.inputs.values()] + stage_code(root, stage.module),
        "params": list(stage.params),
    }
    outs = [output_entry(output, stage.item) for output in stage.outputs.values() if not output.metric]
    metrics = [output_entry(output, stage.item) for output in stage.outputs.values() if output.metric]
    entry["outs"] = outs
    if metrics:
        entry["metrics"] = metrics
    return {"foreach": f"${{{stage.foreach}}}", "do": entry} if stage.foreach else entry


class _Dumper(yaml.SafeDumper):
    """Lists indented under their key, as people write dvc.yaml."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)


def _dump(value: Any) -> str:
    return yaml.dump(value, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)


def render(root: Path = PROJECT_ROOT) -> str:
    """dvc.yaml's text for the repository at `root`."""
    blocks = [HEADER, "stages:\n"]
    for stage in STAGES:
        note = "".join(f"  # {line}\n" for line in textwrap.wrap(stage.note, 114))
        body = _dump({stage.name: stage_entry(stage, root)})
        blocks.append(note + "".join(f"  {line}\n" for line in body.splitlines()) + "\n")
    blocks += [_dump({"artifacts": ARTIFACTS}), "\n", PLOTS_NOTE, _dump({"plots": PLOTS})]
    return "".join(blocks)
