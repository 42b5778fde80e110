"""`orthodiff extract`: every timestep x block middle-block activation of a plane's series.

The work is cut into tasks of `SHARD_SERIES` consecutive series (one shard per timestep and
block): a task runs encoder + middle block once per (series, timestep), in batches of
`series_batch` of its series at one timestep, keeps all requested blocks from that one
pass, writes its whole shards (in a background thread), then records completion. Noise
depends only on (seed, series, timestep) and the batches only on the task's series, so
workers, resumes and reruns do not change a byte; `series_batch`, the device,
`precision` and `compiled` change float rounding. Tasks run in this process, on a local Dask cluster (`workers`), or on an
existing one (`scheduler`).
"""

from __future__ import annotations

import functools
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import torch
import zarr

from orthodiff.backbone import MIDDLE_BLOCKS, backbone_id, load_backbone
from orthodiff.backbone.allocator import reuse_freed_memory
from orthodiff.backbone.checkpoint import read_checkpoint
from orthodiff.backbone.diffusion import NUM_TIMESTEPS, NoiseScheduler, keyed_noise, noise_key
from orthodiff.backbone.precision import Compiled, check_precision, inference_context, inference_input, inference_model
from orthodiff.catalogs.tasks import PLANES
from orthodiff.errors import OrthodiffError
from orthodiff.faults import fault
from orthodiff.featurestore.features import (
    SHARD_SERIES, Records, content_digest, done_name, drop_temporaries, fingerprint, plane_path, prepare_plane,
    provenance, remove_unit, view_is_current,
)
from orthodiff.featurestore.jobs import Task, run_tasks
from orthodiff.featurestore.store import consolidate, open_root
from orthodiff.featurestore.verify import check_plane
from orthodiff.featurestore.volumes import GROUP as VOLUMES, plane_volumes
from orthodiff.progress import Advance

TIMESTEPS = (10, 30, 50, 100, 150, 200, 300, 500)
PRECISION = "fp32"


@functools.lru_cache(maxsize=2)
def _model(checkpoint: str, device: str | None):
    """One loaded backbone per worker process, reused across its tasks."""
    return load_backbone(checkpoint, device)


@functools.lru_cache(maxsize=2)
def _network(checkpoint: str, device: str | None, precision: str, compiled: bool):
    """One backbone per worker process on the fast path of `precision` (`inference_model`),
    and its compiled `middle_features` when asked (falling back to eager), else None."""
    model = inference_model(load_backbone(checkpoint, device), precision)
    return model, Compiled(model.middle_features, precision) if compiled else None


def task_volumes(store: str, task: Task) -> np.ndarray:
    """The task's preprocessed volumes, (series, z, y, x) float32; rows located at planning
    time, so a task reads only its own volume chunks, not the index."""
    try:
        return zarr.open_array(str(store), path=f"{VOLUMES}/volume", mode="r").get_orthogonal_selection(
            (list(task.volume_rows),)).astype(np.float32)
    except Exception as err:  # a damaged chunk fails in its codec
        raise OrthodiffError(
            f"{store}: volumes of series {task.series[0]}..{task.series[-1]} are unreadable ({type(err).__name__}: "
            f"{err}); `orthodiff store verify` names the damaged ones, `orthodiff ingest --repair` reads them again"
        ) from None


def forward_timestep(model, volumes: np.ndarray, series: tuple[str, ...], timestep: int, blocks: tuple[str, ...],
                     seed: int, series_batch: int, precision: str, forward=None) -> tuple[dict[str, np.ndarray], float]:
    """Middle-block outputs (float32, (series, C, z, y, x)) of all `series` at one timestep,
    and the seconds spent inside the network.

    The batches are fixed runs of `series_batch` series of the task at one timestep, so
    what a unit's bytes depend on (its series, timestep, batch neighbours, precision) does
    not depend on which other units are missing: a resumed task writes the same bytes as an
    uninterrupted one. `model` runs in its own dtype and channels-last (`inference_input`);
    `forward` replaces its `middle_features` (a compiled one): it gets every batch padded
    with zero volumes to `series_batch` rows, so it compiles for one input shape only (a
    short batch's padding costs a fraction of a forward, a second compilation ~10 s).
    """
    scheduler, parts, network = NoiseScheduler(), {b: [] for b in blocks}, 0.0
    for i in range(0, len(series), series_batch):
        ids = series[i : i + series_batch]
        x0 = torch.from_numpy(volumes[i : i + len(ids)])[:, None]
        t = torch.full((len(ids),), timestep, dtype=torch.long)
        noise = keyed_noise([noise_key(seed, s, timestep) for s in ids], x0.shape[1:])
        x_t = scheduler.add_noise(x0, noise, t)
        if forward is not None and len(ids) < series_batch:
            x_t = torch.cat([x_t, x_t.new_zeros((series_batch - len(ids), *x_t.shape[1:]))])
            t = torch.full((series_batch,), timestep, dtype=torch.long)
        x_t = inference_input(x_t, model)
        start = time.perf_counter()
        with torch.no_grad(), inference_context(model.device, precision):
            feats = (forward or model.middle_features)(x_t, t.to(model.device), blocks)
            # float32 in the plain layout, on the CPU (waits for the device), the padding dropped
            feats = {b: v[: len(ids)].to("cpu", torch.float32, memory_format=torch.contiguous_format)
                     for b, v in feats.items()}
        network += time.perf_counter() - start
        for b in blocks:
            parts[b].append(feats[b].numpy())
    return {b: np.concatenate(v) for b, v in parts.items()}, network


