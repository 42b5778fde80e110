"""The feature store: schema and queries, growth, durability under kill -9, concurrent jobs,
Dask workers, verification, and named bad input."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

import orthodiff
from orthodiff.backbone.pretrain import pretrain
from orthodiff.errors import OrthodiffError
from orthodiff.featurestore.extract import extract
from orthodiff.featurestore.verify import store_info, verify_store
from orthodiff.featurestore.volumes import open_volumes
from orthodiff.heads.store import plane_features, plane_nodes
from helpers import make_volume_store, random_checkpoint, series_count

# Every test extracts features with a random backbone (the module's store): slow as a group.
pytestmark = pytest.mark.slow

TS = (10, 50)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A store with 40 axial and 40 sagittal series (3 shards each) and an axial backbone."""
    root = tmp_path_factory.mktemp("fs")
    store = make_volume_store(root / "base.zarr", n=40, planes=("axial", "sagittal"))
    ckpt = pretrain(open_volumes(store), "axial", "demo", steps=1, batch=1, out=root / "axial.pt", every=1, progress=False)
    return root, store, str(ckpt)


def fresh(base, tmp_path, name="s.zarr") -> str:
    root, store, _ = base
    shutil.copytree(store, tmp_path / name)
    return str(tmp_path / name)


def chunks(store: str) -> dict[str, bytes]:
    """Data chunk files and completion records (metadata carries a creation time)."""
    root = Path(store)
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and (("/c/" in str(p)) and "features" in str(p) or "_records" in str(p))}


def run_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "orthodiff", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_schema_queries_and_catalog_join(base, tmp_path):
    _, _, ckpt = base
    store = fresh(base, tmp_path)
    summary = extract(store, ckpt, "axial", TS, progress=False)
    assert summary["series"] == 40 and summary["tasks"] == 3
    group = f"features/{summary['backbone']}/axial"
    plain = xr.open_zarr(store, group=group)  # no orthodiff needed
    assert plain.activation.dims == ("series", "timestep", "block", "channel", "z", "y", "x")
    assert plain.activation.dtype == np.float16 and list(plain.timestep.values) == [10, 50]
    slab = plain.activation.sel(timestep=50, block="mid_0").values.astype(np.float32)
    np.testing.assert_allclose(plain.gap.sel(timestep=50, block="mid_0").values, slab.mean((2, 3, 4)), atol=2e-3)
    prov = zarr.open_group(store, path=f"features/{summary['backbone']}", mode="r").attrs
    assert prov["backbone_id"] == summary["backbone"] and prov["preset"] == "demo" and prov["noise_seed"] == 0
    assert prov["checkpoint"] == str(Path(ckpt).resolve())  # absolute, wherever the command ran

    catalog = pd.DataFrame({"series_id": [f"s{i}-axial" for i in range(40)], "split": ["train"] * 30 + ["test"] * 10,
                            "ACL": np.arange(40) % 2, "path": "x"})
    tree = orthodiff.open_store(store, catalog=catalog)
    assert tree["features"][summary["backbone"]].attrs["preset"] == "demo"  # the backbone node carries the provenance
    ds = tree[f"features/{summary['backbone']}/axial"].to_dataset()
    assert ds.activation.chunks is not None  # lazy
    test = ds.gap.where(ds.split == "test", drop=True).sel(timestep=10, block="mid_2")
    assert test.sizes["series"] == 10 and "ACL" in ds.coords and "path" not in ds.coords
    assert ds.stored_spacing.dims == ("series", "axis") and list(ds.axis.values) == ["slice", "row", "column"]
    assert np.isnan(ds.spacing.values).all() and "not recorded" in str(ds.spacing_reason.values[0])  # appended without
    one_case = ds.activation.sel(series="s3-axial")
    assert one_case.shape[:2] == (2, 3)


def test_rerun_skips_and_growth_leaves_existing_shards_untouched(base, tmp_path):
    _, _, ckpt = base
    store = fresh(base, tmp_path)
    extract(store, ckpt, "axial", TS, progress=False)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in Path(store, "features").rglob("c/*/*/*/*/*/*/*") if p.is_file()}
    assert extract(store, ckpt, "axial", TS, progress=False)["series"] == 0
    grown = extract(store, ckpt, "axial", (75,), progress=False)
    assert grown["series"] == 40
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in before}
    assert before == after
    ds = plane_nodes(orthodiff.open_store(store))["axial"]
    assert ds.timestep.values.tolist() == [10, 50, 75] and verify_store(store) == []  # sorted after growth
    assert store_info(store).set_index("plane").at["axial", "timesteps"] == "10,50,75"


