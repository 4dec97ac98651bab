"""Pure image operations (compositing every mode onto the background, padding, resizing) and image folders."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

from burrscope.data.folders import list_images, parallel_map
from burrscope.data.images import composite_on_background, pad_to_square, prepare_input, resize_square
from burrscope.data.naming import output_name
from burrscope.errors import DataError

BG = (10, 200, 30)
colours = st.tuples(*[st.integers(0, 255)] * 3)
sides = st.integers(1, 60)
# Modes built by `make_image`; "P+index"/"P+table"/"RGB+key" carry `transparency` info instead of a band.
MODES = ["RGBA", "LA", "RGBa", "P", "P+index", "P+table", "RGB", "RGB+key", "L", "1", "I;16", "I", "CMYK"]


def blend(rgb: np.ndarray, alpha: np.ndarray, bg: tuple[int, int, int]) -> np.ndarray:
    """The compositing rule, written out independently of the implementation."""
    a = alpha.astype(int)[..., None]
    return ((rgb.astype(int) * a + np.array(bg) * (255 - a) + 127) // 255).astype(np.uint8)


def make_image(mode: str, width: int, height: int, seed: int) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """A random image in `mode` with the RGB and alpha it stands for, derived without the code under test."""
    rng = np.random.default_rng(seed)
    shape = (height, width)
    rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    pick = rng.random(shape)
    # Mostly fully transparent or fully opaque pixels: those are the exact cases the properties check.
    alpha = np.where(pick < 0.4, 0, np.where(pick < 0.8, 255, rng.integers(0, 256, shape))).astype(np.uint8)
    opaque = np.full(shape, 255, np.uint8)
    grey = rgb[..., 0]
    if mode in ("RGBA", "RGBa"):
        img = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
        return (img.convert("RGBa") if mode == "RGBa" else img), rgb, alpha
    if mode == "LA":
        return Image.fromarray(np.dstack([grey, alpha]), "LA"), np.dstack([grey] * 3), alpha
    if mode.startswith("P"):
        palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
        index = rng.integers(0, 256, shape, dtype=np.uint8)
        img = Image.fromarray(index, "P")
        img.putpalette(palette.tobytes())
        if mode == "P+index":
            img.info["transparency"] = int(index[0, 0])
            return img, palette[index], np.where(index == index[0, 0], 0, 255).astype(np.uint8)
        if mode == "P+table":
            table = np.where(rng.random(256) < 0.5, 0, 255).astype(np.uint8)
            img.info["transparency"] = table.tobytes()
            return img, palette[index], table[index]
        return img, palette[index], opaque
    if mode == "RGB+key":
        key = rgb[0, 0]
        img = Image.fromarray(rgb, "RGB")
        img.info["transparency"] = tuple(int(v) for v in key)
        return img, rgb, np.where((rgb == key).all(axis=2), 0, 255).astype(np.uint8)
    if mode == "RGB":
        return Image.fromarray(rgb, "RGB"), rgb, opaque
    if mode == "L":
        return Image.fromarray(grey, "L"), np.dstack([grey] * 3), opaque
    if mode == "1":
        bits = grey > 127
        return Image.fromarray(bits), np.dstack([np.where(bits, 255, 0).astype(np.uint8)] * 3), opaque
    if mode in ("I;16", "I"):
        sixteen = rng.integers(0, 65536, shape, dtype=np.uint16)
        img = Image.fromarray(sixteen) if mode == "I;16" else Image.fromarray(sixteen.astype(np.int32), "I")
        return img, np.dstack([(sixteen >> 8).astype(np.uint8)] * 3), opaque
    if mode == "CMYK":
        img = Image.fromarray(rng.integers(0, 256, (*shape, 4), dtype=np.uint8), "CMYK")
        return img, np.asarray(img.convert("RGB")), opaque
    raise AssertionError(mode)


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_blends_exactly(mode: str) -> None:
    img, rgb, alpha = make_image(mode, 7, 5, seed=1)
    assert img.mode == mode.split("+")[0]
    out = composite_on_background(img, BG)
    assert out.mode == "RGB" and out.size == (7, 5)
    # Premultiplied RGBa loses precision under partial alpha: check only its exact ends.
    checked = np.isin(alpha, (0, 255)) if mode == "RGBa" else np.ones(alpha.shape, bool)
    np.testing.assert_array_equal(np.asarray(out)[checked], blend(rgb, alpha, BG)[checked])


@settings(deadline=None, max_examples=400)  # ~30 examples per mode, still under a second
@given(mode=st.sampled_from(MODES), width=sides, height=sides, seed=st.integers(0, 2**32 - 1), bg=colours)
@example(mode="RGBA", width=1, height=1, seed=0, bg=(0, 0, 0))
@example(mode="RGBA", width=1, height=60, seed=0, bg=(255, 255, 255))
@example(mode="P+index", width=60, height=1, seed=0, bg=(255, 0, 0))
def test_composite_properties(mode: str, width: int, height: int, seed: int, bg: tuple[int, int, int]) -> None:
    img, rgb, alpha = make_image(mode, width, height, seed)
    out = composite_on_background(img, bg)
    assert out.mode == "RGB" and out.size == (width, height)
    pixels = np.asarray(out)
    assert (pixels[alpha == 0] == bg).all()
    assert (pixels[alpha == 255] == rgb[alpha == 255]).all()
    checked = np.isin(alpha, (0, 255)) if mode == "RGBa" else np.ones(alpha.shape, bool)  # see above
    np.testing.assert_array_equal(pixels[checked], blend(rgb, alpha, bg)[checked])


@pytest.mark.parametrize("bg", [(0, 0, 0), (255, 255, 255), (1, 127, 128), (254, 200, 3)])
def test_blend_is_exact_for_every_value_and_alpha(bg: tuple[int, int, int]) -> None:
    value, alpha = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8))
    # Each channel meets every alpha (row) with every value (a permutation of the columns).
    rgb = np.dstack([value, value[:, ::-1], (value.astype(int) + alpha) % 256]).astype(np.uint8)
    out = composite_on_background(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), bg)
    np.testing.assert_array_equal(np.asarray(out), blend(rgb, alpha, bg))


def test_hidden_colour_under_alpha_zero_never_shows() -> None:
    # The classic bug: convert("RGB") would show this bright red, which the cut-out tool left under alpha 0.
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    img.putpixel((1, 2), (1, 2, 3, 255))
    pixels = np.asarray(composite_on_background(img, (0, 0, 0)))
    assert pixels[2, 1].tolist() == [1, 2, 3]
    assert pixels.sum() == 6


def test_sixteen_bit_grey_scales_instead_of_clipping() -> None:
    img = Image.fromarray(np.array([[0, 255, 40000, 65535]], dtype=np.uint16))
    assert img.mode == "I;16"
    assert np.asarray(composite_on_background(img, BG))[0, :, 0].tolist() == [0, 0, 156, 255]


def test_sixteen_bit_grey_transparency_key() -> None:
    img = Image.fromarray(np.array([[7, 40000]], dtype=np.uint16))
    img.info["transparency"] = 7
    assert np.asarray(composite_on_background(img, BG)).tolist() == [[list(BG), [156] * 3]]


def test_palette_with_alpha_band() -> None:
    img = Image.frombytes("PA", (2, 1), bytes([0, 255, 1, 0]))
    img.putpalette([9, 8, 7, 200, 100, 50])
    assert np.asarray(composite_on_background(img, BG)).tolist() == [[[9, 8, 7], list(BG)]]


# EXIF orientation -> what a viewer shows, as numpy operations on the stored (rows, cols, ...) array.
ORIENTATIONS = {
    1: lambda a: a,
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a.transpose(1, 0, 2), 2),
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int) -> None:
    img, rgb, alpha = make_image("RGBA", 5, 3, seed=orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(tmp_path / "x.png", exif=exif.tobytes())
    with Image.open(tmp_path / "x.png") as saved:
        out = np.asarray(composite_on_background(saved, BG))
    np.testing.assert_array_equal(out, ORIENTATIONS[orientation](blend(rgb, alpha, BG)))


def test_first_frame_of_multi_frame_file() -> None:
    buffer = io.BytesIO()
    frames = [Image.new("RGB", (3, 2), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(buffer, format="TIFF", save_all=True, append_images=frames[1:])
    with Image.open(buffer) as img:
        assert img.n_frames == 2
        img.seek(1)
        assert np.asarray(composite_on_background(img, BG)).reshape(-1, 3).tolist() == [[255, 0, 0]] * 6


@settings(deadline=None)
@given(width=sides, height=sides, seed=st.integers(0, 2**32 - 1), bg=colours)
@example(width=1, height=1, seed=0, bg=(0, 0, 0))
@example(width=1, height=60, seed=0, bg=(0, 0, 0))
@example(width=60, height=1, seed=0, bg=(0, 0, 0))
def test_pad_to_square_keeps_whole_image_centred(width: int, height: int, seed: int, bg: tuple[int, ...]) -> None:
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = pad_to_square(Image.fromarray(rgb, "RGB"), bg)
    side = max(width, height)
    assert out.mode == "RGB" and out.size == (side, side)
    left, top = (side - width) // 2, (side - height) // 2
    pixels = np.asarray(out)
    np.testing.assert_array_equal(pixels[top : top + height, left : left + width], rgb)
    padding = np.ones((side, side), bool)
    padding[top : top + height, left : left + width] = False
    assert (pixels[padding] == bg).all()
    # Centred: the two margins differ by at most the one odd pixel.
    assert 0 <= (side - width - left) - left <= 1 and 0 <= (side - height - top) - top <= 1


@settings(deadline=None)
@given(width=sides, height=sides, img_size=st.integers(16, 64), bg=colours, mode=st.sampled_from(["RGB", "bg"]))
def test_prepare_input_is_rgb_square(width: int, height: int, img_size: int, bg: tuple[int, ...], mode: str) -> None:
    rgb = np.random.default_rng(width * 61 + height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    img = Image.new("RGB", (width, height), bg) if mode == "bg" else Image.fromarray(rgb, "RGB")
    out = prepare_input(img, bg, img_size)
    assert out.mode == "RGB" and out.size == (img_size, img_size)
    if mode == "bg":  # a background-only photo stays exactly background: no seams from padding or resampling
        assert (np.asarray(out) == bg).all()


def test_resize_square_antialiases() -> None:
    # A 1-pixel checkerboard averages to mid grey when shrunk; nearest-neighbour would keep black/white.
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    out = np.asarray(resize_square(Image.fromarray(checker).convert("RGB"), 16)).astype(int)
    assert abs(out[4:12, 4:12].mean() - 127.5) < 3


def test_shape_preconditions() -> None:
    with pytest.raises(ValueError, match="RGB"):
        pad_to_square(Image.new("RGBA", (2, 3)), BG)
    with pytest.raises(ValueError, match="square"):
        resize_square(Image.new("RGB", (2, 3)), 16)


def test_output_name() -> None:
    assert output_name("ling_jian_7.jpeg") == "ling_jian_7.png"
    assert output_name("a.png") == "a.png"


def test_list_images_skips_junk_and_sorts(tmp_path: Path) -> None:
    for name in ("b.PNG", "a.jpg", ".DS_Store", "Thumbs.db", "._a.jpg"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / ".hidden").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG"]


def test_list_images_refuses_other_files_and_folders(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "more").mkdir()
    with pytest.raises(DataError, match=r"(?s)more/ \(sub-folder.*notes\.txt \(not an image"):
        list_images(tmp_path)


def test_list_images_refuses_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="folder not found"):
        list_images(tmp_path / "nope")
    (tmp_path / ".DS_Store").write_bytes(b"")
    with pytest.raises(DataError, match="no images"):
        list_images(tmp_path)


def pid_unless_negative(item: int) -> tuple[int, int]:
    """(item, the process that handled it); module-level so that worker processes can unpickle it."""
    if item < 0:
        raise ValueError(f"item {item}")
    return item, os.getpid()


def test_parallel_map_keeps_order_in_other_processes() -> None:
    results = parallel_map(pid_unless_negative, range(40), workers=2)
    assert [item for item, _ in results] == list(range(40))
    assert os.getpid() not in {pid for _, pid in results}
    # Too few items to pay for a pool: done here.
    assert {pid for _, pid in parallel_map(pid_unless_negative, range(3))} == {os.getpid()}


def test_parallel_map_raises_the_first_error_in_order() -> None:
    items = [*range(30), -1, *range(30), -2]
    with pytest.raises(ValueError, match=r"^item -1$"):
        parallel_map(pid_unless_negative, items, workers=2)
