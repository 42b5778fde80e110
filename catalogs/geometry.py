"""Voxel size, orientation and laterality of a series, and its canonical orientation.

Two scanners may store the same sagittal knee with anterior on opposite sides, rows
transposed or slices in reverse order; a network fed their arrays as stored would see
mirrored anatomy. Ingest therefore turns every series into ONE orientation per plane,
given as the anatomical direction (RAS letters, as nibabel's `aff2axcodes`) in which the
stored (slice, row, column) axes increase:

| plane    | slice | row | column | |
|----------|-------|-----|--------|-|
| sagittal | L     | I   | A      | slices right to left, superior at the top, anterior to the right |
| coronal  | A     | I   | R      | slices posterior to anterior, superior at the top, patient's right to the right |
| axial    | I     | P   | R      | slices superior to inferior, anterior at the top, patient's right to the right |

As with nibabel's `as_closest_canonical` or MONAI's `Orientation`, axes are only permuted
and flipped, never resampled: each stored axis is the file's axis closest to its target
direction, and an oblique series keeps its obliquity (the affine keeps it exactly).

It is the order in which orthodiff's own writers (`catalogs.writers.DIRECTIONS`) have
always stored the synthetic phantom, so the phantom's stored bytes did not change when
the reorientation was introduced. With `mirror` (ingest `--mirror-left`) a left knee is
flipped along the left-right axis so that it looks like a right knee; its recorded
orientation then says so honestly (`R` where a right knee has `L`, and the reverse).

Array axes are (slice, row, column); affines are NIfTI's, mapping (column, row, slice)
indices to RAS millimetres. The axis bookkeeping is nibabel's (`io_orientation`,
`ornt_transform`, `apply_orientation`, `inv_ornt_aff`); only the choice of target is ours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CANONICAL = {"sagittal": "LIA", "coronal": "AIR", "axial": "IPR"}  # (slice, row, column)
AXES = ("slice", "row", "column")
LATERALITIES = ("left", "right", "unknown")
_LATERALITY = {"l": "left", "left": "left", "r": "right", "right": "right", "": "unknown", "u": "unknown",
               "unknown": "unknown", "b": "unknown", "both": "unknown"}  # DICOM (0020,0060) uses L, R (B, U: none)
_MIRROR = str.maketrans("LR", "RL")


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """(slice, row, column) voxel size in mm of a NIfTI affine whose axes are (column, row, slice)."""
    col, row, sl = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    return float(sl), float(row), float(col)


def axis_codes(affine: np.ndarray) -> str:
    """Anatomical directions of the (slice, row, column) axes, e.g. "LIA"."""
    import nibabel as nib

    return "".join(nib.aff2axcodes(np.asarray(affine)))[::-1]


def laterality_of(value) -> str | None:
    """"left", "right" or "unknown" for a catalog `laterality` cell (L/R/left/right in any
    case, empty or missing: unknown); None for a value that names no side."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "unknown"
    return _LATERALITY.get(str(value).strip().lower())


@dataclass(frozen=True)
class Reorientation:
    """How a series stored with `affine` becomes the plane's canonical orientation.

    `apply` maps an array on the series' grid (its image, its mask) to the canonical grid,
    `undo` maps an array on the canonical grid back (a predicted mask to write beside the
    series); `affine` is the canonical grid's affine, `codes` its axis directions.
    """

    transform: np.ndarray  # nibabel orientation transform, rows = NIfTI axes (column, row, slice)
    affine: np.ndarray
    codes: str
    shape: tuple[int, int, int]  # (slices, rows, columns) on the canonical grid

    @classmethod
    def of(cls, affine: np.ndarray, shape: tuple[int, int, int], plane: str, mirror: bool = False) -> Reorientation:
        """For a (slices, rows, columns) `shape` series with `affine`; `mirror` flips left-right."""
        import nibabel as nib
        from nibabel.orientations import axcodes2ornt, inv_ornt_aff, ornt_transform

        codes = CANONICAL[plane].translate(_MIRROR) if mirror else CANONICAL[plane]
        transform = ornt_transform(nib.io_orientation(np.asarray(affine)), axcodes2ornt(codes[::-1]))
        nifti = tuple(shape)[::-1]
        new = np.asarray(affine) @ inv_ornt_aff(transform, nifti)
        canonical = [0, 0, 0]
        for size, (axis, _) in zip(nifti, transform):
            canonical[int(axis)] = int(size)
        return cls(transform, new, codes, tuple(canonical[::-1]))

    def apply(self, array: np.ndarray) -> np.ndarray:
        from nibabel.orientations import apply_orientation

        return np.ascontiguousarray(apply_orientation(np.asarray(array).transpose(2, 1, 0), self.transform).transpose(2, 1, 0))

    def undo(self, array: np.ndarray) -> np.ndarray:
        from nibabel.orientations import apply_orientation, ornt_transform

        back = ornt_transform(np.column_stack([np.arange(3), np.ones(3)]), self.transform)
        return np.ascontiguousarray(apply_orientation(np.asarray(array).transpose(2, 1, 0), back).transpose(2, 1, 0))

    @property
    def spacing(self) -> tuple[float, float, float]:
        return spacing_of(self.affine)
