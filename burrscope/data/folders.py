"""Folders of images: listing them strictly, and mapping a pure image operation over one, on every core."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

from PIL import Image

from burrscope.data.naming import output_name
from burrscope.errors import DataError
from burrscope.files import atomic_dir

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
# Clutter that file managers drop into photo folders; anything starting with "." is hidden too.
JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini", "ehthumbs.db"})

# Starting and stopping a pool of two workers takes 0.05-0.2 s (more on a loaded machine), the work of a few
# images: below 8 images per worker, serial is as fast. Tasks of 4 images keep the traffic between processes
# negligible while images of uneven sizes still spread evenly over the workers.
MIN_IMAGES_PER_WORKER = 8
CHUNK = 4

T = TypeVar("T")
R = TypeVar("R")


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name; hidden/system junk skipped, anything else refused.

    A symlink is followed when it points to a file inside `folder` (resolved), and refused when it points
    outside it or nowhere: the pipeline reads only what the folder holds.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found; check the path (run stages from the repository root).")
    images, unexpected = [], []
    root = folder.resolve()
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.name.lower() in JUNK_NAMES:
            continue
        if path.is_symlink():
            target = path.resolve()
            if not target.is_relative_to(root):
                unexpected.append(f"{path.name} (symlink to {target}, outside the folder: copy the file in instead)")
                continue
            if not target.exists():
                unexpected.append(f"{path.name} (broken symlink to {target}: remove it)")
                continue
        if path.is_dir():
            unexpected.append(f"{path.name}/ (sub-folder: move its images up, the folder must be flat)")
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(path)
        else:
            unexpected.append(f"{path.name} (not an image: move it out of the folder)")
    if unexpected:
        allowed = " ".join(sorted(IMAGE_EXTENSIONS))
        raise DataError(
            f"{folder} holds {len(unexpected)} unexpected entr{'y' if len(unexpected) == 1 else 'ies'} "
            f"(allowed: {allowed}):\n" + "\n".join(f"  {item}" for item in unexpected)
        )
    if not images:
        raise DataError(f"{folder} holds no images ({' '.join(sorted(IMAGE_EXTENSIONS))}); add some.")
    return images


def available_cores() -> int:
    """Cores this process may run on: honours taskset/cgroup pinning where the OS reports it (not macOS)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parallel_map(func: Callable[[T], R], items: Sequence[T], workers: int | None = None) -> list[R]:
    """[func(item) for item in items], in order, computed by `workers` processes (1: in this one).

    workers=None takes one per available core, but stays serial when there are fewer than
    MIN_IMAGES_PER_WORKER items per worker. An exception is raised as the serial loop would raise it: the
    one from the first failing item in order. `func` and the items must pickle (module-level functions).
    """
    if workers is None:
        workers = min(available_cores(), len(items) // MIN_IMAGES_PER_WORKER)
    if workers <= 1:
        return [func(item) for item in items]
    with ProcessPoolExecutor(workers) as pool:
        try:
            return list(pool.map(func, items, chunksize=CHUNK))
        except BaseException:
            pool.shutdown(cancel_futures=True)  # an error stops the stage: don't finish the folder first
            raise


def _write_transformed(
    source_and_target: tuple[Path, Path], transform: Callable[[Image.Image], Image.Image], compress_level: int
) -> None:
    """One image of map_folder: read, transform, write as PNG; a bad input is a DataError naming it."""
    path, target = source_and_target
    try:
        with Image.open(path) as img:
            result = transform(img)
    except (OSError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot read image ({err}); re-export or remove it.") from err
    except ValueError as err:  # e.g. a non-RGB file where an earlier stage's output belongs
        raise DataError(f"{path}: {err}.") from err
    result.save(target, format="PNG", compress_level=compress_level)


def map_folder(
    in_dir: Path,
    out_dir: Path,
    transform: Callable[[Image.Image], Image.Image],
    compress_level: int = 6,
    *,
    workers: int | None = None,
) -> int:
    """Write transform(image) as `<stem>.png` per image in `in_dir`; `out_dir` appears whole or not at all.

    compress_level is zlib's (6 is Pillow's default); workers as in parallel_map: the files written are the
    same whatever their number. A bad image raises DataError naming the first such file in sorted order.
    Returns the number of images written.
    """
    images = list_images(in_dir)
    targets: dict[str, Path] = {}
    for path in images:
        name = output_name(path.name)
        if name in targets:
            raise DataError(
                f"{in_dir}: {targets[name].name} and {path.name} would both be written as {name}; "
                "run the normalise stage, which gives every image a distinct stem."
            )
        targets[name] = path
    with atomic_dir(out_dir) as tmp:
        jobs = [(path, tmp / name) for name, path in targets.items()]
        parallel_map(partial(_write_transformed, transform=transform, compress_level=compress_level), jobs, workers)
    return len(targets)
