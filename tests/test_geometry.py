"""Geometry through the store: one canonical orientation per plane, voxel size as read and as
stored, masks reoriented with their images, laterality and `--mirror-left`, older stores.

File formats as their specifications define the geometry: NIfTI-1's sform affine maps
(i, j, k) voxel indices to RAS+ millimetres (https://nifti.nimh.nih.gov/nifti-1/documentation/nifti1fields/nifti1fields_pages/srow.html);
DICOM's Image Plane Module gives the LPS direction cosines of a row and a column, the
position of each slice's first pixel and PixelSpacing as (between rows, between columns)
(DICOM PS3.3 C.7.6.2, https://dicom.nema.org/medical/dicom/current/output/chtml/part03/sect_C.7.6.2.html).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from nibabel.orientations import apply_orientation, inv_ornt_aff
from typer.testing import CliRunner

from orthodiff.catalogs.cohort import write_catalog
from orthodiff.catalogs.geometry import CANONICAL, Reorientation
from orthodiff.catalogs.readers import series_geometry
from orthodiff.catalogs.tasks import get_task
from orthodiff.catalogs.writers import affine, write_dicom_series, write_nifti
from orthodiff.cli import app
from orthodiff.errors import OrthodiffError
from orthodiff.featurestore.ingest import ingest, preprocess, preprocess_mask
from orthodiff.featurestore.store import consolidate
from orthodiff.featurestore.volumes import GEOMETRY, open_volumes

SHAPE = (17, 12, 10)  # slices, rows, columns: odd slice count and non-square, so every reordering shows
SIZE = 8
ROW, COLUMN, SLICE = 0.4, 0.5, 3.5  # mm


def volume(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An asymmetric image and a mask drawn from it (labels 3 and 5 in different corners)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(0, 1, n) for n in SHAPE), indexing="ij")
    image = (3 * x + 2 * y**2 + z + 0.3 * rng.random(SHAPE)).astype(np.float32)
    mask = np.where((x > 0.6) & (y < 0.5), 3, np.where((y > 0.7) & (z < 0.4), 5, 0)).astype(np.uint8)
    return image, mask


def grid(plane: str) -> np.ndarray:
    """The plane's canonical affine with anisotropic voxels: rows 0.4, columns 0.5, slices 3.5 mm."""
    out = affine(plane, SHAPE, ROW, SLICE)
    out[:3, 0] *= COLUMN / ROW
    return out


def storage_orders():
    """Every in-plane transpose and flip (8) with the slice order as is and reversed: 16
    nibabel orientation transforms of the NIfTI axes (column, row, slice)."""
    for (a, b), fa, fb, fs in itertools.product(((0, 1), (1, 0)), (1, -1), (1, -1), (1, -1)):
        yield np.array([[a, fa], [b, fb], [2, fs]], dtype=float)


