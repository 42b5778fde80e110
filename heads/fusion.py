"""Plane fusion heads on per-plane pooled vectors (Stage II), optionally with EHR late fusion.

``X`` is a dict: one (N, D_plane) array per plane (sagittal, coronal, axial order) and,
for EHR fusion, ``X["ehr"]`` = ``EHREncoder.transform`` rows of the same exams.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import expit
from sklearn.model_selection import GroupKFold
from sklearn.utils.validation import check_is_fitted
from torch import nn

from orthodiff.catalogs.tasks import PLANES, ehr_schema
from orthodiff.errors import OrthodiffError
from orthodiff.heads.defaults import FUSION, METHOD
from orthodiff.heads.ehr import EHRNet, LateFusion
from orthodiff.heads.estimator import MultiLabelClassifier
from orthodiff.options import Method
from orthodiff.training import apply, seeded, train

METHODS = tuple(m for m in Method if not m.comparator)


def fusion_method(name: str) -> Method:
    """``name`` as one of the fusion ``METHODS`` (not a comparator); anything else is an OrthodiffError."""
    if name not in METHODS:
        raise OrthodiffError(f"unknown fusion method {name!r}; expected one of {list(METHODS)}")
    return Method(name)


def _zero_linear(d_in: int, d_out: int) -> nn.Linear:
    layer = nn.Linear(d_in, d_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class PlaneFusion(nn.Module):
    """Feature-level fusion (concat, linear_concat, linear_add); ``forward(*plane_vectors) -> logits``."""

    def __init__(self, method: str, dims: list[int], n_labels: int, shared_dim: int = 512):
        super().__init__()
        self.method, n = Method(method), len(dims)
        if self.method is Method.concat:
            self.classifier = _zero_linear(sum(dims), n_labels)
        else:
            self.project = nn.ModuleList(nn.Linear(d, shared_dim) for d in dims)
            width = shared_dim if self.method is Method.linear_add else n * shared_dim
            self.classifier = _zero_linear(width, n_labels)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.method is Method.concat:
            return self.classifier(torch.cat(xs, dim=1))
        projected = [p(x) for p, x in zip(self.project, xs)]
        if self.method is Method.linear_add:
            return self.classifier(torch.stack(projected).sum(0))
        return self.classifier(torch.cat(projected, dim=1))


class CrossAttention(nn.Module):
    """Each plane's projected vector attends to the next plane's (1->2, 2->3, 3->1), then a
    residual and one LayerNorm shared by the planes; the tokens are averaged ("mean") or
    concatenated ("concat"). Parameter names as in the reference (proj1, cross12, norm, ...)."""

    def __init__(self, dims: list[int], embed_dim: int = 512, heads: int = 4, mode: str = "mean"):
        super().__init__()
        if mode not in ("mean", "concat"):
            raise OrthodiffError(f"cross-attention mode {mode!r}: expected 'mean' or 'concat'")
        self.n, self.mode = len(dims), mode
        self.out_dim = embed_dim if mode == "mean" else self.n * embed_dim
        for i, d in enumerate(dims):
            self.add_module(f"proj{i + 1}", nn.Linear(d, embed_dim))
            self.add_module(self._cross(i), nn.MultiheadAttention(embed_dim, heads, batch_first=True))
        self.norm = nn.LayerNorm(embed_dim)

    def _cross(self, i: int) -> str:
        return f"cross{i + 1}{(i + 1) % self.n + 1}"

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        tokens = [getattr(self, f"proj{i + 1}")(x).unsqueeze(1) for i, x in enumerate(xs)]
        refined = []
        for i, query in enumerate(tokens):
            other = tokens[(i + 1) % self.n]
            attended = getattr(self, self._cross(i))(query, other, other, need_weights=False)[0]
            refined.append(self.norm(query + attended))
        joined = torch.cat(refined, dim=1)
        return joined.mean(1) if self.mode == "mean" else joined.flatten(1)


class LinearHead(nn.Module):
    """Linear classifier (attribute ``net`` as in the reference), zero start."""

    def __init__(self, d_in: int, n_labels: int):
        super().__init__()
        self.net = _zero_linear(d_in, n_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CrossAttentionClassifier(nn.Module):
    """Cross-attention fusion followed by a linear classifier (the reference's layout)."""

    def __init__(self, dims: list[int], n_labels: int, embed_dim: int = 512, heads: int = 4, mode: str = "mean"):
        super().__init__()
        self.fusion = CrossAttention(dims, embed_dim, heads, mode)
        self.head = LinearHead(self.fusion.out_dim, n_labels)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.head(self.fusion(*xs))


class PlaneGate(nn.Module):
    """ONE gate shared by all labels: a label's plane logits (P,) -> Linear(P, hidden) -> ReLU
    -> Dropout -> Linear(hidden, P) -> softmax over planes. (N, P, labels) -> (N, P, labels)."""

    def __init__(self, planes: int = 3, hidden: int = 32, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(planes, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, planes))

    def forward(self, plane_logits: torch.Tensor) -> torch.Tensor:
        return self.net(plane_logits.transpose(1, 2)).softmax(-1).transpose(1, 2)


class MPAEGate(nn.Module):
    """MPAE's label-level fusion of per-plane logits (N, P, labels): the gate's weighted sum of
    each label's plane logits, then the stacking MLP labels -> 128 -> labels. Parameter names
    as in the reference (gate.net.*, meta.*)."""

    def __init__(self, n_labels: int, planes: int = 3, hidden: int = 32, dropout: float = 0.1, stack_hidden: int = 128):
        super().__init__()
        self.gate = PlaneGate(planes, hidden, dropout)
        self.meta = nn.Sequential(
            nn.Linear(n_labels, stack_hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(stack_hidden, n_labels)
        )

    def forward(self, plane_logits: torch.Tensor) -> torch.Tensor:
        return self.meta((self.gate(plane_logits) * plane_logits).sum(1))


class MPAENet(nn.Module):
    """Per-plane linear heads (refitted on the whole training split) feeding a trained MPAE gate."""

    def __init__(self, plane_heads: list[nn.Module], gate: MPAEGate):
        super().__init__()
        self.plane_heads = nn.ModuleList(plane_heads)
        self.fuser = gate

    def train(self, mode: bool = True) -> "MPAENet":
        """Always in eval mode: the fitted MPAE is frozen (no gate dropout) while an EHR
        head is trained on top of it."""
        return super().train(False)

    def plane_logits(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.stack([head(x) for head, x in zip(self.plane_heads, xs)], dim=1)

    def gating_weights(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.fuser.gate(self.plane_logits(*xs))

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.fuser(self.plane_logits(*xs))


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


class FusionHead(MultiLabelClassifier):
    """Stage II head: fuses frozen per-plane pooled vectors (and EHR, if ``X`` has "ehr").
    ``y``: (N, labels) 0/1 or 1-D binary (``heads.estimator``).

    Feature-level methods (concat, linear_*, cross_attention) train one network with Adam,
    cosine schedule, ``epochs`` / ``lr`` / ``batch_size`` (paper: 5, 5e-5, 10; projection
    ``shared_dim`` 512, 4 heads). ``mpae`` follows the paper's App. C.2/D: per-plane linear
    heads (``plane_epochs``, ``plane_lr``, batch ``batch_size``, constant rate) give
    ``folds``-fold out-of-fold logits, folds by patient (``groups``); the gate is trained on
    them full-batch (``gate_epochs``, ``gate_lr``, ``gate_weight_decay``); the plane heads
    are then refitted on the whole training split. With EHR, the MRI part is trained first
    and frozen, then the EHR head and the per-label late-fusion weight are trained.
    """

    def __init__(
        self,
        method: str = METHOD,
        shared_dim: int = 512,
        heads: int = 4,
        cross_mode: str = "mean",
        gate_hidden: int = 32,
        epochs: int = FUSION["epochs"],
        lr: float = FUSION["lr"],
        batch_size: int = FUSION["batch_size"],
        weight_decay: float = 0.0,
        plane_epochs: int = 5,
        plane_lr: float = 5e-5,
        gate_epochs: int = 10,
        gate_lr: float = 1e-3,
        gate_weight_decay: float = 1e-4,
        folds: int = 5,
        random_state: int = 0,
    ):
        self.method = method
        self.shared_dim = shared_dim
        self.heads = heads
        self.cross_mode = cross_mode
        self.gate_hidden = gate_hidden
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.plane_epochs = plane_epochs
        self.plane_lr = plane_lr
        self.gate_epochs = gate_epochs
        self.gate_lr = gate_lr
        self.gate_weight_decay = gate_weight_decay
        self.folds = folds
        self.random_state = random_state

    def _inputs(self, X: dict) -> list[np.ndarray]:
        missing = [k for k in self.keys_ if k not in X]
        if missing:
            raise OrthodiffError(f"fusion input lacks {missing}; the head was fitted on {self.keys_}")
        return [np.asarray(X[k], dtype=np.float32) for k in self.keys_]

    def _plane_heads(self, xs: list[np.ndarray], y: np.ndarray, w: np.ndarray) -> list[nn.Module]:
        """One independent linear head per plane (own optimizer), as MPAE's experts."""
        return [
            train(seeded(self.random_state + k, lambda: _zero_linear(x.shape[1], y.shape[1])), [x], y, w,
                  epochs=self.plane_epochs, lr=self.plane_lr, batch_size=self.batch_size,
                  random_state=self.random_state + k, cosine=False)
            for k, x in enumerate(xs)
        ]

    def _fit_mpae(self, xs: list[np.ndarray], y: np.ndarray, w: np.ndarray, groups) -> MPAENet:
        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        if len(np.unique(groups)) < self.folds:
            raise OrthodiffError(f"MPAE needs at least {self.folds} patients for its {self.folds}-fold "
                                 f"out-of-fold logits, got {len(np.unique(groups))}")
        oof = np.zeros((len(y), len(xs), y.shape[1]), np.float32)
        splitter = GroupKFold(self.folds, shuffle=True, random_state=self.random_state)
        for fit_rows, held_out in splitter.split(y, groups=groups):
            heads = self._plane_heads([x[fit_rows] for x in xs], y[fit_rows], w[fit_rows])
            oof[held_out] = apply(MPAENet(heads, MPAEGate(y.shape[1], len(xs))).plane_logits, [x[held_out] for x in xs])
        gate = train(
            seeded(self.random_state, lambda: MPAEGate(y.shape[1], len(xs), self.gate_hidden)), [oof], y, w,
            epochs=self.gate_epochs, lr=self.gate_lr, batch_size=len(y), random_state=self.random_state,
            weight_decay=self.gate_weight_decay, cosine=False,
        )
        return MPAENet(self._plane_heads(xs, y, w), gate).requires_grad_(False).eval()

    def fit(self, X: dict, y, sample_weight=None, groups=None) -> "FusionHead":
        """``groups``: patient of each row (MPAE's folds keep a patient's rows together)."""
        method = fusion_method(self.method)
        self.planes_ = [p for p in PLANES if p in X]
        if len(self.planes_) < (2 if method.combines_planes else 1):
            raise OrthodiffError(f"{method} fusion needs at least two planes, got {self.planes_}")
        self.ehr_ = "ehr" in X
        self.keys_ = self.planes_ + (["ehr"] if self.ehr_ else [])
        inputs = self._inputs(X)
        y = self._encode_targets(y)
        w = np.ones(len(y), np.float32) if sample_weight is None else np.asarray(sample_weight, np.float32)
        n_labels, planes = y.shape[1], inputs[: len(self.planes_)]
        dims = [x.shape[1] for x in planes]
        if method.gated:
            fusion = self._fit_mpae(planes, y, w, groups)
        elif method is Method.cross_attention:
            fusion = seeded(self.random_state, lambda: CrossAttentionClassifier(
                dims, n_labels, self.shared_dim, self.heads, self.cross_mode))
        else:
            fusion = seeded(self.random_state, lambda: PlaneFusion(method, dims, n_labels, self.shared_dim))

        def build() -> FusionNet:
            return FusionNet(fusion, EHRNet.from_schema(ehr_schema(), n_labels) if self.ehr_ else None, n_labels)

        self.net_ = seeded(self.random_state, build)
        if not method.gated or self.ehr_:
            train(self.net_, inputs, y, w, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                  random_state=self.random_state, weight_decay=self.weight_decay)
        self.net_.eval()
        return self

    def decision_function(self, X: dict) -> np.ndarray:
        check_is_fitted(self)
        return self._layout(apply(self.net_, self._inputs(X)))

    def _positive_proba(self, X: dict) -> np.ndarray:
        return expit(apply(self.net_, self._inputs(X)))

    def gating_weights(self, X: dict) -> np.ndarray:
        """MPAE only: (N, labels, planes) gate weights, planes in ``planes_`` order."""
        check_is_fitted(self)
        if not fusion_method(self.method).gated:
            raise OrthodiffError(f"gating weights exist for the mpae method only, not {self.method!r}")
        weights = apply(self.net_.fusion.gating_weights, self._inputs(X)[: len(self.planes_)])
        return weights.transpose(0, 2, 1)

    @property
    def mri_weight_(self) -> np.ndarray | None:
        """EHR fusion: per-label weight a = sigmoid(p) of the MRI logit."""
        check_is_fitted(self)
        return self.net_.late.mri_weight.detach().numpy() if self.ehr_ else None
