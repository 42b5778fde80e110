"""Single-plane probe: pooling of one (timestep, block) activation + a linear classifier."""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import expit
from sklearn.base import TransformerMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn

from orthodiff.heads.estimator import MultiLabelClassifier, check_weights, check_X
from orthodiff.heads.defaults import POOLING, PROBE
from orthodiff.heads.pooling import make_pooling
from orthodiff.options import Pooling
from orthodiff.training import apply, seeded, train


def channel_statistics(x) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (last axis kept, first axis reduced) mean and standard deviation in float64,
    returned as float32; the deviation is floored at 1e-6 so a constant channel stays finite.
    Every probe standardises its pooled vectors with these training-set statistics."""
    x = np.asarray(x)
    return (x.mean(0, dtype=np.float64).astype(np.float32),
            np.maximum(x.std(0, dtype=np.float64), 1e-6).astype(np.float32))


class ProbeNet(nn.Module):
    """Pooling of the raw activation (as in the reference: no channel standardisation before
    pooling) -> standardisation of the pooled vector -> Linear(labels).

    The standardisation is a fixed per-dimension affine map (``mean``, ``scale``: statistics
    of the training set's pooled vectors at the start of training, see ``standardise_with``);
    in front of a linear classifier it changes the optimisation, not what the probe can fit.
    """

    def __init__(self, pooling: str, channels: int, n_labels: int):
        super().__init__()
        self.pool = make_pooling(pooling, channels)
        # zero start: the probe's logits begin at 0 (p = 0.5) instead of random projections of
        # hundreds of noise channels, which small cohorts cannot train away in a few epochs
        self.classifier = nn.Linear(self.pool.out_dim, n_labels)
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)
        self.register_buffer("mean", torch.zeros(self.pool.out_dim))
        self.register_buffer("scale", torch.ones(self.pool.out_dim))

    def standardise_with(self, pooled: np.ndarray) -> "ProbeNet":
        """Set ``mean`` / ``scale`` from pooled training vectors (N, out_dim)."""
        mean, scale = channel_statistics(pooled)
        self.mean.copy_(torch.from_numpy(mean))
        self.scale.copy_(torch.from_numpy(scale))
        return self

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The pooling of the raw activation (the reference's pooled vector)."""
        return self.pool(x)

    def standardised(self, x: torch.Tensor) -> torch.Tensor:
        return (self.pooled(x) - self.mean) / self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.standardised(x))


class PlaneProbe(TransformerMixin, MultiLabelClassifier):
    """Probe of one plane's activation at one (timestep, block).

    ``X``: (N, C, z, y, x) activations, or (N, C) GAP vectors when ``pooling="gap"``; a
    numpy array or a lazy xarray/Dask array (streamed in blocks of ``block_rows`` series).
    ``y``: (N, labels) 0/1, or 1-D binary (see ``heads.estimator``). After ``fit``,
    ``transform`` gives the frozen, standardised pooled vectors (Stage I output for fusion).
    Defaults are the paper's: SAP, Adam at 5e-4 with a cosine schedule, 10 epochs, batch 10.
    """

    def __init__(
        self,
        pooling: str = POOLING,
        epochs: int = PROBE["epochs"],
        lr: float = PROBE["lr"],
        batch_size: int = PROBE["batch_size"],
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
        X, y = check_X(self, X, y, reset=True, allow_nd=True, dtype=[np.float32, np.float16])
        y, sample_weight = self._encode_targets(y), check_weights(sample_weight, X)
        net = seeded(self.random_state, lambda: ProbeNet(self.pooling, X.shape[1], y.shape[1]))
        net.standardise_with(apply(net.pooled, [X], self.block_rows))
        self.net_ = train(
            net, [X], y, sample_weight, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
            random_state=self.random_state, weight_decay=self.weight_decay, block_rows=self.block_rows,
        )
        return self

    @classmethod
    def from_head(cls, pooling: str, state: dict, **params) -> "PlaneProbe":
        """A fitted probe from a trained ``ProbeNet`` state (e.g. the pooling head a
        fine-tuning run saved with its checkpoint)."""
        n_labels, width = state["classifier.weight"].shape
        probe = cls(pooling, **params)
        channels = width if Pooling(pooling) is Pooling.gap else width // 2  # GLP and SAP: [GAP, pooled]
        net = ProbeNet(pooling, channels, n_labels)
        net.load_state_dict(state)
        probe.net_ = net.eval()
        probe.n_features_in_ = channels
        probe.multilabel_, probe.classes_ = True, np.array([0, 1])
        return probe

    def _inputs(self, X) -> list:
        check_is_fitted(self)
        return [check_X(self, X, reset=False, allow_nd=True, dtype=[np.float32, np.float16])]

    def decision_function(self, X) -> np.ndarray:
        inputs = self._inputs(X)
        return self._layout(apply(self.net_, inputs, self.block_rows))

    def _positive_proba(self, X) -> np.ndarray:
        inputs = self._inputs(X)
        return expit(apply(self.net_, inputs, self.block_rows))

    def transform(self, X) -> np.ndarray:
        inputs = self._inputs(X)
        return apply(self.net_.standardised, inputs, self.block_rows)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]  # the torch network computes in float32
        return tags
