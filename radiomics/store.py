"""`orthodiff radiomics`: IBSI features per ROI and source, in the store.

Layout (`xarray.open_zarr(store, group="radiomics/<settings id>/<plane>")`):

    radiomics/<settings id>/<plane>/   attrs: settings (families, discretisation, sources, ROI origin)
        value(series, roi, source, feature)       float32, NaN where undefined
        undefined(series, roi, source, feature)   uint8 code into `reason` (0: defined)
        reason(code), roi_name(roi), source, feature   coordinates
        series, case_id, patient_id, scan
    _records/radiomics/<settings id>/<plane>/<shard>.json

ROIs come from the plane's personas (their mask; box personas can be split into another
`--grid`, as every grid splits the same inpainted box), or, for `--source image` on a store
without personas, from the central box grid. Sources: `image`, `persona`, and `residual` =
image - persona (eq. 13). The settings id hashes everything that changes a value (the
feature list included), so other settings never mix. Morphology is in mm from the volumes'
`stored_spacing` of each series; where that is NaN or absent the morphology features are NaN
with reason 3, never computed on 1 mm voxels. Planned, run (here or on Dask) and recorded
like `extract`.
"""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import xarray as xr
import zarr

from orthodiff.catalogs.geometry import AXES
from orthodiff.catalogs.tasks import PLANES
from orthodiff.errors import OrthodiffError
from orthodiff.options import Roi
from orthodiff.featurestore.features import SHARD_SERIES
from orthodiff.featurestore.jobs import Task, run_tasks
from orthodiff.featurestore.series_groups import complete_rows, prepare_group, repair_group, series_specs, shard_runs, write_shard
from orthodiff.featurestore.store import consolidate, open_root
from orthodiff.featurestore.volumes import open_volumes
from orthodiff.personas.rois import box_grid
from orthodiff.radiomics.ibsi import DISCRETISATIONS, FAMILIES, roi_features
from orthodiff.radiomics.reader import GROUP, REASONS, SOURCES, shard_fingerprint


def feature_names(families, bins: int) -> list[str]:
    """The features `families` yield, in order (from a probe ROI where all are defined)."""
    probe = np.random.default_rng(0).normal(size=(6, 6, 6))
    mask = np.zeros(probe.shape, bool)
    mask[1:5, 1:5, 1:5] = True
    return list(roi_features(probe, mask, families, bins))


def stored_spacing(store: str, series) -> np.ndarray:
    """The stored voxel size (slice, row, column) in mm of each of `series` from the volumes'
    `stored_spacing(series, axis)`; NaN rows where it is unknown or the store has none."""
    vols = open_volumes(store)
    if "stored_spacing" not in vols.variables:
        return np.full((len(series), len(AXES)), np.nan)
    spacing = vols["stored_spacing"].sel(series=list(series))
    if "axis" in spacing.coords:
        spacing = spacing.sel(axis=list(AXES))
    return spacing.transpose("series", ...).values.astype(np.float64)


