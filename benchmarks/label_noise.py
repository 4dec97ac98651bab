"""Does the audit find planted label errors and duplicates in real photos? Precision and recall on a noisy copy.

In a fresh copy of the repository (benchmarks/workspace.py), the photos of a real data set are copied into a raw
folder with a few of them copied again under new names (exact duplicates, which the split may put in other folds
than their originals), and a seeded share of the labels flipped to the other class. Then `dvc repro audit` runs
the default recipe through cross-validation (normalise to aggregate), then the audit. Prints, for the audit's
first k = 2 x (labels flipped) label rows, the precision and recall of the flipped labels; the same over all its
label rows; the planted pairs it found (and how many of them crossed folds) and the other pairs it flagged; and
the stages' wall times. The data folder is only read. Usage:

    python benchmarks/label_noise.py --data ../shared/datasets/magnetic_tile [--flip 0.05] [--duplicates 6]

The folder must hold `images/` and `labels.csv` with columns `filename,label` (or `file,label`), labels 0 and 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from workspace import add_set_option, parse_overrides, timed_run, workspace_copy

from burrscope.data.naming import output_name

ENV_VAR = "BURRSCOPE_REAL_DATA"
RAW, LABELS, PLANTED = "noisy_raw", "noisy_labels.csv", "planted.json"


def plant(data: Path, root: Path, *, flip: float, duplicates: int, seed: int) -> dict[str, list]:
    """The data's photos in root/RAW plus `duplicates` copies named `copy_of_<name>` (labelled as their photo), and
    root/LABELS with a `flip` share of the labels flipped (0 <-> 1), both drawn with `seed`; {"flipped": names,
    "pairs": [[name, copy], ...]}."""
    labels = pd.read_csv(data / "labels.csv", dtype=str).rename(columns={"filename": "file"})[["file", "label"]]
    rng = np.random.default_rng(seed)
    flipped = sorted(rng.choice(len(labels), round(flip * len(labels)), replace=False).tolist())
    copied = sorted(rng.choice(len(labels), duplicates, replace=False).tolist())
    raw = root / RAW
    raw.mkdir()
    for name in labels["file"]:
        shutil.copy2(data / "images" / name, raw / name)
    pairs = [[labels.loc[i, "file"], f"copy_of_{labels.loc[i, 'file']}"] for i in copied]
    for name, copy in pairs:
        shutil.copy2(raw / name, raw / copy)
    noisy = labels.copy()
    noisy.loc[flipped, "label"] = noisy.loc[flipped, "label"].map({"0": "1", "1": "0"})
    copies = pd.DataFrame({"file": [copy for _, copy in pairs], "label": noisy.loc[copied, "label"].to_numpy()})
    pd.concat([noisy, copies]).to_csv(root / LABELS, index=False)
    planted = {"flipped": labels.loc[flipped, "file"].tolist(), "pairs": pairs}
    (root / PLANTED).write_text(json.dumps(planted, indent=2))
    return planted


def scores(root: Path, planted: dict[str, list]) -> dict[str, object]:
    """How the audit's findings in `root` meet what was planted."""
    manifest = pd.read_csv(root / "data/interim/manifest.csv", dtype=str, keep_default_na=False)
    model_input = dict(zip(manifest["original_name"], manifest["normalised_name"].map(output_name), strict=True))
    folds = pd.read_csv(root / "data/processed/folds.csv", dtype=str).set_index("file")["fold"]
    issues = pd.read_csv(root / "results/audit/issues.csv", dtype=str, keep_default_na=False)
    labels = issues.loc[issues["issue"] == "label", "file"].tolist()
    flipped = {model_input[name] for name in planted["flipped"]}
    k = 2 * len(flipped)
    hits_k, hits_all = len(set(labels[:k]) & flipped), len(set(labels) & flipped)
    found = {frozenset(pair) for pair in issues.loc[issues["issue"] == "near_duplicate", ["file", "other_file"]].values}
    pairs = [frozenset(model_input[name] for name in pair) for pair in planted["pairs"]]
    crossing = [pair for pair in pairs if len({folds[f] for f in pair}) > 1]
    return {
        "flipped": len(flipped),
        "k": k,
        "precision_at_k": hits_k / max(min(k, len(labels)), 1),  # of the rows there are, when fewer than k
        "recall_at_k": hits_k / len(flipped),
        "label_rows": len(labels),
        "precision_all": hits_all / max(len(labels), 1),
        "recall_all": hits_all / len(flipped),
        "pairs_planted": len(pairs),
        "pairs_crossing": len(crossing),
        "pairs_found": sum(pair in found for pair in pairs),
        "crossing_found": sum(pair in found for pair in crossing),
        "other_pairs": len(found - set(pairs)),
        "outliers": int((issues["issue"] == "outlier").sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=os.environ.get(ENV_VAR), help=f"default: ${ENV_VAR}")
    parser.add_argument("--flip", type=float, default=0.05, help="share of labels flipped (default 0.05)")
    parser.add_argument("--duplicates", type=int, default=6, help="photos copied under new names (default 6)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="run in this new folder and keep it (default: a temp folder)")
    add_set_option(parser)
    args = parser.parse_args()
    if args.data is None:
        sys.exit(f"name the data folder with --data or ${ENV_VAR}")
    settings = {"data.raw_dir": RAW, "data.labels": LABELS, **parse_overrides(args.set)}
    with workspace_copy(settings, args.keep) as root:
        planted = plant(args.data.resolve(), root, flip=args.flip, duplicates=args.duplicates, seed=args.seed)
        stages, total = timed_run(root, ["dvc", "repro", "audit"], r"Running stage '([^']+)'")
        found = scores(root, planted)
    times = dict(stages)
    print(f"data: {args.data}  flipped: {args.flip:.0%} (seed {args.seed})  overrides: {settings}")
    print(json.dumps(found, indent=2))
    print("| labels flipped | top-k label rows | precision@k | recall@k | label rows in all (precision, recall) "
          "| planted pairs (across folds) | found (across folds) | other pairs flagged | outliers | audit stage (s) "
          "| dvc repro audit (s) |")  # fmt: skip
    print("|" + "---|" * 11)
    print(
        f"| {found['flipped']} | {found['k']} | {found['precision_at_k']:.2f} | {found['recall_at_k']:.2f} | "
        f"{found['label_rows']} ({found['precision_all']:.2f}, {found['recall_all']:.2f}) | "
        f"{found['pairs_planted']} ({found['pairs_crossing']}) | {found['pairs_found']} ({found['crossing_found']}) | "
        f"{found['other_pairs']} | {found['outliers']} | {times.get('audit', float('nan')):.1f} | {total:.0f} |"
    )


if __name__ == "__main__":
    main()
