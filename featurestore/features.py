"""Feature groups of a store: layout, templates, completion records, and `open_store`.

Layout (every plane group is a plain xarray dataset: `xarray.open_zarr(store,
group="features/<backbone>/<plane>")`):

    features/<backbone id>/                 attrs: provenance (checkpoint hash, preset, noise
      <plane>/                                 seed and policy, preprocessing, version, created)
        activation(series, timestep, block, channel, z, y, x)   float16 (or float32)
        gap(series, timestep, block, channel)                    float32, spatial mean
        series, case_id, patient_id, scan                         coordinates on series
        timestep (int), block (str)                               labels, in the order added
                                                                  (`open_store` sorts timesteps)
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

import fsspec
import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

from orthodiff.errors import OrthodiffError
from orthodiff.featurestore.store import open_root

GROUP = "features"
SHARD_SERIES = 16
RECORDS = "_records"  # outside the Zarr hierarchy, so readers never list them
NOISE_POLICY = "noise ~ N(0, 1) seeded by sha256(seed, series_id, timestep); x_t = q_sample(x0, t, noise)"
COMPRESSOR = BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.shuffle)


def plane_path(backbone: str, plane: str) -> str:
    return f"{GROUP}/{backbone}/{plane}"


def fingerprint(provenance: dict, series: list[str], timestep: int, block: str, dtype: str) -> str:
    """What a completed unit must match: weights, noise, preprocessing, codec, dtype, series."""
    keys = ("backbone_id", "noise_seed", "noise_policy", "preprocessing", "schema")
    payload = json.dumps([{k: provenance.get(k) for k in keys}, series, timestep, block, dtype, COMPRESSOR.to_dict()],
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def done_name(shard: int, timestep: int, block: str) -> str:
    return f"{shard:06d}-t{timestep:04d}-{block}.json"


class Records:
    """Completion records of one plane group, as small files under `_records/` (any fsspec URL)."""

    def __init__(self, store: str, backbone: str, plane: str):
        self.fs, root = fsspec.core.url_to_fs(str(store))
        self.dir = f"{root.rstrip('/')}/{RECORDS}/{backbone}/{plane}"

    def read(self) -> dict[str, str]:
        if not self.fs.exists(self.dir):
            return {}
        out = {}
        for path in self.fs.ls(self.dir, detail=False):
            name = path.rsplit("/", 1)[-1]
            if name.endswith(".json"):
                try:
                    out[name] = json.loads(self.fs.cat_file(path))["fingerprint"]
                except (ValueError, KeyError):
                    continue  # a damaged record is no record: the unit is redone
        return out

    def write(self, name: str, record: dict) -> None:
        """Write via a temporary name and rename, so a record is whole or absent."""
        self.fs.makedirs(self.dir, exist_ok=True)
        tmp = f"{self.dir}/.{name}.tmp"
        with self.fs.open(tmp, "w") as f:
            f.write(json.dumps(record, sort_keys=True))
        self.fs.mv(tmp, f"{self.dir}/{name}")


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


def prepare_plane(store: str, prov: dict, plane: str, series: list[dict], timesteps: list[int],
                  blocks: list[str], shape: tuple[int, ...], dtype: str) -> zarr.Group:
    """Create or grow the plane group so it holds `series` x `timesteps` x `blocks`.

    Creation is exclusive: of two jobs racing to create, one wins and the other opens and
    checks what the winner made. Growth appends along series, timestep and block."""
    root = open_root(store)
    backbone = prov["backbone_id"]
    try:
        group = root.create_group(f"{GROUP}/{backbone}", attributes=prov, overwrite=False)
    except zarr.errors.ContainsGroupError:
        group = root[f"{GROUP}/{backbone}"]
        if not _same(dict(group.attrs), prov):
            raise OrthodiffError(f"{store}: features/{backbone} was written with other settings (seed, preset or preprocessing)")
    try:
        pg = group.create_group(plane, overwrite=False)
        _create_arrays(pg, shape, dtype)
    except zarr.errors.ContainsGroupError:
        pg = group[plane]
        if "activation" not in pg:  # the other job is between creating the group and its arrays
            try:
                _create_arrays(pg, shape, dtype)
            except zarr.errors.ContainsArrayError:
                pass
    act = pg["activation"]
    if tuple(act.shape[3:]) != tuple(shape) or str(act.dtype) != dtype:
        raise OrthodiffError(
            f"{store}: {plane_path(backbone, plane)} holds {act.dtype} activations of shape {act.shape[3:]}, "
            f"not {dtype} {tuple(shape)}"
        )
    _grow(pg, "timestep", [int(t) for t in timesteps], axis=1)
    _grow(pg, "block", list(blocks), axis=2)
    _grow_series(pg, series)
    return pg


def _create_arrays(pg: zarr.Group, shape: tuple[int, ...], dtype: str) -> None:
    c = shape[0]
    pg.create_array(
        "activation", shape=(0, 0, 0, *shape), chunks=(1, 1, 1, *shape), shards=(SHARD_SERIES, 1, 1, *shape),
        dtype=dtype, compressors=COMPRESSOR, fill_value=0,
        dimension_names=["series", "timestep", "block", "channel", "z", "y", "x"],
        attributes={"coordinates": "case_id patient_id scan"},
    )
    pg.create_array("gap", shape=(0, 0, 0, c), chunks=(SHARD_SERIES, 1, 1, c), dtype="float32", fill_value=np.nan,
                    dimension_names=["series", "timestep", "block", "channel"],
                    attributes={"coordinates": "case_id patient_id scan"})
    for name in ("series", "case_id", "patient_id"):
        pg.create_array(name, shape=(0,), chunks=(4096,), dtype=str, dimension_names=["series"])
    pg.create_array("scan", shape=(0,), chunks=(4096,), dtype="int16", dimension_names=["series"])
    pg.create_array("timestep", shape=(0,), chunks=(1024,), dtype="int32", dimension_names=["timestep"])
    pg.create_array("block", shape=(0,), chunks=(1024,), dtype=str, dimension_names=["block"])


def _grow(pg: zarr.Group, name: str, wanted: list, axis: int) -> None:
    have = pg[name][:].tolist() if pg[name].shape[0] else []
    new = [v for v in wanted if v not in have]
    if not new:
        return
    n = len(have)
    for array in (pg["activation"], pg["gap"]):
        shape = list(array.shape)
        shape[axis] = n + len(new)
        array.resize(tuple(shape))
    pg[name].resize((n + len(new),))
    pg[name][n:] = np.asarray(new, dtype=object if name == "block" else "int32")


def _grow_series(pg: zarr.Group, series: list[dict]) -> None:
    have = pg["series"][:].tolist() if pg["series"].shape[0] else []
    new = [s for s in series if s["series_id"] not in set(have)]
    if not new:
        return
    n, m = len(have), len(new)
    for array in (pg["activation"], pg["gap"]):
        array.resize((n + m, *array.shape[1:]))
    for name in ("series", "case_id", "patient_id", "scan"):
        pg[name].resize((n + m,))
        values = [s["series_id" if name == "series" else name] for s in new]
        pg[name][n:] = np.asarray(values, dtype="int16" if name == "scan" else object)


def backbones(store: str) -> list[str]:
    root = open_root(store)
    return sorted(root[GROUP].group_keys()) if GROUP in root else []


def _open_plane(store: str, backbone: str, plane: str, series_per_chunk: int) -> xr.Dataset:
    with warnings.catch_warnings():  # coordinates are stored in larger chunks; they are loaded below
        warnings.filterwarnings("ignore", message="The specified chunks separate", category=UserWarning)
        ds = xr.open_zarr(str(store), group=plane_path(backbone, plane), consolidated=True,
                          chunks={"series": series_per_chunk})
    ds = ds.assign_coords(plane=("series", np.full(ds.sizes["series"], plane, dtype=object)))
    ds = ds.sortby("timestep")  # stored in the order added (growth appends); readers see them sorted
    ds.attrs = {"backbone_id": backbone}
    return ds.assign_coords({c: ds[c].load() for c in ("case_id", "patient_id", "scan")})


def open_store(path: str, backbone: str | list[str] | None = None, catalog=None, series_per_chunk: int = 64) -> xr.Dataset:
    """The store's features as one lazy Dataset over all planes' series.

    `activation(series, timestep, block, channel, z, y, x)` and `gap(series, timestep, block,
    channel)`, with `plane`, `case_id`, `patient_id`, `scan` on `series`, and with a catalog
    (path or DataFrame) its split, labels, acquisition and EHR columns too. Each plane's
    features come from the one backbone holding them (pass `backbone` when several do).
    Timesteps and blocks are the union over planes; a configuration a plane lacks is NaN for
    its series, and the `configurations` attribute (JSON) lists what each plane holds.
    """
    import pandas as pd

    root = open_root(path)
    ids = backbones(path) if backbone is None else ([backbone] if isinstance(backbone, str) else list(backbone))
    unknown = [b for b in ids if GROUP not in root or b not in root[GROUP]]
    if unknown:
        raise OrthodiffError(f"{path}: no features of backbone {unknown[0]!r}; the store has {backbones(path)}")
    if not ids:
        raise OrthodiffError(f"{path}: no features in this store (run `orthodiff extract` first)")
    per_plane: dict[str, str] = {}
    for b in ids:
        for plane in root[f"{GROUP}/{b}"].group_keys():
            if plane in per_plane:
                raise OrthodiffError(
                    f"{path}: {plane} features from backbones {per_plane[plane]} and {b}; choose with backbone="
                )
            per_plane[plane] = b
    parts = [_open_plane(path, b, plane, series_per_chunk) for plane, b in sorted(per_plane.items())]
    # planes may hold different timesteps or blocks (e.g. fine-tuned backbones extracted at
    # their own configuration): the union is kept, NaN where a plane lacks a configuration
    ds = xr.concat(parts, dim="series", join="outer", combine_attrs="drop") if len(parts) > 1 else parts[0]
    configurations = {p.plane.values[0]: {"timestep": p.timestep.values.tolist(), "block": p.block.values.tolist()}
                      for p in parts if p.sizes["series"]}
    ds.attrs = {"backbones": json.dumps(per_plane), "configurations": json.dumps(configurations)}
    if catalog is not None:
        from orthodiff.catalogs.cohort import read_catalog

        df = catalog if isinstance(catalog, pd.DataFrame) else read_catalog(catalog)
        df = df.set_index("series_id").reindex(ds.series.values)
        extra = [c for c in df.columns if c not in ds.coords and c not in ("path", "mask_path")]
        ds = ds.assign_coords({c: ("series", df[c].to_numpy()) for c in extra})
    return ds
