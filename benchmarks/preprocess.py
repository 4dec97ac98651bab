"""Throughput of the data stages (normalise, composite, resize) against a one-core PIL floor.

Generates N RGBA cut-outs with the demo generator's parts (scripts/make_demo_data.py), rescaled so that the
long side is log-uniform in 200..2000 px (thumbnails to phone-photo crops) and one in ten made 2-3 times
thinner (rods, strips: up to about 1:25). Then runs each stage's CLI as the pipeline does,
`python -m stages.<name> ...` in a temp workspace holding params.yaml, using every core it is given, and
times the floor: PIL decoding the same files and encoding them as PNG, in this process, on one core.
Process start-up is the median wall time of `python -m stages.<name> --help` (interpreter and imports).
Besides wall time it reports CPU time (worker processes included), which a machine busy with other work
inflates far less: "x floor (CPU)" is what the stage costs per image relative to the floor, and "cores busy"
how many cores the stage kept busy on average.
Usage:

    python benchmarks/preprocess.py                      # 2000 images; prints a Markdown table
    python benchmarks/preprocess.py --count 200 --raw ../cutouts   # keep the cut-outs and reuse them
"""

from __future__ import annotations

import argparse
import io
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import PIL
from PIL import Image
from workspace import REPO, set_params, tool_env

sys.path.insert(0, str(REPO / "scripts"))
from make_demo_data import render

LONG_SIDE = (200, 2000)
THIN_SHARE, THINNER = 0.1, (2.0, 3.0)


def cutout(seed: int) -> Image.Image:
    """One RGBA cut-out of a realistic size: a demo part, rescaled, sometimes made long and thin."""
    rng = np.random.default_rng(seed)
    img = render(rng, burr=bool(seed % 2))
    scale = math.exp(rng.uniform(*np.log(LONG_SIDE))) / max(img.size)
    thin = rng.uniform(*THINNER) if rng.random() < THIN_SHARE else 1.0
    long_axis = int(img.width < img.height)
    size = [max(1, round(side * scale / (1 if axis == long_axis else thin))) for axis, side in enumerate(img.size)]
    return img.resize(tuple(size), Image.Resampling.BICUBIC)


def _write_cutout(seed: int, folder: Path) -> None:
    # Plain PNG export (compress level 6), as image editors write cut-outs.
    cutout(seed).save(folder / f"cutout_{seed:05d}.png")


def generate(raw: Path, count: int) -> None:
    """raw/images/cutout_<i>.png and raw/labels.csv, unless raw/labels.csv already lists `count` images."""
    labels = raw / "labels.csv"
    if labels.exists() and len(labels.read_text().splitlines()) == count + 1:
        print(f"reusing the {count} cut-outs in {raw}", file=sys.stderr)
        return
    shutil.rmtree(raw / "images", ignore_errors=True)
    (raw / "images").mkdir(parents=True)
    started = time.perf_counter()
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write_cutout, range(count), [raw / "images"] * count, chunksize=8))
    labels.write_text("file,label\n" + "".join(f"cutout_{i:05d}.png,{i % 2}\n" for i in range(count)))
    print(f"generated {count} cut-outs in {time.perf_counter() - started:.0f} s", file=sys.stderr)


def floor(paths: list[Path]) -> tuple[float, float]:
    """Wall and CPU seconds of PIL decoding each file and encoding it as PNG (default settings), on one core."""
    started, cpu = time.perf_counter(), time.process_time()
    for path in paths:
        with Image.open(path) as img:
            img.save(io.BytesIO(), format="PNG")
    return time.perf_counter() - started, time.process_time() - cpu


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(root: Path, *args: str | Path) -> tuple[float, float]:
    """Wall and CPU seconds (its worker processes included) of `python <args>` in the workspace; exits with
    the command's output if it fails."""
    started, cpu = time.perf_counter(), children_cpu()
    done = subprocess.run([sys.executable, *map(str, args)], cwd=root, env=tool_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{' '.join(map(str, args))} failed:\n{done.stdout}{done.stderr}")
    return seconds, children_cpu() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000, help="number of cut-outs (default 2000)")
    parser.add_argument("--raw", type=Path, help="keep the generated cut-outs here and reuse them next time")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    load = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        raw = args.raw or root / "raw"
        generate(raw, args.count)
        shutil.copy(REPO / "params.yaml", root / "params.yaml")
        set_params(root, {"data.raw_dir": str(raw / "images"), "data.labels": str(raw / "labels.csv")})
        paths = sorted((raw / "images").iterdir())
        pixels = sorted(math.prod(Image.open(path).size) for path in paths)
        stages = {
            "normalise": (raw / "images", raw / "labels.csv", "named", "manifest.csv"),
            "composite": ("named", "composited"),
            "resize": ("composited", "resized"),
        }
        rows = []
        for name, stage_args in stages.items():
            startup = statistics.median(run(root, "-m", f"stages.{name}", "--help")[0] for _ in range(3))
            rows.append((name, *run(root, "-m", f"stages.{name}", *stage_args), startup))
        floor_wall, floor_cpu = floor(paths)

    n = args.count
    print(
        f"{n} RGBA cut-outs, median {statistics.median(pixels) / 1e6:.2f} MP, largest {pixels[-1] / 1e6:.2f} MP; "
        f"{cores} cores; load average {load:.1f} before, {os.getloadavg()[0]:.1f} after; "
        f"Python {platform.python_version()}, Pillow {PIL.__version__}\n"
    )
    print(
        "| stage | wall time (s) | images/s | x floor | CPU ms/image | x floor (CPU) | cores busy "
        "| process start-up (s) | start-up share |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, seconds, cpu, startup in rows:
        print(
            f"| {name} | {seconds:.1f} | {n / seconds:.1f} | {floor_wall / seconds:.2f} | {cpu / n * 1e3:.1f} "
            f"| {floor_cpu / cpu:.2f} | {cpu / seconds:.1f} | {startup:.2f} | {startup / seconds:.0%} |"
        )
    print(
        f"| floor: PIL decode + PNG encode, 1 core | {floor_wall:.1f} | {n / floor_wall:.1f} | 1.00 "
        f"| {floor_cpu / n * 1e3:.1f} | 1.00 | {floor_cpu / floor_wall:.1f} | - | - |"
    )


if __name__ == "__main__":
    main()
