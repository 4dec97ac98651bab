"""The report's sections as plain data for the template: strings, lists and dicts, never HTML.

Every value ends up in the page through the template's autoescaping, so labels and file names may hold any
character. Numbers are formatted here, once, so the template only places text.

A table is a dict: `head`, the column headings, and `rows`, each a dict of `cells` (strings) and `style`: "" or
one of the template's row classes ("marked", "total", "total first"). Classes are shown by name (a `Namer`, from
params data.class_names); the tables and figures the report reads keep the labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from burrscope.classes import class_order, prob_column
from burrscope.errors import DataError
from burrscope.report.figures import image_uri
from burrscope.report.inputs import ReportInputs
from burrscope.tables import METRICS, RERUN

Table = dict[str, Any]
Card = dict[str, Any]
Namer = Callable[[str], str]  # a label -> what the report calls it


class ParamsDumper(yaml.SafeDumper):
    """YAML laid out like params.yaml: mappings as blocks, lists inline ("background: [0, 0, 0]")."""


ParamsDumper.add_representer(
    list, lambda dumper, value: dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True)
)


def num(value: float | None) -> str:
    """Three decimals; a metric that is undefined (missing, or NaN in a table) shows as a dash."""
    return "—" if value is None or math.isnan(value) else f"{value:.3f}"


def table(
    head: Sequence[object], rows: Sequence[Sequence[object]], totals: int = 0, marked: Collection[int] = ()
) -> Table:
    """A table of text cells; the last `totals` rows are summary rows, the rows at `marked` stand out."""
    first = len(rows) - totals

    def style(i: int) -> str:
        if i >= first:
            return "total first" if i == first else "total"
        return "marked" if i in marked else ""

    return {
        "head": [str(cell) for cell in head],
        "rows": [{"cells": [str(cell) for cell in row], "style": style(i)} for i, row in enumerate(rows)],
    }


def params_text(params: Mapping[str, Any]) -> str:
    """params.yaml as this run read it, in its own layout and order."""
    return yaml.dump(dict(params), Dumper=ParamsDumper, sort_keys=False, allow_unicode=True)


def data_tables(manifest: pd.DataFrame, name: Namer) -> list[Table]:
    """Class counts, and the facts about the raw photos that explain surprises later (kept images only)."""
    counts = manifest["label"].value_counts()
    classes = [
        [name(label), label, counts[label], f"{counts[label] / len(manifest):.0%}"]
        for label in class_order(counts.index)
    ]
    stems = manifest["normalised_name"].map(lambda name: Path(name).stem)
    # `collision` names the contested stem for every member of a group; all but one got a suffix.
    renamed = int(((manifest["collision"] != "") & (stems != manifest["collision"])).sum())
    modes = manifest["mode"].value_counts()
    facts = [
        ["Images", len(manifest)],
        ["Width (px)", f"{manifest['width'].min()} to {manifest['width'].max()}"],
        ["Height (px)", f"{manifest['height'].min()} to {manifest['height'].max()}"],
        ["Colour modes", ", ".join(f"{mode} {modes[mode]}" for mode in sorted(modes.index))],
        ["Renamed because names collided", renamed],
        ["Non-ASCII original names", sum(not name.isascii() for name in manifest["original_name"])],
    ]
    if "group" in manifest.columns and (manifest["group"] != "").any():
        facts.append(["Groups (kept within one fold)", manifest.loc[manifest["group"] != "", "group"].nunique()])
    return [table(["Class", "Label", "Images", "Share"], classes), table(["Raw photos", ""], facts)]


def skipped_table(skipped: pd.DataFrame) -> Table | None:
    """The images the normalise stage left out (data.on_bad_image: skip), with the reason; None if none."""
    if skipped.empty:
        return None
    rows = [[row.original_name, row.label, row.skipped] for row in skipped.itertuples()]
    return table(["Original name", "Label", "Reason"], rows)


def folds_table(
    summary: Mapping[str, Any],
    metrics: Sequence[str],
    positives: tuple[str, Mapping[str, int]] | None = None,
    best_epochs: Sequence[int] | None = None,
) -> Table:
    """Per fold, then mean ± sample std over folds, then the pooled scores.

    Beside the images each row rests on: `positives`, (the positive class's name, its count per fold name), for the
    n behind recall; `best_epochs`, each fold's kept epoch when it was picked on the fold's own held-out images.
    """
    folds = list(summary["per_fold"])
    extra: list[tuple[str, list[object], object]] = []  # (heading, a cell per fold, the pooled row's cell)
    if positives is not None:
        positive, counts = positives
        extra.append((f"{positive} images", [counts.get(fold, 0) for fold in folds], sum(counts.values())))
    if best_epochs is not None:
        extra.append(("Epoch picked on held-out", list(best_epochs), ""))
    rows: list[list[object]] = [
        [
            fold.removeprefix("fold_"),
            summary["per_fold"][fold]["n_images"],
            *(cells[i] for _, cells, _ in extra),
            *(num(summary["per_fold"][fold].get(metric)) for metric in metrics),
        ]
        for i, fold in enumerate(folds)
    ]
    spread = [
        num(summary["mean"].get(metric)) + (f" ± {summary['std'][metric]:.3f}" if metric in summary["std"] else "")
        for metric in metrics
    ]
    rows.append(["mean ± std", "", *([""] * len(extra)), *spread])
    pooled = [num(summary["overall"].get(metric)) for metric in metrics]
    rows.append(["pooled", summary["n_images"], *(cell for _, _, cell in extra), *pooled])
    head = ["Fold", "Images", *(heading for heading, _, _ in extra), *(METRICS[metric] for metric in metrics)]
    return table(head, rows, totals=2)


def training(runs: Sequence[Mapping[str, Any]], keep: str) -> dict[str, str]:
    """Where the folds trained, and which epoch each kept (how long they took is in MLflow and logs/: a rerun of the
    same inputs gives the same report)."""
    return {"devices": ", ".join(sorted({str(run["device"]) for run in runs})), "keep": keep}


def threshold_table(thresholds: pd.DataFrame, chosen: float, positive: str, negative: str) -> Table:
    """Precision and recall of the positive class at each threshold, the row of `chosen` marked."""
    rows = [
        [
            f"{row.threshold:g}",
            num(row.precision),
            num(row.recall),
            f"{row.flagged:.0%}",
            int(row.missed),
            int(row.false_alarms),
        ]
        for row in thresholds.itertuples()
    ]
    marked = {i for i, value in enumerate(thresholds["threshold"]) if value == chosen}
    return table(
        ["Threshold", "Precision", "Recall", "Flagged", f"{positive} missed", f"{negative} flagged"],
        rows,
        marked=marked,
    )


def mistake_cards(
    predictions: pd.DataFrame,
    classes: list[str],
    inputs: ReportInputs,
    *,
    originals: Mapping[str, str],
    heatmaps: Mapping[tuple[str, str], Path],
    name: Namer,
) -> list[Card]:
    """A card per misclassified image, least confident in the true class first.

    `heatmaps` maps (fold, file) to the explain stage's overlay of that held-out image. Each card: anchor (its
    id in the page), image and heatmap (full-size data URIs; heatmap None when the explain stage, which picks
    mistakes by the fold's most probable class, did not pick it), file, original, fold, label, predicted, p_true,
    and p_other, the probability of `other`: the positive class (two classes) or the predicted one.
    """
    wrong = predictions[predictions["label"] != predictions["predicted"]].copy()
    wrong["p_true"] = [row[prob_column(row["label"])] for _, row in wrong.iterrows()]
    cards = []
    for i, (_, row) in enumerate(wrong.sort_values(["p_true", "file"]).iterrows(), start=1):
        if row["file"] not in originals:
            raise DataError(f"{inputs.manifest_csv} has no entry for {row['file']!r}, which was predicted; {RERUN}.")
        other = classes[-1] if len(classes) == 2 else row["predicted"]
        heatmap = heatmaps.get((str(row["fold"]), row["file"]))
        cards.append(
            {
                "anchor": f"mistake-{i}",
                "image": image_uri(inputs.images_dir / row["file"]),
                "heatmap": None if heatmap is None else image_uri(heatmap),
                "file": row["file"],
                "original": originals[row["file"]],
                "fold": str(row["fold"]),
                "label": name(row["label"]),
                "predicted": name(row["predicted"]),
                "p_true": f"{row['p_true']:.3f}",
                "other": name(other),
                "p_other": f"{row[prob_column(other)]:.3f}",
            }
        )
    return cards


def heatmap_cards(explained: pd.DataFrame, images_dir: Path, originals: Mapping[str, str], name: Namer) -> list[Card]:
    """A card per explained image, by fold and file.

    `explained` is the explain stage's heatmaps.csv rows (of every fold, less any the mistake cards show), with
    `fold`, `path` (of the overlay), `is_correct` and `p_explained` added. Each card: anchor, image and heatmap
    (full-size data URIs), file, original, fold, label, predicted, correct (bool), explained (the class whose heat
    is shown) and p_explained.
    """
    return [
        {
            "anchor": f"heatmap-{i}",
            "image": image_uri(images_dir / row.file),
            "heatmap": image_uri(row.path),
            "file": row.file,
            "original": originals.get(row.file, row.file),
            "fold": str(row.fold),
            "label": name(row.label),
            "predicted": name(row.predicted),
            "correct": bool(row.is_correct),
            "explained": name(row.explained),
            "p_explained": f"{float(row.p_explained):.3f}",
        }
        for i, row in enumerate(explained.sort_values(["is_correct", "fold", "file"]).itertuples(), start=1)
    ]
