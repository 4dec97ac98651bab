"""The pipeline's stages, once: what each reads, writes and tracks. dvc.yaml is written from them (dvcfile.py) and
the Snakemake rules take their inputs, outputs and params from them (workflow/rules/common.smk).

Paths may hold the item of a stage that runs once per entry of a params.yaml list (`{fold}` for a fold or
`predict.final` entry, `{fraction}` for a `curve.fractions` entry), and `{key}` for a params.yaml value such as
`{data.raw_dir}`. Each stage's code dependencies are not listed: they are the
files its command runs (codegraph.stage_code).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from burrscope.params import FINAL_ITEM, SCHEMA_PATH, TRAINING_KEYS, lookup
from burrscope.tables import (
    AUDIT_SUMMARY,
    CALIBRATION,
    CONFUSION,
    CURVE,
    EXPORT_SUMMARY,
    FINAL_FILES,
    FINAL_MODEL_DIR,
    FOLD_FILES,
    GROUPED_LABELS,
    HEADLINE,
    ISSUES,
    ONNX,
    POOLED_HISTORY,
    PREDICTIONS,
    ROC,
    SUMMARY,
    THRESHOLDS,
    TORCHSCRIPT,
    VERDICT,
)

RAW, LABELS = "{data.raw_dir}", "{data.labels}"
MANIFEST, NAMED, COMPOSITED = "data/interim/manifest.csv", "data/interim/named", "data/interim/composited"
IMAGES, FOLDS = "data/processed/images", "data/processed/folds.csv"
TRAIN, EXPLAIN, AGGREGATE, EXPORT = "results/train", "results/explain", "results/aggregate", "results/export"
# The curve's points go in a folder of their own, which git keeps (by its KEPT file, a .gitignore that ignores the
# points) even when curve.fractions is []: the curve stage depends on it, and DVC refuses a missing dependency.
CURVE_DIR = "results/curve"
FRACTIONS = f"{CURVE_DIR}/fractions"
KEPT = (f"{FRACTIONS}/.gitignore",)  # the files under results/ that belong to the pipeline's definition
AUDIT = "results/audit"
REPORT = "reports/report.html"
FOLD_DIR, FINAL_DIR = f"{TRAIN}/fold_{{fold}}", f"{TRAIN}/{FINAL_MODEL_DIR}"
TRAINING = tuple(TRAINING_KEYS.values())


@dataclass(frozen=True)
class Output:
    """A file or folder a stage writes. `cache: False` keeps it in git (small, for reading in a diff) instead of
    DVC's cache; `metric` makes it what `dvc metrics show` and `dvc exp show` list; `from_run_cache: False` has its
    stage run again whenever its inputs change, never restored from DVC's run cache, for an output that depends on
    what the run cache cannot see."""

    path: str
    folder: bool = False
    cache: bool = True
    metric: bool = False
    from_run_cache: bool = True


@dataclass(frozen=True)
class Stage:
    """One stage: `command` with `{name}` for an input or output path, `{<item>}` for the entry of `foreach` (a
    params.yaml list: the stage runs once per entry; `item` is what an entry is), and `note`, what dvc.yaml says
    about it."""

    name: str
    command: str
    inputs: Mapping[str, str]
    outputs: Mapping[str, Output]
    params: tuple[str, ...]
    foreach: str | None = None
    item: str = "fold"
    note: str = ""

    @property
    def module(self) -> str:
        """The stage's command module, `stages.<name>`: what codegraph.stage_code follows."""
        return self.command.split()[2].removeprefix("stages.")

    def command_line(self) -> str:
        """The command with every input and output path in place (still holding `{<item>}` and `{data.*}`)."""
        paths = dict(self.inputs) | {name: output.path for name, output in self.outputs.items()}
        return self.command.format(**{self.item: f"{{{self.item}}}"}, **paths)


def top_level_keys() -> tuple[str, ...]:
    """Every top-level key of params.yaml, in the schema's order: the report prints them all."""
    return tuple(json.loads(SCHEMA_PATH.read_text())["properties"])


