"""The SLURM profiles, without a cluster: what each job asks SLURM for, and that the graph stays the local one.

tests/test_slurm_cluster.py runs them on a real (local) cluster; these checks are quick and need no SLURM.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO, copy_definition, run, user_env

TRAINING_RULES = {"train", "final", "curve_point"}  # the jobs that train
# What profiles/slurm-local may replace: the per-job requests, and how soon the plugin first polls.
LOCAL_KEYS = {"set-threads", "set-resources", "slurm-init-seconds-before-status-checks"}


def profile(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "profiles" / name / "config.yaml").read_text())


def workflow_rules() -> set[str]:
    """Every rule the workflow defines but `all`, which runs on the submitting machine."""
    sources = [REPO / "Snakefile", *sorted((REPO / "workflow").rglob("*.smk")), REPO / "workflow" / "Snakefile"]
    names = {name for path in sources for name in re.findall(r"^rule (\w+):", path.read_text(), flags=re.M)}
    return names - {"all"}


def test_both_slurm_profiles_size_every_rule_of_the_workflow() -> None:
    rules = workflow_rules()
    assert TRAINING_RULES.issubset(rules)
    for name in ("slurm", "slurm-local"):
        config = profile(name)
        assert set(config["set-threads"]) == rules, name
        assert set(config["set-resources"]) == rules, name
        for rule, resources in config["set-resources"].items():
            assert resources["mem_mb"] > 0 and resources["runtime"] > 0, (name, rule)


def test_only_the_training_jobs_ask_slurm_for_a_gpu() -> None:
    config = profile("slurm")
    assert config["executor"] == "slurm"
    for rule, resources in config["set-resources"].items():
        if rule in TRAINING_RULES:
            # gres, not Snakemake's `gpu` count, which profiles/default caps at 1 for a local GPU.
            assert resources["gres"] == "gpu:1" and resources["gpu"] == 0, rule
        else:
            assert "gres" not in resources and not resources.get("gpu"), rule
    assert config["set-threads"]["train"] > 1 and config["set-resources"]["train"]["mem_mb"] >= 8000


def test_the_local_cluster_profile_drops_the_gpu_and_fits_one_cpu() -> None:
    local = profile("slurm-local")
    assert set(local) <= LOCAL_KEYS, "the local profile may only resize jobs; the rest is profiles/slurm's"
    for rule, resources in local["set-resources"].items():
        assert "gres" not in resources and not resources.get("gpu"), rule
    assert set(local["set-threads"].values()) == {1}
    # The real profile names no partition or account, so `--default-resources slurm_partition=...` loses nothing.
    assert "default-resources" not in profile("slurm")


@pytest.fixture(scope="module")
def definition(module_folder: Callable[[str], Path]) -> Path:
    """The pipeline definition in a temp folder with an empty raw folder and every optional job (the
    final model, the learning curve)."""
    root = module_folder("slurm_graph")
    copy_definition(root, optional=True)
    return root


def test_the_slurm_profile_runs_the_same_graph_as_a_local_run(definition: Path) -> None:
    env = user_env(definition)
    local = run(["snakemake", "--dag", "--forceall", "--cores", "4"], definition, env).stdout
    slurm = run(["snakemake", "--dag", "--forceall", "--profile", "profiles/slurm"], definition, env).stdout
    layered = ["--profile", "profiles/slurm", "--profile", "profiles/slurm-local"]
    local_cluster = run(["snakemake", "--dag", "--forceall", *layered], definition, env).stdout
    assert "digraph" in local and slurm == local and local_cluster == local
    assert 'label = "final"' in local and local.count('label = "train') == 5
    assert local.count('label = "curve_point') == 2
