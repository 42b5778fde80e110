"""The whole store as one `xarray.DataTree` (`orthodiff.open_store`), laid out like the store.

Each stored kind has one reader that opens its nodes (`featurestore.volumes.open_volumes`,
`featurestore.features.feature_nodes`, `personas.reader.persona_nodes`,
`radiomics.reader.radiomics_nodes`); this module puts them side by side, joins the catalog
and sorts the labels. It sits above the kinds (personas and radiomics import featurestore, so
the tree cannot live there) and, like every reader, runs no network.
"""

from __future__ import annotations

import pandas as pd
import xarray as xr

from orthodiff.catalogs.cohort import read_catalog
from orthodiff.errors import OrthodiffError
from orthodiff.featurestore.features import feature_nodes
from orthodiff.featurestore.store import open_root
from orthodiff.featurestore.volumes import GROUP as VOLUMES, count, open_volumes
from orthodiff.personas.reader import persona_nodes
from orthodiff.radiomics.reader import radiomics_nodes

# dimensions kept in their stored order: `series` follows the stored rows (the Dask chunks
# follow them: sorting would make every task read many stored chunks), `axis` is the
# geometric order (slice, row, column) of the spacing triples
STORED_ORDER = ("series", "axis")


def sorted_labels(ds: xr.Dataset) -> xr.Dataset:
    """`ds` with every other dimension coordinate sorted (timesteps and blocks are stored in the
    order a store grew; ROI, source and feature labels in the writer's order)."""
    unsorted = [d for d in ds.dims if d in ds.indexes and d not in STORED_ORDER
                and not ds.indexes[d].is_monotonic_increasing]
    return ds.sortby(unsorted) if unsorted else ds


def with_catalog(ds: xr.Dataset, catalog: pd.DataFrame) -> xr.Dataset:
    """`ds` with the catalog's columns (split, labels, acquisition, EHR) as coordinates on
    `series` (NaN for series the catalog lacks); a coordinate the store holds (identity,
    geometry, the volumes' `split` as ingested) is kept, file paths are left out."""
    rows = catalog.reindex(ds.series.values)
    extra = [c for c in rows.columns if c not in ds.coords and c not in ("path", "mask_path")]
    return ds.assign_coords({c: ("series", rows[c].to_numpy()) for c in extra})


def open_store(path, backbone: str | list[str] | None = None, catalog=None, series_per_chunk: int = 64) -> xr.DataTree:
    """Every stored kind of the store at `path` (a folder or fsspec URL) as one lazy
    `xarray.DataTree`, whatever the store holds:

    - `volumes`: `volume(series, z, y, x)`, `mask`, with `case_id`, `patient_id`, `plane`,
      `scan`, `split`, `has_mask` and the geometry on `series` (`featurestore.volumes`);
    - `features/<backbone id>` (attributes: the provenance) and `features/<backbone id>/<plane>`:
      `activation(series, timestep, block, channel, z, y, x)`, `gap(series, timestep, block,
      channel)`, with `plane`, `case_id`, `patient_id`, `scan` and the series' geometry on
      `series` (`featurestore.features`); `backbone` (an id or a list) keeps only those;
    - `personas/<backbone id>/<plane>`: `persona(series, z, y, x)`, `mask`, `roi_name(roi)`
      (attributes: the provenance; `personas.store`);
    - `radiomics/<settings id>/<plane>`: `value(series, roi, source, feature)`, `undefined`,
      `reason(code)` (attributes: the settings; `radiomics.store`).

    Every node is Dask-backed (`series_per_chunk` series per feature chunk; `.load()` is the
    caller's), its labels (timestep, block, roi, source, feature) sorted, `series` in the
    stored order. With a catalog (path or DataFrame) its split, label, acquisition and EHR
    columns are coordinates on `series` of every node. Planes and backbones are independent
    nodes: they may hold different timesteps, blocks or channel widths.

    Reading while a job runs is safe: features are read as the last finished job left them,
    personas and radiomics show only the shards recorded complete. A group whose creation is
    still running (or was interrupted) is left out, listed in the root's `incomplete`
    attribute and named in a warning (`IncompleteFeatures`, `IncompleteGroups`).
    """
    root = open_root(path)
    nodes: dict[str, xr.Dataset] = {}
    volumes = open_volumes(path) if VOLUMES in root and count(root[VOLUMES]) else None
    if volumes is not None:
        nodes[VOLUMES] = volumes
    incomplete = []
    for part, missing in (feature_nodes(path, root, backbone, series_per_chunk, volumes), persona_nodes(path, root),
                          radiomics_nodes(path, root)):
        nodes |= part
        incomplete += missing
    if not nodes:
        raise OrthodiffError(f"{path}: an empty store (run `orthodiff ingest` first)")
    if catalog is not None:
        df = (catalog if isinstance(catalog, pd.DataFrame) else read_catalog(catalog)).set_index("series_id")
        nodes = {key: with_catalog(ds, df) if "series" in ds.dims else ds for key, ds in nodes.items()}
    tree = xr.DataTree.from_dict({key: sorted_labels(ds) for key, ds in nodes.items()})
    tree.attrs = {"incomplete": incomplete}
    return tree
