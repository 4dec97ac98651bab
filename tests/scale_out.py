"""What the scale-out tests share: tiny temp copies of the repository, commands run as a user runs them, services
started through the repository's own scripts, and a throwaway sshd.

Not a test module: tests/test_slurm_cluster.py, test_dvc_remote_ssh.py, test_mlflow_server.py and
test_scale_out_profiles.py import it.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
# One epoch on 32 px inputs: the point is where things run and what they record, not the model.
TINY = {"epochs": 1, "batch_size": 4, "resize": {"img_size": 32}}


def run(
    cmd: list[str], cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 900, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """The command's result; with check, an assertion error holding its whole output when it fails."""
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        failed = f"{' '.join(cmd)} failed ({result.returncode})"
        assert result.returncode == 0, f"{failed}:\n{result.stdout}\n{result.stderr}"
    return result


def user_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment of a user with the project's venv activated, no MLflow or DVC settings of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "SNAKEMAKE_", "SLURM_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "test"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "test@example.com"
    env.update(extra)
    return env


def merge(target: dict[str, Any], changes: Mapping[str, Any]) -> None:
    for key, value in changes.items():
        if isinstance(value, Mapping):
            merge(target[key], value)
        else:
            target[key] = value


def make_project(root: Path, folds: int = 2, per_class: int = 6, **params: Any) -> Path:
    """The repository's tracked and new files (no data, results or tests), `per_class` demo images per class and
    tiny params with `folds` folds (`params` merged on top), committed to a fresh git repo with DVC initialised."""
    root.mkdir(parents=True, exist_ok=True)
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], REPO).stdout.split("\0")
    for name in filter(None, listed):
        generated = name.startswith(("data/", "tests/", "results/", "reports/", ".dvc/")) or name == "dvc.lock"
        if generated or not (REPO / name).is_file():
            continue
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    config = yaml.safe_load((REPO / "params.yaml").read_text())
    labels = pd.read_csv(REPO / config["data"]["labels"], dtype=str)
    subset = labels.groupby("label", group_keys=False).head(per_class)
    raw = root / config["data"]["raw_dir"]
    raw.mkdir(parents=True)
    for name in subset["file"]:
        shutil.copy2(REPO / config["data"]["raw_dir"] / name, raw / name)
    subset.to_csv(root / config["data"]["labels"], index=False)
    merge(config, {**TINY, "split": {"folds": folds, "fold_ids": list(range(folds))}})
    merge(config, params)
    (root / "params.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = user_env(root)
    run(["git", "init", "-q", "-b", "main"], root, env)
    run(["dvc", "init", "-q"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "tiny project"], root, env)
    return root


def raw_folder(root: Path) -> tuple[Path, Path]:
    """(raw image folder, labels CSV) of a project, as its params.yaml names them."""
    data = yaml.safe_load((root / "params.yaml").read_text())["data"]
    return root / data["raw_dir"], root / data["labels"]


def add_corrupt_image(root: Path, name: str = "broken.png") -> None:
    """A labelled PNG cut off after 300 bytes: a photo whose copy broke off."""
    raw, labels = raw_folder(root)
    donor = sorted(p for p in raw.iterdir() if p.suffix.lower() == ".png")[0]
    (raw / name).write_bytes(donor.read_bytes()[:300])
    with labels.open("a", encoding="utf-8") as table:
        table.write(f"{name},1\n")


def fold_metrics(path: Path) -> dict[str, Any]:
    """A metrics.json without what differs between two runs of the same fold: seconds taken and MLflow's outcome."""
    metrics = json.loads(path.read_text())
    for key in ("timing", "seconds", "mlflow"):
        metrics.pop(key, None)
    return metrics


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the cluster tests start system services (SLURM, PostgreSQL, sshd): run them as root, as CI does")


@contextmanager
def service(script: str, *args: str, env: Mapping[str, str] | None = None) -> Iterator[None]:
    """A service started with `scripts/<script> start ARGS` and, unless it was already up, stopped afterwards."""
    require_root()
    path = str(SCRIPTS / script)
    was_up = run(["bash", path, "status", *args], REPO, env, check=False).returncode == 0
    run(["bash", path, "start", *args], REPO, env, timeout=600)
    try:
        yield
    finally:
        if not was_up:
            run(["bash", path, "stop", *args], REPO, env, timeout=300)


@dataclass
class Sshd:
    """A throwaway sshd on 127.0.0.1: its port, the user to log in as, the client key, and an empty HOME for the
    client, so that the caller's ~/.ssh is never read or written."""

    port: int
    user: str
    keyfile: Path
    home: Path


@contextmanager
def throwaway_sshd(folder: Path) -> Iterator[Sshd]:
    """sshd from Debian's openssh-server with a host key, a client key and a config made for this test, all in
    `folder`; only the key made here may log in, and only on 127.0.0.1."""
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(sshd).is_file():
        pytest.fail("sshd not found: install Debian's openssh-server (.ci/run does)")
    folder.mkdir(parents=True, exist_ok=True)
    host_key, client_key = folder / "host_ed25519", folder / "client_ed25519"
    for key in (host_key, client_key):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "burrscope-test", "-f", str(key)], folder)
    authorized = folder / "authorized_keys"
    authorized.write_text((folder / "client_ed25519.pub").read_text())
    authorized.chmod(0o600)
    port = free_port()
    config = folder / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {folder / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {authorized}\nAuthenticationMethods publickey\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUsePAM no\n"
        # The temp folders holding the keys are not the user's home: skip the home-ownership checks.
        "StrictModes no\n"
        f"Subsystem sftp internal-sftp\nAllowUsers {getpass.getuser()}\n"
    )
    # sshd wants its privilege-separation folder; Debian creates it at boot, which a container may not have done.
    privsep = Path("/run/sshd")
    made_privsep = not privsep.exists()
    if made_privsep:
        privsep.mkdir(mode=0o755)
    # The client's HOME: DVC's SSH client (asyncssh through sshfs) reads ~/.ssh/config and default keys from it.
    home = folder / "home"
    home.mkdir()
    log = folder / "sshd.log"
    with log.open("w") as stream:
        process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stderr=stream)
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert process.poll() is None, f"sshd exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, "sshd did not listen within 30 s"
            time.sleep(0.2)
        yield Sshd(port, getpass.getuser(), client_key, home)
    finally:
        process.terminate()
        process.wait(timeout=30)
        if made_privsep:
            shutil.rmtree(privsep, ignore_errors=True)