def _write_timestep(group, records: Records, task: Task, prov: dict, timestep: int, feats: dict[str, np.ndarray],
                    index: tuple[int, dict[str, int]], dtype: str, precision: str) -> None:
    """Write a timestep's missing units (activations, GAP), then each unit's completion record."""
    rows = slice(task.start, task.start + len(task.series))
    ti, block_index = index
    for block, data in feats.items():
        if (timestep, block) not in task.units:
            continue
        activation = data.astype(dtype)
        gap = data.reshape(*data.shape[:2], -1).mean(-1, dtype=np.float32)
        group["activation"][rows, ti, block_index[block]] = activation
        group["gap"][rows, ti, block_index[block]] = gap
        fp = fingerprint(prov, list(task.series), timestep, block, dtype, precision=precision)
        fault("extract:record")
        records.write(done_name(task.shard, timestep, block), unit_record(fp, len(task.series), activation, gap))


def unit_record(fp: str, n_series: int, activation: np.ndarray, gap: np.ndarray) -> dict:
    """A unit's completion record: its settings' fingerprint and the checksum of the values written."""
    return {"fingerprint": fp, "series": n_series, "digest": content_digest(activation, gap)}


def run_task(task: Task, store: str, checkpoint: str, plane: str, backbone: str, prov: dict,
             dtype: str, series_batch: int = 8, device: str | None = None, precision: str = "fp32",
             compiled: bool = False, volumes: np.ndarray | None = None) -> dict:
    """Compute and write one task's shards, then their completion records.

    The network runs in this thread while a background thread compresses and writes the
    previous timestep's shards, so it never waits for the store. Returns the series count
    and the seconds spent inside the network and in the whole task."""
    start = time.perf_counter()
    reuse_freed_memory()
    model, forward = _network(checkpoint, device, str(precision), compiled)
    group = zarr.open_group(str(store), path=plane_path(backbone, plane), mode="r+", use_consolidated=False)
    timesteps_have = group["timestep"][:].tolist()
    block_index = {b: i for i, b in enumerate(group["block"][:].tolist())}
    if volumes is None:
        volumes = task_volumes(store, task)
    blocks = tuple(b for b in MIDDLE_BLOCKS if any(b == u for _, u in task.units))
    records = Records(store, backbone, plane)
    network, pending = 0.0, None
    with ThreadPoolExecutor(1, thread_name_prefix="orthodiff-writer") as writer:
        for ts in sorted({t for t, _ in task.units}):
            feats, seconds = forward_timestep(model, volumes, task.series, ts, blocks, prov["noise_seed"],
                                              series_batch, precision, forward)
            network += seconds
            if pending is not None:
                pending.result()  # at most one timestep waits to be written
            pending = writer.submit(_write_timestep, group, records, task, prov, ts, feats,
                                    (timesteps_have.index(ts), block_index), dtype, precision)
        if pending is not None:
            pending.result()
    return {"series": len(task.series), "network_s": network, "task_s": time.perf_counter() - start}


def _check_request(plane: str, timesteps, blocks, dtype: str) -> None:
    """Everything about the request that can be wrong, checked before anything is written."""
    if plane not in PLANES:
        raise OrthodiffError(f"--plane {plane!r}: expected one of {list(PLANES)}")
    for option, values in (("--timesteps", list(timesteps)), ("--blocks", list(blocks))):
        if not values:
            raise OrthodiffError(f"{option}: empty; give at least one value")
        repeated = [v for i, v in enumerate(values) if v in values[:i]]
        if repeated:
            raise OrthodiffError(f"{option}: {repeated[0]!r} is given twice; list each value once")
    bad = [t for t in timesteps if not 0 <= int(t) < NUM_TIMESTEPS]
    if bad:
        raise OrthodiffError(f"--timesteps: {bad[0]} is outside [0, {NUM_TIMESTEPS})")
    unknown = [b for b in blocks if b not in MIDDLE_BLOCKS]
    if unknown:
        raise OrthodiffError(f"--blocks: unknown block {unknown[0]!r}; expected {list(MIDDLE_BLOCKS)}")
    if dtype not in ("float16", "float32"):
        raise OrthodiffError(f"--dtype {dtype!r}: expected float16 or float32")


