"""The `volumes` group of a store: preprocessed input series, ready for the backbone.

Layout (plain `xarray.open_zarr(store, group="volumes")` reads it):

- `volume(series, z, y, x)` float16 in [-1, 1]: the 16 central slices, resized in-plane;
  one chunk per series.
- `mask(series, z, y, x)` uint8 structure labels (0 where a series has no mask) and
  `has_mask(series)`.
- `series` (dimension coordinate, the catalog's `series_id`) and the coordinates
  `case_id`, `patient_id`, `plane`, `scan`, `split` on it.

The group grows by appending (one process at a time: ingestion). An append resizes the
arrays, writes their new rows, and only then raises the group attribute `n_series`; the
root's consolidated metadata is refreshed after that. Readers trust the first `n_series`
rows, so a job killed mid-append leaves a readable group, and the next append first cuts
every array back to `n_series`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from orthodiff.errors import OrthodiffError
from orthodiff.featurestore.store import consolidate, open_root

GROUP = "volumes"
DEPTH = 16
COORDS = ("case_id", "patient_id", "plane", "scan", "split")
_STRINGS = ("series", "case_id", "patient_id", "plane", "split")


def _create_arrays(group: zarr.Group, size: int) -> None:
    grid = (0, DEPTH, size, size)
    attrs = {"coordinates": " ".join(COORDS)}
    group.create_array(
        "volume", shape=grid, chunks=(1, DEPTH, size, size), dtype="float16",
        dimension_names=["series", "z", "y", "x"], attributes=attrs, fill_value=0,
    )
    group.create_array(
        "mask", shape=grid, chunks=(1, DEPTH, size, size), dtype="uint8",
        dimension_names=["series", "z", "y", "x"], attributes=attrs, fill_value=0,
    )
    group.create_array("has_mask", shape=(0,), chunks=(4096,), dtype="bool", dimension_names=["series"])
    group.create_array("scan", shape=(0,), chunks=(4096,), dtype="int16", dimension_names=["series"])
    for name in _STRINGS:
        group.create_array(name, shape=(0,), chunks=(4096,), dtype=str, dimension_names=["series"])
    group.attrs["n_series"] = 0


def _arrays(group: zarr.Group) -> dict[str, zarr.Array]:
    return {name: group[name] for name in ("volume", "mask", "has_mask", "scan", *_STRINGS)}


def append_volumes(store: str, volumes: np.ndarray, meta: pd.DataFrame, masks: np.ndarray | None = None) -> int:
    """Append series to the store's volumes (created on first use); returns the new count.

    `volumes` is (n, 16, S, S) in [-1, 1]; `meta` has `series_id`, `case_id`, `patient_id`,
    `plane`, `scan`, `split` in the same order; `masks` (n, 16, S, S) uint8 or None, with
    all-zero masks meaning "no mask" for that series.
    """
    volumes = np.asarray(volumes)
    if volumes.ndim != 4 or volumes.shape[1] != DEPTH or volumes.shape[2] != volumes.shape[3]:
        raise OrthodiffError(f"volumes must be (n, {DEPTH}, S, S), got {volumes.shape}")
    if len(meta) != len(volumes):
        raise OrthodiffError(f"{len(meta)} metadata rows for {len(volumes)} volumes")
    root = open_root(store, create=True)
    size = volumes.shape[-1]
    if GROUP not in root:
        _create_arrays(root.create_group(GROUP), size)
    group = root[GROUP]
    arrays = _arrays(group)
    if arrays["volume"].shape[-1] != size:
        raise OrthodiffError(f"{store}: volumes are {arrays['volume'].shape[-1]} px in-plane, not {size}")
    n = int(group.attrs["n_series"])
    present = set(arrays["series"][:n].tolist()) if n else set()
    clash = [s for s in meta["series_id"] if s in present]
    if clash:
        raise OrthodiffError(f"{store}: series {clash[0]!r} is already in the volumes")
    m = len(meta)
    for array in arrays.values():  # cut back an interrupted append, then grow
        array.resize((n + m, *array.shape[1:]))
    rows = slice(n, n + m)
    arrays["volume"][rows] = volumes.astype("float16")
    has_mask = np.zeros(m, bool) if masks is None else np.asarray(masks).reshape(m, -1).any(axis=1)
    if masks is not None:
        arrays["mask"][rows] = np.asarray(masks, dtype="uint8")
    arrays["has_mask"][rows] = has_mask
    arrays["scan"][rows] = meta["scan"].to_numpy(dtype="int16")
    arrays["series"][rows] = meta["series_id"].astype(str).to_numpy(dtype=object)
    for name in ("case_id", "patient_id", "plane", "split"):
        arrays[name][rows] = meta[name].astype(str).to_numpy(dtype=object)
    group.attrs["n_series"] = n + m
    consolidate(store)
    return n + m


def ingested_series(store: str) -> set[str]:
    """Series ids already in the store's volumes (empty for a new store)."""
    try:
        root = open_root(store)
    except OrthodiffError:
        return set()
    if GROUP not in root:
        return set()
    n = int(root[GROUP].attrs["n_series"])
    return set(root[GROUP]["series"][:n].tolist()) if n else set()


def open_volumes(store: str, series_per_chunk: int = 8) -> xr.Dataset:
    """The volumes of `store` as a lazy Dataset (Dask chunks of `series_per_chunk` series).

    Shapes come from the root's consolidated metadata, written after each completed
    append, so an append killed midway is invisible here.
    """
    root = open_root(store)
    if GROUP not in root or not root[GROUP].attrs.get("n_series"):
        raise OrthodiffError(f"{store}: no volumes in this store (run `orthodiff ingest` first)")
    ds = xr.open_zarr(str(store), group=GROUP, consolidated=True, chunks={})
    ds = ds.isel(series=slice(0, int(ds.attrs["n_series"]))).chunk(series=series_per_chunk)
    return ds.assign_coords({name: ds[name].load() for name in (*COORDS, "has_mask")})
