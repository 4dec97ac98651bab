"""Class labels: one ordering and one column naming, shared by training, aggregation and the report."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def class_order(labels: Iterable[str]) -> list[str]:
    """Distinct labels, numerically sorted when all are integers ("0" < "1" < "10"), else lexically.

    In the binary case the last class is the positive one ("1", burr) for ROC and precision/recall.
    """
    distinct = {str(label) for label in labels}
    if all(label.lstrip("-").isdigit() for label in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def prob_column(label: str) -> str:
    """Name of the predictions-CSV column holding the probability of `label`."""
    return f"prob_{label}"


def decide(probabilities: np.ndarray, classes: list[str], threshold: float) -> list[str]:
    """Predicted labels from an N x C probability array, columns in `classes` order.

    Two classes: the positive (last) class wherever its probability reaches `threshold`, so a burr screen can
    trade precision for recall. More classes: the most probable one (`threshold` does not apply).
    """
    if len(classes) == 2:
        return [classes[1] if p >= threshold else classes[0] for p in probabilities[:, 1]]
    return [classes[i] for i in probabilities.argmax(1)]
