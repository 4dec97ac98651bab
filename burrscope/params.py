"""params.yaml: validated against the one schema DVC and Snakemake runs share, then read into frozen sections.

`TRAINING_KEYS` is the one list of what defines a trained model. DVC's and Snakemake's params lists for the
training stages, the resume checkpoint's fingerprint and the MLflow parent run's key are all made from it
(tests/test_params.py and tests/test_graphs.py check that they agree).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from functools import reduce
from operator import getitem
from pathlib import Path
from typing import Any

import yaml

from burrscope.errors import UserError

SCHEMA_PATH = Path(__file__).with_name("params.schema.json")
# predict.final's one allowed entry, and the train stage's fold argument for the final model, trained on every image.
FINAL_ITEM = "all"
PARAMS_PATH = Path("params.yaml")

# Recipe field -> its dotted key in params.yaml, in the order dvc.yaml lists them.
TRAINING_KEYS: dict[str, str] = {
    "seed": "seed",
    "model": "model",
    "finetune": "finetune",
    "pretrained": "pretrained",
    "lr": "lr",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "img_size": "resize.img_size",
    "background": "composite.background",
    "device": "train.device",
    "keep": "train.keep",
    "deterministic": "train.deterministic",
    "cpu_threads": "train.cpu_threads",
    "cudnn_benchmark": "train.cudnn_benchmark",
    "amp": "train.amp",
    "channels_last": "train.channels_last",
    "compile": "train.compile",
    "schedule": "train.schedule",
    "warmup_epochs": "train.warmup_epochs",
    "weight_decay": "train.weight_decay",
    "label_smoothing": "train.label_smoothing",
    "class_weights": "train.class_weights",
    "ema_decay": "train.ema_decay",
    "trainable_blocks": "train.trainable_blocks",
    "tta": "train.tta",
    "augment": "train.augment",
}


class ParamsError(UserError, ValueError):
    """params.yaml is missing, malformed or out of range."""


def lookup(params: Mapping[str, Any], dotted: str) -> Any:
    """params["train"]["augment"] for "train.augment"."""
    return reduce(getitem, dotted.split("."), params)


@dataclass(frozen=True)
class Augment:
    flip: bool
    rot90: bool
    jitter: float


@dataclass(frozen=True)
class Recipe:
    """Everything that defines a trained model (TRAINING_KEYS): two folds trained with equal recipes are alike."""

    seed: int
    model: str
    finetune: str
    pretrained: bool
    lr: float
    epochs: int
    batch_size: int
    img_size: int
    background: tuple[int, int, int]
    device: str
    keep: str
    deterministic: bool
    cpu_threads: int
    cudnn_benchmark: bool
    amp: bool
    channels_last: bool
    compile: bool
    schedule: str
    warmup_epochs: int
    weight_decay: float
    label_smoothing: float
    class_weights: str
    ema_decay: float
    trainable_blocks: int
    tta: bool
    augment: Augment

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Recipe:
        values = {name: lookup(params, key) for name, key in TRAINING_KEYS.items()}
        values["background"] = tuple(values["background"])
        values["augment"] = Augment(**values["augment"])
        return cls(**values)

    def as_params(self) -> dict[str, Any]:
        """{dotted params.yaml key: value}: what fingerprints and MLflow parent keys are made of."""
        values = asdict(self)
        values["background"] = list(self.background)
        return {TRAINING_KEYS[name]: values[name] for name in TRAINING_KEYS}


@dataclass(frozen=True)
class DataConfig:
    raw_dir: str
    labels: str
    on_bad_image: str
    classes: tuple[str | int, ...] | None
    # (label, name) pairs, labels as text as every table holds them: YAML reads `1: burr` with an int key.
    class_names: tuple[tuple[str, str], ...]

    def class_name(self, label: str) -> str:
        """What the report calls `label`: its data.class_names entry, else the label itself."""
        return dict(self.class_names).get(str(label), str(label))


@dataclass(frozen=True)
class PredictConfig:
    final: tuple[str, ...]
    threshold: float


@dataclass(frozen=True)
class CurveConfig:
    fractions: tuple[float, ...]


@dataclass(frozen=True)
class TrackingConfig:
    experiment: str
    registered_model: str


@dataclass(frozen=True)
class AuditConfig:
    """The audit stage's thresholds (params.yaml's `audit`; what each means: params.schema.json)."""

    duplicate_similarity: float
    outlier_neighbours: int
    outlier_z: float


@dataclass(frozen=True)
class Params:
    """params.yaml, checked, in the sections the stages take; `raw` is the file's mapping as read."""

    seed: int
    data: DataConfig
    background: tuple[int, int, int]
    img_size: int
    folds: int
    recipe: Recipe
    checkpoint_every_s: float
    explain_correct: int
    predict: PredictConfig
    curve: CurveConfig
    mlflow: TrackingConfig
    audit: AuditConfig
    raw: Mapping[str, Any]

    @classmethod
    def from_mapping(cls, params: Mapping[str, Any]) -> Params:
        data = dict(params["data"])
        data["classes"] = None if data.get("classes") is None else tuple(data["classes"])
        data["class_names"] = tuple((str(label), name) for label, name in (data.get("class_names") or {}).items())
        return cls(
            seed=params["seed"],
            data=DataConfig(**{f.name: data.get(f.name) for f in fields(DataConfig)}),
            background=tuple(params["composite"]["background"]),
            img_size=params["resize"]["img_size"],
            folds=params["split"]["folds"],
            recipe=Recipe.from_params(params),
            checkpoint_every_s=params["train"]["checkpoint_every_s"],
            explain_correct=params["train"]["explain_correct"],
            predict=PredictConfig(tuple(params["predict"]["final"]), params["predict"]["threshold"]),
            curve=CurveConfig(tuple(params["curve"]["fractions"])),
            mlflow=TrackingConfig(**params["mlflow"]),
            audit=AuditConfig(**params["audit"]),
            raw=params,
        )


