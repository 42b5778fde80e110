"""The inputs of every heads run: catalog + store loading and provenance."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from orthodiff.errors import OrthodiffError


def load_inputs(store, catalog_path, backbone=None, planes=None) -> tuple[dict, pd.DataFrame, list[str], dict]:
    """(per-plane features, catalog, label columns, provenance for run.json)."""
    from orthodiff.catalogs.cohort import HEADS_COLUMNS, label_columns, read_catalog, split_fingerprint, validate_catalog
    from orthodiff.heads.store import plane_features

    if store is None or catalog_path is None:
        raise OrthodiffError("--store and --catalog are required (or a configuration/sweep that records them)")
    catalog = read_catalog(catalog_path)
    validate_catalog(catalog, catalog_path, check_files=False, columns=HEADS_COLUMNS)
    labels = label_columns(catalog)
    features = plane_features(store, catalog, backbone=backbone, planes=planes)
    split = split_fingerprint(catalog)
    catalog = catalog[catalog["plane"].isin(list(features))].copy()
    catalog.attrs["split_fingerprint"] = split
    local = "://" not in str(store)  # recorded absolute, so later commands work from any folder
    provenance = {"store": str(Path(store).resolve()) if local else str(store),
                  "catalog": str(Path(catalog_path).resolve()), "backbone": backbone}
    return features, catalog, labels, provenance


def sweep_inputs(sweep_dir) -> tuple[dict, pd.DataFrame, list[str], dict]:
    """The inputs a sweep was made from (its run.json records store, catalog, backbones and
    planes), as ``load_inputs`` gives them: what ``select`` scores its combinations on."""
    from orthodiff.outputs import read_run

    run = read_run(sweep_dir, ("sweep",), "a sweep directory")
    return load_inputs(run.get("store"), run.get("catalog"), run.get("backbone"), run.get("planes"))
