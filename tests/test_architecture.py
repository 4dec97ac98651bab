"""The rules the package layout stands for, checked on the source: what each concern may import, and sizes."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import REPO

from burrscope.pipeline.codegraph import code_files, imported_modules

LIBRARY = REPO / "burrscope"
STAGE_LINES, MODULE_LINES, FUNCTION_LINES = 80, 300, 60
# Only tracking talks to MLflow; serving holds the pyfunc model class that MLflow loads, so it subclasses MLflow's.
MLFLOW_ALLOWED = ("burrscope/tracking/", "burrscope/inference/serving.py")


def modules(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def external(path: Path) -> set[str]:
    """The top-level names of the packages outside the project that the module imports."""
    return {name.split(".")[0] for name in imported_modules(ast.parse(path.read_text()))} - {"burrscope", "stages"}


def reaches(path: Path) -> list[str]:
    """Every project file the module runs, itself included (codegraph follows imports transitively)."""
    return code_files(REPO, module_name(path))


@pytest.mark.parametrize("concern", ["data", "evaluation"])
def test_data_and_evaluation_never_import_torch(concern: str) -> None:
    """The data stages and aggregate start in a second and run where torch is not installed."""
    offenders = {
        str(path.relative_to(REPO)): reached
        for path in modules(LIBRARY / concern)
        for reached in reaches(path)
        if reached.endswith(".py") and "torch" in external(REPO / reached)
    }
    assert not offenders, f"these {concern} modules reach torch: {offenders}"


def test_inference_never_imports_training() -> None:
    """A model is used the same way whoever trained it (nanoGPT's sample.py never imports train.py)."""
    offenders = {
        str(path.relative_to(REPO)): [name for name in reaches(path) if name.startswith("burrscope/training/")]
        for path in modules(LIBRARY / "inference")
    }
    assert not {path: found for path, found in offenders.items() if found}


def test_only_tracking_imports_mlflow() -> None:
    importers = {
        str(path.relative_to(REPO))
        for path in [*modules(LIBRARY), *modules(REPO / "stages")]
        if "mlflow" in external(path)
    }
    assert importers and all(path.startswith(MLFLOW_ALLOWED) for path in importers), sorted(importers)


def test_no_stage_module_imports_another() -> None:
    for path in modules(REPO / "stages"):
        imported = imported_modules(ast.parse(path.read_text()))
        assert not [name for name in imported if name == "stages" or name.startswith("stages.")], path.name


def test_the_library_has_no_import_cycle() -> None:
    """No module imports one that (transitively) imports it back."""
    cycles = [
        (str(path.relative_to(REPO)), imported)
        for path in modules(LIBRARY)
        for imported in imported_modules(ast.parse(path.read_text()))
        if imported.startswith("burrscope.")
        and imported != module_name(path)
        and str(path.relative_to(REPO)) in code_files(REPO, imported)
    ]
    assert not cycles


def functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    yield from (node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef))


def test_stages_stay_thin_and_modules_and_functions_small() -> None:
    long_stages = [p.name for p in modules(REPO / "stages") if len(p.read_text().splitlines()) > STAGE_LINES]
    long_modules = [str(p) for p in modules(LIBRARY) if len(p.read_text().splitlines()) > MODULE_LINES]
    long_functions = [
        f"{path.relative_to(REPO)}:{node.name}"
        for path in [*modules(LIBRARY), *modules(REPO / "stages")]
        for node in functions(ast.parse(path.read_text()))
        if node.end_lineno - node.lineno + 1 > FUNCTION_LINES
    ]
    assert not long_stages, f"stage CLIs over {STAGE_LINES} lines: move the work into burrscope/"
    assert not long_modules, f"library modules over {MODULE_LINES} lines: split them"
    assert not long_functions, f"functions over {FUNCTION_LINES} lines: split them by job"
