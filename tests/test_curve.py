"""The learning curve: nested stratified training subsets, the points trained on them, and the verdict's wording."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import Notch
from hypothesis import given
from hypothesis import strategies as st
from test_train import count_backbone_images

from burrscope.errors import DataError
from burrscope.evaluation.curve import Point, curve_table, load_points, verdict, write_curve
from burrscope.params import Params, ParamsError
from burrscope.tables import CURVE, CURVE_COLUMNS, PREDICTIONS, VERDICT
from burrscope.training.curve import train_fraction, write_fraction
from burrscope.training.fold import train_fold
from burrscope.training.fold_data import training_subset

CLASSES = ["0", "1"]


@given(
    counts=st.lists(st.integers(1, 30), min_size=1, max_size=3),
    fractions=st.lists(st.floats(0.01, 1.0), min_size=2, max_size=4),
    seed=st.integers(0, 10),
)
def test_training_subsets_are_stratified_nested_and_in_table_order(
    counts: list[int], fractions: list[float], seed: int
) -> None:
    labels = [str(label) for label, count in enumerate(counts) for _ in range(count)]
    rows = pd.DataFrame({"file": [f"p{i}.png" for i in range(len(labels))], "label": labels}).sample(
        frac=1, random_state=seed
    )
    previous: set[int] = set()
    for fraction in sorted(fractions):
        kept, left_out = training_subset(rows, fraction, seed)
        assert sorted([*kept.index, *left_out.index]) == sorted(rows.index)
        assert list(kept.index) == [i for i in rows.index if i in set(kept.index)]  # table order kept
        for label, count in enumerate(counts):
            chosen = (kept["label"] == str(label)).sum()
            assert chosen == max(1, int(np.ceil(fraction * count - 1e-9)))  # every class, in proportion
        assert previous <= set(kept.index)  # a smaller subset is inside every larger one
        previous = set(kept.index)


def test_a_curve_point_trains_on_the_share_and_reuses_the_full_runs_features(
    notch: Notch, tiny_params: Callable[..., Params], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, folds = notch
    recipe = tiny_params(finetune="head").recipe
    seen = count_backbone_images(monkeypatch)
    train_fold(images, folds, 0, recipe)
    predictions, sizes = train_fraction(images, folds, 0.5, recipe)
    # Each fold trained on 2 of its 4 images per class, and every image was predicted by the fold holding it out.
    assert sizes == {"0": 4, "1": 4, "2": 4}
    assert sorted(predictions["file"]) == sorted(folds["file"])
    assert dict(zip(predictions["file"], predictions["fold"], strict=True)) == dict(
        zip(folds["file"], folds["fold"], strict=True)
    )
    # The frozen features of all 12 images in 8 views were computed once, by the full run, and shared.
    assert sum(seen) == 12 * 8
    write_fraction(tmp_path / "0.5", 0.5, predictions, sizes)
    assert json.loads((tmp_path / "0.5" / "sizes.json").read_text()) == {"fraction": 0.5, "train_images": sizes}


def point(fraction: float, photos: float, labels: np.ndarray, correct: np.ndarray) -> Point:
    """A curve point whose decisions are right exactly where `correct` says."""
    positive = np.where(correct, labels == "1", labels != "1")
    table = pd.DataFrame(
        {
            "file": [f"p{i}.png" for i in range(len(labels))],
            "label": labels,
            "fold": np.arange(len(labels)) % 5,
            "predicted": np.where(positive, "1", "0"),
            "prob_0": np.where(positive, 0.2, 0.8),
            "prob_1": np.where(positive, 0.8, 0.2),
        }
    )
    return Point(fraction, photos, table)


def synthetic(first: float, second: float, n: int = 400) -> list[Point]:
    """Two points on n images, half of each class, right on the first `first` and `second` shares of each class;
    the images right at the first point stay right at the second (a steady learner)."""
    labels = np.array(["0", "1"] * (n // 2))
    rank = np.arange(n) // 2 / (n // 2)
    return [point(0.5, 160, labels, rank < first), point(1.0, 320, labels, rank < second)]


def test_a_rising_curve_says_more_photos_are_likely_to_help() -> None:
    found = verdict(synthetic(0.80, 0.90), CLASSES, threshold=0.5, seed=0)
    assert found["trend"] == "rising" and found["low"] > 0
    assert found["sentence"].startswith("From 160 to 320 training photos per fold, balanced accuracy rose from 0.80")
    assert "has not levelled off: more photos are likely to help" in found["sentence"]


def changed(n: int, right: float, *, fixed: int, broken: int) -> list[Point]:
    """Two points on n images, half of each class, right on `right` of each class at the first; at the second,
    `fixed` wrong images of each class become right and `broken` right ones wrong (a learner that churns)."""
    labels = np.array(["0", "1"] * (n // 2))
    before = np.arange(n) // 2 < right * (n // 2)
    after = before.copy()
    for label in ("0", "1"):
        members = np.flatnonzero(labels == label)
        after[members[before[members]][:broken]] = False
        after[members[~before[members]][:fixed]] = True
    return [point(0.5, n * 0.4, labels, before), point(1.0, n * 0.8, labels, after)]


def test_a_flat_curve_says_it_has_levelled_off() -> None:
    found = verdict(changed(400, 0.9, fixed=2, broken=2), CLASSES, threshold=0.5, seed=0)
    assert found["trend"] == "flat" and -0.02 <= found["low"] <= 0 <= found["high"] <= 0.02
    assert "barely moved, from 0.900 to 0.900" in found["sentence"] and "levelled off" in found["sentence"]


def test_a_small_noisy_gain_says_it_cannot_tell() -> None:
    found = verdict(changed(40, 0.8, fixed=3, broken=2), CLASSES, threshold=0.5, seed=0)
    assert found["gain"] == pytest.approx(0.05)
    assert found["trend"] == "unclear" and found["low"] < 0 < found["high"]
    assert "went from 0.80 to 0.85" in found["sentence"] and "too few held-out photos to tell" in found["sentence"]


def test_a_falling_curve_and_a_curve_of_one_point() -> None:
    assert verdict(synthetic(0.9, 0.7), CLASSES, threshold=0.5, seed=0)["trend"] == "falling"
    off = verdict(synthetic(0.9, 0.9)[1:], CLASSES, threshold=0.5, seed=0)
    assert off["trend"] == "off" and "curve.fractions=[0.25,0.5,0.75]" in off["sentence"]


def test_the_curve_table_brackets_each_point_and_is_reproducible(tmp_path: Path) -> None:
    points = synthetic(0.7, 0.9, n=100)
    table = curve_table(points, CLASSES, threshold=0.5, seed=3)
    assert list(table.columns) == CURVE_COLUMNS
    assert table["balanced_accuracy"].tolist() == [0.7, 0.9]
    assert (table["low"] < table["balanced_accuracy"]).all() and (table["balanced_accuracy"] < table["high"]).all()
    sentence = write_curve(tmp_path, points, CLASSES, threshold=0.5, seed=3)
    first = (tmp_path / CURVE).read_bytes(), (tmp_path / VERDICT).read_bytes()
    write_curve(tmp_path, points, CLASSES, threshold=0.5, seed=3)
    assert ((tmp_path / CURVE).read_bytes(), (tmp_path / VERDICT).read_bytes()) == first
    assert json.loads(first[1])["sentence"] == sentence


def test_a_missing_point_names_its_folder_and_the_fix(tmp_path: Path) -> None:
    folds_csv = tmp_path / "folds.csv"
    folds_csv.write_text("file,label,fold\na.png,0,0\nb.png,1,1\n")
    full = tmp_path / PREDICTIONS
    point(1.0, 1, np.array(["0", "1"]), np.array([True, True])).predictions.to_csv(full, index=False)
    with pytest.raises(DataError, match=r"fractions/0\.5: no learning-curve point .* 0\.5; re-run the pipeline"):
        load_points(folds_csv, tmp_path / "fractions", [0.5], full)


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.2])
def test_a_fraction_outside_zero_to_one_is_refused(fraction: float, tiny_params: Callable[..., Params]) -> None:
    with pytest.raises(ParamsError, match=r"curve\.fractions\.1: .*strictly between 0 and 1"):
        tiny_params(curve={"fractions": [0.5, fraction]})
