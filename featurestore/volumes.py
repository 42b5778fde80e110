"""The `volumes` group of a store: preprocessed input series, ready for the backbone.

Layout (plain `xarray.open_zarr(store, group="volumes")` reads it):

- `volume(series, z, y, x)` float16 in [-1, 1]: the 16 central slices, resized in-plane;
  one chunk per series.
- `mask(series, z, y, x)` uint8 structure labels (0 where a series has no mask) and
  `has_mask(series)`.
- `series` (dimension coordinate, the catalog's `series_id`) and the coordinates
  `case_id`, `patient_id`, `plane`, `scan`, `split` on it.
- Geometry (`catalogs.geometry`): `spacing(series, axis)`, the series' voxel size in mm as
  read, and `stored_spacing(series, axis)`, the stored volume's (after the in-plane resize),
  with `axis` = ("slice", "row", "column"); `orientation(series)`, the anatomical directions
  of the stored (slice, row, column) axes (the plane's canonical "LIA", "AIR" or "IPR", with
  L and R swapped where `mirrored`); `laterality(series)` "left", "right" or "unknown";
  `mirrored(series)` whether a left knee was flipped to look right; `spacing_reason(series)`,
  empty where the spacing is known, else why it is NaN (a `.npy` series has no geometry).
  Stores written before these arrays existed open with NaN spacing and that reason.

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

from orthodiff.catalogs.geometry import AXES, Reorientation
from orthodiff.errors import OrthodiffError
from orthodiff.faults import fault
from orthodiff.featurestore.features import Records, content_digest
from orthodiff.featurestore.store import consolidate, ensure_arrays, ensure_group, open_root

GROUP = "volumes"
DEPTH = 16
COORDS = ("case_id", "patient_id", "plane", "scan", "split")
_STRINGS = ("series", "case_id", "patient_id", "plane", "split")
# per-series geometry, and what a row without it (an older store's, `append_volumes` without
# geometry columns) holds
GEOMETRY = {"spacing": np.nan, "stored_spacing": np.nan, "orientation": "", "laterality": "unknown",
            "mirrored": False, "spacing_reason": "not recorded when stored (an older orthodiff, or volumes appended without geometry)"}


def _array_specs(size: int) -> dict[str, dict]:
    coords = " ".join((*COORDS, *GEOMETRY))
    grid = {"shape": (0, DEPTH, size, size), "chunks": (1, DEPTH, size, size),
            "dimension_names": ["series", "z", "y", "x"], "attributes": {"coordinates": coords}, "fill_value": 0}
    on_series = {"shape": (0,), "chunks": (4096,), "dimension_names": ["series"]}
    on_axes = {"shape": (0, len(AXES)), "chunks": (4096, len(AXES)), "dimension_names": ["series", "axis"],
               "dtype": "float64", "fill_value": np.nan}
    return {"volume": dict(dtype="float16", **grid), "mask": dict(dtype="uint8", **grid),
            "has_mask": dict(dtype="bool", **on_series), "scan": dict(dtype="int16", **on_series),
            **{name: dict(dtype=str, **on_series) for name in _STRINGS},
            "axis": {"shape": (len(AXES),), "chunks": (len(AXES),), "dimension_names": ["axis"], "dtype": str},
            "spacing": on_axes, "stored_spacing": on_axes, "mirrored": dict(dtype="bool", **on_series),
            **{name: dict(dtype=str, fill_value=GEOMETRY[name], **on_series)
               for name in ("orientation", "laterality", "spacing_reason")}}


def count(group: zarr.Group) -> int:
    """Series the group holds: rows beyond `n_series` belong to an append that did not finish
    (absent until the first append completes)."""
    return int(group.attrs.get("n_series", 0))


ARRAYS = ("volume", "mask", "has_mask", "scan", *_STRINGS)


def _arrays(group: zarr.Group) -> dict[str, zarr.Array]:
    return {name: group[name] for name in ARRAYS}


def row_digest(group: zarr.Group, row: int) -> str:
    """Checksum of one series' stored volume and mask."""
    return content_digest(group["volume"][row], group["mask"][row])


