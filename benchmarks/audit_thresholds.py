"""Where to put the audit's thresholds: how alike it finds distinct photos and planted copies of one
(audit.duplicate_similarity), and how isolated it finds ordinary photos and planted strangers (audit.outlier_z).

Every raw cut-out of a folder (default: the demo's 120) gets planted near-duplicates: resized to 60 %, brightened
by 20 %, re-saved as a JPEG of quality 70 (alpha flattened onto the background), shifted (a transparent margin of
5 % or 10 % of the width on the left, or of 25 % on the left and top: once padded and centred, the part sits
off-centre, and smaller), and resized, shifted by 10 % and brightened at once. Each goes through the pipeline's
own composite and pad/resize (burrscope.data.images) and the audit's pooled features (burrscope.audit.features,
the params.yaml recipe).
Prints, for the distinct photos, the largest cosine similarity of each to any other, and for each kind of copy
its similarity to its photo: a threshold belongs between the two; then, per candidate threshold, how many pairs
of distinct photos it flags and what share of each kind of copy it finds. Then the robust z-score of each photo's
isolation (audit.outlier_neighbours nearest neighbours) among the photos alone, and of strangers planted among
them one at a time: random noise, an empty cut-out (all background), a flat grey square, a checkerboard, and
any images given with --stranger.

    python benchmarks/audit_thresholds.py [--raw data/demo/images] [--stranger PATH ...]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from burrscope.audit.features import pooled_features
from burrscope.audit.neighbours import neighbour_distances, robust_z, unit_rows
from burrscope.data.folders import list_images
from burrscope.data.images import composite_on_background, prepare_input
from burrscope.params import load_params
from burrscope.training.features import CACHE_ENV


def resized(img: Image.Image) -> Image.Image:
    return img.resize((max(1, round(img.width * 0.6)), max(1, round(img.height * 0.6))), Image.Resampling.LANCZOS)


def shifted(share: float, both: bool = False) -> Callable[[Image.Image], Image.Image]:
    """A transparent margin of `share` of the width on the left (and of the height on top, if `both`): once
    padded to a square and centred, the part sits off-centre, and smaller when the margin adds to the long side."""

    def shift(img: Image.Image) -> Image.Image:
        left, top = round(img.width * share), round(img.height * share) if both else 0
        canvas = Image.new("RGBA", (img.width + left, img.height + top), (0, 0, 0, 0))
        canvas.paste(img, (left, top))
        return canvas

    return shift


def brightened(img: Image.Image) -> Image.Image:
    *rgb, alpha = img.split()
    brighter = ImageEnhance.Brightness(Image.merge("RGB", rgb)).enhance(1.2)
    return Image.merge("RGBA", (*brighter.split(), alpha))


def jpeg(img: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    composite_on_background(img, (0, 0, 0)).save(buffer, format="JPEG", quality=70)
    return Image.open(io.BytesIO(buffer.getvalue()))


def all_three(img: Image.Image) -> Image.Image:
    return brightened(shifted(0.1)(resized(img)))


COPIES: dict[str, Callable[[Image.Image], Image.Image]] = {
    "resized 60 %": resized,
    "brightened 20 %": brightened,
    "JPEG q70": jpeg,
    "shifted 5 %": shifted(0.05),
    "shifted 10 %": shifted(0.1),
    "shifted 25 % both ways": shifted(0.25, both=True),
    "resized + shifted 10 % + brightened": all_three,
}
THRESHOLDS = (0.95, 0.955, 0.96, 0.965, 0.97, 0.98)
NEIGHBOURS = (3, 5, 10)


def model_inputs(raw: Path, out: Path, background: tuple[int, int, int], size: int) -> list[list[str]]:
    """Each raw photo and its copies as model inputs in `out`: file names, the originals first, then each kind
    of copy in COPIES' order, each list in the photos' order."""
    paths = list_images(raw)
    kinds = [lambda img: img, *COPIES.values()]
    names = [[f"{k}_{i:04d}.png" for i in range(len(paths))] for k in range(len(kinds))]
    for i, path in enumerate(paths):
        with Image.open(path) as opened:
            img = opened.convert("RGBA")
        for k, make in enumerate(kinds):
            model_input = prepare_input(composite_on_background(make(img), background), background, size)
            model_input.save(out / names[k][i])
    return names


def strangers(out: Path, extra: list[Path], background: tuple[int, int, int], size: int) -> dict[str, str]:
    """Model inputs unlike any part, in `out`: {what: file name}."""
    rng = np.random.default_rng(0)
    checker = (np.indices((size, size)).sum(axis=0) // 16 % 2 * 255).astype(np.uint8)
    arrays = {
        "random noise": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "empty cut-out": np.zeros((size, size, 3), np.uint8) + np.array(background, np.uint8),
        "flat grey": np.full((size, size, 3), 128, np.uint8),
        "checkerboard": np.repeat(checker[..., None], 3, axis=2),
    }
    names = {}
    for i, (what, pixels) in enumerate(arrays.items()):
        names[what] = f"stranger_{i}.png"
        Image.fromarray(pixels).save(out / names[what])
    for i, path in enumerate(extra):
        with Image.open(path) as img:
            names[path.name] = f"stranger_extra_{i}.png"
            prepare_input(composite_on_background(img, background), background, size).save(out / names[path.name])
    return names


def row(what: str, values: np.ndarray) -> str:
    """A markdown table row: `what`, then the values' min, 1 %, 5 %, median, 95 % and max."""
    cells = [f"{np.quantile(values, q / 100):.4f}" for q in (0, 1, 5, 50, 95, 100)]
    return f"| {what} | {' | '.join(cells)} |"


