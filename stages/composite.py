"""Stage 2: flatten every photo onto the background colour, upright (EXIF applied), as RGB PNG."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from stages.errors import user_errors
from stages.imageops import RGB, composite_on_background, map_folder
from stages.params import load_params

# Only the resize stage reads these: at zlib level 1 they are written and read back about 3x faster than at
# Pillow's default level 6, for ~20 % more bytes. Deterministic all the same, so DVC's hash of the folder is
# stable.
PNG_LEVEL = 1


def composite(in_dir: Path, out_dir: Path, background: RGB, workers: int | None = None) -> int:
    """Write out_dir/<stem>.png for every image in in_dir, on every core (see map_folder); returns how many."""
    return map_folder(in_dir, out_dir, partial(composite_on_background, background=background), PNG_LEVEL, workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("in_dir", type=Path, help="normalised photos")
    parser.add_argument("out_dir", type=Path, help="folder for the composited PNGs")
    args = parser.parse_args()
    with user_errors():
        params = load_params()["composite"]
        count = composite(args.in_dir, args.out_dir, tuple(params["background"]))
    print(f"composite: {count} images -> {args.out_dir}")


if __name__ == "__main__":
    main()
