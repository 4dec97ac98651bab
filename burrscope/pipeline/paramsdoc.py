"""docs/params.md: every key of params.yaml, its value there and what it means, made from the schema.

The schema (burrscope/params.schema.json) is where a param is described, once: the stages validate params.yaml
against it, and this page is written from it. `python -m burrscope.pipeline.generated` writes the page.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from burrscope.params import SCHEMA_PATH

HEADER = """\
<!-- Written by `python -m burrscope.pipeline.generated` from burrscope/params.schema.json and params.yaml. -->
# Parameters

Every key of [params.yaml](../params.yaml), with its value there, what it may be and what it does. Each stage
validates the file against [burrscope/params.schema.json](../burrscope/params.schema.json), where these descriptions
live. DVC and Snakemake rerun a stage when a key it reads changes (`dvc.yaml` lists them per stage): a change to
`lr` reruns training and what follows it; `predict.threshold` retrains nothing. Top-level keys can be set for one
experiment with `dvc exp run -S lr=1e-4`, nested ones with `-S train.ema_decay=0.99`.

"""


def allowed(spec: Mapping[str, Any]) -> str:
    """What the schema allows a key, in a few words."""
    if "enum" in spec:
        return " \\| ".join(f"`{json.dumps(value)}`" for value in spec["enum"])
    kinds = spec.get("type", "")
    kind = " or ".join(kinds) if isinstance(kinds, list) else kinds
    bounds = [
        f"{word} {spec[name]}"
        for name, word in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"))
        if name in spec
    ]
    if "pattern" in spec:
        bounds.append(f"matching `{spec['pattern']}`".replace("|", "\\|"))
    return ", ".join([kind, *bounds])


def rows(schema: Mapping[str, Any], values: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    """One table row per key, depth first, in the schema's order; a section's own row first."""
    for name, spec in schema.get("properties", {}).items():
        key, value = f"{prefix}{name}", values.get(name)
        nested = spec.get("type") == "object" and "properties" in spec
        shown = "" if nested else f"`{json.dumps(value, ensure_ascii=False)}`"
        text = spec.get("description", "").replace("|", "\\|")
        yield f"| `{key}` | {shown} | {'' if nested else allowed(spec)} | {text} |"
        if nested:
            yield from rows(spec, value or {}, f"{key}.")


def render(root: Path) -> str:
    """The page's text for the repository at `root`."""
    schema = json.loads((root / SCHEMA_PATH.relative_to(SCHEMA_PATH.parents[1])).read_text(encoding="utf-8"))
    values = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    table = ["| key | in params.yaml | allowed | meaning |", "|---|---|---|---|", *rows(schema, values)]
    return HEADER + "\n".join(table) + "\n"
