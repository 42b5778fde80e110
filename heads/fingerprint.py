"""The radiomic fingerprint (paper eqs. 6-8): per-exam feature usage times population coefficients.

A usage predictor f_alpha maps the exam to u in [0, 1]^N (sigmoid); the classifier is
p = sigmoid(sum_n beta_n u_n r_n + b), trained jointly with Adam on BCE (positive-class
weight) + lambda_u ||u||_1 (mean over exams) + lambda_beta ||beta||^2. The decision
threshold is Youden's J on the validation rows; `hard_threshold` binarises u at inference.

`X` is either the (n, N) radiomic matrix r (the usage predictor then sees r itself), or a
dict {"radiomics": r, "usage": U} where U is (n, D) stored diffusion features (GAP; usage
"mlp") or (n, C, D, H, W) images (usage "resnet18": MONAI's 3D ResNet-18). `usage="none"`
fixes u = 1 (classical radiomics with a learned beta: the paper's no-selection ablation).
r is z-scored with training statistics; undefined (NaN) features enter as 0 (the mean).
`predict_proba` is (n, 2) for a 1-D `y`.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import roc_curve
from sklearn.utils.validation import check_is_fitted
from torch import nn

from orthodiff.errors import OrthodiffError
from orthodiff.training import is_small, one_thread

USAGES = ("mlp", "resnet18", "none")


def youden_threshold(y, p) -> float:
    """The probability threshold maximising sensitivity + specificity - 1 (0.5 if one class)."""
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(y, p)
    return float(np.clip(thresholds[np.argmax(tpr - fpr)], 0, 1))


def _split(X) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    r, usage = (X["radiomics"], X.get("usage")) if isinstance(X, dict) else (X, None)
    names = list(r.columns) if isinstance(r, pd.DataFrame) else None
    r = np.asarray(r, dtype=np.float32)
    if r.ndim != 2:
        raise OrthodiffError(f"radiomic features must be (exams, features), got shape {r.shape}")
    return r, None if usage is None else np.asarray(usage, dtype=np.float32), names


class _Usage(nn.Module):
    """Encoder -> dropout -> linear -> LayerNorm -> sigmoid, as in the paper's sec. 5.2.3."""

    def __init__(self, kind: str, in_shape: tuple[int, ...], n: int, hidden: int, dropout: float):
        super().__init__()
        if kind == "resnet18":
            from monai.networks.nets import resnet18

            self.encoder = resnet18(spatial_dims=3, n_input_channels=in_shape[0], num_classes=hidden)
        else:
            self.encoder = nn.Sequential(nn.Linear(in_shape[0], hidden), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, n), nn.LayerNorm(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.encoder(x)))


