"""Stage 1: copy the raw photos under clean ASCII names; write the manifest joining them to their labels."""

from __future__ import annotations

import argparse
import re
import shutil
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from anyascii import anyascii
from PIL import Image

from stages.errors import DataError, user_errors
from stages.files import atomic_dir, sha256_file, write_text_atomic
from stages.imageops import list_images
from stages.params import load_params

# Transliteration lengthens names (one Chinese character -> up to 6 letters); stay far below 255 bytes.
MAX_STEM = 100
MANIFEST_COLUMNS = ["original_name", "normalised_name", "label", "sha256", "width", "height", "mode", "collision"]


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
        # skip_blank_lines=False keeps `line` true to what a spreadsheet shows; blank rows are dropped below.
        table = pd.read_csv(labels_csv, dtype=str, keep_default_na=False, skip_blank_lines=False, encoding="utf-8-sig")
    except FileNotFoundError as err:
        raise DataError(f"{labels_csv}: labels file not found; check data.labels in params.yaml.") from err
    except UnicodeDecodeError as err:
        raise DataError(f"{labels_csv}: not UTF-8 text ({err.reason}); save it as 'CSV UTF-8'.") from err
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
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
    return table


def _label_problems(labels: pd.DataFrame, image_names: Sequence[str]) -> list[str]:
    """Every disagreement between the labels table and the image names, one line each."""
    problems = [f"line {row.line}: no file name" for row in labels.itertuples() if row.file == ""]
    problems += [
        f"line {row.line} ({row.file}): empty label" for row in labels.itertuples() if row.file and not row.label
    ]
    named = labels[labels.file != ""]
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
    # A near miss (case, stray spaces, decomposed accents) is the usual cause: point at the row to fix.
    near = {_loose(row.file): row.line for row in unmatched.itertuples()}
    listed = set(named.file)
    for name in image_names:
        if name not in listed:
            hint = f" (line {near[_loose(name)]} differs only in case/spaces/accents)" if _loose(name) in near else ""
            problems.append(f"{name}: image has no labels row{hint}")
    problems += [f"line {row.line} ({row.file}): no such image" for row in unmatched.itertuples()]
    return problems


def _loose(name: str) -> str:
    return unicodedata.normalize("NFC", name).strip().casefold()


def _header(path: Path) -> tuple[int, int, str]:
    """Raw width, height and mode (EXIF orientation not applied), read from the header only."""
    with Image.open(path) as img:
        return img.width, img.height, img.mode


def build_manifest(raw_dir: Path, labels_csv: Path) -> pd.DataFrame:
    """One row per raw image (MANIFEST_COLUMNS, then group if labelled), sorted by normalised_name.

    Raises DataError listing every problem with the labels or the images.
    """
    paths = list_images(raw_dir)
    labels = read_labels(labels_csv)
    problems = _label_problems(labels, [path.name for path in paths])
    headers = {}
    for path in paths:
        try:
            headers[path.name] = _header(path)
        except (OSError, Image.DecompressionBombError) as err:
            problems.append(f"{path.name}: unreadable image ({err}); re-export or remove it")
    if problems:
        raise DataError(
            f"{labels_csv} and {raw_dir} need fixing ({len(problems)} problem(s)):\n"
            + "\n".join(f"  {problem}" for problem in problems)
        )
    by_file = labels.set_index("file")
    rows = []
    for path, (normalised, collision) in zip(paths, assign_names([path.name for path in paths]), strict=True):
        width, height, mode = headers[path.name]
        row = {
            "original_name": path.name,
            "normalised_name": normalised,
            "label": by_file.at[path.name, "label"],
            "sha256": sha256_file(path),
            "width": width,
            "height": height,
            "mode": mode,
            "collision": collision,
        }
        if "group" in by_file.columns:
            row["group"] = by_file.at[path.name, "group"]
        rows.append(row)
    return pd.DataFrame(rows).sort_values("normalised_name", ignore_index=True)


def normalise(raw_dir: Path, labels_csv: Path, out_dir: Path, manifest_csv: Path) -> pd.DataFrame:
    """Copy each raw image byte-for-byte to out_dir/<normalised_name>, then write the manifest."""
    manifest = build_manifest(raw_dir, labels_csv)
    with atomic_dir(out_dir) as tmp:
        for row in manifest.itertuples():
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
        load_params()  # no knobs here, but a broken params.yaml should stop the pipeline at its first stage
        manifest = normalise(args.raw_dir, args.labels_csv, args.out_dir, args.manifest_csv)
    print(f"normalise: {len(manifest)} images -> {args.out_dir}, {args.manifest_csv}")


if __name__ == "__main__":
    main()
