"""The learning curve: whether more photos would help.

Reads the pooled predictions of each params `curve.fractions` point (the curve_point stages) and of the full
run (the aggregate stage), and writes curve.csv (balanced accuracy per point, with a bootstrap interval) and
verdict.json (the last step's gain, its paired interval, and the sentence the report prints).

Arguments:
  FOLDS_CSV: data/processed/folds.csv
  FRACTIONS_DIR: folder holding one folder per curve.fractions entry (results/curve/fractions)
  PREDICTIONS_CSV: the full run's pooled predictions (results/aggregate/predictions.csv)
  OUT_DIR: where curve.csv and verdict.json go
"""

from __future__ import annotations

from burrscope.classes import class_order
from burrscope.console import path_arguments
from burrscope.errors import user_errors
from burrscope.evaluation.curve import load_points, write_curve
from burrscope.params import load_params


def main() -> None:
    args = path_arguments(__doc__, "folds_csv", "fractions_dir", "predictions_csv", "out_dir")
    with user_errors():
        params = load_params()
        points = load_points(args.folds_csv, args.fractions_dir, list(params.curve.fractions), args.predictions_csv)
        classes = class_order(points[-1].predictions["label"])
        sentence = write_curve(args.out_dir, points, classes, threshold=params.predict.threshold, seed=params.seed)
    print(sentence)


if __name__ == "__main__":
    main()
