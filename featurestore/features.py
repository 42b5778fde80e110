"""Feature groups of a store: layout, templates, completion records, and the reader of the
`features/...` nodes of `open_store`'s tree (`feature_nodes`).

Layout (every plane group is a plain xarray dataset: `xarray.open_zarr(store,
group="features/<backbone>/<plane>")`):

    features/<backbone id>/                 attrs: provenance (checkpoint hash, preset, noise
      <plane>/                                 seed and policy, preprocessing, version, created)
        activation(series, timestep, block, channel, z, y, x)   float16 (or float32)
        gap(series, timestep, block, channel)                    float32, spatial mean
        series, case_id, patient_id, scan                         coordinates on series
        timestep (int), block (str)                               labels, in the order added
                                                                  (`open_store` sorts them)
    _records/<backbone id>/<plane>/<shard>-t<timestep>-<block>.json   completion records

`activation` inner chunks hold one series x one timestep x one block; a shard holds
`SHARD_SERIES` consecutive series of that (timestep, block), so one extraction task (a run
of series) owns whole shards and never shares one with another task, plane or job. `gap`
chunks are aligned with the same runs of series. A unit (shard, timestep, block) is
complete only when its record exists and carries the expected fingerprint; records are
written after the data. Growing a store (more timesteps or blocks, more series) enlarges
the arrays in one process before any task runs, so existing shards are never rewritten,
except the last, partly filled run of series, which is recomputed whole when series are
added to it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import warnings
import zlib

import fsspec
import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

from orthodiff.errors import OrthodiffError
from orthodiff.faults import fault
from orthodiff.featurestore.store import complete, ensure_arrays, ensure_group, open_root
from orthodiff.options import Precision

GROUP = "features"
SHARD_SERIES = 16
RECORDS = "_records"  # outside the Zarr hierarchy, so readers never list them
NOISE_POLICY = "noise ~ N(0, 1) seeded by sha256(seed, series_id, timestep); x_t = q_sample(x0, t, noise)"
COMPRESSOR = BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.shuffle)


def plane_path(backbone: str, plane: str) -> str:
    return f"{GROUP}/{backbone}/{plane}"


FINGERPRINT_KEYS = ("backbone_id", "noise_seed", "noise_policy", "preprocessing", "schema")


def fingerprint(provenance: dict, series: list[str], timestep: int, block: str, dtype: str,
                keys: tuple[str, ...] = FINGERPRINT_KEYS, precision: str = "fp32") -> str:
    """What a completed unit must match: weights, noise, preprocessing, codec, dtype, series
    (`keys`: the provenance entries that matter; other stored groups name their own), and the
    compute precision (left out of the hash for fp32, so fp32 stores written before
    `--precision` existed stay complete)."""
    parts = [{k: provenance.get(k) for k in keys}, series, timestep, block, dtype, COMPRESSOR.to_dict()]
    payload = json.dumps(parts + ([] if Precision(precision) is Precision.fp32 else [precision]), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def done_name(shard: int, timestep: int, block: str) -> str:
    return f"{shard:06d}-t{timestep:04d}-{block}.json"


def content_digest(*arrays: np.ndarray) -> str:
    """Checksum of the values as stored (dtype and shape included), to catch damage, not
    tampering: CRC-32 finds every error burst up to 32 bits and misses other changes with
    odds 2**-32, at a third of blake2b's cost (bench/benchmarks/checksums.py)."""
    crc = 0
    for a in arrays:
        a = np.ascontiguousarray(a)
        crc = zlib.crc32(a.data, zlib.crc32(f"{a.dtype.str}{a.shape}".encode(), crc))
    return f"{crc:08x}"


class Records:
    """Completion records of one group, as small JSON files under `_records/` (any fsspec URL).

    A feature unit's record holds `fingerprint` (the settings it was computed with), `series`
    and `digest` (`content_digest` of its activation and GAP values; absent in records made
    before checksums, whose content is then not checked)."""

    def __init__(self, store: str, *parts: str):
        self.fs, root = fsspec.core.url_to_fs(str(store))
        self.dir = "/".join([root.rstrip("/"), RECORDS, *parts])

    def read(self) -> dict[str, dict]:
        if not self.fs.exists(self.dir):
            return {}
        out = {}
        for path in self.fs.ls(self.dir, detail=False):
            name = path.rsplit("/", 1)[-1]
            if name.endswith(".json") and not name.startswith("."):
                try:
                    record = json.loads(self.fs.cat_file(path))
                except ValueError:
                    continue  # a damaged record is no record: the unit is redone
                if isinstance(record, dict):
                    out[name] = record
        return out

    def write(self, name: str, record: dict) -> None:
        """Write via a temporary name and rename, so a record is whole or absent."""
        self.fs.makedirs(self.dir, exist_ok=True)
        tmp = f"{self.dir}/.{name}.tmp"
        with self.fs.open(tmp, "w") as f:
            f.write(json.dumps(record, sort_keys=True))
        self.fs.mv(tmp, f"{self.dir}/{name}")

    def remove(self, name: str) -> None:
        if self.fs.exists(f"{self.dir}/{name}"):
            self.fs.rm(f"{self.dir}/{name}")


