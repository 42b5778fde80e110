"""The paper's persona model (sec. 5.2.1): a DDPM with the linear schedule trained on masked inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from orthodiff.errors import OrthodiffError


def _tiny():
    from orthodiff.personas.rois import box_grid

    rng = np.random.default_rng(0)
    volumes = torch.from_numpy(rng.uniform(-1, 1, (3, 1, 8, 8, 8)).astype(np.float32))
    labels, _ = box_grid((8, 8, 8), 1)
    return volumes, torch.from_numpy(labels > 0)


def test_linear_schedule_is_the_papers():
    """Ho et al.'s linear betas, 1e-4 to 2e-2 over T = 1000 (sec. 5.2.1), not our cosine one."""
    from orthodiff.personas.ddpm import scheduler

    betas = scheduler().betas.double()
    assert len(betas) == 1000 and betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(2e-2)
    np.testing.assert_allclose(np.diff(betas.numpy()), (2e-2 - 1e-4) / 999, rtol=1e-3)


def test_masked_ddpm_trains_inpaints_deterministically_and_refuses_unhealthy(tmp_path):
    from orthodiff.personas.ddpm import load_masked_ddpm, masked_inpaint, save_masked_ddpm, train_masked_ddpm

    volumes, mask = _tiny()
    model, losses = train_masked_ddpm(volumes, mask, steps=3, healthy={"catalog": "c.parquet", "train_series": 3})
    again, losses2 = train_masked_ddpm(volumes, mask, steps=3, healthy={"catalog": "c.parquet", "train_series": 3})
    assert len(losses) == 3 and np.isfinite(losses).all() and losses == losses2
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    x0 = volumes[:2]
    persona = masked_inpaint(model, x0, mask[None, None], steps=4, generator=torch.Generator().manual_seed(1))
    assert persona.shape == x0.shape
    assert torch.equal(persona[:, :, ~mask], x0[:, :, ~mask])  # the context is kept exactly
    assert not torch.equal(persona[:, :, mask], x0[:, :, mask]) and persona.abs().max() <= 1
    same = masked_inpaint(model, x0, mask[None, None], steps=4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(persona, same)
    path = save_masked_ddpm(model, tmp_path / "ddpm.pt")
    loaded = load_masked_ddpm(path)
    assert torch.equal(masked_inpaint(loaded, x0, mask[None, None], steps=4, generator=torch.Generator().manual_seed(1)), persona)
    unhealthy, _ = train_masked_ddpm(volumes, mask, steps=1)
    save_masked_ddpm(unhealthy, tmp_path / "any.pt")
    with pytest.raises(OrthodiffError, match="not trained on healthy exams"):
        load_masked_ddpm(tmp_path / "any.pt")
    assert load_masked_ddpm(tmp_path / "any.pt", require_healthy=False).healthy is None
    with pytest.raises(OrthodiffError, match="ROI mask is empty"):
        train_masked_ddpm(volumes, torch.zeros_like(mask), steps=1)
    with pytest.raises(OrthodiffError, match="sampling steps"):
        masked_inpaint(model, x0, mask[None, None], steps=0)


def test_persona_models_command_compares_ddpm_gan_vit_and_mean_fill(tmp_path):
    """The paper's Table 2 run on a tiny store: every model scored on the same healthy test series."""
    import pandas as pd
    from typer.testing import CliRunner

    from orthodiff.catalogs.tasks import get_task
    from orthodiff.cli import app
    from orthodiff.featurestore.volumes import append_volumes

    n = 7
    rng = np.random.default_rng(0)
    meta = pd.DataFrame({"series_id": [f"s{i}" for i in range(n)], "case_id": [f"c{i}" for i in range(n)],
                         "patient_id": [f"p{i}" for i in range(n)], "plane": "axial", "scan": 0,
                         "split": ["train"] * 4 + ["test"] * 3})
    append_volumes(str(tmp_path / "s.zarr"), rng.uniform(-0.5, 0.5, (n, 16, 16, 16)), meta)
    catalog = meta.assign(task="knee", joint="knee", **{label: 0 for label in get_task("knee").label_columns})
    catalog.loc[6, "ACL"] = 1  # a lesion exam: not a healthy test series
    catalog.to_parquet(tmp_path / "c.parquet")
    args = ["persona-models", "--store", str(tmp_path / "s.zarr"), "--catalog", str(tmp_path / "c.parquet"),
            "--plane", "axial", "--out", str(tmp_path / "pm"), "--steps", "2", "--sampling-steps", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    per_series = pd.read_csv(tmp_path / "pm" / "persona_models.csv")
    assert set(per_series.model) == {"mean fill", "blur fill", "ddpm", "gan", "vit_ae"} and set(per_series.series) == {"s4", "s5"}
    assert per_series.ssim.between(-1, 1).all() and (per_series.mse > 0).all()
    from orthodiff.personas.ddpm import load_masked_ddpm

    assert load_masked_ddpm(tmp_path / "pm" / "ddpm_axial.pt").healthy["train_series"] == 4
    catalog.loc[:3, "MM"] = 1  # no healthy training exams left: refused, not trained on lesions
    catalog.to_parquet(tmp_path / "c.parquet")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "no healthy axial train series" in str(result.exception)


def test_persona_command_makes_ddpm_personas_beside_repaint_ones(tmp_path):
    """`persona --model ddpm`: same writer and layout as RePaint's, its own group (id `ddpm-...`),
    the model in the attributes and in every record's fingerprint (its policy)."""
    from helpers import make_volume_store, random_checkpoint
    from orthodiff.backbone.unet import UNetConfig
    from orthodiff.featurestore.volumes import open_volumes
    from orthodiff.personas.ddpm import save_masked_ddpm, train_masked_ddpm
    from orthodiff.personas.reader import open_personas
    from orthodiff.personas.rois import box_grid
    from orthodiff.personas.store import make_personas

    store = make_volume_store(tmp_path / "s.zarr", n=3, size=8)
    volumes = torch.from_numpy(open_volumes(store).volume.values.astype(np.float32))[:, None]
    mask = torch.from_numpy(box_grid((16, 8, 8), 1)[0] > 0)
    model, _ = train_masked_ddpm(volumes, mask, steps=2, healthy={"catalog": "c.parquet", "train_series": 3, "plane": "axial"})
    ckpt = save_masked_ddpm(model, tmp_path / "ddpm.pt")
    summary = make_personas(store, ckpt, "axial", grid=2, steps=3, progress=False, model="ddpm")
    assert summary["series"] == 3 and summary["backbone"].startswith("ddpm-")
    ds = open_personas(store, "axial", summary["backbone"]).load()
    assert ds.attrs["model"] == "ddpm" and ds.attrs["jumps"] == 1 and "masked DDPM" in ds.attrs["noise_policy"]
    roi = ds["mask"].values > 0
    np.testing.assert_array_equal(ds.persona.values[~roi], ds.image.values[~roi])
    assert np.abs(ds.persona.values[roi].astype(float) - ds.image.values[roi]).mean() > 0.05
    first = ds.persona.values.copy()
    assert make_personas(store, ckpt, "axial", grid=2, steps=3, progress=False, model="ddpm")["tasks"] == 0
    micro = random_checkpoint(tmp_path / "b.pt", "axial", config=UNetConfig(8, 16, 32, (1, 1)))
    other = make_personas(store, micro, "axial", grid=2, steps=1, jumps=1, progress=False, warn=lambda _: None)
    assert other["backbone"] != summary["backbone"]
    assert open_personas(store, "axial", other["backbone"]).attrs["model"] == "repaint"
    np.testing.assert_array_equal(open_personas(store, "axial", summary["backbone"]).persona.values, first)
    with pytest.raises(OrthodiffError, match="--model ddpm completes the central box"):
        make_personas(store, ckpt, "axial", grid=2, steps=3, jumps=2, progress=False, model="ddpm")
    with pytest.raises(OrthodiffError, match="not a masked-DDPM persona checkpoint"):
        make_personas(store, micro, "axial", steps=1, progress=False, model="ddpm")
    with pytest.raises(OrthodiffError, match="trained on axial"):
        make_personas(make_volume_store(tmp_path / "sag.zarr", n=1, size=8, planes=("sagittal",)), ckpt, "sagittal",
                      steps=1, progress=False, model="ddpm")
    unhealthy, _ = train_masked_ddpm(volumes, mask, steps=1)
    with pytest.raises(OrthodiffError, match="not trained on healthy exams"):
        make_personas(store, save_masked_ddpm(unhealthy, tmp_path / "any.pt"), "axial", steps=1, progress=False, model="ddpm")
