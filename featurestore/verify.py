"""`orthodiff store info` and `orthodiff store verify`: every stored kind (volumes, features,
personas, radiomics)."""

from __future__ import annotations

import fsspec
import numpy as np
import pandas as pd

from orthodiff.featurestore.features import (
    GROUP, SHARD_SERIES, Records, backbones, content_digest, done_name, fingerprint, plane_path, planes,
    readable_planes,
)
from orthodiff.featurestore.series_groups import check_group, info_rows, kind_groups
from orthodiff.featurestore.store import complete, open_root
from orthodiff.featurestore.volumes import ARRAYS, GROUP as VOLUMES, count, row_digest, volume_records


def _disk_bytes(store: str, path: str) -> int:
    fs, root = fsspec.core.url_to_fs(str(store))
    target = f"{root.rstrip('/')}/{path}"
    return sum(fs.du(target, total=False).values()) if fs.exists(target) else 0


def store_info(store: str) -> pd.DataFrame:
    """One row per group: backbone, plane, timesteps, blocks, series complete/total, bytes."""
    root = open_root(store)
    rows = []
    if VOLUMES in root and count(root[VOLUMES]):
        vol = root[VOLUMES]
        n = count(vol)
        raw = n * int(np.prod(vol["volume"].shape[1:])) * 2
        disk = _disk_bytes(store, VOLUMES)
        rows.append({"group": "volumes", "plane": "all", "timesteps": "", "blocks": "", "series": f"{n}/{n}",
                     "MiB": disk / 2**20, "ratio": raw / disk if disk else np.nan})
    for backbone in backbones(store):
        done_planes, unfinished = planes(root, backbone)
        for plane in unfinished:
            rows.append({"group": f"features/{backbone}", "plane": plane, "timesteps": "", "blocks": "",
                         "series": "being created", "MiB": _disk_bytes(store, plane_path(backbone, plane)) / 2**20,
                         "ratio": np.nan})
        for plane in done_planes:
            pg = root[plane_path(backbone, plane)]
            act = pg["activation"]
            timesteps, blocks = pg["timestep"][:].tolist(), pg["block"][:].tolist()
            done = Records(store, backbone, plane).read()
            n = act.shape[0]
            finished = sum(
                min(SHARD_SERIES, n - start)
                for shard, start in enumerate(range(0, n, SHARD_SERIES))
                if all(done_name(shard, t, b) in done for t in timesteps for b in blocks)
            )
            disk = _disk_bytes(store, plane_path(backbone, plane))
            raw = int(np.prod(act.shape)) * act.dtype.itemsize
            rows.append({"group": f"features/{backbone}", "plane": plane,
                         "timesteps": ",".join(map(str, sorted(timesteps))), "blocks": ",".join(blocks),
                         "series": f"{finished}/{n}", "MiB": disk / 2**20, "ratio": raw / disk if disk else np.nan})
    return pd.DataFrame(rows + info_rows(store, root, _disk_bytes))


def verify_store(store: str) -> list[str]:
    """Problems found (empty when the store is sound): shapes, completion records, content
    checksums of volumes, feature units and the shards of personas and radiomics, NaN/Inf,
    provenance. Every damaged unit is named."""
    root = open_root(store)
    problems = check_volumes(store, root)[0]
    for backbone in backbones(store):
        prov = dict(root[f"{GROUP}/{backbone}"].attrs)
        if prov.get("backbone_id") != backbone:
            problems.append(f"features/{backbone}: provenance names backbone {prov.get('backbone_id')!r}")
        done_planes, unfinished = planes(root, backbone)
        readable = readable_planes(store).get(backbone, [])
        problems += [f"{plane_path(backbone, p)}: first extraction not finished (a job is running it or was "
                     "interrupted; rerun `orthodiff extract` for this plane)"
                     for p in unfinished + [p for p in done_planes if p not in readable]]
        for plane in done_planes:
            problems += check_plane(store, root, prov, plane)[0]
    for path in kind_groups(root):
        problems += check_group(store, root, path)[0]
    return problems


