"""Aggregate stage: hand-computed metrics on toy fold outputs, input checks, output formats, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import MULTICLASS, REPO, TOY, fake_training, run_aggregate

from burrscope.errors import DataError
from burrscope.evaluation.curves import threshold_table
from burrscope.evaluation.pooled import load_histories, load_predictions
from burrscope.evaluation.summary import aggregate
from burrscope.tables import CALIBRATION, HEADLINE_METRICS, POOLED_HISTORY_COLUMNS, THRESHOLDS
from stages.aggregate import main


def test_binary_metrics_match_hand_computation(tmp_path: Path) -> None:
    summary = run_aggregate(tmp_path, TOY)
    assert summary["classes"] == ["0", "1"]
    assert summary["n_images"] == 8
    assert summary["overall"] == {
        "accuracy": 0.625,
        "balanced_accuracy": 0.625,
        "precision": 0.6,
        "recall": 0.75,
        "f1": 0.6667,
        "roc_auc": 0.75,
    }
    assert summary["per_fold"]["fold_0"] == {
        "n_images": 4,
        "accuracy": 0.75,
        "balanced_accuracy": 0.75,
        "precision": 0.6667,
        "recall": 1.0,
        "f1": 0.8,
        "roc_auc": 1.0,
    }
    assert summary["per_fold"]["fold_1"] == {
        "n_images": 4,
        "accuracy": 0.5,
        "balanced_accuracy": 0.5,
        "precision": 0.5,
        "recall": 0.5,
        "f1": 0.5,
        "roc_auc": 0.5,
    }
    # Two folds: mean is the midpoint, sample std (ddof=1) is |a - b| / sqrt(2).
    assert summary["mean"] == {
        "accuracy": 0.625,
        "balanced_accuracy": 0.625,
        "precision": 0.5833,
        "recall": 0.75,
        "f1": 0.65,
        "roc_auc": 0.75,
    }
    assert summary["std"] == {
        "accuracy": 0.1768,
        "balanced_accuracy": 0.1768,
        "precision": 0.1179,
        "recall": 0.3536,
        "f1": 0.2121,
        "roc_auc": 0.3536,
    }


def test_multiclass_uses_macro_averages_and_no_roc(tmp_path: Path) -> None:
    table = MULTICLASS
    summary = run_aggregate(tmp_path, table)
    # Per class (0, 1, 2): precision 1, 1/2, 1/2; recall 1, 1/2, 1/2; F1 1, 1/2, 1/2.
    assert summary["overall"] == {
        "accuracy": 0.6667,
        "balanced_accuracy": 0.6667,
        "precision": 0.6667,
        "recall": 0.6667,
        "f1": 0.6667,
    }
    # Fold 0 never predicts "2": its precision is undefined and left out of the macro average (1 and 1/2),
    # while its recall (0) and F1 (0) count: recall (1 + 1 + 0) / 3, F1 (1 + 2/3 + 0) / 3.
    assert summary["per_fold"]["fold_0"] == {
        "n_images": 3,
        "accuracy": 0.6667,
        "balanced_accuracy": 0.6667,
        "precision": 0.75,
        "recall": 0.6667,
        "f1": 0.5556,
    }
    assert "roc_auc" not in summary["mean"] and "roc_auc" not in summary["std"]
    assert (tmp_path / "out" / "roc.csv").read_text() == "fpr,tpr,threshold\n"


def test_fold_with_one_class_omits_undefined_metrics(tmp_path: Path) -> None:
    table = TOY.copy()
    table.loc[table["fold"] == 1, "label"] = "0"  # fold 1: no positives, so no ROC-AUC and no recall
    table.loc[table["fold"] == 1, "predicted"] = ["0", "1", "0", "1"]
    summary = run_aggregate(tmp_path, table)
    fold_1 = summary["per_fold"]["fold_1"]
    assert "roc_auc" not in fold_1 and "recall" not in fold_1
    assert fold_1["accuracy"] == 0.5 and fold_1["precision"] == 0.0
    assert summary["mean"]["roc_auc"] == summary["per_fold"]["fold_0"]["roc_auc"] == 1.0
    assert "roc_auc" not in summary["std"]  # a std of one value is undefined
    assert summary["std"]["accuracy"] == 0.1768
    text = (tmp_path / "out" / "metrics.json").read_text()
    assert "NaN" not in text and json.loads(text)["per_fold"]["fold_1"]["n_images"] == 4


def test_outputs_have_dvc_formats(tmp_path: Path) -> None:
    run_aggregate(tmp_path, TOY.sample(frac=1, random_state=0))  # row order must not matter
    names = ["calibration.csv", "confusion.csv", "headline.json", "metrics.json", "predictions.csv", "roc.csv",
             "thresholds.csv"]  # fmt: skip
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == names  # no temp files left

    confusion = pd.read_csv(tmp_path / "out" / "confusion.csv", dtype=str)
    assert list(confusion.columns) == ["actual", "predicted"]
    assert confusion.to_numpy().tolist() == TOY[["label", "predicted"]].to_numpy().tolist()

    roc = pd.read_csv(tmp_path / "out" / "roc.csv")
    assert list(roc.columns) == ["fpr", "tpr", "threshold"]
    assert roc.iloc[0][["fpr", "tpr"]].tolist() == [0, 0] and roc.iloc[-1][["fpr", "tpr"]].tolist() == [1, 1]
    assert roc["fpr"].is_monotonic_increasing and roc["tpr"].is_monotonic_increasing

    predictions = pd.read_csv(tmp_path / "out" / "predictions.csv", dtype={"label": str, "predicted": str})
    assert list(predictions.columns) == ["file", "label", "fold", "predicted", "prob_0", "prob_1", "correct"]
    assert predictions["file"].tolist() == sorted(TOY["file"])
    assert predictions["correct"].tolist() == (TOY["label"] == TOY["predicted"]).tolist()

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert list(metrics) == [
        "overall", "mean", "std", "per_fold", "n_images", "classes", "threshold", "errors", "calibration"
    ]  # fmt: skip
    assert list(metrics["per_fold"]) == ["fold_0", "fold_1"]


def test_headline_holds_the_headline_metrics_with_the_pooled_values_of_metrics_json(tmp_path: Path) -> None:
    run_aggregate(tmp_path, TOY)
    headline = json.loads((tmp_path / "out" / "headline.json").read_text())
    # Pooled at 0.5 (see TOY): g is the one burr missed; b and f are false alarms.
    assert headline == {
        "accuracy": 0.625,
        "balanced_accuracy": 0.625,
        "recall": 0.75,
        "missed": 1,
        "roc_auc": 0.75,
        "ece": 0.375,
    }
    assert list(headline) == HEADLINE_METRICS  # the order `dvc exp show` lists them in
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["errors"] == {"missed": 1, "false_alarms": 2}
    in_metrics = {**metrics["overall"], **metrics["errors"], **metrics["calibration"]}
    assert headline == {name: in_metrics[name] for name in HEADLINE_METRICS}


def test_headline_leaves_out_what_more_than_two_classes_leave_undefined(tmp_path: Path) -> None:
    run_aggregate(tmp_path, MULTICLASS)
    headline = json.loads((tmp_path / "out" / "headline.json").read_text())
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert list(headline) == ["accuracy", "balanced_accuracy", "recall", "ece"]  # no positive class, no ROC
    assert metrics["errors"] is None
    assert headline["recall"] == metrics["overall"]["recall"] and headline["ece"] == metrics["calibration"]["ece"]


def test_history_table_stacks_every_fold_and_no_stale_one(tmp_path: Path) -> None:
    _, train_dir = fake_training(tmp_path, TOY, epochs=3)
    fake_training(tmp_path / "stale", TOY.assign(fold=TOY["fold"] + 1))  # a run with folds 1 and 2
    (tmp_path / "stale" / "results" / "train" / "fold_2").rename(train_dir / "fold_2")
    history = load_histories(train_dir, 2)
    assert list(history.columns) == POOLED_HISTORY_COLUMNS
    assert history["fold"].tolist() == [0, 0, 0, 1, 1, 1] and history["epoch"].tolist() == [1, 2, 3] * 2
    for fold in (0, 1):
        own = pd.read_csv(train_dir / f"fold_{fold}" / "history.csv")
        assert history[history["fold"] == fold].drop(columns="fold").reset_index(drop=True).equals(own)


def test_threshold_decides_the_predictions(tmp_path: Path) -> None:
    # At 0.35, g (label 1, prob_1 0.4) is called a burr too: TP 4, FP 2 (b, f), FN 0, TN 2.
    summary = run_aggregate(tmp_path, TOY, threshold=0.35)
    assert summary["threshold"] == 0.35
    assert summary["errors"] == {"missed": 0, "false_alarms": 2}  # as thresholds.csv counts them at 0.35
    assert summary["overall"]["recall"] == 1.0 and summary["overall"]["precision"] == 0.6667
    assert summary["overall"]["accuracy"] == 0.75
    predictions = pd.read_csv(tmp_path / "out" / "predictions.csv", dtype={"label": str, "predicted": str})
    assert predictions.set_index("file").loc["g.png", ["predicted", "correct"]].tolist() == ["1", True]


def test_threshold_table_matches_hand_counts(tmp_path: Path) -> None:
    run_aggregate(tmp_path, TOY, threshold=0.35)
    table = pd.read_csv(tmp_path / "out" / "thresholds.csv").set_index("threshold")
    assert 0.35 in table.index and table.index.is_monotonic_increasing  # the chosen one among the standard ones
    # At 0.5: called b c d f h; hits c d h.
    assert table.loc[0.5].tolist() == [0.6, 0.75, 0.625, 1, 2]
    assert table.loc[0.35].tolist() == [0.6667, 1.0, 0.75, 0, 2]
    assert table.loc[0.9].tolist() == [1.0, 0.25, 0.125, 3, 0]
    low = threshold_table(TOY.assign(prob_1=TOY["prob_1"] / 2), ["0", "1"], 0.5).set_index("threshold")
    assert np.isnan(low.loc[0.5, "precision"]) and low.loc[0.5, "missed"] == 4  # nothing flagged: undefined


def test_calibration_table_and_summary(tmp_path: Path) -> None:
    summary = run_aggregate(tmp_path, TOY)
    table = pd.read_csv(tmp_path / "out" / "calibration.csv").set_index("bin_lower")
    assert table["count"].sum() == 8 and len(table) == 7  # c and h share the 0.7 bin
    assert table.loc[0.7].tolist() == [0.8, 0.7, 1.0, 2]
    # |p - y| summed over the images, weighted by count: .2 + .6 + .3*2 + .1 + .1 + .8 + .6 = 3.0 over 8.
    assert summary["calibration"] == {"ece": 0.375, "brier": 0.2}


def test_multiclass_calibration_uses_top_probability(tmp_path: Path) -> None:
    table = pd.DataFrame(
        {
            "file": ["a", "b"],
            "label": ["x", "y"],
            "fold": [0, 1],
            "predicted": ["x", "x"],
            "prob_x": [0.9, 0.5],
            "prob_y": [0.05, 0.3],
            "prob_z": [0.05, 0.2],
        }
    )
    _, summary, tables = aggregate(table, ["x", "y", "z"], 2, 0.5)
    assert summary["threshold"] is None and tables[THRESHOLDS].empty
    assert tables[CALIBRATION][["mean_predicted", "fraction_positive"]].to_numpy().tolist() == [
        [0.5, 0.0],
        [0.9, 1.0],
    ]


def test_stale_fold_folders_are_ignored(tmp_path: Path) -> None:
    folds_csv, train_dir = fake_training(tmp_path, TOY)
    fake_training(tmp_path / "stale", TOY.assign(fold=TOY["fold"] + 1))  # a run with folds 1 and 2
    (tmp_path / "stale" / "results" / "train" / "fold_2").rename(train_dir / "fold_2")
    pooled, classes = load_predictions(folds_csv, train_dir, 2)
    assert aggregate(pooled, classes, 2, 0.5)[1] == run_aggregate(tmp_path / "clean", TOY)


def test_missing_prediction_file_names_the_fold(tmp_path: Path) -> None:
    folds_csv, train_dir = fake_training(tmp_path, TOY)
    (train_dir / "fold_1" / "predictions.csv").unlink()
    with pytest.raises(DataError, match=r"fold_1.predictions\.csv not found"):
        load_predictions(folds_csv, train_dir, 2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t[t["file"] != "b.png"], r"fold 0: .* without a prediction: 'b.png'"),
        (lambda t: pd.concat([t, t[t["file"] == "g.png"]]), r"fold 1: .* predicted twice: 'g.png'"),
        (lambda t: t.assign(fold=t["fold"].where(t["file"] != "c.png", 1)), r"fold 0: .* 'c.png'"),
        (
            lambda t: t.assign(label=t["label"].where(t["file"] != "e.png", "1")),
            r"fold 1: .*labels that differ .*'e.png'",
        ),
        (lambda t: t.assign(predicted=t["predicted"].where(t["file"] != "a.png", "7")), r"outside .* 'a.png'"),
        (lambda t: t.drop(columns="prob_1"), r"lacks column\(s\) \['prob_1'\]"),
    ],
)
def test_predictions_must_match_the_fold_assignment(tmp_path: Path, change, message: str) -> None:
    folds_csv, train_dir = fake_training(tmp_path, TOY)
    for fold in (0, 1):  # rewrite each fold's predictions, leaving folds.csv as it was
        changed = change(TOY)
        changed[changed["fold"] == fold].to_csv(train_dir / f"fold_{fold}" / "predictions.csv", index=False)
    with pytest.raises(DataError, match=message):
        load_predictions(folds_csv, train_dir, 2)


def test_folds_csv_must_match_split_folds(tmp_path: Path) -> None:
    folds_csv, train_dir = fake_training(tmp_path, TOY)
    with pytest.raises(DataError, match=r"split.folds = 3 .*without images: \[2\]"):
        load_predictions(folds_csv, train_dir, 3)


def workspace(tmp_path: Path, folds: int = 2) -> dict[str, str]:
    """A params.yaml for `folds` folds in tmp_path (stages read it from the cwd); env to run stages there."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["split"] = {"folds": folds, "fold_ids": list(range(folds))}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.mark.cli
