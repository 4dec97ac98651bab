"""Predict new parts with the trained models: raw cut-outs in, one row of class probabilities per image out.

Exactly the training preprocessing is applied (burrscope.inference.ensemble), with the settings stored in the
checkpoints; the fold models' probabilities are averaged (params `predict.final: [all]` uses the final model).
`agreement` is the fraction of models whose own decision is the ensemble's, `spread` how far their probabilities
differ. `--explain DIR` writes each image's Grad-CAM heatmap (averaged over the models) over its padded model input
as a PNG in DIR. `--rank` orders photos nobody has labelled yet by how much a label would teach the models (a close
decision, models that disagree) and writes them, most useful first, as labels-CSV rows with an empty label
(to_label.csv): fill in the top rows, append them to the labels CSV, add the photos to the raw folder, rerun.
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
from burrscope.inference.ranking import TO_LABEL, check_unlabelled, rank_for_labelling, to_label_table
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
    parser.add_argument(
        "--rank", type=Path, nargs="?", const=Path(TO_LABEL), metavar="CSV", help=f"what to label next (-> {TO_LABEL})"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    with user_errors():
        params = load_params()
        threshold = params.predict.threshold if args.threshold is None else args.threshold
        images = collect_images(args.inputs)  # before loading models: a typo or a labelled photo fails at once
        if args.rank is not None:
            check_unlabelled(images, Path(params.data.labels))
        heatmaps = explain_paths(args.explain, images) if args.explain is not None else []
        ensemble = load_ensemble(chosen_checkpoints(args.models, params.predict.final), select_device(args.device))
        description = ensemble.description(bool(params.predict.final))
        print(f"predict: {len(images)} images, {description}, threshold {threshold}", file=sys.stderr, flush=True)
        writer = overlay_writer(ensemble.models, ensemble.classes, heatmaps) if heatmaps else None
        table = predict(
            ensemble, images, args.batch_size, progress_bar(sys.stderr), threshold=threshold, on_batch=writer
        ).round(6)
        if heatmaps:
            table["heatmap"] = [str(path) for path in heatmaps]
        if args.out is not None:
            write_text_atomic(args.out, table.to_csv(index=False))
        if args.rank is not None:
            table = rank_for_labelling(table, ensemble.classes, threshold)
            write_text_atomic(args.rank, to_label_table(table).to_csv(index=False))
    print(table.to_string(index=False))
    for path in (args.out, args.rank):
        if path is not None:
            print(f"predict: wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
