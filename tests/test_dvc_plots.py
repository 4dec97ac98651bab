"""What DVC's views are given: dvc.yaml's plots and metric, the custom plot template and the offline plots page."""

from __future__ import annotations

import json
import re
import runpy
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from configobj import ConfigObj
from dvc_render.vega_templates import TEMPLATES
from helpers import REPO, TOY, fake_training, run_aggregate

from burrscope.evaluation.pooled import load_histories
from burrscope.tables import CURVE, CURVE_COLUMNS, POOLED_HISTORY_COLUMNS

DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())
PLOTS_DIR = REPO / ".dvc" / "plots"
# (template, x, y) of every plot, each template the project's own (.dvc/plots/): none smooths the points, as DVC's
# default, `linear`, does.
INTENDED = {
    "results/aggregate/confusion.csv": ("confusion_counts", "predicted", "actual"),
    "results/aggregate/roc.csv": ("roc", "fpr", "tpr"),
    "results/aggregate/thresholds.csv": ("precision_recall", "threshold", ["precision", "recall"]),
    "results/aggregate/calibration.csv": ("reliability", "mean_predicted", "fraction_positive"),
    "results/aggregate/history.csv": ("per_fold", "epoch", "val_loss"),
    "results/curve/curve.csv": ("learning_curve", "train_images", "balanced_accuracy"),
}


def plot_definitions() -> dict[str, dict[str, Any]]:
    return {plot_id: props for entry in DVC_YAML["plots"] for plot_id, props in entry.items()}


def stage_definitions() -> list[dict[str, Any]]:
    """Every stage's body, a foreach stage's `do` included."""
    return [stage.get("do", stage) for stage in DVC_YAML["stages"].values()]


def test_every_plot_has_its_intended_template_axes_and_a_title() -> None:
    plots = plot_definitions()
    assert {plot_id: (props["template"], props["x"], props["y"]) for plot_id, props in plots.items()} == INTENDED
    assert all(len(props["title"]) > 20 for props in plots.values())  # a sentence, not the default file path


def test_every_plot_axis_is_a_column_of_the_table_its_stage_writes(tmp_path: Path) -> None:
    run_aggregate(tmp_path, TOY)
    _, train_dir = fake_training(tmp_path / "train", TOY)
    load_histories(train_dir, 2).to_csv(tmp_path / "out" / "history.csv", index=False)  # as the stage does
    for plot_id, (_, x, y) in INTENDED.items():
        columns = (
            set(CURVE_COLUMNS) if plot_id.endswith(CURVE) else set(pd.read_csv(tmp_path / "out" / Path(plot_id).name))
        )
        assert {x, *([y] if isinstance(y, str) else y)} <= columns, plot_id


def template(name: str) -> dict[str, Any]:
    return json.loads((PLOTS_DIR / f"{name}.json").read_text())


