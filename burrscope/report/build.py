"""The report: the stage outputs (inputs.py) rendered through template.html into one self-contained page.

`build_report` is the whole job; `load_outputs`, `report_context` and `render` are its steps. To add to the
report, give `report_context` another key, made by a small function in `sections` (plain data, no HTML), and
place it in a block of the template.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
import pandas as pd

from burrscope.data.naming import output_name
from burrscope.params import Params
from burrscope.report import lede, sections, suspects
from burrscope.report.figures import figure_uris
from burrscope.report.inputs import ReportInputs, StageOutputs, load_outputs
from burrscope.report.origin import Origin, find_origin
from burrscope.tables import METRICS

# Read beside this module (not through a Jinja loader), so the code graph counts it as the report stage's code.
TEMPLATE = Path(__file__).with_name("template.html")


def held_out_image(table: pd.DataFrame) -> list[tuple[str, str]]:
    """(fold, file) of each row: the held-out image it is about, in the predictions and heatmaps tables alike."""
    return list(zip(table["fold"].astype(str), table["file"], strict=True))


def scores_context(outputs: StageOutputs, params: Mapping[str, Any], name: sections.Namer) -> dict[str, Any]:
    """The first screen and the tables: headline, tiles, params, data, folds, training, thresholds."""
    summary, classes, runs, predictions = outputs.summary, outputs.classes, outputs.runs, outputs.predictions
    binary = len(classes) == 2
    metrics = [metric for metric in METRICS if binary or metric != "roc_auc"]
    first_screen = lede.lede(summary, runs, params["model"])
    per_class = predictions["label"].value_counts()
    positives = predictions.loc[predictions["label"] == classes[-1], "fold"].astype(str).value_counts()
    return {
        "classes": classes,
        "binary": binary,
        "positive": name(classes[-1]),
        "negative": name(classes[0]),
        "threshold": summary["threshold"],
        "headline": first_screen,
        "tiles": lede.tiles(summary, lede.count(predictions, classes), classes, name),
        "sample": ", ".join(f"{per_class.get(label, 0)} {name(label)}" for label in classes),
        "held_out": [(i, run["n_train"], run["n_val"]) for i, run in enumerate(runs)],
        "params": sections.params_text(params),
        "data": sections.data_tables(outputs.manifest, name),
        "skipped": sections.skipped_table(outputs.skipped),
        "folds": sections.folds_table(
            summary,
            metrics,
            positives=(name(classes[-1]), {f"fold_{fold}": int(n) for fold, n in positives.items()})
            if binary
            else None,
            best_epochs=[run["epoch_kept"] for run in runs] if first_screen["optimistic"] else None,
        ),
        "training": sections.training(runs, params["train"]["keep"]),
        "thresholds": None
        if outputs.thresholds is None
        else sections.threshold_table(outputs.thresholds, summary["threshold"], name(classes[-1]), name(classes[0])),
    }


def gallery_context(outputs: StageOutputs, inputs: ReportInputs, name: sections.Namer) -> dict[str, Any]:
    """The pictures: every mistake beside its heatmap, then the other explained images."""
    predictions, explained = outputs.predictions, outputs.explained
    originals = {output_name(row.normalised_name): row.original_name for row in outputs.manifest.itertuples()}
    overlays = dict(zip(held_out_image(explained), explained["path"], strict=True))
    # Each mistake is shown once, beside its heatmap; the gallery after it shows the other explained images.
    mistakes = set(held_out_image(predictions[predictions["label"] != predictions["predicted"]]))
    return {
        "mistakes": sections.mistake_cards(
            predictions, outputs.classes, inputs, originals=originals, heatmaps=overlays, name=name
        ),
        "heatmaps": sections.heatmap_cards(
            explained[[key not in mistakes for key in held_out_image(explained)]], inputs.images_dir, originals, name
        ),
    }


def report_context(
    outputs: StageOutputs, params: Mapping[str, Any], inputs: ReportInputs, origin: Origin
) -> dict[str, Any]:
    """The template's variables, one per section, each plain data (see `sections` and `lede` for the shapes)."""
    name = Params.from_mapping(params).data.class_name
    return {
        "origin": origin,
        **scores_context(outputs, params, name),
        "figures": figure_uris(outputs, [name(label) for label in outputs.classes]),
        "more_photos": outputs.verdict["sentence"],
        **gallery_context(outputs, inputs, name),
        "audit": suspects.audit_section(outputs, inputs, params, name),
    }


def code_spans(text: str) -> markupsafe.Markup:
    """`text`, escaped, with each `backquoted` span (a command in a sentence made for the terminal too) as code."""
    return markupsafe.Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(markupsafe.escape(text))))


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
    environment.filters["code"] = code_spans
    return environment.from_string(TEMPLATE.read_text(encoding="utf-8")).render(context)


def build_report(inputs: ReportInputs, params: Mapping[str, Any], origin: Origin | None = None) -> str:
    """The report's HTML for the stage outputs and params.yaml's mapping; the same inputs give the same bytes.

    `origin` is where the outputs come from; by default it is looked up (git, DVC_EXP_NAME, MLflow) from the
    current directory, as the stage runs, the MLflow parent by the fold assignment the pooled predictions carry.
    """
    outputs = load_outputs(inputs, params["split"]["folds"])
    if origin is None:
        origin = find_origin(Params.from_mapping(params), outputs.predictions)
    return render(report_context(outputs, params, inputs, origin))
