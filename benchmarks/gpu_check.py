"""The GPU check in one command: data stages, every fold, aggregate, the timing split and the training-loop figures.

Runs in a fresh temp workspace (a copy of burrscope/, stages/, benchmarks/, params.yaml and dvc.yaml, no DVC
needed) each stage command exactly as dvc.yaml writes it, timed from outside:
  1. normalise, composite, resize, split;
  2. train@0..k one after another, as `dvc repro` runs them;
  3. the same folds all at once on the one GPU, as `snakemake --cores N --resources gpu=K` with K >= folds would;
  4. aggregate, for the cross-validated metrics;
then each fold's own `timing` (from its run log, logs/train/fold_<k>.json) and benchmarks/train_loop.py at the
given batch sizes.
Prints Markdown tables and writes every figure to OUT/gpu_check.json. The data: --data DIR (images/ and
labels.csv with `filename` or `file` and `label` columns), else the demo's photos repeated up to --count.

benchmarks/gpu_check.sh installs what a bare GPU machine lacks from carried wheels, then runs this. On this
CPU it runs too, to try it out: python benchmarks/gpu_check.py --count 40 --set epochs=1 --batch-sizes 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml
from workspace import REPO, add_set_option, dvc_commands, parse_overrides, set_params

COPIED = ("burrscope", "stages", "benchmarks", "params.yaml", "dvc.yaml")
DATA_STAGES = ("normalise", "composite", "resize", "split")


def make_workspace(root: Path, data: Path | None, count: int, overrides: dict) -> None:
    """The code and params in `root`, with a labels CSV and raw folder the params point at."""
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(source, root / name)
    raw = root / "raw"
    if data is not None:
        labels = pd.read_csv(data / "labels.csv", dtype=str).rename(columns={"filename": "file"})
        raw.symlink_to((data / "images").resolve(), target_is_directory=True)
    else:  # the demo's photos, repeated under new names: the same sizes and content, `count` of them
        demo = pd.read_csv(REPO / "data/demo/labels.csv", dtype=str)
        raw.mkdir()
        rows = []
        for i in range(count):
            row = demo.iloc[i % len(demo)]
            name = f"copy{i // len(demo)}_{row['file']}"
            shutil.copy(REPO / "data/demo/images" / row["file"], raw / name)
            rows.append({"file": name, "label": row["label"]})
        labels = pd.DataFrame(rows)
    labels[["file", "label"]].to_csv(root / "labels.csv", index=False)
    set_params(root, {"data.raw_dir": "raw", "data.labels": "labels.csv", **overrides})


def run(root: Path, command: str, env: dict[str, str]) -> float:
    """Wall seconds of one stage command; exits with its output if it fails."""
    started = time.perf_counter()
    done = subprocess.run(
        shlex.split(command.replace("python ", f"{sys.executable} ", 1)),
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds


def run_together(root: Path, commands: list[str], env: dict[str, str]) -> float:
    """Wall seconds until the last of `commands`, started at once, has finished."""
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            shlex.split(c.replace("python ", f"{sys.executable} ", 1)),
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for c in commands
    ]
    outputs = [proc.communicate()[0] for proc in procs]
    seconds = time.perf_counter() - started
    failed = [(c, out) for c, proc, out in zip(commands, procs, outputs, strict=True) if proc.returncode]
    if failed:
        sys.exit(f"{failed[0][0]} failed:\n{failed[0][1][-3000:]}")
    return seconds


def fold_timing(root: Path, folds: int) -> list[dict[str, float]]:
    return [json.loads((root / f"logs/train/fold_{k}.json").read_text())["timing"] for k in range(folds)]


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"CPU only ({platform.processor() or platform.machine()}), torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="folder with images/ and labels.csv (default: the demo, repeated)")
    parser.add_argument("--count", type=int, default=600, help="photos made from the demo when --data is not given")
    parser.add_argument("--batch-sizes", default="8,32,128", help="for benchmarks/train_loop.py")
    parser.add_argument("--loop-epochs", type=int, default=3, help="epochs per benchmarks/train_loop.py run")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")), help="where gpu_check.json goes")
    add_set_option(parser)
    args = parser.parse_args()
    overrides = parse_overrides(args.set)
    figures: dict = {"device": device_name(), "overrides": overrides}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_workspace(root, args.data, args.count, overrides)
        params = yaml.safe_load((root / "params.yaml").read_text())
        folds = params["split"]["folds"]
        commands = dvc_commands(root)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
        stages = {name: run(root, commands[name], env) for name in DATA_STAGES}
        trains = [commands[f"train@{k}"] for k in range(folds)]
        # Two pipeline runs (two MLflow parent runs): the experiment name is part of the parent's key.
        sequential = {
            f"train@{k}": run(root, c, {**env, "DVC_EXP_NAME": "gpu-check-sequential"}) for k, c in enumerate(trains)
        }
        sequential_timing = fold_timing(root, folds)
        together = run_together(root, trains, {**env, "DVC_EXP_NAME": "gpu-check-together"})
        stages["aggregate"] = run(root, commands["aggregate"], {**env, "DVC_EXP_NAME": "gpu-check-together"})
        metrics = json.loads((root / "results/aggregate/metrics.json").read_text())
        n_images = len(pd.read_csv(root / "data/processed/folds.csv"))
        loop_json = Path(tmp) / "loop.json"
        subprocess.run(
            [
                sys.executable,
                str(root / "benchmarks/train_loop.py"),
                "--images",
                str(root / "data/processed/images"),
                "--folds",
                str(root / "data/processed/folds.csv"),
                "--epochs",
                str(args.loop_epochs),
                "--batch-sizes",
                args.batch_sizes,
                "--json",
                str(loop_json),
                *[f"--set={item}" for item in args.set],
            ],
            cwd=root,
            env=env,
            check=True,
        )
        loop = json.loads(loop_json.read_text())
    figures |= {
        "images": n_images,
        "stages_s": stages,
        "train_sequential_s": sequential,
        "train_sequential_total_s": sum(sequential.values()),
        "train_together_s": together,
        "fold_timing": sequential_timing,
        "overall": metrics["overall"],
        "train_loop": loop,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(figures, indent=2))
    print(f"## GPU check: {figures['device']}, {n_images} photos, {folds} folds, overrides {overrides or 'none'}")
    print("| stage | wall s |\n|---|---|")
    for name, seconds in {**stages, **sequential}.items():
        print(f"| {name} | {seconds:.1f} |")
    print(f"| all train stages, one after another | {figures['train_sequential_total_s']:.1f} |")
    print(f"| all train stages, at once | {together:.1f} |")
    phases = sorted({phase for timing in sequential_timing for phase in timing})
    print("| fold | " + " | ".join(phases) + " |\n" + "|---" * (len(phases) + 1) + "|")
    for k, timing in enumerate(sequential_timing):
        print(f"| {k} | " + " | ".join(f"{timing.get(p, 0):.1f}" for p in phases) + " |")
    overall = metrics["overall"]
    print("pooled CV: " + ", ".join(f"{k} {v:.3f}" for k, v in overall.items()))


if __name__ == "__main__":
    main()
