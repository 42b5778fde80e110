"""A plane's volumes (and masks) from the store, matched to the catalog's rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from orthodiff.catalogs.tasks import PLANES, structures
from orthodiff.errors import OrthodiffError
from orthodiff.featurestore.volumes import open_volumes


def plane_volumes(store: str, catalog: pd.DataFrame, plane: str, masks: bool = False) -> tuple[xr.Dataset, pd.DataFrame]:
    """(lazy volumes Dataset, catalog rows in the same order) for the catalog's `plane`
    series; with `masks`, only series that have a mask, and an error if none has."""
    if plane not in PLANES:
        raise OrthodiffError(f"--plane {plane!r}: expected one of {list(PLANES)}")
    rows = catalog[catalog["plane"] == plane]
    if rows.empty:
        raise OrthodiffError(f"the catalog has no {plane} series")
    ds = open_volumes(store)
    index = pd.Index(ds["series"].to_numpy())
    absent = rows.loc[~rows["series_id"].isin(index), "series_id"]
    if len(absent):
        raise OrthodiffError(f"{store}: {len(absent)} {plane} series of the catalog are not ingested, "
                             f"e.g. {absent.iloc[0]!r} (run `orthodiff ingest`)")
    positions = index.get_indexer(rows["series_id"])
    if masks:
        has = ds["has_mask"].to_numpy()[positions]
        if not has.any():
            joint = str(rows["joint"].iloc[0]) if "joint" in rows else "knee"
            try:
                where = f"{joint} masks exist for {', '.join(structures(joint).mask_planes)} series"
            except KeyError:
                where = f"no segmentation structures are defined for {joint}"
            raise OrthodiffError(f"{store}: no {plane} series has a mask ({where})")
        rows, positions = rows[has], positions[has]
    return ds.isel(series=positions), rows.reset_index(drop=True)


def split_rows(ds: xr.Dataset, rows: pd.DataFrame, split: str, column: str | None = None) -> tuple[xr.Dataset, pd.DataFrame]:
    """The series of one split (and, with `column`, only rows where that boolean column is set)."""
    keep = rows["split"] == split
    if column is not None:
        if column not in rows.columns:
            raise OrthodiffError(f"catalog has no column {column!r}; run `orthodiff catalog split --subsets`")
        keep &= rows[column].fillna(False).astype(bool)
    keep = keep.to_numpy()
    if not keep.any():
        raise OrthodiffError(f"no {split} series" + (f" in {column}" if column else "") + f" of plane {rows['plane'].iloc[0]}")
    idx = np.flatnonzero(keep)
    return ds.isel(series=idx), rows.iloc[idx].reset_index(drop=True)


def exam_predictions(rows: pd.DataFrame, proba: np.ndarray, labels: list[str]) -> pd.DataFrame:
    """Series probabilities averaged per exam (scans and planes), one row per `case_id`:
    `case_id`, `patient_id`, the 0/1 labels and `p_<label>` (the fuse runs' format)."""
    p = pd.DataFrame(proba, columns=[f"p_{c}" for c in labels])
    frame = pd.concat([rows[["case_id", "patient_id", *labels]].reset_index(drop=True), p], axis=1)
    return frame.groupby(["case_id", "patient_id"], sort=True, as_index=False).mean()
