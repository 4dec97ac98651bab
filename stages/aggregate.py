"""Stage 7: pool the folds' out-of-fold predictions into cross-validated metrics and the report's tables.

Labels are decided with params `predict.threshold`. Writes metrics.json, headline.json (what `dvc exp show` lists),
predictions.csv, confusion.csv, roc.csv, thresholds.csv, calibration.csv and history.csv (every fold's curves), then
logs the summary to the pipeline run's MLflow parent.

Arguments:
  FOLDS_CSV: data/processed/folds.csv
  TRAIN_DIR: folder holding fold_<k>/predictions.csv and history.csv
  OUT_DIR: where the metrics and tables go
"""

from __future__ import annotations

from burrscope.console import path_arguments
from burrscope.errors import user_errors
from burrscope.evaluation.pooled import load_histories, load_predictions
from burrscope.evaluation.summary import aggregate, format_summary, write_aggregate_outputs
from burrscope.params import load_params
from burrscope.tables import POOLED_HISTORY


def main() -> None:
    args = path_arguments(__doc__, "folds_csv", "train_dir", "out_dir")
    with user_errors():
        params = load_params()
        pooled, classes = load_predictions(args.folds_csv, args.train_dir, params.folds)
        pooled, summary, tables = aggregate(
            pooled, classes, params.folds, params.predict.threshold, name=params.data.class_name
        )
        tables[POOLED_HISTORY] = load_histories(args.train_dir, params.folds)
        outputs = write_aggregate_outputs(args.out_dir, pooled, summary, tables)
    print(format_summary(summary, params.folds))

    # Imports mlflow: only once the metrics are safely written.
    from burrscope.tracking.parent_run import log_aggregate, parent_metrics

    parent, status = log_aggregate(params, args.folds_csv, parent_metrics(summary), outputs, aggregate_dir=args.out_dir)
    if status == "ok":
        print(
            f"MLflow: logged to parent run {parent}"
            if parent
            else "MLflow: no parent run found for these params and folds (were the folds trained?); nothing logged"
        )


if __name__ == "__main__":
    main()
