"""Bad input in every tier: named before anything is written, one `error:` line, read-only
commands that never write."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from typer.testing import CliRunner

import orthodiff
from orthodiff.catalogs.tasks import get_task
from orthodiff.cli import app
from orthodiff.errors import OrthodiffError
from orthodiff.featurestore.extract import extract
from orthodiff.featurestore.verify import store_info, verify_store
from orthodiff.heads.inputs import load_inputs
from orthodiff.heads.synthetic import synthetic_catalog
from helpers import make_volume_store, random_checkpoint

LABELS = get_task("knee").label_columns


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orthodiff", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    store = make_volume_store(root / "s.zarr", n=4, planes=("axial",))
    return store, random_checkpoint(root / "ax.pt", "axial")


@pytest.mark.slow
@pytest.mark.parametrize("option, value, message", [
    ("--timesteps", "10,10", "--timesteps: 10 is given twice"),
    ("--blocks", "mid_0,mid_0", "--blocks: 'mid_0' is given twice"),
    ("--timesteps", "", "--timesteps: empty"),
    ("--blocks", " , ", "--blocks: empty"),
])
def test_duplicate_or_empty_request_is_refused_before_anything_is_written(small, tmp_path, option, value, message):
    store, ckpt = small
    target = tmp_path / "s.zarr"
    shutil.copytree(store, target)
    result = cli("extract", "--plane", "axial", "--store", str(target), "--backbone", ckpt, option, value)
    assert result.returncode == 2 and message in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error:")
    assert not (target / "features").exists()


@pytest.mark.slow
def test_os_errors_are_one_error_line_naming_the_file(small, tmp_path):
    result = cli("ingest", "--catalog", str(tmp_path / "none.parquet"), "--store", "/dev/null/s.zarr")
    assert result.returncode == 2 and result.stderr.startswith("error:")
    import errno

    from orthodiff.cli import _os_error

    line = _os_error(OSError(errno.ENOSPC, "No space left on device", "store.zarr/volumes/volume/c/3/0/0/0"))
    assert line == ("store.zarr/volumes/volume/c/3/0/0/0: No space left on device; "
                    "free some space and rerun the command: finished work is kept")
    result = cli("store", "info", "/dev/null/s.zarr")
    assert result.returncode == 2 and result.stderr.startswith("error:") and "Traceback" not in result.stderr


@pytest.mark.slow
def test_foreign_checkpoint_is_one_named_error(small, tmp_path):
    import torch

    torch.save({"model": {"denoise_fn.conv.weight": torch.zeros(3, 3)}}, tmp_path / "model.pt")  # another network
    store, _ = small
    result = cli("extract", "--plane", "axial", "--store", store, "--backbone", str(tmp_path / "model.pt"))
    assert result.returncode == 2 and "weights do not fit the orthodiff U-Net" in result.stderr


@pytest.mark.slow
def test_read_only_commands_and_a_rerun_with_nothing_to_do_write_nothing(small, tmp_path):
    store, ckpt = small
    target = str(tmp_path / "s.zarr")
    shutil.copytree(store, target)
    extract(target, ckpt, "axial", (10,), ("mid_0",), progress=False)

    def snapshot():
        return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in Path(target).rglob("*")}

    before = snapshot()
    assert verify_store(target) == [] and len(store_info(target)) == 2
    orthodiff.open_store(target)
    assert extract(target, ckpt, "axial", (10,), ("mid_0",), progress=False)["series"] == 0
    assert snapshot() == before


@pytest.fixture
def catalog():
    return synthetic_catalog(30, LABELS, seed=1)


@pytest.mark.parametrize("change, message", [
    (None, "leakage"),
    (lambda df: df.assign(ACL=np.where(df.index == 3, 2, df["ACL"])), "row 3, column 'ACL', value 2: label must be 0 or 1"),
    (lambda df: df.assign(ACL=np.where(df.index == 5, "yes", df["ACL"].astype(str))), "row 5, column 'ACL', value 'yes'"),
    (lambda df: df.assign(age=np.where(df.index == 2, -5.0, df["age"])), "row 2, column 'age', value -5.0: outside"),
])
def test_heads_commands_run_the_catalog_validation(catalog, tmp_path, change, message):
    if change is None:  # the patient of row 0 gets a second exam in another split
        other = "test" if catalog.loc[0, "split"] != "test" else "train"
        extra = catalog.iloc[[0]].assign(series_id="extra", case_id="extra-case", split=other)
        df = pd.concat([catalog, extra], ignore_index=True)
    else:
        df = change(catalog)
    path = tmp_path / "c.parquet"
    df.to_parquet(path, index=False)
    with pytest.raises(OrthodiffError, match=message):
        load_inputs("nowhere.zarr", path)
    result = CliRunner().invoke(app, ["sweep", "--store", "nowhere.zarr", "--catalog", str(path), "--out", str(tmp_path / "o")])
    assert isinstance(result.exception, OrthodiffError) and message.split(":")[0] in str(result.exception)
    assert not (tmp_path / "o").exists()


def test_ehr_message_shows_plain_values(catalog):
    from orthodiff.heads.ehr import EHREncoder

    df = catalog.assign(age=np.where(catalog.index == 2, -5.0, catalog["age"]))
    with pytest.raises(OrthodiffError, match=r"value -5\.0 is outside"):
        EHREncoder().fit(df)


@pytest.mark.slow
def test_constant_kept_slices_are_rejected_with_reasons_shown_and_rejects_refreshed(tmp_path):
    from orthodiff.catalogs.writers import write_nifti
    from test_ingest import make_cohort, phantom

    catalog = make_cohort(tmp_path, n_patients=1)
    bad = phantom(slices=24)
    bad[4:20] = 1.0  # the 16 central slices are constant, the outer ones are not
    write_nifti(tmp_path / "P000-1-axial-0.nii.gz", bad, "axial", 0.6, 3.5)
    store = str(tmp_path / "s.zarr")
    result = CliRunner().invoke(app, ["ingest", "--catalog", str(catalog), "--store", store, "--size", "16", "--on-error", "skip"])
    assert result.exit_code == 0 and "P000-1-axial-0" in result.output and "central slices are" in result.output
    assert pd.read_parquet(Path(store, "rejects.parquet"))["series_id"].tolist() == ["P000-1-axial-0"]
    write_nifti(tmp_path / "P000-1-axial-0.nii.gz", phantom(slices=24), "axial", 0.6, 3.5)
    result = CliRunner().invoke(app, ["ingest", "--catalog", str(catalog), "--store", store, "--size", "16", "--on-error", "skip"])
    assert result.exit_code == 0 and not Path(store, "rejects.parquet").exists()


def test_heads_refuse_nan_features_and_record_an_absolute_store(monkeypatch, tmp_path, catalog):
    from orthodiff.heads.synthetic import synthetic_features

    per_plane = synthetic_features(catalog, LABELS, channels=4, timesteps=(10,), blocks=("mid_2",), activation=False)
    tree = xr.DataTree.from_dict({f"features/synthetic/{p}": ds for p, ds in per_plane.items()})
    monkeypatch.setattr(orthodiff, "open_store", lambda path, backbone=None, catalog=None: tree, raising=False)
    path = tmp_path / "c.parquet"
    catalog.to_parquet(path, index=False)
    monkeypatch.chdir(tmp_path)
    assert load_inputs("rel.zarr", path)[2]["store"] == str(tmp_path / "rel.zarr")  # fuse works from any folder
    tree["features/synthetic/axial"].gap.values[2, 0, 0, 1] = np.nan
    with pytest.raises(OrthodiffError, match=r"axial GAP features of 1 series hold NaN or Inf, e\.g\. '.*-axial-0'"):
        load_inputs("rel.zarr", path)
