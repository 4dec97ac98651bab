"""One definition of what defines a trained model: TRAINING_KEYS makes the Recipe, the resume checkpoint's
fingerprint and the MLflow parent run's key (the DVC and Snakemake params lists: tests/test_graphs.py)."""

from __future__ import annotations

import copy
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import REPO

from burrscope.params import TRAINING_KEYS, Recipe, lookup, read_params_file
from burrscope.tracking.store import pipeline_key
from burrscope.training.resume import fingerprint

FOLDS = pd.DataFrame({"file": ["a.png", "b.png"], "label": ["0", "1"], "fold": [0, 1]})
IMAGES = [torch.zeros(2, 3, 4, 4, dtype=torch.uint8)]


def changed(value: object) -> object:
    """A different value of the same type, valid for the schema."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value else 0.1
    if isinstance(value, str):
        return {"full": "partial", "cpu": "auto", "auto": "cpu", "last": "best", "constant": "cosine"}.get(
            value, value + "x"
        )
    if isinstance(value, list):
        return [*value[:-1], (value[-1] + 1) % 256]
    if isinstance(value, dict):
        return {**value, "jitter": value["jitter"] / 2 if value["jitter"] else 0.1}
    raise TypeError(value)


def with_key(params: dict, dotted: str, value: object) -> dict:
    params = copy.deepcopy(params)
    *parents, key = dotted.split(".")
    (lookup(params, ".".join(parents)) if parents else params)[key] = value
    return params


@pytest.fixture
def folds_csv(tmp_path: Path) -> Path:
    FOLDS.to_csv(tmp_path / "folds.csv", index=False)
    return tmp_path / "folds.csv"


def test_the_recipe_has_exactly_the_training_keys() -> None:
    assert [f.name for f in fields(Recipe)] == list(TRAINING_KEYS)


@pytest.mark.parametrize("dotted", TRAINING_KEYS.values())
def test_every_training_key_changes_the_fingerprint_and_the_mlflow_parent_key(dotted: str, folds_csv: Path) -> None:
    params = read_params_file(REPO / "params.yaml")
    before = Recipe.from_params(params)
    after = Recipe.from_params(with_key(params, dotted, changed(lookup(params, dotted))))
    assert after != before
    device = torch.device("cpu")
    assert fingerprint(after, FOLDS, 0, device, images=IMAGES) != fingerprint(before, FOLDS, 0, device, images=IMAGES)
    assert pipeline_key(after, folds_csv) != pipeline_key(before, folds_csv)


@pytest.mark.parametrize(
    "dotted",
    [
        "train.explain_correct",
        "predict.threshold",
        "mlflow.registered_model",
        "data.on_bad_image",
        "train.checkpoint_every_s",
    ],
)
def test_other_params_change_neither(dotted: str, folds_csv: Path) -> None:
    params = read_params_file(REPO / "params.yaml")
    value = lookup(params, dotted)
    other = {"data.on_bad_image": "skip", "mlflow.registered_model": "other"}.get(dotted, changed(value))
    before, after = Recipe.from_params(params), Recipe.from_params(with_key(params, dotted, other))
    assert after == before
    assert pipeline_key(after, folds_csv) == pipeline_key(before, folds_csv)