def reordered(array: np.ndarray, ornt: np.ndarray, aff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`array` (slices, rows, columns) stored in another order, with the affine that keeps it in place."""
    nifti = array.transpose(2, 1, 0)
    return apply_orientation(nifti, ornt).transpose(2, 1, 0), aff @ inv_ornt_aff(ornt, nifti.shape)


def row(sid: str, plane: str, path: str, mask_path: str | None = None, **extra) -> dict:
    return {"series_id": sid, "case_id": sid, "patient_id": sid, "task": "knee", "joint": "knee", "plane": plane,
            "scan": 0, "path": path, "mask_path": mask_path, "center": "A", "vendor": "V1", "field_strength": 3.0,
            "slice_thickness": SLICE, "split": "train", **{label: 0 for label in get_task("knee").label_columns},
            "age": 30.0, "height": np.nan, "weight": 70.0, "sex": "F", "athlete": None, "injury_event": None, **extra}


@pytest.mark.parametrize("fmt,plane", [("nifti", "sagittal"), ("nifti", "coronal"), ("nifti", "axial"), ("dicom", "sagittal")])
def test_every_storage_order_ingests_to_one_stored_array(tmp_path, fmt, plane):
    image, mask = volume()
    rows = []
    for k, ornt in enumerate(storage_orders()):
        data, aff = reordered(image, ornt, grid(plane))
        labels, _ = reordered(mask, ornt, grid(plane))
        sid, path = f"s{k:02d}", f"s{k:02d}.nii.gz" if fmt == "nifti" else f"s{k:02d}"
        if fmt == "nifti":
            write_nifti(tmp_path / path, data, plane, 0, 0, grid=aff)
        else:
            write_dicom_series(tmp_path / path, data, plane, 0, 0, "P", f"P-{sid}", grid=aff)
            read = series_geometry(tmp_path / path)[1]  # a DICOM reader stacks slices along its own normal:
            if not np.allclose(read, aff, atol=1e-3):  # a mask made from the files is in that order
                labels, aff = reordered(labels, np.array([[0, 1], [1, 1], [2, -1]], float), aff)
            np.testing.assert_allclose(read, aff, atol=1e-3)
        write_nifti(tmp_path / f"{sid}-mask.nii.gz", labels, plane, 0, 0, grid=aff)
        rows.append(row(sid, plane, path, f"{sid}-mask.nii.gz"))
    catalog = write_catalog(pd.DataFrame(rows), tmp_path / "catalog.parquet")
    ds = open_volumes(_ingested(catalog, tmp_path)).load()

    assert ds.sizes["series"] == 16
    first = ds.volume.isel(series=0).values
    for k in range(16):
        np.testing.assert_array_equal(ds.volume.isel(series=k).values, first)
        np.testing.assert_array_equal(ds.mask.isel(series=k).values, ds.mask.isel(series=0).values)
    # the plane's canonical orientation is the writers' storage order: the first series as stored
    assert set(ds.orientation.values) == {CANONICAL[plane]}
    if fmt == "nifti":  # DICOM is quantised to 12 bits
        np.testing.assert_array_equal(first, preprocess(image, SIZE))
    np.testing.assert_array_equal(ds.mask.isel(series=0).values, preprocess_mask(mask, SIZE))
    assert set(np.unique(ds.mask.values)) == {0, 3, 5}
    # voxel size as read and as stored (in-plane resized from 12 x 10 to 8 x 8), per (slice, row, column)
    assert list(ds.axis.values) == ["slice", "row", "column"]
    np.testing.assert_allclose(ds.spacing.values, np.tile([SLICE, ROW, COLUMN], (16, 1)), rtol=1e-4)
    np.testing.assert_allclose(ds.stored_spacing.values, np.tile([SLICE, ROW * 12 / SIZE, COLUMN * 10 / SIZE], (16, 1)),
                               rtol=1e-4)
    assert set(ds.spacing_reason.values) == {""} and set(ds.laterality.values) == {"unknown"}
    assert not ds.mirrored.values.any()


def _ingested(catalog: Path, tmp_path: Path, name: str = "store.zarr", **kwargs) -> str:
    store = str(tmp_path / name)
    result = ingest(catalog, store, size=SIZE, progress=False, **kwargs)
    assert (result["status"] == "ingested").all(), result
    return store


def test_reorientation_undoes_itself_and_maps_world_positions():
    image, _ = volume()
    data, aff = reordered(image, np.array([[1, -1], [0, 1], [2, -1]], float), grid("coronal"))
    turn = Reorientation.of(aff, data.shape, "coronal")
    np.testing.assert_array_equal(turn.apply(data), image)
    np.testing.assert_array_equal(turn.undo(turn.apply(data)), data)
    np.testing.assert_allclose(turn.affine, grid("coronal"))
    assert turn.spacing == pytest.approx((SLICE, ROW, COLUMN))


def test_mask_on_another_grid_than_its_image_is_named(tmp_path):
    image, mask = volume()
    write_nifti(tmp_path / "s.nii.gz", image, "sagittal", 0, 0, grid=grid("sagittal"))
    flipped, _ = reordered(mask, np.array([[0, -1], [1, 1], [2, 1]], float), grid("sagittal"))
    write_nifti(tmp_path / "m.nii.gz", flipped, "sagittal", 0, 0, grid=grid("coronal"))  # same shape, other grid
    catalog = write_catalog(pd.DataFrame([row("s", "sagittal", "s.nii.gz", "m.nii.gz")]), tmp_path / "c.parquet")
    with pytest.raises(OrthodiffError, match=r"m.nii.gz: the mask is on another grid than its series"):
        ingest(catalog, str(tmp_path / "store.zarr"), size=SIZE, progress=False)


def test_laterality_is_recorded_and_mirror_left_flips_left_knees(tmp_path):
    image, mask = (a[:16] for a in volume())  # 16 slices: mirrored slices keep the same central 16
    rows = []
    for sid, plane, side in (("left-sag", "sagittal", "L"), ("left-cor", "coronal", "left"), ("right-ax", "axial", "R"),
                             ("none-ax", "axial", None)):
        write_nifti(tmp_path / f"{sid}.nii.gz", image, plane, 0, 0, grid=grid(plane))
        write_nifti(tmp_path / f"{sid}-m.nii.gz", mask, plane, 0, 0, grid=grid(plane))
        rows.append(row(sid, plane, f"{sid}.nii.gz", f"{sid}-m.nii.gz", laterality=side))
    catalog = write_catalog(pd.DataFrame(rows), tmp_path / "catalog.parquet")
    plain = open_volumes(_ingested(catalog, tmp_path)).load()
    store = str(tmp_path / "mirrored.zarr")
    result = CliRunner().invoke(app, ["ingest", "--catalog", str(catalog), "--store", store, "--size", str(SIZE), "--mirror-left"])
    assert result.exit_code == 0, result.output
    mirrored = open_volumes(store).load()

    assert list(plain.laterality.values) == list(mirrored.laterality.values) == ["left", "left", "right", "unknown"]
    assert not plain.mirrored.values.any() and list(mirrored.mirrored.values) == [True, True, False, False]
    assert list(mirrored.orientation.values) == ["RIA", "AIL", "IPR", "IPR"]  # the left-right axis now points left
    # the left-right axis: slices of a sagittal series, columns of a coronal one; masks follow
    for sid, axis in (("left-sag", 0), ("left-cor", 2)):
        np.testing.assert_array_equal(mirrored.volume.sel(series=sid).values, preprocess(np.flip(image, axis), SIZE))
        np.testing.assert_array_equal(mirrored.mask.sel(series=sid).values, preprocess_mask(np.flip(mask, axis), SIZE))
        np.testing.assert_array_equal(plain.volume.sel(series=sid).values, preprocess(image, SIZE))
    for sid in ("right-ax", "none-ax"):
        np.testing.assert_array_equal(mirrored.volume.sel(series=sid).values, plain.volume.sel(series=sid).values)

    bad = write_catalog(pd.DataFrame([row("x", "axial", "none-ax.nii.gz", laterality="sinister")]), tmp_path / "bad.parquet")
    with pytest.raises(OrthodiffError, match=r"series 'x': column 'laterality', value 'sinister': expected L, R"):
        ingest(bad, str(tmp_path / "bad.zarr"), size=SIZE, progress=False)


def test_npy_series_get_nan_spacing_with_a_reason(tmp_path):
    image, _ = volume()
    np.save(tmp_path / "s.npy", image)
    catalog = write_catalog(pd.DataFrame([row("s", "sagittal", "s.npy")]), tmp_path / "catalog.parquet")
    ds = open_volumes(_ingested(catalog, tmp_path)).load()
    assert np.isnan(ds.spacing.values).all() and np.isnan(ds.stored_spacing.values).all()
    assert ".npy series carries no voxel size" in str(ds.spacing_reason.values[0]) and ds.orientation.values[0] == ""
    np.testing.assert_array_equal(ds.volume.values[0], preprocess(image, SIZE))  # stored as read


def test_a_store_without_geometry_opens_and_grows(tmp_path):
    """A store as orthodiff wrote it before geometry was stored: the geometry arrays removed."""
    image, _ = volume()
    write_nifti(tmp_path / "a.nii.gz", image, "axial", 0, 0, grid=grid("axial"))
    catalog = write_catalog(pd.DataFrame([row("a", "axial", "a.nii.gz")]), tmp_path / "catalog.parquet")
    store = _ingested(catalog, tmp_path)
    group = zarr.open_group(store, path="volumes", mode="r+", use_consolidated=False)
    for name in ("axis", *GEOMETRY):
        del group[name]
    group["volume"].attrs["coordinates"] = "case_id patient_id plane scan split"
    consolidate(store)

    old = open_volumes(store).load()
    assert old.spacing.dims == ("series", "axis") and np.isnan(old.spacing.values).all()
    assert "not recorded" in str(old.spacing_reason.values[0]) and old.laterality.values[0] == "unknown"

    write_nifti(tmp_path / "b.nii.gz", image, "axial", 0, 0, grid=grid("axial"))
    catalog = write_catalog(pd.DataFrame([row("a", "axial", "a.nii.gz"), row("b", "axial", "b.nii.gz")]), catalog)
    assert list(ingest(catalog, store, size=SIZE, progress=False)["status"]) == ["skipped", "ingested"]
    grown = open_volumes(store).load()
    assert np.isnan(grown.spacing.sel(series="a")).all() and "not recorded" in str(grown.spacing_reason.sel(series="a").values)
    np.testing.assert_allclose(grown.spacing.sel(series="b"), [SLICE, ROW, COLUMN], rtol=1e-4)
    assert str(grown.orientation.sel(series="b").values) == "IPR"


def test_stored_reorientation_maps_between_the_file_grid_and_the_store(tmp_path):
    """What `segment predict` uses to write masks back onto the input series' grid."""
    from orthodiff.featurestore.volumes import stored_reorientation

    image, _ = (a[:16] for a in volume())
    data, aff = reordered(image, np.array([[1, -1], [0, 1], [2, -1]], float), grid("coronal"))
    write_nifti(tmp_path / "s.nii.gz", data, "coronal", 0, 0, grid=aff)
    np.save(tmp_path / "n.npy", data)
    rows = [row("s", "coronal", "s.nii.gz", laterality="L"), row("n", "coronal", "n.npy", laterality="L")]
    catalog = write_catalog(pd.DataFrame(rows), tmp_path / "catalog.parquet")
    ds = open_volumes(_ingested(catalog, tmp_path, mirror_left=True)).load()

    shape, file_affine = series_geometry(tmp_path / "s.nii.gz")
    turn = stored_reorientation(ds, "s", file_affine, shape, "coronal")
    assert shape == data.shape and turn.shape == image.shape and turn.codes == str(ds.orientation.sel(series="s").values) == "AIL"
    np.testing.assert_array_equal(preprocess(turn.apply(data), SIZE), ds.volume.sel(series="s").values)
    np.testing.assert_array_equal(turn.apply(data), image[:, :, ::-1])  # canonical, then mirrored left-right
    np.testing.assert_array_equal(turn.undo(turn.apply(data)), data)
    assert stored_reorientation(ds, "n", np.eye(4), data.shape, "coronal") is None  # stored as read
    assert not bool(ds.mirrored.sel(series="n")) and str(ds.laterality.sel(series="n").values) == "left"
