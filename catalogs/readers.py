"""Reading one series (NIfTI, DICOM folder, file or series manifest, MRNet `.npy`) as a checked 3D array.

Every reader returns `(array, affine)`: a float32 array (slices, rows, columns) and the
NIfTI-style affine mapping (column, row, slice) indices to RAS millimetres (None for `.npy`,
which carries no geometry); `read_series` hands both on as an `Image`, so that the voxel size
and orientation travel with the array (`catalogs.geometry`). A DICOM series' slice step is
the distance between its slice positions, not its SliceThickness. The plane is read off the affine with nibabel's `io_orientation`.
DICOM headers are interpreted by nibabel's DICOM wrappers (orientation, position along the
slice normal, rescale slope/intercept, series signature); MONAI's `PydicomReader` is not used
because it stacks slices by InstanceNumber and measures spacing along z only, which is wrong
for sagittal and coronal series. Every problem is an `OrthodiffError` naming the file and the
reason; messages never carry patient names or DICOM identifiers.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from orthodiff.catalogs.tasks import PLANES
from orthodiff.errors import OrthodiffError

MIN_SLICES = 16
SPACING_TOLERANCE = 0.05  # relative spread of slice gaps still called "consistent"
MAX_VOXELS = 2**27  # 134 M voxels (512 MiB as float32): far above any MRI series; ORTHODIFF_MAX_VOXELS overrides
MAX_VOXELS_ENV = "ORTHODIFF_MAX_VOXELS"


def check_voxels(path, shape) -> None:
    """Refuse an image whose header claims more voxels than `MAX_VOXELS` (or the environment's
    `ORTHODIFF_MAX_VOXELS`), before any of its voxels is read: a corrupt or hostile header
    must not make a reader allocate gigabytes."""
    import os

    limit = int(os.environ.get(MAX_VOXELS_ENV) or MAX_VOXELS)
    count = int(np.prod([int(n) for n in shape], dtype=object))
    if count > limit:
        raise OrthodiffError(f"{path}: the header claims {' x '.join(str(int(n)) for n in shape)} = {count:,} voxels, over "
                             f"the limit of {limit:,} (a damaged header? set {MAX_VOXELS_ENV} to allow larger images)")


def plane_of(affine: np.ndarray) -> str:
    """The plane whose normal is the world axis closest to the slice axis of `affine`.

    `affine` maps (column, row, slice) indices to RAS (or LPS: only the axis matters).
    """
    import nibabel as nib

    return PLANES[int(nib.io_orientation(np.asarray(affine))[2, 0])]


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    try:
        image = nib.load(path)  # the header only
    except Exception as err:
        raise OrthodiffError(f"{path}: unreadable or truncated NIfTI ({type(err).__name__})") from None
    check_voxels(path, image.shape)
    try:
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as err:
        raise OrthodiffError(f"{path}: unreadable or truncated NIfTI ({type(err).__name__})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise OrthodiffError(f"{path}: not a 3D image (shape {data.shape})")
    return data.transpose(2, 1, 0), np.asarray(image.affine)


def _dicom_files(path: Path) -> list[Path]:
    """The files of one DICOM series: a folder's files, one file, or the files a series
    manifest (`.json`, written by `catalog from-dicom`) lists relative to its `root`."""
    if path.name.lower().endswith(".json"):
        return _manifest_files(path)
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise OrthodiffError(f"{path}: empty DICOM folder")
    return files


def _manifest_files(path: Path) -> list[Path]:
    import json

    try:
        manifest = json.loads(path.read_text())
        root, files = Path(manifest["root"]), [Path(f) for f in manifest["files"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise OrthodiffError(f"{path}: not a readable DICOM series manifest ({type(err).__name__})") from None
    root = root if root.is_absolute() else path.parent / root
    if not files:
        raise OrthodiffError(f"{path}: the series manifest lists no files")
    return [root / f for f in files]


def _dicom_slices(path: Path, pixels: bool = True) -> list[tuple[Path, object]]:
    """(file, nibabel DICOM wrapper) of each slice of one series, in slice order, checked.

    nibabel's slice normal is the column cosine x the row cosine (right-handed in its
    (row, column, slice) order); ours, as ITK's and dcm2niix's, is row x column, so the
    slices are sorted by decreasing `slice_indicator`.
    """
    import pydicom

    with warnings.catch_warnings():
        # nibabel.nicom warns on import that its *readers* (Siemens mosaics) are experimental;
        # the plain `Wrapper` used here only reads standard single-frame header fields.
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom.dicomwrappers import Wrapper

    slices = []
    for file in _dicom_files(path):
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=not pixels)
        except Exception as err:
            raise OrthodiffError(f"{file}: unreadable or truncated DICOM ({type(err).__name__})") from None
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise OrthodiffError(f"{file}: multi-frame DICOM is not supported (one slice per file expected)")
        wrapper = Wrapper(ds)
        if wrapper.slice_indicator is None:
            raise OrthodiffError(f"{file}: DICOM without ImageOrientationPatient/ImagePositionPatient")
        slices.append((file, wrapper))
    uids = {w.get("SeriesInstanceUID", "") for _, w in slices}
    if len(uids) > 1:
        raise OrthodiffError(f"{path}: {len(uids)} DICOM series in one folder (one series per catalog row)")
    first = slices[0]
    odd = next((file for file, w in slices[1:] if not w.is_same_series(first[1])), None)
    if odd is not None:
        raise OrthodiffError(f"{odd}: image size, orientation or pixel spacing differ from {first[0].name}")
    slices.sort(key=lambda s: -s[1].slice_indicator)
    if len(slices) >= 3:
        gaps = -np.diff([w.slice_indicator for _, w in slices])
        if gaps.min() <= 0 or (gaps.max() - gaps.min()) > SPACING_TOLERANCE * gaps.mean():
            raise OrthodiffError(f"{path}: inconsistent slice spacing ({gaps.min():.2f} to {gaps.max():.2f} mm)")
    return slices


def _dicom_affine(slices: list[tuple[Path, object]]) -> np.ndarray:
    """RAS affine of (column, row, slice) indices: nibabel's LPS affine of the first slice
    with its row and column axes swapped, the slice step measured between the first and
    last positions, and MONAI's LPS -> RAS flip."""
    from monai.data.utils import orientation_ras_lps

    (file, first), (_, last) = slices[0], slices[-1]
    try:
        lps = first.affine[:, [1, 0, 2, 3]]
    except Exception as err:  # no PixelSpacing, or an orientation that is not orthonormal
        raise OrthodiffError(f"{file}: no usable DICOM geometry ({err})") from None
    if len(slices) > 1:
        lps[:3, 2] = (last.image_position - first.image_position) / (len(slices) - 1)
    else:  # one slice: nibabel's slice step, whose normal points the other way
        lps[:3, 2] = -lps[:3, 2]
    return orientation_ras_lps(lps)


