"""Image operations: pure functions on PIL images (composite, pad, resize), and the one full decode check."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Greyscale modes whose samples span 16 bits: Pillow's own convert() clips them at 255 (all white).
GREY16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})

# prepare_input shrinks a larger image (keeping its aspect) before padding, so that the padded square,
# side * side * 3 bytes, stays small: a 20000x200 strip would otherwise pad to 1.2 GB. 4096 >= any img_size.
MAX_PAD_SIDE = 4096

RGB = tuple[int, int, int]


def _as_rgba(img: Image.Image) -> Image.Image:
    """`img` as RGBA, honouring alpha bands and `transparency`; 16-bit grey is scaled, not clipped."""
    if img.mode in GREY16_MODES:
        raw = np.asarray(img).astype(np.int64)
        grey = (np.clip(raw, 0, 0xFFFF) >> 8).astype(np.uint8)
        transparent = img.info.get("transparency")
        opaque = raw != transparent if isinstance(transparent, int) else np.ones(raw.shape, bool)
        return Image.fromarray(np.dstack([grey, grey, grey, np.where(opaque, 255, 0).astype(np.uint8)]), "RGBA")
    # convert("RGBA") keeps real alpha (RGBA, LA, PA, un-premultiplies RGBa) and turns P/L/RGB
    # `transparency` info into alpha; unlike convert("RGB"), it never exposes colours hidden under alpha 0.
    return img.convert("RGBA")


def composite_on_background(img: Image.Image, background: RGB) -> Image.Image:
    """Upright (EXIF-applied) RGB image of the first frame of `img`, alpha-blended onto `background`."""
    img.seek(0)  # multi-frame files (GIF, TIFF, WebP): the photo is the first frame
    rgba = _as_rgba(ImageOps.exif_transpose(img))
    out = Image.new("RGB", rgba.size, tuple(background))
    # Pillow's masked paste blends in integers with rounding, (src * a + bg * (255 - a) + 127) // 255, so
    # alpha 0 gives exactly the background and alpha 255 exactly the source; tests/test_imageops.py checks
    # every value and alpha against that formula. Blending in numpy instead made this function 5x slower.
    out.paste(rgba, (0, 0), rgba)
    return out


def pad_to_square(img: Image.Image, background: RGB) -> Image.Image:
    """Centre an RGB image on a background square whose side is its longer side; never crops.

    An odd difference puts the extra padding pixel on the right/bottom.
    """
    if img.mode != "RGB":
        raise ValueError(f"pad_to_square needs an RGB image, got mode {img.mode}; composite it first")
    side = max(img.size)
    square = Image.new("RGB", (side, side), tuple(background))
    square.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return square


def resize_square(img: Image.Image, img_size: int) -> Image.Image:
    """Antialiased (Lanczos) resize of a square image to img_size x img_size."""
    if img.width != img.height:
        raise ValueError(f"resize_square needs a square image, got {img.width}x{img.height}; pad it first")
    return img.resize((img_size, img_size), Image.Resampling.LANCZOS)


def shrink_long_side(img: Image.Image, max_side: int) -> Image.Image:
    """`img` resized (Lanczos, aspect kept, each side at least 1 px) so its longer side is at most max_side."""
    side = max(img.size)
    if side <= max_side:
        return img
    size = tuple(max(1, round(length * max_side / side)) for length in img.size)
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def prepare_input(img: Image.Image, background: RGB, img_size: int) -> Image.Image:
    """Model input: padded (not stretched, not cropped) to a square, then resized.

    An image longer than MAX_PAD_SIDE is first shrunk to that long side (still far above img_size), so the
    padded square never takes more than MAX_PAD_SIDE**2 * 3 bytes (50 MB); smaller images are padded as is.
    """
    return resize_square(pad_to_square(shrink_long_side(img, MAX_PAD_SIDE), background), img_size)


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
