"""Learning curve, one point: train every fold on FRACTION of its training images and predict its held-out fold.

The subset is stratified and nested (a smaller fraction's images are part of every larger one's), and each fold
keeps its full run's seed, so the points differ only by the photos left out. Writes predictions.csv (every image,
predicted by the fold that held it out) and sizes.json (training images per fold) to OUT_DIR. No MLflow runs:
the curve is a question about the data, answered in the report (results/curve/curve.csv).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from burrscope.errors import user_errors
from burrscope.models.device import select_device
from burrscope.params import load_params
from burrscope.tables import FOLD_COLUMNS, read_table
from burrscope.training.curve import train_fraction, write_fraction


def share(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1."""
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, not {text}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images_dir", type=Path, help="resized model inputs (data/processed/images)")
    parser.add_argument("folds_csv", type=Path, help="fold assignment (data/processed/folds.csv)")
    parser.add_argument("fraction", type=share, help="the share of each fold's training images to train on")
    parser.add_argument("out_dir", type=Path, help="writes predictions.csv and sizes.json")
    args = parser.parse_args()
    with user_errors():
        recipe = load_params().recipe
        folds = read_table(args.folds_csv, FOLD_COLUMNS, numeric=["fold"])
        select_device(recipe.device)
        predictions, sizes = train_fraction(args.images_dir, folds, args.fraction, recipe)
        write_fraction(args.out_dir, args.fraction, predictions, sizes)
    print(f"curve point {args.fraction:g}: {sizes} training images per fold -> {args.out_dir}")


if __name__ == "__main__":
    main()
