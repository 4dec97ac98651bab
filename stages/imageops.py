"""Image operations shared by the data stages: pure functions on PIL images, plus the folder plumbing."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps

from stages.errors import DataError
from stages.files import atomic_dir

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
# Clutter that file managers drop into photo folders; anything starting with "." is hidden too.
JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini", "ehthumbs.db"})
# Greyscale modes whose samples span 16 bits: Pillow's own convert() clips them at 255 (all white).
GREY16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})

# prepare_input shrinks a larger image (keeping its aspect) before padding, so that the padded square,
# side * side * 3 bytes, stays small: a 20000x200 strip would otherwise pad to 1.2 GB. 4096 >= any img_size.
MAX_PAD_SIDE = 4096

# Starting and stopping a pool of two workers takes 0.05-0.2 s (more on a loaded machine), the work of a few
# images: below 8 images per worker, serial is as fast. Tasks of 4 images keep the traffic between processes
# negligible while images of uneven sizes still spread evenly over the workers.
MIN_IMAGES_PER_WORKER = 8
CHUNK = 4

RGB = tuple[int, int, int]
T = TypeVar("T")
R = TypeVar("R")


def output_name(name: str) -> str:
    """Name a stage writes for input `name`: same stem, always PNG (lossless, keeps later stages exact)."""
    return f"{Path(name).stem}.png"


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


def _as_rgba(img: Image.Image) -> Image.Image:
    """`img` as RGBA, honouring alpha bands and `transparency`; 16-bit grey is scaled, not clipped."""
    if img.mode in GREY16_MODES:
        raw = np.asarray(img).astype(np.int64)
        grey = (np.clip(raw, 0, 0xFFFF) >> 8).astype(np.uint8)
        transparent = img.info.get("transparency")
        opaque = raw != transparent if isinstance(transparent, int) else np.ones(raw.shape, bool)
        return Image.fromarray(np.dstack([grey, grey, grey, np.where(opaque, 255, 0).astype(np.uint8)]), "RGBA")
    # convert("RGBA") keeps real alpha (RGBA, LA, PA, un-premultiplies RGBa) and turns P/L/RGB
    # `transparency` info into alpha; unlike convert("RGB"), it never exposes colours hidden under alpha 0.
    return img.convert("RGBA")


def composite_on_background(img: Image.Image, background: RGB) -> Image.Image:
    """Upright (EXIF-applied) RGB image of the first frame of `img`, alpha-blended onto `background`."""
    img.seek(0)  # multi-frame files (GIF, TIFF, WebP): the photo is the first frame
    rgba = _as_rgba(ImageOps.exif_transpose(img))
    out = Image.new("RGB", rgba.size, tuple(background))
    # Pillow's masked paste blends in integers with rounding, (src * a + bg * (255 - a) + 127) // 255, so
    # alpha 0 gives exactly the background and alpha 255 exactly the source; tests/test_imageops.py checks
    # every value and alpha against that formula. Blending in numpy instead made this function 5x slower.
    out.paste(rgba, (0, 0), rgba)
    return out


def pad_to_square(img: Image.Image, background: RGB) -> Image.Image:
    """Centre an RGB image on a background square whose side is its longer side; never crops.

    An odd difference puts the extra padding pixel on the right/bottom.
    """
    if img.mode != "RGB":
        raise ValueError(f"pad_to_square needs an RGB image, got mode {img.mode}; composite it first")
    side = max(img.size)
    square = Image.new("RGB", (side, side), tuple(background))
    square.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return square


def resize_square(img: Image.Image, img_size: int) -> Image.Image:
    """Antialiased (Lanczos) resize of a square image to img_size x img_size."""
    if img.width != img.height:
        raise ValueError(f"resize_square needs a square image, got {img.width}x{img.height}; pad it first")
    return img.resize((img_size, img_size), Image.Resampling.LANCZOS)


def shrink_long_side(img: Image.Image, max_side: int) -> Image.Image:
    """`img` resized (Lanczos, aspect kept, each side at least 1 px) so its longer side is at most max_side."""
    side = max(img.size)
    if side <= max_side:
        return img
    size = tuple(max(1, round(length * max_side / side)) for length in img.size)
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def prepare_input(img: Image.Image, background: RGB, img_size: int) -> Image.Image:
    """Model input: padded (not stretched, not cropped) to a square, then resized.

    An image longer than MAX_PAD_SIDE is first shrunk to that long side (still far above img_size), so the
    padded square never takes more than MAX_PAD_SIDE**2 * 3 bytes (50 MB); smaller images are padded as is.
    """
    return resize_square(pad_to_square(shrink_long_side(img, MAX_PAD_SIDE), background), img_size)


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
