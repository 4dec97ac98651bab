#!/usr/bin/env bash
# The GPU check on a bare GPU machine that has only torch and the scientific stack (numpy, pandas, scikit-learn,
# Pillow, PyYAML): install the wheels benchmarks/gpu_wheels.sh put in .whl/ (no network needed), then run
# benchmarks/gpu_check.py with the arguments given. MLflow tracks into a file store: the carried mlflow-skinny
# leaves out SQLAlchemy to keep the carried files small.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-file:///tmp/gpu-check-mlruns}"
exec python3 benchmarks/gpu_check.py "$@"