def test_cli_writes_outputs(tmp_path: Path) -> None:
    env = workspace(tmp_path)
    fake_training(tmp_path, TOY)
    command = [sys.executable, "-m", "stages.aggregate", "data/processed/folds.csv", "results/train", "out"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert "accuracy 0.625" in done.stdout and "roc_auc            0.750 ± 0.354" in done.stdout
    assert json.loads((tmp_path / "out" / "headline.json").read_text())["missed"] == 1
    history = pd.read_csv(tmp_path / "out" / "history.csv")  # the main() that DVC runs pools the histories too
    assert list(history.columns) == POOLED_HISTORY_COLUMNS and sorted(set(history["fold"])) == [0, 1]


@pytest.mark.cli
def test_main_exits_with_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workspace(tmp_path)
    fake_training(tmp_path, TOY)
    (tmp_path / "results" / "train" / "fold_0" / "predictions.csv").unlink()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["aggregate", "data/processed/folds.csv", "results/train", "out"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert str(exit_.value.code).startswith("error: results/train/fold_0/predictions.csv not found")
    assert not (tmp_path / "out").exists()


def test_stages_import_neither_torch_nor_mlflow() -> None:
    code = "import sys, stages.aggregate, stages.report; print(sorted({'torch', 'mlflow'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
