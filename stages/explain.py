"""Stage 6: Grad-CAM heatmaps of every fold's model on its held-out images: every mistake and a few correct ones.

Writes, for each fold, one overlay PNG per explained image and heatmaps.csv into OUT_DIR/fold_<k>, all at once. One
process explains every fold: a process per fold spent more time starting than explaining (3 to 4 s against under 1 s
on 2 CPU cores).

Arguments:
  IMAGES_DIR: resized model inputs (data/processed/images)
  TRAIN_DIR: the folds' training outputs: fold_<k>/model.pt and predictions.csv
  OUT_DIR: writes fold_<k>/ for every fold
"""

from __future__ import annotations

from burrscope.console import path_arguments
from burrscope.errors import user_errors
from burrscope.inference.explain import explain_folds
from burrscope.models.device import pin_cpu_numerics
from burrscope.params import load_params


def main() -> None:
    args = path_arguments(__doc__, "images_dir", "train_dir", "out_dir")
    with user_errors():
        params = load_params()
        pin_cpu_numerics(params.recipe.cpu_threads)  # the heatmaps as reproducible as the training that they explain
        explained = explain_folds(
            args.images_dir, args.train_dir, params.folds, correct=params.explain_correct, out_dir=args.out_dir
        )
    for fold, table in enumerate(explained):
        print(f"explain: {len(table)} heatmaps of fold {fold} -> {args.out_dir / f'fold_{fold}'}")


if __name__ == "__main__":
    main()
