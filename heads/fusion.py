"""Plane fusion heads on per-plane pooled vectors (Stage II), optionally with EHR late fusion.

``X`` is a dict: one (N, D_plane) array per plane (sagittal, coronal, axial order) and,
for EHR fusion, ``X["ehr"]`` = ``EHREncoder.transform`` rows of the same exams.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from orthodiff.catalogs.tasks import PLANES
from orthodiff.errors import OrthodiffError
from orthodiff.heads.ehr import EHREncoder, EHRNet, LateFusion
from orthodiff.heads.training import apply, seeded, train

METHODS = ("concat", "linear_concat", "linear_add", "cross_attention", "mpae")


def _zero_linear(d_in: int, d_out: int) -> nn.Linear:
    layer = nn.Linear(d_in, d_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class PlaneFusion(nn.Module):
    """The five fusion methods; ``forward(*plane_vectors) -> logits (N, labels)``."""

    def __init__(self, method: str, dims: list[int], n_labels: int, shared_dim: int = 256, heads: int = 4, gate_hidden: int = 32):
        super().__init__()
        if method not in METHODS:
            raise OrthodiffError(f"unknown fusion method {method!r}; expected one of {list(METHODS)}")
        self.method, n = method, len(dims)
        if method == "concat":
            self.classifier = _zero_linear(sum(dims), n_labels)
        elif method == "mpae":
            self.plane_classifiers = nn.ModuleList(_zero_linear(d, n_labels) for d in dims)
            self.gates = nn.ModuleList(
                nn.Sequential(nn.Linear(sum(dims), gate_hidden), nn.ReLU(), nn.Linear(gate_hidden, n))
                for _ in range(n_labels)
            )
        else:
            self.project = nn.ModuleList(nn.Linear(d, shared_dim) for d in dims)
            if method == "cross_attention":
                self.attention = nn.MultiheadAttention(shared_dim, heads, batch_first=True)
                self.norm = nn.LayerNorm(shared_dim)
            width = shared_dim if method == "linear_add" else n * shared_dim
            self.classifier = _zero_linear(width, n_labels)

    def gating_weights(self, *xs: torch.Tensor) -> torch.Tensor:
        """MPAE: softmax weights over planes, (N, labels, planes)."""
        joined = torch.cat(xs, dim=1)
        return torch.stack([gate(joined) for gate in self.gates], dim=1).softmax(-1)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.method == "concat":
            return self.classifier(torch.cat(xs, dim=1))
        if self.method == "mpae":
            logits = torch.stack([c(x) for c, x in zip(self.plane_classifiers, xs)], dim=2)  # (N, L, P)
            return (self.gating_weights(*xs) * logits).sum(-1)
        projected = [p(x) for p, x in zip(self.project, xs)]
        if self.method == "linear_add":
            return self.classifier(torch.stack(projected).sum(0))
        if self.method == "cross_attention":
            tokens = torch.stack(projected, dim=1)
            tokens = self.norm(tokens + self.attention(tokens, tokens, tokens, need_weights=False)[0])
            return self.classifier(tokens.flatten(1))
        return self.classifier(torch.cat(projected, dim=1))


class FusionNet(nn.Module):
    """Plane fusion, with per-label late fusion of an EHR head when ``ehr`` is given."""

    def __init__(self, fusion: PlaneFusion, ehr: EHRNet | None, n_labels: int):
        super().__init__()
        self.fusion = fusion
        self.ehr = ehr
        self.late = LateFusion(n_labels) if ehr is not None else None

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.ehr is None:
            return self.fusion(*xs)
        return self.late(self.fusion(*xs[:-1]), self.ehr(xs[-1]))


class FusionHead:
    """Stage II head: fuses frozen per-plane pooled vectors (and EHR, if ``X`` has "ehr")."""

    def __init__(
        self,
        method: str = "concat",
        shared_dim: int = 256,
        heads: int = 4,
        gate_hidden: int = 32,
        epochs: int = 10,
        lr: float = 5e-5,
        batch_size: int = 32,
        weight_decay: float = 0.0,
        random_state: int = 0,
    ):
        self.method = method
        self.shared_dim = shared_dim
        self.heads = heads
        self.gate_hidden = gate_hidden
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.random_state = random_state

    def _inputs(self, X: dict) -> list[np.ndarray]:
        missing = [k for k in self.keys_ if k not in X]
        if missing:
            raise OrthodiffError(f"fusion input lacks {missing}; the head was fitted on {self.keys_}")
        return [np.asarray(X[k], dtype=np.float32) for k in self.keys_]

    def fit(self, X: dict, y, sample_weight=None) -> "FusionHead":
        self.planes_ = [p for p in PLANES if p in X]
        if len(self.planes_) < 2:
            raise OrthodiffError(f"fusion needs at least two planes, got {self.planes_}")
        self.ehr_ = "ehr" in X
        self.keys_ = self.planes_ + (["ehr"] if self.ehr_ else [])
        inputs = self._inputs(X)
        y = np.asarray(y, dtype=np.float32)
        n_labels, dims = y.shape[1], [x.shape[1] for x in inputs[: len(self.planes_)]]

        def build() -> FusionNet:
            fusion = PlaneFusion(self.method, dims, n_labels, self.shared_dim, self.heads, self.gate_hidden)
            encoder = EHREncoder()
            ehr = EHRNet(encoder.n_dense, encoder.embedding_sizes(), n_labels) if self.ehr_ else None
            return FusionNet(fusion, ehr, n_labels)

        self.net_ = train(
            seeded(self.random_state, build), inputs, y, sample_weight, epochs=self.epochs, lr=self.lr,
            batch_size=self.batch_size, random_state=self.random_state, weight_decay=self.weight_decay,
        )
        return self

    def decision_function(self, X: dict) -> np.ndarray:
        return apply(self.net_, self._inputs(X))

    def predict_proba(self, X: dict) -> np.ndarray:
        return 1 / (1 + np.exp(-self.decision_function(X)))

    def gating_weights(self, X: dict) -> np.ndarray:
        """MPAE only: (N, labels, planes) softmax weights, planes in ``planes_`` order."""
        if self.method != "mpae":
            raise OrthodiffError(f"gating weights exist for the mpae method only, not {self.method!r}")
        return apply(self.net_.fusion.gating_weights, self._inputs(X)[: len(self.planes_)])

    @property
    def mri_weight_(self) -> np.ndarray | None:
        """EHR fusion: per-label weight a = sigmoid(p) of the MRI logit."""
        return self.net_.late.mri_weight.detach().numpy() if self.ehr_ else None
