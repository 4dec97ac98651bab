"""Render the cross-validation results as one self-contained HTML page (figures and thumbnails inlined)."""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
from collections.abc import Collection
from pathlib import Path
from string import Template
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure
from PIL import Image

from stages.classes import class_order, prob_column
from stages.errors import DataError, user_errors
from stages.files import write_text_atomic
from stages.imageops import output_name
from stages.params import load_params
from stages.tables import CALIBRATION_COLUMNS, HISTORY_COLUMNS, METRICS, RERUN, read_table

TEMPLATE = Path(__file__).with_name("report_template.html")
# The train stage's history.csv format (imported from stages.train, it would pull in torch).
MANIFEST_COLUMNS = ["original_name", "normalised_name", "label", "width", "height", "mode", "collision"]
HEADINGS = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced acc.",
    "precision": "Precision",
    "recall": "Recall",
    "f1": "F1",
    "roc_auc": "ROC-AUC",
}
THUMB_PX = 160
DPI = 110  # modest: a sharp figure on screen, a report of a few MB at most
CURVE_COLUMNS = 5  # folds per row of the training-curves figure
# parse_math off: a class label or name containing "$" is printed as is, not as TeX.
PLOT_STYLE = {"text.parse_math": False, "font.size": 9, "axes.spines.top": False, "axes.spines.right": False}
TRAIN_COLOUR, VAL_COLOUR, GREY = "#1f77b4", "#e8710a", "#9aa5b1"


class ParamsDumper(yaml.SafeDumper):
    """YAML laid out like params.yaml: mappings as blocks, lists inline ("background: [0, 0, 0]")."""


ParamsDumper.add_representer(
    list, lambda dumper, value: dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True)
)


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def num(value: float | None) -> str:
    """Three decimals; a metric that is undefined (missing, or NaN in a table) shows as a dash."""
    return "—" if value is None or math.isnan(value) else f"{value:.3f}"


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} not found; {RERUN}.") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err}); {RERUN}.") from None


