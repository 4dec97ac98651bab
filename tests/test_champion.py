"""The registered model: the export run's metrics and params, each version's card, and the `champion` alias."""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from helpers import with_lr, with_registered_model
from mlflow.tracking import MlflowClient

from burrscope.models.factory import Weights
from burrscope.params import Params
from burrscope.tracking.champion import CHAMPION, PIPELINE_RUN_TAG, RANKED_BY, describe, settle
from burrscope.tracking.fold_run import FoldRun
from burrscope.tracking.parent_run import log_aggregate
from burrscope.tracking.registry import log_export
from burrscope.tracking.store import PARENT_RUN_TAG, connect

NAME = "burrscope-test"
FOLDS = 2
CARD = {"classes": "0, 1", "positive_class": "1", "threshold": "0.5", "img_size": "32", "model": "tiny"}
CARD |= {"finetune": "full", "epochs": "1", "lr": "0.001", "ensemble": "the mean of the 2 fold models' probabilities"}


class Echo(mlflow.pyfunc.PythonModel):
    """The smallest model that registers: it returns what it gets."""

    def predict(self, context: object, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return model_input


def client_of(tracked_workspace: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tracked_workspace / 'mlflow.db'}")


def pipeline_run(params: Params, tracked_workspace: Path, balanced_accuracy: float | None) -> str:
    """A parent with one trained fold, summarised by aggregate (unless None: aggregate has not run); its id."""
    with FoldRun(params, tracked_workspace / "folds.csv", 0) as run:
        run.finish(Weights("w", None, None), [])
    if balanced_accuracy is None:
        return client_of(tracked_workspace).get_run(run.run_id).data.tags[PARENT_RUN_TAG]
    metrics = {RANKED_BY: balanced_accuracy, "oof_roc_auc": 0.9, "oof_missed": 2.0}
    parent, status = log_aggregate(params, tracked_workspace / "folds.csv", metrics, [])
    assert status == "ok" and parent
    return parent


def version_of(tracked_workspace: Path, parent_id: str) -> str:
    """A registered version of NAME from an export run under `parent_id`, tagged as the export stage tags it."""
    client = client_of(tracked_workspace)
    if not client.search_registered_models(f"name = '{NAME}'"):
        client.create_registered_model(NAME)
    run = client.create_run(connect("burrscope").experiment_id, run_name="export", tags={PARENT_RUN_TAG: parent_id})
    tags = {**CARD, PIPELINE_RUN_TAG: parent_id, "git_commit": "abc"}
    return client.create_model_version(NAME, "mlflow-artifacts:/x", run.info.run_id, tags=tags).version


def champion(tracked_workspace: Path) -> str:
    return client_of(tracked_workspace).get_model_version_by_alias(NAME, CHAMPION).version


def test_the_first_version_with_figures_becomes_champion_and_a_worse_one_does_not(
    tracked_workspace: Path, params: Params
) -> None:
    client = client_of(tracked_workspace)
    first = version_of(tracked_workspace, pipeline_run(params, tracked_workspace, 0.80))
    assert settle(client, NAME, first) and champion(tracked_workspace) == first
    worse = version_of(tracked_workspace, pipeline_run(with_lr(params, 0.002), tracked_workspace, 0.75))
    assert not settle(client, NAME, worse) and champion(tracked_workspace) == first
    tie = version_of(tracked_workspace, pipeline_run(with_lr(params, 0.003), tracked_workspace, 0.80))
    assert not settle(client, NAME, tie) and champion(tracked_workspace) == first  # a tie keeps the champion
    better = version_of(tracked_workspace, pipeline_run(with_lr(params, 0.004), tracked_workspace, 0.85))
    assert settle(client, NAME, better) and champion(tracked_workspace) == better
    assert client.get_model_version(NAME, worse).tags[f"cv.{RANKED_BY}"] == "0.75"


def test_a_version_without_figures_never_takes_the_alias_and_says_why(tracked_workspace: Path, params: Params) -> None:
    client = client_of(tracked_workspace)
    version = version_of(tracked_workspace, pipeline_run(params, tracked_workspace, None))
    assert not settle(client, NAME, version)
    assert not client.get_registered_model(NAME).aliases
    assert "not logged yet" in client.get_model_version(NAME, version).description


def test_a_champion_chosen_by_hand_without_figures_is_kept(tracked_workspace: Path, params: Params) -> None:
    client = client_of(tracked_workspace)
    by_hand = version_of(tracked_workspace, pipeline_run(params, tracked_workspace, None))
    client.set_registered_model_alias(NAME, CHAMPION, by_hand)
    measured = version_of(tracked_workspace, pipeline_run(with_lr(params, 0.002), tracked_workspace, 0.99))
    assert not settle(client, NAME, measured) and champion(tracked_workspace) == by_hand


def test_aggregate_after_export_settles_the_version_export_registered(tracked_workspace: Path, params: Params) -> None:
    """Export does not wait for aggregate: the version it registered gets its figures and alias when they exist."""
    parent = pipeline_run(params, tracked_workspace, None)
    version = version_of(tracked_workspace, parent)
    settle(client_of(tracked_workspace), NAME, version)  # what export does: no figures yet
    metrics = {RANKED_BY: 0.9, "oof_roc_auc": 0.95, "oof_missed": 1.0, "oof_false_alarms": 3.0}
    assert log_aggregate(params, tracked_workspace / "folds.csv", metrics, []) == (parent, "ok")
    registered = client_of(tracked_workspace).get_model_version(NAME, version)
    figures = "balanced accuracy 0.900, ROC-AUC 0.950; at the threshold: 1 burrs missed, 3 false alarms"
    assert figures in registered.description
    assert champion(tracked_workspace) == version
    # The pipeline run's own description says the same.
    assert figures in client_of(tracked_workspace).get_run(parent).data.tags["mlflow.note.content"]


def test_the_description_says_what_the_model_takes_and_returns_and_how_it_was_trained() -> None:
    text = describe({**CARD, PIPELINE_RUN_TAG: "p1", "git_commit": "abc", "folds": "5"}, {RANKED_BY: 0.9123})
    assert "bytes in a column `image`" in text and "resizes each to 32 px" in text
    assert "Returns `predicted` (one of 0, 1: the positive class 1 where its probability reaches 0.5)" in text
    assert "Trained: tiny (finetune full, 1 epochs, lr 0.001), 5-fold cross-validation" in text
    assert "balanced accuracy 0.912" in text and "Pipeline run `p1`, git commit `abc`" in text


def test_the_export_run_logs_parity_as_metrics_no_params_and_a_described_version(
    tracked_workspace: Path, params: Params
) -> None:
    parent = pipeline_run(params, tracked_workspace, 0.9)
    model = {"python_model": Echo(), "pip_requirements": ["mlflow"]}
    parity = {"model.ts": 0.0, "model.onnx": 3e-7}
    outcome = log_export(
        with_registered_model(params, NAME),
        tracked_workspace / "folds.csv",
        model=model,
        tags={"export.model.ts": "ab"},
        parity=parity,
        card=CARD,
    )
    assert outcome["status"] == "ok" and outcome["champion"] is True and outcome["parent_run_id"] == parent
    client = client_of(tracked_workspace)
    run = client.get_run(outcome["run_id"])
    assert run.data.metrics == {"parity/model.ts": 0.0, "parity/model.onnx": 3e-7}
    assert run.data.params == {}  # the recipe is the parent's: no param twice under two names
    assert run.data.tags["mlflow.source.name"] == "stages/export.py" and "mlflow.user" in run.data.tags
    version = client.get_model_version(NAME, outcome["version"])
    assert version.tags[PIPELINE_RUN_TAG] == parent and version.tags["folds"] == "2"
    assert version.tags[f"cv.{RANKED_BY}"] == "0.9" and "git_commit" in version.tags
    assert version.description.startswith("Takes raw image files")
    assert champion(tracked_workspace) == outcome["version"]
    # The version names its pipeline run (above), and the pipeline run names the version.
    assert client.get_run(parent).data.tags["registered_model_version"] == f"models:/{NAME}/{outcome['version']}"


def test_an_export_without_a_pipeline_run_is_registered_and_described_but_never_champion(
    tracked_workspace: Path, params: Params
) -> None:
    """E.g. `dvc exp run` reusing cached folds: the experiment's name makes a pipeline key no parent carries."""
    model = {"python_model": Echo(), "pip_requirements": ["mlflow"]}
    outcome = log_export(
        with_registered_model(params, NAME),
        tracked_workspace / "folds.csv",
        model=model,
        tags={},
        parity={"model.ts": 0.0},
        card=CARD,
    )
    assert outcome["status"] == "ok" and outcome["parent_run_id"] is None and outcome["champion"] is False
    version = client_of(tracked_workspace).get_model_version(NAME, outcome["version"])
    assert PIPELINE_RUN_TAG not in version.tags
    assert "Exported outside a tracked pipeline run" in version.description
    assert "not logged yet" not in version.description
