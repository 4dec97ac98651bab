"""Fixtures the test modules share, the services the `cluster` tests start, and the rule that marks every test.

Markers (registered in pyproject.toml): a module or test that runs DVC or Snakemake end to end is marked `e2e`,
one that runs a command line (`python -m stages.<name>` or its main(), `mlflow ui`) is marked `cli`, both by
hand, one that starts system services `cluster`, and the fault campaign's `faults`; every other test is `unit`,
added below. So `pytest -m unit` is the quick in-process suite and `pytest -m "not e2e and not faults"`
everything but the minutes-long pipeline runs.

pytest-xdist runs the test files side by side (pyproject.toml's addopts): each worker has its own session, so
`pipeline_run` is made once by whichever worker asks first and shared through a file lock, and the services' scripts
serialise their own starts and apt-get runs.

The services come up once per test session through the repository's own scripts (which install their Debian
packages when missing), and only as root; without root the `cluster` tests are skipped with one line that says how
to run them.
"""

from __future__ import annotations

import getpass
import os
import platform
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pytest
import yaml
from filelock import FileLock
from helpers import REPO, SCRIPTS, Server, Sshd, free_port, make_project, merged, output, run, user_env
from hypothesis import settings
from PIL import Image

from burrscope.data.folders import map_folder
from burrscope.data.images import RGB, composite_on_background, prepare_input
from burrscope.params import Params, Recipe, validate_params
from burrscope.training.features import CACHE_ENV
from stages.composite import PNG_LEVEL

# What makes the repository's params.yaml tiny: two short epochs on 32 px inputs, on the CPU, on one thread (the
# tests run side by side under pytest-xdist, and tensors this small gain nothing from a second).
TINY = {"epochs": 2, "batch_size": 4, "resize": {"img_size": 32}, "train": {"device": "cpu", "cpu_threads": 1}}
# No per-example deadline: the test files run side by side (pytest-xdist), and a busy core is not a failure.
settings.register_profile("side-by-side", deadline=None)
settings.load_profile("side-by-side")
ROOT_NEEDED = (
    "the cluster tests start SLURM, PostgreSQL and sshd, which needs root: run them with "
    "`sudo .venv/bin/pytest -m cluster`"
)


# The files that wait or run longest (the fault campaign, the DVC runs, the services), first: pytest-xdist hands
# out whole files in collection order (pyproject.toml's addopts), so the quick files fill in around them and last.
STARTED_FIRST = [
    "test_faults.py",
    "test_pipeline_e2e.py",  # makes `pipeline_run`, which the next e2e files wait for: they start after it
    "test_slurm_cluster.py",
    "test_mlflow_server.py",
    "test_experiments_e2e.py",
    "test_curve_and_queue_e2e.py",
    "test_dvc_remote_ssh.py",
    "test_snakemake_e2e.py",
    # then the longest of the rest, so that the last files to start are short ones and no core idles at the end
    "test_export.py",
    "test_reproducibility.py",
    "test_train_reliability.py",
    "test_report.py",
    "test_tracking.py",
    "test_run_provenance.py",
    "test_predict.py",
    "test_champion.py",
    "test_strategies.py",
    "test_moved_workspace.py",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not any(item.get_closest_marker(name) for name in ("cli", "e2e", "cluster", "faults")):
            item.add_marker(pytest.mark.unit)
    rank = {name: place for place, name in enumerate(STARTED_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def own_feature_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test its own frozen-feature cache (burrscope/training/features.py), so none finds another's entries."""
    folder = tmp_path_factory.mktemp("feature-cache")
    monkeypatch.setenv(CACHE_ENV, str(folder))
    yield
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def module_folder(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], Path]]:
    """Factory of a new temp folder for a module's fixtures, `module_folder("export")`. The folders go when the
    module is done, unless a test failed meanwhile: as a test's own tmp_path goes unless it failed (pyproject's
    tmp_path_retention_policy), so that the suite holds on disk only what the files running now need."""
    made: list[Path] = []
    failed_before = request.session.testsfailed

    def make(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield make
    if request.session.testsfailed == failed_before:
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_params() -> Callable[..., Params]:
    """Factory: the repository's params.yaml made tiny (TINY), then `changes` merged in, validated.

    `tiny_params(epochs=3, train={"keep": "best"})` -> a Params; its `.raw` is the dict, for a params.yaml.
    """

    def make(**changes: Any) -> Params:
        params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
        return Params.from_mapping(validate_params(merged(merged(params, TINY), changes)))

    return make


@pytest.fixture
def params(tiny_params: Callable[..., Params]) -> Params:
    """Tiny params with two folds, as the tracking tests' folds.csv has."""
    return tiny_params(split={"folds": 2, "fold_ids": [0, 1]})


@pytest.fixture
def recipe(params: Params) -> Recipe:
    return params.recipe


@pytest.fixture
def unreachable_mlflow(monkeypatch: pytest.MonkeyPatch) -> str:
    """MLFLOW_TRACKING_URI pointed where nothing listens (the discard port), with one try per request: logging
    rides out a server restart with a minute of retries (store.LOGGING_LIMITS), a user's own setting wins, and a
    test of the outcome needs none of them."""
    uri = "http://127.0.0.1:9"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return uri


@pytest.fixture
def tracked_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder to track into (its own mlflow.db, as a fresh workspace has), with a two-fold folds.csv and
    none of the caller's MLflow or DVC settings."""
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "folds.csv").write_text("file,label,fold\na.png,0,0\nb.png,1,0\nc.png,0,1\nd.png,1,1\n")
    return tmp_path


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
        return map_folder(in_dir, out_dir, transform, PNG_LEVEL, workers=workers)

    return composite


@pytest.fixture(scope="session")
def resize_folder() -> Callable[..., int]:
    """The resize stage's work on a folder: `(in_dir, out_dir, background, img_size, workers=None)` -> images."""

    def resize(in_dir: Path, out_dir: Path, background: RGB, img_size: int, *, workers: int | None = None) -> int:
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


def commit_a_pipeline_run(root: Path) -> Path:
    """A tiny project (helpers.make_project) at `root` after one `dvc repro`, its results committed; `repro.log`
    beside it holds what the run printed."""
    make_project(root)
    env = user_env(root)
    (root.parent / "repro.log").write_text(output(["dvc", "repro"], root, env))
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "pipeline run"], root, env)
    return root


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """commit_a_pipeline_run's project, made once per test session: under pytest-xdist the first worker to ask
    makes it in the session's shared temp folder and the others wait for it. Tests only read it: one that changes it
    works on a copy (helpers.copy_project)."""
    if worker_id == "master":  # no xdist workers: `pytest -n 0`
        return commit_a_pipeline_run(tmp_path_factory.mktemp("pipeline") / "project")
    shared = tmp_path_factory.getbasetemp().parent / "pipeline"
    with FileLock(f"{shared}.lock"):
        if not (shared / "made").is_file():
            shutil.rmtree(shared, ignore_errors=True)  # what a worker that failed half-way left
            commit_a_pipeline_run(shared / "project")
            (shared / "made").touch()
    return shared / "project"


