"""What the heads CLI commands share: catalog + store loading, provenance, progress bars."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from orthodiff.errors import OrthodiffError


def load_inputs(store, catalog_path, backbone=None, planes=None) -> tuple[dict, pd.DataFrame, list[str], dict]:
    """(per-plane features, catalog, label columns, provenance for run.json)."""
    from orthodiff.catalogs.cohort import HEADS_COLUMNS, label_columns, read_catalog, validate_catalog
    from orthodiff.heads.store import plane_features

    if store is None or catalog_path is None:
        raise OrthodiffError("--store and --catalog are required (or a configuration/sweep that records them)")
    catalog = read_catalog(catalog_path)
    validate_catalog(catalog, catalog_path, check_files=False, columns=HEADS_COLUMNS)
    labels = label_columns(catalog)
    features = plane_features(store, catalog, backbone=backbone, planes=planes)
    catalog = catalog[catalog["plane"].isin(list(features))]
    local = "://" not in str(store)  # a path is kept absolute, so run.json works from any folder
    provenance = {"store": str(Path(store).resolve()) if local else str(store), "catalog": str(Path(catalog_path).resolve()), "backbone": backbone}
    return features, catalog, labels, provenance


@contextmanager
def progress_bar(console, description: str, total: int):
    """A rich bar; yields a zero-argument callback that advances it by one."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)