def _files(folder: str, names: tuple[str, ...], in_git: tuple[str, ...]) -> dict[str, Output]:
    return {name.split(".")[0]: Output(f"{folder}/{name}", cache=name not in in_git) for name in names}


STAGES: tuple[Stage, ...] = (
    Stage(
        "normalise",
        "python -m stages.normalise {raw} {labels} {images} {manifest}",
        {"raw": RAW, "labels": LABELS},
        {"images": Output(NAMED, folder=True), "manifest": Output(MANIFEST)},
        ("data.on_bad_image", "data.classes"),
    ),
    Stage(
        "composite",
        "python -m stages.composite {images} {composited}",
        {"images": NAMED},
        {"composited": Output(COMPOSITED, folder=True)},
        ("composite.background",),
    ),
    Stage(
        "resize",
        "python -m stages.resize {composited} {images}",
        {"composited": COMPOSITED},
        {"images": Output(IMAGES, folder=True)},
        ("composite.background", "resize.img_size"),
    ),
    Stage(
        "split",
        "python -m stages.split {manifest} {folds}",
        {"manifest": MANIFEST},
        {"folds": Output(FOLDS)},
        ("seed", "split.folds"),
    ),
    Stage(
        "train",
        "python -m stages.train {images} {folds} {fold} " + FOLD_DIR,
        {"images": IMAGES, "folds": FOLDS},
        _files(FOLD_DIR, FOLD_FILES, in_git=("metrics.json", "history.csv")),
        TRAINING,
        foreach="split.fold_ids",
        note="One fold: its model and its out-of-fold predictions.",
    ),
    Stage(
        "final",
        f"python -m stages.train {{images}} {{folds}} {FINAL_ITEM} {FINAL_DIR}",
        {"images": IMAGES, "folds": FOLDS},
        _files(FINAL_DIR, FINAL_FILES, in_git=("metrics.json", "history.csv")),
        TRAINING,
        foreach="predict.final",
        note="Only with `predict.final: [all]` (a foreach over an empty list makes no stage): one model trained on "
        "every image, which predict and export then use. It lives under results/train, which export depends on.",
    ),
    Stage(
        "explain",
        "python -m stages.explain {images} {train} {heatmaps}",
        {"images": IMAGES, "train": TRAIN},
        {"heatmaps": Output(EXPLAIN, folder=True)},
        ("train.explain_correct", "split.folds"),
        note="Every fold's heatmaps, in one process.",
    ),
    Stage(
        "aggregate",
        "python -m stages.aggregate {folds} {train} " + AGGREGATE,
        {"folds": FOLDS, "train": TRAIN},
        {
            "predictions": Output(f"{AGGREGATE}/{PREDICTIONS}"),
            **_files(
                AGGREGATE,
                (SUMMARY, CONFUSION, ROC, THRESHOLDS, CALIBRATION, POOLED_HISTORY),
                in_git=(SUMMARY, CONFUSION, ROC, THRESHOLDS, CALIBRATION, POOLED_HISTORY),
            ),
            "headline": Output(f"{AGGREGATE}/{HEADLINE}", cache=False, metric=True),
        },
        (*TRAINING, "split.folds", "predict.threshold", "data.class_names"),
        note="The training keys too: they identify the MLflow parent run that aggregate completes.",
    ),
    Stage(
        "curve_point",
        "python -m stages.curve_point {images} {folds} {fraction} " + f"{FRACTIONS}/{{fraction}}",
        {"images": IMAGES, "folds": FOLDS},
        {"point": Output(f"{FRACTIONS}/{{fraction}}", folder=True)},
        TRAINING,
        foreach="curve.fractions",
        item="fraction",
        note="Only with curve.fractions set: every fold trained on that share of its training images.",
    ),
    Stage(
        "curve",
        "python -m stages.curve {folds} {fractions} {predictions} " + CURVE_DIR,
        {"folds": FOLDS, "fractions": FRACTIONS, "predictions": f"{AGGREGATE}/{PREDICTIONS}"},
        {
            "curve": Output(f"{CURVE_DIR}/{CURVE}", cache=False),
            "verdict": Output(f"{CURVE_DIR}/{VERDICT}", cache=False),
        },
        ("curve.fractions", "seed", "predict.threshold"),
        note="The learning curve: the points and the full run, and whether more photos would help.",
    ),
    Stage(
        "audit",
        "python -m stages.audit {labels} {manifest} {images} {folds} {predictions} " + AUDIT,
        {
            "labels": LABELS,
            "manifest": MANIFEST,
            "images": IMAGES,
            "folds": FOLDS,
            "predictions": f"{AGGREGATE}/{PREDICTIONS}",
        },
        {
            "issues": Output(f"{AUDIT}/{ISSUES}", cache=False),
            "grouped": Output(f"{AUDIT}/{GROUPED_LABELS}"),
            "summary": Output(f"{AUDIT}/{AUDIT_SUMMARY}", cache=False, metric=True),
        },
        (*TRAINING, "audit"),
        note="Suspect labels, near-duplicate photos and outliers; it never changes a label. The training keys pick "
        "the backbone whose features it compares, and find the MLflow parent run it logs to.",
    ),
    Stage(
        "report",
        "python -m stages.report {manifest} {images} {train} {explain} {aggregate} {audit} {curve} {report}",
        {
            "manifest": MANIFEST,
            "images": IMAGES,
            "train": TRAIN,
            "explain": EXPLAIN,
            "aggregate": AGGREGATE,
            "audit": AUDIT,
            "curve": CURVE_DIR,
        },
        # The header names the inputs' last commit (burrscope/report/origin.py). After a commit that puts the inputs
        # back as they were (a revert), the run cache would bring back a report that names an older commit than a
        # fresh clone's run does.
        {"report": Output(REPORT, from_run_cache=False)},
        top_level_keys(),
        note="The report prints every param.",
    ),
    Stage(
        "export",
        "python -m stages.export {folds} {images} {train} " + EXPORT,
        {"folds": FOLDS, "images": IMAGES, "train": TRAIN},
        {
            "torchscript": Output(f"{EXPORT}/{TORCHSCRIPT}"),
            "onnx": Output(f"{EXPORT}/{ONNX}"),
            "summary": Output(f"{EXPORT}/{EXPORT_SUMMARY}", cache=False),
        },
        (*TRAINING, "split.folds", "predict", "mlflow.registered_model"),
        note="The training keys identify the MLflow parent run that the registered model is logged under.",
    ),
)
BY_NAME = {stage.name: stage for stage in STAGES}


