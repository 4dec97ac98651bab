"""The README and docs/ tell the truth: short, every link resolves, and every demo figure is what the pipeline wrote."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
DOCS = sorted((REPO / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_readme_is_short() -> None:
    assert len(README.splitlines()) <= 150


@pytest.mark.parametrize("page", [REPO / "README.md", *DOCS, REPO / "benchmarks" / "README.md"], ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    targets = [target for target in LINK.findall(page.read_text(encoding="utf-8")) if "://" not in target]
    missing = [target for target in targets if not (page.parent / target).exists()]
    assert not missing, missing


def test_the_readme_demo_figures_are_what_the_committed_results_say() -> None:
    headline = json.loads((REPO / "results/aggregate/headline.json").read_text())
    summary = json.loads((REPO / "results/aggregate/metrics.json").read_text())
    stated = re.search(
        r"On the demo \((\d+) images, (\d+)-fold cross-validation\) the default recipe scores a pooled out-of-fold "
        r"accuracy of\s+(\d\.\d{3}), balanced accuracy (\d\.\d{3}) and ROC-AUC (\d\.\d{3}), and misses (\d+) of (\d+) "
        r"burrs at the default threshold",
        README,
    )
    assert stated, "the README lost its sentence of demo figures"
    images, folds, accuracy, balanced, auc, missed, burrs = stated.groups()
    assert int(images) == summary["n_images"] and int(folds) == len(summary["per_fold"])
    assert (float(accuracy), float(balanced), float(auc)) == tuple(
        round(headline[name], 3) for name in ("accuracy", "balanced_accuracy", "roc_auc")
    )
    positives = round(headline["missed"] / (1 - headline["recall"])) if headline["recall"] < 1 else None
    assert int(missed) == headline["missed"] and (positives is None or int(burrs) == positives)


def test_every_test_the_reliability_page_cites_exists() -> None:
    """docs/reliability.md names, per fault, the test that proves it: each must be a test that runs."""
    page = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
    aliases = dict(re.findall(r"`(\w)` = `(tests/test_\w+\.py)`", page))
    cited = {
        (aliases.get(module, module), name)
        for module, name in re.findall(r"\b(\w|tests/test_\w+\.py|test_\w+\.py)::(\w+)", page)
    }
    assert len(cited) > 20
    missing = []
    for module, name in sorted(cited):
        path = REPO / (module if module.startswith("tests/") else f"tests/{module}")
        if not path.is_file() or not re.search(
            rf"^(async )?def {name}\(", path.read_text(encoding="utf-8"), flags=re.M
        ):
            missing.append(f"{module}::{name}")
    assert not missing, missing
