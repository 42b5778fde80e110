"""`orthodiff persona`: inpainted healthy personas of a plane's series, in the store.

Layout (`xarray.open_zarr(store, group="personas/<backbone id>/<plane>")`):

    personas/<backbone id>/<plane>/    attrs: provenance (backbone, checkpoint, its healthy
                                          training count, ROI spec, steps, jumps, seed, policy)
        persona(series, z, y, x)   float16 in [-1, 1]: the image with its ROIs inpainted
        mask(series, z, y, x)      uint8: 0 outside, j for ROI j (index into `roi_name`)
        roi_name(roi)              ROI names (roi = 1..J)
        series, case_id, patient_id, scan   as in the feature groups
    _records/personas/<backbone id>/<plane>/<shard>.json   completion records

The union of the ROIs is inpainted in one pass (as the paper masks the union, sec. 5.2.1).
Work is planned, run (here or on Dask) and recorded exactly as `extract` does, with its
`Task`, `run_tasks` and `Records`: one task owns one shard of `SHARD_SERIES` series.
"""

from __future__ import annotations

import datetime
import functools
import time

import numpy as np
import torch
import zarr

from orthodiff.backbone import backbone_id, load_backbone
from orthodiff.backbone.checkpoint import read_checkpoint
from orthodiff.backbone.diffusion import NoiseScheduler
from orthodiff.catalogs.tasks import PLANES
from orthodiff.errors import OrthodiffError
from orthodiff.featurestore.features import COMPRESSOR, SHARD_SERIES, Records, fingerprint, grow_series
from orthodiff.featurestore.jobs import Task, run_tasks
from orthodiff.featurestore.store import consolidate, open_root
from orthodiff.featurestore.volumes import GROUP as VOLUMES, plane_volumes
from orthodiff.personas.inpaint import POLICY, repaint, series_generator
from orthodiff.personas.reader import GROUP, KEYS, group_path
from orthodiff.personas.rois import box_grid

ROI_KINDS = ("box", "structures")
SERIES_BATCH = 8  # series per forward pass; like extract's, it changes only float rounding


@functools.lru_cache(maxsize=2)
def _model(checkpoint: str, device: str | None):
    return load_backbone(checkpoint, device)


def roi_labels(roi: str, grid: int, volume_shape, structure_mask: np.ndarray | None) -> np.ndarray:
    """The ROI label volume of one series (box grid, or its structure mask)."""
    if roi == "box":
        return box_grid(tuple(volume_shape), grid)[0]
    return np.asarray(structure_mask, np.uint8)


def run_task(task: Task, store: str, checkpoint: str, plane: str, prov: dict, device: str | None = None,
             series_batch: int = SERIES_BATCH) -> int:
    """Inpaint one shard's series (`series_batch` per forward pass), write persona and mask
    as whole shards, then the record."""
    model = _model(checkpoint, device)
    scheduler = NoiseScheduler()
    group = zarr.open_group(str(store), path=group_path(prov["backbone_id"], plane), mode="r+", use_consolidated=False)
    vol_group = zarr.open_group(str(store), path=VOLUMES, mode="r")
    rows = (list(task.volume_rows),)
    volumes = vol_group["volume"].get_orthogonal_selection(rows).astype(np.float32)
    structure = vol_group["mask"].get_orthogonal_selection(rows) if prov["roi"] == "structures" else [None] * len(rows[0])
    masks = np.stack([roi_labels(prov["roi"], prov["grid"], volumes.shape[1:], structure[i]) for i in range(len(task.series))])
    personas = []
    for i in range(0, len(task.series), series_batch):  # fixed runs of the shard's series: reruns batch alike
        ids = task.series[i:i + series_batch]
        x0 = torch.from_numpy(volumes[i:i + len(ids)])[:, None]
        known = torch.from_numpy(masks[i:i + len(ids)] == 0)[:, None]
        out = repaint(model, scheduler, x0, known, prov["steps"], prov["jumps"],
                      [series_generator(prov["noise_seed"], s) for s in ids])
        personas.extend(out[:, 0].numpy())
    span = slice(task.start, task.start + len(task.series))
    group["persona"][span] = np.stack(personas).astype("float16")
    group["mask"][span] = masks
    Records(store, f"{GROUP}/{prov['backbone_id']}", plane).write(
        f"{task.shard:06d}.json", {"fingerprint": fingerprint(prov, list(task.series), 0, "persona", "float16", KEYS),
                                   "series": len(task.series)})
    return len(task.series)


