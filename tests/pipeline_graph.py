"""The pipeline graph as each tool sees it: one node per stage (command, inputs, outputs, param keys).

The only place that touches Snakemake's internals (its DAG has no public API): if a Snakemake release
changes them, this is the one file to mend.
"""

from __future__ import annotations

import re
from pathlib import Path

Node = tuple[str, frozenset[str], frozenset[str], frozenset[str]]  # command, inputs, outputs, param keys
# Snakemake keeps each job's log with `| tee`; DVC keeps its own. The command itself must match.
LOG_SUFFIX = re.compile(r"\s*2>&1 \| tee \S+$")


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