def test_kill_minus_9_then_rerun_is_byte_identical(base, tmp_path):
    _, _, ckpt = base
    reference = fresh(base, tmp_path, "reference.zarr")
    extract(reference, ckpt, "axial", TS, progress=False)
    store = fresh(base, tmp_path, "killed.zarr")
    proc = run_cli("extract", "--plane", "axial", "--store", store, "--backbone", ckpt, "--timesteps", "10,50")
    records = Path(store, "_records")
    deadline = time.time() + 120
    while time.time() < deadline and not (records.exists() and any(records.rglob("*.json"))):
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert len(list(records.rglob("*.json"))) < 6  # interrupted midway
    extract(store, ckpt, "axial", TS, progress=False)
    assert chunks(store) == chunks(reference) and verify_store(store) == []


def test_simultaneous_jobs_same_and_different_planes(base, tmp_path):
    root, _, ckpt = base
    store = fresh(base, tmp_path)
    sag = pretrain(open_volumes(store), "sagittal", "demo", steps=1, batch=1, out=tmp_path / "sag.pt", every=1, progress=False)
    jobs = [run_cli("extract", "--plane", "axial", "--store", store, "--backbone", ckpt, "--timesteps", "10"),
            run_cli("extract", "--plane", "axial", "--store", store, "--backbone", ckpt, "--timesteps", "10"),
            run_cli("extract", "--plane", "sagittal", "--store", store, "--backbone", str(sag), "--timesteps", "10")]
    for job in jobs:
        _, err = job.communicate(timeout=300)
        assert job.returncode == 0, err
    assert verify_store(store) == []
    info = store_info(store)
    assert set(info["series"]) == {"40/40", "80/80"} and set(info["plane"]) == {"all", "axial", "sagittal"}
    assert series_count(orthodiff.open_store(store)) == 80


def test_planes_with_different_configurations_open_side_by_side(base, tmp_path):
    _, _, ckpt = base
    store = fresh(base, tmp_path)
    extract(store, ckpt, "axial", (10,), ("mid_0",), progress=False)
    extract(store, random_checkpoint(tmp_path / "sag.pt", "sagittal"), "sagittal", (50,), ("mid_2",), progress=False)
    nodes = plane_nodes(orthodiff.open_store(store))  # each plane as extracted: no union, no NaN padding
    assert nodes["axial"].timestep.values.tolist() == [10] and nodes["axial"].block.values.tolist() == ["mid_0"]
    assert nodes["sagittal"].timestep.values.tolist() == [50] and nodes["sagittal"].block.values.tolist() == ["mid_2"]
    assert all(np.isfinite(ds.gap.values).all() for ds in nodes.values())
    catalog = pd.DataFrame({"series_id": np.concatenate([ds.series.values for ds in nodes.values()]),
                            "plane": np.concatenate([ds.plane.values for ds in nodes.values()])})
    per_plane = plane_features(store, catalog)
    assert per_plane["sagittal"].timestep.values.tolist() == [50] and per_plane["axial"].block.values.tolist() == ["mid_0"]


def test_backbones_of_different_widths_open_side_by_side(base, tmp_path):
    """A wider sagittal backbone beside the axial one (once an AlignmentError on `channel`); two
    backbones of one plane open too, and the heads ask which one to read."""
    root, _, ckpt = base
    store = make_volume_store(tmp_path / "w.zarr", n=3, planes=("axial", "sagittal"))
    axial = extract(store, ckpt, "axial", (10,), ("mid_0",), progress=False)["backbone"]
    wide = random_checkpoint(tmp_path / "wide.pt", "sagittal", width=64)
    sagittal = extract(store, wide, "sagittal", (10,), ("mid_0",), progress=False)["backbone"]
    also = extract(store, random_checkpoint(tmp_path / "wide_ax.pt", "axial", seed=1, width=64), "axial", (10,), ("mid_0",),
                   progress=False)["backbone"]
    tree = orthodiff.open_store(store)["features"]
    assert sorted(tree.children) == sorted([axial, sagittal, also])
    widths = {key: tree[key].sizes["channel"] for key in (f"{axial}/axial", f"{sagittal}/sagittal", f"{also}/axial")}
    assert widths == {f"{axial}/axial": 64, f"{sagittal}/sagittal": 128, f"{also}/axial": 128}
    assert tree[sagittal].attrs["config"]["width"] == 64
    gap = tree[f"{sagittal}/sagittal"].gap.sel(timestep=10, block="mid_0").values
    act = tree[f"{sagittal}/sagittal"].activation.sel(timestep=10, block="mid_0").values.astype(np.float32)
    np.testing.assert_allclose(gap, act.mean((2, 3, 4)), atol=2e-3)
    catalog = pd.DataFrame({"series_id": [f"s{i}-{p}" for p in ("axial", "sagittal") for i in range(3)],
                            "plane": ["axial"] * 3 + ["sagittal"] * 3})
    with pytest.raises(OrthodiffError, match="axial features from backbones .*; choose with --backbone-id"):
        plane_features(store, catalog)
    per_plane = plane_features(store, catalog, backbone=[also, sagittal])
    assert per_plane["axial"].sizes["channel"] == 128 and per_plane["sagittal"].sizes["channel"] == 128


