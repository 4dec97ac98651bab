"""Stage 2: flatten every photo onto the background colour, upright (EXIF applied), as RGB PNG.

Arguments:
  IN_DIR: normalised photos
  OUT_DIR: folder for the composited PNGs
"""

from __future__ import annotations

from functools import partial

from burrscope.console import path_arguments
from burrscope.data.folders import map_folder
from burrscope.data.images import composite_on_background
from burrscope.errors import user_errors
from burrscope.params import load_params

# Only the resize stage reads these: at zlib level 1 they are written and read back about 3x faster than at
# Pillow's default level 6, for ~20 % more bytes. Deterministic all the same, so DVC's hash of the folder is
# stable.
PNG_LEVEL = 1


def main() -> None:
    args = path_arguments(__doc__, "in_dir", "out_dir")
    with user_errors():
        background = load_params().background
        count = map_folder(
            args.in_dir, args.out_dir, partial(composite_on_background, background=background), PNG_LEVEL
        )
    print(f"composite: {count} images -> {args.out_dir}")


if __name__ == "__main__":
    main()