def png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_png(fig: Figure) -> bytes:
    """PNG bytes of a figure; no "Software" chunk (it names the matplotlib version), so reruns match."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def thumbnail_png(path: Path) -> bytes:
    try:
        with Image.open(path) as image:
            thumb = image.convert("RGB")
    except OSError as err:
        raise DataError(f"{path}: cannot read this model input ({err}); {RERUN}.") from None
    thumb.thumbnail((THUMB_PX, THUMB_PX))
    buffer = io.BytesIO()
    thumb.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def confusion_figure(predictions: pd.DataFrame, classes: list[str]) -> Figure:
    # Rows actual, columns predicted, every class present even if never predicted: no sklearn import for one count.
    table = pd.crosstab(predictions["label"], predictions["predicted"])
    counts = table.reindex(index=classes, columns=classes, fill_value=0).to_numpy()
    side = 2.4 + 0.45 * len(classes)
    fig = Figure(figsize=(side + 0.4, side), layout="constrained")
    ax = fig.subplots()
    ax.imshow(counts, cmap="Blues", vmin=0)
    ticks = range(len(classes))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=classes, yticklabels=classes)
    ax.set(xlabel="predicted", ylabel="actual", title="Confusion matrix (pooled)")
    ax.spines[:].set_visible(False)
    for (row, col), count in np.ndenumerate(counts):
        colour = "white" if count > counts.max() / 2 else "#1f2933"
        ax.text(col, row, str(count), ha="center", va="center", color=colour, fontsize=11)
    return fig


def roc_figure(roc: pd.DataFrame, auc: float, positive: str) -> Figure:
    fig = Figure(figsize=(3.7, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color=GREY)
    ax.plot(roc["fpr"], roc["tpr"], lw=2, color=TRAIN_COLOUR)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal", xlabel="false positive rate", ylabel="true positive rate")
    ax.set_title(f"ROC of class {positive!r} (pooled), AUC {auc:.3f}")
    return fig


def calibration_figure(calibration: pd.DataFrame, summary: dict[str, float], label: str) -> Figure:
    """Reliability diagram: observed frequency against mean predicted probability per bin, sized by count."""
    fig = Figure(figsize=(3.7, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color=GREY)
    ax.plot(calibration["mean_predicted"], calibration["fraction_positive"], color=TRAIN_COLOUR, lw=1.5)
    sizes = 18 + 180 * calibration["count"] / max(1, calibration["count"].max())
    ax.scatter(calibration["mean_predicted"], calibration["fraction_positive"], s=sizes, color=TRAIN_COLOUR, zorder=3)
    ax.set(xlim=(0, 1), ylim=(-0.02, 1.02), aspect="equal", xlabel=f"mean predicted {label}",
           ylabel="observed frequency")
    ax.set_title(f"Calibration (pooled), ECE {summary['ece']:.3f}, Brier {summary['brier']:.3f}")
    return fig


def curves_figure(histories: list[pd.DataFrame], kept: list[int]) -> Figure:
    """Small multiples: per fold, loss above accuracy, train and validation, the kept epoch dotted."""
    columns = min(len(histories), CURVE_COLUMNS)
    blocks = math.ceil(len(histories) / columns)
    fig = Figure(figsize=(2.25 * columns + 0.4, 3.9 * blocks + 0.3), layout="constrained")
    axes = fig.subplots(2 * blocks, columns, squeeze=False)
    losses = np.concatenate([history[["train_loss", "val_loss"]].to_numpy().ravel() for history in histories])
    finite = losses[np.isfinite(losses)]
    # One loss scale for all folds, so they compare at a glance (None: matplotlib picks, e.g. all NaN).
    loss_top = 1.05 * finite.max() if finite.size else None
    for fold in range(len(histories), blocks * columns):  # empty slots of the last row
        block, column = divmod(fold, columns)
        axes[2 * block, column].set_visible(False)
        axes[2 * block + 1, column].set_visible(False)
    for fold, history in enumerate(histories):
        block, column = divmod(fold, columns)
        for row, (metric, top) in enumerate((("loss", loss_top), ("accuracy", 1.02))):
            ax = axes[2 * block + row, column]
            ax.plot(history["epoch"], history[f"train_{metric}"], color=TRAIN_COLOUR, label="train")
            ax.plot(history["epoch"], history[f"val_{metric}"], color=VAL_COLOUR, label="validation")
            ax.axvline(kept[fold], color=GREY, ls=":", lw=1.2, label="epoch kept")
            ax.set_ylim(0, top)
            ax.set_ylabel(metric if column == 0 else "")
        axes[2 * block, column].set_title(f"fold {fold}")
        axes[2 * block + 1, column].set_xlabel("epoch")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside upper center", ncols=3, frameon=False)
    return fig


def table(head: list[str], rows: list[list[object]], css: str = "", totals: int = 0,
          marked: Collection[int] = ()) -> str:
    """An HTML table of escaped cells; the last `totals` rows are styled as summary rows, `marked` rows stand out."""
    header = "".join(f"<th>{esc(cell)}</th>" for cell in head)
    body, first = [], len(rows) - totals
    for i, row in enumerate(rows):
        style = (' class="total first"' if i == first else ' class="total"' if i > first
                 else ' class="marked"' if i in marked else "")
        body.append(f"<tr{style}>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>")
    return f'<table class="{css}"><thead><tr>{header}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def data_section(manifest: pd.DataFrame) -> str:
    """Class counts, and the facts about the raw photos that explain surprises later."""
    counts = manifest["label"].value_counts()
    classes = [[label, counts[label], f"{counts[label] / len(manifest):.0%}"] for label in class_order(counts.index)]
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
    return table(["Class", "Images", "Share"], classes) + table(["Raw photos", ""], facts)


def skipped_section(skipped: pd.DataFrame) -> str:
    """The images the normalise stage left out (data.on_bad_image: skip), with the reason; "" if none."""
    if skipped.empty:
        return ""
    rows = [[row.original_name, row.label, row.skipped] for row in skipped.itertuples()]
    return (
        f"<h3>Skipped files ({len(rows)})</h3>"
        '<p class="note">Unusable images left out of training and evaluation (data.on_bad_image: skip).</p>'
        + table(["Original name", "Label", "Reason"], rows)
    )


def folds_section(summary: dict[str, Any], metrics: list[str]) -> str:
    rows = [
        [name.removeprefix("fold_"), fold["n_images"], *(num(fold.get(metric)) for metric in metrics)]
        for name, fold in summary["per_fold"].items()
    ]
    spread = [
        num(summary["mean"].get(metric)) + (f" ± {summary['std'][metric]:.3f}" if metric in summary["std"] else "")
        for metric in metrics
    ]
    rows.append(["mean ± std", "", *spread])
    rows.append(["pooled", summary["n_images"], *(num(summary["overall"].get(metric)) for metric in metrics)])
    return table(["Fold", "Images", *(HEADINGS[metric] for metric in metrics)], rows, totals=2)


def threshold_section(thresholds_csv: Path, chosen: float | None, positive: str) -> str:
    """Precision and recall of the positive class at several thresholds, the one in params marked."""
    if chosen is None:
        return '<p class="note">The decision threshold applies to two classes only: the most probable class wins.</p>'
    columns = ["threshold", "precision", "recall", "flagged", "missed", "false_alarms"]
    thresholds = read_table(thresholds_csv, columns, numeric=["threshold", "flagged", "missed", "false_alarms"])
    for column in ("precision", "recall"):  # empty where undefined: nothing flagged, or no positives
        thresholds[column] = [float(value) if value else math.nan for value in thresholds[column]]
    rows = [[f"{row.threshold:g}", num(row.precision), num(row.recall), f"{row.flagged:.0%}", int(row.missed),
             int(row.false_alarms)] for row in thresholds.itertuples()]
    marked = {i for i, value in enumerate(thresholds["threshold"]) if value == chosen}
    head = ["Threshold", "Precision", "Recall", "Flagged", f"Missed {positive}", "False alarms"]
    return table(head, rows, marked=marked)


def gallery(
    predictions: pd.DataFrame, classes: list[str], images_dir: Path, originals: dict[str, str], manifest_csv: Path
) -> str:
    """A card per misclassified image, surest mistakes first."""
    wrong = predictions[predictions["label"] != predictions["predicted"]].copy()
    if wrong.empty:
        return "<p>No image was misclassified.</p>"
    wrong["p_true"] = [row[prob_column(row["label"])] for _, row in wrong.iterrows()]
    binary = len(classes) == 2
    cards = []
    for _, row in wrong.sort_values(["p_true", "file"]).iterrows():
        if row["file"] not in originals:
            raise DataError(f"{manifest_csv} has no entry for {row['file']!r}, which was predicted; {RERUN}.")
        other = classes[-1] if binary else row["predicted"]
        cards.append(
            f'<figure class="card"><img src="{png_uri(thumbnail_png(images_dir / row["file"]))}" '
            f'alt="{esc(row["file"])}" width="{THUMB_PX}"><figcaption>'
            f'<div class="orig">{esc(originals[row["file"]])}</div>'
            f'<div class="file mono">{esc(row["file"])} · fold {esc(row["fold"])}</div>'
            f'<div>true <span class="good">{esc(row["label"])}</span> → predicted '
            f'<span class="bad">{esc(row["predicted"])}</span></div>'
            f"<div>P(true) {row['p_true']:.3f} · P({esc(other)}) {row[prob_column(other)]:.3f}</div>"
            "</figcaption></figure>"
        )
    return f'<div class="gallery">{"".join(cards)}</div>'


HEATMAP_COLUMNS = ["file", "label", "predicted", "explained", "correct", "heatmap"]


def heatmap_gallery(train_dir: Path, folds: int, images_dir: Path, originals: dict[str, str]) -> tuple[str, int]:
    """Cards pairing each explained image with its Grad-CAM overlay, mistakes first; the HTML and the count.

    The train stage explains every misclassified held-out image of its fold and a sample of the correct ones.
    """
    parts = []
    for fold in range(folds):
        folder = train_dir / f"fold_{fold}" / "heatmaps"
        part = read_table(folder / "heatmaps.csv", HEATMAP_COLUMNS)
        parts.append(part.assign(fold=fold, path=[folder / name for name in part["heatmap"]]))
    explained = pd.concat(parts, ignore_index=True)
    if explained.empty:
        return "<p>No image was explained (no mistakes, and train.explain_correct is 0).</p>", 0
    explained["is_correct"] = explained["correct"].str.lower() == "true"
    # Each map is scaled to its own peak: the probability beside it says how much the class was really seen.
    missing = {prob_column(c) for c in explained["explained"]} - set(explained.columns)
    if missing:
        raise DataError(f"{train_dir}/fold_*/heatmaps/heatmaps.csv lacks {sorted(missing)}; {RERUN}.")
    explained["p_explained"] = [row[prob_column(row["explained"])] for _, row in explained.iterrows()]
    cards = []
    for row in explained.sort_values(["is_correct", "fold", "file"]).itertuples():
        verdict = "good" if row.is_correct else "bad"
        cards.append(
            f'<figure class="card wide"><div class="pair">'
            f'<img src="{png_uri(thumbnail_png(images_dir / row.file))}" alt="{esc(row.file)}" width="{THUMB_PX}">'
            f'<img src="{png_uri(thumbnail_png(row.path))}" alt="heatmap of {esc(row.file)}" width="{THUMB_PX}">'
            f'</div><figcaption><div class="orig">{esc(originals.get(row.file, row.file))}</div>'
            f'<div class="file mono">{esc(row.file)} · fold {row.fold}</div>'
            f'<div>true <span class="good">{esc(row.label)}</span> → predicted '
            f'<span class="{verdict}">{esc(row.predicted)}</span></div>'
            f"<div>heat of class {esc(row.explained)}, P({esc(row.explained)}) "
            f"{float(row.p_explained):.3f}</div></figcaption></figure>"
        )
    return f'<div class="gallery wide">{"".join(cards)}</div>', len(cards)


def figures_section(
    predictions: pd.DataFrame,
    classes: list[str],
    overall: dict[str, float],
    roc_csv: Path,
    calibration_csv: Path,
    calibration_summary: dict[str, float],
    histories: list[pd.DataFrame],
    runs: list[dict[str, Any]],
) -> tuple[str, str]:
    """HTML of the confusion matrix, ROC curve and calibration plot, and of the training curves."""

    def img(fig: Figure, alt: str) -> str:
        return f'<figure><img src="{png_uri(figure_png(fig))}" alt="{alt}"></figure>'

    with matplotlib.rc_context(PLOT_STYLE):
        figures = img(confusion_figure(predictions, classes), "confusion matrix")
        if len(classes) == 2:
            roc = read_table(roc_csv, ["fpr", "tpr"], numeric=["fpr", "tpr"])
            figures += img(roc_figure(roc, overall["roc_auc"], classes[-1]), "ROC curve")
        else:
            figures += '<p class="note">ROC curve: not applicable with more than two classes.</p>'
        calibration = read_table(calibration_csv, CALIBRATION_COLUMNS, numeric=CALIBRATION_COLUMNS)
        label = f"P({classes[-1]})" if len(classes) == 2 else "top-class probability"
        figures += img(calibration_figure(calibration, calibration_summary, label), "calibration plot")
        curves = img(curves_figure(histories, [run["epoch_kept"] for run in runs]), "training curves")
    return figures, curves


def headline(summary: dict[str, Any], runs: list[dict[str, Any]], params: dict[str, Any]) -> str:
    """One sentence: the pooled scores, the data, the model and the exact weights it started from."""
    overall = summary["overall"]
    weights = sorted({(run["weights"]["name"], run["weights"]["sha256"]) for run in runs}, key=str)
    weights_text = "; ".join(name + (f", sha256 {sha[:12]}" if sha else "") for name, sha in weights)
    roc_text = f", ROC-AUC {num(overall['roc_auc'])}" if "roc_auc" in overall else ""
    return (
        f"Pooled out-of-fold accuracy {num(overall['accuracy'])}, balanced accuracy "
        f"{num(overall['balanced_accuracy'])}{roc_text} on {summary['n_images']} images, "
        f"{len(runs)}-fold cross-validation. Model {params['model']}, weights: {weights_text}."
    )


def build_report(
    manifest_csv: Path, images_dir: Path, train_dir: Path, aggregate_dir: Path, params: dict[str, Any]
) -> str:
    """The report's HTML; the same inputs give the same bytes."""
    folds = params["split"]["folds"]
    summary = read_json(aggregate_dir / "metrics.json")
    expected = [f"fold_{fold}" for fold in range(folds)]
    if list(summary.get("per_fold", {})) != expected:
        raise DataError(
            f"{aggregate_dir / 'metrics.json'} covers {list(summary.get('per_fold', {}))}, "
            f"but split.folds is {folds}; {RERUN}."
        )
    classes = summary["classes"]
    binary = len(classes) == 2
    probs = [prob_column(label) for label in classes]
    predictions = read_table(
        aggregate_dir / "predictions.csv", ["file", "label", "fold", "predicted", *probs], numeric=probs
    )
    manifest = read_table(manifest_csv, MANIFEST_COLUMNS)
    if "skipped" not in manifest.columns:
        manifest = manifest.assign(skipped="")
    skipped = manifest[manifest["skipped"] != ""]
    manifest = manifest[manifest["skipped"] == ""].copy()
    for column in ("width", "height"):
        values = pd.to_numeric(manifest[column], errors="coerce")
        if values.isna().any():
            raise DataError(f"{manifest_csv}: column {column!r} holds a non-number for a kept image; {RERUN}.")
        manifest[column] = values.astype(int)
    runs = [read_json(train_dir / f"fold_{fold}" / "metrics.json") for fold in range(folds)]
    histories = [
        read_table(train_dir / f"fold_{fold}" / "history.csv", HISTORY_COLUMNS, numeric=HISTORY_COLUMNS)
        for fold in range(folds)
    ]
    metrics = list(METRICS) if binary else [metric for metric in METRICS if metric != "roc_auc"]
    overall = summary["overall"]

    figures, curves = figures_section(predictions, classes, overall, aggregate_dir / "roc.csv",
                                      aggregate_dir / "calibration.csv", summary["calibration"], histories, runs)
    tiles = [(HEADINGS[metric], num(overall.get(metric))) for metric in ("accuracy", "balanced_accuracy")]
    tiles += [("ROC-AUC", num(overall["roc_auc"]))] if "roc_auc" in overall else []
    tiles += [("Images", summary["n_images"]), ("Folds", folds)]
    originals = {output_name(row.normalised_name): row.original_name for row in manifest.itertuples()}
    heatmaps, n_heatmaps = heatmap_gallery(train_dir, folds, images_dir, originals)
    wrong = int((predictions["label"] != predictions["predicted"]).sum())
    minutes = sum(run["seconds"] for run in runs) / 60
    devices = ", ".join(sorted({str(run["device"]) for run in runs}))
    scores = (
        f"precision, recall and F1 of class {classes[-1]!r}, ROC-AUC of its probability"
        if binary
        else f"precision, recall and F1 macro-averaged over {len(classes)} classes"
    )
    return Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        summary=esc(headline(summary, runs, params)),
        tiles="".join(
            f'<div class="tile"><b>{esc(value)}</b><span>{esc(label)}</span></div>' for label, value in tiles
        ),
        params=esc(yaml.dump(params, Dumper=ParamsDumper, sort_keys=False, allow_unicode=True)),
        data=data_section(manifest),
        skipped=skipped_section(skipped),
        folds_note=esc(
            f"Each fold's model is scored on the images it never saw; {scores}. "
            f"Mean ± sample standard deviation over folds (a metric undefined on a fold, shown as —, is left out); "
            f"pooled scores all out-of-fold predictions at once. Trained on {devices}, "
            f"{minutes:.1f} min in all, keeping the {params['train']['keep']} epoch."
        ),
        folds=folds_section(summary, metrics),
        figures=figures,
        curves=curves,
        n_wrong=wrong,
        gallery_note=esc(
            "The padded model input of each, least confident in the true class first; "
            "P(true) is the predicted probability of the true class."
        ),
        gallery=gallery(predictions, classes, images_dir, originals, manifest_csv),
        thresholds=threshold_section(aggregate_dir / "thresholds.csv", summary["threshold"], classes[-1]),
        threshold_note=esc(
            f"Out-of-fold precision and recall of class {classes[-1]!r} when it is predicted at or above each "
            "threshold; flagged is the share of images called positive. The marked row is predict.threshold in "
            "params.yaml, which every metric above and `python -m stages.predict` use. A burr screen that must "
            "miss few burrs can lower it."
        ) if binary else "",
        n_heatmaps=n_heatmaps,
        heatmaps_note=esc(
            "Grad-CAM of each fold's model on its held-out images: every image it got wrong and a sample it got "
            f"right (train.explain_correct). Left the padded model input, right the heat of class "
            f"{classes[-1] if binary else 'predicted'}: red regions raised that class's score most."
        ),
        heatmaps=heatmaps,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("manifest_csv", type=Path, help="data/interim/manifest.csv")
    parser.add_argument("images_dir", type=Path, help="the padded, resized model inputs")
    parser.add_argument("train_dir", type=Path, help="folder holding fold_<k>/history.csv and metrics.json")
    parser.add_argument("aggregate_dir", type=Path, help="the aggregate stage's output folder")
    parser.add_argument("report_html", type=Path, help="where the report goes")
    args = parser.parse_args()
    with user_errors():
        params = load_params()
        page = build_report(args.manifest_csv, args.images_dir, args.train_dir, args.aggregate_dir, params)
        write_text_atomic(args.report_html, page)
    print(f"report: {args.report_html} ({len(page.encode()) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
