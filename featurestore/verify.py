"""`orthodiff store info` and `orthodiff store verify`."""

from __future__ import annotations

import dask.array as da
import fsspec
import numpy as np
import pandas as pd

from orthodiff.featurestore.features import (
    GROUP, SHARD_SERIES, Records, backbones, done_name, fingerprint, plane_path,
)
from orthodiff.featurestore.store import open_root
from orthodiff.featurestore.volumes import GROUP as VOLUMES


def _disk_bytes(store: str, path: str) -> int:
    fs, root = fsspec.core.url_to_fs(str(store))
    target = f"{root.rstrip('/')}/{path}"
    return sum(fs.du(target, total=False).values()) if fs.exists(target) else 0


def store_info(store: str) -> pd.DataFrame:
    """One row per group: backbone, plane, timesteps, blocks, series complete/total, bytes."""
    root = open_root(store)
    rows = []
    if VOLUMES in root:
        vol = root[VOLUMES]
        n = int(vol.attrs.get("n_series", 0))
        raw = n * int(np.prod(vol["volume"].shape[1:])) * 2
        disk = _disk_bytes(store, VOLUMES)
        rows.append({"group": "volumes", "plane": "all", "timesteps": "", "blocks": "", "series": f"{n}/{n}",
                     "MiB": disk / 2**20, "ratio": raw / disk if disk else np.nan})
    for backbone in backbones(store):
        for plane in sorted(root[f"{GROUP}/{backbone}"].group_keys()):
            pg = root[plane_path(backbone, plane)]
            act = pg["activation"]
            timesteps, blocks = pg["timestep"][:].tolist(), pg["block"][:].tolist()
            done = Records(store, backbone, plane).read()
            n = act.shape[0]
            complete = sum(
                min(SHARD_SERIES, n - start)
                for shard, start in enumerate(range(0, n, SHARD_SERIES))
                if all(done_name(shard, t, b) in done for t in timesteps for b in blocks)
            )
            disk = _disk_bytes(store, plane_path(backbone, plane))
            raw = int(np.prod(act.shape)) * act.dtype.itemsize
            rows.append({"group": f"features/{backbone}", "plane": plane,
                         "timesteps": ",".join(map(str, sorted(timesteps))), "blocks": ",".join(blocks),
                         "series": f"{complete}/{n}", "MiB": disk / 2**20, "ratio": raw / disk if disk else np.nan})
    return pd.DataFrame(rows)


def verify_store(store: str) -> list[str]:
    """Problems found (empty when the store is sound): shapes, completion records against
    content, NaN/Inf, provenance."""
    root = open_root(store)
    problems = []
    for backbone in backbones(store):
        prov = dict(root[f"{GROUP}/{backbone}"].attrs)
        if prov.get("backbone_id") != backbone:
            problems.append(f"features/{backbone}: provenance names backbone {prov.get('backbone_id')!r}")
        for plane in sorted(root[f"{GROUP}/{backbone}"].group_keys()):
            where = plane_path(backbone, plane)
            pg = root[where]
            act, gap = pg["activation"], pg["gap"]
            n, nt, nb = act.shape[:3]
            sizes = {"series": pg["series"].shape[0], "timestep": pg["timestep"].shape[0], "block": pg["block"].shape[0]}
            if (n, nt, nb) != tuple(sizes.values()) or gap.shape[:3] != act.shape[:3]:
                problems.append(f"{where}: array shapes {act.shape[:3]} / {gap.shape[:3]} disagree with coordinates {sizes}")
                continue
            ids = pg["series"][:].tolist()
            done = Records(store, backbone, plane).read()
            dtype = str(act.dtype)
            for shard, start in enumerate(range(0, n, SHARD_SERIES)):
                run = ids[start : start + SHARD_SERIES]
                for ti, t in enumerate(pg["timestep"][:].tolist()):
                    for bi, b in enumerate(pg["block"][:].tolist()):
                        name = done_name(shard, t, b)
                        if name not in done:
                            problems.append(f"{where}: series {start}-{start + len(run) - 1} at t={t} {b} not complete")
                        elif done[name] != fingerprint(prov, run, t, b, dtype):
                            problems.append(f"{where}: series {start}-{start + len(run) - 1} at t={t} {b}: record does not match the data's settings")
            try:
                finite = bool(da.isfinite(da.from_zarr(act).astype("float32")).all().compute())
                finite &= bool(da.isfinite(da.from_zarr(gap)).all().compute())
            except Exception as err:  # a damaged shard fails to decode
                problems.append(f"{where}: unreadable data ({type(err).__name__}: {err})")
                continue
            if not finite:
                problems.append(f"{where}: NaN or Inf values")
    return problems
