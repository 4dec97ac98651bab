"""Stage 1: copy the raw photos under clean ASCII names; write the manifest joining them to their labels."""

from __future__ import annotations

import argparse
import csv
import io
import re
import shutil
import struct
import sys
import unicodedata
import warnings
import zlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from anyascii import anyascii
from PIL import Image, UnidentifiedImageError

from stages.errors import DataError, user_errors
from stages.files import atomic_dir, sha256_file, write_text_atomic
from stages.imageops import list_images, parallel_map
from stages.params import load_params

# Transliteration lengthens names (one Chinese character -> up to 6 letters); stay far below 255 bytes.
MAX_STEM = 100
MANIFEST_COLUMNS = [
    "original_name", "normalised_name", "label", "sha256", "width", "height", "mode", "collision", "skipped"
]  # fmt: skip
# A labels-CSV "file" is a bare name in the raw folder: nothing that could reach outside it.
PATH_LIKE = re.compile(r"[/\\]|^\.\.?$|^[A-Za-z]:")
# Integer labels written as floats ("1.0", as pandas writes an int column holding a blank) mean the integer.
INTEGRAL_FLOAT = re.compile(r"^([+-]?\d+)\.0*$")
NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
BAD_IMAGE_FIX = "re-export it or remove it (and its labels row), or set data.on_bad_image: skip in params.yaml"


def _transliterate(text: str) -> str:
    """ASCII for `text`; CJK/Hangul syllables become separate words ("零件" -> " Ling  Jian ")."""
    # anyascii marks syllables of unspaced scripts only by capitalising them ("LingJian"), so a capitalised
    # transliteration of a character that is not itself upper case starts and ends a word.
    words = []
    for char in text:
        ascii_ = anyascii(char)
        words.append(f" {ascii_} " if ascii_[:1].isupper() and not char.isupper() else ascii_)
    return "".join(words)


def normalise_stem(stem: str) -> str:
    """Lower-case ASCII stem of [a-z0-9] runs joined by "_" ("IMG_3 (2)" -> "img_3_2"); idempotent."""
    # NFC first: macOS may hand us decomposed names, which must give the same result as composed ones.
    ascii_ = _transliterate(unicodedata.normalize("NFC", stem)).lower()
    clean = re.sub(r"[^a-z0-9]+", "_", ascii_).strip("_")[:MAX_STEM].strip("_")
    return clean or "image"


def normalise_name(name: str) -> str:
    """Normalised stem plus the lower-cased extension ("零件 7.PNG" -> "ling_jian_7.png")."""
    path = Path(name)
    return normalise_stem(path.stem) + path.suffix.lower()


def assign_names(original_names: Sequence[str]) -> list[tuple[str, str]]:
    """(normalised name, collision) per original name, in input order, with every normalised stem unique.

    Later stages write `<stem>.png`, so names collide on the stem ("a.jpg" vs "a.png"). Whatever the
    listing order, the first name in sorted order keeps the stem and later ones get `<stem>_2`, `<stem>_3`,
    ... skipping stems that any file has naturally. `collision` is the contested stem for every member of
    a colliding group, "" otherwise.
    """
    base = {name: normalise_stem(Path(name).stem) for name in original_names}
    members: defaultdict[str, list[str]] = defaultdict(list)
    for name in sorted(base):
        members[base[name]].append(name)
    taken = set(members)
    stem = {}
    for contested, names in members.items():
        stem[names[0]] = contested
        suffix = 2
        for name in names[1:]:
            while f"{contested}_{suffix}" in taken:
                suffix += 1
            stem[name] = f"{contested}_{suffix}"
            taken.add(stem[name])
    return [
        (stem[name] + Path(name).suffix.lower(), base[name] if len(members[base[name]]) > 1 else "")
        for name in original_names
    ]


def read_labels(labels_csv: Path) -> pd.DataFrame:
    """Labels table (columns file, label[, group], all str) plus `line`, its line number in the CSV."""
    try:
        # utf-8-sig drops the byte-order mark Excel writes; newline="" lets the CSV reader see CRLF as one break.
        with open(labels_csv, encoding="utf-8-sig", newline="") as fh:
            text = fh.read()
    except FileNotFoundError as err:
        raise DataError(f"{labels_csv}: labels file not found; check data.labels in params.yaml.") from err
    except UnicodeDecodeError as err:
        raise DataError(f"{labels_csv}: not UTF-8 text ({err.reason}); save it as 'CSV UTF-8'.") from err
    try:
        # skip_blank_lines=False keeps `line` true to what a spreadsheet shows; blank rows are dropped below.
        table = pd.read_csv(
            io.StringIO(text), sep=_separator(text), dtype=str, keep_default_na=False, skip_blank_lines=False
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error) as err:
        raise DataError(f"{labels_csv}: not a readable CSV ({err}).") from err
    table.columns = table.columns.str.strip()
    missing = [col for col in ("file", "label") if col not in table.columns]
    if missing:
        raise DataError(
            f"{labels_csv}: missing column(s) {', '.join(missing)}; found {', '.join(table.columns)}. "
            "The header must read file,label (and optionally group)."
        )
    table = table[[col for col in ("file", "label", "group") if col in table.columns]]
    table = table.assign(line=table.index + 2)
    table = table[(table.drop(columns="line") != "").any(axis=1)].reset_index(drop=True)
    # Stray spaces around a label would silently create a new class; file names must match exactly.
    for col in ("label", "group"):
        if col in table.columns:
            table[col] = table[col].str.strip()
    return table.assign(label=canonical_labels(table.label))