def drop_temporaries(store: str, backbone: str, plane: str, shard: int) -> None:
    """Remove the temporary files a killed writer left in one task's shard folders.

    Zarr's local store writes each object to `<key>.<random>.partial` and renames it; a kill
    in between leaves that file where listings and byte comparisons see it. Only the task's
    own folders are searched, and only when the task is about to be redone."""
    fs, root = fsspec.core.url_to_fs(str(store))
    base = f"{root.rstrip('/')}/{plane_path(backbone, plane)}"
    for array in ("activation", "gap"):
        for path in fs.glob(f"{base}/{array}/c/{shard}/**/*.partial"):
            fs.rm(path)


def remove_unit(store: str, backbone: str, plane: str, shard: int, ti: int, bi: int) -> None:
    """Delete the objects of one unit: its activation shard and its GAP chunk (they hold nothing else)."""
    fs, root = fsspec.core.url_to_fs(str(store))
    base = f"{root.rstrip('/')}/{plane_path(backbone, plane)}"
    for key in (f"activation/c/{shard}/{ti}/{bi}/0/0/0/0", f"gap/c/{shard}/{ti}/{bi}/0"):
        if fs.exists(f"{base}/{key}"):
            fs.rm(f"{base}/{key}")


def provenance(backbone_id: str, preset: str, config: dict, checkpoint: str, seed: int, size: int) -> dict:
    from orthodiff import __version__
    from orthodiff.featurestore.store import SCHEMA_VERSION

    return {
        "backbone_id": backbone_id, "checkpoint": os.path.realpath(checkpoint), "preset": preset, "config": config,
        "noise_seed": seed, "noise_policy": NOISE_POLICY, "schema": SCHEMA_VERSION,
        "preprocessing": f"16 central slices, resized in-plane to {size}, min-max to [-1, 1]",
        "orthodiff_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _same(a: dict, b: dict) -> bool:
    keys = ("backbone_id", "preset", "config", "noise_seed", "noise_policy", "preprocessing", "schema")
    return all(a.get(k) == b.get(k) for k in keys)


COORDINATES = ("series", "case_id", "patient_id", "scan", "timestep", "block")
ARRAYS = ("activation", "gap", *COORDINATES)


def prepare_plane(store: str, prov: dict, plane: str, series: list[dict], timesteps: list[int],
                  blocks: list[str], shape: tuple[int, ...], dtype: str) -> zarr.Group:
    """Create or grow the plane group so it holds `series` x `timesteps` x `blocks`.

    Safe to interrupt at any step and to run in several jobs at once: a group lacking some
    of its arrays is finished here (`ensure_arrays`), and growth writes data arrays before
    the coordinate that indexes them, so a coordinate never names data that has no room.
    Growth appends along series, timestep and block."""
    root = open_root(store)
    backbone = prov["backbone_id"]
    group, _ = ensure_group(root, f"{GROUP}/{backbone}", attributes=prov)
    fault("create:backbone")
    if not _same(dict(group.attrs), prov):
        raise OrthodiffError(f"{store}: features/{backbone} was written with other settings (seed, preset or preprocessing)")
    pg, _ = ensure_group(group, plane)
    fault("create:plane")
    ensure_arrays(pg, _array_specs(shape, dtype), "create")
    act = pg["activation"]
    if tuple(act.shape[3:]) != tuple(shape) or str(act.dtype) != dtype:
        raise OrthodiffError(
            f"{store}: {plane_path(backbone, plane)} holds {act.dtype} activations of shape {act.shape[3:]}, "
            f"not {dtype} {tuple(shape)}"
        )
    _grow(pg, "timestep", [int(t) for t in timesteps], axis=1)
    _grow(pg, "block", list(blocks), axis=2)
    grow_series(pg, series, ("activation", "gap"))
    return pg


def _array_specs(shape: tuple[int, ...], dtype: str) -> dict[str, dict]:
    c = shape[0]
    on_series = {"shape": (0,), "chunks": (4096,), "dimension_names": ["series"]}
    return {
        "activation": dict(shape=(0, 0, 0, *shape), chunks=(1, 1, 1, *shape), shards=(SHARD_SERIES, 1, 1, *shape),
                           dtype=dtype, compressors=COMPRESSOR, fill_value=0,
                           dimension_names=["series", "timestep", "block", "channel", "z", "y", "x"],
                           attributes={"coordinates": "case_id patient_id scan"}),
        "gap": dict(shape=(0, 0, 0, c), chunks=(SHARD_SERIES, 1, 1, c), dtype="float32", fill_value=np.nan,
                    dimension_names=["series", "timestep", "block", "channel"],
                    attributes={"coordinates": "case_id patient_id scan"}),
        **{name: dict(dtype=str, **on_series) for name in ("series", "case_id", "patient_id")},
        "scan": dict(dtype="int16", **on_series),
        # fill values no real label takes, so an interrupted growth is recognised (see _labels)
        "timestep": dict(shape=(0,), chunks=(1024,), dtype="int32", fill_value=-1, dimension_names=["timestep"]),
        "block": dict(shape=(0,), chunks=(1024,), dtype=str, dimension_names=["block"]),
    }


def _labels(array: zarr.Array) -> list:
    """A coordinate's values up to the first unwritten one (a growth killed between resize and write)."""
    values = array[:].tolist() if array.shape[0] else []
    fill = array.fill_value
    fill = fill.item() if hasattr(fill, "item") else fill
    if fill not in (-1, "") or fill not in values:  # stores made before these fill values: 0 is a timestep
        return values
    return values[: values.index(fill)]


def _resize(arrays, axis: int, n: int) -> None:
    for array in arrays:
        if array.shape[axis] != n:
            shape = list(array.shape)
            shape[axis] = n
            array.resize(tuple(shape))


def _grow(pg: zarr.Group, name: str, wanted: list, axis: int) -> None:
    have = _labels(pg[name])
    new = [v for v in wanted if v not in have]
    n = len(have) + len(new)
    _resize((pg["activation"], pg["gap"]), axis, n)  # data first, its coordinate last
    fault(f"grow:{name}:data")
    if pg[name].shape[0] != n or new:
        pg[name].resize((n,))
        fault(f"grow:{name}:resized")
        pg[name][len(have):] = np.asarray(new, dtype=object if name == "block" else "int32")


def grow_series(pg: zarr.Group, series: list[dict], data: tuple[str, ...]) -> None:
    """Append the `series` rows (dicts of series_id, case_id, patient_id, scan) a group lacks:
    its `data` arrays first, then the coordinates, `series` last (it says which rows are real),
    so a growth killed half-way is finished by the next one. Shared by every series-indexed
    group of the store (features, personas, radiomics)."""
    have = _labels(pg["series"])
    known = set(have)
    new = [s for s in series if s["series_id"] not in known]
    n, m = len(have), len(new)
    _resize([pg[name] for name in data], 0, n + m)
    fault("grow:series:data")
    for name in ("case_id", "patient_id", "scan", "series"):  # `series` last: it says which rows are real
        if pg[name].shape[0] != n + m:
            pg[name].resize((n + m,))
        if m:
            values = [s["series_id" if name == "series" else name] for s in new]
            pg[name][n:] = np.asarray(values, dtype="int16" if name == "scan" else object)
        fault(f"grow:series:{name}")


def backbones(store: str) -> list[str]:
    root = open_root(store)
    return sorted(root[GROUP].group_keys()) if GROUP in root else []


def planes(root: zarr.Group, backbone: str) -> tuple[list[str], list[str]]:
    """The plane groups of `backbone`: (complete, still being created or interrupted)."""
    group = root[f"{GROUP}/{backbone}"]
    done, unfinished = [], []
    for plane in sorted(group.group_keys()):
        (done if complete(group[plane], ARRAYS) else unfinished).append(plane)
    return done, unfinished


def _open_plane(store: str, backbone: str, plane: str, series_per_chunk: int) -> xr.Dataset:
    with warnings.catch_warnings():  # coordinates are stored in larger chunks; they are loaded below
        warnings.filterwarnings("ignore", message="The specified chunks separate", category=UserWarning)
        ds = xr.open_zarr(str(store), group=plane_path(backbone, plane), consolidated=True,
                          chunks={"series": series_per_chunk})
    ds = ds.assign_coords(plane=("series", np.full(ds.sizes["series"], plane, dtype=object)))
    ds = ds.sortby("timestep")  # stored in the order added (growth appends); readers see them sorted
    ds.attrs = {"backbone_id": backbone}
    return ds.assign_coords({c: ds[c].load() for c in ("case_id", "patient_id", "scan")})


def volume_geometry(volumes: xr.Dataset) -> xr.Dataset:
    """The stored series' geometry (`volumes.geometry_coords`) by series, loaded, from the
    `open_volumes` Dataset."""
    from orthodiff.featurestore.volumes import geometry_coords  # volumes imports this module

    coords = geometry_coords(volumes)
    return xr.Dataset({name: (v.dims, v.values) for name, v in coords.items() if name != "axis"},
                      coords={"series": volumes.series.values, "axis": coords["axis"].values})


class IncompleteFeatures(UserWarning):
    """Some plane groups of the store are still being written (or their job was interrupted)."""


def readable_planes(path: str) -> dict[str, list[str]]:
    """Plane groups per backbone in the root's consolidated metadata: the state the last
    finished job left, which writers in progress do not change."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        try:
            view = zarr.open_group(str(path), mode="r", use_consolidated=True)
        except ValueError:  # never consolidated: the first job has not finished
            return {}
        if GROUP not in view:
            return {}
        return {b: sorted(p for p in view[f"{GROUP}/{b}"].group_keys() if complete(view[f"{GROUP}/{b}/{p}"], ARRAYS))
                for b in view[GROUP].group_keys()}


def view_is_current(store: str, backbone: str, plane: str, shape: tuple[int, ...]) -> bool:
    """Whether the consolidated metadata already shows the plane with activations of `shape`
    (else a finished job must consolidate, even one that had nothing left to compute)."""
    if plane not in readable_planes(store).get(backbone, []):
        return False
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        view = zarr.open_group(str(store), mode="r", use_consolidated=True)
        return tuple(view[f"{plane_path(backbone, plane)}/activation"].shape) == tuple(shape)


def feature_nodes(path: str, root: zarr.Group, backbone: str | list[str] | None = None, series_per_chunk: int = 64,
                  volumes: xr.Dataset | None = None) -> tuple[dict[str, xr.Dataset], list[str]]:
    """`open_store`'s feature nodes: `features/<backbone id>` (its attributes: the provenance)
    and `features/<backbone id>/<plane>` (lazy, timesteps sorted, the series' geometry from
    `volumes`, the `open_volumes` Dataset, when given), and the plane groups left out.

    Every plane is read as the last finished job left it (the root's consolidated metadata);
    a plane whose first extraction is still running (or was interrupted) is left out and named
    in an `IncompleteFeatures` warning. `backbone` (an id or a list) keeps only those."""
    on_disk = backbones(path)
    ids = on_disk if backbone is None else ([backbone] if isinstance(backbone, str) else list(backbone))
    unknown = [b for b in ids if b not in on_disk]
    if unknown:
        raise OrthodiffError(f"{path}: no features of backbone {unknown[0]!r}; the store has {on_disk}")
    readable = readable_planes(path)
    geometry = None if volumes is None else volume_geometry(volumes)
    nodes: dict[str, xr.Dataset] = {}
    incomplete = []
    for b in ids:
        for plane in sorted(root[f"{GROUP}/{b}"].group_keys()):
            if plane not in readable.get(b, []):
                incomplete.append(plane_path(b, plane))
                continue
            ds = _open_plane(path, b, plane, series_per_chunk)
            if geometry is not None:
                ds = ds.assign_coords(axis=geometry.axis.values, **{
                    name: values.variable for name, values in geometry.sel(series=ds.series.values).data_vars.items()})
            nodes.setdefault(f"{GROUP}/{b}", xr.Dataset(attrs=dict(root[f"{GROUP}/{b}"].attrs)))
            nodes[plane_path(b, plane)] = ds
    if incomplete:
        warnings.warn(f"{path}: {', '.join(incomplete)} not complete yet (an extraction is running or was "
                      "interrupted; rerun `orthodiff extract` to finish it): left out", IncompleteFeatures, stacklevel=3)
    return nodes, incomplete
