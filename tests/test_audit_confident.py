"""Confident learning (burrscope/audit/confident.py): hand-checked steps, and the ranking held to cleanlab's.

cleanlab is a test-only dependency (pyproject.toml's `dev` extra): the audit itself never imports it.
"""

from __future__ import annotations

import numpy as np
import pytest
from cleanlab.filter import find_label_issues

from burrscope.audit.confident import (
    calibrate,
    confident_joint,
    confident_thresholds,
    issue_counts,
    label_issues,
    round_keeping_sum,
)


def noisy_set(seed: int, n: int, classes: int, flips: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(given labels, out-of-fold-like probabilities, indices of the flipped labels): each example's true class
    gets a logit boost, so a model is right on most but not all; `flips` labels are moved to another class."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, n)
    logits = rng.normal(0, 1, (n, classes))
    logits[np.arange(n), truth] += 2.5
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    flipped = rng.choice(n, flips, replace=False)
    labels = truth.copy()
    labels[flipped] = (truth[flipped] + rng.integers(1, classes, flips)) % classes
    return labels, probabilities, flipped


def test_thresholds_and_confident_joint_by_hand() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.3, 0.7], [0.1, 0.9]])
    # t_0 = mean(.9, .8, .2) = .633; t_1 = mean(.7, .9) = .8
    assert confident_thresholds(labels, probabilities) == pytest.approx([0.6333, 0.8], abs=1e-4)
    # Row 0: examples 0 and 1 reach t_0 (diagonal), example 2 reaches t_1 (p_1 .8): counted as class 1.
    # Row 1: example 3 reaches neither (.3 < .633, .7 < .8); example 4 reaches t_1.
    assert confident_joint(labels, probabilities).tolist() == [[2, 1], [0, 1]]


def test_calibration_scales_rows_to_the_label_counts_keeping_whole_numbers() -> None:
    joint = np.array([[2, 1], [0, 1]])
    assert calibrate(joint, np.array([3, 2])).tolist() == [[2, 1], [0, 2]]
    assert round_keeping_sum(np.array([0.4, 0.4, 0.2, 2.0])).tolist() == [1, 0, 0, 2]  # 3 in all; ties: the first
    assert issue_counts(np.array([[0, 3], [1, 1]]), np.array([3, 2])).tolist() == [[0, 2], [1, 0]]  # one kept


def test_the_flipped_labels_lead_the_ranking() -> None:
    labels, probabilities, flipped = noisy_set(seed=0, n=300, classes=2, flips=15)
    found = label_issues(labels, probabilities)
    assert len(set(found[:15]) & set(flipped)) >= 12
    self_confidence = probabilities[found, labels[found]]
    assert (np.diff(self_confidence) >= 0).all()  # the least self-confident first


@pytest.mark.parametrize(("seed", "classes"), [(0, 2), (1, 2), (2, 3), (3, 4)])
def test_ranking_agrees_with_cleanlab(seed: int, classes: int) -> None:
    labels, probabilities, _ = noisy_set(seed, n=400, classes=classes, flips=30)
    ours = label_issues(labels, probabilities)
    theirs = find_label_issues(labels, probabilities, return_indices_ranked_by="self_confidence", n_jobs=1)
    k = min(len(ours), len(theirs), 20)
    assert k >= 10
    assert len(set(ours[:k]) & set(theirs[:k])) >= 0.9 * k
    assert len(set(ours) & set(theirs)) >= 0.9 * max(len(ours), len(theirs))
