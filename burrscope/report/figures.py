"""The report's pictures as PNG data URIs: the matplotlib figures, and image files at full size.

Every PNG is byte-for-byte reproducible: figures are saved without the "Software" chunk (it names the matplotlib
version), images are re-encoded from pixels alone. Classes appear under the names the report gives them.
"""

from __future__ import annotations

import base64
import io
import itertools
import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from burrscope.errors import DataError
from burrscope.report.inputs import StageOutputs
from burrscope.tables import RERUN

DPI = 110  # modest: a sharp figure on screen, a report of a few MB at most
CURVE_COLUMNS = 5  # folds per row of the training-curves figure
# parse_math off: a class label or name containing "$" is printed as is, not as TeX.
PLOT_STYLE = {"text.parse_math": False, "font.size": 9, "axes.spines.top": False, "axes.spines.right": False}
TRAIN_COLOUR, VAL_COLOUR, GREY = "#1f77b4", "#e8710a", "#9aa5b1"
UNIT_MARGIN = (-0.04, 1.04)  # axes of a probability or rate: the points at 0 and 1 show whole, off the frame


def png_uri(png: bytes) -> str:
    """A data URI, so the page needs no file beside it."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_uri(fig: Figure) -> str:
    """The figure as a PNG data URI; no "Software" chunk, so reruns match."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return png_uri(buffer.getvalue())


def image_uri(path: Path) -> str:
    """The image at `path`, as RGB at its full size (a burr is a few pixels wide), as a PNG data URI; DataError
    if unreadable."""
    try:
        with Image.open(path) as image:
            pixels = image.convert("RGB")
    except OSError as err:
        raise DataError(f"{path}: cannot read this image ({err}); {RERUN}.") from None
    buffer = io.BytesIO()
    pixels.save(buffer, format="PNG", optimize=True)
    return png_uri(buffer.getvalue())


def confusion_figure(predictions: pd.DataFrame, classes: list[str], names: list[str]) -> Figure:
    # Rows actual, columns predicted, every class present even if never predicted: no sklearn import for one count.
    table = pd.crosstab(predictions["label"], predictions["predicted"])
    counts = table.reindex(index=classes, columns=classes, fill_value=0).to_numpy()
    side = 2.4 + 0.45 * len(classes)
    fig = Figure(figsize=(side + 0.4, side), layout="constrained")
    ax = fig.subplots()
    ax.imshow(counts, cmap="Blues", vmin=0)
    ticks = range(len(classes))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=names, yticklabels=names)
    ax.set(xlabel="predicted", ylabel="actual", title="Confusion matrix (pooled)")
    ax.spines[:].set_visible(False)
    for (row, col), count in np.ndenumerate(counts):
        colour = "white" if count > counts.max() / 2 else "#1f2933"
        ax.text(col, row, str(count), ha="center", va="center", color=colour, fontsize=11)
    return fig


def roc_figure(roc: pd.DataFrame, auc: float, positive: str) -> Figure:
    fig = Figure(figsize=(3.7, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color=GREY, label="chance")
    # A good model's curve hugs the left and top edges: a margin keeps it off the frame.
    ax.plot(roc["fpr"], roc["tpr"], lw=2, color=TRAIN_COLOUR, clip_on=False, label="pooled out-of-fold")
    ax.set(
        xlim=UNIT_MARGIN, ylim=UNIT_MARGIN, aspect="equal", xlabel="false positive rate", ylabel="true positive rate"
    )
    ax.legend(loc="lower right", frameon=False)
    ax.set_title(f"ROC of class {positive!r} (pooled), AUC {auc:.3f}")
    return fig


def adjacent_bins(calibration: pd.DataFrame) -> list[pd.DataFrame]:
    """The calibration table's rows in runs of consecutive bins (calibration.csv lists only non-empty bins)."""
    starts = calibration["bin_lower"].to_numpy()
    ends = calibration["bin_upper"].to_numpy()
    breaks = [0, *(i for i in range(1, len(calibration)) if not np.isclose(starts[i], ends[i - 1])), len(calibration)]
    return [calibration.iloc[a:b] for a, b in itertools.pairwise(breaks) if b > a]


def calibration_figure(calibration: pd.DataFrame, summary: dict[str, float], label: str) -> Figure:
    """Reliability diagram: observed frequency against mean predicted probability per bin, sized by count."""
    fig = Figure(figsize=(3.7, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color=GREY)
    # Joined only between neighbouring bins: a line across empty bins would claim values nobody observed.
    for run in adjacent_bins(calibration):
        ax.plot(run["mean_predicted"], run["fraction_positive"], color=TRAIN_COLOUR, lw=1.5)
    sizes = 18 + 180 * calibration["count"] / max(1, calibration["count"].max())
    # A well-calibrated model's surest bin sits at (1, 1), on the corner: room around the square and no clipping,
    # so its dot shows whole.
    ax.scatter(
        calibration["mean_predicted"],
        calibration["fraction_positive"],
        s=sizes,
        color=TRAIN_COLOUR,
        zorder=3,
        clip_on=False,
    )
    ax.set(
        xlim=UNIT_MARGIN,
        ylim=UNIT_MARGIN,
        aspect="equal",
        xlabel=f"mean predicted {label}",
        ylabel="observed frequency",
    )
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


def learning_curve_figure(curve: pd.DataFrame) -> Figure:
    """Balanced accuracy against training photos per fold, each point with its bootstrap interval."""
    fig = Figure(figsize=(4.6, 3.2), layout="constrained")
    ax = fig.subplots()
    errors = [curve["balanced_accuracy"] - curve["low"], curve["high"] - curve["balanced_accuracy"]]
    ax.errorbar(
        curve["train_images"], curve["balanced_accuracy"], yerr=errors, color=TRAIN_COLOUR, marker="o", capsize=4
    )
    for row in curve.itertuples():
        ax.annotate(f"{row.fraction:g}", (row.train_images, row.high), textcoords="offset points", xytext=(0, 4),
                    ha="center", fontsize=7, color=GREY)  # fmt: skip
    ax.set(
        xlim=(0, 1.05 * curve["train_images"].max()),
        ylim=(min(0.5, curve["low"].min() - 0.02), 1.02),
        xlabel="training photos per fold (labels: share of the full set)",
        ylabel="balanced accuracy (pooled)",
    )
    ax.set_title("Learning curve, 95 % bootstrap intervals")
    return fig


def figure_uris(outputs: StageOutputs, names: list[str]) -> dict[str, str | None]:
    """Data URIs of the figures: confusion, roc (None unless there are two classes), calibration, curves,
    learning_curve (None without curve.fractions).

    `names` are what the report calls the classes, in their order.
    """
    classes, summary = outputs.classes, outputs.summary
    probability = f"P({names[-1]})" if len(classes) == 2 else "top-class probability"
    with matplotlib.rc_context(PLOT_STYLE):
        roc = outputs.roc
        return {
            "confusion": figure_uri(confusion_figure(outputs.predictions, classes, names)),
            "roc": None if roc is None else figure_uri(roc_figure(roc, summary["overall"]["roc_auc"], names[-1])),
            "calibration": figure_uri(calibration_figure(outputs.calibration, summary["calibration"], probability)),
            "curves": figure_uri(curves_figure(outputs.histories, [run["epoch_kept"] for run in outputs.runs])),
            "learning_curve": figure_uri(learning_curve_figure(outputs.curve)) if len(outputs.curve) > 1 else None,
        }