def debian_program(program: str, package: str) -> str:
    """`program` from Debian's `package`: installed when missing, as root, by the scripts' own apt_install (one
    apt-get at a time, beside the services' installs); without root the test is skipped, saying how to get it."""
    found = shutil.which(program)
    if found is None and os.geteuid() == 0:
        install = f"source {SCRIPTS / 'lib.sh'} && apt_install {package}"
        run(["bash", "-c", install, "tests"], REPO, user_env(REPO), timeout=1800)
        found = shutil.which(program)
    if found is None:
        pytest.skip(f"needs Debian's {package}: `sudo apt-get install {package}`, or run the tests as root")
    return found


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, to run a page's scripts headless."""
    return debian_program("chromium", "chromium")


@pytest.fixture(scope="session")
def qemu_x86_64() -> str:
    """qemu's user-mode x86-64 emulator: runs a program as on another CPU, whose identity (maker, model, caches) it
    reports, computing every instruction exactly, in software. On x86-64 machines only: elsewhere it would compare
    two instruction sets, not two CPUs."""
    if platform.machine() != "x86_64":
        pytest.skip(f"compares x86-64 CPUs; this machine is {platform.machine()}")
    return debian_program("qemu-x86_64", "qemu-user")


# ---------------------------------------------------------------- services of the `cluster` tests


@contextmanager
def service(script: str, *args: str) -> Iterator[None]:
    """A service started with `scripts/<script> start ARGS` and, unless it was already up, stopped afterwards."""
    if os.geteuid() != 0:
        pytest.skip(ROOT_NEEDED)
    path, env = str(SCRIPTS / script), user_env(REPO)
    was_up = run(["bash", path, "status", *args], REPO, env, check=False).returncode == 0
    run(["bash", path, "start", *args], REPO, env, timeout=900)
    try:
        yield
    finally:
        if not was_up:
            run(["bash", path, "stop", *args], REPO, env, timeout=300)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[None]:
    """scripts/local_slurm.sh: munged, MariaDB, slurmdbd, slurmctld and slurmd on this machine."""
    with service("local_slurm.sh"):
        yield


@pytest.fixture(scope="session")
def mlflow_server() -> Iterator[Server]:
    port = free_port()
    with service("mlflow_server.sh", str(port)):
        yield Server(port)


@pytest.fixture(scope="session")
def ssh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    folder, port = tmp_path_factory.mktemp("sshd") / "server", free_port()
    with service("ssh_server.sh", str(folder), str(port)):
        home = tmp_path_factory.mktemp("ssh-client-home")
        yield Sshd(port, getpass.getuser(), folder / "client_ed25519", home)