def _read_dicom(path: Path) -> tuple[np.ndarray, np.ndarray]:
    slices = _dicom_slices(path)
    check_voxels(path, (len(slices), int(slices[0][1].get("Rows") or 0), int(slices[0][1].get("Columns") or 0)))
    arrays = []
    for file, wrapper in slices:
        try:
            arrays.append(np.asarray(wrapper.get_data(), dtype=np.float32))  # rescale slope/intercept applied
        except Exception as err:
            raise OrthodiffError(f"{file}: unreadable or truncated DICOM ({type(err).__name__})") from None
    return np.stack(arrays), _dicom_affine(slices)


def _read_npy(path: Path) -> tuple[np.ndarray, None]:
    try:
        with open(path, "rb") as f:  # the header alone first (numpy's format module)
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape = read(f)[0]
    except Exception as err:
        raise OrthodiffError(f"{path}: unreadable or truncated .npy ({type(err).__name__})") from None
    check_voxels(path, shape)
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as err:
        raise OrthodiffError(f"{path}: unreadable or truncated .npy ({type(err).__name__})") from None
    if data.ndim != 3:
        raise OrthodiffError(f"{path}: not a 3D image (shape {data.shape})")
    return data.astype(np.float32), None


class Image(NamedTuple):
    """A series as read: `data` float32 (slices, rows, columns) in its file's storage order,
    and `affine`, the NIfTI-style affine of (column, row, slice) indices in RAS millimetres
    (None for `.npy`, which carries no geometry; `catalogs.geometry` turns it into voxel
    size and the canonical orientation)."""

    data: np.ndarray
    affine: np.ndarray | None


def read_series(path: str | Path, expected_plane: str | None = None) -> Image:
    """The series at `path` with its geometry, checked for use.

    Rejected: a missing or unreadable file, not 3D, fewer than 16 slices, NaN/Inf voxels,
    a constant image, inconsistent slice spacing (DICOM), or an orientation that is not
    `expected_plane`.
    """
    path = Path(path)
    if not path.exists():
        raise OrthodiffError(f"{path}: file not found")
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        data, affine = _read_nifti(path)
    elif name.endswith(".npy"):
        data, affine = _read_npy(path)
    else:
        data, affine = _read_dicom(path)
    if data.shape[0] < MIN_SLICES:
        raise OrthodiffError(f"{path}: {data.shape[0]} slices, at least {MIN_SLICES} needed")
    if not np.isfinite(data).all():
        raise OrthodiffError(f"{path}: NaN or Inf voxels")
    if data.min() == data.max():
        raise OrthodiffError(f"{path}: constant image (every voxel {data.flat[0]:g})")
    if expected_plane is not None and affine is not None and plane_of(affine) != expected_plane:
        import nibabel as nib

        axes = "".join(nib.aff2axcodes(affine))
        raise OrthodiffError(
            f"{path}: the image is {plane_of(affine)} but the catalog says {expected_plane} "
            f"(voxel axes point {axes}; the slice axis decides)"
        )
    return Image(data, affine)


GRID_TOLERANCE_MM = 0.01  # affines of one grid written by different tools (DICOM, NIfTI float32) agree to this


def read_mask(path: str | Path, shape: tuple[int, ...], allowed: list[int], affine: np.ndarray | None = None) -> np.ndarray:
    """A NIfTI label mask on the same grid as its series (`shape` as `read_series` gives it;
    with the series' `affine`, the mask's affine must match it too, so that the mask can be
    reoriented exactly as its image)."""
    path = Path(path)
    if not path.exists():
        raise OrthodiffError(f"{path}: mask file not found")
    data, own = _read_nifti(path)
    if data.shape != tuple(shape):
        raise OrthodiffError(f"{path}: mask shape {data.shape} differs from its series {tuple(shape)}")
    if affine is not None and not np.allclose(own, affine, atol=GRID_TOLERANCE_MM):
        import nibabel as nib

        raise OrthodiffError(
            f"{path}: the mask is on another grid than its series (axes {''.join(nib.aff2axcodes(own))} vs "
            f"{''.join(nib.aff2axcodes(affine))}, or origin or voxel size differ); resample it onto the series")
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
    it is built from the orientation, positions and pixel spacing (`_dicom_affine`); `.npy` series carry no
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
    slices = _dicom_slices(path, pixels=False)
    return (len(slices), int(slices[0][1].get("Rows")), int(slices[0][1].get("Columns"))), _dicom_affine(slices)