def _record_name(start: int) -> str:
    return f"{start:09d}.json"


def volume_records(store: str, n: int) -> list[dict]:
    """Checksum records of the appends below row `n` (`start`, `series`, `digest` per row);
    a record at or past `n` belongs to an append that did not finish."""
    records = Records(store, GROUP).read()
    return [r for name, r in sorted(records.items()) if r.get("start", n) < n]


def _write_record(store: str, start: int, series: list[str], volumes: np.ndarray, masks: np.ndarray) -> None:
    """Checksums of rows `start`... from the values just written (float16 and uint8, as stored)."""
    digests = [content_digest(v, m) for v, m in zip(volumes, masks)]
    Records(store, GROUP).write(_record_name(start), {"start": start, "series": series, "digest": digests})


def rewrite_rows(store: str, rows: list[int], volumes: np.ndarray, masks: np.ndarray) -> None:
    """Write series again into their rows (`ingest --repair`) and refresh their checksum records."""
    group = open_root(store)[GROUP]
    for row, volume, mask in zip(rows, volumes, masks):
        group["volume"][row] = volume.astype("float16")
        group["mask"][row] = np.asarray(mask, dtype="uint8")
    for record in volume_records(store, count(group)):
        span = slice(record["start"], record["start"] + len(record["series"]))
        if any(span.start <= r < span.stop for r in rows):
            _write_record(store, span.start, record["series"], group["volume"][span], group["mask"][span])


def append_volumes(store: str, volumes: np.ndarray, meta: pd.DataFrame, masks: np.ndarray | None = None) -> int:
    """Append series to the store's volumes (created on first use); returns the new count.

    `volumes` is (n, 16, S, S) in [-1, 1]; `meta` has `series_id`, `case_id`, `patient_id`,
    `plane`, `scan`, `split` in the same order, and the geometry columns of `GEOMETRY`
    where known (`spacing`, `stored_spacing` as (slice, row, column) triples); `masks`
    (n, 16, S, S) uint8 or None, with all-zero masks meaning "no mask" for that series.
    """
    volumes = np.asarray(volumes)
    if volumes.ndim != 4 or volumes.shape[1] != DEPTH or volumes.shape[2] != volumes.shape[3]:
        raise OrthodiffError(f"volumes must be (n, {DEPTH}, S, S), got {volumes.shape}")
    if len(meta) != len(volumes):
        raise OrthodiffError(f"{len(meta)} metadata rows for {len(volumes)} volumes")
    root = open_root(store, create=True)
    size = volumes.shape[-1]
    group, _ = ensure_group(root, GROUP)
    fault("ingest:group")
    ensure_arrays(group, _array_specs(size), "ingest")
    arrays = _arrays(group)
    if arrays["volume"].shape[-1] != size:
        raise OrthodiffError(f"{store}: volumes are {arrays['volume'].shape[-1]} px in-plane, not {size}")
    n = count(group)
    present = set(arrays["series"][:n].tolist()) if n else set()
    clash = [s for s in meta["series_id"] if s in present]
    if clash:
        raise OrthodiffError(f"{store}: series {clash[0]!r} is already in the volumes")
    m = len(meta)
    on_rows = [*arrays.values(), *(group[name] for name in GEOMETRY)]
    for array in on_rows:  # cut back an interrupted append, then grow (an older store's new arrays: their fill)
        array.resize((n + m, *array.shape[1:]))
    group["axis"][:] = np.asarray(AXES, dtype=object)
    rows = slice(n, n + m)
    stored = volumes.astype("float16")
    arrays["volume"][rows] = stored
    masks = np.zeros(stored.shape, "uint8") if masks is None else np.asarray(masks, dtype="uint8")
    has_mask = masks.reshape(m, -1).any(axis=1)
    arrays["mask"][rows] = masks  # also clears what an interrupted append left in these rows
    arrays["has_mask"][rows] = has_mask
    arrays["scan"][rows] = meta["scan"].to_numpy(dtype="int16")
    arrays["series"][rows] = meta["series_id"].astype(str).to_numpy(dtype=object)
    for name in ("case_id", "patient_id", "plane", "split"):
        arrays[name][rows] = meta[name].astype(str).to_numpy(dtype=object)
    for name, default in GEOMETRY.items():
        values = meta[name].tolist() if name in meta else [default] * m
        if name in ("spacing", "stored_spacing"):
            group[name][rows] = np.broadcast_to(np.asarray(values, dtype="float64").reshape(m, -1), (m, len(AXES)))
        else:
            group[name][rows] = np.asarray(values, dtype=bool if name == "mirrored" else object)
    _write_record(store, n, meta["series_id"].astype(str).tolist(), stored, masks)  # before the rows count
    fault("ingest:rows")
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
    n = count(root[GROUP])
    return set(root[GROUP]["series"][:n].tolist()) if n else set()


