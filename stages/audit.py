"""Stage 8: audit the data after training: which labels are probably wrong, which photos show the same part.

Confident learning on the pooled out-of-fold probabilities finds the labels the models doubt; nearest neighbours
of the frozen ImageNet backbone's pooled features (params `audit`) find near-duplicate pairs and outliers.
Writes issues.csv (most suspect first), summary.json (the counts: a DVC metric) and labels_with_groups.csv (the
labels CSV with a `group` column joining the near-duplicates), warns loudly when a pair sits in two folds, then
logs the counts and issues.csv to the pipeline run's MLflow parent. No label is ever changed: it suggests.

Arguments:
  LABELS_CSV: the labels CSV (data.labels); only read
  MANIFEST_CSV: data/interim/manifest.csv
  IMAGES: the padded, resized model inputs
  FOLDS_CSV: data/processed/folds.csv
  PREDICTIONS_CSV: the aggregate stage's pooled out-of-fold predictions
  OUT_DIR: where the findings go
"""

from __future__ import annotations

import sys

from burrscope.audit.features import pooled_features
from burrscope.audit.findings import find_issues, read_photos, summary_line
from burrscope.audit.groups import grouped_labels
from burrscope.audit.outputs import crossing_warning, write_audit_outputs
from burrscope.console import path_arguments
from burrscope.errors import user_errors
from burrscope.params import load_params
from burrscope.tables import ISSUES


def main() -> None:
    args = path_arguments(__doc__, "labels_csv", "manifest_csv", "images", "folds_csv", "predictions_csv", "out_dir")
    with user_errors():
        params = load_params()
        photos = read_photos(args.predictions_csv, args.folds_csv, args.manifest_csv)
        features = pooled_features(args.images, list(photos.table["file"]), params.recipe, len(photos.classes))
        findings = find_issues(photos, features, params.audit)
        files = photos.table["file"]
        pairs = [(files.iloc[pair.first], files.iloc[pair.second]) for pair in findings.pairs]
        grouped = grouped_labels(args.labels_csv, args.manifest_csv, pairs)
        write_audit_outputs(args.out_dir, findings, grouped)
    print(summary_line(findings.summary, len(photos.table)))
    warning = crossing_warning(findings.summary, args.out_dir, args.labels_csv)
    if warning:
        print(warning, file=sys.stderr, flush=True)

    from burrscope.tracking.parent_run import log_audit  # imports mlflow: only once the findings are written

    parent, status = log_audit(params, args.predictions_csv, findings.summary, args.out_dir / ISSUES)
    if status == "ok":
        print(f"MLflow: audit logged to parent run {parent}" if parent else "MLflow: no parent run found; not logged")


if __name__ == "__main__":
    main()
