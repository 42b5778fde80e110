"""The inputs of every heads run: the store opened with its catalog, and the provenance."""

from __future__ import annotations

from pathlib import Path

from orthodiff.errors import OrthodiffError


def load_inputs(store, catalog_path, backbone=None, planes=None):
    """(``FusionData`` of the catalog's series of ``planes`` with their features from
    ``open_store(store, backbone, catalog)``, label columns, provenance for run.json)."""
    from orthodiff import open_store
    from orthodiff.catalogs.cohort import HEADS_COLUMNS, label_columns, read_catalog, validate_catalog
    from orthodiff.heads.protocol import FusionData

    if store is None or catalog_path is None:
        raise OrthodiffError("--store and --catalog are required (or a configuration/sweep that records them)")
    catalog = read_catalog(catalog_path)
    validate_catalog(catalog, catalog_path, check_files=False, columns=HEADS_COLUMNS)
    tree = open_store(str(store), backbone=backbone, catalog=catalog)
    data = FusionData.from_tree(tree, catalog, planes, source=str(store))
    local = "://" not in str(store)  # recorded absolute, so later commands work from any folder
    provenance = {"store": str(Path(store).resolve()) if local else str(store),
                  "catalog": str(Path(catalog_path).resolve()), "backbone": backbone}
    return data, label_columns(catalog), provenance


def sweep_inputs(sweep_dir):
    """The inputs a sweep was made from (its run.json records store, catalog, backbones and
    planes), as ``load_inputs`` gives them: what ``select`` scores its combinations on."""
    from orthodiff.outputs import read_run

    run = read_run(sweep_dir, ("sweep",), "a sweep directory")
    return load_inputs(run.get("store"), run.get("catalog"), run.get("backbone"), run.get("planes"))
