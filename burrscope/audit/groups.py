"""labels_with_groups.csv: the user's labels CSV with a `group` column that puts near-duplicate photos together.

The split stage keeps each group in one fold (StratifiedGroupKFold), so with this file as the labels no part is
trained on in one fold and scored in another. Groups are the connected components of "is a near-duplicate of"
and "is in the same group" (when the labels already have groups): a component is named after the smallest of
its members' groups, or, without groups, of its members' file names as the CSV writes them; every other photo
is a group of its own, named after itself (or keeps its group). Every column, header and value of the CSV is
kept as written, in its order; blank rows are left out, and it is written comma-separated, in UTF-8.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from burrscope.data.labels import labels_as_written, match_names, read_labels
from burrscope.data.naming import output_name
from burrscope.tables import MANIFEST_COLUMNS, read_table


def components(members: Iterable[str], links: Iterable[tuple[str, str]]) -> dict[str, str]:
    """{member: its component's representative}, the components of the graph `links` draws on `members`; a
    component's representative is its smallest member."""
    parent = {member: member for member in members}

    def root(node: str) -> str:
        while parent[node] != node:
            parent[node] = parent[parent[node]]  # path halving: chains stay short
            node = parent[node]
        return node

    for first, second in links:
        a, b = root(first), root(second)
        parent[max(a, b)] = min(a, b)  # the smaller root wins, so a representative is its component's minimum
    return {member: root(member) for member in parent}


def photo_of_row(labels_csv: Path, manifest: pd.DataFrame) -> dict[int, str]:
    """{labels CSV line: the model input file of the photo it labels} for every row whose photo was kept; the
    rows are matched to photos as the normalise stage matched them (labels.match_names)."""
    labels, _ = match_names(read_labels(labels_csv), list(manifest["original_name"]))
    kept = manifest[manifest["skipped"] == ""]
    inputs = dict(zip(kept["original_name"], kept["normalised_name"].map(output_name), strict=True))
    return {int(row.line): inputs[row.file] for row in labels.itertuples() if row.file in inputs}


def grouped_labels(labels_csv: Path, manifest_csv: Path, duplicates: Iterable[tuple[str, str]]) -> str:
    """The labels CSV's text with `group` joining the `duplicates` (pairs of model input files) and the groups it
    already has; `manifest_csv` is the normalise stage's manifest, which maps the CSV's rows to model inputs."""
    manifest = read_table(manifest_csv, MANIFEST_COLUMNS)
    table, columns = labels_as_written(labels_csv)
    by_role = {role: header for header, role in columns.items()}
    table = table.assign(_line=table.index + 2)
    table = table[(table.drop(columns="_line") != "").any(axis=1)]
    group_column = by_role.get("group", "group")
    files = table[by_role["file"]].str.strip()
    groups = table[group_column].str.strip() if group_column in table.columns else pd.Series("", index=table.index)
    # Each row starts in its own group, or in the one the CSV gives it; a file name names a photo on its own.
    seeds = [f"group:{group}" if group else f"file:{file}" for group, file in zip(groups, files, strict=True)]
    photo = photo_of_row(labels_csv, manifest)
    row_of_photo = {photo[line]: seed for line, seed in zip(table["_line"], seeds, strict=True) if line in photo}
    # Rows the CSV already groups share one seed: one node of the graph.
    component = components(seeds, [(row_of_photo[a], row_of_photo[b]) for a, b in duplicates])
    names = group_names(component)
    return (
        table.drop(columns="_line")
        .assign(**{group_column: [names[component[seed]] for seed in seeds]})
        .to_csv(index=False, lineterminator="\n")
    )


def group_names(component: Mapping[str, str]) -> dict[str, str]:
    """{representative: group name}: the smallest group among a component's seeds, else its smallest file name."""
    members: dict[str, list[str]] = {}
    for seed, representative in component.items():
        members.setdefault(representative, []).append(seed)
    names = {}
    for representative, seeds in members.items():
        grouped = sorted(seed.removeprefix("group:") for seed in seeds if seed.startswith("group:"))
        names[representative] = grouped[0] if grouped else min(seeds).removeprefix("file:")
    return names
