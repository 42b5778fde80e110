"""Radiomics: IBSI values on known ROIs, the store layout, NaN with reasons, named bad input."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import make_volume_store
from orthodiff.errors import OrthodiffError
from orthodiff.radiomics.ibsi import FAMILIES, roi_features


def test_ibsi_values_on_a_known_roi():
    image = np.zeros((4, 4, 4))
    image[:, :, 2:] = 1.0  # two halves, 32 voxels each
    mask = np.zeros(image.shape, bool)
    mask[:] = True
    f = roi_features(image, mask, FAMILIES, bins=2)
    assert f["stat_mean"] == 0.5 and f["stat_var"] == 0.25 and f["stat_skew"] == 0 and f["stat_kurt"] == -2
    assert f["ih_entropy"] == 1 and f["ih_uniformity"] == 0.5 and f["morph_vol_approx"] == 64
    assert f["szm_glnu"] == 1 and f["szm_sze"] == pytest.approx(1 / 32**2)  # two zones of 32 voxels
    # 13 directions: pairs across the x = 1|2 boundary are the only unequal ones
    assert 0 < f["cm_contrast"] < 1 and f["cm_joint_avg"] == pytest.approx(1.5)
    assert f["rlm_lgre"] == pytest.approx(0.625) and f["ngl_dc_perc"] == 1
    constant = roi_features(np.ones((4, 4, 4)), mask, ("first_order",))
    assert np.isnan(constant["stat_skew"]) and constant["stat_var"] == 0
    assert roi_features(image, np.zeros_like(mask)) == {}


def test_radiomics_store_image_only_nan_reasons_and_resume(tmp_path, monkeypatch):
    from orthodiff.featurestore.features import Records
    from orthodiff.radiomics.reader import open_radiomics
    from orthodiff.radiomics.store import extract_radiomics

    store = make_volume_store(tmp_path / "s.zarr", n=2)
    with pytest.raises(OrthodiffError, match="needs axial personas, and this store has none"):
        extract_radiomics(store, "axial", sources=("image", "residual"), progress=False)
    monkeypatch.setattr(Records, "write", lambda *a: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError):
        extract_radiomics(store, "axial", sources=("image",), families=("first_order",), grid=2, progress=False)
    monkeypatch.undo()
    assert open_radiomics(store).sizes["series"] == 0
    summary = extract_radiomics(store, "axial", sources=("image",), families=("first_order",), grid=2, progress=False)
    assert summary["series"] == 2 and summary["features"] == 8 * 18
    ds = open_radiomics(store, "axial")
    assert list(ds.roi_name.values[:1]) == ["box2_z0y0x0"] and ds.sizes["feature"] == 18
    from orthodiff.featurestore.volumes import open_volumes
    from orthodiff.personas.rois import box_grid

    labels, _ = box_grid((16, 32, 32), 2)
    vol = open_volumes(store).volume.values[1].astype(np.float64)
    assert ds.value.sel(series="s1-axial", roi=3, source="image", feature="stat_mean") == pytest.approx(vol[labels == 3].mean(), rel=1e-5)
    assert (ds.undefined == 0).all()
    assert extract_radiomics(store, "axial", sources=("image",), families=("first_order",), grid=2, progress=False)["tasks"] == 0
    with pytest.raises(OrthodiffError, match="unknown source or family 'glcmx'"):
        extract_radiomics(store, "axial", families=("glcmx",), progress=False)


@pytest.mark.slow
def test_box_personas_serve_every_grid(tmp_path):
    """One inpainting of the central box gives the radiomics of every grid: --grid re-splits it."""
    from helpers import random_checkpoint
    from orthodiff.backbone.unet import UNetConfig
    from orthodiff.personas.reader import open_personas
    from orthodiff.personas.store import make_personas
    from orthodiff.radiomics.reader import open_radiomics
    from orthodiff.radiomics.store import extract_radiomics

    store = make_volume_store(tmp_path / "s.zarr", n=2, size=8)
    ckpt = random_checkpoint(tmp_path / "m.pt", "axial", config=UNetConfig(8, 16, 32, (1, 1)))
    make_personas(store, ckpt, "axial", grid=2, steps=1, jumps=1, progress=False, warn=lambda _: None)
    own = extract_radiomics(store, "axial", families=("first_order",), progress=False)  # the personas' 8 cells
    assert own["features"] == 8 * 3 * 18
    same = extract_radiomics(store, "axial", families=("first_order",), grid=2, progress=False)
    assert same["settings"] == own["settings"] and same["tasks"] == 0  # --grid 2 is their own grid
    one = extract_radiomics(store, "axial", families=("first_order",), grid=1, progress=False)
    assert one["settings"] != own["settings"] and one["features"] == 1 * 3 * 18
    ds = open_radiomics(store, settings=one["settings"]).sel(series="s1-axial")
    assert ds.roi_name.values.tolist() == ["box1_z0y0x0"]
    p = open_personas(store, "axial").sel(series="s1-axial").load()
    box = p["mask"].values > 0  # the union of the 8 cells is the single cell of grid 1
    residual = p.image.values.astype(np.float64) - p.persona.values.astype(np.float64)
    expected = roi_features(residual, box, ("first_order",))
    for name in ("stat_mean", "stat_var", "stat_max"):
        assert float(ds.value.sel(roi=1, source="residual", feature=name)) == pytest.approx(expected[name], rel=1e-5, abs=1e-6)
    assert float(ds.value.sel(roi=1, source="residual", feature="stat_var")) > 0.01  # the box was inpainted


def set_stored_spacing(store: str, spacing) -> None:
    """Write volumes.stored_spacing(series, axis) as the geometry-aware ingest does (the
    array exists on stores ingested with geometry; older stores get it here)."""
    import zarr

    from orthodiff.featurestore.store import consolidate

    group = zarr.open_group(store, path="volumes", mode="r+", use_consolidated=False)
    values = np.asarray(spacing, np.float64)
    if "stored_spacing" not in group:
        group.create_array("stored_spacing", shape=values.shape, dtype="float64", dimension_names=["series", "axis"],
                           fill_value=np.nan)
        group.create_array("axis", shape=(3,), dtype=str, dimension_names=["axis"])[:] = np.asarray(["slice", "row", "column"], object)
    group["stored_spacing"][:] = values
    consolidate(store)


def test_radiomics_morphology_in_mm_from_stored_spacing_and_nan_where_unknown(tmp_path):
    """Series 0 has 2 x 0.5 x 0.5 mm voxels: its volumes are in mm³. Series 1's spacing is
    unknown: its morphology is NaN with reason 3 (not computed on 1 mm voxels), the rest is not."""
    from orthodiff.personas.rois import box_grid
    from orthodiff.radiomics.reader import open_radiomics
    from orthodiff.radiomics.store import extract_radiomics

    store = make_volume_store(tmp_path / "s.zarr", n=2, size=8)
    without = extract_radiomics(store, "axial", sources=("image",), families=("first_order", "shape"), grid=1, progress=False)
    ds = open_radiomics(store, settings=without["settings"])
    morph = [f for f in ds.feature.values if f.startswith("morph_")]
    assert len(morph) == 29 and (ds.undefined.sel(feature=morph) == 3).all() and ds.value.sel(feature=morph).isnull().all()
    assert "voxel size unknown" in str(ds.reason.values[3]) and (ds.undefined.sel(feature="stat_mean") == 0).all()
    store = make_volume_store(tmp_path / "t.zarr", n=2, size=8)  # spacing is read with the volume, written once at ingest
    set_stored_spacing(store, [[2.0, 0.5, 0.5], [np.nan] * 3])
    known = extract_radiomics(store, "axial", sources=("image",), families=("first_order", "shape"), grid=1, progress=False)
    ds = open_radiomics(store, settings=known["settings"]).sel(roi=1, source="image")
    labels, _ = box_grid((16, 8, 8), 1)
    assert float(ds.value.sel(series="s0-axial", feature="morph_vol_approx")) == pytest.approx((labels == 1).sum() * 0.5)
    assert float(ds.undefined.sel(series="s0-axial", feature="morph_volume")) == 0
    assert float(ds.undefined.sel(series="s1-axial", feature="morph_volume")) == 3
    assert float(ds.undefined.sel(series="s1-axial", feature="stat_mean")) == 0


def test_a_longer_feature_list_is_a_new_group_and_the_old_one_still_opens(tmp_path, monkeypatch):
    """Radiomics written before features were added: their group keeps its settings id and
    stays complete; a rerun writes a new group from scratch instead of mixing feature lists."""
    from orthodiff.radiomics import store as radiomics_store
    from orthodiff.radiomics.reader import open_radiomics
    from orthodiff.radiomics.store import extract_radiomics

    store = make_volume_store(tmp_path / "s.zarr", n=2, size=8)
    older = radiomics_store.feature_names(("first_order",), 32)[:-2]
    monkeypatch.setattr(radiomics_store, "feature_names", lambda families, bins: older)
    old = extract_radiomics(store, "axial", sources=("image",), families=("first_order",), grid=1, progress=False)
    monkeypatch.undo()
    new = extract_radiomics(store, "axial", sources=("image",), families=("first_order",), grid=1, progress=False)
    assert new["settings"] != old["settings"] and new["tasks"] == 1 and new["series"] == 2
    before, after = (open_radiomics(store, settings=r["settings"]) for r in (old, new))
    assert before.sizes["series"] == after.sizes["series"] == 2
    assert before.sizes["feature"] == 16 and after.sizes["feature"] == 18
    assert np.allclose(before.value.values, after.value.sel(feature=before.feature.values).values, equal_nan=True)
    with pytest.raises(OrthodiffError, match="several settings"):
        open_radiomics(store)


def test_radiomics_command_fixed_bin_size(tmp_path):
    """`--discretisation fixed_bin_size --bin-width W`: its own settings, levels of width W; without a width, one line."""
    import zarr
    from typer.testing import CliRunner

    from orthodiff.cli import app
    from orthodiff.radiomics.reader import open_radiomics

    store = make_volume_store(tmp_path / "s.zarr", n=2, size=8)
    base = ["radiomics", "--plane", "axial", "--store", store, "--source", "image", "--grid", "1", "--families", "histogram"]
    bad = CliRunner().invoke(app, [*base, "--discretisation", "fixed_bin_size"])
    assert isinstance(bad.exception, OrthodiffError) and "fixed_bin_size needs --bin-width" in str(bad.exception)
    result = CliRunner().invoke(app, [*base, "--discretisation", "fixed_bin_size", "--bin-width", "0.25"])
    assert result.exit_code == 0, result.output
    ds = open_radiomics(store)
    settings = zarr.open_group(store, mode="r")[f"radiomics/{ds.attrs['settings_id']}/axial"].attrs["settings"]
    assert settings["discretisation"] == "fixed_bin_size" and settings["bin_width"] == 0.25
    assert (ds.value.sel(feature="ih_max") <= 8).all() and (ds.value.sel(feature="ih_max") >= 7).all()  # volumes span [-1, 1]
