"""`orthodiff extract`: every timestep x block middle-block activation of a plane's series.

The work is cut into tasks of `SHARD_SERIES` consecutive series (one shard per timestep and
block): a task runs the backbone once per (series, timestep), timesteps batched, keeps all
requested blocks from that one pass, writes its whole shards, then records completion.
Noise depends only on (seed, series, timestep), so batching, workers and reruns do not
change a byte. Tasks run in this process, on a local Dask cluster (`workers`), or on an
existing one (`scheduler`).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from orthodiff.backbone import MIDDLE_BLOCKS, backbone_id, load_backbone
from orthodiff.backbone.checkpoint import read_checkpoint
from orthodiff.backbone.diffusion import T, GaussianDiffusion, keyed_noise, noise_key
from orthodiff.catalogs.tasks import PLANES
from orthodiff.errors import OrthodiffError
from orthodiff.featurestore.features import (
    SHARD_SERIES, Records, done_name, fingerprint, plane_path, prepare_plane, provenance,
)
from orthodiff.featurestore.store import consolidate, open_root
from orthodiff.featurestore.volumes import GROUP as VOLUMES, open_volumes
from orthodiff.progress import Advance, maybe_progress

TIMESTEPS = (10, 30, 50, 100, 150, 200, 300, 500)


@functools.lru_cache(maxsize=2)
def _model(checkpoint: str, device: str | None):
    """One loaded backbone per worker process, reused across its tasks."""
    return load_backbone(checkpoint, device)


@dataclass(frozen=True)
class Task:
    """One run of series (one shard index), their rows in the volumes, and the (timestep,
    block) units it still lacks."""

    shard: int
    start: int
    series: tuple[str, ...]
    units: tuple[tuple[int, str], ...]
    volume_rows: tuple[int, ...]


def run_task(task: Task, store: str, checkpoint: str, plane: str, backbone: str, prov: dict,
             dtype: str, series_batch: int = 1, device: str | None = None) -> int:
    """Compute and write one task's shards, then its completion records; returns its series count."""
    import zarr

    model = _model(checkpoint, device)
    diffusion = GaussianDiffusion()
    group = zarr.open_group(str(store), path=plane_path(backbone, plane), mode="r+", use_consolidated=False)
    timesteps_have = group["timestep"][:].tolist()
    blocks_have = group["block"][:].tolist()
    # rows located at planning time: a task reads only its own volume chunks, not the index
    volumes = zarr.open_array(str(store), path=f"{VOLUMES}/volume", mode="r").get_orthogonal_selection(
        (list(task.volume_rows),)).astype(np.float32)
    timesteps = sorted({t for t, _ in task.units})
    blocks = tuple(b for b in MIDDLE_BLOCKS if any(b == u for _, u in task.units))
    out = {unit: [] for unit in task.units}
    for i in range(0, len(task.series), series_batch):
        ids = task.series[i : i + series_batch]
        x0 = torch.from_numpy(volumes[i : i + series_batch])[:, None].repeat_interleave(len(timesteps), 0)
        t = torch.tensor(timesteps * len(ids))
        noise = keyed_noise([noise_key(prov["noise_seed"], s, ts) for s in ids for ts in timesteps], x0.shape[1:])
        with torch.no_grad():
            x_t = diffusion.q_sample(x0, t, noise).to(model.device)
            feats = model.middle_features(x_t, t.to(model.device), blocks)
        for block in blocks:
            values = feats[block].float().cpu().numpy().reshape(len(ids), len(timesteps), *feats[block].shape[1:])
            for k, ts in enumerate(timesteps):
                if (ts, block) in out:
                    out[(ts, block)].append(values[:, k])
    rows = slice(task.start, task.start + len(task.series))
    records = Records(store, backbone, plane)
    for (ts, block), parts in out.items():
        data = np.concatenate(parts)
        ti, bi = timesteps_have.index(ts), blocks_have.index(block)
        group["activation"][rows, ti, bi] = data.astype(dtype)
        group["gap"][rows, ti, bi] = data.reshape(*data.shape[:2], -1).mean(-1)
        fp = fingerprint(prov, list(task.series), ts, block, dtype)
        records.write(done_name(task.shard, ts, block), {"fingerprint": fp, "series": len(task.series)})
    return len(task.series)