def _separator(text: str) -> str:
    """ "," unless the header line has no comma but a semicolon (Excel in many locales) or a tab."""
    header = next((line for line in text.splitlines() if line.strip()), "")
    if "," in header:
        return ","
    return next((sep for sep in (";", "\t") if sep in header), ",")


def canonical_labels(labels: pd.Series) -> pd.Series:
    """Labels as class names: "1.0" -> "1" when every non-empty label is an integer written as a float.

    Labels are text: "0"/"1", "burr"/"no_burr" are class names as written. Only a column of integers that a
    spreadsheet or pandas wrote as floats is rewritten, so "1" and "1.0" never become two classes.
    """
    given = labels[labels != ""]
    if len(given) and given.str.fullmatch(INTEGRAL_FLOAT.pattern + "|[+-]?\\d+").all():
        return labels.str.replace(INTEGRAL_FLOAT, r"\1", regex=True).map(lambda v: str(int(v)) if v else v)
    return labels


def _label_problems(
    labels: pd.DataFrame, image_names: Sequence[str], classes: Sequence[object] | None = None
) -> list[str]:
    """Every disagreement between the labels table, the image names and the declared classes, one line each."""
    problems = [f"line {row.line}: no file name" for row in labels.itertuples() if row.file == ""]
    problems += [
        f"line {row.line} ({row.file}): empty label" for row in labels.itertuples() if row.file and not row.label
    ]
    paths = labels.file.str.contains(PATH_LIKE)
    problems += [
        f"line {row.line} ({row.file}): a path, not a file name; name files as they appear inside the raw "
        "folder (data.raw_dir), without folders: nothing outside it is ever read"
        for row in labels[paths].itertuples()
    ]
    given = labels[labels.label != ""]
    fractional = given[given.label.str.fullmatch(NUMBER.pattern) & ~given.label.str.fullmatch(r"[+-]?\d+")]
    if len(fractional) and given.label.str.fullmatch(NUMBER.pattern).all():
        problems += [
            f"line {row.line} ({row.file}): label {row.label} is not a class; use whole numbers (0, 1) or names"
            for row in fractional.itertuples()
        ]
    if classes is not None:
        allowed = [str(label) for label in classes]
        problems += [
            f"line {row.line} ({row.file}): label {row.label!r} is not one of data.classes {allowed}; fix the "
            "label or add it to data.classes in params.yaml"
            for row in given.itertuples()
            if row.label not in allowed
        ]
    named = labels[(labels.file != "") & ~paths]
    for file, rows in named.groupby("file", sort=True):
        if len(rows) > 1:
            problems.append(f"{file}: listed {len(rows)} times, lines {', '.join(map(str, rows.line))}; keep one")
    if "group" in labels.columns and (labels.group != "").any():
        problems += [
            f"line {row.line} ({row.file}): empty group; fill in every group (a photo on its own can use "
            "its file name) or drop the column"
            for row in labels.itertuples()
            if not row.group
        ]
    images = set(image_names)
    unmatched = named[~named.file.isin(images)]
    # A near miss (case, stray spaces, decomposed accents, another extension) is the usual cause: point at
    # the row to fix.
    near = {_loose(row.file): row.line for row in unmatched.itertuples()}
    near_stem = {_loose(Path(row.file).stem): row for row in unmatched.itertuples()}
    listed = set(named.file)
    for name in image_names:
        if name not in listed:
            hint = ""
            if _loose(name) in near:
                hint = f" (line {near[_loose(name)]} differs only in case/spaces/accents)"
            elif _loose(Path(name).stem) in near_stem:
                row = near_stem[_loose(Path(name).stem)]
                hint = f" (line {row.line} names {row.file}: the extension must match the file's)"
            problems.append(f"{name}: image has no labels row{hint}")
    problems += [f"line {row.line} ({row.file}): no such image" for row in unmatched.itertuples()]
    return problems


