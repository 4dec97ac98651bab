"""A fold's per-epoch recall, F1 and ROC-AUC (for MLflow), computed in numpy in the training loop, agree with the
sklearn scores aggregate computes (evaluation.scores.score_predictions), which the training code does not import."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from burrscope.training.loop import recall_f1_auc


def sklearn_scores(probs: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """What evaluation.scores.score_predictions computes for aggregate, on argmax labels, named as folds log them."""
    predicted, classes = probs.argmax(1), probs.shape[1]
    averaging = (
        {"average": "binary", "pos_label": 1} if classes == 2 else {"average": "macro", "labels": list(range(classes))}
    )
    values = {
        "val_recall": skm.recall_score(truth, predicted, zero_division=np.nan, **averaging),
        "val_f1": skm.f1_score(truth, predicted, zero_division=np.nan, **averaging),
    }
    if classes == 2 and len(set(truth)) == 2:
        values["val_roc_auc"] = skm.roc_auc_score(truth == 1, probs[:, 1])
    return {name: float(value) for name, value in values.items() if not np.isnan(value)}


@pytest.mark.parametrize("classes", [2, 3])
def test_recall_f1_auc_match_sklearn_ties_and_missing_classes_included(classes: int) -> None:
    rng = np.random.default_rng(classes)
    for _ in range(300):
        n = int(rng.integers(1, 12))
        probs = rng.dirichlet(np.ones(classes), n).round(1)  # coarse: many tied scores
        probs /= probs.sum(1, keepdims=True)
        truth = rng.integers(0, classes, n)  # small folds often lack a class
        got = recall_f1_auc(torch.tensor(probs), torch.tensor(truth))
        expected = sklearn_scores(probs, truth)
        assert got.keys() == expected.keys(), (probs, truth)
        np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), atol=1e-12)


def test_a_fold_without_positives_leaves_recall_and_roc_auc_out_rather_than_inventing_them() -> None:
    got = recall_f1_auc(torch.tensor([[0.9, 0.1], [0.4, 0.6]]), torch.tensor([0, 0]))
    assert got == {"val_f1": 0.0}  # one false alarm: F1 is 0, recall and ROC-AUC are undefined
