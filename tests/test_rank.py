"""What to label next (`predict --rank`): close decisions and disagreeing fold models first, labelled photos refused."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import notch_images
from PIL import Image
from test_predict import run_main

from burrscope.errors import DataError
from burrscope.inference.ranking import check_unlabelled, rank_for_labelling
from burrscope.params import Params
from burrscope.training.fold import train_fold
from burrscope.training.outputs import write_fold_outputs

pytestmark = pytest.mark.usefixtures("one_thread")


def notch_photo(path: Path, rng: np.random.Generator, notch: int | None) -> Path:
    """A 32 px part like conftest's notch images; `notch` is the notch's brightness (None: no notch)."""
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[12:20, 4:28] = rng.integers(90, 140, (8, 24, 3))
    if notch is not None:
        pixels[9:12, 25:28] = notch
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def workspace(module_folder: Callable[[str], Path], tiny_params: Callable[..., Params]) -> Path:
    """Three fold models that tell notches apart confidently (`finetune: probe` on 24 notch images), the params
    they were trained with, and an empty labels CSV, in a workspace folder."""
    root = module_folder("rank")
    folds = notch_images(root / "images", n=24)
    params = tiny_params(finetune="probe")
    for fold in range(3):
        result = train_fold(root / "images", folds, fold, params.recipe)
        write_fold_outputs(root / "results" / "train" / f"fold_{fold}", result, params.recipe)
    (root / "params.yaml").write_text(yaml.safe_dump(dict(params.raw), sort_keys=False))
    labels = root / params.data.labels
    labels.parent.mkdir(parents=True)
    labels.write_text("file,label\n")
    return root


@pytest.mark.cli
def test_rank_puts_the_ambiguous_photos_first_as_rows_to_label(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    new = tmp_path / "new photos"
    new.mkdir()
    rng = np.random.default_rng(7)
    # Per part: no notch, a full notch, and one half as bright: between the two classes on purpose.
    for part in range(3):
        for kind, notch in (("plain", None), ("burr", 255), ("ambiguous", 127)):
            notch_photo(new / f"{kind}_{part}.png", rng, notch)
    run_main(monkeypatch, workspace, new, "--rank", "--device", "cpu")
    to_label = pd.read_csv(workspace / "to_label.csv", dtype=str, keep_default_na=False)
    assert list(to_label.columns) == ["file", "label"] and (to_label["label"] == "").all()
    assert sorted(to_label["file"][:3]) == ["ambiguous_0.png", "ambiguous_1.png", "ambiguous_2.png"]
    assert len(to_label) == 9
    printed = capsys.readouterr()
    assert "predict: wrote to_label.csv" in printed.err and "disagreement" in printed.out


@pytest.mark.cli
def test_rank_refuses_photos_that_are_already_labelled(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = workspace / "images"
    labels = workspace / yaml.safe_load((workspace / "params.yaml").read_text())["data"]["labels"]
    labels.write_text("file,label\n" + "".join(f"{path.name},0\n" for path in sorted(images.iterdir())))
    with pytest.raises(SystemExit, match=r"^error: 24 of the 24 photos are already labelled in .*labels\.csv"):
        run_main(monkeypatch, workspace, images, "--rank", "--device", "cpu")
    assert not (workspace / "to_label.csv").exists() or "img_0.png" not in (workspace / "to_label.csv").read_text()
    # The check reads the project's labels CSV (params data.labels), whatever its columns are called.
    labels = workspace / "labels.csv"
    labels.write_text("Filename,label\nimg_3.png,1\n")
    with pytest.raises(DataError, match=r"1 of the 2 photos .*\(img_3\.png\)\. --rank orders photos nobody"):
        check_unlabelled([images / "img_2.png", images / "img_3.png"], labels)


def test_photos_sharing_a_name_cannot_be_told_apart_in_a_labels_csv(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"photo name\(s\) occur more than once .*part\.png"):
        check_unlabelled([tmp_path / "a" / "part.png", tmp_path / "b" / "part.png"], tmp_path / "labels.csv")


def test_closer_decisions_and_more_disagreement_rank_higher() -> None:
    table = pd.DataFrame(
        {
            "file": ["sure.png", "close.png", "split.png", "both.png", "tie_b.png", "tie_a.png"],
            "prob_0": [0.98, 0.45, 0.85, 0.55, 0.9, 0.9],
            "prob_1": [0.02, 0.55, 0.15, 0.45, 0.1, 0.1],
            "spread": [0.0, 0.0, 0.25, 0.3, 0.05, 0.05],
        }
    )
    ranked = rank_for_labelling(table, ["0", "1"], threshold=0.5)
    assert list(ranked["file"]) == ["both.png", "close.png", "split.png", "tie_a.png", "tie_b.png", "sure.png"]
    assert ranked["closeness"].between(0, 1).all() and ranked["disagreement"].between(0, 1).all()
    # The threshold decides what "close" means: at 0.1, the images at P = 0.1 are the coin tosses.
    order = list(rank_for_labelling(table, ["0", "1"], threshold=0.1)["file"])
    assert order.index("tie_a.png") < order.index("close.png")
