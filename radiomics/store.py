"""`orthodiff radiomics`: IBSI features per ROI and source, in the store.

Layout (`xarray.open_zarr(store, group="radiomics/<settings id>/<plane>")`):

    radiomics/<settings id>/<plane>/   attrs: settings (families, bins, sources, ROI origin)
        value(series, roi, source, feature)       float32, NaN where undefined
        undefined(series, roi, source, feature)   uint8 code into `reason` (0: defined)
        reason(code), roi_name(roi), source, feature   coordinates
        series, case_id, patient_id, scan
    _records/radiomics/<settings id>/<plane>/<shard>.json

ROIs come from the plane's personas (their mask; box personas can be split into another
`--grid`, as every grid splits the same inpainted box), or, for `--source image` on a store
without personas, from the central box grid. Sources: `image`, `persona`, and `residual` =
image - persona (eq. 13). The settings id hashes everything that changes a value, so other
settings never mix. Planned, run (here or on Dask) and recorded like `extract`.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings

import numpy as np
import xarray as xr
import zarr

from orthodiff.catalogs.tasks import PLANES
from orthodiff.errors import OrthodiffError
from orthodiff.featurestore.extract import Task, run_tasks
from orthodiff.featurestore.features import SHARD_SERIES, fingerprint
from orthodiff.featurestore.series_groups import (
    complete_rows, prepare_group, repair_group, series_specs, shard_runs, write_shard,
)
from orthodiff.featurestore.store import consolidate, open_root
from orthodiff.featurestore.volumes import open_volumes
from orthodiff.personas.rois import box_grid
from orthodiff.radiomics.ibsi import FAMILIES, roi_features

GROUP = "radiomics"
SOURCES = ("image", "persona", "residual")
REASONS = ("", "empty ROI (no voxels in this series)", "undefined for this ROI (e.g. constant intensity)")
KEYS = ("settings",)


def feature_names(families, bins: int) -> list[str]:
    """The features `families` yield, in order (from a probe ROI where all are defined)."""
    probe = np.random.default_rng(0).normal(size=(6, 6, 6))
    mask = np.zeros(probe.shape, bool)
    mask[1:5, 1:5, 1:5] = True
    return list(roi_features(probe, mask, families, bins))


def _inputs(store: str, plane: str, sources, grid: int | None, persona_backbone: str | None) -> tuple[xr.Dataset, dict]:
    """(Dataset with `image`, `mask` [, `persona`] over series, ROI origin description).

    `grid`: cells per axis of the central box (default: the personas' own ROIs, or 3)."""
    from orthodiff.personas.store import GROUP as PERSONAS, open_personas

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
        if ds.attrs["roi"] != "box":
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
    features = prov["features"]
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
        for j in range(n_roi):
            roi = labels == j + 1
            for k, source in enumerate(s["sources"]):
                if not roi.any():
                    code[i, j, k] = 1
                    continue
                got = roi_features(images[source], roi, s["families"], s["bins"])
                value[i, j, k] = [got.get(f, np.nan) for f in features]
                code[i, j, k] = np.where(np.isfinite(value[i, j, k]), 0, 2)
    path = f"{GROUP}/{prov['settings_id']}/{plane}"
    group = zarr.open_group(str(store), path=path, mode="r+", use_consolidated=False)
    write_shard(store, group, path, task.shard, task.start, {"value": value, "undefined": code},
                _fingerprint(prov, task.series), "radiomics")
    return len(task.series)


def _fingerprint(prov: dict, run) -> str:
    return fingerprint(prov, list(run), 0, "radiomics", "float32", KEYS)


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
         persona_backbone: str | None = None, repair: bool = False) -> tuple[dict, list[Task]]:
    if plane not in PLANES:
        raise OrthodiffError(f"--plane {plane!r}: expected one of {list(PLANES)}")
    bad = [s for s in sources if s not in SOURCES] or [f for f in families if f not in FAMILIES]
    if bad:
        raise OrthodiffError(f"unknown source or family {bad[0]!r}: sources {list(SOURCES)}, families {list(FAMILIES)}")
    if bins < 2:
        raise OrthodiffError(f"--bins {bins}: expected at least 2")
    ds, origin = _inputs(store, plane, list(sources), grid, persona_backbone)
    settings = {"families": list(families), "bins": bins, "sources": list(sources), **origin,
                "discretisation": "fixed bin number over the ROI's [min, max]", "implementation": "orthodiff.radiomics.ibsi"}
    sid = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    prov = {"settings_id": sid, "settings": settings, "features": feature_names(families, bins)}
    series = [{"series_id": s, "case_id": c, "patient_id": p, "scan": int(k)} for s, c, p, k in
              zip(ds.series.values, ds.case_id.values, ds.patient_id.values, ds.scan.values)]
    path = f"{GROUP}/{sid}/{plane}"
    if repair:  # a damaged shard is forgotten (record and objects), then redone below
        repair_group(store, path)
    ids = _prepare(store, prov, plane, series)["series"][:].tolist()
    done = complete_rows(store, path, ids, lambda run: _fingerprint(prov, run))
    tasks = [Task(shard, start, tuple(run), ((0, "radiomics"),), ())
             for shard, start, run in shard_runs(ids) if not done[start:start + len(run)].all()]
    return prov, tasks


