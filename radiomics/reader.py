"""Reading the stored radiomic features (`open_radiomics`): no network, no torch model;
tier-2 code imports this module, `radiomics.store` writes what it reads. Layout: see
`radiomics.store`."""

from __future__ import annotations

import numpy as np
import xarray as xr

from orthodiff.errors import OrthodiffError
from orthodiff.featurestore.features import fingerprint
from orthodiff.featurestore.series_groups import group_nodes, open_group
from orthodiff.featurestore.store import open_root

GROUP = "radiomics"
SOURCES = ("image", "persona", "residual")
REASONS = ("", "empty ROI (no voxels in this series)", "undefined for this ROI (e.g. constant intensity)",
           "voxel size unknown (volumes.stored_spacing is NaN or absent): no morphology in mm")
KEYS = ("settings",)


def shard_fingerprint(prov: dict, run) -> str:
    """What a shard's completion record must carry (written by `radiomics.store`)."""
    return fingerprint(prov, list(run), 0, "radiomics", "float32", KEYS)


def radiomics_nodes(store: str, root) -> tuple[dict[str, xr.Dataset], list[str]]:
    """`open_store`'s `radiomics/<settings id>/<plane>` nodes (lazy, complete shards only), and
    the groups still being created."""
    return group_nodes(store, root, GROUP, shard_fingerprint)


def open_radiomics(store: str, plane: str | None = None, settings: str | None = None) -> xr.Dataset:
    """Complete radiomic features as one loaded Dataset over the planes' series (`value`,
    `undefined`), with `plane` on series: `open_store`'s `radiomics/<settings id>/<plane>`
    nodes side by side. Name `settings` when the store holds several. `attrs`: the settings
    id and, per plane with persona sources, the personas' backbone id."""
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
        ds = open_group(store, f"{GROUP}/{sid}/{p}", shard_fingerprint)
        if ds.attrs["settings"].get("persona_backbone"):
            backbones[p] = ds.attrs["settings"]["persona_backbone"]
        parts.append(ds.assign_coords(plane=("series", np.full(ds.sizes["series"], p, dtype=object))))
    out = xr.concat(parts, dim="series") if len(parts) > 1 else parts[0]
    out = out.load()
    out.attrs = {"settings_id": sid, "persona_backbones": backbones}  # plane -> the personas' backbone id
    return out
