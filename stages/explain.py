"""Stage 6: Grad-CAM heatmaps of a fold's model on its held-out images: every mistake and a few correct ones.

Writes one overlay PNG per explained image and heatmaps.csv into the output folder, all at once.

Arguments:
  IMAGES_DIR: resized model inputs (data/processed/images)
  FOLD_DIR: the fold's training outputs: model.pt and predictions.csv
  OUT_DIR: writes the overlays and heatmaps.csv
"""

from __future__ import annotations

from burrscope.classes import prob_column
from burrscope.console import path_arguments
from burrscope.errors import DataError, user_errors
from burrscope.inference.ensemble import load_ensemble
from burrscope.inference.explain import explain_fold
from burrscope.models.device import pin_cpu_numerics
from burrscope.models.tensors import load_images
from burrscope.params import load_params
from burrscope.tables import PREDICTION_COLUMNS, RERUN, read_table


def main() -> None:
    args = path_arguments(__doc__, "images_dir", "fold_dir", "out_dir")
    with user_errors():
        params = load_params()
        pin_cpu_numerics(params.recipe.cpu_threads)  # the heatmaps as reproducible as the training that they explain
        ensemble = load_ensemble([args.fold_dir / "model.pt"])
        probs = [prob_column(label) for label in ensemble.classes]
        table = read_table(args.fold_dir / "predictions.csv", [*PREDICTION_COLUMNS, *probs], numeric=["fold", *probs])
        if table.empty:
            raise DataError(f"{args.fold_dir / 'predictions.csv'} holds no held-out image; {RERUN}.")
        images = load_images(args.images_dir, list(table["file"]))
        fold = int(table["fold"].iloc[0])
        explained = explain_fold(
            ensemble.models[0],
            images,
            ensemble.normalisation,
            table,
            classes=ensemble.classes,
            correct=params.explain_correct,
            out_dir=args.out_dir,
        )
    print(f"explain: {len(explained)} heatmaps of fold {fold} -> {args.out_dir}")


if __name__ == "__main__":
    main()
