"""Near-duplicate photos and outliers, from the nearest neighbours of each photo's frozen-backbone features.

Features are L2-normalised, so the cosine similarity of two photos is the dot product of their rows and the
cosine distance 1 minus it. Two photos are near-duplicates when their similarity reaches
`audit.duplicate_similarity`: a pair that straddles two folds lets a fold's model be scored on a part it trained
on, which flatters the cross-validation. A photo is an outlier when its mean distance to its
`audit.outlier_neighbours` nearest neighbours lies far above everyone else's: its robust z-score (distance
minus the median, over 1.4826 x the median absolute deviation; Iglewicz and Hoaglin's "modified z-score")
reaches `audit.outlier_z`. The median and MAD ignore the outliers themselves, as a mean and standard deviation
would not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.neighbors import NearestNeighbors

MAD_TO_SIGMA = 1.4826  # the MAD of normally distributed values times this is their standard deviation
TOLERANCE = 1e-9  # a similarity equal to the threshold up to float error reaches it


@dataclass(frozen=True)
class Pair:
    """Two photos (row indices, first < second) whose features have cosine similarity `similarity`."""

    first: int
    second: int
    similarity: float


def unit_rows(features: np.ndarray) -> np.ndarray:
    """N x F features scaled to length 1 (a zero row stays zero)."""
    features = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.where(norms > 0, norms, 1.0)


def near_duplicates(unit: np.ndarray, threshold: float) -> list[Pair]:
    """Every pair of rows of `unit` (L2-normalised) whose cosine similarity reaches `threshold`, most similar
    first (ties by index)."""
    if len(unit) < 2:
        return []
    index = NearestNeighbors(radius=1 - threshold + TOLERANCE, metric="cosine", algorithm="brute").fit(unit)
    distances, neighbours = index.radius_neighbors()  # no argument: each row's neighbours, itself left out
    pairs = {
        (i, int(j)): float(1 - d)
        for i, (row_d, row_j) in enumerate(zip(distances, neighbours, strict=True))
        for d, j in zip(row_d, row_j, strict=True)
        if i < j
    }
    return [Pair(i, j, min(s, 1.0)) for (i, j), s in sorted(pairs.items(), key=lambda item: (-item[1], item[0]))]


def neighbour_distances(unit: np.ndarray, neighbours: int) -> np.ndarray:
    """N: each row's mean cosine distance to its `neighbours` nearest other rows (fewer when there are fewer)."""
    k = min(neighbours, len(unit) - 1)
    if k < 1:
        return np.zeros(len(unit))
    distances, _ = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(unit).kneighbors()
    return distances.mean(axis=1)


def robust_z(values: np.ndarray) -> np.ndarray:
    """(value - median) / (1.4826 x median absolute deviation); all zeros when the MAD is zero (no spread)."""
    median = np.median(values)
    mad = np.median(np.abs(values - median))
    if mad <= 0:
        return np.zeros_like(values, dtype=float)
    return (values - median) / (MAD_TO_SIGMA * mad)


def outliers(unit: np.ndarray, neighbours: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the outlier rows, most isolated first; every row's robust z-score)."""
    scores = robust_z(neighbour_distances(unit, neighbours))
    found = np.flatnonzero(scores >= threshold)
    return found[np.argsort(-scores[found], kind="stable")], scores
