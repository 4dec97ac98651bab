"""Fold assignment: stratified, group-respecting, deterministic, and loud about splits that cannot work."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from burrscope.data.split import assign_folds, fold_table, split
from burrscope.errors import DataError


def photos(counts: dict[str, int], groups_of: int = 0) -> pd.DataFrame:
    """`counts[label]` photos per label; with groups_of=n, every n consecutive photos of a label share a group."""
    rows = [
        {"file": f"{label}_{i:03d}.png", "label": label, "group": f"{label}-{i // groups_of}" if groups_of else ""}
        for label, count in counts.items()
        for i in range(count)
    ]
    table = pd.DataFrame(rows)
    return table if groups_of else table.drop(columns="group")


def test_fold_table_uses_the_names_the_image_stages_write() -> None:
    manifest = pd.DataFrame(
        {"original_name": ["A.JPG", "b.png"], "normalised_name": ["a.jpg", "b.png"], "label": ["1", "0"],
         "group": ["g", "h"], "sha256": ["x", "y"]}
    )  # fmt: skip
    assert fold_table(manifest).to_dict("list") == {
        "file": ["a.png", "b.png"],
        "label": ["1", "0"],
        "group": ["g", "h"],
    }


def test_stratified_folds_keep_class_proportions() -> None:
    folds = assign_folds(photos({"0": 30, "1": 20}), folds=5, seed=42)
    assert list(folds.columns) == ["file", "label", "fold"]
    assert folds.file.is_monotonic_increasing
    assert pd.crosstab(folds.fold, folds.label).to_dict("list") == {"0": [6] * 5, "1": [4] * 5}


def test_groups_never_straddle_folds() -> None:
    table = photos({"0": 36, "1": 24}, groups_of=3)
    folds = assign_folds(table, folds=4, seed=0)
    assert list(folds.columns) == ["file", "label", "fold", "group"]
    assert (folds.groupby("group").fold.nunique() == 1).all()
    per_fold = pd.crosstab(folds.fold, folds.label)
    assert per_fold.shape == (4, 2) and (per_fold > 0).all().all()


def test_deterministic_for_a_seed_and_independent_of_row_order() -> None:
    table = photos({"0": 25, "1": 15})
    first = assign_folds(table, 5, seed=7)
    pd.testing.assert_frame_equal(first, assign_folds(table.sample(frac=1, random_state=1), 5, seed=7))
    assert not first.fold.equals(assign_folds(table, 5, seed=8).fold)
    grouped = photos({"0": 30, "1": 30}, groups_of=2)
    assert not assign_folds(grouped, 5, seed=7).fold.equals(assign_folds(grouped, 5, seed=8).fold)


def test_all_empty_group_column_means_no_groups() -> None:
    folds = assign_folds(photos({"0": 10, "1": 10}).assign(group=""), folds=5, seed=0)
    assert list(folds.columns) == ["file", "label", "fold", "group"]
    assert pd.crosstab(folds.fold, folds.label).to_dict("list") == {"0": [2] * 5, "1": [2] * 5}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (photos({"0": 10, "1": 3, "2": 2}), r"'1' has 3 photo\(s\); '2' has 2 photo\(s\); lower split\.folds"),
        (photos({"1": 10}), "every photo has label '1'; a classifier needs at least two classes"),
        (photos({"0": 8, "1": 8}, groups_of=4), "only 4 groups for split.folds=5 folds"),
        (photos({"0": 20, "1": 12}, groups_of=4), r"'1' has 3 group\(s\)"),
        (photos({"0": 10, "1": 10}, groups_of=2).assign(group=lambda t: t.group.mask(t.index == 3, "")),
         r"no group for 0_003\.png"),
        (pd.concat([photos({"0": 5, "1": 5})] * 2), r"lists 0_000\.png, .* more than once"),
    ],
)  # fmt: skip
def test_impossible_splits_are_explained(table: pd.DataFrame, message: str) -> None:
    with pytest.raises(DataError, match=message):
        assign_folds(table, folds=5, seed=0)


def test_lopsided_groups_are_caught() -> None:
    # Every class spans 3 groups, enough for 3 folds on paper, yet sklearn's greedy packing for this
    # seed leaves a fold without a "0": the check after the split catches it.
    members = {"g0": "001", "g1": "0001", "g2": "11", "g3": "0000"}
    table = pd.DataFrame(
        [{"file": f"{g}_{i}.png", "label": label, "group": g} for g, labels in members.items()
         for i, label in enumerate(labels)]
    )  # fmt: skip
    with pytest.raises(DataError, match=r"groups are too uneven to stratify: fold \d has no '0'"):
        assign_folds(table, folds=3, seed=0)


def test_split_writes_sorted_csv(tmp_path: Path) -> None:
    manifest = photos({"b": 4, "a": 4}).rename(columns={"file": "normalised_name"})
    manifest.sample(frac=1, random_state=0).to_csv(tmp_path / "manifest.csv", index=False)
    split(tmp_path / "manifest.csv", tmp_path / "folds.csv", folds=2, seed=0)
    written = pd.read_csv(tmp_path / "folds.csv", dtype=str)
    assert list(written.columns) == ["file", "label", "fold"]
    assert written.file.tolist() == sorted(written.file) and set(written.fold) == {"0", "1"}
    with pytest.raises(DataError, match="manifest not found; run the normalise stage first"):
        split(tmp_path / "nope.csv", tmp_path / "f.csv", folds=2, seed=0)
