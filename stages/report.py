"""Stage 8: render the cross-validation results as one self-contained HTML page (figures and thumbnails inlined).

Once it is written, it is logged to the pipeline run's MLflow parent; a tracking failure is a warning, never a
lost report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from burrscope.errors import user_errors
from burrscope.files import write_text_atomic
from burrscope.params import load_params
from burrscope.report.build import build_report
from burrscope.report.inputs import ReportInputs
from burrscope.tables import PREDICTIONS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("manifest_csv", type=Path, help="data/interim/manifest.csv")
    parser.add_argument("images_dir", type=Path, help="the padded, resized model inputs")
    parser.add_argument("train_dir", type=Path, help="folder holding fold_<k>/history.csv and metrics.json")
    parser.add_argument("explain_dir", type=Path, help="folder holding fold_<k>/heatmaps.csv and the overlays")
    parser.add_argument("aggregate_dir", type=Path, help="the aggregate stage's output folder")
    parser.add_argument("report_html", type=Path, help="where the report goes")
    args = parser.parse_args()
    with user_errors():
        params = load_params()
        inputs = ReportInputs(args.manifest_csv, args.images_dir, args.train_dir, args.explain_dir, args.aggregate_dir)
        page = build_report(inputs, params.raw)
        write_text_atomic(args.report_html, page)
    print(f"report: {args.report_html} ({len(page.encode()) / 1e6:.1f} MB)")

    from burrscope.tracking.parent_run import log_report  # imports mlflow: only once the report is safely written

    parent, status = log_report(params, args.aggregate_dir / PREDICTIONS, [args.report_html])
    if status == "ok":
        print(f"MLflow: report logged to parent run {parent}" if parent else "MLflow: no parent run found; not logged")


if __name__ == "__main__":
    main()
