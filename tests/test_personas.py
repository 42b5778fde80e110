"""Personas: ROI grids, RePaint keeps the known voxels, store layout, resume, named bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import make_volume_store, random_checkpoint
from orthodiff.errors import OrthodiffError
from orthodiff.personas.rois import box_bounds, box_grid, cell_index


def test_box_grid_is_the_papers_central_box_split_into_cells():
    assert box_bounds((16, 32, 32)) == [(4, 12), (11, 21), (8, 24)]  # 50% depth, 30% height, 50% width
    labels, names = box_grid((16, 32, 32), 3)
    assert len(names) == 27 and names[13] == "box3_z1y1x1" and cell_index(names[13]) == (1, 1, 1)
    assert (labels > 0).sum() == 8 * 10 * 16 and set(np.unique(labels)) == set(range(28))
    one, _ = box_grid((16, 32, 32), 1)
    np.testing.assert_array_equal(one > 0, labels > 0)
    with pytest.raises(OrthodiffError, match="--grid 4"):
        box_grid((16, 32, 32), 4)


@pytest.mark.slow
def test_repaint_keeps_known_voxels_and_is_seeded_per_series():
    from orthodiff.backbone import PRESETS, DiffusionUNet
    from orthodiff.backbone.diffusion import NoiseScheduler
    from orthodiff.personas.inpaint import repaint, series_generator

    torch.manual_seed(0)
    model = DiffusionUNet(PRESETS["demo"]).eval()
    x0 = torch.rand(1, 1, 16, 32, 32) * 2 - 1
    known = torch.from_numpy(box_grid((16, 32, 32), 1)[0] == 0)
    a = repaint(model, NoiseScheduler(), x0, known, steps=2, jumps=2, generator=series_generator(0, "s0"))
    b = repaint(model, NoiseScheduler(), x0, known, steps=2, jumps=2, generator=series_generator(0, "s0"))
    assert torch.equal(a[0, 0][known], x0[0, 0][known]) and torch.equal(a, b)
    changed = (a - x0)[0, 0][~known].abs()
    assert changed.mean() > 0.1 and a.abs().max() <= 1


@pytest.fixture(scope="module")
def persona_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("personas")
    store = make_volume_store(root / "s.zarr", n=2)
    return store, random_checkpoint(root / "b.pt", "axial")


@pytest.mark.slow
def test_personas_resume_after_a_failure_between_data_and_record(persona_store, monkeypatch):
    from orthodiff.featurestore.features import Records
    from orthodiff.featurestore.volumes import open_volumes
    from orthodiff.personas.reader import open_personas
    from orthodiff.personas.store import make_personas

    store, ckpt = persona_store
    warnings = []

    def crash(self, name, record):
        raise RuntimeError("killed before the record")

    monkeypatch.setattr(Records, "write", crash)
    with pytest.raises(RuntimeError, match="killed"):
        make_personas(store, ckpt, "axial", grid=2, steps=2, jumps=1, progress=False, warn=warnings.append)
    monkeypatch.undo()
    assert open_personas(store, "axial").sizes["series"] == 0  # data without a record is not complete
    import zarr

    first = zarr.open_group(store, path="personas", mode="r")
    first = first[list(first.group_keys())[0]]["axial"]["persona"][:]
    summary = make_personas(store, ckpt, "axial", grid=2, steps=2, jumps=1, progress=False, warn=warnings.append)
    assert summary["series"] == 2 and summary["tasks"] == 1 and summary["rois"] == 8
    assert "not trained with `pretrain --healthy`" in warnings[0]
    ds = open_personas(store, "axial")
    np.testing.assert_array_equal(ds.persona.values, first)  # the rerun writes identical bytes
    image = open_volumes(store).volume.sel(series=ds.series.values).values
    mask = ds.mask.values
    assert ds.sizes["series"] == 2 and list(ds.roi_name.values[:2]) == ["box2_z0y0x0", "box2_z0y0x1"]
    np.testing.assert_array_equal(ds.persona.values[mask == 0], image[mask == 0])
    assert np.abs(ds.persona.values[mask > 0].astype(float) - image[mask > 0]).mean() > 0.1
    assert make_personas(store, ckpt, "axial", grid=2, steps=2, jumps=1, progress=False, warn=warnings.append)["tasks"] == 0
    with pytest.raises(OrthodiffError, match=r"other settings \(grid, roi_names"):
        make_personas(store, ckpt, "axial", grid=3, steps=2, jumps=1, progress=False)


def test_persona_bad_input_is_named(persona_store, tmp_path):
    from orthodiff.personas.reader import open_personas
    from orthodiff.personas.store import make_personas

    store, ckpt = persona_store
    with pytest.raises(OrthodiffError, match="has no structure mask"):
        make_personas(store, ckpt, "axial", roi="structures", steps=1, progress=False)
    with pytest.raises(OrthodiffError, match="trained on axial"):
        make_personas(store, ckpt, "sagittal", steps=1, progress=False)
    with pytest.raises(OrthodiffError, match="no personas"):
        open_personas(make_volume_store(tmp_path / "empty.zarr", n=2), "axial")


def test_fidelity_scores_identity_and_localisation():
    from orthodiff.personas.fidelity import localisation_score, roi_ssim_mse

    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (16, 32, 32))
    roi = box_grid(image.shape, 1)[0] > 0
    assert roi_ssim_mse(image, image, roi) == (1.0, 0.0)
    ssim, mse = roi_ssim_mse(image, image + 0.1 * roi, roi)
    assert mse == pytest.approx(0.01) and ssim < 1
    lesion = np.zeros(roi.shape, bool)
    lesion[6:8, 14:16, 10:14] = True
    residual = 0.01 * rng.normal(size=roi.shape)
    residual[lesion] = 1.0  # the persona differs from the image exactly at the lesion
    share = lesion.sum() / roi.sum()
    assert localisation_score(residual, lesion, roi) > 0.5 / share  # near 1 / share (random shifts may overlap it)
    assert localisation_score(np.ones(roi.shape), lesion, roi) == pytest.approx(1)  # uniform residual: no localisation


def _micro():
    """A micro U-Net on 16 x 8 x 8 volumes, so whole persona runs take seconds."""
    from orthodiff.backbone.unet import UNetConfig

    return UNetConfig(8, 16, 32, (1, 1))


@pytest.fixture(scope="module")
def micro_store(tmp_path_factory):
    """34 axial series (3 shards of personas) of 16 x 8 x 8 voxels and a micro backbone."""
    root = tmp_path_factory.mktemp("micro")
    return make_volume_store(root / "base.zarr", n=34, size=8), random_checkpoint(root / "m.pt", "axial", config=_micro())


@pytest.mark.slow
def test_batched_repaint_matches_one_series_at_a_time():
    from orthodiff.backbone import DiffusionUNet
    from orthodiff.backbone.diffusion import NoiseScheduler
    from orthodiff.personas.inpaint import repaint, series_generator

    torch.manual_seed(0)
    model, scheduler = DiffusionUNet(_micro()).eval(), NoiseScheduler()
    x0 = torch.rand(3, 1, 16, 8, 8) * 2 - 1
    known = torch.from_numpy(box_grid((16, 8, 8), 1)[0] == 0)
    batch = repaint(model, scheduler, x0, known, 2, 2, [series_generator(0, f"s{i}") for i in range(3)])
    alone = [repaint(model, scheduler, x0[i:i + 1], known, 2, 2, series_generator(0, f"s{i}")) for i in range(3)]
    for i in range(3):  # each series keeps its own noise: only float rounding depends on the batch
        torch.testing.assert_close(batch[i:i + 1], alone[i], atol=1e-4, rtol=0)
    assert (alone[0] - alone[1])[0, 0][~known].abs().mean() > 0.1


def _persona_bytes(store) -> dict[str, bytes]:
    from pathlib import Path

    root = Path(store)
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and "personas" in str(p) and ("/c/" in str(p) or "_records" in str(p))}


@pytest.mark.slow
def test_persona_kill_minus_9_then_rerun_is_byte_identical(micro_store, tmp_path):
    import shutil
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from orthodiff.personas.reader import open_personas
    from orthodiff.personas.store import make_personas

    base, ckpt = micro_store
    settings = dict(grid=2, steps=2, jumps=1, series_batch=4, progress=False, warn=lambda _: None)
    reference = shutil.copytree(base, tmp_path / "reference.zarr")
    assert make_personas(reference, ckpt, "axial", **settings)["tasks"] == 3
    killed = shutil.copytree(base, tmp_path / "killed.zarr")
    proc = subprocess.Popen([sys.executable, "-m", "orthodiff", "persona", "--plane", "axial", "--store", str(killed),
                             "--backbone", ckpt, "--grid", "2", "--sampling-steps", "2", "--jumps", "1", "--series-batch", "4"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    records = Path(killed, "_records", "personas")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (records.exists() and any(records.rglob("*.json"))):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # kill -9 after the first shard's record, mid-run
    assert proc.wait() == -signal.SIGKILL, proc.stderr.read()
    written = len(list(records.rglob("*.json")))
    assert 1 <= written < 3  # interrupted midway
    assert open_personas(killed, "axial").sizes["series"] == 16 * written  # only recorded shards are visible
    assert make_personas(killed, ckpt, "axial", **settings)["tasks"] == 3 - written
    assert _persona_bytes(killed) == _persona_bytes(reference)  # same chunks and records as uninterrupted
    assert open_personas(killed, "axial").sizes["series"] == 34


@pytest.mark.slow
def test_persona_figure_shows_only_planes_with_personas(tmp_path):
    """Personas of one plane of a three-plane exam: the figure has that plane's row, no error."""
    import matplotlib.image

    from helpers import label_catalog
    from orthodiff.catalogs.cohort import read_catalog
    from orthodiff.heads.fingerprint_cohort import persona_figure
    from orthodiff.personas.store import make_personas

    planes = ("axial", "coronal", "sagittal")
    store = make_volume_store(tmp_path / "s.zarr", n=2, size=8, planes=planes)
    ckpt = random_checkpoint(tmp_path / "m.pt", "axial", config=_micro())
    make_personas(store, ckpt, "axial", grid=1, steps=1, jumps=1, progress=False, warn=lambda _: None)
    catalog = read_catalog(label_catalog(tmp_path / "c.parquet", n=2, planes=planes))
    with pytest.raises(OrthodiffError, match="no coronal personas"):
        persona_figure(store, catalog, "c0", tmp_path / "all.png")
    png = persona_figure(store, catalog, "c0", tmp_path / "axial.png", planes=["axial"])
    height, width, _ = matplotlib.image.imread(png).shape
    assert width / height == pytest.approx(3, rel=0.05)  # one row: image, persona, residual


