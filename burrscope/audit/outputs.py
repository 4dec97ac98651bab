"""The audit stage's files (results/audit/), each written whole (atomically), and what it says about them.

labels_with_groups.csv is written on every run, also when no near-duplicate pair crosses folds: DVC and
Snakemake take a declared output that a run did not write as a failed run, and the alternatives (a folder
output, which could not hold summary.json as a metric beside it, or a placeholder file) are harder to read. When
nothing crosses it is the labels with each photo its own group (plus any groups the labels had and pairs within
one fold), and there is no reason to switch to it: a `group` column alone moves the split to
StratifiedGroupKFold, which assigns other folds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from burrscope.audit.findings import Findings
from burrscope.files import write_text_atomic
from burrscope.tables import AUDIT_SUMMARY, GROUPED_LABELS, ISSUES, grouped_copy


def write_audit_outputs(out_dir: Path, findings: Findings, grouped_labels: str) -> list[Path]:
    """Write issues.csv, summary.json and labels_with_groups.csv into `out_dir`; their paths."""
    texts = {
        ISSUES: findings.issues.to_csv(index=False, lineterminator="\n"),
        AUDIT_SUMMARY: json.dumps(findings.summary, indent=2) + "\n",
        GROUPED_LABELS: grouped_labels,
    }
    for name, text in texts.items():
        write_text_atomic(out_dir / name, text)
    return [out_dir / name for name in texts]


def crossing_warning(summary: Mapping[str, Any], out_dir: Path, labels_csv: Path) -> str | None:
    """The loud warning the stage prints when near-duplicate photos sit in different folds; None when none do."""
    crossing = summary["audit_duplicates_across_folds"]
    if not crossing:
        return None
    rule, copy = "!" * 100, grouped_copy(labels_csv)
    return (
        f"{rule}\nWARNING: {crossing} near-duplicate pair(s) of photos sit in different folds, so a fold's model "
        "was scored on\nparts it trained on: the cross-validated scores are FLATTERED. "
        f"{out_dir / ISSUES} lists the pairs.\n{out_dir / GROUPED_LABELS} is your labels CSV with a `group` "
        "column that keeps each pair in one fold:\n"
        f"    cp '{out_dir / GROUPED_LABELS}' '{copy}'\nthen set `data.labels: {copy}` in params.yaml and rerun. "
        f"(Not {out_dir / GROUPED_LABELS} itself:\nthe first stage reads data.labels, so the pipeline would be a "
        f"cycle.)\n{rule}"
    )
