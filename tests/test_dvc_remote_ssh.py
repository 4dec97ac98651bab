"""A shared DVC remote over SSH (dvc-ssh) and a git remote, as a team shares one pipeline's results.

scripts/ssh_server.sh's sshd on 127.0.0.1 serves the DVC remote, with a key made for it; a bare git repo on disk is
the git remote. One clone holding the tiny pipeline's run pushes code, outputs and run cache; a fresh clone pulls
them and has nothing left to run. Then one experiment travels the same way with `dvc exp push/pull`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import Sshd, copy_project, run, user_env

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

REMOTE = "shared"
EXPERIMENT = "threshold-03"
# Cached (not git-tracked) outputs: what only the DVC remote can bring to another clone.
CACHED = [
    "data/interim/manifest.csv",
    "data/processed/folds.csv",
    "results/train/fold_0/model.pt",
    "results/train/fold_1/predictions.csv",
    "results/aggregate/predictions.csv",
    "results/export/model.onnx",
    "reports/report.html",
]


@dataclass
class Shared:
    sshd: Sshd
    origin: Path  # the bare git repo
    first: Path  # the clone that ran the pipeline and pushed

    def env(self, root: Path) -> dict[str, str]:
        return user_env(root, HOME=str(self.sshd.home))

    def clone(self, root: Path) -> Path:
        """A fresh clone of the git remote, with this user's key for the DVC remote (kept out of git)."""
        run(["git", "clone", "-q", str(self.origin), str(root)], root.parent, self.env(root.parent))
        run(["dvc", "remote", "modify", "--local", REMOTE, "keyfile", str(self.sshd.keyfile)], root, self.env(root))
        return root


def metrics(root: Path, env: dict[str, str]) -> dict:
    """`dvc metrics show` of the workspace: {metrics file: its content}."""
    (workspace,) = json.loads(run(["dvc", "metrics", "show", "--json"], root, env).stdout).values()
    return workspace["data"]


@pytest.fixture(scope="module")
def shared(ssh_server: Sshd, pipeline_run: Path, module_folder: Callable[[str], Path]) -> Shared:
    base, sshd = module_folder("dvc_remote"), ssh_server
    origin = base / "origin.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], base)
    first = copy_project(pipeline_run, base / "first")  # its outputs are made and committed
    team = Shared(sshd, origin, first)
    env = team.env(first)
    storage = f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{base / 'storage'}"
    run(["dvc", "remote", "add", "-d", REMOTE, storage], first, env)
    run(["dvc", "remote", "modify", "--local", REMOTE, "keyfile", str(sshd.keyfile)], first, env)
    run(["git", "commit", "-q", "-am", "remote storage"], first, env)
    run(["git", "remote", "add", "origin", str(origin)], first, env)
    run(["git", "push", "-q", "origin", "main"], first, env)
    pushed = run(["dvc", "push", "--run-cache"], first, env).stdout
    assert "pushed" in pushed, pushed
    yield team


def test_a_fresh_clone_pulls_every_output_and_reproduces_nothing(shared: Shared, tmp_path: Path) -> None:
    second = shared.clone(tmp_path / "second")
    env = shared.env(second)
    assert not (second / "results/train/fold_0/model.pt").exists()
    run(["dvc", "pull", "--run-cache"], second, env)
    for name in CACHED:
        assert (second / name).read_bytes() == (shared.first / name).read_bytes(), name
    assert list((second / ".dvc/cache/runs").rglob("*")), "the run cache did not come along"
    output = run(["dvc", "repro"], second, env).stdout
    assert "Running stage" not in output and "up to date" in output, output
    assert metrics(second, env) == metrics(shared.first, shared.env(shared.first))
    assert list(metrics(second, env)) == ["results/aggregate/headline.json", "results/audit/summary.json"]


def test_an_experiment_travels_through_the_git_and_dvc_remotes(shared: Shared, tmp_path: Path) -> None:
    first_env = shared.env(shared.first)
    output = run(["dvc", "exp", "run", "-S", "predict.threshold=0.3", "--name", EXPERIMENT], shared.first, first_env)
    assert "Running stage 'aggregate'" in output.stdout and "Running stage 'train" not in output.stdout
    expected = metrics(shared.first, first_env)
    run(["dvc", "exp", "push", "--run-cache", "origin", EXPERIMENT], shared.first, first_env)

    second = shared.clone(tmp_path / "second")
    env = shared.env(second)
    run(["dvc", "exp", "pull", "--run-cache", "origin", EXPERIMENT], second, env)
    assert EXPERIMENT in run(["dvc", "exp", "list", "--name-only"], second, env).stdout
    run(["dvc", "exp", "apply", EXPERIMENT], second, env)
    assert metrics(second, env) == expected
    assert "threshold: 0.3" in (second / "params.yaml").read_text()
    for name in ("results/aggregate/predictions.csv", "results/export/model.onnx"):
        assert (second / name).read_bytes() == (shared.first / name).read_bytes(), name
    assert "up to date" in run(["dvc", "status"], second, env).stdout
