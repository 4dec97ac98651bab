"""A registered model version's card (description and tags) and the `champion` alias.

The export stage registers a version; its cross-validated figures live on the pipeline run's parent, which
aggregate fills in. Neither stage waits for the other, so both call `settle`: whichever runs second finds the
figures, writes them into the description and tags, and moves the alias if the version has earned it.
"""

from __future__ import annotations

from collections.abc import Mapping

from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from burrscope.tracking.store import PARENT_RUN_TAG, Connection

CHAMPION = "champion"
# The figure a version must beat the champion on: pooled out-of-fold balanced accuracy, which weighs a missed burr
# and a false alarm by class, not by how common each class is. A tie keeps the champion.
RANKED_BY = "oof_balanced_accuracy"
FIGURE_TAG = "cv."  # a version's tags cv.<metric>: its parent's figures, copied so the champion can be compared
PIPELINE_RUN_TAG = "pipeline_run_id"
EXPORT_RUN = "export"
# (metric on the parent, words in the description), in the description's order.
FIGURES = (
    ("oof_balanced_accuracy", "balanced accuracy"),
    ("oof_roc_auc", "ROC-AUC"),
    ("oof_recall", "recall"),
    ("oof_precision", "precision"),
    ("oof_f1", "F1"),
    ("oof_ece", "ECE"),
    ("oof_brier", "Brier score"),
)
COUNTS = (("oof_missed", "burrs missed"), ("oof_false_alarms", "false alarms"))
THRESHOLD_METRIC = "predict.threshold"  # named as in params.yaml: the threshold the counts were made at
COPIED = {*dict(FIGURES), *dict(COUNTS), THRESHOLD_METRIC}  # the parent's metrics a version's tags repeat


def cross_validated(figures: Mapping[str, float]) -> str | None:
    """The pipeline run's figures in a sentence, "Cross-validated (pooled out-of-fold): ...", or None without any:
    a registered version's description and its parent run's both say it."""
    shown = [f"{words} {figures[name]:.3f}" for name, words in FIGURES if name in figures]
    if not shown:
        return None
    counts = [f"{int(figures[name])} {words}" for name, words in COUNTS if name in figures]
    at = f"; at the threshold {figures[THRESHOLD_METRIC]:g}" if THRESHOLD_METRIC in figures else "; at the threshold"
    return f"Cross-validated (pooled out-of-fold): {', '.join(shown)}{f'{at}: ' + ', '.join(counts) if counts else ''}."


def describe(tags: Mapping[str, str], figures: Mapping[str, float]) -> str:
    """The version's description (Markdown): what it takes and returns, how it was trained, its CV figures."""
    positive = tags.get("positive_class", "None")
    decided = (
        f"the positive class {positive} where its probability reaches {tags.get('threshold', '?')}"
        if positive != "None"
        else "the most probable class"
    )
    paragraphs = [
        "Takes raw image files (PNG, JPEG, ... of any size and mode) as bytes in a column `image` (base64 text in "
        f"JSON or CSV), and composites, pads and resizes each to {tags.get('img_size', '?')} px as training did. "
        f"Returns `predicted` (one of {tags.get('classes', '?')}: {decided}) and `prob_<class>` for each class.",
        f"Trained: {tags.get('model', '?')} (finetune {tags.get('finetune', '?')}, {tags.get('epochs', '?')} epochs, "
        f"lr {tags.get('lr', '?')}), {tags.get('folds', '?')}-fold cross-validation; this model is "
        f"{tags.get('ensemble', '?')}.",
    ]
    parent = tags.get(PIPELINE_RUN_TAG)
    sentence = cross_validated(figures)
    if sentence:
        paragraphs.append(sentence)
    elif parent:
        paragraphs.append(
            "Cross-validated figures: not logged yet (the aggregate stage adds them to the pipeline run)."
        )
    run = f"Pipeline run `{parent}`" if parent else "Exported outside a tracked pipeline run"
    paragraphs.append(f"{run}, git commit `{tags.get('git_commit', '?')}`.")
    return "\n\n".join(paragraphs)


def _champion(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version holding the alias, if any (read from the model: a missing alias is an error in each store's own
    words)."""
    version = client.get_registered_model(name).aliases.get(CHAMPION)
    return None if version is None else client.get_model_version(name, str(version))


def settle(client: MlflowClient, name: str, version: str) -> bool:
    """Describe and tag version `version` with its parent's figures, and give it the `champion` alias if it beats
    the current champion on RANKED_BY (or there is none); whether it holds the alias afterwards.

    A champion without the figure (an alias set by hand) is kept; so is one that ties.
    """
    registered = client.get_model_version(name, version)
    parent_id = registered.tags.get(PIPELINE_RUN_TAG)
    metrics = client.get_run(parent_id).data.metrics if parent_id else {}
    figures = {key: value for key, value in metrics.items() if key in COPIED}
    for key, value in figures.items():
        client.set_model_version_tag(name, version, f"{FIGURE_TAG}{key}", str(value))
    client.update_model_version(name, version, description=describe(registered.tags, figures))
    if RANKED_BY not in figures:
        return False
    champion = _champion(client, name)
    if champion is not None:
        if str(champion.version) == str(version):
            return True
        theirs = champion.tags.get(f"{FIGURE_TAG}{RANKED_BY}")
        if theirs is None or figures[RANKED_BY] <= float(theirs):
            return False
    client.set_registered_model_alias(name, CHAMPION, version)
    return True


def settle_parent(connection: Connection, parent_id: str) -> None:
    """`settle` every version registered from an export run under `parent_id` (aggregate, after export)."""
    client = connection.client
    query = f"tags.`{PARENT_RUN_TAG}` = '{parent_id}' and tags.`mlflow.runName` = '{EXPORT_RUN}'"
    for run in client.search_runs([connection.experiment_id], query):
        for registered in client.search_model_versions(f"run_id = '{run.info.run_id}'"):
            settle(client, registered.name, registered.version)
