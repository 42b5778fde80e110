"""Series readers (real package sample files and written series) and ingestion into a store."""

from __future__ import annotations

from pathlib import Path

import nibabel
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from pydicom.data import get_testdata_file

from orthodiff.catalogs.cohort import write_catalog
from orthodiff.catalogs.readers import read_series, series_geometry
from orthodiff.catalogs.tasks import get_task
from orthodiff.catalogs.writers import write_dicom_series, write_nifti
from orthodiff.errors import OrthodiffError
from orthodiff.featurestore.ingest import ingest
from orthodiff.featurestore.volumes import append_volumes, open_volumes

NIBABEL_DATA = Path(nibabel.__file__).parent / "tests" / "data"


def phantom(slices: int = 20, size: int = 24, seed: int = 0) -> np.ndarray:
    """A smooth random image: a ramp plus noise, so no two series are alike."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size)[None, None, :] + np.linspace(0, 1, slices)[:, None, None]
    return (ramp + rng.random((slices, size, size))).astype(np.float32)


# --- real files shipped inside installed packages ---------------------------------------

def test_pydicom_single_slice_mr_is_rejected_for_too_few_slices():
    with pytest.raises(OrthodiffError, match="MR_small.dcm: 1 slices, at least 16"):
        read_series(get_testdata_file("MR_small.dcm", download=False))


def test_pydicom_truncated_mr_is_rejected_as_truncated():
    with pytest.raises(OrthodiffError, match="MR_truncated.dcm: unreadable or truncated"):
        read_series(get_testdata_file("MR_truncated.dcm", download=False))


def test_nibabel_anatomical_is_an_axial_3d_series():
    data, affine = read_series(NIBABEL_DATA / "anatomical.nii", expected_plane="axial")
    assert data.shape == (25, 41, 33) and data.dtype == np.float32
    np.testing.assert_array_equal(affine, nibabel.load(NIBABEL_DATA / "anatomical.nii").affine)  # the geometry travels with it
    with pytest.raises(OrthodiffError, match=r"anatomical.nii: the image is axial but the catalog says coronal \(voxel axes point LAS"):
        read_series(NIBABEL_DATA / "anatomical.nii", expected_plane="coronal")


def test_nibabel_4d_example_is_rejected_as_not_3d():
    with pytest.raises(OrthodiffError, match=r"example4d.nii.gz: not a 3D image \(shape \(128, 96, 24, 2\)\)"):
        read_series(NIBABEL_DATA / "example4d.nii.gz")


def ct_series(folder: Path, n: int = 16, step: float = 5.0) -> list[float]:
    """pydicom's CT_small.dcm copied into an `n`-slice axial series, `step` mm apart, with
    file names in reverse slice order and a different RescaleIntercept per slice (so the
    read order can be checked); returns the intercepts in slice order."""
    import pydicom

    folder.mkdir()
    intercepts = []
    for k in range(n):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
        ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + step * k]
        ds.RescaleIntercept = -1024 + 10 * k
        intercepts.append(-1024.0 + 10 * k)
        ds.save_as(folder / f"{n - k:03d}.dcm")
    return intercepts


def test_pydicom_ct_copies_stack_by_position_with_rescale_and_geometry(tmp_path):
    import pydicom

    intercepts = ct_series(tmp_path / "ct")
    raw = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False)).pixel_array.astype(np.float32)
    data, read_affine = read_series(tmp_path / "ct", expected_plane="axial")
    assert data.shape == (16, 128, 128)
    for k, intercept in enumerate(intercepts):
        np.testing.assert_array_equal(data[k], raw + intercept)
    shape, affine = series_geometry(tmp_path / "ct")
    assert shape == (16, 128, 128)
    pixel = 0.661468  # PixelSpacing; LPS -> RAS flips x and y, IOP is the identity
    expected = np.array([[-pixel, 0, 0, 158.135803], [0, -pixel, 0, 179.035797], [0, 0, 5.0, -75.699997], [0, 0, 0, 1]])
    np.testing.assert_allclose(affine, expected, atol=1e-5)
    np.testing.assert_array_equal(read_affine, affine)
    with pytest.raises(OrthodiffError, match=r"the image is axial but the catalog says sagittal \(voxel axes point LPS"):
        read_series(tmp_path / "ct", expected_plane="sagittal")


def test_pydicom_single_slice_geometry_uses_its_slice_thickness():
    shape, affine = series_geometry(get_testdata_file("MR_small.dcm", download=False))
    assert shape == (1, 64, 64)
    np.testing.assert_allclose(affine[:3, :3], np.diag([-0.3125, -0.3125, 0.8]), atol=1e-6)
    np.testing.assert_allclose(affine[:3, 3], [83.9063, 91.2, 6.6406], atol=1e-4)


def test_pydicom_multiframe_dose_and_mixed_slices_are_named(tmp_path):
    with pytest.raises(OrthodiffError, match="rtdose.dcm: multi-frame DICOM is not supported"):
        read_series(get_testdata_file("rtdose.dcm", download=False))
    import pydicom

    ct_series(tmp_path / "ct")
    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm", download=False))
    mr.SeriesInstanceUID = pydicom.dcmread(tmp_path / "ct" / "001.dcm").SeriesInstanceUID
    mr.save_as(tmp_path / "ct" / "mr.dcm")
    with pytest.raises(OrthodiffError, match="mr.dcm: image size, orientation or pixel spacing differ from 001.dcm"):
        read_series(tmp_path / "ct")


# --- series written here -----------------------------------------------------------------

@pytest.mark.parametrize("plane", ["sagittal", "coronal", "axial"])
def test_nifti_and_dicom_round_trip_with_their_plane(tmp_path, plane):
    data = phantom()
    write_nifti(tmp_path / "s.nii.gz", data, plane, pixel=0.6, thickness=3.5)
    write_dicom_series(tmp_path / "dcm", data, plane, 0.6, 3.5, pseudonym="P1", uid_seed="P1-1-x-0")
    np.testing.assert_allclose(read_series(tmp_path / "s.nii.gz", plane).data, data)
    from_dicom = read_series(tmp_path / "dcm", plane).data
    assert np.corrcoef(from_dicom.ravel(), data.ravel())[0, 1] > 0.9999  # 12-bit quantised


def test_dicom_slices_are_sorted_by_position_not_file_name(tmp_path):
    data = phantom()
    folder = write_dicom_series(tmp_path / "dcm", data, "coronal", 0.6, 3.5, "P1", "P1-1-c-0")
    files = sorted(folder.iterdir())
    for i, f in enumerate(files):  # reverse the file order
        f.rename(folder / f"x{len(files) - i:04d}.dcm")
    assert np.corrcoef(read_series(folder).data.ravel(), data.ravel())[0, 1] > 0.9999


def test_dicom_folder_problems_are_named(tmp_path):
    data = phantom()
    write_dicom_series(tmp_path / "two", data, "axial", 0.6, 3.5, "P1", "series-a")
    write_dicom_series(tmp_path / "other", data[:3], "axial", 0.6, 3.5, "P1", "series-b")
    (tmp_path / "other" / "0000.dcm").rename(tmp_path / "two" / "extra.dcm")
    with pytest.raises(OrthodiffError, match="2 DICOM series in one folder"):
        read_series(tmp_path / "two")
    gap = write_dicom_series(tmp_path / "gap", data, "axial", 0.6, 3.5, "P1", "series-c")
    (gap / "0005.dcm").unlink()
    with pytest.raises(OrthodiffError, match="inconsistent slice spacing"):
        read_series(gap)


@pytest.mark.parametrize(
    "data, message",
    [
        (phantom(slices=12), "12 slices, at least 16 needed"),
        (np.full((20, 8, 8), 3.0, np.float32), "constant image"),
        (np.where(phantom() > 1.5, np.nan, phantom()), "NaN or Inf voxels"),
    ],
)
def test_bad_voxels_and_shapes_are_named(tmp_path, data, message):
    write_nifti(tmp_path / "bad.nii", data, "axial", 0.6, 3.5)
    with pytest.raises(OrthodiffError, match=f"bad.nii: {message}"):
        read_series(tmp_path / "bad.nii")


def test_npy_series_and_missing_or_truncated_files(tmp_path):
    np.save(tmp_path / "0001.npy", (phantom() * 100).astype(np.uint8))
    data, affine = read_series(tmp_path / "0001.npy", expected_plane="sagittal")
    assert data.shape == (20, 24, 24) and affine is None  # .npy has no geometry
    with pytest.raises(OrthodiffError, match="nope.nii.gz: file not found"):
        read_series(tmp_path / "nope.nii.gz")
    write_nifti(tmp_path / "t.nii.gz", phantom(), "axial", 0.6, 3.5)
    raw = (tmp_path / "t.nii.gz").read_bytes()
    (tmp_path / "t.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(OrthodiffError, match="t.nii.gz: unreadable or truncated NIfTI"):
        read_series(tmp_path / "t.nii.gz")


# --- ingestion ------------------------------------------------------------------------------

def make_cohort(tmp_path: Path, n_patients: int = 3) -> Path:
    """A small knee catalog: NIfTI series with masks for sagittal, a DICOM coronal series."""
    rows = []
    for p in range(n_patients):
        case = f"P{p:03d}-1"
        for plane in ("sagittal", "coronal", "axial"):
            sid = f"{case}-{plane}-0"
            data = phantom(seed=len(rows))
            mask_path = None
            if plane == "coronal" and p == 0:
                path = f"{sid}"
                write_dicom_series(tmp_path / path, data, plane, 0.6, 3.5, "Doe^Jane", sid)
            else:
                path = f"{sid}.nii.gz"
                write_nifti(tmp_path / path, data, plane, 0.6, 3.5)
            if plane == "sagittal":
                mask = (data > 1.2).astype(np.uint8) * 3
                mask_path = f"{sid}-mask.nii.gz"
                write_nifti(tmp_path / mask_path, mask, plane, 0.6, 3.5)
            rows.append(
                {"series_id": sid, "case_id": case, "patient_id": f"P{p:03d}", "task": "knee", "joint": "knee",
                 "plane": plane, "scan": 0, "path": path, "mask_path": mask_path, "center": "A", "vendor": "V1",
                 "field_strength": 3.0, "slice_thickness": 3.5, "split": "train" if p else "val",
                 **{label: 0 for label in get_task("knee").label_columns},
                 "age": 30.0, "height": np.nan, "weight": 70.0, "sex": "F", "athlete": None, "injury_event": None}
            )
    return write_catalog(pd.DataFrame(rows), tmp_path / "catalog.parquet")


def test_ingest_writes_preprocessed_volumes_masks_and_coordinates(tmp_path):
    catalog = make_cohort(tmp_path)
    store = str(tmp_path / "store.zarr")
    result = ingest(catalog, store, size=16, progress=False)
    assert (result["status"] == "ingested").sum() == 9

    ds = xr.open_zarr(store, group="volumes")  # plain xarray, no orthodiff
    assert ds.volume.shape == (9, 16, 16, 16) and ds.volume.dtype == np.float16
    vol = ds.volume.sel(series="P001-1-axial-0").values.astype(np.float32)
    assert vol.min() == -1 and vol.max() == 1
    assert set(ds.plane.values) == {"sagittal", "coronal", "axial"}
    sag = ds.sel(series="P000-1-sagittal-0")
    assert bool(sag.has_mask) and set(np.unique(sag.mask.values)) == {0, 3}
    assert not bool(ds.has_mask.sel(series="P000-1-axial-0"))
    train_axial = open_volumes(store).where(lambda d: (d.plane == "axial") & (d.split == "train"), drop=True)
    assert sorted(train_axial.series.values) == ["P001-1-axial-0", "P002-1-axial-0"]

    for f in Path(store).rglob("*"):  # the DICOM patient name never reaches the store
        assert not f.is_file() or b"Doe" not in f.read_bytes()


def test_ingest_fail_stops_at_the_bad_series_and_rerun_finishes(tmp_path):
    catalog = make_cohort(tmp_path)
    store = str(tmp_path / "store.zarr")
    write_nifti(tmp_path / "P001-1-coronal-0.nii.gz", phantom(slices=10), "coronal", 0.6, 3.5)
    with pytest.raises(OrthodiffError, match=r"series 'P001-1-coronal-0': .*10 slices, at least 16"):
        ingest(catalog, store, size=16, progress=False)
    first = set(open_volumes(store).series.values)
    assert "P001-1-sagittal-0" in first and "P001-1-coronal-0" not in first

    write_nifti(tmp_path / "P001-1-coronal-0.nii.gz", phantom(), "coronal", 0.6, 3.5)
    result = ingest(catalog, store, size=16, progress=False)
    assert (result["status"] == "skipped").sum() == len(first)
    assert len(open_volumes(store).series) == 9


def test_ingest_skip_writes_a_rejects_table(tmp_path):
    catalog = make_cohort(tmp_path)
    store = str(tmp_path / "store.zarr")
    (tmp_path / "P002-1-axial-0.nii.gz").unlink()
    write_nifti(tmp_path / "P001-1-axial-0.nii.gz", phantom(), "sagittal", 0.6, 3.5)
    result = ingest(catalog, store, size=16, on_error="skip", progress=False)
    assert (result["status"] == "ingested").sum() == 7
    rejects = pd.read_parquet(Path(store) / "rejects.parquet").set_index("series_id")
    assert "file not found" in rejects.loc["P002-1-axial-0", "reason"]
    assert "the image is sagittal but the catalog says axial" in rejects.loc["P001-1-axial-0", "reason"]


def test_interrupted_append_is_cut_back_on_the_next_one(tmp_path):
    store = str(tmp_path / "store.zarr")
    meta = pd.DataFrame({"series_id": ["a", "b"], "case_id": ["c", "c"], "patient_id": ["p", "p"],
                         "plane": ["axial", "sagittal"], "scan": [0, 0], "split": ["train", "train"]})
    append_volumes(store, np.zeros((2, 16, 8, 8)), meta)
    import zarr

    group = zarr.open_group(store, path="volumes", mode="r+", use_consolidated=False)
    group["volume"].resize((5, 16, 8, 8))  # a killed append: data grown, count not raised
    assert list(open_volumes(store).series.values) == ["a", "b"]
    append_volumes(store, np.ones((1, 16, 8, 8)), meta.iloc[:1].assign(series_id="c"))
    ds = open_volumes(store)
    assert list(ds.series.values) == ["a", "b", "c"] and ds.volume.shape[0] == 3
    assert float(ds.volume.sel(series="c").mean()) == 1.0
    with pytest.raises(OrthodiffError, match="series 'a' is already in the volumes"):
        append_volumes(store, np.ones((1, 16, 8, 8)), meta.iloc[:1])


def _lying_nifti(path: Path) -> Path:
    """A NIfTI-1 header (NIfTI-1 standard, nifti.nimh.nih.gov) claiming 1500 x 1500 x 1200
    int16 voxels, with no voxel data behind it: about 100 bytes gzipped."""
    header = nibabel.Nifti1Header()
    header.set_data_shape((1500, 1500, 1200))
    header.set_data_dtype(np.int16)
    header.set_qform(np.eye(4), 1)
    import gzip

    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4))
    return path


def _lying_npy(path: Path) -> Path:
    """A `.npy` header (numpy's NEP 1 format) claiming 100000 x 100000 x 100 float32 voxels, and 8 bytes."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (100000, 100000, 100)})
        f.write(b"\0" * 8)
    return path


def _lying_dicom(folder: Path) -> Path:
    """A DICOM series (PS3.3 Image Pixel module) whose Rows and Columns claim 60000 each."""
    import pydicom

    write_dicom_series(folder, phantom(), "axial", 0.6, 3.5, "P", "u")
    for file in folder.iterdir():
        ds = pydicom.dcmread(file)
        ds.Rows = ds.Columns = 60000
        ds.save_as(file)
    return folder


@pytest.mark.parametrize("make", [_lying_nifti, _lying_npy, _lying_dicom])
def test_a_header_claiming_a_huge_image_is_refused_before_any_voxel_is_read(tmp_path, make, monkeypatch):
    import resource

    name = {"_lying_nifti": "big.nii.gz", "_lying_npy": "big.npy", "_lying_dicom": "big"}[make.__name__]
    path = make(tmp_path / name)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(OrthodiffError, match=r"header claims .* voxels, over the limit .*ORTHODIFF_MAX_VOXELS"):
        read_series(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200_000  # KiB: nothing near the claimed size
    monkeypatch.setenv("ORTHODIFF_MAX_VOXELS", "1000")  # the limit is the user's: a small one refuses a real image
    with pytest.raises(OrthodiffError, match="over the limit of 1,000"):
        read_series(write_nifti(tmp_path / "real.nii.gz", phantom(), "axial", 0.6, 3.5))


def test_ingest_skip_rejects_a_lying_header_in_one_line(tmp_path):
    catalog = make_cohort(tmp_path)
    _lying_nifti(tmp_path / "P001-1-axial-0.nii.gz")
    result = ingest(catalog, str(tmp_path / "store.zarr"), size=16, on_error="skip", progress=False)
    assert (result["status"] == "ingested").sum() == 8
    rejects = pd.read_parquet(tmp_path / "store.zarr" / "rejects.parquet").set_index("series_id")
    assert "over the limit" in rejects.loc["P001-1-axial-0", "reason"]