def _damaged(where: str, what: str, err: Exception | None = None) -> str:
    why = f"unreadable ({type(err).__name__}: {err})" if err else "content does not match its checksum"
    return f"{where}: {what}: {why}"


def check_plane(store: str, root, prov: dict, plane: str) -> tuple[list[str], list[tuple[str, int, int, int]]]:
    """(problems, damaged units as (record name, shard, timestep index, block index)) of one plane group."""
    backbone = prov["backbone_id"]
    where = plane_path(backbone, plane)
    pg = root[where]
    act, gap = pg["activation"], pg["gap"]
    n, nt, nb = act.shape[:3]
    sizes = {"series": pg["series"].shape[0], "timestep": pg["timestep"].shape[0], "block": pg["block"].shape[0]}
    if (n, nt, nb) != tuple(sizes.values()) or gap.shape[:3] != act.shape[:3]:
        return [f"{where}: array shapes {act.shape[:3]} / {gap.shape[:3]} disagree with coordinates {sizes}"], []
    ids = pg["series"][:].tolist()
    done = Records(store, backbone, plane).read()
    dtype = str(act.dtype)
    problems, damaged = [], []
    for shard, start in enumerate(range(0, n, SHARD_SERIES)):
        run = ids[start : start + SHARD_SERIES]
        rows = slice(start, start + len(run))
        for ti, t in enumerate(pg["timestep"][:].tolist()):
            for bi, b in enumerate(pg["block"][:].tolist()):
                name, unit = done_name(shard, t, b), f"series {start}-{start + len(run) - 1} at t={t} {b}"
                record = done.get(name)
                if record is None:
                    problems.append(f"{where}: {unit} not complete")
                    continue
                if record.get("fingerprint") != fingerprint(prov, run, t, b, dtype, precision=pg.attrs.get("precision", "fp32")):
                    problems.append(f"{where}: {unit}: record does not match the data's settings")
                    continue
                try:
                    values = act[rows, ti, bi], gap[rows, ti, bi]
                except Exception as err:  # a damaged shard fails to decode; the codec names why
                    problems.append(_damaged(where, unit, err))
                    damaged.append((name, shard, ti, bi))
                    continue
                if "digest" in record and record["digest"] != content_digest(*values):
                    problems.append(_damaged(where, unit))
                    damaged.append((name, shard, ti, bi))
                if not all(np.isfinite(v.astype("float32")).all() for v in values):
                    problems.append(f"{where}: {unit}: NaN or Inf values")
    if damaged:
        problems.append(f"{where}: `orthodiff extract --repair` recomputes the {len(damaged)} damaged unit(s)")
    return problems, damaged


def check_volumes(store: str, root) -> tuple[list[str], list[int]]:
    """(problems, damaged rows) of the volumes: every row against the checksum written with it."""
    if VOLUMES not in root:
        return [], []
    group = root[VOLUMES]
    if not complete(group, ARRAYS):
        return [f"{VOLUMES}: creation not finished (the first ingest was interrupted; rerun `orthodiff ingest`)"], []
    n = count(group)
    series = group["series"][:n].tolist() if n else []
    problems, damaged = [], []
    for record in volume_records(store, n):
        for row, (sid, digest) in enumerate(zip(record["series"], record["digest"]), start=record["start"]):
            what = f"row {row} (series {sid!r})"
            if row >= n or series[row] != sid:
                problems.append(f"{VOLUMES}: {what}: checksum record names another series")
                continue
            try:
                ok = row_digest(group, row) == digest
            except Exception as err:
                problems.append(_damaged(VOLUMES, what, err))
                damaged.append(row)
                continue
            if not ok:
                problems.append(_damaged(VOLUMES, what))
                damaged.append(row)
    if problems:
        problems.append(f"{VOLUMES}: `orthodiff ingest --catalog CATALOG --store {store} --repair` reads the damaged series again")
    return problems, damaged
