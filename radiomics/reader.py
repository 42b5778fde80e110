"""Reading the stored radiomic features (`open_radiomics`): no network, no torch model;
tier-2 code imports this module, `radiomics.store` writes what it reads. Layout: see
`radiomics.store`."""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from orthodiff.errors import OrthodiffError
from orthodiff.featurestore.features import fingerprint
from orthodiff.featurestore.series_groups import complete_rows
from orthodiff.featurestore.store import open_root

GROUP = "radiomics"
SOURCES = ("image", "persona", "residual")
REASONS = ("", "empty ROI (no voxels in this series)", "undefined for this ROI (e.g. constant intensity)",
           "voxel size unknown (volumes.stored_spacing is NaN or absent): no morphology in mm")
KEYS = ("settings",)


def shard_fingerprint(prov: dict, run) -> str:
    """What a shard's completion record must carry (written by `radiomics.store`)."""
    return fingerprint(prov, list(run), 0, "radiomics", "float32", KEYS)


def open_radiomics(store: str, plane: str | None = None, settings: str | None = None) -> xr.Dataset:
    """Complete radiomic features as one Dataset over the planes' series (`value`, `undefined`),
    with `plane` on series; name `settings` when the store holds several. `attrs`: the
    settings id and, per plane with persona sources, the personas' backbone id."""
    root = open_root(store)
    ids = sorted(root[GROUP].group_keys()) if GROUP in root else []
    if settings is not None:
        ids = [i for i in ids if i == settings]
    if len(ids) != 1:
        raise OrthodiffError(f"{store}: no radiomic features (run `orthodiff radiomics` first)" if not ids else
                             f"{store}: radiomic features of several settings {ids}; choose one with --settings")
    sid = ids[0]
    planes = [plane] if plane else sorted(root[f"{GROUP}/{sid}"].group_keys())
    parts, backbones = [], {}
    for p in planes:
        if p not in root[f"{GROUP}/{sid}"]:
            raise OrthodiffError(f"{store}: no {p} radiomic features under radiomics/{sid}")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning)
            ds = xr.open_zarr(str(store), group=f"{GROUP}/{sid}/{p}", consolidated=False).load()
        prov = dict(root[f"{GROUP}/{sid}/{p}"].attrs)
        if prov["settings"].get("persona_backbone"):
            backbones[p] = prov["settings"]["persona_backbone"]
        keep = complete_rows(store, f"{GROUP}/{sid}/{p}", ds.series.values.tolist(), lambda run: shard_fingerprint(prov, run))
        ds = ds.isel(series=np.flatnonzero(keep))
        parts.append(ds.assign_coords(plane=("series", np.full(ds.sizes["series"], p, dtype=object))))
    out = xr.concat(parts, dim="series") if len(parts) > 1 else parts[0]
    out = out.set_coords([v for v in ("reason", "roi_name") if v in out.data_vars])
    out.attrs = {"settings_id": sid, "persona_backbones": backbones}  # plane -> the personas' backbone id
    return out
