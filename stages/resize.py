"""Stage 3: pad every composited photo to a square and resize it to the model's input size."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from stages.errors import user_errors
from stages.imageops import RGB, map_folder, prepare_input
from stages.params import load_params


def resize(in_dir: Path, out_dir: Path, background: RGB, img_size: int, workers: int | None = None) -> int:
    """Write out_dir/<stem>.png, img_size square, for every image in in_dir, on every core; returns how many.

    Pillow's default PNG level: small files encode fast at it, and their bytes (hence DVC's hash, which
    decides whether training reruns) stay those of earlier runs.
    """
    transform = partial(prepare_input, background=background, img_size=img_size)
    return map_folder(in_dir, out_dir, transform, workers=workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("in_dir", type=Path, help="composited RGB PNGs")
    parser.add_argument("out_dir", type=Path, help="folder for the square model inputs")
    args = parser.parse_args()
    with user_errors():
        params = load_params()
        # The padding is the same colour transparent pixels became, so the square has no visible border.
        count = resize(
            args.in_dir, args.out_dir, tuple(params["composite"]["background"]), params["resize"]["img_size"]
        )
    print(f"resize: {count} images -> {args.out_dir}")


if __name__ == "__main__":
    main()
