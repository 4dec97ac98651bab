"""Stage 1: copy the raw photos under clean ASCII names; write the manifest joining them to their labels."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from burrscope.data.manifest import normalise_folder
from burrscope.errors import user_errors
from burrscope.params import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("raw_dir", type=Path, help="folder of raw photos (read only)")
    parser.add_argument("labels_csv", type=Path, help="CSV with columns file, label[, group]")
    parser.add_argument("out_dir", type=Path, help="folder for the renamed copies")
    parser.add_argument("manifest_csv", type=Path, help="manifest to write")
    args = parser.parse_args()
    with user_errors():
        data = load_params().data
        manifest = normalise_folder(
            args.raw_dir,
            args.labels_csv,
            args.out_dir,
            args.manifest_csv,
            on_bad_image=data.on_bad_image,
            classes=data.classes,
        )
    skipped = manifest[manifest.skipped != ""]
    for row in skipped.itertuples():
        print(f"warning: skipped {row.original_name}: {row.skipped} (data.on_bad_image: skip)", file=sys.stderr)
    print(
        f"normalise: {len(manifest) - len(skipped)} images -> {args.out_dir}, {args.manifest_csv}"
        + (f"; {len(skipped)} skipped, listed in the manifest" if len(skipped) else "")
    )


if __name__ == "__main__":
    main()
