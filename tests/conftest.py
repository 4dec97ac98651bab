"""Fixtures the test modules share, and the rule that marks every test `unit`, `cli` or `e2e`.

Markers (registered in pyproject.toml): a module or test that runs DVC or Snakemake end to end is marked `e2e`,
one that runs a stage's command line (`python -m stages.<name>` in a subprocess, or the stage's main() in this
process) is marked `cli`, both by hand; every other test is `unit`, added below. So `pytest -m unit` is the
quick in-process suite and `pytest -m "not e2e"` everything but the minutes-long pipeline runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from burrscope.folders import map_folder
from burrscope.images import RGB, composite_on_background, prepare_input
from burrscope.params import Params, validate_params
from burrscope.training.features import CACHE_ENV
from stages.composite import PNG_LEVEL

REPO = Path(__file__).resolve().parents[1]
# What makes the repository's params.yaml tiny: two short epochs on 32 px inputs, on the CPU.
TINY = {"epochs": 2, "batch_size": 4, "resize": {"img_size": 32}, "train": {"device": "cpu"}}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("cli") is None and item.get_closest_marker("e2e") is None:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def own_feature_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own frozen-feature cache (burrscope/training/features.py), so none finds another's entries."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("feature-cache")))


def merged(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `changes` applied; a nested mapping changes only the keys it names."""
    result = dict(base)
    for key, value in changes.items():
        result[key] = merged(base[key], value) if isinstance(value, Mapping) and key in base else value
    return result


@pytest.fixture(scope="session")
def tiny_params() -> Callable[..., Params]:
    """Factory: the repository's params.yaml made tiny (TINY), then `changes` merged in, validated.

    `tiny_params(epochs=3, train={"keep": "best"})` -> a Params; its `.raw` is the dict, for a params.yaml.
    """

    def make(**changes: Any) -> Params:
        params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
        return Params.from_mapping(validate_params(merged(merged(params, TINY), changes)))

    return make


class Notch(NamedTuple):
    """A folder of model inputs and their fold table (file, label, fold)."""

    images: Path
    folds: pd.DataFrame


def notch_images(folder: Path, n: int = 12, folds: int = 3) -> pd.DataFrame:
    """n padded 32 px inputs in `folds` folds: class 1 carries a bright notch at the edge, class 0 does not."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = i % 2
        pixels = np.zeros((32, 32, 3), np.uint8)
        pixels[12:20, 4:28] = rng.integers(90, 140, (8, 24, 3))
        if label:
            pixels[9:12, 25:28] = 255
        Image.fromarray(pixels).save(folder / f"img_{i}.png")
        rows.append({"file": f"img_{i}.png", "label": str(label), "fold": i % folds})
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def make_notch() -> Callable[..., pd.DataFrame]:
    """Factory: `make_notch(folder, n)` writes n notch images into `folder`; their fold table."""
    return notch_images


@pytest.fixture(scope="session")
def notch(tmp_path_factory: pytest.TempPathFactory) -> Notch:
    """12 notch images in 3 folds of 4 (2 per class), written once; tests only read them."""
    folder = tmp_path_factory.mktemp("notch")
    return Notch(folder, notch_images(folder))


@pytest.fixture(scope="session")
def composite_folder() -> Callable[..., int]:
    """The composite stage's work on a folder: `(in_dir, out_dir, background, workers=None)` -> images written."""

    def composite(in_dir: Path, out_dir: Path, background: RGB, workers: int | None = None) -> int:
        transform = partial(composite_on_background, background=background)
        return map_folder(in_dir, out_dir, transform, PNG_LEVEL, workers)

    return composite


@pytest.fixture(scope="session")
def resize_folder() -> Callable[..., int]:
    """The resize stage's work on a folder: `(in_dir, out_dir, background, img_size, workers=None)` -> images."""

    def resize(in_dir: Path, out_dir: Path, background: RGB, img_size: int, workers: int | None = None) -> int:
        transform = partial(prepare_input, background=background, img_size=img_size)
        return map_folder(in_dir, out_dir, transform, workers=workers)

    return resize


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Torch on one thread for a module: tensors this small gain nothing from threads, and on a shared CPU two
    threads run ~20x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
