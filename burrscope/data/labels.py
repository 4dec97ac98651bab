"""The labels CSV: read as spreadsheets save it, and checked against the photos and the declared classes."""

from __future__ import annotations

import csv
import difflib
import io
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from burrscope.errors import DataError

# A labels-CSV "file" is a bare name in the raw folder: nothing that could reach outside it.
PATH_LIKE = re.compile(r"[/\\]|^\.\.?$|^[A-Za-z]:")
# Integer labels written as floats ("1.0", as pandas writes an int column holding a blank) mean the integer.
INTEGRAL_FLOAT = re.compile(r"^([+-]?\d+)\.0*$")
NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
# Header names read as each column, in any case; exports name the file column all of these ways.
COLUMN_NAMES = {"file": ("file", "filename", "file_name", "image", "path"), "label": ("label",), "group": ("group",)}


def read_labels(labels_csv: Path) -> pd.DataFrame:
    """Labels table (columns file, label[, group], all str) plus `line`, its line number in the CSV."""
    table, columns = labels_as_written(labels_csv)
    table = table.rename(columns=columns)
    table = table[[col for col in COLUMN_NAMES if col in table.columns]]
    table = table.assign(line=table.index + 2)
    table = table[(table.drop(columns="line") != "").any(axis=1)].reset_index(drop=True)
    # Spaces around a value are a spreadsheet's doing: around a label they would silently make a new class.
    for col in COLUMN_NAMES:
        if col in table.columns:
            table[col] = table[col].str.strip()
    return table.assign(label=canonical_labels(table.label))


def labels_as_written(labels_csv: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """Every column of the labels CSV under its own header, as text, blank rows kept (row i is line i + 2); and
    {header: file | label | group} for the columns read_labels takes. For writing a copy that reads back alike."""
    try:
        # utf-8-sig drops the byte-order mark Excel writes; newline="" lets the CSV reader see CRLF as one break.
        with open(labels_csv, encoding="utf-8-sig", newline="") as fh:
            text = fh.read()
    except FileNotFoundError as err:
        raise DataError(f"{labels_csv}: labels file not found; check data.labels in params.yaml.") from err
    except UnicodeDecodeError as err:
        raise DataError(f"{labels_csv}: not UTF-8 text ({err.reason}); save it as 'CSV UTF-8'.") from err
    try:
        # skip_blank_lines=False keeps `line` true to what a spreadsheet shows; read_labels drops blank rows.
        table = pd.read_csv(
            io.StringIO(text), sep=_separator(text), dtype=str, keep_default_na=False, skip_blank_lines=False
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error) as err:
        raise DataError(f"{labels_csv}: not a readable CSV ({err}).") from err
    return table, _column_names(list(table.columns), labels_csv)


def _column_names(header: list[str], labels_csv: Path) -> dict[str, str]:
    """{header name: file | label | group} for the columns the header names in any case; raises if one is
    missing or named twice (`file` and `filename`, say)."""
    renames, problems = {}, []
    for column, names in COLUMN_NAMES.items():
        found = [name for name in header if name.strip().casefold() in names]
        if len(found) > 1:
            problems.append(f"columns {', '.join(found)} all name the {column}: keep one")
        elif found:
            renames[found[0]] = column
        elif column != "group":
            problems.append(f"no {column} column ({' or '.join(names)}, in any case)")
    if problems:
        raise DataError(
            f"{labels_csv}: {'; '.join(problems)}; found {', '.join(header)}. The header must read "
            "file,label (and optionally group)."
        )
    return renames


def match_names(labels: pd.DataFrame, image_names: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """Rows whose file differs from exactly one unlisted image only in case, surrounding spaces or accent
    encoding, taken as naming that image; and a note for each, to warn about. Anything else is left for
    label_problems to report."""
    images = set(image_names)
    by_loose: dict[str, list[str]] = {}
    for name in image_names:
        by_loose.setdefault(_loose(name), []).append(name)
    listed = set(labels.file)
    files, notes = [], []
    for row in labels.itertuples():
        candidates = [] if row.file in images else by_loose.get(_loose(row.file), [])
        if len(candidates) == 1 and candidates[0] not in listed:
            files.append(candidates[0])
            notes.append(
                f"line {row.line}: {row.file!r} taken as the image {candidates[0]!r} (they differ only in "
                "case, spaces or accents); correct the labels CSV to silence this"
            )
        else:
            files.append(row.file)
    return labels.assign(file=files), notes


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


def label_problems(
    labels: pd.DataFrame, image_names: Sequence[str], classes: Sequence[object] | None = None
) -> list[str]:
    """Every disagreement between the labels table, the image names and the declared classes, one line each."""
    paths = labels.file.str.contains(PATH_LIKE)
    named = labels[(labels.file != "") & ~paths]
    return [*row_problems(labels, paths, classes), *matching_problems(named, image_names)]


def row_problems(labels: pd.DataFrame, paths: pd.Series, classes: Sequence[object] | None) -> list[str]:
    """What is wrong with the rows themselves: blanks, paths, fractional or undeclared labels, repeats, groups."""
    problems = [f"line {row.line}: no file name" for row in labels.itertuples() if row.file == ""]
    problems += [
        f"line {row.line} ({row.file}): empty label" for row in labels.itertuples() if row.file and not row.label
    ]
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
    for file, rows in labels[(labels.file != "") & ~paths].groupby("file", sort=True):
        if len(rows) > 1:
            problems.append(f"{file}: listed {len(rows)} times, lines {', '.join(map(str, rows.line))}; keep one")
    if "group" in labels.columns and (labels.group != "").any():
        problems += [
            f"line {row.line} ({row.file}): empty group; fill in every group (a photo on its own can use "
            "its file name) or drop the column"
            for row in labels.itertuples()
            if not row.group
        ]
    return problems


def matching_problems(named: pd.DataFrame, image_names: Sequence[str]) -> list[str]:
    """Images without a labels row and rows without an image, each with the likeliest fix."""
    images = set(image_names)
    unmatched = named[~named.file.isin(images)]
    # A near miss (case, stray spaces, decomposed accents, another extension) is the usual cause: point at
    # the row to fix.
    near = {_loose(row.file): row.line for row in unmatched.itertuples()}
    near_stem = {_loose(Path(row.file).stem): row for row in unmatched.itertuples()}
    listed = set(named.file)
    problems = []
    for name in image_names:
        if name not in listed:
            hint = ""
            if _loose(name) in near:
                hint = f" (line {near[_loose(name)]} differs only in case/spaces/accents)"
            elif _loose(Path(name).stem) in near_stem:
                row = near_stem[_loose(Path(name).stem)]
                hint = f" (line {row.line} names {row.file}: the extension must match the file's)"
            problems.append(f"{name}: image has no labels row{hint}")
    unlisted = sorted(images - listed)
    for row in unmatched.itertuples():
        guess = difflib.get_close_matches(row.file, unlisted, n=1, cutoff=0.6)
        problems.append(
            f"line {row.line} ({row.file}): no such image" + (f"; did you mean {guess[0]!r}?" if guess else "")
        )
    return problems


def _loose(name: str) -> str:
    return unicodedata.normalize("NFC", name).strip().casefold()
