"""workflow/envs/burrscope.yaml: the conda environment every Snakemake rule names, made from pyproject.toml.

Snakemake uses it only when asked to (`--sdm conda`, e.g. on a cluster whose nodes cannot see the project's venv);
otherwise the rules run in whatever environment `snakemake` was started from. It holds the project's dependencies,
not the project: every rule runs `python -m stages.<name>` from the repository, which imports burrscope from there.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

PYTHON = "3.11"
HEADER = """\
# The environment of every Snakemake rule under `snakemake --sdm conda`: Python and the project's dependencies as
# pyproject.toml pins them. Written by `python -m burrscope.pipeline.generated`: edit pyproject.toml instead.
"""


def render(root: Path) -> str:
    """The environment file's text for the repository at `root`."""
    dependencies = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    env = {"channels": ["conda-forge"], "dependencies": [f"python={PYTHON}", "pip", {"pip": dependencies}]}
    return HEADER + yaml.safe_dump(env, sort_keys=False, width=1000)
