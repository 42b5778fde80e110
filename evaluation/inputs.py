"""Reading what `evaluate` compares: the catalog's series, reference masks, model masks and
T2 maps, each checked against its series' grid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from orthodiff.catalogs.cohort import read_catalog, resolve_path
from orthodiff.catalogs.readers import read_mask, series_geometry
from orthodiff.catalogs.tasks import StructureSet, structures
from orthodiff.errors import OrthodiffError
from orthodiff.files import series_file


@dataclass(frozen=True)
class Model:
    """A model to evaluate: its name (the folder's) and the folder holding its masks."""

    name: str
    masks: Path


def model_of(path: str | Path) -> Model:
    """A `segment predict` run (masks under `masks/`) or a folder of `<series_id>.nii.gz`."""
    path = Path(path)
    if not path.is_dir():
        raise OrthodiffError(f"{path}: not a directory; pass a `segment predict` run or a folder of <series_id>.nii.gz masks")
    masks = path / "masks" if (path / "masks").is_dir() else path
    return Model(path.resolve().name, masks)


def models_of(paths) -> list[Model]:
    models = [model_of(p) for p in paths]
    names = [m.name for m in models]
    if len(set(names)) < len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise OrthodiffError(f"two model folders share the name {dup[0]!r}; models are named by their folder, rename one")
    return models


def reference_rows(catalog_path, split: str | None, plane: str | None = None) -> tuple[pd.DataFrame, StructureSet]:
    """Catalog rows with a reference mask (of `split` and `plane` unless None) and the joint's structures."""
    catalog = read_catalog(catalog_path)
    rows = catalog[catalog["mask_path"].fillna("").astype(str) != ""]
    if split:
        rows = rows[rows["split"] == split]
    if plane:
        rows = rows[rows["plane"] == plane]
    if rows.empty:
        raise OrthodiffError(f"{catalog_path}: no series with a reference mask_path" + (f" in split {split!r}" if split else "")
                             + (f" of plane {plane!r}" if plane else ""))
    joints = rows["joint"].unique()
    if len(joints) != 1:
        raise OrthodiffError(f"{catalog_path}: evaluate one joint at a time, found {sorted(joints)}")
    return rows.reset_index(drop=True), structures(str(joints[0]))


def check_complete(model: Model, series_ids) -> None:
    missing = [s for s in series_ids if not series_file(model.masks, s).is_file()]
    if missing:
        raise OrthodiffError(
            f"{model.masks}: model {model.name!r} has no mask for {len(missing)} of {len(series_ids)} series "
            f"(first: {missing[0]}.nii.gz); predict the same split, or choose the series with --split and --plane")


def _on_grid(path: Path, affine: np.ndarray, what: str) -> None:
    import nibabel as nib

    other = np.asarray(nib.load(path).affine)
    if not np.allclose(other, affine, atol=1e-3):
        raise OrthodiffError(f"{path}: {what} is on another grid than its series (affine differs); resample it onto the series")


def load_mask(path: Path, shape, affine: np.ndarray, structure_set: StructureSet) -> np.ndarray:
    """(slices, rows, columns) uint8 labels; shape, affine and label values checked."""
    mask = read_mask(path, shape, structure_set.values)
    _on_grid(path, affine, "the mask")
    return mask


def load_map(path: Path, shape, affine: np.ndarray, column: str = "t2_path") -> np.ndarray:
    """A relaxation map (T2, T1rho) in ms on its series' grid, (slices, rows, columns) float32."""
    import nibabel as nib

    if not path.is_file():
        raise OrthodiffError(f"{path}: map not found (catalog column {column})")
    image = nib.load(path)  # the header: its shape is checked before any voxel is read
    if tuple(image.shape[:3][::-1]) != tuple(shape) or int(np.prod(image.shape[3:])) != 1:
        raise OrthodiffError(f"{path}: map shape {tuple(image.shape[:3][::-1])} differs from its series {tuple(shape)} "
                             f"(catalog column {column})")
    data = np.asarray(image.dataobj, dtype=np.float32)
    data = data.reshape(data.shape[:3]).transpose(2, 1, 0)
    _on_grid(path, affine, f"the map of {column}")
    return data


MIN_PIXELS, MIN_VOXELS = 100, 1000  # the paper's ground-truth cleaning thresholds


def clean_mask(mask: np.ndarray, min_pixels: int = MIN_PIXELS, min_voxels: int = MIN_VOXELS) -> tuple[np.ndarray, int]:
    """A (slices, rows, columns) label mask without the connected components (per label,
    face-connected) of fewer than `min_pixels` pixels within a slice, then of fewer than
    `min_voxels` voxels in the volume (0 turns a step off), and the number of voxels removed.
    The paper removes them from the ground truth as annotation noise before scoring; its
    thresholds are pixels of the stored images (no resampling), so they mean less tissue
    on finer grids."""
    from scipy.ndimage import generate_binary_structure, label

    out = np.array(mask, copy=True)
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = generate_binary_structure(2, 1)  # no connection across slices
    for value in np.unique(out[out > 0]):
        for connectivity, minimum in ((in_plane, min_pixels), (None, min_voxels)):
            if minimum > 0:
                components, _ = label(out == value, connectivity)
                small = np.bincount(components.ravel()) < minimum
                small[0] = False
                out[small[components]] = 0
    return out, int((out != mask).sum())


@dataclass
class Series:
    """One series' reference mask, geometry and relaxation maps (`t2`, `t1rho`: those the
    catalog row has)."""

    shape: tuple
    affine: np.ndarray
    reference: np.ndarray
    maps: dict


def read_series(row, catalog_path, structure_set: StructureSet) -> Series:
    from orthodiff.evaluation.biomarkers import MAPS

    shape, affine = series_geometry(resolve_path(catalog_path, row.path))
    reference = load_mask(resolve_path(catalog_path, row.mask_path), shape, affine, structure_set)
    maps = {}
    for name in MAPS:
        value = getattr(row, f"{name}_path", None)
        if isinstance(value, str) and value:
            maps[name] = load_map(resolve_path(catalog_path, value), shape, affine, f"{name}_path")
    return Series(shape, affine, reference, maps)

