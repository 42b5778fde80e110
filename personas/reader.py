"""Reading the stored personas (`open_personas`): no network, no torch model; tier-2 code
imports this module, `personas.store` writes what it reads. Layout: see `personas.store`."""

from __future__ import annotations

import xarray as xr

from orthodiff.errors import OrthodiffError
from orthodiff.featurestore.features import fingerprint
from orthodiff.featurestore.series_groups import group_nodes, is_complete, open_group
from orthodiff.featurestore.store import open_root
from orthodiff.featurestore.volumes import open_volumes

GROUP = "personas"
KEYS = ("backbone_id", "roi", "grid", "steps", "jumps", "noise_seed", "noise_policy", "schema")


def group_path(backbone: str, plane: str) -> str:
    return f"{GROUP}/{backbone}/{plane}"


def shard_fingerprint(prov: dict, run) -> str:
    """What a shard's completion record must carry (written by `personas.store`)."""
    return fingerprint(prov, list(run), 0, "persona", "float16", KEYS)


def persona_nodes(store: str, root) -> tuple[dict[str, xr.Dataset], list[str]]:
    """`open_store`'s `personas/<backbone id>/<plane>` nodes (lazy, complete shards only), and
    the groups still being created."""
    return group_nodes(store, root, GROUP, shard_fingerprint)


def open_personas(store: str, plane: str, backbone: str | None = None) -> xr.Dataset:
    """The personas of `plane` (lazy; `open_store`'s node), with the matching volume as `image`
    and its structure mask as `structure` beside them.

    Only series whose shard is recorded complete are returned."""
    root = open_root(store)
    if GROUP not in root or not list(root[GROUP].group_keys()):
        raise OrthodiffError(f"{store}: no personas in this store (run `orthodiff persona` first)")
    ids = [b for b in root[GROUP].group_keys() if plane in root[f"{GROUP}/{b}"]]
    if backbone is not None:
        ids = [b for b in ids if b == backbone]
    if len(ids) != 1:
        raise OrthodiffError(f"{store}: {len(ids)} persona backbones hold {plane} personas "
                             f"({sorted(root[GROUP].group_keys())}); name one with --backbone-id" if ids else
                             f"{store}: no {plane} personas (run `orthodiff persona --plane {plane}` first)")
    path = group_path(ids[0], plane)
    if not is_complete(root[path]):
        raise OrthodiffError(f"{store}: {path} is still being created (a job is running or was interrupted; "
                             f"rerun `orthodiff persona --plane {plane}` to finish it)")
    ds = open_group(store, path, shard_fingerprint)
    volumes = open_volumes(store)
    ds["image"] = volumes.volume.sel(series=ds.series.values).astype("float16")
    ds["structure"] = volumes["mask"].sel(series=ds.series.values)  # stored structure labels (0: none)
    return ds
