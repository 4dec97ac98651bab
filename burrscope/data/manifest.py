"""The normalise stage's work: every raw photo decoded once, joined to its label, copied under a clean name."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from burrscope import console
from burrscope.data.folders import list_images, parallel_map
from burrscope.data.images import BadImage, inspect_image
from burrscope.data.labels import label_problems, match_names, read_labels
from burrscope.data.naming import assign_names
from burrscope.errors import DataError
from burrscope.files import atomic_dir, sha256_file, write_text_atomic

BAD_IMAGE_FIX = "re-export it or remove it (and its labels row), or set data.on_bad_image: skip in params.yaml"


def _sha256_or_blank(path: Path) -> str:
    """sha256 of a file; "" for a skipped file that cannot even be read."""
    try:
        return sha256_file(path)
    except OSError:
        return ""


def _examine(path: Path) -> tuple[tuple[int, int, str] | BadImage, str]:
    """One image's share of the manifest: inspect_image's result (or the BadImage it raised) and the sha256."""
    try:
        header: tuple[int, int, str] | BadImage = inspect_image(path)
    except BadImage as err:
        header = err
    return header, _sha256_or_blank(path)


def manifest_row(
    name: str,
    labels: pd.DataFrame,
    examined: tuple[tuple[int, int, str] | BadImage, str],
    names: dict[str, tuple[str, str]],
) -> dict[str, str | int]:
    """The manifest's row of the raw image `name`: `labels` indexed by file, what `_examine` found, and
    (normalised name, collision) of every kept image."""
    header, sha256 = examined
    normalised, collision = names.get(name, ("", ""))
    width, height, mode = ("", "", "") if isinstance(header, BadImage) else header
    row = {
        "original_name": name,
        "normalised_name": normalised,
        "label": labels.at[name, "label"],
        "sha256": sha256,
        "width": width,
        "height": height,
        "mode": mode,
        "collision": collision,
        "skipped": str(header) if isinstance(header, BadImage) else "",
    }
    if "group" in labels.columns:
        row["group"] = labels.at[name, "group"]
    return row


def build_manifest(
    raw_dir: Path,
    labels_csv: Path,
    on_bad_image: str = "error",
    classes: Sequence[object] | None = None,
    *,
    workers: int | None = None,
    warn: Callable[[str], None] = console.warn,
) -> pd.DataFrame:
    """One row per raw image (MANIFEST_COLUMNS, then group if labelled): kept images sorted by
    normalised_name, then skipped ones by original_name.

    A labels row naming an image with other case or spacing is matched to it (labels.match_names), with a
    `warn`ing.

    on_bad_image="error" raises DataError listing every unusable image; "skip" keeps their rows with the
    reason in `skipped` and no normalised name (nothing is copied for them). Labels problems (including
    labels outside `classes`, when given) always raise DataError listing every problem. Images are decoded
    and hashed on every core (workers as in burrscope.data.folders.parallel_map); the result does not depend on it.
    """
    if on_bad_image not in ("error", "skip"):
        raise ValueError(f"on_bad_image must be 'error' or 'skip', not {on_bad_image!r}")
    paths = list_images(raw_dir)
    labels, notes = match_names(read_labels(labels_csv), [path.name for path in paths])
    for note in notes:
        warn(f"{labels_csv}: {note}")
    problems = label_problems(labels, [path.name for path in paths], classes)
    examined = dict(zip([path.name for path in paths], parallel_map(_examine, paths, workers), strict=True))
    bad = {name: str(header) for name, (header, _) in examined.items() if isinstance(header, BadImage)}
    if on_bad_image == "error":
        problems += [f"{name}: {reason}; {BAD_IMAGE_FIX}" for name, reason in bad.items()]
    if problems:
        raise DataError(
            f"{labels_csv} and {raw_dir} need fixing ({len(problems)} problem(s)):\n"
            + "\n".join(f"  {problem}" for problem in problems)
        )
    kept = [path for path in paths if path.name not in bad]
    if not kept:
        raise DataError(f"{raw_dir}: all {len(paths)} images are unusable (skipped); fix or replace them.")
    names = dict(zip([path.name for path in kept], assign_names([path.name for path in kept]), strict=True))
    rows = [manifest_row(path.name, labels.set_index("file"), examined[path.name], names) for path in paths]
    manifest = pd.DataFrame(rows).assign(_skip=lambda t: t.skipped != "")
    return manifest.sort_values(["_skip", "normalised_name", "original_name"], ignore_index=True).drop(columns="_skip")


def normalise_folder(
    raw_dir: Path,
    labels_csv: Path,
    out_dir: Path,
    manifest_csv: Path,
    *,
    on_bad_image: str = "error",
    classes: Sequence[object] | None = None,
    workers: int | None = None,
) -> pd.DataFrame:
    """Copy each usable raw image byte-for-byte to out_dir/<normalised_name>, then write the manifest."""
    manifest = build_manifest(raw_dir, labels_csv, on_bad_image, classes, workers=workers)
    with atomic_dir(out_dir) as tmp:
        for row in manifest[manifest.skipped == ""].itertuples():
            shutil.copyfile(Path(raw_dir) / row.original_name, tmp / row.normalised_name)
    write_text_atomic(manifest_csv, manifest.to_csv(index=False, lineterminator="\n"))
    return manifest