def test_dask_workers_match_in_process_extraction(base, tmp_path):
    _, _, ckpt = base
    local = fresh(base, tmp_path, "local.zarr")
    bid = extract(local, ckpt, "axial", (10,), progress=False)["backbone"]
    cluster = fresh(base, tmp_path, "cluster.zarr")
    summary = extract(cluster, ckpt, "axial", (10,), workers=2, series_batch=3, progress=False)
    assert summary["tasks"] == 3 and verify_store(cluster) == []
    # Same noise and weights; other batch sizes and thread counts only move float16 rounding.
    a, b = (xr.open_zarr(s, group=f"features/{bid}/axial").activation.values.astype(np.float32) for s in (local, cluster))
    np.testing.assert_allclose(a, b, atol=2e-3, rtol=0)


def test_existing_scheduler_runs_the_tasks_and_stays_up(base, tmp_path):
    from dask.distributed import Client, LocalCluster, get_task_stream
    from dask.utils import key_split

    _, _, ckpt = base
    store = fresh(base, tmp_path)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        with get_task_stream(client) as stream:
            summary = extract(store, ckpt, "axial", (10,), scheduler=cluster.scheduler_address, progress=False)
        assert summary["tasks"] == 3
        assert sum(key_split(record["key"]) == "run_task" for record in stream.data) == 3
        assert client.submit(sum, [1, 2]).result() == 3  # the user's cluster is left running
    assert verify_store(store) == []


def test_verify_names_missing_records_damaged_shards_and_nan(base, tmp_path):
    _, _, ckpt = base
    store = fresh(base, tmp_path)
    bid = extract(store, ckpt, "axial", (10,), progress=False)["backbone"]
    next(Path(store, "_records").rglob("000001-*.json")).unlink()
    zarr.open_group(store, path=f"features/{bid}/axial", mode="r+")["gap"][0, 0, 0, 0] = np.nan
    problems = verify_store(store)
    assert any(re.search(r"series 16-31 at t=10 mid_\d not complete", p) for p in problems)
    assert any("NaN or Inf" in p for p in problems)
    shard = sorted(Path(store, f"features/{bid}/axial/activation/c").rglob("*"))[-1]
    shard.write_bytes(shard.read_bytes()[:50])
    assert any(re.search(r"series 32-39 at t=10 mid_\d: (unreadable|content does not match its checksum)", p)
               for p in verify_store(store))
    assert subprocess.run([sys.executable, "-m", "orthodiff", "store", "verify", store]).returncode == 1


def test_bad_input_is_named_and_writes_nothing(base, tmp_path):
    _, _, ckpt = base
    store = fresh(base, tmp_path)
    cases = [
        (dict(plane="axial", timesteps=(1000,)), r"--timesteps: 1000 is outside \[0, 1000\)"),
        (dict(plane="axial", blocks=("mid_9",)), "unknown block 'mid_9'"),
        (dict(plane="sagittal"), "backbone trained on axial series cannot extract sagittal features"),
        (dict(plane="coronal"), "backbone trained on axial series cannot extract coronal features"),
    ]
    for kwargs, message in cases:
        with pytest.raises(OrthodiffError, match=message):
            extract(store, ckpt, timesteps=kwargs.pop("timesteps", TS), progress=False, **kwargs)
    assert not Path(store, "features").exists()
    with pytest.raises(OrthodiffError, match="not an orthodiff store"):
        extract(str(tmp_path / "nowhere"), ckpt, "axial", TS, progress=False)
    zarr.open_group(store, mode="r+").attrs["orthodiff_schema"] = 99
    with pytest.raises(OrthodiffError, match="store schema version 99"):
        extract(store, ckpt, "axial", TS, progress=False)


