"""The composite and resize stages over folders: names, modes, sizes, atomic output, clear errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from burrscope.errors import DataError
from burrscope.files import sha256_file

BG = (0, 0, 0)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Photos as the normalise stage leaves them: distinct stems, assorted formats and modes."""
    folder = tmp_path / "in"
    folder.mkdir()
    hidden = np.zeros((6, 10, 4), np.uint8)
    hidden[..., :3] = 200  # colour the cut-out tool left under alpha 0
    hidden[2:4, 3:7] = (1, 2, 3, 255)
    Image.fromarray(hidden, "RGBA").save(folder / "cutout.png")
    Image.new("RGB", (80, 30), (90, 90, 90)).save(folder / "photo.jpg", quality=100)
    Image.new("P", (3, 9)).save(folder / "palette.bmp")
    Image.new("L", (5, 5), 77).save(folder / "grey.webp", lossless=True)
    return folder


def test_composite_writes_rgb_png_per_stem(photos: Path, tmp_path: Path, composite_folder: Callable[..., int]) -> None:
    before = {p.name: sha256_file(p) for p in photos.iterdir()}
    assert composite_folder(photos, tmp_path / "out", BG) == 4
    assert {p.name: sha256_file(p) for p in photos.iterdir()} == before
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["cutout.png", "grey.png", "palette.png", "photo.png"]
    for name in names:
        with Image.open(tmp_path / "out" / name) as img:
            assert img.format == "PNG" and img.mode == "RGB"
    with Image.open(tmp_path / "out" / "cutout.png") as img:
        pixels = np.array(img)
    assert (pixels[2:4, 3:7] == (1, 2, 3)).all()
    pixels[2:4, 3:7] = 0
    assert (pixels == 0).all()


def test_composite_replaces_stale_output(photos: Path, tmp_path: Path, composite_folder: Callable[..., int]) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stale.png").write_bytes(b"old run")
    composite_folder(photos, tmp_path / "out", BG)
    assert not (tmp_path / "out" / "stale.png").exists()


def test_composite_refuses_clashing_stems(photos: Path, tmp_path: Path, composite_folder: Callable[..., int]) -> None:
    Image.new("RGB", (2, 2)).save(photos / "photo.png")
    with pytest.raises(DataError, match=r"photo\.jpg and photo\.png would both be written as photo\.png"):
        composite_folder(photos, tmp_path / "out", BG)


def test_broken_image_names_file_and_leaves_no_output(
    photos: Path, tmp_path: Path, composite_folder: Callable[..., int]
) -> None:
    (photos / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match=r"zz_broken\.png: cannot read image"):
        composite_folder(photos, tmp_path / "out", BG)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_resize_pads_and_sizes_every_image(
    photos: Path, tmp_path: Path, composite_folder: Callable[..., int], resize_folder: Callable[..., int]
) -> None:
    composite_folder(photos, tmp_path / "comp", (255, 255, 255))
    assert resize_folder(tmp_path / "comp", tmp_path / "out", (255, 255, 255), 16) == 4
    for path in (tmp_path / "out").iterdir():
        with Image.open(path) as img:
            assert img.mode == "RGB" and img.size == (16, 16)
    with Image.open(tmp_path / "out" / "photo.png") as img:
        pixels = np.asarray(img).astype(int)
    # 80x30 is padded to 80x80 (photo in rows 25..54), then shrunk 5x: the photo sits in the middle band
    # and the outer rows, beyond the Lanczos kernel's reach, are pure padding.
    assert (pixels[:2] == 255).all() and (pixels[14:] == 255).all()
    assert np.abs(pixels[7:9] - 90).max() <= 3


def test_resize_refuses_uncomposited_input(photos: Path, tmp_path: Path, resize_folder: Callable[..., int]) -> None:
    with pytest.raises(DataError, match=r"cutout\.png: pad_to_square needs an RGB image, got mode RGBA"):
        resize_folder(photos, tmp_path / "out", BG, 16)


@pytest.fixture
def many(photos: Path) -> Path:
    """Enough photos of uneven sizes and assorted modes for several tasks per worker."""
    rng = np.random.default_rng(0)
    for i in range(14):
        height, width = rng.integers(1, 90, 2)
        pixels = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
        Image.fromarray(pixels, "RGBA").convert(["RGBA", "LA", "P", "RGB"][i % 4]).save(photos / f"n{i:02d}.png")
    return photos


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_parallel_stages_write_exactly_the_serial_files(
    many: Path, tmp_path: Path, composite_folder: Callable[..., int], resize_folder: Callable[..., int]
) -> None:
    for workers in (1, 2):
        assert composite_folder(many, tmp_path / f"comp{workers}", (255, 0, 255), workers=workers) == 18
        assert (
            resize_folder(tmp_path / f"comp{workers}", tmp_path / f"out{workers}", (255, 0, 255), 24, workers=workers)
            == 18
        )
    assert folder_bytes(tmp_path / "comp1") == folder_bytes(tmp_path / "comp2")
    assert folder_bytes(tmp_path / "out1") == folder_bytes(tmp_path / "out2")
    assert len(set(folder_bytes(tmp_path / "out1").values())) == 18  # not 18 copies of one image


def test_parallel_error_names_the_first_bad_file_as_serial_does(
    many: Path, tmp_path: Path, composite_folder: Callable[..., int]
) -> None:
    for name in ("m_broken.png", "zz_broken.png"):  # the later one sits in a different task
        (many / name).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    messages = []
    for workers in (1, 2):
        with pytest.raises(DataError) as info:
            composite_folder(many, tmp_path / "out", BG, workers=workers)
        messages.append(str(info.value))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # nothing half-written left behind
    assert messages[0] == messages[1] and "m_broken.png: cannot read image" in messages[1]
