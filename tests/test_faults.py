"""Issue 21's fault campaign in small (benchmarks/faults.py; docs/reliability.md, "Faults at any moment"), and the
recovery commands it relies on.

The campaign runs on a tiny copy (4 demo images per class, 32 px, up to `aggregate`): two `dvc repro` kills, one
`snakemake --cores 2` kill, and one of each other fault (of the corrupt files, one run: a corrupted feature-cache
entry and a corrupted checkpoint), in three groups that run at once, all compared with one uninterrupted run (the
MLflow server's trial with one into its server). As root it also fills a tmpfs and kills an MLflow server of
scripts/mlflow_server.sh; without root those two are skipped (the campaign says so).
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from faultkit.kills import (
    LOCKFILE_CUT,
    RWLOCK_CUT,
    remove_rwlock,
    restore_lockfile,
)  # benchmarks/ is on the path (pyproject.toml)
from faultkit.lab import FAST, Lab, Plan
from faultkit.outcome import Tally, differences, snapshot
from faultkit.procs import SNAKEMAKE_JOB, Finished
from faults import KINDS
from helpers import REPO, copy_definition, copy_project, one_stage_dvc_project, output, run, user_env

from burrscope.tracking.lookup import run_page_name

# One thread per fold: the other test files run beside this one under pytest-xdist.
SMALL = Plan(
    kills=2,
    snakemake_kills=1,
    cache_damage=("corrupted",),
    per_class=4,
    target="aggregate",
    settings=FAST | {"resize.img_size": 32, "train.cpu_threads": 1},
)
ROOT_ONLY = {"disk-full", "mlflow-server"}
# The kinds in three groups that run at once, in one campaign: every kind but the MLflow server's is compared with
# one uninterrupted `dvc repro`, which the first to ask makes. The Snakemake kill and the MLflow server each have a
# group of their own, so that the longest group (the kinds that start from a copy of the uninterrupted run) starts
# at once.
GROUPS = (
    ("dvc-kills", "queue", "second-repro", "disk-full", "corrupt-files"),
    ("snakemake-kills",),
    ("mlflow-server",),
)


@pytest.fixture(scope="module")
def tallies(module_folder: Callable[[str], Path]) -> dict[str, Tally]:
    """Every fault kind's tally. The groups run in threads: they mostly wait, on their commands and on the seeded
    moments of their faults, each trial in its own copy."""
    lab = Lab(module_folder("faults") / "campaign", SMALL)

    def run_group(kinds: tuple[str, ...]) -> dict[str, Tally]:
        return {kind: KINDS[kind](lab) for kind in kinds}

    with ThreadPoolExecutor(len(GROUPS)) as pool:
        return {kind: tally for made in pool.map(run_group, GROUPS) for kind, tally in made.items()}


def test_the_groups_run_every_fault_kind_once() -> None:
    assert sorted(kind for group in GROUPS for kind in group) == sorted(KINDS)


# pytest-timeout counts the campaign fixture in the first test that asks for it: under the four xdist workers of a
# full `pytest` on a 2-core machine the campaign took over 900 s (pyproject.toml's default) once.
CAMPAIGN_TIMEOUT_S = 2400


@pytest.mark.faults
@pytest.mark.timeout(CAMPAIGN_TIMEOUT_S)
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


@pytest.mark.cli
def test_a_snapshot_compares_the_declared_outputs_not_the_bookkeeping_beside_them(tmp_path: Path) -> None:
    """What the default campaign found: every trial "differed" from the uninterrupted run by the page beside the
    report that opens its MLflow run, whose run id is new every run (git-ignored, not an output of any stage)."""
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    heatmaps = tmp_path / "results" / "explain" / "fold_0" / "heatmaps.csv"  # inside a folder output
    heatmaps.parent.mkdir(parents=True)
    heatmaps.write_text("file,label\n")
    report, run_page = tmp_path / "reports" / "report.html", tmp_path / "reports" / run_page_name("0123abcd")
    report.parent.mkdir()
    report.write_text("<html>report</html>")
    run_page.write_text("MLflow run 1")
    uninterrupted = snapshot(tmp_path)
    assert set(uninterrupted.files) == {"reports/report.html", "results/explain/fold_0/heatmaps.csv"}

    run_page.write_text("MLflow run 2")  # the same outputs from another run
    (tmp_path / "results" / ".gitignore").write_text("/explain\n")
    assert differences(uninterrupted, snapshot(tmp_path)) == []
    heatmaps.write_text("file,label\nimg.png,1\n")
    report.unlink()
    assert differences(uninterrupted, snapshot(tmp_path)) == [
        "reports/report.html missing",
        "results/explain/fold_0/heatmaps.csv differs",
    ]


def test_a_folder_dependency_hashes_the_same_with_or_without_dvcs_gitignore_entries(tmp_path: Path) -> None:
    """What the campaign's MLflow-server fault found: a failed `dvc repro` takes back the .gitignore entries it
    added, those of the stages that succeeded too, and the rerun skips those stages, so results/train may hold
    fold_0/.gitignore or not for the same outputs, and aggregate depends on that folder. The repository's .dvcignore
    leaves .gitignore files out of a folder's hash."""
    env = user_env(tmp_path)
    run(["git", "init", "-q"], tmp_path, env)
    run(["dvc", "init", "-q"], tmp_path, env)
    shutil.copy2(REPO / ".dvcignore", tmp_path / ".dvcignore")
    fold = tmp_path / "train" / "fold_0"
    fold.mkdir(parents=True)
    (fold / "model.pt").write_text("weights")
    pool = "cat train/*/model.pt > pooled.txt"
    run(["dvc", "stage", "add", "-q", "-n", "pool", "-d", "train", "-o", "pooled.txt", pool], tmp_path, env)
    run(["dvc", "repro", "-q"], tmp_path, env)
    (fold / ".gitignore").write_text("/model.pt\n")
    assert "Data and pipelines are up to date" in output(["dvc", "status"], tmp_path, env)


