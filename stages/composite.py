"""Stage 2: flatten every photo onto the background colour, upright (EXIF applied), as RGB PNG."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from burrscope.data.folders import map_folder
from burrscope.data.images import composite_on_background
from burrscope.errors import user_errors
from burrscope.params import load_params

# Only the resize stage reads these: at zlib level 1 they are written and read back about 3x faster than at
# Pillow's default level 6, for ~20 % more bytes. Deterministic all the same, so DVC's hash of the folder is
# stable.
PNG_LEVEL = 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("in_dir", type=Path, help="normalised photos")
    parser.add_argument("out_dir", type=Path, help="folder for the composited PNGs")
    args = parser.parse_args()
    with user_errors():
        background = load_params().background
        count = map_folder(
            args.in_dir, args.out_dir, partial(composite_on_background, background=background), PNG_LEVEL
        )
    print(f"composite: {count} images -> {args.out_dir}")


if __name__ == "__main__":
    main()