def _provenance(bid: str, ckpt: dict, checkpoint: str, roi: str, grid: int, steps: int, jumps: int, seed: int,
                names: list[str]) -> dict:
    from orthodiff import __version__
    from orthodiff.featurestore.store import SCHEMA_VERSION

    return {"backbone_id": bid, "checkpoint": str(checkpoint), "healthy": ckpt.get("healthy"), "roi": roi,
            "grid": grid if roi == "box" else 0, "roi_names": names, "steps": steps, "jumps": jumps,
            "noise_seed": seed, "noise_policy": POLICY, "schema": SCHEMA_VERSION, "orthodiff_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _prepare(store: str, prov: dict, plane: str, series: list[dict], shape: tuple[int, ...]) -> zarr.Group:
    """Create the plane's persona group once (exclusively), or check that it matches and grow it."""
    root = open_root(store)
    path = group_path(prov["backbone_id"], plane)
    try:
        group = root.create_group(path, attributes=prov, overwrite=False)
        chunks = dict(chunks=(1, *shape), shards=(SHARD_SERIES, *shape), compressors=COMPRESSOR, fill_value=0,
                      dimension_names=["series", "z", "y", "x"], attributes={"coordinates": "case_id patient_id scan"})
        group.create_array("persona", shape=(0, *shape), dtype="float16", **chunks)
        group.create_array("mask", shape=(0, *shape), dtype="uint8", **chunks)
        for name in ("series", "case_id", "patient_id"):
            group.create_array(name, shape=(0,), chunks=(4096,), dtype=str, dimension_names=["series"])
        group.create_array("scan", shape=(0,), chunks=(4096,), dtype="int16", dimension_names=["series"])
        names = prov["roi_names"]
        group.create_array("roi_name", shape=(len(names),), dtype=str, dimension_names=["roi"])[:] = np.asarray(names, object)
        group.create_array("roi", shape=(len(names),), dtype="int16", dimension_names=["roi"])[:] = np.arange(1, len(names) + 1)
    except zarr.errors.ContainsGroupError:
        group = root[path]
        have = dict(group.attrs)
        differ = [k for k in (*KEYS, "roi_names") if have.get(k) != prov.get(k)]
        if differ:
            raise OrthodiffError(f"{store}: {path} holds personas made with other settings ({', '.join(differ)}: "
                                 f"{[have.get(k) for k in differ]}); use another store or the same settings")
    grow_series(group, series, ("persona", "mask"))
    return group


def plan(store: str, checkpoint: str, plane: str, roi: str = "box", grid: int = 3, steps: int = 50, jumps: int = 2,
         seed: int = 0) -> tuple[dict, list[Task], list[str]]:
    """Check the request, create or grow the persona group, list the shards still missing.

    Returns (provenance, tasks, warnings)."""
    if plane not in PLANES:
        raise OrthodiffError(f"--plane {plane!r}: expected one of {list(PLANES)}")
    if roi not in ROI_KINDS:
        raise OrthodiffError(f"--roi {roi!r}: expected one of {list(ROI_KINDS)}")
    if steps < 1 or jumps < 1:
        raise OrthodiffError(f"--sampling-steps and --jumps must be at least 1 (got {steps}, {jumps})")
    open_root(store)
    ckpt = read_checkpoint(checkpoint)
    if ckpt.get("plane") and ckpt["plane"] != plane:
        raise OrthodiffError(f"{checkpoint}: backbone trained on {ckpt['plane']} series cannot make {plane} personas")
    notes = [] if ckpt.get("healthy") else [
        f"{checkpoint} was not trained with `pretrain --healthy`: its personas are not healthy baselines"]
    model = load_backbone(checkpoint, "cpu", ckpt)
    ds, row_of = plane_volumes(store, plane, model.config.image_size, checkpoint)
    shape = (ds.sizes["z"], ds.sizes["y"], ds.sizes["x"])
    if roi == "structures":
        without = ds.series.values[~ds.has_mask.values]
        if len(without):
            raise OrthodiffError(f"{store}: --roi structures but series {without[0]!r} has no structure mask "
                                 f"({len(without)} {plane} series lack one); use --roi box or add masks")
        from orthodiff.catalogs.tasks import structures

        names = [s.abbr for s in structures("knee").structures]
    else:
        labels, names = box_grid(shape, grid)
    bid = backbone_id(checkpoint, ckpt)
    prov = _provenance(bid, ckpt, checkpoint, roi, grid, steps, jumps, seed, names)
    series = [{"series_id": s, "case_id": c, "patient_id": p, "scan": int(k)} for s, c, p, k in
              zip(ds.series.values, ds.case_id.values, ds.patient_id.values, ds.scan.values)]
    group = _prepare(store, prov, plane, series, shape)
    prov = dict(group.attrs)
    ids = group["series"][:].tolist()
    done = Records(store, f"{GROUP}/{bid}", plane).read()
    tasks = []
    for shard, start in enumerate(range(0, len(ids), SHARD_SERIES)):
        run = tuple(ids[start:start + SHARD_SERIES])
        if done.get(f"{shard:06d}.json", {}).get("fingerprint") != fingerprint(prov, list(run), 0, "persona", "float16", KEYS):
            tasks.append(Task(shard, start, run, ((0, "persona"),), tuple(row_of[s] for s in run)))
    return prov, tasks, notes


def make_personas(store: str, checkpoint: str, plane: str, roi: str = "box", grid: int = 3, steps: int = 50,
                  jumps: int = 2, seed: int = 0, workers: int | None = None, scheduler: str | None = None,
                  device: str | None = None, progress: bool = True, warn=print, series_batch: int = SERIES_BATCH) -> dict:
    """Make the personas still missing for `plane`; returns counts, ids and the time."""
    store, checkpoint = str(store), str(checkpoint)
    prov, tasks, notes = plan(store, checkpoint, plane, roi, grid, steps, jumps, seed)
    for note in notes:
        warn(note)
    total = sum(len(t.series) for t in tasks)
    start = time.perf_counter()
    run_tasks(run_task, tasks, (store, checkpoint, plane, prov, device, max(series_batch, 1)), f"persona {plane}", total, workers, scheduler, progress)
    consolidate(store)
    return {"backbone": prov["backbone_id"], "plane": plane, "series": total, "tasks": len(tasks),
            "rois": len(prov["roi_names"]), "seconds": round(time.perf_counter() - start, 2)}
