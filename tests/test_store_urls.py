"""Stores at fsspec URLs: `memory://` and `s3://` (moto's S3 server on the loopback address).

The docs promise (docs/guides/pretrain-extract.md) that `--store` may be any fsspec URL. Each URL store goes through
ingest, extract, open_store and sweep: the `memory://` volumes equal a local ingest's, and the
S3 store holds the same values as the `memory://` one. `memory://` lives inside one process,
so its extraction runs in-process; the S3 store is extracted by a local Dask cluster of two
worker processes, which reach it over HTTP.
"""

from __future__ import annotations

import logging
import socket
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from typer.testing import CliRunner

import orthodiff
from orthodiff.backbone import PRESETS
from orthodiff.catalogs.cohort import write_catalog
from orthodiff.catalogs.tasks import get_task
from orthodiff.catalogs.writers import write_nifti
from orthodiff.cli import app
from orthodiff.featurestore.extract import extract
from orthodiff.featurestore.ingest import ingest
from orthodiff.featurestore.volumes import open_volumes
from helpers import random_checkpoint

SIZE = PRESETS["demo"].image_size
LABELS = get_task("knee").label_columns
TIMESTEP, BLOCK = 50, "mid_2"


def axial_cohort(folder, n_patients: int = 4):
    """Axial NIfTI series, patients 0-1 in val; label j of patient p is (p + j) % 2, so every
    label has both classes in both splits."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for p in range(n_patients):
        sid = f"P{p:03d}-1-axial-0"
        ramp = np.linspace(0, 1, 24)[None, None, :] + np.linspace(0, 1, 20)[:, None, None]
        write_nifti(folder / f"{sid}.nii.gz", (ramp + rng.random((20, 24, 24))).astype(np.float32), "axial", 0.6, 3.5)
        rows.append(
            {"series_id": sid, "case_id": f"P{p:03d}-1", "patient_id": f"P{p:03d}", "task": "knee", "joint": "knee",
             "plane": "axial", "scan": 0, "path": f"{sid}.nii.gz", "mask_path": None, "center": "A", "vendor": "V1",
             "field_strength": 3.0, "slice_thickness": 3.5, "split": "val" if p < 2 else "train",
             **{label: (p + j) % 2 for j, label in enumerate(LABELS)},
             "age": 30.0 + p, "height": np.nan, "weight": 70.0, "sex": "F", "athlete": None, "injury_event": None}
        )
    return write_catalog(pd.DataFrame(rows), folder / "catalog.parquet")


def run_all(store: str, catalog, checkpoint: str, out, workers: int | None) -> dict:
    """ingest -> extract -> open_store -> sweep (the CLI, in this process) on `store`."""
    ingested = ingest(catalog, store, size=SIZE, progress=False)
    summary = extract(store, checkpoint, "axial", (TIMESTEP,), (BLOCK,), workers=workers, progress=False)
    ds = orthodiff.open_store(store, catalog=str(catalog))[f"features/{summary['backbone']}/axial"].to_dataset()
    # GAP: this test is about the store. A SAP sweep standardises by its 2 training series'
    # near-zero spreads, so the float16 rounding another process may move flips its
    # 2-series validation AUROC (SAP itself is tested in test_heads_sweep.py)
    result = CliRunner().invoke(app, ["sweep", "--store", store, "--catalog", str(catalog), "--out", str(out),
                                      "--planes", "axial", "--epochs", "3", "--lr", "1e-2", "--pooling", "gap"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return {"ingested": ingested, "summary": summary, "volumes": open_volumes(store).volume.load(),
            "store": ds.load(), "sweep": pd.read_parquet(out / "sweep.parquet")}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("urls")
    return root, axial_cohort(root / "cohort"), random_checkpoint(root / "axial.pt", "axial")


@pytest.fixture(scope="module")
def memory_run(cohort):
    import fsspec

    root, catalog, checkpoint = cohort
    url = f"memory://orthodiff-{uuid.uuid4().hex}/store.zarr"
    try:
        yield run_all(url, catalog, checkpoint, root / "memory_sweep", workers=None)
    finally:
        fsspec.filesystem("memory").rm(url.split("://")[1].split("/")[0], recursive=True)


@pytest.mark.slow
def test_memory_store_matches_a_local_store_and_reads_its_own_features(cohort, memory_run, tmp_path):
    _, catalog, _ = cohort
    assert memory_run["ingested"]["status"].tolist() == ["ingested"] * 4
    ingest(catalog, str(tmp_path / "local.zarr"), size=SIZE, progress=False)
    local = open_volumes(str(tmp_path / "local.zarr")).volume.values
    np.testing.assert_array_equal(memory_run["volumes"].values, local)

    ds = memory_run["store"]
    assert memory_run["summary"]["series"] == 4 and ds.sizes["series"] == 4
    assert ds["split"].values.tolist() == ["val", "val", "train", "train"]  # catalog joined on series
    act = ds.activation.sel(timestep=TIMESTEP, block=BLOCK).values.astype(np.float32)
    np.testing.assert_allclose(ds.gap.sel(timestep=TIMESTEP, block=BLOCK).values, act.mean((2, 3, 4)), atol=2e-3)
    assert np.abs(act).max() > 0.01  # real activations, not an empty (zero-filled) chunk

    table = memory_run["sweep"]
    assert set(table["label"]) == {*LABELS, "macro"} and set(table["timestep"]) == {TIMESTEP}
    macro = table.loc[table["label"] == "macro", "auroc"].item()
    assert macro == pytest.approx(table.loc[table["label"] != "macro", "auroc"].mean())


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 (a free port), with dummy credentials in the environment
    (inherited by Dask's worker processes) and a bucket."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    nothing = tmp_path_factory.mktemp("aws") / "none"
    with pytest.MonkeyPatch.context() as env:
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                            "AWS_CONFIG_FILE": str(nothing), "AWS_SHARED_CREDENTIALS_FILE": str(nothing)}.items():
            env.setenv(name, value)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir("orthodiff-test")
        try:
            yield "s3://orthodiff-test"
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
            server.stop()


@pytest.mark.slow
def test_s3_store_with_two_dask_workers_holds_the_same_values(cohort, memory_run, s3_server):
    import s3fs

    root, catalog, checkpoint = cohort
    s3 = run_all(f"{s3_server}/store.zarr", catalog, checkpoint, root / "s3_sweep", workers=2)
    assert "store.zarr" in " ".join(s3fs.S3FileSystem().ls(s3_server))  # written to the server, not to disk
    assert not Path("s3:").exists()  # a URL taken for a path would have made ./s3:/...
    np.testing.assert_array_equal(s3["volumes"].values, memory_run["volumes"].values)
    xr.testing.assert_equal(s3["store"].drop_vars(["activation", "gap"]), memory_run["store"].drop_vars(["activation", "gap"]))
    # Another process and thread count may move float16 rounding only.
    for name in ("activation", "gap"):
        np.testing.assert_allclose(s3["store"][name].values.astype(np.float32),
                                   memory_run["store"][name].values.astype(np.float32), atol=2e-3, rtol=0)
    merged = s3["sweep"].merge(memory_run["sweep"], on=["plane", "timestep", "block", "label"], suffixes=("_s3", "_mem"))
    assert len(merged) == len(LABELS) + 1
    np.testing.assert_allclose(merged["auroc_s3"], merged["auroc_mem"], atol=0.05)