def _inputs(store: str, plane: str, sources, grid: int | None, persona_backbone: str | None) -> tuple[xr.Dataset, dict]:
    """(Dataset with `image`, `mask` [, `persona`] over series, ROI origin description).

    `grid`: cells per axis of the central box (default: the personas' own ROIs, or 3)."""
    from orthodiff.personas.reader import GROUP as PERSONAS, open_personas

    root = open_root(store)
    has_personas = PERSONAS in root and any(plane in root[f"{PERSONAS}/{b}"] for b in root[PERSONAS].group_keys())
    if not has_personas:
        wanted = [s for s in sources if s != "image"]
        if wanted:
            raise OrthodiffError(f"{store}: --source {','.join(wanted)} needs {plane} personas, and this store has none "
                                 f"(run `orthodiff persona --plane {plane}` first, or use --source image)")
        ds = open_volumes(store)
        ds = ds.isel(series=np.flatnonzero(ds.plane.values == plane))
        if not ds.sizes["series"]:
            raise OrthodiffError(f"{store}: no {plane} volumes (ingest them first)")
        grid = grid or 3
        labels, names = box_grid((ds.sizes["z"], ds.sizes["y"], ds.sizes["x"]), grid)
        ds = ds[["volume"]].rename(volume="image")
        ds["mask"] = xr.DataArray(labels, dims=("z", "y", "x")).expand_dims(series=ds.series.values)
        ds = ds.assign_coords(roi=np.arange(1, len(names) + 1), roi_name=("roi", np.asarray(names, object)))
        return ds, {"rois": f"box grid {grid}", "grid": grid, "roi_names": names}
    ds = open_personas(store, plane, persona_backbone)
    if not ds.sizes["series"]:
        raise OrthodiffError(f"{store}: no complete {plane} personas yet (rerun `orthodiff persona` to finish them)")
    if grid and grid != ds.attrs["grid"]:
        # Every grid splits the same central box, and the persona inpaints the box as a whole,
        # so one set of box personas serves all grids: only the cell labels change.
        if Roi(ds.attrs["roi"]) is not Roi.box:
            raise OrthodiffError(f"{store}: --grid {grid} needs box personas; the {plane} personas are of "
                                 f"{ds.attrs['roi']} ROIs (leave --grid out to use their ROIs)")
        bid, labels, names = ds.attrs["backbone_id"], *box_grid((ds.sizes["z"], ds.sizes["y"], ds.sizes["x"]), grid)
        ds = ds.drop_vars(["roi", "roi_name"]).assign(mask=xr.DataArray(labels, dims=("z", "y", "x")).expand_dims(
            series=ds.series.values)).assign_coords(roi=np.arange(1, len(names) + 1), roi_name=("roi", np.asarray(names, object)))
        return ds, {"rois": f"personas/{bid} (box, regridded {grid})", "grid": grid, "persona_backbone": bid,
                    "roi_names": names}
    return ds, {"rois": f"personas/{ds.attrs['backbone_id']} ({ds.attrs['roi']}, grid {ds.attrs['grid']})",
                "persona_backbone": ds.attrs["backbone_id"], "roi_names": ds.roi_name.values.tolist()}


def run_task(task: Task, store: str, plane: str, prov: dict, persona_backbone: str | None) -> int:
    """Compute one shard's features for every ROI and source, write them, then the record."""
    s = prov["settings"]
    ds, _ = _inputs(store, plane, s["sources"], s.get("grid"), persona_backbone)
    ds = ds.sel(series=list(task.series)).load()
    spacings = stored_spacing(store, task.series)
    features = prov["features"]
    morph = np.array([f.startswith("morph_") for f in features])
    levels = {"bins": s["bins"], "discretisation": s.get("discretisation", DISCRETISATIONS[0]), "bin_width": s.get("bin_width")}
    n_roi = len(s["roi_names"])
    value = np.full((len(task.series), n_roi, len(s["sources"]), len(features)), np.nan, np.float32)
    code = np.zeros(value.shape, np.uint8)
    for i in range(len(task.series)):
        image = ds.image.values[i].astype(np.float64)
        images = {"image": image}
        if "persona" in ds:
            images["persona"] = ds.persona.values[i].astype(np.float64)
            images["residual"] = image - images["persona"]
        labels = ds["mask"].values[i]
        known = bool(np.isfinite(spacings[i]).all())  # else no morphology: never a silent 1 mm
        families = s["families"] if known else [f for f in s["families"] if f != "shape"]
        for j in range(n_roi):
            roi = labels == j + 1
            for k, source in enumerate(s["sources"]):
                if not roi.any():
                    code[i, j, k] = 1
                    continue
                got = roi_features(images[source], roi, families, spacing=tuple(spacings[i]) if known else None, **levels)
                value[i, j, k] = [got.get(f, np.nan) for f in features]
                code[i, j, k] = np.where(np.isfinite(value[i, j, k]), 0, np.where(morph & ~known, 3, 2))
    path = f"{GROUP}/{prov['settings_id']}/{plane}"
    group = zarr.open_group(str(store), path=path, mode="r+", use_consolidated=False)
    write_shard(store, group, path, task.shard, task.start, {"value": value, "undefined": code},
                shard_fingerprint(prov, task.series), "radiomics")
    return len(task.series)



def _prepare(store: str, prov: dict, plane: str, series: list[dict]) -> zarr.Group:
    """Create the plane's group (or finish one whose creation was cut short) and grow it (`prepare_group`)."""
    s, features = prov["settings"], prov["features"]
    shape = (len(s["roi_names"]), len(s["sources"]), len(features))
    specs = {name: dict(shape=(0, *shape), chunks=(SHARD_SERIES, *shape), dtype=dtype, fill_value=fill,
                        dimension_names=["series", "roi", "source", "feature"],
                        attributes={"coordinates": "case_id patient_id scan"})
             for name, dtype, fill in (("value", "float32", np.nan), ("undefined", "uint8", 0))}
    for name, values in (("roi_name", s["roi_names"]), ("source", s["sources"]), ("feature", features),
                         ("reason", list(REASONS))):
        dim = {"roi_name": "roi", "reason": "code"}.get(name, name)
        specs[name] = dict(shape=(len(values),), dtype=str, dimension_names=[dim], values=values)
    specs["roi"] = dict(shape=(shape[0],), dtype="int16", dimension_names=["roi"], values=np.arange(1, shape[0] + 1))
    specs["code"] = dict(shape=(len(REASONS),), dtype="uint8", dimension_names=["code"], values=np.arange(len(REASONS)))
    return prepare_group(store, f"{GROUP}/{prov['settings_id']}/{plane}", prov, {**specs, **series_specs()}, series,
                         ("value", "undefined"), ("settings_id",), "radiomics")


