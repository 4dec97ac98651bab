"""Real-data check: the whole pipeline, default recipe, on a folder of real photos with a labels CSV.

Runs `dvc repro` in a fresh copy of the repository whose params point at the data, then prints 5-fold
cross-validated accuracy, balanced accuracy, F1, ROC-AUC and the wall time. The data is read in place, never
copied or modified; only a labels CSV with the pipeline's column names is written into the copy. Usage:

    BURRSCOPE_REAL_DATA=../shared/datasets/magnetic_tile python benchmarks/real_data.py [--set finetune=head]
    python benchmarks/real_data.py --data ../shared/datasets/magnetic_tile --keep ../real-full

The folder must hold `images/` and `labels.csv` with columns `filename,label` (or `file,label`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pandas as pd
from workspace import add_set_option, parse_overrides, timed_repro, workspace_copy

ENV_VAR = "BURRSCOPE_REAL_DATA"
LABELS = "real_labels.csv"
REPORTED = ("accuracy", "balanced_accuracy", "f1", "roc_auc")


def write_labels(data: Path, root: Path) -> None:
    """The data's labels under the pipeline's column names, in the workspace copy (the data stays untouched)."""
    labels = pd.read_csv(data / "labels.csv", dtype=str).rename(columns={"filename": "file"})
    labels[["file", "label"]].to_csv(root / LABELS, index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data",
        type=Path,
        default=os.environ.get(ENV_VAR),
        help=f"folder with images/ and labels.csv (default: ${ENV_VAR})",
    )
    add_set_option(parser)
    parser.add_argument("--keep", type=Path, help="run in this new folder and keep it (default: a temp folder)")
    args = parser.parse_args()
    if args.data is None:
        sys.exit(f"name the data folder with --data or ${ENV_VAR}")
    settings = parse_overrides(args.set)
    data_params = {"data.raw_dir": str((args.data / "images").resolve()), "data.labels": LABELS}

    with workspace_copy({**data_params, **settings}, args.keep) as root:
        write_labels(args.data, root)
        stages, total = timed_repro(root)
        summary = json.loads((root / "results/aggregate/metrics.json").read_text())
    train_s = sum(seconds for name, seconds in stages if name.startswith("train@"))
    print(f"data: {args.data}  overrides: {settings or 'none'}")
    print("| " + " | ".join(REPORTED) + " | wall time (s) | of which training (s) |")
    print("|" + "---|" * (len(REPORTED) + 2))
    cells = [f"{summary['overall'][m]:.3f} ({summary['mean'][m]:.3f} ± {summary['std'][m]:.3f})" for m in REPORTED]
    print("| " + " | ".join(cells) + f" | {total:.0f} | {train_s:.0f} |")


if __name__ == "__main__":
    main()