def resolved(path: str, config: Mapping[str, Any]) -> str:
    """`path` with its params.yaml values (`{data.raw_dir}`) filled in from `config`; `{fold}` stays."""
    return re.sub(r"\{([a-z_]+\.[a-z_.]+)\}", lambda found: str(lookup(config, found[1])), path)


def outputs_in(folder: str, config: Mapping[str, Any]) -> list[str]:
    """What the stages write inside `folder` for `config`: once per fold and final model it trains.

    A stage that depends on a folder (aggregate on results/train) depends on these files: Snakemake needs them
    named, DVC takes the folder.
    """
    found = []
    for stage in STAGES:
        items = lookup(config, stage.foreach) if stage.foreach else [None]
        for output in stage.outputs.values():
            if output.path.startswith(f"{folder}/"):
                found += [output.path.replace(f"{{{stage.item}}}", str(item)) for item in items]
    return found


def snakemake_inputs(stage: Stage, config: Mapping[str, Any]) -> dict[str, str | list[str]]:
    """The stage's named inputs for a Snakemake rule: a folder that other stages write into, as their files."""
    return {name: outputs_in(path, config) or resolved(path, config) for name, path in stage.inputs.items()}


def snakemake_command(stage: Stage, config: Mapping[str, Any]) -> str:
    """The stage's command for a Snakemake rule: dvc.yaml's, with the item from the rule's wildcard."""
    return resolved(stage.command_line(), config).replace(f"{{{stage.item}}}", f"{{wildcards.{stage.item}}}")
