"""Single-plane probe: pooling of one (timestep, block) activation + a linear classifier."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from orthodiff.heads.pooling import GAP, make_pooling
from orthodiff.heads.training import apply, seeded, train


def channel_stats(x, block_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over series of the per-channel spatial means (GAP vectors) of ``x``."""
    gap = apply(GAP(x.shape[1]), [x], block_rows).astype(np.float64)
    return gap.mean(0).astype(np.float32), np.maximum(gap.std(0), 1e-6).astype(np.float32)


class ProbeNet(nn.Module):
    """Channel standardisation (training-set GAP statistics) -> pooling -> Linear(labels)."""

    def __init__(self, pooling: str, channels: int, n_labels: int):
        super().__init__()
        self.pool = make_pooling(pooling, channels)
        # zero start: the probe's logits begin at 0 (p = 0.5) instead of random projections of
        # hundreds of noise channels, which small cohorts cannot train away in a few epochs
        self.classifier = nn.Linear(self.pool.out_dim, n_labels)
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("scale", torch.ones(channels))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return self.pool((x.float() - self.mean.view(shape)) / self.scale.view(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pooled(x))


class PlaneProbe:
    """Probe of one plane's activation at one (timestep, block).

    ``X``: (N, C, z, y, x) activations, or (N, C) GAP vectors when ``pooling="gap"``; a
    numpy array or a lazy xarray/Dask array (streamed in blocks of ``block_rows`` series).
    ``y``: (N, labels) 0/1. After ``fit``, ``transform`` gives the frozen pooled vectors
    (Stage I output for fusion).
    """

    def __init__(
        self,
        pooling: str = "gap",
        epochs: int = 10,
        lr: float = 5e-4,
        batch_size: int = 32,
        weight_decay: float = 0.0,
        block_rows: int = 256,
        random_state: int = 0,
    ):
        self.pooling = pooling
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.block_rows = block_rows
        self.random_state = random_state

    def fit(self, X, y, sample_weight=None) -> "PlaneProbe":
        y = np.asarray(y, dtype=np.float32)
        mean, scale = channel_stats(X, self.block_rows)
        net = seeded(self.random_state, lambda: ProbeNet(self.pooling, X.shape[1], y.shape[1]))
        net.mean.copy_(torch.from_numpy(mean))
        net.scale.copy_(torch.from_numpy(scale))
        self.net_ = train(
            net, [X], y, sample_weight, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
            random_state=self.random_state, weight_decay=self.weight_decay, block_rows=self.block_rows,
        )
        return self

    def decision_function(self, X) -> np.ndarray:
        return apply(self.net_, [X], self.block_rows)

    def predict_proba(self, X) -> np.ndarray:
        return 1 / (1 + np.exp(-self.decision_function(X)))

    def transform(self, X) -> np.ndarray:
        return apply(self.net_.pooled, [X], self.block_rows)
