"""Wall time of the export stage on the demo, with a cold template cache and a warm one, process start included.

Needs the demo's trained models: `dvc repro train` (the data stages and the 5 folds) once in this checkout. Each run
is the command dvc.yaml runs, `python -m stages.export data/processed/folds.csv data/processed/images results/train
OUT`, writing into a temp folder (results/export is left alone), with MLflow in a throwaway sqlite store made
beforehand (as the train stages make the pipeline's) and the export cache in a temp folder: empty for a cold run,
the first cold run's for the warm ones. `--code DIR` runs another checkout's stage on this checkout's data and
models, e.g. the code before a change (`mkdir ../before && git archive REV | tar -x -C ../before`).

Prints a Markdown table: each run's wall and CPU seconds, the load average when it started (compare runs on a
quiet machine only), and the sha256 of model.ts and model.onnx, which every run of the same code and models must
repeat. Usage:

    python benchmarks/export_stage.py                         # 1 cold run, then 3 warm ones
    python benchmarks/export_stage.py --cold 2 --warm 5
    python benchmarks/export_stage.py --code ../before --warm 0
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from workspace import REPO, tool_env

INPUTS = ("data/processed/folds.csv", "data/processed/images", "results/train")
FILES = ("model.ts", "model.onnx")


def run_stage(code: Path, out: Path, cache: Path, store: str) -> dict[str, object]:
    """One export stage in a fresh process: wall and CPU seconds, the load average before it, the files' hashes."""
    env = tool_env() | {"PYTHONPATH": str(code), "BURRSCOPE_CACHE": str(cache), "MLFLOW_TRACKING_URI": store}
    command = [sys.executable, "-m", "stages.export", *(str(REPO / name) for name in INPUTS), str(out)]
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=code, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    hashes = [hashlib.sha256((out / name).read_bytes()).hexdigest()[:12] for name in FILES]
    return {"wall": wall, "cpu": cpu, "load": load, "hashes": hashes, "said": done.stderr.strip().splitlines()[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=Path, default=REPO, help="the checkout whose stage runs (default: this one)")
    parser.add_argument("--cold", type=int, default=1, help="runs with an empty template cache (default 1)")
    parser.add_argument("--warm", type=int, default=3, help="runs with the first cold run's cache (default 3)")
    args = parser.parse_args()
    code = args.code.resolve()
    if not all((REPO / name).exists() for name in INPUTS) or not list((REPO / "results/train").glob("*/model.pt")):
        sys.exit("no trained demo models here: run `dvc repro train` first")
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{tmp}/mlflow.db"
        made = subprocess.run(
            [sys.executable, "-c", f"from mlflow import MlflowClient; MlflowClient({store!r}).search_experiments()"],
            env=tool_env(),
            capture_output=True,
            check=False,
        )
        if made.returncode:
            sys.exit(made.stderr.decode())
        runs = []
        for i in range(args.cold + args.warm):
            cold = i < args.cold
            cache = Path(tmp, f"cache_{i}" if cold else "cache_0")
            runs.append(("cold" if cold else "warm", run_stage(code, Path(tmp, f"out_{i}"), cache, store)))
            print(runs[-1][1]["said"], file=sys.stderr)
    print(f"code: {code}, CPU: {os.cpu_count()} cores\n")
    print("| run | template cache | wall (s) | CPU (s) | load average before | model.ts | model.onnx |")
    print("|---|---|---|---|---|---|---|")
    for i, (kind, run) in enumerate(runs, 1):
        hashes = " | ".join(run["hashes"])
        print(f"| {i} | {kind} | {run['wall']:.1f} | {run['cpu']:.1f} | {run['load']:.2f} | {hashes} |")
    for kind in ("cold", "warm"):
        walls = [run["wall"] for k, run in runs if k == kind]
        if walls:
            print(f"\n{kind}: median {statistics.median(walls):.1f} s wall over {len(walls)} run(s)")
    if len({tuple(run["hashes"]) for _, run in runs}) > 1:
        sys.exit("the runs wrote different files")


if __name__ == "__main__":
    main()