def plan(store: str, plane: str, sources=SOURCES, families=FAMILIES, bins: int = 32, grid: int | None = None,
         persona_backbone: str | None = None, discretisation: str = DISCRETISATIONS[0],
         bin_width: float | None = None, repair: bool = False) -> tuple[dict, list[Task]]:
    if plane not in PLANES:
        raise OrthodiffError(f"--plane {plane!r}: expected one of {list(PLANES)}")
    bad = [s for s in sources if s not in SOURCES] or [f for f in families if f not in FAMILIES]
    if bad:
        raise OrthodiffError(f"unknown source or family {bad[0]!r}: sources {list(SOURCES)}, families {list(FAMILIES)}")
    if bins < 2:
        raise OrthodiffError(f"--bins {bins}: expected at least 2")
    if discretisation not in DISCRETISATIONS:
        raise OrthodiffError(f"--discretisation {discretisation}: expected one of {list(DISCRETISATIONS)}")
    if (discretisation == "fixed_bin_size") != (bin_width is not None) or (bin_width is not None and not bin_width > 0):
        raise OrthodiffError(f"--discretisation {discretisation} --bin-width {bin_width}: fixed_bin_size needs --bin-width "
                             f"(> 0, in intensity units), fixed_bin_number takes --bins instead")
    ds, origin = _inputs(store, plane, list(sources), grid, persona_backbone)
    names = feature_names(families, bins)
    # the feature list is hashed into the settings id, so a longer list is a new group, never mixed into an old one
    settings = {"families": list(families), "bins": bins, "sources": list(sources), **origin,
                "discretisation": discretisation, "bin_width": bin_width, "implementation": "orthodiff.radiomics.ibsi",
                "spacing": "volumes.stored_spacing (mm); morphology NaN (reason 3) where unknown",
                "feature_list": hashlib.sha256(",".join(names).encode()).hexdigest()[:12]}
    sid = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    prov = {"settings_id": sid, "settings": settings, "features": names}
    series = [{"series_id": s, "case_id": c, "patient_id": p, "scan": int(k)} for s, c, p, k in
              zip(ds.series.values, ds.case_id.values, ds.patient_id.values, ds.scan.values)]
    path = f"{GROUP}/{sid}/{plane}"
    if repair:  # a damaged shard is forgotten (record and objects), then redone below
        repair_group(store, path)
    ids = _prepare(store, prov, plane, series)["series"][:].tolist()
    done = complete_rows(store, path, ids, lambda run: shard_fingerprint(prov, run))
    tasks = [Task(shard, start, tuple(run), ((0, "radiomics"),), ())
             for shard, start, run in shard_runs(ids) if not done[start:start + len(run)].all()]
    return prov, tasks


def extract_radiomics(store: str, plane: str, sources=SOURCES, families=FAMILIES, bins: int = 32, grid: int | None = None,
                      persona_backbone: str | None = None, workers: int | None = None, scheduler: str | None = None,
                      progress: bool = True, discretisation: str = DISCRETISATIONS[0], bin_width: float | None = None,
                      repair: bool = False) -> dict:
    """Compute the radiomic features still missing for `plane`; returns counts, the settings id and time."""
    store = str(store)
    prov, tasks = plan(store, plane, sources, families, bins, grid, persona_backbone, discretisation, bin_width, repair)
    total = sum(len(t.series) for t in tasks)
    start = time.perf_counter()
    run_tasks(run_task, tasks, (store, plane, prov, persona_backbone), f"radiomics {plane}", total, workers, scheduler, progress)
    consolidate(store)
    return {"settings": prov["settings_id"], "plane": plane, "series": total, "tasks": len(tasks),
            "features": len(prov["features"]) * len(prov["settings"]["roi_names"]) * len(prov["settings"]["sources"]),
            "seconds": round(time.perf_counter() - start, 2)}
