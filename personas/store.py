"""`orthodiff persona`: inpainted healthy personas of a plane's series, in the store.

Layout (`xarray.open_zarr(store, group="personas/<backbone id>/<plane>")`):

    personas/<backbone id>/<plane>/    attrs: provenance (backbone, checkpoint, its healthy
                                          training count, ROI spec, steps, jumps, seed, policy)
        persona(series, z, y, x)   float16 in [-1, 1]: the image with its ROIs inpainted
        mask(series, z, y, x)      uint8: 0 outside, j for ROI j (index into `roi_name`)
        roi_name(roi)              ROI names (roi = 1..J)
        series, case_id, patient_id, scan   as in the feature groups
    _records/personas/<backbone id>/<plane>/<shard>.json   completion records

The union of the ROIs is inpainted in one pass (as the paper masks the union, sec. 5.2.1),
by one of `options.PersonaModel`: `repaint` (our healthy backbone with RePaint, `personas.inpaint`;
the default) or `ddpm` (the paper's masked-input DDPM with its linear schedule,
`personas.ddpm`, trained by `orthodiff persona-models --models ddpm`, box ROIs only). The
model is in the attributes (`model`), its sampling policy in every completion record's
fingerprint and the DDPM's group id starts with `ddpm-`, so the two never mix.
Work is planned and run (here or on Dask) as `extract` does, with its `Task` and `run_tasks`,
and created, recorded and verified through `featurestore.series_groups`: one task owns one
shard of `SHARD_SERIES` series.
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
from orthodiff.options import PersonaModel, Roi, choice
from orthodiff.featurestore.features import COMPRESSOR, SHARD_SERIES
from orthodiff.featurestore.jobs import Task, run_tasks
from orthodiff.featurestore.series_groups import complete_rows, prepare_group, repair_group, series_specs, shard_runs, write_shard
from orthodiff.featurestore.store import consolidate, open_root
from orthodiff.featurestore.volumes import GROUP as VOLUMES, plane_volumes
from orthodiff.personas import ddpm
from orthodiff.personas.inpaint import POLICY, repaint, series_generator
from orthodiff.personas.reader import KEYS, group_path, shard_fingerprint
from orthodiff.personas.rois import box_grid

SERIES_BATCH = 8  # series per forward pass; like extract's, it changes only float rounding


@functools.lru_cache(maxsize=2)
def _model(checkpoint: str, device: str | None, kind: str = PersonaModel.repaint):
    return ddpm.load_masked_ddpm(checkpoint) if PersonaModel(kind) is PersonaModel.ddpm else load_backbone(checkpoint, device)


def inpaint_run(model, prov: dict, x0: torch.Tensor, known: torch.Tensor, series: list[str]) -> torch.Tensor:
    """The personas of one batch of series (B, 1, D, H, W) by the provenance's model; each
    series' noise from its own generator."""
    if PersonaModel(prov.get("model", PersonaModel.repaint)) is PersonaModel.ddpm:  # MONAI's step takes one generator: one series at a time
        return torch.cat([ddpm.masked_inpaint(model, x0[j:j + 1], (~known[j:j + 1]).to(x0.dtype), prov["steps"],
                                              series_generator(prov["noise_seed"], s)) for j, s in enumerate(series)])
    return repaint(model, NoiseScheduler(), x0, known, prov["steps"], prov["jumps"],
                   [series_generator(prov["noise_seed"], s) for s in series])


def roi_labels(roi: str, grid: int, volume_shape, structure_mask: np.ndarray | None) -> np.ndarray:
    """The ROI label volume of one series (box grid, or its structure mask)."""
    if Roi(roi) is Roi.box:
        return box_grid(tuple(volume_shape), grid)[0]
    return np.asarray(structure_mask, np.uint8)


