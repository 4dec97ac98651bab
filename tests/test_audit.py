"""Audit stage, library level: planted label flips and near-duplicates on a generated set, outliers, the summary,
the grouped labels CSV (it reads back and keeps each pair in one fold), and what it logs to MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import REPO
from mlflow.tracking import MlflowClient

from burrscope.audit.findings import Findings, Photos, find_issues
from burrscope.audit.groups import components, grouped_labels
from burrscope.audit.neighbours import near_duplicates, outliers, robust_z, unit_rows
from burrscope.audit.outputs import crossing_warning, write_audit_outputs
from burrscope.data.labels import read_labels
from burrscope.data.split import assign_folds, fold_table
from burrscope.models.factory import Weights
from burrscope.params import AuditConfig, Params, ParamsError, Recipe, read_params_file, validate_params
from burrscope.pipeline.codegraph import code_files
from burrscope.tables import AUDIT_SUMMARY, GROUPED_LABELS, ISSUE_COLUMNS, ISSUES, MANIFEST_COLUMNS
from burrscope.tracking.fold_run import FoldRun
from burrscope.tracking.parent_run import log_audit

SETTINGS = AuditConfig(duplicate_similarity=0.95, outlier_neighbours=5, outlier_z=3.5)
N, FOLDS = 60, 5
FLIPPED = [3, 14, 27, 38, 51]
# Near-duplicate pairs (second is a noisy copy of first), each across folds (fold = index % 5).
PAIRS = [(5, 41), (12, 33), (20, 49)]


def generated(seed: int = 0) -> tuple[Photos, np.ndarray]:
    """N photos in FOLDS folds, two classes: out-of-fold probabilities that favour the true class (a few hard
    photos near 0.5), with FLIPPED given the other label, and 64 features per photo, PAIRS copies of each other."""
    rng = np.random.default_rng(seed)
    truth = np.arange(N) % 2
    confidence = rng.uniform(0.7, 0.98, N)
    confidence[[7, 18, 44]] = [0.55, 0.6, 0.52]  # hard but correctly labelled photos
    p_burr = np.where(truth == 1, confidence, 1 - confidence)
    given = truth.copy()
    given[FLIPPED] = 1 - given[FLIPPED]
    files = [f"photo_{i:02d}.png" for i in range(N)]
    table = pd.DataFrame(
        {
            "file": files,
            "label": [str(label) for label in given],
            "fold": np.arange(N) % FOLDS,
            "prob_0": 1 - p_burr,
            "prob_1": p_burr,
            "original_name": [f"Photo {i}.PNG" for i in range(N)],
        }
    )
    features = rng.normal(0, 1, (N, 64))
    for first, second in PAIRS:
        features[second] = features[first] + rng.normal(0, 0.05, 64)
    return Photos(table, ["0", "1"]), features


@pytest.fixture(scope="module")
def findings() -> Findings:
    photos, features = generated()
    return find_issues(photos, features, SETTINGS)


def test_flipped_labels_lead_the_label_rows(findings: Findings) -> None:
    labels = findings.issues[findings.issues["issue"] == "label"]
    top = {int(file.removeprefix("photo_").removesuffix(".png")) for file in labels["file"].head(10)}
    assert len(top & set(FLIPPED)) >= 4
    flipped = labels[labels["file"].isin([f"photo_{i:02d}.png" for i in FLIPPED])]
    assert (flipped["suggested_label"] != flipped["given_label"]).all()
    assert labels["score"].is_monotonic_decreasing  # 1 - P(given label): the least probable label first


def test_every_planted_pair_is_found_across_folds(findings: Findings) -> None:
    pairs = findings.issues[findings.issues["issue"] == "near_duplicate"]
    found = {(row.file, row.other_file) for row in pairs.itertuples()}
    assert found == {(f"photo_{a:02d}.png", f"photo_{b:02d}.png") for a, b in PAIRS}
    assert (pairs["score"] >= SETTINGS.duplicate_similarity).all()
    assert findings.summary["audit_duplicates_across_folds"] == 3


def test_issues_table_columns_order_and_summary(findings: Findings) -> None:
    issues = findings.issues
    assert list(issues.columns) == ISSUE_COLUMNS
    kinds = issues["issue"].tolist()
    assert kinds == sorted(kinds, key=["label", "near_duplicate", "outlier"].index)  # by kind, labels first
    assert issues.loc[0, "original_name"] == f"Photo {int(issues.loc[0, 'file'][6:8])}.PNG"
    assert findings.summary == {
        "audit_label": kinds.count("label"),
        "audit_near_duplicate": 3,
        "audit_outlier": kinds.count("outlier"),
        "audit_duplicates_across_folds": 3,
    }


def test_an_isolated_photo_is_an_outlier_and_ordinary_ones_are_not() -> None:
    rng = np.random.default_rng(1)
    centre = rng.normal(0, 1, 32)
    features = centre + rng.normal(0, 0.3, (40, 32))  # one kind of part, photographed 40 times
    features[17] = rng.normal(0, 1, 32)  # something else
    found, scores = outliers(unit_rows(features), neighbours=5, threshold=3.5)
    assert found.tolist() == [17] and scores[17] > 3.5
    assert robust_z(np.ones(5)).tolist() == [0.0] * 5  # no spread: nobody stands out


def test_near_duplicates_reach_the_threshold_exactly() -> None:
    unit = unit_rows(np.array([[1.0, 0.0], [0.95, np.sqrt(1 - 0.95**2)], [0.0, 1.0]]))
    assert [(p.first, p.second, round(p.similarity, 6)) for p in near_duplicates(unit, 0.95)] == [(0, 1, 0.95)]
    assert near_duplicates(unit, 0.951) == []


def test_components_join_chains_under_their_smallest_member() -> None:
    assert components("abcde", [("d", "b"), ("b", "e")]) == {"a": "a", "b": "b", "c": "c", "d": "b", "e": "b"}


def manifest_for(folder: Path, originals: list[str]) -> Path:
    """A manifest naming each original `photo_<i>.png` as the normalise stage would (kept, no collision)."""
    rows = [
        {
            **dict.fromkeys(MANIFEST_COLUMNS, ""),
            "original_name": name,
            "normalised_name": f"photo_{i:02d}.png",
            "label": "0",
        }
        for i, name in enumerate(originals)
    ]
    path = folder / "manifest.csv"
    pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_csv(path, index=False)
    return path


def test_grouped_labels_keep_the_users_columns_read_back_and_keep_pairs_in_one_fold(tmp_path: Path) -> None:
    photos, _ = generated()
    originals = photos.table["original_name"].tolist()
    given = photos.table["label"]
    lines = [f"{name};{label};note {i}" for i, (name, label) in enumerate(zip(originals, given, strict=True))]
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("Filename;Label;Comment\n" + "\n".join(lines[:30]) + "\n\n" + "\n".join(lines[30:]) + "\n")
    before = labels_csv.read_bytes()
    files = photos.table["file"]
    pairs = [(files[a], files[b]) for a, b in PAIRS]
    text = grouped_labels(labels_csv, manifest_for(tmp_path, originals), pairs)
    assert labels_csv.read_bytes() == before
    written = tmp_path / GROUPED_LABELS
    written.write_text(text)
    table = pd.read_csv(written, dtype=str, keep_default_na=False)
    assert list(table.columns) == ["Filename", "Label", "Comment", "group"] and len(table) == N  # blank row gone
    assert table["Comment"].tolist() == [f"note {i}" for i in range(N)]
    assert table.loc[41, "group"] == table.loc[5, "group"] == "Photo 41.PNG"  # the smaller name, as strings sort
    assert table.loc[0, "group"] == "Photo 0.PNG"  # every other photo on its own

    labels = read_labels(written)
    assert labels["group"].nunique() == N - len(PAIRS)
    manifest = pd.read_csv(tmp_path / "manifest.csv", dtype=str, keep_default_na=False)
    manifest["label"], manifest["group"] = labels["label"].to_numpy(), labels["group"].to_numpy()
    folds = assign_folds(fold_table(manifest), FOLDS, seed=0).set_index("file")["fold"]
    for a, b in PAIRS:
        assert folds[f"photo_{a:02d}.png"] == folds[f"photo_{b:02d}.png"]


def test_grouped_labels_merge_existing_groups_with_pairs(tmp_path: Path) -> None:
    originals = ["a.png", "b.png", "c.png", "d.png"]
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("file,label,group\na.png,0,g2\nb.png,1,g2\nc.png,0,g1\nd.png,1,g3\n")
    text = grouped_labels(labels_csv, manifest_for(tmp_path, originals), [("photo_01.png", "photo_02.png")])
    assert text == "file,label,group\na.png,0,g1\nb.png,1,g1\nc.png,0,g1\nd.png,1,g3\n"


def test_outputs_and_the_warning(tmp_path: Path, findings: Findings) -> None:
    written = write_audit_outputs(tmp_path, findings, "file,label,group\n")
    assert [path.name for path in written] == [ISSUES, AUDIT_SUMMARY, GROUPED_LABELS]
    assert json.loads((tmp_path / AUDIT_SUMMARY).read_text())["audit_duplicates_across_folds"] == 3
    assert pd.read_csv(tmp_path / ISSUES).columns.tolist() == ISSUE_COLUMNS
    warning = crossing_warning(findings.summary, Path("results/audit"), Path("data/labels.csv"))
    assert "3 near-duplicate pair(s)" in warning and "FLATTERED" in warning
    assert "cp 'results/audit/labels_with_groups.csv' 'data/labels_grouped.csv'" in warning
    assert crossing_warning({**findings.summary, "audit_duplicates_across_folds": 0}, Path("x"), Path("y")) is None


def test_counts_and_issues_go_to_the_parent_run(tracked_workspace: Path, params: Params, findings: Findings) -> None:
    folds_csv = tracked_workspace / "folds.csv"
    with FoldRun(params, folds_csv, 0) as run:
        run.finish(Weights("test weights", "ab" * 32, None), [])
    issues_csv = write_audit_outputs(tracked_workspace / "audit", findings, "")[0]
    parent, status = log_audit(params, folds_csv, findings.summary, issues_csv)
    assert status == "ok" and parent is not None
    client = MlflowClient(f"sqlite:///{tracked_workspace / 'mlflow.db'}")
    metrics = client.get_run(parent).data.metrics
    assert metrics["audit_near_duplicate"] == 3 and metrics["audit_duplicates_across_folds"] == 3
    assert metrics == {name: float(value) for name, value in findings.summary.items()}
    assert [item.path for item in client.list_artifacts(parent, "audit")] == ["audit/issues.csv"]


def test_only_the_features_module_reaches_torch_and_the_report_never_imports_the_audit() -> None:
    """The audit's tables and rules run without torch; the report reads the audit's files, not its code."""
    reach = {
        name: code_files(REPO, f"burrscope.audit.{name}")
        for name in ("confident", "neighbours", "findings", "groups", "outputs")
    }
    assert not {name: files for name, files in reach.items() if "burrscope/audit/features.py" in files}
    report = code_files(REPO, "burrscope.report.build")
    assert not [name for name in report if name.startswith("burrscope/audit/")]


def test_clean_data_gives_an_empty_table_with_every_column() -> None:
    photos, _ = generated()
    clean = photos.table.assign(label=(np.arange(N) % 2).astype(str))  # FLIPPED put back
    found = find_issues(Photos(clean, photos.classes), unit_rows(np.eye(N)), SETTINGS)  # all equally far apart
    assert found.issues.empty and list(found.issues.columns) == ISSUE_COLUMNS
    assert set(found.summary.values()) == {0}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"duplicate_similarity": 1.5}, r"audit.duplicate_similarity: 1.5 is greater than the maximum of 1"),
        ({"outlier_neighbours": 0}, r"audit.outlier_neighbours: 0 is less than the minimum of 1"),
        ({"outlier_z": 0}, r"audit.outlier_z: 0 is less than or equal to the minimum of 0"),
    ],
)
def test_bad_audit_params_name_the_key(change: dict, message: str) -> None:
    params = read_params_file(REPO / "params.yaml")
    with pytest.raises(ParamsError, match=message):
        validate_params({**params, "audit": {**params["audit"], **change}})


def test_audit_params_are_typed_and_train_nothing() -> None:
    params = read_params_file(REPO / "params.yaml")
    stricter = {**params, "audit": {**params["audit"], "duplicate_similarity": 0.99}}
    assert Params.from_mapping(stricter).audit.duplicate_similarity == 0.99
    assert Recipe.from_params(stricter) == Recipe.from_params(params)  # a retrained model never follows
