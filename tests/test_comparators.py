"""The paper's comparators: the GAN and ViT-autoencoder personas, the MRNet-style classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from orthodiff.errors import OrthodiffError
from orthodiff.training import one_thread


def _constant_knees(n: int = 6, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Volumes whose ROI is predictable from the context: a left-right intensity ramp of random offset."""
    from orthodiff.personas.rois import box_grid

    offsets = torch.linspace(-0.5, 0.5, n)[:, None, None, None, None]
    ramp = torch.linspace(-0.3, 0.3, size)[None, None, None, None, :]
    labels, _ = box_grid((size,) * 3, 1)
    return (offsets + ramp).expand(n, 1, size, size, size).contiguous(), torch.from_numpy(labels > 0)


@pytest.mark.parametrize("kind, size", [("gan", 8), ("vit_ae", 16)])
def test_persona_comparators_learn_to_fill_the_roi_from_its_context(kind, size):
    from orthodiff.personas.comparators import train_persona_comparator

    volumes, mask = _constant_knees(size=size)
    model, losses = train_persona_comparator(kind, volumes, mask, steps=30, batch=3, lr=3e-3)
    assert losses[:3] == train_persona_comparator(kind, volumes, mask, steps=3, batch=3, lr=3e-3)[1]  # seeded
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    persona = model.inpaint(volumes, mask[None, None])
    assert persona.shape == volumes.shape and torch.equal(persona[:, :, ~mask], volumes[:, :, ~mask])
    mean_fill = ((volumes[:, :, mask] - volumes[:, :, ~mask].mean()) ** 2).mean()
    assert ((persona[:, :, mask] - volumes[:, :, mask]) ** 2).mean() < mean_fill  # better than the global mean


def test_persona_comparators_refuse_bad_input():
    from orthodiff.personas.comparators import train_persona_comparator

    volumes, mask = _constant_knees(2, 8)
    with pytest.raises(OrthodiffError, match="ROI mask is empty"):
        train_persona_comparator("gan", volumes, torch.zeros_like(mask), steps=1)
    with pytest.raises(OrthodiffError, match="divisible by 16"):
        train_persona_comparator("vit_ae", volumes, mask, steps=1)
    with pytest.raises(OrthodiffError, match="expected one of"):
        train_persona_comparator("vae", volumes, mask, steps=1)


def test_mrnet_style_classifier_pools_slices_and_learns_a_bright_slice():
    """Bien et al. 2018: a 2D CNN per slice, max over slices; permuting slices changes nothing."""
    from orthodiff.supervised.networks import classifier

    torch.manual_seed(0)
    net = classifier("mrnet", 2)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(-1, 1, (8, 6, 16, 16)).astype(np.float32) * 0.2)
    y = torch.zeros(8, 2)
    for i in range(0, 8, 2):  # positives: one bright slice anywhere
        x[i, rng.integers(6), 4:12, 4:12] += 1.0
        y[i, 0] = 1
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    with one_thread():
        for _ in range(30):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x, None), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    logits = net(x, None)
    assert logits.shape == (8, 2) and ((logits[:, 0] > logits[:, 0].median()) == (y[:, 0] > 0)).all()
    torch.testing.assert_close(net(x[:, torch.randperm(6)], None), logits)
