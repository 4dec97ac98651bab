"""CPU training gives the same fold whatever threads the machine offers: train.cpu_threads pins them, and the
kernels' vector instructions (AVX2), which decide the order floating-point sums are added in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import REPO, Notch

from burrscope.params import Params

pytestmark = pytest.mark.cli


def train_in_subprocess(workspace: Path, notch: Notch, threads_offered: int, out: str) -> Path:
    """The train stage for fold 0, in a fresh process that torch would give `threads_offered` threads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env |= {"OMP_NUM_THREADS": str(threads_offered), "MKL_NUM_THREADS": str(threads_offered), "PYTHONPATH": str(REPO)}
    folds_csv = workspace / "folds.csv"
    notch.folds.to_csv(folds_csv, index=False)
    done = subprocess.run(
        [sys.executable, "-m", "stages.train", str(notch.images), str(folds_csv), "0", out],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return workspace / out


def test_a_fold_trained_with_one_or_two_threads_offered_is_the_same(
    tmp_path: Path, notch: Notch, tiny_params: Callable[..., Params]
) -> None:
    """The default recipe, `finetune: partial`: the frozen trunk's forward pass (the cached features) and the tail's
    training, backward passes included, on the threads offered."""
    params = tiny_params(finetune="partial", train={"cpu_threads": 2, "trainable_blocks": 3})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(dict(params.raw)))
    one = train_in_subprocess(tmp_path, notch, 1, "one")
    two = train_in_subprocess(tmp_path, notch, 2, "two")
    assert (one / "model.pt").read_bytes() == (two / "model.pt").read_bytes()
    assert (one / "predictions.csv").read_text() == (two / "predictions.csv").read_text()
    cpu = json.loads((one / "metrics.json").read_text())["cpu"]
    assert cpu == {"capability": "AVX2", "threads": 2}