@pytest.mark.cli
def test_a_snakemake_kill_is_placed_in_the_job_that_was_running(definition: Path) -> None:
    """Snakemake names a job by its rule's `message`, not as `rule <name>:`: the default campaign placed every
    Snakemake kill "in start", before any job."""
    dry = run(["snakemake", "--cores", "2", "-n", "data/processed/folds.csv"], definition, user_env(definition))
    lines = [(float(at), f"{line}\n") for at, line in enumerate((dry.stdout + dry.stderr).splitlines())]
    finished = Finished(returncode=0, lines=lines, seconds=float(len(lines)))
    assert [job for job, _ in finished.marks(SNAKEMAKE_JOB)] == [
        "Copying raw images under normalised names and joining the labels",
        "Assigning stratified folds",
    ]
    assert finished.running_at(0.0, SNAKEMAKE_JOB) == "start"  # "Building DAG of jobs..."
    assert finished.running_at(finished.seconds, SNAKEMAKE_JOB) == "Assigning stratified folds"


def test_a_moment_is_drawn_over_the_chosen_stages_and_counted_from_the_stages_start() -> None:
    lines = [(at, f"Running stage '{stage}':\n") for at, stage in [(0.0, "split"), (1.0, "train@0"), (5.0, "train@1")]]
    run = Finished(returncode=0, lines=lines, seconds=7.0)  # split 1 s, train@0 4 s, train@1 2 s
    assert run.moment_in(0.0) == ("split", 0.0)
    assert run.moment_in(0.5) == ("train@0", 2.5)  # 3.5 of the 7 s
    assert run.moment_in(0.75, lambda stage: stage.startswith("train@")) == ("train@1", 0.5)  # 4.5 of the 6 s


@pytest.mark.cli
def test_an_rwlock_left_empty_by_a_kill_stops_the_rerun_and_removing_it_recovers(tmp_path: Path) -> None:
    """What CI's small campaign found (a kill 9.6 s into `split`): DVC rewrites .dvc/tmp/rwlock in place, so a kill
    meanwhile leaves it empty and every later `dvc repro` stops at once. Removing it (kills.remove_rwlock, as
    docs/reliability.md says) lets the same command run."""
    one_stage_dvc_project(tmp_path, "cp input.txt output.txt", "output.txt")
    (tmp_path / "input.txt").write_text("part\n")
    (tmp_path / ".dvc" / "tmp").mkdir(exist_ok=True)
    (tmp_path / ".dvc" / "tmp" / "rwlock").write_text("")  # truncated by DVC's open(..., "w"), never written
    stopped = run(["dvc", "repro"], tmp_path, check=False)
    assert stopped.returncode != 0 and RWLOCK_CUT.search(stopped.stdout + stopped.stderr), stopped.stderr
    remove_rwlock(tmp_path)
    run(["dvc", "repro"], tmp_path)
    assert (tmp_path / "output.txt").read_text() == "part\n"


@pytest.mark.e2e
def test_a_dvc_lock_cut_short_by_a_kill_stops_the_rerun_and_restoring_it_recovers(
    pipeline_run: Path, tmp_path: Path
) -> None:
    """What the campaign found: DVC rewrites dvc.lock in place after each stage, so a kill meanwhile leaves it cut
    short and the same command stops at once. The step back docs/reliability.md gives (kills.restore_lockfile)
    then finds every output as it was."""
    project = copy_project(pipeline_run, tmp_path / "project")
    env = user_env(project)
    lockfile = project / "dvc.lock"
    whole = lockfile.read_bytes()
    lockfile.write_bytes(whole[: whole.index(b"md5:", len(whole) // 3) + 2])  # ends in a key's first letters: no YAML
    stopped = run(["dvc", "repro"], project, env, check=False)
    assert stopped.returncode != 0 and LOCKFILE_CUT.search(stopped.stdout + stopped.stderr), stopped.stderr
    restore_lockfile(project)
    assert "Data and pipelines are up to date" in output(["dvc", "repro"], project, env)
    assert lockfile.read_bytes() == whole and not run(["git", "status", "--porcelain"], project, env).stdout