def open_volumes(store: str, series_per_chunk: int = 8) -> xr.Dataset:
    """The volumes of `store` as a lazy Dataset (Dask chunks of `series_per_chunk` series).

    Shapes come from the root's consolidated metadata, written after each completed
    append, so an append killed midway is invisible here.
    """
    root = open_root(store)
    if GROUP not in root or not count(root[GROUP]):
        raise OrthodiffError(f"{store}: no volumes in this store (run `orthodiff ingest` first)")
    ds = xr.open_zarr(str(store), group=GROUP, consolidated=True, chunks={})
    ds = ds.isel(series=slice(0, int(ds.attrs["n_series"]))).chunk(series=series_per_chunk)
    return ds.assign_coords({name: ds[name].load() for name in (*COORDS, "has_mask")} | geometry_coords(ds))


def geometry_coords(ds: xr.Dataset) -> dict[str, xr.DataArray]:
    """The geometry coordinates of a volumes Dataset, loaded (those an older store lacks:
    NaN spacing, unknown orientation and laterality, with the reason)."""
    n = ds.sizes["series"]
    out = {"axis": xr.DataArray(list(AXES), dims="axis")}
    for name, default in GEOMETRY.items():
        if name in ds.variables:
            out[name] = ds[name].load()
        elif name in ("spacing", "stored_spacing"):
            out[name] = xr.DataArray(np.full((n, len(AXES)), default), dims=("series", "axis"))
        else:
            out[name] = xr.DataArray(np.full(n, default, dtype=bool if name == "mirrored" else object), dims="series")
    return out


def plane_volumes(store: str, plane: str, image_size: int | None, checkpoint) -> tuple[xr.Dataset, dict[str, int]]:
    """The lazy volumes of one plane that a backbone of `image_size` px (from `checkpoint`;
    None: any size) will read, and every stored series' row (tasks read their own rows by index)."""
    ds = open_volumes(store)
    row_of = {s: i for i, s in enumerate(ds.series.values.tolist())}
    ds = ds.isel(series=np.flatnonzero(ds.plane.values == plane))
    if not ds.sizes["series"]:
        raise OrthodiffError(f"{store}: no {plane} volumes (ingest them first)")
    if image_size is not None and ds.sizes["x"] != image_size:
        raise OrthodiffError(f"{checkpoint}: backbone expects {image_size} px volumes, the store holds {ds.sizes['x']} px")
    return ds, row_of


def stored_reorientation(volumes: xr.Dataset, series: str, affine: np.ndarray, shape: tuple[int, int, int],
                         plane: str) -> Reorientation | None:
    """How `series` (file geometry `affine`, (slices, rows, columns) `shape`) was turned into
    its stored orientation, to map arrays between the file's grid and the store's; None
    where it was stored as read (a `.npy` series, or a store older than the reorientation)."""
    row = volumes.sel(series=series)
    if not str(row.orientation.values):
        return None
    return Reorientation.of(affine, shape, plane, mirror=bool(row.mirrored.values))