def layers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The spec's layers, or the spec itself when it has none (a facet's inner spec included)."""
    inner = spec.get("spec", spec)
    return inner.get("layer", [inner])


def test_every_template_is_the_projects_own_and_draws_every_point_unsmoothed() -> None:
    built_in = {template.DEFAULT_NAME for template in TEMPLATES}
    custom = {props["template"] for props in plot_definitions().values()}
    assert not custom & built_in
    for name in custom:
        text = json.dumps(template(name))
        assert template(name)["data"] == {"values": "<DVC_METRIC_DATA>"}, name  # DVC refuses a template without it
        assert "<DVC_METRIC_X>" in text and "<DVC_METRIC_Y>" in text, name
        assert "loess" not in text and "regression" not in text, name
    for name in ("roc", "precision_recall", "per_fold"):  # a point per row: one epoch or one threshold still shows
        assert layers(template(name))[-1]["mark"]["point"] is True, name


def test_the_confusion_matrix_shows_its_counts_without_a_click() -> None:
    (cells, counts) = layers(template("confusion_counts"))
    assert cells["mark"]["type"] == "rect" and counts["mark"]["type"] == "text"
    assert counts["encoding"]["text"]["field"] == "images" and "condition" not in counts["encoding"]["text"]
    assert "params" not in template("confusion_counts")  # no "showValues" box to tick


def test_the_learning_curve_draws_each_points_interval() -> None:
    interval, points = layers(template("learning_curve"))
    assert interval["mark"]["type"] == "rule" and interval["encoding"]["y"]["field"] == "low"
    assert interval["encoding"]["y2"]["field"] == "high" and {"low", "high"} <= set(CURVE_COLUMNS)
    assert points["mark"]["point"]["filled"] is True  # a curve of one point (no curve.fractions) still shows it


def test_roc_and_calibration_sit_beside_their_diagonal_on_axes_with_a_margin() -> None:
    for name in ("roc", "reliability"):
        diagonal, points = layers(template(name))
        assert diagonal["data"]["values"][0] != diagonal["data"]["values"][-1] and "strokeDash" in diagonal["mark"]
        for axis in ("x", "y"):
            low, high = points["encoding"][axis]["scale"]["domain"]
            assert low < 0 and high > 1, (name, axis)  # a curve along an edge shows off the frame
    assert template("reliability")["layer"][1]["mark"]["type"] == "circle"  # dots: never a line across empty bins


def test_precision_and_recall_share_a_0_to_1_axis_in_two_colours() -> None:
    encoding = template("precision_recall")["encoding"]
    low, high = encoding["y"]["scale"]["domain"]
    assert low <= 0 and high >= 1
    colours = encoding["color"]["scale"]
    assert colours["domain"] == ["precision", "recall"] and len(set(colours["range"])) == 2


def test_the_fold_template_draws_a_line_per_fold_of_the_pooled_history() -> None:
    template = json.loads((PLOTS_DIR / "per_fold.json").read_text())
    assert template["encoding"]["color"]["field"] == "fold" and "fold" in POOLED_HISTORY_COLUMNS


def test_no_stage_declares_plots_and_the_metrics_are_the_headline_and_the_audit_counts() -> None:
    stages = stage_definitions()
    assert not [stage for stage in stages if "plots" in stage]  # each would be a second, per-file plot
    metrics = [next(iter(entry)) for stage in stages for entry in stage.get("metrics", [])]
    assert metrics == ["results/aggregate/headline.json", "results/audit/summary.json"]
    outs = [entry if isinstance(entry, str) else next(iter(entry)) for entry in DVC_YAML["stages"]["aggregate"]["outs"]]
    assert "results/aggregate/metrics.json" in outs  # every figure is still written and kept, for the report


class Page(HTMLParser):
    """The tags' attributes that make a browser fetch something, and the inline scripts' text."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.scripts: list[str] = []
        self.text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [value or "" for name, value in attrs if name in {"src", "href", "srcset", "data"}]
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data  # the parser may hand a long script over in pieces
        else:
            self.text.append(data)

    def handle_comment(self, data: str) -> None:
        self.text.append(data)


def offline_page() -> str:
    """The page `dvc plots show` fills: .dvc/config's plots.html_template, relative to .dvc as DVC reads it."""
    template = ConfigObj(str(REPO / ".dvc" / "config"))["plots"]["html_template"]
    return (REPO / ".dvc" / template).read_text(encoding="utf-8")


def test_the_plots_page_references_no_url_and_inlines_the_pinned_libraries() -> None:
    page = offline_page()
    parsed = Page()
    parsed.feed(page)
    assert parsed.links == []  # no <script src>, <link href>: nothing for a browser to fetch
    assert not re.search(r"https?:|//cdn", "".join(parsed.text))  # nor any URL outside the libraries' own code
    # {scripts} is where DVC would put its CDN script tags; {plot_divs} is where the plots go.
    assert "{scripts}" not in page and page.count("{plot_divs}") == 1
    packages = runpy.run_path(str(REPO / "scripts" / "vendor_vega.py"))["PACKAGES"]
    assert [script.split("\n", 1)[0] for script in parsed.scripts] == [
        f"/* {name} {version} */" for name, (version, _) in packages.items()
    ]
    assert all(len(script) > 50_000 for script in parsed.scripts)  # the minified builds themselves


def test_the_plots_page_carries_each_library_license() -> None:
    page = offline_page()
    for name in ("vega", "vega-lite", "vega-embed"):
        license_text = (PLOTS_DIR / "licenses" / f"{name}.txt").read_text(encoding="utf-8")
        assert "Interactive Data Lab" in license_text and license_text in page, name
