"""File names: clean lower-case ASCII for any photo name, unique per folder, and the PNG name later stages write."""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from anyascii import anyascii

# Transliteration lengthens names (one Chinese character -> up to 6 letters); stay far below 255 bytes.
MAX_STEM = 100


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


def output_name(name: str) -> str:
    """Name a stage writes for input `name`: same stem, always PNG (lossless, keeps later stages exact)."""
    return f"{Path(name).stem}.png"


def png_names(files: Sequence[str | Path]) -> list[str]:
    """A distinct PNG name per file (heatmap overlays): its stem made safe by the normalise rule, repeats `_2`."""
    return [output_name(name) for name, _ in assign_names([str(f) for f in files])]