def key_description(schema: Mapping[str, Any], path: list[str | int]) -> str:
    """The schema's description of the key at `path` (a list entry's, its list's), as " (what the key is)"."""
    node, description = schema, ""
    for step in path:
        node = node.get("items", {}) if isinstance(step, int) else node.get("properties", {}).get(step, {})
        description = node.get("description", description)
    return f" ({description})" if description else ""


def validate_params(params: dict[str, Any], source: str = "params.yaml") -> dict[str, Any]:
    """Raise ParamsError naming the offending key unless `params` fits the schema."""
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(params), key=lambda e: list(e.path))
    if errors:
        lines = [
            f"  {'.'.join(map(str, e.path)) or '(top level)'}: {e.message}{key_description(schema, list(e.path))}"
            for e in errors
        ]
        raise ParamsError(
            f"{source} is invalid:\n" + "\n".join(lines) + f"\nSee burrscope/{SCHEMA_PATH.name} for the allowed values."
        )
    names = params["data"].get("class_names") or {}
    labels = [str(label) for label in names]
    if len(set(labels)) < len(labels) or len(set(names.values())) < len(names):
        raise ParamsError(
            f"{source}: data.class_names must give each label one name and each name to one label, not {names}; "
            "a name shared by two labels would make the report's counts ambiguous."
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


def read_params_file(path: Path = PARAMS_PATH) -> dict[str, Any]:
    """The params file as a mapping, validated and checked against this machine."""
    try:
        params = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ParamsError(f"{path} not found: run stages from the repository root, where params.yaml lives.") from err
    if not isinstance(params, dict):
        raise ParamsError(f"{path} must hold a mapping of keys to values.")
    return check_machine(validate_params(params, str(path)), str(path))


def load_params(path: Path = PARAMS_PATH) -> Params:
    """Read, validate and check the whole params file, once per stage, into its typed sections."""
    return Params.from_mapping(read_params_file(path))
