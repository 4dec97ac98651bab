"""Predict new parts with the trained models: raw cut-outs in, one row of class probabilities per image out.

Exactly the training preprocessing is applied (burrscope.inference.ensemble), with the settings stored in the
checkpoints; the fold models' probabilities are averaged (params `predict.final: [all]` uses the final model).
`agreement` is the fraction of models whose own decision is the ensemble's. `--explain DIR` writes each
image's Grad-CAM heatmap (averaged over the models) over its padded model input as a PNG in DIR.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from burrscope.console import positive_int, progress_bar
from burrscope.errors import user_errors
from burrscope.files import write_text_atomic
from burrscope.inference.ensemble import (
    BATCH,
    chosen_checkpoints,
    collect_images,
    load_ensemble,
    predict,
    valid_threshold,
)
from burrscope.inference.explain import explain_paths, overlay_writer
from burrscope.models.device import select_device
from burrscope.params import load_params


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("inputs", type=Path, nargs="+", help="raw image files and/or flat folders of them")
    parser.add_argument("--models", type=Path, default=Path("results/train"), help="holds fold_*/model.pt, final/")
    parser.add_argument("--out", type=Path, help="also write the predictions to this CSV")
    parser.add_argument("--threshold", type=valid_threshold, help="default: predict.threshold in params.yaml")
    parser.add_argument("--explain", type=Path, metavar="DIR", help="write a Grad-CAM heatmap PNG per image to DIR")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--batch-size", type=positive_int, default=BATCH, metavar="N")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    with user_errors():
        params = load_params().predict
        threshold = params.threshold if args.threshold is None else args.threshold
        images = collect_images(args.inputs)  # before loading models: a typo fails at once
        heatmaps = explain_paths(args.explain, images) if args.explain is not None else []
        ensemble = load_ensemble(chosen_checkpoints(args.models, params.final), select_device(args.device))
        which = "the final model" if params.final else f"an ensemble of {len(ensemble.models)} fold models"
        print(
            f"predict: {len(images)} images, {which} ({', '.join(sorted(set(ensemble.names)))}) on "
            f"{ensemble.device}, threshold {threshold}",
            file=sys.stderr,
            flush=True,
        )
        writer = overlay_writer(ensemble.models, ensemble.classes, heatmaps) if heatmaps else None
        table = predict(
            ensemble, images, args.batch_size, progress_bar(sys.stderr), threshold=threshold, on_batch=writer
        ).round(6)
        if heatmaps:
            table["heatmap"] = [str(path) for path in heatmaps]
        if args.out is not None:
            write_text_atomic(args.out, table.to_csv(index=False))
    print(table.to_string(index=False))
    if args.out is not None:
        print(f"predict: wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
