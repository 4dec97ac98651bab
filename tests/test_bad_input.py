"""Bad input to the data stages: unusable, unusual and hostile images, broken labels CSVs, and a raw folder
that stays byte-identical whatever happens. Every file here is tiny and built in tmp_path."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import REPO
from PIL import Image

from burrscope.data.folders import list_images
from burrscope.data.images import MAX_PAD_SIDE, pad_to_square, prepare_input, resize_square
from burrscope.data.labels import read_labels
from burrscope.data.manifest import build_manifest, normalise_folder
from burrscope.data.split import assign_folds, fold_table
from burrscope.errors import DataError
from burrscope.files import sha256_file
from burrscope.params import ParamsError, validate_params
from burrscope.tables import MANIFEST_COLUMNS

BG = (0, 0, 0)


def encoded(img: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def noise(width: int = 32, height: int = 32, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A 40-byte PNG that claims width x height RGBA pixels: a decompression bomb's header, built cheaply."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def corrupt_data(data: bytes, marker: bytes) -> bytes:
    """`data` with 64 bytes overwritten a little after `marker`: a valid header over a broken stream."""
    start = data.index(marker) + 100
    return data[:start] + b"\xff" * 64 + data[start + 64 :]


PNG = encoded(noise(), "PNG")
JPEG = encoded(noise(), "JPEG")
BAD_FILES = {
    "zero.png": (b"", "empty file (0 bytes)"),
    "zero.jpg": (b"", "empty file (0 bytes)"),
    "truncated.png": (PNG[: len(PNG) // 2], "truncated or corrupt image data"),
    "truncated.jpg": (JPEG[: len(JPEG) // 2], "truncated or corrupt image data"),
    "corrupt_header.png": (PNG[:8] + b"\0" * 40 + PNG[48:], "not an image Pillow can read"),
    "corrupt_data.png": (corrupt_data(PNG, b"IDAT"), "truncated or corrupt image data"),
    "corrupt_header.jpg": (JPEG[:2] + b"\0" * 40 + JPEG[42:], "not an image Pillow can read"),
    "corrupt_data.jpg": (corrupt_data(JPEG, b"\xff\xda"), "truncated or corrupt image data"),
    "text_named.png": (b"just some notes", "not an image Pillow can read"),
    "bomb.png": (png_header_only(30000, 30000), "refused as a possible decompression bomb"),
    # Between Pillow's limit and twice it, Pillow itself only warns: refused all the same.
    "small_bomb.png": (png_header_only(10000, 10000), "refused as a possible decompression bomb"),
}


def write_labels(path: Path, rows: list[str], header: str = "file,label", newline: str = "\n") -> Path:
    path.write_text(newline.join([header, *rows]) + newline, encoding="utf-8", newline="")
    return path


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    """Four good photos, two per class."""
    folder = tmp_path / "raw"
    folder.mkdir()
    for i in range(4):
        noise(6, 4, seed=i).save(folder / f"good{i}.png")
    return folder


GOOD_ROWS = ["good0.png,0", "good1.png,1", "good2.png,0", "good3.png,1"]


# --- Files that are not usable images -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_unusable_image_is_a_clear_error(raw: Path, tmp_path: Path, name: str) -> None:
    data, reason = BAD_FILES[name]
    (raw / name).write_bytes(data)
    labels = write_labels(tmp_path / "labels.csv", [*GOOD_ROWS, f"{name},1"])
    with pytest.raises(DataError) as info:
        normalise_folder(raw, labels, tmp_path / "out", tmp_path / "manifest.csv")
    message = str(info.value)
    assert f"  {name}: {reason}" in message  # the file, what is wrong ...
    assert "re-export it or remove it (and its labels row), or set data.on_bad_image: skip" in message  # what to do
    assert not (tmp_path / "out").exists() and not (tmp_path / "manifest.csv").exists()


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_unusable_image_is_skipped_and_listed(raw: Path, tmp_path: Path, name: str) -> None:
    data, reason = BAD_FILES[name]
    (raw / name).write_bytes(data)
    labels = write_labels(tmp_path / "labels.csv", [*GOOD_ROWS, f"{name},1"])
    manifest = normalise_folder(raw, labels, tmp_path / "out", tmp_path / "manifest.csv", on_bad_image="skip")
    written = pd.read_csv(tmp_path / "manifest.csv", dtype=str, keep_default_na=False)
    assert list(written.columns) == MANIFEST_COLUMNS
    skipped = written[written.skipped != ""]
    assert skipped.original_name.tolist() == [name] and reason in skipped.skipped.iloc[0]
    assert skipped.normalised_name.tolist() == [""] and skipped.sha256.tolist() == [sha256_file(raw / name)]
    assert (written.skipped[written.original_name != name] == "").all()
    assert written.original_name.iloc[-1] == name  # kept images first, sorted; skipped ones after
    # Not copied, so the image stages never see it; the split leaves it out too.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"good{i}.png" for i in range(4)]
    assert name not in fold_table(manifest).file.tolist() and len(fold_table(manifest)) == 4


def test_parallel_check_names_every_bad_file_as_serial_does(raw: Path, tmp_path: Path) -> None:
    for name, (data, _) in BAD_FILES.items():
        (raw / name).write_bytes(data)
    for i in range(4, 12):
        noise(6, 4, seed=i).save(raw / f"good{i}.png")
    rows = [f"good{i}.png,{i % 2}" for i in range(12)] + [f"{name},1" for name in BAD_FILES]
    labels = write_labels(tmp_path / "labels.csv", rows)
    messages = []
    for workers in (1, 2):
        with pytest.raises(DataError) as info:
            build_manifest(raw, labels, workers=workers)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    for name, (_, reason) in BAD_FILES.items():
        assert f"  {name}: {reason}" in messages[1]
    serial, parallel = (build_manifest(raw, labels, on_bad_image="skip", workers=workers) for workers in (1, 2))
    pd.testing.assert_frame_equal(serial, parallel)
    assert (parallel.skipped != "").sum() == len(BAD_FILES) and (parallel.sha256 != "").all()


def test_skip_mode_still_needs_a_usable_image(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.png").write_bytes(b"")
    labels = write_labels(tmp_path / "labels.csv", ["a.png,1"])
    with pytest.raises(DataError, match=r"all 1 images are unusable \(skipped\)"):
        build_manifest(tmp_path / "raw", labels, on_bad_image="skip")


def test_split_ignores_skipped_rows() -> None:
    manifest = pd.DataFrame(
        {"normalised_name": ["a.png", "b.png", "c.png", "d.png", ""], "label": ["0", "1", "0", "1", "2"],
         "skipped": ["", "", "", "", "empty file (0 bytes)"]}
    )  # fmt: skip
    folds = assign_folds(fold_table(manifest), folds=2, seed=0)
    assert folds.file.tolist() == ["a.png", "b.png", "c.png", "d.png"]  # no class "2", no nameless row


@pytest.mark.parametrize("mode", ["error", "skip"])
def test_non_image_file_is_refused_in_both_modes(raw: Path, tmp_path: Path, mode: str) -> None:
    (raw / "notes.txt").write_text("labels were in my head")
    (raw / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # junk: ignored
    (raw / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")  # junk: ignored
    labels = write_labels(tmp_path / "labels.csv", GOOD_ROWS)
    with pytest.raises(DataError, match=r"holds 1 unexpected entry .*\n  notes\.txt \(not an image: move it out"):
        build_manifest(raw, labels, on_bad_image=mode)


def test_nested_folder_is_refused(raw: Path, tmp_path: Path) -> None:
    (raw / "batch2").mkdir()
    noise(4, 4).save(raw / "batch2" / "x.png")
    with pytest.raises(DataError, match=r"batch2/ \(sub-folder: move its images up, the folder must be flat\)"):
        build_manifest(raw, write_labels(tmp_path / "labels.csv", GOOD_ROWS), on_bad_image="skip")


def test_symlink_outside_the_raw_folder_is_refused(raw: Path, tmp_path: Path) -> None:
    noise(4, 4).save(tmp_path / "elsewhere.png")
    (raw / "linked.png").symlink_to(tmp_path / "elsewhere.png")
    (raw / "dangling.png").symlink_to(raw / "gone.png")
    with pytest.raises(DataError) as info:
        list_images(raw)
    assert f"linked.png (symlink to {(tmp_path / 'elsewhere.png').resolve()}, outside the folder: copy the file in" in (
        str(info.value)
    )
    assert "dangling.png (broken symlink to" in str(info.value)


def test_symlink_inside_the_raw_folder_is_followed(raw: Path, tmp_path: Path) -> None:
    (raw / "alias.png").symlink_to("good0.png")  # relative, inside the folder: read like a copy
    labels = write_labels(tmp_path / "labels.csv", [*GOOD_ROWS, "alias.png,0"])
    manifest = normalise_folder(raw, labels, tmp_path / "out", tmp_path / "manifest.csv")
    row = manifest.set_index("original_name").loc["alias.png"]
    assert row.sha256 == sha256_file(raw / "good0.png")
    assert not (tmp_path / "out" / "alias.png").is_symlink()  # the output holds a real copy
    assert (raw / "alias.png").is_symlink()  # and the raw folder is as it was


# --- Unusual but valid images: normalise (full decode) -> composite -> resize ---------------------------


def exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 8x4, shown rotated 90 degrees clockwise: 4 wide, 8 tall
    return encoded(Image.new("RGB", (8, 4), (200, 30, 30)), "JPEG", exif=exif.tobytes())


def frames(fmt: str) -> bytes:
    first, second = Image.new("RGB", (6, 4), (255, 0, 0)), Image.new("RGB", (6, 4), (0, 0, 255))
    if fmt == "GIF":
        first, second = first.convert("P"), second.convert("P")
    return encoded(first, fmt, save_all=True, append_images=[second])


def palette_with_transparency() -> bytes:
    img = Image.new("P", (4, 4), 1)
    img.putpalette([255, 0, 0, 0, 255, 0])
    img.putpixel((0, 0), 0)
    return encoded(img, "PNG", transparency=0)  # index 0 (red) is transparent


UNUSUAL = {
    # name: (file bytes, mode the manifest records, shown size, expected composited pixel (x, y) -> RGB)
    "cmyk.jpg": (encoded(Image.new("CMYK", (5, 3), (0, 0, 0, 0)), "JPEG", quality=100), "CMYK", (5, 3),
                 {(2, 1): (255, 255, 255)}),
    "grey16.png": (encoded(Image.fromarray(np.full((3, 5), 40000, np.uint16)), "PNG"), "I;16", (5, 3),
                   {(2, 1): (156, 156, 156)}),
    "palette.png": (palette_with_transparency(), "P", (4, 4), {(0, 0): BG, (1, 1): (0, 255, 0)}),
    "la.png": (encoded(Image.fromarray(np.dstack([np.full((2, 3), 99, np.uint8), np.array([[0, 255, 255]] * 2,
                                                                                           np.uint8)]), "LA"), "PNG"),
               "LA", (3, 2), {(0, 0): BG, (1, 0): (99, 99, 99)}),
    "one_bit.png": (encoded(Image.new("1", (3, 3), 1), "PNG"), "1", (3, 3), {(1, 1): (255, 255, 255)}),
    "exif_rotated.jpg": (exif_rotated(), "RGB", (4, 8), {}),
    "animated.gif": (frames("GIF"), "P", (6, 4), {(3, 2): (255, 0, 0)}),
    "pages.tiff": (frames("TIFF"), "RGB", (6, 4), {(3, 2): (255, 0, 0)}),
    "one_pixel.png": (encoded(Image.new("RGB", (1, 1), (7, 8, 9)), "PNG"), "RGB", (1, 1), {(0, 0): (7, 8, 9)}),
}  # fmt: skip


def test_unusual_valid_images_pass_every_data_stage(
    tmp_path: Path, composite_folder: Callable[..., int], resize_folder: Callable[..., int]
) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, (data, *_) in UNUSUAL.items():
        (raw / name).write_bytes(data)
    labels = write_labels(tmp_path / "labels.csv", [f"{name},{i % 2}" for i, name in enumerate(UNUSUAL)])
    manifest = normalise_folder(raw, labels, tmp_path / "named", tmp_path / "manifest.csv").set_index("original_name")
    assert (manifest.skipped == "").all()
    assert composite_folder(tmp_path / "named", tmp_path / "comp", BG) == len(UNUSUAL)
    assert resize_folder(tmp_path / "comp", tmp_path / "model_in", BG, 16) == len(UNUSUAL)
    for name, (_, mode, shown, pixels) in UNUSUAL.items():
        assert manifest.at[name, "mode"] == mode, name
        stem = Path(manifest.at[name, "normalised_name"]).stem
        with Image.open(tmp_path / "comp" / f"{stem}.png") as img:
            assert img.mode == "RGB" and img.size == shown, name
            for xy, rgb in pixels.items():
                assert img.getpixel(xy) == rgb, (name, xy)
        with Image.open(tmp_path / "model_in" / f"{stem}.png") as img:
            assert img.mode == "RGB" and img.size == (16, 16), name


def test_long_strip_keeps_memory_small_and_stays_whole() -> None:
    # 20000x200: padding it to a square first would take 20000 * 20000 * 3 bytes = 1.2 GB.
    code = (
        "import re; from PIL import Image; from burrscope.data.images import prepare_input\n"
        "img = Image.new('RGB', (20000, 200), (255, 255, 255))\n"
        "out = prepare_input(img, (0, 0, 0), 224)\n"
        "row = [out.getpixel((x, 112))[0] for x in (0, 112, 223)]\n"
        "print(out.mode, out.size == (224, 224), min(row), out.getpixel((112, 0)) == (0, 0, 0),"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so it would report the parent pytest's.
        " re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    mode, square, centre_row_min, top_is_padding, peak_kib = done.stdout.split()
    assert mode == "RGB" and square == "True"
    assert int(centre_row_min) > 200  # the strip crosses the whole square: both ends kept, nothing cropped
    assert top_is_padding == "True"  # centred on padding
    assert int(peak_kib) < 400_000  # peak RSS: ~120 MB with the interpreter, not the 1.6 GB of a padded strip


def test_shrinking_before_padding_only_touches_huge_images() -> None:
    img = noise(300, 40, seed=3)
    assert prepare_input(img, BG, 64).tobytes() == resize_square(pad_to_square(img, BG), 64).tobytes()
    strip = Image.new("RGB", (MAX_PAD_SIDE * 2, 3), (255, 255, 255))
    out = np.asarray(prepare_input(strip, BG, 32))
    assert (out[:, :, 0].max(axis=0) > 0).all()  # the strip spans the whole width: nothing cropped


# --- Labels CSV problems ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw_text", "labels"),
    [
        ("\ufefffile,label\ngood0.png,0\ngood1.png,1\n", ["0", "1"]),  # BOM from Excel
        ("file;label\ngood0.png;0\ngood1.png;1\n", ["0", "1"]),  # semicolons (Excel, many locales)
        ("file\tlabel\ngood0.png\t0\ngood1.png\t1\n", ["0", "1"]),  # tabs
        ("file,label\r\ngood0.png,0\r\ngood1.png,1\r\n", ["0", "1"]),  # CRLF
        ("\ufefffile;label\r\ngood0.png;burr\r\ngood1.png;no_burr\r\n", ["burr", "no_burr"]),  # all at once
        ("file,label\ngood0.png,0.0\ngood1.png,1.0\n", ["0", "1"]),  # ints written as floats
        ("file,label\ngood0.png, 0\ngood1.png,+1\n", ["0", "1"]),  # ints with stray sign/space
    ],
)
def test_labels_csv_dialects_are_read(tmp_path: Path, raw_text: str, labels: list[str]) -> None:
    (tmp_path / "labels.csv").write_bytes(raw_text.encode("utf-8"))
    table = read_labels(tmp_path / "labels.csv")
    assert table.file.tolist() == ["good0.png", "good1.png"] and table.label.tolist() == labels
    assert table.line.tolist() == [2, 3]


def test_float_and_int_labels_are_one_class(raw: Path, tmp_path: Path) -> None:
    labels = write_labels(tmp_path / "labels.csv", ["good0.png,0", "good1.png,1.0", "good2.png,0.0", "good3.png,1"])
    assert build_manifest(raw, labels).label.tolist() == ["0", "1", "0", "1"]


def problems(raw: Path, tmp_path: Path, rows: list[str], header: str = "file,label", **kwargs: object) -> str:
    with pytest.raises(DataError) as info:
        build_manifest(raw, write_labels(tmp_path / "labels.csv", rows, header), **kwargs)
    return str(info.value)


def test_missing_columns(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no label column \(label, in any case\); found file, class\. The header"):
        read_labels(write_labels(tmp_path / "l.csv", ["a.png;1"], header="file;class"))
    with pytest.raises(DataError, match=r"no file column .*; no label column .*; found name"):
        read_labels(write_labels(tmp_path / "l.csv", ["a.png"], header="name"))


def test_fractional_labels_are_refused(raw: Path, tmp_path: Path) -> None:
    message = problems(raw, tmp_path, ["good0.png,0.2", "good1.png,1", "good2.png,0", "good3.png,0.9"])
    assert "line 2 (good0.png): label 0.2 is not a class; use whole numbers (0, 1) or names" in message
    assert "line 5 (good3.png): label 0.9 is not a class" in message


def test_duplicate_rows_name_their_lines(raw: Path, tmp_path: Path) -> None:
    message = problems(raw, tmp_path, [*GOOD_ROWS, "good1.png,1"])
    assert "good1.png: listed 2 times, lines 3, 6; keep one" in message


def test_names_differing_in_extension_get_a_hint(raw: Path, tmp_path: Path) -> None:
    message = problems(raw, tmp_path, ["good0.png,0", "good1.jpg,1", "good2.png,0", "good3.png,1"])
    assert "good1.png: image has no labels row (line 3 names good1.jpg: the extension must match" in message
    assert "line 3 (good1.jpg): no such image; did you mean 'good1.png'?" in message


def test_rows_naming_missing_files(raw: Path, tmp_path: Path) -> None:
    assert "line 6 (ghost.png): no such image" in problems(raw, tmp_path, [*GOOD_ROWS, "ghost.png,1"])


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "/etc/passwd", "sub/good0.png", "..\\good0.png", "C:good0.png", ".."]
)
def test_paths_in_the_labels_csv_are_refused(raw: Path, tmp_path: Path, name: str) -> None:
    message = problems(raw, tmp_path, [*GOOD_ROWS, f"{name},1"])
    assert f"line 6 ({name}): a path, not a file name; name files as they appear inside the raw folder" in message
    assert f"({name}): no such image" not in message  # one clear reason, not two


def test_labels_outside_the_declared_classes(raw: Path, tmp_path: Path) -> None:
    rows = ["good0.png,0", "good1.png,1", "good2.png,burr", "good3.png,2"]
    message = problems(raw, tmp_path, rows, classes=[0, 1])
    assert "line 4 (good2.png): label 'burr' is not one of data.classes ['0', '1']" in message
    assert "line 5 (good3.png): label '2' is not one of data.classes" in message
    assert "add it to data.classes in params.yaml" in message
    ok = ["good0.png,0.0", "good1.png,1", "good2.png,0", "good3.png,1"]
    assert build_manifest(raw, write_labels(tmp_path / "ok.csv", ok), classes=[0, 1]).label.nunique() == 2


def test_data_classes_param_is_validated() -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    assert params["data"]["classes"] is None
    for good in (None, [0, 1], ["burr", "no_burr"]):
        validate_params({**params, "data": {**params["data"], "classes": good}})
    for bad in ([1], [0, 0], "0,1", [0.5, 1]):
        with pytest.raises(ParamsError, match=r"data\.classes"):
            validate_params({**params, "data": {**params["data"], "classes": bad}})


# --- Bad splits and name collisions ------------------------------------------------------------------------


def test_bad_splits_say_what_to_do(tmp_path: Path) -> None:
    few = pd.DataFrame({"file": [f"{i}.png" for i in range(7)], "label": ["0"] * 5 + ["1"] * 2})
    with pytest.raises(DataError, match=r"'1' has 2 photo\(s\); lower split\.folds .* or add images"):
        assign_folds(few, folds=5, seed=0)
    with pytest.raises(DataError, match="two classes: add photos of another class or fix the labels CSV"):
        assign_folds(few.assign(label="0"), folds=2, seed=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"holds no images .*; add some"):
        list_images(tmp_path / "empty")


def test_colliding_names_are_all_kept(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    noise(3, 3, seed=1).save(raw / "Part 1.png")
    noise(3, 3, seed=2).save(raw / "part_1.PNG")
    labels = write_labels(tmp_path / "labels.csv", ["Part 1.png,0", "part_1.PNG,1"])
    manifest = normalise_folder(raw, labels, tmp_path / "out", tmp_path / "manifest.csv")
    assert manifest[["original_name", "normalised_name", "collision"]].values.tolist() == [
        ["Part 1.png", "part_1.png", "part_1"],
        ["part_1.PNG", "part_1_2.png", "part_1"],
    ]
    for row in manifest.itertuples():  # nothing overwritten: each copy is its own original
        assert sha256_file(tmp_path / "out" / row.normalised_name) == sha256_file(raw / row.original_name)


# --- The raw folder and the labels CSV are never modified, by failing or succeeding runs ------------------


def snapshot(*paths: Path) -> dict[str, object]:
    state: dict[str, object] = {}
    for path in paths:
        entries = sorted(path.iterdir()) if path.is_dir() else [path]
        state[str(path)] = [e.name for e in entries]
        for entry in entries:
            state[str(entry)] = (entry.is_symlink(), os.readlink(entry) if entry.is_symlink() else sha256_file(entry))
    return state


@pytest.mark.cli
def test_cli_never_modifies_raw_data(raw: Path, tmp_path: Path) -> None:
    for name in ("zero.png", "truncated.jpg", "bomb.png"):
        (raw / name).write_bytes(BAD_FILES[name][0])
    (raw / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (raw / "alias.png").symlink_to("good0.png")
    labels = tmp_path / "labels.csv"
    labels.write_bytes(("\ufefffile;label\r\n" + "".join(f"{r.replace(',', ';')}\r\n" for r in [
        *GOOD_ROWS, "zero.png;1", "truncated.jpg;0", "bomb.png;1", "alias.png;0"])).encode())  # fmt: skip
    before = snapshot(raw, labels)
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    outcomes = []
    for mode in ("error", "skip"):
        params["data"]["on_bad_image"] = mode
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
        command = [sys.executable, "-m", "stages.normalise", str(raw), str(labels), "out", "manifest.csv"]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        outcomes.append((done.returncode, done.stderr, done.stdout))
        assert snapshot(raw, labels) == before, mode
    (error_rc, error_err, _), (skip_rc, skip_err, skip_out) = outcomes
    assert error_rc != 0 and error_err.startswith("error: ") and "Traceback" not in error_err
    assert "zero.png: empty file (0 bytes)" in error_err and "bomb.png: refused as a possible decompression bomb" in (
        error_err
    )
    assert skip_rc == 0, skip_err
    assert "warning: skipped truncated.jpg: truncated or corrupt image data" in skip_err
    assert "normalise: 5 images -> out, manifest.csv; 3 skipped, listed in the manifest" in skip_out
