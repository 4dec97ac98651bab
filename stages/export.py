"""Stage 9: export the chosen model (fold ensemble or final model) as TorchScript and ONNX; register it in MLflow.

Both files are checked against PyTorch before anything is written. MLflow comes after the files: a tracking
failure is a warning recorded in logs/export.json, never a lost export. The registered MLflow model takes raw image
file bytes and applies the training preprocessing itself (burrscope.inference.serving).

Arguments:
  FOLDS_CSV: fold assignment (data/processed/folds.csv)
  IMAGES_DIR: processed model inputs (data/processed/images)
  TRAIN_DIR: trained models (results/train)
  OUT_DIR: writes model.ts, model.onnx, export.json
"""

from __future__ import annotations

import sys
import time

from burrscope.console import path_arguments
from burrscope.errors import user_errors
from burrscope.inference.ensemble import chosen_checkpoints, load_ensemble
from burrscope.inference.export import parity_images, write_exports
from burrscope.params import load_params
from burrscope.runlog import write_run_log
from burrscope.tables import ONNX, TORCHSCRIPT
from burrscope.tracking.registry import register


def main() -> None:
    args = path_arguments(__doc__, "folds_csv", "images_dir", "train_dir", "out_dir")
    with user_errors():
        params = load_params()
        started = time.perf_counter()
        ensemble = load_ensemble(chosen_checkpoints(args.train_dir, params.predict.final))
        images = parity_images(args.folds_csv, args.images_dir, ensemble.img_size, ensemble.classes)
        summary, differences, templates = write_exports(ensemble, images, params.predict.threshold, args.out_dir)
    outcome = register(summary, args.out_dir, images, params, folds_csv=args.folds_csv, parity=differences)
    write_run_log("export", {"parity": differences, "templates": templates, "mlflow": outcome})
    parity = ", ".join(f"{name} {diff:.2g}" for name, diff in differences.items())
    registered = outcome.get("registered_model_uri") or "not registered"
    print(
        f"export: {len(summary['source_checkpoints'])} model(s) -> {args.out_dir}/{{{TORCHSCRIPT},{ONNX}}} "
        f"(max abs diff {parity}; graphs {templates}), {registered}, in {time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
