"""dvc.yaml and the Snakefile describe one graph, whose stages depend on exactly the code and params they use."""

from __future__ import annotations

import ast
import dataclasses
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import REPO, Node, copy_definition, dvc_nodes, one_stage_dvc_project, run, snakemake_nodes

from burrscope.params import TRAINING_KEYS
from burrscope.pipeline.codegraph import stage_code
from burrscope.pipeline.dvcfile import output_entry
from burrscope.pipeline.generated import stale
from burrscope.pipeline.graph import BY_NAME
from burrscope.tracking.gitinfo import PIPELINE_INPUTS

STAGE_MODULE_LINES, LIBRARY_MODULE_LINES = 80, 350


@pytest.fixture(scope="module")
def workdir(module_folder: Callable[[str], Path]) -> Path:
    root = module_folder("graphs")
    copy_definition(root)
    return root


@pytest.fixture(scope="module")
def optional_workdir(module_folder: Callable[[str], Path]) -> Path:
    """The same, with the optional stages switched on: the final model and two learning-curve points."""
    root = module_folder("graphs_optional")
    copy_definition(root, optional=True)
    return root


@pytest.fixture(scope="module")
def nodes(optional_workdir: Path) -> dict[str, Node]:
    return dvc_nodes(optional_workdir)


@pytest.mark.parametrize("root", ["workdir", "optional_workdir"])
def test_dvc_and_snakemake_describe_the_same_graph(root: str, request: pytest.FixtureRequest) -> None:
    folder = request.getfixturevalue(root)
    dvc, snakemake = dvc_nodes(folder), snakemake_nodes(folder)
    assert sorted(dvc) == sorted(snakemake)
    for name in dvc:
        assert dvc[name] == snakemake[name], name
    # The final model and the curve's points only when params.yaml asks for them.
    optional = {"final", "curve_point@0.25", "curve_point@0.5"}
    assert optional <= set(dvc) if root == "optional_workdir" else not optional & set(dvc)


def test_the_final_model_feeds_export_but_not_cross_validation(nodes: dict[str, Node]) -> None:
    final_outs = nodes["final"][2]
    assert final_outs <= nodes["export"][1]
    assert not final_outs & (nodes["train@0"][1] | nodes["split"][1])


def stage_module(command: str) -> str:
    found = re.search(r"python -m stages\.(\w+)", command)
    assert found, command
    return found.group(1)


def test_each_stage_depends_on_exactly_the_code_its_command_runs(nodes: dict[str, Node]) -> None:
    """Editing a module reruns every stage that imports it, and only those (burrscope/pipeline/codegraph.py decides)."""
    for name, (command, deps, _, _) in nodes.items():
        code = {dep for dep in deps if any(dep == path or dep.startswith(f"{path}/") for path in PIPELINE_INPUTS)}
        assert code == set(stage_code(REPO, stage_module(command))), name


def test_the_report_depends_on_every_file_its_header_names_the_commit_of(nodes: dict[str, Node]) -> None:
    """The report's header names the last commit that changed PIPELINE_INPUTS (burrscope/report/origin.py). A commit
    that changes one of those files but no output must rerun the report too: else the committed report names an
    older commit than `dvc repro` from nothing at that commit does, and dirties git."""
    tracked = set(run(["git", "ls-files", *PIPELINE_INPUTS], REPO).stdout.split())
    assert "burrscope/training/setup.py" in tracked and tracked <= nodes["report"][1]


@pytest.mark.cli
def test_the_report_reruns_when_its_inputs_come_back_never_restored_from_the_run_cache(tmp_path: Path) -> None:
    """Its header names the inputs' last commit, which DVC's run cache cannot see: after a revert, a report restored
    from the run cache would name an older commit than `dvc repro` in a fresh clone does, and dirty git. A stage with
    the report's output, whose command counts its runs, runs again when its input comes back to an earlier content."""
    declared = output_entry(dataclasses.replace(BY_NAME["report"].outputs["report"], path="page.html"), "fold")
    count = "import pathlib; runs = pathlib.Path('runs'); runs.write_text(runs.read_text() + '.'); "
    count += "pathlib.Path('page.html').write_text(pathlib.Path('input.txt').read_text())"
    one_stage_dvc_project(tmp_path, f'{sys.executable} -c "{count}"', declared)
    (tmp_path / "runs").write_text("")
    for content in ("first", "second", "first"):
        (tmp_path / "input.txt").write_text(content)
        run(["dvc", "repro", "-q"], tmp_path)
    assert (tmp_path / "runs").read_text() == "..."