def duplicate_tables(unit: np.ndarray, n: int, photos: list[Path]) -> None:
    """Similarities of distinct photos and of each kind of copy, then what each candidate threshold flags."""
    originals = unit[:n]
    similarity = originals @ originals.T
    np.fill_diagonal(similarity, -1)
    own = {kind: (originals * unit[k * n : (k + 1) * n]).sum(axis=1) for k, kind in enumerate(COPIES, start=1)}
    print(f"| what | min | 1 % | 5 % | median | 95 % | max |\n|{'---|' * 7}")
    print(row("distinct photos: each one's most similar other photo", similarity.max(axis=1)))
    for kind, values in own.items():
        print(row(f"{kind} copy: similarity to its photo", values))
    pairs = similarity[np.triu_indices(n, 1)]
    print(f"\n| audit.duplicate_similarity | {' | '.join(map(str, THRESHOLDS))} |\n|{'---|' * (len(THRESHOLDS) + 1)}")
    print(f"| pairs of distinct photos flagged | {' | '.join(str(int((pairs >= t).sum())) for t in THRESHOLDS)} |")
    for kind, values in own.items():
        print(f"| {kind} copies found | {' | '.join(f'{(values >= t).mean():.0%}' for t in THRESHOLDS)} |")
    first, second = np.unravel_index(similarity.argmax(), similarity.shape)
    print(f"most similar distinct photos: {photos[first].name} and {photos[second].name}, {similarity.max():.4f}")


def outlier_table(originals: np.ndarray, planted: dict[str, np.ndarray]) -> None:
    """Robust z-scores of isolation: the photos' largest among themselves, and each stranger's among them."""
    print(f"\n| outlier_neighbours | photos' largest z | {' | '.join(planted)} |\n|{'---|' * (len(planted) + 2)}")
    for k in NEIGHBOURS:
        alone = robust_z(neighbour_distances(originals, k)).max()
        cells = [f"{robust_z(neighbour_distances(np.vstack([originals, one]), k))[-1]:.2f}" for one in planted.values()]
        print(f"| {k} | {alone:.2f} | {' | '.join(cells)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, default=Path("data/demo/images"))
    parser.add_argument("--stranger", type=Path, nargs="*", default=[], help="more images to plant as outliers")
    args = parser.parse_args()
    params = load_params()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ[CACHE_ENV] = str(Path(tmp) / "cache")  # the workspace's cache is left alone
        folder = Path(tmp) / "inputs"
        folder.mkdir()
        names = model_inputs(args.raw, folder, params.background, params.img_size)
        planted = strangers(folder, args.stranger, params.background, params.img_size)
        files = [name for kind in names for name in kind] + list(planted.values())
        unit = unit_rows(pooled_features(folder, files, params.recipe, 2))
    n = len(names[0])
    print(f"{n} photos of {args.raw}, model {params.recipe.model}, {params.img_size} px\n")
    duplicate_tables(unit, n, list_images(args.raw))
    first = len(files) - len(planted)
    outlier_table(unit[:n], {what: unit[first + i : first + i + 1] for i, what in enumerate(planted)})


if __name__ == "__main__":
    main()
