"""The files the repository holds but nobody edits by hand, each made from the one place its content is defined.

    python -m burrscope.pipeline.generated           # rewrite them
    python -m burrscope.pipeline.generated --check   # exit 1, naming them, if any differs from what it would write

- dvc.yaml: from the stages (graph.py) and the code each runs (codegraph.py);
- workflow/envs/burrscope.yaml: the rules' conda environment, from pyproject.toml's dependencies;
- docs/params.md: every param, from the schema's descriptions and params.yaml's values;
- the package diagram in docs/architecture.md, from the imports.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from burrscope.files import write_text_atomic
from burrscope.pipeline import archdoc, condaenv, dvcfile, paramsdoc
from burrscope.pipeline.codegraph import PROJECT_ROOT

GENERATED: dict[str, Callable[[Path], str]] = {
    "dvc.yaml": dvcfile.render,
    "workflow/envs/burrscope.yaml": condaenv.render,
    "docs/params.md": paramsdoc.render,
    archdoc.PAGE: archdoc.render,
}
COMMAND = "python -m burrscope.pipeline.generated"


def stale(root: Path = PROJECT_ROOT) -> list[str]:
    """The generated files that differ from what they would be made as now (or are missing)."""
    return [
        name
        for name, render in GENERATED.items()
        if not (root / name).is_file() or (root / name).read_text() != render(root)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that every generated file is up to date")
    args = parser.parse_args()
    if args.check:
        if found := stale():
            sys.exit(f"stale: {', '.join(found)}; run `{COMMAND}` and commit the result.")
        return
    for name, render in GENERATED.items():
        write_text_atomic(PROJECT_ROOT / name, render(PROJECT_ROOT))
        print(f"wrote {name}")


if __name__ == "__main__":
    main()
