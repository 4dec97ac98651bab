"""Stage 1: copy the raw photos under clean ASCII names; write the manifest joining them to their labels.

Arguments:
  RAW_DIR: folder of raw photos (read only)
  LABELS_CSV: CSV with columns file, label[, group]
  OUT_DIR: folder for the renamed copies
  MANIFEST_CSV: manifest to write
"""

from __future__ import annotations

import sys

from burrscope.console import path_arguments
from burrscope.data.manifest import normalise_folder
from burrscope.errors import user_errors
from burrscope.params import load_params


def main() -> None:
    args = path_arguments(__doc__, "raw_dir", "labels_csv", "out_dir", "manifest_csv")
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
