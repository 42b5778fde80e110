"""Per-plane features from the feature store, for the heads tier (reads only, lazily).

``plane_features`` turns the ``features`` node of the tree that ``orthodiff.open_store``
returns into one Dataset per plane with ``gap(series, timestep, block, channel)`` and ``activation(series, timestep, block,
channel, z, y, x)``, and checks that every catalog series of that plane has features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from orthodiff.catalogs.tasks import PLANES
from orthodiff.errors import OrthodiffError


def plane_nodes(tree: xr.DataTree, source: str = "the store") -> dict[str, xr.Dataset]:
    """One Dataset per plane from ``open_store``'s tree or its ``features`` node
    (``<backbone>/<plane>`` children); a plane held by several of the tree's backbones is
    ambiguous: the error names them. A tree without features names what to run."""
    features = tree if tree.name == "features" else tree.children.get("features")
    if features is None:
        pending = [p for p in tree.root.attrs.get("incomplete", []) if p.startswith("features/")]
        raise OrthodiffError(f"{source}: no complete features yet ({', '.join(pending)} still being written; wait for "
                             "`orthodiff extract` to finish, or rerun it)" if pending else
                             f"{source}: no features in this store (run `orthodiff extract` first)")
    held: dict[str, list[str]] = {}
    for node in features.subtree:
        if node.name in PLANES and node.has_data:
            held.setdefault(node.name, []).append(node.parent.name)
    twice = {p: b for p, b in held.items() if len(b) > 1}
    if twice:
        plane, ids = next(iter(twice.items()))
        raise OrthodiffError(f"{source}: {plane} features from backbones {', '.join(ids)}; choose with --backbone-id "
                             "(one id per plane)")
    return {p: features[f"{b[0]}/{p}"].to_dataset() for p, b in held.items()}


def joined_catalog(tree: xr.DataTree, source: str = "the store") -> pd.DataFrame:
    """The catalog ``open_store(..., catalog=...)`` joined to the plane nodes of ``tree``, read
    back from their ``series`` coordinates: one row per series with a ``split`` (the catalog's
    series), planes in ``PLANES`` order, series in stored order."""
    frames = []
    for plane, ds in sorted(plane_nodes(tree, source).items(), key=lambda item: PLANES.index(item[0])):
        columns = {name: coord.to_numpy() for name, coord in ds.coords.items() if coord.dims == ("series",)}
        frames.append(pd.DataFrame(columns).rename(columns={"series": "series_id"}))
    catalog = pd.concat(frames, ignore_index=True)
    if "split" not in catalog.columns:
        raise OrthodiffError(f"{source}: no catalog joined to the features; open the store with one "
                             "(open_store(path, catalog=...)) or pass the catalog")
    return catalog[catalog["split"].notna()].reset_index(drop=True)


def plane_features(store: str | Path | xr.DataTree, catalog: pd.DataFrame, backbone: str | None = None,
                   planes=None, source: str | None = None) -> dict[str, xr.Dataset]:
    """Lazy per-plane feature Datasets of ``store`` for the catalog's series: a store path, or a
    tree ``open_store`` returned (or its ``features`` node), whose backbones are then the ones
    it was opened with (``backbone`` applies to a path). Errors name ``source`` (default: the
    path, or "the store")."""
    from orthodiff import open_store

    planes = list(planes or PLANES)
    unknown = [p for p in planes if p not in PLANES]
    if unknown:
        raise OrthodiffError(f"unknown plane(s) {unknown}; expected {list(PLANES)}")
    if isinstance(store, xr.DataTree):
        tree, store = store, source or "the store"
    else:
        tree, store = open_store(str(store), backbone=backbone), source or store
    per_plane = plane_nodes(tree, str(store))
    out = {}
    for plane in planes:
        wanted = catalog.loc[catalog["plane"] == plane, "series_id"]
        if wanted.empty:
            continue
        if plane not in per_plane:
            raise OrthodiffError(f"{store}: no {plane} features in the store, but the catalog has {len(wanted)} {plane} series")
        ds = per_plane[plane]
        have = pd.Index(ds["series"].to_numpy())
        absent = wanted[~wanted.isin(have)]
        if len(absent):
            raise OrthodiffError(
                f"{store}: no {plane} features for {len(absent)} of the catalog's {len(wanted)} {plane} series, "
                f"e.g. {absent.iloc[0]!r} (run `orthodiff extract --plane {plane}`)"
            )
        gap = ds.gap.sel(series=wanted.to_numpy())
        try:
            values = gap.values
        except Exception as err:  # a damaged chunk fails in its codec
            raise OrthodiffError(f"{store}: the {plane} GAP features are unreadable ({type(err).__name__}: {err}); "
                                 f"`orthodiff store verify {store}` names the damaged units") from None
        finite = np.isfinite(values).reshape(gap.sizes["series"], -1).all(axis=1)
        if not finite.all():
            raise OrthodiffError(
                f"{store}: the {plane} GAP features of {int((~finite).sum())} series hold NaN or Inf, e.g. "
                f"{str(gap.series.values[~finite][0])!r}; `orthodiff store verify {store}` names the damaged units "
                "and `orthodiff extract --repair` recomputes them"
            )
        out[plane] = ds
    if not out:
        raise OrthodiffError(f"the catalog has no series of the planes {planes}")
    return out
