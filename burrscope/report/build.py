"""The report: the stage outputs, loaded and checked, rendered through template.html into one self-contained page.

`build_report` is the whole job; `load_outputs`, `report_context` and `render` are its steps. To add to the
report, give `report_context` another key, made by a small function in `sections` (plain data, no HTML), and
place it in a block of the template.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from burrscope.classes import prob_column
from burrscope.errors import DataError
from burrscope.naming import output_name
from burrscope.params import Params
from burrscope.report import headline, sections
from burrscope.report.figures import figure_uris
from burrscope.report.origin import Origin, find_origin
from burrscope.tables import (
    CALIBRATION_COLUMNS,
    HEATMAP_COLUMNS,
    HISTORY_COLUMNS,
    MANIFEST_COLUMNS,
    METRICS,
    PREDICTION_COLUMNS,
    RERUN,
    THRESHOLD_COLUMNS,
    read_table,
)

# Read beside this module (not through a Jinja loader), so the code graph counts it as the report stage's code.
TEMPLATE = Path(__file__).with_name("template.html")


@dataclass(frozen=True)
class StageOutputs:
    """What the report shows, read from the stage outputs and checked against each other.

    `manifest` holds the kept images (width and height as ints), `skipped` the ones normalise left out.
    `roc` and `thresholds` are None unless there are two classes. `explained` is every fold's heatmaps.csv with
    `fold`, `path` (of the overlay), `is_correct` and `p_explained` (the probability of the explained class).
    """

    summary: dict[str, Any]
    classes: list[str]
    predictions: pd.DataFrame
    manifest: pd.DataFrame
    skipped: pd.DataFrame
    runs: list[dict[str, Any]]
    histories: list[pd.DataFrame]
    roc: pd.DataFrame | None
    thresholds: pd.DataFrame | None
    calibration: pd.DataFrame
    explained: pd.DataFrame


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} not found; {RERUN}.") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err}); {RERUN}.") from None


def read_manifest(manifest_csv: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The kept images (sizes as ints) and the skipped ones."""
    manifest = read_table(manifest_csv, MANIFEST_COLUMNS)
    skipped = manifest[manifest["skipped"] != ""]
    kept = manifest[manifest["skipped"] == ""].copy()
    for column in ("width", "height"):
        values = pd.to_numeric(kept[column], errors="coerce")
        if values.isna().any():
            raise DataError(f"{manifest_csv}: column {column!r} holds a non-number for a kept image; {RERUN}.")
        kept[column] = values.astype(int)
    return kept, skipped


def read_thresholds(thresholds_csv: Path) -> pd.DataFrame:
    thresholds = read_table(
        thresholds_csv, THRESHOLD_COLUMNS, numeric=["threshold", "flagged", "missed", "false_alarms"]
    )
    for column in ("precision", "recall"):  # empty where undefined: nothing flagged, or no positives
        thresholds[column] = [float(value) if value else math.nan for value in thresholds[column]]
    return thresholds


def read_heatmaps(explain_dir: Path, folds: int) -> pd.DataFrame:
    """Every fold's heatmaps.csv, with `fold`, `path`, `is_correct` and `p_explained` added."""
    parts = []
    for fold in range(folds):
        folder = explain_dir / f"fold_{fold}"
        part = read_table(folder / "heatmaps.csv", HEATMAP_COLUMNS)
        parts.append(part.assign(fold=fold, path=[folder / name for name in part["heatmap"]]))
    explained = pd.concat(parts, ignore_index=True)
    explained["is_correct"] = explained["correct"].str.lower() == "true"
    missing = {prob_column(label) for label in explained["explained"]} - set(explained.columns)
    if missing:
        raise DataError(f"{explain_dir}/fold_*/heatmaps.csv lacks {sorted(missing)}; {RERUN}.")
    # The probability the explain stage weighted the map by (burrscope.explain.confidence_weighted).
    explained["p_explained"] = [row[prob_column(row["explained"])] for _, row in explained.iterrows()]
    return explained


def load_outputs(
    manifest_csv: Path, train_dir: Path, explain_dir: Path, aggregate_dir: Path, folds: int
) -> StageOutputs:
    """Read what the report shows; DataError, naming the file and the fix, if any of it is missing or stale."""
    summary = read_json(aggregate_dir / "metrics.json")
    covered = list(summary.get("per_fold", {}))
    if covered != [f"fold_{fold}" for fold in range(folds)]:
        raise DataError(f"{aggregate_dir / 'metrics.json'} covers {covered}, but split.folds is {folds}; {RERUN}.")
    classes = summary["classes"]
    binary = len(classes) == 2
    probs = [prob_column(label) for label in classes]
    manifest, skipped = read_manifest(manifest_csv)
    return StageOutputs(
        summary=summary,
        classes=classes,
        predictions=read_table(aggregate_dir / "predictions.csv", [*PREDICTION_COLUMNS, *probs], numeric=probs),
        manifest=manifest,
        skipped=skipped,
        runs=[read_json(train_dir / f"fold_{fold}" / "metrics.json") for fold in range(folds)],
        histories=[
            read_table(train_dir / f"fold_{fold}" / "history.csv", HISTORY_COLUMNS, numeric=HISTORY_COLUMNS)
            for fold in range(folds)
        ],
        roc=read_table(aggregate_dir / "roc.csv", ["fpr", "tpr"], numeric=["fpr", "tpr"]) if binary else None,
        # summary["threshold"] is None with more classes, where no threshold applies.
        thresholds=read_thresholds(aggregate_dir / "thresholds.csv") if summary["threshold"] is not None else None,
        calibration=read_table(aggregate_dir / "calibration.csv", CALIBRATION_COLUMNS, numeric=CALIBRATION_COLUMNS),
        explained=read_heatmaps(explain_dir, folds),
    )