class FingerprintClassifier(ClassifierMixin, BaseEstimator):
    def __init__(self, usage="mlp", hidden=64, dropout=0.2, lambda_u=1e-3, lambda_beta=1e-3, lr=1e-3, epochs=200,
                 batch_size=64, hard_threshold=None, random_state=None):
        self.usage, self.hidden, self.dropout = usage, hidden, dropout
        self.lambda_u, self.lambda_beta, self.lr, self.epochs = lambda_u, lambda_beta, lr, epochs
        self.batch_size, self.hard_threshold, self.random_state = batch_size, hard_threshold, random_state

    def _tensors(self, X):
        r, usage, _ = _split(X)
        if r.shape[1] != self.n_features_in_:
            raise OrthodiffError(f"{r.shape[1]} radiomic features, the head was fitted on {self.n_features_in_}")
        r = np.nan_to_num((r - self.mean_) / self.scale_)
        usage = r if usage is None else usage
        return torch.from_numpy(r), torch.from_numpy(np.nan_to_num(usage))

    def _forward(self, r, usage, hard=None):
        u = torch.ones_like(r) if self.usage == "none" else self.usage_net_(usage)
        if hard is not None:
            u = (u > hard).to(r.dtype)
        return (u * r) @ self.beta_ + self.bias_, u

    def fit(self, X, y, validation=None):
        """`validation`: (X, y) whose Youden J sets `threshold_` (else the training rows)."""
        if self.usage not in USAGES:
            raise OrthodiffError(f"usage={self.usage!r}: expected one of {list(USAGES)}")
        y = np.asarray(y).astype(np.float32).ravel()
        r, usage, names = _split(X)
        if len(r) != len(y):
            raise OrthodiffError(f"{len(r)} exams of radiomic features but {len(y)} labels")
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = r.shape[1]
        self.feature_names_ = np.asarray(names or [f"r{i}" for i in range(r.shape[1])], dtype=object)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():  # all-NaN columns (undefined features) -> 0
            warnings.simplefilter("ignore", RuntimeWarning)
            self.mean_ = np.nan_to_num(np.nanmean(r, 0)).astype(np.float32)
            self.scale_ = np.nan_to_num(np.nanstd(r, 0), nan=1.0).astype(np.float32)
        self.scale_[self.scale_ == 0] = 1.0
        seed = int(np.random.default_rng().integers(2**31)) if self.random_state is None else int(self.random_state)
        with torch.random.fork_rng(devices=[]):  # weights and dropout from random_state; torch's global RNG untouched
            torch.manual_seed(seed)
            rt, ut = self._tensors(X)
            self.usage_net_ = None if self.usage == "none" else _Usage(self.usage, tuple(ut.shape[1:]), r.shape[1],
                                                                        self.hidden, self.dropout)
            self.beta_ = nn.Parameter(torch.zeros(r.shape[1]))
            self.bias_ = nn.Parameter(torch.zeros(()))
            params = [self.beta_, self.bias_] + ([] if self.usage_net_ is None else list(self.usage_net_.parameters()))
            opt = torch.optim.Adam(params, lr=self.lr)
            pos = max(y.sum(), 1.0)
            loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor((len(y) - pos) / pos))
            yt = torch.from_numpy(y)
            generator = torch.Generator().manual_seed(seed)
            self.loss_curve_ = []
            small = is_small(nn.ParameterList(params), (rt, ut), self.batch_size)
            with one_thread() if small else nullcontext():
                self._train(rt, ut, yt, opt, loss_fn, generator)
        if self.usage_net_ is not None:
            self.usage_net_.eval()
        Xv, yv = validation if validation is not None else (X, y)
        self.threshold_ = youden_threshold(yv, self._proba(Xv))
        return self

    def _train(self, rt, ut, yt, opt, loss_fn, generator) -> None:
        for _ in range(self.epochs):
            if self.usage_net_ is not None:
                self.usage_net_.train()
            order = torch.randperm(len(yt), generator=generator)
            total = 0.0
            for start in range(0, len(yt), self.batch_size):
                idx = order[start:start + self.batch_size]
                logit, u = self._forward(rt[idx], ut[idx])
                loss = loss_fn(logit, yt[idx]) + self.lambda_u * u.abs().sum(1).mean() + self.lambda_beta * (self.beta_**2).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            self.loss_curve_.append(total / len(yt))

    @torch.no_grad()
    def _proba(self, X) -> np.ndarray:
        r, u = self._tensors(X)
        return torch.sigmoid(self._forward(r, u, self.hard_threshold)[0]).numpy().astype(np.float64)

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "beta_")
        p = self._proba(X)
        return np.stack([1 - p, p], 1)

    def predict(self, X) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= self.threshold_).astype(int)

    @torch.no_grad()
    def usage_weights(self, X) -> np.ndarray:
        """u (n, N) per exam (binarised when `hard_threshold` is set)."""
        check_is_fitted(self, "beta_")
        r, u = self._tensors(X)
        out = torch.ones_like(r) if self.usage == "none" else self.usage_net_(u)
        return (out > self.hard_threshold).float().numpy() if self.hard_threshold is not None else out.numpy()

    @torch.no_grad()
    def explain(self, X, top: int = 5, exams=None) -> pd.DataFrame:
        """Per exam the `top` features by |u_n beta_n r_n| (signed contribution to the logit)."""
        check_is_fitted(self, "beta_")
        r, _ = self._tensors(X)
        u = torch.from_numpy(self.usage_weights(X))
        contribution = (u * r * self.beta_).numpy()
        raw, _, _ = _split(X)
        exams = np.arange(len(r)) if exams is None else np.asarray(exams)
        rows = []
        for i in range(len(r)):
            for n in np.argsort(-np.abs(contribution[i]))[:top]:
                rows.append({"exam": exams[i], "feature": self.feature_names_[n], "value": float(raw[i, n]),
                             "usage": float(u[i, n]), "beta": float(self.beta_[n]), "contribution": float(contribution[i, n])})
        return pd.DataFrame(rows)