def plan(store: str, checkpoint: str, plane: str, timesteps=TIMESTEPS, blocks=MIDDLE_BLOCKS,
         dtype: str = "float16", seed: int = 0, precision: str = PRECISION,
         repair: bool = False) -> tuple[dict, list[Task]]:
    """Check the request, create or grow the plane's arrays, and list the missing work
    (with `repair`, also the units whose content fails its checksum)."""
    _check_request(plane, timesteps, blocks, dtype)
    check_precision(precision)
    open_root(store)
    ckpt = read_checkpoint(checkpoint)
    trained_on = ckpt.get("plane")
    if trained_on and trained_on != plane:
        raise OrthodiffError(f"{checkpoint}: backbone trained on {trained_on} series cannot extract {plane} features")
    model = load_backbone(checkpoint, "cpu", ckpt)
    ds, row_of = plane_volumes(store, plane, model.config.image_size, checkpoint)
    bid = backbone_id(checkpoint, ckpt)
    prov = provenance(bid, ckpt.get("preset") or "custom", model.config.to_dict(), checkpoint, seed, ds.sizes["x"])
    series = pd.DataFrame({"series_id": ds.series.values, "case_id": ds.case_id.values,
                           "patient_id": ds.patient_id.values, "scan": ds.scan.values}).to_dict("records")
    group = prepare_plane(store, prov, plane, series, [int(t) for t in timesteps], list(blocks),
                          model.config.middle_shape, dtype)
    if group.attrs.get("precision") != precision:  # the provenance of the plane's latest units
        group.attrs["precision"] = precision
    prov = dict(open_root(store)[f"features/{bid}"].attrs)  # as first written (its `created`)
    ids = group["series"][:].tolist()
    records = Records(store, bid, plane)
    if repair:  # a damaged shard cannot be updated in place: the unit's objects go, then it is redone
        for name, shard, ti, bi in check_plane(store, open_root(store), prov, plane)[1]:
            records.remove(name)
            remove_unit(store, bid, plane, shard, ti, bi)
    done = records.read()
    tasks = []
    for shard, start in enumerate(range(0, len(ids), SHARD_SERIES)):
        run = tuple(ids[start : start + SHARD_SERIES])
        units = tuple((int(t), b) for t in timesteps for b in blocks
                      if done.get(done_name(shard, int(t), b), {}).get("fingerprint")
                      != fingerprint(prov, list(run), int(t), b, dtype, precision=precision))
        if units:
            drop_temporaries(store, bid, plane, shard)
            tasks.append(Task(shard, start, run, units, tuple(row_of[s] for s in run)))
    return prov, tasks


def extract(store: str, checkpoint: str, plane: str, timesteps=TIMESTEPS, blocks=MIDDLE_BLOCKS,
            dtype: str = "float16", seed: int = 0, series_batch: int = 8, workers: int | None = None,
            scheduler: str | None = None, device: str | None = None, progress: bool | Advance = True,
            precision: str = PRECISION, repair: bool = False, compiled: bool = False) -> dict:
    """Extract what is missing for `plane`; returns counts of series and tasks, the time,
    and the share of it spent inside the network (serial runs). `compiled` runs the network
    through `torch.compile` (eager when that fails); it changes float rounding only."""
    store, checkpoint = str(store), str(checkpoint)
    prov, tasks = plan(store, checkpoint, plane, timesteps, blocks, dtype, seed, precision, repair)
    bid = prov["backbone_id"]
    args = (store, checkpoint, plane, bid, prov, dtype, max(series_batch, 1), device, precision, compiled)
    total = sum(len(t.series) for t in tasks)
    start = time.perf_counter()
    results = run_tasks(run_task, tasks, args, f"extract {plane}", total, workers, scheduler, progress,
                        read_ahead=functools.partial(task_volumes, store))
    shape = zarr.open_array(store, path=f"{plane_path(bid, plane)}/activation", mode="r").shape
    if tasks or not view_is_current(store, bid, plane, shape):  # a job with nothing to do writes nothing
        consolidate(store)
    seconds = time.perf_counter() - start
    network = sum(r["network_s"] for r in results)
    return {"backbone": bid, "plane": plane, "series": total, "tasks": len(tasks), "seconds": round(seconds, 2),
            "network_share": round(network / seconds, 3) if tasks and not (workers or scheduler) else None}