def _check_request(plane: str, timesteps, blocks, dtype: str) -> None:
    if plane not in PLANES:
        raise OrthodiffError(f"--plane {plane!r}: expected one of {list(PLANES)}")
    bad = [t for t in timesteps if not 0 <= int(t) < T]
    if bad:
        raise OrthodiffError(f"--timesteps: {bad[0]} is outside [0, {T})")
    unknown = [b for b in blocks if b not in MIDDLE_BLOCKS]
    if unknown:
        raise OrthodiffError(f"--blocks: unknown block {unknown[0]!r}; expected {list(MIDDLE_BLOCKS)}")
    if dtype not in ("float16", "float32"):
        raise OrthodiffError(f"--dtype {dtype!r}: expected float16 or float32")


def plan(store: str, checkpoint: str, plane: str, timesteps=TIMESTEPS, blocks=MIDDLE_BLOCKS,
         dtype: str = "float16", seed: int = 0) -> tuple[dict, list[Task]]:
    """Check the request, create or grow the plane's arrays, and list the missing work."""
    _check_request(plane, timesteps, blocks, dtype)
    open_root(store)
    ckpt = read_checkpoint(checkpoint)
    trained_on = ckpt.get("plane")
    if trained_on and trained_on != plane:
        raise OrthodiffError(f"{checkpoint}: backbone trained on {trained_on} series cannot extract {plane} features")
    model = load_backbone(checkpoint, "cpu", ckpt)
    ds = open_volumes(store)
    row_of = {s: i for i, s in enumerate(ds.series.values.tolist())}
    ds = ds.isel(series=np.flatnonzero(ds.plane.values == plane))
    if not ds.sizes["series"]:
        raise OrthodiffError(f"{store}: no {plane} volumes (ingest them first)")
    if ds.sizes["x"] != model.config.image_size:
        raise OrthodiffError(
            f"{checkpoint}: backbone expects {model.config.image_size} px volumes, the store holds {ds.sizes['x']} px"
        )
    bid = backbone_id(checkpoint, ckpt)
    prov = provenance(bid, ckpt.get("preset") or "custom", model.config.to_dict(), checkpoint, seed, ds.sizes["x"])
    series = pd.DataFrame({"series_id": ds.series.values, "case_id": ds.case_id.values,
                           "patient_id": ds.patient_id.values, "scan": ds.scan.values}).to_dict("records")
    group = prepare_plane(store, prov, plane, series, [int(t) for t in timesteps], list(blocks),
                          model.config.middle_shape, dtype)
    prov = dict(open_root(store)[f"features/{bid}"].attrs)  # as first written (its `created`)
    ids = group["series"][:].tolist()
    done = Records(store, bid, plane).read()
    tasks = []
    for shard, start in enumerate(range(0, len(ids), SHARD_SERIES)):
        run = tuple(ids[start : start + SHARD_SERIES])
        units = tuple((int(t), b) for t in timesteps for b in blocks
                      if done.get(done_name(shard, int(t), b)) != fingerprint(prov, list(run), int(t), b, dtype))
        if units:
            tasks.append(Task(shard, start, run, units, tuple(row_of[s] for s in run)))
    return prov, tasks


def extract(store: str, checkpoint: str, plane: str, timesteps=TIMESTEPS, blocks=MIDDLE_BLOCKS,
            dtype: str = "float16", seed: int = 0, series_batch: int = 1, workers: int | None = None,
            scheduler: str | None = None, device: str | None = None, progress: bool | Advance = True) -> dict:
    """Extract what is missing for `plane`; returns counts of series and tasks and the time."""
    store, checkpoint = str(store), str(checkpoint)
    prov, tasks = plan(store, checkpoint, plane, timesteps, blocks, dtype, seed)
    bid = prov["backbone_id"]
    args = (store, checkpoint, plane, bid, prov, dtype, max(series_batch, 1), device)
    total = sum(len(t.series) for t in tasks)
    start = time.perf_counter()
    with maybe_progress(progress, f"extract {plane}", total, "series") as advance:
        if workers or scheduler:
            from dask.distributed import Client, LocalCluster, as_completed

            cluster = None if scheduler else LocalCluster(n_workers=workers, threads_per_worker=1, processes=True)
            with Client(scheduler or cluster) as client:
                futures = [client.submit(run_task, t, *args, pure=False) for t in tasks]
                for future in as_completed(futures):
                    advance(future.result())
            if cluster is not None:
                cluster.close()
        else:
            for task in tasks:
                advance(run_task(task, *args))
    consolidate(store)
    return {"backbone": bid, "plane": plane, "series": total, "tasks": len(tasks),
            "seconds": round(time.perf_counter() - start, 2)}
