"""The package diagram in docs/architecture.md, drawn from the code's own imports.

One node per folder of `burrscope/` (the modules directly in it are "core") and one for `stages/`; an arrow from A
to B where a module of A imports one of B. The rest of the page is prose; only the block between the markers is
written, by `python -m burrscope.pipeline.generated`.
"""

from __future__ import annotations

import ast
from pathlib import Path

from burrscope.pipeline.codegraph import imported_modules

PAGE = "docs/architecture.md"
BEGIN, END = "<!-- imports: begin -->", "<!-- imports: end -->"
CORE = "core"


def concern(module: str, folders: set[str]) -> str | None:
    """The node of a project module: `stages`, its folder of burrscope/, or core; None outside the project."""
    parts = module.split(".")
    if parts[0] == "stages":
        return "stages"
    if parts[0] != "burrscope" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in folders else CORE


def edges(root: Path) -> set[tuple[str, str]]:
    """(importer, imported) concerns of every project module's direct imports."""
    folders = {path.name for path in (root / "burrscope").iterdir() if (path / "__init__.py").is_file()}
    found = set()
    for path in [*(root / "burrscope").rglob("*.py"), *(root / "stages").glob("*.py")]:
        source = concern(".".join(path.relative_to(root).with_suffix("").parts), folders)
        for name in imported_modules(ast.parse(path.read_text(encoding="utf-8"))):
            target = concern(name, folders)
            if source and target and target != source:
                found.add((source, target))
    return found


def diagram(root: Path) -> str:
    lines = ["```mermaid", "flowchart LR"]
    lines += [f"    {source} --> {target}" for source, target in sorted(edges(root))]
    return "\n".join([*lines, "```"])


def render(root: Path) -> str:
    """The page with its diagram block drawn anew."""
    page = (root / PAGE).read_text(encoding="utf-8")
    head, rest = page.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{diagram(root)}\n{END}{tail}"
