"""The report's "Check these photos first" section and its banner, from the audit stage's findings: plain data.

The label suspects are shown as cards like the mistakes' (the model input, its names and fold), saying what the
photo is labelled, what the models suggest and the out-of-fold probabilities that say so; a near-duplicate pair
shows both photos side by side. The first SHOWN of each kind are shown; issues.csv lists them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from burrscope.classes import prob_column
from burrscope.data.naming import output_name
from burrscope.report.figures import image_uri
from burrscope.report.inputs import ReportInputs, StageOutputs
from burrscope.report.sections import Card, Namer
from burrscope.tables import GROUPED_LABELS, ISSUE_TYPES, ISSUES, grouped_copy

SHOWN = 12  # cards of each kind; the rest are in issues.csv


def photo_card(anchor: str, row: Any, images_dir: Path, name: Namer) -> Card:
    """What every single-photo card holds, from an issues.csv row: anchor, image, heatmap (None: the explain stage's
    cards have one), file, original, fold and label (the given one, by name)."""
    return {
        "anchor": anchor,
        "image": image_uri(images_dir / row.file),
        "heatmap": None,
        "file": row.file,
        "original": row.original_name,
        "fold": row.fold,
        "label": name(row.given_label),
    }


def label_cards(issues: pd.DataFrame, predictions: pd.DataFrame, images_dir: Path, name: Namer) -> list[Card]:
    """A card per label suspect, most suspect first: photo_card's, and suggested, p_label and p_suggested (the
    out-of-fold probabilities of the given and the suggested label)."""
    probabilities = predictions.set_index("file")
    return [
        photo_card(f"suspect-{i}", row, images_dir, name)
        | {
            "suggested": name(row.suggested_label),
            "p_label": f"{probabilities.at[row.file, prob_column(row.given_label)]:.3f}",
            "p_suggested": f"{probabilities.at[row.file, prob_column(row.suggested_label)]:.3f}",
        }
        for i, row in enumerate(issues.itertuples(), start=1)
    ]


def pair_cards(
    issues: pd.DataFrame, predictions: pd.DataFrame, images_dir: Path, *, originals: Mapping[str, str], name: Namer
) -> list[Card]:
    """A card per near-duplicate pair, most similar first: anchor, similarity, crosses (folds), and `photos`,
    each with image, file, original, fold and label. `originals` maps model input files to original names."""
    photos = predictions.set_index("file")
    cards = []
    for i, row in enumerate(issues.itertuples(), start=1):
        members = [
            {
                "image": image_uri(images_dir / file),
                "file": file,
                "original": originals.get(file, file),
                "fold": str(photos.at[file, "fold"]),
                "label": name(photos.at[file, "label"]),
            }
            for file in (row.file, row.other_file)
        ]
        cards.append(
            {
                "anchor": f"duplicate-{i}",
                "similarity": f"{row.score:.3f}",
                "crosses": members[0]["fold"] != members[1]["fold"],
                "photos": members,
            }
        )
    return cards


def outlier_cards(issues: pd.DataFrame, images_dir: Path, name: Namer) -> list[Card]:
    """A card per outlier, most isolated first: photo_card's, and score (its robust z-score)."""
    return [
        photo_card(f"outlier-{i}", row, images_dir, name) | {"score": f"{row.score:.1f}"}
        for i, row in enumerate(issues.itertuples(), start=1)
    ]


def audit_section(outputs: StageOutputs, inputs: ReportInputs, params: Mapping[str, Any], name: Namer) -> Card:
    """The section's data. Keys: counts (summary.json), crossing (pairs across
    folds), issues and grouped (paths of issues.csv and labels_with_groups.csv), copy_to (where to copy the latter to
    use it), labels, pairs and outliers (cards, the first SHOWN of each) and hidden (how many of each kind are left
    out)."""
    audit, audit_dir, images_dir = outputs.audit, inputs.audit_dir, inputs.images_dir
    kinds = {kind: audit.issues[audit.issues["issue"] == kind] for kind in ISSUE_TYPES}
    originals = {output_name(row.normalised_name): row.original_name for row in outputs.manifest.itertuples()}
    return {
        "counts": audit.summary,
        "crossing": int(audit.summary["audit_duplicates_across_folds"]),
        "issues": str(audit_dir / ISSUES),
        "grouped": str(audit_dir / GROUPED_LABELS),
        "copy_to": str(grouped_copy(params["data"]["labels"])),
        "labels": label_cards(kinds["label"].head(SHOWN), outputs.predictions, images_dir, name),
        "pairs": pair_cards(
            kinds["near_duplicate"].head(SHOWN), outputs.predictions, images_dir, originals=originals, name=name
        ),
        "outliers": outlier_cards(kinds["outlier"].head(SHOWN), images_dir, name),
        "hidden": {kind: max(len(rows) - SHOWN, 0) for kind, rows in kinds.items()},
    }
