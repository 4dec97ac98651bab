"""CPU training gives the same fold whatever threads the machine offers and whoever made its CPU: train.cpu_threads
pins the threads and the kernels' vector instructions (AVX2), which decide the order floating-point sums are added
in, and MKL's maker-independent branch (burrscope/models/device.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import yaml
from conftest import REPO, Notch

from burrscope.params import Params
from burrscope.training.features import CACHE_ENV

pytestmark = pytest.mark.cli


def train_in_subprocess(
    workspace: Path, notch: Notch, threads_offered: int, out: str, emulator: Sequence[str] = ()
) -> Path:
    """The train stage for fold 0, in a fresh process that torch would give `threads_offered` threads, under
    `emulator` when given, with a frozen-feature cache of its own (so that it computes the frozen trunk itself)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env |= {"OMP_NUM_THREADS": str(threads_offered), "MKL_NUM_THREADS": str(threads_offered), "PYTHONPATH": str(REPO)}
    env[CACHE_ENV] = str(workspace / f"{out}-feature-cache")
    folds_csv = workspace / "folds.csv"
    notch.folds.to_csv(folds_csv, index=False)
    done = subprocess.run(
        [*emulator, sys.executable, "-m", "stages.train", str(notch.images), str(folds_csv), "0", out],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr
    return workspace / out


def other_makers_cpu() -> str:
    """A qemu model, with AVX2, of a CPU that the other maker made: an Intel Haswell on an AMD machine, an AMD EPYC
    on any other (/proc/cpuinfo's vendor_id says whose this one is)."""
    vendor = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("vendor_id")]
    return "Haswell" if vendor and vendor[0].endswith("AuthenticAMD") else "EPYC-Milan"


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


def test_a_fold_trained_on_the_other_makers_cpu_is_the_same(
    tmp_path: Path, notch: Notch, tiny_params: Callable[..., Params], qemu_x86_64: str
) -> None:
    """Intel and AMD CPUs: the fold trains here, and again under qemu as a CPU of the other maker, which reports that
    CPU's maker, model and caches to the libraries. Found on the demo: MKL's AVX2 branch computed the classifier
    layer by the maker, and the per-tensor AdamW's square roots (MKL's vector maths) differed by CPU, so every fold
    trained to other numbers on an Intel Xeon than on an AMD EPYC."""
    params = tiny_params(train={"cpu_threads": 2})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(dict(params.raw)))
    here = train_in_subprocess(tmp_path, notch, 2, "here")
    there = train_in_subprocess(tmp_path, notch, 2, "there", emulator=[qemu_x86_64, "-cpu", other_makers_cpu()])
    assert (here / "predictions.csv").read_text() == (there / "predictions.csv").read_text()
    assert (here / "model.pt").read_bytes() == (there / "model.pt").read_bytes()
