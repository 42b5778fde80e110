"""The radiomic fingerprint (paper eqs. 6-8): per-exam feature usage times population coefficients.

A usage predictor f_alpha maps the exam to u in [0, 1]^N (eq. 6: encoder -> dropout ->
linear -> LayerNorm -> sigmoid, sec. 5.2.3); the classifier is eq. 7,
p = sigmoid(sum_n beta_n u_n r_n) (`fit_intercept=True` adds a bias b the paper does not
have), trained jointly with Adam on eq. 8 (see `FingerprintClassifier._loss`). Youden's J
threshold is re-estimated every `youden_every` epochs (default 10) from the current
validation predictions, as sec. 5.2.4 does; `threshold_` is the last estimate (epochs after it
still train, as in the paper's loop; `youden_every=None` estimates once after training) and
`threshold_history_` all (epoch, threshold) pairs. `hard_threshold` binarises u at inference.

`X` is either the (n, N) radiomic matrix r (the usage predictor then sees r itself), or a
dict {"radiomics": r, "usage": U} where U is (n, D) stored diffusion features (usage "mlp":
the pretrained diffusion encoder, frozen, its GAP precomputed by `orthodiff extract`) or
(n, C, D, H, W) images: usage "resnet18" is MONAI's 3D ResNet-18 from scratch (classification
head removed; no pretrained 3D weights can be downloaded here), usage "diffusion" the
pretrained encoder of our own diffusion backbone (`encoder`: built by tier 1,
`supervised.networks.usage_encoder`, from one checkpoint per channel, e.g. the shipped
`weights/demo_<plane>.pt`; heads never load a backbone themselves), fine-tuned with the head
(`finetune=True`, the paper's joint training) or frozen. `usage="none"` fixes u = 1
(classical radiomics with a learned beta: the paper's no-selection ablation).
r is z-scored with training statistics, except the grid-cell position columns (names ending
in `|index_z`, `|index_y`, `|index_x`; sec. 5.2.2's 3 spatial indices), which are constant
per column and would be zeroed by centring: they enter as their raw 1-based position.
Undefined (NaN) features enter as 0 (the mean). `predict_proba` is (n, 2) for a 1-D `y`.
"""

from __future__ import annotations

import copy
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

USAGES = ("mlp", "resnet18", "diffusion", "none")
BETA_PENALTIES = ("norm", "squared")  # eq. 8's lambda_beta ||beta||_2, or the squared norm (ridge)
SPATIAL_INDICES = ("index_z", "index_y", "index_x")  # sec. 5.2.2: the cell's position in the n^3 grid


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

    def __init__(self, kind: str, in_shape: tuple[int, ...], n: int, hidden: int, dropout: float, encoder=None):
        super().__init__()
        if kind == "resnet18":
            from monai.networks.nets import resnet18

            self.encoder = resnet18(spatial_dims=3, n_input_channels=in_shape[0], feed_forward=False)
            dim = 512
        elif kind == "diffusion":
            if not isinstance(encoder, nn.Module) or not hasattr(encoder, "check_input"):
                raise OrthodiffError("usage='diffusion' needs `encoder`: the pretrained diffusion encoder as "
                                     "`supervised.networks.usage_encoder(checkpoints)` builds it (e.g. weights/demo_sagittal.pt)")
            encoder.check_input(in_shape)
            self.encoder, dim = copy.deepcopy(encoder), encoder.dim  # every fit starts from the pretrained weights
        else:
            self.encoder, dim = nn.Sequential(nn.Linear(in_shape[0], hidden), nn.ReLU()), hidden
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, n), nn.LayerNorm(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.encoder(x)))


