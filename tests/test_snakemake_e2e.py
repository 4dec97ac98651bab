"""Snakemake's jobs really run, up to the cross-validated metrics: the same outputs as conftest's `pipeline_run`
(DVC), and a changed param reruns only what depends on it. tests/test_graphs.py proves the two graphs identical
without running them, and test_mlflow_server.py runs Snakemake on to the export.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from helpers import make_project, output, user_env

pytestmark = pytest.mark.e2e

DATA_OUTPUTS = ["data/interim/manifest.csv", "data/processed/folds.csv"]
METRICS = "results/aggregate/metrics.json"  # the target: the cross-validated metrics, and every job before them


def test_snakemake_produces_the_same_outputs_and_reruns_only_what_changed(pipeline_run: Path, tmp_path: Path) -> None:
    root = make_project(tmp_path / "snakemake")
    env = user_env(root)
    output(["snakemake", "--cores", "2", METRICS], root, env)
    same = [*DATA_OUTPUTS, "results/train/fold_0/model.pt", METRICS]
    images = sorted((pipeline_run / "data/processed/images").glob("*.png"))
    same += [str(path.relative_to(pipeline_run)) for path in images]
    for name in same:
        assert (root / name).read_bytes() == (pipeline_run / name).read_bytes(), name

    assert "Nothing to be done" in output(["snakemake", "--cores", "2", "--dry-run", METRICS], root, env)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["lr"] = 0.002
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    plan = output(["snakemake", "--cores", "2", "--dry-run", METRICS], root, env)
    assert dict(re.findall(r"^(\w+)\s+(\d+)$", plan, flags=re.M)) == {"train": "2", "aggregate": "1", "total": "3"}
