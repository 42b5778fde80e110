"""The synthetic cohort: label model, images and masks, geometry, determinism, formats."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from orthodiff.catalogs.cohort import read_catalog, resolve_path, validate_catalog
from orthodiff.catalogs.phantom import Anatomy, render
from orthodiff.catalogs.readers import read_series
from orthodiff.catalogs.synth import draw_labels, plan_exams, synthesize
from orthodiff.catalogs.tasks import get_task, structures
from orthodiff.errors import OrthodiffError

TARGETS = {"ACL": 0.57, "PCL": 0.09, "MM": 0.55, "LM": 0.49, "MCL": 0.15, "LCL": 0.13, "PD": 0.04, "EFFU": 0.46}


@pytest.mark.parametrize("n", [60, 120, 1000])
def test_knee_prevalence_is_within_three_points_at_any_cohort_size(n):
    labels = draw_labels("knee", n, np.random.default_rng(n))
    for abbr, target in TARGETS.items():
        assert abs(labels[abbr].mean() - target) <= 0.03, abbr


def test_acl_tears_come_with_meniscal_tears_and_effusion():
    labels = draw_labels("knee", 1000, np.random.default_rng(1))
    acl = labels["ACL"] == 1
    for abbr in ("MM", "LM", "EFFU"):
        assert labels.loc[acl, abbr].mean() > labels.loc[~acl, abbr].mean() + 0.15, abbr


def test_acl_tear_is_a_local_change_in_the_ligament():
    anatomy = Anatomy(1.0, 0.0, (0.0, 0.0, 0.0))
    axis = np.linspace(-40, 40, 81)
    points = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)
    healthy, label = render("knee", anatomy, {"ACL": 0}, points)
    torn, _ = render("knee", anatomy, {"ACL": 1}, points)
    changed = healthy != torn
    assert 0 < changed.sum() < 0.002 * len(points)  # a small lesion, not a global change
    assert (label[changed] == 10).all()  # only inside the ACL
    assert torn[changed].mean() > healthy[changed].mean() + 0.5  # bright fluid in the gap


@pytest.fixture(scope="module")
def knee_cohort(tmp_path_factory) -> Path:
    return synthesize("knee", 6, 32, seed=3, out=tmp_path_factory.mktemp("knee"), progress=False)


def test_tiny_knee_cohort_is_valid_with_masks_on_sagittal_and_coronal(knee_cohort):
    df = read_catalog(knee_cohort)
    validate_catalog(df, knee_cohort)
    assert set(df["plane"]) == {"sagittal", "coronal", "axial"} and df["case_id"].nunique() == 6
    assert df["mask_path"].notna().eq(df["plane"].isin(["sagittal", "coronal"])).all()
    allowed = {0, *structures("knee").values}
    row = df[df["plane"] == "sagittal"].iloc[0]
    mask = np.asarray(nib.load(resolve_path(knee_cohort, row.mask_path)).dataobj)
    assert set(np.unique(mask)) <= allowed and len(np.unique(mask)) >= 8
    for row in df.itertuples():
        image = nib.load(resolve_path(knee_cohort, row.path))
        assert image.shape[2] >= 16 and 3.0 <= image.header.get_zooms()[2] <= 4.0
        read_series(resolve_path(knee_cohort, row.path), expected_plane=row.plane)  # geometry matches


def test_same_seed_same_bytes(knee_cohort, tmp_path):
    again = synthesize("knee", 6, 32, seed=3, out=tmp_path, progress=False, workers=2)

    def digest(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}

    assert digest(knee_cohort.parent) == digest(again.parent)


def test_dicom_cohort_reads_back_without_real_identifiers(tmp_path):
    catalog = synthesize("knee", 2, 24, seed=1, out=tmp_path, fmt="dicom", progress=False)
    df = read_catalog(catalog)
    validate_catalog(df, catalog)
    row = df.iloc[0]
    folder = resolve_path(catalog, row.path)
    ds = pydicom.dcmread(sorted(folder.iterdir())[0])
    assert str(ds.PatientName) == row.patient_id == ds.PatientID
    assert read_series(folder, expected_plane=row.plane).shape[0] >= 16


@pytest.mark.parametrize("joint", ["ankle", "shoulder"])
def test_other_joints_have_their_own_labels_and_no_masks(tmp_path, joint):
    catalog = synthesize(joint, 3, 24, seed=0, out=tmp_path, progress=False)
    df = read_catalog(catalog)
    validate_catalog(df, catalog)
    assert set(get_task(joint).label_columns) <= set(df.columns) and "ACL" not in df.columns
    assert df["mask_path"].isna().all()


def test_repeat_scans_and_missing_planes_occur_at_their_rates():
    exams, ehr = plan_exams("knee", 2000, seed=0)
    repeats = np.mean([any(scan for _, scan in e.series) for e in exams])
    missing = np.mean([len({p for p, _ in e.series}) < 3 for e in exams])
    assert 0.03 < repeats < 0.07 and 0.01 < missing < 0.035
    assert all(0.07 < ehr[c].isna().mean() < 0.13 for c in ehr.columns)


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(OrthodiffError, match="--joint 'hip'"):
        synthesize("hip", 2, 32, 0, tmp_path)
    with pytest.raises(OrthodiffError, match="--format 'png'"):
        synthesize("knee", 2, 32, 0, tmp_path, fmt="png")
