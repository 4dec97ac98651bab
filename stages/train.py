"""Stage 5: train one fold (or, with `all`, the final model on every image) and predict its held-out images.

Writes model.pt, history.csv, predictions.csv (not for `all`) and, last, metrics.json; the seconds spent per phase,
MLflow's outcome and any resume go to logs/train/<folder>.json. An interrupted fold resumes from checkpoint.pt in
its output folder when rerun with the same recipe, folds, images and training code.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from burrscope.errors import user_errors
from burrscope.models.device import select_device
from burrscope.params import FINAL_ITEM, load_params
from burrscope.runlog import Stopwatch, write_run_log
from burrscope.tables import CHECKPOINT, FINAL_MODEL_DIR, FOLD_COLUMNS, FOLD_METRICS, read_table
from burrscope.tracking.fold_run import FoldRun
from burrscope.training.fold import train_fold
from burrscope.training.outputs import fold_metrics, write_fold_outputs, write_metrics


def fold_or_final(text: str) -> int | str:
    """The fold CLI argument: a fold number, or `all`."""
    return FINAL_ITEM if text == FINAL_ITEM else int(text)


def main() -> None:
    # Created once the imports are done: its start-up phase covers the interpreter and them (torch, MLflow).
    stopwatch = Stopwatch()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images_dir", type=Path, help="resized model inputs (data/processed/images)")
    parser.add_argument("folds_csv", type=Path, help="fold assignment (data/processed/folds.csv)")
    parser.add_argument("fold", type=fold_or_final, help=f"the fold held out, or `{FINAL_ITEM}`: the final model")
    parser.add_argument("out_dir", type=Path, help="writes model.pt, history.csv, predictions.csv, metrics.json")
    args = parser.parse_args()
    with user_errors():
        params = load_params()
        recipe = params.recipe
        folds = read_table(args.folds_csv, FOLD_COLUMNS, numeric=["fold"])
        select_device(recipe.device)  # fail before MLflow records a run
        checkpoint = args.out_dir / CHECKPOINT
        # Opening the run checks that MLflow is reachable: an unreachable store fails here, before training.
        with stopwatch("logging"):
            label = FINAL_MODEL_DIR if args.fold == FINAL_ITEM else args.fold
            # data.labels only names the dataset the MLflow runs record; folds.csv is what trains.
            run = FoldRun(params, args.folds_csv, label, Path(params.data.labels))
        with run:
            result = train_fold(
                args.images_dir,
                folds,
                args.fold,
                recipe,
                on_epoch=run.log_epoch,
                checkpoint=checkpoint,
                stopwatch=stopwatch,
                checkpoint_every_s=params.checkpoint_every_s,
            )
            with stopwatch("checkpoint"):
                paths = write_fold_outputs(args.out_dir, result, recipe)
            # Outputs first, MLflow after: a tracking failure from here on costs the record, never the fold.
            with stopwatch("logging"):
                run.finish(result.built.weights, paths, stopwatch.rounded())
            write_metrics(args.out_dir / FOLD_METRICS, fold_metrics(result, recipe))
            checkpoint.unlink(missing_ok=True)
        record = {"timing": stopwatch.rounded(), "resumed_from_epoch": result.resumed_from, "mlflow": run.status}
        write_run_log(f"train/{args.out_dir.name}", {"mlflow_run": run.run_id, **record})


if __name__ == "__main__":
    main()
