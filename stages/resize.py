"""Stage 3: pad every composited photo to a square and resize it to the model's input size.

Arguments:
  IN_DIR: composited RGB PNGs
  OUT_DIR: folder for the square model inputs
"""

from __future__ import annotations

from functools import partial

from burrscope.console import path_arguments
from burrscope.data.folders import map_folder
from burrscope.data.images import prepare_input
from burrscope.errors import user_errors
from burrscope.params import load_params


def main() -> None:
    args = path_arguments(__doc__, "in_dir", "out_dir")
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
