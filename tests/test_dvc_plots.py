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
from helpers import REPO
from test_aggregate import TOY, fake_run, run_aggregate

from burrscope.evaluation.pooled import load_histories
from burrscope.tables import POOLED_HISTORY_COLUMNS

DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())
PLOTS_DIR = REPO / ".dvc" / "plots"
# (template, x, y) of every plot: curves joined point to point (`simple` or one of .dvc/plots/), never smoothed as
# DVC's default template, `linear`, does.
INTENDED = {
    "results/aggregate/confusion.csv": ("confusion", "predicted", "actual"),
    "results/aggregate/roc.csv": ("simple", "fpr", "tpr"),
    "results/aggregate/thresholds.csv": ("simple", "threshold", ["precision", "recall"]),
    "results/aggregate/calibration.csv": ("reliability", "mean_predicted", "fraction_positive"),
    "results/aggregate/history.csv": ("per_fold", "epoch", "val_loss"),
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


def test_every_plot_axis_is_a_column_of_the_table_the_aggregate_writes(tmp_path: Path) -> None:
    run_aggregate(tmp_path, TOY)
    _, train_dir = fake_run(tmp_path / "train", TOY)
    load_histories(train_dir, 2).to_csv(tmp_path / "out" / "history.csv", index=False)  # as the stage does
    for plot_id, (_, x, y) in INTENDED.items():
        columns = set(pd.read_csv(tmp_path / "out" / Path(plot_id).name).columns)
        assert {x, *([y] if isinstance(y, str) else y)} <= columns, plot_id


def test_custom_templates_draw_every_point_unsmoothed() -> None:
    built_in = {template.DEFAULT_NAME for template in TEMPLATES}
    custom = {props["template"] for props in plot_definitions().values()} - built_in
    assert custom == {"per_fold", "reliability"}
    for name in custom:
        template = json.loads((PLOTS_DIR / f"{name}.json").read_text())
        text = json.dumps(template)
        assert template["data"] == {"values": "<DVC_METRIC_DATA>"}, name  # DVC refuses a template without it
        assert "<DVC_METRIC_X>" in text and "<DVC_METRIC_Y>" in text, name
        assert "transform" not in text, name  # no loess, nor any other reshaping of the points
        # A point per row, so that one epoch or one occupied calibration bin still shows (a line needs two).
        assert '"point": true' in text, name


def test_the_fold_template_draws_a_line_per_fold_of_the_pooled_history() -> None:
    template = json.loads((PLOTS_DIR / "per_fold.json").read_text())
    assert template["encoding"]["color"]["field"] == "fold" and "fold" in POOLED_HISTORY_COLUMNS


def test_no_stage_declares_plots_and_the_headline_is_the_only_dvc_metric() -> None:
    stages = stage_definitions()
    assert not [stage for stage in stages if "plots" in stage]  # each would be a second, per-file plot
    metrics = [next(iter(entry)) for stage in stages for entry in stage.get("metrics", [])]
    assert metrics == ["results/aggregate/headline.json"]
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
