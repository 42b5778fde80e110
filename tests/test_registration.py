"""Affine registration to a common reference (the paper's none-vs-affine preprocessing option)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("SimpleITK", reason="the `registration` extra (SimpleITK) is not installed")


def _smooth(seed: int) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return np.tanh(gaussian_filter(np.random.default_rng(seed).normal(size=(16, 32, 32)), 2) * 8)


def _moved(volume: np.ndarray) -> np.ndarray:
    from scipy.ndimage import affine_transform

    shear = np.eye(3)
    shear[1, 2], shear[2, 1] = 0.05, -0.05
    return affine_transform(volume, shear, offset=(0.3, 1.0, -1.0), order=1, mode="nearest")


def test_affine_registration_recovers_a_known_affine_and_records_failures():
    from orthodiff.personas.registration import affine_register

    fixed = _smooth(0)
    moving = _moved(fixed)
    inner = (slice(3, 13), slice(4, 28), slice(4, 28))
    result = affine_register(moving, fixed)
    assert result.reason is None and result.volume.shape == fixed.shape
    before, after = np.mean((moving - fixed)[inner] ** 2), np.mean((result.volume - fixed)[inner] ** 2)
    assert after < before / 20  # measured: 0.098 -> 0.0013
    stuck = affine_register(moving, fixed, iterations=2)
    assert stuck.volume is None and stuck.reason == "did not converge in 2 iterations" and "Maximum" in stuck.stop
    assert affine_register(np.zeros_like(fixed), fixed).reason == "moving volume is constant: nothing to align"
    assert "non-finite" in affine_register(np.where(fixed > 0, np.nan, fixed), fixed).reason
    assert "not a 3D volume" in affine_register(fixed[0], fixed[0]).reason


def test_mutual_information_aligns_a_series_of_another_contrast():
    """A fat-suppressed-like remapping (both intensity extremes bright: no linear relation to
    the template) is aligned by Mattes mutual information, and not by correlation (the default)."""
    from orthodiff.personas.registration import affine_register

    fixed = _smooth(0)
    contrast = lambda v: 2 * v**2 - 1  # noqa: E731
    moving = contrast(_moved(fixed))
    inner = (slice(3, 13), slice(4, 28), slice(4, 28))

    def misfit(volume):
        return np.mean((volume - contrast(fixed))[inner] ** 2)

    mattes, correlation = affine_register(moving, fixed, similarity="mattes"), affine_register(moving, fixed)
    assert mattes.reason is None and misfit(mattes.volume) < misfit(moving) / 5, (misfit(moving), misfit(mattes.volume))
    assert correlation.volume is None or misfit(correlation.volume) > 2 * misfit(mattes.volume)
    with pytest.raises(Exception, match="similarity 'ncc'"):
        affine_register(moving, fixed, similarity="ncc")


def test_register_store_writes_aligned_series_and_their_records(tmp_path):
    from orthodiff.featurestore.volumes import append_volumes, open_volumes
    from orthodiff.personas.registration import register_store, registration_comparison

    base = _smooth(0)
    other = np.clip(base + 0.1 * np.random.default_rng(1).normal(size=base.shape), -1, 1)  # the same anatomy, noisier
    volumes = np.stack([base, _moved(base), other, np.full_like(base, 0.2)])
    meta = pd.DataFrame({"series_id": [f"s{i}" for i in range(4)], "case_id": [f"c{i}" for i in range(4)],
                         "patient_id": [f"p{i}" for i in range(4)], "plane": "axial", "scan": 0,
                         "split": ["train", "train", "test", "test"]})
    append_volumes(str(tmp_path / "s.zarr"), volumes, meta)
    table = register_store(str(tmp_path / "s.zarr"), "axial", str(tmp_path / "r.zarr"))
    assert list(table.series_id) == ["s0", "s1", "s2", "s3"]
    assert table.reason.iloc[:3].isna().all() and table.reason.iloc[3] == "moving volume is constant: nothing to align"
    assert np.isnan(table.metric.iloc[3])
    stored = open_volumes(str(tmp_path / "r.zarr"))
    assert stored.series.values.tolist() == ["s0", "s1", "s2"] and stored.split.values.tolist() == ["train", "train", "test"]
    assert pd.read_csv(tmp_path / "r.zarr" / "registration_axial.csv").reason.notna().sum() == 1
    again = register_store(str(tmp_path / "s.zarr"), "axial", str(tmp_path / "r.zarr"))  # a rerun finishes, no clash
    assert len(again) == 4 and open_volumes(str(tmp_path / "r.zarr")).sizes["series"] == 3
    assert set(again.similarity) == {"correlation"}
    with pytest.raises(Exception, match="registered with similarity \\['correlation'\\], not 'mattes'"):
        register_store(str(tmp_path / "s.zarr"), "axial", str(tmp_path / "r.zarr"), similarity="mattes")
    for name in ("none", "affine"):
        (tmp_path / name).mkdir()
        pd.DataFrame({"model": ["fingerprint (image)"], "auc": [0.5 if name == "none" else 0.7]}).to_csv(
            tmp_path / name / "metrics.csv", index=False)
    both = registration_comparison({"none": tmp_path / "none", "affine": tmp_path / "affine"})
    assert both[["registration", "auc"]].values.tolist() == [["affine", 0.7], ["none", 0.5]]


def test_missing_simpleitk_names_the_extra(monkeypatch):
    import sys

    from orthodiff.errors import OrthodiffError
    from orthodiff.personas.registration import affine_register

    monkeypatch.setitem(sys.modules, "SimpleITK", None)
    with pytest.raises(OrthodiffError, match=r"orthodiff\[registration\]"):
        affine_register(_smooth(0), _smooth(0))


def test_register_command_reports_left_out_series(tmp_path):
    from typer.testing import CliRunner

    from orthodiff.cli import app
    from orthodiff.featurestore.volumes import append_volumes

    base = _smooth(0)
    meta = pd.DataFrame({"series_id": ["a", "b"], "case_id": ["c0", "c1"], "patient_id": ["p0", "p1"], "plane": "axial",
                         "scan": 0, "split": ["train", "test"]})
    append_volumes(str(tmp_path / "s.zarr"), np.stack([base, np.full_like(base, -1.0)]), meta)
    result = CliRunner().invoke(app, ["register", "--store", str(tmp_path / "s.zarr"), "--plane", "axial",
                                      "--out", str(tmp_path / "r.zarr")])
    assert result.exit_code == 0, result.output
    assert "aligned 1 of 2 axial series" in result.output and "b: moving volume is constant" in result.output
