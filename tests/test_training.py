"""The shared training loop: small models train on one CPU thread, large ones on the pool."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from orthodiff.training import SMALL_PARAMETERS, train


def threads_seen(model: nn.Module, X: np.ndarray) -> set[int]:
    seen = set()

    def forward(x):
        seen.add(torch.get_num_threads())
        return model(x)

    y = np.zeros((len(X), 1), np.float32)
    train(model, [X], y, None, epochs=1, lr=1e-3, batch_size=4, random_state=0, forward=forward)
    return seen


@pytest.mark.slow
def test_small_models_train_on_one_thread_and_the_pool_is_restored():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        X = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
        assert threads_seen(nn.Linear(16, 1), X) == {1}
        assert torch.get_num_threads() == 2
        wide = 1 + SMALL_PARAMETERS // 16  # just over the parameter budget
        assert threads_seen(nn.Sequential(nn.Linear(16, wide), nn.Linear(wide, 1)), X) == {2}
    finally:
        torch.set_num_threads(before)
