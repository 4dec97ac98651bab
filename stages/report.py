"""Stage 9: render the cross-validation results as one self-contained HTML page (figures and thumbnails inlined).

Once it is written, it is logged to the pipeline run's MLflow parent; a tracking failure is a warning, never a
lost report.

Arguments:
  MANIFEST: data/interim/manifest.csv
  IMAGES: the padded, resized model inputs
  TRAIN: folder holding fold_<k>/history.csv and metrics.json
  EXPLAIN: folder holding fold_<k>/heatmaps.csv and the overlays
  AGGREGATE: the aggregate stage's output folder
  AUDIT: the audit stage's output folder
  CURVE: the curve stage's output folder (curve.csv, verdict.json)
  REPORT: where the report goes
"""

from __future__ import annotations

from burrscope.console import path_arguments
from burrscope.errors import user_errors
from burrscope.files import write_text_atomic
from burrscope.params import load_params
from burrscope.report.build import build_report
from burrscope.report.inputs import ReportInputs
from burrscope.tables import PREDICTIONS


def main() -> None:
    args = path_arguments(__doc__, "manifest", "images", "train", "explain", "aggregate", "audit", "curve", "report")
    with user_errors():
        params = load_params()
        inputs = ReportInputs(
            args.manifest, args.images, args.train, args.explain, args.aggregate, args.audit, args.curve
        )
        page = build_report(inputs, params.raw)
        write_text_atomic(args.report, page)
    print(f"report: {args.report} ({len(page.encode()) / 1e6:.1f} MB)")

    from burrscope.tracking.parent_run import log_report  # imports mlflow: only once the report is safely written

    parent, status = log_report(params, args.aggregate / PREDICTIONS, args.report)
    if status == "ok":
        print(f"MLflow: report logged to parent run {parent}" if parent else "MLflow: no parent run found; not logged")


if __name__ == "__main__":
    main()
