"""Stage 4: assign every photo to a cross-validation fold, stratified by label, never splitting a group.

Arguments:
  MANIFEST_CSV: manifest written by the normalise stage
  FOLDS_CSV: CSV to write: file, label, fold[, group]
"""

from __future__ import annotations

from burrscope.console import path_arguments
from burrscope.data.split import split
from burrscope.errors import user_errors
from burrscope.params import load_params


def main() -> None:
    args = path_arguments(__doc__, "manifest_csv", "folds_csv")
    with user_errors():
        params = load_params()
        assigned = split(args.manifest_csv, args.folds_csv, params.folds, params.seed)
    print(f"split: {len(assigned)} photos -> {params.folds} folds in {args.folds_csv}")


if __name__ == "__main__":
    main()