def held_out_image(table: pd.DataFrame) -> list[tuple[str, str]]:
    """(fold, file) of each row: the held-out image it is about, in the predictions and heatmaps tables alike."""
    return list(zip(table["fold"].astype(str), table["file"], strict=True))


def report_context(
    outputs: StageOutputs,
    params: Mapping[str, Any],
    images_dir: Path,
    manifest_csv: Path,
    origin: Origin,
) -> dict[str, Any]:
    """The template's variables, one per section, each plain data (see `sections` and `headline` for the shapes)."""
    summary, classes, runs, predictions = outputs.summary, outputs.classes, outputs.runs, outputs.predictions
    name = Params.from_mapping(params).data.class_name
    binary = len(classes) == 2
    metrics = [metric for metric in METRICS if binary or metric != "roc_auc"]
    originals = {output_name(row.normalised_name): row.original_name for row in outputs.manifest.itertuples()}
    figures = figure_uris(
        predictions,
        classes,
        [name(label) for label in classes],
        summary["overall"],
        outputs.roc,
        outputs.calibration,
        summary["calibration"],
        outputs.histories,
        [run["epoch_kept"] for run in runs],
    )
    lede = headline.headline(summary, runs, params["model"])
    per_class = predictions["label"].value_counts()
    positives = predictions.loc[predictions["label"] == classes[-1], "fold"].astype(str).value_counts()
    explained = outputs.explained
    overlays = dict(zip(held_out_image(explained), explained["path"], strict=True))
    # Each mistake is shown once, beside its heatmap; the gallery after it shows the other explained images.
    mistakes = set(held_out_image(predictions[predictions["label"] != predictions["predicted"]]))
    return {
        "classes": classes,
        "binary": binary,
        "positive": name(classes[-1]),
        "negative": name(classes[0]),
        "threshold": summary["threshold"],
        "origin": origin,
        "headline": lede,
        "tiles": headline.tiles(summary, headline.count(predictions, classes), classes, name),
        "sample": ", ".join(f"{per_class.get(label, 0)} {name(label)}" for label in classes),
        "held_out": [(i, run["n_train"], run["n_val"]) for i, run in enumerate(runs)],
        "params": sections.params_text(params),
        "data": sections.data_tables(outputs.manifest, name),
        "skipped": sections.skipped_table(outputs.skipped),
        "folds": sections.folds_table(
            summary,
            metrics,
            (name(classes[-1]), {f"fold_{fold}": int(n) for fold, n in positives.items()}) if binary else None,
            [run["epoch_kept"] for run in runs] if lede["optimistic"] else None,
        ),
        "training": sections.training(runs, params["train"]["keep"]),
        "thresholds": None
        if outputs.thresholds is None
        else sections.threshold_table(outputs.thresholds, summary["threshold"], name(classes[-1]), name(classes[0])),
        "figures": figures,
        "mistakes": sections.mistake_cards(
            predictions,
            classes,
            images_dir,
            originals,
            manifest_csv,
            overlays,
            name,
        ),
        "heatmaps": sections.heatmap_cards(
            explained[[key not in mistakes for key in held_out_image(explained)]], images_dir, originals, name
        ),
    }


def render(context: Mapping[str, Any]) -> str:
    """The page for `context`; every value is HTML-escaped, and a name the context lacks is an error."""
    environment = jinja2.Environment(
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["repr"] = repr  # quoted labels in prose, as Python and the error messages quote them
    return environment.from_string(TEMPLATE.read_text(encoding="utf-8")).render(context)


def build_report(
    manifest_csv: Path,
    images_dir: Path,
    train_dir: Path,
    explain_dir: Path,
    aggregate_dir: Path,
    params: Mapping[str, Any],
    origin: Origin | None = None,
) -> str:
    """The report's HTML for the stage outputs and params.yaml's mapping; the same inputs give the same bytes.

    `origin` is where the outputs come from; by default it is looked up (git, DVC_EXP_NAME, MLflow) from the
    current directory, as the stage runs, the MLflow parent by the fold assignment the pooled predictions carry.
    """
    outputs = load_outputs(manifest_csv, train_dir, explain_dir, aggregate_dir, params["split"]["folds"])
    if origin is None:
        origin = find_origin(Params.from_mapping(params).recipe, outputs.predictions)
    return render(report_context(outputs, params, images_dir, manifest_csv, origin))