def run_task(task: Task, store: str, checkpoint: str, plane: str, prov: dict, device: str | None = None,
             series_batch: int = SERIES_BATCH) -> int:
    """Inpaint one shard's series (`series_batch` per forward pass), write persona and mask
    as whole shards, then the record."""
    model = _model(checkpoint, device, prov.get("model", PersonaModel.repaint))
    group = zarr.open_group(str(store), path=group_path(prov["backbone_id"], plane), mode="r+", use_consolidated=False)
    vol_group = zarr.open_group(str(store), path=VOLUMES, mode="r")
    rows = (list(task.volume_rows),)
    volumes = vol_group["volume"].get_orthogonal_selection(rows).astype(np.float32)
    structure = vol_group["mask"].get_orthogonal_selection(rows) if Roi(prov["roi"]) is Roi.structures else [None] * len(rows[0])
    masks = np.stack([roi_labels(prov["roi"], prov["grid"], volumes.shape[1:], structure[i]) for i in range(len(task.series))])
    personas = []
    for i in range(0, len(task.series), series_batch):  # fixed runs of the shard's series: reruns batch alike
        ids = task.series[i:i + series_batch]
        x0 = torch.from_numpy(volumes[i:i + len(ids)])[:, None]
        known = torch.from_numpy(masks[i:i + len(ids)] == 0)[:, None]
        out = inpaint_run(model, prov, x0, known, list(ids))
        personas.extend(out[:, 0].numpy())
    path = group_path(prov["backbone_id"], plane)
    write_shard(store, group, path, task.shard, task.start, {"persona": np.stack(personas), "mask": masks},
                shard_fingerprint(prov, task.series), "persona")
    return len(task.series)