class FingerprintClassifier(ClassifierMixin, BaseEstimator):
    """Defaults follow the paper: eq. 7 without intercept, eq. 8 with ||beta||_2, Youden every
    10 epochs; `encoder`/`finetune` configure usage "diffusion"."""

    def __init__(self, usage="mlp", hidden=64, dropout=0.2, lambda_u=1e-3, lambda_beta=1e-3, lr=1e-3, epochs=200,
                 batch_size=64, hard_threshold=None, random_state=None, beta_penalty="norm", youden_every=10,
                 fit_intercept=False, encoder=None, finetune=True):
        self.usage, self.hidden, self.dropout = usage, hidden, dropout
        self.lambda_u, self.lambda_beta, self.lr, self.epochs = lambda_u, lambda_beta, lr, epochs
        self.batch_size, self.hard_threshold, self.random_state = batch_size, hard_threshold, random_state
        self.beta_penalty, self.youden_every, self.fit_intercept = beta_penalty, youden_every, fit_intercept
        self.encoder, self.finetune = encoder, finetune

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
        return (u * r) @ self.beta_ + (self.bias_ if self.fit_intercept else 0), u

    def _loss(self, logit, u, y, bce) -> torch.Tensor:
        """Eq. 8, one line per term: L(c, p) is the BCE with positive-class weight (sec. 5.2.4);
        lambda_u ||u||_1 is inside the expectation (per exam, averaged over the batch);
        lambda_beta ||beta||_2 is outside it (once per step), a norm, not squared, unless
        `beta_penalty="squared"`. The intercept, when fitted, is not penalised."""
        data = bce(logit, y)
        usage = self.lambda_u * u.abs().sum(1).mean()
        beta = self.lambda_beta * (self.beta_.norm() if self.beta_penalty == "norm" else (self.beta_ ** 2).sum())
        return data + usage + beta

    def fit(self, X, y, validation=None):
        """`validation`: (X, y) whose Youden J sets `threshold_` (else the training rows)."""
        if self.usage not in USAGES:
            raise OrthodiffError(f"usage={self.usage!r}: expected one of {list(USAGES)}")
        if self.beta_penalty not in BETA_PENALTIES:
            raise OrthodiffError(f"beta_penalty={self.beta_penalty!r}: expected one of {list(BETA_PENALTIES)}")
        if self.youden_every is not None and self.youden_every < 1:
            raise OrthodiffError(f"youden_every={self.youden_every}: expected a number of epochs >= 1, or None (once after training)")
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
        spatial = np.array([str(name).rsplit("|", 1)[-1] in SPATIAL_INDICES for name in self.feature_names_])
        self.mean_[spatial], self.scale_[spatial] = 0.0, 1.0
        seed = int(np.random.default_rng().integers(2**31)) if self.random_state is None else int(self.random_state)
        Xv, yv = validation if validation is not None else (X, y)
        with torch.random.fork_rng(devices=[]):  # weights and dropout from random_state; torch's global RNG untouched
            torch.manual_seed(seed)
            rt, ut = self._tensors(X)
            self.usage_net_ = None if self.usage == "none" else _Usage(self.usage, tuple(ut.shape[1:]), r.shape[1],
                                                                        self.hidden, self.dropout, self.encoder)
            if self.usage == "diffusion" and not self.finetune:
                self.usage_net_.encoder.requires_grad_(False)
            self.beta_ = nn.Parameter(torch.zeros(r.shape[1]))
            self.bias_ = nn.Parameter(torch.zeros(()), requires_grad=bool(self.fit_intercept))
            trainable = [] if self.usage_net_ is None else [p for p in self.usage_net_.parameters() if p.requires_grad]
            params = [self.beta_] + ([self.bias_] if self.fit_intercept else []) + trainable
            opt = torch.optim.Adam(params, lr=self.lr)
            pos = max(y.sum(), 1.0)
            loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor((len(y) - pos) / pos))
            yt = torch.from_numpy(y)
            generator = torch.Generator().manual_seed(seed)
            self.loss_curve_, self.threshold_history_ = [], []
            small = is_small(nn.ParameterList(params), (rt, ut), self.batch_size)
            with one_thread() if small else nullcontext():
                self._train(rt, ut, yt, opt, loss_fn, generator, (Xv, yv))
        self._eval()
        if not self.threshold_history_:  # youden_every=None, or fewer epochs than youden_every
            self.threshold_history_.append((self.epochs, youden_threshold(yv, self._proba(Xv))))
        self.threshold_ = self.threshold_history_[-1][1]
        return self

    def _eval(self) -> None:
        if self.usage_net_ is not None:
            self.usage_net_.eval()

    def _train(self, rt, ut, yt, opt, loss_fn, generator, validation) -> None:
        for epoch in range(1, self.epochs + 1):
            if self.usage_net_ is not None:
                self.usage_net_.train()
                if self.usage == "diffusion" and not self.finetune:
                    self.usage_net_.encoder.eval()
            order = torch.randperm(len(yt), generator=generator)
            total = 0.0
            for start in range(0, len(yt), self.batch_size):
                idx = order[start:start + self.batch_size]
                logit, u = self._forward(rt[idx], ut[idx])
                loss = self._loss(logit, u, yt[idx], loss_fn)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            self.loss_curve_.append(total / len(yt))
            if self.youden_every and epoch % self.youden_every == 0:  # sec. 5.2.4: from the current validation predictions
                self._eval()
                self.threshold_history_.append((epoch, youden_threshold(validation[1], self._proba(validation[0]))))

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
