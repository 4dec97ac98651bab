"""Labels CSVs as real tools write them: other headers, stray spaces, names whose case differs from the file."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from burrscope.data.labels import read_labels
from burrscope.data.manifest import build_manifest
from burrscope.errors import DataError


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    folder = tmp_path / "raw"
    folder.mkdir()
    for i, name in enumerate(["IMG_1.png", "bolt_12.png", "part.png", "Part B.png"]):
        Image.new("RGB", (4, 3), (i, i, i)).save(folder / name)
    return folder


def labels(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("header", ["file,label", "File,Label", "FILENAME,label", "image,LABEL", "Path ,Label"])
def test_the_file_column_may_be_named_in_any_of_the_usual_ways_and_cases(tmp_path: Path, header: str) -> None:
    table = read_labels(labels(tmp_path, f"{header}\na.png,1\n"))
    assert list(table.columns) == ["file", "label", "line"]
    assert table.loc[0, "file"] == "a.png"


def test_two_columns_naming_the_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="columns file, filename all name the file: keep one"):
        read_labels(labels(tmp_path, "file,filename,label\na.png,a.png,1\n"))


def test_spaces_around_names_and_labels_are_stripped(tmp_path: Path) -> None:
    table = read_labels(labels(tmp_path, "file,label\n  a.png  , 1 \n"))
    assert (table.loc[0, "file"], table.loc[0, "label"]) == ("a.png", "1")


def test_a_name_differing_only_in_case_is_matched_with_a_warning(raw: Path, tmp_path: Path) -> None:
    warnings: list[str] = []
    manifest = build_manifest(
        raw,
        labels(tmp_path, "file,label\nimg_1.PNG,1\nbolt_12.png,0\npart.png,0\nPart B.png ,1\n"),
        warn=warnings.append,
    )
    assert dict(zip(manifest["original_name"], manifest["label"], strict=True)) == {
        "IMG_1.png": "1",
        "bolt_12.png": "0",
        "part.png": "0",
        "Part B.png": "1",
    }
    assert len(warnings) == 1
    assert "line 2: 'img_1.PNG' taken as the image 'IMG_1.png'" in warnings[0]


def test_an_ambiguous_case_mismatch_is_not_guessed(tmp_path: Path) -> None:
    folder = tmp_path / "raw"
    folder.mkdir()
    for name in ("a.png", "A.png", "b.png"):
        Image.new("RGB", (4, 3)).save(folder / name)
    with pytest.raises(DataError) as info:
        build_manifest(folder, labels(tmp_path, "file,label\nA.PNG,1\nb.png,0\n"), warn=pytest.fail)
    assert "line 2 (A.PNG): no such image" in str(info.value)


def test_other_misspellings_get_a_did_you_mean(raw: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        build_manifest(raw, labels(tmp_path, "file,label\nIMG_1.png,1\nbolt_21.png,0\npart.png,0\nPart B.png,1\n"))
    assert "line 3 (bolt_21.png): no such image; did you mean 'bolt_12.png'?" in str(info.value)
