"""Stage 5: train one fold (or, with `all`, the final model on every image) and predict its held-out images.

Writes model.pt, history.csv, predictions.csv (not for `all`) and, last, metrics.json with the seconds spent
per phase (`timing`: startup, data, train, eval, logging, checkpoint). An interrupted fold resumes from
checkpoint.pt in its output folder when rerun with the same recipe, folds, images and training code.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from burrscope.device import select_device
from burrscope.errors import user_errors
from burrscope.fold_run import FoldRun
from burrscope.params import load_params
from burrscope.tables import FOLD_COLUMNS, read_table
from burrscope.timing import Stopwatch
from burrscope.training.data import FINAL
from burrscope.training.fold import fold_metrics, train_fold, write_metrics, write_outputs
from burrscope.training.resume import CHECKPOINT_NAME


def fold_or_final(text: str) -> int | str:
    """The fold CLI argument: a fold number, or FINAL."""
    return FINAL if text == FINAL else int(text)


def main() -> None:
    # Created once the imports are done: its start-up phase covers the interpreter and them (torch, MLflow).
    stopwatch = Stopwatch()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images_dir", type=Path, help="resized model inputs (data/processed/images)")
    parser.add_argument("folds_csv", type=Path, help="fold assignment (data/processed/folds.csv)")
    parser.add_argument("fold", type=fold_or_final, help=f"the fold held out, or `{FINAL}`: the final model")
    parser.add_argument("out_dir", type=Path, help="writes model.pt, history.csv, predictions.csv, metrics.json")
    args = parser.parse_args()
    with user_errors():
        params = load_params()
        recipe = params.recipe
        folds = read_table(args.folds_csv, FOLD_COLUMNS, numeric=["fold"])
        select_device(recipe.device)  # fail before MLflow records a run
        checkpoint = args.out_dir / CHECKPOINT_NAME
        # Opening the run checks that MLflow is reachable: an unreachable store fails here, before training.
        with stopwatch("logging"):
            fold = "final" if args.fold == FINAL else args.fold
            # data.labels only names the dataset the MLflow runs record; folds.csv is what trains.
            run = FoldRun(recipe, params.folds, args.folds_csv, fold, Path(params.data.labels))
        with run:
            result = train_fold(
                args.images_dir,
                folds,
                args.fold,
                recipe,
                run.log_epoch,
                checkpoint,
                stopwatch,
                params.checkpoint_every_s,
            )
            with stopwatch("checkpoint"):
                paths = write_outputs(args.out_dir, result, recipe)
            # Outputs first, MLflow after: a tracking failure from here on costs the record, never the fold.
            with stopwatch("logging"):
                run.finish(result.built.weights, paths)
            metrics = fold_metrics(result, recipe)
            metrics["seconds"] = round(sum(s for phase, s in stopwatch.seconds.items() if phase != "startup"), 1)
            metrics |= {"mlflow": run.status, "timing": stopwatch.rounded()}
            write_metrics(args.out_dir / "metrics.json", metrics)
            checkpoint.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