def extract_radiomics(store: str, plane: str, sources=SOURCES, families=FAMILIES, bins: int = 32, grid: int | None = None,
                      persona_backbone: str | None = None, workers: int | None = None, scheduler: str | None = None,
                      progress: bool = True, repair: bool = False) -> dict:
    """Compute the radiomic features still missing for `plane`; returns counts, the settings id and time."""
    store = str(store)
    prov, tasks = plan(store, plane, sources, families, bins, grid, persona_backbone, repair)
    total = sum(len(t.series) for t in tasks)
    start = time.perf_counter()
    run_tasks(run_task, tasks, (store, plane, prov, persona_backbone), f"radiomics {plane}", total, workers, scheduler, progress)
    consolidate(store)
    return {"settings": prov["settings_id"], "plane": plane, "series": total, "tasks": len(tasks),
            "features": len(prov["features"]) * len(prov["settings"]["roi_names"]) * len(prov["settings"]["sources"]),
            "seconds": round(time.perf_counter() - start, 2)}


def open_radiomics(store: str, plane: str | None = None, settings: str | None = None) -> xr.Dataset:
    """Complete radiomic features as one Dataset over the planes' series (`value`, `undefined`),
    with `plane` on series; name `settings` when the store holds several."""
    root = open_root(store)
    ids = sorted(root[GROUP].group_keys()) if GROUP in root else []
    if settings is not None:
        ids = [i for i in ids if i == settings]
    if len(ids) != 1:
        raise OrthodiffError(f"{store}: no radiomic features (run `orthodiff radiomics` first)" if not ids else
                             f"{store}: radiomic features of several settings {ids}; choose one with --settings")
    sid = ids[0]
    planes = [plane] if plane else sorted(root[f"{GROUP}/{sid}"].group_keys())
    parts = []
    for p in planes:
        if p not in root[f"{GROUP}/{sid}"]:
            raise OrthodiffError(f"{store}: no {p} radiomic features under radiomics/{sid}")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning)
            ds = xr.open_zarr(str(store), group=f"{GROUP}/{sid}/{p}", consolidated=False).load()
        prov = dict(root[f"{GROUP}/{sid}/{p}"].attrs)
        keep = complete_rows(store, f"{GROUP}/{sid}/{p}", ds.series.values.tolist(), lambda run: _fingerprint(prov, run))
        ds = ds.isel(series=np.flatnonzero(keep))
        parts.append(ds.assign_coords(plane=("series", np.full(ds.sizes["series"], p, dtype=object))))
    out = xr.concat(parts, dim="series") if len(parts) > 1 else parts[0]
    out = out.set_coords([v for v in ("reason", "roi_name") if v in out.data_vars])
    out.attrs = {"settings_id": sid}
    return out
