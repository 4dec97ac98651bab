"""Label issues by confident learning: the given labels that the out-of-fold probabilities doubt most.

C. G. Northcutt, L. Jiang and I. L. Chuang, "Confident Learning: Estimating Uncertainty in Dataset Labels",
Journal of Artificial Intelligence Research 70 (2021), 1373-1411 (arXiv:1911.00068).

Written on numpy, not taken from cleanlab: the audit must not depend on it at run time (see pyproject.toml's
`dev` extra; tests/test_audit_confident.py holds this to `cleanlab.filter.find_label_issues`). With N examples,
K classes, given labels y (class indices) and out-of-fold probabilities P (N x K, rows summing to 1):

1. per class j, the threshold t_j: the mean of P[:, j] over the examples labelled j;
2. the confident joint C[i, j]: the examples labelled i that reach some threshold, each counted once, under the
   class j with the largest P[x, j] among those it reaches (the paper's eq. 1);
3. calibrated (eq. 2): each row i rescaled to the n_i examples labelled i, rounded keeping its total;
4. pruned by noise rate (cleanlab's default `prune_by_noise_rate`): for each off-diagonal cell (i, j), the
   C[i, j] examples labelled i with the largest margin P[:, j] - P[:, i] are label issues;
5. an issue whose given label is still the most probable class is dropped, as cleanlab drops it;
6. ranked by self-confidence P[x, y_x], lowest (most suspect) first.
"""

from __future__ import annotations

import numpy as np

# Tolerances, as cleanlab uses them: a probability that equals a threshold up to float error reaches it, and a
# given label tied with the most probable class counts as the most probable.
TOLERANCE = 1e-6


def confident_thresholds(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """K thresholds: the mean probability of each class over the examples labelled with it. A class nobody is
    labelled with gets 2, which no probability reaches."""
    classes = probabilities.shape[1]
    return np.array([probabilities[labels == j, j].mean() if (labels == j).any() else 2.0 for j in range(classes)])


def confident_joint(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """K x K counts: row i, the given label; column j, the class an example labelled i confidently belongs to.

    The diagonal is at least 1, so that calibration never divides by an empty row.
    """
    classes = probabilities.shape[1]
    reached = probabilities >= confident_thresholds(labels, probabilities) - TOLERANCE
    confident = reached.any(axis=1)
    # The class with the largest probability among those the example reaches.
    guess = np.where(reached, probabilities, -np.inf).argmax(axis=1)
    joint = np.zeros((classes, classes), dtype=int)
    np.add.at(joint, (labels[confident], guess[confident]), 1)
    np.fill_diagonal(joint, np.maximum(joint.diagonal(), 1))
    return joint


def round_keeping_sum(values: np.ndarray) -> np.ndarray:
    """Whole numbers that sum to the rounded sum of `values`: the floors, plus one for the largest remainders."""
    floors = np.floor(values)
    missing = round(values.sum() - floors.sum())
    order = np.argsort(-(values - floors), kind="stable")
    floors[order[:missing]] += 1
    return floors.astype(int)


def calibrate(joint: np.ndarray, label_counts: np.ndarray) -> np.ndarray:
    """The confident joint with each row scaled to its class's number of labels, rounded keeping row totals."""
    scaled = joint / joint.sum(axis=1, keepdims=True) * label_counts[:, None]
    return np.array([round_keeping_sum(row) for row in scaled])


def issue_counts(calibrated: np.ndarray, label_counts: np.ndarray) -> np.ndarray:
    """K x K numbers of label errors to find per cell (given i, true j), zero on the diagonal.

    At least one example of each given class is left unflagged: a class whose estimated errors would take all its
    examples has them scaled down (cleanlab's `min_examples_per_class=1`, done more simply).
    """
    counts = calibrated.copy()
    np.fill_diagonal(counts, 0)
    for i, row in enumerate(counts):
        allowed = max(int(label_counts[i]) - 1, 0)
        if row.sum() > allowed:
            counts[i] = round_keeping_sum(row * allowed / row.sum())
    return counts


def prune_by_noise_rate(labels: np.ndarray, probabilities: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mask of the label issues: per cell (i, j), the counts[i, j] examples labelled i with the largest margin
    P[:, j] - P[:, i] (the likeliest to truly be j)."""
    flagged = np.zeros(len(labels), dtype=bool)
    for i, j in zip(*np.nonzero(counts), strict=True):
        members = np.flatnonzero(labels == i)
        if len(members) <= 1:  # a class of one example is never flagged (cleanlab's min_examples_per_class)
            continue
        margin = probabilities[members, j] - probabilities[members, i]
        flagged[members[np.argsort(-margin, kind="stable")[: counts[i, j]]]] = True
    return flagged


def label_issues(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Indices of the examples whose given label is probably wrong, the least self-confident first (ties by index).

    `labels`: N class indices 0..K-1; `probabilities`: N x K out-of-fold class probabilities.
    """
    labels = np.asarray(labels, dtype=int)
    probabilities = np.asarray(probabilities, dtype=float)
    label_counts = np.bincount(labels, minlength=probabilities.shape[1])
    calibrated = calibrate(confident_joint(labels, probabilities), label_counts)
    flagged = prune_by_noise_rate(labels, probabilities, issue_counts(calibrated, label_counts))
    rows = np.arange(len(labels))
    nudged = probabilities.copy()
    nudged[rows, labels] += TOLERANCE
    flagged &= nudged.argmax(axis=1) != labels
    issues = np.flatnonzero(flagged)
    return issues[np.argsort(probabilities[issues, labels[issues]], kind="stable")]