def _provenance(bid: str, ckpt: dict, checkpoint: str, roi: str, grid: int, steps: int, jumps: int, seed: int,
                names: list[str], model: PersonaModel = PersonaModel.repaint) -> dict:
    from orthodiff import __version__
    from orthodiff.featurestore.store import SCHEMA_VERSION

    return {"backbone_id": bid, "checkpoint": str(checkpoint), "healthy": ckpt.get("healthy"), "roi": str(roi),
            "grid": grid if roi is Roi.box else 0, "roi_names": names, "steps": steps, "jumps": jumps,
            "noise_seed": seed, "noise_policy": ddpm.POLICY if model is PersonaModel.ddpm else POLICY, "model": str(model), "schema": SCHEMA_VERSION, "orthodiff_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}



def _prepare(store: str, prov: dict, plane: str, series: list[dict], shape: tuple[int, ...]) -> zarr.Group:
    """Create the plane's persona group (or finish one whose creation was cut short), check
    that it matches, and grow it (`prepare_group`)."""
    chunks = dict(chunks=(1, *shape), shards=(SHARD_SERIES, *shape), compressors=COMPRESSOR, fill_value=0,
                  dimension_names=["series", "z", "y", "x"], attributes={"coordinates": "case_id patient_id scan"})
    names = prov["roi_names"]
    specs = {"persona": dict(shape=(0, *shape), dtype="float16", **chunks),
             "mask": dict(shape=(0, *shape), dtype="uint8", **chunks),
             "roi_name": dict(shape=(len(names),), dtype=str, dimension_names=["roi"], values=names),
             "roi": dict(shape=(len(names),), dtype="int16", dimension_names=["roi"], values=np.arange(1, len(names) + 1)),
             **series_specs()}
    return prepare_group(store, group_path(prov["backbone_id"], plane), prov, specs, series, ("persona", "mask"),
                         (*KEYS, "roi_names"), "persona")


def plan(store: str, checkpoint: str, plane: str, roi: str = "box", grid: int = 3, steps: int = 50,
         jumps: int | None = None, seed: int = 0, repair: bool = False,
         model: str = "repaint") -> tuple[dict, list[Task], list[str]]:
    """Check the request, create or grow the persona group, list the shards still missing
    (with `repair`, also those whose content fails its checksum). `jumps`: RePaint's
    resampling passes (default 2); the DDPM takes none.

    Returns (provenance, tasks, warnings)."""
    if plane not in PLANES:
        raise OrthodiffError(f"--plane {plane!r}: expected one of {list(PLANES)}")
    roi, model = choice(Roi, roi, "--roi"), choice(PersonaModel, model, "--model")
    if model is PersonaModel.ddpm and (roi is not Roi.box or (jumps or 1) != 1):
        raise OrthodiffError("--model ddpm completes the central box it was trained on, with no RePaint jumps: "
                             "use --roi box and leave --jumps out")
    jumps = jumps if jumps is not None else (2 if model is PersonaModel.repaint else 1)
    if steps < 1 or jumps < 1:
        raise OrthodiffError(f"--sampling-steps and --jumps must be at least 1 (got {steps}, {jumps})")
    open_root(store)
    ckpt = read_checkpoint(checkpoint)
    if model is PersonaModel.ddpm:
        ddpm.load_masked_ddpm(checkpoint)  # a masked-DDPM checkpoint trained on healthy exams, or a clear error
        trained_plane, shape, notes = (ckpt.get("healthy") or {}).get("plane"), ckpt.get("shape"), []
        bid = ddpm.ddpm_id(checkpoint)
    else:
        trained_plane, shape = ckpt.get("plane"), [None, None, load_backbone(checkpoint, "cpu", ckpt).config.image_size]
        notes = [] if ckpt.get("healthy") else [
            f"{checkpoint} was not trained with `pretrain --healthy`: its personas are not healthy baselines"]
        bid = backbone_id(checkpoint, ckpt)
    if trained_plane and trained_plane != plane:
        raise OrthodiffError(f"{checkpoint}: {model} model trained on {trained_plane} series cannot make {plane} personas")
    ds, row_of = plane_volumes(store, plane, shape[-1] if shape else None, checkpoint)
    shape = (ds.sizes["z"], ds.sizes["y"], ds.sizes["x"])
    if roi is Roi.structures:
        without = ds.series.values[~ds.has_mask.values]
        if len(without):
            raise OrthodiffError(f"{store}: --roi structures but series {without[0]!r} has no structure mask "
                                 f"({len(without)} {plane} series lack one); use --roi box or add masks")
        from orthodiff.catalogs.tasks import structures

        names = [s.abbr for s in structures("knee").structures]
    else:
        labels, names = box_grid(shape, grid)
    prov = _provenance(bid, ckpt, checkpoint, roi, grid, steps, jumps, seed, names, model)
    series = [{"series_id": s, "case_id": c, "patient_id": p, "scan": int(k)} for s, c, p, k in
              zip(ds.series.values, ds.case_id.values, ds.patient_id.values, ds.scan.values)]
    path = group_path(bid, plane)
    if repair:  # a damaged shard is forgotten (record and objects), then redone below
        repair_group(store, path)
    group = _prepare(store, prov, plane, series, shape)
    prov = dict(group.attrs)
    tasks = []
    done = complete_rows(store, path, group["series"][:].tolist(), lambda run: shard_fingerprint(prov, run))
    for shard, start, run in shard_runs(group["series"][:].tolist()):
        if not done[start:start + len(run)].all():
            tasks.append(Task(shard, start, tuple(run), ((0, "persona"),), tuple(row_of[s] for s in run)))
    return prov, tasks, notes


def make_personas(store: str, checkpoint: str, plane: str, roi: str = "box", grid: int = 3, steps: int = 50,
                  jumps: int | None = None, seed: int = 0, workers: int | None = None, scheduler: str | None = None,
                  device: str | None = None, progress: bool = True, warn=print, series_batch: int = SERIES_BATCH,
                  repair: bool = False, model: str = "repaint") -> dict:
    """Make the personas still missing for `plane` with `model` (`options.PersonaModel`); returns
    counts, ids and the time."""
    store, checkpoint = str(store), str(checkpoint)
    prov, tasks, notes = plan(store, checkpoint, plane, roi, grid, steps, jumps, seed, repair, model)
    for note in notes:
        warn(note)
    total = sum(len(t.series) for t in tasks)
    start = time.perf_counter()
    run_tasks(run_task, tasks, (store, checkpoint, plane, prov, device, max(series_batch, 1)), f"persona {plane}", total, workers, scheduler, progress)
    consolidate(store)
    return {"backbone": prov["backbone_id"], "plane": plane, "series": total, "tasks": len(tasks),
            "rois": len(prov["roi_names"]), "seconds": round(time.perf_counter() - start, 2)}