def _loose(name: str) -> str:
    return unicodedata.normalize("NFC", name).strip().casefold()


class BadImage(Exception):
    """A file with an image extension that Pillow cannot fully decode; the message is the reason."""


def inspect_image(path: Path) -> tuple[int, int, str]:
    """Raw width, height and mode (EXIF orientation not applied) after decoding the whole first frame.

    Decoding once here catches a zero-byte, truncated or corrupt file, or a decompression bomb, at the
    first stage. Pillow's pixel limit (Image.MAX_IMAGE_PIXELS) stays on, and an image above it, which
    Pillow would only warn about below twice the limit, is refused too. Raises BadImage.
    """
    if path.stat().st_size == 0:
        raise BadImage("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                img.getexif()  # a corrupt EXIF block would otherwise fail the composite stage
                return img.width, img.height, img.mode
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImage(
            f"refused as a possible decompression bomb ({err}); Pillow's limit, Image.MAX_IMAGE_PIXELS, is "
            f"{Image.MAX_IMAGE_PIXELS} pixels: shrink the image below it"
        ) from None
    except PermissionError as err:
        raise BadImage(f"cannot be opened ({err.strerror}); check the file's permissions") from None
    except UnidentifiedImageError:
        raise BadImage("not an image Pillow can read (unknown format or corrupt header)") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error) as err:
        raise BadImage(f"truncated or corrupt image data ({err})") from None


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


def build_manifest(
    raw_dir: Path,
    labels_csv: Path,
    on_bad_image: str = "error",
    classes: Sequence[object] | None = None,
    workers: int | None = None,
) -> pd.DataFrame:
    """One row per raw image (MANIFEST_COLUMNS, then group if labelled): kept images sorted by
    normalised_name, then skipped ones by original_name.

    on_bad_image="error" raises DataError listing every unusable image; "skip" keeps their rows with the
    reason in `skipped` and no normalised name (nothing is copied for them). Labels problems (including
    labels outside `classes`, when given) always raise DataError listing every problem. Images are decoded
    and hashed on every core (workers as in stages.imageops.parallel_map); the result does not depend on it.
    """
    if on_bad_image not in ("error", "skip"):
        raise ValueError(f"on_bad_image must be 'error' or 'skip', not {on_bad_image!r}")
    paths = list_images(raw_dir)
    labels = read_labels(labels_csv)
    problems = _label_problems(labels, [path.name for path in paths], classes)
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
    by_file = labels.set_index("file")
    names = dict(zip([path.name for path in kept], assign_names([path.name for path in kept]), strict=True))
    rows = []
    for path in paths:
        normalised, collision = names.get(path.name, ("", ""))
        header, sha256 = examined[path.name]
        width, height, mode = ("", "", "") if path.name in bad else header
        row = {
            "original_name": path.name,
            "normalised_name": normalised,
            "label": by_file.at[path.name, "label"],
            "sha256": sha256,
            "width": width,
            "height": height,
            "mode": mode,
            "collision": collision,
            "skipped": bad.get(path.name, ""),
        }
        if "group" in by_file.columns:
            row["group"] = by_file.at[path.name, "group"]
        rows.append(row)
    manifest = pd.DataFrame(rows).assign(_skip=lambda t: t.skipped != "")
    return manifest.sort_values(["_skip", "normalised_name", "original_name"], ignore_index=True).drop(columns="_skip")


def normalise(
    raw_dir: Path,
    labels_csv: Path,
    out_dir: Path,
    manifest_csv: Path,
    on_bad_image: str = "error",
    classes: Sequence[object] | None = None,
    workers: int | None = None,
) -> pd.DataFrame:
    """Copy each usable raw image byte-for-byte to out_dir/<normalised_name>, then write the manifest."""
    manifest = build_manifest(raw_dir, labels_csv, on_bad_image, classes, workers)
    with atomic_dir(out_dir) as tmp:
        for row in manifest[manifest.skipped == ""].itertuples():
            shutil.copyfile(Path(raw_dir) / row.original_name, tmp / row.normalised_name)
    write_text_atomic(manifest_csv, manifest.to_csv(index=False, lineterminator="\n"))
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("raw_dir", type=Path, help="folder of raw photos (read only)")
    parser.add_argument("labels_csv", type=Path, help="CSV with columns file, label[, group]")
    parser.add_argument("out_dir", type=Path, help="folder for the renamed copies")
    parser.add_argument("manifest_csv", type=Path, help="manifest to write")
    args = parser.parse_args()
    with user_errors():
        data = load_params()["data"]
        manifest = normalise(
            args.raw_dir, args.labels_csv, args.out_dir, args.manifest_csv, data["on_bad_image"], data.get("classes")
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
