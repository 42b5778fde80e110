"""Segmentation evaluation: metrics, biomarkers, agreement, comparison, acquisition effects,
the `evaluate seg` command, and bad input."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from orthodiff.catalogs.cohort import read_catalog, resolve_path, write_catalog
from orthodiff.catalogs.tasks import structures
from orthodiff.errors import OrthodiffError

KNEE = structures("knee")


def _save_like(path, data_szyx, like):
    """Write (slices, rows, columns) data as NIfTI with `like`'s affine."""
    image = nib.Nifti1Image(np.ascontiguousarray(np.asarray(data_szyx).transpose(2, 1, 0)), nib.load(like).affine)
    nib.save(image, str(path))


def _mask(catalog_path, row):
    return np.asarray(nib.load(resolve_path(catalog_path, row.mask_path)).dataobj).transpose(2, 1, 0)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A tiny knee cohort with T2 maps and acquisition columns, and three models' mask
    folders: a copy of the reference, the reference shifted by one column, and a run
    layout (masks/) with femoral cartilage removed."""
    from orthodiff.catalogs.synth import synthesize

    root = tmp_path_factory.mktemp("evaluation")
    catalog_path = synthesize("knee", 10, 32, 0, root / "cohort", progress=False)
    catalog = read_catalog(catalog_path)
    rng = np.random.default_rng(0)
    exams = catalog["case_id"].unique()
    per_exam = pd.DataFrame({"case_id": exams, "te": rng.uniform(10, 40, len(exams)), "tr": rng.uniform(1000, 3000, len(exams)),
                             "flip_angle": rng.choice([90.0, 120.0, np.nan], len(exams)), "pixel_spacing": 150 / 32})
    catalog = catalog.merge(per_exam, on="case_id")
    t2_paths = []
    folders = {name: root / name for name in ("copy", "shifted", "no_fc/masks")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    for row in catalog.itertuples():
        if not isinstance(row.mask_path, str) or not row.mask_path:
            t2_paths.append("")
            continue
        like = resolve_path(catalog_path, row.path)
        mask = _mask(catalog_path, row)
        t2 = np.where(mask == 4, 40.0, np.where(mask == 5, 150.0, 20.0)).astype(np.float32)  # MTC clips to 100
        _save_like(root / "cohort" / f"{row.series_id}_t2.nii.gz", t2, like)
        t2_paths.append(f"{row.series_id}_t2.nii.gz")
        _save_like(folders["copy"] / f"{row.series_id}.nii.gz", mask, like)
        _save_like(folders["shifted"] / f"{row.series_id}.nii.gz", np.roll(mask, 1, axis=2), like)
        _save_like(folders["no_fc/masks"] / f"{row.series_id}.nii.gz", np.where(mask == 4, 0, mask).astype(np.uint8), like)
    catalog["t2_path"] = t2_paths
    write_catalog(catalog, catalog_path)
    return catalog_path, [root / "copy", root / "shifted", root / "no_fc"]
