"""`orthodiff ingest`: catalog series -> checked, preprocessed volumes in the store.

Preprocessing follows the reference: the 16 central slices, each resized in-plane to
`size` x `size`, min-max scaled to [-1, 1]. Masks get the same slices, resized with
nearest neighbour. Series are appended in small batches; a rerun skips what is there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from monai.transforms import Resize, ScaleIntensity

from orthodiff.catalogs.cohort import read_catalog, resolve_path, validate_catalog
from orthodiff.catalogs.readers import read_mask, read_series
from orthodiff.catalogs.tasks import structures
from orthodiff.errors import OrthodiffError
from orthodiff.featurestore.store import open_root
from orthodiff.featurestore.verify import check_volumes
from orthodiff.featurestore.volumes import DEPTH, GROUP as VOLUMES, append_volumes, ingested_series, rewrite_rows
from orthodiff.progress import Advance, maybe_progress

BATCH = 16
REJECTS = "rejects.parquet"
META = ["series_id", "case_id", "patient_id", "plane", "scan", "split"]


def central_slices(data: np.ndarray, depth: int = DEPTH) -> np.ndarray:
    start = (data.shape[0] - depth) // 2
    return data[start : start + depth]


def preprocess(data: np.ndarray, size: int) -> np.ndarray:
    """(slices, H, W) -> (16, size, size) float16 in [-1, 1]."""
    image = Resize((size, size), mode="bilinear", anti_aliasing=True)(central_slices(data))
    return np.asarray(ScaleIntensity(minv=-1.0, maxv=1.0)(image), dtype=np.float16)


def preprocess_mask(mask: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Resize((size, size), mode="nearest")(central_slices(mask)), dtype=np.uint8)


def _load(row, catalog_path: Path, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    path = resolve_path(catalog_path, row.path)
    data = read_series(path, expected_plane=row.plane)
    kept = central_slices(data)
    if kept.min() == kept.max():  # what the backbone would see carries no image
        raise OrthodiffError(f"{path}: the {DEPTH} central slices are constant (every voxel {kept.flat[0]:g})")
    mask = None
    if isinstance(row.mask_path, str) and row.mask_path:
        allowed = structures(row.joint).values
        mask = preprocess_mask(read_mask(resolve_path(catalog_path, row.mask_path), data.shape, allowed), size)
    return preprocess(data, size), mask


def ingest(
    catalog_path: str | Path, store: str, size: int = 256, on_error: str = "fail", progress: bool | Advance = True,
    repair: bool = False,
) -> pd.DataFrame:
    """Ingest every catalog series not yet in `store`; returns one row per series handled
    (`series_id`, `status` ingested|skipped|rejected|repaired, `reason`).

    `repair` first checks every stored series against its checksum and reads the damaged
    ones again from the catalog's files.
    `on_error="fail"` stops at the first bad series (earlier ones stay ingested, nothing of
    the bad one is written); `"skip"` goes on and writes the rejects to `<store>/rejects.parquet`.
    """
    if on_error not in ("fail", "skip"):
        raise OrthodiffError(f"--on-error {on_error!r}: expected 'fail' or 'skip'")
    if size < 8:
        raise OrthodiffError(f"--size {size}: at least 8 pixels")
    catalog_path = Path(catalog_path)
    df = read_catalog(catalog_path)
    validate_catalog(df, catalog_path, check_files=False)  # missing files become rejects
    repaired = _repair(df, catalog_path, store, size) if repair else []
    done = ingested_series(store)
    log = [{"series_id": s, "status": "repaired", "reason": "checksum mismatch"} for s in repaired]
    log += [{"series_id": s, "status": "skipped", "reason": "already ingested"} for s in df["series_id"] if s in done]
    todo = df[~df["series_id"].isin(done)]
    batch: list[tuple] = []

    def flush() -> None:
        if batch:
            volumes, masks, rows = zip(*batch)
            has_masks = any(m is not None for m in masks)
            stacked = np.stack([np.zeros_like(volumes[0], np.uint8) if m is None else m for m in masks])
            append_volumes(store, np.stack(volumes), pd.DataFrame(rows)[META], stacked if has_masks else None)
            batch.clear()

    with maybe_progress(progress, "ingest", len(todo), "series") as advance:
        for row in todo.itertuples(index=False):
            try:
                volume, mask = _load(row, catalog_path, size)
            except OrthodiffError as err:
                if on_error == "fail":
                    flush()
                    raise OrthodiffError(f"series {row.series_id!r}: {err}") from None
                log.append({"series_id": row.series_id, "status": "rejected", "reason": str(err), "path": row.path})
            else:
                batch.append((volume, mask, {c: getattr(row, c) for c in META}))
                log.append({"series_id": row.series_id, "status": "ingested", "reason": ""})
                if len(batch) == BATCH:
                    flush()
            advance()
        flush()
    result = pd.DataFrame(log, columns=["series_id", "status", "reason", "path"])
    rejects = result[result["status"] == "rejected"][["series_id", "path", "reason"]]
    _write_rejects(store, rejects)
    return result.drop(columns="path")


def _repair(df: pd.DataFrame, catalog_path: Path, store: str, size: int) -> list[str]:
    """Read the series whose stored volume fails its checksum again; returns their ids."""
    root = open_root(store)
    rows = check_volumes(store, root)[1]
    if not rows:
        return []
    ids = [str(s) for s in root[VOLUMES]["series"].get_orthogonal_selection((rows,))]
    by_id = df.set_index("series_id")
    missing = [s for s in ids if s not in by_id.index]
    if missing:
        raise OrthodiffError(f"{store}: damaged series {missing[0]!r} is not in {catalog_path}; pass its catalog")
    loaded = [_load(next(df[df["series_id"] == s].itertuples(index=False)), catalog_path, size) for s in ids]
    masks = [np.zeros_like(v, np.uint8) if m is None else m for v, m in loaded]
    rewrite_rows(store, rows, np.stack([v for v, _ in loaded]), np.stack(masks))
    return ids


def _write_rejects(store: str, rejects: pd.DataFrame) -> None:
    """This run's rejects; none removes the table of an earlier run (its series are fixed or dropped)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(store))
    path = f"{root.rstrip('/')}/{REJECTS}"
    if len(rejects):
        fs.makedirs(root, exist_ok=True)
        with fs.open(path, "wb") as f:
            rejects.to_parquet(f, index=False)
    elif fs.exists(path):
        fs.rm(path)