def test_new_series_are_extracted_by_the_same_command(base, tmp_path):
    _, _, ckpt = base
    store = fresh(base, tmp_path)
    bid = extract(store, ckpt, "axial", (10,), progress=False)["backbone"]
    first_run = sorted(Path(store, f"features/{bid}/axial/activation/c/0").rglob("*"))
    before = {p: p.read_bytes() for p in first_run if p.is_file()}
    from orthodiff.featurestore.volumes import append_volumes

    meta = pd.DataFrame({"series_id": [f"n{i}" for i in range(5)], "case_id": "cn", "patient_id": "pn",
                         "plane": "axial", "scan": 0, "split": "train"})
    append_volumes(store, np.random.default_rng(1).uniform(-1, 1, (5, 16, 32, 32)), meta)
    summary = extract(store, ckpt, "axial", (10,), progress=False)
    assert summary["tasks"] == 1 and summary["series"] == 13  # the partly filled last run, redone whole
    assert {p: p.read_bytes() for p in before} == before  # the first full shard is untouched
    assert verify_store(store) == [] and series_count(orthodiff.open_store(store)) == 45


def test_resumed_task_writes_the_bytes_of_an_uninterrupted_run(base, tmp_path):
    """A task left with one of the 8 default timesteps unrecorded (killed between records)
    recomputes it in the batches of the full run: the same bytes, not just close."""
    from orthodiff.featurestore.extract import TIMESTEPS

    root, _, ckpt = base
    store = make_volume_store(tmp_path / "resumed.zarr", n=20, planes=("axial",))
    extract(store, ckpt, "axial", TIMESTEPS, progress=False)
    reference = chunks(store)
    for record in Path(store, "_records").rglob("000001-t0150-*.json"):
        record.unlink()
    summary = extract(store, ckpt, "axial", TIMESTEPS, progress=False)
    assert summary["tasks"] == 1 and summary["series"] == 4
    assert chunks(store) == reference and verify_store(store) == []


def test_precision_is_recorded_fingerprinted_and_close_to_fp32(base, tmp_path):
    _, _, ckpt = base
    store = fresh(base, tmp_path)
    bid = extract(store, ckpt, "axial", (10,), progress=False)["backbone"]
    fp32 = xr.open_zarr(store, group=f"features/{bid}/axial").activation.values.astype(np.float32)
    assert zarr.open_group(store, path=f"features/{bid}/axial").attrs["precision"] == "fp32"
    summary = extract(store, ckpt, "axial", (10,), precision="bf16", progress=False)
    assert summary["series"] == 40  # fp32 units do not count as bf16 units: all recomputed
    assert zarr.open_group(store, path=f"features/{bid}/axial").attrs["precision"] == "bf16"
    bf16 = xr.open_zarr(store, group=f"features/{bid}/axial").activation.values.astype(np.float32)
    error = np.abs(bf16 - fp32).max() / np.abs(fp32).max()
    assert 0 < error < 0.05 and verify_store(store) == []
    assert extract(store, ckpt, "axial", (10,), precision="bf16", progress=False)["series"] == 0
    with pytest.raises(OrthodiffError, match=r"unknown --precision 'int8': expected one of \['fp32', 'bf16', 'fp16'\]"):
        extract(store, ckpt, "axial", (10,), precision="int8", progress=False)


def test_a_compiled_forward_gets_full_batches_and_returns_only_the_series(tmp_path):
    """`forward_timestep` pads a short batch to `series_batch` rows for a replacement forward
    (a compiled network then compiles once) and drops the padding from what it returns."""
    from orthodiff.backbone import MIDDLE_BLOCKS, load_backbone
    from orthodiff.backbone.precision import inference_model
    from orthodiff.featurestore.extract import forward_timestep

    model = inference_model(load_backbone(random_checkpoint(tmp_path / "b.pt", "axial"), "cpu"), "fp32")
    volumes = np.random.default_rng(0).uniform(-1, 1, (5, 16, 32, 32)).astype(np.float32)
    series, shapes = tuple(f"s{i}" for i in range(5)), []

    def forward(x, t, blocks):
        shapes.append((x.shape[0], t.shape[0]))
        return model.middle_features(x, t, blocks)

    eager, _ = forward_timestep(model, volumes, series, 50, MIDDLE_BLOCKS, 0, 4, "fp32")
    padded, _ = forward_timestep(model, volumes, series, 50, MIDDLE_BLOCKS, 0, 4, "fp32", forward=forward)
    assert shapes == [(4, 4), (4, 4)]  # the last batch of one series went in with three zero volumes
    for block in MIDDLE_BLOCKS:
        assert padded[block].shape == eager[block].shape and eager[block].shape[0] == 5
        np.testing.assert_allclose(padded[block], eager[block], rtol=1e-4, atol=1e-5)
