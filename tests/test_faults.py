"""Issue 21's fault campaign in small (benchmarks/faults.py; docs/reliability.md, "Faults at any moment"), and the
recovery commands it relies on.

The campaign runs on a tiny copy (4 demo images per class, 32 px, up to `aggregate`): two `dvc repro` kills, one
`snakemake --cores 2` kill, and one of each other fault. As root it also fills a tmpfs and kills an MLflow server
of scripts/mlflow_server.sh; without root those two are skipped (the campaign says so).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from faultkit.lab import FAST, Plan  # benchmarks/ is on the path (pyproject.toml)
from faultkit.outcome import Tally
from faults import KINDS, campaign
from helpers import REPO, copy_definition, run, user_env

# One thread per fold: the other test files run beside this one under pytest-xdist.
SMALL = Plan(
    kills=2,
    snakemake_kills=1,
    per_class=4,
    target="aggregate",
    settings=FAST | {"resize.img_size": 32, "train.cpu_threads": 1},
)
ROOT_ONLY = {"disk-full", "mlflow-server"}


@pytest.fixture(scope="module")
def tallies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tally]:
    made = campaign(SMALL, tmp_path_factory.mktemp("faults") / "campaign")
    return dict(zip(KINDS, made, strict=True))


@pytest.mark.faults
@pytest.mark.parametrize("kind", KINDS)
def test_every_fault_is_injected_and_recovered_with_identical_outputs_and_no_stuck_run(
    tallies: dict[str, Tally], kind: str
) -> None:
    tally = tallies[kind]
    if kind in ROOT_ONLY and os.geteuid() != 0:
        assert tally.line().endswith("needs root)")
        pytest.skip(f"{kind} needs root (a tmpfs, or scripts/mlflow_server.sh)")
    injected, recovered, identical, stuck = tally.counts
    assert injected >= 1, tally.line()  # a kill drawn late may find the run already finished: not injected
    assert (recovered, identical, stuck) == (injected, injected, 0), tally.line()


@pytest.fixture
def definition(tmp_path: Path) -> Path:
    copy_definition(tmp_path)
    return tmp_path


@pytest.mark.cli
def test_snakemake_unlock_works_as_its_lock_message_says(definition: Path) -> None:
    """After a kill, Snakemake refuses to run until `snakemake --unlock`; that command takes no --cores, and the
    rules' threads must not need them."""
    locks = definition / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text("data/demo/labels.csv\n")
    (locks / "0.output.lock").write_text("data/interim/manifest.csv\n")
    run(["snakemake", "--unlock"], definition, user_env(definition))
    assert not locks.exists() or not any(locks.iterdir())


@pytest.mark.cli
def test_a_job_killed_after_writing_some_outputs_is_rerun_by_the_same_command(definition: Path) -> None:
    """Snakemake marks a killed job's outputs incomplete and by default refuses to go on; profiles/default makes
    the plain command rerun the job."""
    written = definition / "data" / "interim" / "manifest.csv"
    written.parent.mkdir(parents=True)
    written.write_text("half\n")
    marker = base64.urlsafe_b64encode(b"data/interim/manifest.csv").decode()
    (definition / ".snakemake" / "incomplete").mkdir(parents=True)
    (definition / ".snakemake" / "incomplete" / marker).touch()
    dry = run(["snakemake", "--cores", "1", "-n", "data/interim/manifest.csv"], definition, user_env(definition))
    assert "normalise" in dry.stdout + dry.stderr
    assert (REPO / "profiles" / "default" / "config.yaml").read_text().count("rerun-incomplete: true") == 1
