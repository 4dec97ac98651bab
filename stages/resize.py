"""Stage 3: pad every composited photo to a square and resize it to the model's input size."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from burrscope.data.folders import map_folder
from burrscope.data.images import prepare_input
from burrscope.errors import user_errors
from burrscope.params import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("in_dir", type=Path, help="composited RGB PNGs")
    parser.add_argument("out_dir", type=Path, help="folder for the square model inputs")
    args = parser.parse_args()
    with user_errors():
        params = load_params()
        # The padding is the same colour transparent pixels became, so the square has no visible border.
        # Pillow's default PNG level: small files encode fast at it, and their bytes (hence DVC's hash, which
        # decides whether training reruns) stay those of earlier runs.
        transform = partial(prepare_input, background=params.background, img_size=params.img_size)
        count = map_folder(args.in_dir, args.out_dir, transform)
    print(f"resize: {count} images -> {args.out_dir}")


if __name__ == "__main__":
    main()
