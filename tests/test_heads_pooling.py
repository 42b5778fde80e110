"""The pooling modules load the reference weights unchanged and reproduce its outputs."""

from pathlib import Path

import numpy as np
import pytest
import torch

from orthodiff.errors import OrthodiffError
from orthodiff.heads.pooling import GAP, GLP, SAP, make_pooling
from orthodiff.heads.probe import PlaneProbe, ProbeNet

# data written by the paper's public code (reference parameter names, inputs, expected outputs)
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def reference():
    state = torch.load(DATA / "pooling_format_tiny.pt", weights_only=True)
    return state, dict(np.load(DATA / "pooling_format_tiny_io.npz"))


def test_reference_weights_reproduce_pooled_outputs(reference):
    state, io = reference
    feat = torch.from_numpy(io["feat"])
    channels = feat.shape[1]
    sap, glp = SAP(channels, heads=16), GLP(channels)
    sap.load_state_dict(state["sap"], strict=True)
    glp.load_state_dict(state["glp"], strict=True)
    with torch.no_grad():
        np.testing.assert_allclose(GAP(channels)(feat).numpy(), io["gap"], atol=1e-5)
        np.testing.assert_allclose(sap(feat).numpy(), io["sap"], atol=1e-5)
        np.testing.assert_allclose(glp(feat).numpy(), io["glp"], atol=1e-5)


def test_float16_input_pools_in_float32_and_gap_accepts_pooled_vectors():
    x = torch.full((2, 16, 4, 8, 8), 60000.0, dtype=torch.float16)
    out = GAP(16)(x)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    pooled = torch.randn(3, 16)
    assert torch.equal(GAP(16)(pooled), pooled)


def test_bad_pooling_configuration_is_named():
    with pytest.raises(OrthodiffError, match="unknown pooling 'max'"):
        make_pooling("max", 32)
    with pytest.raises(OrthodiffError, match="not divisible by 16 heads"):
        SAP(40)


@pytest.mark.parametrize("pooling", ["sap", "glp", "gap"])
def test_a_probe_pools_the_raw_activation_like_the_reference(reference, pooling):
    state, io = reference
    feat = torch.from_numpy(io["feat"])
    net = ProbeNet(pooling, feat.shape[1], n_labels=3)
    if pooling != "gap":
        net.pool.load_state_dict(state[pooling], strict=True)
    rng = np.random.default_rng(0)
    net.standardise_with(rng.normal(2.0, 3.0, (50, net.pool.out_dim)))
    with torch.no_grad():
        net.classifier.weight.normal_()
        np.testing.assert_allclose(net.pooled(feat).numpy(), io[pooling], atol=1e-5)
        # the forward pass goes through that same pooled vector, standardised after pooling
        expected = net.classifier((torch.from_numpy(io[pooling]) - net.mean) / net.scale)
        torch.testing.assert_close(net(feat), expected, atol=1e-4, rtol=1e-5)


def test_plane_probe_defaults_are_the_papers():
    probe = PlaneProbe()
    assert (probe.pooling, probe.lr, probe.epochs, probe.batch_size) == ("sap", 5e-4, 10, 10)
