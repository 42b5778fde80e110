"""`orthodiff ingest`: catalog series -> checked, preprocessed volumes in the store.

Each series is first turned into its plane's canonical orientation (`catalogs.geometry`;
left knees mirrored to right with `mirror_left`), its mask with exactly the same
reorientation. Preprocessing then follows the reference: the 16 central slices, each
resized in-plane to `size` x `size`, min-max scaled to [-1, 1]. Masks get the same slices,
resized with nearest neighbour. The voxel size as read and as stored, the orientation and
the laterality are stored with each series. Series are appended in small batches; a rerun
skips what is there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from monai.transforms import Resize, ScaleIntensity

from orthodiff.catalogs.cohort import read_catalog, resolve_path, validate_catalog
from orthodiff.catalogs.geometry import Reorientation, laterality_of
from orthodiff.catalogs.readers import read_mask, read_series
from orthodiff.catalogs.tasks import structures
from orthodiff.errors import OrthodiffError
from orthodiff.featurestore.store import open_root
from orthodiff.featurestore.verify import check_volumes
from orthodiff.featurestore.volumes import (
    DEPTH, GEOMETRY, GROUP as VOLUMES, append_volumes, ingested_series, rewrite_rows,
)
from orthodiff.progress import Advance, maybe_progress

BATCH = 16
REJECTS = "rejects.parquet"
META = ["series_id", "case_id", "patient_id", "plane", "scan", "split", *GEOMETRY]
NO_GEOMETRY = "a .npy series carries no voxel size or orientation (stored as read)"


def central_slices(data: np.ndarray, depth: int = DEPTH) -> np.ndarray:
    start = (data.shape[0] - depth) // 2
    return data[start : start + depth]


def preprocess(data: np.ndarray, size: int) -> np.ndarray:
    """(slices, H, W) -> (16, size, size) float16 in [-1, 1]."""
    image = Resize((size, size), mode="bilinear", anti_aliasing=True)(central_slices(data))
    return np.asarray(ScaleIntensity(minv=-1.0, maxv=1.0)(image), dtype=np.float16)


def preprocess_mask(mask: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Resize((size, size), mode="nearest")(central_slices(mask)), dtype=np.uint8)


def laterality(row) -> str:
    """The row's side from the catalog's optional `laterality` column ("unknown" without it)."""
    value = getattr(row, "laterality", None)
    side = laterality_of(value)
    if side is None:
        raise OrthodiffError(f"column 'laterality', value {value!r}: expected L, R, left, right or empty (unknown)")
    return side


def _load(row, catalog_path: Path, size: int, mirror_left: bool = False) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(volume, mask or None, geometry columns of `GEOMETRY`) of one catalog row."""
    path = resolve_path(catalog_path, row.path)
    side = laterality(row)
    image = read_series(path, expected_plane=row.plane)
    if image.affine is None:
        turn, data = None, image.data
        spacing, geometry = (np.nan,) * 3, {"orientation": "", "mirrored": False, "spacing_reason": NO_GEOMETRY}
    else:
        turn = Reorientation.of(image.affine, image.data.shape, row.plane, mirror=mirror_left and side == "left")
        data, spacing = turn.apply(image.data), turn.spacing
        geometry = {"orientation": turn.codes, "mirrored": mirror_left and side == "left", "spacing_reason": ""}
    kept = central_slices(data)
    if kept.min() == kept.max():  # what the backbone would see carries no image
        raise OrthodiffError(f"{path}: the {DEPTH} central slices are constant (every voxel {kept.flat[0]:g})")
    mask = None
    if isinstance(row.mask_path, str) and row.mask_path:
        allowed = structures(row.joint).values
        mask = read_mask(resolve_path(catalog_path, row.mask_path), image.data.shape, allowed, image.affine)
        mask = preprocess_mask(mask if turn is None else turn.apply(mask), size)
    stored = (spacing[0], spacing[1] * data.shape[1] / size, spacing[2] * data.shape[2] / size)
    return preprocess(data, size), mask, {"spacing": spacing, "stored_spacing": stored, "laterality": side, **geometry}


def ingest(
    catalog_path: str | Path, store: str, size: int = 256, on_error: str = "fail", progress: bool | Advance = True,
    repair: bool = False, mirror_left: bool = False,
) -> pd.DataFrame:
    """Ingest every catalog series not yet in `store`; returns one row per series handled
    (`series_id`, `status` ingested|skipped|rejected|repaired, `reason`).

    `mirror_left` flips series of left knees (catalog column `laterality`) left-right so
    that they look like right knees; each series records whether it was (`mirrored`).

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
                volume, mask, geometry = _load(row, catalog_path, size, mirror_left)
            except OrthodiffError as err:
                if on_error == "fail":
                    flush()
                    raise OrthodiffError(f"series {row.series_id!r}: {err}") from None
                log.append({"series_id": row.series_id, "status": "rejected", "reason": str(err), "path": row.path})
            else:
                batch.append((volume, mask, {**{c: getattr(row, c) for c in META if c not in geometry}, **geometry}))
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
    group = root[VOLUMES]  # each as it was stored: mirrored or not
    mirrored = group["mirrored"].get_orthogonal_selection((rows,)) if "mirrored" in group else [False] * len(rows)
    loaded = [_load(next(df[df["series_id"] == s].itertuples(index=False)), catalog_path, size, bool(flip))
              for s, flip in zip(ids, mirrored)]
    masks = [np.zeros_like(v, np.uint8) if m is None else m for v, m, _ in loaded]
    rewrite_rows(store, rows, np.stack([v for v, _, _ in loaded]), np.stack(masks))
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
