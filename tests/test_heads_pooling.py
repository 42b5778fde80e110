"""The pooling modules load the reference weights unchanged and reproduce its outputs."""

from pathlib import Path

import numpy as np
import pytest
import torch

from orthodiff.errors import OrthodiffError
from orthodiff.heads.pooling import GAP, GLP, SAP, make_pooling

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
