"""Stage 4: assign every photo to a cross-validation fold, stratified by label, never splitting a group."""

from __future__ import annotations

import argparse
from pathlib import Path

from burrscope.data.split import split
from burrscope.errors import user_errors
from burrscope.params import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("manifest_csv", type=Path, help="manifest written by the normalise stage")
    parser.add_argument("folds_csv", type=Path, help="CSV to write: file, label, fold[, group]")
    args = parser.parse_args()
    with user_errors():
        params = load_params()
        assigned = split(args.manifest_csv, args.folds_csv, params.folds, params.seed)
    print(f"split: {len(assigned)} photos -> {params.folds} folds in {args.folds_csv}")


if __name__ == "__main__":
    main()
