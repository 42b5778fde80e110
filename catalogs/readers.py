"""Reading one series (NIfTI, DICOM folder or file, MRNet `.npy`) as a checked 3D array.

Every reader returns `(array, plane)`: a float32 array (slices, rows, columns) and the
plane inferred from the image orientation (None for `.npy`, which carries none). Every
problem is an `OrthodiffError` naming the file and the reason; messages never carry
patient names or DICOM identifiers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from orthodiff.catalogs.tasks import PLANES
from orthodiff.errors import OrthodiffError

MIN_SLICES = 16
SPACING_TOLERANCE = 0.05  # relative spread of slice gaps still called "consistent"


def plane_of(normal) -> str:
    """The plane whose normal is closest to the slice direction `normal` (patient axes)."""
    return PLANES[int(np.argmax(np.abs(np.asarray(normal, dtype=float)[:3])))]


def _read_nifti(path: Path) -> tuple[np.ndarray, str]:
    import nibabel as nib

    try:
        image = nib.load(path)
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as err:
        raise OrthodiffError(f"{path}: unreadable or truncated NIfTI ({type(err).__name__})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise OrthodiffError(f"{path}: not a 3D image (shape {data.shape})")
    # The third array axis is the slice axis; its world direction gives the plane.
    return data.transpose(2, 1, 0), plane_of(image.affine[:3, 2])


def _dicom_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise OrthodiffError(f"{path}: empty DICOM folder")
    return files


def _read_dicom(path: Path) -> tuple[np.ndarray, str]:
    import pydicom

    slices = []
    for file in _dicom_files(path):
        try:
            ds = pydicom.dcmread(file)
            pixels = ds.pixel_array.astype(np.float32)
        except Exception as err:
            raise OrthodiffError(f"{file}: unreadable or truncated DICOM ({type(err).__name__})") from None
        if pixels.ndim != 2:
            raise OrthodiffError(f"{file}: multi-frame DICOM is not supported (one slice per file expected)")
        try:
            orientation = np.asarray(ds.ImageOrientationPatient, dtype=float)
            position = np.asarray(ds.ImagePositionPatient, dtype=float)
        except AttributeError:
            raise OrthodiffError(f"{file}: DICOM without ImageOrientationPatient/ImagePositionPatient") from None
        scaled = pixels * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
        slices.append((str(ds.get("SeriesInstanceUID", "")), orientation, position, scaled))
    uids = {s[0] for s in slices}
    if len(uids) > 1:
        raise OrthodiffError(f"{path}: {len(uids)} DICOM series in one folder (one series per catalog row)")
    normal = np.cross(slices[0][1][:3], slices[0][1][3:])
    slices.sort(key=lambda s: float(s[2] @ normal))
    if len(slices) >= 3:
        gaps = np.diff([float(s[2] @ normal) for s in slices])
        if gaps.min() <= 0 or (gaps.max() - gaps.min()) > SPACING_TOLERANCE * gaps.mean():
            raise OrthodiffError(
                f"{path}: inconsistent slice spacing ({gaps.min():.2f} to {gaps.max():.2f} mm)"
            )
    shapes = {s[3].shape for s in slices}
    if len(shapes) > 1:
        raise OrthodiffError(f"{path}: slices of different sizes {sorted(shapes)}")
    return np.stack([s[3] for s in slices]), plane_of(normal)


def _read_npy(path: Path) -> tuple[np.ndarray, None]:
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as err:
        raise OrthodiffError(f"{path}: unreadable or truncated .npy ({type(err).__name__})") from None
    if data.ndim != 3:
        raise OrthodiffError(f"{path}: not a 3D image (shape {data.shape})")
    return data.astype(np.float32), None


def read_series(path: str | Path, expected_plane: str | None = None) -> np.ndarray:
    """The series at `path` as float32 (slices, rows, columns), checked for use.

    Rejected: a missing or unreadable file, not 3D, fewer than 16 slices, NaN/Inf voxels,
    a constant image, inconsistent slice spacing (DICOM), or an orientation that is not
    `expected_plane`.
    """
    path = Path(path)
    if not path.exists():
        raise OrthodiffError(f"{path}: file not found")
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        data, plane = _read_nifti(path)
    elif name.endswith(".npy"):
        data, plane = _read_npy(path)
    else:
        data, plane = _read_dicom(path)
    if data.shape[0] < MIN_SLICES:
        raise OrthodiffError(f"{path}: {data.shape[0]} slices, at least {MIN_SLICES} needed")
    if not np.isfinite(data).all():
        raise OrthodiffError(f"{path}: NaN or Inf voxels")
    if data.min() == data.max():
        raise OrthodiffError(f"{path}: constant image (every voxel {data.flat[0]:g})")
    if expected_plane is not None and plane is not None and plane != expected_plane:
        raise OrthodiffError(f"{path}: the image is {plane} but the catalog says {expected_plane}")
    return data


def read_mask(path: str | Path, shape: tuple[int, ...], allowed: list[int]) -> np.ndarray:
    """A NIfTI label mask on the same grid as its series (`shape` as `read_series` gives it)."""
    path = Path(path)
    if not path.exists():
        raise OrthodiffError(f"{path}: mask file not found")
    data, _ = _read_nifti(path)
    if data.shape != tuple(shape):
        raise OrthodiffError(f"{path}: mask shape {data.shape} differs from its series {tuple(shape)}")
    values = np.unique(data)
    if not np.array_equal(values, np.round(values)):
        raise OrthodiffError(f"{path}: mask values must be integer structure labels, found {values[values != np.round(values)][:3].tolist()}")
    bad = sorted(set(values.astype(int).tolist()) - {0, *allowed})
    if bad:
        raise OrthodiffError(f"{path}: mask labels {bad[:5]} are not structures of this joint {allowed}")
    return data.astype(np.uint8)


def series_geometry(path: str | Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """((slices, rows, columns), NIfTI affine) of a series, for writing results on its grid.

    The affine maps (column, row, slice) indices to RAS millimetres, as in NIfTI; for DICOM
    it is built from the orientation, positions and pixel spacing; `.npy` series carry no
    geometry and get the identity.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        image = nib.load(path)
        cols, rows, slices = image.shape[:3]
        return (slices, rows, cols), np.asarray(image.affine)
    if name.endswith(".npy"):
        return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape), np.eye(4)
    import pydicom

    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in _dicom_files(path)]
    orientation = np.asarray(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = sorted((np.asarray(h.ImagePositionPatient, dtype=float) for h in headers), key=lambda p: float(p @ normal))
    row_spacing, col_spacing = (float(v) for v in headers[0].PixelSpacing)
    step = (positions[-1] - positions[0]) / max(len(positions) - 1, 1)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = orientation[:3] * col_spacing, orientation[3:] * row_spacing, step, positions[0]
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return (len(headers), int(headers[0].Rows), int(headers[0].Columns)), ras
