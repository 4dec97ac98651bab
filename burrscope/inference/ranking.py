"""What to label next: unlabelled photos ordered by how much a label would teach the models.

Uncertainty sampling with query-by-committee, the two oldest and most robust active-learning heuristics (Lewis and
Gale, 1994; Seung, Opper and Sompolinsky, 1992; Settles, "Active Learning Literature Survey", 2009): a photo is
worth labelling when the ensemble's decision is close (its probability near predict.threshold, or two classes
nearly tied) and when the fold models disagree about it (the spread of their probabilities). Both are scaled to
[0, 1] and added; ties go by file name, so the order is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from burrscope.classes import prob_column
from burrscope.data.labels import read_labels
from burrscope.errors import DataError

TO_LABEL = "to_label.csv"  # where `predict --rank` writes, by default
TO_LABEL_COLUMNS = ["file", "label"]  # the labels-CSV format, label left empty for the user
MAX_SPREAD = 0.5  # the largest standard deviation probabilities in [0, 1] can have


def closeness(table: pd.DataFrame, classes: list[str], threshold: float) -> np.ndarray:
    """1 where the decision is a coin toss, 0 where it is as sure as it can be: two classes, how near P(positive)
    is to the threshold; more, how near the runner-up's probability is to the top one's."""
    probs = table[[prob_column(label) for label in classes]].to_numpy(dtype=float)
    if len(classes) == 2:
        return 1 - np.abs(probs[:, 1] - threshold) / max(threshold, 1 - threshold)
    ranked = np.sort(probs, axis=1)
    return 1 - (ranked[:, -1] - ranked[:, -2])


def rank_for_labelling(table: pd.DataFrame, classes: list[str], threshold: float) -> pd.DataFrame:
    """predict's table with `closeness`, `disagreement` (spread scaled to [0, 1]) and their sum `value`, most
    valuable first."""
    ranked = table.assign(
        closeness=closeness(table, classes, threshold), disagreement=table["spread"].to_numpy() / MAX_SPREAD
    )
    ranked["value"] = ranked["closeness"] + ranked["disagreement"]
    return ranked.sort_values(["value", "file"], ascending=[False, True], kind="stable").reset_index(drop=True)


def check_unlabelled(images: Sequence[Path], labels_csv: Path) -> None:
    """DataError unless every image is new: not in the project's labels CSV, and no two of them sharing a name
    (the name is what a labels CSV row refers to)."""
    names = [path.name for path in images]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataError(
            f"{len(repeated)} photo name(s) occur more than once among the inputs ({', '.join(repeated[:3])}); "
            "a labels CSV names photos by file name, so rename them or rank one folder at a time."
        )
    if not labels_csv.is_file():
        return
    labelled = {str(name).lower() for name in read_labels(labels_csv)["file"]}
    known = [name for name in names if name.lower() in labelled]
    if known:
        raise DataError(
            f"{len(known)} of the {len(names)} photos are already labelled in {labels_csv} ({', '.join(known[:3])}"
            f"{' and more' if len(known) > 3 else ''}). --rank orders photos nobody has labelled yet: point it at a "
            "folder of new photos only."
        )


def to_label_table(ranked: pd.DataFrame) -> pd.DataFrame:
    """The ranked photos as rows to fill in and append to the labels CSV: file name, empty label."""
    return pd.DataFrame({"file": [Path(path).name for path in ranked["file"]], "label": ""}, columns=TO_LABEL_COLUMNS)
