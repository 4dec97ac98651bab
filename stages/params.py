"""Load params.yaml and check it against the one schema that DVC and Snakemake runs share."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from stages.errors import UserError

SCHEMA_PATH = Path(__file__).with_name("params.schema.json")
PARAMS_PATH = Path("params.yaml")


class ParamsError(UserError, ValueError):
    """params.yaml is missing, malformed or out of range."""


def validate_params(params: dict[str, Any], source: str = "params.yaml") -> dict[str, Any]:
    """Raise ParamsError naming the offending key unless `params` fits the schema."""
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(params), key=lambda e: list(e.path))
    if errors:
        lines = [f"  {'.'.join(map(str, e.path)) or '(top level)'}: {e.message}" for e in errors]
        raise ParamsError(
            f"{source} is invalid:\n" + "\n".join(lines) + f"\nSee stages/{SCHEMA_PATH.name} for the allowed values."
        )
    split = params["split"]
    if split["fold_ids"] != list(range(split["folds"])):
        raise ParamsError(
            f"{source}: split.fold_ids is {split['fold_ids']} but split.folds is {split['folds']}; "
            f"set fold_ids to {list(range(split['folds']))} (DVC's foreach reads that list)."
        )
    return params


def nvidia_driver_present() -> bool:
    """Whether this machine has an NVIDIA driver: a torch-free check any stage can afford."""
    return Path("/proc/driver/nvidia/gpus").is_dir() or shutil.which("nvidia-smi") is not None


def check_machine(params: dict[str, Any], source: str = "params.yaml") -> dict[str, Any]:
    """Refuse `train.device: cuda` on a machine without a GPU at the first stage, not after data prep.

    The train stage checks again with torch itself (a CPU-only torch build on a GPU machine, say).
    """
    if params["train"]["device"] == "cuda" and not nvidia_driver_present():
        raise ParamsError(
            f"{source}: train.device is `cuda` but this machine has no NVIDIA driver (no nvidia-smi, no "
            "/proc/driver/nvidia); set train.device to `auto` (CUDA when present) or `cpu`."
        )
    return params


def load_params(path: Path = PARAMS_PATH) -> dict[str, Any]:
    """Read and validate the whole params file, and check it against this machine."""
    try:
        params = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ParamsError(f"{path} not found: run stages from the repository root, where params.yaml lives.") from err
    if not isinstance(params, dict):
        raise ParamsError(f"{path} must hold a mapping of keys to values.")
    return check_machine(validate_params(params, str(path)), str(path))
