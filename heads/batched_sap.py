"""SAP probes of K (timestep, block) configurations trained together as one batched model.

Each configuration is the paper's SAP probe (``PlaneProbe("sap")``: ``heads.pooling.SAP``
on the raw activation — q, k, v linear C -> C, 16 heads, mean over tokens, out linear —
concatenated with GAP -> 2C, standardised with the training set's pooled statistics at the
start, then a linear classifier), started from exactly the weights that probe starts from.
The K probes' weights are stacked along a leading axis and every layer becomes one batched
matmul. The loss is the sum of the K per-configuration losses and Adam is element-wise, so
each slice follows the trajectory it would follow alone (up to float rounding); an epoch is
one pass over the activations of all configurations, not one pass per configuration.

The pooling is computed in an equivalent, cheaper order. SAP keeps only the mean over
queries of the attention output, and every softmax row sums to one, so per head h

    mean_i sum_j P_ij (W_v t_j + b_v) = W_v (sum_j abar_j t_j) + b_v,   abar_j = mean_i P_ij:

the value projection is applied to H attention-weighted token means instead of to every
token, and the attention output P V is never formed. ``attention_mean`` computes ``abar``
with the fused kernel of ``heads.attention_kernel`` (one row of scores at a time; the
backward pass recomputes P from the rows' saved log-sum-exp), or, where that kernel is not
available, eagerly in chunks that stay in cache, recomputing P in the backward pass
instead of storing it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import expit
from sklearn.utils.validation import check_is_fitted
from torch import nn

from orthodiff.heads import attention_kernel
from orthodiff.heads.defaults import PROBE
from orthodiff.heads.estimator import MultiLabelClassifier
from orthodiff.heads.probe import PlaneProbe, ProbeNet
from orthodiff.training import apply, one_thread, seeded, train

# (batch x heads) rows per chunk of attention_mean's eager path (where the fused kernel of
# heads.attention_kernel is unavailable): 64 x 128 x 128 floats (4 MiB) of scores.
# The chunks' ops are small enough that a pool of intra-op threads costs more in fork/join
# than it saves (on the loaded 2-core machine a step took 3x longer on 2 threads than on 1),
# so the chunk loops run on one thread; the projections around them keep torch's threads.
CHUNK = 64


class _AttentionMean(torch.autograd.Function):
    """abar[b] = mean over queries of softmax(q[b]^T k[b]); q, k given transposed (B, d, L)."""

    @staticmethod
    def forward(ctx, qt: torch.Tensor, kt: torch.Tensor) -> torch.Tensor:
        out = qt.new_empty(qt.shape[0], kt.shape[2])
        with one_thread():
            for s in range(0, len(qt), CHUNK):
                scores = torch.bmm(qt[s : s + CHUNK].transpose(1, 2), kt[s : s + CHUNK])
                torch.mean(scores.softmax(-1), 1, out=out[s : s + CHUNK])
        ctx.save_for_backward(qt, kt)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        qt, kt = ctx.saved_tensors
        dqt, dkt = torch.empty_like(qt), torch.empty_like(kt)
        grad = (grad / qt.shape[2])[:, None, :]  # d abar_j / d P_ij = 1 / L
        with one_thread():
            for s in range(0, len(qt), CHUNK):
                q, k, g = qt[s : s + CHUNK], kt[s : s + CHUNK], grad[s : s + CHUNK]
                p = torch.bmm(q.transpose(1, 2), k).softmax(-1)  # recomputed: (c, L queries, L keys)
                dscores = p.mul_(g - torch.bmm(p, g.transpose(1, 2)))  # softmax backward, in place
                torch.bmm(k, dscores.transpose(1, 2), out=dqt[s : s + CHUNK])
                torch.bmm(q, dscores, out=dkt[s : s + CHUNK])
        return dqt, dkt


class _FusedAttentionMean(torch.autograd.Function):
    """``_AttentionMean`` by the fused kernel of ``heads.attention_kernel``, on (B, d, N, L)."""

    @staticmethod
    def forward(ctx, qt: torch.Tensor, kt: torch.Tensor, kernel) -> torch.Tensor:
        out, lse = attention_kernel.forward(kernel, qt, kt)
        ctx.kernel = kernel
        ctx.save_for_backward(qt, kt, lse)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return *attention_kernel.backward(ctx.kernel, *ctx.saved_tensors, grad), None


def attention_mean(qt: torch.Tensor, kt: torch.Tensor) -> torch.Tensor:
    """(B, d, L) or (B, d, N, L) queries and keys -> (B, L) or (B, N, L): softmax(q^T k)
    averaged over the queries, for each b (and n). The (B, d, N, L) layout is the one in
    which the projections come out of one matmul per configuration without a copy."""
    q4, k4 = ((t if t.dim() == 4 else t.unsqueeze(2)).contiguous() for t in (qt, kt))
    b, d, n, length = q4.shape
    kernel = attention_kernel.usable(q4, k4)
    if kernel is not None:
        out = _FusedAttentionMean.apply(q4, k4, kernel)
    else:
        def rows(t: torch.Tensor) -> torch.Tensor:
            return t.transpose(1, 2).reshape(b * n, d, length)

        out = _AttentionMean.apply(rows(q4).contiguous(), rows(k4).contiguous()).view(b, n, length)
    return out if qt.dim() == 4 else out.squeeze(1)


class BatchedSAPNet(nn.Module):
    """K SAP probes: (N, K, C, *spatial) -> (N, K, labels) logits."""

    def __init__(self, probes: list[ProbeNet]):
        super().__init__()
        self.heads = probes[0].pool.heads

        def stack(get) -> torch.Tensor:
            return torch.stack([get(net).detach() for net in probes]).clone()

        # weights transposed to (K, in, out) so a layer is one baddbmm over (K, rows, in)
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self, f"{name}_weight", nn.Parameter(stack(lambda n, m=name: getattr(n.pool, m).weight.T)))
            setattr(self, f"{name}_bias", nn.Parameter(stack(lambda n, m=name: getattr(n.pool, m).bias)))
        self.classifier_weight = nn.Parameter(stack(lambda n: n.classifier.weight.T))
        self.classifier_bias = nn.Parameter(stack(lambda n: n.classifier.bias))
        self.register_buffer("mean", stack(lambda n: n.mean))
        self.register_buffer("scale", stack(lambda n: n.scale))

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """(K, ..., in) -> (K, ..., out) with the K stacked weights of layer `name`."""
        k, *middle, d = x.shape
        weight, bias = getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias")
        flat = torch.baddbmm(bias[:, None], x.reshape(k, -1, d), weight)
        return flat.reshape(k, *middle, weight.shape[-1])

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(N, K, C, *spatial) -> (K, N, 2C): [GAP, SAP] per configuration, in float32."""
        n, k, c = x.shape[:3]
        h = self.heads
        d = c // h
        x = x.reshape(n, k, c, -1)
        length = x.shape[3]

        def dense(a: torch.Tensor) -> torch.Tensor:  # cast and laid out in one copy
            return torch.empty(a.shape, dtype=torch.float32, device=a.device).copy_(a)

        t = dense(x.transpose(0, 1))  # (K, N, C, tokens)
        tc = dense(x.permute(1, 2, 0, 3)).view(k, c, n * length)  # (K, C, N tokens)

        def projected(name: str, scale: float = 1.0) -> torch.Tensor:  # (K H, d, N, L), a view
            weight, bias = getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias")
            out = torch.baddbmm(bias[:, :, None], weight.transpose(1, 2), tc, beta=scale, alpha=scale)
            return out.view(k * h, d, n, length)

        q = projected("q_proj", 1 / math.sqrt(d))  # SDPA's default scale
        abar = attention_mean(q, projected("k_proj")).view(k, h, n, length).transpose(1, 2)
        means = torch.matmul(abar, t.transpose(2, 3))  # (K, N, H, C) per-head weighted token means
        values = torch.einsum("knhc,kchd->knhd", means, self.v_proj_weight.view(k, c, h, d)).reshape(k, n, c)
        pooled = self._linear(values + self.v_proj_bias[:, None], "out_proj")
        return torch.cat([t.mean(3), pooled], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        standardised = (self.pooled(x) - self.mean[:, None]) / self.scale[:, None]
        return self._linear(standardised, "classifier").transpose(0, 1)


class BatchedSAPProbes(MultiLabelClassifier):
    """The SAP probe for K configurations at once; ``X`` is (N, K, C, z, y, x) activations
    (numpy or lazy, streamed in blocks of ``block_rows`` series); outputs carry the
    configuration axis: ``predict_proba`` (N, K, labels), or (N, K, 2) for a 1-D binary ``y``."""

    def __init__(self, epochs: int = PROBE["epochs"], lr: float = PROBE["lr"], batch_size: int = PROBE["batch_size"],
                 weight_decay: float = 0.0, block_rows: int = 256, random_state: int = 0):
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.block_rows = block_rows
        self.random_state = random_state

    def fit(self, X, y, sample_weight=None) -> "BatchedSAPProbes":
        y = self._encode_targets(y)
        k, c = X.shape[1], X.shape[2]
        # every configuration starts where the single probe (`PlaneProbe("sap")`) starts,
        # standardised with its pooled training vectors as that probe is
        nets = [seeded(self.random_state, lambda: ProbeNet("sap", c, y.shape[1])) for _ in range(k)]
        net = BatchedSAPNet(nets)
        pooled = apply(lambda x: net.pooled(x).transpose(0, 1), [X], self.block_rows)  # (N, K, 2C)
        net.mean.copy_(torch.from_numpy(pooled.mean(0, dtype=np.float64).astype(np.float32)))
        net.scale.copy_(torch.from_numpy(np.maximum(pooled.std(0, dtype=np.float64), 1e-6).astype(np.float32)))
        self.net_ = train(
            net, [X], y, sample_weight, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
            random_state=self.random_state, weight_decay=self.weight_decay, block_rows=self.block_rows,
        )
        return self

    def _positive_proba(self, X) -> np.ndarray:
        check_is_fitted(self)
        return expit(apply(self.net_, [X], self.block_rows))

    def probe(self, k: int) -> PlaneProbe:
        """Configuration ``k`` as the fitted ``PlaneProbe("sap")`` it trained as (its predictions
        match a probe trained alone up to float rounding): usable as a Stage I probe."""
        check_is_fitted(self)
        net, state = self.net_, {}
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            state[f"pool.{name}.weight"] = getattr(net, f"{name}_weight")[k].T
            state[f"pool.{name}.bias"] = getattr(net, f"{name}_bias")[k]
        state.update({"classifier.weight": net.classifier_weight[k].T, "classifier.bias": net.classifier_bias[k],
                      "mean": net.mean[k], "scale": net.scale[k]})
        params = {n: getattr(self, n) for n in ("epochs", "lr", "batch_size", "weight_decay", "block_rows", "random_state")}
        return PlaneProbe.from_head("sap", {n: t.detach().clone().contiguous() for n, t in state.items()}, **params)
