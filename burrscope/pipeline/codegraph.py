"""The code a module runs: its own file, the project modules it imports (transitively) and the files they read.

One answer serves every place that needs it: the code inputs of each Snakemake rule (workflow/rules/common.smk),
the test that holds dvc.yaml's hand-kept deps to it, the training code a resume checkpoint must match, and the
modules the exported MLflow model ships. Imports are read from the source, never executed, so asking is cheap
and imports nothing heavy.

What counts: `import x.y` and `from x.y import z` of the project's packages (z too, when it is a module),
anywhere in a file, except under `if TYPE_CHECKING:` (never run). A package's `__init__.py` counts when it runs
code beyond a docstring. A file a module reads beside itself, `Path(__file__).with_name("name")`, counts too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from burrscope.tracking.gitinfo import PIPELINE_INPUTS

PACKAGES = ("burrscope", "stages")
# Stages whose output names the last commit that changed anything the pipeline reads (the report's header,
# burrscope/report/origin.py) depend on all of it, PIPELINE_INPUTS. Else a commit that changed code but no output
# would leave the report as it was, naming an older commit than the same commit run from nothing names.
NAME_THE_INPUTS_COMMIT = ("report",)
# The repository (or installed tree) that holds the `burrscope` package and `stages/`.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def module_file(root: Path, module: str) -> Path | None:
    """The file of a project module ("burrscope.training.fold"), a package's `__init__.py`, or None."""
    base = Path(root, *module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _skipped(tree: ast.AST) -> set[int]:
    """Ids of the nodes under `if TYPE_CHECKING:`."""
    return {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }


def imported_modules(tree: ast.AST) -> Iterator[str]:
    """Dotted names an import statement could bind to a module, for every absolute import that runs."""
    skipped = _skipped(tree)
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _assets(tree: ast.AST, path: Path) -> Iterator[Path]:
    """Files read beside the module as Path(__file__).with_name("...")."""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "with_name"
            and ast.unparse(node.func.value) == "Path(__file__)"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            yield path.with_name(node.args[0].value)


def _runs_code(tree: ast.Module) -> bool:
    body = tree.body[1:] if tree.body and isinstance(tree.body[0], ast.Expr) else tree.body
    return bool(body)


def code_files(root: Path, module: str) -> list[str]:
    """Paths, relative to `root` and sorted, of everything `module` runs or reads from the project."""
    root = Path(root)
    found: set[Path] = set()
    todo = [module]
    seen = {module}
    while todo:
        name = todo.pop()
        path = module_file(root, name)
        if path is None:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if path.name != "__init__.py" or _runs_code(tree):
            found.add(path)
        found.update(_assets(tree, path))
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        for imported in [*parents, *imported_modules(tree)]:
            if imported.split(".")[0] in PACKAGES and imported not in seen:
                seen.add(imported)
                todo.append(imported)
    return sorted(path.relative_to(root).as_posix() for path in found)


def pipeline_inputs(root: Path) -> list[str]:
    """Paths, relative to `root` and sorted, of every file of PIPELINE_INPUTS but Python's bytecode caches."""
    root = Path(root)
    found: list[Path] = []
    for name in PIPELINE_INPUTS:
        path = root / name
        found += (
            [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file() and "__pycache__" not in f.parts]
        )
    return sorted(path.relative_to(root).as_posix() for path in found)


def stage_code(root: Path, stage: str) -> list[str]:
    """What `python -m stages.<stage>` runs and reads: its DVC deps and Snakemake code inputs."""
    return pipeline_inputs(root) if stage in NAME_THE_INPUTS_COMMIT else code_files(root, f"stages.{stage}")
