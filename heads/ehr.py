"""EHR encoding (catalogs/ehr.toml), the EHR head, and per-label late fusion with MRI logits.

Encoded layout, one float32 row per exam: z-scored numerics (missing -> 0), one-hot blocks
(classes + UNK) of the one-hot fields, then one column per embedding field holding its
class index (UNK = number of classes), which the head embeds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy.special import expit
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn

from orthodiff.catalogs.cohort import plain
from orthodiff.catalogs.tasks import EHRSchema, ehr_schema
from orthodiff.errors import OrthodiffError
from orthodiff.heads.estimator import MultiLabelClassifier
from orthodiff.training import apply, seeded, train


def _where(df: pd.DataFrame, i) -> str:
    case = f" (case {df.at[i, 'case_id']})" if "case_id" in df.columns else ""
    return f"row {i}{case}"


def embedding_fields(schema: EHRSchema) -> list[str]:
    return [c for c, s in schema.categorical.items() if s.get("encoding") == "embedding"]


def dense_width(schema: EHRSchema) -> int:
    """Columns before the embedding codes: numerics and the one-hot blocks (classes + UNK)."""
    onehot = [s for s in schema.categorical.values() if s.get("encoding") != "embedding"]
    return len(schema.numeric) + sum(len(s["classes"]) + 1 for s in onehot)


def embedding_sizes(schema: EHRSchema) -> list[tuple[int, int]]:
    """(number of codes including UNK, embedding dim) per embedding field."""
    specs = [schema.categorical[c] for c in embedding_fields(schema)]
    return [(len(s["classes"]) + 1, int(s.get("embedding_dim", 8))) for s in specs]


class EHREncoder(TransformerMixin, BaseEstimator):
    """Transformer of catalog rows (a DataFrame) into the EHR feature matrix.

    ``fit`` reads the schema (catalogs/ehr.toml, kept as ``schema_``) and learns the numeric
    means/stds (training exams only). Garbage (a numeric field that is not a number or
    outside the schema's range, a categorical that is not text) raises OrthodiffError naming
    the column and row.
    """

    def _numeric(self, df: pd.DataFrame) -> pd.DataFrame:
        out = {}
        for column, spec in self.schema_.numeric.items():
            if column not in df.columns:
                raise OrthodiffError(f"EHR column {column!r} is missing from the catalog")
            values = pd.to_numeric(df[column], errors="coerce")
            garbage = values.isna() & df[column].notna()
            outside = values.notna() & ~values.between(spec["min"], spec["max"])
            for mask, reason in ((garbage, "not a number"), (outside, f"outside [{spec['min']}, {spec['max']}] {spec['unit']}")):
                if mask.any():
                    i = df.index[np.flatnonzero(mask.to_numpy())[0]]
                    raise OrthodiffError(f"EHR column {column!r}, {_where(df, i)}: value {plain(df.at[i, column])!r} is {reason}")
            out[column] = values.astype(float)
        return pd.DataFrame(out, index=df.index)

    def _codes(self, df: pd.DataFrame, column: str) -> np.ndarray:
        if column not in df.columns:
            raise OrthodiffError(f"EHR column {column!r} is missing from the catalog")
        classes = self.schema_.categorical[column]["classes"]
        values = df[column]
        garbage = values.notna() & ~values.map(lambda v: isinstance(v, str))
        if garbage.any():
            i = df.index[np.flatnonzero(garbage.to_numpy())[0]]
            raise OrthodiffError(f"EHR column {column!r}, {_where(df, i)}: value {plain(df.at[i, column])!r} is not a category name")
        lookup = {c: k for k, c in enumerate(classes)}
        return values.map(lambda v: lookup.get(v, len(classes))).to_numpy(dtype=np.int64)

    def fit(self, df: pd.DataFrame, y=None) -> "EHREncoder":
        self.schema_ = ehr_schema()
        numeric = self._numeric(df)
        self.mean_ = numeric.mean().fillna(0.0).to_numpy()
        self.scale_ = numeric.std(ddof=0).fillna(1.0).replace(0.0, 1.0).to_numpy()
        return self

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        check_is_fitted(self)
        z = ((self._numeric(df).to_numpy() - self.mean_) / self.scale_)
        parts = [np.nan_to_num(z, nan=0.0)]
        for column, spec in self.schema_.categorical.items():
            if spec.get("encoding") != "embedding":
                parts.append(np.eye(len(spec["classes"]) + 1)[self._codes(df, column)])
        parts += [self._codes(df, column)[:, None] for column in embedding_fields(self.schema_)]
        return np.concatenate(parts, axis=1).astype(np.float32)


class EHRNet(nn.Module):
    """Linear(64) -> ReLU -> LayerNorm -> Dropout(0.2) -> Linear(labels) on dense + embedded fields."""

    def __init__(self, n_dense: int, embedding_sizes: list[tuple[int, int]], n_labels: int, hidden: int = 64):
        super().__init__()
        self.n_dense = n_dense
        self.embeddings = nn.ModuleList(nn.Embedding(n, d) for n, d in embedding_sizes)
        width = n_dense + sum(d for _, d in embedding_sizes)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.ReLU(), nn.LayerNorm(hidden), nn.Dropout(0.2), nn.Linear(hidden, n_labels)
        )
        # zero start, like the MRI classifiers: EHR logits begin at 0 and grow only as they help
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    @classmethod
    def from_schema(cls, schema: EHRSchema, n_labels: int) -> "EHRNet":
        return cls(dense_width(schema), embedding_sizes(schema), n_labels)

    def forward(self, ehr: torch.Tensor) -> torch.Tensor:
        codes = ehr[:, self.n_dense :].long()
        embedded = [emb(codes[:, k]) for k, emb in enumerate(self.embeddings)]
        return self.mlp(torch.cat([ehr[:, : self.n_dense], *embedded], dim=1))


class LateFusion(nn.Module):
    """Per-label ``z = a * z_mri + (1 - a) * z_ehr`` with ``a = sigmoid(p)``, ``p`` starting at 0."""

    def __init__(self, n_labels: int):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(n_labels))

    @property
    def mri_weight(self) -> torch.Tensor:
        return torch.sigmoid(self.p)

    def forward(self, z_mri: torch.Tensor, z_ehr: torch.Tensor) -> torch.Tensor:
        a = self.mri_weight
        return a * z_mri + (1 - a) * z_ehr


class EHROnlyHead(MultiLabelClassifier):
    """The paper's EHR-only baseline (Table 3): the EHR head alone, no MRI. ``X`` is a fusion
    input dict whose "ehr" rows (``EHREncoder.transform``) are used; Adam, cosine schedule,
    ``epochs`` 3 as the paper."""

    def __init__(self, epochs: int = 3, lr: float = 1e-3, batch_size: int = 10, random_state: int = 0):
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.random_state = random_state

    def _ehr(self, X) -> np.ndarray:
        if "ehr" not in X:
            raise OrthodiffError("the EHR-only baseline needs EHR rows (X['ehr'])")
        return np.asarray(X["ehr"], dtype=np.float32)

    def fit(self, X, y, sample_weight=None) -> "EHROnlyHead":
        y = self._encode_targets(y)
        net = seeded(self.random_state, lambda: EHRNet.from_schema(ehr_schema(), y.shape[1]))
        self.net_ = train(net, [self._ehr(X)], y, sample_weight, epochs=self.epochs, lr=self.lr,
                          batch_size=self.batch_size, random_state=self.random_state)
        return self

    def _positive_proba(self, X) -> np.ndarray:
        return expit(apply(self.net_, [self._ehr(X)]))