def test_no_stage_module_imports_another() -> None:
    for path in sorted((REPO / "stages").glob("*.py")):
        imported = [
            node.module or "" for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)
        ]
        imported += [
            alias.name
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Import)
            for alias in node.names
        ]
        assert not [name for name in imported if name == "stages" or name.startswith("stages.")], path.name


def test_stage_modules_stay_thin_and_library_modules_small() -> None:
    long_stages = {
        p.name: n for p in (REPO / "stages").glob("*.py") if (n := len(p.read_text().splitlines())) > STAGE_MODULE_LINES
    }
    long_modules = {
        str(p.relative_to(REPO)): n
        for p in (REPO / "burrscope").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > LIBRARY_MODULE_LINES
    }
    assert not long_stages, f"stage CLIs over {STAGE_MODULE_LINES} lines: move the work into burrscope/"
    assert not long_modules, f"library modules over {LIBRARY_MODULE_LINES} lines: split them"


def test_training_stages_track_exactly_the_training_keys(nodes: dict[str, Node]) -> None:
    """One definition (burrscope.params.TRAINING_KEYS) decides what retrains a fold, under both tools."""
    keys = set(TRAINING_KEYS.values())
    for name in ("train@0", "final"):
        assert nodes[name][3] == keys, name
    for name in ("aggregate", "export"):  # they find the MLflow parent run by those keys
        assert keys <= nodes[name][3], name


def reruns(nodes: dict[str, Node], changed: set[str]) -> set[str]:
    """Stages a change reruns: those whose deps or params include it, and everything downstream of them."""
    while True:
        outs = {o for n in changed for o in nodes[n][2]}
        more = {n for n, (_, deps, _, _) in nodes.items() if deps & outs} - changed
        if not more:
            return {n.split("@")[0] for n in changed}
        changed |= more


def rerun_by_param(nodes: dict[str, Node], key: str) -> set[str]:
    return reruns(
        nodes, {n for n, (_, _, _, keys) in nodes.items() if any(key == k or key.startswith(f"{k}.") for k in keys)}
    )


def rerun_by_file(nodes: dict[str, Node], path: str) -> set[str]:
    return reruns(nodes, {n for n, (_, deps, _, _) in nodes.items() if path in deps})


def test_param_changes_rerun_only_the_dependent_stages(workdir: Path) -> None:
    nodes = dvc_nodes(workdir)
    downstream = {"aggregate", "audit", "curve", "report", "export"}  # of the folds' predictions
    assert rerun_by_param(nodes, "lr") == {"train", "explain", *downstream}
    assert rerun_by_param(nodes, "resize.img_size") == {"resize", "train", "explain", *downstream}
    assert rerun_by_param(nodes, "composite.background") == {
        "composite",
        "resize",
        "train",
        "explain",
        *downstream,
    }
    assert rerun_by_param(nodes, "split.folds") == {"split", "train", "explain", *downstream}
    # Using the model differently retrains nothing (the audit reads aggregate's predictions, so it reruns, in seconds).
    assert rerun_by_param(nodes, "predict.threshold") == downstream
    # Auditing with other thresholds changes only the audit and the report.
    assert rerun_by_param(nodes, "audit.duplicate_similarity") == {"audit", "report"}
    assert rerun_by_param(nodes, "mlflow.registered_model") == {"report", "export"}
    # Where runs are logged is no part of a model: renaming the experiment retrains nothing (the report prints it).
    assert rerun_by_param(nodes, "mlflow.experiment") == {"report"}


def test_curve_points_train_only_for_the_curve(optional_workdir: Path) -> None:
    """A learning-curve point reruns with the recipe, and adding one retrains no fold: only the curve and report."""
    nodes = dvc_nodes(optional_workdir)
    assert "curve_point" in rerun_by_param(nodes, "lr")
    assert rerun_by_file(nodes, "burrscope/training/curve.py") == {"curve_point", "curve", "report"}
    assert rerun_by_param(nodes, "curve.fractions") == {"curve", "report"}


def test_heatmap_changes_rerun_explain_and_report_and_nothing_upstream(workdir: Path) -> None:
    nodes = dvc_nodes(workdir)
    assert rerun_by_param(nodes, "train.explain_correct") == {"explain", "report"}
    assert rerun_by_file(nodes, "burrscope/inference/explain.py") == {"explain", "report"}


def test_the_generated_files_are_what_their_sources_make() -> None:
    """dvc.yaml (from burrscope/pipeline/graph.py and the code graph) and the rules' conda environment (from
    pyproject.toml): `python -m burrscope.pipeline.generated` rewrites them after a change to either."""
    assert stale(REPO) == []