def _smooth_volumes(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth random volumes in [-1, 1] (anatomy-like: neighbours predict a voxel)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    out = np.stack([gaussian_filter(rng.normal(size=(16, size, size)), 2.0) for _ in range(n)])
    return (out / np.abs(out).max()).astype(np.float32)


def test_fill_baselines_complete_the_roi_from_its_surroundings_only():
    from orthodiff.personas.fidelity import fill_baselines, roi_ssim_mse

    image = _smooth_volumes(1, 32)[0].astype(np.float64)
    roi = box_grid(image.shape, 1)[0] > 0
    fills = fill_baselines(image, roi)
    for filled in fills.values():
        np.testing.assert_array_equal(filled[~roi], image[~roi])  # the context is the image's
    assert np.ptp(fills["mean_fill"][roi]) == 0 and np.ptp(fills["blur_fill"][roi]) > 0
    inside = image.copy()
    inside[roi] = 5.0  # what the ROI holds does not enter either fill
    for name, filled in fill_baselines(inside, roi).items():
        np.testing.assert_allclose(filled[roi], fills[name][roi])
    flat = np.full(image.shape, 0.3)  # a constant context: both fills give it back
    assert all(np.allclose(f, 0.3) for f in fill_baselines(flat, roi).values())
    ramp = np.broadcast_to(np.linspace(-1, 1, 32), image.shape)  # a gradient across the ROI: the blur follows it in
    mse = {name: roi_ssim_mse(ramp, filled, roi)[1] for name, filled in fill_baselines(ramp, roi).items()}
    assert mse["blur_fill"] < mse["mean_fill"] / 2
    with pytest.raises(OrthodiffError, match="empty ROI"):
        fill_baselines(image, np.zeros_like(roi))


def test_persona_fidelity_scores_personas_beside_baselines_with_cis_and_a_figure(tmp_path):
    """A perfect persona on healthy exams scores SSIM 1 above both baselines; a persona that
    misses only the lesion localises it, the baselines (which miss the whole ROI) less so."""
    import matplotlib.image
    import pandas as pd
    import xarray as xr

    from orthodiff.catalogs.tasks import get_task, structures
    from orthodiff.personas.fidelity import persona_fidelity

    n, acl = 6, {s.abbr: s.value for s in structures("knee").structures}["ACL"]
    image = _smooth_volumes(n, 32)
    roi = box_grid(image.shape[1:], 1)[0]
    structure = np.zeros(image.shape, np.uint8)
    structure[:, 7:9, 14:17, 14:18] = acl
    persona = image.copy()
    sick = [4, 5]
    for i in sick:
        persona[i][structure[i] == acl] = -image[i][structure[i] == acl]  # the lesion is what the persona lacks
    ids = [f"s{i}" for i in range(n)]
    ds = xr.Dataset({"persona": (("series", "z", "y", "x"), persona), "image": (("series", "z", "y", "x"), image),
                     "mask": (("series", "z", "y", "x"), np.broadcast_to(roi, image.shape)),
                     "structure": (("series", "z", "y", "x"), structure)}, coords={"series": ids})
    catalog = pd.DataFrame({"series_id": ids, "case_id": [f"c{i}" for i in range(n)], "split": "test", "task": "knee",
                            **{label: 0 for label in get_task("knee").label_columns}})
    catalog.loc[sick, "ACL"] = 1
    tables = persona_fidelity(ds, catalog, "test", tmp_path / "out", n_boot=200, examples=2)
    rep = tables["reproduction"].set_index("completion")
    assert rep.loc["persona", "series"] == 4 and rep.loc["persona", "ssim"] == pytest.approx(1)
    assert rep.loc["persona", "ssim"] > rep.loc["blur_fill", "ssim_high"] and rep.loc["blur_fill", "ssim"] < 1
    assert rep.loc["mean_fill", "ssim_low"] <= rep.loc["mean_fill", "ssim"] <= rep.loc["mean_fill", "ssim_high"]
    loc = tables["localisation"].set_index("completion")
    assert (loc.label == "ACL").all() and loc.loc["persona", "series"] == 2
    assert loc.loc["persona", "score"] > 3 * loc.loc["mean_fill", "score"] and loc.loc["persona", "score"] > 5
    for name in ("per_series", "lesions", "reproduction", "localisation"):
        assert (tmp_path / "out" / f"fidelity_{name}.csv").is_file()
    height, width, _ = matplotlib.image.imread(tmp_path / "out" / "fidelity.png").shape
    assert height / width == pytest.approx(4 * 2.6 / 7.5, rel=0.05)  # 2 healthy + 2 lesion rows of 3 panels
    with pytest.raises(OrthodiffError, match="no personas of healthy or lesion val-split"):
        persona_fidelity(ds, catalog, "val")


def test_persona_fidelity_command_writes_its_tables(tmp_path):
    from typer.testing import CliRunner

    from helpers import label_catalog
    from orthodiff.backbone.unet import UNetConfig
    from orthodiff.cli import app
    from orthodiff.personas.store import make_personas

    store = make_volume_store(tmp_path / "s.zarr", n=4, size=16)
    ckpt = random_checkpoint(tmp_path / "m.pt", "axial", config=UNetConfig(16, 16, 32, (1, 1)))
    make_personas(store, ckpt, "axial", grid=1, steps=1, jumps=1, progress=False, warn=lambda _: None)
    catalog = label_catalog(tmp_path / "c.parquet", n=4, sick=(0,))
    result = CliRunner().invoke(app, ["persona-fidelity", "--plane", "axial", "--store", store, "--catalog", catalog,
                                      "--split", "train", "--out", str(tmp_path / "f"), "--bootstrap", "50"],
                                terminal_width=200)
    assert result.exit_code == 0, result.output
    import pandas as pd

    # the console's width is fixed when cli imports, so its tables may wrap: read the written table
    completions = pd.read_csv(tmp_path / "f" / "fidelity_reproduction.csv").completion.tolist()
    assert {"mean_fill", "blur_fill"} <= set(completions) and len(completions) == 3
    assert (tmp_path / "f" / "fidelity.png").is_file()

    assert len(pd.read_csv(tmp_path / "f" / "fidelity_per_series.csv")) == 1  # c1 is the healthy train exam
