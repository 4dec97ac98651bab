"""dvc.yaml and the Snakefile must describe one graph: same stages, commands, inputs, outputs and params."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
GRAPH_FILES = ["Snakefile", "dvc.yaml", "params.yaml", "workflow", "profiles", "stages"]
# Snakemake keeps each job's log with `| tee`; DVC keeps its own. The command itself must match.
LOG_SUFFIX = re.compile(r"\s*2>&1 \| tee \S+$")

Node = tuple[str, frozenset[str], frozenset[str], frozenset[str]]  # command, inputs, outputs, param keys


def copy_definition(root: Path) -> dict:
    """The pipeline definition copied into root, with an empty raw folder; the params."""
    for name in GRAPH_FILES:
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, root / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (root / params["data"]["raw_dir"]).mkdir(parents=True)
    (root / params["data"]["labels"]).write_text("file,label\n")
    return params


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the pipeline definition with an empty raw folder, so neither tool touches the repo."""
    root = tmp_path_factory.mktemp("graphs")
    copy_definition(root)
    return root


@pytest.fixture(scope="module")
def final_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same, with the optional final model switched on (predict.final: [all])."""
    root = tmp_path_factory.mktemp("graphs_final")
    params = copy_definition(root)
    params["predict"]["final"] = ["all"]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def dvc_nodes(root: Path) -> dict[str, Node]:
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    repo = Repo.init(str(root), no_scm=True, force=True)
    stages = list(repo.index.stages)
    outs = [o.def_path for st in stages for o in st.outs]

    def expand(path: str) -> set[str]:
        # A folder dep stands for the outputs other stages write inside it (DVC cannot template dep lists).
        inside = {o for o in outs if o.startswith(path.rstrip("/") + "/")}
        return inside or {path}

    nodes = {}
    for st in stages:
        deps = {p for d in st.deps if not isinstance(d, ParamsDependency) for p in expand(d.def_path)}
        keys = {k for d in st.deps if isinstance(d, ParamsDependency) for k in d.params}
        # The optional final model is a foreach over predict.final ([all]): DVC calls it final@all.
        stage_outs = frozenset(o.def_path for o in st.outs)
        nodes[st.name.removesuffix("@all")] = (st.cmd, frozenset(deps), stage_outs, frozenset(keys))
    return nodes


def snakemake_nodes(root: Path) -> dict[str, Node]:
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import DAGSettings, OutputSettings, ResourceSettings

    with SnakemakeApi(OutputSettings()) as api:
        workflow_api = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=root / "Snakefile",
                                    workdir=root)
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


@pytest.mark.parametrize("root", ["workdir", "final_workdir"])
def test_dvc_and_snakemake_describe_the_same_graph(root: str, request: pytest.FixtureRequest) -> None:
    folder = request.getfixturevalue(root)
    dvc, snakemake = dvc_nodes(folder), snakemake_nodes(folder)
    assert sorted(dvc) == sorted(snakemake)
    for name in dvc:
        assert dvc[name] == snakemake[name], name
    assert ("final" in dvc) == (root == "final_workdir")  # the final model only when predict.final asks for it


def test_the_final_model_feeds_export_but_not_cross_validation(final_workdir: Path) -> None:
    nodes = dvc_nodes(final_workdir)
    final_outs = nodes["final"][2]
    assert final_outs <= nodes["export"][1]
    assert not final_outs & (nodes["train@0"][1] | nodes["split"][1])


def test_every_stage_lists_the_stage_module_it_runs(final_workdir: Path) -> None:
    for name, (cmd, deps, _, _) in dvc_nodes(final_workdir).items():
        module = re.search(r"python -m stages\.(\w+)", cmd)
        assert module, name
        assert f"stages/{module.group(1)}.py" in deps, name


def runtime_imports(module: str) -> set[str]:
    """stages.* modules that `module` imports when it runs, directly or through other helpers.

    Imports under `if TYPE_CHECKING:` are skipped: they never run, so they are not dependencies.
    """
    seen: set[str] = set()
    todo = [module]
    while todo:
        tree = ast.parse((REPO / "stages" / f"{todo.pop()}.py").read_text())
        skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and ast.unparse(node.test) == "TYPE_CHECKING" for n in ast.walk(node)}
        for node in ast.walk(tree):
            runs = isinstance(node, ast.ImportFrom) and id(node) not in skipped
            if runs and (node.module or "").startswith("stages."):
                name = node.module.split(".", 1)[1]
                if name not in seen:
                    seen.add(name)
                    todo.append(name)
    return seen


def test_stage_deps_are_exactly_the_code_each_stage_runs(final_workdir: Path) -> None:
    """Editing a helper reruns every stage that imports it, and only those."""
    for name, (cmd, deps, _, _) in dvc_nodes(final_workdir).items():
        module = re.search(r"python -m stages\.(\w+)", cmd).group(1)
        code = {f"stages/{m}.py" for m in runtime_imports(module) | {module}}
        assets = {d for d in deps if d.startswith("stages/") and not d.endswith(".py")}
        assert {d for d in deps if d.endswith(".py")} == code, name
        assert "stages/params.schema.json" in assets, name


def test_param_changes_rerun_only_the_dependent_stages(workdir: Path) -> None:
    """Which stages a params change reruns: those reading the key, and everything downstream of them."""
    nodes = dvc_nodes(workdir)

    def rerun_by(key: str) -> set[str]:
        changed = {n for n, (_, _, _, keys) in nodes.items() if any(key == k or key.startswith(f"{k}.") for k in keys)}
        while True:
            outs = {o for n in changed for o in nodes[n][2]}
            more = {n for n, (_, deps, _, _) in nodes.items() if deps & outs} - changed
            if not more:
                return {n.split("@")[0] for n in changed}
            changed |= more

    assert rerun_by("lr") == {"train", "aggregate", "report", "export"}
    assert rerun_by("resize.img_size") == {"resize", "train", "aggregate", "report", "export"}
    assert rerun_by("composite.background") == {"composite", "resize", "train", "aggregate", "report", "export"}
    assert rerun_by("split.folds") == {"split", "train", "aggregate", "report", "export"}
    # Using the model differently retrains nothing.
    assert rerun_by("predict.threshold") == {"aggregate", "report", "export"}
    assert rerun_by("mlflow.registered_model") == {"report", "export"}
