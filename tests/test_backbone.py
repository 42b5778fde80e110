"""The denoiser loads published checkpoints unchanged and reproduces their outputs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from orthodiff.backbone import PRESETS, DiffusionUNet, UNetConfig, backbone_id, load_backbone
from orthodiff.backbone.checkpoint import infer_config
from orthodiff.backbone.diffusion import NoiseScheduler
from orthodiff.errors import OrthodiffError

# a checkpoint written by the paper's public code (image size 16, width 32, channel_mult (1, 1))
DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "orthodiffusion_format_micro.pt"


@pytest.fixture(scope="module")
def io():
    return {k: torch.from_numpy(v) for k, v in np.load(DATA / "orthodiffusion_format_micro_io.npz").items()}


@pytest.mark.slow
def test_fixture_checkpoint_reproduces_middle_blocks_and_eps(io):
    model = load_backbone(FIXTURE, device="cpu")
    # attention after one downsampling; the convolutional layers do not depend on image size
    assert model.config == UNetConfig(32, 16, 32, (1, 1))
    with torch.no_grad():
        mids = model.middle_features(io["x_t"], io["t"])
        eps = model(io["x_t"], io["t"])
    for block in ("mid_0", "mid_1", "mid_2"):
        torch.testing.assert_close(mids[block], io[block], atol=1e-5, rtol=0)  # docs/guides/pretrain-extract.md: "to 1e-5"
    torch.testing.assert_close(eps, io["eps"], atol=1e-5, rtol=0)


def test_schedule_and_noising_match_the_reference_buffers(io):
    ckpt = torch.load(FIXTURE, weights_only=True)["ema"]
    scheduler = NoiseScheduler()
    for name in ("betas", "alphas_cumprod", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod"):
        torch.testing.assert_close(getattr(scheduler, name), ckpt[name].float())
    torch.testing.assert_close(scheduler.add_noise(io["x0"], io["noise"], io["t"]), io["x_t"], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_selected_blocks_only_and_unknown_block():
    model = DiffusionUNet(PRESETS["demo"]).eval()
    x, t = torch.randn(1, 1, 16, 32, 32), torch.tensor([10])
    out = model.middle_features(x, t, blocks=("mid_1",))
    assert list(out) == ["mid_1"] and out["mid_1"].shape == (1, *PRESETS["demo"].middle_shape)
    with pytest.raises(ValueError, match="unknown block"):
        model.middle_features(x, t, blocks=("mid_3",))


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_recognised_from_their_weights(name):
    assert infer_config(DiffusionUNet(PRESETS[name]).state_dict()) == PRESETS[name]


def test_ddp_prefix_and_model_only_checkpoints_load_with_the_same_id(tmp_path):
    ckpt = torch.load(FIXTURE, weights_only=True)
    ddp = {"model": {k.replace("denoise_fn.", "denoise_fn.module.", 1): v for k, v in ckpt["ema"].items()}}
    torch.save(ddp, tmp_path / "ddp.pt")
    assert backbone_id(tmp_path / "ddp.pt") == backbone_id(FIXTURE)
    assert isinstance(load_backbone(tmp_path / "ddp.pt", device="cpu"), DiffusionUNet)
    ckpt["ema"]["denoise_fn.out.2.bias"] = ckpt["ema"]["denoise_fn.out.2.bias"] + 1
    torch.save(ckpt, tmp_path / "changed.pt")
    assert backbone_id(tmp_path / "changed.pt") != backbone_id(FIXTURE)


def test_bad_checkpoints_are_named(tmp_path):
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(OrthodiffError, match="garbage.pt: not a readable checkpoint"):
        load_backbone(tmp_path / "garbage.pt")
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(OrthodiffError, match="no 'ema' or 'model'"):
        load_backbone(tmp_path / "other.pt")
    state = {f"denoise_fn.{k}": v for k, v in DiffusionUNet(PRESETS["demo"]).state_dict().items()}
    state["denoise_fn.out.2.weight"] = torch.zeros(2, 32, 3, 3, 3)
    del state["denoise_fn.out.0.bias"]
    state["denoise_fn.extra.weight"] = torch.zeros(1)
    torch.save({"ema": state}, tmp_path / "foreign.pt")
    with pytest.raises(OrthodiffError, match=r"missing \(1\): out.0.bias; unexpected \(1\): extra.weight; mis-shaped \(1\): out.2.weight"):
        load_backbone(tmp_path / "foreign.pt")
    with pytest.raises(OrthodiffError, match="checkpoint file not found"):
        load_backbone(tmp_path / "absent.pt")


@pytest.mark.slow
def test_a_saved_config_decides_the_architecture_shapes_cannot_show(tmp_path):
    """Two attention heads give the same weight shapes as one: only the saved config tells."""
    config = UNetConfig(32, 16, 32, (1, 2, 2), num_heads=2)
    torch.manual_seed(0)
    model = DiffusionUNet(config).eval()
    state = {f"denoise_fn.{k}": v for k, v in model.state_dict().items()}
    torch.save({"ema": state, "config": config.to_dict()}, tmp_path / "ours.pt")
    torch.save({"ema": state}, tmp_path / "published.pt")
    x, t = torch.randn(1, 1, 16, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([300])
    with torch.no_grad():
        expected = model.middle_features(x, t)["mid_1"]
        ours = load_backbone(tmp_path / "ours.pt", device="cpu")
        published = load_backbone(tmp_path / "published.pt", device="cpu")
        assert ours.config == config and published.config == replace(config, num_heads=1)
        torch.testing.assert_close(ours.middle_features(x, t)["mid_1"], expected, atol=0, rtol=0)
        assert (published.middle_features(x, t)["mid_1"] - expected).abs().max() > 1e-3
    torch.save({"ema": state, "config": {"image_size": 32, "heads": 2}}, tmp_path / "bad.pt")
    with pytest.raises(OrthodiffError, match=r"bad.pt: unusable saved 'config'"):
        load_backbone(tmp_path / "bad.pt", device="cpu")


@pytest.mark.slow
def test_encoder_checkpoint_keeps_features_in_a_fifth_of_the_bytes(tmp_path):
    from orthodiff.backbone.checkpoint import export_encoder
    from helpers import random_checkpoint

    full = random_checkpoint(tmp_path / "full.pt", "sagittal", seed=3)
    small = export_encoder(full, tmp_path / "encoder.pt")
    ckpt = torch.load(small, weights_only=True)
    assert ckpt["parts"] == "encoder" and ckpt["source_backbone"] == backbone_id(full) and ckpt["plane"] == "sagittal"
    assert {v.dtype for v in ckpt["ema"].values()} == {torch.float16}
    assert not any(k.startswith(("denoise_fn.output_blocks", "denoise_fn.out.")) for k in ckpt["ema"])
    assert Path(small).stat().st_size < 0.2 * Path(full).stat().st_size

    reference, encoder = load_backbone(full, "cpu"), load_backbone(small, "cpu")
    x, t = torch.randn(2, 1, 16, 32, 32), torch.tensor([10, 300])
    with torch.no_grad():
        expected, got = reference.middle_features(x, t), encoder.middle_features(x, t)
    for block in expected:  # float16 weights: features move by float16 rounding only
        scale = expected[block].abs().max()
        assert 0 < (got[block] - expected[block]).abs().max() < 2e-3 * scale
    with pytest.raises(OrthodiffError, match="encoder and middle block only"):
        encoder(x, t)


@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-5), ("bf16", 3e-2)])
def test_fast_path_reproduces_the_fixture_middle_blocks(io, precision, tolerance):
    """The fast inference path (channels-last 3D, bfloat16 weights for bf16, GroupNorm and
    softmax accumulated in float32) against the reference code's own mid_0/1/2: fp32 to the
    parity tolerance; bf16 within 3% of each block's largest magnitude (bfloat16 keeps 8
    significant bits, 0.4% per rounding; the error is measured, not assumed: see below)."""
    from orthodiff.backbone.precision import inference_context, inference_input, inference_model

    model = inference_model(load_backbone(FIXTURE, device="cpu"), precision)
    assert next(model.parameters()).dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
    with torch.no_grad(), inference_context("cpu", precision):
        x = inference_input(io["x_t"], model)
        assert x.is_contiguous(memory_format=torch.channels_last_3d)
        mids = model.middle_features(x, io["t"])
    errors = {}
    for block in ("mid_0", "mid_1", "mid_2"):
        assert mids[block].dtype == next(model.parameters()).dtype
        errors[block] = ((mids[block].float() - io[block]).abs().max() / io[block].abs().max()).item()
    assert max(errors.values()) < tolerance, errors
    if precision == "bf16":
        assert min(errors.values()) > 1e-4, errors  # it did run in bfloat16


@pytest.mark.slow
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-5), ("bf16", 3e-2)])
def test_compiled_fast_path_reproduces_the_fixture_middle_blocks(io, precision, tolerance, recwarn):
    """`extract --compile`'s network (fp32 frozen, bf16 not) against the reference code's
    mid_0/1/2, at the eager fast path's tolerances: freezing once made bf16's attention NaN."""
    from orthodiff.backbone.precision import Compiled, inference_input, inference_model

    model = inference_model(load_backbone(FIXTURE, device="cpu"), precision)
    with torch.no_grad():
        mids = Compiled(model.middle_features, precision)(inference_input(io["x_t"], model), io["t"])
    if precision == "fp32":  # it compiled and was kept (bf16 compiles to NaN on torch 2.13's CPU, and falls back)
        assert not [w for w in recwarn if "running eagerly" in str(w.message)]
    errors = {b: ((mids[b].float() - io[b]).abs().max() / io[b].abs().max()).item() for b in ("mid_0", "mid_1", "mid_2")}
    assert max(errors.values()) < tolerance, errors


def test_compiled_falls_back_to_eager_once(monkeypatch):
    from orthodiff.backbone.precision import Compiled

    calls = []

    def failing_compile(function, **options):
        def run(*args):
            calls.append(args)
            raise RuntimeError("no C++ compiler")
        return run

    monkeypatch.setattr(torch, "compile", failing_compile)
    forward = Compiled(lambda x: x + 1)
    with pytest.warns(UserWarning, match="torch.compile failed .*no C\\+\\+ compiler.*running eagerly"):
        assert forward(1) == 2
    assert forward(2) == 3 and len(calls) == 1  # not tried again


def test_compiled_output_unlike_eager_falls_back_to_eager(monkeypatch):
    from orthodiff.backbone.precision import Compiled

    monkeypatch.setattr(torch, "compile", lambda function, **options: lambda x: {"mid_0": x * float("nan")})
    forward = Compiled(lambda x: {"mid_0": x + 1})
    with pytest.warns(UserWarning, match="not eager's \\(largest error inf .*running eagerly"):
        assert forward(torch.ones(2))["mid_0"].tolist() == [2, 2]
    assert forward(torch.ones(2))["mid_0"].tolist() == [2, 2]  # eager from now on
    monkeypatch.setattr(torch, "compile", lambda function, **options: lambda x: {"mid_0": x + 1.01})
    kept = Compiled(lambda x: {"mid_0": x + 1})
    assert kept(torch.ones(2))["mid_0"].tolist() == pytest.approx([2.01, 2.01])  # within TOLERANCE: the compiled one
