"""SAP probes of K (timestep, block) configurations trained together as one batched model.

Each configuration is the paper's SAP probe (``heads.pooling.SAP`` on the raw activation:
q, k, v linear C -> C, 16 heads, mean over tokens, out linear, concatenated with GAP ->
2C, then a linear classifier), started from exactly the weights that probe would start
from. The K probes' weights are stacked along a leading axis and every layer becomes one
batched matmul. The loss is the sum of the K per-configuration losses and Adam is
element-wise, so each slice follows the trajectory it would follow alone (up to float
rounding of batched vs single matmuls); the activations of all configurations are read
once per epoch instead of once per configuration.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit
from sklearn.utils.validation import check_is_fitted
from torch import nn

from orthodiff.heads.estimator import MultiLabelClassifier
from orthodiff.heads.pooling import SAP
from orthodiff.heads.probe import ProbeNet
from orthodiff.training import apply, seeded, train


class BatchedSAPNet(nn.Module):
    """K SAP probes: (N, K, C, *spatial) -> (N, K, labels) logits."""

    def __init__(self, probes: list[tuple[SAP, nn.Linear]]):
        super().__init__()
        self.heads = probes[0][0].heads

        def stack(get) -> nn.Parameter:
            return nn.Parameter(torch.stack([get(pool, linear).detach() for pool, linear in probes]).clone())

        # weights transposed to (K, in, out) so a layer is one baddbmm over (K, rows, in)
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self, f"{name}_weight", stack(lambda p, _, n=name: getattr(p, n).weight.T))
            setattr(self, f"{name}_bias", stack(lambda p, _, n=name: getattr(p, n).bias))
        self.classifier_weight = stack(lambda _, c: c.weight.T)
        self.classifier_bias = stack(lambda _, c: c.bias)

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """(K, ..., in) -> (K, ..., out) with the K stacked weights of layer `name`."""
        k, *middle, d = x.shape
        weight, bias = getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias")
        flat = torch.baddbmm(bias[:, None], x.reshape(k, -1, d), weight)
        return flat.reshape(k, *middle, weight.shape[-1])

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(N, K, C, *spatial) -> (K, N, 2C): [GAP, SAP] per configuration, in float32."""
        n, k, c = x.shape[:3]
        t = x.float().reshape(n, k, c, -1).permute(1, 0, 3, 2).contiguous()  # (K, N, tokens, C)
        length, h = t.shape[2], self.heads

        def split(a: torch.Tensor) -> torch.Tensor:  # 4-D for SDPA's fused CPU kernel (5-D falls back)
            return a.view(k * n, length, h, c // h).transpose(1, 2)

        q, key, v = (split(self._linear(t, name)) for name in ("q_proj", "k_proj", "v_proj"))
        attended = F.scaled_dot_product_attention(q, key, v).transpose(1, 2).reshape(k, n, length, c)
        pooled = self._linear(attended.mean(2), "out_proj")
        return torch.cat([t.mean(2), pooled], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._linear(self.pooled(x), "classifier").transpose(0, 1)


class BatchedSAPProbes(MultiLabelClassifier):
    """The SAP probe for K configurations at once; ``X`` is (N, K, C, z, y, x) activations
    (numpy or lazy, streamed in blocks of ``block_rows`` series); outputs carry the
    configuration axis: ``predict_proba`` (N, K, labels), or (N, K, 2) for a 1-D binary ``y``."""

    def __init__(self, epochs: int = 10, lr: float = 5e-4, batch_size: int = 10, weight_decay: float = 0.0,
                 block_rows: int = 256, random_state: int = 0):
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.block_rows = block_rows
        self.random_state = random_state

    def fit(self, X, y, sample_weight=None) -> "BatchedSAPProbes":
        y = self._encode_targets(y)
        k, c = X.shape[1], X.shape[2]
        # every configuration starts where the single probe (`PlaneProbe("sap")`) starts
        nets = [seeded(self.random_state, lambda: ProbeNet("sap", c, y.shape[1])) for _ in range(k)]
        probes = [(net.pool, net.classifier) for net in nets]
        self.net_ = train(
            BatchedSAPNet(probes), [X], y, sample_weight, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
            random_state=self.random_state, weight_decay=self.weight_decay, block_rows=self.block_rows,
        )
        return self

    def _positive_proba(self, X) -> np.ndarray:
        check_is_fitted(self)
        return expit(apply(self.net_, [X], self.block_rows))
