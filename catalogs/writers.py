"""Writing series to disk as NIfTI or DICOM with correct geometry (synthetic cohorts, tests).

A series array is (slices, rows, columns). Its geometry is given per plane by the world
directions (RAS, millimetres) of a column step, a row step and a slice step; the slice
step is the plane's normal, which is how `readers.read_series` recognises the plane. This
storage order is also the plane's canonical orientation (`catalogs.geometry.CANONICAL`);
`grid` writes a series in any other (tests write every storage order of one volume).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

# (column direction, row direction, slice direction) in RAS for each plane; the slice
# direction is column x row, so DICOM readers stack the slices in the same order.
DIRECTIONS = {
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (-1.0, 0.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0)),
    "axial": ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, -1.0)),
}
_LPS = np.array([-1.0, -1.0, 1.0])  # DICOM patient axes from RAS


def affine(plane: str, shape: tuple[int, int, int], pixel: float, thickness: float) -> np.ndarray:
    """NIfTI affine (array axes i=column, j=row, k=slice) of a series centred on the origin."""
    col, row, normal = (np.asarray(v) for v in DIRECTIONS[plane])
    n_slices, n_rows, n_cols = shape
    out = np.eye(4)
    out[:3, 0], out[:3, 1], out[:3, 2] = col * pixel, row * pixel, normal * thickness
    out[:3, 3] = -(out[:3, :3] @ (np.array([n_cols, n_rows, n_slices]) - 1) / 2)
    return out


def write_nifti(path: str | Path, data: np.ndarray, plane: str, pixel: float, thickness: float,
                grid: np.ndarray | None = None) -> Path:
    """Write (slices, rows, columns) `data` as NIfTI with the plane's geometry (or the affine `grid`)."""
    import nibabel as nib

    grid = affine(plane, data.shape, pixel, thickness) if grid is None else grid
    image = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), grid)
    image.header.set_xyzt_units("mm")
    nib.save(image, str(path))
    return Path(path)


def write_dicom_series(
    folder: str | Path, data: np.ndarray, plane: str, pixel: float, thickness: float,
    pseudonym: str, uid_seed: str, acquisition: dict | None = None, grid: np.ndarray | None = None,
) -> Path:
    """Write (slices, rows, columns) `data` (scaled to 12-bit) as single-frame MR DICOM files.

    Identifying tags carry only `pseudonym`; UIDs are derived from `uid_seed`, so the same
    seed gives the same files. `acquisition` adds attributes by DICOM keyword (EchoTime,
    RepetitionTime, FlipAngle, ...). `grid` (a NIfTI affine of (column, row, slice)) replaces
    the plane's geometry, `pixel` and `thickness`.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import MRImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lo, hi = float(data.min()), float(data.max())
    pixels = np.round((data - lo) / ((hi - lo) or 1.0) * 4095).astype(np.uint16)
    grid = affine(plane, data.shape, pixel, thickness) if grid is None else np.asarray(grid, dtype=float)
    steps = np.linalg.norm(grid[:3, :3], axis=0)  # column, row, slice spacing
    col, row = (grid[:3, i] / steps[i] * _LPS for i in (0, 1))
    series_uid = generate_uid(entropy_srcs=[uid_seed, "series"])
    study_uid = generate_uid(entropy_srcs=[uid_seed.rsplit("-", 2)[0], "study"])
    date = datetime.date(2000, 1, 1).strftime("%Y%m%d")
    for k, frame in enumerate(pixels):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[uid_seed, str(k)])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{k:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality = "MR"
        ds.PatientName = ds.PatientID = pseudonym
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.StudyDate = ds.SeriesDate = date
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*col, *row)]
        position = (grid @ np.array([0.0, 0.0, k, 1.0]))[:3] * _LPS
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.PixelSpacing = [f"{steps[1]:.4f}", f"{steps[0]:.4f}"]  # between rows, between columns
        ds.SliceThickness = f"{steps[2]:.4f}"
        for keyword, value in (acquisition or {}).items():
            setattr(ds, keyword, f"{value:g}" if isinstance(value, float) else value)
        ds.Rows, ds.Columns = frame.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = frame.tobytes()
        ds.save_as(folder / f"{k:04d}.dcm", enforce_file_format=True)
    return folder
