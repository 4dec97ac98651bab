"""Registering an export in MLflow: the pyfunc model with the code it runs, under the pipeline run's parent."""

from __future__ import annotations

import shutil
import tempfile
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from burrscope.inference.serving import mlflow_model
from burrscope.params import Params
from burrscope.pipeline.codegraph import PROJECT_ROOT, code_files
from burrscope.tracking.champion import EXPORT_RUN, PIPELINE_RUN_TAG, settle
from burrscope.tracking.provenance import git_tags
from burrscope.tracking.store import (
    PARENT_RUN_TAG,
    RUN_NAME_TAG,
    Connection,
    Recorder,
    connect,
    env_defaults,
    pipeline_key,
    shown_uri,
    tracking_uri,
    workspace_root,
)

SERVING_MODULE = "burrscope.inference.serving"
SOURCE = "stages/export.py"
REGISTERED_VERSION_TAG = "registered_model_version"
PARITY_METRIC = "parity/{}"  # max abs difference from PyTorch per exported file; MLflow groups metrics by prefix/


def save_pyfunc_model(*, validate_serving_input: bool = True, **kwargs: Any) -> None:
    """mlflow.pyfunc.save_model, for Model.log, which also hands it Model.log's own `validate_serving_input`."""
    import mlflow.pyfunc

    mlflow.pyfunc.save_model(**kwargs)


# mlflow.pyfunc as the flavor that mlflow.models.Model.log saves with, so that log_export can pass Model.log's
# validate_serving_input=False, which pyfunc.log_model does not take (and pyfunc.save_model refuses). MLflow would
# load the logged model and run it on its input example: the whole ensemble on two images, 15 of log_model's 19 s
# on the demo. What that checks is the model's code and packaging, the same for every export: tests/test_export.py
# loads the registered model and predicts with it, and each export checks the TorchScript file it runs. The input
# example and the signature are saved as before.
PYFUNC_FLAVOR = types.SimpleNamespace(__name__="mlflow.pyfunc", save_model=save_pyfunc_model)


def ship_code(dest: Path) -> Path:
    """A copy of the modules this one runs (codegraph), as a `burrscope` package in `dest`: the model's code."""
    names = code_files(PROJECT_ROOT, SERVING_MODULE)
    for name in names:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PROJECT_ROOT / name, target)
    for folder in {Path(name).parent for name in names}:
        (dest / folder / "__init__.py").touch()  # a package whose __init__ only documents it is not in `names`
    return dest / "burrscope"


def log_export(
    params: Params,
    folds_csv: Path,
    *,
    model: Mapping[str, Any],
    tags: Mapping[str, str],
    parity: Mapping[str, float] | None = None,
    card: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Log a pyfunc model in an `export` child run of this pipeline run's parent and register it.

    `model` holds mlflow.pyfunc.log_model's arguments but its name and registry name (Model.log takes the same);
    `parity` (file -> max abs difference) becomes the run's metrics, `card` (champion.describe's facts) the version's
    tags, which champion.settle turns into its description and alias. The run logs no params: the parent holds the
    recipe, and MLflow logs the model's config. The parent is the latest with the pipeline key, closed or not, and
    is not reopened; without one the run stands alone. Never raises: the outcome, `status` "ok" or "failed: ...",
    is returned for the run log (burrscope.runlog).
    """
    import mlflow
    from mlflow.models import Model  # only the export pays for the pyfunc machinery

    registered_model = params.mlflow.registered_model
    outcome: dict[str, Any] = {
        "tracking_uri": shown_uri(tracking_uri(workspace_root())),
        "registered_model": registered_model,
    }
    recorder = Recorder("The exported files are written; they are not registered")

    def log() -> None:
        connection = connect(params.mlflow.experiment)
        parent_id = connection.find_parent(pipeline_key(params.recipe, folds_csv), running_only=False)
        if parent_id:  # an export killed outright left its run RUNNING
            connection.close_killed_attempts(parent_id, RUN_NAME_TAG, EXPORT_RUN)
        run_tags = {**tags, **({PARENT_RUN_TAG: parent_id} if parent_id else {})}
        run_id = connection.create_run(EXPORT_RUN, SOURCE, run_tags, [])
        outcome.update(run_id=run_id, parent_run_id=parent_id)
        if parity:
            for name, value in parity.items():
                connection.client.log_metric(run_id, PARITY_METRIC.format(name), float(value))
        # Model.log only logs into the fluent active run, found through the fluent tracking URI.
        with env_defaults({"MLFLOW_TRACKING_URI": connection.uri}), mlflow.start_run(run_id=run_id):
            info = Model.log(None, PYFUNC_FLAVOR, registered_model, name="model", validate_serving_input=False, **model)
        version = str(info.registered_model_version)
        tag_version(connection, params, version, parent_id=parent_id, card=card)
        outcome.update(
            model_uri=info.model_uri,
            version=info.registered_model_version,
            registered_model_uri=f"models:/{registered_model}/{version}",
            champion=settle(connection.client, registered_model, version),
        )

    recorder.attempt("logging and registering the model", log)
    outcome["status"] = recorder.status
    return outcome


def tag_version(
    connection: Connection, params: Params, version: str, *, parent_id: str | None, card: Mapping[str, str] | None
) -> None:
    """Tag the registered `version` with the card's facts, the folds, the commit and its pipeline run, and tag the
    pipeline run's parent with the version it made."""
    registered_model = params.mlflow.registered_model
    commit = git_tags(str(connection.root)).get("mlflow.source.git.commit", "unknown")
    facts = {**(card or {}), "folds": str(params.folds), "git_commit": commit}
    if parent_id:  # else exported without a tracked pipeline run: no figures to describe or rank it by
        facts[PIPELINE_RUN_TAG] = parent_id
    for key, value in facts.items():
        connection.client.set_model_version_tag(registered_model, version, key, value)
    if parent_id:  # and the pipeline run names the version it made
        connection.client.set_tag(parent_id, REGISTERED_VERSION_TAG, f"models:/{registered_model}/{version}")


def model_card(summary: Mapping[str, Any], params: Params) -> dict[str, str]:
    """What the registered version's description tells (champion.describe), from export.json and the recipe."""
    sources = [Path(c["path"]).parent.name for c in summary["source_checkpoints"]]
    recipe = params.recipe
    return {
        "classes": ", ".join(summary["classes"]),
        "positive_class": str(summary.get("positive_class")),
        "threshold": str(summary["threshold"]),
        "img_size": str(summary["img_size"]),
        "model": recipe.model,
        "finetune": recipe.finetune,
        "epochs": str(recipe.epochs),
        "lr": str(recipe.lr),
        "ensemble": "one model trained on every image"
        if sources == ["final"]
        else f"the mean of the {len(sources)} fold models' probabilities",
    }


def register(
    summary: dict[str, Any],
    out_dir: Path,
    images: torch.Tensor,
    params: Params,
    *,
    folds_csv: Path,
    parity: Mapping[str, float],
) -> dict[str, Any]:
    """Log the written export (export.json's `summary`, the files in `out_dir`, their `parity` with PyTorch) as an
    MLflow model under the pipeline run's parent and register it; the outcome (run, version, alias, status). MLflow
    failures are recorded there, never raised."""
    tags = {"export." + name: info["sha256"] for name, info in summary["files"].items()}
    with tempfile.TemporaryDirectory() as code:
        model = mlflow_model(summary, out_dir, images, ship_code(Path(code)))
        return log_export(params, folds_csv, model=model, tags=tags, parity=parity, card=model_card(summary, params))
