"""The committed demo dataset and its generator: reproducible, consistent, and as awkward as real uploads."""

from __future__ import annotations

import csv
import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import numpy as np
from helpers import REPO
from PIL import Image

from burrscope.data.naming import normalise_stem

DEMO = REPO / "data" / "demo"


def _load_generator() -> ModuleType:
    """Import scripts/make_demo_data.py (not a package); registered first, as dataclasses require."""
    spec = importlib.util.spec_from_file_location("make_demo_data", REPO / "scripts" / "make_demo_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _read_labels(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.reader(fh))


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_generator_is_byte_reproducible(tmp_path: Path) -> None:
    gen = _load_generator()
    gen.generate(tmp_path / "a", count=12, seed=7)
    gen.generate(tmp_path / "b", count=12, seed=7)
    first, second = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert len(first) == 13  # 12 images + labels.csv
    assert first == second


def test_generator_removes_stale_images(tmp_path: Path) -> None:
    gen = _load_generator()
    gen.generate(tmp_path, count=3, seed=1)
    (tmp_path / "images" / "left over.PNG").write_bytes(b"not a png")
    gen.generate(tmp_path, count=2, seed=1)
    rows = _read_labels(tmp_path / "labels.csv")[1:]
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(r[0] for r in rows)


def test_burrs_scale_with_the_part() -> None:
    """1-3% of the part's length, a few of them near 1%, yet >= 2 px in the padded 224 px model input."""
    gen = _load_generator()
    rng = np.random.default_rng(0)
    shares = []
    for length in (220.0, 380.0, 540.0):
        for long_side in (0.75 * length + 14, 1.05 * length + 14):  # diagonal .. axis-aligned
            for _ in range(50):
                h = gen.burr_height(length, long_side, rng)
                assert 0.01 <= h / length <= 0.03, (length, long_side, h)
                assert h * 224 / (long_side + h) >= 2 - 1e-9, (length, long_side, h)
                shares.append(h / length)
    tiny = sum(share < 0.015 for share in shares) / len(shares)
    assert 0.02 <= tiny <= 0.2, tiny  # some near 1%...
    assert sum(share >= 0.02 for share in shares) / len(shares) >= 0.75  # ...most of them 2-3%


def test_committed_labels_match_images() -> None:
    raw = (DEMO / "labels.csv").read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf") and b"\r" not in raw
    rows = _read_labels(DEMO / "labels.csv")
    assert rows[0] == ["file", "label"]
    files = [r[0] for r in rows[1:]]
    labels = [r[1] for r in rows[1:]]
    assert files == sorted(files)
    assert len(set(files)) == len(files)
    assert set(files) == {p.name for p in (DEMO / "images").iterdir()}
    assert set(labels) == {"0", "1"}
    assert 0.35 <= labels.count("1") / len(labels) <= 0.55
    assert len(files) == _load_generator().DEFAULT_COUNT  # regenerated with the defaults


def test_committed_images_are_real_cutouts() -> None:
    gen = _load_generator()
    paths = sorted((DEMO / "images").iterdir())
    assert paths
    for path in paths:
        with Image.open(path) as im:
            assert (im.format, im.mode) == ("PNG", "RGBA"), path.name
            assert all(gen.MIN_SIDE <= side <= gen.MAX_SIDE for side in im.size), (path.name, im.size)
            rgba = np.asarray(im)
        transparent = rgba[..., 3] == 0
        assert transparent.any() and (rgba[..., 3] == 255).any(), path.name
        # What a naive RGBA->RGB convert shows under the cut-out must not already be black.
        assert rgba[transparent][:, :3].any(axis=1).any(), path.name


def test_committed_names_collide_after_normalising() -> None:
    names = [p.name for p in (DEMO / "images").iterdir()]
    stems = Counter(normalise_stem(Path(name).stem) for name in names)  # what the normalise stage does
    assert max(stems.values()) >= 2
    # ...but never merely by case, which would break checkouts on case-insensitive file systems.
    assert len({name.casefold() for name in names}) == len(names)
